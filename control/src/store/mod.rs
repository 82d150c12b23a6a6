//! The manager's store: the [`State`] in memory, persisted in redb. The
//! only way to change it is [`Store::apply`], which runs the pure state
//! machine on a copy, writes the objects it touched in one transaction,
//! and only then makes the copy current, so a failed write changes nothing.

pub mod state;

use std::{
    path::Path,
    sync::{Mutex, MutexGuard, RwLock},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use state::{
    ClusterRecord, Command, CommandError, NodeDescription, NodeRecord, NodeState, State, Touched,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CLUSTER_KEY: &str = "cluster";
const NODE_PREFIX: &str = "node/";
const INDEX_KEY: &str = "index";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store {path}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("store I/O")]
    Db(#[from] redb::Error),
    #[error("decode stored object {key}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encode object")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Command(#[from] CommandError),
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

pub struct Store {
    db: Database,
    state: RwLock<State>,
    /// Serialises writers; held across the redb transaction. Lock order:
    /// `writer` before `state`.
    writer: Mutex<()>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        let state = load(&db)?;
        Ok(Self {
            db,
            state: RwLock::new(state),
            writer: Mutex::new(()),
        })
    }

    /// Reads the current state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Applies a command: validated by the state machine, persisted, then
    /// visible. Returns the store index after the command.
    pub fn apply(&self, cmd: Command) -> Result<u64, StoreError> {
        let _writer: MutexGuard<'_, ()> = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.read(State::clone);
        let now = crate::util::now_rfc3339();
        let touched = next.apply(cmd, &now)?;
        if touched.is_empty() {
            return Ok(next.index);
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(db_err)?;
            for t in &touched {
                match t {
                    Touched::Cluster => {
                        let bytes =
                            serde_json::to_vec(&next.cluster).map_err(StoreError::Encode)?;
                        objects
                            .insert(CLUSTER_KEY, bytes.as_slice())
                            .map_err(db_err)?;
                    }
                    Touched::Node(id) => {
                        let key = format!("{NODE_PREFIX}{id}");
                        match next.nodes.get(id) {
                            Some(node) => {
                                let bytes = serde_json::to_vec(node).map_err(StoreError::Encode)?;
                                objects
                                    .insert(key.as_str(), bytes.as_slice())
                                    .map_err(db_err)?;
                            }
                            None => {
                                objects.remove(key.as_str()).map_err(db_err)?;
                            }
                        }
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(INDEX_KEY, next.index).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let index = next.index;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(index)
    }
}

fn load(db: &Database) -> Result<State, StoreError> {
    let mut state = State::default();
    let txn = db.begin_read().map_err(db_err)?;
    let objects = match txn.open_table(OBJECTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(state),
        Err(e) => return Err(db_err(e)),
    };
    for entry in objects.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let key = k.value();
        let decode = |source| StoreError::Decode {
            key: key.to_owned(),
            source,
        };
        if key == CLUSTER_KEY {
            state.cluster = serde_json::from_slice(v.value()).map_err(decode)?;
        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            let node: NodeRecord = serde_json::from_slice(v.value()).map_err(decode)?;
            state.nodes.insert(id.to_owned(), node);
        }
    }
    if let Ok(meta) = txn.open_table(META)
        && let Some(i) = meta.get(INDEX_KEY).map_err(db_err)?
    {
        state.index = i.value();
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::{state::tests as fx, *};

    #[test]
    fn survives_reopen_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swarm.redb");
        {
            let store = Store::open(&path).expect("open");
            store
                .apply(Command::InitCluster {
                    cluster: Box::new(fx::cluster()),
                    node: Box::new(fx::node("m1", true)),
                })
                .expect("init");
            store
                .apply(Command::AddNode {
                    node: Box::new(fx::node("w1", false)),
                })
                .expect("add");
            let err = store.apply(Command::RemoveNode {
                id: "w1".into(),
                force: false,
            });
            assert!(matches!(
                err,
                Err(StoreError::Command(CommandError::NodeNotDown(_)))
            ));
            store
                .apply(Command::SetNodeState {
                    id: "w1".into(),
                    state: NodeState::Down,
                    message: String::new(),
                })
                .expect("down");
        }
        let store = Store::open(&path).expect("reopen");
        store.read(|s| {
            assert_eq!(s.index, 3);
            assert_eq!(s.nodes.len(), 2);
            assert_eq!(s.nodes["w1"].state, NodeState::Down);
            assert_eq!(s.cluster.as_ref().map(|c| c.id.as_str()), Some("c1"));
        });
        store
            .apply(Command::RemoveNode {
                id: "w1".into(),
                force: false,
            })
            .expect("remove");
        drop(store);
        let store = Store::open(&path).expect("reopen again");
        store.read(|s| assert!(s.node("w1").is_none()));
    }
}
