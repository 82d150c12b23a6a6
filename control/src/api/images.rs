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

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        agent::AgentConfig,
        images::testutil::{TestImage, docker_archive},
    };

    async fn agent(dir: &std::path::Path) -> Arc<Agent> {
        let cfg = AgentConfig {
            data_dir: dir.to_path_buf(),
            hostname: "t1".into(),
            advertise_addr: None,
            listen_addr: None,
            gossip_port: 0,
            registry_mirrors: vec![],
            insecure_registries: vec![],
            runtime: crate::runtime::RuntimeConfig {
                data_dir: dir.join("containers"),
                exec_root: dir.join("run"),
                runtime: "runc".into(),
                cgroup_parent: "/swarmnet-unit".into(),
                bip: "198.18.1.1/24".into(),
                bridge_name: "docker0".into(),
                mtu: 1500,
                self_exe: std::env::current_exe().expect("test binary"),
            },
            underlay_iface: None,
        };
        Agent::start(cfg, crate::metrics::Metrics::new())
            .await
            .expect("agent")
    }

    async fn call(
        agent: &Arc<Agent>,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .expect("request");
        let resp = crate::api::router(agent.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn routes_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent(dir.path()).await;
        let img = TestImage::simple("sh", b"sh");
        let archive = docker_archive(&img, &["docker.io/library/busybox:latest"], true);
        let (s, body) = call(&agent, "POST", "/images/load?quiet=1", archive).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body, "{\"stream\":\"Loaded image: busybox:latest\\n\"}\r\n");

        let (s, _) = call(
            &agent,
            "POST",
            "/images/busybox/tag?repo=198.18.0.2:5000/library/busybox&tag=v2",
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, body) = call(
            &agent,
            "GET",
            "/images/198.18.0.2:5000/library/busybox:v2/json",
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("inspect JSON");
        assert_eq!(v["Id"], img.id());
        assert_eq!(v["RootFS"]["Type"], "layers");
        assert_eq!(v["Config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));

        let (s, body) = call(&agent, "GET", "/images/json", vec![]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("\"busybox:latest\""), "{body}");
        let (s, body) = call(
            &agent,
            "GET",
            "/images/json?filters=%7B%22x%22%3A%5B%22y%22%5D%7D",
            vec![],
        )
        .await;
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::BAD_REQUEST,
                "{\"message\":\"invalid filter 'x'\"}"
            )
        );
        let (s, body) = call(&agent, "GET", "/images/nosuch/json", vec![]).await;
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                "{\"message\":\"No such image: nosuch:latest\"}"
            )
        );
        let (s, body) = call(
            &agent,
            "POST",
            "/images/create?fromImage=NGINX&tag=latest",
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("repository name (library/NGINX) must be lowercase"),
            "{body}"
        );
        let (s, body) = call(&agent, "POST", "/images/load", b"garbage".repeat(100)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

        let (s, body) = call(
            &agent,
            "DELETE",
            "/images/198.18.0.2:5000/library/busybox:v2",
            vec![],
        )
        .await;
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::OK,
                "[{\"Untagged\":\"198.18.0.2:5000/library/busybox:v2\"}]"
            )
        );
        let (s, body) = call(&agent, "DELETE", "/images/busybox?force=0", vec![]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            body.contains(&format!("{{\"Deleted\":\"{}\"}}", img.id())),
            "{body}"
        );
        let (s, _) = call(&agent, "DELETE", "/images/busybox", vec![]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
