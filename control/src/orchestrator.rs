//! The orchestrator: what tasks the services need, decided on the Raft
//! leader from the replicated state. [`plan`] is pure (the state, the time
//! and an ID source in; a [`Plan`] out); [`run`] applies it as one Raft
//! command whenever the state changes, and every second for the timers
//! (restart delays, update delays).
//!
//! What it keeps true, as swarmkit's orchestrators do:
//! - replicated services have one live task in each slot `1..=replicas`,
//!   global services one on each eligible node;
//! - a task that ended is replaced per the restart policy (condition,
//!   delay, max attempts), a task on a node that went down or drains is
//!   shut down and replaced elsewhere;
//! - new tasks go to the eligible node (ready, active, constraints met)
//!   that runs the fewest tasks of the service, then the fewest tasks;
//! - a changed task template replaces tasks `parallelism` at a time, with
//!   `delay` between batches, pausing or rolling back on a failed task;
//! - each slot keeps at most [`TASK_HISTORY`] tasks.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bollard_stubs::models::{
    NodeSpecAvailabilityEnum, NodeSpecRoleEnum, ServiceSpec,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::{
    Command, NodeRecord, NodeState, State, Store,
    services::{
        Plan, ServiceRecord, TASK_HISTORY, TaskRecord, TaskStatusRecord, group_tasks, terminal,
    },
};

/// swarmkit's default restart delay.
const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;

/// A placement constraint: `node.role==manager`, `node.labels.zone!=b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: String,
    equal: bool,
    value: String,
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!("constraint expected one operator from ==, !=: {s}"));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() || value.contains('=') || value.contains('!') {
            return Err(format!("invalid constraint value in {s}"));
        }
        let known = [
            "node.id",
            "node.hostname",
            "node.role",
            "node.platform.os",
            "node.platform.arch",
        ];
        let lower = key.to_ascii_lowercase();
        let label = ["node.labels.", "engine.labels."]
            .iter()
            .any(|p| lower.starts_with(p) && lower.len() > p.len());
        if !known.contains(&lower.as_str()) && !label {
            return Err(format!("constraint key {key:?} is not valid in {s}"));
        }
        Ok(Self {
            key: key.to_owned(),
            equal,
            value: value.to_owned(),
        })
    }

    pub fn matches(&self, n: &NodeRecord) -> bool {
        let lower = self.key.to_ascii_lowercase();
        let have: Option<String> = match lower.as_str() {
            "node.id" => Some(n.id.clone()),
            "node.hostname" => Some(n.description.hostname.clone()),
            "node.role" => Some(
                match n.spec.role {
                    Some(NodeSpecRoleEnum::MANAGER) => "manager",
                    _ => "worker",
                }
                .to_owned(),
            ),
            "node.platform.os" => Some(n.description.os.clone()),
            "node.platform.arch" => Some(n.description.architecture.clone()),
            _ => match lower.strip_prefix("node.labels.") {
                Some(_) => {
                    let label = &self.key["node.labels.".len()..];
                    n.spec.labels.as_ref().and_then(|l| l.get(label).cloned())
                }
                // This engine has no engine labels.
                None => None,
            },
        };
        let same = have.is_some_and(|h| h.eq_ignore_ascii_case(&self.value));
        same == self.equal
    }
}

fn constraints(spec: &ServiceSpec) -> Vec<Constraint> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| Constraint::parse(c).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_global(spec: &ServiceSpec) -> bool {
    spec.mode.as_ref().is_some_and(|m| m.global.is_some())
}

fn replicas(spec: &ServiceSpec) -> u64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .map_or(1, |r| u64::try_from(r).unwrap_or(0))
}

struct Restart {
    condition: TaskSpecRestartPolicyConditionEnum,
    delay_ms: u64,
    max_attempts: u64,
}

fn restart_policy(spec: &ServiceSpec) -> Restart {
    let p = spec
        .task_template
        .as_ref()
        .and_then(|t| t.restart_policy.as_ref());
    Restart {
        condition: p
            .and_then(|p| p.condition)
            .filter(|c| *c != TaskSpecRestartPolicyConditionEnum::EMPTY)
            .unwrap_or(TaskSpecRestartPolicyConditionEnum::ANY),
        delay_ms: p
            .and_then(|p| p.delay)
            .map_or(DEFAULT_RESTART_DELAY_MS, ns_to_ms),
        max_attempts: p
            .and_then(|p| p.max_attempts)
            .map_or(0, |m| u64::try_from(m).unwrap_or(0)),
    }
}

struct UpdatePolicy {
    parallelism: usize,
    delay_ms: u64,
    rollback_on_failure: bool,
    continue_on_failure: bool,
    /// Old task stops before its replacement starts (Docker's default).
    stop_first: bool,
}

/// Nanoseconds (the API's durations) as milliseconds; negative as 0.
fn ns_to_ms(ns: i64) -> u64 {
    u64::try_from(ns / 1_000_000).unwrap_or(0)
}

/// A batch size as the API gives it (0: all at once); 1 by default.
fn batch_size(p: Option<i64>) -> usize {
    p.map_or(1, |p| usize::try_from(p).unwrap_or(1))
}

fn update_policy(spec: &ServiceSpec, rollback: bool) -> UpdatePolicy {
    if rollback {
        let r = spec.rollback_config.as_ref();
        UpdatePolicy {
            parallelism: batch_size(r.and_then(|r| r.parallelism)),
            delay_ms: r.and_then(|r| r.delay).map_or(0, ns_to_ms),
            rollback_on_failure: false,
            continue_on_failure: r.and_then(|r| r.failure_action)
                == Some(ServiceSpecRollbackConfigFailureActionEnum::CONTINUE),
            stop_first: r.and_then(|r| r.order)
                != Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
        }
    } else {
        let u = spec.update_config.as_ref();
        let action = u.and_then(|u| u.failure_action);
        UpdatePolicy {
            parallelism: batch_size(u.and_then(|u| u.parallelism)),
            delay_ms: u.and_then(|u| u.delay).map_or(0, ns_to_ms),
            rollback_on_failure: action == Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            continue_on_failure: action == Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
            stop_first: u.and_then(|u| u.order)
                != Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        }
    }
}

/// Why a node takes no new task of a service, if it does not.
fn unsuitable(n: &NodeRecord, cons: &[Constraint]) -> Option<&'static str> {
    if n.state != NodeState::Ready
        || n.spec
            .availability
            .unwrap_or(NodeSpecAvailabilityEnum::ACTIVE)
            != NodeSpecAvailabilityEnum::ACTIVE
    {
        return Some("not available for new tasks");
    }
    if !cons.iter().all(|c| c.matches(n)) {
        return Some("scheduling constraints not satisfied");
    }
    None
}

/// Docker's words for a task no node can take.
fn no_suitable_node(nodes: &BTreeMap<String, NodeRecord>, cons: &[Constraint]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes.values() {
        if let Some(why) = unsuitable(n, cons) {
            *counts.entry(why).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .rev()
        .map(|(why, k)| {
            let nodes = if *k == 1 { "node" } else { "nodes" };
            if why.starts_with("not") {
                format!("{k} {nodes} {why}")
            } else {
                format!("{why} on {k} {nodes}")
            }
        })
        .collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// Whether the task's node can still run it.
fn node_holds(t: &TaskRecord, nodes: &BTreeMap<String, NodeRecord>) -> bool {
    nodes.get(&t.node_id).is_some_and(|n| {
        n.state != NodeState::Down && n.spec.availability != Some(NodeSpecAvailabilityEnum::DRAIN)
    })
}

/// A task that holds its slot: meant to run and not ended.
fn alive(t: &TaskRecord, nodes: &BTreeMap<String, NodeRecord>) -> bool {
    t.desired <= TaskState::RUNNING
        && !terminal(t.status.state)
        && (t.node_id.is_empty() || node_holds(t, nodes))
}

/// The state as the round sees it, with what it already planned.
struct Round<'a> {
    state: &'a State,
    now_ms: u64,
    plan: Plan,
    /// Live tasks per node (all services), counting planned ones.
    load: BTreeMap<String, usize>,
    new_id: &'a mut dyn FnMut() -> String,
}

impl Round<'_> {
    fn shutdown(&mut self, t: &TaskRecord) {
        self.plan.desire.push((t.id.clone(), TaskState::SHUTDOWN));
        if let Some(l) = self.load.get_mut(&t.node_id) {
            *l = l.saturating_sub(1);
        }
    }

    /// The node a new task of `svc` goes to, or why none.
    fn pick_node(
        &self,
        svc: &ServiceRecord,
        service_load: &BTreeMap<String, usize>,
    ) -> Result<String, String> {
        let cons = constraints(&svc.spec);
        self.state
            .nodes
            .values()
            .filter(|n| unsuitable(n, &cons).is_none())
            .min_by_key(|n| {
                (
                    service_load.get(&n.id).copied().unwrap_or(0),
                    self.load.get(&n.id).copied().unwrap_or(0),
                    n.id.clone(),
                )
            })
            .map(|n| n.id.clone())
            .ok_or_else(|| no_suitable_node(&self.state.nodes, &cons))
    }

    fn new_task(
        &mut self,
        svc: &ServiceRecord,
        slot: u64,
        node: Result<String, String>,
        delay_ms: u64,
        waits_for: Option<String>,
    ) -> String {
        let id = (self.new_id)();
        let (node_id, state, message, err) = match node {
            Ok(n) => (
                n,
                TaskState::ASSIGNED,
                "scheduler assigned task to node".to_owned(),
                None,
            ),
            Err(why) => (
                String::new(),
                TaskState::PENDING,
                "pending task scheduling".to_owned(),
                Some(why),
            ),
        };
        if !node_id.is_empty() {
            *self.load.entry(node_id.clone()).or_default() += 1;
        }
        self.plan.create.push(TaskRecord {
            id: id.clone(),
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone().unwrap_or_default(),
            slot,
            node_id,
            version: 0,
            created_at: String::new(),
            updated_at: String::new(),
            spec: svc.spec.task_template.clone().unwrap_or_default(),
            spec_version: svc.spec_version,
            desired: if delay_ms > 0 || waits_for.is_some() {
                TaskState::READY
            } else {
                TaskState::RUNNING
            },
            not_before_ms: self.now_ms + delay_ms,
            waits_for,
            status: TaskStatusRecord {
                state,
                message,
                err,
                timestamp: String::new(),
                container_id: None,
                pid: 0,
                exit_code: None,
            },
        });
        id
    }
}

/// Whether an ended task is replaced, per the restart policy; and after
/// how long.
fn restart_after(policy: &Restart, ended: &TaskRecord, ended_in_slot: usize) -> Option<u64> {
    let exit_ok = ended.status.state == TaskState::COMPLETE;
    let restart = match policy.condition {
        TaskSpecRestartPolicyConditionEnum::NONE => false,
        TaskSpecRestartPolicyConditionEnum::ON_FAILURE => !exit_ok,
        _ => true,
    };
    if !restart || (policy.max_attempts > 0 && ended_in_slot as u64 > policy.max_attempts) {
        return None;
    }
    Some(policy.delay_ms)
}

/// One round of the orchestrator over the whole state.
pub fn plan(state: &State, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| alive(t, &state.nodes)) {
        *load.entry(t.node_id.clone()).or_default() += 1;
    }
    let mut round = Round {
        state,
        now_ms,
        plan: Plan::default(),
        load,
        new_id,
    };
    for svc in state.services.values() {
        plan_service(&mut round, svc);
    }
    // Tasks whose service is gone (a removal raced a round).
    for t in state.tasks.values() {
        if !state.services.contains_key(&t.service_id) {
            round.plan.delete.push(t.id.clone());
        }
    }
    round.plan
}

fn plan_service(round: &mut Round<'_>, svc: &ServiceRecord) {
    let state = round.state;
    let nodes = &state.nodes;
    let global = is_global(&svc.spec);
    let restart = restart_policy(&svc.spec);
    let cons = constraints(&svc.spec);
    let groups = group_tasks(state.tasks_of(&svc.id), global);
    let mut service_load: BTreeMap<String, usize> = BTreeMap::new();
    for t in state.tasks_of(&svc.id).filter(|t| alive(t, nodes)) {
        *service_load.entry(t.node_id.clone()).or_default() += 1;
    }
    // The groups the service wants: slots 1..=N, or eligible nodes.
    let wanted: Vec<String> = if global {
        nodes
            .values()
            .filter(|n| unsuitable(n, &cons).is_none())
            .map(|n| n.id.clone())
            .collect()
    } else {
        (1..=replicas(&svc.spec))
            .map(|s| format!("{s:012}"))
            .collect()
    };
    let mut keys: Vec<String> = groups.keys().cloned().collect();
    for w in &wanted {
        if !groups.contains_key(w) {
            keys.push(w.clone());
        }
    }
    let mut outdated: Vec<&TaskRecord> = Vec::new();
    let mut in_flight = 0usize;
    let mut failed_fresh: Option<&TaskRecord> = None;
    for key in keys {
        let tasks = groups.get(&key).cloned().unwrap_or_default();
        let want = wanted.contains(&key);
        let mut live: Vec<&TaskRecord> = Vec::new();
        for t in &tasks {
            if t.desired > TaskState::RUNNING {
                continue;
            }
            if alive(t, nodes) && want {
                live.push(t);
            } else {
                round.shutdown(t);
            }
        }
        // The newest live task keeps the slot.
        live.sort_by_key(|t| std::cmp::Reverse(t.version));
        for extra in live.iter().skip(1) {
            round.shutdown(extra);
        }
        let ended: Vec<&&TaskRecord> = tasks.iter().filter(|t| terminal(t.status.state)).collect();
        if want {
            match live.first() {
                Some(t) => {
                    let waited = t.waits_for.as_ref().is_none_or(|w| {
                        state
                            .tasks
                            .get(w)
                            .is_none_or(|old| terminal(old.status.state) || !node_holds(old, nodes))
                    });
                    if t.desired == TaskState::READY && round.now_ms >= t.not_before_ms && waited {
                        round.plan.desire.push((t.id.clone(), TaskState::RUNNING));
                    }
                    if t.node_id.is_empty() {
                        match round.pick_node(svc, &service_load) {
                            Ok(n) => {
                                *service_load.entry(n.clone()).or_default() += 1;
                                *round.load.entry(n.clone()).or_default() += 1;
                                round.plan.assign.push((t.id.clone(), n));
                            }
                            Err(why) => {
                                if t.status.err.as_deref() != Some(why.as_str()) {
                                    round.plan.pending.push((t.id.clone(), why));
                                }
                            }
                        }
                    }
                    if t.spec_version < svc.spec_version {
                        outdated.push(t);
                    } else if t.status.state < TaskState::RUNNING {
                        in_flight += 1;
                    }
                }
                None => {
                    let newest = tasks.iter().max_by_key(|t| t.version);
                    let delay = match newest {
                        // A task that ended on its own: the restart policy.
                        Some(last) if terminal(last.status.state) => {
                            if last.spec_version == svc.spec_version
                                && matches!(
                                    last.status.state,
                                    TaskState::FAILED | TaskState::REJECTED
                                )
                                && svc.update.as_ref().is_some_and(|u| u.active())
                            {
                                failed_fresh = Some(last);
                            }
                            restart_after(&restart, last, ended.len())
                        }
                        // Its node went away or drains, or a new slot.
                        Some(_) => Some(restart.delay_ms),
                        None => Some(0),
                    };
                    if let Some(delay) = delay {
                        let (slot, node) = if global {
                            (0, Ok(key.clone()))
                        } else {
                            let slot = key.parse().unwrap_or(0);
                            (slot, round.pick_node(svc, &service_load))
                        };
                        if let Ok(n) = &node {
                            *service_load.entry(n.clone()).or_default() += 1;
                        }
                        round.new_task(svc, slot, node, delay, None);
                        in_flight += 1;
                    }
                }
            }
        }
        // The history: at most TASK_HISTORY tasks per slot; none for
        // slots the service no longer has.
        let mut history: Vec<&&TaskRecord> = tasks
            .iter()
            .filter(|t| t.desired > TaskState::RUNNING || terminal(t.status.state))
            .filter(|t| terminal(t.status.state) || !node_holds(t, nodes))
            .collect();
        history.sort_by_key(|t| std::cmp::Reverse(t.version));
        let keep = if want {
            TASK_HISTORY.saturating_sub(1)
        } else {
            0
        };
        for t in history.iter().skip(keep) {
            round.plan.delete.push(t.id.clone());
        }
    }
    plan_update(round, svc, outdated, in_flight, failed_fresh, &service_load);
}

/// The next batch of a rolling update, and its progress.
fn plan_update(
    round: &mut Round<'_>,
    svc: &ServiceRecord,
    mut outdated: Vec<&TaskRecord>,
    in_flight: usize,
    failed: Option<&TaskRecord>,
    service_load: &BTreeMap<String, usize>,
) {
    let Some(progress) = &svc.update else {
        return;
    };
    let now = round.now_ms;
    let mut next = progress.clone();
    let rollback = progress.rollback();
    let policy = update_policy(&svc.spec, rollback);
    if progress.active() {
        if let Some(f) = failed.filter(|_| !policy.continue_on_failure) {
            let why = format!(
                "update paused due to failure or early termination of task {}",
                f.id
            );
            if policy.rollback_on_failure {
                round.plan.rollback.push(svc.id.clone());
            } else {
                next.state = if rollback {
                    "rollback_paused"
                } else {
                    "paused"
                }
                .into();
                next.message = why;
            }
        } else if outdated.is_empty() && in_flight == 0 {
            next.state = if rollback {
                "rollback_completed"
            } else {
                "completed"
            }
            .into();
            next.message = if rollback {
                "rollback completed".into()
            } else {
                "update completed".into()
            };
            next.completed_at = Some(String::new());
        } else if in_flight == 0 && !outdated.is_empty() {
            if next.batch_at_ms > 0 && next.batch_done_ms == 0 {
                next.batch_done_ms = now;
            }
            let due = next.batch_at_ms == 0 || now >= next.batch_done_ms + policy.delay_ms;
            if due {
                outdated.sort_by_key(|t| (t.slot, t.node_id.clone()));
                let n = if policy.parallelism == 0 {
                    outdated.len()
                } else {
                    policy.parallelism
                };
                for old in outdated.into_iter().take(n) {
                    round.shutdown(old);
                    // The replacement stays on the old task's node if it
                    // still may run there (a global task always does).
                    let stays =
                        old.slot == 0
                            || round.state.nodes.get(&old.node_id).is_some_and(|nd| {
                                unsuitable(nd, &constraints(&svc.spec)).is_none()
                            });
                    let node = if stays {
                        Ok(old.node_id.clone())
                    } else {
                        round.pick_node(svc, service_load)
                    };
                    let after = policy.stop_first.then(|| old.id.clone());
                    round.new_task(svc, old.slot, node, 0, after);
                }
                next.batch_at_ms = now;
                next.batch_done_ms = 0;
            }
        }
    }
    if next != *progress {
        round.plan.progress.push((svc.id.clone(), next));
    }
}

/// The leader's loop: a round on every change of the state and every
/// second, written as one command.
pub async fn run(store: Arc<Store>, cancel: CancellationToken) {
    let mut changes = store.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
        if !store.is_leader() {
            continue;
        }
        let now_ms = crate::util::unix_nanos() / 1_000_000;
        let plan = store.read(|s| plan(s, now_ms, &mut crate::token::random_id));
        if plan.is_empty() {
            continue;
        }
        debug!(
            create = plan.create.len(),
            desire = plan.desire.len(),
            delete = plan.delete.len(),
            "orchestrator round"
        );
        if let Err(error) = store
            .write(Command::Orchestrate {
                plan: Box::new(plan),
            })
            .await
        {
            warn!(%error, "orchestrator round");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard_stubs::models::{
        NodeSpecAvailabilityEnum, ServiceSpecMode, ServiceSpecModeReplicated,
        ServiceSpecUpdateConfig, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
        TaskSpecRestartPolicy,
    };

    use super::*;
    use crate::store::{
        services::TaskReport,
        state::tests::{initialised_with_pools, node},
    };

    /// A swarm of m1 (manager), w2, w3.
    fn swarm() -> State {
        let mut s = initialised_with_pools(&["198.19.0.0/16"], 24);
        for id in ["w2", "w3"] {
            s.apply(
                Command::AddNode {
                    node: Box::new(node(id, false)),
                },
                "t",
            )
            .expect("add node");
        }
        s
    }

    fn spec(name: &str, replicas: i64) -> ServiceSpec {
        ServiceSpec {
            name: Some(name.into()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some("nginx".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("task{n:04}")
        }
    }

    /// Runs orchestrator rounds until nothing changes; returns how many.
    fn settle(s: &mut State, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> usize {
        for round in 0..20 {
            let p = plan(s, now_ms, new_id);
            if p.is_empty() {
                return round;
            }
            s.apply(Command::Orchestrate { plan: Box::new(p) }, "t")
                .expect("orchestrate");
        }
        panic!("the orchestrator does not settle");
    }

    /// Every worker reports its tasks meant to run as the state it
    /// names, and those meant to stop as shut down.
    fn report_all(s: &mut State, state: TaskState) {
        let by_node: Vec<(String, Vec<(String, TaskState)>)> = s
            .nodes
            .keys()
            .map(|n| {
                let ts = s
                    .tasks
                    .values()
                    .filter(|t| &t.node_id == n)
                    .filter_map(|t| match t.desired {
                        TaskState::RUNNING => Some((t.id.clone(), state)),
                        TaskState::SHUTDOWN => Some((t.id.clone(), TaskState::SHUTDOWN)),
                        _ => None,
                    })
                    .collect();
                (n.clone(), ts)
            })
            .collect();
        for (node_id, tasks) in by_node {
            let reports = tasks
                .into_iter()
                .map(|(task_id, state)| TaskReport {
                    task_id,
                    state,
                    message: String::new(),
                    err: None,
                    container_id: None,
                    pid: 0,
                    exit_code: None,
                })
                .collect();
            s.apply(Command::ReportTasks { node_id, reports }, "t")
                .expect("report");
        }
    }

    fn running(s: &State) -> Vec<&TaskRecord> {
        s.tasks
            .values()
            .filter(|t| t.desired == TaskState::RUNNING && t.status.state == TaskState::RUNNING)
            .collect()
    }

    fn update(s: &mut State, spec: ServiceSpec, rollback: bool) {
        let version = s.services["s1"].version;
        s.apply(
            Command::UpdateService {
                id: "s1".into(),
                version,
                spec: Box::new(spec),
                rollback,
            },
            "t",
        )
        .expect("update service");
    }

    fn report_one(
        s: &mut State,
        node_id: &str,
        task_id: &str,
        state: TaskState,
        code: Option<i64>,
    ) {
        s.apply(
            Command::ReportTasks {
                node_id: node_id.into(),
                reports: vec![TaskReport {
                    task_id: task_id.into(),
                    state,
                    message: String::new(),
                    err: None,
                    container_id: None,
                    pid: 0,
                    exit_code: code,
                }],
            },
            "t",
        )
        .expect("report");
    }

    fn create(s: &mut State, id: &str, spec: ServiceSpec) {
        s.apply(
            Command::CreateService {
                id: id.into(),
                spec: Box::new(spec),
            },
            "t",
        )
        .expect("create service");
    }

    #[test]
    fn replicas_spread_over_nodes_and_follow_scaling() {
        let mut s = swarm();
        let mut id = ids();
        create(&mut s, "s1", spec("web", 3));
        settle(&mut s, 0, &mut id);
        let nodes: std::collections::BTreeSet<_> =
            s.tasks.values().map(|t| t.node_id.clone()).collect();
        assert_eq!(nodes.len(), 3, "one task per node: {:?}", s.tasks);
        let slots: Vec<u64> = s.tasks.values().map(|t| t.slot).collect();
        assert_eq!(slots.len(), 3);
        assert!(slots.iter().all(|s| (1..=3).contains(s)));
        report_all(&mut s, TaskState::RUNNING);
        assert_eq!(
            settle(&mut s, 0, &mut id),
            0,
            "a settled state plans nothing"
        );

        update(&mut s, spec("web", 6), false);
        settle(&mut s, 0, &mut id);
        report_all(&mut s, TaskState::RUNNING);
        assert_eq!(running(&s).len(), 6);
        for n in ["m1", "w2", "w3"] {
            assert_eq!(running(&s).iter().filter(|t| t.node_id == n).count(), 2);
        }
        // Scaling alone replaces no task.
        assert!(s.services["s1"].update.is_none());

        update(&mut s, spec("web", 2), false);
        settle(&mut s, 0, &mut id);
        let live: Vec<_> = s
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::RUNNING)
            .collect();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|t| t.slot <= 2));
        // Once the workers shut them down, the extra slots are forgotten.
        let shut: Vec<(String, String)> = s
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::SHUTDOWN)
            .map(|t| (t.node_id.clone(), t.id.clone()))
            .collect();
        for (node_id, task_id) in shut {
            report_one(&mut s, &node_id, &task_id, TaskState::SHUTDOWN, None);
        }
        settle(&mut s, 0, &mut id);
        assert_eq!(s.tasks.len(), 2, "{:?}", s.tasks);
    }

    #[test]
    fn a_down_node_loses_its_tasks_after_the_restart_delay() {
        let mut s = swarm();
        let mut id = ids();
        create(&mut s, "s1", spec("web", 3));
        settle(&mut s, 0, &mut id);
        report_all(&mut s, TaskState::RUNNING);
        s.apply(
            Command::SetNodeState {
                id: "w3".into(),
                state: NodeState::Down,
                message: "heartbeat failure".into(),
            },
            "t",
        )
        .expect("down");
        settle(&mut s, 1_000, &mut id);
        let replacement: Vec<_> = s
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::READY)
            .collect();
        assert_eq!(replacement.len(), 1, "a delayed replacement");
        assert_ne!(replacement[0].node_id, "w3");
        assert_eq!(
            replacement[0].not_before_ms,
            1_000 + DEFAULT_RESTART_DELAY_MS
        );
        settle(&mut s, 1_000 + DEFAULT_RESTART_DELAY_MS, &mut id);
        let live = s
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::RUNNING)
            .count();
        assert_eq!(live, 3);
        // The node comes back: still three.
        s.apply(
            Command::SetNodeState {
                id: "w3".into(),
                state: NodeState::Ready,
                message: String::new(),
            },
            "t",
        )
        .expect("up");
        settle(&mut s, 10_000, &mut id);
        let live = s
            .tasks
            .values()
            .filter(|t| t.desired == TaskState::RUNNING)
            .count();
        assert_eq!(live, 3);
    }

    #[test]
    fn restart_policy_decides_replacements() {
        for (condition, code, restarted) in [
            (TaskSpecRestartPolicyConditionEnum::ON_FAILURE, 1, true),
            (TaskSpecRestartPolicyConditionEnum::ON_FAILURE, 0, false),
            (TaskSpecRestartPolicyConditionEnum::NONE, 1, false),
            (TaskSpecRestartPolicyConditionEnum::ANY, 0, true),
        ] {
            let mut s = swarm();
            let mut id = ids();
            let mut sp = spec("job", 1);
            if let Some(t) = sp.task_template.as_mut() {
                t.restart_policy = Some(TaskSpecRestartPolicy {
                    condition: Some(condition),
                    delay: Some(0),
                    ..Default::default()
                });
            }
            create(&mut s, "s1", sp);
            settle(&mut s, 0, &mut id);
            let t = s.tasks.values().next().expect("a task").clone();
            let state = if code == 0 {
                TaskState::COMPLETE
            } else {
                TaskState::FAILED
            };
            report_one(&mut s, &t.node_id, &t.id, state, Some(code));
            settle(&mut s, 0, &mut id);
            assert_eq!(s.tasks.len() == 2, restarted, "{condition:?} exit {code}");
        }
    }

    fn constrained(name: &str, replicas: i64, constraint: &str) -> ServiceSpec {
        let mut sp = spec(name, replicas);
        if let Some(t) = sp.task_template.as_mut() {
            t.placement = Some(TaskSpecPlacement {
                constraints: Some(vec![constraint.into()]),
                ..Default::default()
            });
        }
        sp
    }

    #[test]
    fn constraints_place_or_leave_pending() {
        let mut s = swarm();
        let mut id = ids();
        create(&mut s, "s1", constrained("mgr", 2, "node.role==manager"));
        settle(&mut s, 0, &mut id);
        assert!(s.tasks.values().all(|t| t.node_id == "m1"));

        create(
            &mut s,
            "s2",
            constrained("nowhere", 1, "node.labels.zone==mars"),
        );
        settle(&mut s, 0, &mut id);
        let t = s.tasks_of("s2").next().expect("a pending task");
        assert_eq!(t.status.state, TaskState::PENDING);
        assert!(t.node_id.is_empty());
        assert_eq!(
            t.status.err.as_deref(),
            Some("no suitable node (scheduling constraints not satisfied on 3 nodes)")
        );
        assert!(Constraint::parse("node.role=manager").is_err());
        assert!(Constraint::parse("node.colour==red").is_err());
    }

    #[test]
    fn drain_moves_tasks_and_global_follows_nodes() {
        let mut s = swarm();
        let mut id = ids();
        let mut g = spec("agent", 1);
        g.mode = Some(ServiceSpecMode {
            global: Some(Default::default()),
            ..Default::default()
        });
        create(&mut s, "g1", g);
        settle(&mut s, 0, &mut id);
        assert_eq!(s.tasks.len(), 3);
        assert!(s.tasks.values().all(|t| t.slot == 0));
        s.apply(
            Command::AddNode {
                node: Box::new(node("w4", false)),
            },
            "t",
        )
        .expect("add");
        settle(&mut s, 0, &mut id);
        assert_eq!(s.tasks_of("g1").filter(|t| t.node_id == "w4").count(), 1);

        let w2 = s.nodes["w2"].clone();
        let mut ns = w2.spec.clone();
        ns.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
        s.apply(
            Command::UpdateNodeSpec {
                id: "w2".into(),
                version: w2.version,
                spec: ns,
            },
            "t",
        )
        .expect("drain");
        settle(&mut s, 0, &mut id);
        assert!(
            s.tasks_of("g1")
                .filter(|t| t.node_id == "w2")
                .all(|t| t.desired == TaskState::SHUTDOWN)
        );
    }

    #[test]
    fn rolling_update_goes_one_batch_at_a_time() {
        let mut s = swarm();
        let mut id = ids();
        let mut sp = spec("web", 3);
        sp.update_config = Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(2_000_000_000),
            ..Default::default()
        });
        create(&mut s, "s1", sp.clone());
        settle(&mut s, 0, &mut id);
        report_all(&mut s, TaskState::RUNNING);
        if let Some(cs) = sp
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
        {
            cs.env = Some(vec!["V=2".into()]);
        }
        update(&mut s, sp, false);
        let fresh = |s: &State| {
            s.tasks
                .values()
                .filter(|t| {
                    t.desired <= TaskState::RUNNING
                        && t.spec_version == s.services["s1"].spec_version
                })
                .count()
        };
        let fresh_running = |s: &State| {
            s.tasks
                .values()
                .filter(|t| {
                    t.status.state == TaskState::RUNNING
                        && t.desired == TaskState::RUNNING
                        && t.spec_version == s.services["s1"].spec_version
                })
                .count()
        };
        settle(&mut s, 10_000, &mut id);
        assert_eq!(fresh(&s), 1, "one at a time");
        assert_eq!(fresh_running(&s), 0, "stop-first: the new one waits");
        settle(&mut s, 11_000, &mut id);
        assert_eq!(fresh(&s), 1, "not before the batch ran");
        // The old task stops; then its replacement runs.
        report_all(&mut s, TaskState::RUNNING);
        settle(&mut s, 11_000, &mut id);
        report_all(&mut s, TaskState::RUNNING);
        settle(&mut s, 11_000, &mut id);
        assert_eq!(fresh_running(&s), 1);
        assert_eq!(fresh(&s), 1, "the delay counts from the batch being done");
        settle(&mut s, 13_100, &mut id);
        assert_eq!(fresh(&s), 2);
        for now in [13_200, 13_300, 15_400, 15_500, 15_600] {
            report_all(&mut s, TaskState::RUNNING);
            settle(&mut s, now, &mut id);
        }
        assert_eq!(fresh_running(&s), 3);
        assert_eq!(
            s.services["s1"].update.as_ref().map(|u| u.state.as_str()),
            Some("completed")
        );
        // And back.
        let cur = s.services["s1"].spec.clone();
        update(&mut s, cur, true);
        assert!(
            s.services["s1"]
                .spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .is_some_and(|c| c.env.is_none())
        );
    }
}
