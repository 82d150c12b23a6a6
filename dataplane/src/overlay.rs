//! Overlay networks on a node, as Docker's overlay driver lays them out but
//! in the node's own namespace: per network a bridge without an address (the
//! containers' veths are its ports) and a VXLAN device on it (`nolearning`,
//! `proxy`). Each endpoint of the network on another node is one permanent
//! neighbour entry on the VXLAN device (container IP -> MAC, which proxy ARP
//! answers from) and one permanent FDB entry (MAC -> that node's underlay
//! address). Nothing floods and nothing is learnt: those entries are the only
//! way frames leave for other nodes.
//!
//! [`converge`] makes the kernel match an [`OverlaySpec`], and puts back what
//! someone deleted; [`plan`] is its pure part (observed entries and desired
//! remotes in, changes out).

use std::{
    collections::{BTreeMap, btree_map::Entry},
    fmt,
    net::Ipv4Addr,
};

use tracing::{debug, info};

use crate::link::{FdbEntry, LinkChange, LinkError, Neighbour, Netlink, VxlanSpec};

/// Errors of [`converge`], [`plan`] and [`remove`]; each names the network's
/// devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error(
        "overlay {vxlan}: the spec's bridge is {bridge} but its vxlan is to be a port of {vxlan_bridge}"
    )]
    BridgeMismatch {
        bridge: String,
        vxlan: String,
        vxlan_bridge: String,
    },
    #[error(
        "remote endpoints disagree on {ip}: MAC {} and {}",
        MacFmt(first),
        MacFmt(second)
    )]
    ConflictingIp {
        ip: Ipv4Addr,
        first: [u8; 6],
        second: [u8; 6],
    },
    #[error(
        "remote endpoints disagree on MAC {}: VTEP {first} and {second}",
        MacFmt(mac)
    )]
    ConflictingMac {
        mac: [u8; 6],
        first: Ipv4Addr,
        second: Ipv4Addr,
    },
    #[error("converge overlay {vxlan} (vni {vni}) on bridge {bridge}")]
    Converge {
        bridge: String,
        vxlan: String,
        vni: u32,
        #[source]
        source: Box<LinkError>,
    },
    #[error("remove overlay {vxlan} and bridge {bridge}")]
    Remove {
        bridge: String,
        vxlan: String,
        #[source]
        source: Box<LinkError>,
    },
}

/// A MAC address as `02:42:c6:13:2a:02`.
struct MacFmt<'a>(&'a [u8; 6]);

impl fmt::Display for MacFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = *self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One overlay network on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlaySpec {
    /// The bridge; `vxlan.bridge` must name it too. Its MTU is `vxlan.mtu`.
    pub bridge: String,
    pub vxlan: VxlanSpec,
    /// The network's endpoints on other nodes. The same endpoint listed
    /// twice is fine; one IP with two MACs, or one MAC behind two VTEPs, is
    /// an error.
    pub remotes: Vec<RemoteEndpoint>,
}

/// An endpoint (container) of the network on another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteEndpoint {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The underlay address of the node it runs on.
    pub vtep: Ipv4Addr,
}

/// What [`converge`] changed. All zero ([`is_unchanged`](Self::is_unchanged))
/// when the kernel already matched the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvergeReport {
    pub bridge: LinkChange,
    pub vxlan: LinkChange,
    /// Neighbour entries added or replaced.
    pub neighbours_set: usize,
    pub neighbours_deleted: usize,
    /// FDB entries added or replaced.
    pub fdb_set: usize,
    /// FDB (MAC, destination) pairs deleted; one already gone is not
    /// counted.
    pub fdb_deleted: usize,
}

impl ConvergeReport {
    /// How many links and entries were changed.
    pub fn changes(&self) -> usize {
        [self.bridge, self.vxlan]
            .iter()
            .filter(|c| **c != LinkChange::Unchanged)
            .count()
            + self.neighbours_set
            + self.neighbours_deleted
            + self.fdb_set
            + self.fdb_deleted
    }

    pub fn is_unchanged(&self) -> bool {
        self.changes() == 0
    }
}

/// The entry changes that bring a VXLAN device's neighbour table and FDB
/// to the desired remotes, from [`plan`]. Applied in the order of the
/// fields: FDB entries first, so that proxy ARP answers only for MACs that
/// frames can reach, and neighbours deleted before the FDB entries behind
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `bridge fdb replace MAC dev VXLAN dst VTEP self permanent`
    pub fdb_replace: Vec<([u8; 6], Ipv4Addr)>,
    /// `ip neigh replace IP lladdr MAC dev VXLAN nud permanent`
    pub neigh_replace: Vec<(Ipv4Addr, [u8; 6])>,
    /// `ip neigh del IP dev VXLAN`
    pub neigh_del: Vec<Ipv4Addr>,
    /// `bridge fdb del MAC dev VXLAN dst VTEP self`
    pub fdb_del: Vec<([u8; 6], Ipv4Addr)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.fdb_replace.is_empty()
            && self.neigh_replace.is_empty()
            && self.neigh_del.is_empty()
            && self.fdb_del.is_empty()
    }
}

/// The changes that make a VXLAN device's entries (`neighbours`, `fdb`, as
/// [`Netlink::neighbours`] and [`Netlink::fdb_entries`] read them) match
/// `remotes`. Pure: no I/O.
///
/// - Each remote needs a permanent neighbour entry IP -> MAC and a permanent
///   FDB entry MAC -> VTEP; one that is missing, different or not permanent
///   is (re)placed.
/// - A permanent entry for an IP or MAC that no remote has is deleted:
///   permanent entries on the device are the overlay's own. That includes an
///   all-zeros (flood) FDB entry.
/// - A non-permanent entry (someone else's, or the kernel's) is never
///   deleted, unless it is a further destination of a MAC a remote has: the
///   kernel keeps one state per MAC, so the replace makes all of that MAC's
///   destinations permanent, and the others must go.
/// - FDB entries whose destination is not IPv4 are left alone.
///
/// Errors if remotes disagree (an IP with two MACs, a MAC behind two VTEPs).
pub fn plan(
    remotes: &[RemoteEndpoint],
    neighbours: &[Neighbour],
    fdb: &[FdbEntry],
) -> Result<Plan, OverlayError> {
    Ok(Desired::new(remotes)?.plan(neighbours, fdb))
}

/// The remotes as the two tables they must become, checked for agreement.
#[derive(Debug)]
struct Desired {
    /// IP -> MAC
    neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// MAC -> VTEP
    fdb: BTreeMap<[u8; 6], Ipv4Addr>,
}

impl Desired {
    fn new(remotes: &[RemoteEndpoint]) -> Result<Self, OverlayError> {
        let mut desired = Desired {
            neighbours: BTreeMap::new(),
            fdb: BTreeMap::new(),
        };
        for r in remotes {
            insert_agreeing(&mut desired.neighbours, r.ip, r.mac).map_err(|first| {
                OverlayError::ConflictingIp {
                    ip: r.ip,
                    first,
                    second: r.mac,
                }
            })?;
            insert_agreeing(&mut desired.fdb, r.mac, r.vtep).map_err(|first| {
                OverlayError::ConflictingMac {
                    mac: r.mac,
                    first,
                    second: r.vtep,
                }
            })?;
        }
        Ok(desired)
    }

    fn plan(&self, neighbours: &[Neighbour], fdb: &[FdbEntry]) -> Plan {
        let mut plan = Plan::default();
        for (&mac, &vtep) in &self.fdb {
            let present = fdb
                .iter()
                .any(|e| e.permanent && e.mac == mac && e.dst == Some(vtep));
            if !present {
                plan.fdb_replace.push((mac, vtep));
            }
        }
        for (&ip, &mac) in &self.neighbours {
            let present = neighbours
                .iter()
                .any(|n| n.permanent && n.ip == ip && n.mac == Some(mac));
            if !present {
                plan.neigh_replace.push((ip, mac));
            }
        }
        for n in neighbours {
            if n.permanent
                && !self.neighbours.contains_key(&n.ip)
                && !plan.neigh_del.contains(&n.ip)
            {
                plan.neigh_del.push(n.ip);
            }
        }
        for e in fdb {
            let Some(dst) = e.dst else { continue };
            let stale = match self.fdb.get(&e.mac) {
                Some(&vtep) => dst != vtep,
                None => e.permanent,
            };
            if stale && !plan.fdb_del.contains(&(e.mac, dst)) {
                plan.fdb_del.push((e.mac, dst));
            }
        }
        plan
    }
}

/// Inserts `key -> value` into `map`, unless `map` has `key` with another
/// value: then that value is the error.
fn insert_agreeing<K: Ord, V: Copy + PartialEq>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
) -> Result<(), V> {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(value);
            Ok(())
        }
        Entry::Occupied(e) if *e.get() != value => Err(*e.get()),
        Entry::Occupied(_) => Ok(()),
    }
}

/// Makes the overlay `spec` exist on this node: the bridge (address-less,
/// MTU `spec.vxlan.mtu`, up), the VXLAN device on it, and exactly the
/// permanent neighbour and FDB entries `spec.remotes` call for on that
/// device ([`plan`]). Idempotent: a second call with the same spec changes
/// nothing and reports so. What someone deleted (a device, an entry) is put
/// back; a VXLAN device made differently is replaced, see
/// [`Netlink::ensure_vxlan`].
///
/// The spec's remotes are checked before anything is touched. If a request
/// fails half-way, what was done stays done and calling again finishes it.
pub async fn converge(nl: &Netlink, spec: &OverlaySpec) -> Result<ConvergeReport, OverlayError> {
    let vxlan = &spec.vxlan;
    if vxlan.bridge != spec.bridge {
        return Err(OverlayError::BridgeMismatch {
            bridge: spec.bridge.clone(),
            vxlan: vxlan.name.clone(),
            vxlan_bridge: vxlan.bridge.clone(),
        });
    }
    let desired = Desired::new(&spec.remotes)?;
    let fail = |source| OverlayError::Converge {
        bridge: spec.bridge.clone(),
        vxlan: vxlan.name.clone(),
        vni: vxlan.vni,
        source: Box::new(source),
    };

    let bridge = nl
        .ensure_l2_bridge(&spec.bridge, vxlan.mtu)
        .await
        .map_err(fail)?;
    let device = nl.ensure_vxlan(vxlan).await.map_err(fail)?;
    let neighbours = nl.neighbours(&vxlan.name).await.map_err(fail)?;
    let fdb = nl.fdb_entries(&vxlan.name).await.map_err(fail)?;
    let plan = desired.plan(&neighbours, &fdb);

    let mut report = ConvergeReport {
        bridge: bridge.change,
        vxlan: device.change,
        neighbours_set: 0,
        neighbours_deleted: 0,
        fdb_set: 0,
        fdb_deleted: 0,
    };
    let dev = vxlan.name.as_str();
    for &(mac, vtep) in &plan.fdb_replace {
        nl.fdb_replace(dev, mac, vtep).await.map_err(fail)?;
        report.fdb_set += 1;
    }
    for &(ip, mac) in &plan.neigh_replace {
        nl.neigh_replace(dev, ip, mac).await.map_err(fail)?;
        report.neighbours_set += 1;
    }
    for &ip in &plan.neigh_del {
        if nl.neigh_del(dev, ip).await.map_err(fail)? {
            report.neighbours_deleted += 1;
        }
    }
    for &(mac, dst) in &plan.fdb_del {
        // One destination of a MAC that was just replaced may be gone.
        if nl.fdb_del(dev, mac, dst).await.map_err(fail)? {
            report.fdb_deleted += 1;
        }
    }

    if report.is_unchanged() {
        debug!(
            vxlan = dev,
            vni = vxlan.vni,
            remotes = desired.neighbours.len(),
            "overlay unchanged"
        );
    } else {
        info!(
            vxlan = dev,
            vni = vxlan.vni,
            remotes = desired.neighbours.len(),
            ?report,
            "overlay converged"
        );
    }
    Ok(report)
}

/// Removes an overlay from this node: the VXLAN device `vxlan` (and with it
/// its entries), then the bridge `bridge`. Either missing is fine; a link of
/// that name of another kind is an error and stays. Containers' veths still
/// on the bridge are left, without a master.
pub async fn remove(nl: &Netlink, bridge: &str, vxlan: &str) -> Result<(), OverlayError> {
    let fail = |source| OverlayError::Remove {
        bridge: bridge.to_owned(),
        vxlan: vxlan.to_owned(),
        source: Box::new(source),
    };
    nl.delete_link_of_kind(vxlan, "vxlan").await.map_err(fail)?;
    nl.delete_link_of_kind(bridge, "bridge")
        .await
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac_from_ipv4;

    const VTEP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
    const VTEP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 22);

    fn remote(last: u8, vtep: Ipv4Addr) -> RemoteEndpoint {
        let ip = Ipv4Addr::new(198, 19, 42, last);
        RemoteEndpoint {
            ip,
            mac: mac_from_ipv4(ip),
            vtep,
        }
    }

    fn neigh(r: &RemoteEndpoint, permanent: bool) -> Neighbour {
        Neighbour {
            ip: r.ip,
            mac: Some(r.mac),
            permanent,
        }
    }

    fn fdb(r: &RemoteEndpoint, permanent: bool) -> FdbEntry {
        FdbEntry {
            mac: r.mac,
            dst: Some(r.vtep),
            permanent,
        }
    }

    #[test]
    fn an_empty_device_gets_every_remote() {
        let (a, b) = (remote(3, VTEP_B), remote(4, VTEP_B));
        let plan = plan(&[b, a], &[], &[]).expect("plan");
        // Sorted, whatever the spec's order.
        assert_eq!(plan.fdb_replace, [(a.mac, VTEP_B), (b.mac, VTEP_B)]);
        assert_eq!(plan.neigh_replace, [(a.ip, a.mac), (b.ip, b.mac)]);
        assert!(plan.neigh_del.is_empty() && plan.fdb_del.is_empty());
    }

    #[test]
    fn what_matches_is_left_alone() {
        let a = remote(3, VTEP_B);
        let plan = plan(&[a, a], &[neigh(&a, true)], &[fdb(&a, true)]).expect("plan");
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn non_permanent_or_different_entries_of_a_remote_are_replaced() {
        let a = remote(3, VTEP_B);
        let wrong_mac = Neighbour {
            mac: Some([2, 0, 0, 0, 0, 1]),
            ..neigh(&a, true)
        };
        let plan1 = plan(&[a], &[wrong_mac], &[fdb(&a, false)]).expect("plan");
        assert_eq!(plan1.neigh_replace, [(a.ip, a.mac)]);
        assert_eq!(plan1.fdb_replace, [(a.mac, VTEP_B)]);
        assert!(
            plan1.neigh_del.is_empty() && plan1.fdb_del.is_empty(),
            "{plan1:?}"
        );

        let incomplete = Neighbour {
            mac: None,
            ..neigh(&a, false)
        };
        let plan2 = plan(&[a], &[incomplete], &[fdb(&a, true)]).expect("plan");
        assert_eq!(plan2.neigh_replace, [(a.ip, a.mac)]);
        assert!(plan2.fdb_replace.is_empty());
    }

    #[test]
    fn a_moved_remote_gets_its_new_vtep_and_loses_the_old() {
        let moved = remote(3, VTEP_A);
        let before = remote(3, VTEP_B);
        let plan = plan(&[moved], &[neigh(&moved, true)], &[fdb(&before, true)]).expect("plan");
        assert_eq!(plan.fdb_replace, [(moved.mac, VTEP_A)]);
        assert_eq!(plan.fdb_del, [(moved.mac, VTEP_B)]);
        assert!(plan.neigh_replace.is_empty() && plan.neigh_del.is_empty());
    }

    #[test]
    fn further_destinations_of_a_remote_go_even_if_not_permanent() {
        let a = remote(3, VTEP_B);
        let extra = FdbEntry {
            dst: Some(Ipv4Addr::new(198, 18, 0, 99)),
            ..fdb(&a, false)
        };
        let plan = plan(&[a], &[neigh(&a, true)], &[fdb(&a, true), extra.clone()]).expect("plan");
        assert!(plan.fdb_replace.is_empty());
        assert_eq!(plan.fdb_del, [(a.mac, Ipv4Addr::new(198, 18, 0, 99))]);
    }

    #[test]
    fn permanent_entries_of_no_remote_are_deleted_others_never() {
        let kept = remote(3, VTEP_B);
        let gone = remote(4, VTEP_B);
        let unmanaged = remote(5, VTEP_B);
        let flood = FdbEntry {
            mac: [0; 6],
            dst: Some(VTEP_B),
            permanent: true,
        };
        let ipv6_dst = FdbEntry {
            mac: [2, 0, 0, 0, 0, 6],
            dst: None,
            permanent: true,
        };
        let neighbours = [
            neigh(&kept, true),
            neigh(&gone, true),
            neigh(&gone, true),
            neigh(&unmanaged, false),
        ];
        let entries = [
            fdb(&kept, true),
            fdb(&gone, true),
            fdb(&unmanaged, false),
            flood.clone(),
            ipv6_dst,
        ];
        let plan = plan(&[kept], &neighbours, &entries).expect("plan");
        assert_eq!(plan.neigh_del, [gone.ip], "deduplicated, unmanaged kept");
        assert_eq!(plan.fdb_del, [(gone.mac, VTEP_B), ([0; 6], VTEP_B)]);
        assert!(plan.fdb_replace.is_empty() && plan.neigh_replace.is_empty());
    }

    #[test]
    fn no_remotes_empties_what_is_ours() {
        let a = remote(3, VTEP_B);
        let plan = plan(&[], &[neigh(&a, true)], &[fdb(&a, true)]).expect("plan");
        assert_eq!(plan.neigh_del, [a.ip]);
        assert_eq!(plan.fdb_del, [(a.mac, VTEP_B)]);
    }

    #[test]
    fn disagreeing_remotes_are_refused() {
        let a = remote(3, VTEP_B);
        let other_mac = RemoteEndpoint {
            mac: [2, 0, 0, 0, 0, 1],
            ..a
        };
        let err = plan(&[a, other_mac], &[], &[]).expect_err("one IP, two MACs");
        assert!(
            matches!(err, OverlayError::ConflictingIp { ip, .. } if ip == a.ip),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "remote endpoints disagree on 198.19.42.3: MAC 02:42:c6:13:2a:03 and 02:00:00:00:00:01"
        );

        let other_vtep = RemoteEndpoint {
            ip: Ipv4Addr::new(198, 19, 42, 9),
            vtep: VTEP_A,
            ..a
        };
        let err = plan(&[a, other_vtep], &[], &[]).expect_err("one MAC, two VTEPs");
        assert!(
            matches!(err, OverlayError::ConflictingMac { first, second, .. } if first == VTEP_B && second == VTEP_A),
            "{err:?}"
        );
    }

    #[test]
    fn one_mac_for_two_ips_behind_one_vtep_is_fine() {
        let a = remote(3, VTEP_B);
        let alias = RemoteEndpoint {
            ip: Ipv4Addr::new(198, 19, 42, 30),
            ..a
        };
        let plan = plan(&[a, alias], &[], &[]).expect("plan");
        assert_eq!(plan.fdb_replace, [(a.mac, VTEP_B)]);
        assert_eq!(plan.neigh_replace.len(), 2);
    }

    #[test]
    fn report_counts_changes() {
        let mut report = ConvergeReport {
            bridge: LinkChange::Unchanged,
            vxlan: LinkChange::Unchanged,
            neighbours_set: 0,
            neighbours_deleted: 0,
            fdb_set: 0,
            fdb_deleted: 0,
        };
        assert!(report.is_unchanged());
        report.vxlan = LinkChange::Replaced;
        report.fdb_set = 2;
        assert_eq!(report.changes(), 3);
    }
}
