//! SWIM membership on UDP (7946 by default) with foca. foca decides
//! (sans-IO, through its `Runtime`); this module only moves its datagrams
//! through the sealed envelope of [`wire`] and delivers its timers.
//!
//! The view other parts read is [`Gossip::members`]: for every node ID the
//! newest identity foca knows and whether it is up.
//!
//! The same port carries the overlay networks' endpoint tables
//! ([`table`]): every sealed payload starts with a kind byte, foca's
//! datagrams or table messages, and the table runs in a task of its own
//! ([`Endpoints`]).

pub mod table;
pub mod wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{Arc, RwLock},
    time::Duration,
};

use foca::{Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{metrics::Metrics, util::unix_nanos};

/// A member's identity: its node ID, gossip address and a bump that grows
/// with every restart, so a restarted node wins over its old self.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node_id: String,
    pub addr: SocketAddr,
    pub bump: u64,
}

impl std::fmt::Debug for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.node_id, self.addr, self.bump)
    }
}

impl Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("bind gossip socket {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the rest of the agent sees of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub addr: SocketAddr,
    pub up: bool,
}

pub struct GossipConfig {
    pub node_id: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub key: [u8; 32],
    pub seeds: Vec<SocketAddr>,
}

/// The cluster size foca starts configured for.
const INITIAL_SIZE: u32 = 3;
/// The first byte of every sealed payload.
const KIND_FOCA: u8 = 0;
const KIND_TABLE: u8 = 1;
/// How often the table looks for members SWIM declared dead.
const TABLE_WATCH: Duration = Duration::from_millis(250);
/// How often a node sends its networks and all its records.
const TABLE_SYNC: Duration = Duration::from_secs(3);
/// How long a member must stay down before its endpoints are purged: an
/// agent that restarts comes back with a new identity within it, and its
/// containers' traffic is not cut meanwhile.
const PURGE_AFTER: Duration = Duration::from_millis(300);

enum Input {
    Data(Vec<u8>),
    Timer(Timer<MemberId>),
    Announce(SocketAddr),
    Leave(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Gossip {
    tx: mpsc::Sender<Input>,
    view: Arc<RwLock<HashMap<String, MemberView>>>,
    pub endpoints: Endpoints,
    /// The tasks that hold the socket; [`Gossip::stopped`] waits for them.
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// What the table tells the rest of the agent: other nodes' endpoints and
/// the nodes on each network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableView {
    pub remote: std::collections::BTreeMap<String, Vec<table::RemoteEndpoint>>,
    pub peers: std::collections::BTreeMap<String, Vec<(String, Option<std::net::Ipv4Addr>)>>,
}

enum TableInput {
    Local {
        network: String,
        key: String,
        value: Option<table::Endpoint>,
    },
    Message(table::Message),
}

/// The handle on this node's endpoint tables.
#[derive(Clone)]
pub struct Endpoints {
    tx: mpsc::Sender<TableInput>,
    view: tokio::sync::watch::Receiver<Arc<TableView>>,
}

impl Endpoints {
    /// This node's endpoint `key` on `network` is `value` (`None`: gone).
    pub async fn set(&self, network: &str, key: &str, value: Option<table::Endpoint>) {
        let _ = self
            .tx
            .send(TableInput::Local {
                network: network.to_owned(),
                key: key.to_owned(),
                value,
            })
            .await;
    }

    pub fn view(&self) -> Arc<TableView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<TableView>> {
        self.view.clone()
    }
}

/// Tuned for fast failure detection on a LAN: a dead member is suspected
/// after one missed probe and declared down 1.5 s later. How many times an
/// update is passed on grows with the cluster (foca's formula), so that
/// every member hears of a death in large clusters too; the driver resizes
/// it as members come and go.
fn config(cluster_size: u32) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(cluster_size.max(3)).unwrap_or(NonZeroU32::MIN));
    c.probe_period = Duration::from_millis(750);
    c.probe_rtt = Duration::from_millis(300);
    c.suspect_to_down_after = Duration::from_millis(1500);
    c.remove_down_after = Some(Duration::from_secs(120));
    c.max_packet_size =
        std::num::NonZeroUsize::new(1400 - wire::OVERHEAD).unwrap_or(std::num::NonZeroUsize::MIN);
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: std::num::NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
    });
    c
}

impl Gossip {
    pub async fn spawn(
        cfg: GossipConfig,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Result<Self, GossipError> {
        let socket = UdpSocket::bind(cfg.bind)
            .await
            .map_err(|source| GossipError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let socket = Arc::new(socket);
        let (tx, rx) = mpsc::channel(1024);
        let (table_tx, table_rx) = mpsc::channel(4096);
        let mut tasks = Vec::new();
        let view = Arc::new(RwLock::new(HashMap::new()));
        let sender_id: u64 = rand::random();
        let me = MemberId {
            node_id: cfg.node_id.clone(),
            addr: cfg.advertise,
            bump: unix_nanos() / 1_000_000,
        };
        info!(id = ?me, bind = %cfg.bind, "gossip starting");
        let foca = Foca::new(
            me,
            config(INITIAL_SIZE),
            StdRng::from_rng(&mut rand::rng()),
            PostcardCodec,
        );
        // Receive loop: open envelopes, hand payloads to the foca task.
        {
            let socket = socket.clone();
            let tx = tx.clone();
            let table_tx = table_tx.clone();
            let metrics = metrics.clone();
            let cancel = cancel.clone();
            let mut opener = wire::Opener::new(&cfg.key);
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = socket.recv_from(&mut buf) => match r {
                            Ok(r) => r,
                            Err(error) => {
                                warn!(%error, "gossip receive");
                                continue;
                            }
                        },
                    };
                    metrics.gossip_received.inc();
                    match opener.open(&buf[..n], unix_nanos()) {
                        Ok(payload) => match payload.split_first() {
                            Some((&KIND_FOCA, data)) => {
                                if tx.send(Input::Data(data.to_vec())).await.is_err() {
                                    return;
                                }
                            }
                            Some((&KIND_TABLE, data)) => {
                                match postcard::from_bytes::<table::Message>(data) {
                                    Ok(m) => {
                                        let _ = table_tx.try_send(TableInput::Message(m));
                                    }
                                    Err(_) => {
                                        metrics.gossip_drop("malformed");
                                        debug!(%from, "undecodable table message dropped");
                                    }
                                }
                            }
                            _ => {
                                metrics.gossip_drop("malformed");
                                debug!(%from, "gossip payload of unknown kind dropped");
                            }
                        },
                        Err(reason) => {
                            metrics.gossip_drop(reason.label());
                            debug!(%from, %reason, "gossip datagram dropped");
                        }
                    }
                }
            }));
        }
        let driver = Driver {
            foca,
            runtime: foca::AccumulatingRuntime::new(),
            socket: socket.clone(),
            sealer: wire::Sealer::new(&cfg.key, sender_id),
            tx: tx.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            sized_for: INITIAL_SIZE,
        };
        let vtep = match cfg.advertise.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        let (view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(TableView::default()));
        let tables = TableDriver {
            table: table::Table::new(&cfg.node_id, vtep),
            me: cfg.node_id.clone(),
            socket: socket.clone(),
            sealer: wire::Sealer::new(&cfg.key, rand::random()),
            members: view.clone(),
            published: view_tx,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(tables.run(table_rx, cancel.clone())));
        tasks.push(tokio::spawn(driver.run(rx, cancel)));
        for seed in cfg.seeds {
            let _ = tx.send(Input::Announce(seed)).await;
        }
        Ok(Self {
            tx,
            view,
            endpoints: Endpoints {
                tx: table_tx,
                view: view_rx,
            },
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
        })
    }

    /// Every member foca knows of, by node ID, newest identity first.
    pub fn members(&self) -> HashMap<String, MemberView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the tasks of a cancelled gossip have ended, so its port
    /// is free again (a role switch binds it anew at once).
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Tells the cluster this member leaves, then stops answering.
    pub async fn leave(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }
}

struct Driver {
    foca: Foca<MemberId, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    runtime: foca::AccumulatingRuntime<MemberId>,
    socket: Arc<UdpSocket>,
    sealer: wire::Sealer,
    tx: mpsc::Sender<Input>,
    view: Arc<RwLock<HashMap<String, MemberView>>>,
    metrics: Arc<Metrics>,
    /// The cluster size foca's config was made for.
    sized_for: u32,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let input = tokio::select! {
                _ = cancel.cancelled() => return,
                i = rx.recv() => match i { Some(i) => i, None => return },
            };
            let mut leaving = None;
            let result = match input {
                Input::Data(d) => self.foca.handle_data(&d, &mut self.runtime),
                Input::Timer(t) => self.foca.handle_timer(t, &mut self.runtime),
                Input::Announce(addr) => {
                    let seed = MemberId {
                        node_id: String::new(),
                        addr,
                        bump: 0,
                    };
                    self.foca.announce(seed, &mut self.runtime)
                }
                Input::Leave(done) => {
                    leaving = Some(done);
                    self.foca.leave_cluster(&mut self.runtime)
                }
            };
            if let Err(error) = result {
                // A datagram that authenticated but foca could not use.
                self.metrics.gossip_drop("malformed");
                debug!(%error, "foca refused input");
            }
            self.drain().await;
            if let Some(done) = leaving {
                let _ = done.send(());
                return;
            }
        }
    }

    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let mut payload = Vec::with_capacity(data.len() + 1);
            payload.push(KIND_FOCA);
            payload.extend_from_slice(&data);
            let sealed = self.sealer.seal(&payload, unix_nanos());
            if let Err(error) = self.socket.send_to(&sealed, to.addr).await {
                debug!(to = ?to, %error, "gossip send");
            }
            self.metrics.gossip_sent.inc();
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Input::Timer(timer)).await;
            });
        }
        let mut changed = false;
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => info!(member = ?id, "member up"),
                OwnedNotification::MemberDown(id) => info!(member = ?id, "member down"),
                OwnedNotification::Rename(a, b) => debug!(from = ?a, to = ?b, "member renamed"),
                OwnedNotification::Defunct => warn!("this node was declared down"),
                other => debug!(notification = ?other, "gossip"),
            }
            changed = true;
        }
        if changed {
            self.refresh_view();
        }
    }

    fn refresh_view(&mut self) {
        let mut best: HashMap<String, (u64, MemberView)> = HashMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.node_id.is_empty() {
                continue;
            }
            let view = MemberView {
                addr: id.addr,
                up: m.state() != foca::State::Down,
            };
            match best.get(&id.node_id) {
                Some((bump, _)) if *bump >= id.bump => {}
                _ => {
                    best.insert(id.node_id.clone(), (id.bump, view));
                }
            }
        }
        let alive = best.values().filter(|(_, v)| v.up).count();
        self.metrics.gossip_members.set(alive as i64);
        let size = u32::try_from(alive + 1)
            .unwrap_or(u32::MAX)
            .max(INITIAL_SIZE);
        if size != self.sized_for {
            match self.foca.set_config(config(size)) {
                Ok(()) => self.sized_for = size,
                Err(error) => warn!(%error, size, "resize gossip config"),
            }
        }
        let view: HashMap<_, _> = best.into_iter().map(|(k, (_, v))| (k, v)).collect();
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

/// Runs the endpoint table: local changes and messages in, messages out
/// (addressed by node ID, sent to the member's gossip address), the dead
/// purged, the view published.
struct TableDriver {
    table: table::Table,
    me: String,
    socket: Arc<UdpSocket>,
    sealer: wire::Sealer,
    members: Arc<RwLock<HashMap<String, MemberView>>>,
    published: tokio::sync::watch::Sender<Arc<TableView>>,
    metrics: Arc<Metrics>,
}

impl TableDriver {
    fn live(&self) -> Vec<String> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members
            .iter()
            .filter(|(_, v)| v.up)
            .map(|(id, _)| id.clone())
            .chain(std::iter::once(self.me.clone()))
            .collect()
    }

    async fn send(&mut self, outs: Vec<table::Out>) {
        if outs.is_empty() {
            return;
        }
        let addrs: HashMap<String, SocketAddr> = {
            let members = self.members.read().unwrap_or_else(|e| e.into_inner());
            members
                .iter()
                .filter(|(_, v)| v.up)
                .map(|(id, v)| (id.clone(), v.addr))
                .collect()
        };
        for out in outs {
            let Ok(body) = postcard::to_allocvec(&out.msg) else {
                continue;
            };
            let mut payload = Vec::with_capacity(body.len() + 1);
            payload.push(KIND_TABLE);
            payload.extend_from_slice(&body);
            for to in &out.to {
                let Some(addr) = addrs.get(to) else {
                    continue;
                };
                let sealed = self.sealer.seal(&payload, unix_nanos());
                if let Err(error) = self.socket.send_to(&sealed, addr).await {
                    debug!(%addr, %error, "table send");
                }
                self.metrics.gossip_sent.inc();
            }
        }
    }

    fn publish(&self) {
        let mut v = TableView::default();
        for network in self.table.my_networks() {
            v.remote
                .insert(network.clone(), self.table.remote_endpoints(&network));
            v.peers.insert(network.clone(), self.table.peers(&network));
        }
        self.published.send_if_modified(|cur| {
            if **cur == v {
                false
            } else {
                *cur = Arc::new(v);
                true
            }
        });
    }

    async fn run(mut self, mut rx: mpsc::Receiver<TableInput>, cancel: CancellationToken) {
        let mut watch = tokio::time::interval(TABLE_WATCH);
        let mut sync = tokio::time::interval(TABLE_SYNC);
        let mut was_live: Vec<String> = Vec::new();
        let mut down_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                input = rx.recv() => match input {
                    None => return,
                    Some(TableInput::Local { network, key, value }) => {
                        let live = self.live();
                        let outs = self.table.set_local(&network, &key, value, &live, unix_nanos());
                        self.send(outs).await;
                    }
                    Some(TableInput::Message(m)) => {
                        let (outs, _) = self.table.receive(m, unix_nanos());
                        self.send(outs).await;
                    }
                },
                _ = watch.tick() => {
                    let live = self.live();
                    let now = tokio::time::Instant::now();
                    down_since.retain(|n, _| !live.contains(n));
                    for owner in self.table.owners() {
                        if live.contains(&owner) {
                            continue;
                        }
                        let since = *down_since.entry(owner.clone()).or_insert(now);
                        if now.duration_since(since) >= PURGE_AFTER && self.table.node_down(&owner) {
                            info!(node = %owner, "endpoints of a dead node removed");
                        }
                    }
                    let new: Vec<String> = live
                        .iter()
                        .filter(|m| **m != self.me && !was_live.contains(m))
                        .cloned()
                        .collect();
                    let outs = self.table.hello(&new, unix_nanos());
                    self.send(outs).await;
                    was_live = live;
                }
                _ = sync.tick() => {
                    let live = self.live();
                    let outs = self.table.sync(&live, unix_nanos());
                    self.send(outs).await;
                }
            }
            self.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver may resize foca's config at any time: only what foca
    /// allows to change may differ between sizes, and large clusters pass
    /// updates on more often.
    #[test]
    fn config_resizes_in_place() {
        let me = MemberId {
            node_id: "n1".into(),
            addr: "192.0.2.1:7946".parse().expect("addr"),
            bump: 1,
        };
        let mut foca = Foca::new(
            me,
            config(INITIAL_SIZE),
            StdRng::from_rng(&mut rand::rng()),
            PostcardCodec,
        );
        for size in [4, 10, 30, 100, 3] {
            foca.set_config(config(size)).expect("resize");
        }
        assert!(config(30).max_transmissions > config(3).max_transmissions);
        assert_eq!(
            config(30).suspect_to_down_after,
            config(3).suspect_to_down_after
        );
    }
}
