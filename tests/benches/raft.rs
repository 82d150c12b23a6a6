//! Manager (Raft) benchmarks: write latency through the leader and a
//! follower, leader failover after kill -9, a restarted manager's catch-up,
//! and an etcd 3-member cluster as a baseline, all in the harness's
//! network namespaces.
//!
//! A plain `main()` (`harness = false`) that prints a Markdown report. Run
//! it as root against the release agent:
//!
//! ```text
//! cargo build --release -p swarmnet
//! SWARMNET_BIN=$PWD/target/release/swarmnet cargo bench -p swarmnet-tests --bench raft
//! ```
//!
//! Environment (defaults in brackets):
//! - `SWARMNET_RAFT_ONLY`: comma-separated subset of
//!   `latency,failover,etcd,catchup` [all four].
//! - `SWARMNET_RAFT_SIZES`: manager counts [3,5]; 1 (write latency of a
//!   lone manager, no replication) is allowed, failover needs 3 or more.
//! - `SWARMNET_RAFT_WRITES`: timed writes per size and target [200].
//! - `SWARMNET_RAFT_KILLS`: leader kills per size, and per etcd setting [10].
//! - `SWARMNET_RAFT_ATTEMPT_TIMEOUT_MS`: one write attempt during failover
//!   gives up after this (swarmnet HTTP read timeout, etcdctl
//!   `--command-timeout`) [1000].
//! - `SWARMNET_RAFT_ATTEMPT_EVERY_MS`: during failover a new write attempt
//!   starts this often, each on its own thread, whether or not earlier
//!   ones are still waiting, so the result is not quantized by the attempt
//!   timeout [50]. 0: sequential, one attempt at a time (10 ms apart).
//! - `SWARMNET_RAFT_FAILOVER_TIMEOUT_SECS`: give up on one kill after [60].
//! - `SWARMNET_RAFT_SETTLE_SECS`: quiet time before each kill [1].
//! - `SWARMNET_RAFT_ETCD_PUTS`: timed `etcdctl put` runs (process spawn
//!   included) [50].
//! - `SWARMNET_RAFT_CATCHUP_WRITES`: writes made while a manager is down,
//!   before timing its catch-up [1000].
//!
//! Plus the harness's `SWARMNET_BIN`, `SWARMNET_TEST_PATIENCE_SECS` and
//! `SWARMNET_TEST_KEEP=1`. BENCHMARKS.md ("Managers (Raft)") holds results.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, http, netns, patience, require_root};

const ETCD_PEER: u16 = 2380;
const ETCD_CLIENT: u16 = 2379;

struct Settings {
    only: Vec<String>,
    sizes: Vec<usize>,
    writes: usize,
    kills: usize,
    attempt_timeout: Duration,
    attempt_every: Duration,
    failover_timeout: Duration,
    settle: Duration,
    etcd_puts: usize,
    catchup_writes: usize,
}

fn env_str(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {v:?} is not a count: {e}"))
    })
}

fn env_secs(key: &str, default: f64) -> Duration {
    let s = std::env::var(key).map_or(default, |v| {
        v.trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{key}: {v:?} is not seconds: {e}"))
    });
    assert!(s >= 0.0, "{key} must not be negative");
    Duration::from_secs_f64(s)
}

impl Settings {
    fn from_env() -> Self {
        let list = |k: &str, d: &str| -> Vec<String> {
            env_str(k, d)
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let s = Self {
            only: list("SWARMNET_RAFT_ONLY", "latency,failover,etcd,catchup"),
            sizes: list("SWARMNET_RAFT_SIZES", "3,5")
                .iter()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|e| panic!("SWARMNET_RAFT_SIZES: {v:?}: {e}"))
                })
                .collect(),
            writes: env_num("SWARMNET_RAFT_WRITES", 200),
            kills: env_num("SWARMNET_RAFT_KILLS", 10),
            attempt_timeout: Duration::from_millis(
                env_num("SWARMNET_RAFT_ATTEMPT_TIMEOUT_MS", 1000) as u64,
            ),
            attempt_every: Duration::from_millis(
                env_num("SWARMNET_RAFT_ATTEMPT_EVERY_MS", 50) as u64
            ),
            failover_timeout: env_secs("SWARMNET_RAFT_FAILOVER_TIMEOUT_SECS", 60.0),
            settle: env_secs("SWARMNET_RAFT_SETTLE_SECS", 1.0),
            etcd_puts: env_num("SWARMNET_RAFT_ETCD_PUTS", 50),
            catchup_writes: env_num("SWARMNET_RAFT_CATCHUP_WRITES", 1000),
        };
        for b in &s.only {
            assert!(
                ["latency", "failover", "etcd", "catchup"].contains(&b.as_str()),
                "SWARMNET_RAFT_ONLY: unknown benchmark {b:?}"
            );
        }
        assert!(
            s.sizes.iter().all(|n| (1..=9).contains(n)),
            "SWARMNET_RAFT_SIZES: 1..=9 managers each: {:?}",
            s.sizes
        );
        assert!(
            s.writes >= 1 && s.kills >= 1,
            "writes and kills must be >= 1"
        );
        s
    }

    fn wants(&self, b: &str) -> bool {
        self.only.iter().any(|x| x == b)
    }
}

macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format!($($arg)*)) };
}

// ----- statistics -----

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// Nearest-rank percentile.
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// (busy, total) ticks of all CPUs from `/proc/stat`.
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

struct Load {
    busy: f64,
    before: String,
    after: String,
}

impl Load {
    fn start() -> ((u64, u64), String) {
        (machine_ticks(), loadavg())
    }

    fn finish(s: ((u64, u64), String)) -> Self {
        let b = machine_ticks();
        let total = b.1.saturating_sub(s.0.1).max(1);
        Self {
            busy: b.0.saturating_sub(s.0.0) as f64 / total as f64 * 100.0,
            before: s.1,
            after: loadavg(),
        }
    }

    fn show(&self) -> String {
        format!(
            "machine CPU busy {:.0} % (all processes), load average before {}, after {}",
            self.busy, self.before, self.after
        )
    }
}

// ----- failover probing -----

/// From `start` (just before the kill), starts `attempt(k)` every `every`
/// on its own thread (each bounded by its own timeout) until one returns
/// `Ok`; returns the seconds from `start` to the first success (`None`
/// after `give_up`), the number of attempts and the last error.
fn first_success(
    start: Instant,
    every: Duration,
    give_up: Duration,
    attempt: impl Fn(usize) -> Result<(), String> + Sync,
) -> (Option<f64>, usize, String) {
    let best: std::sync::Mutex<Option<f64>> = std::sync::Mutex::new(None);
    let last = std::sync::Mutex::new(String::new());
    let mut k = 0;
    thread::scope(|scope| {
        let mut next = start;
        loop {
            if best.lock().expect("lock").is_some() || start.elapsed() >= give_up {
                break;
            }
            k += 1;
            if every.is_zero() {
                // Sequential: the next attempt starts when this one ends.
                match attempt(k) {
                    Ok(()) => *best.lock().expect("lock") = Some(start.elapsed().as_secs_f64()),
                    Err(e) => {
                        *last.lock().expect("lock") = e;
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                continue;
            }
            let (best, last, attempt) = (&best, &last, &attempt);
            scope.spawn(move || match attempt(k) {
                Ok(()) => {
                    let t = start.elapsed().as_secs_f64();
                    let mut b = best.lock().expect("lock");
                    *b = Some(b.map_or(t, |x: f64| x.min(t)));
                }
                Err(e) => *last.lock().expect("lock") = e,
            });
            next += every;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    let b = *best.lock().expect("lock");
    let l = last.lock().expect("lock").clone();
    (b, k, l)
}

// ----- swarmnet managers -----

fn api(
    node: &Node,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    t: Duration,
) -> Result<http::HttpResponse, String> {
    http::unix_request(node.socket(), method, path, body, t)
        .map_err(|e| format!("{method} {path}: {e}"))
}

/// Whether `node`'s Raft says it leads (`swarmnet_raft_leader 1`).
fn is_leader(node: &Node) -> bool {
    node.try_metrics()
        .ok()
        .and_then(|m| m.get("swarmnet_raft_leader", &[]))
        == Some(1.0)
}

fn applied(node: &Node) -> Option<f64> {
    node.try_metrics()
        .ok()?
        .get("swarmnet_raft_last_applied_index", &[])
}

/// Inits node1, joins all others as managers, waits until all are Ready
/// with one Leader and the rest Reachable.
fn form_managers(c: &Cluster) {
    let t = Instant::now();
    let tokens = c.init_swarm();
    for i in 2..=c.nodes().len() {
        c.join(i, &tokens.manager);
    }
    wait_managers_healthy(c);
    progress!(
        "formed {} managers in {:.1}s",
        c.nodes().len(),
        t.elapsed().as_secs_f64()
    );
}

/// Waits until, seen from a running manager, `docker node ls` lists every
/// node Ready with exactly one Leader and the others Reachable, and the
/// Raft metrics of the running agents agree there is exactly one leader.
fn wait_managers_healthy(c: &Cluster) {
    let n = c.nodes().len();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < patience() {
        if let Some(m) = c.nodes().iter().find(|m| m.is_running()) {
            match m.try_node_ls() {
                Ok(rows) => {
                    let leaders = rows.iter().filter(|r| r.manager_status == "Leader").count();
                    let ok = rows.len() == n
                        && leaders == 1
                        && rows.iter().all(|r| {
                            r.status == "Ready"
                                && (r.manager_status == "Leader" || r.manager_status == "Reachable")
                        });
                    let metric_leaders = c.nodes().iter().filter(|x| is_leader(x)).count();
                    if ok && metric_leaders == 1 {
                        return;
                    }
                    last = format!(
                        "{:?}; metric leaders {metric_leaders}",
                        rows.iter()
                            .map(|r| format!("{} {} {}", r.hostname, r.status, r.manager_status))
                            .collect::<Vec<_>>()
                    );
                }
                Err(e) => last = e,
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("managers not healthy within {:?}; last: {last}", patience());
}

fn leader(c: &Cluster) -> &Node {
    let start = Instant::now();
    loop {
        let l: Vec<&Node> = c.nodes().iter().filter(|n| is_leader(n)).collect();
        if l.len() == 1 {
            return l[0];
        }
        assert!(
            start.elapsed() < patience(),
            "no single leader: {}",
            l.len()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /nodes/{id}` on `via`: (version, spec).
fn get_node(via: &Node, id: &str, t: Duration) -> Result<(u64, serde_json::Value), String> {
    let r = api(via, "GET", &format!("/nodes/{id}"), None, t)?;
    if r.status != 200 {
        return Err(format!("GET /nodes/{id}: HTTP {}: {}", r.status, r.text()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("GET /nodes/{id}: {e}"))?;
    let version = v
        .pointer("/Version/Index")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no Version.Index")?;
    Ok((version, v.get("Spec").cloned().unwrap_or_default()))
}

/// One write: GET the node, then POST its spec with the previous bench
/// label replaced by `bench.w{k}`; returns the POST's duration.
fn write(via: &Node, id: &str, k: usize, t: Duration) -> Result<Duration, String> {
    let (version, mut spec) = get_node(via, id, t)?;
    let obj = spec.as_object_mut().ok_or("Spec not an object")?;
    let labels = obj.entry("Labels").or_insert_with(|| serde_json::json!({}));
    if labels.is_null() {
        *labels = serde_json::json!({});
    }
    let labels = labels.as_object_mut().ok_or("Labels not an object")?;
    labels.retain(|key, _| !key.starts_with("bench.w"));
    labels.insert(format!("bench.w{k}"), serde_json::json!("1"));
    let body = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    let path = format!("/nodes/{id}/update?version={version}");
    let start = Instant::now();
    let r = api(via, "POST", &path, Some(&body), t)?;
    let took = start.elapsed();
    if r.status != 200 {
        return Err(format!("POST {path}: HTTP {}: {}", r.status, r.text()));
    }
    Ok(took)
}

struct Latency {
    managers: usize,
    target: &'static str,
    ms: Vec<f64>,
    retries: usize,
}

struct Failover {
    managers: usize,
    samples: Vec<Option<f64>>,
    attempts: Vec<usize>,
    /// Seconds from the kill until a survivor's metrics said it leads.
    elected: Vec<Option<f64>>,
    load: Load,
}

fn bench_latency_and_failover(s: &Settings, n: usize) -> (Vec<Latency>, Option<Failover>, Load) {
    let l0 = Load::start();
    let c = Cluster::new(n);
    form_managers(&c);
    let t = Duration::from_secs(10);
    let mut lat = Vec::new();
    if s.wants("latency") {
        let lead = leader(&c);
        let follower = c.nodes().iter().find(|x| x.index() != lead.index());
        let targets = std::iter::once(("leader", lead)).chain(follower.map(|f| ("follower", f)));
        for (target, via) in targets {
            let id = via.node_id();
            // Warm up (connections, caches) before timing.
            for k in 0..5 {
                let _ = write(via, &id, k, t);
            }
            let mut ms = Vec::new();
            let mut retries = 0;
            let mut k = 0;
            while ms.len() < s.writes {
                k += 1;
                match write(via, &id, k, t) {
                    Ok(d) => ms.push(d.as_secs_f64() * 1000.0),
                    Err(e) => {
                        retries += 1;
                        assert!(retries <= s.writes, "too many failed writes; last: {e}");
                    }
                }
            }
            progress!(
                "{n} managers, via {target} {}: p50 {:.2} ms p99 {:.2} ms ({retries} failed)",
                via.hostname(),
                pct(&ms, 50.0),
                pct(&ms, 99.0)
            );
            lat.push(Latency {
                managers: n,
                target,
                ms,
                retries,
            });
        }
    }
    let lat_load = Load::finish(l0);
    // Failover needs a quorum left after the kill.
    let fo = (s.wants("failover") && n >= 3).then(|| {
        let l1 = Load::start();
        let mut samples = Vec::new();
        let mut attempts = Vec::new();
        let mut elected = Vec::new();
        let ids: Vec<String> = c.nodes().iter().map(Node::node_id).collect();
        for r in 0..s.kills {
            thread::sleep(s.settle);
            let lead = leader(&c);
            // The writer: the manager after the leader, wrapping.
            let w = c.node(lead.index() % n + 1);
            let id = &ids[w.index() - 1];
            let start = Instant::now();
            lead.kill9();
            let ((got, tries, last), seen) = thread::scope(|scope| {
                // Meanwhile: when a surviving manager's metrics first say
                // it leads (polled every 20 ms).
                let seen = scope.spawn(|| {
                    while start.elapsed() < s.failover_timeout {
                        if c
                            .nodes()
                            .iter()
                            .filter(|x| x.index() != lead.index())
                            .any(is_leader)
                        {
                            return Some(start.elapsed().as_secs_f64());
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    None
                });
                let r = first_success(start, s.attempt_every, s.failover_timeout, |k| {
                    write(w, id, 100_000 + r * 10_000 + k, s.attempt_timeout).map(|_| ())
                });
                (r, seen.join().expect("leader poller"))
            });
            elected.push(seen);
            match got {
                Some(d) => progress!(
                    "{n} managers, kill {}/{} of leader {}: write via {} succeeded after {d:.3}s ({tries} attempts); new leader in metrics after {seen:?}",
                    r + 1,
                    s.kills,
                    lead.hostname(),
                    w.hostname()
                ),
                None => progress!(
                    "{n} managers, kill {}/{}: no write within {:?}; last: {last}",
                    r + 1,
                    s.kills,
                    s.failover_timeout
                ),
            }
            samples.push(got);
            attempts.push(tries);
            lead.restart();
            wait_managers_healthy(&c);
        }
        Failover {
            managers: n,
            samples,
            attempts,
            elected,
            load: Load::finish(l1),
        }
    });
    let pids: Vec<u32> = c.nodes().iter().filter_map(Node::pid).collect();
    let names = c.netns_names();
    drop(c);
    check_gone(&names, &pids);
    (lat, fo, lat_load)
}

fn check_gone(names: &[String], pids: &[u32]) {
    let listed = netns::list();
    let left: Vec<_> = names.iter().filter(|x| listed.contains(x)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for p in pids {
        assert!(
            !PathBuf::from(format!("/proc/{p}")).exists()
                || fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z")),
            "process {p} outlived its cluster"
        );
    }
}

struct Catchup {
    writes: usize,
    secs: Option<f64>,
    behind: f64,
}

fn bench_catchup(s: &Settings) -> (Catchup, Load) {
    let l0 = Load::start();
    let c = Cluster::new(3);
    form_managers(&c);
    let lead = leader(&c);
    let f = c
        .nodes()
        .iter()
        .find(|x| x.index() != lead.index())
        .expect("follower");
    let id = lead.node_id();
    f.kill9();
    let t = Instant::now();
    let mut k = 0;
    let mut done = 0;
    while done < s.catchup_writes {
        k += 1;
        if write(lead, &id, 500_000 + k, Duration::from_secs(10)).is_ok() {
            done += 1;
        }
        assert!(k < s.catchup_writes * 2 + 100, "too many failed writes");
    }
    progress!(
        "catch-up: {done} writes with {} down took {:.1}s",
        f.hostname(),
        t.elapsed().as_secs_f64()
    );
    let target = applied(lead).expect("leader's applied index");
    let start = Instant::now();
    f.restart();
    let mut got = None;
    let mut behind = f64::NAN;
    while start.elapsed() < patience() * 4 {
        if let (Some(a), Some(l)) = (applied(f), applied(lead)) {
            behind = l - a;
            if a >= target {
                got = Some(start.elapsed().as_secs_f64());
                break;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    progress!("catch-up: {:?}s (leader applied {target})", got);
    let pids: Vec<u32> = c.nodes().iter().filter_map(Node::pid).collect();
    let names = c.netns_names();
    drop(c);
    check_gone(&names, &pids);
    (
        Catchup {
            writes: done,
            secs: got,
            behind,
        },
        Load::finish(l0),
    )
}

// ----- etcd -----

struct Etcd<'a> {
    c: &'a Cluster,
    procs: Vec<Option<Child>>,
    dirs: Vec<PathBuf>,
    extra: Vec<String>,
}

impl Drop for Etcd<'_> {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn etcd_url(i: usize, port: u16) -> String {
    format!("http://198.18.0.{}:{port}", 10 + i)
}

impl<'a> Etcd<'a> {
    fn start(c: &'a Cluster, tag: &str, extra: &[&str]) -> Self {
        let n = c.nodes().len();
        let mut e = Etcd {
            c,
            procs: Vec::new(),
            dirs: (1..=n)
                .map(|i| c.dir().join(format!("etcd-{tag}-e{i}")))
                .collect(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for i in 1..=n {
            let p = e.spawn(i, "new");
            e.procs.push(Some(p));
        }
        e.wait_healthy();
        e
    }

    fn spawn(&self, i: usize, state: &str) -> Child {
        let node = self.c.node(i);
        let cluster = (1..=self.c.nodes().len())
            .map(|j| format!("e{j}={}", etcd_url(j, ETCD_PEER)))
            .collect::<Vec<_>>()
            .join(",");
        let log =
            fs::File::create(self.c.dir().join(format!("etcd-e{i}.log"))).expect("etcd log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns::path_of(node.netns()).display()))
            .args(["--", "etcd", "--name", &format!("e{i}"), "--data-dir"])
            .arg(&self.dirs[i - 1])
            .args([
                "--listen-peer-urls",
                &etcd_url(i, ETCD_PEER),
                "--initial-advertise-peer-urls",
                &etcd_url(i, ETCD_PEER),
                "--listen-client-urls",
                &etcd_url(i, ETCD_CLIENT),
                "--advertise-client-urls",
                &etcd_url(i, ETCD_CLIENT),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-token",
                "swarmnet-bench",
                "--initial-cluster-state",
                state,
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        cmd.spawn().expect("spawn etcd")
    }

    fn endpoints(&self) -> String {
        (1..=self.c.nodes().len())
            .map(|j| etcd_url(j, ETCD_CLIENT))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl run inside node `from`'s namespace.
    fn ctl(
        &self,
        from: usize,
        endpoints: &str,
        timeout: Duration,
        args: &[&str],
    ) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                netns::path_of(self.c.node(from).netns()).display()
            ))
            .args(["--", "etcdctl", "--endpoints", endpoints])
            .arg(format!("--command-timeout={}ms", timeout.as_millis()))
            .arg(format!("--dial-timeout={}ms", timeout.as_millis()))
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// The index (1-based) of the leader, if all running members agree.
    fn leader(&self) -> Result<usize, String> {
        let running: Vec<usize> = (1..=self.procs.len())
            .filter(|i| self.procs[i - 1].is_some())
            .collect();
        let eps = running
            .iter()
            .map(|&j| etcd_url(j, ETCD_CLIENT))
            .collect::<Vec<_>>()
            .join(",");
        let out = self.ctl(
            running[0],
            &eps,
            Duration::from_secs(2),
            &["endpoint", "status", "-w", "json"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let arr = v.as_array().ok_or("status not an array")?;
        if arr.len() != running.len() {
            return Err(format!(
                "{} of {} members answered",
                arr.len(),
                running.len()
            ));
        }
        let mut leader = None;
        let mut lid = None;
        for s in arr {
            let l = s
                .pointer("/Status/leader")
                .and_then(serde_json::Value::as_u64);
            if l.is_none() || l == Some(0) || (lid.is_some() && lid != l) {
                return Err(format!("no agreed leader: {out}"));
            }
            lid = l;
            if s.pointer("/Status/header/member_id")
                .and_then(serde_json::Value::as_u64)
                == l
            {
                let ep = s
                    .get("Endpoint")
                    .and_then(|x| x.as_str())
                    .unwrap_or_default();
                leader = running
                    .iter()
                    .copied()
                    .find(|&j| etcd_url(j, ETCD_CLIENT) == ep);
            }
        }
        leader.ok_or_else(|| format!("leader not among members: {out}"))
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < patience() {
            match self
                .ctl(
                    1,
                    &self.endpoints(),
                    Duration::from_secs(2),
                    &["endpoint", "health"],
                )
                .and_then(|_| self.leader())
            {
                Ok(_) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd not healthy within {:?}: {last}", patience());
    }
}

struct EtcdResult {
    label: String,
    samples: Vec<Option<f64>>,
    put_ms: Vec<f64>,
    load: Load,
}

fn bench_etcd(s: &Settings, c: &Cluster, tag: &str, label: &str, extra: &[&str]) -> EtcdResult {
    let l0 = Load::start();
    let mut e = Etcd::start(c, tag, extra);
    progress!("etcd ({label}) up");
    let mut put_ms = Vec::new();
    for k in 0..s.etcd_puts {
        let t = Instant::now();
        if e.ctl(
            1,
            &etcd_url(1, ETCD_CLIENT),
            Duration::from_secs(5),
            &["put", "lat", &k.to_string()],
        )
        .is_ok()
        {
            put_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut samples = Vec::new();
    for r in 0..s.kills {
        thread::sleep(s.settle);
        let l = e
            .leader()
            .unwrap_or_else(|err| panic!("etcd leader: {err}"));
        let other = l % c.nodes().len() + 1;
        let ep = etcd_url(other, ETCD_CLIENT);
        let start = Instant::now();
        if let Some(mut p) = e.procs[l - 1].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let (got, tries, last) = first_success(start, s.attempt_every, s.failover_timeout, |k| {
            e.ctl(
                other,
                &ep,
                s.attempt_timeout,
                &["put", "k", &format!("v{r}-{k}")],
            )
            .map(|_| ())
        });
        match got {
            Some(d) => progress!(
                "etcd ({label}) kill {}/{} of e{l}: put via e{other} succeeded after {d:.3}s ({tries} attempts)",
                r + 1,
                s.kills
            ),
            None => progress!(
                "etcd ({label}) kill {}/{}: no put; last: {last}",
                r + 1,
                s.kills
            ),
        }
        samples.push(got);
        let p = e.spawn(l, "existing");
        e.procs[l - 1] = Some(p);
        e.wait_healthy();
    }
    drop(e);
    EtcdResult {
        label: label.to_owned(),
        samples,
        put_ms,
        load: Load::finish(l0),
    }
}

fn bench_etcd_all(s: &Settings) -> Vec<EtcdResult> {
    assert!(
        Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "etcd is missing: apt-get install -y etcd-server etcd-client"
    );
    let c = Cluster::builder(3).agents(false).build();
    let out = vec![
        bench_etcd(
            s,
            &c,
            "default",
            "etcd default (heartbeat 100 ms, election 1000 ms)",
            &[],
        ),
        bench_etcd(
            s,
            &c,
            "tuned",
            "etcd tuned (heartbeat 50 ms, election 300 ms)",
            &["--heartbeat-interval", "50", "--election-timeout", "300"],
        ),
    ];
    let names = c.netns_names();
    drop(c);
    check_gone(&names, &[]);
    out
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

// ----- main -----

fn ok(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

fn main() {
    require_root();
    let s = Settings::from_env();
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut fo = Vec::new();
    let mut lat_loads = Vec::new();
    if s.wants("latency") || s.wants("failover") {
        for &n in &s.sizes {
            let (l, f, load) = bench_latency_and_failover(&s, n);
            lat.extend(l);
            fo.extend(f);
            lat_loads.push((n, load));
        }
    }
    let etcd = if s.wants("etcd") {
        bench_etcd_all(&s)
    } else {
        Vec::new()
    };
    let catchup = s.wants("catchup").then(|| bench_catchup(&s));

    let mut r = String::new();
    let w = &mut r;
    let _ = writeln!(w, "\n# swarmnet managers (Raft) benchmark\n");
    let _ = writeln!(
        w,
        "agent: {}; {}; kernel {}; {} CPUs; total {:.0}s\n",
        swarmnet_tests::cluster::agent_bin().display(),
        etcd_version(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        thread::available_parallelism().map_or(0, usize::from),
        started.elapsed().as_secs_f64()
    );
    if !lat.is_empty() {
        let _ = writeln!(
            w,
            "## Write latency (POST /nodes/ID/update, POST only timed, sequential)\n"
        );
        let _ = writeln!(
            w,
            "| managers | sent to | writes | p50 (ms) | p99 (ms) | max (ms) | failed (retried) |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|");
        for l in &lat {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                l.managers,
                l.target,
                l.ms.len(),
                pct(&l.ms, 50.0),
                pct(&l.ms, 99.0),
                max(&l.ms),
                l.retries
            );
        }
        for (n, l) in &lat_loads {
            let _ = writeln!(w, "\n- {n} managers (forming + latency): {}", l.show());
        }
        let _ = writeln!(w);
    }
    let etcd_default = etcd.first().map(|e| median(&ok(&e.samples)));
    let etcd_tuned = etcd.get(1).map(|e| median(&ok(&e.samples)));
    if !fo.is_empty() || !etcd.is_empty() {
        let _ = writeln!(
            w,
            "## Leader failover (kill -9 of the leader -> first successful write through another member; attempt timeout {} ms)\n",
            s.attempt_timeout.as_millis()
        );
        let _ = writeln!(
            w,
            "| system | kills | median (s) | max (s) | timeouts | / etcd default | / etcd tuned | goal < 1 s |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
        let ratio =
            |m: f64, b: Option<f64>| b.map_or_else(|| "-".to_owned(), |b| format!("{:.2}", m / b));
        for f in &fo {
            let v = ok(&f.samples);
            let m = median(&v);
            let _ = writeln!(
                w,
                "| swarmnet, {} managers | {} | {m:.2} | {:.2} | {} | {} | {} | {} |",
                f.managers,
                f.samples.len(),
                max(&v),
                f.samples.len() - v.len(),
                ratio(m, etcd_default),
                ratio(m, etcd_tuned),
                if m < 1.0 && v.len() == f.samples.len() {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
        for e in &etcd {
            let v = ok(&e.samples);
            let m = median(&v);
            let _ = writeln!(
                w,
                "| {}, 3 members | {} | {m:.2} | {:.2} | {} | {} | {} | - |",
                e.label,
                e.samples.len(),
                max(&v),
                e.samples.len() - v.len(),
                ratio(m, etcd_default),
                ratio(m, etcd_tuned),
            );
        }
        let _ = writeln!(w);
        for f in &fo {
            let v: Vec<String> = f
                .samples
                .iter()
                .map(|x| x.map_or_else(|| "timeout".to_owned(), |x| format!("{x:.2}")))
                .collect();
            let el = ok(&f.elected);
            let _ = writeln!(
                w,
                "- swarmnet {} managers, each kill (s): {}; attempts: {:?}; a survivor's `swarmnet_raft_leader` was 1 after (s, polled every 20 ms): {} (median {:.2}); {}",
                f.managers,
                v.join(", "),
                f.attempts,
                list(&el),
                median(&el),
                f.load.show()
            );
        }
        for e in &etcd {
            let _ = writeln!(
                w,
                "- {}, each kill (s): {}; {}",
                e.label,
                list(&ok(&e.samples)),
                e.load.show()
            );
            let _ = writeln!(
                w,
                "- {}: `etcdctl put` wall time incl. process spawn, {} runs: p50 {:.1} ms, p99 {:.1} ms",
                e.label,
                e.put_ms.len(),
                pct(&e.put_ms, 50.0),
                pct(&e.put_ms, 99.0)
            );
        }
        let _ = writeln!(w);
    }
    if let Some((cu, load)) = &catchup {
        let _ = writeln!(
            w,
            "## Catch-up (3 managers; a follower killed, {} writes through the leader, restart -> its last_applied_index reaches the leader's)\n",
            cu.writes
        );
        let _ = writeln!(
            w,
            "- {}; last gap seen {} entries; {}\n",
            cu.secs
                .map_or_else(|| "did NOT catch up".to_owned(), |x| format!("{x:.2} s")),
            cu.behind,
            load.show()
        );
    }
    let _ = writeln!(
        w,
        "cleanup: namespaces gone, agents and etcd members killed by PID, etcd data dirs removed"
    );
    print!("{r}");
}
