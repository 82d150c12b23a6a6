//! Standalone containers' networking on a node: a network namespace the
//! agent prepares for each container (`bridge` and `none`), and the node's
//! `bridge` network (Docker's `docker0`): a Linux bridge holding `--bip`,
//! one veth per container, addresses from [`BridgeIpam`]. The kernel work
//! is `swarmnet_dataplane`'s (rtnetlink).

use std::{net::Ipv4Addr, path::Path, sync::Mutex};

use swarmnet_dataplane::{Netlink, VethSpec, mac_from_ipv4, netns};
use tokio::sync::OnceCell;
use tracing::warn;

use super::{
    container::BridgeEndpoint,
    ipam::{BridgeIpam, IpamError},
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("network namespace")]
    Netns(#[from] swarmnet_dataplane::NetnsError),
    #[error("bridge network")]
    Link(#[from] swarmnet_dataplane::LinkError),
}

pub struct BridgeNet {
    name: String,
    mtu: u32,
    ipam: Mutex<BridgeIpam>,
    netlink: OnceCell<Netlink>,
    /// Held across each attach and detach: one netlink socket carries one
    /// dump at a time (the kernel answers a second with EBUSY), and the
    /// bridge is made once. `true` once the bridge is known to exist.
    serial: tokio::sync::Mutex<bool>,
}

impl BridgeNet {
    pub fn new(name: &str, ipam: BridgeIpam, mtu: u32) -> Self {
        Self {
            name: name.to_owned(),
            mtu,
            ipam: Mutex::new(ipam),
            netlink: OnceCell::new(),
            serial: tokio::sync::Mutex::new(false),
        }
    }

    pub fn subnet(&self) -> ipnet::Ipv4Net {
        self.lock().subnet()
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.lock().gateway()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BridgeIpam> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the address of a container found running at start.
    pub fn reserve(&self, ip: Ipv4Addr) {
        self.lock().reserve(ip);
    }

    async fn netlink(&self) -> Result<&Netlink, NetError> {
        Ok(self
            .netlink
            .get_or_try_init(|| async { Netlink::connect() })
            .await?)
    }

    /// An address, the bridge (made on first use), and a veth whose far
    /// end is `eth0` in the namespace at `ns`.
    pub async fn attach(&self, ns: &Path, short_id: &str) -> Result<BridgeEndpoint, NetError> {
        let (ip, subnet, gateway) = {
            let mut ipam = self.lock();
            (ipam.allocate()?, ipam.subnet(), ipam.gateway())
        };
        let mut bridge_ok = self.serial.lock().await;
        let result = async {
            let nl = self.netlink().await?;
            if !*bridge_ok || nl.link_index(&self.name).await?.is_none() {
                nl.ensure_bridge(&self.name, gateway, subnet.prefix_len(), Some(self.mtu))
                    .await?;
                *bridge_ok = true;
            }
            let mac = mac_from_ipv4(ip);
            let host_veth = format!("veth{}", &short_id[..7.min(short_id.len())]);
            // A veth of an earlier run of this container may be left.
            let _ = nl.delete_link(&host_veth).await;
            nl.add_veth(&VethSpec {
                host_ifname: host_veth.clone(),
                bridge: self.name.clone(),
                netns: ns.to_owned(),
                ifname: "eth0".to_owned(),
                mac,
                addr: ip,
                prefix_len: subnet.prefix_len(),
                gateway: Some(gateway),
                mtu: self.mtu,
            })
            .await?;
            Ok::<_, NetError>(BridgeEndpoint {
                ip,
                prefix_len: subnet.prefix_len(),
                gateway,
                mac: mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                host_veth,
                endpoint_id: endpoint_id(),
            })
        }
        .await;
        if result.is_err() {
            self.lock().release(ip);
        }
        result
    }

    /// Removes the container's veth (if its namespace did not take it
    /// along already) and frees its address.
    pub async fn detach(&self, ep: &BridgeEndpoint) {
        let _serial = self.serial.lock().await;
        match self.netlink().await {
            Ok(nl) => {
                if let Err(e) = nl.delete_link(&ep.host_veth).await {
                    warn!(veth = %ep.host_veth, error = %e, "delete the container's veth");
                }
            }
            Err(e) => warn!(error = %e, "netlink"),
        }
        self.lock().release(ep.ip);
    }
}

fn endpoint_id() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

/// A new namespace at `path` (loopback up).
pub fn create_netns(path: &Path) -> Result<(), NetError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if netns::is_netns(path) {
        netns::remove(path)?;
    }
    Ok(netns::create(path)?)
}

pub fn remove_netns(path: &Path) {
    if let Err(e) = netns::remove(path) {
        warn!(path = %path.display(), error = %e, "remove the container's network namespace");
    }
}
