//! Forged, garbled and replayed datagrams on the gossip port are dropped,
//! counted by reason, and do not disturb the cluster.

use std::{net::UdpSocket, thread, time::Duration};

use swarmnet_tests::{Cluster, Node, patience, retry, util::random_bytes};

const DROPPED: &str = "swarmnet_gossip_dropped_total";

const REASONS: [&str; 3] = ["auth", "replay", "malformed"];

/// The manager's drop counters, by reason, in [`REASONS`] order.
fn dropped(node: &Node) -> Result<[f64; 3], String> {
    let m = node.try_metrics()?;
    Ok(REASONS.map(|r| m.counter(DROPPED, &[("reason", r)])))
}

/// Waits until the drop counter for `reason` has grown by at least `by`
/// since `before`, and checks the other reasons did not move: each kind of
/// bad datagram is counted under its own reason.
#[track_caller]
fn wait_dropped(
    node: &Node,
    before: [f64; 3],
    reason: &str,
    by: f64,
    after_sending: &str,
) -> [f64; 3] {
    let i = REASONS
        .iter()
        .position(|r| *r == reason)
        .expect("a known reason");
    let now = retry(
        &format!("{DROPPED}{{reason=\"{reason}\"}} to grow by {by} after {after_sending}"),
        || {
            let now = dropped(node)?;
            if now[i] >= before[i] + by {
                Ok(now)
            } else {
                Err(format!("before {before:?}, now {now:?} ({REASONS:?})"))
            }
        },
    );
    for (j, other) in REASONS.iter().enumerate() {
        if j != i {
            assert_eq!(
                now[j], before[j],
                "{after_sending} moved {DROPPED}{{reason=\"{other}\"}}: before {before:?}, now {now:?} ({REASONS:?})"
            );
        }
    }
    now
}

fn send_all(sock: &UdpSocket, to: std::net::SocketAddrV4, datagrams: &[Vec<u8>]) {
    for d in datagrams {
        sock.send_to(d, to)
            .unwrap_or_else(|e| panic!("send {} bytes to {to}: {e}", d.len()));
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forged_and_replayed_gossip_is_dropped() {
    let c = Cluster::new(3);
    c.form_swarm();
    let m = c.manager();
    let target = m.gossip_addr();
    let node2 = c.node(2).addr();

    // A real datagram from node2 to the manager's gossip port, taken off
    // the hub's bridge while it passes.
    let captured = c
        .capture_udp(patience(), move |d| {
            d.dst == target && *d.src.ip() == node2 && d.payload.len() >= 32
        })
        .unwrap_or_else(|e| panic!("capture a gossip datagram node2 -> {target}: {e}"));
    let real = captured.payload;

    // Replay: the same bytes again, from node2's address, at once (well
    // inside any freshness window), three times.
    let before = dropped(m).unwrap_or_else(|e| panic!("{e}"));
    let from_node2 = c.node(2).udp_socket();
    send_all(
        &from_node2,
        target,
        &[real.clone(), real.clone(), real.clone()],
    );
    let before = wait_dropped(
        m,
        before,
        "replay",
        3.0,
        "replaying a captured datagram 3 times",
    );

    // Malformed: too short to hold any envelope, or not framed at all.
    // (An empty datagram may be ignored rather than counted.)
    let attacker = c.node(3).udp_socket();
    send_all(
        &attacker,
        target,
        &[
            Vec::new(),
            vec![0],
            b"SN".to_vec(),
            random_bytes(7),
            [b"XX".as_slice(), &random_bytes(real.len() - 2)].concat(),
        ],
    );
    let before = wait_dropped(m, before, "malformed", 4.0, "tiny and unframed datagrams");

    // Auth: the framing of a real datagram with contents the cluster key
    // did not seal: the captured one with a flipped byte in its tag or in
    // its middle, and its header followed by random bytes.
    let mut flipped = real.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    let mut middle = real.clone();
    let mid = middle.len() / 2;
    middle[mid] ^= 0x01;
    let header = &real[..3];
    let forged = [header, &random_bytes(real.len() - header.len())].concat();
    send_all(&attacker, target, &[flipped, middle, forged]);
    let before = wait_dropped(
        m,
        before,
        "auth",
        3.0,
        "datagrams not sealed with the cluster key",
    );

    // Random bytes of a plausible length: dropped, for whichever reason.
    send_all(
        &attacker,
        target,
        &[random_bytes(real.len()), random_bytes(200)],
    );
    retry("random datagrams to be dropped", || {
        let now = dropped(m)?;
        let (sum_now, sum_before): (f64, f64) = (now.iter().sum(), before.iter().sum());
        if sum_now >= sum_before + 2.0 {
            Ok(())
        } else {
            Err(format!("before {before:?}, now {now:?}"))
        }
    });

    // The cluster did not notice: all three still Ready, a few probe
    // periods later too.
    thread::sleep(Duration::from_secs(3));
    let rows = c.wait_ready(3);
    assert!(rows.iter().all(|r| r.status == "Ready"), "{rows:?}");
    for n in c.nodes() {
        assert!(n.is_running(), "{} agent died", n.hostname());
    }
}
