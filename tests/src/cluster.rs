//! [`Cluster`]: a hub namespace with a bridge, node namespaces wired to it,
//! and one `swarmnet agent` per node; [`Node`]: how tests reach one of them.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard, Once},
    thread,
    time::{Duration, Instant},
};

use crate::{
    containers::{self, Registry},
    eventually::{patience, retry},
    http::{self, HttpResponse},
    metrics::Metrics,
    net::{self, UdpDatagram},
    netns::{self, NetNs},
    util::{describe, require_root, run_ok, run_timeout, show, unique_prefix},
};

/// Env var: the agent binary to run instead of `target/<profile>/swarmnet`.
pub const ENV_BIN: &str = "SWARMNET_BIN";
/// Env var: the docker CLI to run instead of `docker` from `PATH`.
pub const ENV_DOCKER_CLI: &str = "SWARMNET_DOCKER_CLI";
/// Env var: keep each cluster's temp dir (logs, data dirs) when set to 1.
pub const ENV_KEEP: &str = "SWARMNET_TEST_KEEP";
/// Env var: every agent's `--log-level` filter for one run (e.g.
/// `info,openraft=debug`), unless a test sets its own.
pub const ENV_AGENT_LOG: &str = "SWARMNET_TEST_AGENT_LOG";

/// The underlay subnet (RFC 2544 benchmarking range, never routed).
pub const UNDERLAY_PREFIX: [u8; 3] = [198, 18, 0];
pub const SWARM_PORT: u16 = 2377;
pub const GOSSIP_PORT: u16 = 7946;
pub const METRICS_PORT: u16 = 9323;
/// The bridge inside the hub namespace.
pub const BRIDGE: &str = "br0";

/// How long a single docker CLI call may take before the harness calls it
/// hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of each agent log printed when a test panics.
const LOG_TAIL_ON_PANIC: usize = 80;

/// Builds a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    agents: bool,
    log_level: String,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    agent_bin: Option<PathBuf>,
    registry: bool,
    underlay_mtu: Option<u32>,
}

impl ClusterBuilder {
    pub fn new(nodes: usize) -> Self {
        assert!(
            (1..=200).contains(&nodes),
            "a cluster has 1 to 200 nodes, not {nodes}"
        );
        Self {
            nodes,
            agents: true,
            // SWARMNET_TEST_AGENT_LOG: every agent's filter for one run
            // (e.g. `info,openraft=debug`).
            log_level: std::env::var("SWARMNET_TEST_AGENT_LOG")
                .unwrap_or_else(|_| "info".to_owned()),
            extra_args: Vec::new(),
            env: Vec::new(),
            agent_bin: None,
            registry: false,
            underlay_mtu: None,
        }
    }

    /// The MTU of every node's `eth0` and of the hub's ports (1500 by
    /// default), set before the agents start.
    pub fn underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = Some(mtu);
        self
    }

    /// Serve the test images from a registry on the hub (198.18.0.2:5000,
    /// the seeded storage read-only) and make it every agent's Docker Hub
    /// mirror, so `docker pull nginx` works on every node.
    pub fn registry(mut self) -> Self {
        self.registry = true;
        self
    }

    /// The program to run as the agent instead of [`agent_bin`] (the
    /// harness's own tests use a fake).
    pub fn agent_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent_bin = Some(path.into());
        self
    }

    /// Whether to start an agent on each node (default true); without,
    /// the cluster is only the namespace topology.
    pub fn agents(mut self, start: bool) -> Self {
        self.agents = start;
        self
    }

    /// The agent's `--log-level` (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    /// An extra argument appended to every agent's command line.
    pub fn agent_arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// An environment variable for every agent.
    pub fn agent_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Creates the namespaces, starts the agents and waits until each
    /// answers `/_ping`. Panics (cleaning up what it made) on failure.
    #[track_caller]
    pub fn build(mut self) -> Cluster {
        require_root();
        let claim = crate::exclusive::shared();
        reap_stale();
        containers::become_subreaper();
        let (prefix, dir) = claim_prefix();
        let docker_config = dir.join("docker-config");
        fs::create_dir_all(&docker_config).expect("create DOCKER_CONFIG dir");

        // The struct exists from here on, so a panic below tears down
        // whatever was made so far.
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            dir: dir.clone(),
            hub: None,
            nodes: Vec::new(),
            registry: None,
            _claim: claim,
        };
        let hub_name = format!("{prefix}-hub");
        record_netns(&dir, &hub_name);
        let hub = NetNs::create(&hub_name);
        // ip -n HUB link add br0 type bridge; ip -n HUB link set br0 up
        hub.ip_ok(&["link", "add", BRIDGE, "type", "bridge"]);
        hub.ip_ok(&["link", "set", BRIDGE, "up"]);
        cluster.hub = Some(hub);
        if self.registry {
            // ip -n HUB addr add 198.18.0.2/24 dev br0
            cluster.hub().ip_ok(&[
                "addr",
                "add",
                &format!("{}/24", containers::REGISTRY_ADDR.ip()),
                "dev",
                BRIDGE,
            ]);
            let reg = Registry::start(&hub_name, &dir);
            self.extra_args.extend(reg.agent_args());
            cluster.registry = Some(reg);
        }

        let agent_bin = match (self.agents, self.agent_bin) {
            (false, _) => None,
            (true, Some(bin)) => Some(bin),
            (true, None) => Some(agent_bin()),
        };
        for i in 1..=self.nodes {
            let node = Node::create(NodeParams {
                index: i,
                prefix: &prefix,
                cluster_dir: &dir,
                hub: &hub_name,
                docker_config: &docker_config,
                agent_bin: agent_bin.as_deref(),
                log_level: &self.log_level,
                extra_args: &self.extra_args,
                env: &self.env,
                underlay_mtu: self.underlay_mtu,
            });
            cluster.nodes.push(node);
        }
        if self.agents {
            for node in &cluster.nodes {
                node.spawn_agent();
            }
            for node in &cluster.nodes {
                node.wait_ping();
            }
        }
        cluster
    }
}

/// Join tokens of a swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmTokens {
    pub worker: String,
    pub manager: String,
}

/// One row of `docker node ls --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    /// `Ready`, `Down`, `Unknown`, `Disconnected`.
    pub status: String,
    /// `Active`, `Pause`, `Drain`.
    pub availability: String,
    /// `Leader`, `Reachable`, `Unreachable`, or empty for a worker.
    pub manager_status: String,
    /// The node the CLI talks to (the `*` of the table).
    pub is_self: bool,
}

impl NodeRow {
    fn parse(line: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("node ls line {line:?}: {e}"))?;
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let is_self = match v.get("Self") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        Ok(Self {
            id: s("ID"),
            hostname: s("Hostname"),
            status: s("Status"),
            availability: s("Availability"),
            manager_status: s("ManagerStatus"),
            is_self,
        })
    }
}

/// A test cluster. Dropping it kills its agents (by PID), deletes its
/// namespaces and removes its temp dir; on panic it first prints the tail
/// of every agent log.
///
/// Agents get `PR_SET_PDEATHSIG(SIGKILL)`: they die when the *thread* that
/// started them (built the cluster, or called [`Node::restart`]) exits, so
/// keep a cluster on the test's own thread. A test process killed before
/// its destructors ran leaves namespaces behind; the next run reaps them.
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    dir: PathBuf,
    hub: Option<NetNs>,
    nodes: Vec<Node>,
    registry: Option<Registry>,
    /// Shared with other clusters; a test that runs alone waits for it.
    _claim: crate::exclusive::Claim,
}

impl Cluster {
    /// `n` nodes with agents running; see [`ClusterBuilder::build`].
    #[track_caller]
    pub fn new(n: usize) -> Self {
        ClusterBuilder::new(n).build()
    }

    pub fn builder(n: usize) -> ClusterBuilder {
        ClusterBuilder::new(n)
    }

    /// The unique prefix of this cluster's names (`sn{pid}x{n}`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cluster's temp dir (agent logs and data dirs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`, counting from 1 (node 1 is where swarms are initialised).
    #[track_caller]
    pub fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i} in a {}-node cluster",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node 1.
    pub fn manager(&self) -> &Node {
        self.node(1)
    }

    /// The hub namespace (holding the bridge and the nodes' peer veths).
    pub fn hub(&self) -> &NetNs {
        self.hub
            .as_ref()
            .expect("the hub exists while the cluster does")
    }

    /// Names of every namespace of this cluster (hub first).
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![self.hub().name().to_owned()];
        v.extend(self.nodes.iter().map(|n| n.netns().to_owned()));
        v
    }

    /// `docker swarm init --advertise-addr 198.18.0.11` on node 1; returns
    /// the join tokens (`docker swarm join-token -q worker|manager`).
    #[track_caller]
    pub fn init_swarm(&self) -> SwarmTokens {
        let m = self.manager();
        m.docker_ok(&["swarm", "init", "--advertise-addr", &m.addr().to_string()]);
        self.tokens()
    }

    /// The join tokens, read from node 1 with the docker CLI.
    #[track_caller]
    pub fn tokens(&self) -> SwarmTokens {
        let m = self.manager();
        SwarmTokens {
            worker: m
                .docker_ok(&["swarm", "join-token", "-q", "worker"])
                .trim()
                .to_owned(),
            manager: m
                .docker_ok(&["swarm", "join-token", "-q", "manager"])
                .trim()
                .to_owned(),
        }
    }

    /// `host:2377` of node 1, what `docker swarm join` is pointed at.
    pub fn manager_addr(&self) -> String {
        format!("{}:{SWARM_PORT}", self.manager().addr())
    }

    /// `docker swarm join --token TOKEN 198.18.0.11:2377` on node `i`.
    #[track_caller]
    pub fn join(&self, i: usize, token: &str) {
        self.node(i)
            .docker_ok(&["swarm", "join", "--token", token, &self.manager_addr()]);
    }

    /// Forms a swarm of all nodes with the docker CLI (init on node 1, the
    /// others join as workers) and waits until node 1 lists them all Ready.
    #[track_caller]
    pub fn form_swarm(&self) -> SwarmTokens {
        let tokens = self.init_swarm();
        for i in 2..=self.nodes.len() {
            self.join(i, &tokens.worker);
        }
        self.wait_ready(self.nodes.len());
        tokens
    }

    /// Waits until node 1's `docker node ls` has exactly `n` rows, all
    /// Ready; returns them.
    #[track_caller]
    pub fn wait_ready(&self, n: usize) -> Vec<NodeRow> {
        let m = self.manager();
        retry(
            &format!("{n} nodes Ready in node1's `docker node ls`"),
            || {
                let rows = m.try_node_ls()?;
                if rows.len() == n && rows.iter().all(|r| r.status == "Ready") {
                    Ok(rows)
                } else {
                    Err(format!("{rows:?}"))
                }
            },
        )
    }

    /// Captures on the hub (every bridge port) the first IPv4/UDP datagram
    /// for which `want` holds.
    pub fn capture_udp(
        &self,
        timeout: Duration,
        want: impl Fn(&UdpDatagram) -> bool + Send,
    ) -> Result<UdpDatagram, String> {
        self.hub().run(|| net::capture_udp(timeout, want))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        for node in &self.nodes {
            node.stop_agent();
        }
        if panicking {
            for node in &self.nodes {
                if node.agent.is_some() {
                    eprintln!(
                        "----- {} ({}) agent log, last {LOG_TAIL_ON_PANIC} lines: {} -----\n{}",
                        node.hostname,
                        node.addr,
                        node.log.display(),
                        node.log_tail(LOG_TAIL_ON_PANIC)
                    );
                }
            }
        }
        // Node namespaces first (deleting them deletes their veths), then
        // the registry and the hub with its bridge.
        self.nodes.clear();
        self.registry = None;
        self.hub = None;
        let keep = std::env::var(ENV_KEEP).is_ok_and(|v| v == "1");
        if keep {
            eprintln!("swarmnet-tests: kept {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "swarmnet-tests: could not remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

#[derive(Debug)]
struct AgentCmd {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

struct NodeParams<'a> {
    index: usize,
    prefix: &'a str,
    cluster_dir: &'a Path,
    hub: &'a str,
    docker_config: &'a Path,
    agent_bin: Option<&'a Path>,
    log_level: &'a str,
    extra_args: &'a [String],
    env: &'a [(String, String)],
    underlay_mtu: Option<u32>,
}

/// One node: its namespace, its agent, and clients for it.
#[derive(Debug)]
pub struct Node {
    index: usize,
    hostname: String,
    addr: Ipv4Addr,
    netns: NetNs,
    hub: String,
    hub_port: String,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    docker_config: PathBuf,
    agent: Option<AgentCmd>,
    child: Mutex<Option<Child>>,
    cgroup_parent: String,
}

impl Drop for Node {
    /// The agent first, then what its containers left: shims, runc
    /// containers, mounts, cgroups (the namespace goes with the field).
    fn drop(&mut self) {
        self.stop_agent();
        containers::cleanup_node(&self.dir, &self.cgroup_parent);
    }
}

impl Node {
    fn create(p: NodeParams<'_>) -> Self {
        let i = p.index;
        let octet = u8::try_from(10 + i).expect("node index fits the /24");
        let addr = Ipv4Addr::new(
            UNDERLAY_PREFIX[0],
            UNDERLAY_PREFIX[1],
            UNDERLAY_PREFIX[2],
            octet,
        );
        let name = format!("{}-n{i}", p.prefix);
        let hostname = format!("node{i}");
        let dir = p.cluster_dir.join(&hostname);
        fs::create_dir_all(dir.join("data")).expect("create node dir");
        record_netns(p.cluster_dir, &name);
        let netns = NetNs::create(&name);
        let hub_port = format!("p{i}");
        // ip -n HUB link add pI type veth peer name eth0 netns NODE
        netns::ip_ok(
            p.hub,
            &[
                "link", "add", &hub_port, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        );
        // ip -n HUB link set pI master br0 up
        netns::ip_ok(p.hub, &["link", "set", &hub_port, "master", BRIDGE, "up"]);
        // ip -n NODE addr add 198.18.0.X/24 dev eth0; ip -n NODE link set eth0 up
        netns.ip_ok(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        if let Some(mtu) = p.underlay_mtu {
            let mtu = mtu.to_string();
            netns::ip_ok(p.hub, &["link", "set", &hub_port, "mtu", &mtu]);
            netns.ip_ok(&["link", "set", "eth0", "mtu", &mtu]);
        }
        netns.ip_ok(&["link", "set", "eth0", "up"]);

        let socket = dir.join("docker.sock");
        let cgroup_parent = format!("{}/{name}", containers::CGROUP_ROOT);
        let agent = p.agent_bin.map(|bin| {
            let mut args: Vec<String> = vec![
                "agent".into(),
                "--data-dir".into(),
                dir.join("data").display().to_string(),
                "-H".into(),
                format!("unix://{}", socket.display()),
                "--hostname".into(),
                hostname.clone(),
                "--advertise-addr".into(),
                addr.to_string(),
                "--listen-addr".into(),
                format!("0.0.0.0:{SWARM_PORT}"),
                "--gossip-port".into(),
                GOSSIP_PORT.to_string(),
                "--metrics-addr".into(),
                format!("{addr}:{METRICS_PORT}"),
                "--underlay-iface".into(),
                "eth0".into(),
                "--exec-root".into(),
                dir.join("run").display().to_string(),
                "--bip".into(),
                containers::BIP.into(),
                "--cgroup-parent".into(),
                format!("/{}", cgroup_parent),
                "--log-level".into(),
                p.log_level.to_owned(),
            ];
            args.extend(p.extra_args.iter().cloned());
            AgentCmd {
                bin: bin.to_owned(),
                args,
                env: p.env.to_vec(),
            }
        });
        Self {
            index: i,
            hostname,
            addr,
            netns,
            hub: p.hub.to_owned(),
            hub_port,
            log: dir.join("agent.log"),
            socket,
            dir,
            docker_config: p.docker_config.to_owned(),
            agent,
            child: Mutex::new(None),
            cgroup_parent,
        }
    }

    /// 1-based index in the cluster.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `nodeI`, the agent's `--hostname`.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The underlay address of `eth0` (198.18.0.{10+i}).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The namespace's name (`ip netns` name).
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// The agent's Docker API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The node's temp dir (holds `data/`, `agent.log`, `docker.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The agent's `--exec-root` (runc state, shim sockets, netns files).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The agent's `--cgroup-parent`, without its leading slash.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `198.18.0.X:9323`.
    pub fn metrics_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, METRICS_PORT)
    }

    /// `198.18.0.X:7946`.
    pub fn gossip_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, GOSSIP_PORT)
    }

    // ----- the agent process -----

    fn agent_cmd(&self) -> &AgentCmd {
        self.agent
            .as_ref()
            .unwrap_or_else(|| panic!("{}: cluster was built without agents", self.hostname))
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the agent: `nsenter --net=/var/run/netns/NS -- swarmnet agent
    /// ...` (nsenter keeps the mounts, so cgroups stay visible, unlike
    /// `ip netns exec`), stdout and stderr appended to `agent.log`.
    fn spawn_agent(&self) {
        let a = self.agent_cmd();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open agent log");
        let _ = writeln!(
            log,
            "===== swarmnet-tests: starting {} agent {} {} =====",
            self.hostname,
            a.bin.display(),
            a.args.join(" ")
        );
        let stderr = log.try_clone().expect("dup agent log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(&a.bin)
            .args(&a.args)
            .env("RUST_BACKTRACE", "1")
            .envs(a.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start `{}`: {e}", self.hostname, show(&cmd)));
        *self.lock_child() = Some(child);
    }

    /// Waits until the agent answers `GET /_ping` with `OK`; panics with the
    /// log tail if it exits or does not answer within the patience.
    #[track_caller]
    fn wait_ping(&self) {
        let timeout = patience().max(Duration::from_secs(10));
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(status) = self
                .lock_child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{}: agent exited ({status}) before answering /_ping; log tail:\n{}",
                    self.hostname,
                    self.log_tail(40)
                );
            }
            match http::unix_request(&self.socket, "GET", "/_ping", None, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 && r.text().trim() == "OK" => return,
                Ok(r) => last = format!("HTTP {} {:?}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: agent did not answer /_ping on {} within {timeout:?} (last: {last}); log tail:\n{}",
                    self.hostname,
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut g = self.lock_child();
        let c = g.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// `kill -9` the agent (only the PID this harness started) and reap it.
    #[track_caller]
    pub fn kill9(&self) {
        let child = self.lock_child().take();
        let Some(mut child) = child else {
            panic!("{}: kill9 but no agent is running", self.hostname);
        };
        let _ = child.kill();
        let _ = child.wait();
    }

    fn stop_agent(&self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again with the same arguments and data dir (killing
    /// it first if it still runs) and waits for `/_ping`.
    #[track_caller]
    pub fn restart(&self) {
        self.stop_agent();
        // A restarted agent must be able to bind the same socket path.
        let _ = fs::remove_file(&self.socket);
        self.spawn_agent();
        self.wait_ping();
    }

    /// The last `n` lines of the agent's log (all its runs).
    pub fn log_tail(&self, n: usize) -> String {
        let text = match fs::read(&self.log) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => return format!("<cannot read {}: {e}>", self.log.display()),
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    // ----- the underlay link -----

    /// Cuts the node off the hub: sets its bridge port (the hub side of
    /// its veth) down, so `eth0` loses carrier.
    #[track_caller]
    pub fn cut_link(&self) {
        netns::ip_ok(&self.hub, &["link", "set", &self.hub_port, "down"]);
    }

    /// Undoes [`Node::cut_link`].
    #[track_caller]
    pub fn heal_link(&self) {
        netns::ip_ok(&self.hub, &["link", "set", &self.hub_port, "up"]);
    }

    // ----- clients -----

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let cli = std::env::var(ENV_DOCKER_CLI).unwrap_or_else(|_| "docker".to_owned());
        let mut cmd = Command::new(cli);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    /// The docker CLI command for this node, to run as the caller likes
    /// (e.g. `docker logs -f` read while it runs).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        self.docker_cmd(args)
    }

    /// Runs the real docker CLI against this node's socket.
    pub fn docker(&self, args: &[&str]) -> Output {
        run_timeout(&mut self.docker_cmd(args), CLI_TIMEOUT)
    }

    /// Runs the docker CLI with `input` on its stdin.
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        crate::util::run_timeout_input(&mut self.docker_cmd(args), CLI_TIMEOUT, Some(input))
    }

    /// Runs the docker CLI, panicking (with its output and the agent's log
    /// tail) unless it succeeds; returns stdout.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            panic!(
                "{}: `docker {}` failed ({}): {}\nagent log tail:\n{}",
                self.hostname,
                args.join(" "),
                out.status,
                describe(&out),
                self.log_tail(20)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bollard client on this node's socket (API version bollard's
    /// default; no negotiation).
    pub fn bollard(&self) -> bollard::Docker {
        bollard::Docker::connect_with_unix(
            &format!("unix://{}", self.socket.display()),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap_or_else(|e| panic!("{}: bollard connect: {e}", self.hostname))
    }

    /// One raw HTTP request on the unix socket, bytes as given.
    #[track_caller]
    pub fn api(&self, method: &str, path: &str, body: Option<&[u8]>) -> HttpResponse {
        http::unix_request(&self.socket, method, path, body, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.hostname))
    }

    /// Parsed `docker node ls --format '{{json .}}'`, or the CLI's error.
    pub fn try_node_ls(&self) -> Result<Vec<NodeRow>, String> {
        let out = self.docker(&["node", "ls", "--format", "{{json .}}"]);
        if !out.status.success() {
            return Err(format!("docker node ls failed: {}", describe(&out)));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(NodeRow::parse)
            .collect()
    }

    #[track_caller]
    pub fn node_ls(&self) -> Vec<NodeRow> {
        self.try_node_ls()
            .unwrap_or_else(|e| panic!("{}: {e}", self.hostname))
    }

    /// `docker node inspect NODE` (first element), as JSON.
    #[track_caller]
    pub fn inspect_node(&self, node: &str) -> serde_json::Value {
        let out = self.docker_ok(&["node", "inspect", node]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("node inspect output is not JSON ({e}): {out}"));
        v.get(0)
            .cloned()
            .unwrap_or_else(|| panic!("node inspect {node} returned no object: {out}"))
    }

    /// `docker info --format '{{json .Swarm}}'`.
    #[track_caller]
    pub fn swarm_info(&self) -> serde_json::Value {
        let out = self.docker_ok(&["info", "--format", "{{json .Swarm}}"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("docker info .Swarm is not JSON ({e}): {out}"))
    }

    /// `LocalNodeState` from `docker info`: inactive, pending, active, error.
    #[track_caller]
    pub fn swarm_state(&self) -> String {
        self.swarm_info()["LocalNodeState"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// This node's swarm node ID, from `docker info`.
    #[track_caller]
    pub fn node_id(&self) -> String {
        self.swarm_info()["NodeID"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    // ----- inside the namespace -----

    /// Runs `f` on a thread inside the node's namespace (sockets it makes
    /// belong to the node).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.netns.run(f)
    }

    /// Runs a command inside the node's namespace (`ip netns exec`; fine
    /// for plain tools, not for the agent).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.name()]).args(args);
        run_timeout(&mut cmd, CLI_TIMEOUT)
    }

    /// [`Node::exec`], panicking unless it succeeds; returns stdout.
    #[track_caller]
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.name()]).args(args);
        run_ok(&mut cmd, CLI_TIMEOUT)
    }

    /// A UDP socket in the node's namespace, bound to its address and an
    /// ephemeral port.
    pub fn udp_socket(&self) -> UdpSocket {
        let addr = self.addr;
        self.run(move || UdpSocket::bind(SocketAddrV4::new(addr, 0)))
            .unwrap_or_else(|e| panic!("{}: bind UDP: {e}", self.hostname))
    }

    /// Pings `dst` from this node `count` times (raw ICMP, no external
    /// tool); returns the number of replies.
    pub fn ping(&self, dst: Ipv4Addr, count: u16) -> u16 {
        self.run(move || net::ping(dst, count, Duration::from_secs(1)))
            .unwrap_or_else(|e| panic!("{}: ping {dst}: {e}", self.hostname))
    }

    /// GET `/metrics` on this node's metrics address, from inside its
    /// namespace.
    pub fn try_metrics(&self) -> Result<Metrics, String> {
        let addr = SocketAddr::V4(self.metrics_addr());
        self.run(move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let r = http::request(s, "GET", "/metrics", None)
                .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
            if r.status != 200 {
                return Err(format!(
                    "GET http://{addr}/metrics: HTTP {}: {}",
                    r.status,
                    r.text()
                ));
            }
            Ok(Metrics::parse(&r.text()))
        })
    }

    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("{}: {e}", self.hostname))
    }
}

/// Where the agent binary is: `$SWARMNET_BIN`, else `swarmnet` in the
/// target dir of this test binary (`target/debug/deps/..` -> `target/debug`).
#[track_caller]
pub fn agent_bin() -> PathBuf {
    let path = match std::env::var_os(ENV_BIN) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("test binary lives in target/<profile>/deps");
            dir.join("swarmnet")
        }
    };
    assert!(
        path.is_file(),
        "agent binary {} not found: build it first with `cargo build --workspace` \
         (or point {ENV_BIN} at it)",
        path.display()
    );
    path
}

/// Asks the kernel to SIGKILL the agent when the thread that started it
/// exits, so agents never outlive a test process that died without running
/// its destructors (Ctrl-C, SIGKILL). nsenter execs the agent, which keeps
/// the setting.
#[expect(unsafe_code, reason = "Command::pre_exec is unsafe")]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(PR_SET_PDEATHSIG), which is async-signal-safe; it does not
    // allocate or take locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)
        });
    }
}

/// The root of every cluster's temp dir.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join("swarmnet-tests")
}

/// Picks a prefix nobody else uses (a run in another process may have the
/// same pid modulo 100000) by creating its dir atomically, and records the
/// owner's full PID there for [`reap_stale`].
fn claim_prefix() -> (String, PathBuf) {
    let base = base_dir();
    fs::create_dir_all(&base).expect("create the tests' temp dir");
    loop {
        let prefix = unique_prefix();
        let dir = base.join(&prefix);
        if netns::path_of(&format!("{prefix}-hub")).exists() {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::write(dir.join("owner"), std::process::id().to_string())
                    .expect("write owner file");
                return (prefix, dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// Remembers a namespace name before creating it, for [`reap_stale`].
fn record_netns(dir: &Path, name: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("netns"))
        .expect("open netns record");
    writeln!(f, "{name}").expect("record netns");
}

/// Once per process: deletes the namespaces and dirs of clusters whose
/// owning test process is gone (a run that was killed before its
/// destructors ran). Its agents died with it (PDEATHSIG).
fn reap_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(base_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
                continue;
            };
            let Ok(pid) = owner.trim().parse::<u32>() else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            // What the dead run's containers left: shims, runc state,
            // mounts, cgroups (its namespaces hold nothing else).
            containers::cleanup_stale(&dir);
            if let Ok(names) = fs::read_to_string(dir.join("netns")) {
                for name in names.lines().rev() {
                    netns::delete(name.trim());
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent life cycle, with a fake agent (tests/py/fake_agent.py):
    /// started inside the node's namespace by nsenter, reachable on its
    /// socket and, from inside the namespace, on its metrics address;
    /// kill9 and restart reuse the data dir; drop kills every agent.
    #[test]
    fn agent_lifecycle_with_a_fake_agent() {
        require_root();
        let fake = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/fake_agent.py");
        let c = Cluster::builder(2).agent_bin(&fake).build();
        let n1 = c.node(1);
        let pid = n1.pid().expect("agent runs");
        let ns_of = |p: &Path| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(
            ns_of(Path::new(&format!("/proc/{pid}/ns/net"))).expect("agent netns"),
            ns_of(&netns::path_of(n1.netns())).expect("node netns"),
            "the agent runs in its node's namespace"
        );
        let r = n1.api("GET", "/_ping", None);
        assert_eq!((r.status, r.text().as_str()), (200, "OK"));
        let m = n1.metrics();
        assert_eq!(
            m.get("fake_agent_starts_total", &[("hostname", "node1")]),
            Some(1.0)
        );
        n1.kill9();
        assert!(!n1.is_running());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "killed and reaped"
        );
        n1.restart();
        let pid2 = n1.pid().expect("restarted");
        assert_ne!(pid, pid2);
        assert_eq!(
            n1.metrics().get("fake_agent_starts_total", &[]),
            Some(2.0),
            "same data dir"
        );
        assert!(n1.log_tail(50).contains("start 2"), "{}", n1.log_tail(50));
        assert_eq!(
            c.node(2).metrics().get("fake_agent_starts_total", &[]),
            Some(1.0)
        );

        let pids = [pid2, c.node(2).pid().expect("node2 agent")];
        let names = c.netns_names();
        drop(c);
        for p in pids {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists(),
                "agent {p} outlived its cluster"
            );
        }
        let listed = netns::list();
        assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    }

    #[test]
    fn node_rows_parse_the_cli_json() {
        let r = NodeRow::parse(
            r#"{"Availability":"Active","EngineVersion":"28.2.0","Hostname":"node1","ID":"abc","ManagerStatus":"Leader","Self":true,"Status":"Ready","TLSStatus":"Ready"}"#,
        )
        .expect("parse");
        assert_eq!(r.hostname, "node1");
        assert_eq!(r.manager_status, "Leader");
        assert!(r.is_self);
        assert_eq!(r.status, "Ready");
    }

    /// The harness itself, without agents: two nodes on the hub's bridge
    /// ping each other, a cut link stops that, a healed one restores it,
    /// UDP between them is captured on the hub, and dropping the cluster
    /// removes every namespace and the temp dir.
    #[test]
    fn topology_without_agents_works_and_is_torn_down() {
        require_root();
        let c = Cluster::builder(2).agents(false).build();
        let names = c.netns_names();
        let listed = netns::list();
        for n in &names {
            assert!(listed.contains(n), "netns {n} missing from {listed:?}");
        }
        let (n1, n2) = (c.node(1), c.node(2));
        assert_eq!(n1.addr(), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(n2.addr(), Ipv4Addr::new(198, 18, 0, 12));
        let addrs = n1.exec_ok(&["ip", "-4", "-o", "addr", "show"]);
        assert!(
            addrs.contains("eth0") && addrs.contains("198.18.0.11/24"),
            "{addrs}"
        );
        let links = n1.exec_ok(&["ip", "-o", "link", "show"]);
        assert!(links.contains("lo:") && links.contains("eth0@"), "{links}");
        assert!(links.contains("UP"), "{links}");
        let bridge_ports = c.hub().ip_ok(&["-o", "link", "show", "master", BRIDGE]);
        assert!(
            bridge_ports.contains("p1@") && bridge_ports.contains("p2@"),
            "{bridge_ports}"
        );

        assert_eq!(n1.ping(n2.addr(), 3), 3, "node1 -> node2");
        assert_eq!(n2.ping(n1.addr(), 3), 3, "node2 -> node1");

        n2.cut_link();
        assert_eq!(n1.ping(n2.addr(), 2), 0, "ping across a cut link");
        n2.heal_link();
        retry("ping after heal_link", || match n1.ping(n2.addr(), 1) {
            1 => Ok(()),
            n => Err(format!("{n} replies")),
        });

        // UDP from node1 to node2:7946, seen on the hub.
        let sock = n1.udp_socket();
        let dst = n2.gossip_addr();
        let got = thread::scope(|s| {
            let cap = s.spawn(|| {
                c.capture_udp(Duration::from_secs(10), |d| {
                    d.dst == dst && d.payload.starts_with(b"harness-probe")
                })
            });
            while !cap.is_finished() {
                let _ = sock.send_to(b"harness-probe", dst);
                thread::sleep(Duration::from_millis(50));
            }
            cap.join().expect("capture thread")
        })
        .expect("capture the probe");
        assert_eq!(*got.src.ip(), n1.addr());
        assert_eq!(got.payload, b"harness-probe");

        let dir = c.dir().to_owned();
        drop(c);
        let listed = netns::list();
        for n in &names {
            assert!(!listed.contains(n), "netns {n} left behind: {listed:?}");
            assert!(!netns::path_of(n).exists(), "{n} still mounted");
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
