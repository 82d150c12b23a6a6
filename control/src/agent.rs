//! The node agent: its place in a swarm (none, worker or manager), the
//! transitions between them (`swarm init`, `join`, `leave`), and the
//! long-running parts each place needs (gossip; for managers the store,
//! the management port and the node-status reconciler).
//!
//! A node's identity (ID, certificate, key, the managers it knows) is
//! persisted in `<data-dir>/node.json`, so a restarted agent resumes with
//! no manual step.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bollard_stubs::models::{
    NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, SwarmInitRequest, SwarmJoinRequest,
    SwarmSpec, SwarmSpecCaConfig, SwarmSpecDispatcher, SwarmSpecEncryptionConfig,
    SwarmSpecOrchestration, SwarmSpecRaft,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::error::{ALREADY_IN_SWARM, ApiError},
    gossip::{Gossip, GossipConfig},
    images::{ImageError, ImageStore, ImageUser, RegistryConfig},
    metrics::Metrics,
    mgmt::{self, ErrorKind, JoinRequest, JoinResponse, ManagerPeer, MgmtError, Peer, Response},
    pki::{self, NodeIdentity, RootCa},
    store::{
        ClusterRecord, Command, NodeDescription, NodeRecord, NodeState, RaftReply, RaftRpc, Store,
    },
    token::{self, JoinToken, TokenError},
    util::now_rfc3339,
};

pub const DEFAULT_LISTEN_PORT: u16 = 2377;
pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;
const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
const DEFAULT_SUBNET_SIZE: u32 = 24;
/// A node that never showed up in gossip is marked down after this long.
const GOSSIP_GRACE: Duration = Duration::from_secs(8);
const RECONCILE_EVERY: Duration = Duration::from_millis(200);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const VALID_TOKEN_NEEDED: &str = "A valid join token is necessary to join this cluster";

/// Settings of the agent process (its command line, typed).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub hostname: String,
    pub advertise_addr: Option<IpAddr>,
    pub listen_addr: Option<SocketAddr>,
    pub gossip_port: u16,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub runtime: crate::runtime::RuntimeConfig,
    /// The interface of the underlay (overlay MTUs follow its MTU).
    pub underlay_iface: Option<String>,
}

/// What a node remembers of its swarm membership.
#[derive(Clone, Serialize, Deserialize)]
pub struct LocalNode {
    pub node_id: String,
    pub cluster_id: String,
    pub manager: bool,
    pub identity: NodeIdentity,
    /// Hex of the 32-byte gossip key.
    pub gossip_key: String,
    pub advertise_addr: IpAddr,
    pub listen_addr: SocketAddr,
    pub gossip_port: u16,
    pub managers: Vec<ManagerPeer>,
    pub data_path_port: u32,
}

impl LocalNode {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    fn load(data_dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(Self::path(data_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary file and renamed, readable by root only.
    fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = data_dir.join("node.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, Self::path(data_dir))
    }

    fn gossip_key(&self) -> Option<[u8; 32]> {
        hex::decode(&self.gossip_key).ok()?.try_into().ok()
    }

    pub fn addr_string(&self) -> String {
        self.advertise_addr.to_string()
    }
}

/// The running parts of a node that is in a swarm.
pub struct Active {
    pub local: LocalNode,
    /// The swarm's managers as this node last heard of them (workers keep
    /// it current through their heartbeats).
    pub managers: Arc<std::sync::RwLock<Vec<ManagerPeer>>>,
    /// Present on managers.
    pub store: Option<Arc<Store>>,
    pub gossip: Gossip,
    cancel: CancellationToken,
}

impl Active {
    /// Stops everything this membership runs.
    async fn stop(&self) {
        self.cancel.cancel();
        self.gossip.stopped().await;
        if let Some(store) = &self.store {
            store.shutdown().await;
        }
    }
}

/// How a manager's store starts.
enum Boot {
    /// From what is on disk (or, for a worker, nothing to start).
    Resume,
    /// A new swarm: this manager alone, with the cluster and itself.
    Init(Box<(ClusterRecord, NodeRecord)>),
    /// A manager that just joined: empty until the leader replicates.
    JoinManager,
    /// A store seeded with the state of a swarm that lost its quorum,
    /// started as a new Raft group of one.
    ForceNew,
}

/// `ip:port` of a manager's management listener, as peers dial it.
fn manager_addr(local: &LocalNode) -> String {
    SocketAddr::new(local.advertise_addr, local.listen_addr.port()).to_string()
}

/// A manager that joined asks the managers it knows to add it to the Raft
/// group (the request reaches the leader), over mutual TLS.
async fn join_raft_group(local: &LocalNode, me: &str) -> Result<(), ApiError> {
    let req = mgmt::Request::AddManager {
        node_id: local.node_id.clone(),
        addr: me.to_owned(),
    };
    let mut last = None;
    for m in local.managers.iter().filter(|m| m.node_id != local.node_id) {
        match mgmt::call_authenticated(&m.addr, &local.identity, &req, Duration::from_secs(40))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                warn!(manager = %m.addr, error = %e, "add to raft group");
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(e) => ApiError::internal("join the managers' raft group", &e),
        None => ApiError::Internal("no manager to join".into()),
    })
}

pub struct Agent {
    pub cfg: AgentConfig,
    pub metrics: Arc<Metrics>,
    /// The node's images, at `<data-dir>/images`.
    pub images: Arc<ImageStore>,
    /// The node's containers (local, in a swarm or not).
    pub runtime: Arc<crate::runtime::Runtime>,
    /// The overlay networks' kernel state on this node.
    pub overlay: Arc<crate::overlay::Overlay>,
    /// Held for the whole of a transition (init, join, leave), so two
    /// never interleave. Lock order: `transition` before `active`.
    transition: Mutex<()>,
    active: RwLock<Option<Arc<Active>>>,
    engine_id: String,
    /// Set while a role switch (promotion, demotion) is under way.
    switching: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data dir {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("resume swarm membership")]
    Resume(#[source] ApiError),
    #[error("open image store")]
    Images(#[source] ImageError),
    #[error("open the container runtime")]
    Runtime(#[source] crate::runtime::RuntimeError),
}

impl Agent {
    /// Starts the agent, resuming the swarm membership it had.
    pub async fn start(cfg: AgentConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, AgentError> {
        let data_err = |source| AgentError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(data_err)?;
        let local = LocalNode::load(&cfg.data_dir).map_err(data_err)?;
        let engine_id = engine_id(&cfg.data_dir).map_err(data_err)?;
        let images = Arc::new(
            ImageStore::open(
                &cfg.data_dir.join("images"),
                RegistryConfig {
                    mirrors: cfg.registry_mirrors.clone(),
                    insecure: cfg.insecure_registries.clone(),
                },
            )
            .map_err(AgentError::Images)?,
        );
        let overlay = crate::overlay::Overlay::new(cfg.underlay_iface.clone());
        let runtime =
            crate::runtime::Runtime::open(cfg.runtime.clone(), images.clone(), overlay.clone())
                .await
                .map_err(AgentError::Runtime)?;
        let agent = Arc::new(Self {
            cfg,
            metrics,
            images,
            runtime,
            overlay,
            transition: Mutex::new(()),
            active: RwLock::new(None),
            engine_id,
            switching: std::sync::atomic::AtomicBool::new(false),
        });
        agent
            .runtime
            .set_cluster(Arc::new(AgentNetworks(Arc::downgrade(&agent))));
        agent.overlay.spawn();
        if let Some(local) = local {
            info!(node = %local.node_id, manager = local.manager, "resuming swarm membership");
            let active = agent
                .activate(local, Boot::Resume)
                .await
                .map_err(AgentError::Resume)?;
            *agent.active.write().await = Some(active);
        }
        agent.runtime.restore_all().await;
        Ok(agent)
    }

    /// The engine's own ID (`docker info` ID), stable across restarts.
    pub fn engine_id(&self) -> String {
        self.engine_id.clone()
    }

    /// The containers of this node and the images they use.
    pub fn image_users(&self) -> Vec<ImageUser> {
        self.runtime.image_users()
    }

    /// An overlay network for a container on this node: a manager answers
    /// from its store (and allocates the address through Raft); a worker
    /// asks a manager.
    pub async fn attach_network(
        &self,
        network: &str,
        container_id: &str,
        allocate: bool,
        task: Option<&str>,
    ) -> Result<crate::overlay::Attachment, ApiError> {
        let active = self
            .active()
            .await
            .ok_or_else(|| ApiError::NotFound(format!("network {network} not found")))?;
        if let Some(store) = &active.store {
            return attach_on_manager(
                store,
                &active.local.node_id,
                network,
                container_id,
                allocate,
                task,
            )
            .await
            .map_err(|(kind, message)| remote_error(kind, message));
        }
        let req = mgmt::Request::AttachNetwork {
            network: network.to_owned(),
            container_id: container_id.to_owned(),
            allocate,
            task_id: task.map(str::to_owned),
        };
        match self.ask_managers(&active, &req).await? {
            Response::Attached(a) => Ok(*a),
            _ => Err(ApiError::Internal(
                "unexpected answer to a network attach".into(),
            )),
        }
    }

    /// Gives back a container's address on a network.
    pub async fn detach_network(
        &self,
        network_id: &str,
        container_id: &str,
    ) -> Result<(), ApiError> {
        let Some(active) = self.active().await else {
            return Ok(());
        };
        if let Some(store) = &active.store {
            store
                .write(Command::ReleaseAddress {
                    network_id: network_id.to_owned(),
                    container_id: container_id.to_owned(),
                })
                .await?;
            return Ok(());
        }
        let req = mgmt::Request::DetachNetwork {
            network_id: network_id.to_owned(),
            container_id: container_id.to_owned(),
        };
        self.ask_managers(&active, &req).await.map(|_| ())
    }

    /// A request to the managers this worker knows, in turn, until one
    /// answers; a refusal is the answer.
    pub async fn ask_managers(
        &self,
        active: &Active,
        req: &mgmt::Request,
    ) -> Result<Response, ApiError> {
        let managers = active
            .managers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last = None;
        for m in managers
            .iter()
            .filter(|m| m.node_id != active.local.node_id)
        {
            match mgmt::call_authenticated(
                &m.addr,
                &active.local.identity,
                req,
                Duration::from_secs(15),
            )
            .await
            {
                Ok(Response::Error { kind, message }) => return Err(remote_error(kind, message)),
                Ok(r) => return Ok(r),
                Err(MgmtError::Remote { kind, message }) => {
                    return Err(remote_error(kind, message));
                }
                Err(e) => {
                    warn!(manager = %m.addr, error = %e, "ask a manager");
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(e) => ApiError::Unavailable(format!("no manager answered: {e}")),
            None => ApiError::Unavailable("this node knows no manager".into()),
        })
    }

    pub async fn active(&self) -> Option<Arc<Active>> {
        self.active.read().await.clone()
    }

    /// This node's description, as it reports it to managers.
    pub fn description(&self, addr: IpAddr, gossip_port: u16, listen_port: u16) -> NodeDescription {
        NodeDescription {
            hostname: self.cfg.hostname.clone(),
            addr: addr.to_string(),
            gossip_port,
            os: std::env::consts::OS.to_owned(),
            architecture: std::env::consts::ARCH.to_owned(),
            engine_version: env!("CARGO_PKG_VERSION").to_owned(),
            nano_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as i64 * 1_000_000_000)
                .unwrap_or(0),
            memory_bytes: crate::util::mem_total_bytes(),
            listen_port,
        }
    }

    /// Starts what a node in a swarm runs. Managers open their store
    /// (Raft) and serve the management port; `boot` says whether the store
    /// is resumed, created with a new swarm, or filled by joining managers.
    async fn activate(
        self: &Arc<Self>,
        local: LocalNode,
        boot: Boot,
    ) -> Result<Arc<Active>, ApiError> {
        let cancel = CancellationToken::new();
        let managers = Arc::new(std::sync::RwLock::new(local.managers.clone()));
        match self.start_parts(&local, boot, &cancel, &managers).await {
            Ok((store, gossip)) => {
                if let IpAddr::V4(vtep) = local.advertise_addr {
                    self.overlay
                        .set_node(Some((vtep, gossip.endpoints.clone())))
                        .await;
                }
                *self.metrics.raft.lock().unwrap_or_else(|e| e.into_inner()) = store.clone();
                Ok(Arc::new(Active {
                    local,
                    managers,
                    store,
                    gossip,
                    cancel,
                }))
            }
            Err((e, store)) => {
                cancel.cancel();
                if let Some(store) = store {
                    store.shutdown().await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn start_parts(
        self: &Arc<Self>,
        local: &LocalNode,
        boot: Boot,
        cancel: &CancellationToken,
        managers: &Arc<std::sync::RwLock<Vec<ManagerPeer>>>,
    ) -> Result<(Option<Arc<Store>>, Gossip), (ApiError, Option<Arc<Store>>)> {
        let key = local.gossip_key().ok_or_else(|| {
            (
                ApiError::Internal("stored gossip key is invalid".into()),
                None,
            )
        })?;
        let store = if local.manager {
            let tls = local
                .identity
                .client_config()
                .map_err(|e| (ApiError::internal("management TLS", &e), None))?;
            let store = Store::open(
                &self.cfg.data_dir.join("swarm.redb"),
                &local.node_id,
                Arc::new(tls),
            )
            .await
            .map_err(|e| (ApiError::internal("open store", &e), None))?;
            Some(Arc::new(store))
        } else {
            None
        };
        let fail = |e: ApiError| (e, store.clone());
        if let Some(store) = &store {
            let listener = tokio::net::TcpListener::bind(local.listen_addr)
                .await
                .map_err(|e| {
                    fail(ApiError::internal(
                        &format!("listen on {}", local.listen_addr),
                        &e,
                    ))
                })?;
            let tls = local
                .identity
                .server_config()
                .map_err(|e| fail(ApiError::internal("management TLS", &e)))?;
            let handler = Arc::new(ManagerHandler {
                store: store.clone(),
            });
            info!(addr = %local.listen_addr, "management port listening");
            tokio::spawn(mgmt::serve(
                listener,
                Arc::new(tls),
                handler,
                cancel.clone(),
            ));
        }
        let mut seeds: Vec<SocketAddr> = local.managers.iter().map(|m| m.gossip).collect();
        if let Some(store) = &store {
            store.read(|s| {
                for n in s.nodes.values() {
                    if let Ok(ip) = n.description.addr.parse::<IpAddr>() {
                        seeds.push(SocketAddr::new(ip, n.description.gossip_port));
                    }
                }
            });
        }
        let me = SocketAddr::new(local.advertise_addr, local.gossip_port);
        seeds.retain(|s| *s != me);
        seeds.sort();
        seeds.dedup();
        let gossip = Gossip::spawn(
            GossipConfig {
                node_id: local.node_id.clone(),
                bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), local.gossip_port),
                advertise: me,
                key,
                seeds,
            },
            self.metrics.clone(),
            cancel.clone(),
        )
        .await
        .map_err(|e| fail(ApiError::internal("start gossip", &e)))?;
        if let Some(store) = &store {
            let me = manager_addr(local);
            match boot {
                Boot::Resume => {}
                Boot::ForceNew => store.initialize(me).await.map_err(|e| fail(e.into()))?,
                Boot::Init(init) => {
                    let (cluster, node) = *init;
                    store.initialize(me).await.map_err(|e| fail(e.into()))?;
                    store
                        .write(Command::InitCluster {
                            cluster: Box::new(cluster),
                            node: Box::new(node),
                        })
                        .await
                        .map_err(|e| fail(e.into()))?;
                }
                Boot::JoinManager => {
                    join_raft_group(local, &me).await.map_err(fail)?;
                    if !store.wait_for_cluster(Duration::from_secs(20)).await {
                        return Err(fail(ApiError::Internal(
                            "this manager did not receive the swarm state within 20 s".into(),
                        )));
                    }
                }
            }
        }
        let description = self.description(
            local.advertise_addr,
            local.gossip_port,
            local.listen_addr.port(),
        );
        if let Some(store) = &store {
            tokio::spawn(crate::orchestrator::run(store.clone(), cancel.clone()));
        }
        tokio::spawn(crate::worker::run(
            self.clone(),
            local.node_id.clone(),
            store.clone(),
            cancel.clone(),
        ));
        if let Some(store) = &store {
            tokio::spawn(reconcile_node_states(
                self.clone(),
                store.clone(),
                gossip.clone(),
                local.node_id.clone(),
                description,
                cancel.clone(),
            ));
        } else {
            tokio::spawn(heartbeat(
                self.clone(),
                local.clone(),
                managers.clone(),
                description,
                cancel.clone(),
            ));
        }
        Ok((store, gossip))
    }

    /// Starts a switch to the role the swarm now gives this node, unless
    /// one is under way.
    fn begin_switch(self: &Arc<Self>, to_manager: bool) {
        use std::sync::atomic::Ordering;
        if self.switching.swap(true, Ordering::AcqRel) {
            return;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            agent.switch_role(to_manager).await;
            agent.switching.store(false, Ordering::Release);
        });
    }

    /// Becomes a manager (after `node promote`) or a worker (after `node
    /// demote`): a certificate for the new role from another manager, then
    /// the parts of the new role. A promoted node joins the Raft group; a
    /// demoted one drops its copy of the store.
    async fn switch_role(self: &Arc<Self>, to_manager: bool) {
        let _t = self.transition.lock().await;
        let Some(active) = self.active().await else {
            return;
        };
        if active.local.manager == to_manager {
            return;
        }
        let (key_pem, csr_der) = match pki::new_csr() {
            Ok(k) => k,
            Err(error) => {
                warn!(%error, "role switch: signing request");
                return;
            }
        };
        let mut managers = active
            .managers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(store) = &active.store {
            managers = store.read(managers_of);
        }
        let req = mgmt::Request::Renew { csr_der };
        let mut renewed = None;
        for m in managers
            .iter()
            .filter(|m| m.node_id != active.local.node_id)
        {
            match mgmt::call_authenticated(
                &m.addr,
                &active.local.identity,
                &req,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(Response::Renewed {
                    cert_pem,
                    manager,
                    managers,
                }) if manager == to_manager => {
                    renewed = Some((cert_pem, managers));
                    break;
                }
                Ok(_) => {}
                Err(error) => warn!(manager = %m.addr, %error, "role switch: renew certificate"),
            }
        }
        let Some((cert_pem, managers)) = renewed else {
            warn!(
                to_manager,
                "role switch: no manager issued a certificate; will retry"
            );
            return;
        };
        if let Some(store) = &active.store {
            // A demoted manager keeps its Raft node running until the group
            // no longer counts it (a leader must commit its own removal).
            let deadline = Instant::now() + Duration::from_secs(15);
            while !store.removed() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if store.is_leader() {
                // Let it commit its own removal and answer the request.
                let deadline = Instant::now() + Duration::from_secs(5);
                while store.is_leader() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        info!(node = %active.local.node_id, to_manager, "switching role");
        let old = active.local.clone();
        let mut local = old.clone();
        local.manager = to_manager;
        local.identity.cert_pem = cert_pem;
        local.identity.key_pem = key_pem;
        local.managers = managers;
        active.stop().await;
        *self.active.write().await = None;
        let store_path = self.cfg.data_dir.join("swarm.redb");
        let _ = std::fs::remove_file(&store_path);
        let boot = if to_manager {
            Boot::JoinManager
        } else {
            Boot::Resume
        };
        match self.activate(local.clone(), boot).await {
            Ok(a) => {
                if let Err(error) = local.save(&self.cfg.data_dir) {
                    warn!(%error, "save node state");
                }
                *self.active.write().await = Some(a);
            }
            Err(error) => {
                warn!(%error, "role switch failed; staying a worker");
                let _ = std::fs::remove_file(&store_path);
                let mut fallback = old;
                fallback.manager = false;
                if let Ok(a) = self.activate(fallback, Boot::Resume).await {
                    *self.active.write().await = Some(a);
                }
            }
        }
    }

    /// `POST /swarm/init`: a new swarm with this node as its manager.
    pub async fn init(self: &Arc<Self>, req: SwarmInitRequest) -> Result<String, ApiError> {
        let _t = self.transition.lock().await;
        if req.force_new_cluster == Some(true) {
            return self.force_new_cluster().await;
        }
        if self.active.read().await.is_some() {
            return Err(ApiError::Unavailable(ALREADY_IN_SWARM.into()));
        }
        let listen_addr = parse_listen_addr(req.listen_addr.as_deref(), self.cfg.listen_addr)?;
        let advertise_addr = self.choose_advertise_addr(req.advertise_addr.as_deref(), None)?;
        let data_path_port = match req.data_path_port.unwrap_or(0) {
            0 => DEFAULT_DATA_PATH_PORT,
            p if (1024..=49151).contains(&p) => p,
            p => {
                return Err(ApiError::BadRequest(format!(
                    "invalid data path port {p}: it must be within 1024 - 49151 range"
                )));
            }
        };
        let (default_addr_pool, subnet_size) =
            validate_pools(req.default_addr_pool.unwrap_or_default(), req.subnet_size)?;

        let cluster_id = token::random_id();
        let node_id = token::random_id();
        let root_ca = RootCa::generate(&cluster_id).map_err(|e| ApiError::internal("CA", &e))?;
        let ca_der = root_ca
            .cert_der()
            .map_err(|e| ApiError::internal("CA", &e))?;
        let identity = root_ca
            .issue_local(&node_id, &cluster_id, true)
            .map_err(|e| ApiError::internal("node certificate", &e))?;
        let mut gossip_key = [0u8; 32];
        rand::fill(&mut gossip_key);
        let now = now_rfc3339();
        let manager_addr = SocketAddr::new(advertise_addr, listen_addr.port()).to_string();
        let cluster = ClusterRecord {
            id: cluster_id.clone(),
            created_at: now.clone(),
            updated_at: now.clone(),
            version: 0,
            spec: swarm_spec_with_defaults(req.spec.unwrap_or_default()),
            root_ca,
            worker_token: JoinToken::generate(&ca_der).expose().into(),
            manager_token: JoinToken::generate(&ca_der).expose().into(),
            gossip_key: hex::encode(gossip_key).into(),
            default_addr_pool,
            subnet_size,
            data_path_port,
        };
        let node = NodeRecord {
            id: node_id.clone(),
            created_at: now.clone(),
            updated_at: now,
            version: 0,
            spec: NodeSpec {
                role: Some(NodeSpecRoleEnum::MANAGER),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                ..Default::default()
            },
            description: self.description(advertise_addr, self.cfg.gossip_port, listen_addr.port()),
            state: NodeState::Ready,
            message: String::new(),
            manager_addr: Some(manager_addr.clone()),
        };
        let local = LocalNode {
            node_id: node_id.clone(),
            cluster_id,
            manager: true,
            identity,
            gossip_key: hex::encode(gossip_key),
            advertise_addr,
            listen_addr,
            gossip_port: self.cfg.gossip_port,
            managers: vec![ManagerPeer {
                node_id: node_id.clone(),
                addr: manager_addr,
                gossip: SocketAddr::new(advertise_addr, self.cfg.gossip_port),
            }],
            data_path_port,
        };
        self.enter_swarm(local, Boot::Init(Box::new((cluster, node))))
            .await?;
        info!(node = %node_id, "swarm initialized");
        Ok(node_id)
    }

    /// `swarm init --force-new-cluster`: a manager that lost its quorum for
    /// good starts a new Raft group of one over the state it has, keeping
    /// the swarm's identity, nodes and tokens. (Called with `transition`
    /// held.)
    async fn force_new_cluster(self: &Arc<Self>) -> Result<String, ApiError> {
        let active = self.active.read().await.clone();
        let Some(active) = active.filter(|a| a.store.is_some()) else {
            return Err(ApiError::BadRequest(
                "--force-new-cluster needs this node to be a manager of an existing swarm".into(),
            ));
        };
        let Some(store) = &active.store else {
            return Err(ApiError::Internal("manager without a store".into()));
        };
        let state = store.read(Clone::clone);
        if state.cluster.is_none() {
            return Err(ApiError::BadRequest(
                "--force-new-cluster needs the swarm state, and this manager has none".into(),
            ));
        }
        warn!(node = %active.local.node_id, "forcing a new cluster from this manager's state");
        active.stop().await;
        *self.active.write().await = None;
        let path = self.cfg.data_dir.join("swarm.redb");
        let old = self.cfg.data_dir.join(format!(
            "swarm.redb.before-force-new-cluster-{}",
            crate::util::unix_nanos()
        ));
        std::fs::rename(&path, &old).map_err(|e| ApiError::internal("keep the old store", &e))?;
        let local = active.local.clone();
        let seeded =
            Store::seed(&path, &state).map_err(|e| ApiError::internal("seed the new store", &e));
        let result = match seeded {
            Ok(()) => self.activate(local.clone(), Boot::ForceNew).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(a) => {
                *self.active.write().await = Some(a);
                info!(old_store = %old.display(), "new cluster formed; the old store was kept");
                Ok(local.node_id)
            }
            Err(e) => {
                // Put the old store back; the node stays as it was.
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::rename(&old, &path);
                if let Ok(a) = self.activate(local, Boot::Resume).await {
                    *self.active.write().await = Some(a);
                }
                Err(e)
            }
        }
    }

    /// Starts a new membership from an empty store (a store left by an
    /// earlier, forced leave would carry its state over), persists the
    /// node's identity, and makes it current; on failure nothing is left.
    /// (Called with `transition` held.)
    async fn enter_swarm(self: &Arc<Self>, local: LocalNode, boot: Boot) -> Result<(), ApiError> {
        let store_path = self.cfg.data_dir.join("swarm.redb");
        let _ = std::fs::remove_file(&store_path);
        let active = match self.activate(local.clone(), boot).await {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_file(&store_path);
                return Err(e);
            }
        };
        if let Err(e) = local.save(&self.cfg.data_dir) {
            active.stop().await;
            let _ = std::fs::remove_file(&store_path);
            return Err(ApiError::internal("save node state", &e));
        }
        *self.active.write().await = Some(active);
        Ok(())
    }

    /// `POST /swarm/join`: joins the swarm of the manager at `RemoteAddrs`.
    pub async fn join(self: &Arc<Self>, req: SwarmJoinRequest) -> Result<(), ApiError> {
        let _t = self.transition.lock().await;
        if self.active.read().await.is_some() {
            return Err(ApiError::Unavailable(ALREADY_IN_SWARM.into()));
        }
        let remote = req
            .remote_addrs
            .as_ref()
            .and_then(|r| r.first())
            .ok_or_else(|| {
                ApiError::BadRequest("at least 1 RemoteAddr is required to join".into())
            })?;
        let remote = with_default_port(remote, DEFAULT_LISTEN_PORT)?;
        let token = JoinToken::parse(req.join_token.as_deref().unwrap_or_default())
            .map_err(|TokenError::Malformed| ApiError::BadRequest("invalid join token".into()))?;
        let listen_addr = parse_listen_addr(req.listen_addr.as_deref(), self.cfg.listen_addr)?;
        let advertise_addr =
            self.choose_advertise_addr(req.advertise_addr.as_deref(), Some(&remote))?;
        let (key_pem, csr_der) =
            pki::new_csr().map_err(|e| ApiError::internal("signing request", &e))?;
        let description =
            self.description(advertise_addr, self.cfg.gossip_port, listen_addr.port());
        info!(manager = %remote, "joining swarm");
        let joined: JoinResponse = mgmt::join(
            &remote,
            &token,
            JoinRequest {
                token: token.expose(),
                csr_der,
                description,
                listen_port: listen_addr.port(),
            },
        )
        .await
        .map_err(join_error)?;
        let ca_der = RootCa {
            cert_pem: joined.ca_cert_pem.clone(),
            key_pem: String::new(),
        }
        .cert_der()
        .map_err(|e| ApiError::internal("CA from manager", &e))?;
        if !token.pins(ca_der.as_ref()) {
            return Err(ApiError::BadRequest(
                "the manager's CA does not match the join token".into(),
            ));
        }
        let local = LocalNode {
            node_id: joined.node_id.clone(),
            cluster_id: joined.cluster_id,
            manager: joined.manager,
            identity: NodeIdentity {
                cert_pem: joined.cert_pem,
                key_pem,
                ca_cert_pem: joined.ca_cert_pem,
            },
            gossip_key: joined.gossip_key,
            advertise_addr,
            listen_addr,
            gossip_port: self.cfg.gossip_port,
            managers: joined.managers,
            data_path_port: joined.data_path_port,
        };
        let boot = if local.manager {
            Boot::JoinManager
        } else {
            Boot::Resume
        };
        let manager = local.manager;
        self.enter_swarm(local, boot).await?;
        info!(node = %joined.node_id, manager, "joined swarm");
        Ok(())
    }

    /// `POST /swarm/leave`.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), ApiError> {
        let _t = self.transition.lock().await;
        let Some(active) = self.active.read().await.clone() else {
            return Err(ApiError::Unavailable(
                "This node is not part of a swarm".into(),
            ));
        };
        if active.local.manager && !force {
            return Err(ApiError::Unavailable(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.".into(),
            ));
        }
        self.overlay.set_node(None).await;
        active.gossip.leave().await;
        active.stop().await;
        *self.metrics.raft.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.active.write().await = None;
        for f in ["node.json", "swarm.redb"] {
            match std::fs::remove_file(self.cfg.data_dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ApiError::internal("remove swarm state", &e)),
            }
        }
        info!(node = %active.local.node_id, "left the swarm");
        Ok(())
    }

    /// The address to advertise: the request's (an IP, `IP:port` or an
    /// interface name), else the agent's `--advertise-addr`, else (joining)
    /// the local address that routes to the manager.
    fn choose_advertise_addr(
        &self,
        requested: Option<&str>,
        remote: Option<&str>,
    ) -> Result<IpAddr, ApiError> {
        if let Some(r) = requested.filter(|r| !r.is_empty()) {
            return parse_advertise_addr(r);
        }
        if let Some(a) = self.cfg.advertise_addr {
            return Ok(a);
        }
        if let Some(Ok(addr)) = remote.map(str::parse::<SocketAddr>) {
            // The local address that routes to the manager.
            let probe =
                std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
                    .and_then(|s| s.connect(addr).map(|_| s))
                    .and_then(|s| s.local_addr());
            if let Ok(local) = probe {
                return Ok(local.ip());
            }
        }
        Err(ApiError::BadRequest(
            "could not choose an IP address to advertise since this system has multiple addresses on different interfaces (use --advertise-addr)".into(),
        ))
    }
}

fn engine_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("engine-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = token::random_id();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// The runtime's way to the swarm's networks: this agent.
struct AgentNetworks(std::sync::Weak<Agent>);

impl crate::runtime::Cluster for AgentNetworks {
    fn attach<'a>(
        &'a self,
        network: &'a str,
        container_id: &'a str,
        allocate: bool,
        task: Option<&'a str>,
    ) -> crate::runtime::BoxFuture<
        'a,
        Result<crate::overlay::Attachment, crate::runtime::RuntimeError>,
    > {
        Box::pin(async move {
            let agent = self.0.upgrade().ok_or_else(|| {
                crate::runtime::RuntimeError::Internal("the agent stopped".into())
            })?;
            agent
                .attach_network(network, container_id, allocate, task)
                .await
                .map_err(runtime_error)
        })
    }

    fn detach<'a>(
        &'a self,
        network_id: &'a str,
        container_id: &'a str,
    ) -> crate::runtime::BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(agent) = self.0.upgrade() else {
                return;
            };
            if let Err(e) = agent.detach_network(network_id, container_id).await {
                warn!(network = %network_id, error = %e, "give back an overlay address");
            }
        })
    }
}

fn runtime_error(e: ApiError) -> crate::runtime::RuntimeError {
    use crate::runtime::RuntimeError as R;
    match e {
        ApiError::NotFound(m) => R::NotFound(m),
        ApiError::Forbidden(m) => R::Forbidden(m),
        ApiError::BadRequest(m) => R::Invalid(m),
        ApiError::Conflict(m) => R::Conflict(m),
        ApiError::Unavailable(m) | ApiError::Internal(m) => R::Internal(m),
    }
}

/// A manager's answer to a network attach, from its store.
async fn attach_on_manager(
    store: &Store,
    node_id: &str,
    network: &str,
    container_id: &str,
    allocate: bool,
    task: Option<&str>,
) -> Result<crate::overlay::Attachment, (ErrorKind, String)> {
    let found = store.read(|s| {
        let n = s.find_network(network)?.clone();
        let port = s
            .cluster
            .as_ref()
            .map_or(DEFAULT_DATA_PATH_PORT, |c| c.data_path_port);
        // A task of a service on this network, run by the caller.
        let task_net = task.and_then(|t| s.tasks.get(t)).is_some_and(|t| {
            t.node_id == node_id
                && s.service(&t.service_id).is_some_and(|svc| {
                    crate::store::services::spec_networks(&svc.spec).contains(&n.id)
                })
        });
        Some((n, port, task_net))
    });
    let Some((net, port, task_net)) = found else {
        return Err((ErrorKind::NotFound, format!("network {network} not found")));
    };
    if !net.attachable && !task_net {
        return Err((
            ErrorKind::PermissionDenied,
            format!(
                "Could not attach to network {network}: network {} not manually attachable",
                net.name
            ),
        ));
    }
    let ip = if allocate {
        store
            .write(Command::AllocateAddress {
                network_id: net.id.clone(),
                holder: crate::store::networks::Holder {
                    node_id: node_id.to_owned(),
                    container_id: container_id.to_owned(),
                },
            })
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Command(c) => (ErrorKind::InvalidArgument, c.to_string()),
                other => (ErrorKind::Unavailable, other.to_string()),
            })?;
        store
            .read(|s| s.network(&net.id).and_then(|n| n.address_of(container_id)))
            .ok_or_else(|| {
                (
                    ErrorKind::Internal,
                    "the address was not recorded".to_owned(),
                )
            })?
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    Ok(crate::overlay::Attachment {
        network_id: net.id.clone(),
        name: net.name.clone(),
        subnet: net.subnet,
        gateway: net.gateway,
        vni: net.vni,
        mtu: net.mtu(),
        ip,
        data_path_port: u16::try_from(port).unwrap_or(4789),
        created_at: net.created_at.clone(),
        labels: net.labels.clone(),
        options: net.options.clone(),
        attachable: net.attachable,
        internal: net.internal,
        ip_range: net.ip_range,
    })
}

fn remote_error(kind: ErrorKind, message: String) -> ApiError {
    match kind {
        ErrorKind::InvalidArgument => ApiError::BadRequest(message),
        ErrorKind::PermissionDenied => ApiError::Forbidden(message),
        ErrorKind::NotFound => ApiError::NotFound(message),
        ErrorKind::Unavailable => ApiError::Unavailable(message),
        ErrorKind::Internal => ApiError::Internal(message),
    }
}

fn join_error(e: MgmtError) -> ApiError {
    match e {
        MgmtError::Remote {
            kind: ErrorKind::InvalidArgument | ErrorKind::PermissionDenied,
            message,
        } => ApiError::BadRequest(message),
        MgmtError::Remote {
            kind: ErrorKind::Unavailable,
            message,
        } => ApiError::Unavailable(message),
        MgmtError::Handshake { addr, source } => ApiError::BadRequest(format!(
            "could not join the swarm at {addr}: {source} (is the join token of this swarm?)"
        )),
        other => ApiError::internal("join", &other),
    }
}

fn parse_advertise_addr(s: &str) -> Result<IpAddr, ApiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return nonzero(ip, s);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return nonzero(sa.ip(), s);
    }
    // An interface name, with an optional port.
    let name = s.split(':').next().unwrap_or(s);
    crate::util::interface_ipv4(name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "advertise address must be a non-zero IP address or network interface (with optional port number): {s}"
        ))
    })
}

fn nonzero(ip: IpAddr, s: &str) -> Result<IpAddr, ApiError> {
    if ip.is_unspecified() {
        return Err(ApiError::BadRequest(format!(
            "advertise address must be a non-zero IP address or network interface (with optional port number): {s}"
        )));
    }
    Ok(ip)
}

fn parse_listen_addr(s: Option<&str>, default: Option<SocketAddr>) -> Result<SocketAddr, ApiError> {
    let fallback = default.unwrap_or(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        DEFAULT_LISTEN_PORT,
    ));
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok(fallback);
    };
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_LISTEN_PORT));
    }
    if let Some(ip) = s.split(':').next().and_then(crate::util::interface_ipv4) {
        let port = s
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(DEFAULT_LISTEN_PORT);
        return Ok(SocketAddr::new(ip, port));
    }
    Err(ApiError::BadRequest(format!("invalid listen address {s}")))
}

fn with_default_port(s: &str, port: u16) -> Result<String, ApiError> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    if s.contains(':') {
        return Ok(s.to_owned());
    }
    Ok(format!("{s}:{port}"))
}

/// Docker's checks on `--default-addr-pool` and its mask length.
fn validate_pools(
    pools: Vec<String>,
    subnet_size: Option<u32>,
) -> Result<(Vec<String>, u32), ApiError> {
    let pools = if pools.is_empty() {
        vec![DEFAULT_ADDR_POOL.to_owned()]
    } else {
        pools
    };
    let size = match subnet_size.unwrap_or(0) {
        0 => DEFAULT_SUBNET_SIZE,
        s => s,
    };
    let mut parsed = Vec::new();
    for p in &pools {
        let net: ipnet::IpNet = p.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "invalid default address pool {p}: invalid CIDR address"
            ))
        })?;
        if net.network() != net.addr() {
            return Err(ApiError::BadRequest(format!(
                "invalid default address pool {p}: the address is not the network address of the prefix (did you mean {}?)",
                net.trunc()
            )));
        }
        let max = u32::from(net.max_prefix_len());
        if size > max || size < u32::from(net.prefix_len()) {
            return Err(ApiError::BadRequest(format!(
                "invalid subnet size {size} for default address pool {p}: it must be between {} and {max}",
                net.prefix_len()
            )));
        }
        for other in &parsed {
            let other: &ipnet::IpNet = other;
            if other.contains(&net.network()) || net.contains(&other.network()) {
                return Err(ApiError::BadRequest(format!(
                    "invalid default address pool {p}: it overlaps with {other}"
                )));
            }
        }
        parsed.push(net);
    }
    Ok((pools, size))
}

/// Docker's defaults for the parts of a swarm spec a client left out (the
/// CLI sends zeros for what the user did not set, and swarmkit reads a zero
/// as "the default").
pub fn swarm_spec_with_defaults(mut spec: SwarmSpec) -> SwarmSpec {
    fn default<T: PartialEq + Default>(v: &mut Option<T>, d: T) {
        if v.as_ref().is_none_or(|x| *x == T::default()) {
            *v = Some(d);
        }
    }
    if spec.name.as_deref().unwrap_or_default().is_empty() {
        spec.name = Some("default".into());
    }
    let o = spec
        .orchestration
        .get_or_insert_with(SwarmSpecOrchestration::default);
    o.task_history_retention_limit.get_or_insert(5);
    let r = spec.raft.get_or_insert_with(SwarmSpecRaft::default);
    default(&mut r.snapshot_interval, 10000);
    r.keep_old_snapshots.get_or_insert(0);
    default(&mut r.log_entries_for_slow_followers, 500);
    default(&mut r.election_tick, 10);
    default(&mut r.heartbeat_tick, 1);
    let d = spec
        .dispatcher
        .get_or_insert_with(SwarmSpecDispatcher::default);
    default(&mut d.heartbeat_period, 5_000_000_000);
    let c = spec
        .ca_config
        .get_or_insert_with(SwarmSpecCaConfig::default);
    default(&mut c.node_cert_expiry, 7_776_000_000_000_000);
    let e = spec
        .encryption_config
        .get_or_insert_with(SwarmSpecEncryptionConfig::default);
    e.auto_lock_managers.get_or_insert(false);
    spec.task_defaults.get_or_insert_with(Default::default);
    spec
}

/// The manager side of the management port.
struct ManagerHandler {
    store: Arc<Store>,
}

impl mgmt::Handler for ManagerHandler {
    async fn handle(self: Arc<Self>, peer: Peer, req: mgmt::Request) -> Response {
        let caller = peer.node.clone();
        let manager_caller = matches!(caller, Some((_, true)));
        match req {
            mgmt::Request::Join(j) => self.join(peer, j).await,
            mgmt::Request::Heartbeat { description } => {
                let Some((node_id, _)) = caller else {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                };
                self.heartbeat(node_id, description).await
            }
            mgmt::Request::Raft(rpc) if manager_caller => self.raft(*rpc).await,
            mgmt::Request::Write(p) if manager_caller => match self.store.propose_local(*p).await {
                Ok(applied) => Response::Applied(applied),
                Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
            },
            // A new manager asks for itself, or a follower forwards its ask.
            mgmt::Request::AddManager { node_id, addr } if manager_caller => {
                match self.store.add_manager(&node_id, &addr).await {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
                }
            }
            mgmt::Request::RemoveManager { node_id } if manager_caller => {
                match self.store.remove_manager(&node_id).await {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
                }
            }
            mgmt::Request::Renew { csr_der } => {
                let Some((node_id, _)) = caller else {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                };
                self.renew(&node_id, &csr_der)
            }
            mgmt::Request::AttachNetwork {
                network,
                container_id,
                allocate,
                task_id,
            } => {
                let Some((node_id, _)) = caller else {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                };
                match attach_on_manager(
                    &self.store,
                    &node_id,
                    &network,
                    &container_id,
                    allocate,
                    task_id.as_deref(),
                )
                .await
                {
                    Ok(a) => Response::Attached(Box::new(a)),
                    Err((kind, message)) => Response::error(kind, message),
                }
            }
            mgmt::Request::DetachNetwork {
                network_id,
                container_id,
            } => {
                if caller.is_none() {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                }
                match self
                    .store
                    .write(Command::ReleaseAddress {
                        network_id,
                        container_id,
                    })
                    .await
                {
                    Ok(_) => Response::Ok,
                    Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
                }
            }
            mgmt::Request::Assignments => {
                let Some((node_id, _)) = caller else {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                };
                let (index, tasks) = self.store.read(|s| {
                    let tasks = s
                        .tasks
                        .values()
                        .filter(|t| t.node_id == node_id)
                        .cloned()
                        .collect();
                    (s.index, tasks)
                });
                Response::Assignments { index, tasks }
            }
            mgmt::Request::ReportTasks { reports } => {
                let Some((node_id, _)) = caller else {
                    return Response::error(
                        ErrorKind::PermissionDenied,
                        "a node certificate is required",
                    );
                };
                match self
                    .store
                    .write(Command::ReportTasks { node_id, reports })
                    .await
                {
                    Ok(_) => Response::Ok,
                    Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
                }
            }
            mgmt::Request::Raft(_)
            | mgmt::Request::Write(_)
            | mgmt::Request::AddManager { .. }
            | mgmt::Request::RemoveManager { .. } => Response::error(
                ErrorKind::PermissionDenied,
                "a manager certificate is required",
            ),
        }
    }
}

impl ManagerHandler {
    /// A certificate for the role the swarm now gives `node_id`.
    fn renew(&self, node_id: &str, csr_der: &[u8]) -> Response {
        let found = self.store.read(|s| {
            let cluster = s.cluster.clone()?;
            let node = s.node(node_id)?;
            Some((cluster, node.spec.role == Some(NodeSpecRoleEnum::MANAGER)))
        });
        let Some((cluster, manager)) = found else {
            return Response::error(
                ErrorKind::PermissionDenied,
                format!("node {node_id} is not part of this swarm"),
            );
        };
        match cluster
            .root_ca
            .sign_node(csr_der, node_id, &cluster.id, manager)
        {
            Ok(cert_pem) => Response::Renewed {
                cert_pem,
                manager,
                managers: self.store.read(managers_of),
            },
            Err(e) => Response::error(ErrorKind::InvalidArgument, e.to_string()),
        }
    }

    async fn raft(&self, rpc: RaftRpc) -> Response {
        let raft = self.store.raft();
        let reply = match rpc {
            RaftRpc::Append(r) => RaftReply::Append(raft.append_entries(r).await),
            RaftRpc::Vote(r) => RaftReply::Vote(raft.vote(r).await),
            RaftRpc::Snapshot(r) => RaftReply::Snapshot(raft.install_snapshot(r).await),
        };
        Response::Raft(Box::new(reply))
    }

    async fn heartbeat(&self, node_id: String, description: NodeDescription) -> Response {
        let known = self.store.read(|s| {
            s.node(&node_id).map(|n| {
                (
                    n.description == description,
                    n.spec.role == Some(NodeSpecRoleEnum::MANAGER),
                )
            })
        });
        let Some((same, manager)) = known else {
            return Response::error(
                ErrorKind::PermissionDenied,
                format!("node {node_id} is not part of this swarm"),
            );
        };
        if !same
            && let Err(e) = self
                .store
                .write(Command::UpdateNodeDescription {
                    id: node_id,
                    description,
                })
                .await
        {
            return Response::error(ErrorKind::Unavailable, e.to_string());
        }
        Response::Heartbeat {
            manager,
            managers: self.store.read(managers_of),
        }
    }

    async fn join(&self, peer: Peer, req: JoinRequest) -> Response {
        let Ok(token) = JoinToken::parse(&req.token) else {
            return Response::error(ErrorKind::InvalidArgument, "invalid join token");
        };
        let Some(cluster) = self.store.read(|s| s.cluster.clone()) else {
            return Response::error(ErrorKind::Unavailable, "the swarm is not initialized");
        };
        let matches = |t: &str| {
            JoinToken::parse(t)
                .is_ok_and(|t| t.same_secret(&token) && t.ca_digest() == token.ca_digest())
        };
        let manager = if matches(cluster.manager_token.as_str()) {
            true
        } else if matches(cluster.worker_token.as_str()) {
            false
        } else {
            warn!(peer = %peer.addr, "refused a join with an invalid token");
            return Response::error(ErrorKind::InvalidArgument, VALID_TOKEN_NEEDED);
        };
        let node_id = token::random_id();
        let cert_pem = match cluster
            .root_ca
            .sign_node(&req.csr_der, &node_id, &cluster.id, manager)
        {
            Ok(c) => c,
            Err(e) => return Response::error(ErrorKind::InvalidArgument, e.to_string()),
        };
        let manager_addr = manager.then(|| format!("{}:{}", req.description.addr, req.listen_port));
        let node = NodeRecord {
            id: node_id.clone(),
            created_at: String::new(),
            updated_at: String::new(),
            version: 0,
            spec: NodeSpec {
                role: Some(if manager {
                    NodeSpecRoleEnum::MANAGER
                } else {
                    NodeSpecRoleEnum::WORKER
                }),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                ..Default::default()
            },
            description: req.description,
            state: NodeState::Ready,
            message: String::new(),
            manager_addr,
        };
        if let Err(e) = self
            .store
            .write(Command::AddNode {
                node: Box::new(node),
            })
            .await
        {
            return Response::error(ErrorKind::Unavailable, e.to_string());
        }
        info!(node = %node_id, peer = %peer.addr, manager, "node joined");
        Response::Joined(Box::new(JoinResponse {
            node_id,
            cluster_id: cluster.id,
            manager,
            cert_pem,
            ca_cert_pem: cluster.root_ca.cert_pem,
            gossip_key: cluster.gossip_key.as_str().to_owned(),
            managers: self.store.read(managers_of),
            data_path_port: cluster.data_path_port,
        }))
    }
}

/// The managers of the swarm, as peers reach them.
fn managers_of(s: &crate::store::State) -> Vec<ManagerPeer> {
    s.nodes
        .values()
        .filter_map(|n| {
            let addr = n.manager_addr.clone()?;
            let ip: IpAddr = n.description.addr.parse().ok()?;
            Some(ManagerPeer {
                node_id: n.id.clone(),
                addr,
                gossip: SocketAddr::new(ip, n.description.gossip_port),
            })
        })
        .collect()
}

/// Keeps every node's status in the store equal to what gossip says:
/// Ready while its member is alive, Down once SWIM declares it dead (or,
/// for a node gossip never saw, after a grace period). Only the leader
/// writes; the others keep their clocks ready to take over.
async fn reconcile_node_states(
    agent: Arc<Agent>,
    store: Arc<Store>,
    gossip: Gossip,
    self_id: String,
    self_description: NodeDescription,
    cancel: CancellationToken,
) {
    let mut described = false;
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let nodes: Vec<(String, NodeState)> =
            store.read(|s| s.nodes.values().map(|n| (n.id.clone(), n.state)).collect());
        first_seen.retain(|id, _| nodes.iter().any(|(n, _)| n == id));
        for (id, _) in &nodes {
            first_seen.entry(id.clone()).or_insert(now);
        }
        if !described && nodes.iter().any(|(id, _)| *id == self_id) {
            let same = store.read(|s| {
                s.node(&self_id)
                    .is_some_and(|n| n.description == self_description)
            });
            described = same
                || store
                    .write(Command::UpdateNodeDescription {
                        id: self_id.clone(),
                        description: self_description.clone(),
                    })
                    .await
                    .is_ok();
        }
        let demoted = store.read(|s| {
            s.node(&self_id)
                .is_some_and(|n| n.spec.role == Some(NodeSpecRoleEnum::WORKER))
        });
        if demoted {
            agent.begin_switch(false);
        }
        if !store.is_leader() {
            continue;
        }
        let members = gossip.members();
        for (id, state) in nodes {
            let seen = first_seen.get(&id).copied().unwrap_or(now);
            let (want, message) = if id == self_id {
                (NodeState::Ready, "")
            } else {
                match members.get(&id) {
                    Some(m) if m.up => (NodeState::Ready, ""),
                    Some(_) => (NodeState::Down, "heartbeat failure"),
                    None if now.duration_since(seen) > GOSSIP_GRACE => {
                        (NodeState::Down, "heartbeat failure")
                    }
                    None => continue,
                }
            };
            if state != want {
                info!(node = %id, from = ?state, to = ?want, "node status");
                if let Err(error) = store
                    .write(Command::SetNodeState {
                        id,
                        state: want,
                        message: message.into(),
                    })
                    .await
                {
                    warn!(%error, "set node status");
                }
            }
        }
    }
}

/// A worker reports itself to a manager every few seconds, over mutual
/// TLS, trying each manager it knows; the answer keeps its list of
/// managers current, so it moves on when its manager dies.
async fn heartbeat(
    agent: Arc<Agent>,
    mut local: LocalNode,
    shared: Arc<std::sync::RwLock<Vec<ManagerPeer>>>,
    description: NodeDescription,
    cancel: CancellationToken,
) {
    let req = mgmt::Request::Heartbeat { description };
    loop {
        for m in local.managers.clone() {
            match mgmt::call_authenticated(&m.addr, &local.identity, &req, Duration::from_secs(5))
                .await
            {
                Ok(Response::Heartbeat { managers, manager }) => {
                    if manager {
                        agent.begin_switch(true);
                    }
                    if !managers.is_empty() && managers != local.managers {
                        info!(managers = managers.len(), "managers changed");
                        local.managers = managers.clone();
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = managers;
                        if let Err(error) = local.save(&agent.cfg.data_dir) {
                            warn!(%error, "save node state");
                        }
                    }
                    break;
                }
                Ok(_) => {}
                Err(MgmtError::Remote { message, .. }) => {
                    warn!(manager = %m.addr, %message, "manager refused our heartbeat");
                }
                Err(error) => tracing::debug!(manager = %m.addr, %error, "heartbeat"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_checked_as_docker_does() {
        assert_eq!(
            validate_pools(vec![], None).expect("defaults"),
            (vec!["10.0.0.0/8".to_owned()], 24)
        );
        assert!(
            validate_pools(
                vec!["198.19.0.0/16".into(), "198.19.128.0/17".into()],
                Some(26)
            )
            .is_err()
        );
        assert!(validate_pools(vec!["198.19.0.0/33".into()], None).is_err());
        assert!(validate_pools(vec!["198.19.1.1/16".into()], None).is_err());
        assert!(validate_pools(vec!["198.19.0.0/16".into()], Some(8)).is_err());
        assert!(validate_pools(vec!["not-a-cidr".into()], None).is_err());
        assert_eq!(
            validate_pools(
                vec!["198.19.0.0/16".into(), "198.20.0.0/16".into()],
                Some(26)
            )
            .expect("two pools")
            .1,
            26
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            with_default_port("198.18.0.11", 2377).ok().as_deref(),
            Some("198.18.0.11:2377")
        );
        assert_eq!(
            with_default_port("198.18.0.11:1234", 2377).ok().as_deref(),
            Some("198.18.0.11:1234")
        );
        assert_eq!(
            with_default_port("manager", 2377).ok().as_deref(),
            Some("manager:2377")
        );
        assert!(parse_advertise_addr("0.0.0.0").is_err());
        assert_eq!(
            parse_advertise_addr("198.18.0.11:2377").ok(),
            Some("198.18.0.11".parse().expect("ip"))
        );
        assert_eq!(
            parse_listen_addr(Some("0.0.0.0:2377"), None).ok(),
            Some("0.0.0.0:2377".parse().expect("sa"))
        );
    }
}
