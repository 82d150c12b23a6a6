//! The Docker Engine API, served on the agent's unix socket (and TCP when
//! asked). Paths may carry a `/v1.NN` prefix, 1.24 to 1.47, or none;
//! bodies are the models of `bollard-stubs`, so field names and shapes are
//! Docker's; errors are Docker's `{"message": ...}`.

mod containers;
pub mod error;
mod exec;
mod filters;
mod hijack;
mod images;
mod networks;
mod nodes;
mod services;
mod swarm;
mod system;

use std::{convert::Infallible, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::de::DeserializeOwned;
use tower::{Service, ServiceExt};

pub use self::error::ApiError;
use crate::{agent::Agent, store::Store};

pub const API_VERSION: &str = "1.47";
pub const MIN_API_VERSION: &str = "1.24";
const MAX_MINOR: u32 = 47;
const MIN_MINOR: u32 = 24;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/swarm", get(swarm::inspect))
        .route("/swarm/init", post(swarm::init))
        .route("/swarm/join", post(swarm::join))
        .route("/swarm/leave", post(swarm::leave))
        .route("/swarm/update", post(swarm::update))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{id}/update", post(nodes::update))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::create))
        .route("/images/load", post(images::load))
        .route(
            "/images/{*rest}",
            get(images::get).post(images::post).delete(images::remove),
        )
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .route("/services", get(services::list))
        .route("/services/create", post(services::create))
        .route(
            "/services/{id}",
            get(services::inspect).delete(services::remove),
        )
        .route("/services/{id}/update", post(services::update))
        .route("/tasks", get(services::tasks))
        .route("/tasks/{id}", get(services::task))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/{id}", delete(containers::remove))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/attach", post(containers::attach))
        .route("/containers/{id}/resize", post(containers::resize))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        .fallback(|| async { ApiError::NotFound("page not found".into()) })
        .with_state(agent)
}

/// Wraps the router: strips and checks the version prefix, counts
/// requests, and stamps the headers dockerd puts on every answer.
pub fn service(
    agent: Arc<Agent>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    let metrics = agent.metrics.clone();
    let router = router(agent);
    tower::service_fn(move |req: Request| {
        let router = router.clone();
        let metrics = metrics.clone();
        async move {
            let method = req.method().to_string();
            let resp = match strip_version(req) {
                Ok(req) => router.oneshot(req).await.unwrap_or_else(|e| match e {}),
                Err(e) => e.into_response(),
            };
            metrics.api_request(&method, resp.status().as_u16());
            let mut resp = resp;
            let h = resp.headers_mut();
            h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
            h.insert("Docker-Experimental", HeaderValue::from_static("false"));
            h.insert("Ostype", HeaderValue::from_static("linux"));
            h.insert(
                "Server",
                HeaderValue::from_static(concat!(
                    "swarmnet/",
                    env!("CARGO_PKG_VERSION"),
                    " (linux)"
                )),
            );
            Ok::<_, Infallible>(resp)
        }
    })
}

/// `/v1.45/nodes` -> `/nodes`, refusing versions Docker would refuse.
fn strip_version(mut req: Request) -> Result<Request, ApiError> {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(req);
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((major, minor)) = ver.split_once('.') else {
        return Ok(req);
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Ok(req);
    };
    if major > 1 || (major == 1 && minor > MAX_MINOR) {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if major < 1 || minor < MIN_MINOR {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    let new = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_owned(),
    };
    let uri: Uri = new
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid request path {new}")))?;
    *req.uri_mut() = uri;
    Ok(req)
}

/// Parses a JSON body as dockerd does: 400 with the parser's words.
pub(crate) fn json_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => ApiError::internal("encode response", &e).into_response(),
    }
}

/// The swarm state of a manager, or Docker's error for other nodes.
pub(crate) async fn require_manager(agent: &Agent) -> Result<Arc<Store>, ApiError> {
    match agent.active().await {
        None => Err(ApiError::Unavailable(error::NOT_IN_SWARM.into())),
        Some(a) => a
            .store
            .clone()
            .ok_or_else(|| ApiError::Unavailable(error::NOT_A_MANAGER.into())),
    }
}

/// The `?version=N` of an update (of a node, a service, ...).
pub(crate) fn query_version(
    q: &std::collections::HashMap<String, String>,
    object: &str,
) -> Result<u64, ApiError> {
    let raw = q.get("version").map(String::as_str).unwrap_or_default();
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid {object} version '{raw}'")))
}

/// Parses a boolean query parameter as dockerd does (`1`, `true`, ...).
pub(crate) fn query_bool(v: Option<&String>) -> bool {
    matches!(
        v.map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "t" | "yes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    }

    #[test]
    fn version_prefixes() {
        let r = strip_version(req("/v1.47/nodes?filters=x")).expect("1.47");
        assert_eq!(r.uri().to_string(), "/nodes?filters=x");
        let r = strip_version(req("/v1.24/_ping")).expect("1.24");
        assert_eq!(r.uri().path(), "/_ping");
        let r = strip_version(req("/nodes")).expect("none");
        assert_eq!(r.uri().path(), "/nodes");
        assert!(matches!(
            strip_version(req("/v1.48/nodes")),
            Err(ApiError::BadRequest(m)) if m.contains("too new")
        ));
        assert!(matches!(
            strip_version(req("/v1.12/nodes")),
            Err(ApiError::BadRequest(m)) if m.contains("too old")
        ));
    }
}
