//! `/_ping`, `/version`, `/info`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bollard_stubs::models::{
    LocalNodeState, PeerNode, SwarmInfo, SystemInfo, SystemVersion, SystemVersionComponents,
    SystemVersionPlatform,
};

use super::{API_VERSION, MIN_API_VERSION, json};
use crate::{
    agent::Agent,
    store::{NodeState, State as StoreState},
    util,
};

pub async fn ping(State(agent): State<Arc<Agent>>) -> Response {
    let swarm = match agent.active().await {
        None => "inactive",
        Some(a) if a.store.is_some() => "active/manager",
        Some(_) => "active/worker",
    };
    let mut resp = (StatusCode::OK, "OK").into_response();
    let h = resp.headers_mut();
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("Pragma", HeaderValue::from_static("no-cache"));
    h.insert("Swarm", HeaderValue::from_static(swarm));
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn version() -> Response {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let body = SystemVersion {
        platform: Some(SystemVersionPlatform {
            name: "swarmnet".into(),
        }),
        components: Some(vec![SystemVersionComponents {
            name: "Engine".into(),
            version: version.clone(),
            details: Some(
                [
                    ("ApiVersion".to_owned(), API_VERSION.to_owned()),
                    ("MinAPIVersion".to_owned(), MIN_API_VERSION.to_owned()),
                    ("Os".to_owned(), "linux".to_owned()),
                    ("Arch".to_owned(), docker_arch().to_owned()),
                    ("KernelVersion".to_owned(), util::kernel_version()),
                ]
                .into_iter()
                .collect(),
            ),
        }]),
        version: Some(version),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(String::new()),
        go_version: Some(String::new()),
        os: Some("linux".into()),
        arch: Some(docker_arch().into()),
        kernel_version: Some(util::kernel_version()),
        experimental: Some(false),
        build_time: None,
    };
    json(StatusCode::OK, &body)
}

pub async fn info(State(agent): State<Arc<Agent>>) -> Response {
    let active = agent.active().await;
    let swarm = match &active {
        None => SwarmInfo {
            node_id: Some(String::new()),
            node_addr: Some(String::new()),
            local_node_state: Some(LocalNodeState::INACTIVE),
            control_available: Some(false),
            error: Some(String::new()),
            remote_managers: None,
            ..Default::default()
        },
        Some(a) => {
            let mut s = SwarmInfo {
                node_id: Some(a.local.node_id.clone()),
                node_addr: Some(a.local.addr_string()),
                local_node_state: Some(LocalNodeState::ACTIVE),
                control_available: Some(a.store.is_some()),
                error: Some(String::new()),
                remote_managers: Some(
                    a.managers
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .map(|m| PeerNode {
                            node_id: Some(m.node_id.clone()),
                            addr: Some(m.addr.clone()),
                        })
                        .collect(),
                ),
                ..Default::default()
            };
            if let Some(store) = &a.store {
                store.read(|st| fill_cluster(&mut s, st));
            }
            s
        }
    };
    let body = SystemInfo {
        id: Some(agent.engine_id()),
        containers: Some(0),
        containers_running: Some(0),
        containers_paused: Some(0),
        containers_stopped: Some(0),
        images: Some(0),
        docker_root_dir: Some(agent.cfg.data_dir.display().to_string()),
        debug: Some(false),
        kernel_version: Some(util::kernel_version()),
        operating_system: Some("swarmnet".into()),
        os_type: Some("linux".into()),
        architecture: Some(std::env::consts::ARCH.into()),
        ncpu: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as i64),
        mem_total: Some(util::mem_total_bytes()),
        name: Some(agent.cfg.hostname.clone()),
        labels: Some(Vec::new()),
        experimental_build: Some(false),
        server_version: Some(env!("CARGO_PKG_VERSION").into()),
        swarm: Some(swarm),
        live_restore_enabled: Some(false),
        system_time: Some(util::now_rfc3339()),
        ..Default::default()
    };
    json(StatusCode::OK, &body)
}

fn fill_cluster(s: &mut SwarmInfo, st: &StoreState) {
    s.nodes = Some(st.nodes.len() as i64);
    s.managers = Some(
        st.nodes
            .values()
            .filter(|n| n.manager_addr.is_some())
            .count() as i64,
    );
    // Managers other nodes can reach, as Docker lists them.
    s.remote_managers = Some(
        st.nodes
            .values()
            .filter(|n| n.manager_addr.is_some() && n.state == NodeState::Ready)
            .map(|n| PeerNode {
                node_id: Some(n.id.clone()),
                addr: n.manager_addr.clone(),
            })
            .collect(),
    );
    s.cluster = st.cluster.as_ref().map(super::swarm::cluster_info);
}
