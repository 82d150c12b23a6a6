//! `/swarm`, `/swarm/init`, `/swarm/join`, `/swarm/leave`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use bollard_stubs::models::{
    JoinTokens, ObjectVersion, Swarm, SwarmInitRequest, SwarmJoinRequest, TlsInfo,
};

use super::{ApiError, json, json_body, query_bool, require_manager};
use crate::agent::Agent;

pub async fn inspect(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let swarm = store.read(|s| {
        s.cluster.as_ref().map(|c| Swarm {
            id: Some(c.id.clone()),
            version: Some(ObjectVersion {
                index: Some(c.version),
            }),
            created_at: Some(c.created_at.clone()),
            updated_at: Some(c.updated_at.clone()),
            spec: Some(c.spec.clone()),
            tls_info: Some(TlsInfo {
                trust_root: Some(c.root_ca.cert_pem.clone()),
                ..Default::default()
            }),
            root_rotation_in_progress: Some(false),
            data_path_port: Some(c.data_path_port),
            default_addr_pool: Some(c.default_addr_pool.clone()),
            subnet_size: Some(c.subnet_size),
            join_tokens: Some(JoinTokens {
                worker: Some(c.worker_token.clone()),
                manager: Some(c.manager_token.clone()),
            }),
        })
    });
    let swarm = swarm.ok_or_else(|| ApiError::Unavailable(super::error::NOT_IN_SWARM.into()))?;
    Ok(json(StatusCode::OK, &swarm))
}

pub async fn init(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, ApiError> {
    let req: SwarmInitRequest = json_body(&body)?;
    let node_id = agent.init(req).await?;
    Ok(json(StatusCode::OK, &node_id))
}

pub async fn join(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, ApiError> {
    let req: SwarmJoinRequest = json_body(&body)?;
    agent.join(req).await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

pub async fn leave(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    agent.leave(query_bool(q.get("force"))).await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}
