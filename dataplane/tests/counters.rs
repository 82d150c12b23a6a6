//! Privileged: loads the `swarmnet_counters` XDP program onto a veth inside
//! network namespaces that the test makes (and always removes). Needs root;
//! without it the tests fail, saying so, rather than pass having done nothing.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use nix::{
    sched::{CloneFlags, setns},
    unistd::geteuid,
};
use swarmnet_dataplane::{CountersError, Proto, ProtoCount, UnderlayCounters};

/// Prefix of every namespace these tests create: `snc-<pid>-<n>-<side>`.
const NS_PREFIX: &str = "snc-";
/// From 198.18.0.0/15, the benchmarking range (RFC 2544): never a real host.
const ADDR_A: &str = "198.18.0.1";
const ADDR_B: &str = "198.18.0.2";
const VETH_A: &str = "snc-a";
const VETH_B: &str = "snc-b";
const PINGS: u64 = 5;
/// `ping`'s default 56-byte payload + ICMP 8 + IPv4 20 + Ethernet 14.
const PING_FRAME: u64 = 98;
const DATAGRAMS: u64 = 20;
const UDP_PAYLOAD: usize = 32;
const UDP_FRAME: u64 = UDP_PAYLOAD as u64 + 8 + 20 + 14;

fn require_root() {
    assert!(
        geteuid().is_root(),
        "this test needs root: it creates network namespaces and veths and loads an XDP \
         program. Run it as root, e.g. through scripts/test.sh"
    );
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e} (is iproute2 installed?)", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// A named network namespace (`ip netns add`), deleted on drop, also when
/// the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn add(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// Runs `f` on a new thread that has entered this namespace (`setns`
    /// affects only the calling thread), so the test thread stays where it is.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let ns =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns({}): {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip -n NS link show dev IFACE`, as text.
    fn link_show(&self, iface: &str) -> String {
        let out = ip(&["-n", &self.name, "link", "show", "dev", iface]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth end inside it.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: run `ip netns del {}`: {e}", self.name),
        }
    }
}

/// Deletes namespaces left by earlier runs that were killed before their
/// guards ran: `snc-<pid>-...` whose process is gone.
fn remove_stale_namespaces() {
    let out = ip(&["netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            drop(Netns {
                name: name.to_owned(),
            });
        }
    }
}

/// Two namespaces joined by a veth: `VETH_A` (ADDR_A) in `a`, `VETH_B`
/// (ADDR_B) in `b`. The veth ends live inside the namespaces from the start
/// (`ip link add ... netns`), so nothing is ever left in the host namespace.
fn veth_pair() -> (Netns, Netns) {
    remove_stale_namespaces();
    let a = Netns::add("a");
    let b = Netns::add("b");
    ip(&[
        "link", "add", VETH_A, "netns", &a.name, "type", "veth", "peer", "name", VETH_B, "netns",
        &b.name,
    ]);
    for (ns, iface, addr) in [(&a, VETH_A, ADDR_A), (&b, VETH_B, ADDR_B)] {
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            iface,
        ]);
        ip(&["-n", &ns.name, "link", "set", "dev", iface, "up"]);
    }
    (a, b)
}

fn count(counts: &[ProtoCount], proto: Proto) -> (u64, u64) {
    counts
        .iter()
        .find(|c| c.proto == proto)
        .map_or((0, 0), |c| (c.packets, c.bytes))
}

#[test]
fn counts_icmp_and_udp_arriving_on_a_veth() {
    require_root();
    let (a, b) = veth_pair();

    let counters = b
        .run(|| UnderlayCounters::attach(VETH_B))
        .unwrap_or_else(|e| panic!("attach to {VETH_B} in {}: {e:?}", b.name));
    assert_eq!(counters.iface(), VETH_B);
    let mode = counters.mode();
    assert!(mode == "driver" || mode == "skb", "mode {mode}");
    eprintln!("attached in {mode} mode");
    let shown = b.link_show(VETH_B);
    let expected = if mode == "driver" {
        "xdp "
    } else {
        "xdpgeneric"
    };
    assert!(
        shown.contains(expected),
        "`ip link` should show {expected:?}: {shown}"
    );

    let before = counters.read().expect("read counters");

    // ICMP: the echo requests arrive on VETH_B. Replies coming back also
    // prove that the program passes what it counts.
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-c", &PINGS.to_string()])
        .args(["-i", "0.2", "-W", "2", "-q", ADDR_B])
        .output()
        .expect("run ping");
    assert!(
        out.status.success(),
        "ping {ADDR_B} from {}: {}{}",
        a.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // UDP: sockets stay in the namespace they were made in, so make them on
    // the namespace threads and use them from here.
    let rx = b
        .run(|| UdpSocket::bind((ADDR_B, 0)))
        .expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set read timeout");
    let to: SocketAddr = rx.local_addr().expect("receiver address");
    let tx = a.run(|| UdpSocket::bind((ADDR_A, 0))).expect("bind sender");
    let payload = [0x5a_u8; UDP_PAYLOAD];
    for _ in 0..DATAGRAMS {
        tx.send_to(&payload, to).expect("send datagram");
    }
    let mut buf = [0_u8; 64];
    for i in 0..DATAGRAMS {
        let (n, _) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {DATAGRAMS} not delivered: {e}"));
        assert_eq!(n, UDP_PAYLOAD);
    }

    let after = counters.read().expect("read counters");
    eprintln!(
        "counters on {VETH_B}: {}",
        after
            .iter()
            .map(|c| format!("{}={}/{}B", c.proto.label(), c.packets, c.bytes))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let delta = |proto| {
        let (p0, b0) = count(&before, proto);
        let (p1, b1) = count(&after, proto);
        (p1 - p0, b1 - b0)
    };
    let (icmp, icmp_bytes) = delta(Proto::Ip(1));
    let (udp, udp_bytes) = delta(Proto::Ip(17));
    assert!(icmp >= PINGS, "icmp packets grew by {icmp}, sent {PINGS}");
    assert!(
        icmp_bytes >= PINGS * PING_FRAME,
        "icmp bytes grew by {icmp_bytes}, sent {PINGS} x {PING_FRAME}"
    );
    assert!(
        udp >= DATAGRAMS,
        "udp packets grew by {udp}, sent {DATAGRAMS}"
    );
    assert!(
        udp_bytes >= DATAGRAMS * UDP_FRAME,
        "udp bytes grew by {udp_bytes}, sent {DATAGRAMS} x {UDP_FRAME}"
    );
    // Ping needed ARP first (the namespaces were new).
    assert!(
        count(&after, Proto::Arp).0 >= 1,
        "no ARP counted: {after:?}"
    );

    drop(counters);
    let shown = b.link_show(VETH_B);
    assert!(
        !shown.contains("xdp"),
        "dropping the counters should detach: {shown}"
    );
}

#[test]
fn attach_to_a_missing_interface_is_an_error() {
    require_root();
    remove_stale_namespaces();
    let ns = Netns::add("missing");
    let err = ns
        .run(|| UnderlayCounters::attach("snc-none"))
        .expect_err("attach to an interface that does not exist");
    assert!(
        matches!(err, CountersError::Attach { ref iface, .. } if iface == "snc-none"),
        "{err:?}"
    );
}
