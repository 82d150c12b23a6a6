//! Membership benchmarks: failure detection, join time and idle cost of
//! real agents in network namespaces, driven through the cluster harness.
//!
//! A plain `main()` (`harness = false`), not a timed test: it prints what
//! it measured and fails only when the cluster itself does. Run it as root
//! against the release agent:
//!
//! ```text
//! cargo build --release -p swarmnet
//! SWARMNET_BIN=$PWD/target/release/swarmnet cargo bench -p swarmnet-tests --bench membership
//! ```
//!
//! Environment (defaults in brackets):
//! - `SWARMNET_BENCH_ONLY`: which benchmarks, comma-separated, of
//!   `detect,join,idle` [all three].
//! - `SWARMNET_BENCH_SIZES`: cluster sizes for failure detection [3,10,30].
//! - `SWARMNET_BENCH_REPEATS`: kills per size [5].
//! - `SWARMNET_BENCH_SETTLE_SECS`: quiet time before each kill, once every
//!   agent's gossip sees all the others [3].
//! - `SWARMNET_BENCH_DETECT_TIMEOUT_SECS`: give up on one kill after [60].
//! - `SWARMNET_BENCH_JOIN_NODES`: size of the swarm formed one join at a
//!   time [30].
//! - `SWARMNET_BENCH_IDLE_NODES` [10], `SWARMNET_BENCH_IDLE_SETTLE_SECS`
//!   [10], `SWARMNET_BENCH_IDLE_SECS` [30]: the idle-cost cluster, how long
//!   it settles after forming, and the sampling window.
//! - `SWARMNET_BENCH_POLL_MS`: how often the manager's API is polled for
//!   failure detection and readiness [50].
//! - `SWARMNET_BENCH_JOIN_POLL_MS`: how often the manager's API and metrics
//!   are polled while a node joins [10] (a join takes tens of ms, so 50 ms
//!   would measure the poll).
//!
//! Plus the harness's own: `SWARMNET_BIN`, `SWARMNET_TEST_PATIENCE_SECS`
//! (how long to wait for a swarm to form or a node to be Ready), and
//! `SWARMNET_TEST_KEEP=1` (keep the agents' logs; each kill's progress
//! line has its time in epoch seconds, to line the logs up with).
//!
//! BENCHMARKS.md at the repository root explains each measurement and
//! holds the results.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, http, netns, patience, require_root};

/// Docker Swarm 20.10, 3 nodes, on this kind of machine: kill -9 of a
/// worker's engine until `docker node ls` shows it Down (the figure the
/// issue gives; no Docker engine runs here, so it is not re-measured).
const REFERENCE_DETECT_3: Duration = Duration::from_secs(12);
/// The goal: a third of the reference or less.
const GOAL_DETECT: Duration = Duration::from_secs(4);
/// How often RSS is sampled during the idle window.
const IDLE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

struct Settings {
    only: Vec<String>,
    sizes: Vec<usize>,
    repeats: usize,
    settle: Duration,
    detect_timeout: Duration,
    join_nodes: usize,
    idle_nodes: usize,
    idle_settle: Duration,
    idle_window: Duration,
    poll: Duration,
    join_poll: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let s = Self {
            only: env_list("SWARMNET_BENCH_ONLY", "detect,join,idle"),
            sizes: env_list("SWARMNET_BENCH_SIZES", "3,10,30")
                .iter()
                .map(|v| parse_num("SWARMNET_BENCH_SIZES", v))
                .collect(),
            repeats: env_num("SWARMNET_BENCH_REPEATS", 5),
            settle: env_secs("SWARMNET_BENCH_SETTLE_SECS", 3.0),
            detect_timeout: env_secs("SWARMNET_BENCH_DETECT_TIMEOUT_SECS", 60.0),
            join_nodes: env_num("SWARMNET_BENCH_JOIN_NODES", 30),
            idle_nodes: env_num("SWARMNET_BENCH_IDLE_NODES", 10),
            idle_settle: env_secs("SWARMNET_BENCH_IDLE_SETTLE_SECS", 10.0),
            idle_window: env_secs("SWARMNET_BENCH_IDLE_SECS", 30.0),
            poll: Duration::from_millis(env_num("SWARMNET_BENCH_POLL_MS", 50) as u64),
            join_poll: Duration::from_millis(env_num("SWARMNET_BENCH_JOIN_POLL_MS", 10) as u64),
        };
        for b in &s.only {
            assert!(
                ["detect", "join", "idle"].contains(&b.as_str()),
                "SWARMNET_BENCH_ONLY: unknown benchmark {b:?} (detect, join, idle)"
            );
        }
        assert!(
            s.sizes.iter().all(|n| (2..=200).contains(n)),
            "SWARMNET_BENCH_SIZES: each size needs a manager and a worker (2..=200): {:?}",
            s.sizes
        );
        assert!(s.repeats >= 1, "SWARMNET_BENCH_REPEATS must be at least 1");
        assert!(
            (2..=200).contains(&s.join_nodes),
            "SWARMNET_BENCH_JOIN_NODES must be 2..=200"
        );
        assert!(
            (2..=200).contains(&s.idle_nodes),
            "SWARMNET_BENCH_IDLE_NODES must be 2..=200"
        );
        s
    }

    fn wants(&self, bench: &str) -> bool {
        self.only.iter().any(|b| b == bench)
    }
}

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_num(key: &str, v: &str) -> usize {
    v.parse()
        .unwrap_or_else(|e| panic!("{key}: {v:?} is not a count: {e}"))
}

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).map_or(default, |v| parse_num(key, v.trim()))
}

fn env_secs(key: &str, default: f64) -> Duration {
    let secs = std::env::var(key).map_or(default, |v| {
        v.trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{key}: {v:?} is not a number of seconds: {e}"))
    });
    assert!(secs >= 0.0, "{key} must not be negative");
    Duration::from_secs_f64(secs)
}

// ----- reading the manager -----

/// `GET /nodes` on `node`'s socket: hostname -> `Status.State`
/// (`ready`, `down`, ...).
fn node_states(node: &Node) -> Result<HashMap<String, String>, String> {
    let r = http::unix_request(node.socket(), "GET", "/nodes", None, Duration::from_secs(5))
        .map_err(|e| format!("GET /nodes: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET /nodes: HTTP {}: {}", r.status, r.text()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("GET /nodes: not JSON: {e}"))?;
    let list = v.as_array().ok_or("GET /nodes: not an array")?;
    Ok(list
        .iter()
        .map(|n| {
            let s = |p: &str| {
                n.pointer(p)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (s("/Description/Hostname"), s("/Status/State"))
        })
        .collect())
}

/// The members `node`'s gossip layer sees alive (itself not counted).
fn gossip_alive(node: &Node) -> Option<f64> {
    node.try_metrics()
        .ok()?
        .get("swarmnet_gossip_members_alive", &[])
}

/// Calls `f` every `poll` (on a fixed cadence, not `poll` after each
/// call) until it returns `Some`, or `timeout` has passed since `start`.
fn poll_until<T>(
    start: Instant,
    poll: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let mut next = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        next += poll;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Waits until the manager's `GET /nodes` lists exactly `n` nodes, all
/// ready; returns how long that took.
#[track_caller]
fn wait_all_ready(m: &Node, n: usize, poll: Duration) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    poll_until(start, poll, patience(), || match node_states(m) {
        Ok(s) if s.len() == n && s.values().all(|st| st == "ready") => Some(start.elapsed()),
        Ok(s) => {
            last = format!("{s:?}");
            None
        }
        Err(e) => {
            last = e;
            None
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "{n} nodes not all ready within {:?}; last: {last}",
            patience()
        )
    })
}

// ----- the agents' processes -----

/// Whether `pid` runs the agent binary (`/proc/PID/exe`).
fn runs_agent(pid: u32) -> bool {
    let bin = swarmnet_tests::cluster::agent_bin();
    let bin = fs::canonicalize(&bin).unwrap_or(bin);
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin)
}

/// The agent's own PID: the harness starts `nsenter --net=... -- swarmnet`,
/// and nsenter execs the agent, so the child's PID is the agent's; checked
/// here (and its child taken if nsenter ever forks).
#[track_caller]
fn agent_pid(node: &Node) -> u32 {
    let pid = node
        .pid()
        .unwrap_or_else(|| panic!("{}: agent not running", node.hostname()));
    if runs_agent(pid) {
        return pid;
    }
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c| runs_agent(*c))
        .unwrap_or_else(|| {
            panic!(
                "{}: PID {pid} is not the agent {} and has no child that is",
                node.hostname(),
                swarmnet_tests::cluster::agent_bin().display()
            )
        })
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat =
        fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("stat {pid}: {e}"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .ok_or("no ) in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect::<Vec<_>>();
    let field = |n: usize| -> Result<u64, String> {
        rest.get(n - 3)
            .ok_or_else(|| format!("no field {n} in /proc/{pid}/stat"))?
            .parse()
            .map_err(|e| format!("field {n} of /proc/{pid}/stat: {e}"))
    };
    Ok(field(14)? + field(15)?)
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("status {pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in ticks:
/// (busy, total), busy being everything but idle and iowait.
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How busy the whole machine was (all CPUs, every process: ours, and
/// anything else running) between two [`machine_ticks`], in percent.
fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return f64::NAN;
    }
    b.0.saturating_sub(a.0) as f64 / total as f64 * 100.0
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds since the epoch, for matching the agents' log timestamps.
fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clk_tck() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("getconf CLK_TCK prints a number")
}

// ----- statistics and printing -----

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format!($($arg)*)) };
}

// ----- cleanup check -----

/// What a cluster left to check after it is dropped.
struct Footprint {
    netns: Vec<String>,
    dir: std::path::PathBuf,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(c: &Cluster) -> Self {
        Self {
            netns: c.netns_names(),
            dir: c.dir().to_owned(),
            pids: c.nodes().iter().filter_map(Node::pid).collect(),
        }
    }

    /// Panics if anything of the (dropped) cluster is still there.
    #[track_caller]
    fn assert_gone(&self) {
        let listed = netns::list();
        let left: Vec<_> = self.netns.iter().filter(|n| listed.contains(n)).collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        if std::env::var("SWARMNET_TEST_KEEP").is_ok_and(|v| v == "1") {
            progress!("kept {} (SWARMNET_TEST_KEEP=1)", self.dir.display());
        } else {
            assert!(!self.dir.exists(), "{} left behind", self.dir.display());
        }
        for pid in &self.pids {
            assert!(!runs_agent(*pid), "agent {pid} outlived its cluster");
        }
    }
}

/// How loaded the machine was while a benchmark ran.
struct Load {
    /// All CPUs, all processes, percent.
    busy: f64,
    before: String,
    after: String,
}

impl Load {
    fn show(&self) -> String {
        format!(
            "machine CPU busy {:.0} % (all processes); load average before {}, after {}",
            self.busy, self.before, self.after
        )
    }
}

/// Builds a cluster (agents started, not yet a swarm), runs `f` on it,
/// drops it and checks it left nothing behind; also returns how busy the
/// machine was meanwhile.
fn with_cluster<T>(n: usize, f: impl FnOnce(&Cluster) -> T) -> (T, Load) {
    let before = loadavg();
    let m0 = machine_ticks();
    let t = Instant::now();
    let c = Cluster::new(n);
    progress!(
        "{n}-node cluster {} up (agents answer /_ping) in {:.1}s",
        c.prefix(),
        t.elapsed().as_secs_f64()
    );
    let out = f(&c);
    // Taken after `f`: restarted agents have new PIDs.
    let footprint = Footprint::of(&c);
    let load = Load {
        busy: busy_pct(m0, machine_ticks()),
        before,
        after: loadavg(),
    };
    drop(c);
    footprint.assert_gone();
    progress!(
        "{n}-node cluster dropped; nothing left behind; {}",
        load.show()
    );
    (out, load)
}

/// `docker swarm init` and a join per worker, until all are ready.
fn form(c: &Cluster, poll: Duration) {
    let t = Instant::now();
    c.form_swarm();
    wait_all_ready(c.manager(), c.nodes().len(), poll);
    progress!(
        "formed a {}-node swarm in {:.1}s",
        c.nodes().len(),
        t.elapsed().as_secs_f64()
    );
}

// ----- 1. failure detection -----

struct DetectResult {
    nodes: usize,
    /// Seconds from kill -9 to `down`, per kill; `None` for a timeout.
    samples: Vec<Option<f64>>,
    /// Seconds from the restart to the manager listing every node ready.
    recover: Vec<f64>,
    /// Seconds from the restart until every agent's gossip counted all
    /// others alive again (`None`: not within the patience).
    converge: Vec<Option<f64>>,
    load: Load,
}

/// Waits until every running agent's gossip layer counts all `n - 1`
/// others alive (`swarmnet_gossip_members_alive`), so each kill hits a
/// swarm whose membership has converged; returns how long that took from
/// `start`, or `None` (with a note) if it did not within the patience.
fn wait_converged(c: &Cluster, start: Instant) -> Option<f64> {
    let want = (c.nodes().len() - 1) as f64;
    let mut last = Vec::new();
    let got = poll_until(start, Duration::from_millis(200), patience(), || {
        last = c.nodes().iter().map(gossip_alive).collect::<Vec<_>>();
        last.iter()
            .all(|a| *a == Some(want))
            .then(|| secs(start.elapsed()))
    });
    if got.is_none() {
        progress!(
            "gossip did not converge within {:?}: alive counts {last:?}",
            patience()
        );
    }
    got
}

fn bench_detect(s: &Settings, n: usize) -> DetectResult {
    let ((samples, recover, converge), load) = with_cluster(n, |c| {
        form(c, s.poll);
        let formed = Instant::now();
        if let Some(t) = wait_converged(c, formed) {
            progress!("{n} nodes: every agent's gossip sees all others {t:.2}s after forming");
        }
        let m = c.manager();
        let workers = n - 1;
        let mut samples = Vec::new();
        let mut recover = Vec::new();
        let mut converge = Vec::new();
        for r in 0..s.repeats {
            // Workers from the last one down, wrapping: different workers
            // as long as there are enough.
            let w = c.node(n - (r % workers));
            thread::sleep(s.settle);
            let start = Instant::now();
            let at = epoch();
            w.kill9();
            let mut last = String::new();
            let got = poll_until(start, s.poll, s.detect_timeout, || {
                match node_states(m) {
                    Ok(st) => match st.get(w.hostname()).map(String::as_str) {
                        Some("down") => return Some(start.elapsed()),
                        other => last = format!("{other:?}"),
                    },
                    Err(e) => last = e,
                }
                None
            });
            match got {
                Some(d) => progress!(
                    "{n} nodes, kill {}/{} at {at:.3}: {} down after {:.2}s",
                    r + 1,
                    s.repeats,
                    w.hostname(),
                    secs(d)
                ),
                None => progress!(
                    "{n} nodes, kill {}/{} at {at:.3}: {} NOT down after {:?} (last: {last})",
                    r + 1,
                    s.repeats,
                    w.hostname(),
                    s.detect_timeout
                ),
            }
            samples.push(got.map(secs));
            let t = Instant::now();
            w.restart();
            wait_all_ready(m, n, s.poll);
            recover.push(secs(t.elapsed()));
            converge.push(wait_converged(c, t));
        }
        (samples, recover, converge)
    });
    DetectResult {
        nodes: n,
        samples,
        recover,
        converge,
        load,
    }
}

// ----- 2. join time -----

struct JoinSample {
    /// 1-based index of the node, which is also the swarm's size after it.
    node: usize,
    /// `docker swarm join` returned.
    cli: f64,
    /// The manager's `GET /nodes` lists it ready.
    ready: f64,
    /// The manager's gossip layer counts it alive.
    gossip: Option<f64>,
}

fn bench_join(s: &Settings) -> (Vec<JoinSample>, Load) {
    let n = s.join_nodes;
    with_cluster(n, |c| {
        let tokens = c.init_swarm();
        let m = c.manager();
        let addr = c.manager_addr();
        let mut out = Vec::new();
        for i in 2..=n {
            let node = c.node(i);
            let host = node.hostname().to_owned();
            let start = Instant::now();
            let sample = thread::scope(|scope| {
                let join = scope.spawn(|| {
                    let o = node.docker(&["swarm", "join", "--token", &tokens.worker, &addr]);
                    (o, start.elapsed())
                });
                let mut ready = None;
                let mut gossip = None;
                let deadline = patience();
                poll_until(start, s.join_poll, deadline, || {
                    if ready.is_none()
                        && node_states(m)
                            .is_ok_and(|st| st.get(&host).is_some_and(|v| v == "ready"))
                    {
                        ready = Some(start.elapsed());
                    }
                    if gossip.is_none() && gossip_alive(m).is_some_and(|a| a >= (i - 1) as f64) {
                        gossip = Some(start.elapsed());
                    }
                    (ready.is_some() && gossip.is_some() && join.is_finished()).then_some(())
                });
                let (o, cli) = join.join().expect("join thread");
                assert!(
                    o.status.success(),
                    "{host}: docker swarm join failed: {}\n{}",
                    String::from_utf8_lossy(&o.stderr),
                    node.log_tail(20)
                );
                let ready = ready.unwrap_or_else(|| {
                    panic!("{host} not ready in the manager's list within {deadline:?}")
                });
                JoinSample {
                    node: i,
                    cli: secs(cli),
                    ready: secs(ready),
                    gossip: gossip.map(secs),
                }
            });
            progress!(
                "join {i}/{n}: CLI returned {:.2}s, manager lists it ready {:.2}s, manager's gossip sees it {}",
                sample.cli,
                sample.ready,
                sample
                    .gossip
                    .map_or_else(|| "never (timeout)".to_owned(), |g| format!("{g:.2}s"))
            );
            out.push(sample);
        }
        // The swarm is whole at the end.
        wait_all_ready(m, n, s.poll);
        out
    })
}

// ----- 3. idle cost -----

struct IdleAgent {
    hostname: String,
    manager: bool,
    /// Largest VmRSS seen in the window, MiB.
    rss_max: f64,
    /// Median VmRSS in the window, MiB.
    rss_median: f64,
    /// CPU time over the window, percent of one core.
    cpu_pct: f64,
}

fn bench_idle(s: &Settings) -> (Vec<IdleAgent>, Load) {
    let n = s.idle_nodes;
    with_cluster(n, |c| {
        form(c, s.poll);
        progress!("idle: settling {:?}", s.idle_settle);
        thread::sleep(s.idle_settle);
        let tck = clk_tck();
        let pids: Vec<u32> = c.nodes().iter().map(agent_pid).collect();
        let mut rss: Vec<Vec<f64>> = vec![Vec::new(); n];
        let cpu0: Vec<u64> = pids
            .iter()
            .map(|p| cpu_ticks(*p).expect("cpu ticks"))
            .collect();
        let start = Instant::now();
        progress!("idle: sampling {n} agents for {:?}", s.idle_window);
        let mut next = start;
        loop {
            for (k, p) in pids.iter().enumerate() {
                rss[k].push(rss_kib(*p).expect("VmRSS") as f64 / 1024.0);
            }
            next += IDLE_SAMPLE_EVERY;
            if next > start + s.idle_window {
                break;
            }
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        thread::sleep((start + s.idle_window).saturating_duration_since(Instant::now()));
        let window = start.elapsed();
        let cpu1: Vec<u64> = pids
            .iter()
            .map(|p| cpu_ticks(*p).expect("cpu ticks"))
            .collect();
        // Every agent still runs the same process, and the swarm is whole.
        for (node, p) in c.nodes().iter().zip(&pids) {
            assert_eq!(agent_pid(node), *p, "{} restarted", node.hostname());
        }
        wait_all_ready(c.manager(), n, s.poll);
        c.nodes()
            .iter()
            .enumerate()
            .map(|(k, node)| IdleAgent {
                hostname: node.hostname().to_owned(),
                manager: k == 0,
                rss_max: max(&rss[k]),
                rss_median: median(&rss[k]),
                cpu_pct: (cpu1[k] - cpu0[k]) as f64 / tck / secs(window) * 100.0,
            })
            .collect()
    })
}

// ----- main -----

fn main() {
    require_root();
    let s = Settings::from_env();
    let bin = swarmnet_tests::cluster::agent_bin();
    let our_prefix = format!("sn{}x", std::process::id() % 100_000);
    let started = Instant::now();
    progress!(
        "agent {}; detect sizes {:?} x {} kills; join {} nodes; idle {} nodes, {:?} settle + {:?} window; poll {:?} (joins {:?})",
        bin.display(),
        s.sizes,
        s.repeats,
        s.join_nodes,
        s.idle_nodes,
        s.idle_settle,
        s.idle_window,
        s.poll,
        s.join_poll
    );

    let detect: Vec<DetectResult> = if s.wants("detect") {
        s.sizes.iter().map(|&n| bench_detect(&s, n)).collect()
    } else {
        Vec::new()
    };
    let (join, join_load) = if s.wants("join") {
        let (j, l) = bench_join(&s);
        (j, Some(l))
    } else {
        (Vec::new(), None)
    };
    let (idle, idle_load) = if s.wants("idle") {
        let (i, l) = bench_idle(&s);
        (i, Some(l))
    } else {
        (Vec::new(), None)
    };

    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&our_prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");

    let mut r = String::new();
    let w = &mut r;
    let _ = writeln!(w, "\n# swarmnet membership benchmark\n");
    let _ = writeln!(
        w,
        "agent: {}; kernel {}; {} CPUs; total {:.0}s\n",
        bin.display(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        thread::available_parallelism().map_or(0, usize::from),
        started.elapsed().as_secs_f64()
    );
    if !detect.is_empty() {
        let _ = writeln!(
            w,
            "## 1. Failure detection (kill -9 of a worker -> manager's GET /nodes says down, polled every {} ms)\n",
            s.poll.as_millis()
        );
        let _ = writeln!(
            w,
            "| nodes | kills | median (s) | max (s) | min (s) | timeouts | median / Docker 20.10 (12 s, 3 nodes) | goal <= 4 s | recovery after restart, median (s) |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
        for d in &detect {
            let ok: Vec<f64> = d.samples.iter().flatten().copied().collect();
            let timeouts = d.samples.len() - ok.len();
            let med = median(&ok);
            let _ = writeln!(
                w,
                "| {} | {} | {med:.2} | {:.2} | {:.2} | {timeouts} | {:.2} ({:.1}x faster) | {} | {:.2} |",
                d.nodes,
                d.samples.len(),
                max(&ok),
                min(&ok),
                med / secs(REFERENCE_DETECT_3),
                secs(REFERENCE_DETECT_3) / med,
                if timeouts == 0 && med <= secs(GOAL_DETECT) {
                    "met"
                } else {
                    "NOT met"
                },
                median(&d.recover),
            );
        }
        let _ = writeln!(w);
        for d in &detect {
            let v: Vec<String> = d
                .samples
                .iter()
                .map(|x| x.map_or_else(|| "timeout".to_owned(), |x| format!("{x:.2}")))
                .collect();
            let conv: Vec<String> = d
                .converge
                .iter()
                .map(|x| x.map_or_else(|| "no".to_owned(), |x| format!("{x:.2}")))
                .collect();
            let _ = writeln!(
                w,
                "- {} nodes, each kill (s): {}; after each restart, every agent's gossip saw all others again after (s): {}; {}",
                d.nodes,
                v.join(", "),
                conv.join(", "),
                d.load.show()
            );
        }
        let _ = writeln!(w);
    }
    if !join.is_empty() {
        let n = s.join_nodes;
        let _ = writeln!(
            w,
            "## 2. Join time (`docker swarm join` started -> manager's GET /nodes lists the node ready, polled every {} ms; {n}-node swarm formed one join at a time)\n",
            s.join_poll.as_millis()
        );
        let _ = writeln!(
            w,
            "| joining node | CLI returned (s) | listed ready (s) | manager's gossip sees it (s) |"
        );
        let _ = writeln!(w, "|---|---|---|---|");
        let picks: Vec<usize> = [3, 10, 30]
            .into_iter()
            .filter(|&i| i <= n)
            .chain((![3, 10, 30].contains(&n)).then_some(n))
            .collect();
        let fmt_g = |g: Option<f64>| g.map_or_else(|| "timeout".to_owned(), |g| format!("{g:.2}"));
        for p in picks {
            if let Some(j) = join.iter().find(|j| j.node == p) {
                let _ = writeln!(
                    w,
                    "| {} | {:.2} | {:.2} | {} |",
                    ordinal(p),
                    j.cli,
                    j.ready,
                    fmt_g(j.gossip)
                );
            }
        }
        let cli: Vec<f64> = join.iter().map(|j| j.cli).collect();
        let ready: Vec<f64> = join.iter().map(|j| j.ready).collect();
        let gossip: Vec<f64> = join.iter().filter_map(|j| j.gossip).collect();
        let _ = writeln!(
            w,
            "| median of all {} joins | {:.2} | {:.2} | {:.2} |",
            join.len(),
            median(&cli),
            median(&ready),
            median(&gossip)
        );
        let _ = writeln!(
            w,
            "| max of all {} joins | {:.2} | {:.2} | {:.2} |",
            join.len(),
            max(&cli),
            max(&ready),
            max(&gossip)
        );
        let _ = writeln!(w);
        let _ = writeln!(w, "- listed ready, nodes 2..={n} (s): {}", list(&ready));
        let _ = writeln!(w, "- gossip sees it, nodes 2..={n} (s): {}", list(&gossip));
        if let Some(l) = &join_load {
            let _ = writeln!(w, "- {}", l.show());
        }
        let _ = writeln!(w);
    }
    if !idle.is_empty() {
        let _ = writeln!(
            w,
            "## 3. Idle cost ({}-node swarm, {:.0} s settle, {:.0} s window, RSS sampled every {:.0} s)\n",
            s.idle_nodes,
            secs(s.idle_settle),
            secs(s.idle_window),
            secs(IDLE_SAMPLE_EVERY)
        );
        let _ = writeln!(
            w,
            "| agents | RSS median (MiB) | RSS max (MiB) | CPU median (% of one core) | CPU max (% of one core) |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|");
        for (label, group) in [
            (
                "manager (node1)",
                idle.iter().filter(|a| a.manager).collect::<Vec<_>>(),
            ),
            (
                "workers",
                idle.iter().filter(|a| !a.manager).collect::<Vec<_>>(),
            ),
        ] {
            let rss: Vec<f64> = group.iter().map(|a| a.rss_median).collect();
            let rss_max: Vec<f64> = group.iter().map(|a| a.rss_max).collect();
            let cpu: Vec<f64> = group.iter().map(|a| a.cpu_pct).collect();
            let _ = writeln!(
                w,
                "| {label} ({}) | {:.1} | {:.1} | {:.2} | {:.2} |",
                group.len(),
                median(&rss),
                max(&rss_max),
                median(&cpu),
                max(&cpu)
            );
        }
        let _ = writeln!(w);
        for a in &idle {
            let _ = writeln!(
                w,
                "- {}: RSS median {:.1} MiB, max {:.1} MiB; CPU {:.2} %",
                a.hostname, a.rss_median, a.rss_max, a.cpu_pct
            );
        }
        if let Some(l) = &idle_load {
            let _ = writeln!(w, "- {}", l.show());
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "cleanup: no namespace of this run in `ip netns list`, no agent left running"
    );
    print!("{r}");
}
