//! Overlay networks in the replicated state, and the allocations the Raft
//! leader makes for them by applying commands: subnets from the swarm's
//! default address pools, VXLAN IDs from 4096 up, container addresses.
//! Pure, as the rest of the state machine: every replica that applies
//! the same commands makes the same allocations.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::state::{CommandError, State};

/// The lowest VXLAN ID handed out (Docker's overlay driver starts here).
pub const FIRST_VNI: u32 = 4096;
/// The largest VXLAN ID (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The driver option that sets a network's MTU.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// The driver option dockerd shows with a network's VXLAN IDs.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// Who holds an address of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node_id: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub attachable: bool,
    pub internal: bool,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where container addresses come from (the subnet unless
    /// `--ip-range`).
    pub ip_range: Option<Ipv4Net>,
    pub vni: u32,
    pub addresses: BTreeMap<Ipv4Addr, Holder>,
    /// Next-fit position of the address allocator.
    #[serde(default)]
    pub next: u32,
}

impl NetworkRecord {
    /// The MTU set with `--opt com.docker.network.driver.mtu=N`, if any.
    pub fn mtu(&self) -> Option<u32> {
        self.options.get(MTU_OPTION).and_then(|m| m.parse().ok())
    }

    /// The address a container holds on this network.
    pub fn address_of(&self, container_id: &str) -> Option<Ipv4Addr> {
        self.addresses
            .iter()
            .find(|(_, h)| h.container_id == container_id)
            .map(|(ip, _)| *ip)
    }
}

/// `docker network create`, as the API took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// Made by the proposer, so a retried proposal is recognised.
    pub id: String,
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub attachable: bool,
    pub internal: bool,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CommandError {
    CommandError::InvalidArgument(msg.into())
}

fn parse_net(s: &str) -> Result<Ipv4Net, CommandError> {
    s.trim()
        .parse::<Ipv4Net>()
        .map_err(|_| invalid(format!("invalid CIDR address: {s}")))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of `size` bits in `pools`, in order, that overlaps no
/// subnet in `taken` (Docker's default address pools).
pub fn next_subnet(pools: &[Ipv4Net], size: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    for pool in pools {
        if size < pool.prefix_len() {
            continue;
        }
        let Ok(subnets) = pool.subnets(size) else {
            continue;
        };
        for s in subnets {
            if !taken.iter().any(|t| overlaps(t, &s)) {
                return Some(s);
            }
        }
    }
    None
}

impl State {
    pub fn network(&self, id: &str) -> Option<&NetworkRecord> {
        self.networks.get(id)
    }

    /// A network by full ID, name, or unique ID prefix (Docker's order).
    pub fn find_network(&self, key: &str) -> Option<&NetworkRecord> {
        if let Some(n) = self.networks.get(key) {
            return Some(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name == key) {
            return Some(n);
        }
        let mut hits = self.networks.values().filter(|n| n.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(n), None) if !key.is_empty() => Some(n),
            _ => None,
        }
    }

    pub(super) fn create_network(
        &mut self,
        req: NetworkRequest,
        index: u64,
        now: &str,
    ) -> Result<bool, CommandError> {
        let cluster = self.cluster.as_ref().ok_or(CommandError::NotInitialized)?;
        if let Some(existing) = self.networks.get(&req.id) {
            // A retried proposal of a network that was created.
            if existing.name == req.name {
                return Ok(false);
            }
            return Err(invalid(format!("network ID {} is taken", req.id)));
        }
        if req.driver != "overlay" {
            return Err(invalid(format!(
                "network driver {:?} is not supported in a swarm by swarmnet (overlay is)",
                req.driver
            )));
        }
        if req.name.is_empty() {
            return Err(invalid("network name cannot be empty"));
        }
        if self.networks.values().any(|n| n.name == req.name) {
            return Err(CommandError::NetworkExists(req.name));
        }
        if let Some(mtu) = req.options.get(MTU_OPTION) {
            match mtu.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => {
                    return Err(invalid(format!(
                        "invalid MTU value {mtu:?}: it must be a number between 68 and 65535"
                    )));
                }
            }
        }
        let taken: Vec<Ipv4Net> = self.networks.values().map(|n| n.subnet).collect();
        let subnet = match &req.subnet {
            Some(s) => {
                let net = parse_net(s)?;
                if net.trunc() != net {
                    return Err(invalid(format!(
                        "invalid subnet {s}: it has host bits set (did you mean {}?)",
                        net.trunc()
                    )));
                }
                if net.prefix_len() > 30 {
                    return Err(invalid(format!(
                        "invalid subnet {s}: too small for containers"
                    )));
                }
                if taken.iter().any(|t| overlaps(t, &net)) {
                    return Err(invalid(
                        "invalid pool request: Pool overlaps with other one on this address space",
                    ));
                }
                net
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(invalid(
                        "a gateway or an IP range needs a subnet (--subnet)",
                    ));
                }
                let pools = cluster
                    .default_addr_pool
                    .iter()
                    .map(|p| parse_net(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let size = u8::try_from(cluster.subnet_size).unwrap_or(24);
                next_subnet(&pools, size, &taken).ok_or_else(|| {
                    invalid("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")
                })?
            }
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let ip: Ipv4Addr = g
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("invalid gateway address: {g}")))?;
                if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
                    return Err(invalid(format!("no matching subnet for gateway {g}")));
                }
                ip
            }
            None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
        };
        let ip_range = match &req.ip_range {
            Some(r) => {
                let range = parse_net(r)?.trunc();
                if !subnet.contains(&range.network()) || !subnet.contains(&range.broadcast()) {
                    return Err(invalid(format!("no matching subnet for range {r}")));
                }
                Some(range)
            }
            None => None,
        };
        let used: BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
        let vni = (FIRST_VNI..=MAX_VNI)
            .find(|v| !used.contains(v))
            .ok_or_else(|| invalid("no VXLAN ID left"))?;
        let mut options = req.options;
        options.insert(VNI_OPTION.to_owned(), vni.to_string());
        self.networks.insert(
            req.id.clone(),
            NetworkRecord {
                id: req.id,
                name: req.name,
                created_at: now.to_owned(),
                updated_at: now.to_owned(),
                version: index,
                driver: req.driver,
                labels: req.labels,
                options,
                attachable: req.attachable,
                internal: req.internal,
                subnet,
                gateway,
                ip_range,
                vni,
                addresses: BTreeMap::new(),
                next: 0,
            },
        );
        Ok(true)
    }

    pub(super) fn remove_network(&mut self, id: &str) -> Result<(), CommandError> {
        let n = self
            .networks
            .get(id)
            .ok_or_else(|| CommandError::NoSuchNetwork(id.to_owned()))?;
        if !n.addresses.is_empty() {
            return Err(CommandError::NetworkInUse(format!(
                "error while removing network: network {} id {} has active endpoints",
                n.name, n.id
            )));
        }
        self.networks.remove(id);
        Ok(())
    }

    /// An address for `container_id` on the network; the one it holds if
    /// it holds one (so a retried proposal allocates nothing new).
    pub(super) fn allocate_address(
        &mut self,
        network_id: &str,
        holder: Holder,
        index: u64,
        now: &str,
    ) -> Result<bool, CommandError> {
        let n = self
            .networks
            .get_mut(network_id)
            .ok_or_else(|| CommandError::NoSuchNetwork(network_id.to_owned()))?;
        if n.address_of(&holder.container_id).is_some() {
            return Ok(false);
        }
        let range = n.ip_range.unwrap_or(n.subnet);
        let first = u32::from(range.network()).max(u32::from(n.subnet.network()) + 1);
        let last = u32::from(range.broadcast()).min(u32::from(n.subnet.broadcast()) - 1);
        if last < first {
            return Err(invalid(format!("network {} has no addresses", n.name)));
        }
        let span = last - first + 1;
        let start = n.next.clamp(first, last);
        for i in 0..span {
            let v = first + (start - first + i) % span;
            let ip = Ipv4Addr::from(v);
            if ip != n.gateway && !n.addresses.contains_key(&ip) {
                n.addresses.insert(ip, holder);
                n.next = if v == last { first } else { v + 1 };
                n.version = index;
                n.updated_at = now.to_owned();
                return Ok(true);
            }
        }
        Err(invalid(format!(
            "no available IPv4 addresses on this network's address pools: {} ({})",
            n.name, n.subnet
        )))
    }

    pub(super) fn release_address(
        &mut self,
        network_id: &str,
        container_id: &str,
        index: u64,
        now: &str,
    ) -> bool {
        let Some(n) = self.networks.get_mut(network_id) else {
            return false;
        };
        let Some(ip) = n.address_of(container_id) else {
            return false;
        };
        n.addresses.remove(&ip);
        n.version = index;
        n.updated_at = now.to_owned();
        true
    }

    /// Drops every address a node held (it left the swarm).
    pub(super) fn release_node_addresses(
        &mut self,
        node_id: &str,
        index: u64,
        now: &str,
    ) -> Vec<String> {
        let mut touched = Vec::new();
        for n in self.networks.values_mut() {
            let before = n.addresses.len();
            n.addresses.retain(|_, h| h.node_id != node_id);
            if n.addresses.len() != before {
                n.version = index;
                n.updated_at = now.to_owned();
                touched.push(n.id.clone());
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{
        Command,
        tests::{initialised_with_pools, node},
    };

    fn req(id: &str, name: &str, subnet: Option<&str>) -> NetworkRequest {
        NetworkRequest {
            id: id.into(),
            name: name.into(),
            driver: "overlay".into(),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            attachable: true,
            internal: false,
            subnet: subnet.map(str::to_owned),
            gateway: None,
            ip_range: None,
        }
    }

    fn create(s: &mut State, r: NetworkRequest) -> Result<(), CommandError> {
        s.apply(Command::CreateNetwork { req: Box::new(r) }, "t")
            .map(|_| ())
    }

    #[test]
    fn default_pools_in_order_then_exhausted() {
        let mut s = initialised_with_pools(&["198.19.0.0/24", "198.19.1.0/24"], 26);
        let mut got = Vec::new();
        for i in 0..8 {
            create(&mut s, req(&format!("n{i}"), &format!("net{i}"), None)).expect("create");
            got.push(s.networks[&format!("n{i}")].subnet.to_string());
        }
        assert_eq!(
            got,
            [
                "198.19.0.0/26",
                "198.19.0.64/26",
                "198.19.0.128/26",
                "198.19.0.192/26",
                "198.19.1.0/26",
                "198.19.1.64/26",
                "198.19.1.128/26",
                "198.19.1.192/26"
            ]
        );
        let e = create(&mut s, req("n9", "net9", None)).expect_err("exhausted");
        assert!(e.to_string().contains("could not find an available"), "{e}");
        // Removing one frees its subnet for the next.
        s.apply(Command::RemoveNetwork { id: "n2".into() }, "t")
            .expect("rm");
        create(&mut s, req("n10", "net10", None)).expect("reuse");
        assert_eq!(s.networks["n10"].subnet.to_string(), "198.19.0.128/26");
        // Explicit subnets count as taken.
        let mut s = initialised_with_pools(&["198.19.0.0/24"], 26);
        create(&mut s, req("a", "a", Some("198.19.0.0/26"))).expect("explicit");
        create(&mut s, req("b", "b", None)).expect("auto");
        assert_eq!(s.networks["b"].subnet.to_string(), "198.19.0.64/26");
    }

    #[test]
    fn vnis_and_validation() {
        let mut s = initialised_with_pools(&["198.19.0.0/16"], 24);
        create(&mut s, req("a", "a", Some("198.19.1.0/24"))).expect("a");
        create(&mut s, req("b", "b", Some("198.19.2.0/24"))).expect("b");
        assert_eq!((s.networks["a"].vni, s.networks["b"].vni), (4096, 4097));
        assert_eq!(s.networks["a"].gateway, Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(s.networks["a"].options[VNI_OPTION], "4096");
        let before = s.clone();
        let cases = [
            (req("c", "a", Some("198.19.3.0/24")), "already exists"),
            (req("c", "c", Some("198.19.1.0/25")), "overlaps"),
            (req("c", "c", Some("198.19.0.0/16")), "overlaps"),
            (req("c", "c", Some("198.19.3.0/33")), "invalid CIDR"),
            (req("c", "c", Some("nonsense")), "invalid CIDR"),
            (req("c", "c", Some("198.19.3.1/24")), "host bits"),
            (
                NetworkRequest {
                    gateway: Some("198.19.9.1".into()),
                    ..req("c", "c", Some("198.19.3.0/24"))
                },
                "no matching subnet for gateway",
            ),
            (
                NetworkRequest {
                    ip_range: Some("198.19.9.0/25".into()),
                    ..req("c", "c", Some("198.19.3.0/24"))
                },
                "no matching subnet for range",
            ),
            (
                NetworkRequest {
                    driver: "macvlan".into(),
                    ..req("c", "c", None)
                },
                "not supported",
            ),
            (
                NetworkRequest {
                    options: [(MTU_OPTION.to_owned(), "big".to_owned())].into(),
                    ..req("c", "c", None)
                },
                "invalid MTU",
            ),
        ];
        for (r, want) in cases {
            let e = create(&mut s, r.clone()).expect_err(&format!("{r:?}"));
            assert!(e.to_string().contains(want), "{r:?}: {e}");
        }
        assert_eq!(
            s.networks, before.networks,
            "refused creates change nothing"
        );
        assert_eq!(s.index, before.index);
        // A retried proposal of the same network is no error.
        let idx = s.index;
        create(&mut s, req("a", "a", Some("198.19.1.0/24"))).expect("retry");
        assert_eq!(s.networks.len(), 2);
        assert!(s.index >= idx);
    }

    #[test]
    fn addresses_next_fit_idempotent_released() {
        let mut s = initialised_with_pools(&["198.19.0.0/16"], 24);
        s.apply(
            Command::AddNode {
                node: Box::new(node("n1", false)),
            },
            "t",
        )
        .expect("add n1");
        create(&mut s, req("a", "a", Some("198.19.1.0/29"))).expect("a");
        let alloc = |s: &mut State, c: &str| {
            s.apply(
                Command::AllocateAddress {
                    network_id: "a".into(),
                    holder: Holder {
                        node_id: "n1".into(),
                        container_id: c.into(),
                    },
                },
                "t",
            )
            .map(|_| s.networks["a"].address_of(c))
        };
        assert_eq!(alloc(&mut s, "c1"), Ok(Some(Ipv4Addr::new(198, 19, 1, 2))));
        assert_eq!(
            alloc(&mut s, "c1"),
            Ok(Some(Ipv4Addr::new(198, 19, 1, 2))),
            "idempotent"
        );
        for c in ["c2", "c3", "c4", "c5"] {
            alloc(&mut s, c).expect("alloc");
        }
        assert!(alloc(&mut s, "c6").is_err(), "a /29 holds 5 containers");
        let e = s.apply(Command::RemoveNetwork { id: "a".into() }, "t");
        assert!(matches!(e, Err(CommandError::NetworkInUse(_))), "{e:?}");
        s.apply(
            Command::ReleaseAddress {
                network_id: "a".into(),
                container_id: "c3".into(),
            },
            "t",
        )
        .expect("release");
        assert_eq!(alloc(&mut s, "c7"), Ok(Some(Ipv4Addr::new(198, 19, 1, 4))));
        s.apply(
            Command::RemoveNode {
                id: "n1".into(),
                force: true,
            },
            "t",
        )
        .expect("rm node");
        assert!(
            s.networks["a"].addresses.is_empty(),
            "a removed node's addresses go"
        );
        // ip-range limits where addresses come from.
        create(
            &mut s,
            NetworkRequest {
                ip_range: Some("198.19.2.128/25".into()),
                ..req("b", "b", Some("198.19.2.0/24"))
            },
        )
        .expect("b");
        s.apply(
            Command::AllocateAddress {
                network_id: "b".into(),
                holder: Holder {
                    node_id: "n2".into(),
                    container_id: "x".into(),
                },
            },
            "t",
        )
        .expect("alloc");
        assert_eq!(
            s.networks["b"].address_of("x"),
            Some(Ipv4Addr::new(198, 19, 2, 128))
        );
    }

    #[test]
    fn lookup_by_name_and_prefix() {
        let mut s = initialised_with_pools(&["198.19.0.0/16"], 24);
        create(&mut s, req("abc123", "web", None)).expect("a");
        create(&mut s, req("abd456", "db", None)).expect("b");
        assert_eq!(s.find_network("web").map(|n| n.id.as_str()), Some("abc123"));
        assert_eq!(s.find_network("abc").map(|n| n.id.as_str()), Some("abc123"));
        assert!(s.find_network("ab").is_none(), "ambiguous");
        assert!(s.find_network("").is_none());
    }
}
