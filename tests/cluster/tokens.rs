//! Joins with bad tokens are refused with a clear error and leave no trace
//! in the manager's node list.

use std::time::{Duration, Instant};

use swarmnet_tests::{
    Cluster,
    util::{describe, random_string},
};

const BASE36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The token with its secret (last part) replaced by another of the same
/// length and alphabet: right shape, wrong secret.
fn with_wrong_secret(token: &str) -> String {
    let parts: Vec<&str> = token.split('-').collect();
    assert_eq!(
        parts.len(),
        4,
        "a join token is SWMTKN-1-<ca digest>-<secret>, got {token}"
    );
    let mut secret = random_string(parts[3].len(), BASE36);
    while secret == parts[3] {
        secret = random_string(parts[3].len(), BASE36);
    }
    format!("{}-{}-{}-{secret}", parts[0], parts[1], parts[2])
}

#[test]
fn joins_with_bad_tokens_are_refused() {
    let a = Cluster::new(2);
    let tokens = a.init_swarm();
    let other = Cluster::new(1);
    let other_tokens = other.init_swarm();
    assert_ne!(tokens.worker, other_tokens.worker);

    let m = a.manager();
    let manager_id = m.node_id();
    let joiner = a.node(2);
    let cases = [
        (
            "wrong secret",
            with_wrong_secret(&tokens.worker),
            &["join token"][..],
        ),
        (
            "malformed",
            "SWMTKN-1-garbage".to_owned(),
            &["invalid join token"][..],
        ),
        (
            "another cluster's worker token",
            other_tokens.worker.clone(),
            &["fingerprint", "join token", "certificate", "root ca"][..],
        ),
    ];
    for (what, token, wants) in &cases {
        let out = joiner.docker(&["swarm", "join", "--token", token, &a.manager_addr()]);
        assert!(
            !out.status.success(),
            "join with {what} must fail: {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            stderr.contains("error response from daemon"),
            "join with {what}: the agent's error, not the CLI's: {stderr}"
        );
        assert!(
            wants.iter().any(|w| stderr.contains(w)),
            "join with {what}: stderr should mention one of {wants:?}: {stderr}"
        );
        if let Some(secret) = token.split('-').nth(3) {
            assert!(
                !stderr.contains(secret),
                "join with {what}: the error must not echo the token's secret: {stderr}"
            );
        }
        assert_eq!(
            joiner.swarm_state(),
            "inactive",
            "after a refused join ({what}) the node is not in a swarm"
        );
        // The manager never lists the refused node, now or a little later.
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(2) {
            let rows = m.node_ls();
            assert_eq!(rows.len(), 1, "after join with {what}: {rows:?}");
            assert_eq!(rows[0].id, manager_id, "{rows:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // The other cluster was not touched either.
    assert_eq!(other.manager().node_ls().len(), 1);

    // The node itself was fine all along: the right token works.
    a.join(2, &tokens.worker);
    let rows = a.wait_ready(2);
    assert!(rows.iter().any(|r| r.hostname == "node2"), "{rows:?}");

    // No agent ever wrote a token's secret to its log (debug level included
    // would be stricter still; the harness runs them at info).
    let secrets: Vec<String> = [&tokens.worker, &tokens.manager, &other_tokens.worker]
        .into_iter()
        .chain(cases.iter().map(|(_, t, _)| t))
        .filter_map(|t| t.split('-').nth(3).map(str::to_owned))
        .collect();
    for node in a.nodes().iter().chain(other.nodes()) {
        let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{}'s log contains a join token secret",
                node.hostname()
            );
        }
    }
}
