//! Overlay networks on this node: for every network one of its containers
//! is on, a bridge and a VXLAN device (`swarmnet_dataplane::overlay`), the
//! containers' veths on the bridge, and for every endpoint other nodes
//! announce (the gossip table) a neighbour and an FDB entry. A reconcile
//! loop converges the kernel to that whenever the table changes, and every
//! second (so what someone deleted by hand comes back). Nothing exists on a
//! node without a container on the network.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use swarmnet_dataplane::{
    Netlink, VethSpec, VxlanSpec, mac_from_ipv4,
    overlay::{self, OverlaySpec, RemoteEndpoint},
};
use tokio::sync::{Notify, OnceCell};
use tracing::{debug, info, warn};

use crate::gossip::{Endpoints, table};

/// How often the kernel is checked against the desired state.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// After the agent starts, entries are only added, never removed, until
/// the table has heard from the other nodes: a restarted agent keeps its
/// containers' traffic flowing.
const START_GRACE: Duration = Duration::from_secs(10);
/// What VXLAN adds to a frame (outer IPv4 + UDP + VXLAN + inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;

/// What a node needs to put a container on an overlay network; a manager
/// allocates the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network_id: String,
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vni: u32,
    /// The network's MTU option, if it has one.
    pub mtu: Option<u32>,
    pub ip: Ipv4Addr,
    pub data_path_port: u16,
    /// The rest of the network's definition, for a worker's `docker
    /// network inspect`.
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
}

/// A container's endpoint on an overlay network, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayEndpoint {
    pub network_id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub ifname: String,
    pub host_veth: String,
    pub vni: u32,
    pub mtu: u32,
    pub data_path_port: u16,
    pub endpoint_id: String,
    /// The container's name, as announced.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay network {network}")]
    Kernel {
        network: String,
        #[source]
        source: overlay::OverlayError,
    },
    #[error("attach to overlay network {network}")]
    Link {
        network: String,
        #[source]
        source: swarmnet_dataplane::LinkError,
    },
    #[error("this node is in no swarm: overlay networks need one")]
    NoSwarm,
}

/// The kernel names of a network's devices (at most 15 bytes).
pub fn device_names(network_id: &str) -> (String, String) {
    let short = &network_id[..network_id.len().min(12)];
    (format!("ov-{short}"), format!("vx-{short}"))
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A network with containers on this node.
#[derive(Debug, Clone)]
struct Local {
    vni: u32,
    mtu: u32,
    port: u16,
    /// Containers' endpoints, by container ID.
    endpoints: BTreeMap<String, OverlayEndpoint>,
}

struct Node {
    vtep: Ipv4Addr,
    table: Endpoints,
}

pub struct Overlay {
    netlink: OnceCell<Netlink>,
    /// The underlay interface: networks without an MTU option get its MTU
    /// less VXLAN's overhead.
    underlay_iface: Option<String>,
    node: Mutex<Option<Node>>,
    networks: Mutex<BTreeMap<String, Local>>,
    /// One kernel change at a time (netlink dumps on one socket).
    serial: tokio::sync::Mutex<()>,
    wake: Notify,
    started: Instant,
    /// Remote endpoints the table has told of since the agent started
    /// (network, address): during the start grace only entries it never
    /// knew are kept; one it knew and dropped goes at once.
    known: Mutex<std::collections::BTreeSet<(String, Ipv4Addr)>>,
}

impl Overlay {
    pub fn new(underlay_iface: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            netlink: OnceCell::new(),
            underlay_iface,
            node: Mutex::new(None),
            networks: Mutex::new(BTreeMap::new()),
            serial: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            started: Instant::now(),
            known: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    async fn nl(&self) -> Result<&Netlink, swarmnet_dataplane::LinkError> {
        self.netlink
            .get_or_try_init(|| async { Netlink::connect() })
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Local>> {
        self.networks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The swarm this node is in (its underlay address and its endpoint
    /// table), or none; the endpoints of running containers are announced
    /// to a new table.
    pub async fn set_node(&self, node: Option<(Ipv4Addr, Endpoints)>) {
        let table = node.as_ref().map(|(_, t)| t.clone());
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) =
            node.map(|(vtep, table)| Node { vtep, table });
        if let Some(table) = table {
            let locals: Vec<(String, String, OverlayEndpoint)> = self
                .lock()
                .iter()
                .flat_map(|(net, l)| {
                    l.endpoints
                        .iter()
                        .map(|(cid, ep)| (net.clone(), cid.clone(), ep.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (net, cid, ep) in locals {
                table
                    .set(
                        &net,
                        &cid,
                        Some(table::Endpoint {
                            ip: ep.ip,
                            mac: mac_from_ipv4(ep.ip),
                            name: ep.name.clone(),
                        }),
                    )
                    .await;
            }
        }
        self.wake.notify_one();
    }

    fn table(&self) -> Option<Endpoints> {
        self.node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|n| n.table.clone())
    }

    /// This node's underlay address, in a swarm.
    pub fn me(&self) -> Option<Ipv4Addr> {
        self.vtep()
    }

    fn vtep(&self) -> Option<Ipv4Addr> {
        self.node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|n| n.vtep)
    }

    /// The MTU of a network on this node: its option, else the
    /// underlay's MTU now, less VXLAN's overhead.
    async fn mtu_for(&self, att: &Attachment) -> u32 {
        if let Some(m) = att.mtu {
            return m;
        }
        let mut underlay: u32 = 1500;
        if let (Some(iface), Ok(nl)) = (&self.underlay_iface, self.nl().await)
            && let Ok(links) = nl.links().await
            && let Some(m) = links.iter().find(|l| &l.name == iface).and_then(|l| l.mtu)
        {
            underlay = m;
        }
        underlay.saturating_sub(VXLAN_OVERHEAD)
    }

    fn spec(&self, network_id: &str, local: &Local, remotes: Vec<RemoteEndpoint>) -> OverlaySpec {
        let (bridge, vxlan) = device_names(network_id);
        OverlaySpec {
            bridge: bridge.clone(),
            vxlan: VxlanSpec {
                name: vxlan,
                vni: local.vni,
                port: local.port,
                local: self.vtep(),
                mtu: local.mtu,
                bridge,
            },
            remotes,
        }
    }

    /// Puts a container on a network: the network's devices (made if this
    /// is its first container here), a veth into the container's namespace
    /// named `ifname`, and the endpoint announced to the network's nodes.
    pub async fn join(
        &self,
        att: &Attachment,
        netns: &Path,
        ifname: &str,
        host_veth: &str,
        container_id: &str,
        name: &str,
    ) -> Result<OverlayEndpoint, OverlayError> {
        let table = self.table().ok_or(OverlayError::NoSwarm)?;
        let mtu = self.mtu_for(att).await;
        let mac = mac_from_ipv4(att.ip);
        let ep = OverlayEndpoint {
            network_id: att.network_id.clone(),
            network: att.name.clone(),
            ip: att.ip,
            prefix_len: att.subnet.prefix_len(),
            gateway: att.gateway,
            mac: mac_string(mac),
            ifname: ifname.to_owned(),
            host_veth: host_veth.to_owned(),
            vni: att.vni,
            mtu,
            data_path_port: att.data_path_port,
            endpoint_id: random_hex(),
            name: name.to_owned(),
        };
        let local = {
            let mut g = self.lock();
            let l = g.entry(att.network_id.clone()).or_insert_with(|| Local {
                vni: att.vni,
                mtu,
                port: att.data_path_port,
                endpoints: BTreeMap::new(),
            });
            l.endpoints.insert(container_id.to_owned(), ep.clone());
            l.clone()
        };
        let result = async {
            let _serial = self.serial.lock().await;
            let nl = self.nl().await.map_err(|source| OverlayError::Link {
                network: att.name.clone(),
                source,
            })?;
            let remotes = self.remotes(&table, &att.network_id);
            overlay::converge(nl, &self.spec(&att.network_id, &local, remotes))
                .await
                .map_err(|source| OverlayError::Kernel {
                    network: att.name.clone(),
                    source,
                })?;
            let (bridge, _) = device_names(&att.network_id);
            let _ = nl.delete_link(host_veth).await;
            nl.add_veth(&VethSpec {
                host_ifname: host_veth.to_owned(),
                bridge,
                netns: netns.to_owned(),
                ifname: ifname.to_owned(),
                mac,
                addr: att.ip,
                prefix_len: att.subnet.prefix_len(),
                gateway: None,
                mtu,
            })
            .await
            .map_err(|source| OverlayError::Link {
                network: att.name.clone(),
                source,
            })
        }
        .await;
        if let Err(e) = result {
            let mut g = self.lock();
            if let Some(l) = g.get_mut(&att.network_id) {
                l.endpoints.remove(container_id);
                if l.endpoints.is_empty() {
                    g.remove(&att.network_id);
                }
            }
            self.wake.notify_one();
            return Err(e);
        }
        table
            .set(
                &att.network_id,
                container_id,
                Some(table::Endpoint {
                    ip: att.ip,
                    mac,
                    name: name.to_owned(),
                }),
            )
            .await;
        info!(network = %att.name, ip = %att.ip, container = %&container_id[..12.min(container_id.len())], "joined overlay network");
        Ok(ep)
    }

    /// A running container found at start: its endpoint is known again and
    /// announced; the kernel is left as it is.
    pub async fn adopt(&self, container_id: &str, name: &str, ep: &OverlayEndpoint) {
        {
            let mut g = self.lock();
            let l = g.entry(ep.network_id.clone()).or_insert_with(|| Local {
                vni: ep.vni,
                mtu: ep.mtu,
                port: ep.data_path_port,
                endpoints: BTreeMap::new(),
            });
            l.endpoints.insert(container_id.to_owned(), ep.clone());
        }
        if let Some(table) = self.table() {
            let mac = mac_from_ipv4(ep.ip);
            table
                .set(
                    &ep.network_id,
                    container_id,
                    Some(table::Endpoint {
                        ip: ep.ip,
                        mac,
                        name: name.to_owned(),
                    }),
                )
                .await;
        }
        self.wake.notify_one();
    }

    /// Takes a container off a network: the announcement withdrawn, its
    /// veth deleted, and the network's devices too if it was the last.
    pub async fn leave(&self, container_id: &str, ep: &OverlayEndpoint) {
        if let Some(table) = self.table() {
            table.set(&ep.network_id, container_id, None).await;
        }
        let last = {
            let mut g = self.lock();
            match g.get_mut(&ep.network_id) {
                Some(l) => {
                    l.endpoints.remove(container_id);
                    if l.endpoints.is_empty() {
                        g.remove(&ep.network_id);
                        true
                    } else {
                        false
                    }
                }
                None => true,
            }
        };
        let _serial = self.serial.lock().await;
        match self.nl().await {
            Ok(nl) => {
                if let Err(e) = nl.delete_link(&ep.host_veth).await {
                    debug!(veth = %ep.host_veth, error = %e, "delete overlay veth");
                }
                if last {
                    let (bridge, vxlan) = device_names(&ep.network_id);
                    if let Err(e) = overlay::remove(nl, &bridge, &vxlan).await {
                        warn!(network = %ep.network, error = %crate::error_chain(&e), "remove overlay devices");
                    }
                }
            }
            Err(e) => warn!(error = %e, "netlink"),
        }
        info!(network = %ep.network, ip = %ep.ip, "left overlay network");
    }

    fn remotes(&self, table: &Endpoints, network_id: &str) -> Vec<RemoteEndpoint> {
        let view = table.view();
        view.remote
            .get(network_id)
            .map(|v| {
                v.iter()
                    .map(|r| RemoteEndpoint {
                        ip: r.endpoint.ip,
                        mac: r.endpoint.mac,
                        vtep: r.vtep,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The nodes on a network, with their underlay addresses (for
    /// `docker network inspect`'s Peers).
    pub fn peers(&self, network_id: &str) -> Vec<(String, Option<Ipv4Addr>)> {
        self.table()
            .map(|t| t.view().peers.get(network_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Converges every network with local containers; during the start
    /// grace entries the table does not (yet) know are kept.
    async fn reconcile(&self) {
        let Some(table) = self.table() else {
            return;
        };
        let locals: Vec<(String, Local)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _serial = self.serial.lock().await;
        let nl = match self.nl().await {
            Ok(nl) => nl,
            Err(e) => {
                warn!(error = %e, "netlink");
                return;
            }
        };
        let grace = self.started.elapsed() < START_GRACE;
        for (id, local) in locals {
            let mut remotes = self.remotes(&table, &id);
            let spec = self.spec(&id, &local, Vec::new());
            if grace {
                let known = {
                    let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
                    k.extend(remotes.iter().map(|r| (id.clone(), r.ip)));
                    k.clone()
                };
                let kept: Vec<RemoteEndpoint> = observed_remotes(nl, &spec.vxlan.name)
                    .await
                    .into_iter()
                    .filter(|o| !known.contains(&(id.clone(), o.ip)))
                    .filter(|o| !remotes.iter().any(|r| r.ip == o.ip || r.mac == o.mac))
                    .collect();
                remotes.extend(kept);
            }
            let spec = OverlaySpec { remotes, ..spec };
            match overlay::converge(nl, &spec).await {
                Ok(report) if !report.is_unchanged() => {
                    info!(network = %id, ?report, "overlay network converged");
                }
                Ok(_) => {}
                Err(e) => warn!(network = %id, error = %crate::error_chain(&e), "overlay converge"),
            }
        }
    }

    /// Runs the reconcile loop until the agent stops.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut table_rx: Option<tokio::sync::watch::Receiver<_>> = None;
            loop {
                if table_rx.is_none() {
                    table_rx = me.table().map(|t| t.subscribe());
                }
                let changed = async {
                    match table_rx.as_mut() {
                        Some(rx) => {
                            if rx.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = changed => {}
                    () = me.wake.notified() => { table_rx = None; }
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                me.reconcile().await;
            }
        });
    }
}

/// The entries a VXLAN device has, as remote endpoints (neighbour IP ->
/// MAC joined with FDB MAC -> node).
async fn observed_remotes(nl: &Netlink, vxlan: &str) -> Vec<RemoteEndpoint> {
    let (Ok(neigh), Ok(fdb)) = (nl.neighbours(vxlan).await, nl.fdb_entries(vxlan).await) else {
        return Vec::new();
    };
    neigh
        .into_iter()
        .filter(|n| n.permanent)
        .filter_map(|n| {
            let mac = n.mac?;
            let dst = fdb.iter().find(|f| f.mac == mac && f.permanent)?.dst?;
            Some(RemoteEndpoint {
                ip: n.ip,
                mac,
                vtep: dst,
            })
        })
        .collect()
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}
