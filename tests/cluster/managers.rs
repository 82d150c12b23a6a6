//! Managers as a Raft group, driven with the docker CLI (and the raw API
//! where a race needs it): formation, leader failover, quorum loss, a
//! partitioned leader, a randomized history of writes under kill -9,
//! restarts and link cuts, racing versioned updates, what Docker refuses
//! (removing a manager), promote/demote, join-token rotation and a
//! follower catching up from a long log.
//!
//! Each test forms its own swarm: nodes 1-3 are managers (node1 inits,
//! nodes 2 and 3 join with the manager token), the next ones workers, and
//! any after those stay out of the swarm. Writes are `docker node update
//! --label-add KEY=1` with a key used once per test, so the labels a node
//! ends up with are exactly the writes that took effect. Timings are
//! printed as `managers::<test>: ...` for CI logs.
//!
//! Environment, besides the harness's:
//! - `SWARMNET_TEST_PARTITION_SECS`: how long `partition` keeps the leader
//!   cut off (default 20).
//! - `SWARMNET_TEST_HISTORY_SECS`: how long `history` writes under chaos
//!   (default 60).
//! - `SWARMNET_TEST_SEED`: the seed of `history`'s chaos schedule (default:
//!   from the clock; printed either way).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use swarmnet_tests::{
    Cluster, HttpResponse, Node, NodeRow, SwarmTokens, patience, retry, util::describe,
};

/// The managers of every swarm these tests form.
const MANAGERS: [usize; 3] = [1, 2, 3];
/// Docker's error for a write without quorum.
const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";
/// swarmkit's error for an update with a stale version.
const OUT_OF_SEQUENCE: &str = "update out of sequence";
/// How soon after kill -9 of the leader a write through another manager
/// must succeed (a requirement: it does not scale with the patience).
const FAILOVER_WITHIN: Duration = Duration::from_secs(3);
/// How soon a write without quorum must fail (a requirement).
const NO_QUORUM_FAILS_WITHIN: Duration = Duration::from_secs(10);

const ENV_PARTITION: &str = "SWARMNET_TEST_PARTITION_SECS";
const ENV_HISTORY: &str = "SWARMNET_TEST_HISTORY_SECS";
const ENV_SEED: &str = "SWARMNET_TEST_SEED";

// ----- helpers -----

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn env_secs(name: &str, default: u64) -> Duration {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 => Duration::from_secs_f64(s),
            _ => panic!("{name}={v:?} is not a positive number of seconds"),
        },
        Err(_) => Duration::from_secs(default),
    }
}

/// `nodeI` -> `I`.
fn index_of(hostname: &str) -> Option<usize> {
    hostname.strip_prefix("node")?.parse().ok()
}

fn others(of: usize) -> Vec<usize> {
    MANAGERS.into_iter().filter(|&m| m != of).collect()
}

fn row<'a>(rows: &'a [NodeRow], hostname: &str) -> Option<&'a NodeRow> {
    rows.iter().find(|r| r.hostname == hostname)
}

/// A new cluster of `3 + workers + spare` nodes with a swarm formed by the
/// docker CLI: node1 inits, nodes 2 and 3 join as managers, the next
/// `workers` nodes as workers; the `spare` nodes after them stay out.
/// Returns once every manager agrees on the list (all Ready, one Leader,
/// two Reachable).
#[track_caller]
fn three_managers(test: &str, workers: usize, spare: usize) -> (Cluster, SwarmTokens) {
    let start = Instant::now();
    let c = Cluster::new(3 + workers + spare);
    let agents_up = start.elapsed();
    let tokens = c.init_swarm();
    let mut joins = String::new();
    for i in 2..=3 {
        let t = Instant::now();
        c.join(i, &tokens.manager);
        let _ = write!(joins, " node{i} (manager) {}", secs(t.elapsed()));
    }
    for i in 4..4 + workers {
        let t = Instant::now();
        c.join(i, &tokens.worker);
        let _ = write!(joins, " node{i} (worker) {}", secs(t.elapsed()));
    }
    let t = Instant::now();
    let leader = wait_converged(&c, &MANAGERS, 3 + workers, 3);
    eprintln!(
        "managers::{test}: {} agents up in {}; joins:{joins}; converged {} later (leader node{leader}); formed in {} total",
        3 + workers + spare,
        secs(agents_up),
        secs(t.elapsed()),
        secs(start.elapsed()),
    );
    (c, tokens)
}

/// Checks one manager's `docker node ls`: `n` rows, all Ready, exactly one
/// Leader and `managers - 1` Reachable; returns the leader's index.
fn check_rows(rows: &[NodeRow], n: usize, managers: usize) -> Result<usize, String> {
    if rows.len() != n {
        return Err(format!("{} rows, want {n}: {rows:?}", rows.len()));
    }
    if let Some(r) = rows.iter().find(|r| r.status != "Ready") {
        return Err(format!("{} is {}: {rows:?}", r.hostname, r.status));
    }
    let leaders: Vec<&NodeRow> = rows
        .iter()
        .filter(|r| r.manager_status == "Leader")
        .collect();
    let reachable = rows
        .iter()
        .filter(|r| r.manager_status == "Reachable")
        .count();
    match leaders.as_slice() {
        [l] if reachable + 1 == managers => {
            index_of(&l.hostname).ok_or_else(|| format!("leader hostname {:?}", l.hostname))
        }
        _ => Err(format!(
            "want one Leader and {} Reachable: {rows:?}",
            managers - 1
        )),
    }
}

/// Every node in `via` lists `n` nodes all Ready with one Leader (the
/// same for all) and `managers - 1` Reachable; the leader's index.
fn converged(c: &Cluster, via: &[usize], n: usize, managers: usize) -> Result<usize, String> {
    let mut leader: Option<(usize, usize)> = None;
    for &m in via {
        let rows = c
            .node(m)
            .try_node_ls()
            .map_err(|e| format!("node{m}: {e}"))?;
        let l = check_rows(&rows, n, managers).map_err(|e| format!("node{m}: {e}"))?;
        match leader {
            None => leader = Some((m, l)),
            Some((_, prev)) if prev == l => {}
            Some((first, prev)) => {
                return Err(format!(
                    "node{first} says the leader is node{prev}, node{m} says node{l}"
                ));
            }
        }
    }
    leader
        .map(|(_, l)| l)
        .ok_or_else(|| "no manager to ask".to_owned())
}

/// [`converged`], waited for within the patience.
#[track_caller]
fn wait_converged(c: &Cluster, via: &[usize], n: usize, managers: usize) -> usize {
    retry(
        &format!(
            "nodes {via:?} to agree: {n} nodes Ready, one Leader, {} Reachable",
            managers - 1
        ),
        || converged(c, via, n, managers),
    )
}

/// The one Leader in `node`'s `docker node ls`.
fn leader_seen_by(node: &Node) -> Result<usize, String> {
    let rows = node.try_node_ls()?;
    let leaders: Vec<&NodeRow> = rows
        .iter()
        .filter(|r| r.manager_status == "Leader")
        .collect();
    match leaders.as_slice() {
        [l] => index_of(&l.hostname).ok_or_else(|| format!("leader hostname {:?}", l.hostname)),
        _ => Err(format!(
            "{}: {} Leader rows: {rows:?}",
            node.hostname(),
            leaders.len()
        )),
    }
}

/// `docker node update --label-add KEY=1 TARGET` through `via`; the CLI's
/// output on failure.
fn add_label(via: &Node, target: &str, key: &str) -> Result<(), String> {
    let out = via.docker(&["node", "update", "--label-add", &format!("{key}=1"), target]);
    if out.status.success() {
        Ok(())
    } else {
        Err(describe(&out))
    }
}

/// [`add_label`] until it is acknowledged (always the same key, so an
/// attempt that failed yet took effect later changes nothing); returns how
/// long it took.
#[track_caller]
fn add_label_acked(via: &Node, target: &str, key: &str) -> Duration {
    let start = Instant::now();
    retry(
        &format!("label {key} on {target} through {}", via.hostname()),
        || add_label(via, target, key),
    );
    start.elapsed()
}

/// The label keys of `target` in `docker node inspect` through `via`.
fn labels(via: &Node, target: &str) -> Result<BTreeSet<String>, String> {
    let out = via.docker(&["node", "inspect", target]);
    if !out.status.success() {
        return Err(format!(
            "{}: node inspect {target}: {}",
            via.hostname(),
            describe(&out)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{}: node inspect JSON: {e}", via.hostname()))?;
    match &v[0]["Spec"]["Labels"] {
        serde_json::Value::Null => Ok(BTreeSet::new()),
        serde_json::Value::Object(m) => Ok(m.keys().cloned().collect()),
        other => Err(format!("{}: Spec.Labels is {other}", via.hostname())),
    }
}

fn diff(have: &BTreeSet<String>, want: &BTreeSet<String>) -> String {
    let missing: Vec<&String> = want.difference(have).collect();
    let extra: Vec<&String> = have.difference(want).collect();
    format!("missing {missing:?}, unexpected {extra:?}")
}

/// Waits until every node in `via` shows exactly `want` as `target`'s
/// labels; returns how long that took.
#[track_caller]
fn wait_labels_exactly(
    c: &Cluster,
    via: &[usize],
    target: &str,
    want: &BTreeSet<String>,
) -> Duration {
    let start = Instant::now();
    retry(
        &format!("nodes {via:?} to show exactly {want:?} on {target}"),
        || {
            for &m in via {
                let have = labels(c.node(m), target)?;
                if have != *want {
                    return Err(format!("node{m}: {}", diff(&have, want)));
                }
            }
            Ok(())
        },
    );
    start.elapsed()
}

/// Waits until every node in `via` shows the same labels on `target`, a
/// superset of `acked`; returns them.
#[track_caller]
fn wait_labels_agree(
    c: &Cluster,
    via: &[usize],
    target: &str,
    acked: &BTreeSet<String>,
) -> BTreeSet<String> {
    retry(
        &format!(
            "nodes {via:?} to agree on {target}'s labels, with all {} acknowledged ones",
            acked.len()
        ),
        || {
            let mut first: Option<(usize, BTreeSet<String>)> = None;
            for &m in via {
                let have = labels(c.node(m), target)?;
                let missing: Vec<&String> = acked.difference(&have).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "node{m} lacks {} acknowledged labels: {missing:?}",
                        missing.len()
                    ));
                }
                match &first {
                    None => first = Some((m, have)),
                    Some((f, theirs)) if *theirs != have => {
                        return Err(format!(
                            "node{m} and node{f} differ (node{m} vs node{f}): {}",
                            diff(&have, theirs)
                        ));
                    }
                    Some(_) => {}
                }
            }
            first
                .map(|(_, h)| h)
                .ok_or_else(|| "no manager to ask".to_owned())
        },
    )
}

/// Asserts acknowledged ⊆ present ⊆ attempted.
#[track_caller]
fn assert_history(
    what: &str,
    acked: &BTreeSet<String>,
    present: &BTreeSet<String>,
    attempted: &BTreeSet<String>,
) {
    let lost: Vec<&String> = acked.difference(present).collect();
    assert!(
        lost.is_empty(),
        "{what}: acknowledged writes lost: {lost:?}"
    );
    let invented: Vec<&String> = present.difference(attempted).collect();
    assert!(
        invented.is_empty(),
        "{what}: labels nobody wrote: {invented:?}"
    );
}

/// `docker info` of `node`, the text an operator reads.
fn info_text(node: &Node) -> String {
    node.docker_ok(&["info"])
}

fn is_manager_line(node: &Node) -> Option<String> {
    info_text(node)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Is Manager:"))
        .map(str::to_owned)
}

// ----- 1. formation -----

/// 3 managers + 2 workers: the leader lists one Leader, two Reachable and
/// two workers, all Ready; every manager says it is one; a worker knows
/// all three managers' addresses.
#[test]
fn formation() {
    const T: &str = "formation";
    let (c, _) = three_managers(T, 2, 0);
    let leader = converged(&c, &MANAGERS, 5, 3).unwrap_or_else(|e| panic!("{e}"));
    let rows = c.node(leader).node_ls();
    assert_eq!(rows.len(), 5, "{rows:?}");
    let mut hostnames: Vec<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    hostnames.sort_unstable();
    assert_eq!(
        hostnames,
        ["node1", "node2", "node3", "node4", "node5"],
        "{rows:?}"
    );
    for r in &rows {
        let i = index_of(&r.hostname).unwrap_or_else(|| panic!("hostname in {r:?}"));
        let want = match i {
            _ if i == leader => "Leader",
            1..=3 => "Reachable",
            _ => "",
        };
        assert_eq!(r.manager_status, want, "{}: {rows:?}", r.hostname);
        assert_eq!(r.status, "Ready", "{rows:?}");
        assert_eq!(r.availability, "Active", "{rows:?}");
        assert_eq!(r.is_self, i == leader, "the leader's own row: {rows:?}");
    }
    let leaders = rows.iter().filter(|r| r.manager_status == "Leader").count();
    assert_eq!(leaders, 1, "{rows:?}");

    for m in MANAGERS {
        let info = c.node(m).swarm_info();
        assert_eq!(info["ControlAvailable"], true, "node{m}: {info}");
        assert_eq!(info["Managers"], 3, "node{m}: {info}");
        assert_eq!(info["Nodes"], 5, "node{m}: {info}");
    }

    let want: BTreeSet<String> = MANAGERS
        .iter()
        .map(|&m| format!("{}:2377", c.node(m).addr()))
        .collect();
    for w in [4, 5] {
        let node = c.node(w);
        let info = node.swarm_info();
        assert_eq!(info["ControlAvailable"], false, "node{w}: {info}");
        assert_eq!(info["LocalNodeState"], "active", "node{w}: {info}");
        retry(
            &format!("node{w}'s docker info to list the 3 managers {want:?}"),
            || {
                let info = node.swarm_info();
                let remote = info["RemoteManagers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let addrs: BTreeSet<String> = remote
                    .iter()
                    .filter_map(|p| p["Addr"].as_str().map(str::to_owned))
                    .collect();
                if remote.len() == 3 && addrs == want {
                    Ok(())
                } else {
                    Err(format!("RemoteManagers: {}", info["RemoteManagers"]))
                }
            },
        );
        let text = info_text(node);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let at = lines
            .iter()
            .position(|l| *l == "Manager Addresses:")
            .unwrap_or_else(|| panic!("node{w}: no Manager Addresses in docker info:\n{text}"));
        let listed: BTreeSet<String> = lines[at + 1..]
            .iter()
            .take(3)
            .map(|l| (*l).to_owned())
            .collect();
        assert_eq!(listed, want, "node{w}'s docker info:\n{text}");
        assert!(
            lines.contains(&"Is Manager: false"),
            "node{w}'s docker info:\n{text}"
        );
    }
    eprintln!("managers::{T}: leader node{leader}; rows {rows:?}");
}

// ----- 2. leader failover -----

/// kill -9 of the leader: a write through another manager succeeds within
/// 3 s, a new Leader shows, the old one shows Unreachable; restarted, the
/// old leader is Reachable (not Leader) and has every label written
/// meanwhile.
#[test]
fn leader_failover() {
    let _alone = swarmnet_tests::exclusive();
    const T: &str = "leader_failover";
    let (c, _) = three_managers(T, 1, 0);
    let target = "node4";
    let old = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let rest = others(old);
    let via = c.node(rest[0]);
    let mut acked = BTreeSet::new();
    add_label_acked(c.node(old), target, "before-kill");
    acked.insert("before-kill".to_owned());

    c.node(old).kill9();
    let killed = Instant::now();
    let mut attempts = 0u32;
    let took = loop {
        attempts += 1;
        let t = Instant::now();
        match add_label(via, target, "after-kill") {
            Ok(()) => break killed.elapsed(),
            Err(e) => eprintln!(
                "managers::{T}: write {attempts} through {} failed after {} ({} since the kill): {e}",
                via.hostname(),
                secs(t.elapsed()),
                secs(killed.elapsed())
            ),
        }
        assert!(
            killed.elapsed() < patience(),
            "no write through {} succeeded within {:?} of killing leader node{old}\n{} log tail:\n{}",
            via.hostname(),
            patience(),
            via.hostname(),
            via.log_tail(40)
        );
        thread::sleep(Duration::from_millis(50));
    };
    acked.insert("after-kill".to_owned());
    eprintln!(
        "managers::{T}: killed leader node{old}; a write through {} succeeded {} after the kill ({attempts} attempt(s))",
        via.hostname(),
        secs(took)
    );
    assert!(
        took <= FAILOVER_WITHIN,
        "the first write through {} after kill -9 of leader node{old} succeeded only {} after it (want <= {})",
        via.hostname(),
        secs(took),
        secs(FAILOVER_WITHIN)
    );

    let new = retry("a new Leader in node ls", || {
        let l = leader_seen_by(via)?;
        if l == old {
            Err(format!("still shows node{old} as Leader"))
        } else {
            Ok(l)
        }
    });
    eprintln!(
        "managers::{T}: {} shows node{new} as Leader {} after the kill",
        via.hostname(),
        secs(killed.elapsed())
    );
    assert!(rest.contains(&new), "new leader node{new} not in {rest:?}");
    let old_host = format!("node{old}");
    retry(&format!("{old_host} Unreachable and Down"), || {
        let rows = via.try_node_ls()?;
        match row(&rows, &old_host) {
            Some(r) if r.manager_status == "Unreachable" && r.status == "Down" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!(
        "managers::{T}: {old_host} shows Unreachable {} after the kill",
        secs(killed.elapsed())
    );

    for &m in &rest {
        for j in 0..2 {
            let key = format!("meanwhile-node{m}-{j}");
            let t = add_label_acked(c.node(m), target, &key);
            eprintln!("managers::{T}: {key} acknowledged in {}", secs(t));
            acked.insert(key);
        }
    }

    c.node(old).restart();
    let restarted = Instant::now();
    let leader = wait_converged(&c, &MANAGERS, 4, 3);
    eprintln!(
        "managers::{T}: {old_host} restarted; all three agree (leader node{leader}) {} later",
        secs(restarted.elapsed())
    );
    assert_ne!(
        leader, old,
        "the restarted old leader took the leadership back"
    );
    // The old leader's own view catches up with the new leader's writes.
    let rows = retry(&format!("{old_host} Reachable in its own view"), || {
        let rows = c.node(old).try_node_ls()?;
        match row(&rows, &old_host) {
            Some(r) if r.manager_status == "Reachable" => Ok(rows),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        row(&rows, &old_host).map(|r| r.manager_status.as_str()),
        Some("Reachable"),
        "{rows:?}"
    );
    let t = wait_labels_exactly(&c, &[old], target, &acked);
    eprintln!(
        "managers::{T}: {old_host} shows all {} labels {} after its restart",
        acked.len(),
        secs(restarted.elapsed().max(t))
    );
    wait_labels_exactly(&c, &MANAGERS, target, &acked);
}

// ----- 3. quorum loss -----

/// Two of three managers killed: a write on the survivor fails within
/// 10 s with Docker's no-leader error, reads still answer; one manager
/// back: writes succeed again and nothing acknowledged was lost.
#[test]
fn quorum_loss() {
    let _alone = swarmnet_tests::exclusive();
    const T: &str = "quorum_loss";
    let (c, _) = three_managers(T, 1, 0);
    let target = "node4";
    let leader = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let rest = others(leader);
    let (back, survivor_ix) = (rest[0], rest[1]);
    let survivor = c.node(survivor_ix);
    let mut acked = BTreeSet::new();
    let mut attempted = BTreeSet::new();
    for m in MANAGERS {
        let key = format!("before-via-node{m}");
        attempted.insert(key.clone());
        add_label_acked(c.node(m), target, &key);
        acked.insert(key);
    }

    c.node(leader).kill9();
    c.node(back).kill9();
    let killed = Instant::now();
    eprintln!(
        "managers::{T}: killed leader node{leader} and node{back}; node{survivor_ix} survives"
    );
    for key in ["during-1", "during-2"] {
        attempted.insert(key.to_owned());
        let t = Instant::now();
        let res = add_label(survivor, target, key);
        let took = t.elapsed();
        eprintln!(
            "managers::{T}: write {key} on node{survivor_ix} {} after {} ({} since the kill)",
            if res.is_ok() { "SUCCEEDED" } else { "failed" },
            secs(took),
            secs(killed.elapsed())
        );
        let err = match res {
            Ok(()) => panic!("a write without quorum succeeded on node{survivor_ix}"),
            Err(e) => e,
        };
        assert!(
            err.contains(NO_LEADER),
            "the write without quorum should fail with Docker's no-leader error; got: {err}"
        );
        assert!(
            took <= NO_QUORUM_FAILS_WITHIN,
            "the write without quorum took {} to fail (want <= {})",
            secs(took),
            secs(NO_QUORUM_FAILS_WITHIN)
        );
    }
    let t = Instant::now();
    let rows = survivor
        .try_node_ls()
        .unwrap_or_else(|e| panic!("node ls on the survivor without quorum: {e}"));
    eprintln!(
        "managers::{T}: node ls on node{survivor_ix} without quorum answered in {}: {rows:?}",
        secs(t.elapsed())
    );
    assert_eq!(rows.len(), 4, "{rows:?}");

    c.node(back).restart();
    let restarted = Instant::now();
    let t = add_label_acked(survivor, target, "after-restart");
    acked.insert("after-restart".to_owned());
    attempted.insert("after-restart".to_owned());
    eprintln!(
        "managers::{T}: node{back} restarted; a write through node{survivor_ix} succeeded {} later (that write took {})",
        secs(restarted.elapsed()),
        secs(t)
    );
    let running = [back, survivor_ix];
    let present = wait_labels_agree(&c, &running, target, &acked);
    assert_history("after quorum came back", &acked, &present, &attempted);
    eprintln!(
        "managers::{T}: running managers {running:?} agree on {present:?} {} after the restart",
        secs(restarted.elapsed())
    );

    // The old leader comes back too, and catches up.
    c.node(leader).restart();
    let t = Instant::now();
    let l = wait_converged(&c, &MANAGERS, 4, 3);
    let present = wait_labels_agree(&c, &MANAGERS, target, &acked);
    assert_history("with all three back", &acked, &present, &attempted);
    eprintln!(
        "managers::{T}: node{leader} restarted; all three agree (leader node{l}) on the labels {} later",
        secs(t.elapsed())
    );
}

// ----- 4. partition -----

/// The leader cut off for a while: the other two elect a leader and take
/// writes, a write through the cut-off one fails; healed, every manager
/// shows exactly the acknowledged writes of both periods.
#[test]
fn partition() {
    let _alone = swarmnet_tests::exclusive();
    const T: &str = "partition";
    let cut_for = env_secs(ENV_PARTITION, 20);
    let (c, _) = three_managers(T, 1, 0);
    let target = "node4";
    let old = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let old_host = format!("node{old}");
    let rest = others(old);
    let mut acked = BTreeSet::new();
    add_label_acked(c.node(old), target, "before-cut");
    acked.insert("before-cut".to_owned());

    c.node(old).cut_link();
    let cut = Instant::now();
    eprintln!(
        "managers::{T}: cut leader {old_host} off for {}",
        secs(cut_for)
    );
    let new = retry("the connected managers to agree on a new leader", || {
        let mut seen = BTreeSet::new();
        for &m in &rest {
            seen.insert(leader_seen_by(c.node(m))?);
        }
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [l] if *l != old => Ok(*l),
            other => Err(format!("leaders seen by {rest:?}: {other:?}")),
        }
    });
    eprintln!(
        "managers::{T}: {rest:?} agree on leader node{new} {} after the cut",
        secs(cut.elapsed())
    );
    for j in 0..4 {
        let m = rest[j % 2];
        let key = format!("during-cut-{j}-via-node{m}");
        let t = add_label_acked(c.node(m), target, &key);
        eprintln!(
            "managers::{T}: {key} acknowledged in {} ({} after the cut)",
            secs(t),
            secs(cut.elapsed())
        );
        acked.insert(key);
    }

    let t = Instant::now();
    let res = add_label(c.node(old), target, "isolated");
    eprintln!(
        "managers::{T}: write through cut-off {old_host}: {} after {}",
        match &res {
            Ok(()) => "SUCCEEDED".to_owned(),
            Err(e) => format!("failed ({e})"),
        },
        secs(t.elapsed())
    );
    match res {
        Ok(()) => panic!("a write through the cut-off {old_host} succeeded"),
        Err(e) => {
            let lower = e.to_lowercase();
            assert!(
                e.contains(NO_LEADER)
                    || ["timeout", "timed out", "deadline"]
                        .iter()
                        .any(|w| lower.contains(w)),
                "the write through the cut-off manager should fail with the no-leader error or a timeout; got: {e}"
            );
        }
    }
    retry(&format!("node{new} to show {old_host} Unreachable"), || {
        let rows = c.node(new).try_node_ls()?;
        match row(&rows, &old_host) {
            Some(r) if r.manager_status == "Unreachable" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!(
        "managers::{T}: node{new} shows {old_host} Unreachable {} after the cut; {old_host} itself lists {:?}",
        secs(cut.elapsed()),
        c.node(old).try_node_ls()
    );

    if let Some(left) = cut_for.checked_sub(cut.elapsed()) {
        thread::sleep(left);
    }
    // For the log: what the cut-off manager believes at the end of the cut.
    eprintln!(
        "managers::{T}: just before the heal, {old_host} lists {:?}",
        c.node(old).try_node_ls().map(|rows| rows
            .into_iter()
            .map(|r| format!("{} {} {}", r.hostname, r.status, r.manager_status))
            .collect::<Vec<_>>())
    );
    c.node(old).heal_link();
    let healed = Instant::now();
    eprintln!(
        "managers::{T}: healed {old_host} after {}",
        secs(cut.elapsed())
    );
    for j in 0..6 {
        let m = MANAGERS[j % 3];
        let key = format!("healed-{j}-via-node{m}");
        let t = add_label_acked(c.node(m), target, &key);
        eprintln!(
            "managers::{T}: {key} acknowledged in {} ({} after the heal)",
            secs(t),
            secs(healed.elapsed())
        );
        acked.insert(key);
    }
    let leader = wait_converged(&c, &MANAGERS, 4, 3);
    let t = wait_labels_exactly(&c, &MANAGERS, target, &acked);
    eprintln!(
        "managers::{T}: all three agree (leader node{leader}) and show exactly the {} acknowledged labels, {} after the heal (labels check {})",
        acked.len(),
        secs(healed.elapsed()),
        secs(t)
    );
}

// ----- 5. history under chaos -----

/// splitmix64: a seeded, reproducible schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn seed() -> u64 {
    match std::env::var(ENV_SEED) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ENV_SEED}={v:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// What one writer did.
#[derive(Debug, Default)]
struct ClientLog {
    target: String,
    attempted: BTreeSet<String>,
    acked: BTreeSet<String>,
    /// Failures by kind: count and the first message.
    errors: BTreeMap<&'static str, (usize, String)>,
    latencies: Vec<Duration>,
}

fn classify(err: &str) -> &'static str {
    if err.contains(NO_LEADER) {
        "no leader"
    } else if err.contains(OUT_OF_SEQUENCE) {
        "out of sequence"
    } else if err.contains("Cannot connect to the Docker daemon")
        || err.contains("connection refused")
        || err.contains("no such file")
        || err.contains("EOF")
        || err.contains("connection reset")
    {
        "agent down"
    } else {
        "other"
    }
}

/// Sets the flag when dropped, also on panic, so writers stop and a
/// panicking scope can join them.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writer `k`: labels `node{4+k}` with fresh keys, one write at a time,
/// through the managers in turn, until `stop`.
fn writer(c: &Cluster, k: usize, stop: &AtomicBool) -> ClientLog {
    let mut log = ClientLog {
        target: format!("node{}", 4 + k),
        ..Default::default()
    };
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let via = MANAGERS[(k + seq) % MANAGERS.len()];
        let key = format!("w{k}-{seq}-via-node{via}");
        log.attempted.insert(key.clone());
        let t = Instant::now();
        match add_label(c.node(via), &log.target, &key) {
            Ok(()) => {
                log.latencies.push(t.elapsed());
                log.acked.insert(key);
            }
            Err(e) => {
                let slot = log.errors.entry(classify(&e)).or_insert((0, e));
                slot.0 += 1;
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    log
}

/// Until `until`: at random intervals, kill -9 or cut off one manager
/// (the leader about half the time), for a random while, then restart or
/// heal it and wait until all three agree again, so never more than one
/// manager is out. Runs on the test's thread (agents it restarts die with
/// the thread that started them). Returns the events, timed from `t0`.
fn chaos(c: &Cluster, rng: &mut Rng, t0: Instant, until: Instant) -> Vec<String> {
    let mut events = Vec::new();
    let mut event = |what: String| {
        let line = format!("{:>7}  {what}", secs(t0.elapsed()));
        eprintln!("managers::history: {line}");
        events.push(line);
    };
    let mut leader = wait_converged(c, &MANAGERS, 6, 3);
    while Instant::now() < until {
        thread::sleep(rng.millis(500, 2500));
        if Instant::now() >= until {
            break;
        }
        let pick = rng.below(4) as usize;
        let m = if pick == 3 { leader } else { MANAGERS[pick] };
        let kill = rng.below(2) == 0;
        let hold = rng.millis(1000, 5000);
        let node = c.node(m);
        let role = if m == leader { "leader" } else { "follower" };
        if kill {
            node.kill9();
            event(format!("kill -9 node{m} ({role}) for {}", secs(hold)));
        } else {
            node.cut_link();
            event(format!("cut node{m} ({role}) for {}", secs(hold)));
        }
        thread::sleep(hold);
        if kill {
            node.restart();
            event(format!("restarted node{m}"));
        } else {
            node.heal_link();
            event(format!("healed node{m}"));
        }
        let t = Instant::now();
        leader = wait_converged(c, &MANAGERS, 6, 3);
        event(format!(
            "all three agree again after {}, leader node{leader}",
            secs(t.elapsed())
        ));
    }
    events
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Writers label three workers through all three managers while managers
/// are killed, restarted, cut off and healed at random; afterwards every
/// manager shows every acknowledged label, and only labels that were
/// attempted: acknowledged ⊆ present ⊆ attempted.
#[test]
fn history() {
    let _alone = swarmnet_tests::exclusive();
    const T: &str = "history";
    let run_for = env_secs(ENV_HISTORY, 60);
    let seed = seed();
    eprintln!(
        "managers::{T}: seed {seed} (rerun with {ENV_SEED}={seed}); writing under chaos for {}",
        secs(run_for)
    );
    let mut rng = Rng(seed);
    let (c, _) = three_managers(T, 3, 0);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (logs, events) = thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let writers: Vec<_> = (0..3)
            .map(|k| {
                let (c, stop) = (&c, &stop);
                s.spawn(move || writer(c, k, stop))
            })
            .collect();
        let events = chaos(&c, &mut rng, t0, t0 + run_for);
        stop.store(true, Ordering::SeqCst);
        let logs: Vec<ClientLog> = writers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (logs, events)
    });
    let elapsed = t0.elapsed();
    let leader = wait_converged(&c, &MANAGERS, 6, 3);
    eprintln!(
        "managers::{T}: {} chaos events in {}; final leader node{leader}",
        events.len(),
        secs(elapsed)
    );

    let settle = Instant::now();
    let mut total = (0, 0, 0);
    for log in &logs {
        let present = wait_labels_agree(&c, &MANAGERS, &log.target, &log.acked);
        let mut lat = log.latencies.clone();
        lat.sort_unstable();
        let unacked_present = present.difference(&log.acked).count();
        eprintln!(
            "managers::{T}: {}: {} attempted, {} acknowledged, {} present ({unacked_present} present without an ack); ack latency p50 {} p99 {} max {}; failures {:?}",
            log.target,
            log.attempted.len(),
            log.acked.len(),
            present.len(),
            secs(percentile(&lat, 0.5)),
            secs(percentile(&lat, 0.99)),
            secs(lat.last().copied().unwrap_or_default()),
            log.errors
        );
        total.0 += log.attempted.len();
        total.1 += log.acked.len();
        total.2 += present.len();
        assert_history(&log.target, &log.acked, &present, &log.attempted);
        assert!(
            !log.acked.is_empty(),
            "{}: no write was ever acknowledged in {}: {:?}",
            log.target,
            secs(elapsed),
            log.errors
        );
    }
    eprintln!(
        "managers::{T}: totals: {} attempted, {} acknowledged, {} present; managers agreed {} after the chaos stopped",
        total.0,
        total.1,
        total.2,
        secs(settle.elapsed())
    );
}

// ----- 6. concurrent versioned updates -----

/// Two updates with the same version at the same instant: one wins, the
/// other fails with "update out of sequence", whichever managers they go
/// through; a stale version fails the same way.
#[test]
fn concurrency() {
    const T: &str = "concurrency";
    let (c, _) = three_managers(T, 1, 0);
    let leader = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let f = others(leader);
    let rounds = [
        ("both through the leader", leader, leader),
        ("through the two followers", f[0], f[1]),
        ("through the leader and a follower", leader, f[1]),
    ];
    let mut stale = None;
    for (r, (what, a, b)) in rounds.into_iter().enumerate() {
        let node = c.node(leader).inspect_node("node4");
        let id = node["ID"].as_str().expect("node ID").to_owned();
        let version = node["Version"]["Index"].as_u64().expect("Version.Index");
        let keys = [format!("race{r}-a"), format!("race{r}-b")];
        let bodies: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut spec = node["Spec"].clone();
                spec["Labels"] = serde_json::json!({ k.as_str(): "1" });
                serde_json::to_vec(&spec).expect("encode spec")
            })
            .collect();
        let path = format!("/v1.47/nodes/{id}/update?version={version}");
        let barrier = Barrier::new(2);
        let results: Vec<(HttpResponse, Duration)> = thread::scope(|s| {
            let handles: Vec<_> = [(a, &bodies[0]), (b, &bodies[1])]
                .into_iter()
                .map(|(m, body)| {
                    let (node, barrier, path) = (c.node(m), &barrier, &path);
                    s.spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        let resp = node.api("POST", path, Some(body));
                        (resp, t.elapsed())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let summary: Vec<String> = results
            .iter()
            .zip([a, b])
            .map(|((resp, t), m)| {
                format!(
                    "via node{m}: HTTP {} {:?} in {}",
                    resp.status,
                    resp.message().unwrap_or_else(|| resp.text()),
                    secs(*t)
                )
            })
            .collect();
        eprintln!("managers::{T}: round {r} ({what}), version {version}: {summary:?}");
        let ok: Vec<usize> = (0..2).filter(|&i| results[i].0.status == 200).collect();
        assert_eq!(
            ok.len(),
            1,
            "round {r} ({what}): exactly one of two updates with version {version} must succeed: {summary:?}"
        );
        let loser = &results[1 - ok[0]].0;
        assert!(
            loser.message().is_some_and(|m| m.contains(OUT_OF_SEQUENCE)),
            "round {r} ({what}): the other must fail with {OUT_OF_SEQUENCE:?}: {summary:?}"
        );
        let want = BTreeSet::from([keys[ok[0]].clone()]);
        wait_labels_exactly(&c, &MANAGERS, "node4", &want);
        stale = Some((path, bodies[ok[0]].clone()));
    }

    // The version of the last round is stale now, through every manager.
    let (path, body) = stale.expect("rounds ran");
    for m in MANAGERS {
        let resp = c.node(m).api("POST", &path, Some(&body));
        assert!(
            resp.status != 200
                && resp
                    .message()
                    .is_some_and(|msg| msg.contains(OUT_OF_SEQUENCE)),
            "a stale version through node{m}: HTTP {} {}",
            resp.status,
            resp.text()
        );
    }
}

// ----- 7. removing a manager -----

/// `docker node rm` of a manager, with or without --force, up or down,
/// fails as Docker's does ("must be demoted"), and the manager stays.
#[test]
fn rm_manager() {
    const T: &str = "rm_manager";
    let (c, _) = three_managers(T, 0, 0);
    let leader = converged(&c, &MANAGERS, 3, 3).unwrap_or_else(|e| panic!("{e}"));
    let follower = others(leader)[0];
    let check_refused = |via: usize, victim: usize| {
        for force in [false, true] {
            let victim_host = format!("node{victim}");
            let mut args = vec!["node", "rm"];
            if force {
                args.push("--force");
            }
            args.push(&victim_host);
            let out = c.node(via).docker(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "managers::{T}: docker {} via node{via}: {}",
                args.join(" "),
                describe(&out)
            );
            assert!(
                !out.status.success(),
                "docker {} via node{via} succeeded",
                args.join(" ")
            );
            assert!(
                stderr.contains("must be demoted"),
                "docker {} via node{via}: {stderr}",
                args.join(" ")
            );
        }
    };
    check_refused(leader, follower);
    check_refused(follower, leader);
    wait_converged(&c, &MANAGERS, 3, 3);

    // A manager that is down is refused too.
    c.node(follower).kill9();
    let via = others(follower)[0];
    retry(&format!("node{follower} Down"), || {
        let rows = c.node(via).try_node_ls()?;
        match row(&rows, &format!("node{follower}")) {
            Some(r) if r.status == "Down" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    check_refused(via, follower);
    c.node(follower).restart();
    let l = wait_converged(&c, &MANAGERS, 3, 3);
    eprintln!("managers::{T}: all three managers still listed, leader node{l}");
}

// ----- 8. promote / demote -----

/// A worker promoted becomes a Reachable manager; demoted, a worker again;
/// the last manager of a swarm cannot be demoted.
#[test]
fn promote_demote() {
    let _alone = swarmnet_tests::exclusive();
    // needs: promote/demote (node update with a changed Spec.Role)
    const T: &str = "promote_demote";
    let (c, _) = three_managers(T, 1, 0);
    let leader = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let l = c.node(leader);
    let w = c.node(4);

    let t = Instant::now();
    let out = l.docker(&["node", "promote", "node4"]);
    eprintln!(
        "managers::{T}: docker node promote node4: {}",
        describe(&out)
    );
    assert!(out.status.success(), "promote: {}", describe(&out));
    let promoted = t.elapsed();
    let new_leader = wait_converged(&c, &[1, 2, 3, 4], 4, 4);
    let listed = t.elapsed();
    retry(
        "node4's docker info to say Is Manager: true",
        || match is_manager_line(w).as_deref() {
            Some("Is Manager: true") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(w.swarm_info()["ControlAvailable"], true);
    let rows = l.node_ls();
    assert_eq!(
        row(&rows, "node4").map(|r| r.manager_status.as_str()),
        Some("Reachable"),
        "{rows:?}"
    );
    eprintln!(
        "managers::{T}: node4 promoted: the CLI returned after {}, all four managers agreed (leader node{new_leader}) after {}, node4's docker info after {}",
        secs(promoted),
        secs(listed),
        secs(t.elapsed())
    );

    // node4 is a working voter: with one of the first three managers down,
    // a write through node4 needs node4's vote to commit (3 of 4).
    let down = others(new_leader)[0];
    c.node(down).kill9();
    let t = add_label_acked(w, "node4", "promoted-write");
    eprintln!(
        "managers::{T}: with node{down} down, a write through node4 took {}",
        secs(t)
    );
    c.node(down).restart();
    let new_leader = wait_converged(&c, &[1, 2, 3, 4], 4, 4);

    let t = Instant::now();
    let via = c.node(new_leader);
    let out = via.docker(&["node", "demote", "node4"]);
    eprintln!(
        "managers::{T}: docker node demote node4: {}",
        describe(&out)
    );
    assert!(out.status.success(), "demote: {}", describe(&out));
    let demoted = t.elapsed();
    let leader = wait_converged(&c, &MANAGERS, 4, 3);
    retry("node4 listed as a worker again", || {
        let rows = c.node(leader).try_node_ls()?;
        match row(&rows, "node4") {
            Some(r) if r.manager_status.is_empty() && r.status == "Ready" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let listed = t.elapsed();
    retry(
        "node4's docker info to say Is Manager: false",
        || match is_manager_line(w).as_deref() {
            Some("Is Manager: false") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(w.swarm_info()["ControlAvailable"], false);
    eprintln!(
        "managers::{T}: node4 demoted: the CLI returned after {}, node ls showed a worker after {}, node4's docker info after {}",
        secs(demoted),
        secs(listed),
        secs(t.elapsed())
    );

    // node4 left the Raft group: with one of the three managers down, the
    // other two are a quorum (they would not be of four voters).
    let down = others(leader)[0];
    let via = c.node(others(down)[0]);
    c.node(down).kill9();
    let t = add_label_acked(via, "node4", "demoted-write");
    eprintln!(
        "managers::{T}: with node{down} down, a write through {} took {}",
        via.hostname(),
        secs(t)
    );
    c.node(down).restart();
    wait_converged(&c, &MANAGERS, 4, 3);
    wait_labels_exactly(
        &c,
        &MANAGERS,
        "node4",
        &BTreeSet::from(["promoted-write".to_owned(), "demoted-write".to_owned()]),
    );

    let solo = Cluster::new(1);
    solo.init_swarm();
    let out = solo.manager().docker(&["node", "demote", "node1"]);
    eprintln!(
        "managers::{T}: demote of the only manager: {}",
        describe(&out)
    );
    assert!(
        !out.status.success(),
        "demoting the last manager succeeded: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last manager"),
        "{}",
        describe(&out)
    );
    let rows = solo.manager().node_ls();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].manager_status, "Leader", "{rows:?}");
}

// ----- 9. join-token rotation -----

/// `docker swarm join-token --rotate worker`: a new worker token, the old
/// one refused, the new one accepted, workers unaffected, the manager
/// token unchanged.
#[test]
fn token_rotation() {
    // needs: swarm update (POST /swarm/update?rotateWorkerToken=true)
    const T: &str = "token_rotation";
    let (c, tokens) = three_managers(T, 1, 1);
    let leader = converged(&c, &MANAGERS, 4, 3).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let out = c
        .node(leader)
        .docker(&["swarm", "join-token", "--rotate", "worker"]);
    eprintln!(
        "managers::{T}: docker swarm join-token --rotate worker ({}): {}",
        secs(t.elapsed()),
        describe(&out)
    );
    assert!(out.status.success(), "rotate: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new = stdout
        .split_whitespace()
        .find(|w| w.starts_with("SWMTKN-"))
        .unwrap_or_else(|| panic!("no token in the rotate output: {stdout}"))
        .to_owned();
    assert_ne!(new, tokens.worker, "the rotated token is new");
    assert_eq!(
        new.split('-').nth(2),
        tokens.worker.split('-').nth(2),
        "same CA digest"
    );
    for m in MANAGERS {
        let node = c.node(m);
        retry(&format!("node{m} to hand out the new worker token"), || {
            let got = node.docker_ok(&["swarm", "join-token", "-q", "worker"]);
            if got.trim() == new {
                Ok(())
            } else {
                Err(format!("got {}", got.trim()))
            }
        });
        let manager = node.docker_ok(&["swarm", "join-token", "-q", "manager"]);
        assert_eq!(manager.trim(), tokens.manager, "node{m}: manager token");
    }

    let spare = c.node(5);
    let via_follower = format!("{}:2377", c.node(others(leader)[0]).addr());
    let out = spare.docker(&["swarm", "join", "--token", &tokens.worker, &via_follower]);
    eprintln!(
        "managers::{T}: join with the old token via {via_follower}: {}",
        describe(&out)
    );
    assert!(
        !out.status.success(),
        "a join with the rotated-out token succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("valid join token"),
        "{}",
        describe(&out)
    );
    assert_eq!(spare.swarm_state(), "inactive");

    let via_other = format!("{}:2377", c.node(others(leader)[1]).addr());
    let t = Instant::now();
    spare.docker_ok(&["swarm", "join", "--token", &new, &via_other]);
    eprintln!(
        "managers::{T}: join with the new token via {via_other} took {}",
        secs(t.elapsed())
    );
    wait_converged(&c, &MANAGERS, 5, 3);

    // The existing worker stays Ready over a few heartbeats.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let rows = c.node(leader).node_ls();
        assert_eq!(
            row(&rows, "node4").map(|r| r.status.as_str()),
            Some("Ready"),
            "{rows:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(c.node(4).swarm_state(), "active");
}

/// A manager that was down while the others compacted their Raft logs
/// catches up from a snapshot. The swarm spec's `Raft.SnapshotInterval` and
/// `Raft.LogEntriesForSlowFollowers` (Docker's settings) are made small;
/// they take effect when a manager's store opens, so every manager is
/// restarted first.
#[test]
fn snapshot_catch_up() {
    const T: &str = "snapshot_catch_up";
    const WRITES: usize = 60;
    let (c, _) = three_managers(T, 0, 0);
    let swarm = c.node(1).api("GET", "/swarm", None).json();
    let version = swarm["Version"]["Index"].as_u64().expect("swarm version");
    let mut spec = swarm["Spec"].clone();
    spec["Raft"]["SnapshotInterval"] = 20.into();
    spec["Raft"]["LogEntriesForSlowFollowers"] = 5.into();
    let body = serde_json::to_vec(&spec).expect("spec JSON");
    let resp = c.node(1).api(
        "POST",
        &format!("/swarm/update?version={version}"),
        Some(&body),
    );
    assert_eq!(resp.status, 200, "swarm update: {}", resp.text());
    for i in MANAGERS {
        c.node(i).kill9();
        c.node(i).restart();
        wait_converged(&c, &MANAGERS, 3, 3);
    }
    let leader = converged(&c, &MANAGERS, 3, 3).unwrap_or_else(|e| panic!("{e}"));
    let lagging = others(leader)[1];
    let via = c.node(leader);
    c.node(lagging).kill9();
    let mut want = BTreeSet::new();
    for n in 0..WRITES {
        let key = format!("snap{n}");
        add_label_acked(via, "node1", &key);
        want.insert(key);
    }
    let purged = via
        .metrics()
        .get("swarmnet_raft_purged_index", &[])
        .unwrap_or(-1.0);
    assert!(
        purged > 0.0,
        "the leader never purged its log (purged index {purged}): no snapshot was taken"
    );
    let restarted = Instant::now();
    c.node(lagging).restart();
    let node = c.node(lagging);
    retry(
        &format!("node{lagging} to catch up with {WRITES} labels"),
        || {
            let have = labels(node, "node1")?;
            if want.is_subset(&have) {
                Ok(())
            } else {
                Err(diff(&have, &want))
            }
        },
    );
    let snapshot = node
        .metrics()
        .get("swarmnet_raft_snapshot_index", &[])
        .unwrap_or(-1.0);
    assert!(
        snapshot > 0.0,
        "node{lagging} caught up without installing a snapshot (snapshot index {snapshot})"
    );
    eprintln!(
        "managers::{T}: leader node{leader} purged its log to {purged}; node{lagging} caught up from snapshot {snapshot} in {}",
        secs(restarted.elapsed())
    );
}

/// Adds label `key` to node `target` through `via`'s API (a read of the
/// node's version, then a versioned update): the raw API, so a test can
/// make hundreds of Raft writes in seconds.
fn api_add_label(via: &Node, target: &str, key: &str) -> Result<(), String> {
    let node = via.api("GET", &format!("/nodes/{target}"), None);
    if node.status != 200 {
        return Err(format!("GET /nodes/{target}: {}", node.text()));
    }
    let node = node.json();
    let version = node["Version"]["Index"]
        .as_u64()
        .ok_or_else(|| format!("no version in {node}"))?;
    let mut spec = node["Spec"].clone();
    if !spec["Labels"].is_object() {
        spec["Labels"] = serde_json::json!({});
    }
    spec["Labels"][key] = "1".into();
    let body = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    let resp = via.api(
        "POST",
        &format!("/nodes/{target}/update?version={version}"),
        Some(&body),
    );
    match resp.status {
        200 => Ok(()),
        s => Err(format!("update {target} ({s}): {}", resp.text())),
    }
}

/// A manager that was down while the others committed more entries than
/// one AppendEntries carries catches up from the log alone (no snapshot is
/// due), in many AppendEntries batches, and then serves writes. With
/// openraft's default batch of 300 entries a loaded node could not answer
/// one within the leader's 100 ms replication timeout, so a follower that
/// fell behind was sent the same batch forever (`history` found it:
/// `SWARMNET_TEST_SEED=1796123203937116042`); idle, as here, both sizes
/// catch up.
#[test]
fn log_catch_up() {
    const T: &str = "log_catch_up";
    const PER_TARGET: usize = 130;
    let (c, _) = three_managers(T, 0, 0);
    let leader = converged(&c, &MANAGERS, 3, 3).unwrap_or_else(|e| panic!("{e}"));
    let lagging = others(leader)[1];
    c.node(lagging).kill9();
    let via = c.node(leader);
    let wrote = Instant::now();
    // One writer per node object, so versions never race.
    let want: Vec<BTreeSet<String>> = thread::scope(|s| {
        let writers: Vec<_> = MANAGERS
            .iter()
            .map(|&t| {
                s.spawn(move || {
                    let target = format!("node{t}");
                    (0..PER_TARGET)
                        .map(|n| {
                            let key = format!("catch{n}");
                            retry(&format!("label {key} on {target}"), || {
                                api_add_label(via, &target, &key)
                            });
                            key
                        })
                        .collect::<BTreeSet<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let wrote = wrote.elapsed();
    let applied = |n: &Node| {
        n.try_metrics()
            .ok()
            .and_then(|m| m.get("swarmnet_raft_last_applied_index", &[]))
    };
    let target = applied(via).unwrap_or_else(|| panic!("node{leader}: no applied index"));
    let restarted = Instant::now();
    c.node(lagging).restart();
    let node = c.node(lagging);
    retry(
        &format!("node{lagging} to apply up to index {target}"),
        || match applied(node) {
            Some(i) if i >= target => Ok(()),
            other => Err(format!("applied index {other:?}")),
        },
    );
    let caught_up = restarted.elapsed();
    for (t, want) in MANAGERS.iter().zip(&want) {
        let have = labels(node, &format!("node{t}")).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            want.is_subset(&have),
            "node{lagging} misses labels of node{t}: {}",
            diff(&have, want)
        );
    }
    // A write through the node that caught up is served and seen by all.
    add_label_acked(node, "node1", "after");
    for i in MANAGERS {
        let n = c.node(i);
        retry(&format!("node{i} to see label after"), || {
            labels(n, "node1")?
                .contains("after")
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        });
    }
    let snapshot = node
        .metrics()
        .get("swarmnet_raft_snapshot_index", &[])
        .unwrap_or(0.0);
    eprintln!(
        "managers::{T}: {} writes in {} with node{lagging} down (leader applied index {target}); node{lagging} applied them {} after its restart (snapshot index {snapshot})",
        MANAGERS.len() * PER_TARGET,
        secs(wrote),
        secs(caught_up)
    );
}

/// A worker keeps its list of managers current through whichever manager
/// answers: with the manager it joined through dead, a manager promoted
/// afterwards still shows up in the worker's `docker info`.
#[test]
fn worker_follows_managers() {
    const T: &str = "worker_follows_managers";
    let (c, _) = three_managers(T, 2, 0);
    let worker = c.node(4);
    c.node(1).kill9();
    let killed = Instant::now();
    c.node(2).docker_ok(&["node", "promote", "node5"]);
    let want = format!("{}:2377", c.node(5).addr());
    retry(
        &format!("node4's docker info to list the promoted node5 ({want})"),
        || {
            let info = worker.swarm_info();
            let addrs: BTreeSet<String> = info["RemoteManagers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["Addr"].as_str().map(str::to_owned))
                .collect();
            if addrs.contains(&want) {
                Ok(())
            } else {
                Err(format!("RemoteManagers: {}", info["RemoteManagers"]))
            }
        },
    );
    eprintln!(
        "managers::{T}: node4 learned of the new manager {} after node1 died",
        secs(killed.elapsed())
    );
    // The worker stays Ready for the managers that remain.
    let rows = retry("node4 Ready on node2", || {
        let rows = c.node(2).try_node_ls()?;
        match row(&rows, "node4") {
            Some(r) if r.status == "Ready" => Ok(rows),
            other => Err(format!("node4: {other:?}")),
        }
    });
    assert!(row(&rows, "node5").is_some_and(|r| !r.manager_status.is_empty()));
}
