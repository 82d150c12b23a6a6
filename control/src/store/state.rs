//! The desired state of the swarm and the one way it changes: a [`Command`]
//! applied by [`State::apply`]. Pure: no I/O, no clock (the caller hands
//! the time in). Every applied command advances the store's index, and the
//! objects it touched take that index as their `Version.Index`, as in
//! swarmkit, so API clients get optimistic concurrency for free.
//!
//! The Raft issue replicates exactly these commands among managers.

use std::collections::BTreeMap;

use bollard_stubs::models::{NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, SwarmSpec};
use serde::{Deserialize, Serialize};

use super::{
    networks::{Holder, NetworkRecord, NetworkRequest},
    services::{Plan, ServiceRecord, TaskRecord, TaskReport},
};
use crate::pki::RootCa;

const DEFAULT_MANAGER_PORT: u16 = 2377;

/// A secret in the replicated state (join tokens, the gossip key): stored
/// and replicated as is, never shown by `Debug`, so no log line carries it
/// even when Raft entries are traced.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// What a node's status is, as the managers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Unknown,
    Down,
    Ready,
    Disconnected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub spec: SwarmSpec,
    pub root_ca: RootCa,
    /// Full join tokens; only managers ever see them.
    pub worker_token: Secret,
    pub manager_token: Secret,
    /// The key that seals gossip datagrams, hex.
    pub gossip_key: Secret,
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    pub data_path_port: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub state: NodeState,
    pub message: String,
    /// `ip:port` of the management listener, for managers.
    pub manager_addr: Option<String>,
}

/// What a node tells about itself (Docker's `Description`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    /// The node's address on the underlay (Docker's `Status.Addr`).
    pub addr: String,
    pub gossip_port: u16,
    pub os: String,
    pub architecture: String,
    pub engine_version: String,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// The port its management listener would use as a manager.
    #[serde(default)]
    pub listen_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub index: u64,
    pub cluster: Option<ClusterRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    InitCluster {
        cluster: Box<ClusterRecord>,
        node: Box<NodeRecord>,
    },
    AddNode {
        node: Box<NodeRecord>,
    },
    UpdateNodeSpec {
        id: String,
        version: u64,
        spec: NodeSpec,
    },
    UpdateNodeDescription {
        id: String,
        description: NodeDescription,
    },
    /// `swarm update`: a new spec, and new join tokens when rotated (made
    /// by the proposer, so that every replica applies the same ones).
    UpdateCluster {
        version: u64,
        spec: Box<SwarmSpec>,
        worker_token: Option<Secret>,
        manager_token: Option<Secret>,
    },
    SetNodeState {
        id: String,
        state: NodeState,
        message: String,
    },
    RemoveNode {
        id: String,
        force: bool,
    },
    /// `docker network create -d overlay`: the subnet (unless given), the
    /// VXLAN ID and the gateway are allocated by applying it.
    CreateNetwork {
        req: Box<NetworkRequest>,
    },
    RemoveNetwork {
        id: String,
    },
    /// A container's address on a network (idempotent per container).
    AllocateAddress {
        network_id: String,
        holder: Holder,
    },
    ReleaseAddress {
        network_id: String,
        container_id: String,
    },
    /// `docker service create` (the ID made by the proposer).
    CreateService {
        id: String,
        spec: Box<bollard_stubs::models::ServiceSpec>,
    },
    /// `docker service update`; with `rollback`, back to the previous spec.
    UpdateService {
        id: String,
        version: u64,
        spec: Box<bollard_stubs::models::ServiceSpec>,
        rollback: bool,
    },
    RemoveService {
        id: String,
    },
    /// A round of the orchestrator on the leader.
    Orchestrate {
        plan: Box<Plan>,
    },
    /// A worker's reports on its tasks.
    ReportTasks {
        node_id: String,
        reports: Vec<TaskReport>,
    },
}

/// A command as the leader proposes it: stamped with the leader's clock, so
/// that every replica applies the same timestamps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub at: String,
    pub cmd: Command,
}

/// What applying a proposal gave: the store index after it, or why the
/// state machine refused it (nothing changed then).
pub type Applied = Result<u64, CommandError>;

/// An object the last command changed: what the store must write (or
/// delete, when it is gone from the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Cluster,
    Node(String),
    Network(String),
    Service(String),
    Task(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("this node is already part of a swarm")]
    AlreadyInitialized,
    #[error("the swarm is not initialized")]
    NotInitialized,
    #[error("node {0} not found")]
    NoSuchNode(String),
    #[error("node {0} already exists")]
    NodeExists(String),
    /// swarmkit's wording; the docker CLI users know it.
    #[error("update out of sequence")]
    OutOfSequence,
    #[error("node {0} is not down and can't be removed")]
    NodeNotDown(String),
    #[error(
        "node {0} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
    )]
    NodeIsManager(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    #[error("network {0} not found")]
    NoSuchNetwork(String),
    /// The whole message, Docker's.
    #[error("{0}")]
    NetworkInUse(String),
    #[error("name conflicts with an existing object: service {0} already exists")]
    ServiceExists(String),
    #[error("service {0} not found")]
    NoSuchService(String),
}

impl State {
    pub fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    /// Nodes whose role is manager.
    pub fn managers(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes
            .values()
            .filter(|n| n.spec.role == Some(NodeSpecRoleEnum::MANAGER))
    }

    /// Applies `cmd` at time `now` (RFC 3339). On error nothing changed.
    pub fn apply(&mut self, cmd: Command, now: &str) -> Result<Vec<Touched>, CommandError> {
        let index = self.index + 1;
        let touched = match cmd {
            Command::InitCluster {
                mut cluster,
                mut node,
            } => {
                if self.cluster.is_some() {
                    return Err(CommandError::AlreadyInitialized);
                }
                cluster.version = index;
                node.version = index;
                let id = node.id.clone();
                self.cluster = Some(*cluster);
                self.nodes.insert(id.clone(), *node);
                vec![Touched::Cluster, Touched::Node(id)]
            }
            Command::AddNode { mut node } => {
                self.require_cluster()?;
                if self.nodes.contains_key(&node.id) {
                    return Err(CommandError::NodeExists(node.id.clone()));
                }
                node.version = index;
                node.created_at = now.to_owned();
                node.updated_at = now.to_owned();
                let id = node.id.clone();
                self.nodes.insert(id.clone(), *node);
                vec![Touched::Node(id)]
            }
            Command::UpdateNodeSpec { id, version, spec } => {
                let managers = self.managers().count();
                let node = self.node_mut(&id)?;
                if node.version != version {
                    return Err(CommandError::OutOfSequence);
                }
                let mut spec = spec;
                if spec.role == Some(NodeSpecRoleEnum::EMPTY) {
                    spec.role = None;
                }
                if spec.availability == Some(NodeSpecAvailabilityEnum::EMPTY) {
                    spec.availability = None;
                }
                let was_manager = node.spec.role == Some(NodeSpecRoleEnum::MANAGER);
                let role = spec.role.or(node.spec.role);
                match (was_manager, role) {
                    (true, Some(NodeSpecRoleEnum::WORKER)) => {
                        if managers <= 1 {
                            return Err(CommandError::InvalidArgument(
                                "attempting to demote the last manager of the swarm".into(),
                            ));
                        }
                        node.manager_addr = None;
                    }
                    (false, Some(NodeSpecRoleEnum::MANAGER)) => {
                        let port = match node.description.listen_port {
                            0 => DEFAULT_MANAGER_PORT,
                            p => p,
                        };
                        node.manager_addr = Some(format!("{}:{port}", node.description.addr));
                    }
                    _ => {}
                }
                spec.role = role;
                if spec.availability.is_none() {
                    spec.availability = Some(NodeSpecAvailabilityEnum::ACTIVE);
                }
                node.spec = spec;
                node.version = index;
                node.updated_at = now.to_owned();
                vec![Touched::Node(id)]
            }
            Command::UpdateCluster {
                version,
                spec,
                worker_token,
                manager_token,
            } => {
                let cluster = self.cluster.as_mut().ok_or(CommandError::NotInitialized)?;
                if cluster.version != version {
                    return Err(CommandError::OutOfSequence);
                }
                cluster.spec = *spec;
                if let Some(t) = worker_token {
                    cluster.worker_token = t;
                }
                if let Some(t) = manager_token {
                    cluster.manager_token = t;
                }
                cluster.version = index;
                cluster.updated_at = now.to_owned();
                vec![Touched::Cluster]
            }
            Command::UpdateNodeDescription { id, description } => {
                let node = self.node_mut(&id)?;
                if node.description == description {
                    return Ok(Vec::new());
                }
                if let Some(m) = node.manager_addr.as_mut() {
                    // The management listener follows the node's address.
                    if let Some((_, port)) = m.rsplit_once(':') {
                        *m = format!("{}:{port}", description.addr);
                    }
                }
                node.description = description;
                node.version = index;
                node.updated_at = now.to_owned();
                vec![Touched::Node(id)]
            }
            Command::SetNodeState { id, state, message } => {
                let node = self.node_mut(&id)?;
                if node.state == state && node.message == message {
                    return Ok(Vec::new());
                }
                node.state = state;
                node.message = message;
                node.version = index;
                node.updated_at = now.to_owned();
                vec![Touched::Node(id)]
            }
            Command::RemoveNode { id, force } => {
                let node = self.node(&id).ok_or(CommandError::NoSuchNode(id.clone()))?;
                if node.spec.role == Some(NodeSpecRoleEnum::MANAGER) {
                    return Err(CommandError::NodeIsManager(id));
                }
                if !force && node.state == NodeState::Ready {
                    return Err(CommandError::NodeNotDown(id));
                }
                self.nodes.remove(&id);
                let mut touched: Vec<Touched> = self
                    .release_node_addresses(&id, index, now)
                    .into_iter()
                    .map(Touched::Network)
                    .collect();
                touched.extend(self.remove_node_tasks(&id));
                touched.push(Touched::Node(id));
                touched
            }
            Command::CreateNetwork { req } => {
                let id = req.id.clone();
                if self.create_network(*req, index, now)? {
                    vec![Touched::Network(id)]
                } else {
                    Vec::new()
                }
            }
            Command::RemoveNetwork { id } => {
                self.remove_network(&id)?;
                vec![Touched::Network(id)]
            }
            Command::AllocateAddress { network_id, holder } => {
                if self.allocate_address(&network_id, holder, index, now)? {
                    vec![Touched::Network(network_id)]
                } else {
                    Vec::new()
                }
            }
            Command::ReleaseAddress {
                network_id,
                container_id,
            } => {
                if self.release_address(&network_id, &container_id, index, now) {
                    vec![Touched::Network(network_id)]
                } else {
                    Vec::new()
                }
            }
            Command::CreateService { id, spec } => self.create_service(id, *spec, index, now)?,
            Command::UpdateService {
                id,
                version,
                spec,
                rollback,
            } => self.update_service(&id, version, *spec, rollback, index, now)?,
            Command::RemoveService { id } => self.remove_service(&id, index, now)?,
            Command::Orchestrate { plan } => self.orchestrate(*plan, index, now),
            Command::ReportTasks { node_id, reports } => {
                self.report_tasks(&node_id, reports, index, now)
            }
        };
        self.index = index;
        Ok(touched)
    }

    fn require_cluster(&self) -> Result<&ClusterRecord, CommandError> {
        self.cluster.as_ref().ok_or(CommandError::NotInitialized)
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut NodeRecord, CommandError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| CommandError::NoSuchNode(id.to_owned()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(id: &str, manager: bool) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            created_at: "t0".into(),
            updated_at: "t0".into(),
            version: 0,
            spec: NodeSpec {
                role: Some(if manager {
                    NodeSpecRoleEnum::MANAGER
                } else {
                    NodeSpecRoleEnum::WORKER
                }),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                ..Default::default()
            },
            description: NodeDescription {
                hostname: id.into(),
                addr: "192.0.2.1".into(),
                ..Default::default()
            },
            state: NodeState::Ready,
            message: String::new(),
            manager_addr: manager.then(|| "192.0.2.1:2377".into()),
        }
    }

    pub(crate) fn cluster() -> ClusterRecord {
        ClusterRecord {
            id: "c1".into(),
            created_at: "t0".into(),
            updated_at: "t0".into(),
            version: 0,
            spec: SwarmSpec::default(),
            root_ca: RootCa {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            worker_token: "w".into(),
            manager_token: "m".into(),
            gossip_key: "".into(),
            default_addr_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
        }
    }

    /// A swarm whose default address pools are `pools` in `size`s.
    pub(crate) fn initialised_with_pools(pools: &[&str], size: u32) -> State {
        let mut c = cluster();
        c.default_addr_pool = pools.iter().map(|p| (*p).to_owned()).collect();
        c.subnet_size = size;
        let mut s = State::default();
        s.apply(
            Command::InitCluster {
                cluster: Box::new(c),
                node: Box::new(node("m1", true)),
            },
            "t1",
        )
        .expect("init");
        s
    }

    fn initialised() -> State {
        let mut s = State::default();
        s.apply(
            Command::InitCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("m1", true)),
            },
            "t1",
        )
        .expect("init");
        s
    }

    #[test]
    fn init_once() {
        let mut s = initialised();
        assert_eq!(s.index, 1);
        assert_eq!(s.nodes["m1"].version, 1);
        let again = s.apply(
            Command::InitCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("m2", true)),
            },
            "t2",
        );
        assert_eq!(again, Err(CommandError::AlreadyInitialized));
        assert_eq!(s.index, 1);
        assert_eq!(s.nodes.len(), 1);
    }

    #[test]
    fn stale_version_is_refused_and_changes_nothing() {
        let mut s = initialised();
        s.apply(
            Command::AddNode {
                node: Box::new(node("w1", false)),
            },
            "t2",
        )
        .expect("add");
        let v = s.nodes["w1"].version;
        let mut spec = s.nodes["w1"].spec.clone();
        spec.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
        let first = Command::UpdateNodeSpec {
            id: "w1".into(),
            version: v,
            spec: spec.clone(),
        };
        s.apply(first.clone(), "t3").expect("first update wins");
        let before = s.nodes["w1"].clone();
        assert_eq!(s.apply(first, "t4"), Err(CommandError::OutOfSequence));
        assert_eq!(s.nodes["w1"].version, before.version);
        assert_eq!(s.nodes["w1"].updated_at, "t3");
    }

    #[test]
    fn promote_and_demote() {
        let mut s = initialised();
        s.apply(
            Command::AddNode {
                node: Box::new(node("w1", false)),
            },
            "t",
        )
        .expect("add");
        let mut spec = s.nodes["m1"].spec.clone();
        spec.role = Some(NodeSpecRoleEnum::WORKER);
        let last = s.apply(
            Command::UpdateNodeSpec {
                id: "m1".into(),
                version: 1,
                spec: spec.clone(),
            },
            "t",
        );
        assert!(
            matches!(last, Err(CommandError::InvalidArgument(m)) if m.contains("last manager"))
        );
        let mut promote = s.nodes["w1"].spec.clone();
        promote.role = Some(NodeSpecRoleEnum::MANAGER);
        let v = s.nodes["w1"].version;
        s.apply(
            Command::UpdateNodeSpec {
                id: "w1".into(),
                version: v,
                spec: promote,
            },
            "t",
        )
        .expect("promote");
        assert_eq!(
            s.nodes["w1"].manager_addr.as_deref(),
            Some("192.0.2.1:2377")
        );
        assert_eq!(s.managers().count(), 2);
        s.apply(
            Command::UpdateNodeSpec {
                id: "m1".into(),
                version: 1,
                spec,
            },
            "t",
        )
        .expect("demote, now that another manager exists");
        assert_eq!(s.nodes["m1"].manager_addr, None);
        assert_eq!(s.managers().count(), 1);
    }

    #[test]
    fn cluster_update_rotates_tokens() {
        let mut s = initialised();
        let spec = s
            .cluster
            .as_ref()
            .map(|c| c.spec.clone())
            .unwrap_or_default();
        s.apply(
            Command::UpdateCluster {
                version: 1,
                spec: Box::new(spec.clone()),
                worker_token: Some("w2".into()),
                manager_token: None,
            },
            "t",
        )
        .expect("rotate");
        let c = s.cluster.clone().expect("cluster");
        assert_eq!(
            (c.worker_token.as_str(), c.manager_token.as_str()),
            ("w2", "m")
        );
        let stale = s.apply(
            Command::UpdateCluster {
                version: 1,
                spec: Box::new(spec),
                worker_token: Some("w3".into()),
                manager_token: None,
            },
            "t",
        );
        assert_eq!(stale, Err(CommandError::OutOfSequence));
    }

    #[test]
    fn remove_rules() {
        let mut s = initialised();
        s.apply(
            Command::AddNode {
                node: Box::new(node("w1", false)),
            },
            "t",
        )
        .expect("add");
        assert_eq!(
            s.apply(
                Command::RemoveNode {
                    id: "m1".into(),
                    force: true
                },
                "t"
            ),
            Err(CommandError::NodeIsManager("m1".into()))
        );
        assert_eq!(
            s.apply(
                Command::RemoveNode {
                    id: "w1".into(),
                    force: false
                },
                "t"
            ),
            Err(CommandError::NodeNotDown("w1".into()))
        );
        s.apply(
            Command::SetNodeState {
                id: "w1".into(),
                state: NodeState::Down,
                message: "heartbeat failure".into(),
            },
            "t",
        )
        .expect("down");
        s.apply(
            Command::RemoveNode {
                id: "w1".into(),
                force: false,
            },
            "t",
        )
        .expect("remove a down node");
        assert!(s.node("w1").is_none());
        assert_eq!(
            s.apply(
                Command::RemoveNode {
                    id: "w1".into(),
                    force: false
                },
                "t"
            ),
            Err(CommandError::NoSuchNode("w1".into()))
        );
    }

    #[test]
    fn unchanged_state_is_not_a_write() {
        let mut s = initialised();
        let i = s.index;
        let t = s
            .apply(
                Command::SetNodeState {
                    id: "m1".into(),
                    state: NodeState::Ready,
                    message: String::new(),
                },
                "t",
            )
            .expect("apply");
        assert!(t.is_empty());
        assert_eq!(s.index, i);
        assert_eq!(s.nodes["m1"].version, 1);
    }
}
