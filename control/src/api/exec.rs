//! `docker exec`: `POST /containers/{id}/exec`, `POST /exec/{id}/start`
//! (hijacked unless detached), `POST /exec/{id}/resize`, `GET
//! /exec/{id}/json`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bollard_stubs::models::{ExecConfig, ExecInspectResponse, ExecStartConfig, ProcessConfig};
use http_body_util::BodyExt;

use super::{ApiError, hijack, json, json_body};
use crate::agent::Agent;

pub async fn create(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config: ExecConfig = json_body(&body)?;
    let id = agent.runtime.exec_create(&id, config)?;
    // bollard-stubs' IdResponse serialises as `id`; dockerd writes `Id`.
    Ok(json(StatusCode::CREATED, &serde_json::json!({ "Id": id })))
}

pub async fn start(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("read body: {e}")))?
        .to_bytes();
    let start: ExecStartConfig = json_body(&bytes)?;
    let req = Request::from_parts(parts, axum::body::Body::empty());
    let exec = agent.runtime.exec_begin(&id)?;
    let tty = start.tty.or(exec.config.tty).unwrap_or(false);
    let rt = agent.runtime.clone();
    if start.detach.unwrap_or(false) {
        tokio::spawn(async move { rt.exec_run(exec, tty, None).await });
        return Ok(json(StatusCode::OK, &serde_json::Value::Null));
    }
    Ok(hijack::upgrade(req, tty, move |io| async move {
        rt.exec_run(exec, tty, Some(io)).await;
    }))
}

pub async fn resize(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let get = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| ApiError::BadRequest(format!("invalid resize parameter {k}")))
    };
    agent.runtime.exec_resize(&id, get("h")?, get("w")?)?;
    Ok(StatusCode::OK.into_response())
}

pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let e = agent.runtime.exec_get(&id)?;
    let st = e.state();
    let c = &e.config;
    let mut cmd = c.cmd.clone().unwrap_or_default();
    let entrypoint = if cmd.is_empty() {
        String::new()
    } else {
        cmd.remove(0)
    };
    Ok(json(
        StatusCode::OK,
        &ExecInspectResponse {
            can_remove: Some(false),
            detach_keys: Some(c.detach_keys.clone().unwrap_or_default()),
            id: Some(e.id.clone()),
            running: Some(st.running),
            exit_code: st.exit_code,
            process_config: Some(ProcessConfig {
                privileged: Some(false),
                user: Some(c.user.clone().unwrap_or_default()),
                tty: Some(c.tty.unwrap_or(false)),
                entrypoint: Some(entrypoint),
                arguments: Some(cmd),
            }),
            open_stdin: Some(c.attach_stdin.unwrap_or(false)),
            open_stderr: Some(c.attach_stderr.unwrap_or(false)),
            open_stdout: Some(c.attach_stdout.unwrap_or(false)),
            container_id: Some(e.container_id.clone()),
            pid: Some(st.pid),
        },
    ))
}
