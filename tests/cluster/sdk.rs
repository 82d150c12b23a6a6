//! The same swarm formed and listed through the SDKs: bollard (Rust) and
//! the Python `docker` package.

use std::{path::PathBuf, process::Command, time::Duration};

use bollard::models::{LocalNodeState, NodeState, SwarmInitRequest, SwarmJoinRequest};
use swarmnet_tests::{
    Cluster, retry, rt,
    util::{describe, run_timeout},
};

#[test]
fn bollard_forms_and_lists_three_nodes() {
    let c = Cluster::new(3);
    let rt = rt();
    let m = c.manager();
    let manager = m.bollard();
    let manager_addr = c.manager_addr();

    let node_id = rt
        .block_on(manager.init_swarm(SwarmInitRequest {
            advertise_addr: Some(m.addr().to_string()),
            listen_addr: Some("0.0.0.0:2377".to_owned()),
            ..Default::default()
        }))
        .expect("init_swarm");
    assert!(!node_id.is_empty(), "init_swarm returns the node ID");

    let swarm = rt.block_on(manager.inspect_swarm()).expect("inspect_swarm");
    assert!(
        swarm.id.as_deref().is_some_and(|s| !s.is_empty()),
        "{swarm:?}"
    );
    let tokens = swarm.join_tokens.expect("JoinTokens in GET /swarm");
    let worker = tokens.worker.expect("worker token");
    assert!(worker.starts_with("SWMTKN-1-"), "{worker}");
    let manager_token = tokens.manager.expect("manager token");
    assert_ne!(worker, manager_token);

    for n in &c.nodes()[1..] {
        rt.block_on(n.bollard().join_swarm(SwarmJoinRequest {
            listen_addr: Some("0.0.0.0:2377".to_owned()),
            advertise_addr: Some(n.addr().to_string()),
            remote_addrs: Some(vec![manager_addr.clone()]),
            join_token: Some(worker.clone()),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("{} join_swarm: {e}", n.hostname()));
    }

    let nodes = retry("3 Ready nodes from list_nodes", || {
        let nodes = rt
            .block_on(manager.list_nodes(None))
            .map_err(|e| e.to_string())?;
        let ready = nodes
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
            .count();
        if nodes.len() == 3 && ready == 3 {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    let mut hostnames: Vec<String> = nodes
        .iter()
        .map(|n| {
            n.description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default()
        })
        .collect();
    hostnames.sort();
    assert_eq!(hostnames, ["node1", "node2", "node3"]);
    let leader = nodes
        .iter()
        .find(|n| n.id.as_deref() == Some(node_id.as_str()))
        .expect("the init node is listed under the ID init_swarm returned");
    assert_eq!(
        leader.manager_status.as_ref().and_then(|s| s.leader),
        Some(true),
        "{leader:?}"
    );
    for n in nodes
        .iter()
        .filter(|n| n.id.as_deref() != Some(node_id.as_str()))
    {
        assert!(
            n.manager_status.is_none(),
            "workers have no ManagerStatus: {n:?}"
        );
    }

    // The worker's own view: active, not a manager.
    let info = rt
        .block_on(c.node(2).bollard().info())
        .expect("info on node2");
    let sw = info.swarm.expect("Swarm in /info");
    assert_eq!(sw.local_node_state, Some(LocalNodeState::ACTIVE), "{sw:?}");
    assert_eq!(sw.control_available, Some(false), "{sw:?}");
    let err = rt
        .block_on(c.node(2).bollard().list_nodes(None))
        .expect_err("list_nodes on a worker must fail");
    assert!(
        err.to_string().contains("This node is not a swarm manager"),
        "{err}"
    );
}

fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

#[test]
fn python_sdk_forms_and_lists_three_nodes() {
    let c = Cluster::new(3);
    let probe = run_timeout(
        Command::new("python3").args(["-c", "import docker; print(docker.__version__)"]),
        Duration::from_secs(60),
    );
    assert!(
        probe.status.success(),
        "python3 with the `docker` package is required (scripts/setup.sh installs it): {}",
        describe(&probe)
    );
    let mut cmd = Command::new("python3");
    cmd.arg(py_script("form_swarm.py"));
    for n in c.nodes() {
        cmd.arg(n.socket()).arg(n.addr().to_string());
    }
    cmd.env(
        "SWARMNET_TEST_PATIENCE_SECS",
        swarmnet_tests::patience().as_secs().to_string(),
    );
    let out = run_timeout(&mut cmd, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "form_swarm.py failed ({}):\n{}",
        out.status,
        describe(&out)
    );
    // And the docker CLI agrees with what the script built.
    let rows = c.wait_ready(3);
    assert_eq!(
        rows.iter().filter(|r| r.manager_status == "Leader").count(),
        1
    );
}

/// docker-py runs containers: pull, run to completion, detached run,
/// exec, logs, list by label, stop, remove, errors.
#[test]
fn python_sdk_runs_containers() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    let out = run_timeout(
        Command::new("python3")
            .arg(py_script("containers.py"))
            .arg(n.socket()),
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "containers.py failed ({}):\n{}\nagent log:\n{}",
        out.status,
        describe(&out),
        n.log_tail(30)
    );
}

/// bollard: create, start, wait, logs, remove.
#[test]
fn bollard_runs_a_container() {
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
    };
    use futures_util::StreamExt;

    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    let rt = rt();
    let d = n.bollard();
    rt.block_on(async {
        let mut pull = d.create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image("busybox")
                    .tag("latest")
                    .build(),
            ),
            None,
            None,
        );
        while let Some(p) = pull.next().await {
            p.expect("pull progress");
        }
        let created = d
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name("bol").build()),
                bollard::models::ContainerCreateBody {
                    image: Some("busybox".into()),
                    cmd: Some(vec![
                        "sh".into(),
                        "-c".into(),
                        "echo via-bollard; exit 6".into(),
                    ]),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        d.start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .expect("start");
        let mut wait = d.wait_container(
            &created.id,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        let mut code = None;
        while let Some(w) = wait.next().await {
            match w {
                Ok(r) => code = Some(r.status_code),
                // bollard reports a non-zero exit as an error carrying it.
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                    code = Some(c)
                }
                Err(e) => panic!("wait: {e}"),
            }
        }
        assert_eq!(code, Some(6), "exit code through wait");
        let mut logs = d.logs(
            &created.id,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(l) = logs.next().await {
            text.push_str(&l.expect("log").to_string());
        }
        assert_eq!(text, "via-bollard\n");
        d.remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .expect("remove");
    });
}
