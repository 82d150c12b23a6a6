//! `docker node update` changes the node's spec, and the change survives a
//! kill -9 and restart of the manager's agent.

use swarmnet_tests::{Cluster, Node, retry};

fn check_spec(m: &Node, node: &str) -> Result<(), String> {
    let out = m.docker(&["node", "inspect", node]);
    if !out.status.success() {
        return Err(format!(
            "node inspect {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("node inspect JSON: {e}"))?;
    let spec = &v[0]["Spec"];
    if spec["Availability"] != "drain" {
        return Err(format!("Spec.Availability: {spec}"));
    }
    if spec["Labels"]["k"] != "v" || spec["Labels"]["zone"] != "a" {
        return Err(format!("Spec.Labels: {spec}"));
    }
    if spec["Role"] != "worker" {
        return Err(format!("Spec.Role: {spec}"));
    }
    Ok(())
}

#[test]
fn availability_and_labels_persist_across_manager_restart() {
    let c = Cluster::new(2);
    c.form_swarm();
    let m = c.manager();
    let before = m.inspect_node("node2");
    let version_before = before["Version"]["Index"].as_u64().expect("Version.Index");

    m.docker_ok(&["node", "update", "--availability", "drain", "node2"]);
    m.docker_ok(&[
        "node",
        "update",
        "--label-add",
        "k=v",
        "--label-add",
        "zone=a",
        "node2",
    ]);
    check_spec(m, "node2").unwrap_or_else(|e| panic!("after update: {e}"));
    let after = m.inspect_node("node2");
    let version_after = after["Version"]["Index"].as_u64().expect("Version.Index");
    assert!(
        version_after > version_before,
        "updates bump the version: {version_before} -> {version_after}"
    );
    let rows = m.node_ls();
    let r = rows
        .iter()
        .find(|r| r.hostname == "node2")
        .expect("node2 row");
    assert_eq!(r.availability, "Drain", "{rows:?}");
    // The manager itself is untouched.
    let node1 = m.inspect_node("node1");
    assert_eq!(node1["Spec"]["Availability"], "active", "{node1}");

    m.kill9();
    m.restart();
    retry("node2's spec after the manager restarted", || {
        check_spec(m, "node2")
    });
    let again = m.inspect_node("node2");
    assert_eq!(again["ID"], after["ID"]);
    // Status changes may bump the version (they do in Docker); it never
    // goes back.
    assert!(
        again["Version"]["Index"].as_u64() >= Some(version_after),
        "version went back from {version_after}: {again}"
    );
    let rows = c.wait_ready(2);
    let r = rows
        .iter()
        .find(|r| r.hostname == "node2")
        .expect("node2 row");
    assert_eq!(r.availability, "Drain", "{rows:?}");
    let r = rows
        .iter()
        .find(|r| r.hostname == "node1")
        .expect("node1 row");
    assert_eq!(r.manager_status, "Leader", "{rows:?}");
}
