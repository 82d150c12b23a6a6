//! `/nodes`: list (with Docker's filters), inspect, update, remove.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use bollard_stubs::models::{
    EngineDescription, ManagerStatus, Node, NodeDescription as DockerDescription, NodeSpec,
    NodeSpecRoleEnum, NodeState as DockerNodeState, NodeStatus, ObjectVersion, Platform,
    Reachability, ResourceObject, TlsInfo,
};

use super::{ApiError, filters::Filters, json, json_body, query_bool, require_manager};
use crate::{
    agent::Agent,
    store::{Command, NodeRecord, NodeState, State as StoreState, Store, raft_id},
};

const NODE_FILTERS: &[&str] = &["id", "label", "membership", "name", "node.label", "role"];

/// The Docker view of a node; `leader` is the Raft leader this manager
/// knows of.
pub fn to_docker(n: &NodeRecord, trust_root: Option<&str>, leader: Option<u64>) -> Node {
    let d = &n.description;
    Node {
        id: Some(n.id.clone()),
        version: Some(ObjectVersion {
            index: Some(n.version),
        }),
        created_at: Some(n.created_at.clone()),
        updated_at: Some(n.updated_at.clone()),
        spec: Some(n.spec.clone()),
        description: Some(DockerDescription {
            hostname: Some(d.hostname.clone()),
            platform: Some(Platform {
                architecture: Some(d.architecture.clone()),
                os: Some(d.os.clone()),
            }),
            resources: Some(ResourceObject {
                nano_cpus: Some(d.nano_cpus),
                memory_bytes: Some(d.memory_bytes),
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: Some(d.engine_version.clone()),
                labels: None,
                plugins: Some(Vec::new()),
            }),
            tls_info: trust_root.map(|t| TlsInfo {
                trust_root: Some(t.to_owned()),
                ..Default::default()
            }),
        }),
        status: Some(NodeStatus {
            state: Some(match n.state {
                NodeState::Unknown => DockerNodeState::UNKNOWN,
                NodeState::Down => DockerNodeState::DOWN,
                NodeState::Ready => DockerNodeState::READY,
                NodeState::Disconnected => DockerNodeState::DISCONNECTED,
            }),
            message: (!n.message.is_empty()).then(|| n.message.clone()),
            addr: Some(d.addr.clone()),
        }),
        manager_status: n.manager_addr.as_ref().map(|addr| ManagerStatus {
            leader: Some(leader == Some(raft_id(&n.id))),
            reachability: Some(if n.state == NodeState::Down {
                Reachability::UNREACHABLE
            } else {
                Reachability::REACHABLE
            }),
            addr: Some(addr.clone()),
        }),
    }
}

/// Finds a node as swarmkit does: full ID, then name or hostname, then a
/// unique ID prefix.
pub fn lookup<'a>(s: &'a StoreState, key: &str) -> Result<&'a NodeRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("node {key} not found"));
    if key.is_empty() {
        return Err(not_found());
    }
    if let Some(n) = s.nodes.get(key) {
        return Ok(n);
    }
    let by_name: Vec<_> = s
        .nodes
        .values()
        .filter(|n| n.spec.name.as_deref() == Some(key) || n.description.hostname == key)
        .collect();
    match by_name.as_slice() {
        [one] => return Ok(one),
        [] => {}
        _ => {
            return Err(ApiError::BadRequest(format!(
                "node {key} is ambiguous ({} matches found)",
                by_name.len()
            )));
        }
    }
    let by_prefix: Vec<_> = s.nodes.values().filter(|n| n.id.starts_with(key)).collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        _ => Err(ApiError::BadRequest(format!(
            "node {key} is ambiguous ({} matches found)",
            by_prefix.len()
        ))),
    }
}

fn label_matches(labels: Option<&HashMap<String, String>>, filter: &str) -> bool {
    let labels = labels.cloned().unwrap_or_default();
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

fn matches(n: &NodeRecord, f: &Filters) -> bool {
    let role = match n.spec.role {
        Some(NodeSpecRoleEnum::MANAGER) => "manager",
        _ => "worker",
    };
    f.any("id", |v| n.id.starts_with(v))
        && f.any("name", |v| {
            n.spec.name.as_deref().is_some_and(|s| s.starts_with(v))
                || n.description.hostname.starts_with(v)
        })
        && f.any("role", |v| v == role)
        // Nodes are accepted once they join; swarmkit's "pending" never occurs here.
        && f.any("membership", |v| v == "accepted")
        && f.any("node.label", |v| label_matches(n.spec.labels.as_ref(), v))
        // Engine labels: this engine has none.
        && f.any("label", |v| label_matches(None, v))
}

/// Node status as this manager can tell it: the store's, written by the
/// leader; without a leader (no quorum) nothing updates the store, so the
/// status comes from this node's own gossip view instead.
async fn live_view(agent: &Agent, store: &Store) -> Option<(String, HashMap<String, bool>)> {
    if store.leader().is_some() {
        return None;
    }
    let active = agent.active().await?;
    let members = active.gossip.members();
    Some((
        active.local.node_id.clone(),
        members.into_iter().map(|(id, m)| (id, m.up)).collect(),
    ))
}

fn with_live_state(n: &NodeRecord, live: Option<&(String, HashMap<String, bool>)>) -> NodeRecord {
    let mut n = n.clone();
    if let Some((me, members)) = live {
        let up = *me == n.id || members.get(&n.id).copied().unwrap_or(false);
        n.state = if up {
            NodeState::Ready
        } else {
            NodeState::Down
        };
    }
    n
}

pub async fn list(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), NODE_FILTERS)?;
    let store = require_manager(&agent).await?;
    let leader = store.leader();
    let live = live_view(&agent, &store).await;
    let nodes: Vec<Node> = store.read(|s| {
        let root = s.cluster.as_ref().map(|c| c.root_ca.cert_pem.as_str());
        s.nodes
            .values()
            .filter(|n| matches(n, &filters))
            .map(|n| to_docker(&with_live_state(n, live.as_ref()), root, leader))
            .collect()
    });
    Ok(json(StatusCode::OK, &nodes))
}

pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let leader = store.leader();
    let live = live_view(&agent, &store).await;
    let node = store.read(|s| {
        let root = s.cluster.as_ref().map(|c| c.root_ca.cert_pem.as_str());
        lookup(s, &id).map(|n| to_docker(&with_live_state(n, live.as_ref()), root, leader))
    })?;
    Ok(json(StatusCode::OK, &node))
}

pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = super::query_version(&q, "node")?;
    let spec: NodeSpec = json_body(&body)?;
    let store = require_manager(&agent).await?;
    let (node_id, was_manager) = store.read(|s| {
        lookup(s, &id).map(|n| (n.id.clone(), n.spec.role == Some(NodeSpecRoleEnum::MANAGER)))
    })?;
    let demote = was_manager && spec.role == Some(NodeSpecRoleEnum::WORKER);
    store
        .write(Command::UpdateNodeSpec {
            id: node_id.clone(),
            version,
            spec,
        })
        .await?;
    if demote {
        // The node saw its new role while still a voter; now it leaves Raft.
        store.remove_manager(&node_id).await?;
    }
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let node_id = store.read(|s| lookup(s, &id).map(|n| n.id.clone()))?;
    store
        .write(Command::RemoveNode {
            id: node_id,
            force: query_bool(q.get("force")),
        })
        .await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}
