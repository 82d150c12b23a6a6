//! Privileged: network namespaces made with `netns`, a bridge and containers'
//! veth pairs made with `Netlink`, checked from outside the crate with `ip`
//! and `ping` run through `nsenter --net=PATH`. Every namespace is the test's
//! own (`/run/swarmnet-dataplane-tests/snl<pid>-<n>-<tag>`), removed by a
//! guard also when the test fails; the links live inside them and go with
//! them. Nothing is made in the root network namespace. Needs root; without
//! it the tests fail, saying so, rather than pass having done nothing.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
    },
};
use swarmnet_dataplane::{
    LinkError, LinkInfo, Netlink, NetnsError, VethSpec, mac_from_ipv4, netns,
};

mod support;

use support::{DIR, Ns, setup};

/// Prefix of every namespace file this binary makes: `snl<pid>-<n>-<tag>`
/// (read by [`support`]).
const NS_PREFIX: &str = "snl";
/// How long the kernel gets for asynchronous work (namespace teardown).
const PATIENCE: Duration = Duration::from_secs(10);

const BRIDGE: &str = "br0";
/// From 198.18.0.0/15, the benchmarking range (RFC 2544): never a real host.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const C1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const C2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const MTU: u32 = 1450;

/// Whether `/proc/self/mountinfo` lists a mount at `path`.
fn mounted_at(path: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let path = path.to_str().expect("utf-8 path");
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

fn spec(container: &Ns, host_ifname: &str, addr: Ipv4Addr) -> VethSpec {
    VethSpec {
        host_ifname: host_ifname.into(),
        bridge: BRIDGE.into(),
        netns: container.path().into(),
        ifname: "eth0".into(),
        mac: mac_from_ipv4(addr),
        addr,
        prefix_len: 24,
        gateway: Some(GATEWAY),
        mtu: MTU,
    }
}

async fn link(nl: &Netlink, name: &str) -> Option<LinkInfo> {
    nl.links()
        .await
        .expect("list links")
        .into_iter()
        .find(|l| l.name == name)
}

async fn names(nl: &Netlink) -> Vec<String> {
    let mut names: Vec<String> = nl
        .links()
        .await
        .expect("list links")
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    names
}

/// A node namespace with [`BRIDGE`] at [`GATEWAY`]/24; returns the bridge
/// index.
async fn node_with_bridge(nl: &Netlink) -> u32 {
    nl.ensure_bridge(BRIDGE, GATEWAY, 24, None)
        .await
        .expect("ensure bridge")
}

/// A node namespace with the bridge and one container attached to it as
/// [`C1`] through the host end `host`.
struct Attached {
    /// Holds the node namespace (and its bridge) for the fixture's life.
    _node: Ns,
    c: Ns,
    nl: Netlink,
    s: VethSpec,
}

impl Attached {
    async fn new(host: &str) -> Self {
        setup();
        let node = Ns::create("node");
        let c = Ns::create("c");
        let nl = node.netlink().await;
        node_with_bridge(&nl).await;
        let s = spec(&c, host, C1);
        nl.add_veth(&s).await.expect("attach");
        Attached {
            _node: node,
            c,
            nl,
            s,
        }
    }
}

#[test]
fn netns_create_is_netns_remove() {
    setup();
    let ns = Ns::create("ns");
    let path = ns.path();
    assert!(netns::is_netns(path), "is_netns after create");
    assert!(
        mounted_at(path),
        "no mount at {} after create",
        path.display()
    );

    // A namespace of its own, entered on another thread only.
    let mine = fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let inside = netns::run_in(path, || fs::read_link("/proc/thread-self/ns/net"))
        .expect("run_in")
        .expect("netns inside");
    assert_ne!(inside, mine, "run_in ran in the caller's namespace");
    assert_eq!(
        fs::read_link("/proc/thread-self/ns/net").expect("own netns"),
        mine,
        "run_in moved the caller's thread"
    );
    let lo = ns.ip(&["-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "loopback not up: {lo}");

    let again = netns::create(path).expect_err("create over an existing namespace");
    assert!(matches!(again, NetnsError::Exists { .. }), "{again:?}");
    assert!(
        netns::is_netns(path),
        "a refused create must leave the namespace"
    );

    netns::remove(path).expect("remove");
    assert!(!netns::is_netns(path), "is_netns after remove");
    assert!(
        !mounted_at(path),
        "{} still mounted after remove",
        path.display()
    );
    assert!(!path.exists(), "{} left behind", path.display());
    netns::remove(path).expect("remove twice");

    let gone = netns::run_in(path, || ()).expect_err("run_in a removed namespace");
    assert!(matches!(gone, NetnsError::Open { .. }), "{gone:?}");

    // A plain file is not a namespace; remove cleans it up all the same.
    let plain = Path::new(DIR).join(format!("{NS_PREFIX}{}-plain", std::process::id()));
    fs::write(&plain, b"").expect("write plain file");
    assert!(!netns::is_netns(&plain));
    assert!(!netns::is_netns(Path::new("/proc/self/ns/net")));
    netns::remove(&plain).expect("remove a plain file");
    assert!(!plain.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_bridge_creates_then_changes_nothing() {
    setup();
    let node = Ns::create("node");
    let nl = node.netlink().await;

    let index = nl
        .ensure_bridge(BRIDGE, GATEWAY, 24, Some(1400))
        .await
        .expect("ensure bridge");
    let br = link(&nl, BRIDGE).await.expect("bridge listed");
    assert_eq!(br.index, index);
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up, "bridge down: {br:?}");
    assert_eq!(br.mtu, Some(1400));
    assert_eq!(nl.link_index(BRIDGE).await.expect("index"), Some(index));
    let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", BRIDGE]);
    assert!(addrs.contains("inet 198.18.1.1/24 "), "{addrs}");
    // Someone else's address, to be left alone.
    node.ip(&["addr", "add", "198.18.9.1/24", "dev", BRIDGE]);

    // Watch every link and IPv4 address change in the node namespace, then
    // apply the same thing again: the kernel must report no change before a
    // marker made afterwards.
    let rt = tokio::runtime::Handle::current();
    let (conn, _handle, mut events) = netns::run_in(node.path(), move || {
        let _rt = rt.enter();
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr])
    })
    .expect("enter node")
    .expect("subscribe to link and address events");
    let monitor = tokio::spawn(conn);

    let again = nl
        .ensure_bridge(BRIDGE, GATEWAY, 24, Some(1400))
        .await
        .expect("ensure bridge again");
    assert_eq!(again, index);

    let marker = Ipv4Addr::new(198, 18, 255, 1);
    node.ip(&["addr", "add", "198.18.255.1/32", "dev", "lo"]);
    let mut changes = Vec::new();
    loop {
        let (msg, _) = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("marker event within the deadline")
            .expect("event stream open");
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) = &msg.payload
            && address_is(a, marker)
        {
            break;
        }
        changes.push(msg);
    }
    assert!(
        changes.is_empty(),
        "a second ensure_bridge changed something: {changes:#?}"
    );
    monitor.abort();

    // A different spec converges: MTU, and the same address with another
    // prefix length replaces the old one; other addresses stay.
    let changed = nl
        .ensure_bridge(BRIDGE, GATEWAY, 16, Some(1500))
        .await
        .expect("ensure bridge with a new spec");
    assert_eq!(changed, index);
    assert_eq!(link(&nl, BRIDGE).await.expect("bridge").mtu, Some(1500));
    let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", BRIDGE]);
    assert!(addrs.contains("inet 198.18.1.1/16 "), "{addrs}");
    assert!(!addrs.contains("198.18.1.1/24"), "{addrs}");
    assert!(addrs.contains("inet 198.18.9.1/24 "), "{addrs}");
}

fn address_is(msg: &AddressMessage, addr: Ipv4Addr) -> bool {
    msg.attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_bridge_refuses_a_veth() {
    setup();
    let node = Ns::create("node");
    let nl = node.netlink().await;
    node.ip(&[
        "link", "add", "snl-v0", "type", "veth", "peer", "name", "snl-v1",
    ]);

    let err = nl
        .ensure_bridge("snl-v0", GATEWAY, 24, None)
        .await
        .expect_err("ensure_bridge on a veth");
    assert!(
        matches!(&err, LinkError::NotABridge { name, kind, .. } if name == "snl-v0" && kind == "veth"),
        "{err:?}"
    );
    let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", "snl-v0"]);
    assert!(
        addrs.trim().is_empty(),
        "address added to the veth: {addrs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_the_bridge_reach_each_other() {
    setup();
    let node = Ns::create("node");
    let c1 = Ns::create("c1");
    let c2 = Ns::create("c2");
    let nl = node.netlink().await;
    let bridge = node_with_bridge(&nl).await;

    let s1 = spec(&c1, "vethsnl1", C1);
    let s2 = spec(&c2, "vethsnl2", C2);
    nl.add_veth(&s1).await.expect("attach c1");
    nl.add_veth(&s2).await.expect("attach c2");

    for (c, s) in [(&c1, &s1), (&c2, &s2)] {
        let host = link(&nl, &s.host_ifname).await.expect("host end listed");
        assert_eq!(host.kind.as_deref(), Some("veth"), "{host:?}");
        assert_eq!(host.master, Some(bridge), "{host:?}");
        assert!(host.up, "{host:?}");
        assert_eq!(host.mtu, Some(MTU), "{host:?}");

        let eth0 = c.ip(&["-o", "link", "show", "dev", "eth0"]);
        let [a, b, x, y, z, w] = s.mac;
        let mac = format!("link/ether {a:02x}:{b:02x}:{x:02x}:{y:02x}:{z:02x}:{w:02x} ");
        assert!(eth0.contains(&mac), "want {mac}: {eth0}");
        assert!(eth0.contains(&format!(" mtu {MTU} ")), "{eth0}");
        assert!(eth0.contains(",UP"), "{eth0}");
        let addrs = c.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&format!("inet {}/24 ", s.addr)), "{addrs}");
        let route = c.ip(&["-4", "route", "show", "default"]);
        assert!(
            route.starts_with("default via 198.18.1.1 dev eth0"),
            "default route: {route:?}"
        );
    }
    assert_eq!(s1.mac, [0x02, 0x42, 198, 18, 1, 2]);

    c1.ping(C2);
    c2.ping(C1);
    node.ping(C1);
    node.ping(C2);

    // Attaching again changes nothing and keeps the same links.
    let before = nl.links().await.expect("links");
    nl.add_veth(&s1).await.expect("attach c1 again");
    assert_eq!(nl.links().await.expect("links"), before);
    c1.ping(C2);

    // The same host name for another container is someone else's veth.
    let taken = VethSpec {
        netns: c2.path().into(),
        ..s1.clone()
    };
    let err = nl
        .add_veth(&taken)
        .await
        .expect_err("a host name already attached elsewhere");
    assert!(
        matches!(&err, LinkError::Conflict { name, .. } if name == "vethsnl1"),
        "{err:?}"
    );
    assert_eq!(nl.links().await.expect("links"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_link_removes_both_ends() {
    let t = Attached::new("vethsnl3").await;
    let (c, nl, s) = (&t.c, &t.nl, &t.s);

    assert!(nl.delete_link(&s.host_ifname).await.expect("delete"));
    assert_eq!(nl.link_index(&s.host_ifname).await.expect("index"), None);
    let inside = c.netlink().await;
    assert_eq!(
        inside.link_index("eth0").await.expect("index inside"),
        None,
        "the container end survived"
    );
    assert!(!nl.delete_link(&s.host_ifname).await.expect("delete again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_namespace_removes_its_veth() {
    let t = Attached::new("vethsnl4").await;
    let (c, nl, s) = (&t.c, &t.nl, &t.s);
    assert!(
        nl.link_index(&s.host_ifname)
            .await
            .expect("index")
            .is_some()
    );

    // Nothing of ours holds the namespace (add_veth closed its socket), so
    // it dies with its mount; the kernel tears it down asynchronously.
    netns::remove(c.path()).expect("remove the container namespace");
    let started = Instant::now();
    while nl
        .link_index(&s.host_ifname)
        .await
        .expect("index")
        .is_some()
    {
        assert!(
            started.elapsed() < PATIENCE,
            "{} still in the node {PATIENCE:?} after its peer's namespace was removed",
            s.host_ifname
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("veth gone {:?} after the namespace", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_veth_leaves_nothing() {
    setup();
    let node = Ns::create("node");
    let c = Ns::create("c");
    let nl = node.netlink().await;
    node_with_bridge(&nl).await;
    let node_links = names(&nl).await;
    let inside = c.netlink().await;

    // Before anything is made: the bridge does not exist.
    let no_bridge = VethSpec {
        bridge: "snl-nobr".into(),
        ..spec(&c, "vethsnl5", C1)
    };
    let err = nl.add_veth(&no_bridge).await.expect_err("missing bridge");
    assert!(
        matches!(&err, LinkError::NoSuchBridge { name, .. } if name == "snl-nobr"),
        "{err:?}"
    );
    assert_eq!(names(&nl).await, node_links);
    assert_eq!(names(&inside).await, ["lo"]);

    // Half-way: the pair exists, then the default route is refused (its
    // gateway is outside the container's subnet). The pair must go.
    let bad_gateway = VethSpec {
        gateway: Some(Ipv4Addr::new(198, 19, 0, 1)),
        ..spec(&c, "vethsnl5", C1)
    };
    let err = nl
        .add_veth(&bad_gateway)
        .await
        .expect_err("unreachable gateway");
    assert!(
        matches!(&err, LinkError::Request { call, .. } if call.contains("ip route")),
        "{err:?}"
    );
    assert_eq!(names(&nl).await, node_links, "veth left in the node");
    assert_eq!(names(&inside).await, ["lo"], "veth left in the container");

    // The name inside is taken: the kernel refuses the pair as a whole, and
    // the link already there is untouched.
    c.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "snl-x",
    ]);
    let before = names(&inside).await;
    let err = nl
        .add_veth(&spec(&c, "vethsnl5", C1))
        .await
        .expect_err("eth0 taken");
    assert!(
        matches!(&err, LinkError::Request { call, .. } if call.starts_with("ip link add")),
        "{err:?}"
    );
    assert_eq!(names(&nl).await, node_links, "veth left in the node");
    assert_eq!(names(&inside).await, before);
    let eth0 = c.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        eth0.trim().is_empty(),
        "the existing eth0 was configured: {eth0}"
    );
}
