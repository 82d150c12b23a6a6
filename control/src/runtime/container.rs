//! A container as the agent keeps it (`container.json` in its dir): the
//! configuration as Docker merged it with the image's, the process it
//! runs, its network attachment and its state. The merge and the checks
//! of a create request are pure.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use bollard_stubs::models::{ContainerConfig, HostConfig};
use serde::{Deserialize, Serialize};

/// Docker's container states (`docker ps` STATUS, `State.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Whether a process of the container exists (it can be signalled).
    pub fn is_running(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub status: Status,
    pub pid: i64,
    pub exit_code: i64,
    /// RFC 3339; Docker's zero time until the first start.
    pub started_at: String,
    pub finished_at: String,
    pub error: String,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Default for RunState {
    fn default() -> Self {
        Self {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            started_at: ZERO_TIME.to_owned(),
            finished_at: ZERO_TIME.to_owned(),
            error: String::new(),
        }
    }
}

/// `--network` of a standalone container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    Bridge,
    Host,
    None,
    /// A swarm's overlay network (the record's `networks[0]`).
    Overlay,
}

impl NetMode {
    /// Docker's names: `default` is `bridge`.
    pub fn parse(s: Option<&str>) -> Result<Self, CreateError> {
        match s.unwrap_or("") {
            "" | "default" | "bridge" => Ok(NetMode::Bridge),
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            other if other.starts_with("container:") => Err(CreateError::Invalid(format!(
                "network mode {other} is not supported by swarmnet"
            ))),
            other => Err(CreateError::NoSuchNetwork(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Bridge => "bridge",
            NetMode::Host => "host",
            NetMode::None => "none",
            NetMode::Overlay => "overlay",
        }
    }
}

/// The container's place on the node's bridge while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BridgeEndpoint {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub host_veth: String,
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    /// `sha256:...`.
    pub image_id: String,
    /// The image's layer dirs, base first (kept: the container holds them).
    pub layers: Vec<PathBuf>,
    /// Docker's merged configuration (what `docker inspect` shows).
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub net_mode: NetMode,
    /// `Path` and `Args` of `docker inspect`.
    pub path: String,
    pub args: Vec<String>,
    pub state: RunState,
    #[serde(default)]
    pub endpoint: Option<BridgeEndpoint>,
    #[serde(default)]
    pub restart_count: i64,
    /// The overlay networks it is on (connected to, or its `--network`),
    /// in the order of their interfaces.
    #[serde(default)]
    pub networks: Vec<NetworkRef>,
    /// Its endpoints on them while it runs.
    #[serde(default)]
    pub overlays: Vec<crate::overlay::OverlayEndpoint>,
}

/// An overlay network a container is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRef {
    pub id: String,
    pub name: String,
}

impl ContainerRecord {
    pub fn short_id(&self) -> &str {
        short(&self.id)
    }
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(String),
    #[error("network {0} not found")]
    NoSuchNetwork(String),
}

/// The parts of an image's config a container inherits.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub labels: HashMap<String, String>,
    pub exposed_ports: Vec<String>,
    pub stop_signal: Option<String>,
    pub volumes: Vec<String>,
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// Environment `over` on top of `base`, by variable name, keeping order.
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(base.len() + over.len());
    for kv in base.iter().chain(over) {
        match out.iter_mut().find(|e| env_key(e) == env_key(kv)) {
            Some(slot) => kv.clone_into(slot),
            None => out.push(kv.clone()),
        }
    }
    out
}

fn is_reset(v: &Option<Vec<String>>) -> bool {
    v.as_ref()
        .is_some_and(|e| e.is_empty() || (e.len() == 1 && e[0].is_empty()))
}

/// dockerd's merge of the image's config into the request's (moby
/// `daemon/commit.go` merge): user, env, labels, ports, workdir, stop
/// signal from the image unless the request has them; the image's
/// entrypoint unless the request set one, and its cmd only if the request
/// set neither entrypoint nor cmd. Returns the merged config and the
/// process (`Path`, `Args`).
pub fn merge(
    mut c: ContainerConfig,
    img: &ImageDefaults,
) -> Result<(ContainerConfig, String, Vec<String>), CreateError> {
    if c.user.as_deref().is_none_or(str::is_empty) {
        c.user = img.user.clone().filter(|u| !u.is_empty());
    }
    c.env = Some(merge_env(&img.env, c.env.as_deref().unwrap_or_default()));
    let mut labels = img.labels.clone();
    labels.extend(c.labels.take().unwrap_or_default());
    c.labels = Some(labels);
    let mut ports = img.exposed_ports.clone();
    for p in c.exposed_ports.take().unwrap_or_default() {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    if !ports.is_empty() {
        c.exposed_ports = Some(ports);
    }
    let mut volumes = img.volumes.clone();
    volumes.extend(c.volumes.take().unwrap_or_default());
    if !volumes.is_empty() {
        c.volumes = Some(volumes);
    }
    if c.working_dir.as_deref().is_none_or(str::is_empty) {
        c.working_dir = img.working_dir.clone().filter(|w| !w.is_empty());
    }
    if c.stop_signal.as_deref().is_none_or(str::is_empty) {
        c.stop_signal = img.stop_signal.clone();
    }
    if c.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if c.cmd.as_ref().is_none_or(Vec::is_empty) {
            c.cmd = img.cmd.clone();
        }
        if c.entrypoint.is_none() {
            c.entrypoint = img.entrypoint.clone();
        }
    }
    if is_reset(&c.entrypoint) {
        c.entrypoint = None;
    }
    let mut argv: Vec<String> = c.entrypoint.clone().unwrap_or_default();
    argv.extend(c.cmd.clone().unwrap_or_default());
    if argv.is_empty() || argv[0].is_empty() {
        return Err(CreateError::Invalid("no command specified".to_owned()));
    }
    let path = argv.remove(0);
    Ok((c, path, argv))
}

/// Refuses what swarmnet does not do for standalone containers, with a
/// message saying so (never silently ignored).
pub fn check_host_config(h: &HostConfig) -> Result<(), CreateError> {
    let unsupported = |what: &str| {
        Err(CreateError::Invalid(format!(
            "{what} is not supported by swarmnet"
        )))
    };
    if h.port_bindings.as_ref().is_some_and(|p| !p.is_empty())
        || h.publish_all_ports.unwrap_or(false)
    {
        return Err(CreateError::Invalid(
            "publishing ports of a standalone container (-p, -P) is not supported by swarmnet: \
             publish them from a service (docker service create --publish), which the routing mesh serves on every node"
                .to_owned(),
        ));
    }
    if h.privileged.unwrap_or(false) {
        return unsupported("--privileged");
    }
    if let Some(r) = &h.restart_policy
        && let Some(name) = &r.name
        && !matches!(
            name,
            bollard_stubs::models::RestartPolicyNameEnum::EMPTY
                | bollard_stubs::models::RestartPolicyNameEnum::NO
        )
    {
        return unsupported(&format!("restart policy {name}"));
    }
    if h.auto_remove.unwrap_or(false)
        && h.restart_policy
            .as_ref()
            .and_then(|r| r.name.as_ref())
            .is_some_and(|n| {
                *n != bollard_stubs::models::RestartPolicyNameEnum::NO
                    && *n != bollard_stubs::models::RestartPolicyNameEnum::EMPTY
            })
    {
        return Err(CreateError::Invalid(
            "can't create 'AutoRemove' container with restart policy".to_owned(),
        ));
    }
    if h.mounts.as_ref().is_some_and(|m| !m.is_empty())
        || h.volumes_from.as_ref().is_some_and(|v| !v.is_empty())
    {
        return unsupported("--mount and --volumes-from");
    }
    for mode in [&h.pid_mode, &h.ipc_mode, &h.uts_mode, &h.userns_mode]
        .into_iter()
        .flatten()
    {
        if !mode.is_empty() && mode != "private" && mode != "shareable" {
            return unsupported(&format!("namespace mode {mode}"));
        }
    }
    if h.runtime
        .as_deref()
        .is_some_and(|r| !r.is_empty() && r != "runc")
    {
        return unsupported("a per-container --runtime");
    }
    if let Some(t) = h.log_config.as_ref().and_then(|l| l.typ.as_deref())
        && !t.is_empty()
        && t != "json-file"
    {
        return Err(CreateError::Invalid(format!(
            "log driver {t} is not supported by swarmnet (json-file is)"
        )));
    }
    for b in h.binds.as_deref().unwrap_or_default() {
        parse_bind(b)?;
    }
    Ok(())
}

/// What dockerd fills in of a HostConfig the client left out (clients such
/// as docker-py read them back: `LogConfig.Type` says whether logs can be
/// read).
pub fn host_config_defaults(mut h: HostConfig) -> HostConfig {
    if h.network_mode.as_deref().is_none_or(str::is_empty) {
        h.network_mode = Some("bridge".to_owned());
    }
    let log = h.log_config.get_or_insert_with(Default::default);
    if log.typ.as_deref().is_none_or(str::is_empty) {
        log.typ = Some("json-file".to_owned());
    }
    log.config.get_or_insert_with(Default::default);
    let restart = h.restart_policy.get_or_insert_with(Default::default);
    if restart
        .name
        .as_ref()
        .is_none_or(|n| *n == bollard_stubs::models::RestartPolicyNameEnum::EMPTY)
    {
        restart.name = Some(bollard_stubs::models::RestartPolicyNameEnum::NO);
    }
    restart.maximum_retry_count.get_or_insert(0);
    h
}

/// `-v /host:/ctr[:ro|rw]`: bind mounts of absolute host paths (named
/// volumes are refused).
pub fn parse_bind(spec: &str) -> Result<super::spec::Bind, CreateError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => {
            return Err(CreateError::Invalid(format!(
                "invalid volume specification: '{spec}'"
            )));
        }
    };
    if !src.starts_with('/') {
        return Err(CreateError::Invalid(format!(
            "named volumes are not supported by swarmnet: '{spec}' (bind an absolute host path)"
        )));
    }
    if !dst.starts_with('/') {
        return Err(CreateError::Invalid(format!(
            "invalid mount config for type \"bind\": invalid mount path: '{dst}' mount path must be absolute"
        )));
    }
    let readonly = match mode {
        "" | "rw" => false,
        "ro" => true,
        other => {
            return Err(CreateError::Invalid(format!("invalid mode: {other}")));
        }
    };
    Ok(super::spec::Bind {
        source: src.into(),
        destination: dst.into(),
        readonly,
    })
}

/// The process environment: the merged env with PATH, HOSTNAME, HOME and
/// (for a TTY) TERM filled in as dockerd does.
pub fn process_env(merged: &[String], hostname: &str, home: &str, tty: bool) -> Vec<String> {
    let has = |k: &str| merged.iter().any(|e| env_key(e) == k);
    let mut env = Vec::new();
    if !has("PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    env.push(format!("HOSTNAME={hostname}"));
    if tty && !has("TERM") {
        env.push("TERM=xterm".to_owned());
    }
    env = merge_env(&env, merged);
    if !has("HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageDefaults {
        ImageDefaults {
            env: vec!["PATH=/usr/bin:/bin".into(), "A=1".into()],
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            cmd: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]),
            stop_signal: Some("SIGQUIT".into()),
            labels: [("l".to_owned(), "img".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_defaults_and_overrides() {
        let (c, path, args) = merge(ContainerConfig::default(), &img()).expect("merge");
        assert_eq!(path, "/docker-entrypoint.sh");
        assert_eq!(args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));

        let req = ContainerConfig {
            cmd: Some(vec!["cat".into(), "/etc/hostname".into()]),
            env: Some(vec!["A=2".into(), "B=3".into()]),
            labels: Some([("l".to_owned(), "mine".to_owned())].into()),
            ..Default::default()
        };
        let (c, path, args) = merge(req, &img()).expect("merge");
        assert_eq!(
            (path.as_str(), args.as_slice()),
            (
                "/docker-entrypoint.sh",
                &["cat".to_owned(), "/etc/hostname".to_owned()][..]
            )
        );
        assert_eq!(
            c.env.as_deref(),
            Some(
                &[
                    "PATH=/usr/bin:/bin".to_owned(),
                    "A=2".to_owned(),
                    "B=3".to_owned()
                ][..]
            )
        );
        assert_eq!(
            c.labels
                .as_ref()
                .and_then(|l| l.get("l"))
                .map(String::as_str),
            Some("mine")
        );

        // --entrypoint sh: the image's cmd is dropped.
        let req = ContainerConfig {
            entrypoint: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let (_, path, args) = merge(req, &img()).expect("merge");
        assert_eq!((path.as_str(), args.len()), ("sh", 0));

        // --entrypoint "" with a command.
        let req = ContainerConfig {
            entrypoint: Some(vec![String::new()]),
            cmd: Some(vec!["ls".into()]),
            ..Default::default()
        };
        let (_, path, _) = merge(req, &img()).expect("merge");
        assert_eq!(path, "ls");

        let empty = ImageDefaults::default();
        assert_eq!(
            merge(ContainerConfig::default(), &empty).map(|_| ()),
            Err(CreateError::Invalid("no command specified".into()))
        );
    }

    #[test]
    fn unsupported_options_are_refused() {
        let mut h = HostConfig {
            port_bindings: Some([("80/tcp".to_owned(), Some(vec![Default::default()]))].into()),
            ..Default::default()
        };
        assert!(matches!(check_host_config(&h), Err(CreateError::Invalid(m)) if m.contains("-p")));
        h.port_bindings = None;
        assert_eq!(check_host_config(&h), Ok(()));
        h.binds = Some(vec!["data:/data".into()]);
        assert!(check_host_config(&h).is_err());
        h.binds = Some(vec!["/srv:/data:ro".into()]);
        assert_eq!(check_host_config(&h), Ok(()));
        assert!(parse_bind("/srv:/data:ro").expect("bind").readonly);
        assert_eq!(NetMode::parse(Some("default")), Ok(NetMode::Bridge));
        assert_eq!(
            NetMode::parse(Some("net1")),
            Err(CreateError::NoSuchNetwork("net1".into()))
        );
    }

    #[test]
    fn process_environment() {
        let env = process_env(&["A=1".into()], "abc", "/root", true);
        assert!(env.contains(
            &"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
        ));
        assert!(env.contains(&"HOSTNAME=abc".to_owned()));
        assert!(env.contains(&"TERM=xterm".to_owned()));
        assert!(env.contains(&"HOME=/root".to_owned()));
        let env = process_env(
            &["HOSTNAME=mine".into(), "HOME=/h".into()],
            "abc",
            "/root",
            false,
        );
        assert_eq!(env.iter().filter(|e| e.starts_with("HOSTNAME=")).count(), 1);
        assert!(env.contains(&"HOSTNAME=mine".to_owned()));
        assert!(!env.iter().any(|e| e == "HOME=/root"));
    }
}
