//! Errors as the Docker Engine API gives them: a status code and a JSON
//! body `{"message": ...}`, which the docker CLI prints as
//! `Error response from daemon: <message>`.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::{
    images::ImageError,
    runtime::RuntimeError,
    store::{CommandError, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Docker's answer to cluster requests on a node that is in no swarm.
pub const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
/// Docker's answer to cluster requests on a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
pub const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An internal failure: logged with its whole chain, answered briefly.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "{context}");
        ApiError::Internal(format!("{context}: {chain}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Command(c) => c.into(),
            StoreError::NoLeader => ApiError::Unavailable(crate::store::NO_LEADER.into()),
            other => ApiError::internal("store", &other),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let msg = e.to_string();
        match e {
            CommandError::NoSuchNode(_) => ApiError::NotFound(msg),
            CommandError::AlreadyInitialized => ApiError::Unavailable(ALREADY_IN_SWARM.into()),
            CommandError::NotInitialized => ApiError::Unavailable(NOT_IN_SWARM.into()),
            CommandError::NodeExists(_)
            | CommandError::NetworkExists(_)
            | CommandError::ServiceExists(_) => ApiError::Conflict(msg),
            CommandError::NoSuchNetwork(_) | CommandError::NoSuchService(_) => {
                ApiError::NotFound(msg)
            }
            CommandError::NetworkInUse(_) => ApiError::Forbidden(msg),
            // swarmkit answers this with gRPC Unknown, which dockerd turns into a 500.
            CommandError::OutOfSequence => ApiError::Internal(msg),
            CommandError::NodeNotDown(_)
            | CommandError::NodeIsManager(_)
            | CommandError::InvalidArgument(_) => ApiError::BadRequest(msg),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NoSuchImage(_) | ImageError::NotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            ImageError::InvalidReference(_)
            | ImageError::InvalidArgument(_)
            | ImageError::InvalidArchive(_) => ApiError::BadRequest(e.to_string()),
            ImageError::Conflict(_) => ApiError::Conflict(e.to_string()),
            ImageError::Registry { .. } | ImageError::Verification { .. } => {
                let msg = e.full_message();
                tracing::warn!(error = %msg, "image request failed");
                ApiError::Internal(msg)
            }
            other => ApiError::internal("image store", &other),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let msg = e.to_string();
        match e {
            RuntimeError::NoSuchContainer(_)
            | RuntimeError::NoSuchExec(_)
            | RuntimeError::NotFound(_) => ApiError::NotFound(msg),
            RuntimeError::Invalid(_) | RuntimeError::Oci(_) => ApiError::BadRequest(msg),
            RuntimeError::Conflict(_) => ApiError::Conflict(msg),
            RuntimeError::Forbidden(_) => ApiError::Forbidden(msg),
            RuntimeError::Image(i) => i.into(),
            RuntimeError::NotModified => ApiError::Internal("not modified".into()),
            e @ (RuntimeError::Io { .. } | RuntimeError::Net(_)) => {
                ApiError::internal("container runtime", &e)
            }
            RuntimeError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (
            status,
            Json(serde_json::json!({ "message": self.to_string() })),
        )
            .into_response()
    }
}
