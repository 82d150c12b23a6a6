//! A swarm formed and inspected with the docker CLI only.

use swarmnet_tests::{Cluster, util::describe};

/// `docker info` lines, trimmed.
fn info_lines(out: &str) -> Vec<String> {
    out.lines().map(|l| l.trim().to_owned()).collect()
}

#[test]
fn three_nodes_form_and_list_with_the_docker_cli() {
    let c = Cluster::new(3);
    c.form_swarm();
    let m = c.manager();

    // The table as an operator reads it.
    let table = m.docker_ok(&["node", "ls"]);
    let mut lines = table.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().expect("node ls prints a header");
    assert!(
        header.contains("HOSTNAME")
            && header.contains("STATUS")
            && header.contains("MANAGER STATUS"),
        "header: {header}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "three nodes:\n{table}");
    for row in &rows {
        assert!(row.contains(&"Ready"), "every node Ready:\n{table}");
    }
    let starred: Vec<&Vec<&str>> = rows.iter().filter(|r| r.get(1) == Some(&"*")).collect();
    assert_eq!(starred.len(), 1, "exactly one row marked `*`:\n{table}");
    assert_eq!(
        starred[0].get(2),
        Some(&"node1"),
        "the local node is starred:\n{table}"
    );
    assert!(starred[0].contains(&"Leader"), "node1 is Leader:\n{table}");
    let mut hostnames: Vec<&str> = rows
        .iter()
        .map(|r| if r.get(1) == Some(&"*") { r[2] } else { r[1] })
        .collect();
    hostnames.sort_unstable();
    assert_eq!(hostnames, ["node1", "node2", "node3"], "\n{table}");

    // The same through --format, field by field.
    let rows = m.node_ls();
    for r in &rows {
        assert_eq!(r.status, "Ready", "{r:?}");
        assert_eq!(r.availability, "Active", "{r:?}");
        assert_eq!(r.is_self, r.hostname == "node1", "{r:?}");
        let want = if r.hostname == "node1" { "Leader" } else { "" };
        assert_eq!(r.manager_status, want, "{r:?}");
        assert!(!r.id.is_empty(), "{r:?}");
    }

    let info = info_lines(&m.docker_ok(&["info"]));
    for want in [
        "Swarm: active",
        "Is Manager: true",
        "Nodes: 3",
        "Managers: 1",
    ] {
        assert!(
            info.iter().any(|l| l == want),
            "`docker info` on the manager lacks {want:?}:\n{}",
            info.join("\n")
        );
    }

    // A worker is in the swarm but cannot read cluster state.
    let w = c.node(2);
    let info = info_lines(&w.docker_ok(&["info"]));
    for want in ["Swarm: active", "Is Manager: false"] {
        assert!(
            info.iter().any(|l| l == want),
            "`docker info` on a worker lacks {want:?}:\n{}",
            info.join("\n")
        );
    }
    let out = w.docker(&["node", "ls"]);
    assert!(
        !out.status.success(),
        "node ls on a worker must fail: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("This node is not a swarm manager"),
        "stderr: {stderr}"
    );
}
