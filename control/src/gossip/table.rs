//! The endpoint tables of overlay networks, as libnetwork's NetworkDB
//! keeps them: each node announces, for each overlay network it takes
//! part in, the endpoints of its containers (address, MAC), as records only
//! it writes, with versions and tombstones.
//!
//! - Every node tells every member which networks it is on ([`Message::Networks`]).
//! - A node sends its records of a network only to the nodes on that
//!   network: each change at once, and all of them every sync period
//!   ([`Message::Records`] with a [`Sync`] part), which heals lost
//!   datagrams, partitions and late joiners; a node that joins a network
//!   gets them at once.
//! - Records travel only from their owner, so a node declared dead by
//!   SWIM can be purged everywhere without a stale copy bringing it back.
//!
//! Pure: the driver in `mod.rs` hands in messages, local changes, the
//! time and the live members, and sends what comes out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

/// How long a tombstone is kept (it must outlive any reordered datagram).
pub const TOMBSTONE_TTL_NANOS: u64 = 60_000_000_000;
/// Records per datagram (a sealed one stays under the underlay's MTU).
pub const RECORDS_PER_MESSAGE: usize = 8;

/// An endpoint of a container on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The container's name, for `docker network inspect`.
    pub name: String,
}

/// One record: `value` `None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The endpoint's key (its container ID).
    pub key: String,
    pub version: u64,
    pub value: Option<Endpoint>,
}

/// A part of a full push of an owner's records of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The owner's version when it made the push: records newer than it
    /// are not judged by it.
    pub as_of: u64,
    pub part: u16,
    pub parts: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A node's whole set of overlay networks; with `reply`, the receiver
    /// answers with all its records of the networks both are on (a
    /// greeting from a member that just came up).
    Networks {
        node: String,
        vtep: Ipv4Addr,
        version: u64,
        networks: Vec<String>,
        #[serde(default)]
        reply: bool,
    },
    /// Records of `owner` on `network`.
    Records {
        owner: String,
        vtep: Ipv4Addr,
        network: String,
        records: Vec<Record>,
        sync: Option<Sync>,
    },
}

/// Something to send: to these node IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub to: Vec<String>,
    pub msg: Message,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    version: u64,
    value: Option<Endpoint>,
    /// When it became a tombstone (local clock), for GC.
    dead_since: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct PeerNetworks {
    vtep: Option<Ipv4Addr>,
    version: u64,
    networks: BTreeSet<String>,
}

/// A full push being put together from its parts.
#[derive(Debug, Clone, Default)]
struct Assembly {
    as_of: u64,
    parts: u16,
    seen: BTreeSet<u16>,
    keys: BTreeSet<String>,
}

/// A remote endpoint as the kernel needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub owner: String,
    pub vtep: Ipv4Addr,
    pub key: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone)]
pub struct Table {
    me: String,
    vtep: Ipv4Addr,
    clock: u64,
    /// This node's records, by network and key.
    local: BTreeMap<String, BTreeMap<String, Stored>>,
    /// What other nodes said of their networks.
    peers: BTreeMap<String, PeerNetworks>,
    /// Other nodes' records, by (network, owner), then key.
    remote: BTreeMap<(String, String), BTreeMap<String, Stored>>,
    assembling: BTreeMap<(String, String), Assembly>,
}

impl Table {
    pub fn new(me: &str, vtep: Ipv4Addr) -> Self {
        Self {
            me: me.to_owned(),
            vtep,
            clock: 0,
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            remote: BTreeMap::new(),
            assembling: BTreeMap::new(),
        }
    }

    /// A version newer than every earlier one, also across restarts (it
    /// follows the wall clock).
    fn next_version(&mut self, now: u64) -> u64 {
        self.clock = (self.clock + 1).max(now);
        self.clock
    }

    /// Networks this node has live records on.
    pub fn my_networks(&self) -> Vec<String> {
        self.local
            .iter()
            .filter(|(_, recs)| recs.values().any(|r| r.value.is_some()))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The other nodes on `network`, by what they said.
    pub fn peers(&self, network: &str) -> Vec<(String, Option<Ipv4Addr>)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.networks.contains(network))
            .map(|(id, p)| (id.clone(), p.vtep))
            .collect()
    }

    fn peer_ids(&self, network: &str) -> Vec<String> {
        self.peers(network).into_iter().map(|(id, _)| id).collect()
    }

    fn networks_message(&mut self, now: u64, reply: bool) -> Message {
        let version = self.next_version(now);
        Message::Networks {
            node: self.me.clone(),
            vtep: self.vtep,
            version,
            networks: self.my_networks(),
            reply,
        }
    }

    /// This node's endpoint `key` on `network` is now `value` (`None`:
    /// gone). Returns what to send.
    pub fn set_local(
        &mut self,
        network: &str,
        key: &str,
        value: Option<Endpoint>,
        all_members: &[String],
        now: u64,
    ) -> Vec<Out> {
        let before = self.my_networks();
        let current = self
            .local
            .get(network)
            .and_then(|m| m.get(key))
            .map(|s| s.value.clone());
        if current.as_ref() == Some(&value) || (current.is_none() && value.is_none()) {
            return Vec::new();
        }
        let version = self.next_version(now);
        let dead_since = value.is_none().then_some(now);
        self.local.entry(network.to_owned()).or_default().insert(
            key.to_owned(),
            Stored {
                version,
                value: value.clone(),
                dead_since,
            },
        );
        let mut out = Vec::new();
        let to = self.peer_ids(network);
        if !to.is_empty() {
            out.push(Out {
                to,
                msg: Message::Records {
                    owner: self.me.clone(),
                    vtep: self.vtep,
                    network: network.to_owned(),
                    records: vec![Record {
                        key: key.to_owned(),
                        version,
                        value,
                    }],
                    sync: None,
                },
            });
        }
        if self.my_networks() != before {
            let msg = self.networks_message(now, false);
            out.push(Out {
                to: others(all_members, &self.me),
                msg,
            });
        }
        out
    }

    /// Merges a message from another node; returns what to send back (a
    /// full push to a node that just joined one of this node's networks)
    /// and whether the remote view changed.
    pub fn receive(&mut self, msg: Message, now: u64) -> (Vec<Out>, bool) {
        match msg {
            Message::Networks {
                node,
                vtep,
                version,
                networks,
                reply,
            } => {
                if node == self.me {
                    return (Vec::new(), false);
                }
                let p = self.peers.entry(node.clone()).or_default();
                if version <= p.version {
                    return (Vec::new(), false);
                }
                let new: BTreeSet<String> = networks.into_iter().collect();
                let joined: Vec<String> = new.difference(&p.networks).cloned().collect();
                let left: Vec<String> = p.networks.difference(&new).cloned().collect();
                p.version = version;
                p.vtep = Some(vtep);
                p.networks = new;
                let mut changed = false;
                for n in &left {
                    changed |= self.remote.remove(&(n.clone(), node.clone())).is_some();
                    self.assembling.remove(&(n.clone(), node.clone()));
                }
                let mine: BTreeSet<String> = self.my_networks().into_iter().collect();
                let theirs = self
                    .peers
                    .get(&node)
                    .map(|p| p.networks.clone())
                    .unwrap_or_default();
                let mut out = Vec::new();
                for n in mine
                    .iter()
                    .filter(|n| joined.contains(*n) || (reply && theirs.contains(*n)))
                {
                    out.extend(self.full_push(n, std::slice::from_ref(&node)));
                }
                (out, changed)
            }
            Message::Records {
                owner,
                vtep,
                network,
                records,
                sync,
            } => {
                if owner == self.me || !self.local.contains_key(&network) {
                    return (Vec::new(), false);
                }
                if let Some(p) = self.peers.get_mut(&owner) {
                    p.vtep = Some(vtep);
                } else {
                    self.peers.insert(
                        owner.clone(),
                        PeerNetworks {
                            vtep: Some(vtep),
                            ..Default::default()
                        },
                    );
                }
                let id = (network.clone(), owner.clone());
                let stored = self.remote.entry(id.clone()).or_default();
                let mut changed = false;
                for r in &records {
                    let newer = stored.get(&r.key).is_none_or(|s| r.version > s.version);
                    if newer {
                        let was_live = stored.get(&r.key).is_some_and(|s| s.value.is_some());
                        changed |= was_live || r.value.is_some();
                        stored.insert(
                            r.key.clone(),
                            Stored {
                                version: r.version,
                                value: r.value.clone(),
                                dead_since: r.value.is_none().then_some(now),
                            },
                        );
                    }
                }
                if let Some(s) = sync {
                    let a = self.assembling.entry(id.clone()).or_default();
                    if a.as_of != s.as_of || a.parts != s.parts {
                        *a = Assembly {
                            as_of: s.as_of,
                            parts: s.parts,
                            ..Default::default()
                        };
                    }
                    a.seen.insert(s.part);
                    a.keys.extend(records.iter().map(|r| r.key.clone()));
                    if a.seen.len() == usize::from(a.parts.max(1)) {
                        let a = self.assembling.remove(&id).unwrap_or_default();
                        let stored = self.remote.entry(id).or_default();
                        // What the owner no longer has: gone.
                        for (k, st) in stored.iter_mut() {
                            if !a.keys.contains(k) && st.version <= a.as_of && st.value.is_some() {
                                st.value = None;
                                st.dead_since = Some(now);
                                changed = true;
                            }
                        }
                    }
                }
                (Vec::new(), changed)
            }
        }
    }

    /// All of this node's records of `network`, in parts, for `to`.
    fn full_push(&self, network: &str, to: &[String]) -> Vec<Out> {
        let Some(recs) = self.local.get(network) else {
            return Vec::new();
        };
        let all: Vec<Record> = recs
            .iter()
            .filter(|(_, s)| s.value.is_some())
            .map(|(k, s)| Record {
                key: k.clone(),
                version: s.version,
                value: s.value.clone(),
            })
            .collect();
        let chunks: Vec<Vec<Record>> = if all.is_empty() {
            vec![Vec::new()]
        } else {
            all.chunks(RECORDS_PER_MESSAGE)
                .map(<[Record]>::to_vec)
                .collect()
        };
        let parts = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, records)| Out {
                to: to.to_vec(),
                msg: Message::Records {
                    owner: self.me.clone(),
                    vtep: self.vtep,
                    network: network.to_owned(),
                    records,
                    sync: Some(Sync {
                        as_of: self.clock,
                        part: u16::try_from(i).unwrap_or(u16::MAX),
                        parts,
                    }),
                },
            })
            .collect()
    }

    /// This node's networks for members that just came up (joined, back
    /// from a partition, restarted): they answer with their records of
    /// the networks both are on.
    pub fn hello(&mut self, to: &[String], now: u64) -> Vec<Out> {
        if to.is_empty() {
            return Vec::new();
        }
        let msg = self.networks_message(now, true);
        vec![Out {
            to: to.to_vec(),
            msg,
        }]
    }

    /// The periodic work: this node's networks to every live member, its
    /// records to the nodes on each network, tombstones collected.
    pub fn sync(&mut self, live: &[String], now: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let msg = self.networks_message(now, false);
        out.push(Out {
            to: others(live, &self.me),
            msg,
        });
        for network in self.my_networks() {
            let to: Vec<String> = self
                .peer_ids(&network)
                .into_iter()
                .filter(|p| live.contains(p))
                .collect();
            if !to.is_empty() {
                out.extend(self.full_push(&network, &to));
            }
        }
        self.collect(now);
        out
    }

    /// Drops tombstones older than the TTL, and local networks left empty.
    fn collect(&mut self, now: u64) {
        let expired = |s: &Stored| {
            s.dead_since
                .is_some_and(|d| now.saturating_sub(d) > TOMBSTONE_TTL_NANOS)
        };
        for recs in self.local.values_mut() {
            recs.retain(|_, s| !expired(s));
        }
        self.local.retain(|_, recs| !recs.is_empty());
        for recs in self.remote.values_mut() {
            recs.retain(|_, s| !expired(s));
        }
        self.remote.retain(|_, recs| !recs.is_empty());
        let mine: BTreeSet<String> = self.local.keys().cloned().collect();
        self.remote.retain(|(n, _), _| mine.contains(n));
    }

    /// SWIM declared `node` dead: everything it said goes.
    pub fn node_down(&mut self, node: &str) -> bool {
        let had = self.remote.keys().any(|(_, o)| o == node);
        self.remote.retain(|(_, o), _| o != node);
        self.assembling.retain(|(_, o), _| o != node);
        self.peers.remove(node);
        had
    }

    /// Owners whose records this table holds.
    pub fn owners(&self) -> BTreeSet<String> {
        self.remote.keys().map(|(_, o)| o.clone()).collect()
    }

    /// The live endpoints other nodes have on `network`.
    pub fn remote_endpoints(&self, network: &str) -> Vec<RemoteEndpoint> {
        let mut out = Vec::new();
        for ((n, owner), recs) in &self.remote {
            if n != network {
                continue;
            }
            let Some(vtep) = self.peers.get(owner).and_then(|p| p.vtep) else {
                continue;
            };
            for (key, s) in recs {
                if let Some(e) = &s.value {
                    out.push(RemoteEndpoint {
                        owner: owner.clone(),
                        vtep,
                        key: key.clone(),
                        endpoint: e.clone(),
                    });
                }
            }
        }
        out
    }
}

fn others(all: &[String], me: &str) -> Vec<String> {
    all.iter().filter(|m| *m != me).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(198, 19, 1, last),
            mac: [2, 0x42, 198, 19, 1, last],
            name: format!("c{last}"),
        }
    }

    fn members() -> Vec<String> {
        ["a", "b", "c"].map(str::to_owned).to_vec()
    }

    /// Delivers every message from `outs` to the tables they address.
    fn deliver(tables: &mut BTreeMap<String, Table>, outs: Vec<Out>, now: u64) -> usize {
        let mut queue = outs;
        let mut delivered = 0;
        while let Some(o) = queue.pop() {
            for to in &o.to {
                if let Some(t) = tables.get_mut(to) {
                    let (more, _) = t.receive(o.msg.clone(), now);
                    queue.extend(more);
                    delivered += 1;
                }
            }
        }
        delivered
    }

    fn three() -> BTreeMap<String, Table> {
        members()
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let t = Table::new(&m, Ipv4Addr::new(198, 18, 0, 11 + i as u8));
                (m, t)
            })
            .collect()
    }

    #[test]
    fn only_nodes_on_the_network_get_the_records() {
        let mut t = three();
        // a and c are on net1, b is not.
        let mut outs = Vec::new();
        for (node, last) in [("a", 2), ("c", 3)] {
            let tab = t.get_mut(node).expect("table");
            outs.extend(tab.set_local("net1", &format!("k{last}"), Some(ep(last)), &members(), 1));
        }
        deliver(&mut t, outs, 1);
        // The first record of each went nowhere (no known peer yet); the
        // networks messages made the two push their records to each other.
        let a = &t["a"];
        assert_eq!(a.remote_endpoints("net1").len(), 1);
        assert_eq!(a.remote_endpoints("net1")[0].endpoint, ep(3));
        assert_eq!(
            a.remote_endpoints("net1")[0].vtep,
            Ipv4Addr::new(198, 18, 0, 13)
        );
        assert_eq!(t["c"].remote_endpoints("net1")[0].endpoint, ep(2));
        assert!(
            t["b"].remote_endpoints("net1").is_empty(),
            "b is not on net1"
        );
        assert!(t["b"].remote.is_empty());
        assert_eq!(t["b"].peers("net1").len(), 2, "b knows who is on net1");

        // A change goes at once to the peers, not to b.
        let outs = t
            .get_mut("a")
            .expect("a")
            .set_local("net1", "k4", Some(ep(4)), &members(), 2);
        assert!(
            outs.iter().all(|o| !o.to.contains(&"b".to_owned())),
            "{outs:?}"
        );
        deliver(&mut t, outs, 2);
        assert_eq!(t["c"].remote_endpoints("net1").len(), 2);
        // Removal: a tombstone, then gone from c's view.
        let outs = t
            .get_mut("a")
            .expect("a")
            .set_local("net1", "k4", None, &members(), 3);
        deliver(&mut t, outs, 3);
        assert_eq!(t["c"].remote_endpoints("net1").len(), 1);
    }

    #[test]
    fn versions_win_over_reordering() {
        let mut t = three();
        let a = t.get_mut("a").expect("a");
        a.set_local("net1", "k", Some(ep(2)), &members(), 10);
        let c = t.get_mut("c").expect("c");
        c.set_local("net1", "x", Some(ep(9)), &members(), 10);
        let rec = |version, value| Message::Records {
            owner: "a".into(),
            vtep: Ipv4Addr::new(198, 18, 0, 11),
            network: "net1".into(),
            records: vec![Record {
                key: "k".into(),
                version,
                value,
            }],
            sync: None,
        };
        let c = t.get_mut("c").expect("c");
        c.receive(rec(30, None), 30);
        let (_, changed) = c.receive(rec(20, Some(ep(2))), 31);
        assert!(
            !changed,
            "an older add does not bring a deleted endpoint back"
        );
        assert!(c.remote_endpoints("net1").is_empty());
        c.receive(rec(40, Some(ep(5))), 40);
        let view = c.remote_endpoints("net1");
        assert_eq!(view.len(), 1, "a newer add wins");
        assert_eq!(
            (view[0].endpoint.clone(), view[0].vtep),
            (ep(5), Ipv4Addr::new(198, 18, 0, 11)),
            "the record says where its owner is"
        );
    }

    #[test]
    fn full_sync_heals_lost_deltas_and_removals() {
        let mut t = three();
        let outs = [("a", 2u8), ("c", 3)]
            .into_iter()
            .flat_map(|(n, l)| {
                t.get_mut(n).expect("t").set_local(
                    "net1",
                    &format!("k{l}"),
                    Some(ep(l)),
                    &members(),
                    1,
                )
            })
            .collect();
        deliver(&mut t, outs, 1);
        // a adds 20 endpoints and removes k2; every delta is lost.
        let a = t.get_mut("a").expect("a");
        for i in 0..20u8 {
            let _ = a.set_local("net1", &format!("n{i}"), Some(ep(100 + i)), &members(), 2);
        }
        let _ = a.set_local("net1", "k2", None, &members(), 3);
        assert_eq!(
            t["c"].remote_endpoints("net1").len(),
            1,
            "c still has the old view"
        );
        // The periodic sync repairs it, in several parts.
        let outs = t.get_mut("a").expect("a").sync(&members(), 4);
        let parts = outs
            .iter()
            .filter(|o| matches!(o.msg, Message::Records { .. }))
            .count();
        assert_eq!(parts, 3, "20 records in parts of {RECORDS_PER_MESSAGE}");
        deliver(&mut t, outs, 4);
        let view = t["c"].remote_endpoints("net1");
        assert_eq!(view.len(), 20);
        assert!(view.iter().all(|r| r.key != "k2"), "the removal was healed");
    }

    #[test]
    fn late_joiner_gets_everything_at_once() {
        let mut t = three();
        let outs = t
            .get_mut("a")
            .expect("a")
            .set_local("net1", "k2", Some(ep(2)), &members(), 1);
        deliver(&mut t, outs, 1);
        // b joins net1 later: a pushes its records as soon as it hears.
        let outs = t
            .get_mut("b")
            .expect("b")
            .set_local("net1", "k7", Some(ep(7)), &members(), 5);
        deliver(&mut t, outs, 5);
        assert_eq!(t["b"].remote_endpoints("net1")[0].endpoint, ep(2));
        assert_eq!(t["a"].remote_endpoints("net1")[0].endpoint, ep(7));
    }

    #[test]
    fn a_dead_node_is_purged_and_cannot_come_back_stale() {
        let mut t = three();
        let outs = [("a", 2u8), ("b", 3), ("c", 4)]
            .into_iter()
            .flat_map(|(n, l)| {
                t.get_mut(n).expect("t").set_local(
                    "net1",
                    &format!("k{l}"),
                    Some(ep(l)),
                    &members(),
                    1,
                )
            })
            .collect();
        deliver(&mut t, outs, 1);
        assert_eq!(t["a"].remote_endpoints("net1").len(), 2);
        let a = t.get_mut("a").expect("a");
        assert!(a.node_down("c"));
        assert_eq!(a.remote_endpoints("net1").len(), 1);
        // b never relays c's records: only c itself can bring them back.
        let outs = t.get_mut("b").expect("b").sync(&members(), 2);
        deliver(&mut t, outs, 2);
        assert!(
            t["a"]
                .remote_endpoints("net1")
                .iter()
                .all(|r| r.owner != "c"),
            "a dead node's records came back through another node"
        );
        // c returns and syncs: back.
        let outs = t.get_mut("c").expect("c").sync(&members(), 3);
        deliver(&mut t, outs, 3);
        assert!(
            t["a"]
                .remote_endpoints("net1")
                .iter()
                .any(|r| r.owner == "c")
        );
    }

    #[test]
    fn hello_after_a_partition_brings_records_back_both_ways() {
        let mut t = three();
        let outs = [("a", 2u8), ("c", 3)]
            .into_iter()
            .flat_map(|(n, l)| {
                t.get_mut(n).expect("t").set_local(
                    "net1",
                    &format!("k{l}"),
                    Some(ep(l)),
                    &members(),
                    1,
                )
            })
            .collect();
        deliver(&mut t, outs, 1);
        // Each side declared the other dead.
        assert!(t.get_mut("a").expect("a").node_down("c"));
        assert!(t.get_mut("c").expect("c").node_down("a"));
        // a adds an endpoint while apart (the delta goes nowhere).
        let lost = t
            .get_mut("a")
            .expect("a")
            .set_local("net1", "k5", Some(ep(5)), &members(), 2);
        assert!(
            lost.iter().all(|o| !o.to.contains(&"c".to_owned())),
            "{lost:?}"
        );
        // Back: each greets the other, and each answers with its records.
        let mut outs = t.get_mut("a").expect("a").hello(&["c".into()], 3);
        outs.extend(t.get_mut("c").expect("c").hello(&["a".into()], 3));
        deliver(&mut t, outs, 3);
        assert_eq!(t["a"].remote_endpoints("net1").len(), 1);
        let keys: BTreeSet<String> = t["c"]
            .remote_endpoints("net1")
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["k2".to_owned(), "k5".to_owned()].into());
    }

    #[test]
    fn a_restarted_node_is_answered_at_once() {
        let mut t = three();
        let outs = [("a", 2u8), ("c", 3)]
            .into_iter()
            .flat_map(|(n, l)| {
                t.get_mut(n).expect("t").set_local(
                    "net1",
                    &format!("k{l}"),
                    Some(ep(l)),
                    &members(),
                    1,
                )
            })
            .collect();
        deliver(&mut t, outs, 1);
        // c's agent restarts: an empty table, its endpoint adopted again;
        // a never saw c go down, so nothing in a's view changed.
        let mut fresh = Table::new("c", Ipv4Addr::new(198, 18, 0, 13));
        let _ = fresh.set_local("net1", "k3", Some(ep(3)), &members(), 5);
        t.insert("c".into(), fresh);
        assert!(t["c"].remote_endpoints("net1").is_empty());
        let outs = t.get_mut("c").expect("c").hello(&["a".into()], 6);
        deliver(&mut t, outs, 6);
        assert_eq!(t["c"].remote_endpoints("net1")[0].endpoint, ep(2));
    }

    #[test]
    fn tombstones_expire_and_networks_left_are_dropped() {
        let mut t = three();
        let outs = [("a", 2u8), ("c", 3)]
            .into_iter()
            .flat_map(|(n, l)| {
                t.get_mut(n).expect("t").set_local(
                    "net1",
                    &format!("k{l}"),
                    Some(ep(l)),
                    &members(),
                    1,
                )
            })
            .collect();
        deliver(&mut t, outs, 1);
        // a's last endpoint on net1 goes: it leaves net1, c drops a's records.
        let outs = t
            .get_mut("a")
            .expect("a")
            .set_local("net1", "k2", None, &members(), 2);
        deliver(&mut t, outs, 2);
        assert!(t["c"].remote_endpoints("net1").is_empty());
        assert!(t["c"].peers("net1").iter().all(|(p, _)| p != "a"));
        assert!(t["a"].my_networks().is_empty());
        let a = t.get_mut("a").expect("a");
        a.sync(&members(), 2 + TOMBSTONE_TTL_NANOS + 1);
        assert!(a.local.is_empty(), "tombstone collected");
        assert!(
            a.remote.is_empty(),
            "records of networks a left are dropped"
        );
    }

    #[test]
    fn messages_round_trip_postcard() {
        let m = Message::Records {
            owner: "a".into(),
            vtep: Ipv4Addr::new(198, 18, 0, 11),
            network: "net1".into(),
            records: (0..RECORDS_PER_MESSAGE as u8)
                .map(|i| Record {
                    key: "f".repeat(64),
                    version: u64::MAX - u64::from(i),
                    value: Some(Endpoint {
                        name: "n".repeat(64),
                        ..ep(i)
                    }),
                })
                .collect(),
            sync: Some(Sync {
                as_of: u64::MAX,
                part: 1,
                parts: 2,
            }),
        };
        let bytes = postcard::to_allocvec(&m).expect("encode");
        assert!(bytes.len() < 1300, "{} bytes in a datagram", bytes.len());
        assert_eq!(postcard::from_bytes::<Message>(&bytes).expect("decode"), m);
        assert!(postcard::from_bytes::<Message>(&bytes[..bytes.len() / 2]).is_err());
    }
}
