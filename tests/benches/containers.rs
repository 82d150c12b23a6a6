//! Container benchmarks on one node of the harness (a real agent in a
//! network namespace, the test registry as its mirror):
//!
//! 1. start latency: `POST /containers/create` + `/start` until the
//!    container runs, and `docker run -d` as the CLI does it, against runc
//!    alone creating and starting the same prepared bundle (same rootfs,
//!    same config, its own network namespace), in the same run: the ratio
//!    is the agent's own overhead (overlay mount, namespace, veth, shim);
//! 2. memory: the agent idle, then with N containers running (per
//!    container), and each shim's RSS and PSS;
//! 3. pull time of nginx from the local registry.
//!
//! A plain `main()` (`harness = false`); it prints what it measured and
//! fails only when the node does. Run as root against the release agent:
//!
//! ```text
//! cargo build --release -p swarmnet
//! SWARMNET_BIN=$PWD/target/release/swarmnet cargo bench -p swarmnet-tests --bench containers
//! ```
//!
//! Environment: `SWARMNET_BENCH_STARTS` [50] containers started one after
//! another per path, `SWARMNET_BENCH_RUNNING` [50] containers kept running
//! for the memory figures, `SWARMNET_BENCH_PULLS` [3].

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, http, require_root, util::describe};

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {v:?}: {e}"))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Stats {
    p50: Duration,
    p95: Duration,
    min: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        p50: percentile(&v, 0.5),
        p95: percentile(&v, 0.95),
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn line(what: &str, s: &Stats) -> String {
    format!(
        "{what:<44} p50 {:>7.1} ms  p95 {:>7.1} ms  (min {:.1}, max {:.1})",
        ms(s.p50),
        ms(s.p95),
        ms(s.min),
        ms(s.max)
    )
}

#[track_caller]
fn api(n: &Node, method: &str, path: &str, body: Option<&[u8]>) -> serde_json::Value {
    let r = http::unix_request(n.socket(), method, path, body, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: HTTP {} {}",
        r.status,
        r.text()
    );
    if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    }
}

/// create + start through the API; returns the ID and the time taken.
fn api_run(n: &Node) -> (String, Duration) {
    let body = br#"{"Image":"busybox","Cmd":["sleep","600"],"HostConfig":{}}"#;
    let t0 = Instant::now();
    let created = api(n, "POST", "/containers/create", Some(body));
    let id = created["Id"].as_str().expect("Id").to_owned();
    api(n, "POST", &format!("/containers/{id}/start"), None);
    (id, t0.elapsed())
}

/// Runs runc with its output in a file: the container it creates keeps
/// runc's stdio, so pipes would never end.
fn runc(root: &Path, args: &[&str]) -> Result<(), String> {
    let err = root.with_extension("stderr");
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("runc stderr file"))
        .status()
        .expect("run runc");
    if status.success() {
        Ok(())
    } else {
        Err(fs::read_to_string(&err).unwrap_or_default())
    }
}

/// RSS and PSS of a process in KiB (smaps_rollup).
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A bundle for runc alone: the config the agent wrote for a container,
/// pointed at a rootfs of its own (an overlay of the same layer) and
/// given a fresh network namespace of runc's making.
fn baseline_bundle(n: &Node, template_id: &str, dir: &Path) -> PathBuf {
    let ctr = n.data_dir().join("containers").join(template_id);
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(ctr.join("config.json")).expect("config.json"))
            .expect("config JSON");
    let bundle = dir.join("baseline");
    for d in ["rootfs", "diff", "work"] {
        fs::create_dir_all(bundle.join(d)).expect("bundle dirs");
    }
    let lower = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find(|l| l.contains(&format!("{}/rootfs", ctr.display())))
        .and_then(|l| l.split("lowerdir=").nth(1))
        .and_then(|o| o.split(',').next())
        .expect("the template container's overlay")
        .to_owned();
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        bundle.join("diff").display(),
        bundle.join("work").display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(bundle.join("rootfs"))
        .output()
        .expect("mount");
    assert!(out.status.success(), "mount overlay: {}", describe(&out));
    let mut cfg = cfg;
    // Its own network namespace, made by runc; no /etc bind mounts of the
    // template (they are plain files either way).
    if let Some(nss) = cfg["linux"]["namespaces"].as_array_mut() {
        for ns in nss.iter_mut() {
            if ns["type"] == "network"
                && let Some(o) = ns.as_object_mut()
            {
                o.remove("path");
            }
        }
    }
    cfg["linux"]["cgroupsPath"] =
        serde_json::Value::String(format!("/{}/baseline", n.cgroup_parent()));
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&cfg).expect("encode"),
    )
    .expect("write config.json");
    bundle
}

fn main() {
    require_root();
    let starts = env_num("SWARMNET_BENCH_STARTS", 50);
    let running = env_num("SWARMNET_BENCH_RUNNING", 50);
    let pulls = env_num("SWARMNET_BENCH_PULLS", 3);
    let bin = swarmnet_tests::cluster::agent_bin();
    println!("agent {}", bin.display());
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    let agent_pid = n.pid().expect("agent runs");
    thread::sleep(Duration::from_secs(2));
    let (fresh_rss, fresh_pss) = memory_kib(agent_pid);

    // 3. Pull time first (a cold store).
    println!("pulling nginx {pulls} times");
    let mut pull_times = Vec::new();
    for i in 0..pulls {
        if i > 0 {
            n.docker_ok(&["rmi", "nginx"]);
        }
        let t0 = Instant::now();
        n.docker_ok(&["pull", "-q", "nginx"]);
        pull_times.push(t0.elapsed());
    }
    n.docker_ok(&["rmi", "nginx"]);
    n.docker_ok(&["pull", "-q", "busybox"]);
    thread::sleep(Duration::from_secs(2));
    let (idle_rss, idle_pss) = memory_kib(agent_pid);

    // 1. Start latency, alternating the paths so drift hits both alike.
    println!("starting {starts} containers on each path");
    let (template, _) = api_run(n);
    let bundle = baseline_bundle(n, &template, c.dir());
    let root = c.dir().join("runc-baseline");
    let mut ours = Vec::new();
    let mut cli = Vec::new();
    let mut alone = Vec::new();
    for i in 0..starts {
        let (id, t) = api_run(n);
        ours.push(t);
        api(n, "DELETE", &format!("/containers/{id}?force=1"), None);

        let name = format!("cli{i}");
        let t0 = Instant::now();
        n.docker_ok(&["run", "-d", "--name", &name, "busybox", "sleep", "600"]);
        cli.push(t0.elapsed());
        n.docker_ok(&["rm", "-f", &name]);

        let rid = format!("baseline{i}");
        let t0 = Instant::now();
        runc(
            &root,
            &["create", "--bundle", &bundle.display().to_string(), &rid],
        )
        .unwrap_or_else(|e| panic!("runc create: {e}"));
        runc(&root, &["start", &rid]).unwrap_or_else(|e| panic!("runc start: {e}"));
        alone.push(t0.elapsed());
        let _ = runc(&root, &["kill", &rid, "KILL"]);
        let _ = runc(&root, &["delete", "--force", &rid]);
    }
    api(
        n,
        "DELETE",
        &format!("/containers/{template}?force=1"),
        None,
    );
    let _ = Command::new("umount").arg(bundle.join("rootfs")).status();

    // 2. Memory with `running` containers.
    println!("running {running} containers");
    let mut ids = Vec::new();
    for _ in 0..running {
        ids.push(api_run(n).0);
    }
    thread::sleep(Duration::from_secs(2));
    let (busy_rss, busy_pss) = memory_kib(agent_pid);
    let shims = swarmnet_tests::containers::shim_pids(n.dir());
    let shim_mem: Vec<(u64, u64)> = shims.iter().map(|p| memory_kib(*p)).collect();
    let shim_rss: u64 = shim_mem.iter().map(|m| m.0).sum();
    let shim_pss: u64 = shim_mem.iter().map(|m| m.1).sum();
    for id in &ids {
        api(n, "DELETE", &format!("/containers/{id}?force=1"), None);
    }

    let (o, cl, a) = (stats(ours), stats(cli), stats(alone));
    let p = stats(pull_times);
    println!("\n== start latency, {starts} containers each, sequential ==");
    println!("{}", line("agent: API create + start", &o));
    println!("{}", line("agent: docker run -d (CLI, whole command)", &cl));
    println!("{}", line("runc alone: create + start, same bundle", &a));
    println!(
        "ratio agent API / runc alone: p50 {:.2}, p95 {:.2}",
        ms(o.p50) / ms(a.p50),
        ms(o.p95) / ms(a.p95)
    );
    println!(
        "ratio docker run -d / runc alone: p50 {:.2}, p95 {:.2}",
        ms(cl.p50) / ms(a.p50),
        ms(cl.p95) / ms(a.p95)
    );
    println!("\n== memory ==");
    println!(
        "agent idle, just started: RSS {:.1} MiB, PSS {:.1} MiB",
        mib(fresh_rss),
        mib(fresh_pss)
    );
    println!(
        "agent idle after the pulls (no container): RSS {:.1} MiB, PSS {:.1} MiB",
        mib(idle_rss),
        mib(idle_pss)
    );
    println!(
        "agent with {running} running: RSS {:.1} MiB, PSS {:.1} MiB; per container {:.0} KiB RSS",
        mib(busy_rss),
        mib(busy_pss),
        (busy_rss.saturating_sub(idle_rss)) as f64 / running.max(1) as f64
    );
    println!(
        "shims: {} running; per shim RSS {:.2} MiB, PSS {:.2} MiB",
        shims.len(),
        mib(shim_rss) / shims.len().max(1) as f64,
        mib(shim_pss) / shims.len().max(1) as f64
    );
    println!(
        "per container in all (agent growth + shim PSS): {:.2} MiB",
        (mib(busy_rss.saturating_sub(idle_rss)) + mib(shim_pss)) / running.max(1) as f64
    );
    println!("\n== pull nginx from the local registry ({pulls} pulls, cold store each) ==");
    println!("{}", line("docker pull nginx", &p));
}
