//! `/containers`: create, list (with Docker's filters), inspect, start,
//! stop, restart, kill, pause, wait, attach, resize, logs, remove. Every
//! node serves them for its own containers, in a swarm or not.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bollard_stubs::models::{
    ContainerConfig, ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse,
    ContainerState, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryHostConfig,
    ContainerSummaryNetworkSettings, ContainerSummaryStateEnum, ContainerWaitExitError,
    ContainerWaitResponse, DriverData, EndpointSettings, NetworkSettings,
};
use chrono::{DateTime, Utc};

use super::{ApiError, filters::Filters, hijack, json, json_body, query_bool};
use crate::{
    agent::Agent,
    runtime::{
        AttachOpts, Runtime, RuntimeError, WaitCondition,
        container::{ContainerRecord, NetMode, Status, ZERO_TIME},
        logs::{self, LogFilter, LogReader},
    },
};

const PS_FILTERS: &[&str] = &[
    "ancestor", "before", "exited", "id", "label", "name", "network", "since", "status",
];

/// Answers a lifecycle call: 204, or Docker's 304 when nothing changed.
fn done(r: Result<(), RuntimeError>) -> Result<Response, ApiError> {
    match r {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(RuntimeError::NotModified) => Ok(StatusCode::NOT_MODIFIED.into_response()),
        Err(e) => Err(e.into()),
    }
}

fn query_i64(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid value for {key}: {v}"))),
    }
}

pub async fn create(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ContainerCreateBody = json_body(&body)?;
    if body
        .networking_config
        .as_ref()
        .is_some_and(|n| n.endpoints_config.as_ref().is_some_and(|e| e.len() > 1))
    {
        return Err(ApiError::BadRequest(
            "Container cannot be connected to network endpoints: only one network at create".into(),
        ));
    }
    let host_config = body.host_config.clone().unwrap_or_default();
    let config = ContainerConfig {
        hostname: body.hostname,
        domainname: body.domainname,
        user: body.user,
        attach_stdin: body.attach_stdin,
        attach_stdout: body.attach_stdout,
        attach_stderr: body.attach_stderr,
        exposed_ports: body.exposed_ports,
        tty: body.tty,
        open_stdin: body.open_stdin,
        stdin_once: body.stdin_once,
        env: body.env,
        cmd: body.cmd,
        healthcheck: body.healthcheck,
        args_escaped: body.args_escaped,
        image: body.image,
        volumes: body.volumes,
        working_dir: body.working_dir,
        entrypoint: body.entrypoint,
        network_disabled: body.network_disabled,
        on_build: body.on_build,
        labels: body.labels,
        stop_signal: body.stop_signal,
        stop_timeout: body.stop_timeout,
        shell: body.shell,
    };
    let (id, warnings) = agent
        .runtime
        .create(q.get("name").map(String::as_str), config, host_config)
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &ContainerCreateResponse { id, warnings },
    ))
}

/// Docker's `Up 5 seconds`, `Exited (3) 2 minutes ago`, `Created`.
pub fn status_text(r: &ContainerRecord, now: DateTime<Utc>) -> String {
    let since = |t: &str| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| (now - t.with_timezone(&Utc)).to_std().unwrap_or_default())
            .unwrap_or_default()
    };
    match r.state.status {
        Status::Created => "Created".to_owned(),
        Status::Running => format!("Up {}", human_duration(since(&r.state.started_at))),
        Status::Paused => format!("Up {} (Paused)", human_duration(since(&r.state.started_at))),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            r.state.exit_code,
            human_duration(since(&r.state.finished_at))
        ),
        Status::Removing => "Removal In Progress".to_owned(),
        Status::Dead => "Dead".to_owned(),
        Status::Exited => {
            if r.state.finished_at == ZERO_TIME {
                format!("Exited ({})", r.state.exit_code)
            } else {
                format!(
                    "Exited ({}) {} ago",
                    r.state.exit_code,
                    human_duration(since(&r.state.finished_at))
                )
            }
        }
    }
}

/// go-units' HumanDuration, which `docker ps` uses.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_owned(),
        s if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

fn unix(t: &str) -> i64 {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

fn endpoints(rt: &Runtime, r: &ContainerRecord) -> HashMap<String, EndpointSettings> {
    let mut out = HashMap::new();
    for n in &r.networks {
        let mut ep = EndpointSettings {
            network_id: Some(n.id.clone()),
            ..Default::default()
        };
        if let Some(o) = r.overlays.iter().find(|o| o.network_id == n.id) {
            ep.endpoint_id = Some(o.endpoint_id.clone());
            ep.ip_address = Some(o.ip.to_string());
            ep.ip_prefix_len = Some(i64::from(o.prefix_len));
            ep.mac_address = Some(o.mac.clone());
            ep.gateway = Some(String::new());
        } else {
            ep.ip_address = Some(String::new());
            ep.ip_prefix_len = Some(0);
            ep.mac_address = Some(String::new());
            ep.gateway = Some(String::new());
        }
        out.insert(n.name.clone(), ep);
    }
    if r.net_mode == NetMode::Overlay {
        return out;
    }
    let mut ep = EndpointSettings {
        network_id: Some(r.net_mode.as_str().to_owned()),
        ..Default::default()
    };
    if let Some(e) = &r.endpoint {
        ep.endpoint_id = Some(e.endpoint_id.clone());
        ep.gateway = Some(e.gateway.to_string());
        ep.ip_address = Some(e.ip.to_string());
        ep.ip_prefix_len = Some(i64::from(e.prefix_len));
        ep.mac_address = Some(e.mac.clone());
    } else {
        ep.gateway = Some(String::new());
        ep.ip_address = Some(String::new());
        ep.ip_prefix_len = Some(0);
        ep.mac_address = Some(String::new());
    }
    let _ = rt;
    out.insert(r.net_mode.as_str().to_owned(), ep);
    out
}

fn summary(rt: &Runtime, r: &ContainerRecord, now: DateTime<Utc>) -> ContainerSummary {
    let mut command = r.path.clone();
    for a in &r.args {
        command.push(' ');
        command.push_str(a);
    }
    ContainerSummary {
        id: Some(r.id.clone()),
        names: Some(vec![format!("/{}", r.name)]),
        image: Some(r.image.clone()),
        image_id: Some(r.image_id.clone()),
        command: Some(command),
        created: Some(unix(&r.created)),
        ports: Some(Vec::new()),
        labels: Some(r.config.labels.clone().unwrap_or_default()),
        state: Some(match r.state.status {
            Status::Created => ContainerSummaryStateEnum::CREATED,
            Status::Running => ContainerSummaryStateEnum::RUNNING,
            Status::Paused => ContainerSummaryStateEnum::PAUSED,
            Status::Restarting => ContainerSummaryStateEnum::RESTARTING,
            Status::Removing => ContainerSummaryStateEnum::REMOVING,
            Status::Exited => ContainerSummaryStateEnum::EXITED,
            Status::Dead => ContainerSummaryStateEnum::DEAD,
        }),
        status: Some(status_text(r, now)),
        host_config: Some(ContainerSummaryHostConfig {
            network_mode: r.host_config.network_mode.clone(),
            annotations: None,
        }),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(endpoints(rt, r)),
        }),
        mounts: Some(Vec::new()),
        ..Default::default()
    }
}

fn name_matches(name: &str, pattern: &str) -> bool {
    let full = format!("/{name}");
    match (pattern.strip_prefix('^'), pattern.strip_suffix('$')) {
        _ if pattern.starts_with('^') && pattern.ends_with('$') && pattern.len() >= 2 => {
            let p = &pattern[1..pattern.len() - 1];
            full == p || name == p
        }
        (Some(p), _) => full.starts_with(p) || name.starts_with(p),
        (_, Some(p)) => full.ends_with(p),
        _ => full.contains(pattern),
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

pub async fn list(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let f = Filters::parse(q.get("filters").map(String::as_str), PS_FILTERS)?;
    for s in f.get("status").unwrap_or_default() {
        if !matches!(
            s.as_str(),
            "created" | "restarting" | "running" | "removing" | "paused" | "exited" | "dead"
        ) {
            return Err(ApiError::BadRequest(format!("invalid filter 'status={s}'")));
        }
    }
    let mut exited = Vec::new();
    for e in f.get("exited").unwrap_or_default() {
        exited.push(
            e.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid filter 'exited={e}'")))?,
        );
    }
    let all = query_bool(q.get("all")) || f.get("status").is_some() || !exited.is_empty();
    let limit = query_i64(&q, "limit")?.filter(|l| *l > 0);
    let rt = &agent.runtime;
    let mut recs: Vec<ContainerRecord> = rt.list().iter().map(|c| c.record()).collect();
    // Newest first, as docker ps shows them.
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    let created_of = |key: &str| -> Result<String, ApiError> { Ok(rt.get(key)?.record().created) };
    let before = match f.get("before").and_then(|v| v.first()) {
        Some(k) => Some(created_of(k)?),
        None => None,
    };
    let since = match f.get("since").and_then(|v| v.first()) {
        Some(k) => Some(created_of(k)?),
        None => None,
    };
    let images = &agent.images;
    let now = Utc::now();
    let mut out = Vec::new();
    for r in recs {
        let status = r.state.status.as_str();
        let keep = (all || r.state.status.is_running())
            && f.any("id", |v| r.id.starts_with(v))
            && f.any("name", |v| name_matches(&r.name, v))
            && f.any("label", |v| label_matches(r.config.labels.as_ref(), v))
            && f.any("status", |v| v == status)
            && (exited.is_empty()
                || (r.state.status == Status::Exited && exited.contains(&r.state.exit_code)))
            && f.any("network", |v| {
                v == r.net_mode.as_str()
                    || r.networks
                        .iter()
                        .any(|n| n.name == v || n.id.starts_with(v))
            })
            && f.any("ancestor", |v| {
                v == r.image || images.resolve(v).is_ok_and(|img| img.id == r.image_id)
            })
            && before.as_ref().is_none_or(|b| r.created < *b)
            && since.as_ref().is_none_or(|s| r.created > *s);
        if keep {
            out.push(summary(rt, &r, now));
        }
        if limit.is_some_and(|l| out.len() as i64 >= l) {
            break;
        }
    }
    Ok(json(StatusCode::OK, &out))
}

pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = &agent.runtime;
    let c = rt.get(&id)?;
    let r = c.record();
    let dir = rt.log_path(&r.id);
    let dir = dir.parent().map(|p| p.to_owned()).unwrap_or_default();
    let st = &r.state;
    let netns = rt.shim_paths(&r.id);
    let sandbox_key = if r.net_mode != NetMode::Host && st.status.is_running() {
        netns_of(&netns)
    } else {
        String::new()
    };
    let resp = ContainerInspectResponse {
        id: Some(r.id.clone()),
        created: Some(r.created.clone()),
        path: Some(r.path.clone()),
        args: Some(r.args.clone()),
        state: Some(ContainerState {
            status: Some(match st.status {
                Status::Created => ContainerStateStatusEnum::CREATED,
                Status::Running => ContainerStateStatusEnum::RUNNING,
                Status::Paused => ContainerStateStatusEnum::PAUSED,
                Status::Restarting => ContainerStateStatusEnum::RESTARTING,
                Status::Removing => ContainerStateStatusEnum::REMOVING,
                Status::Exited => ContainerStateStatusEnum::EXITED,
                Status::Dead => ContainerStateStatusEnum::DEAD,
            }),
            running: Some(st.status.is_running()),
            paused: Some(st.status == Status::Paused),
            restarting: Some(st.status == Status::Restarting),
            oom_killed: Some(false),
            dead: Some(st.status == Status::Dead),
            pid: Some(st.pid),
            exit_code: Some(st.exit_code),
            error: Some(st.error.clone()),
            started_at: Some(st.started_at.clone()),
            finished_at: Some(st.finished_at.clone()),
            health: None,
        }),
        image: Some(r.image_id.clone()),
        resolv_conf_path: Some(dir.join("resolv.conf").display().to_string()),
        hostname_path: Some(dir.join("hostname").display().to_string()),
        hosts_path: Some(dir.join("hosts").display().to_string()),
        log_path: Some(rt.log_path(&r.id).display().to_string()),
        name: Some(format!("/{}", r.name)),
        restart_count: Some(r.restart_count),
        driver: Some("overlay2".to_owned()),
        platform: Some("linux".to_owned()),
        mount_label: Some(String::new()),
        process_label: Some(String::new()),
        app_armor_profile: Some(String::new()),
        exec_ids: Some(rt.execs.of_container(&r.id)).filter(|v| !v.is_empty()),
        host_config: Some(r.host_config.clone()),
        graph_driver: Some(DriverData {
            name: "overlay2".to_owned(),
            data: [
                (
                    "LowerDir".to_owned(),
                    r.layers
                        .iter()
                        .rev()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                ),
                (
                    "MergedDir".to_owned(),
                    dir.join("rootfs").display().to_string(),
                ),
                (
                    "UpperDir".to_owned(),
                    dir.join("diff").display().to_string(),
                ),
                ("WorkDir".to_owned(), dir.join("work").display().to_string()),
            ]
            .into(),
        }),
        mounts: Some(Vec::new()),
        config: Some(r.config.clone()),
        network_settings: Some(NetworkSettings {
            sandbox_id: Some(String::new()),
            sandbox_key: Some(sandbox_key),
            ports: Some(HashMap::new()),
            networks: Some(endpoints(rt, &r)),
        }),
        ..Default::default()
    };
    // API 1.47 still has the pre-networks fields at the top of
    // NetworkSettings (`{{.NetworkSettings.IPAddress}}`); the models of
    // newer APIs dropped them, so they are added here.
    let mut v =
        serde_json::to_value(&resp).map_err(|e| ApiError::internal("encode container", &e))?;
    if let Some(ns) = v.get_mut("NetworkSettings").and_then(|n| n.as_object_mut()) {
        let ep = r.endpoint.as_ref();
        let s = |x: Option<String>| serde_json::Value::String(x.unwrap_or_default());
        ns.insert("Bridge".into(), s(None));
        ns.insert("IPAddress".into(), s(ep.map(|e| e.ip.to_string())));
        ns.insert(
            "IPPrefixLen".into(),
            serde_json::Value::from(ep.map_or(0, |e| e.prefix_len)),
        );
        ns.insert("Gateway".into(), s(ep.map(|e| e.gateway.to_string())));
        ns.insert("MacAddress".into(), s(ep.map(|e| e.mac.clone())));
        ns.insert("EndpointID".into(), s(ep.map(|e| e.endpoint_id.clone())));
        ns.insert("HairpinMode".into(), serde_json::Value::Bool(false));
        ns.insert("LinkLocalIPv6Address".into(), s(None));
        ns.insert("LinkLocalIPv6PrefixLen".into(), serde_json::Value::from(0));
        ns.insert("GlobalIPv6Address".into(), s(None));
        ns.insert("GlobalIPv6PrefixLen".into(), serde_json::Value::from(0));
        ns.insert("IPv6Gateway".into(), s(None));
    }
    Ok(json(StatusCode::OK, &v))
}

fn netns_of(paths: &crate::runtime::shim::ShimPaths) -> String {
    // <exec-root>/c/<id12> -> <exec-root>/netns/<id12>
    let dir = paths.dir();
    match (dir.parent().and_then(|p| p.parent()), dir.file_name()) {
        (Some(root), Some(short)) => root.join("netns").join(short).display().to_string(),
        _ => String::new(),
    }
}

pub async fn start(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    done(agent.runtime.start(&id).await)
}

pub async fn stop(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = query_i64(&q, "t")?;
    done(
        agent
            .runtime
            .stop(&id, t, q.get("signal").map(String::as_str))
            .await,
    )
}

pub async fn restart(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = query_i64(&q, "t")?;
    done(agent.runtime.restart(&id, t).await)
}

pub async fn kill(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    done(
        agent
            .runtime
            .kill(&id, q.get("signal").map(String::as_str))
            .await,
    )
}

pub async fn pause(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    done(agent.runtime.pause(&id, true).await)
}

pub async fn unpause(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    done(agent.runtime.pause(&id, false).await)
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if query_bool(q.get("link")) {
        return Err(ApiError::BadRequest(
            "links are not supported by swarmnet".into(),
        ));
    }
    done(agent.runtime.remove(&id, query_bool(q.get("force"))).await)
}

/// The answer's headers go out at once (the CLI starts the container once
/// it has them); the body when the condition holds.
pub async fn wait(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let cond = WaitCondition::parse(q.get("condition").map(String::as_str))?;
    let c = agent.runtime.get(&id)?;
    let waiter = agent.runtime.wait_begin(c, cond);
    let body = futures_util::stream::once(async move {
        let (code, err) = waiter.wait().await;
        let resp = ContainerWaitResponse {
            status_code: code,
            error: err.map(|m| ContainerWaitExitError { message: Some(m) }),
        };
        let mut bytes = serde_json::to_vec(&resp).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(bytes))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

pub async fn attach(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let b = |k: &str| query_bool(q.get(k));
    let opts = AttachOpts {
        stdin: b("stdin"),
        stdout: b("stdout"),
        stderr: b("stderr"),
        logs: b("logs"),
        stream: b("stream"),
    };
    let plan = agent.runtime.attach_plan(&id, opts)?;
    let tty = plan.tty;
    let rt = agent.runtime.clone();
    Ok(hijack::upgrade(req, tty, move |io| async move {
        rt.attach(plan, io).await;
    }))
}

fn dims(q: &HashMap<String, String>) -> Result<(u16, u16), ApiError> {
    let get = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| ApiError::BadRequest(format!("invalid resize parameter {k}")))
    };
    Ok((get("h")?, get("w")?))
}

pub async fn resize(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (h, w) = dims(&q)?;
    agent.runtime.resize(&id, h, w).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /containers/{id}/logs`: the json-file log, framed unless the
/// container has a TTY; with `follow`, new lines until it stops.
pub async fn logs(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rt = agent.runtime.clone();
    let c = rt.get(&id)?;
    let rec = c.record();
    let filter = LogFilter {
        stdout: query_bool(q.get("stdout")),
        stderr: query_bool(q.get("stderr")),
        since: q.get("since").and_then(|s| logs::parse_time(s)),
        until: q.get("until").and_then(|s| logs::parse_time(s)),
    };
    if !filter.stdout && !filter.stderr {
        return Err(ApiError::BadRequest(
            "Bad parameters: you must choose at least one stream".into(),
        ));
    }
    let follow = query_bool(q.get("follow"));
    let timestamps = query_bool(q.get("timestamps"));
    let tail: Option<usize> = match q.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(
            n.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid value for tail: {n}")))?,
        ),
    };
    let tty = rec.config.tty.unwrap_or(false);
    let path = rt.log_path(&rec.id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let frame = |stream: u8, data: Vec<u8>| {
            let mut v = Vec::with_capacity(data.len() + 8);
            if !tty {
                v.extend_from_slice(&crate::runtime::frames::header(stream, data.len()));
            }
            v.extend_from_slice(&data);
            Bytes::from(v)
        };
        let mut reader = LogReader::open(&path).ok();
        if let Some(r) = reader.as_mut() {
            let entries: Vec<_> = r
                .read_new()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| filter.wants(e))
                .collect();
            let skip = tail.map_or(0, |t| entries.len().saturating_sub(t));
            for e in entries.into_iter().skip(skip) {
                if tx
                    .send(Ok(frame(e.stream, logs::render(&e, timestamps))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        loop {
            let running = c.status().is_running() || c.status() == Status::Created;
            if reader.is_none() {
                reader = LogReader::open(&path).ok();
            }
            if let Some(r) = reader.as_mut() {
                for e in r.read_new().unwrap_or_default() {
                    if filter.wants(&e)
                        && tx
                            .send(Ok(frame(e.stream, logs::render(&e, timestamps))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
            if !running {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = tx.closed() => return,
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let ct = if tty {
        hijack::RAW_STREAM
    } else {
        hijack::MULTIPLEXED_STREAM
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, ct)],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_durations() {
        let s = |n| human_duration(Duration::from_secs(n));
        assert_eq!(s(0), "Less than a second");
        assert_eq!(s(1), "1 second");
        assert_eq!(s(42), "42 seconds");
        assert_eq!(s(61), "About a minute");
        assert_eq!(s(600), "10 minutes");
        assert_eq!(s(3600), "About an hour");
        assert_eq!(s(5 * 3600), "5 hours");
        assert_eq!(s(3 * 86400), "3 days");
    }

    #[test]
    fn name_patterns() {
        assert!(name_matches("web1", "web"));
        assert!(name_matches("web1", "^web1$"));
        assert!(name_matches("web1", "^/web"));
        assert!(!name_matches("web1", "^web$"));
        assert!(name_matches("aweb", "web$"));
    }
}
