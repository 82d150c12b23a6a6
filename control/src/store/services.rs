//! Services and their tasks in the replicated state. A service is what the
//! user declared (`docker service create`); its tasks are what the
//! orchestrator on the Raft leader made of it: one per replica slot (or per
//! node, for global services), each assigned to a node whose worker runs
//! it and reports how it goes. Pure, as the rest of the state machine.

use std::{collections::BTreeMap, net::Ipv4Addr};

use bollard_stubs::models::{ServiceSpec, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};

use super::{
    networks::Holder,
    state::{CommandError, State, Touched},
};

/// The label dockerd puts on a task's container, and swarmkit on tasks.
pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";
pub const TASK_NAME_LABEL: &str = "com.docker.swarm.task.name";
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";
pub const NODE_ID_LABEL: &str = "com.docker.swarm.node.id";

/// Terminal task states that a task history keeps (swarmkit's default
/// `TaskHistoryRetentionLimit`).
pub const TASK_HISTORY: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    /// As the API took it, with networks named by ID.
    pub spec: ServiceSpec,
    pub previous_spec: Option<ServiceSpec>,
    /// The store index at which `spec` last changed; tasks made from it
    /// carry it, so the orchestrator tells outdated tasks apart.
    pub spec_version: u64,
    /// The service's virtual IP on each of its networks.
    pub vips: Vec<Vip>,
    /// Docker's `UpdateStatus`, once the service was updated.
    pub update: Option<UpdateProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub network_id: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// How a rolling update (or rollback) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// `updating`, `paused`, `completed`, `rollback_started`,
    /// `rollback_paused`, `rollback_completed`.
    pub state: String,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub message: String,
    /// When the last batch of replacements was started (ms since the epoch,
    /// the leader's clock).
    pub batch_at_ms: u64,
    /// When the last batch was seen done (0 while one runs).
    pub batch_done_ms: u64,
}

impl UpdateProgress {
    pub fn rollback(&self) -> bool {
        self.state.starts_with("rollback")
    }

    pub fn active(&self) -> bool {
        self.state == "updating" || self.state == "rollback_started"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// The replica slot (1..); 0 for a global service's task.
    pub slot: u64,
    /// The node that runs it; empty while no node is suitable.
    pub node_id: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: TaskSpec,
    pub spec_version: u64,
    pub desired: TaskState,
    /// While `desired` is `ready`: when the orchestrator lets it run (its
    /// restart delay), ms since the epoch.
    pub not_before_ms: u64,
    /// While `desired` is `ready`: the task it replaces, which must stop
    /// first (an update's `stop-first` order).
    #[serde(default)]
    pub waits_for: Option<String>,
    pub status: TaskStatusRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusRecord {
    pub state: TaskState,
    pub message: String,
    pub err: Option<String>,
    pub timestamp: String,
    pub container_id: Option<String>,
    pub pid: i64,
    pub exit_code: Option<i64>,
}

impl TaskRecord {
    /// Docker's task name: `<service>.<slot>` or `<service>.<node id>`.
    pub fn name(&self) -> String {
        if self.slot == 0 {
            format!("{}.{}", self.service_name, self.node_id)
        } else {
            format!("{}.{}", self.service_name, self.slot)
        }
    }

    /// The name of its container: the task name and the task ID.
    pub fn container_name(&self) -> String {
        format!("{}.{}", self.name(), self.id)
    }
}

/// Whether a task state is final: the task will not run (again).
pub fn terminal(s: TaskState) -> bool {
    s > TaskState::RUNNING
}

/// A worker's word on one of its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub state: TaskState,
    pub message: String,
    pub err: Option<String>,
    pub container_id: Option<String>,
    pub pid: i64,
    pub exit_code: Option<i64>,
}

/// What one round of the orchestrator decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub create: Vec<TaskRecord>,
    /// Tasks to move to a new desired state (only ever forward).
    pub desire: Vec<(String, TaskState)>,
    /// Unassigned tasks that now get a node.
    pub assign: Vec<(String, String)>,
    /// Unassigned tasks that still find no node, and why.
    pub pending: Vec<(String, String)>,
    /// Tasks dropped from the history.
    pub delete: Vec<String>,
    pub progress: Vec<(String, UpdateProgress)>,
    /// Services whose update failed and rolls back (`--update-failure-action rollback`).
    pub rollback: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

fn invalid(msg: impl Into<String>) -> CommandError {
    CommandError::InvalidArgument(msg.into())
}

/// Checks a spec as swarmkit's controlapi does (the words are Docker's).
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), CommandError> {
    let name = spec.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("name must be valid as a DNS name component"));
    }
    let valid = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return Err(invalid(format!(
            "name must be valid as a DNS name component: {name}"
        )));
    }
    let Some(cs) = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
    else {
        return Err(invalid("ContainerSpec: missing in service spec"));
    };
    if cs.image.as_deref().unwrap_or_default().is_empty() {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    }
    if let Some(mode) = &spec.mode {
        if mode.replicated_job.is_some() || mode.global_job.is_some() {
            return Err(invalid("job-mode services are not supported by swarmnet"));
        }
        if let Some(r) = mode.replicated.as_ref().and_then(|r| r.replicas)
            && r < 0
        {
            return Err(invalid(format!(
                "invalid replicas value {r}: it must not be negative"
            )));
        }
    }
    let placement = spec
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref());
    for c in placement
        .and_then(|p| p.constraints.as_deref())
        .unwrap_or_default()
    {
        crate::orchestrator::Constraint::parse(c).map_err(invalid)?;
    }
    if let Some(u) = &spec.update_config
        && (u.parallelism.unwrap_or(0) < 0 || u.delay.unwrap_or(0) < 0)
    {
        return Err(invalid(
            "UpdateConfig: parallelism and delay must not be negative",
        ));
    }
    Ok(())
}

/// The networks a spec attaches its tasks to (IDs, after the API resolved
/// names), in order, without repeats.
pub fn spec_networks(spec: &ServiceSpec) -> Vec<String> {
    let from_template = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref());
    let mut out: Vec<String> = Vec::new();
    for n in from_template
        .into_iter()
        .chain(spec.networks.as_ref())
        .flatten()
    {
        if let Some(t) = n.target.as_ref()
            && !out.contains(t)
        {
            out.push(t.clone());
        }
    }
    out
}

/// The networks the service has a VIP on: all of its networks, unless its
/// endpoint mode is `dnsrr`.
fn vip_networks(spec: &ServiceSpec) -> Vec<String> {
    let dnsrr = spec.endpoint_spec.as_ref().and_then(|e| e.mode)
        == Some(bollard_stubs::models::EndpointSpecModeEnum::DNSRR);
    if dnsrr {
        Vec::new()
    } else {
        spec_networks(spec)
    }
}

fn vip_holder(service_id: &str) -> Holder {
    Holder {
        node_id: String::new(),
        container_id: format!("vip-{service_id}"),
    }
}

impl State {
    pub fn service(&self, id: &str) -> Option<&ServiceRecord> {
        self.services.get(id)
    }

    /// A service by full ID, name, or unique ID prefix (Docker's order).
    pub fn find_service(&self, key: &str) -> Option<&ServiceRecord> {
        if key.is_empty() {
            return None;
        }
        if let Some(s) = self.services.get(key) {
            return Some(s);
        }
        if let Some(s) = self
            .services
            .values()
            .find(|s| s.spec.name.as_deref() == Some(key))
        {
            return Some(s);
        }
        let mut hits = self.services.values().filter(|s| s.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a TaskRecord> {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    /// Gives the service a VIP on each of its networks it has none on,
    /// and gives back those on networks it left.
    fn sync_vips(
        &mut self,
        service_id: &str,
        networks: &[String],
        index: u64,
        now: &str,
        touched: &mut Vec<Touched>,
    ) -> Result<Vec<Vip>, CommandError> {
        let holder = vip_holder(service_id);
        let old: Vec<Vip> = self
            .services
            .get(service_id)
            .map(|s| s.vips.clone())
            .unwrap_or_default();
        let saved: Vec<_> = networks
            .iter()
            .filter_map(|n| self.networks.get(n).cloned())
            .collect();
        let mut vips = Vec::new();
        for net in networks {
            if let Some(v) = old.iter().find(|v| &v.network_id == net) {
                vips.push(v.clone());
                continue;
            }
            let got = self
                .allocate_address(net, holder.clone(), index, now)
                .and_then(|_| {
                    let n = self
                        .networks
                        .get(net)
                        .ok_or_else(|| CommandError::NoSuchNetwork(net.clone()))?;
                    let addr = n
                        .address_of(&holder.container_id)
                        .ok_or_else(|| invalid("the virtual IP was not recorded"))?;
                    Ok((addr, n.subnet.prefix_len()))
                });
            let (addr, prefix) = match got {
                Ok(v) => v,
                Err(e) => {
                    // Nothing changes on a refusal.
                    for n in saved {
                        self.networks.insert(n.id.clone(), n);
                    }
                    touched.clear();
                    return Err(e);
                }
            };
            vips.push(Vip {
                network_id: net.clone(),
                addr,
                prefix,
            });
            touched.push(Touched::Network(net.clone()));
        }
        for v in old.iter().filter(|v| !networks.contains(&v.network_id)) {
            if self.release_address(&v.network_id, &holder.container_id, index, now) {
                touched.push(Touched::Network(v.network_id.clone()));
            }
        }
        Ok(vips)
    }

    fn check_networks(&self, networks: &[String]) -> Result<(), CommandError> {
        for n in networks {
            if !self.networks.contains_key(n) {
                return Err(CommandError::NoSuchNetwork(n.clone()));
            }
        }
        Ok(())
    }

    pub(super) fn create_service(
        &mut self,
        id: String,
        spec: ServiceSpec,
        index: u64,
        now: &str,
    ) -> Result<Vec<Touched>, CommandError> {
        self.cluster.as_ref().ok_or(CommandError::NotInitialized)?;
        if self.services.contains_key(&id) {
            // A retried proposal.
            return Ok(Vec::new());
        }
        validate_spec(&spec)?;
        let name = spec.name.clone().unwrap_or_default();
        if self
            .services
            .values()
            .any(|s| s.spec.name.as_deref() == Some(name.as_str()))
        {
            return Err(CommandError::ServiceExists(name));
        }
        self.check_networks(&spec_networks(&spec))?;
        let mut touched = Vec::new();
        let vips = self.sync_vips(&id, &vip_networks(&spec), index, now, &mut touched)?;
        self.services.insert(
            id.clone(),
            ServiceRecord {
                id: id.clone(),
                created_at: now.to_owned(),
                updated_at: now.to_owned(),
                version: index,
                spec,
                previous_spec: None,
                spec_version: index,
                vips,
                update: None,
            },
        );
        touched.push(Touched::Service(id));
        Ok(touched)
    }

    pub(super) fn update_service(
        &mut self,
        id: &str,
        version: u64,
        spec: ServiceSpec,
        rollback: bool,
        index: u64,
        now: &str,
    ) -> Result<Vec<Touched>, CommandError> {
        let svc = self
            .services
            .get(id)
            .ok_or_else(|| CommandError::NoSuchService(id.to_owned()))?;
        if svc.version != version {
            return Err(CommandError::OutOfSequence);
        }
        let (spec, previous) = if rollback {
            let Some(prev) = svc.previous_spec.clone() else {
                return Err(invalid(format!(
                    "service {id} does not have a previous spec"
                )));
            };
            (prev, None)
        } else {
            (spec, Some(svc.spec.clone()))
        };
        validate_spec(&spec)?;
        let name = spec.name.clone().unwrap_or_default();
        if svc.spec.name.as_deref() != Some(name.as_str()) {
            return Err(invalid("renaming services is not supported"));
        }
        let old_template = svc.spec.task_template.clone();
        self.check_networks(&spec_networks(&spec))?;
        let mut touched = Vec::new();
        let vips = self.sync_vips(id, &vip_networks(&spec), index, now, &mut touched)?;
        let svc = self
            .services
            .get_mut(id)
            .ok_or_else(|| CommandError::NoSuchService(id.to_owned()))?;
        // Only a new task template (or networks) makes new tasks; scaling
        // alone keeps those that run.
        if old_template != spec.task_template || svc.vips != vips {
            svc.spec_version = index;
            svc.update = Some(UpdateProgress {
                state: if rollback {
                    "rollback_started".into()
                } else {
                    "updating".into()
                },
                started_at: now.to_owned(),
                completed_at: None,
                message: if rollback {
                    "manually requested rollback".into()
                } else {
                    "update in progress".into()
                },
                batch_at_ms: 0,
                batch_done_ms: 0,
            });
        }
        svc.previous_spec = match previous {
            Some(p) => Some(p),
            // After a rollback the spec rolled back from becomes the previous one.
            None => Some(svc.spec.clone()),
        };
        svc.spec = spec;
        svc.vips = vips;
        svc.version = index;
        svc.updated_at = now.to_owned();
        touched.push(Touched::Service(id.to_owned()));
        Ok(touched)
    }

    pub(super) fn remove_service(
        &mut self,
        id: &str,
        index: u64,
        now: &str,
    ) -> Result<Vec<Touched>, CommandError> {
        let svc = self
            .services
            .remove(id)
            .ok_or_else(|| CommandError::NoSuchService(id.to_owned()))?;
        let mut touched = vec![Touched::Service(id.to_owned())];
        let holder = vip_holder(id);
        for v in &svc.vips {
            if self.release_address(&v.network_id, &holder.container_id, index, now) {
                touched.push(Touched::Network(v.network_id.clone()));
            }
        }
        // Its tasks go with it; workers stop the containers of tasks that
        // are gone.
        let gone: Vec<String> = self.tasks_of(id).map(|t| t.id.clone()).collect();
        for t in gone {
            self.tasks.remove(&t);
            touched.push(Touched::Task(t));
        }
        Ok(touched)
    }

    /// Applies what the orchestrator decided, skipping what the state no
    /// longer allows (the plan was made on an earlier state).
    pub(super) fn orchestrate(&mut self, plan: Plan, index: u64, now: &str) -> Vec<Touched> {
        let mut touched = Vec::new();
        for mut t in plan.create {
            let fresh = self
                .services
                .get(&t.service_id)
                .is_some_and(|s| s.spec_version == t.spec_version);
            if !fresh || self.tasks.contains_key(&t.id) {
                continue;
            }
            t.version = index;
            t.created_at = now.to_owned();
            t.updated_at = now.to_owned();
            t.status.timestamp = now.to_owned();
            touched.push(Touched::Task(t.id.clone()));
            self.tasks.insert(t.id.clone(), t);
        }
        for (id, desired) in plan.desire {
            if let Some(t) = self.tasks.get_mut(&id)
                && desired > t.desired
            {
                t.desired = desired;
                t.version = index;
                t.updated_at = now.to_owned();
                touched.push(Touched::Task(id));
            }
        }
        for (id, node) in plan.assign {
            if let Some(t) = self.tasks.get_mut(&id)
                && t.node_id.is_empty()
                && self.nodes.contains_key(&node)
            {
                t.node_id = node;
                t.status.state = TaskState::ASSIGNED;
                t.status.message = "scheduler assigned task to node".into();
                t.status.err = None;
                t.status.timestamp = now.to_owned();
                t.version = index;
                t.updated_at = now.to_owned();
                touched.push(Touched::Task(id));
            }
        }
        for (id, why) in plan.pending {
            if let Some(t) = self.tasks.get_mut(&id)
                && t.node_id.is_empty()
                && t.status.err.as_deref() != Some(why.as_str())
            {
                t.status.state = TaskState::PENDING;
                t.status.message = "pending task scheduling".into();
                t.status.err = Some(why);
                t.status.timestamp = now.to_owned();
                t.version = index;
                t.updated_at = now.to_owned();
                touched.push(Touched::Task(id));
            }
        }
        for id in plan.delete {
            if self.tasks.remove(&id).is_some() {
                touched.push(Touched::Task(id));
            }
        }
        for (id, mut p) in plan.progress {
            if let Some(s) = self.services.get_mut(&id)
                && s.update.is_some()
            {
                if p.completed_at.as_deref() == Some("") {
                    p.completed_at = Some(now.to_owned());
                }
                s.update = Some(p);
                s.updated_at = now.to_owned();
                touched.push(Touched::Service(id));
            }
        }
        for id in plan.rollback {
            let Some(s) = self.services.get(&id) else {
                continue;
            };
            let (version, spec) = (s.version, s.spec.clone());
            if let Ok(t) = self.update_service(&id, version, spec, true, index, now) {
                if let Some(u) = self.services.get_mut(&id).and_then(|s| s.update.as_mut()) {
                    u.message =
                        "update rolled back due to failure or early termination of a task".into();
                }
                touched.extend(t);
            }
        }
        touched
    }

    /// A worker's reports on its tasks: states only move forward, and
    /// only for tasks assigned to that node.
    pub(super) fn report_tasks(
        &mut self,
        node_id: &str,
        reports: Vec<TaskReport>,
        index: u64,
        now: &str,
    ) -> Vec<Touched> {
        let mut touched = Vec::new();
        for r in reports {
            let Some(t) = self.tasks.get_mut(&r.task_id) else {
                continue;
            };
            if t.node_id != node_id || r.state <= t.status.state {
                continue;
            }
            t.status = TaskStatusRecord {
                state: r.state,
                message: r.message,
                err: r.err,
                timestamp: now.to_owned(),
                container_id: r.container_id.or(t.status.container_id.take()),
                pid: r.pid,
                exit_code: r.exit_code,
            };
            t.version = index;
            t.updated_at = now.to_owned();
            touched.push(Touched::Task(r.task_id));
        }
        touched
    }

    /// Tasks of a node that left the swarm go with it.
    pub(super) fn remove_node_tasks(&mut self, node_id: &str) -> Vec<Touched> {
        let gone: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.node_id == node_id)
            .map(|t| t.id.clone())
            .collect();
        gone.into_iter()
            .map(|id| {
                self.tasks.remove(&id);
                Touched::Task(id)
            })
            .collect()
    }
}

/// Tasks by slot (replicated) or node (global), for the orchestrator.
pub fn group_tasks<'a>(
    tasks: impl Iterator<Item = &'a TaskRecord>,
    global: bool,
) -> BTreeMap<String, Vec<&'a TaskRecord>> {
    let mut out: BTreeMap<String, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        let key = if global {
            t.node_id.clone()
        } else {
            format!("{:012}", t.slot)
        };
        out.entry(key).or_default().push(t);
    }
    out
}
