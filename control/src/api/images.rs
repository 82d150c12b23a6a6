//! `/images`: pull (`create`), load, list, inspect, history, tag,
//! remove, backed by the node's [`ImageStore`](crate::images::ImageStore).
//! These work on every node, in a swarm or not.
//!
//! Names contain slashes (`198.18.0.2:5000/library/nginx`), so
//! `/images/{*rest}` is routed here whole and the verb suffix (`/json`,
//! `/history`, `/tag`) split off by hand.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use tracing::warn;

use super::{ApiError, filters::Filters, json, query_bool};
use crate::{
    agent::Agent,
    images::{ListOptions, Progress, stream_lines},
};

type Params = Query<HashMap<String, String>>;

const LIST_FILTERS: &[&str] = &["before", "dangling", "label", "reference", "since"];

/// A JSON-lines answer, as dockerd streams pulls and loads.
fn json_stream(body: Body) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /images/json`.
pub async fn list(State(agent): State<Arc<Agent>>, Query(q): Params) -> Result<Response, ApiError> {
    let f = Filters::parse(q.get("filters").map(String::as_str), LIST_FILTERS)?;
    let all = |k: &str| f.get(k).map(<[String]>::to_vec).unwrap_or_default();
    let first = |k: &str| f.get(k).and_then(|v| v.first().cloned());
    let opts = ListOptions {
        references: all("reference"),
        dangling: first("dangling"),
        labels: all("label"),
        before: first("before"),
        since: first("since"),
    };
    Ok(json(StatusCode::OK, &agent.images.list(&opts)?))
}

/// `POST /images/create?fromImage=NAME&tag=TAG`: `docker pull`. Errors
/// before the first progress line are HTTP errors; later ones end the
/// stream with Docker's `errorDetail` line.
pub async fn create(
    State(agent): State<Arc<Agent>>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let Some(from) = q.get("fromImage").filter(|s| !s.is_empty()) else {
        return Err(ApiError::BadRequest(
            "fromImage is required (importing with fromSrc is not supported)".into(),
        ));
    };
    let plan = agent
        .images
        .prepare_pull(from, q.get("tag").map(String::as_str))
        .await?;
    let (progress, mut rx) = Progress::channel(64);
    let store = agent.images.clone();
    tokio::spawn(async move {
        if let Err(e) = store.run_pull(plan, &progress).await {
            let msg = e.full_message();
            warn!(error = %msg, "pull failed");
            progress.error(&msg).await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|line| line.map(Ok::<_, Infallible>))
    });
    Ok(json_stream(Body::from_stream(stream)))
}

/// `POST /images/load`: `docker load`.
pub async fn load(
    State(agent): State<Arc<Agent>>,
    Query(_q): Params,
    body: Body,
) -> Result<Response, ApiError> {
    let lines = agent.images.load(body.into_data_stream()).await?;
    Ok(json_stream(Body::from(stream_lines(&lines))))
}

/// `GET /images/{name}/json` and `/images/{name}/history`.
pub async fn get(
    State(agent): State<Arc<Agent>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(name) = rest.strip_suffix("/json") {
        return Ok(json(StatusCode::OK, &agent.images.inspect(name)?));
    }
    if let Some(name) = rest.strip_suffix("/history") {
        return Ok(json(StatusCode::OK, &agent.images.history(name)?));
    }
    Err(ApiError::NotFound("page not found".into()))
}

/// `POST /images/{name}/tag?repo=REPO&tag=TAG`.
pub async fn post(
    State(agent): State<Arc<Agent>>,
    Path(rest): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let Some(name) = rest.strip_suffix("/tag") else {
        return Err(ApiError::NotFound("page not found".into()));
    };
    let repo = q.get("repo").map(String::as_str).unwrap_or_default();
    agent
        .images
        .tag(name, repo, q.get("tag").map(String::as_str))?;
    Ok(StatusCode::CREATED.into_response())
}

/// `DELETE /images/{name}?force=&noprune=` (no parents here, so
/// `noprune` changes nothing).
pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let force = query_bool(q.get("force"));
    let users = agent.image_users();
    let store = agent.images.clone();
    let items = tokio::task::spawn_blocking(move || store.remove(&name, force, &users))
        .await
        .map_err(|e| ApiError::Internal(format!("remove image: {e}")))??;
    Ok(json(StatusCode::OK, &items))
}
