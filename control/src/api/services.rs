//! `/services` and `/tasks`: services as the managers' Raft state keeps
//! them (create, list with Docker's filters and `status`, inspect, update
//! incl. `rollback=previous`, remove) and the tasks the orchestrator made
//! of them (list with the filters `docker service ps` sends, inspect).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use bollard_stubs::models::{
    ContainerStatus, EndpointSpec, EndpointSpecModeEnum, ObjectVersion, Service, ServiceEndpoint,
    ServiceEndpointVirtualIps, ServiceServiceStatus, ServiceSpec, ServiceUpdateStatus, Task,
    TaskState, TaskStatus,
};
use serde_json::json;

use super::{ApiError, filters::Filters, json, json_body, require_manager};
use crate::{
    agent::Agent,
    store::{
        Command, State as StoreState,
        services::{ServiceRecord, TaskRecord},
    },
};

const SERVICE_FILTERS: &[&str] = &["id", "label", "mode", "name"];
const TASK_FILTERS: &[&str] = &[
    "_up-to-date",
    "desired-state",
    "id",
    "label",
    "name",
    "node",
    "service",
];

fn is_global(spec: &ServiceSpec) -> bool {
    spec.mode.as_ref().is_some_and(|m| m.global.is_some())
}

fn lookup<'a>(s: &'a StoreState, key: &str) -> Result<&'a ServiceRecord, ApiError> {
    s.find_service(key)
        .ok_or_else(|| ApiError::NotFound(format!("service {key} not found")))
}

/// The spec as stored: networks named by ID, in the task template (where
/// the deprecated top-level `Networks` moves to).
fn resolve_spec(s: &StoreState, mut spec: ServiceSpec) -> Result<ServiceSpec, ApiError> {
    let mut template = spec.task_template.take().unwrap_or_default();
    let mut nets = template.networks.take().unwrap_or_default();
    nets.extend(spec.networks.take().unwrap_or_default());
    let mut resolved: Vec<bollard_stubs::models::NetworkAttachmentConfig> = Vec::new();
    for mut n in nets {
        let target = n.target.clone().unwrap_or_default();
        let net = s
            .find_network(&target)
            .ok_or_else(|| ApiError::NotFound(format!("network {target} not found")))?;
        if resolved
            .iter()
            .any(|r| r.target.as_deref() == Some(net.id.as_str()))
        {
            return Err(ApiError::BadRequest(format!(
                "service can't attach to network {target} more than once"
            )));
        }
        n.target = Some(net.id.clone());
        resolved.push(n);
    }
    if !resolved.is_empty() {
        template.networks = Some(resolved);
    }
    spec.task_template = Some(template);
    if let Some(ep) = &spec.endpoint_spec
        && ep.ports.as_ref().is_some_and(|p| !p.is_empty())
    {
        return Err(ApiError::BadRequest(
            "published ports need the routing mesh, which swarmnet does not have yet".into(),
        ));
    }
    Ok(spec)
}

fn to_docker(svc: &ServiceRecord, status: Option<&StoreState>) -> serde_json::Value {
    let mode = svc
        .spec
        .endpoint_spec
        .as_ref()
        .and_then(|e| e.mode)
        .filter(|m| *m != EndpointSpecModeEnum::EMPTY)
        .unwrap_or(EndpointSpecModeEnum::VIP);
    let service_status = status.map(|s| {
        let tasks: Vec<&TaskRecord> = s.tasks_of(&svc.id).collect();
        let running = tasks
            .iter()
            .filter(|t| t.status.state == TaskState::RUNNING && t.desired == TaskState::RUNNING)
            .count();
        let desired = if is_global(&svc.spec) {
            tasks
                .iter()
                .filter(|t| t.desired <= TaskState::RUNNING)
                .count() as u64
        } else {
            svc.spec
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .map_or(1, |r| u64::try_from(r).unwrap_or(0))
        };
        ServiceServiceStatus {
            running_tasks: Some(running as u64),
            desired_tasks: Some(desired),
            completed_tasks: None,
        }
    });
    let service = Service {
        id: Some(svc.id.clone()),
        version: Some(ObjectVersion {
            index: Some(svc.version),
        }),
        created_at: Some(svc.created_at.clone()),
        updated_at: Some(svc.updated_at.clone()),
        spec: Some(svc.spec.clone()),
        endpoint: Some(ServiceEndpoint {
            spec: Some(EndpointSpec {
                mode: Some(mode),
                ports: None,
            }),
            ports: None,
            virtual_ips: (!svc.vips.is_empty()).then(|| {
                svc.vips
                    .iter()
                    .map(|v| ServiceEndpointVirtualIps {
                        network_id: Some(v.network_id.clone()),
                        addr: Some(format!("{}/{}", v.addr, v.prefix)),
                    })
                    .collect()
            }),
        }),
        update_status: svc.update.as_ref().map(|u| ServiceUpdateStatus {
            state: u.state.parse().ok(),
            started_at: Some(u.started_at.clone()),
            completed_at: u.completed_at.clone(),
            message: Some(u.message.clone()),
        }),
        service_status,
        job_status: None,
    };
    let mut v = serde_json::to_value(&service).unwrap_or_default();
    if let (Some(prev), Some(obj)) = (&svc.previous_spec, v.as_object_mut()) {
        obj.insert(
            "PreviousSpec".into(),
            serde_json::to_value(prev).unwrap_or_default(),
        );
    }
    v
}

fn task_to_docker(t: &TaskRecord) -> Task {
    Task {
        id: Some(t.id.clone()),
        version: Some(ObjectVersion {
            index: Some(t.version),
        }),
        created_at: Some(t.created_at.clone()),
        updated_at: Some(t.updated_at.clone()),
        name: None,
        labels: Some(HashMap::new()),
        spec: Some(t.spec.clone()),
        service_id: Some(t.service_id.clone()),
        slot: (t.slot > 0).then(|| i64::try_from(t.slot).unwrap_or(i64::MAX)),
        node_id: (!t.node_id.is_empty()).then(|| t.node_id.clone()),
        assigned_generic_resources: None,
        status: Some(TaskStatus {
            timestamp: Some(t.status.timestamp.clone()),
            state: Some(t.status.state),
            message: Some(t.status.message.clone()),
            err: t.status.err.clone(),
            container_status: t.status.container_id.as_ref().map(|c| ContainerStatus {
                container_id: Some(c.clone()),
                pid: Some(t.status.pid),
                exit_code: t.status.exit_code,
            }),
            port_status: None,
        }),
        desired_state: Some(t.desired),
        job_iteration: None,
    }
}

fn label_matches(labels: Option<&HashMap<String, String>>, filter: &str) -> bool {
    let Some(labels) = labels else {
        return false;
    };
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

/// `POST /services/create`.
pub async fn create(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, ApiError> {
    let spec: ServiceSpec = json_body(&body)?;
    let store = require_manager(&agent).await?;
    let spec = store.read(|s| resolve_spec(s, spec))?;
    crate::store::services::validate_spec(&spec)?;
    let id = crate::token::random_id();
    store
        .write(Command::CreateService {
            id: id.clone(),
            spec: Box::new(spec),
        })
        .await?;
    Ok(json(StatusCode::CREATED, &json!({ "ID": id })))
}

/// `GET /services`.
pub async fn list(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), SERVICE_FILTERS)?;
    if let Some(modes) = filters.get("mode") {
        for m in modes {
            if m != "replicated" && m != "global" {
                return Err(ApiError::BadRequest(format!(
                    "Invalid filter: 'mode'='{m}'"
                )));
            }
        }
    }
    let status = super::query_bool(q.get("status"));
    let store = require_manager(&agent).await?;
    let services: Vec<serde_json::Value> = store.read(|s| {
        s.services
            .values()
            .filter(|svc| {
                let name = svc.spec.name.as_deref().unwrap_or_default();
                let mode = if is_global(&svc.spec) {
                    "global"
                } else {
                    "replicated"
                };
                filters.any("id", |v| svc.id.starts_with(v))
                    && filters.any("name", |v| name.starts_with(v))
                    && filters.any("mode", |v| v == mode)
                    && filters.any("label", |v| label_matches(svc.spec.labels.as_ref(), v))
            })
            .map(|svc| to_docker(svc, status.then_some(s)))
            .collect()
    });
    Ok(json(StatusCode::OK, &services))
}

/// `GET /services/{id}`.
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let svc = store.read(|s| lookup(s, &id).map(|svc| to_docker(svc, None)))?;
    Ok(json(StatusCode::OK, &svc))
}

/// `POST /services/{id}/update?version=N[&rollback=previous]`.
pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = super::query_version(&q, "service")?;
    let rollback = match q.get("rollback").map(String::as_str) {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unrecognized rollback option {other}"
            )));
        }
    };
    let spec: ServiceSpec = json_body(&body)?;
    let store = require_manager(&agent).await?;
    let (service_id, spec) = store.read(|s| {
        let svc = lookup(s, &id)?;
        let spec = if rollback {
            svc.spec.clone()
        } else {
            resolve_spec(s, spec)?
        };
        Ok::<_, ApiError>((svc.id.clone(), spec))
    })?;
    if !rollback {
        crate::store::services::validate_spec(&spec)?;
    }
    store
        .write(Command::UpdateService {
            id: service_id,
            version,
            spec: Box::new(spec),
            rollback,
        })
        .await?;
    Ok(json(StatusCode::OK, &json!({ "Warnings": [] })))
}

/// `DELETE /services/{id}`.
pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let service_id = store.read(|s| lookup(s, &id).map(|svc| svc.id.clone()))?;
    store
        .write(Command::RemoveService { id: service_id })
        .await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

/// `GET /tasks`.
pub async fn tasks(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), TASK_FILTERS)?;
    if let Some(states) = filters.get("desired-state") {
        for s in states {
            if !matches!(s.as_str(), "running" | "shutdown" | "accepted") {
                return Err(ApiError::BadRequest(format!(
                    "Invalid filter 'desired-state'='{s}'"
                )));
            }
        }
    }
    let store = require_manager(&agent).await?;
    let tasks: Vec<Task> = store.read(|s| {
        // `service` and `node` filters name objects by ID, name or prefix.
        let services: Option<Vec<String>> = filters.get("service").map(|vs| {
            vs.iter()
                .filter_map(|v| s.find_service(v).map(|svc| svc.id.clone()))
                .collect()
        });
        let nodes: Option<Vec<String>> = filters.get("node").map(|vs| {
            vs.iter()
                .filter_map(|v| super::nodes::lookup(s, v).ok().map(|n| n.id.clone()))
                .collect()
        });
        s.tasks
            .values()
            .filter(|t| {
                let svc = s.service(&t.service_id);
                let desired = match t.desired {
                    TaskState::RUNNING | TaskState::READY => "running",
                    TaskState::ACCEPTED => "accepted",
                    _ => "shutdown",
                };
                services
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&t.service_id))
                    && nodes.as_ref().is_none_or(|ids| ids.contains(&t.node_id))
                    && filters.any("id", |v| t.id.starts_with(v))
                    && filters.any("name", |v| t.name().starts_with(v))
                    && filters.any("desired-state", |v| v == desired)
                    && filters.any("label", |v| {
                        label_matches(svc.and_then(|svc| svc.spec.labels.as_ref()), v)
                    })
                    && filters.any("_up-to-date", |v| {
                        v != "true" || svc.is_some_and(|svc| svc.spec_version == t.spec_version)
                    })
            })
            .map(task_to_docker)
            .collect()
    });
    Ok(json(StatusCode::OK, &tasks))
}

/// `GET /tasks/{id}`.
pub async fn task(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = require_manager(&agent).await?;
    let task = store.read(|s| {
        let mut hits = s
            .tasks
            .values()
            .filter(|t| t.id == id || t.id.starts_with(&id));
        match (s.tasks.get(&id), hits.next(), hits.next()) {
            (Some(t), _, _) => Ok(task_to_docker(t)),
            (None, Some(t), None) if !id.is_empty() => Ok(task_to_docker(t)),
            _ => Err(ApiError::NotFound(format!("task {id} not found"))),
        }
    })?;
    Ok(json(StatusCode::OK, &task))
}
