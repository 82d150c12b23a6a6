//! The node's container engine: containers from the image store, each run
//! by the OCI runtime (runc) from a bundle the agent writes, watched by a
//! shim of its own ([`shim`]) that keeps its stdio, logs and exit status
//! while the agent is away (live restore).
//!
//! Layout on disk:
//! - `<data-dir>/containers/<id>/`: `container.json` (the record),
//!   `config.json` (the OCI spec), `rootfs/` (overlay mount point),
//!   `diff/` + `work/` (writable layer), `hosts`, `hostname`,
//!   `resolv.conf`, `<id>-json.log`.
//! - `<exec-root>/c/<id12>/`: the shim's socket, pid and exit files;
//!   `<exec-root>/netns/<id12>`: the container's network namespace;
//!   `<exec-root>/runc/`: runc's state.
//!
//! Lock order: a container's `op` (one lifecycle operation at a time)
//! before its `rec`; `containers` and `rec` are held only briefly and
//! never across an await.

pub mod attach;
mod bundle;
pub mod console;
pub mod container;
pub mod exec;
pub mod frames;
mod ipam;
pub mod logs;
mod names;
pub mod net;
pub mod rootfs;
pub mod runc;
pub mod shim;
pub mod spec;
mod user;

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard_stubs::models::{ContainerConfig, HostConfig};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    process::Command,
    sync::watch,
};
use tracing::{info, warn};

pub use self::attach::{AttachOpts, ClientIo};
use self::{
    container::{BridgeEndpoint, ContainerRecord, CreateError, NetMode, RunState, Status},
    frames::ExitInfo,
    net::{BridgeNet, NetError},
    rootfs::Rootfs,
    runc::Runc,
    shim::{Hello, ShimPaths, Welcome},
};
use crate::{
    images::{ImageError, ImageStore, ImageUser},
    util::now_rfc3339,
};

/// Seconds `docker stop` waits by default before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: i64 = 10;
/// How long the agent waits for a shim to report `runc create`.
const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(60);

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the engine needs of the swarm for overlay networks (the agent
/// answers: from its store on a manager, by asking one on a worker).
pub trait Cluster: Send + Sync {
    /// Checks that `network` can take the container and, with `allocate`,
    /// gives it an address there. `task` names the swarm task the
    /// container runs, if it runs one: tasks also join networks that are
    /// not attachable.
    fn attach<'a>(
        &'a self,
        network: &'a str,
        container_id: &'a str,
        allocate: bool,
        task: Option<&'a str>,
    ) -> BoxFuture<'a, Result<crate::overlay::Attachment, RuntimeError>>;
    /// Gives the address back.
    fn detach<'a>(&'a self, network_id: &'a str, container_id: &'a str) -> BoxFuture<'a, ()>;
}

/// The swarm task a container runs, from the label dockerd's executor
/// puts on it.
pub fn task_of(config: &ContainerConfig) -> Option<String> {
    config
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::store::services::TASK_ID_LABEL))
        .cloned()
}

/// Settings of the engine (the agent's command line, typed).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub exec_root: PathBuf,
    pub runtime: PathBuf,
    pub cgroup_parent: String,
    pub bip: String,
    pub bridge_name: String,
    pub mtu: u32,
    /// This binary, started as `swarmnet shim`.
    pub self_exe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// Docker's 304: nothing to do (start a running container, ...).
    #[error("not modified")]
    NotModified,
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The OCI runtime refused (dockerd answers these with 400, and the CLI
    /// turns "executable file not found" into exit code 127).
    #[error("{0}")]
    Oci(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Net(#[from] NetError),
    #[error("{0}")]
    Internal(String),
}

impl From<CreateError> for RuntimeError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::NoSuchNetwork(_) => RuntimeError::NotFound(e.to_string()),
            CreateError::Invalid(m) => RuntimeError::Invalid(m),
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// One container.
pub struct Container {
    pub id: String,
    rec: Mutex<ContainerRecord>,
    /// Held for the whole of a start, stop, kill or remove.
    op: tokio::sync::Mutex<()>,
    /// Bumped on every state change; waiters watch it.
    changed: watch::Sender<u64>,
    /// Attach clients that came before the start; start connects them.
    pending: Mutex<Vec<attach::Pending>>,
    removed: watch::Sender<bool>,
    /// How many times it exited since the agent started.
    exits: std::sync::atomic::AtomicU64,
}

impl Container {
    fn new(rec: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            pending: Mutex::new(Vec::new()),
            removed: watch::channel(false).0,
            exits: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A copy of the record.
    pub fn record(&self) -> ContainerRecord {
        self.rec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update<T>(&self, f: impl FnOnce(&mut ContainerRecord) -> T) -> T {
        let out = f(&mut self.rec.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|v| *v += 1);
        out
    }

    pub fn status(&self) -> Status {
        self.rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .status
    }
}

pub struct Runtime {
    cfg: RuntimeConfig,
    runc: Runc,
    images: Arc<ImageStore>,
    bridge: BridgeNet,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    pub(crate) execs: exec::Execs,
    /// The terminals of running `exec -t` processes (for resize).
    exec_terminals: Mutex<std::collections::HashMap<String, std::fs::File>>,
    overlay: Arc<crate::overlay::Overlay>,
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
}

impl Runtime {
    /// Opens the engine: loads every container on disk and adopts those
    /// whose shim still runs (live restore).
    pub async fn open(
        cfg: RuntimeConfig,
        images: Arc<ImageStore>,
        overlay: Arc<crate::overlay::Overlay>,
    ) -> Result<Arc<Self>, RuntimeError> {
        let ipam = ipam::BridgeIpam::from_bip(&cfg.bip)
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let bridge = BridgeNet::new(&cfg.bridge_name, ipam, cfg.mtu);
        for d in [
            cfg.data_dir.clone(),
            cfg.exec_root.join("c"),
            cfg.exec_root.join("netns"),
            cfg.exec_root.join("runc"),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let rt = Arc::new(Self {
            runc: Runc {
                binary: cfg.runtime.clone(),
                root: cfg.exec_root.join("runc"),
            },
            cfg,
            images,
            bridge,
            containers: Mutex::new(BTreeMap::new()),
            execs: exec::Execs::default(),
            exec_terminals: Mutex::new(std::collections::HashMap::new()),
            overlay,
            cluster: std::sync::OnceLock::new(),
        });
        let entries = std::fs::read_dir(&rt.cfg.data_dir)
            .map_err(io_err(format!("read {}", rt.cfg.data_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path().join("container.json");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let rec: ContainerRecord = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable container record; skipped");
                    continue;
                }
            };
            let c = Container::new(rec);
            rt.lock().insert(c.id.clone(), c.clone());
        }
        Ok(rt)
    }

    /// Live restore, once the agent can reach its swarm: running
    /// containers whose shims answer are watched (and their endpoints
    /// announced) again; the others get their recorded exit.
    pub async fn restore_all(self: &Arc<Self>) {
        for c in self.list() {
            self.restore(c).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the engine its way to the swarm's networks (the agent, once
    /// it exists).
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The `bridge` network: its subnet and gateway.
    pub fn bridge_net(&self) -> (ipnet::Ipv4Net, std::net::Ipv4Addr) {
        (self.bridge.subnet(), self.bridge.gateway())
    }

    pub fn bridge_name(&self) -> &str {
        &self.cfg.bridge_name
    }

    pub fn bridge_mtu(&self) -> u32 {
        self.cfg.mtu
    }

    fn cluster(&self) -> Result<&Arc<dyn Cluster>, RuntimeError> {
        self.cluster
            .get()
            .ok_or_else(|| RuntimeError::Internal("no swarm networks yet".into()))
    }

    /// After an agent restart: a running container whose shim answers is
    /// watched again; one whose shim is gone gets its recorded exit.
    async fn restore(self: &Arc<Self>, c: Arc<Container>) {
        let rec = c.record();
        match rec.state.status {
            Status::Running | Status::Paused | Status::Restarting => {
                let paths = self.shim_paths(&rec.id);
                match shim_connect(&paths, &Hello::default()).await {
                    Ok((stream, welcome)) => {
                        info!(
                            id = rec.short_id(),
                            pid = welcome.pid,
                            "adopted a running container"
                        );
                        if let Some(ep) = &rec.endpoint {
                            self.bridge.reserve(ep.ip);
                        }
                        for ep in &rec.overlays {
                            self.overlay.adopt(&rec.id, &rec.name, ep).await;
                        }
                        tokio::spawn(self.clone().monitor(c, stream));
                    }
                    Err(_) => {
                        let exit = paths.read_exit().unwrap_or_else(|| ExitInfo {
                            exit_code: 255,
                            finished_at: now_rfc3339(),
                            error: Some("the container's monitor is gone".to_owned()),
                        });
                        if exit.error.is_some() {
                            // The shim died without the container: do not
                            // leave its processes unwatched.
                            let _ = self.runc_cmd(self.runc.kill_args(&rec.id, 9, true)).await;
                        }
                        self.exited(&c, exit).await;
                    }
                }
            }
            Status::Removing => {
                let _ = self.remove(&rec.id, true).await;
            }
            Status::Created | Status::Exited | Status::Dead => {}
        }
    }

    pub fn shim_paths(&self, id: &str) -> ShimPaths {
        ShimPaths::new(&self.cfg.exec_root.join("c").join(container::short(id)))
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.exec_root.join("netns").join(container::short(id))
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(format!("{id}-json.log"))
    }

    /// Finds a container as Docker does: full ID, unique ID prefix, or
    /// name (with or without its slash).
    pub fn get(&self, name_or_id: &str) -> Result<Arc<Container>, RuntimeError> {
        let g = self.lock();
        if let Some(c) = g.get(name_or_id) {
            return Ok(c.clone());
        }
        let bare = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if let Some(c) = g.values().find(|c| c.record().name == bare) {
            return Ok(c.clone());
        }
        if !name_or_id.is_empty() && name_or_id.chars().all(|ch| ch.is_ascii_hexdigit()) {
            let mut hits = g.values().filter(|c| c.id.starts_with(name_or_id));
            if let (Some(c), None) = (hits.next(), hits.next()) {
                return Ok(c.clone());
            }
        }
        Err(RuntimeError::NoSuchContainer(name_or_id.to_owned()))
    }

    pub fn list(&self) -> Vec<Arc<Container>> {
        self.lock().values().cloned().collect()
    }

    /// Which containers use which image (for `docker rmi`).
    pub fn image_users(&self) -> Vec<ImageUser> {
        self.list()
            .iter()
            .map(|c| {
                let r = c.record();
                ImageUser {
                    container_id: r.id.clone(),
                    image_id: r.image_id.clone(),
                    running: r.state.status.is_running(),
                }
            })
            .collect()
    }

    fn new_id(&self) -> String {
        loop {
            let mut b = [0u8; 32];
            rand::fill(&mut b);
            let id = hex::encode(b);
            // Short IDs name the shim's dir and the veth: keep them unique.
            let clash = self
                .lock()
                .keys()
                .any(|k| k[..7] == id[..7] || k[..12] == id[..12]);
            if !clash && !id.chars().all(|c| c.is_ascii_digit()) {
                return id;
            }
        }
    }

    /// `POST /containers/create`.
    pub async fn create(
        &self,
        name: Option<&str>,
        config: ContainerConfig,
        host_config: HostConfig,
    ) -> Result<(String, Vec<String>), RuntimeError> {
        let image_name = config
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                RuntimeError::Invalid(
                    "config cannot be empty in order to create a container".to_owned(),
                )
            })?;
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => Some(
                names::validate(n)
                    .map_err(RuntimeError::Invalid)?
                    .to_owned(),
            ),
            None => None,
        };
        container::check_host_config(&host_config)?;
        let id = self.new_id();
        let (net_mode, networks) = match NetMode::parse(host_config.network_mode.as_deref()) {
            Ok(m) => (m, Vec::new()),
            Err(CreateError::NoSuchNetwork(net)) => {
                // A swarm network: it must exist and take containers.
                let task = task_of(&config);
                let att = self
                    .cluster()?
                    .attach(&net, &id, false, task.as_deref())
                    .await?;
                (
                    NetMode::Overlay,
                    vec![container::NetworkRef {
                        id: att.network_id,
                        name: att.name,
                    }],
                )
            }
            Err(e) => return Err(e.into()),
        };
        let image = self.images.resolve(&image_name)?;
        let defaults = bundle::image_defaults(&image.config);
        let (mut merged, path, args) = container::merge(config, &defaults)?;
        let mut warnings = Vec::new();
        if let Some(m) = host_config
            .memory
            .filter(|m| *m > 0 && *m < 6 * 1024 * 1024)
        {
            return Err(RuntimeError::Invalid(format!(
                "Minimum memory limit allowed is 6MB (asked for {m} bytes)"
            )));
        }
        if host_config.oom_kill_disable.unwrap_or(false) {
            warnings.push("OOM killer disable is not supported; ignored".to_owned());
        }
        if merged.hostname.as_deref().is_none_or(str::is_empty) {
            merged.hostname = Some(if net_mode == NetMode::Host {
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| container::short(&id).to_owned())
            } else {
                container::short(&id).to_owned()
            });
        }
        merged.image = Some(image_name.clone());
        let host_config = container::host_config_defaults(host_config);
        let rec = ContainerRecord {
            id: id.clone(),
            name: String::new(),
            created: now_rfc3339(),
            image: image_name,
            image_id: image.id.clone(),
            layers: image.layers.clone(),
            config: merged,
            host_config,
            net_mode,
            path,
            args,
            state: RunState::default(),
            endpoint: None,
            restart_count: 0,
            networks,
            overlays: Vec::new(),
        };
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        // Name and insertion under one lock: two creates cannot both take
        // a name.
        let c = {
            let mut g = self.lock();
            let taken = |n: &str| {
                g.values()
                    .find(|c| c.record().name == n)
                    .map(|c| c.id.clone())
            };
            let name = match name {
                Some(n) => {
                    if let Some(other) = taken(&n) {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(RuntimeError::Conflict(format!(
                            "Conflict. The container name \"/{n}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                        )));
                    }
                    n
                }
                None => {
                    let mut retry = 0;
                    loop {
                        let n = names::generate(rand::random(), retry);
                        if taken(&n).is_none() {
                            break n;
                        }
                        retry += 1;
                    }
                }
            };
            let mut rec = rec;
            rec.name = name;
            let c = Container::new(rec);
            g.insert(id.clone(), c.clone());
            c
        };
        if let Err(e) = self.save(&c) {
            self.lock().remove(&id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        info!(id = container::short(&id), name = %c.record().name, "container created");
        Ok((id, warnings))
    }

    fn save(&self, c: &Container) -> Result<(), RuntimeError> {
        let rec = c.record();
        let dir = self.dir(&rec.id);
        let tmp = dir.join("container.json.tmp");
        let bytes = serde_json::to_vec_pretty(&rec)
            .map_err(|e| RuntimeError::Internal(format!("encode record: {e}")))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, dir.join("container.json")))
            .map_err(io_err(format!("write {}", dir.display())))
    }

    /// `POST /containers/{id}/start`.
    pub async fn start(self: &Arc<Self>, name_or_id: &str) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        match rec.state.status {
            Status::Running | Status::Paused => return Err(RuntimeError::NotModified),
            Status::Removing | Status::Dead => {
                return Err(RuntimeError::Conflict(format!(
                    "cannot start container {}: it is being removed",
                    rec.name
                )));
            }
            Status::Created | Status::Exited | Status::Restarting => {}
        }
        match self.start_locked(&c, &rec).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Attach clients waiting for this start are hung up on.
                c.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let msg = e.to_string();
                c.update(|r| {
                    r.state.error = msg;
                    if r.state.status == Status::Running {
                        r.state.status = Status::Exited;
                    }
                    r.state.exit_code = 128;
                });
                let _ = self.save(&c);
                Err(e)
            }
        }
    }

    async fn start_locked(
        self: &Arc<Self>,
        c: &Arc<Container>,
        rec: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        let dir = self.dir(&rec.id);
        let paths = self.shim_paths(&rec.id);
        let _ = std::fs::remove_dir_all(paths.dir());
        std::fs::create_dir_all(paths.dir())
            .map_err(io_err(format!("create {}", paths.dir().display())))?;
        // Leftovers of an earlier run.
        let _ = self.runc_cmd(self.runc.delete_args(&rec.id)).await;
        let rootfs = Rootfs::in_dir(&dir);
        rootfs
            .mount(&rec.layers)
            .map_err(|e| RuntimeError::Internal(crate::error_chain(&e)))?;
        let mut cleanup = Cleanup {
            rt: self.clone(),
            id: rec.id.clone(),
            endpoint: None,
            overlays: Vec::new(),
            addresses: Vec::new(),
            armed: true,
        };
        // The network namespace and the bridge endpoint.
        let ns = self.netns_path(&rec.id);
        let net = match rec.net_mode {
            NetMode::Host => spec::NetNamespace::Host,
            NetMode::None | NetMode::Bridge | NetMode::Overlay => {
                net::create_netns(&ns)?;
                spec::NetNamespace::Path(ns.clone())
            }
        };
        let endpoint = if rec.net_mode == NetMode::Bridge {
            let ep = self.bridge.attach(&ns, &rec.id).await?;
            cleanup.endpoint = Some(ep.clone());
            Some(ep)
        } else {
            None
        };
        // Overlay networks: an address from the swarm, then the veth.
        let first_if = usize::from(rec.net_mode == NetMode::Bridge);
        for (i, n) in rec.networks.iter().enumerate() {
            let ep = self
                .join_overlay(&mut cleanup, rec, &n.id, &ns, i + first_if)
                .await?;
            cleanup.overlays.push(ep);
        }
        let overlays = cleanup.overlays.clone();
        let bundle_spec =
            self.bundle_spec(rec, &dir, &rootfs, net, endpoint.as_ref(), &overlays)?;
        let spec_bytes = serde_json::to_vec_pretty(&bundle_spec)
            .map_err(|e| RuntimeError::Internal(format!("encode config.json: {e}")))?;
        std::fs::write(dir.join("config.json"), spec_bytes).map_err(io_err("write config.json"))?;

        // The shim: runc create, then its ready line.
        let tty = rec.config.tty.unwrap_or(false);
        let open_stdin = rec.config.open_stdin.unwrap_or(false);
        let mut cmd = Command::new(&self.cfg.self_exe);
        cmd.arg("shim")
            .arg("--id")
            .arg(&rec.id)
            .arg("--bundle")
            .arg(&dir)
            .arg("--state-dir")
            .arg(paths.dir())
            .arg("--log")
            .arg(self.log_path(&rec.id))
            .arg("--runtime")
            .arg(&self.cfg.runtime)
            .arg("--runtime-root")
            .arg(&self.runc.root);
        if tty {
            cmd.arg("--tty");
        }
        if open_stdin {
            cmd.arg("--stdin");
        }
        if rec.config.stdin_once.unwrap_or(false) {
            cmd.arg("--stdin-once");
        }
        let shim_log =
            std::fs::File::create(paths.shim_log()).map_err(io_err("create shim.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(io_err(format!(
            "start {} shim",
            self.cfg.self_exe.display()
        )))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RuntimeError::Internal("shim stdout".into()))?;
        let ready = tokio::time::timeout(SHIM_READY_TIMEOUT, async {
            let mut line = String::new();
            BufReader::new(stdout)
                .take(64 * 1024)
                .read_line(&mut line)
                .await
                .map(|_| line)
        })
        .await;
        // The agent reaps the shims it started (they outlive it otherwise).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let pid = match ready {
            Ok(Ok(line)) => shim::parse_ready(&line).map_err(RuntimeError::Oci)?,
            Ok(Err(e)) => return Err(io_err("read the shim's report")(e)),
            Err(_) => {
                return Err(RuntimeError::Internal(
                    "the shim did not report within 60 s".into(),
                ));
            }
        };
        // The monitor, and the attach clients that are waiting for this
        // start, connect before the process runs: no output is missed.
        let (monitor, _) = shim_connect(&paths, &Hello::default())
            .await
            .map_err(io_err("connect to the shim"))?;
        let pending: Vec<attach::Pending> =
            std::mem::take(&mut *c.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for p in pending {
            attach::connect_pending(&paths, p).await;
        }
        let out = self
            .runc_cmd(self.runc.start_args(&rec.id, &paths.runc_log()))
            .await?;
        if !out.status.success() {
            let log = std::fs::read_to_string(paths.runc_log()).unwrap_or_default();
            let _ = self.runc_cmd(self.runc.kill_args(&rec.id, 9, true)).await;
            return Err(RuntimeError::Oci(runc::error_from_log(
                &log,
                &String::from_utf8_lossy(&out.stderr),
            )));
        }
        cleanup.armed = false;
        c.update(|r| {
            r.state = RunState {
                status: Status::Running,
                pid: i64::from(pid),
                exit_code: 0,
                started_at: now_rfc3339(),
                finished_at: r.state.finished_at.clone(),
                error: String::new(),
            };
            r.endpoint = endpoint;
            r.overlays = overlays;
        });
        // Clients that attached while the start was under way.
        let late: Vec<attach::Pending> =
            std::mem::take(&mut *c.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for p in late {
            attach::connect_pending(&paths, p).await;
        }
        self.save(c)?;
        tokio::spawn(self.clone().monitor(c.clone(), monitor));
        info!(id = rec.short_id(), pid, "container started");
        Ok(())
    }

    /// Puts a starting (or running) container on an overlay network as its
    /// interface `eth{index}`.
    async fn join_overlay(
        &self,
        cleanup: &mut Cleanup,
        rec: &ContainerRecord,
        network: &str,
        ns: &std::path::Path,
        index: usize,
    ) -> Result<crate::overlay::OverlayEndpoint, RuntimeError> {
        let task = task_of(&rec.config);
        let att = self
            .cluster()?
            .attach(network, &rec.id, true, task.as_deref())
            .await?;
        cleanup.addresses.push(att.network_id.clone());
        let host_veth = format!("vo{}{}", &rec.id[..7], index);
        self.overlay
            .join(
                &att,
                ns,
                &format!("eth{index}"),
                &host_veth,
                &rec.id,
                &rec.name,
            )
            .await
            .map_err(|e| RuntimeError::Internal(crate::error_chain(&e)))
    }

    /// Watches a running container through its shim until it exits.
    async fn monitor(self: Arc<Self>, c: Arc<Container>, stream: UnixStream) {
        let exit = attach::wait_exit(stream).await;
        let exit = match exit {
            Some(e) => e,
            None => {
                // The shim hung up without an exit frame: it wrote
                // exit.json first if it saw one.
                let paths = self.shim_paths(&c.id);
                let mut found = None;
                for _ in 0..20 {
                    if let Some(e) = paths.read_exit() {
                        found = Some(e);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                match found {
                    Some(e) => e,
                    None => {
                        warn!(
                            id = container::short(&c.id),
                            "the shim died; killing the container"
                        );
                        let _ = self.runc_cmd(self.runc.kill_args(&c.id, 9, true)).await;
                        ExitInfo {
                            exit_code: 255,
                            finished_at: now_rfc3339(),
                            error: Some("the container's monitor exited unexpectedly".to_owned()),
                        }
                    }
                }
            }
        };
        self.exited(&c, exit).await;
    }

    /// Everything a stopped container no longer needs: runc's state, the
    /// rootfs mount, the network namespace and its endpoints (on the
    /// bridge; on overlay networks, whose addresses go back to the swarm).
    async fn teardown(
        &self,
        id: &str,
        endpoint: Option<&BridgeEndpoint>,
        overlays: &[crate::overlay::OverlayEndpoint],
    ) {
        if let Err(e) = self.runc_cmd(self.runc.delete_args(id)).await {
            warn!(id = container::short(id), error = %e, "runc delete");
        }
        if let Some(ep) = endpoint {
            self.bridge.detach(ep).await;
        }
        for ep in overlays {
            self.overlay.leave(id, ep).await;
            if let Ok(cluster) = self.cluster() {
                cluster.detach(&ep.network_id, id).await;
            }
        }
        net::remove_netns(&self.netns_path(id));
        if let Err(e) = Rootfs::in_dir(&self.dir(id)).unmount() {
            warn!(id = container::short(id), error = %crate::error_chain(&e), "unmount the rootfs");
        }
    }

    async fn exited(self: &Arc<Self>, c: &Arc<Container>, exit: ExitInfo) {
        let rec = c.record();
        self.teardown(&rec.id, rec.endpoint.as_ref(), &rec.overlays)
            .await;
        c.update(|r| {
            r.state.status = Status::Exited;
            r.state.pid = 0;
            r.state.exit_code = exit.exit_code;
            r.state.finished_at = exit.finished_at.clone();
            if let Some(e) = &exit.error {
                r.state.error = e.clone();
            }
            r.endpoint = None;
            r.overlays.clear();
        });
        c.exits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        c.changed.send_modify(|v| *v += 1);
        let _ = self.save(c);
        info!(
            id = rec.short_id(),
            exit_code = exit.exit_code,
            "container exited"
        );
        if rec.host_config.auto_remove.unwrap_or(false) {
            let rt = self.clone();
            let id = rec.id.clone();
            tokio::spawn(async move {
                match rt.remove(&id, true).await {
                    Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => {}
                    Err(e) => warn!(id = container::short(&id), error = %e, "auto-remove"),
                }
            });
        }
    }

    /// Runs a runc verb, capturing its output.
    async fn runc_cmd(&self, args: Vec<String>) -> Result<std::process::Output, RuntimeError> {
        Command::new(&self.runc.binary)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err(format!("run {}", self.runc.binary.display())))
    }

    async fn signal(&self, id: &str, sig: i32) -> Result<(), RuntimeError> {
        let out = self.runc_cmd(self.runc.kill_args(id, sig, false)).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Oci(runc::error_from_log(
                "",
                &String::from_utf8_lossy(&out.stderr),
            )))
        }
    }

    /// Waits until the container has left the running states, at most
    /// `timeout`.
    async fn wait_stopped(&self, c: &Container, timeout: Duration) -> bool {
        let mut rx = c.changed.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if !c.status().is_running() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// `POST /containers/{id}/stop?t=N&signal=S`.
    pub async fn stop(
        &self,
        name_or_id: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        self.stop_locked(&c, timeout, signal).await
    }

    async fn stop_locked(
        &self,
        c: &Container,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let rec = c.record();
        if !rec.state.status.is_running() {
            return Err(RuntimeError::NotModified);
        }
        if rec.state.status == Status::Paused {
            let _ = self.runc_cmd(self.runc.freeze_args(&rec.id, false)).await;
        }
        let sig = match signal
            .filter(|s| !s.is_empty())
            .or(rec.config.stop_signal.as_deref())
        {
            Some(s) => parse_signal(s)?,
            None => 15,
        };
        let t = timeout
            .or(rec.config.stop_timeout)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        if let Err(e) = self.signal(&rec.id, sig).await {
            warn!(id = rec.short_id(), error = %e, "stop signal");
        }
        let wait = if t < 0 {
            Duration::from_secs(u64::MAX / 4)
        } else {
            Duration::from_secs(t as u64)
        };
        if !self.wait_stopped(c, wait).await {
            info!(id = rec.short_id(), "did not stop in time; SIGKILL");
            let _ = self.runc_cmd(self.runc.kill_args(&rec.id, 9, true)).await;
            if !self.wait_stopped(c, Duration::from_secs(30)).await {
                return Err(RuntimeError::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    rec.short_id()
                )));
            }
        }
        Ok(())
    }

    /// `POST /containers/{id}/kill?signal=S`.
    pub async fn kill(&self, name_or_id: &str, signal: Option<&str>) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let rec = c.record();
        let sig = parse_signal(signal.filter(|s| !s.is_empty()).unwrap_or("KILL"))?;
        if !rec.state.status.is_running() {
            return Err(RuntimeError::Conflict(format!(
                "cannot kill container: {name_or_id}: container {} is not running",
                rec.id
            )));
        }
        self.signal(&rec.id, sig).await?;
        if sig == 9 {
            self.wait_stopped(&c, Duration::from_secs(10)).await;
        }
        Ok(())
    }

    /// `POST /containers/{id}/restart`.
    pub async fn restart(
        self: &Arc<Self>,
        name_or_id: &str,
        timeout: Option<i64>,
    ) -> Result<(), RuntimeError> {
        match self.stop(name_or_id, timeout, None).await {
            Ok(()) | Err(RuntimeError::NotModified) => {}
            Err(e) => return Err(e),
        }
        let c = self.get(name_or_id)?;
        c.update(|r| r.restart_count += 1);
        self.start(name_or_id).await
    }

    /// `POST /containers/{id}/pause` and `/unpause`.
    pub async fn pause(&self, name_or_id: &str, pause: bool) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if rec.state.status != from {
            return Err(RuntimeError::Conflict(if pause {
                format!("container {} is not running", rec.id)
            } else {
                format!("container {} is not paused", rec.id)
            }));
        }
        let out = self.runc_cmd(self.runc.freeze_args(&rec.id, pause)).await?;
        if !out.status.success() {
            return Err(RuntimeError::Oci(runc::error_from_log(
                "",
                &String::from_utf8_lossy(&out.stderr),
            )));
        }
        c.update(|r| r.state.status = to);
        self.save(&c)
    }

    /// `POST /networks/{id}/connect`: the container joins an overlay
    /// network, at once if it runs (a new interface), else at its start.
    pub async fn connect(
        self: &Arc<Self>,
        name_or_id: &str,
        network: &str,
    ) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        if rec.net_mode == NetMode::Host {
            return Err(RuntimeError::Invalid(
                "container sharing network namespace with host can not be connected to a network"
                    .to_owned(),
            ));
        }
        let task = task_of(&rec.config);
        let att = self
            .cluster()?
            .attach(network, &rec.id, false, task.as_deref())
            .await?;
        if rec.networks.iter().any(|n| n.id == att.network_id) {
            return Err(RuntimeError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, att.name
            )));
        }
        let nref = container::NetworkRef {
            id: att.network_id.clone(),
            name: att.name.clone(),
        };
        if rec.state.status.is_running() {
            let used: Vec<String> = rec
                .overlays
                .iter()
                .map(|o| o.ifname.clone())
                .chain(rec.endpoint.iter().map(|_| "eth0".to_owned()))
                .collect();
            let index = (0..)
                .find(|i| !used.contains(&format!("eth{i}")))
                .unwrap_or(0);
            let mut cleanup = Cleanup {
                rt: self.clone(),
                id: rec.id.clone(),
                endpoint: None,
                overlays: Vec::new(),
                addresses: Vec::new(),
                armed: false,
            };
            let ns = self.netns_path(&rec.id);
            let ep = match self
                .join_overlay(&mut cleanup, &rec, &att.network_id, &ns, index)
                .await
            {
                Ok(ep) => ep,
                Err(e) => {
                    for n in &cleanup.addresses {
                        self.cluster()?.detach(n, &rec.id).await;
                    }
                    return Err(e);
                }
            };
            c.update(|r| {
                r.networks.push(nref);
                r.overlays.push(ep);
            });
            let rec = c.record();
            self.write_etc_files(
                &rec,
                &self.dir(&rec.id),
                rec.endpoint.as_ref(),
                &rec.overlays,
                false,
            )?;
        } else {
            c.update(|r| r.networks.push(nref));
        }
        self.save(&c)
    }

    /// `POST /networks/{id}/disconnect`.
    pub async fn disconnect(&self, name_or_id: &str, network: &str) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        let Some(nref) = rec
            .networks
            .iter()
            .find(|n| n.name == network || n.id == network || n.id.starts_with(network))
            .cloned()
        else {
            return Err(RuntimeError::Forbidden(format!(
                "container {} is not connected to network {network}",
                rec.id
            )));
        };
        if let Some(ep) = rec.overlays.iter().find(|o| o.network_id == nref.id) {
            self.overlay.leave(&rec.id, ep).await;
            self.cluster()?.detach(&nref.id, &rec.id).await;
        }
        c.update(|r| {
            r.networks.retain(|n| n.id != nref.id);
            r.overlays.retain(|o| o.network_id != nref.id);
        });
        if rec.state.status.is_running() {
            let rec = c.record();
            self.write_etc_files(
                &rec,
                &self.dir(&rec.id),
                rec.endpoint.as_ref(),
                &rec.overlays,
                false,
            )?;
        }
        self.save(&c)
    }

    /// The containers of this node on an overlay network, with their
    /// endpoints (`docker network inspect`).
    pub fn on_network(
        &self,
        network_id: &str,
    ) -> Vec<(ContainerRecord, crate::overlay::OverlayEndpoint)> {
        self.list()
            .into_iter()
            .filter_map(|c| {
                let r = c.record();
                let ep = r
                    .overlays
                    .iter()
                    .find(|o| o.network_id == network_id)?
                    .clone();
                Some((r, ep))
            })
            .collect()
    }

    /// Whether any container of this node is on `network_id` (running or not).
    pub fn uses_network(&self, network_id: &str) -> bool {
        self.list()
            .iter()
            .any(|c| c.record().networks.iter().any(|n| n.id == network_id))
    }

    /// `DELETE /containers/{id}?force=`.
    pub async fn remove(&self, name_or_id: &str, force: bool) -> Result<(), RuntimeError> {
        let c = self.get(name_or_id)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        if rec.state.status.is_running() {
            if !force {
                return Err(RuntimeError::Conflict(format!(
                    "cannot remove container \"/{}\": container is {}: stop the container before removing or force remove",
                    rec.name,
                    rec.state.status.as_str()
                )));
            }
            if rec.state.status == Status::Paused {
                let _ = self.runc_cmd(self.runc.freeze_args(&rec.id, false)).await;
            }
            let _ = self.runc_cmd(self.runc.kill_args(&rec.id, 9, true)).await;
            if !self.wait_stopped(&c, Duration::from_secs(30)).await {
                return Err(RuntimeError::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    rec.short_id()
                )));
            }
        }
        c.update(|r| r.state.status = Status::Removing);
        let _ = self.save(&c);
        let rec = c.record();
        self.teardown(&rec.id, rec.endpoint.as_ref(), &rec.overlays)
            .await;
        let paths = self.shim_paths(&rec.id);
        let _ = std::fs::remove_dir_all(paths.dir());
        let dir = self.dir(&rec.id);
        // Never delete across a mount that is still there.
        rootfs::unmount_all_under(&dir)
            .map_err(|e| RuntimeError::Internal(crate::error_chain(&e)))?;
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        self.execs.forget_container(&rec.id);
        self.lock().remove(&rec.id);
        c.update(|_| ());
        c.removed.send_replace(true);
        info!(id = rec.short_id(), "container removed");
        Ok(())
    }

    /// `POST /containers/{id}/wait?condition=`, first half: what the wait
    /// compares against is taken now, before the answer's headers go out
    /// (the docker CLI starts the container once it has them).
    pub fn wait_begin(&self, c: Arc<Container>, condition: WaitCondition) -> Waiter {
        Waiter {
            changed: c.changed.subscribe(),
            removed: c.removed.subscribe(),
            exits: c.exits.load(std::sync::atomic::Ordering::SeqCst),
            condition,
            c,
        }
    }

    /// Registers an attach client of a container that has not started.
    fn add_pending(&self, c: &Container, p: attach::Pending) {
        c.pending.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
}

/// Undoes a half-made start.
struct Cleanup {
    rt: Arc<Runtime>,
    id: String,
    endpoint: Option<BridgeEndpoint>,
    overlays: Vec<crate::overlay::OverlayEndpoint>,
    /// Networks where an address was allocated but no endpoint made.
    addresses: Vec<String>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let rt = self.rt.clone();
        let id = self.id.clone();
        let ep = self.endpoint.take();
        let overlays = std::mem::take(&mut self.overlays);
        let addresses = std::mem::take(&mut self.addresses);
        tokio::spawn(async move {
            rt.teardown(&id, ep.as_ref(), &overlays).await;
            if let Ok(cluster) = rt.cluster() {
                for n in addresses
                    .iter()
                    .filter(|n| !overlays.iter().any(|o| &o.network_id == *n))
                {
                    cluster.detach(n, &id).await;
                }
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(s: Option<&str>) -> Result<Self, RuntimeError> {
        match s.unwrap_or("") {
            "" | "not-running" => Ok(Self::NotRunning),
            "next-exit" => Ok(Self::NextExit),
            "removed" => Ok(Self::Removed),
            other => Err(RuntimeError::Invalid(format!(
                "invalid condition: \"{other}\""
            ))),
        }
    }
}

/// A wait registered by [`Runtime::wait_begin`].
pub struct Waiter {
    c: Arc<Container>,
    changed: watch::Receiver<u64>,
    removed: watch::Receiver<bool>,
    exits: u64,
    condition: WaitCondition,
}

impl Waiter {
    /// Resolves when the condition holds: the exit code and the error of
    /// the last run, if any.
    pub async fn wait(mut self) -> (i64, Option<String>) {
        loop {
            let rec = self.c.record();
            let done = match self.condition {
                WaitCondition::NotRunning => !rec.state.status.is_running(),
                WaitCondition::NextExit => {
                    self.c.exits.load(std::sync::atomic::Ordering::SeqCst) > self.exits
                }
                WaitCondition::Removed => *self.removed.borrow(),
            };
            if done {
                let err = (!rec.state.error.is_empty()).then(|| rec.state.error.clone());
                return (rec.state.exit_code, err);
            }
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return (rec.state.exit_code, None) },
                r = self.removed.changed() => if r.is_err() { return (rec.state.exit_code, None) },
            }
        }
    }
}

/// Connects to a shim: hello, then its welcome line.
pub async fn shim_connect(paths: &ShimPaths, hello: &Hello) -> io::Result<(UnixStream, Welcome)> {
    let mut s = UnixStream::connect(paths.socket()).await?;
    let mut line = serde_json::to_vec(hello).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 4096 {
        if s.read(&mut byte).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "shim hung up"));
        }
        if byte[0] == b'\n' {
            let w: Welcome = serde_json::from_slice(&buf).map_err(io::Error::other)?;
            return Ok((s, w));
        }
        buf.push(byte[0]);
    }
    Err(io::Error::other("shim welcome line too long"))
}

/// Signal names as Docker takes them: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<i32, RuntimeError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    } else {
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if let Ok(sig) = name.parse::<nix::sys::signal::Signal>() {
            return Ok(sig as i32);
        }
    }
    Err(RuntimeError::Invalid(format!("Invalid signal: {s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_conditions() {
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert_eq!(parse_signal("SIGQUIT").ok(), Some(3));
        assert_eq!(parse_signal("10").ok(), Some(10));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert_eq!(
            WaitCondition::parse(Some("removed")).ok(),
            Some(WaitCondition::Removed)
        );
        assert!(WaitCondition::parse(Some("later")).is_err());
    }
}
