//! The managers' store: the desired state, replicated by Raft (openraft)
//! among the managers and persisted in redb (log and state machine in one
//! database file per manager).
//!
//! Reads are served by any manager from its applied state. Writes go
//! through [`Store::write`], which proposes on the leader, or forwards to
//! it over the management port, so callers need not know who leads.

mod log;
mod network;
pub mod networks;
pub mod services;
mod sm;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use openraft::{BasicNode, ChangeMembers, Config, Raft, SnapshotPolicy, error::ClientWriteError};
use redb::Database;
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, info};

pub use network::{RaftReply, RaftRpc};
pub use state::{
    Applied, ClusterRecord, Command, CommandError, NodeDescription, NodeRecord, NodeState,
    Proposal, State,
};

use crate::mgmt::{self, ErrorKind, MgmtError};

openraft::declare_raft_types!(
    /// Raft types of the managers' store.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How long a write may wait for a leader to commit it before it fails
/// with Docker's "no leader" error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader that has not heard from a quorum for this long is no leader.
const QUORUM_LOST_AFTER_MS: u64 = 1500;
/// Docker's wording when a write cannot reach a quorum.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store {path}")]
    Open {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("load store")]
    Load(#[source] Box<openraft::StorageError<u64>>),
    #[error("start raft")]
    Start(#[source] Box<openraft::error::Fatal<u64>>),
    #[error("raft configuration")]
    Config(#[source] Box<openraft::ConfigError>),
    #[error("{NO_LEADER}")]
    NoLeader,
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The Raft node ID of a swarm node ID (Raft wants a `u64`).
pub fn raft_id(node_id: &str) -> u64 {
    let d = Sha256::digest(node_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

pub struct Store {
    raft: Raft<TypeConfig>,
    shared: Arc<sm::Shared>,
    me: u64,
    tls: Arc<ClientConfig>,
    /// The connection writes are forwarded on, to the leader it names.
    forward: Mutex<Option<(u64, mgmt::Conn)>>,
}

impl Store {
    /// Opens (or creates) the store at `path` and starts this manager's
    /// Raft node. A new store is empty until [`Store::initialize`] or a
    /// leader replicates to it.
    pub async fn open(
        path: &Path,
        node_id: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        })?;
        let db = Arc::new(db);
        let log = log::LogStore::new(db.clone());
        let sm = sm::StateMachine::open(db).map_err(|e| StoreError::Load(Box::new(e)))?;
        let shared = sm.shared();
        // The swarm spec's Raft settings, as this manager last applied them
        // (Docker's defaults for a new store): they take effect when a
        // manager's store opens.
        let (snapshot_interval, keep_logs) = {
            let st = shared.state.read().unwrap_or_else(|e| e.into_inner());
            let raft = st.cluster.as_ref().and_then(|c| c.spec.raft.as_ref());
            (
                raft.and_then(|r| r.snapshot_interval)
                    .filter(|n| *n > 0)
                    .unwrap_or(10_000),
                raft.and_then(|r| r.log_entries_for_slow_followers)
                    .unwrap_or(500),
            )
        };
        let config = Config {
            cluster_name: "swarmnet".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // openraft gives an AppendEntries one heartbeat (100 ms) to
            // come back. Its default batch of 300 entries can take longer
            // on a loaded node (and a timed-out call reconnects, paying a
            // TLS handshake), so a follower that fell behind was sent the
            // same batch again and again and never caught up. Small
            // batches always make progress.
            max_payload_entries: 32,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_interval),
            max_in_snapshot_log_to_keep: keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Config(Box::new(e)))?;
        let me = raft_id(node_id);
        let raft = Raft::new(
            me,
            Arc::new(config),
            network::Network::new(tls.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| StoreError::Start(Box::new(e)))?;
        Ok(Self {
            raft,
            shared,
            me,
            tls,
            forward: Mutex::new(None),
        })
    }

    /// Creates a new store at `path` holding `state` (which must not exist
    /// yet); [`Store::open`] and [`Store::initialize`] then start a new Raft
    /// group of one over it.
    pub fn seed(path: &Path, state: &State) -> Result<(), StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        })?;
        sm::StateMachine::seed(Arc::new(db), state).map_err(|e| StoreError::Load(Box::new(e)))
    }

    /// Makes this manager the only member of a new Raft group.
    pub async fn initialize(&self, addr: String) -> Result<(), StoreError> {
        let members = BTreeMap::from([(self.me, BasicNode::new(addr))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        // Wait until this node leads its group of one.
        let mut m = self.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while m.borrow().current_leader != Some(self.me) {
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        Ok(())
    }

    /// openraft's metrics of this manager, for `/metrics`.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Reads the applied state of this manager.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Waits until this manager has applied a state with a cluster in it
    /// (a new manager catching up).
    pub async fn wait_for_cluster(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.applied.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.read(|s| s.cluster.is_some()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// The leader this manager follows, or itself while a quorum still
    /// acknowledges it. A leader cut off from its quorum stops calling
    /// itself leader after [`QUORUM_LOST_AFTER_MS`], as swarmkit's does.
    pub fn leader(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l)
                if l == self.me
                    && m.millis_since_quorum_ack
                        .is_none_or(|ms| ms > QUORUM_LOST_AFTER_MS) =>
            {
                None
            }
            other => other,
        }
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) {
        let mut rx = self.shared.applied.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index)).await;
    }

    /// Wakes on every applied proposal.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.me)
    }

    /// Whether the newest membership this manager knows leaves it out (it
    /// was demoted): then its vote is no longer needed to commit anything.
    pub fn removed(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_joint_config()
            .last()
            .is_some_and(|newest| !newest.contains(&self.me))
    }

    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn leader_addr(&self, leader: u64) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Applies `cmd` cluster-wide: proposed on the leader (forwarded when
    /// this manager is not it), returned once committed and applied there.
    pub async fn write(&self, cmd: Command) -> Result<u64, StoreError> {
        let proposal = Proposal {
            at: crate::util::now_rfc3339(),
            cmd,
        };
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(StoreError::NoLeader);
            }
            let attempt = match self.leader() {
                Some(l) if l == self.me => self.write_as_leader(proposal.clone(), remaining).await,
                Some(l) => {
                    let r = self.forward(l, &proposal, remaining).await;
                    if let Ok(Ok(index)) = &r {
                        // Read your writes: this manager serves the next
                        // read, so wait until it has applied this one.
                        self.wait_applied(*index, Duration::from_secs(2)).await;
                    }
                    r
                }
                None => Err(Retry::Later),
            };
            match attempt {
                Ok(applied) => return applied.map_err(StoreError::Command),
                Err(Retry::Fail(e)) => return Err(e),
                Err(Retry::Later) => {
                    tokio::time::sleep(Duration::from_millis(50).min(remaining)).await;
                }
            }
        }
    }

    /// Proposes on this node, which must lead. Used for local writes and
    /// for writes other managers forward.
    pub async fn propose_local(&self, p: Proposal) -> Result<Applied, StoreError> {
        match self.write_as_leader(p, WRITE_TIMEOUT).await {
            Ok(a) => Ok(a),
            Err(Retry::Later) => Err(StoreError::NoLeader),
            Err(Retry::Fail(e)) => Err(e),
        }
    }

    async fn write_as_leader(&self, p: Proposal, timeout: Duration) -> Result<Applied, Retry> {
        match tokio::time::timeout(timeout, self.raft.client_write(p)).await {
            Err(_) => Err(Retry::Fail(StoreError::NoLeader)),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => match e.api_error() {
                Some(ClientWriteError::ForwardToLeader(_)) => Err(Retry::Later),
                _ => Err(Retry::Fail(StoreError::Raft(e.to_string()))),
            },
        }
    }

    async fn forward(
        &self,
        leader: u64,
        p: &Proposal,
        timeout: Duration,
    ) -> Result<Applied, Retry> {
        let Some(addr) = self.leader_addr(leader) else {
            return Err(Retry::Later);
        };
        let mut slot = self.forward.lock().await;
        if slot.as_ref().is_none_or(|(id, _)| *id != leader) {
            *slot = Some((leader, mgmt::Conn::new(addr, self.tls.clone())));
        }
        let Some((_, conn)) = slot.as_mut() else {
            return Err(Retry::Later);
        };
        match conn
            .call(&mgmt::Request::Write(Box::new(p.clone())), timeout)
            .await
        {
            Ok(mgmt::Response::Applied(a)) => Ok(a),
            Ok(_) => Err(Retry::Fail(StoreError::Raft(
                "unexpected reply to a write".into(),
            ))),
            Err(MgmtError::Remote {
                kind: ErrorKind::Unavailable,
                message,
            }) if message == NO_LEADER => Err(Retry::Fail(StoreError::NoLeader)),
            Err(error) => {
                debug!(%error, leader, "forward write");
                Err(Retry::Later)
            }
        }
    }

    /// Adds a manager to the Raft group: first a learner that catches up,
    /// then a voter. On a follower this is forwarded to the leader.
    pub async fn add_manager(&self, node_id: &str, addr: &str) -> Result<(), StoreError> {
        self.change_managers(node_id, Some(addr)).await
    }

    /// Removes a (demoted) manager from the Raft group.
    pub async fn remove_manager(&self, node_id: &str) -> Result<(), StoreError> {
        self.change_managers(node_id, None).await
    }

    async fn change_managers(&self, node_id: &str, add: Option<&str>) -> Result<(), StoreError> {
        let id = raft_id(node_id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let raft_err = |e: openraft::error::RaftError<u64, ClientWriteError<u64, BasicNode>>| {
            StoreError::Raft(e.to_string())
        };
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::NoLeader);
            }
            match self.leader() {
                Some(l) if l == self.me => {
                    match add {
                        Some(addr) => {
                            info!(node = %node_id, %addr, "adding manager to the raft group");
                            self.raft
                                .add_learner(id, BasicNode::new(addr), true)
                                .await
                                .map_err(raft_err)?;
                            if !self.voters().contains(&id) {
                                self.raft
                                    .change_membership(
                                        ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                                        false,
                                    )
                                    .await
                                    .map_err(raft_err)?;
                            }
                        }
                        None => {
                            info!(node = %node_id, "removing manager from the raft group");
                            if self.voters().contains(&id) {
                                self.raft
                                    .change_membership(
                                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                                        false,
                                    )
                                    .await
                                    .map_err(raft_err)?;
                            }
                        }
                    }
                    return Ok(());
                }
                Some(l) => {
                    let Some(leader_addr) = self.leader_addr(l) else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let req = match add {
                        Some(addr) => mgmt::Request::AddManager {
                            node_id: node_id.to_owned(),
                            addr: addr.to_owned(),
                        },
                        None => mgmt::Request::RemoveManager {
                            node_id: node_id.to_owned(),
                        },
                    };
                    let mut conn = mgmt::Conn::new(leader_addr, self.tls.clone());
                    match conn.call(&req, Duration::from_secs(30)).await {
                        Ok(_) => return Ok(()),
                        Err(MgmtError::Remote { message, .. }) => {
                            return Err(StoreError::Raft(message));
                        }
                        Err(error) => {
                            debug!(%error, "forward membership change");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

enum Retry {
    /// No leader yet, or it moved: try again until the deadline.
    Later,
    Fail(StoreError),
}

#[cfg(test)]
mod tests {
    use super::{state::tests as fx, *};
    use crate::pki::RootCa;

    fn tls() -> Arc<ClientConfig> {
        let ca = RootCa::generate("c1").expect("ca");
        let id = ca.issue_local("m1", "c1", true).expect("identity");
        Arc::new(id.client_config().expect("client config"))
    }

    /// A single manager: writes commit through Raft, refusals change
    /// nothing, and a reopened store resumes its state from disk.
    #[tokio::test]
    async fn single_manager_writes_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swarm.redb");
        {
            let store = Store::open(&path, "m1", tls()).await.expect("open");
            store
                .initialize("192.0.2.1:2377".into())
                .await
                .expect("init");
            assert!(store.is_leader());
            // A lone manager stays leader while idle.
            tokio::time::sleep(Duration::from_millis(2 * QUORUM_LOST_AFTER_MS)).await;
            assert!(
                store.is_leader(),
                "an idle manager of one lost its leadership"
            );
            store
                .write(Command::InitCluster {
                    cluster: Box::new(fx::cluster()),
                    node: Box::new(fx::node("m1", true)),
                })
                .await
                .expect("init cluster");
            store
                .write(Command::AddNode {
                    node: Box::new(fx::node("w1", false)),
                })
                .await
                .expect("add");
            let refused = store
                .write(Command::RemoveNode {
                    id: "w1".into(),
                    force: false,
                })
                .await;
            assert!(matches!(
                refused,
                Err(StoreError::Command(CommandError::NodeNotDown(_)))
            ));
            store.read(|s| assert_eq!(s.nodes.len(), 2));
            store.shutdown().await;
        }
        let store = Store::open(&path, "m1", tls()).await.expect("reopen");
        store.read(|s| {
            assert_eq!(s.index, 2);
            assert_eq!(s.nodes.len(), 2);
            assert_eq!(s.cluster.as_ref().map(|c| c.id.as_str()), Some("c1"));
        });
        // It leads its group of one again and takes writes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !store.is_leader() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
            .write(Command::SetNodeState {
                id: "w1".into(),
                state: NodeState::Down,
                message: String::new(),
            })
            .await
            .expect("write after restart");
        store.read(|s| assert_eq!(s.nodes["w1"].state, NodeState::Down));
        store.shutdown().await;
    }
}
