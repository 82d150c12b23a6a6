//! `/swarm`, `/swarm/init`, `/swarm/join`, `/swarm/leave`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use bollard_stubs::models::{
    ClusterInfo, JoinTokens, ObjectVersion, Swarm, SwarmInitRequest, SwarmJoinRequest, SwarmSpec,
    TlsInfo,
};

use super::{ApiError, json, json_body, query_bool, require_manager};
use crate::{
    agent::Agent,
    store::{ClusterRecord, Command, state::Secret},
    token::JoinToken,
};

/// The swarm as `/info` shows it (no join tokens).
pub(super) fn cluster_info(c: &ClusterRecord) -> ClusterInfo {
    ClusterInfo {
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
    }
}

pub async fn inspect(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let swarm = store.read(|s| {
        s.cluster.as_ref().map(|c| {
            // Docker's Swarm is its ClusterInfo plus the join tokens.
            let ClusterInfo {
                id,
                version,
                created_at,
                updated_at,
                spec,
                tls_info,
                root_rotation_in_progress,
                data_path_port,
                default_addr_pool,
                subnet_size,
            } = cluster_info(c);
            Swarm {
                id,
                version,
                created_at,
                updated_at,
                spec,
                tls_info,
                root_rotation_in_progress,
                data_path_port,
                default_addr_pool,
                subnet_size,
                join_tokens: Some(JoinTokens {
                    worker: Some(c.worker_token.as_str().to_owned()),
                    manager: Some(c.manager_token.as_str().to_owned()),
                }),
            }
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

/// `POST /swarm/update?version=N[&rotateWorkerToken=true][&rotateManagerToken=true]`:
/// a new spec and, when asked, new join tokens. Nodes that joined with an
/// old token are unaffected; the old token is refused from then on.
pub async fn update(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw = q.get("version").map(String::as_str).unwrap_or_default();
    let version: u64 = raw
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid swarm version '{raw}'")))?;
    let spec: SwarmSpec = json_body(&body)?;
    if query_bool(q.get("rotateManagerUnlockKey")) {
        return Err(ApiError::BadRequest(
            "autolock is not supported by this swarmnet version: there is no unlock key to rotate"
                .into(),
        ));
    }
    let store = require_manager(&agent).await?;
    let ca_der = store
        .read(|s| s.cluster.as_ref().map(|c| c.root_ca.cert_der()))
        .ok_or_else(|| ApiError::Unavailable(super::error::NOT_IN_SWARM.into()))?
        .map_err(|e| ApiError::internal("CA certificate", &e))?;
    let rotate = |key: &str| {
        query_bool(q.get(key)).then(|| Secret::from(JoinToken::generate(ca_der.as_ref()).expose()))
    };
    store
        .write(Command::UpdateCluster {
            version,
            spec: Box::new(crate::agent::swarm_spec_with_defaults(spec)),
            worker_token: rotate("rotateWorkerToken"),
            manager_token: rotate("rotateManagerToken"),
        })
        .await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}
