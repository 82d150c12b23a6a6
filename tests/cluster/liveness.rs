//! A worker's agent killed with SIGKILL shows Down quickly, and comes back
//! as the same node when restarted.

use std::{
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, NodeRow, retry};

/// How fast the manager must mark a killed node Down (the requirement,
/// not a patience: it does not scale with SWARMNET_TEST_PATIENCE_SECS).
const DOWN_WITHIN: Duration = Duration::from_secs(5);

fn row<'a>(rows: &'a [NodeRow], hostname: &str) -> Option<&'a NodeRow> {
    rows.iter().find(|r| r.hostname == hostname)
}

#[test]
fn killed_worker_goes_down_and_comes_back_as_itself() {
    let c = Cluster::new(3);
    c.form_swarm();
    let m = c.manager();
    let w = c.node(3);
    let rows = m.node_ls();
    let id = row(&rows, "node3").expect("node3 listed").id.clone();
    assert_eq!(w.node_id(), id, "node3's own ID matches the manager's list");

    w.kill9();
    let killed = Instant::now();
    let mut last;
    loop {
        match m.try_node_ls() {
            Ok(rows) => match row(&rows, "node3") {
                Some(r) if r.status == "Down" => break,
                Some(r) => last = format!("status {:?}", r.status),
                None => last = format!("node3 missing from {rows:?}"),
            },
            Err(e) => last = e,
        }
        assert!(
            killed.elapsed() <= DOWN_WITHIN,
            "node3 not Down {DOWN_WITHIN:?} after kill -9 (last: {last})"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The others are unaffected.
    let rows = m.node_ls();
    for h in ["node1", "node2"] {
        assert_eq!(
            row(&rows, h).map(|r| r.status.as_str()),
            Some("Ready"),
            "{rows:?}"
        );
    }

    w.restart();
    let rows = retry("node3 Ready again after restart", || {
        let rows = m.try_node_ls()?;
        match row(&rows, "node3") {
            Some(r) if r.status == "Ready" => Ok(rows),
            other => Err(format!("node3: {other:?}; all: {rows:?}")),
        }
    });
    assert_eq!(
        rows.len(),
        3,
        "no duplicate entry for the restarted node: {rows:?}"
    );
    assert_eq!(
        row(&rows, "node3").map(|r| r.id.as_str()),
        Some(id.as_str()),
        "same node ID"
    );
    assert!(rows.iter().all(|r| r.status == "Ready"), "{rows:?}");
    assert_eq!(w.swarm_state(), "active");
    assert_eq!(w.node_id(), id, "the restarted agent resumed its identity");
}
