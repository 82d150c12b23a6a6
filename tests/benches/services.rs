//! Service benchmarks on a 3-node harness cluster (real agents in network
//! namespaces, busybox already pulled on every node):
//!
//! 1. convergence: `docker service create -d --replicas N` until the API
//!    counts N running tasks, against the baseline of the same N
//!    containers started with `docker run -d` on the same overlay network,
//!    N/3 per node, the three nodes in parallel, in the same run: the ratio
//!    is what the orchestrator and the workers add (Raft writes, polling,
//!    reports);
//! 2. rescheduling: node 3 cut off the underlay, until its replica runs on
//!    another node (`--restart-delay 0s`), next to the time the managers
//!    mark the node down (SWIM's detection).
//!
//! A plain `main()` (`harness = false`). Run as root against the release
//! agent:
//!
//! ```text
//! cargo build --release -p swarmnet
//! SWARMNET_BIN=$PWD/target/release/swarmnet cargo bench -p swarmnet-tests --bench services
//! ```
//!
//! Environment: `SWARMNET_BENCH_ROUNDS` [5] rounds per figure.

use std::{
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, require_root};

fn rounds() -> usize {
    std::env::var("SWARMNET_BENCH_ROUNDS").map_or(5, |v| v.trim().parse().unwrap_or(5))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Running tasks of `service` as the API counts them (`status=true`).
fn running(m: &Node, service: &str) -> u64 {
    let r = m.api(
        "GET",
        &format!(
            "/v1.47/services?status=true&filters=%7B%22name%22%3A%7B%22{service}%22%3Atrue%7D%7D"
        ),
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
    v.get(0)
        .and_then(|s| s["ServiceStatus"]["RunningTasks"].as_u64())
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

fn task_containers(c: &Cluster) -> usize {
    c.nodes()
        .iter()
        .map(|n| {
            n.docker_ok(&["ps", "-aq", "--filter", "label=com.docker.swarm.task"])
                .lines()
                .count()
        })
        .sum()
}

/// N containers by `docker run -d`, N/3 per node in parallel; then removed.
fn baseline(c: &Cluster, n: usize) -> Duration {
    let t = Instant::now();
    thread::scope(|s| {
        for node in c.nodes() {
            s.spawn(move || {
                for _ in 0..n / 3 {
                    node.docker_ok(&[
                        "run",
                        "-d",
                        "--network",
                        "bench-net",
                        "busybox",
                        "sleep",
                        "3600",
                    ]);
                }
            });
        }
    });
    let took = t.elapsed();
    thread::scope(|s| {
        for node in c.nodes() {
            s.spawn(move || {
                let ids = node.docker_ok(&["ps", "-aq"]);
                let ids: Vec<&str> = ids.lines().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    node.docker_ok(&args);
                }
            });
        }
    });
    took
}

fn service(c: &Cluster, n: usize) -> Duration {
    let m = c.manager();
    let t = Instant::now();
    m.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "bench",
        "--replicas",
        &n.to_string(),
        "--network",
        "bench-net",
        "busybox",
        "sleep",
        "3600",
    ]);
    wait_until("service converged", Duration::from_secs(120), || {
        running(m, "bench") == n as u64
    });
    let took = t.elapsed();
    m.docker_ok(&["service", "rm", "bench"]);
    wait_until("task containers removed", Duration::from_secs(120), || {
        task_containers(c) == 0
    });
    took
}

fn main() {
    require_root();
    let c = Cluster::builder(3).registry().build();
    c.form_swarm();
    let m = c.manager();
    for n in c.nodes() {
        n.docker_ok(&["pull", "-q", "busybox"]);
    }
    m.docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "198.19.3.0/24",
        "bench-net",
    ]);
    println!("convergence, median of {} rounds:", rounds());
    for n in [3usize, 15] {
        let mut base = Vec::new();
        let mut svc = Vec::new();
        for _ in 0..rounds() {
            base.push(baseline(&c, n).as_secs_f64() * 1000.0);
            svc.push(service(&c, n).as_secs_f64() * 1000.0);
        }
        let (b, s) = (median(base), median(svc));
        println!(
            "  {n:>2} tasks: service create -> {n} running {s:7.1} ms; docker run -d x {n} (3 nodes in parallel) {b:7.1} ms; ratio {:.2}",
            s / b
        );
    }

    println!("rescheduling after node 3 is cut off (restart delay 0 s):");
    let n3 = c.node(3);
    let lost = n3.hostname().to_owned();
    let mut moved = Vec::new();
    let mut down = Vec::new();
    for _ in 0..rounds() {
        m.docker_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            "bench",
            "--replicas",
            "3",
            "--restart-delay",
            "0s",
            "--network",
            "bench-net",
            "busybox",
            "sleep",
            "3600",
        ]);
        wait_until("3 running", Duration::from_secs(60), || {
            running(m, "bench") == 3
        });
        let on_lost = || {
            m.docker_ok(&[
                "service",
                "ps",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
                "bench",
            ])
            .lines()
            .filter(|l| l.contains("Running"))
            .map(|l| l.starts_with(&format!("{lost} ")))
            .collect::<Vec<bool>>()
        };
        let t = Instant::now();
        n3.cut_link();
        let mut down_at = None;
        wait_until("replica moved", Duration::from_secs(60), || {
            if down_at.is_none()
                && m.node_ls()
                    .iter()
                    .any(|r| r.hostname == lost && r.status == "Down")
            {
                down_at = Some(t.elapsed());
            }
            let r = on_lost();
            r.len() == 3 && r.iter().all(|x| !x)
        });
        moved.push(t.elapsed().as_secs_f64());
        down.push(down_at.unwrap_or(t.elapsed()).as_secs_f64());
        n3.heal_link();
        c.wait_ready(3);
        m.docker_ok(&["service", "rm", "bench"]);
        wait_until("task containers removed", Duration::from_secs(120), || {
            task_containers(&c) == 0
        });
    }
    println!(
        "  replica running elsewhere: median {:.2} s (min {:.2}, max {:.2}); node marked down: median {:.2} s",
        median(moved.clone()),
        moved.iter().copied().fold(f64::MAX, f64::min),
        moved.iter().copied().fold(0.0, f64::max),
        median(down)
    );
}
