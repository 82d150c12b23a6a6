//! The XDP program on each node's underlay interface counts what arrives:
//! pinging a node makes its ICMP counters grow.

use swarmnet_tests::{Cluster, retry};

const PACKETS: &str = "swarmnet_underlay_rx_packets_total";
const BYTES: &str = "swarmnet_underlay_rx_bytes_total";
const PINGS: u16 = 5;

#[test]
fn underlay_icmp_counters_grow_when_pinged() {
    let c = Cluster::new(3);
    let n = c.nodes().len();
    for (i, target) in c.nodes().iter().enumerate() {
        let from = &c.nodes()[(i + 1) % n];
        let before = target.metrics();
        let packets0 = before.counter(PACKETS, &[("proto", "icmp")]);
        let bytes0 = before.counter(BYTES, &[("proto", "icmp")]);

        let replies = from.ping(target.addr(), PINGS);
        assert_eq!(
            replies,
            PINGS,
            "{} -> {}: the XDP program must pass ICMP",
            from.hostname(),
            target.hostname()
        );

        retry(
            &format!(
                "{PACKETS}{{proto=\"icmp\"}} on {} to grow by {PINGS}",
                target.hostname()
            ),
            || {
                let m = target.try_metrics()?;
                let packets = m.get(PACKETS, &[("proto", "icmp")]);
                let bytes = m.counter(BYTES, &[("proto", "icmp")]);
                match packets {
                    Some(p) if p >= packets0 + f64::from(PINGS) && bytes > bytes0 => Ok(()),
                    _ => Err(format!(
                        "before: {packets0} packets, {bytes0} bytes; now:\n{}\n{}",
                        m.lines_of(PACKETS),
                        m.lines_of(BYTES)
                    )),
                }
            },
        );
    }
}
