//! `/networks`: the node's own networks (`bridge`, `host`, `none`) and the
//! swarm's overlay networks: list (Docker's filters), inspect (with this
//! node's containers and the network's peers), create, remove, connect,
//! disconnect. Overlay networks live in the managers' Raft state; a worker
//! lists those its containers are on.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bollard_stubs::models::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, error, filters::Filters, json, json_body};
use crate::{
    agent::Agent,
    store::{
        Command,
        networks::{MTU_OPTION, NetworkRecord, NetworkRequest},
    },
};

const NETWORK_FILTERS: &[&str] = &["dangling", "driver", "id", "label", "name", "scope", "type"];
const BUILTIN: [&str; 3] = ["bridge", "host", "none"];

/// The ID of a built-in network of this engine (stable: from the engine
/// ID).
fn builtin_id(agent: &Agent, name: &str) -> String {
    hex::encode(Sha256::digest(format!("{}/{name}", agent.engine_id())))
}

fn builtin(agent: &Agent, name: &str) -> Value {
    let ipam_config = if name == "bridge" {
        let b = agent.runtime.bridge_net();
        json!([{ "Subnet": b.0.to_string(), "Gateway": b.1.to_string() }])
    } else {
        json!([])
    };
    let containers: serde_json::Map<String, Value> = agent
        .runtime
        .list()
        .into_iter()
        .filter_map(|c| {
            let r = c.record();
            if r.net_mode.as_str() != name || !r.state.status.is_running() {
                return None;
            }
            let (mac, ip) = match &r.endpoint {
                Some(e) => (e.mac.clone(), format!("{}/{}", e.ip, e.prefix_len)),
                None => (String::new(), String::new()),
            };
            let ep = r.endpoint.as_ref().map(|e| e.endpoint_id.clone()).unwrap_or_default();
            Some((
                r.id.clone(),
                json!({ "Name": r.name, "EndpointID": ep, "MacAddress": mac, "IPv4Address": ip, "IPv6Address": "" }),
            ))
        })
        .collect();
    let options = if name == "bridge" {
        json!({
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.name": agent.runtime.bridge_name(),
            "com.docker.network.driver.mtu": agent.runtime.bridge_mtu().to_string(),
        })
    } else {
        json!({})
    };
    json!({
        "Name": name,
        "Id": builtin_id(agent, name),
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": if name == "none" { "null" } else { name },
        "EnableIPv4": name != "none",
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": null, "Config": ipam_config },
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": {},
    })
}

/// A swarm network as Docker shows it; `detail` adds this node's
/// containers and the peers.
fn overlay_json(
    agent: &Agent,
    n: &NetworkRecord,
    hostnames: &HashMap<String, String>,
    detail: bool,
) -> Value {
    let mut config = serde_json::Map::new();
    config.insert("Subnet".into(), json!(n.subnet.to_string()));
    config.insert("Gateway".into(), json!(n.gateway.to_string()));
    if let Some(r) = n.ip_range {
        config.insert("IPRange".into(), json!(r.to_string()));
    }
    let mut v = json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": "swarm",
        "Driver": n.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": null, "Config": [Value::Object(config)] },
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": {},
        "Options": n.options,
        "Labels": n.labels,
    });
    if detail {
        let containers: serde_json::Map<String, Value> = agent
            .runtime
            .on_network(&n.id)
            .into_iter()
            .map(|(r, ep)| {
                (
                    r.id.clone(),
                    json!({
                        "Name": r.name,
                        "EndpointID": ep.endpoint_id,
                        "MacAddress": ep.mac,
                        "IPv4Address": format!("{}/{}", ep.ip, ep.prefix_len),
                        "IPv6Address": "",
                    }),
                )
            })
            .collect();
        let mut peers: Vec<Value> = agent
            .overlay
            .peers(&n.id)
            .into_iter()
            .map(|(node, ip)| {
                json!({
                    "Name": hostnames.get(&node).cloned().unwrap_or(node),
                    "IP": ip.map(|i| i.to_string()).unwrap_or_default(),
                })
            })
            .collect();
        if !containers.is_empty()
            && let Some(me) = agent.overlay.me()
        {
            peers.push(json!({ "Name": agent.cfg.hostname, "IP": me.to_string() }));
        }
        v["Containers"] = Value::Object(containers);
        if !peers.is_empty() {
            v["Peers"] = Value::Array(peers);
        }
    }
    v
}

/// The swarm networks this node may show: all of them on a manager; on a
/// worker those its containers are on.
async fn swarm_networks(agent: &Agent) -> (Vec<NetworkRecord>, HashMap<String, String>) {
    let Some(active) = agent.active().await else {
        return (Vec::new(), HashMap::new());
    };
    match &active.store {
        Some(store) => store.read(|s| {
            (
                s.networks.values().cloned().collect(),
                s.nodes
                    .values()
                    .map(|n| (n.id.clone(), n.description.hostname.clone()))
                    .collect(),
            )
        }),
        None => {
            let mut seen = BTreeMap::new();
            for c in agent.runtime.list() {
                let r = c.record();
                for n in &r.networks {
                    if seen.contains_key(&n.id) {
                        continue;
                    }
                    if let Ok(att) = agent.attach_network(&n.id, &r.id, false, None).await {
                        seen.insert(n.id.clone(), att);
                    }
                }
            }
            let nets = seen
                .into_values()
                .map(|a| NetworkRecord {
                    id: a.network_id,
                    name: a.name,
                    updated_at: a.created_at.clone(),
                    created_at: a.created_at,
                    version: 0,
                    driver: "overlay".into(),
                    labels: a.labels,
                    options: a.options,
                    attachable: a.attachable,
                    internal: a.internal,
                    subnet: a.subnet,
                    gateway: a.gateway,
                    ip_range: a.ip_range,
                    vni: a.vni,
                    addresses: BTreeMap::new(),
                    next: 0,
                })
                .collect();
            (nets, HashMap::new())
        }
    }
}

fn label_matches(labels: &Value, filter: &str) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    match filter.split_once('=') {
        Some((k, v)) => get(k) == Some(v),
        None => labels.get(filter).is_some(),
    }
}

fn matches(v: &Value, f: &Filters, builtin: bool, used: bool) -> Result<bool, ApiError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    for t in f.get("type").unwrap_or_default() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::BadRequest(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let dangling = match f
        .get("dangling")
        .and_then(|d| d.first())
        .map(String::as_str)
    {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid filter 'dangling={other}'"
            )));
        }
    };
    Ok(f.any("driver", |d| d == s("Driver"))
        && f.any("id", |i| s("Id").starts_with(i))
        && f.any("name", |n| s("Name").contains(n))
        && f.any("scope", |sc| sc == s("Scope"))
        && f.any("type", |t| (t == "builtin") == builtin)
        && f.any("label", |l| label_matches(&v["Labels"], l))
        && dangling.is_none_or(|d| builtin || (d != used)))
}

pub async fn list(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let f = Filters::parse(q.get("filters").map(String::as_str), NETWORK_FILTERS)?;
    let mut out = Vec::new();
    for name in BUILTIN {
        let v = builtin(&agent, name);
        if matches(&v, &f, true, true)? {
            out.push(v);
        }
    }
    let (nets, hostnames) = swarm_networks(&agent).await;
    for n in &nets {
        let v = overlay_json(&agent, n, &hostnames, false);
        let used = !n.addresses.is_empty() || agent.runtime.uses_network(&n.id);
        if matches(&v, &f, false, used)? {
            out.push(v);
        }
    }
    Ok(json(StatusCode::OK, &out))
}

pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    for name in BUILTIN {
        if key == name || (key.len() >= 3 && builtin_id(&agent, name).starts_with(&key)) {
            return Ok(json(StatusCode::OK, &builtin(&agent, name)));
        }
    }
    let (nets, hostnames) = swarm_networks(&agent).await;
    let found = nets
        .iter()
        .find(|n| n.id == key)
        .or_else(|| nets.iter().find(|n| n.name == key))
        .or_else(|| {
            let mut hits = nets.iter().filter(|n| n.id.starts_with(&key));
            match (hits.next(), hits.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            }
        });
    match found {
        Some(n) => Ok(json(
            StatusCode::OK,
            &overlay_json(&agent, n, &hostnames, true),
        )),
        None => Err(ApiError::NotFound(format!("network {key} not found"))),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub async fn create(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NetworkCreateRequest = json_body(&body)?;
    if req.name.is_empty() {
        return Err(ApiError::BadRequest("network name cannot be empty".into()));
    }
    if !valid_name(&req.name) {
        return Err(ApiError::BadRequest(format!(
            "invalid network name \"{}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            req.name
        )));
    }
    if BUILTIN.contains(&req.name.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "{} is a pre-defined network and cannot be created",
            req.name
        )));
    }
    let driver = req
        .driver
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "bridge".into());
    if driver != "overlay" {
        return Err(ApiError::BadRequest(format!(
            "network driver \"{driver}\" is not supported by swarmnet: create overlay networks (docker network create -d overlay)"
        )));
    }
    if req.ingress.unwrap_or(false) {
        return Err(ApiError::BadRequest(
            "ingress networks are not supported by swarmnet yet".into(),
        ));
    }
    if body_bool(&body, "EnableIPv6") {
        return Err(ApiError::BadRequest(
            "IPv6 overlay networks are not supported by swarmnet yet".into(),
        ));
    }
    if req.config_only.unwrap_or(false)
        || req
            .config_from
            .as_ref()
            .is_some_and(|c| c.network.as_deref().is_some_and(|n| !n.is_empty()))
    {
        return Err(ApiError::BadRequest(
            "config-only networks are not supported by swarmnet".into(),
        ));
    }
    let ipam = req.ipam.clone().unwrap_or_default();
    if ipam
        .driver
        .as_deref()
        .is_some_and(|d| !d.is_empty() && d != "default")
    {
        return Err(ApiError::BadRequest(format!(
            "IPAM driver {:?} is not supported by swarmnet (default is)",
            ipam.driver.unwrap_or_default()
        )));
    }
    let configs = ipam.config.unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::BadRequest(
            "more than one IPAM config (subnet) per network is not supported by swarmnet".into(),
        ));
    }
    let conf = configs.into_iter().next().unwrap_or_default();
    let options: BTreeMap<String, String> = req
        .options
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for k in options.keys() {
        if k != MTU_OPTION && !k.starts_with("com.docker.network.driver.overlay.") {
            return Err(ApiError::BadRequest(format!(
                "network option {k} is not supported by swarmnet"
            )));
        }
    }
    let Some(active) = agent.active().await else {
        return Err(ApiError::Unavailable(error::NOT_IN_SWARM.into()));
    };
    let Some(store) = &active.store else {
        return Err(ApiError::Forbidden(
            "Cannot create a multi-host network from a worker node. Please create the network from a manager node.".into(),
        ));
    };
    let id = crate::token::random_id();
    store
        .write(Command::CreateNetwork {
            req: Box::new(NetworkRequest {
                id: id.clone(),
                name: req.name.clone(),
                driver,
                labels: req.labels.clone().unwrap_or_default().into_iter().collect(),
                options,
                attachable: req.attachable.unwrap_or(false),
                internal: req.internal.unwrap_or(false),
                subnet: conf.subnet.filter(|s| !s.is_empty()),
                gateway: conf.gateway.filter(|s| !s.is_empty()),
                ip_range: conf.ip_range.filter(|s| !s.is_empty()),
            }),
        })
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({ "Id": id, "Warning": "" }),
    ))
}

/// A boolean field of the raw body (the models of newer APIs lack some
/// that API 1.47 clients send).
fn body_bool(body: &Bytes, key: &str) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get(key).and_then(Value::as_bool))
        .unwrap_or(false)
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    for name in BUILTIN {
        if key == name || (key.len() >= 3 && builtin_id(&agent, name).starts_with(&key)) {
            return Err(ApiError::Forbidden(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
    }
    let Some(active) = agent.active().await else {
        return Err(ApiError::NotFound(format!("network {key} not found")));
    };
    let Some(store) = &active.store else {
        return Err(ApiError::Forbidden(
            "Cannot remove a swarm network from a worker node. Please remove it from a manager node.".into(),
        ));
    };
    let id = store
        .read(|s| s.find_network(&key).map(|n| n.id.clone()))
        .ok_or_else(|| ApiError::NotFound(format!("network {key} not found")))?;
    store.write(Command::RemoveNetwork { id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn connect(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NetworkConnectRequest = json_body(&body)?;
    if BUILTIN.contains(&key.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "connecting containers to the {key} network is not supported by swarmnet"
        )));
    }
    agent.runtime.connect(&req.container, &key).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn disconnect(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NetworkDisconnectRequest = json_body(&body)?;
    agent.runtime.disconnect(&req.container, &key).await?;
    Ok(StatusCode::OK.into_response())
}
