//! The worker on every node of a swarm (managers too): runs the tasks the
//! orchestrator assigned to this node as containers of the node's engine,
//! and reports how they go. Twice a second, and on every change of a
//! manager's own store, it compares the assignments with the containers
//! labelled with a task ID, and acts:
//! - a task meant to run with no container: pull the image if missing,
//!   create (`<service>.<slot>.<task id>`, on the service's networks) and
//!   start it;
//! - a container that runs or ended: report `running`, `complete` or
//!   `failed` (with the exit code);
//! - a task to shut down: stop its container (its stop grace period);
//! - a container whose task is gone from the store: remove it.
//!
//! Reports only ever move a task's state forward, and are sent again until
//! the store shows them, so a lost report or a restarted agent heals.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard_stubs::models::{ContainerConfig, HostConfig, TaskState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    agent::Agent,
    mgmt::{Request, Response},
    runtime::{Container, container::Status},
    store::{
        Store,
        services::{
            NODE_ID_LABEL, SERVICE_ID_LABEL, SERVICE_NAME_LABEL, TASK_ID_LABEL, TASK_NAME_LABEL,
            TaskRecord, TaskReport, spec_networks, terminal,
        },
    },
};

const EVERY: Duration = Duration::from_millis(500);
/// Docker's default stop grace period for tasks.
const DEFAULT_STOP_GRACE_S: i64 = 10;

/// What the worker's own jobs (starts, stops) tell the loop.
#[derive(Default)]
struct Jobs {
    /// Tasks with a job under way.
    busy: HashSet<String>,
    /// Where a start got to, or how it failed.
    outcome: HashMap<String, Outcome>,
}

#[derive(Clone)]
struct Outcome {
    state: TaskState,
    message: String,
    err: Option<String>,
}

type Shared = Arc<Mutex<Jobs>>;

fn lock(j: &Shared) -> std::sync::MutexGuard<'_, Jobs> {
    j.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn run(
    agent: Arc<Agent>,
    node_id: String,
    store: Option<Arc<Store>>,
    cancel: CancellationToken,
) {
    let jobs: Shared = Arc::default();
    let mut tick = tokio::time::interval(EVERY);
    let mut changes = store.as_ref().map(|s| s.changes());
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(c) => {
                    if c.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = changed => {}
        }
        let tasks = match &store {
            Some(s) => s.read(|st| {
                st.tasks
                    .values()
                    .filter(|t| t.node_id == node_id)
                    .cloned()
                    .collect::<Vec<_>>()
            }),
            None => match fetch(&agent).await {
                Some(t) => t,
                None => continue,
            },
        };
        let reports = reconcile(&agent, &node_id, &tasks, &jobs);
        if !reports.is_empty() {
            send(&agent, store.as_deref(), &node_id, reports).await;
        }
    }
}

async fn fetch(agent: &Agent) -> Option<Vec<TaskRecord>> {
    let active = agent.active().await?;
    match agent.ask_managers(&active, &Request::Assignments).await {
        Ok(Response::Assignments { tasks, .. }) => Some(tasks),
        Ok(_) => None,
        Err(error) => {
            warn!(%error, "fetch task assignments");
            None
        }
    }
}

async fn send(agent: &Agent, store: Option<&Store>, node_id: &str, reports: Vec<TaskReport>) {
    let r = match store {
        Some(s) => s
            .write(crate::store::Command::ReportTasks {
                node_id: node_id.to_owned(),
                reports,
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => match agent.active().await {
            Some(active) => agent
                .ask_managers(&active, &Request::ReportTasks { reports })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Ok(()),
        },
    };
    if let Err(error) = r {
        warn!(%error, "report task status");
    }
}

fn report(
    t: &TaskRecord,
    state: TaskState,
    message: &str,
    err: Option<String>,
) -> Option<TaskReport> {
    (state > t.status.state).then(|| TaskReport {
        task_id: t.id.clone(),
        state,
        message: message.to_owned(),
        err,
        container_id: None,
        pid: 0,
        exit_code: None,
    })
}

/// One pass: starts, stops and removes what differs, and the reports of
/// what was seen.
fn reconcile(
    agent: &Arc<Agent>,
    node_id: &str,
    tasks: &[TaskRecord],
    jobs: &Shared,
) -> Vec<TaskReport> {
    let mut containers: BTreeMap<String, Arc<Container>> = BTreeMap::new();
    for c in agent.runtime.list() {
        if let Some(t) = crate::runtime::task_of(&c.record().config) {
            containers.insert(t, c);
        }
    }
    let ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    lock(jobs).outcome.retain(|id, _| ids.contains(id.as_str()));
    let mut reports = Vec::new();
    for t in tasks {
        let busy = lock(jobs).busy.contains(&t.id);
        let c = containers.get(&t.id);
        if t.desired > TaskState::RUNNING {
            let runs = c.is_some_and(|c| {
                matches!(
                    c.status(),
                    Status::Running | Status::Paused | Status::Restarting
                )
            });
            match c {
                _ if busy => {}
                Some(c) if runs => spawn_stop(agent, t, c.id.clone(), jobs),
                _ if !terminal(t.status.state) => {
                    reports.extend(report(t, TaskState::SHUTDOWN, "shutdown", None));
                }
                _ => {}
            }
            continue;
        }
        if t.desired < TaskState::RUNNING {
            continue;
        }
        let outcome = lock(jobs).outcome.get(&t.id).cloned();
        match c {
            Some(c) => {
                let rec = c.record();
                let mut r = match rec.state.status {
                    Status::Running | Status::Paused | Status::Restarting => {
                        report(t, TaskState::RUNNING, "started", None)
                    }
                    Status::Exited | Status::Dead
                        if !busy
                            && rec.state.started_at != crate::runtime::container::ZERO_TIME =>
                    {
                        let code = rec.state.exit_code;
                        if code == 0 {
                            report(t, TaskState::COMPLETE, "finished", None)
                        } else {
                            report(
                                t,
                                TaskState::FAILED,
                                "started",
                                Some(format!("task: non-zero exit ({code})")),
                            )
                        }
                        .map(|mut r| {
                            r.exit_code = Some(code);
                            r
                        })
                    }
                    _ => outcome.and_then(|o| report(t, o.state, &o.message, o.err)),
                };
                if let Some(r) = r.as_mut() {
                    r.container_id = Some(rec.id.clone());
                    r.pid = rec.state.pid;
                }
                reports.extend(r);
            }
            None => {
                if let Some(o) = outcome {
                    reports.extend(report(t, o.state, &o.message, o.err));
                } else if busy {
                } else if t.status.state < TaskState::PREPARING {
                    spawn_start(agent, node_id, t, jobs);
                } else if !terminal(t.status.state) && t.status.state >= TaskState::STARTING {
                    // Its container went away (removed by hand).
                    reports.extend(report(
                        t,
                        TaskState::FAILED,
                        "container removed",
                        Some("task: the container was removed".into()),
                    ));
                } else if !terminal(t.status.state) {
                    // Restarted agent: a start that was under way is lost.
                    spawn_start(agent, node_id, t, jobs);
                }
            }
        }
    }
    // Containers of tasks the swarm no longer has.
    for (task, c) in containers {
        if !ids.contains(task.as_str()) && !lock(jobs).busy.contains(&task) {
            spawn_remove(agent, task, c.id.clone(), jobs);
        }
    }
    reports
}

fn set_outcome(jobs: &Shared, task: &str, state: TaskState, message: &str, err: Option<String>) {
    lock(jobs).outcome.insert(
        task.to_owned(),
        Outcome {
            state,
            message: message.to_owned(),
            err,
        },
    );
}

fn spawn_start(agent: &Arc<Agent>, node_id: &str, t: &TaskRecord, jobs: &Shared) {
    lock(jobs).busy.insert(t.id.clone());
    let (agent, node_id, t, jobs) = (agent.clone(), node_id.to_owned(), t.clone(), jobs.clone());
    tokio::spawn(async move {
        set_outcome(&jobs, &t.id, TaskState::PREPARING, "preparing", None);
        match start_task(&agent, &node_id, &t, &jobs).await {
            Ok(id) => info!(task = %t.id, name = %t.name(), container = %&id[..12], "task started"),
            Err((state, err)) => {
                warn!(task = %t.id, name = %t.name(), error = %err, "task did not start");
                set_outcome(&jobs, &t.id, state, "starting", Some(err));
            }
        }
        lock(&jobs).busy.remove(&t.id);
    });
}

/// The container a task runs in, as dockerd's executor makes it.
fn container_config(t: &TaskRecord, node_id: &str) -> (ContainerConfig, HostConfig, Vec<String>) {
    let cs = t.spec.container_spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = cs.labels.clone().unwrap_or_default();
    labels.insert(TASK_ID_LABEL.into(), t.id.clone());
    labels.insert(TASK_NAME_LABEL.into(), t.container_name());
    labels.insert(SERVICE_ID_LABEL.into(), t.service_id.clone());
    labels.insert(SERVICE_NAME_LABEL.into(), t.service_name.clone());
    labels.insert(NODE_ID_LABEL.into(), node_id.to_owned());
    labels.insert("com.docker.swarm.task".into(), String::new());
    let spec = bollard_stubs::models::ServiceSpec {
        task_template: Some(t.spec.clone()),
        ..Default::default()
    };
    let networks = spec_networks(&spec);
    let config = ContainerConfig {
        image: cs.image.clone(),
        entrypoint: cs.command.clone(),
        cmd: cs.args.clone(),
        env: cs.env.clone(),
        hostname: cs.hostname.clone().filter(|h| !h.is_empty()),
        working_dir: cs.dir.clone(),
        user: cs.user.clone(),
        tty: cs.tty,
        open_stdin: cs.open_stdin,
        labels: Some(labels),
        ..Default::default()
    };
    let host = HostConfig {
        network_mode: networks.first().cloned(),
        ..Default::default()
    };
    (config, host, networks)
}

async fn start_task(
    agent: &Arc<Agent>,
    node_id: &str,
    t: &TaskRecord,
    jobs: &Shared,
) -> Result<String, (TaskState, String)> {
    let (config, host, networks) = container_config(t, node_id);
    let image = config.image.clone().unwrap_or_default();
    if agent.images.resolve(&image).is_err() {
        let plan = agent
            .images
            .prepare_pull(&image, None)
            .await
            .map_err(|e| (TaskState::REJECTED, e.full_message()))?;
        let (progress, mut rx) = crate::images::Progress::channel(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let r = agent.images.run_pull(plan, &progress).await;
        drop(progress);
        let _ = drain.await;
        r.map_err(|e| (TaskState::REJECTED, e.full_message()))?;
    }
    set_outcome(jobs, &t.id, TaskState::STARTING, "starting", None);
    let (id, _) = agent
        .runtime
        .create(Some(&t.container_name()), config, host)
        .await
        .map_err(|e| (TaskState::REJECTED, e.to_string()))?;
    for net in networks.iter().skip(1) {
        if let Err(e) = agent.runtime.connect(&id, net).await {
            let _ = agent.runtime.remove(&id, true).await;
            return Err((TaskState::REJECTED, e.to_string()));
        }
    }
    if let Err(e) = agent.runtime.start(&id).await {
        let _ = agent.runtime.remove(&id, true).await;
        return Err((TaskState::FAILED, e.to_string()));
    }
    Ok(id)
}

fn spawn_stop(agent: &Arc<Agent>, t: &TaskRecord, container: String, jobs: &Shared) {
    lock(jobs).busy.insert(t.id.clone());
    let grace = t
        .spec
        .container_spec
        .as_ref()
        .and_then(|c| c.stop_grace_period)
        .map_or(DEFAULT_STOP_GRACE_S, |ns| ns / 1_000_000_000);
    let signal = t
        .spec
        .container_spec
        .as_ref()
        .and_then(|c| c.stop_signal.clone());
    let (agent, task, jobs) = (agent.clone(), t.id.clone(), jobs.clone());
    tokio::spawn(async move {
        if let Err(error) = agent
            .runtime
            .stop(&container, Some(grace), signal.as_deref())
            .await
        {
            warn!(%task, %error, "stop task");
        }
        lock(&jobs).busy.remove(&task);
    });
}

fn spawn_remove(agent: &Arc<Agent>, task: String, container: String, jobs: &Shared) {
    lock(jobs).busy.insert(task.clone());
    let (agent, jobs) = (agent.clone(), jobs.clone());
    tokio::spawn(async move {
        match agent.runtime.remove(&container, true).await {
            Ok(()) => info!(%task, "task container removed"),
            Err(error) => warn!(%task, %error, "remove task container"),
        }
        lock(&jobs).busy.remove(&task);
    });
}
