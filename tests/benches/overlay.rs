//! Overlay network benchmarks on harness clusters (real agents in network
//! namespaces, the test registry as their mirror):
//!
//! 1. TCP throughput (iperf3, 5 s, 3 runs each, interleaved) between two
//!    nodes: container to container over the overlay; node to node on the
//!    underlay; and a hand-built kernel VXLAN between the same two node
//!    namespaces (bridge + VXLAN device + static FDB/neighbour entries made
//!    with `ip`/`bridge`, two namespaces as its containers). The ratios say
//!    what the overlay costs and what swarmnet's programming costs over
//!    the kernel's own.
//! 2. First ping: from `docker run --network net1` on node1 until a
//!    container on node3 gets its first reply (raw ICMP every 5 ms from
//!    that container's namespace).
//! 3. Propagation: from `docker run` on node1 until every other node's
//!    VXLAN device has the new container's FDB entry (netlink, polled every
//!    5 ms in every node), for swarms of 3, 10 and 30 nodes that each have a
//!    container on the network.
//!
//! A plain `main()` (`harness = false`) that prints what it measured. Run
//! as root against the release agent:
//!
//! ```text
//! cargo build --release -p swarmnet
//! SWARMNET_BIN=$PWD/target/release/swarmnet cargo bench -p swarmnet-tests --bench overlay
//! ```
//!
//! Environment: `SWARMNET_BENCH_ONLY` [throughput,first-ping,propagation],
//! `SWARMNET_BENCH_SIZES` [3,10,30], `SWARMNET_BENCH_REPEATS` [10].

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, http, net, netns, require_root, rt, util::describe};

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {v:?}: {e}"))
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

#[track_caller]
fn sh(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Gbit/s of an iperf3 client run (JSON).
fn gbits(json: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

#[track_caller]
fn ip_on(n: &Node, container: &str, network: &str) -> String {
    n.docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
    .trim()
    .to_owned()
}

/// A swarm of `n` nodes (node1 the manager), `image` pulled everywhere,
/// an attachable overlay net1.
fn swarm(n: usize, image: &str) -> Cluster {
    let c = Cluster::builder(n).registry().build();
    c.form_swarm();
    thread::scope(|s| {
        for node in c.nodes() {
            s.spawn(move || node.docker_ok(&["pull", "-q", image]));
        }
    });
    c.manager().docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "198.19.64.0/20",
        "net1",
    ]);
    c
}

/// A hand-built kernel VXLAN between node1 and node2: a bridge, a VXLAN
/// device (VNI 99, port 4789, like ours) and a "container" namespace in
/// each node, static entries for the other side. Removed on drop.
struct HandBuilt {
    containers: [String; 2],
    ips: [Ipv4Addr; 2],
}

impl HandBuilt {
    fn new(c: &Cluster) -> Self {
        let (n1, n2) = (c.node(1), c.node(2));
        let containers = [format!("{}-hb1", c.prefix()), format!("{}-hb2", c.prefix())];
        let ips = [Ipv4Addr::new(198, 19, 99, 1), Ipv4Addr::new(198, 19, 99, 2)];
        let macs = ["02:42:c6:13:63:01", "02:42:c6:13:63:02"];
        for (i, node) in [n1, n2].into_iter().enumerate() {
            let other = [n1, n2][1 - i];
            let ns = node.netns();
            let ctr = &containers[i];
            sh(Command::new("ip").args(["netns", "add", ctr]));
            for args in [
                vec!["link", "add", "hbbr", "type", "bridge"],
                vec!["link", "set", "hbbr", "mtu", "1450", "up"],
                vec![
                    "link",
                    "add",
                    "hbvx",
                    "type",
                    "vxlan",
                    "id",
                    "99",
                    "dstport",
                    "4789",
                    "nolearning",
                    "proxy",
                ],
                vec!["link", "set", "hbvx", "master", "hbbr", "mtu", "1450", "up"],
                vec![
                    "link", "add", "hbveth", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
                    "netns", ctr,
                ],
                vec!["link", "set", "hbveth", "master", "hbbr", "up"],
            ] {
                sh(Command::new("ip").arg("-n").arg(ns).args(&args));
            }
            let me = format!("{}/24", ips[i]);
            for args in [
                vec!["link", "set", "lo", "up"],
                vec!["link", "set", "eth0", "address", macs[i], "up"],
                vec!["addr", "add", me.as_str(), "dev", "eth0"],
            ] {
                sh(Command::new("ip").arg("-n").arg(ctr).args(&args));
            }
            let peer_ip = ips[1 - i].to_string();
            let vtep = other.addr().to_string();
            sh(&mut in_ns(
                ns,
                &[
                    "bridge",
                    "fdb",
                    "add",
                    macs[1 - i],
                    "dev",
                    "hbvx",
                    "dst",
                    &vtep,
                    "self",
                    "permanent",
                ],
            ));
            sh(&mut in_ns(
                ns,
                &[
                    "ip",
                    "neigh",
                    "add",
                    &peer_ip,
                    "lladdr",
                    macs[1 - i],
                    "dev",
                    "hbvx",
                    "nud",
                    "permanent",
                ],
            ));
        }
        Self { containers, ips }
    }
}

impl Drop for HandBuilt {
    fn drop(&mut self) {
        for c in &self.containers {
            netns::delete(c);
        }
    }
}

fn iperf_server(mut cmd: Command) -> std::process::Child {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    thread::sleep(Duration::from_millis(500));
    child
}

fn bench_throughput(repeats: usize) {
    let c = swarm(2, "tools");
    let (n1, n2) = (c.node(1), c.node(2));
    for (n, name) in [(n1, "ipc"), (n2, "ips")] {
        n.docker_ok(&["run", "-d", "--name", name, "--network", "net1", "tools"]);
    }
    let server_ip = ip_on(n2, "ips", "net1");
    let hb = HandBuilt::new(&c);
    let (mut ours, mut underlay, mut hand) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats.clamp(1, 5) {
        // Ours: container to container.
        n2.docker_ok(&["exec", "-d", "ips", "iperf3", "-s", "-1"]);
        thread::sleep(Duration::from_millis(500));
        let out = n1.docker_ok(&["exec", "ipc", "iperf3", "-c", &server_ip, "-t", "5", "-J"]);
        ours.push(gbits(&out));
        // The underlay: node to node.
        let mut srv = iperf_server(in_ns(n2.netns(), &["iperf3", "-s", "-1"]));
        let out = sh(&mut in_ns(
            n1.netns(),
            &["iperf3", "-c", &n2.addr().to_string(), "-t", "5", "-J"],
        ));
        underlay.push(gbits(&out));
        let _ = srv.wait();
        // Hand-built VXLAN between the same nodes.
        let mut srv = iperf_server(in_ns(&hb.containers[1], &["iperf3", "-s", "-1"]));
        let out = sh(&mut in_ns(
            &hb.containers[0],
            &["iperf3", "-c", &hb.ips[1].to_string(), "-t", "5", "-J"],
        ));
        hand.push(gbits(&out));
        let _ = srv.wait();
    }
    let (o, u, h) = (
        median(ours.clone()),
        median(underlay.clone()),
        median(hand.clone()),
    );
    println!(
        "\n== TCP throughput, iperf3 -t 5, {} runs each (median) ==",
        ours.len()
    );
    println!("underlay, node to node:              {u:6.2} Gbit/s  {underlay:.2?}");
    println!("hand-built kernel VXLAN:             {h:6.2} Gbit/s  {hand:.2?}");
    println!("swarmnet overlay, container to container: {o:6.2} Gbit/s  {ours:.2?}");
    println!(
        "ratio overlay / underlay: {:.2}; overlay / hand-built VXLAN: {:.2}; hand-built / underlay: {:.2}",
        o / u,
        o / h,
        h / u
    );
}

/// The namespace of a running container of `n`.
fn container_netns(n: &Node, name: &str) -> PathBuf {
    let id = n
        .docker_ok(&["inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_owned();
    n.run_dir().join("netns").join(&id[..12])
}

fn bench_first_ping(repeats: usize) {
    let c = swarm(3, "busybox");
    let (n1, n3) = (c.node(1), c.node(3));
    n3.docker_ok(&[
        "run",
        "-d",
        "--name",
        "prober",
        "--network",
        "net1",
        "busybox",
        "sleep",
        "3600",
    ]);
    let prober_ns = container_netns(n3, "prober");
    let mut times = Vec::new();
    let mut runs = Vec::new();
    for i in 0..repeats {
        let name = format!("target{i}");
        let t0 = Instant::now();
        n1.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "net1",
            "busybox",
            "sleep",
            "3600",
        ]);
        runs.push(t0.elapsed().as_secs_f64() * 1000.0);
        let ip = api_ip(n1, &name, "net1");
        let got = netns::in_netns_path(&prober_ns, || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if net::ping(ip, 1, Duration::from_millis(5)).unwrap_or(0) == 1 {
                    return Some(t0.elapsed());
                }
            }
            None
        });
        let t = got.unwrap_or_else(|| panic!("no reply from {ip} within 20 s"));
        times.push(t.as_secs_f64() * 1000.0);
        n1.docker_ok(&["rm", "-f", &name]);
    }
    println!(
        "\n== docker run --network net1 on node1 until node3's container gets a reply ({repeats} runs) =="
    );
    println!(
        "first reply: median {:.0} ms, max {:.0} ms, all {:.0?}; docker run itself returned after {:.0} ms (median)",
        median(times.clone()),
        max(&times),
        times,
        median(runs)
    );
}

/// The MAC swarmnet gives an address.
fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The overlay address of a container, through the API (no CLI start-up
/// in the measurement).
fn api_ip(n: &Node, name: &str, network: &str) -> Ipv4Addr {
    let r = http::unix_request(
        n.socket(),
        "GET",
        &format!("/containers/{name}/json"),
        None,
        Duration::from_secs(10),
    )
    .expect("inspect");
    r.json()["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an overlay address")
}

/// (docker run returned, every other node had the entry), in ms.
fn bench_propagation(size: usize, repeats: usize) -> Vec<(f64, f64)> {
    let c = swarm(size, "busybox");
    thread::scope(|s| {
        for (i, n) in c.nodes().iter().enumerate() {
            s.spawn(move || {
                n.docker_ok(&[
                    "run",
                    "-d",
                    "--name",
                    &format!("m{i}"),
                    "--network",
                    "net1",
                    "busybox",
                    "sleep",
                    "3600",
                ])
            });
        }
    });
    let net_id = c
        .manager()
        .docker_ok(&["network", "inspect", "-f", "{{.Id}}", "net1"])
        .trim()
        .to_owned();
    let dev = format!("vx-{}", &net_id[..12]);
    let rt = rt();
    // One netlink socket in each other node's namespace.
    let links: Vec<swarmnet_dataplane::Netlink> = c.nodes()[1..]
        .iter()
        .map(|n| {
            rt.block_on(swarmnet_dataplane::Netlink::connect_in(&netns::path_of(
                n.netns(),
            )))
            .expect("netlink in a node")
        })
        .collect();
    let n1 = c.manager();
    let mut times = Vec::new();
    for i in 0..repeats {
        let name = format!("p{i}");
        let t0 = Instant::now();
        n1.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "net1",
            "busybox",
            "sleep",
            "3600",
        ]);
        let ran = t0.elapsed().as_secs_f64() * 1000.0;
        let ip = api_ip(n1, &name, "net1");
        let mac = mac_of(ip);
        let mut pending: Vec<usize> = (0..links.len()).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|&k| {
                !rt.block_on(links[k].fdb_entries(&dev))
                    .map(|e| e.iter().any(|f| f.mac == mac))
                    .unwrap_or(false)
            });
            thread::sleep(Duration::from_millis(5));
        }
        assert!(pending.is_empty(), "{} nodes never got {ip}", pending.len());
        times.push((ran, t0.elapsed().as_secs_f64() * 1000.0));
        n1.docker_ok(&["rm", "-f", &name]);
    }
    drop(links);
    times
}

fn main() {
    require_root();
    let only = env_list("SWARMNET_BENCH_ONLY", "throughput,first-ping,propagation");
    let sizes: Vec<usize> = env_list("SWARMNET_BENCH_SIZES", "3,10,30")
        .iter()
        .map(|s| s.parse().expect("size"))
        .collect();
    let repeats = env_num("SWARMNET_BENCH_REPEATS", 10);
    println!("agent {}", swarmnet_tests::cluster::agent_bin().display());
    if only.iter().any(|o| o == "throughput") {
        bench_throughput(3);
    }
    if only.iter().any(|o| o == "first-ping") {
        bench_first_ping(repeats);
    }
    if only.iter().any(|o| o == "propagation") {
        println!(
            "\n== endpoint propagation: docker run on node1 until every other node's FDB has it ({repeats} runs each) =="
        );
        for size in sizes {
            let t = bench_propagation(size, repeats);
            let all: Vec<f64> = t.iter().map(|x| x.1).collect();
            let after: Vec<f64> = t.iter().map(|x| x.1 - x.0).collect();
            println!(
                "{size:>3} nodes: on every node {:.0} ms after docker run started (median; max {:.0}), {:.0} ms after it returned (median; max {:.0})",
                median(all.clone()),
                max(&all),
                median(after.clone()),
                max(&after)
            );
        }
    }
}
