//! Overlay networks across nodes: VXLAN on UDP 4789 between the nodes'
//! underlay addresses, addresses allocated by the managers' Raft, endpoints
//! spread by gossip, the kernel of each node converged from them. All
//! driven with the docker CLI and asserted through the network (ping,
//! HTTP, tshark on the hub) and the nodes' kernel tables.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, retry, util::describe};

#[track_caller]
fn field(n: &Node, obj: &str, fmt: &str) -> String {
    n.docker_ok(&["inspect", "-f", fmt, obj]).trim().to_owned()
}

/// The container's address on `network`.
#[track_caller]
fn ip_on(n: &Node, container: &str, network: &str) -> String {
    field(
        n,
        container,
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    )
}

#[track_caller]
fn network_id(n: &Node, network: &str) -> String {
    n.docker_ok(&["network", "inspect", "-f", "{{.Id}}", network])
        .trim()
        .to_owned()
}

fn vxlan_dev(id: &str) -> String {
    format!("vx-{}", &id[..12])
}

/// `ping -c N -W 1` from a container; the number of replies.
fn ping_from(n: &Node, container: &str, ip: &str, count: u32) -> u32 {
    let out = n.docker(&[
        "exec",
        container,
        "ping",
        "-c",
        &count.to_string(),
        "-W",
        "1",
        ip,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("packets transmitted, ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[track_caller]
fn wait_ping(n: &Node, container: &str, ip: &str) {
    retry(
        &format!("{container} on {} pings {ip}", n.hostname()),
        || match ping_from(n, container, ip, 1) {
            1 => Ok(()),
            r => Err(format!("{r} replies")),
        },
    );
}

/// Runs a busybox container on `network`.
#[track_caller]
fn run_on(n: &Node, name: &str, network: &str) {
    n.docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "busybox",
        "sleep",
        "3600",
    ]);
}

/// The swarm with busybox pulled on every node and net1 made.
fn swarm_with_net1(c: &Cluster) {
    c.form_swarm();
    for n in c.nodes() {
        n.docker_ok(&["pull", "-q", "busybox"]);
    }
    c.manager().docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "198.19.1.0/24",
        "net1",
    ]);
}

/// tshark on the hub's bridge, started and ready, for `count` VXLAN
/// datagrams: each line `vni|outer,inner src|outer,inner dst|icmp type`.
struct Capture {
    child: std::process::Child,
}

impl Capture {
    fn start(c: &Cluster, count: u32) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                c.hub().name(),
                "tshark",
                "-i",
                "br0",
                "-n",
                "-l",
            ])
            .args(["-c", &count.to_string(), "-f", "udp port 4789"])
            .args([
                "-d",
                "udp.port==4789,vxlan",
                "-T",
                "fields",
                "-E",
                "separator=|",
            ])
            .args([
                "-e",
                "vxlan.vni",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
                "-e",
                "icmp.type",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tshark");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains("Capturing on") {
                thread::spawn(move || {
                    let _ = std::io::copy(&mut err, &mut std::io::sink());
                });
                return Self { child };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("tshark did not start capturing: {line}");
    }

    fn lines(mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        out.lines().map(str::to_owned).collect()
    }
}

/// 3 nodes, net1: containers on node1 and node3 ping each other and move
/// a 10 MB file over HTTP by overlay address; the hub sees VXLAN on UDP
/// 4789 with net1's VNI between the nodes' underlay addresses.
#[test]
fn containers_on_two_nodes_talk_over_vxlan() {
    let c = Cluster::builder(3).registry().build();
    swarm_with_net1(&c);
    let (n1, n3) = (c.node(1), c.node(3));
    let vni = n1
        .docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}",
            "net1",
        ])
        .trim()
        .to_owned();
    assert!(vni.parse::<u32>().is_ok_and(|v| v >= 4096), "VNI {vni:?}");
    run_on(n1, "ca", "net1");
    run_on(n3, "cb", "net1");
    let (ip_a, ip_b) = (ip_on(n1, "ca", "net1"), ip_on(n3, "cb", "net1"));
    assert!(
        ip_a.starts_with("198.19.1.") && ip_b.starts_with("198.19.1."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    wait_ping(n1, "ca", &ip_b);

    let cap = Capture::start(&c, 4);
    assert_eq!(ping_from(n1, "ca", &ip_b, 2), 2);
    assert_eq!(ping_from(n3, "cb", &ip_a, 1), 1);
    let lines = cap.lines(Duration::from_secs(20));
    assert!(lines.len() >= 4, "captured {lines:?}");
    let (u1, u3) = (n1.addr().to_string(), n3.addr().to_string());
    for l in &lines {
        let f: Vec<&str> = l.split('|').collect();
        assert_eq!(f[0], vni, "VNI of {l}");
        let src: Vec<&str> = f[1].split(',').collect();
        let dst: Vec<&str> = f[2].split(',').collect();
        let outer = (src[0], dst[0]);
        assert!(
            outer == (u1.as_str(), u3.as_str()) || outer == (u3.as_str(), u1.as_str()),
            "outer addresses of {l}"
        );
        let inner = (src.get(1).copied(), dst.get(1).copied());
        assert!(
            inner == (Some(ip_a.as_str()), Some(ip_b.as_str()))
                || inner == (Some(ip_b.as_str()), Some(ip_a.as_str())),
            "inner addresses of {l}"
        );
    }

    // 10 MB over HTTP, busybox httpd on b.
    n3.docker_ok(&[
        "exec", "cb", "sh", "-c",
        "mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1M count=10 2>/dev/null && md5sum /www/blob | cut -d' ' -f1 > /www/sum && httpd -p 8080 -h /www",
    ]);
    let want = n3.docker_ok(&["exec", "cb", "cat", "/www/sum"]);
    let got = n1.docker_ok(&[
        "exec",
        "ca",
        "sh",
        "-c",
        &format!("wget -q -O - http://{ip_b}:8080/blob | md5sum | cut -d' ' -f1"),
    ]);
    assert_eq!(got.trim(), want.trim(), "the 10 MB file arrived whole");
}

/// Two networks on the same nodes: no way from one to the other; a
/// container connected to both reaches both.
#[test]
fn networks_are_isolated_and_multi_homed() {
    let c = Cluster::builder(3).registry().build();
    swarm_with_net1(&c);
    c.manager().docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "198.19.2.0/24",
        "net2",
    ]);
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    run_on(n1, "a1", "net1");
    run_on(n3, "b2", "net2");
    run_on(n2, "both", "net1");
    n2.docker_ok(&["network", "connect", "net2", "both"]);
    let a1 = ip_on(n1, "a1", "net1");
    let b2 = ip_on(n3, "b2", "net2");
    wait_ping(n2, "both", &a1);
    wait_ping(n2, "both", &b2);
    let ifaces = n2.docker_ok(&["exec", "both", "ip", "-o", "-4", "addr"]);
    assert!(
        ifaces.contains("eth0") && ifaces.contains("eth1"),
        "{ifaces}"
    );
    assert_eq!(ping_from(n1, "a1", &b2, 2), 0, "net1 reached net2");
    assert_eq!(ping_from(n3, "b2", &a1, 2), 0, "net2 reached net1");
    // Inspect on a worker: its own containers on the network, the peers.
    let v: serde_json::Value =
        serde_json::from_str(&n2.docker_ok(&["network", "inspect", "net1"])).expect("inspect JSON");
    let net = &v[0];
    let names: Vec<&str> = net["Containers"]
        .as_object()
        .expect("Containers")
        .values()
        .filter_map(|c| c["Name"].as_str())
        .collect();
    assert_eq!(names, ["both"], "only this node's containers: {net}");
    let peers: BTreeSet<&str> = net["Peers"]
        .as_array()
        .expect("Peers")
        .iter()
        .filter_map(|p| p["IP"].as_str())
        .collect();
    let want: BTreeSet<String> = [n1.addr(), n2.addr()]
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        peers,
        want.iter().map(String::as_str).collect(),
        "the nodes on net1: {net}"
    );
    // A worker lists the swarm networks its containers are on.
    let ls3 = n3.docker_ok(&[
        "network",
        "ls",
        "--filter",
        "driver=overlay",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(ls3.trim(), "net2", "node3 is on net2 only");
    // disconnect: both loses net2.
    n2.docker_ok(&["network", "disconnect", "net2", "both"]);
    assert_eq!(
        ping_from(n2, "both", &b2, 2),
        0,
        "still on net2 after disconnect"
    );
    assert_eq!(ping_from(n2, "both", &a1, 1), 1);
}

/// With the underlay's MTU at 1400 the overlay's is 1350 and a 10 MB
/// transfer completes (nothing is black-holed).
#[test]
fn a_lower_underlay_mtu_is_followed() {
    let c = Cluster::builder(2).registry().underlay_mtu(1400).build();
    swarm_with_net1(&c);
    let (n1, n2) = (c.node(1), c.node(2));
    run_on(n1, "ca", "net1");
    run_on(n2, "cb", "net1");
    let mtu = n1.docker_ok(&["exec", "ca", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1350");
    // The network's MTU option wins over the underlay's.
    n1.docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "198.19.3.0/24",
        "--opt",
        "com.docker.network.driver.mtu=1300",
        "small",
    ]);
    run_on(n1, "cs", "small");
    let mtu = n1.docker_ok(&["exec", "cs", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1300");
    let ip_b = ip_on(n2, "cb", "net1");
    wait_ping(n1, "ca", &ip_b);
    n2.docker_ok(&[
        "exec", "cb", "sh", "-c",
        "mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1M count=10 2>/dev/null && md5sum /www/blob | cut -d' ' -f1 > /www/sum && httpd -p 8080 -h /www",
    ]);
    let want = n2.docker_ok(&["exec", "cb", "cat", "/www/sum"]);
    let got = n1.docker_ok(&[
        "exec",
        "ca",
        "sh",
        "-c",
        &format!("wget -q -O - http://{ip_b}:8080/blob | md5sum | cut -d' ' -f1"),
    ]);
    assert_eq!(got.trim(), want.trim());
}

/// Default address pools: two pools inside 198.19.0.0/16 in /26s hand out
/// subnets in order, then a clear refusal.
#[test]
fn default_pools_hand_out_subnets_in_order() {
    let c = Cluster::new(1);
    let n = c.node(1);
    n.docker_ok(&[
        "swarm",
        "init",
        "--advertise-addr",
        &n.addr().to_string(),
        "--default-addr-pool",
        "198.19.4.0/24",
        "--default-addr-pool",
        "198.19.5.0/24",
        "--default-addr-pool-mask-length",
        "26",
    ]);
    let mut got = Vec::new();
    for i in 0..8 {
        let name = format!("p{i}");
        n.docker_ok(&["network", "create", "-d", "overlay", &name]);
        got.push(
            n.docker_ok(&[
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Subnet}}",
                &name,
            ])
            .trim()
            .to_owned(),
        );
    }
    assert_eq!(
        got,
        [
            "198.19.4.0/26",
            "198.19.4.64/26",
            "198.19.4.128/26",
            "198.19.4.192/26",
            "198.19.5.0/26",
            "198.19.5.64/26",
            "198.19.5.128/26",
            "198.19.5.192/26",
        ]
    );
    let out = n.docker(&["network", "create", "-d", "overlay", "p8"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("could not find an available, non-overlapping IPv4 address pool"),
        "{}",
        describe(&out)
    );
}

/// Bad input: Docker's errors, and nothing changes in the state or in
/// any node's kernel.
#[test]
fn bad_network_requests_change_nothing() {
    let c = Cluster::builder(2).registry().build();
    swarm_with_net1(&c);
    let (n1, n2) = (c.node(1), c.node(2));
    n1.docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "198.19.9.0/24",
        "closed",
    ]);
    run_on(n2, "user", "net1");
    let before = n1.docker_ok(&["network", "ls", "--format", "{{.ID}} {{.Name}}"]);
    let links_before = n1.exec_ok(&["ip", "-o", "link"]);
    let check = |n: &Node, args: &[&str], want: &str| {
        let out = n.docker(args);
        assert!(
            !out.status.success(),
            "`docker {}` succeeded",
            args.join(" ")
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "`docker {}`: want {want:?} in {err:?}",
            args.join(" ")
        );
    };
    check(
        n1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "198.19.300.0/24",
            "x1",
        ],
        "invalid CIDR address",
    );
    check(
        n1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "198.19.1.128/25",
            "x2",
        ],
        "overlaps",
    );
    check(
        n1,
        &["network", "create", "-d", "overlay", "net1"],
        "already exists",
    );
    check(
        n1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "198.19.7.0/24",
            "--gateway",
            "198.19.8.1",
            "x3",
        ],
        "no matching subnet for gateway",
    );
    check(n1, &["network", "rm", "net1"], "has active endpoints");
    check(n1, &["network", "rm", "bridge"], "pre-defined network");
    check(
        n2,
        &["run", "--rm", "--network", "closed", "busybox", "true"],
        "not manually attachable",
    );
    check(
        n2,
        &["network", "connect", "closed", "user"],
        "not manually attachable",
    );
    check(
        n2,
        &["network", "create", "-d", "overlay", "fromworker"],
        "worker node",
    );
    check(
        n2,
        &["run", "--rm", "--network", "nonet", "busybox", "true"],
        "network nonet not found",
    );
    let r = n1.api("POST", "/networks/create", Some(b"{not json"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        n1.docker_ok(&["network", "ls", "--format", "{{.ID}} {{.Name}}"]),
        before
    );
    assert_eq!(
        n1.exec_ok(&["ip", "-o", "link"]),
        links_before,
        "node1's kernel changed"
    );
    assert!(
        !n1.exec_ok(&["ip", "-o", "link"]).contains("vx-"),
        "a node without containers on a network has no devices for it"
    );
}

/// The permanent neighbour and FDB entries of a node's VXLAN device:
/// `(ip, mac)` and `(mac, dst)` as `ip neigh` and `bridge fdb` print them.
type Pairs = Vec<(String, String)>;

fn kernel_entries(n: &Node, dev: &str) -> (Pairs, Pairs) {
    let neigh = n.exec(&["ip", "neigh", "show", "dev", dev, "nud", "permanent"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let mac = w
                .iter()
                .position(|x| *x == "lladdr")
                .and_then(|i| w.get(i + 1))?;
            Some((w.first()?.to_string(), mac.to_string()))
        })
        .collect();
    let fdb = n.exec(&["bridge", "fdb", "show", "dev", dev]);
    let fdb = String::from_utf8_lossy(&fdb.stdout)
        .lines()
        .filter(|l| l.contains(" self") && l.contains("dst "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let dst = w
                .iter()
                .position(|x| *x == "dst")
                .and_then(|i| w.get(i + 1))?;
            Some((w.first()?.to_string(), dst.to_string()))
        })
        .collect();
    (neigh, fdb)
}

/// A node whose agent is killed: SWIM declares it dead, and within 5 s no
/// other node has neighbour or FDB entries for its endpoints.
#[test]
fn a_dead_node_is_forgotten_within_five_seconds() {
    let c = Cluster::builder(3).registry().build();
    swarm_with_net1(&c);
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    run_on(n1, "c1", "net1");
    run_on(n2, "c2", "net1");
    run_on(n3, "c3", "net1");
    let ip3 = ip_on(n3, "c3", "net1");
    let dev = vxlan_dev(&network_id(n1, "net1"));
    wait_ping(n1, "c1", &ip3);
    wait_ping(n2, "c2", &ip3);
    for n in [n1, n2] {
        let (neigh, fdb) = kernel_entries(n, &dev);
        assert!(
            neigh.iter().any(|(ip, _)| *ip == ip3),
            "{}: {neigh:?}",
            n.hostname()
        );
        assert!(
            fdb.iter().any(|(_, dst)| *dst == n3.addr().to_string()),
            "{}: {fdb:?}",
            n.hostname()
        );
    }
    let t0 = Instant::now();
    n3.kill9();
    for n in [n1, n2] {
        swarmnet_tests::eventually::retry_for(
            Duration::from_secs(5).saturating_sub(t0.elapsed()),
            &format!("{} forgets node3's endpoints", n.hostname()),
            || {
                let (neigh, fdb) = kernel_entries(n, &dev);
                let stale = neigh.iter().any(|(ip, _)| *ip == ip3)
                    || fdb.iter().any(|(_, dst)| *dst == n3.addr().to_string());
                if stale {
                    Err(format!("{neigh:?} {fdb:?}"))
                } else {
                    Ok(())
                }
            },
        );
    }
    println!(
        "node3's endpoints gone from node1 and node2 {:.2} s after its kill",
        t0.elapsed().as_secs_f64()
    );
    // node1 and node2 still reach each other.
    assert_eq!(ping_from(n1, "c1", &ip_on(n2, "c2", "net1"), 1), 1);
    // node3 comes back: its endpoints return.
    n3.restart();
    wait_ping(n1, "c1", &ip3);
}

/// What someone deletes by hand comes back within 10 s, traffic too.
#[test]
fn hand_deleted_devices_and_entries_come_back() {
    let c = Cluster::builder(2).registry().build();
    swarm_with_net1(&c);
    let (n1, n2) = (c.node(1), c.node(2));
    run_on(n1, "c1", "net1");
    run_on(n2, "c2", "net1");
    let ip2 = ip_on(n2, "c2", "net1");
    let dev = vxlan_dev(&network_id(n1, "net1"));
    wait_ping(n1, "c1", &ip2);
    n1.exec_ok(&["ip", "link", "del", &dev]);
    let t0 = Instant::now();
    swarmnet_tests::eventually::retry_for(
        Duration::from_secs(10),
        "the VXLAN device back and traffic flowing",
        || match ping_from(n1, "c1", &ip2, 1) {
            1 => Ok(()),
            r => Err(format!("{r} replies")),
        },
    );
    println!(
        "VXLAN device restored and traffic back after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let (_, fdb) = kernel_entries(n1, &dev);
    let (mac, _) = fdb.first().cloned().expect("an FDB entry");
    n1.exec_ok(&[
        "bridge",
        "fdb",
        "del",
        &mac,
        "dev",
        &dev,
        "dst",
        &n2.addr().to_string(),
        "self",
    ]);
    let t0 = Instant::now();
    swarmnet_tests::eventually::retry_for(Duration::from_secs(10), "the FDB entry back", || {
        let (_, fdb) = kernel_entries(n1, &dev);
        if fdb.iter().any(|(m, _)| *m == mac) {
            Ok(())
        } else {
            Err(format!("{fdb:?}"))
        }
    });
    println!(
        "FDB entry restored after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(ping_from(n1, "c1", &ip2, 1), 1);
}

/// Networks created at the same instant through two managers get distinct
/// VXLAN IDs and subnets; 50 containers started at once across 3 nodes get
/// 50 distinct addresses, all reachable from node1.
#[test]
fn concurrent_creates_and_fifty_containers() {
    let c = Cluster::builder(3).registry().build();
    let n1 = c.node(1);
    n1.docker_ok(&[
        "swarm",
        "init",
        "--advertise-addr",
        &n1.addr().to_string(),
        "--default-addr-pool",
        "198.19.16.0/20",
        "--default-addr-pool-mask-length",
        "24",
    ]);
    let tokens = c.tokens();
    c.join(2, &tokens.manager);
    c.join(3, &tokens.manager);
    c.wait_ready(3);
    for n in c.nodes() {
        n.docker_ok(&["pull", "-q", "busybox"]);
    }
    let names: Vec<String> = (0..6).map(|i| format!("con{i}")).collect();
    thread::scope(|s| {
        for (i, name) in names.iter().enumerate() {
            let n = c.node(1 + i % 3);
            s.spawn(move || {
                n.docker_ok(&["network", "create", "-d", "overlay", "--attachable", name])
            });
        }
    });
    let mut vnis = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for name in &names {
        vnis.insert(
            n1.docker_ok(&[
                "network",
                "inspect",
                "-f",
                "{{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}",
                name,
            ])
            .trim()
            .to_owned(),
        );
        subnets.insert(
            n1.docker_ok(&[
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Subnet}}",
                name,
            ])
            .trim()
            .to_owned(),
        );
    }
    assert_eq!((vnis.len(), subnets.len()), (6, 6), "{vnis:?} {subnets:?}");

    run_on(n1, "probe", "con0");
    let started = Instant::now();
    thread::scope(|s| {
        for i in 0..50 {
            let n = c.node(1 + i % 3);
            s.spawn(move || run_on(n, &format!("w{i:02}"), "con0"));
        }
    });
    println!(
        "50 containers started across 3 nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut ips = BTreeSet::new();
    for i in 0..50 {
        let n = c.node(1 + i % 3);
        ips.insert(ip_on(n, &format!("w{i:02}"), "con0"));
    }
    assert_eq!(ips.len(), 50, "distinct addresses: {ips:?}");
    let list: Vec<String> = ips.iter().cloned().collect();
    let script = format!(
        "for ip in {}; do ping -c 1 -W 2 $ip >/dev/null || echo unreachable $ip; done; echo done",
        list.join(" ")
    );
    retry("all 50 reachable from node1", || {
        let out = n1.docker_ok(&["exec", "probe", "sh", "-c", &script]);
        if out.trim() == "done" {
            Ok(())
        } else {
            Err(out)
        }
    });
}

/// An agent restart on a node: its containers' cross-node traffic goes on
/// (a ping running across the restart loses at most a second of replies).
#[test]
fn an_agent_restart_does_not_stop_the_traffic() {
    let c = Cluster::builder(2).registry().build();
    swarm_with_net1(&c);
    let (n1, n2) = (c.node(1), c.node(2));
    run_on(n1, "c1", "net1");
    run_on(n2, "c2", "net1");
    let ip2 = ip_on(n2, "c2", "net1");
    wait_ping(n1, "c1", &ip2);
    // 80 pings, 100 ms apart, from a container of its own (its output is
    // the shim's to keep), while node2's agent, then node1's, restart.
    n1.docker_ok(&[
        "run",
        "-d",
        "--name",
        "pinger",
        "--network",
        "net1",
        "busybox",
        "ping",
        "-c",
        "80",
        "-i",
        "0.1",
        "-W",
        "1",
        &ip2,
    ]);
    thread::sleep(Duration::from_secs(1));
    n2.kill9();
    n2.restart();
    thread::sleep(Duration::from_secs(1));
    n1.kill9();
    n1.restart();
    assert_eq!(n1.docker_ok(&["wait", "pinger"]).trim(), "0", "ping's exit");
    let text = n1.docker_ok(&["logs", "pinger"]);
    let received: u32 = text
        .lines()
        .find_map(|l| {
            l.split_once("packets transmitted, ")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    println!("ping across two agent restarts: {received}/80 replies");
    assert!(received >= 70, "lost more than a second of replies: {text}");
    assert_eq!(ping_from(n1, "c1", &ip2, 1), 1);
}

/// A partition heals: a node cut off long enough to be declared dead
/// learns, once back, of a container started while it was away (the
/// periodic sync and the rejoin bring it), and the others relearn its own.
#[test]
fn a_partition_heals() {
    let c = Cluster::builder(3).registry().build();
    swarm_with_net1(&c);
    let (n1, n3) = (c.node(1), c.node(3));
    run_on(n1, "c1", "net1");
    run_on(n3, "c3", "net1");
    let ip3 = ip_on(n3, "c3", "net1");
    wait_ping(n1, "c1", &ip3);
    n3.cut_link();
    // Long enough for SWIM to declare node3 dead on both sides.
    thread::sleep(Duration::from_secs(6));
    run_on(n1, "late", "net1");
    let late = ip_on(n1, "late", "net1");
    n3.heal_link();
    let t0 = Instant::now();
    wait_ping(n3, "c3", &late);
    wait_ping(n1, "late", &ip3);
    println!(
        "after the partition healed, both ways again in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
