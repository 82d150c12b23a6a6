//! Links through rtnetlink: the node's bridge (Docker's `docker0`), the veth
//! pairs that attach containers' network namespaces to it, and for overlay
//! networks an address-less bridge with a VXLAN device on it, whose
//! neighbour table (for proxy ARP) and FDB (MAC -> remote VTEP) are set
//! entry by entry.
//!
//! Every call converges: it reads what the kernel has, writes only what
//! differs, and applying the same thing twice changes nothing.
//!
//! All netlink traffic goes through [`Rtnl`], one request per method, each
//! naming its `ip` equivalent, so that it can be faked later.
//!
//! # Threads and namespaces
//!
//! A netlink socket belongs to the network namespace it was opened in, for
//! its whole life, whichever thread later uses it. [`Netlink::connect`]
//! opens one in the calling thread's namespace. [`Netlink::connect_in`]
//! opens one inside another namespace: a blocking-pool thread
//! (`spawn_blocking`) starts a short-lived thread that enters the namespace
//! ([`netns::run_in`]), opens the socket there (registered with the caller's
//! runtime) and hands it back; from then on the connection task runs on the
//! caller's runtime like any other, and no thread stays in the namespace.
//! [`Netlink::add_veth`] configures the container's end that way, then closes
//! that socket before returning, so that it does not keep the namespace
//! alive.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{
            AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, InfoVxlan,
            LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
        },
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        nsid::{NsidAttribute, NsidMessage},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    },
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{ifname, netns};

/// rtnetlink's connection: the socket and the task that drives it.
type Connection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// `ENODEV`: what the kernel answers for a link that does not exist.
const ENODEV: i32 = 19;
/// `ENOENT`: what the kernel answers for a neighbour or FDB entry that does
/// not exist.
const ENOENT: i32 = 2;
/// `NUD_PERMANENT`, as a bit: the kernel reports one state per entry, but
/// the field is a mask.
const NUD_PERMANENT: u16 = 0x80;
/// The largest VNI: the VXLAN header has 24 bits for it.
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// Errors of [`Netlink`]; each names the link, the namespace and the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("netlink needs a tokio runtime: call from inside one")]
    NoRuntime,
    #[error("build a runtime for netlink")]
    Runtime {
        #[source]
        source: io::Error,
    },
    #[error("open a netlink socket in namespace {netns}")]
    Connect {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("enter a namespace to open a netlink socket")]
    Netns {
        #[source]
        source: Box<netns::NetnsError>,
    },
    #[error("thread opening a netlink socket in {} did not finish", path.display())]
    Join {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{} is not a network namespace mount", path.display())]
    NotNetns { path: PathBuf },
    #[error("open network namespace {}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid prefix length {addr}/{prefix_len}")]
    InvalidPrefix { addr: Ipv4Addr, prefix_len: u8 },
    #[error("bridge {name} does not exist in namespace {netns}")]
    NoSuchBridge { name: String, netns: String },
    #[error("{name} in namespace {netns} is a {kind}, not a bridge")]
    NotABridge {
        name: String,
        kind: String,
        netns: String,
    },
    #[error("{name} exists in namespace {netns} and is not this endpoint's veth: {reason}")]
    Conflict {
        name: String,
        netns: String,
        reason: String,
    },
    #[error("{name} disappeared from namespace {netns} while being configured")]
    Vanished { name: String, netns: String },
    #[error("link {name} does not exist in namespace {netns}")]
    NoSuchLink { name: String, netns: String },
    #[error("{name} in namespace {netns} is a {kind}, not a {want}")]
    WrongKind {
        name: String,
        kind: String,
        want: &'static str,
        netns: String,
    },
    #[error("invalid vxlan {name}: {reason}")]
    InvalidVxlan { name: String, reason: String },
    #[error("`{call}` on {link} in namespace {netns}")]
    Request {
        call: &'static str,
        link: String,
        netns: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// One link as the kernel reports it (`ip -d link show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; `None` for devices without
    /// one (loopback, physical NICs).
    pub kind: Option<String>,
    /// The index of the bridge (or bond, ...) the link is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub mtu: Option<u32>,
}

/// A container's veth pair: the host end on the node's bridge, the other end
/// inside the container's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethSpec {
    /// Host end, at most 15 bytes, e.g. "veth1a2b3c4".
    pub host_ifname: String,
    /// The bridge the host end is enslaved to; it must exist.
    pub bridge: String,
    /// The container's namespace, bind-mounted there ([`netns::create`]).
    pub netns: PathBuf,
    /// The name inside, e.g. "eth0".
    pub ifname: String,
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's next hop; `None` adds no default route (and
    /// leaves an existing one alone).
    pub gateway: Option<Ipv4Addr>,
    /// Both ends.
    pub mtu: u32,
}

/// A VXLAN device of an overlay network, as [`Netlink::ensure_vxlan`] makes
/// it: `ip link add NAME type vxlan id VNI dstport PORT [local IP] nolearning
/// proxy`, enslaved to `bridge`. No remote, group or underlay device: frames
/// leave only through the FDB entries set on it ([`Netlink::fdb_replace`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// At most 15 bytes.
    pub name: String,
    /// 0..=[`VNI_MAX`].
    pub vni: u32,
    /// The UDP port of the data path (the swarm's, 4789 by default); not 0,
    /// which the kernel would turn into its own default (8472).
    pub port: u16,
    /// The source address of encapsulated packets; `None` lets the route to
    /// each VTEP choose.
    pub local: Option<Ipv4Addr>,
    /// The underlay MTU less 50 (outer IPv4 20, UDP 8, VXLAN 8, inner
    /// Ethernet 14).
    pub mtu: u32,
    /// The bridge it is a port of; it must exist.
    pub bridge: String,
}

/// What an `ensure_*` call did to its link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// It was as asked.
    Unchanged,
    /// It was missing and was created.
    Created,
    /// It was of another kind or configuration that cannot be changed in
    /// place, and was deleted and created again.
    Replaced,
    /// Its MTU, master or up state was set.
    Updated,
}

impl LinkChange {
    fn updated_if(changed: bool) -> Self {
        if changed {
            Self::Updated
        } else {
            Self::Unchanged
        }
    }
}

/// The link an `ensure_*` call converged, and what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ensured {
    pub index: u32,
    pub change: LinkChange,
}

/// An IPv4 neighbour (ARP) entry on a link (`ip -4 neigh show dev DEV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    /// `None` for entries without a link-layer address (incomplete, failed).
    pub mac: Option<[u8; 6]>,
    /// `nud permanent`: set by someone, never aged or probed by the kernel.
    pub permanent: bool,
}

/// An entry of a VXLAN device's own forwarding table
/// (`bridge fdb show dev DEV` lines with `self`): frames to `mac` go to the
/// VTEP `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    /// `None` if the remote is not an IPv4 address.
    pub dst: Option<Ipv4Addr>,
    pub permanent: bool,
}

/// Docker's MAC for a container address: `02:42` and the four address bytes.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// A netlink (rtnetlink) connection to one network namespace: the one of the
/// thread that called [`Netlink::connect`], or the one [`Netlink::connect_in`]
/// was given. Its connection task runs on the runtime it was made in and
/// stops when this is dropped (or [`closed`](Netlink::close)).
#[derive(Debug)]
pub struct Netlink {
    rtnl: Rtnl,
    /// The connection task; `None` once closed.
    task: Option<JoinHandle<()>>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Netlink {
    /// A connection to the calling thread's network namespace; spawns the
    /// connection task on the current tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        // e.g. "net:[4026531840]", for error messages.
        let netns = std::fs::read_link("/proc/thread-self/ns/net")
            .map_or_else(|_| "of this thread".to_owned(), |l| l.display().to_string());
        let opened = rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle));
        Self::start(&rt, opened, netns)
    }

    /// A connection to the namespace bind-mounted at `path`. The socket is
    /// opened on a thread that entered the namespace (run from the blocking
    /// pool); the connection task then runs on the current runtime.
    pub async fn connect_in(path: &Path) -> Result<Self, LinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let netns = path.display().to_string();
        let owned = path.to_path_buf();
        let enter = rt.clone();
        let opened = tokio::task::spawn_blocking(move || {
            netns::run_in(&owned, move || {
                // The socket joins the runtime's reactor from this thread.
                let _runtime = enter.enter();
                rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
            })
        })
        .await
        .map_err(|source| LinkError::Join {
            path: path.into(),
            source,
        })?
        .map_err(|source| LinkError::Netns {
            source: Box::new(source),
        })?;
        Self::start(&rt, opened, netns)
    }

    /// Spawns the connection task of a socket just opened in `netns`.
    fn start(
        rt: &tokio::runtime::Handle,
        opened: io::Result<(Connection, Handle)>,
        netns: String,
    ) -> Result<Self, LinkError> {
        match opened {
            Ok((conn, handle)) => Ok(Self {
                task: Some(rt.spawn(conn)),
                rtnl: Rtnl { handle, netns },
            }),
            Err(source) => Err(LinkError::Connect { netns, source }),
        }
    }

    /// Stops the connection task and waits until its socket is closed (which
    /// dropping does too, but without waiting). A namespace is not freed while
    /// a socket in it is open.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Resolves once the task's future, and with it the socket, is
            // dropped; the error is the cancellation itself.
            let _ = task.await;
        }
    }

    /// Makes sure a bridge `name` exists, is up, has `addr/prefix_len` and,
    /// if given, that MTU; returns its index. Creates the bridge if missing;
    /// adds the address if missing and removes the same address with another
    /// prefix length; leaves other addresses alone. Errors if `name` is a
    /// link of another kind.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
        mtu: Option<u32>,
    ) -> Result<u32, LinkError> {
        check_name(name)?;
        check_prefix(addr, prefix_len)?;
        let index = match self.rtnl.link(name).await? {
            Some(link) => self.converge_bridge(&link, mtu).await?.index,
            None => {
                // `ip link add NAME [mtu MTU] up type bridge`
                let mut bridge = LinkBridge::new(name);
                if let Some(mtu) = mtu {
                    bridge = bridge.mtu(mtu);
                }
                self.rtnl
                    .write_link(
                        LinkWrite::Add,
                        "ip link add NAME up type bridge",
                        name,
                        bridge.build(),
                    )
                    .await?;
                info!(bridge = name, netns = %self.rtnl.netns, "bridge created");
                self.rtnl
                    .link(name)
                    .await?
                    .ok_or_else(|| self.vanished(name))?
                    .header
                    .index
            }
        };
        self.ensure_ipv4(name, index, addr, prefix_len).await?;
        Ok(index)
    }

    /// Makes sure a bridge `name` exists, with that MTU, up; for an overlay
    /// network, whose bridge has no address (its ports are the containers'
    /// veths and the VXLAN device). A bridge this creates has IPv6 address
    /// generation off (`addrgenmode none`), so that it gets no link-local
    /// address either: nothing on the overlay can reach the node's namespace
    /// through it. Addresses someone put on an existing bridge are left
    /// alone. Errors if `name` is a link of another kind.
    pub async fn ensure_l2_bridge(&self, name: &str, mtu: u32) -> Result<Ensured, LinkError> {
        check_name(name)?;
        if let Some(link) = self.rtnl.link(name).await? {
            return self.converge_bridge(&link, Some(mtu)).await;
        }
        // `ip link add NAME mtu MTU type bridge`, then
        // `ip link set dev NAME addrgenmode none` and `... up`
        let bridge = LinkMessageBuilder::<LinkBridge>::new(name).mtu(mtu).build();
        let index = self
            .create_without_ipv6("ip link add NAME mtu MTU type bridge", name, bridge)
            .await?;
        info!(bridge = name, netns = %self.rtnl.netns, mtu, "overlay bridge created");
        Ok(Ensured {
            index,
            change: LinkChange::Created,
        })
    }

    /// Makes sure the VXLAN device `spec.name` exists as `spec` says (VNI,
    /// port, local address, `nolearning`, `proxy`, no remote or group, not
    /// `external`), is a port of `spec.bridge` with `spec.mtu`, and is up.
    /// The bridge must exist.
    ///
    /// A link of that name of another kind or with another VNI, port, local
    /// address, learning, proxy, remote or group is deleted and created
    /// again (the kernel cannot change VNI, port or proxy in place), which
    /// empties its neighbour table and FDB; if only MTU, master or up differ,
    /// they are set. Created like [`ensure_l2_bridge`](Netlink::ensure_l2_bridge)'s
    /// bridge, without IPv6 addresses.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Ensured, LinkError> {
        check_name(&spec.name)?;
        check_name(&spec.bridge)?;
        check_vxlan(spec)?;
        let bridge = self.bridge_index(&spec.bridge).await?;
        let replaced = match self.rtnl.link(&spec.name).await? {
            Some(link) => match vxlan_mismatch(&link, spec) {
                None => {
                    let changed = self
                        .converge_link(
                            &link,
                            Want {
                                mtu: Some(spec.mtu),
                                master: Some(bridge),
                                ..Want::default()
                            },
                        )
                        .await?;
                    return Ok(Ensured {
                        index: link.header.index,
                        change: LinkChange::updated_if(changed),
                    });
                }
                Some(reason) => {
                    warn!(link = %spec.name, netns = %self.rtnl.netns, %reason, "replacing a link that is not the vxlan asked for");
                    self.rtnl.del_link(&spec.name, link.header.index).await?;
                    true
                }
            },
            None => false,
        };
        // `ip link add NAME mtu MTU master BRIDGE type vxlan id VNI
        //    dstport PORT [local IP] nolearning proxy`, then
        // `ip link set dev NAME addrgenmode none` and `... up`
        let mut vxlan = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .proxy(true)
            .mtu(spec.mtu)
            .controller(bridge);
        if let Some(local) = spec.local {
            vxlan = vxlan.local(local);
        }
        let index = self
            .create_without_ipv6(
                "ip link add NAME master BRIDGE type vxlan id VNI dstport PORT nolearning proxy",
                &spec.name,
                vxlan.build(),
            )
            .await?;
        info!(
            vxlan = %spec.name,
            vni = spec.vni,
            port = spec.port,
            bridge = %spec.bridge,
            netns = %self.rtnl.netns,
            replaced,
            "vxlan created"
        );
        Ok(Ensured {
            index,
            change: if replaced {
                LinkChange::Replaced
            } else {
                LinkChange::Created
            },
        })
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`: the entry
    /// proxy ARP on a VXLAN device answers from.
    pub async fn neigh_replace(
        &self,
        dev: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), LinkError> {
        let index = self.existing(dev).await?.index;
        self.rtnl.neigh_replace(dev, index, ip, mac).await
    }

    /// `ip neigh del IP dev DEV`; returns whether there was such an entry.
    pub async fn neigh_del(&self, dev: &str, ip: Ipv4Addr) -> Result<bool, LinkError> {
        let index = self.existing(dev).await?.index;
        self.rtnl.neigh_del(dev, index, ip).await
    }

    /// The IPv4 neighbour entries of `dev` (`ip -4 neigh show dev DEV`).
    pub async fn neighbours(&self, dev: &str) -> Result<Vec<Neighbour>, LinkError> {
        let index = self.existing(dev).await?.index;
        Ok(self
            .rtnl
            .neighbours(dev, index, AddressFamily::Inet)
            .await?
            .iter()
            .filter_map(neighbour)
            .collect())
    }

    /// `bridge fdb replace MAC dev DEV dst IP self permanent`: frames to
    /// `mac` leave the VXLAN device `dev` for the VTEP `dst`. An entry for
    /// `mac` with another destination gets this one instead (its first
    /// destination, should it have several).
    pub async fn fdb_replace(
        &self,
        dev: &str,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let index = self.vxlan_index(dev).await?;
        self.rtnl.fdb_replace(dev, index, mac, dst).await
    }

    /// `bridge fdb del MAC dev DEV dst IP self`: removes that destination
    /// of `mac` from the VXLAN device `dev`; returns whether it was there.
    pub async fn fdb_del(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<bool, LinkError> {
        let index = self.vxlan_index(dev).await?;
        self.rtnl.fdb_del(dev, index, mac, dst).await
    }

    /// The VXLAN device `dev`'s own FDB (`bridge fdb show dev DEV`, the
    /// `self` entries), one entry per (MAC, destination). The bridge's
    /// entries for the port (`master BRIDGE`: its own MAC, MACs learned from
    /// frames that arrived through it) are not listed.
    pub async fn fdb_entries(&self, dev: &str) -> Result<Vec<FdbEntry>, LinkError> {
        let index = self.vxlan_index(dev).await?;
        Ok(self
            .rtnl
            .neighbours(dev, index, AddressFamily::Bridge)
            .await?
            .iter()
            .filter_map(fdb_entry)
            .collect())
    }

    /// Attaches a container: a veth pair whose host end `spec.host_ifname` is
    /// enslaved to `spec.bridge` and up, and whose other end is in the
    /// namespace at `spec.netns`, named `spec.ifname`, with `spec.mac`,
    /// `spec.addr/prefix_len`, `spec.mtu` (both ends), up, and a default
    /// route via `spec.gateway`.
    ///
    /// The pair is made by one request that creates the peer directly inside
    /// the namespace under its final name, MAC and MTU (the kernel undoes all
    /// of it if any part fails); the address and route are then set through
    /// a socket inside the namespace, and if that fails the pair is deleted:
    /// no half-made veth is left behind.
    ///
    /// If `spec.host_ifname` already exists and is this endpoint's veth (a
    /// veth whose peer is `spec.ifname` in `spec.netns`), both ends are
    /// converged to the spec instead; any other link of that name is a
    /// [`LinkError::Conflict`] and is left as it is.
    ///
    /// Not cancel-safe: a future dropped between the two steps leaves the
    /// pair unconfigured. Calling again with the same spec finishes it (the
    /// converge path above); [`delete_link`](Netlink::delete_link) removes it.
    pub async fn add_veth(&self, spec: &VethSpec) -> Result<(), LinkError> {
        for name in [&spec.host_ifname, &spec.ifname, &spec.bridge] {
            check_name(name)?;
        }
        check_prefix(spec.addr, spec.prefix_len)?;
        if !netns::is_netns(&spec.netns) {
            return Err(LinkError::NotNetns {
                path: spec.netns.clone(),
            });
        }
        let ns = File::open(&spec.netns).map_err(|source| LinkError::OpenNetns {
            path: spec.netns.clone(),
            source,
        })?;
        let bridge = self.bridge_index(&spec.bridge).await?;
        match self.rtnl.link(&spec.host_ifname).await? {
            Some(host) => self.converge_veth(spec, &ns, bridge, &host).await,
            None => self.create_veth(spec, &ns, bridge).await,
        }
    }

    /// Deletes the link `name` (`ip link del dev NAME`); deleting either end
    /// of a veth deletes both. Returns whether it existed.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        check_name(name)?;
        let Some(link) = self.rtnl.link(name).await? else {
            return Ok(false);
        };
        let existed = self.rtnl.del_link(name, link.header.index).await?;
        if existed {
            info!(link = name, netns = %self.rtnl.netns, "link deleted");
        }
        Ok(existed)
    }

    /// The index of link `name`, if there is one (`ip link show dev NAME`).
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        check_name(name)?;
        Ok(self.rtnl.link(name).await?.map(|l| l.header.index))
    }

    /// The link `name`, if there is one (`ip -d link show dev NAME`): its
    /// kind, master, MTU, up.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        check_name(name)?;
        Ok(self.rtnl.link(name).await?.as_ref().map(link_info))
    }

    /// All links of the namespace (`ip -d link show`).
    pub async fn links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        Ok(self.rtnl.links().await?.iter().map(link_info).collect())
    }

    /// `ip link set dev NAME up`, unless it is up already.
    pub(crate) async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        let link = self
            .rtnl
            .link(name)
            .await?
            .ok_or_else(|| self.vanished(name))?;
        self.converge_link(&link, Want::default()).await?;
        Ok(())
    }

    /// The link `name`; [`LinkError::NoSuchLink`] if there is none.
    async fn existing(&self, name: &str) -> Result<LinkInfo, LinkError> {
        check_name(name)?;
        match self.rtnl.link(name).await? {
            Some(link) => Ok(link_info(&link)),
            None => Err(LinkError::NoSuchLink {
                name: name.to_owned(),
                netns: self.rtnl.netns.clone(),
            }),
        }
    }

    /// The index of the VXLAN device `name`, which must exist.
    async fn vxlan_index(&self, name: &str) -> Result<u32, LinkError> {
        let found = self.existing(name).await?;
        self.check_kind(found, "vxlan").map(|l| l.index)
    }

    /// Deletes the link `name` if it is a `kind` (`ip link del dev NAME`);
    /// returns whether it existed. A link of another kind is
    /// [`LinkError::WrongKind`] and stays.
    pub(crate) async fn delete_link_of_kind(
        &self,
        name: &str,
        kind: &'static str,
    ) -> Result<bool, LinkError> {
        check_name(name)?;
        let Some(link) = self.rtnl.link(name).await? else {
            return Ok(false);
        };
        let found = self.check_kind(link_info(&link), kind)?;
        let existed = self.rtnl.del_link(name, found.index).await?;
        if existed {
            info!(link = name, kind, netns = %self.rtnl.netns, "link deleted");
        }
        Ok(existed)
    }

    fn check_kind(&self, found: LinkInfo, want: &'static str) -> Result<LinkInfo, LinkError> {
        if found.kind.as_deref() == Some(want) {
            return Ok(found);
        }
        Err(LinkError::WrongKind {
            kind: found.kind.unwrap_or_else(|| "device without a kind".into()),
            name: found.name,
            want,
            netns: self.rtnl.netns.clone(),
        })
    }

    /// An existing link that must be a bridge, given `mtu` (if any) and up.
    async fn converge_bridge(
        &self,
        link: &LinkMessage,
        mtu: Option<u32>,
    ) -> Result<Ensured, LinkError> {
        let found = link_info(link);
        if found.kind.as_deref() != Some("bridge") {
            return Err(self.not_a_bridge(&found));
        }
        let changed = self
            .converge_link(
                link,
                Want {
                    mtu,
                    ..Want::default()
                },
            )
            .await?;
        Ok(Ensured {
            index: found.index,
            change: LinkChange::updated_if(changed),
        })
    }

    /// Creates the link `msg` describes (down: it must not ask for up), turns
    /// IPv6 address generation off on it, then brings it up; returns its
    /// index. Up only afterwards, because the kernel gives a link its IPv6
    /// link-local address when it comes up, and does not take it back when
    /// the mode changes later. If a step after the creation fails, the link
    /// is deleted again.
    async fn create_without_ipv6(
        &self,
        call: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<u32, LinkError> {
        self.rtnl
            .write_link(LinkWrite::Add, call, name, msg)
            .await?;
        let configured = async {
            let link = self
                .rtnl
                .link(name)
                .await?
                .ok_or_else(|| self.vanished(name))?;
            let index = link.header.index;
            // `ip link set dev NAME addrgenmode none`
            let no_ipv6 = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]))
                .build();
            self.rtnl
                .write_link(
                    LinkWrite::Set,
                    "ip link set dev NAME addrgenmode none",
                    name,
                    no_ipv6,
                )
                .await?;
            self.converge_link(&link, Want::default()).await?;
            Ok(index)
        }
        .await;
        if let Err(error) = &configured {
            match self.delete_link(name).await {
                Ok(_) => debug!(link = name, %error, "half-made link removed"),
                Err(undo) => warn!(link = name, error = %undo, "could not remove a half-made link"),
            }
        }
        configured
    }

    async fn bridge_index(&self, name: &str) -> Result<u32, LinkError> {
        let link = self
            .rtnl
            .link(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchBridge {
                name: name.to_owned(),
                netns: self.rtnl.netns.clone(),
            })?;
        let found = link_info(&link);
        if found.kind.as_deref() == Some("bridge") {
            Ok(found.index)
        } else {
            Err(self.not_a_bridge(&found))
        }
    }

    async fn create_veth(&self, spec: &VethSpec, ns: &File, bridge: u32) -> Result<(), LinkError> {
        // `ip link add HOST mtu MTU master BRIDGE up type veth
        //    peer name IFNAME netns NS address MAC mtu MTU`
        // The peer cannot be brought up in the same request: the kernel
        // configures it before linking it to its other end, and `veth_open`
        // refuses a veth without a peer (ENOTCONN, `ip` included).
        let peer = LinkUnspec::new_with_name(&spec.ifname)
            .setns_by_fd(ns.as_raw_fd())
            .address(spec.mac.to_vec())
            .mtu(spec.mtu)
            .build();
        let pair = LinkVeth::new(&spec.host_ifname, &spec.ifname)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(bridge)
            .up()
            .build();
        self.rtnl
            .write_link(
                LinkWrite::Add,
                "ip link add HOST master BRIDGE up type veth peer name IFNAME netns NS",
                &spec.host_ifname,
                pair,
            )
            .await?;
        debug!(host = %spec.host_ifname, netns = %spec.netns.display(), "veth pair created");

        match configure_inside(spec, None).await {
            Ok(()) => {
                info!(
                    host = %spec.host_ifname,
                    bridge = %spec.bridge,
                    netns = %spec.netns.display(),
                    addr = %spec.addr,
                    "container attached"
                );
                Ok(())
            }
            Err(error) => {
                // Undo: deleting the host end takes the peer with it.
                match self.delete_link(&spec.host_ifname).await {
                    Ok(_) => debug!(host = %spec.host_ifname, "half-made veth removed"),
                    Err(undo) => warn!(
                        host = %spec.host_ifname,
                        error = %undo,
                        "could not remove a half-made veth"
                    ),
                }
                Err(error)
            }
        }
    }

    async fn converge_veth(
        &self,
        spec: &VethSpec,
        ns: &File,
        bridge: u32,
        host: &LinkMessage,
    ) -> Result<(), LinkError> {
        let found = link_info(host);
        let conflict = |reason: String| LinkError::Conflict {
            name: spec.host_ifname.clone(),
            netns: self.rtnl.netns.clone(),
            reason,
        };
        if found.kind.as_deref() != Some("veth") {
            let kind = found.kind.as_deref().unwrap_or("device without a kind");
            return Err(conflict(format!("it is a {kind}")));
        }
        let peer_nsid = host.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkNetNsId(id) => Some(*id),
            _ => None,
        });
        let wanted_nsid = self.rtnl.nsid(&spec.host_ifname, ns).await?;
        if peer_nsid.is_none() || peer_nsid != wanted_nsid {
            return Err(conflict(format!(
                "its peer is not in {}",
                spec.netns.display()
            )));
        }
        let peer_index = host.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(index) => Some(*index),
            _ => None,
        });
        let Some(peer_index) = peer_index else {
            return Err(conflict("it has no peer".into()));
        };
        self.converge_link(
            host,
            Want {
                mtu: Some(spec.mtu),
                master: Some(bridge),
                ..Want::default()
            },
        )
        .await?;
        configure_inside(spec, Some(peer_index)).await
    }

    /// Sets on `link` whatever of `want` (and up) it lacks, in one
    /// `ip link set` request; none if nothing differs. Returns whether it
    /// sent one.
    async fn converge_link(&self, link: &LinkMessage, want: Want) -> Result<bool, LinkError> {
        let found = link_info(link);
        let mut set = LinkUnspec::new_with_index(found.index);
        let mut changed = false;
        if let Some(mac) = want.mac
            && link_mac(link) != Some(mac)
        {
            set = set.address(mac.to_vec());
            changed = true;
        }
        if let Some(mtu) = want.mtu
            && found.mtu != Some(mtu)
        {
            set = set.mtu(mtu);
            changed = true;
        }
        if let Some(master) = want.master
            && found.master != Some(master)
        {
            set = set.controller(master);
            changed = true;
        }
        if !found.up {
            set = set.up();
            changed = true;
        }
        if changed {
            // `ip link set dev NAME [address MAC] [mtu MTU] [master BRIDGE] up`
            self.rtnl
                .write_link(
                    LinkWrite::Set,
                    "ip link set dev NAME address MAC mtu MTU master BRIDGE up",
                    &found.name,
                    set.build(),
                )
                .await?;
            debug!(link = %found.name, netns = %self.rtnl.netns, ?want, "link converged");
        }
        Ok(changed)
    }

    /// Gives link `name` the address `addr/prefix_len` unless it has it;
    /// removes the same address with another prefix length.
    async fn ensure_ipv4(
        &self,
        name: &str,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        let have = self.rtnl.ipv4_addrs(name, index).await?;
        if have.contains(&(addr, prefix_len)) {
            return Ok(());
        }
        for &(a, p) in &have {
            if a == addr {
                warn!(link = name, old = %format!("{a}/{p}"), new = %format!("{addr}/{prefix_len}"), "replacing the prefix length of an address");
                self.rtnl
                    .write_addr(AddrWrite::Del, name, index, a, p)
                    .await?;
            }
        }
        self.rtnl
            .write_addr(AddrWrite::Add, name, index, addr, prefix_len)
            .await?;
        debug!(link = name, netns = %self.rtnl.netns, %addr, prefix_len, "address added");
        Ok(())
    }

    /// Makes the main table's IPv4 default route go via `gateway` on link
    /// `index`, unless it does.
    async fn ensure_default_route(
        &self,
        name: &str,
        index: u32,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let routes = self.rtnl.ipv4_routes(name).await?;
        let present = routes
            .iter()
            .filter(|r| is_main_default(r))
            .any(|r| route_gateway(r) == Some(gateway) && route_oif(r) == Some(index));
        if !present {
            self.rtnl
                .replace_default_route(name, index, gateway)
                .await?;
            debug!(link = name, netns = %self.rtnl.netns, %gateway, "default route set");
        }
        Ok(())
    }

    fn not_a_bridge(&self, found: &LinkInfo) -> LinkError {
        LinkError::NotABridge {
            name: found.name.clone(),
            kind: found
                .kind
                .clone()
                .unwrap_or_else(|| "device without a kind".into()),
            netns: self.rtnl.netns.clone(),
        }
    }

    fn vanished(&self, name: &str) -> LinkError {
        LinkError::Vanished {
            name: name.to_owned(),
            netns: self.rtnl.netns.clone(),
        }
    }
}

/// The container's end of `spec`, through a socket opened inside
/// `spec.netns` and closed before returning: name (and, when converging, that
/// it is the peer at `peer_index`), MAC, MTU, up, address, default route.
async fn configure_inside(spec: &VethSpec, peer_index: Option<u32>) -> Result<(), LinkError> {
    let inside = Netlink::connect_in(&spec.netns).await?;
    let result = async {
        let link = inside
            .rtnl
            .link(&spec.ifname)
            .await?
            .ok_or_else(|| inside.vanished(&spec.ifname))?;
        let found = link_info(&link);
        if let Some(peer_index) = peer_index
            && (found.index != peer_index || found.kind.as_deref() != Some("veth"))
        {
            return Err(LinkError::Conflict {
                name: spec.host_ifname.clone(),
                netns: spec.netns.display().to_string(),
                reason: format!("its peer is not {}", spec.ifname),
            });
        }
        inside
            .converge_link(
                &link,
                Want {
                    mac: Some(spec.mac),
                    mtu: Some(spec.mtu),
                    ..Want::default()
                },
            )
            .await?;
        inside
            .ensure_ipv4(&spec.ifname, found.index, spec.addr, spec.prefix_len)
            .await?;
        if let Some(gateway) = spec.gateway {
            inside
                .ensure_default_route(&spec.ifname, found.index, gateway)
                .await?;
        }
        Ok(())
    }
    .await;
    inside.close().await;
    result
}

/// What [`Netlink::converge_link`] sets; the link is always brought up.
#[derive(Debug, Default)]
struct Want {
    mac: Option<[u8; 6]>,
    mtu: Option<u32>,
    master: Option<u32>,
}

/// The link's hardware address, if it is an Ethernet one.
fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
        _ => None,
    })
}

fn check_name(name: &str) -> Result<(), LinkError> {
    match ifname::invalid(name) {
        Some(reason) => Err(LinkError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_prefix(addr: Ipv4Addr, prefix_len: u8) -> Result<(), LinkError> {
    if prefix_len > 32 {
        return Err(LinkError::InvalidPrefix { addr, prefix_len });
    }
    Ok(())
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => info.mtu = Some(*mtu),
            LinkAttribute::Controller(master) => info.master = Some(*master),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    info
}

/// What the kernel would refuse, or silently make into something else, in a
/// [`VxlanSpec`].
fn check_vxlan(spec: &VxlanSpec) -> Result<(), LinkError> {
    let reason = if spec.vni > VNI_MAX {
        format!("vni {} does not fit in 24 bits", spec.vni)
    } else if spec.port == 0 {
        "port 0 (the kernel would use 8472)".to_owned()
    } else {
        return Ok(());
    };
    Err(LinkError::InvalidVxlan {
        name: spec.name.clone(),
        reason,
    })
}

/// Why `link` is not the VXLAN device `spec` describes in what cannot be
/// changed in place (kind, VNI, port, local address, learning, proxy,
/// remote or group, `external`); `None` if it is. MTU, master and up are
/// not looked at.
fn vxlan_mismatch(link: &LinkMessage, spec: &VxlanSpec) -> Option<String> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
        _ => None,
    });
    let infos = infos.unwrap_or_default();
    let kind = infos.iter().find_map(|i| match i {
        NlLinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    });
    if kind.as_deref() != Some("vxlan") {
        return Some(format!(
            "it is a {}",
            kind.as_deref().unwrap_or("device without a kind")
        ));
    }
    let data = infos
        .iter()
        .find_map(|i| match i {
            NlLinkInfo::Data(InfoData::Vxlan(data)) => Some(data.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    let (mut vni, mut port, mut local) = (None, None, None);
    let (mut learning, mut proxy, mut remote, mut external) = (false, false, false, false);
    for attr in data {
        match attr {
            InfoVxlan::Id(id) => vni = Some(*id),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Local(ip) => local = Some(*ip),
            InfoVxlan::Learning(on) => learning = *on,
            InfoVxlan::Proxy(on) => proxy = *on,
            InfoVxlan::Group(ip) => remote |= !ip.is_unspecified(),
            InfoVxlan::Group6(ip) => remote |= !ip.is_unspecified(),
            InfoVxlan::CollectMetadata(on) => external = *on,
            _ => {}
        }
    }
    if vni != Some(spec.vni) {
        Some(format!("vni {vni:?}, not {}", spec.vni))
    } else if port != Some(spec.port) {
        Some(format!("port {port:?}, not {}", spec.port))
    } else if local != spec.local {
        Some(format!("local {local:?}, not {:?}", spec.local))
    } else if learning {
        Some("learning".to_owned())
    } else if !proxy {
        Some("no proxy".to_owned())
    } else if remote {
        Some("a remote or group".to_owned())
    } else if external {
        Some("external (collect metadata)".to_owned())
    } else {
        None
    }
}

fn is_permanent(state: NeighbourState) -> bool {
    u16::from(state) & NUD_PERMANENT != 0
}

fn lladdr(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
        _ => None,
    })
}

/// An IPv4 neighbour entry; `None` for anything else.
fn neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    let ip = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    Some(Neighbour {
        ip,
        mac: lladdr(msg),
        permanent: is_permanent(msg.header.state),
    })
}

/// A device's own (`self`) FDB entry; `None` for the bridge's entries of
/// the port (`master`) and entries without an Ethernet address.
fn fdb_entry(msg: &NeighbourMessage) -> Option<FdbEntry> {
    if !msg.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    // In AF_BRIDGE messages the library leaves NDA_DST as bytes.
    let dst = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(Ipv4Addr::from)
        }
        _ => None,
    });
    Some(FdbEntry {
        mac: lladdr(msg)?,
        dst,
        permanent: is_permanent(msg.header.state),
    })
}

fn is_main_default(route: &RouteMessage) -> bool {
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    route.header.destination_prefix_length == 0
        && route.header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn route_gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
        _ => None,
    })
}

fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The errno of a netlink NACK.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// Whether [`Rtnl::write_link`] creates a link or changes one.
#[derive(Clone, Copy, Debug)]
enum LinkWrite {
    Add,
    Set,
}

/// Whether [`Rtnl::write_addr`] adds an address or deletes it.
#[derive(Clone, Copy, Debug)]
enum AddrWrite {
    Add,
    Del,
}

/// The netlink wrapper: every request to the kernel goes through one of
/// these methods, one request each, and comes back with its context.
#[derive(Debug)]
struct Rtnl {
    handle: Handle,
    /// The namespace the socket lives in, for messages: a path, or the
    /// thread's `net:[inode]`.
    netns: String,
}

impl Rtnl {
    fn error(&self, call: &'static str, link: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let link = link.to_owned();
        let netns = self.netns.clone();
        move |source| LinkError::Request {
            call,
            link,
            netns,
            source: Box::new(source),
        }
    }

    /// `ip link show dev NAME`; `None` if there is no such link.
    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.error("ip link show dev NAME", name)(e)),
        }
    }

    /// `ip link show`
    async fn links(&self) -> Result<Vec<LinkMessage>, LinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.error("ip link show", "all links"))
    }

    /// `ip link add ...` (RTM_NEWLINK, exclusive) or `ip link set ...`
    /// (RTM_SETLINK), as `call` says.
    async fn write_link(
        &self,
        verb: LinkWrite,
        call: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), LinkError> {
        let links = self.handle.link();
        match verb {
            LinkWrite::Add => links.add(msg).execute().await,
            LinkWrite::Set => links.set(msg).execute().await,
        }
        .map_err(self.error(call, name))
    }

    /// `ip link del dev NAME`; false if it was gone already.
    async fn del_link(&self, name: &str, index: u32) -> Result<bool, LinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(self.error("ip link del dev NAME", name)(e)),
        }
    }

    /// `ip -4 addr show dev NAME`, as (address, prefix length) pairs.
    async fn ipv4_addrs(&self, name: &str, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet;
        let msgs: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(self.error("ip -4 addr show dev NAME", name))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let address = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                local.or(address).map(|ip| (ip, m.header.prefix_len))
            })
            .collect())
    }

    /// `ip addr add ADDR/PREFIX dev NAME` (exclusive) or
    /// `ip addr del ADDR/PREFIX dev NAME`.
    async fn write_addr(
        &self,
        verb: AddrWrite,
        name: &str,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        let addrs = self.handle.address();
        match verb {
            AddrWrite::Add => addrs
                .add(index, addr.into(), prefix_len)
                .execute()
                .await
                .map_err(self.error("ip addr add ADDR/PREFIX dev NAME", name)),
            AddrWrite::Del => {
                let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(index)
                    .address(addr, prefix_len)
                    .build();
                addrs
                    .del(msg)
                    .execute()
                    .await
                    .map_err(self.error("ip addr del ADDR/PREFIX dev NAME", name))
            }
        }
    }

    /// `ip -4 route show table all`
    async fn ipv4_routes(&self, name: &str) -> Result<Vec<RouteMessage>, LinkError> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.error("ip -4 route show", name))
    }

    /// `ip route replace default via GATEWAY dev NAME`
    async fn replace_default_route(
        &self,
        name: &str,
        index: u32,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(self.error("ip route replace default via GATEWAY dev NAME", name))
    }

    /// `ip -4 neigh show dev NAME` (family `Inet`) or
    /// `bridge fdb show dev NAME` (family `Bridge`): one dump of the
    /// namespace's table, kept to the link's entries.
    async fn neighbours(
        &self,
        name: &str,
        index: u32,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, LinkError> {
        let call = match family {
            AddressFamily::Bridge => "bridge fdb show dev NAME",
            _ => "ip -4 neigh show dev NAME",
        };
        let all: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(self.error(call, name))?;
        Ok(all
            .into_iter()
            .filter(|n| n.header.ifindex == index)
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev NAME nud permanent`
    async fn neigh_replace(
        &self,
        name: &str,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), LinkError> {
        self.handle
            .neighbours()
            .add(index, ip.into())
            .state(NeighbourState::Permanent)
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(self.error(
                "ip neigh replace IP lladdr MAC dev NAME nud permanent",
                name,
            ))
    }

    /// `ip neigh del IP dev NAME`; false if there was no such entry.
    async fn neigh_del(&self, name: &str, index: u32, ip: Ipv4Addr) -> Result<bool, LinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes = vec![NeighbourAttribute::Destination(ip.into())];
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(false),
            Err(e) => Err(self.error("ip neigh del IP dev NAME", name)(e)),
        }
    }

    /// `bridge fdb replace MAC dev NAME dst IP self permanent`
    /// (RTM_NEWNEIGH, AF_BRIDGE, NTF_SELF: the VXLAN device's own table).
    async fn fdb_replace(
        &self,
        name: &str,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), LinkError> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst.into())
            .replace()
            .execute()
            .await
            .map_err(self.error(
                "bridge fdb replace MAC dev NAME dst IP self permanent",
                name,
            ))
    }

    /// `bridge fdb del MAC dev NAME dst IP self`; false if there was no
    /// such entry.
    async fn fdb_del(
        &self,
        name: &str,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<bool, LinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Destination(dst.into()),
        ];
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(false),
            Err(e) => Err(self.error("bridge fdb del MAC dev NAME dst IP self", name)(
                e,
            )),
        }
    }

    /// The id this namespace gives the namespace open at `ns`
    /// (`ip netns id`'s RTM_GETNSID with NETNSA_FD); `None` if none is
    /// assigned. `link` is the link being checked, for messages.
    async fn nsid(&self, link: &str, ns: &File) -> Result<Option<i32>, LinkError> {
        let mut msg = NsidMessage::default();
        // A file descriptor is never negative.
        msg.attributes = vec![NsidAttribute::Fd(ns.as_raw_fd().unsigned_abs())];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let fail = self.error("ip netns id (RTM_GETNSID)", link);
        let mut replies = match self.handle.clone().request(req) {
            Ok(replies) => replies,
            Err(e) => return Err(fail(e)),
        };
        let mut id = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(fail(rtnetlink::Error::NetlinkError(e)));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_dockers() {
        assert_eq!(
            mac_from_ipv4(Ipv4Addr::new(198, 18, 1, 2)),
            [0x02, 0x42, 198, 18, 1, 2]
        );
        assert_eq!(
            mac_from_ipv4(Ipv4Addr::new(192, 0, 2, 255)),
            [0x02, 0x42, 0xc0, 0x00, 0x02, 0xff]
        );
    }

    #[test]
    fn link_info_reads_the_attributes() {
        let msg = LinkVeth::new("veth0", "eth0")
            .mtu(1450)
            .controller(7)
            .up()
            .index(12)
            .build();
        assert_eq!(
            link_info(&msg),
            LinkInfo {
                index: 12,
                name: "veth0".into(),
                kind: Some("veth".into()),
                master: Some(7),
                up: true,
                mtu: Some(1450),
            }
        );
        let down = LinkUnspec::new_with_name("lo").build();
        let info = link_info(&down);
        assert!(!info.up);
        assert_eq!(info.kind, None);
    }

    #[test]
    fn default_route_recognised() {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(198, 18, 1, 1))
            .output_interface(3)
            .build();
        assert!(is_main_default(&route));
        assert_eq!(route_gateway(&route), Some(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(route_oif(&route), Some(3));
        route.header.destination_prefix_length = 24;
        assert!(!is_main_default(&route));
    }

    fn vxlan_spec() -> VxlanSpec {
        VxlanSpec {
            name: "vx0".into(),
            vni: 4242,
            port: 4789,
            local: None,
            mtu: 1450,
            bridge: "br0".into(),
        }
    }

    /// The device as the kernel dumps it: learning and proxy are always
    /// there, as u8.
    fn vxlan_link(
        vni: u32,
        port: u16,
        learning: bool,
        proxy: bool,
    ) -> LinkMessageBuilder<LinkVxlan> {
        LinkVxlan::new("vx0", vni)
            .port(port)
            .learning(learning)
            .proxy(proxy)
    }

    #[test]
    fn vxlan_mismatch_names_what_needs_a_new_device() {
        let spec = vxlan_spec();
        let same = vxlan_link(4242, 4789, false, true)
            .mtu(1400)
            .controller(9)
            .build();
        assert_eq!(
            vxlan_mismatch(&same, &spec),
            None,
            "MTU and master are not the device"
        );
        let cases = [
            (vxlan_link(4243, 4789, false, true).build(), "vni"),
            (vxlan_link(4242, 8472, false, true).build(), "port"),
            (vxlan_link(4242, 4789, true, true).build(), "learning"),
            (vxlan_link(4242, 4789, false, false).build(), "no proxy"),
            (
                vxlan_link(4242, 4789, false, true)
                    .local(Ipv4Addr::new(198, 18, 0, 21))
                    .build(),
                "local",
            ),
            (
                vxlan_link(4242, 4789, false, true)
                    .remote(Ipv4Addr::new(198, 18, 0, 22))
                    .build(),
                "remote",
            ),
            (LinkBridge::new("vx0").build(), "it is a bridge"),
            (LinkUnspec::new_with_name("vx0").build(), "without a kind"),
        ];
        for (link, want) in cases {
            let reason = vxlan_mismatch(&link, &spec).unwrap_or_default();
            assert!(reason.contains(want), "want {want:?}, got {reason:?}");
        }
        let with_local = VxlanSpec {
            local: Some(Ipv4Addr::new(198, 18, 0, 21)),
            ..spec
        };
        let local = vxlan_link(4242, 4789, false, true)
            .local(Ipv4Addr::new(198, 18, 0, 21))
            .build();
        assert_eq!(vxlan_mismatch(&local, &with_local), None);
    }

    #[test]
    fn vxlan_spec_checks() {
        assert!(check_vxlan(&vxlan_spec()).is_ok());
        let too_big = VxlanSpec {
            vni: VNI_MAX + 1,
            ..vxlan_spec()
        };
        assert!(matches!(
            check_vxlan(&too_big),
            Err(LinkError::InvalidVxlan { .. })
        ));
        let port0 = VxlanSpec {
            port: 0,
            ..vxlan_spec()
        };
        assert!(matches!(
            check_vxlan(&port0),
            Err(LinkError::InvalidVxlan { .. })
        ));
    }

    fn neigh_msg(
        family: AddressFamily,
        flags: NeighbourFlags,
        state: NeighbourState,
        attributes: Vec<NeighbourAttribute>,
    ) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        msg.header.ifindex = 5;
        msg.header.flags = flags;
        msg.header.state = state;
        msg.attributes = attributes;
        msg
    }

    #[test]
    fn neighbours_and_fdb_entries_are_read() {
        let mac = [2, 0x42, 198, 19, 42, 3];
        let ip = Ipv4Addr::new(198, 19, 42, 3);
        let vtep = Ipv4Addr::new(198, 18, 0, 22);
        let arp = neigh_msg(
            AddressFamily::Inet,
            NeighbourFlags::empty(),
            NeighbourState::Permanent,
            vec![
                NeighbourAttribute::Destination(ip.into()),
                NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            ],
        );
        assert_eq!(
            neighbour(&arp),
            Some(Neighbour {
                ip,
                mac: Some(mac),
                permanent: true
            })
        );
        let incomplete = neigh_msg(
            AddressFamily::Inet,
            NeighbourFlags::empty(),
            NeighbourState::Incomplete,
            vec![NeighbourAttribute::Destination(ip.into())],
        );
        assert_eq!(
            neighbour(&incomplete),
            Some(Neighbour {
                ip,
                mac: None,
                permanent: false
            })
        );
        // A state the library has no name for, with the permanent bit.
        assert!(is_permanent(NeighbourState::Other(0x80 | 0x40)));
        assert!(!is_permanent(NeighbourState::Noarp));

        // As dumped: in AF_BRIDGE messages NDA_DST comes back as bytes.
        let own = neigh_msg(
            AddressFamily::Bridge,
            NeighbourFlags::Own,
            NeighbourState::Permanent,
            vec![
                NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
                NeighbourAttribute::Destination(NeighbourAddress::Other(vtep.octets().to_vec())),
            ],
        );
        assert_eq!(
            fdb_entry(&own),
            Some(FdbEntry {
                mac,
                dst: Some(vtep),
                permanent: true
            })
        );
        let bridge_port = neigh_msg(
            AddressFamily::Bridge,
            NeighbourFlags::Controller,
            NeighbourState::Permanent,
            vec![NeighbourAttribute::LinkLayerAddress(mac.to_vec())],
        );
        assert_eq!(
            fdb_entry(&bridge_port),
            None,
            "the bridge's entry, not the device's"
        );
    }

    #[test]
    fn bad_names_and_prefixes_are_refused() {
        assert!(matches!(
            check_name("a-name-longer-than-15"),
            Err(LinkError::InvalidName { .. })
        ));
        assert!(check_name("veth1a2b3c4").is_ok());
        assert!(matches!(
            check_prefix(Ipv4Addr::new(198, 18, 1, 1), 33),
            Err(LinkError::InvalidPrefix { prefix_len: 33, .. })
        ));
        assert!(check_prefix(Ipv4Addr::new(198, 18, 1, 1), 32).is_ok());
    }
}
