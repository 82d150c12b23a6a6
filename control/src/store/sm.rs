//! The replicated state machine (openraft's `RaftStateMachine`): applies
//! committed proposals to the pure [`State`], persists the objects each
//! one touched together with the last applied log ID in one redb
//! transaction, and only then makes the new state visible to readers.
//! Snapshots are the whole state as JSON.

#![expect(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError"
)]

use std::{
    io::Cursor,
    sync::{Arc, Mutex, RwLock},
};

use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, storage::RaftStateMachine,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    TypeConfig,
    state::{Applied, NodeRecord, State, Touched},
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const CLUSTER_KEY: &str = "cluster";
const NODE_PREFIX: &str = "node/";
const NETWORK_PREFIX: &str = "network/";
const SERVICE_PREFIX: &str = "service/";
const TASK_PREFIX: &str = "task/";
const APPLIED_KEY: &str = "applied";
const SNAPSHOT_KEY: &str = "snapshot";

type NodeId = u64;
type Node = openraft::BasicNode;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What a snapshot and the applied-state record carry.
#[derive(Serialize, Deserialize, Default, Clone)]
struct AppliedMeta {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    index: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    meta: AppliedMeta,
    state: State,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// What readers share with the state machine.
pub struct Shared {
    pub state: RwLock<State>,
    /// The store index after the last applied proposal; watchers wake on it.
    pub applied: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    shared: Arc<Shared>,
    meta: Arc<Mutex<AppliedMeta>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

/// Writes an object, or deletes it when it is gone from the state.
fn put<T: Serialize>(
    objects: &mut redb::Table<'_, &str, &[u8]>,
    key: &str,
    value: Option<&T>,
) -> Result<()> {
    match value {
        Some(v) => {
            let bytes = serde_json::to_vec(v).map_err(write_err)?;
            objects.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        None => {
            objects.remove(key).map_err(write_err)?;
        }
    }
    Ok(())
}

impl StateMachine {
    /// Loads the state the last run had applied.
    pub fn open(db: Arc<Database>) -> Result<Self> {
        let mut state = State::default();
        let mut meta = AppliedMeta::default();
        let mut snapshot = None;
        {
            let txn = db.begin_read().map_err(read_err)?;
            match txn.open_table(OBJECTS) {
                Ok(objects) => {
                    for row in objects.iter().map_err(read_err)? {
                        let (k, v) = row.map_err(read_err)?;
                        let key = k.value();
                        if key == CLUSTER_KEY {
                            state.cluster = serde_json::from_slice(v.value()).map_err(read_err)?;
                        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
                            let node: NodeRecord =
                                serde_json::from_slice(v.value()).map_err(read_err)?;
                            state.nodes.insert(id.to_owned(), node);
                        } else if let Some(id) = key.strip_prefix(NETWORK_PREFIX) {
                            let net = serde_json::from_slice(v.value()).map_err(read_err)?;
                            state.networks.insert(id.to_owned(), net);
                        } else if let Some(id) = key.strip_prefix(SERVICE_PREFIX) {
                            let svc = serde_json::from_slice(v.value()).map_err(read_err)?;
                            state.services.insert(id.to_owned(), svc);
                        } else if let Some(id) = key.strip_prefix(TASK_PREFIX) {
                            let task = serde_json::from_slice(v.value()).map_err(read_err)?;
                            state.tasks.insert(id.to_owned(), task);
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(read_err(e)),
            }
            match txn.open_table(SM_META) {
                Ok(t) => {
                    if let Some(v) = t.get(APPLIED_KEY).map_err(read_err)? {
                        meta = serde_json::from_slice(v.value()).map_err(read_err)?;
                    }
                    if let Some(v) = t.get(SNAPSHOT_KEY).map_err(read_err)? {
                        snapshot = Some(serde_json::from_slice(v.value()).map_err(read_err)?);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        state.index = meta.index;
        let (applied, _) = watch::channel(state.index);
        Ok(Self {
            db,
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                applied,
            }),
            meta: Arc::new(Mutex::new(meta)),
            snapshot: Arc::new(Mutex::new(snapshot)),
        })
    }

    /// Writes `state` as the whole applied state of a new store (for
    /// `swarm init --force-new-cluster`): a fresh Raft log starts over it.
    pub fn seed(db: Arc<Database>, state: &State) -> Result<()> {
        let sm = Self::open(db)?;
        let meta = AppliedMeta {
            index: state.index,
            ..Default::default()
        };
        sm.persist(state, &[], &meta, true)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn current(&self) -> State {
        self.shared
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes what changed and the applied record in one transaction.
    fn persist(
        &self,
        next: &State,
        touched: &[Touched],
        meta: &AppliedMeta,
        full: bool,
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(write_err)?;
            if full {
                objects.retain(|_, _| false).map_err(write_err)?;
                if let Some(c) = &next.cluster {
                    let bytes = serde_json::to_vec(c).map_err(write_err)?;
                    objects
                        .insert(CLUSTER_KEY, bytes.as_slice())
                        .map_err(write_err)?;
                }
                for (id, node) in &next.nodes {
                    put(&mut objects, &format!("{NODE_PREFIX}{id}"), Some(node))?;
                }
                for (id, net) in &next.networks {
                    put(&mut objects, &format!("{NETWORK_PREFIX}{id}"), Some(net))?;
                }
                for (id, svc) in &next.services {
                    put(&mut objects, &format!("{SERVICE_PREFIX}{id}"), Some(svc))?;
                }
                for (id, task) in &next.tasks {
                    put(&mut objects, &format!("{TASK_PREFIX}{id}"), Some(task))?;
                }
            }
            for t in touched {
                match t {
                    Touched::Cluster => put(&mut objects, CLUSTER_KEY, next.cluster.as_ref())?,
                    Touched::Network(id) => put(
                        &mut objects,
                        &format!("{NETWORK_PREFIX}{id}"),
                        next.networks.get(id),
                    )?,
                    Touched::Node(id) => put(
                        &mut objects,
                        &format!("{NODE_PREFIX}{id}"),
                        next.nodes.get(id),
                    )?,
                    Touched::Service(id) => put(
                        &mut objects,
                        &format!("{SERVICE_PREFIX}{id}"),
                        next.services.get(id),
                    )?,
                    Touched::Task(id) => put(
                        &mut objects,
                        &format!("{TASK_PREFIX}{id}"),
                        next.tasks.get(id),
                    )?,
                }
            }
            let mut sm_meta = txn.open_table(SM_META).map_err(write_err)?;
            let bytes = serde_json::to_vec(meta).map_err(write_err)?;
            sm_meta
                .insert(APPLIED_KEY, bytes.as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    fn publish(&self, next: State, meta: AppliedMeta) {
        let index = next.index;
        *self.shared.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = meta;
        self.shared.applied.send_replace(index);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let body = SnapshotBody {
            meta: meta.clone(),
            state: self.current(),
        };
        let data = serde_json::to_vec(&body).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match meta.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, crate::util::unix_nanos()),
            None => format!("none-{}", crate::util::unix_nanos()),
        };
        let snap_meta = SnapshotMeta {
            last_log_id: meta.last_applied,
            last_membership: meta.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: snap_meta.clone(),
            data: data.clone(),
        };
        save_snapshot(&self.db, &stored)?;
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored);
        Ok(Snapshot {
            meta: snap_meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn save_snapshot(db: &Database, stored: &StoredSnapshot) -> Result<()> {
    let err = |e: &dyn std::error::Error| -> StorageError<NodeId> {
        StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
    };
    let bytes = serde_json::to_vec(stored).map_err(|e| err(&e))?;
    let txn = db.begin_write().map_err(|e| err(&e))?;
    {
        let mut t = txn.open_table(SM_META).map_err(|e| err(&e))?;
        t.insert(SNAPSHOT_KEY, bytes.as_slice())
            .map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut next = self.current();
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut touched = Vec::new();
        let mut out = Vec::new();
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Ok(next.index)),
                EntryPayload::Normal(p) => {
                    // On refusal the state machine changed nothing.
                    let r = next.apply(p.cmd, &p.at).map(|t| {
                        touched.extend(t);
                        next.index
                    });
                    out.push(r);
                }
                EntryPayload::Membership(m) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Ok(next.index));
                }
            }
        }
        meta.index = next.index;
        self.persist(&next, &touched, &meta, false)?;
        self.publish(next, meta);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            index: body.state.index,
        };
        self.persist(&body.state, &[], &applied, true)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        save_snapshot(&self.db, &stored)?;
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored);
        self.publish(body.state, applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
