//! Prometheus metrics, served at `/metrics` on `--metrics-addr` as dockerd
//! does: gossip traffic and drops, API requests, and the eBPF underlay
//! counters (read from the kernel map at every scrape).

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use swarmnet_dataplane::UnderlayCounters;

pub struct Metrics {
    registry: Registry,
    pub gossip_received: Counter,
    pub gossip_sent: Counter,
    pub gossip_members: Gauge,
    gossip_dropped: Family<Vec<(String, String)>, Counter>,
    api_requests: Family<Vec<(String, String)>, Counter>,
    pub underlay: Arc<Mutex<Option<UnderlayCounters>>>,
    /// The store of this node while it is a manager.
    pub raft: Arc<Mutex<Option<Arc<crate::store::Store>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("swarmnet");
        let gossip_received = Counter::default();
        let gossip_sent = Counter::default();
        let gossip_members = Gauge::default();
        let gossip_dropped = Family::<Vec<(String, String)>, Counter>::default();
        let api_requests = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "gossip_received_datagrams",
            "Gossip datagrams received on the gossip port",
            gossip_received.clone(),
        );
        registry.register(
            "gossip_sent_datagrams",
            "Gossip datagrams sent",
            gossip_sent.clone(),
        );
        registry.register(
            "gossip_members_alive",
            "Members the gossip layer sees alive",
            gossip_members.clone(),
        );
        registry.register(
            "gossip_dropped",
            "Gossip datagrams dropped, by reason (malformed, auth, replay)",
            gossip_dropped.clone(),
        );
        registry.register(
            "api_requests",
            "Docker Engine API requests, by method and status code",
            api_requests.clone(),
        );
        // Make the drop reasons visible at zero from the start.
        for reason in ["malformed", "auth", "replay"] {
            gossip_dropped
                .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
                .inc_by(0);
        }
        let underlay = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(UnderlayCollector {
            counters: underlay.clone(),
        }));
        let raft = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(RaftCollector {
            store: raft.clone(),
        }));
        Arc::new(Self {
            registry,
            gossip_received,
            gossip_sent,
            gossip_members,
            gossip_dropped,
            api_requests,
            underlay,
            raft,
        })
    }

    pub fn gossip_drop(&self, reason: &str) {
        self.gossip_dropped
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    pub fn api_request(&self, method: &str, code: u16) {
        self.api_requests
            .get_or_create(&vec![
                ("method".to_owned(), method.to_owned()),
                ("code".to_owned(), code.to_string()),
            ])
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Reads the XDP program's per-CPU counters at scrape time.
#[derive(Debug)]
struct UnderlayCollector {
    counters: Arc<Mutex<Option<UnderlayCounters>>>,
}

impl Collector for UnderlayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let Some(counters) = guard.as_ref() else {
            return Ok(());
        };
        let rows = match counters.read() {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "read underlay counters");
                return Ok(());
            }
        };
        let iface = counters.iface().to_owned();
        for (name, help, pick) in [
            (
                "underlay_rx_packets",
                "Packets received on the underlay interface, by protocol (XDP)",
                0usize,
            ),
            (
                "underlay_rx_bytes",
                "Bytes received on the underlay interface, by protocol (XDP)",
                1usize,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in &rows {
                let labels = [("iface", iface.clone()), ("proto", row.proto.label())];
                let value = if pick == 0 { row.packets } else { row.bytes };
                let metric = ConstCounter::new(value);
                metric.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// This manager's Raft state, read at scrape time.
struct RaftCollector {
    store: Arc<Mutex<Option<Arc<crate::store::Store>>>>,
}

impl std::fmt::Debug for RaftCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCollector").finish_non_exhaustive()
    }
}

impl Collector for RaftCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(store) = store else {
            return Ok(());
        };
        let m = store.raft_metrics();
        let leader = store.is_leader();
        let gauges: [(&str, &str, i64); 6] = [
            ("raft_term", "Current Raft term", m.current_term as i64),
            (
                "raft_last_log_index",
                "Index of the last entry in this manager's Raft log",
                m.last_log_index.map_or(-1, |i| i as i64),
            ),
            (
                "raft_last_applied_index",
                "Index of the last Raft entry applied to the state",
                m.last_applied.map_or(-1, |l| l.index as i64),
            ),
            (
                "raft_snapshot_index",
                "Last Raft index covered by this manager's snapshot",
                m.snapshot.map_or(-1, |l| l.index as i64),
            ),
            (
                "raft_purged_index",
                "Last Raft index purged from this manager's log",
                m.purged.map_or(-1, |l| l.index as i64),
            ),
            (
                "raft_leader",
                "1 while this manager leads",
                i64::from(leader),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(metric)?;
        }
        Ok(())
    }
}
