//! Privileged: an overlay network across two "nodes". Each node is a
//! namespace with one end of an underlay veth pair (198.18.0.21 and .22) and
//! the overlay made by `overlay::converge`; each has one "container"
//! namespace attached to the overlay bridge with `add_veth`
//! (198.19.42.2 on node a, .3 on node b), and each node's spec lists the
//! other node's container as its one remote. Checked from outside the crate
//! with `ip`, `bridge`, `ping` and `tcpdump` through `nsenter --net=PATH`.
//! Every namespace is the test's own (`svx<pid>-<n>-<tag>` under
//! `support::DIR`), removed by a guard also when the test fails. Needs root;
//! without it the tests fail, saying so.

mod support;

use std::{
    io::{BufRead, BufReader, Read},
    net::Ipv4Addr,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use support::{Ns, setup};
use swarmnet_dataplane::{
    ConvergeReport, FdbEntry, LinkChange, LinkError, Neighbour, Netlink, OverlayError, OverlaySpec,
    RemoteEndpoint, VethSpec, VxlanSpec, mac_from_ipv4,
    overlay::{converge, remove},
};

/// Prefix of every namespace file this binary makes (read by `support`).
const NS_PREFIX: &str = "svx";
/// How long a capture gets to start and to see its packet.
const PATIENCE: Duration = Duration::from_secs(10);

const VNI: u32 = 4242;
const PORT: u16 = 4789;
const UNDERLAY: &str = "ul";
const VTEP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
const VTEP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 22);
const C_A: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 2);
const C_B: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 3);

/// This run's device names: `svx<pid>-br` etc., at most 13 bytes.
fn name(what: &str) -> String {
    format!("svx{}-{what}", std::process::id())
}

/// One node: its namespace and netlink connection, its container, and the
/// overlay spec it converges to.
struct Node {
    ns: Ns,
    nl: Netlink,
    container: Ns,
    spec: OverlaySpec,
}

impl Node {
    fn vxlan(&self) -> &str {
        &self.spec.vxlan.name
    }

    async fn converge(&self) -> ConvergeReport {
        converge(&self.nl, &self.spec)
            .await
            .unwrap_or_else(|e| panic!("converge in {}: {e:?}", self.ns.path().display()))
    }

    /// `ip`'s view, for messages and for what the library does not read.
    fn show(&self, args: &[&str]) -> String {
        self.ns.run(args[0], &args[1..])
    }

    /// The vxlan device's transmitted packets (`/proc/net/dev`, which shows
    /// the reading process's namespace).
    fn vxlan_tx_packets(&self) -> u64 {
        let table = self.ns.run("cat", &["/proc/net/dev"]);
        let line = table
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{}:", self.vxlan())))
            .unwrap_or_else(|| panic!("{} not in /proc/net/dev: {table}", self.vxlan()));
        // rx: bytes packets errs drop fifo frame compressed multicast; tx:
        // bytes packets ...
        line.split_whitespace()
            .nth(9)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("tx packets in {line:?}"))
    }

    async fn neighbours(&self) -> Vec<Neighbour> {
        self.nl.neighbours(self.vxlan()).await.expect("neighbours")
    }

    async fn fdb(&self) -> Vec<FdbEntry> {
        self.nl
            .fdb_entries(self.vxlan())
            .await
            .expect("fdb entries")
    }
}

/// Two nodes, their underlay at `underlay_mtu`, the overlay at 50 less,
/// converged, and a container on each.
struct TwoNodes {
    a: Node,
    b: Node,
}

impl TwoNodes {
    async fn new(underlay_mtu: u32) -> Self {
        setup();
        let (ns_a, ns_b) = (Ns::create("a"), Ns::create("b"));
        let mtu = underlay_mtu.to_string();
        ns_a.ip(&[
            "link",
            "add",
            UNDERLAY,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY,
            "mtu",
            &mtu,
            "netns",
            &ns_b.path().display().to_string(),
        ]);
        for (ns, vtep) in [(&ns_a, VTEP_A), (&ns_b, VTEP_B)] {
            ns.ip(&["addr", "add", &format!("{vtep}/24"), "dev", UNDERLAY]);
            ns.ip(&["link", "set", "dev", UNDERLAY, "up"]);
        }
        // Node a names its source address, node b lets the route choose.
        let a = Node::new(
            ns_a,
            Some(VTEP_A),
            underlay_mtu - 50,
            C_A,
            remote(C_B, VTEP_B),
        )
        .await;
        let b = Node::new(ns_b, None, underlay_mtu - 50, C_B, remote(C_A, VTEP_A)).await;
        TwoNodes { a, b }
    }
}

fn remote(ip: Ipv4Addr, vtep: Ipv4Addr) -> RemoteEndpoint {
    RemoteEndpoint {
        ip,
        mac: mac_from_ipv4(ip),
        vtep,
    }
}

impl Node {
    async fn new(
        ns: Ns,
        local: Option<Ipv4Addr>,
        mtu: u32,
        container_ip: Ipv4Addr,
        peer: RemoteEndpoint,
    ) -> Self {
        let nl = ns.netlink().await;
        let spec = OverlaySpec {
            bridge: name("br"),
            vxlan: VxlanSpec {
                name: name("vx"),
                vni: VNI,
                port: PORT,
                local,
                mtu,
                bridge: name("br"),
            },
            remotes: vec![peer],
        };
        let container = Ns::create("c");
        let node = Node {
            ns,
            nl,
            container,
            spec,
        };
        let report = node.converge().await;
        assert_eq!(
            report,
            ConvergeReport {
                bridge: LinkChange::Created,
                vxlan: LinkChange::Created,
                neighbours_set: 1,
                neighbours_deleted: 0,
                fdb_set: 1,
                fdb_deleted: 0,
            }
        );
        node.nl
            .add_veth(&VethSpec {
                host_ifname: name("ve"),
                bridge: node.spec.bridge.clone(),
                netns: node.container.path().into(),
                ifname: "eth0".into(),
                mac: mac_from_ipv4(container_ip),
                addr: container_ip,
                prefix_len: 24,
                gateway: None,
                mtu,
            })
            .await
            .expect("attach the container");
        node
    }
}

/// `tcpdump -c 1 -n -i IFACE FILTER` inside a namespace, started and
/// listening; killed on drop if still running.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(ns: &Ns, iface: &str, filter: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["tcpdump", "-c", "1", "-n", "-l", "-i", iface, filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run tcpdump: {e} (is tcpdump installed?)"));
        let stderr = child.stderr.take().expect("tcpdump's stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let capture = Capture { child };
        let deadline = Instant::now() + PATIENCE;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("listening on") => return capture,
                Ok(line) => said.push(line),
                Err(_) => panic!("tcpdump did not start listening on {iface}: {said:?}"),
            }
        }
    }

    /// The packet it printed, once it has exited.
    fn packet(mut self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait().expect("wait for tcpdump") {
                Some(status) => {
                    let mut out = String::new();
                    if let Some(mut stdout) = self.child.stdout.take() {
                        stdout.read_to_string(&mut out).expect("tcpdump's output");
                    }
                    assert!(status.success(), "tcpdump failed ({status}): {out}");
                    return out;
                }
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                None => panic!("tcpdump saw no packet within {PATIENCE:?}"),
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// `ping -c 1 -w 5 -M do -s SIZE TO`: an echo request of `size` payload
/// bytes that must not be fragmented (DF), retried each second for 5 s
/// until answered.
fn ping_df(from: &Ns, to: Ipv4Addr, size: u32) -> Output {
    from.try_run(
        "ping",
        &[
            "-c",
            "1",
            "-w",
            "5",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &to.to_string(),
        ],
    )
}

/// One ping from `from` to `to` that must fail: none of its packets (1 s)
/// gets an answer.
fn ping_fails(from: &Ns, to: Ipv4Addr) {
    let out = from.try_run("ping", &["-c", "1", "-w", "1", "-q", &to.to_string()]);
    assert!(
        !out.status.success(),
        "ping {to} got through: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_ping_across_the_vxlan() {
    let t = TwoNodes::new(1500).await;
    let (a, b) = (&t.a, &t.b);

    // The devices as `ip` sees them.
    let vx = a.show(&["ip", "-d", "link", "show", "dev", a.vxlan()]);
    for want in [
        "vxlan id 4242 ",
        "local 198.18.0.21 ",
        "dstport 4789 ",
        "nolearning ",
        "proxy ",
        " mtu 1450 ",
        &format!("master {} ", a.spec.bridge),
        "addrgenmode none ",
    ] {
        assert!(vx.contains(want), "want {want:?} in {vx}");
    }
    let vx_b = b.show(&["ip", "-d", "link", "show", "dev", b.vxlan()]);
    assert!(!vx_b.contains(" local "), "{vx_b}");
    for node in [a, b] {
        let br = &node.spec.bridge;
        let link = node
            .nl
            .link(br)
            .await
            .expect("bridge")
            .expect("bridge listed");
        assert_eq!(link.kind.as_deref(), Some("bridge"));
        assert!(link.up && link.mtu == Some(1450), "{link:?}");
        let addrs = node.show(&["ip", "addr", "show", "dev", br]);
        assert!(
            !addrs.contains("inet"),
            "the bridge has an address: {addrs}"
        );
    }

    // The device's own tables hold exactly the remote's entries: the kernel
    // adds none to a vxlan made without a remote.
    assert_eq!(
        a.fdb().await,
        [FdbEntry {
            mac: mac_from_ipv4(C_B),
            dst: Some(VTEP_B),
            permanent: true
        }]
    );
    assert_eq!(
        a.neighbours().await,
        [Neighbour {
            ip: C_B,
            mac: Some(mac_from_ipv4(C_B)),
            permanent: true
        }]
    );
    let fdb = a.show(&["bridge", "fdb", "show", "dev", a.vxlan()]);
    assert!(
        fdb.contains("02:42:c6:13:2a:03 dst 198.18.0.22 self permanent"),
        "{fdb}"
    );

    // The first VXLAN packet on the underlay is the echo request itself:
    // the ARP request for C_B was answered on node a, by proxy.
    let capture = Capture::start(&a.ns, UNDERLAY, "udp port 4789");
    let tx_before = a.vxlan_tx_packets();
    a.container.ping(C_B);
    let packet = capture.packet();
    assert!(
        packet.contains("198.18.0.21.")
            && packet.contains("> 198.18.0.22.4789: VXLAN")
            && packet.contains("vni 4242")
            && packet.contains("198.19.42.2 > 198.19.42.3: ICMP echo request"),
        "not the echo request in VXLAN: {packet}"
    );
    let tx = a.vxlan_tx_packets() - tx_before;
    assert!(tx >= 1, "the vxlan device sent {tx} packets");
    b.container.ping(C_A);
    let arp = b.container.ip(&["neigh", "show", "198.19.42.2"]);
    assert!(arp.contains("lladdr 02:42:c6:13:2a:02"), "{arp}");

    // Again: nothing to do.
    assert!(a.converge().await.is_unchanged());
    assert!(b.converge().await.is_unchanged());
    a.container.ping(C_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_deleted_by_hand_comes_back() {
    let t = TwoNodes::new(1500).await;
    let (a, b) = (&t.a, &t.b);
    a.container.ping(C_B);

    // The vxlan device, and with it its entries.
    a.ns.ip(&["link", "del", "dev", a.vxlan()]);
    ping_fails(&a.container, C_B);
    let report = a.converge().await;
    assert_eq!(
        report,
        ConvergeReport {
            bridge: LinkChange::Unchanged,
            vxlan: LinkChange::Created,
            neighbours_set: 1,
            neighbours_deleted: 0,
            fdb_set: 1,
            fdb_deleted: 0,
        }
    );
    a.container.ping(C_B);

    // One FDB entry: frames for C_B have nowhere to go.
    b.ns.run(
        "bridge",
        &[
            "fdb",
            "del",
            &fmt_mac(mac_from_ipv4(C_A)),
            "dev",
            b.vxlan(),
            "dst",
            &VTEP_A.to_string(),
            "self",
        ],
    );
    ping_fails(&b.container, C_A);
    let report = b.converge().await;
    assert_eq!((report.fdb_set, report.changes()), (1, 1), "{report:?}");
    b.container.ping(C_A);

    // One neighbour entry: proxy ARP has nothing to answer from. The
    // container's cached entry is flushed so that it asks.
    b.ns.ip(&["neigh", "del", &C_A.to_string(), "dev", b.vxlan()]);
    b.container.ip(&["neigh", "flush", "dev", "eth0"]);
    ping_fails(&b.container, C_A);
    let report = b.converge().await;
    assert_eq!(
        (report.neighbours_set, report.changes()),
        (1, 1),
        "{report:?}"
    );
    b.container.ping(C_A);

    // A vxlan of that name made differently (another VNI, learning) is
    // replaced; an MTU changed by hand is set back, the bridge's too: a
    // bridge whose MTU was only given at creation follows its smallest port.
    a.ns.ip(&["link", "del", "dev", a.vxlan()]);
    a.ns.ip(&[
        "link",
        "add",
        a.vxlan(),
        "type",
        "vxlan",
        "id",
        "4243",
        "dstport",
        "4789",
    ]);
    let report = a.converge().await;
    assert_eq!(report.vxlan, LinkChange::Replaced, "{report:?}");
    let vx = a.show(&["ip", "-d", "link", "show", "dev", a.vxlan()]);
    assert!(
        vx.contains("vxlan id 4242 ") && vx.contains("nolearning"),
        "{vx}"
    );
    a.ns.ip(&["link", "set", "dev", a.vxlan(), "mtu", "1400"]);
    assert_eq!(
        a.nl.link(&a.spec.bridge)
            .await
            .expect("bridge")
            .map(|l| l.mtu),
        Some(Some(1400))
    );
    let report = a.converge().await;
    assert_eq!(
        (report.bridge, report.vxlan, report.changes()),
        (LinkChange::Updated, LinkChange::Updated, 2),
        "{report:?}"
    );
    a.container.ping(C_B);
    assert!(a.converge().await.is_unchanged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_remotes_lose_their_entries_and_unmanaged_ones_stay() {
    let mut t = TwoNodes::new(1500).await;
    // An endpoint that moves to node a's spec and out again.
    let gone = remote(Ipv4Addr::new(198, 19, 42, 9), VTEP_B);
    t.a.spec.remotes.push(gone);
    let report = t.a.converge().await;
    assert_eq!(
        (report.neighbours_set, report.fdb_set, report.changes()),
        (1, 1, 2)
    );

    let a = &t.a;
    // Someone else's entries: not permanent, for an IP and a MAC of no
    // remote.
    let theirs_ip = Ipv4Addr::new(198, 19, 42, 77);
    let theirs_mac = mac_from_ipv4(theirs_ip);
    a.ns.ip(&[
        "neigh",
        "add",
        &theirs_ip.to_string(),
        "lladdr",
        &fmt_mac(theirs_mac),
        "dev",
        a.vxlan(),
        "nud",
        "noarp",
    ]);
    a.ns.run(
        "bridge",
        &[
            "fdb",
            "add",
            &fmt_mac(theirs_mac),
            "dev",
            a.vxlan(),
            "dst",
            &VTEP_B.to_string(),
            "self",
            // Not permanent (NUD_NOARP); without a state, `bridge` makes
            // it permanent.
            "static",
        ],
    );
    // And a permanent one no remote has: on this device, permanent entries
    // are the overlay's.
    let stray = mac_from_ipv4(Ipv4Addr::new(198, 19, 42, 88));
    a.ns.run(
        "bridge",
        &[
            "fdb",
            "add",
            &fmt_mac(stray),
            "dev",
            a.vxlan(),
            "dst",
            &VTEP_B.to_string(),
            "self",
            "permanent",
        ],
    );
    let fdb = a.fdb().await;
    let theirs = FdbEntry {
        mac: theirs_mac,
        dst: Some(VTEP_B),
        permanent: false,
    };
    assert!(fdb.contains(&theirs), "{fdb:?}");

    t.a.spec.remotes.retain(|r| *r != gone);
    let a = &t.a;
    let report = a.converge().await;
    assert_eq!(
        (
            report.neighbours_deleted,
            report.fdb_deleted,
            report.changes()
        ),
        (1, 2, 3),
        "{report:?}"
    );
    let neighbours = a.neighbours().await;
    let fdb = a.fdb().await;
    let kept = remote(C_B, VTEP_B);
    assert!(
        neighbours.iter().all(|n| n.ip != gone.ip) && fdb.iter().all(|e| e.mac != gone.mac),
        "entries of a removed remote left: {neighbours:?} {fdb:?}"
    );
    assert!(fdb.iter().all(|e| e.mac != stray), "{fdb:?}");
    assert!(
        neighbours.contains(&Neighbour {
            ip: theirs_ip,
            mac: Some(theirs_mac),
            permanent: false
        }),
        "unmanaged neighbour deleted: {neighbours:?}"
    );
    assert!(
        fdb.contains(&theirs),
        "unmanaged fdb entry deleted: {fdb:?}"
    );
    assert!(
        fdb.contains(&FdbEntry {
            mac: kept.mac,
            dst: Some(kept.vtep),
            permanent: true
        }),
        "{fdb:?}"
    );
    a.container.ping(C_B);
    assert!(a.converge().await.is_unchanged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_mtu_1400_carries_1350_and_refuses_more_locally() {
    let t = TwoNodes::new(1400).await;
    let (a, b) = (&t.a, &t.b);
    let eth0 = a.container.ip(&["-o", "link", "show", "dev", "eth0"]);
    assert!(eth0.contains(" mtu 1350 "), "{eth0}");
    for name in [a.vxlan(), &a.spec.bridge] {
        let link = a.nl.link(name).await.expect("link").expect("listed");
        assert_eq!(link.mtu, Some(1350), "{link:?}");
    }

    // 1322 + ICMP 8 + IPv4 20 = 1350: the overlay MTU; with VXLAN's 50 the
    // underlay's 1400, not fragmented (DF).
    for (from, to) in [(a, C_B), (b, C_A)] {
        let out = ping_df(&from.container, to, 1322);
        assert!(
            out.status.success(),
            "1350 bytes with DF to {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = ping_df(&a.container, C_B, 1323);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "1351 bytes with DF got through: {said}"
    );
    assert!(
        said.contains("message too long"),
        "not refused locally: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_removes_both_devices() {
    let t = TwoNodes::new(1500).await;
    let a = &t.a;
    let (bridge, vxlan) = (a.spec.bridge.as_str(), a.vxlan());
    remove(&a.nl, bridge, vxlan).await.expect("remove");
    for name in [bridge, vxlan] {
        assert_eq!(a.nl.link(name).await.expect("link"), None, "{name} left");
    }
    let veth =
        a.nl.link(&name("ve"))
            .await
            .expect("link")
            .expect("veth stays");
    assert_eq!(veth.master, None, "{veth:?}");
    remove(&a.nl, bridge, vxlan).await.expect("remove again");

    // A link of another kind under those names is not removed.
    a.ns.ip(&["link", "add", bridge, "type", "veth", "peer", "name", vxlan]);
    let err = remove(&a.nl, "svx-nobr", vxlan)
        .await
        .expect_err("a veth is not the vxlan");
    assert!(
        matches!(&err, OverlayError::Remove { source, .. }
            if matches!(**source, LinkError::WrongKind { want: "vxlan", .. })),
        "{err:?}"
    );
    assert!(a.nl.link(vxlan).await.expect("link").is_some());
    let err =
        a.nl.ensure_l2_bridge(bridge, 1450)
            .await
            .expect_err("a veth is not a bridge");
    assert!(matches!(err, LinkError::NotABridge { .. }), "{err:?}");
}
