//! Hijacked connections (`docker attach`, `docker exec`, `docker run`):
//! the client asks `Connection: Upgrade` + `Upgrade: tcp`; dockerd answers
//! `101 UPGRADED` and the connection becomes the container's stdio, raw
//! for a TTY, else in Docker's multiplexed framing.

use std::future::Future;

use axum::{
    body::Body,
    extract::Request,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::ApiError;
use crate::runtime::ClientIo;

pub const RAW_STREAM: &str = "application/vnd.docker.raw-stream";
pub const MULTIPLEXED_STREAM: &str = "application/vnd.docker.multiplexed-stream";

/// Whether the request asks for the connection to be hijacked.
pub fn wants_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// Answers 101 and runs `f` on the hijacked connection once hyper hands
/// it over.
pub fn upgrade<F, Fut>(mut req: Request, tty: bool, f: F) -> Response
where
    F: FnOnce(ClientIo) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !wants_upgrade(&req) {
        return ApiError::BadRequest(
            "this endpoint needs a hijacked connection: send Connection: Upgrade and Upgrade: tcp"
                .into(),
        )
        .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                f(ClientIo {
                    reader: Box::new(reader),
                    writer: Box::new(writer),
                })
                .await;
            }
            Err(e) => debug!(error = %e, "connection upgrade failed"),
        }
    });
    let ct = if tty { RAW_STREAM } else { MULTIPLEXED_STREAM };
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, "tcp"),
            (header::CONTENT_TYPE, ct),
        ],
        Body::empty(),
    )
        .into_response()
}
