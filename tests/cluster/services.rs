//! Services: the managers' orchestrator turns `docker service create`
//! into tasks spread over the nodes, each node's worker runs its tasks as
//! containers; scaling, node failures, drain, constraints, restart
//! policies, rolling updates and rollbacks. All driven with the docker CLI
//! and asserted through the API's views, the nodes' containers and the
//! network (HTTP between tasks over the overlay).

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, retry, retry_for};

/// `docker service ps` rows: (name, node, desired state, current state, error).
fn service_ps(n: &Node, service: &str) -> Vec<(String, String, String, String, String)> {
    let out = n.docker_ok(&[
        "service",
        "ps",
        "--no-trunc",
        "--format",
        "{{.Name}}|{{.Node}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}",
        service,
    ]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let g = |i: usize| {
                f.get(i)
                    .map(|s| s.trim().trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            (g(0), g(1), g(2), g(3), g(4))
        })
        .collect()
}

/// Running tasks of `service` per `service ps`: (name, node).
fn running_tasks(n: &Node, service: &str) -> Vec<(String, String)> {
    service_ps(n, service)
        .into_iter()
        .filter(|(_, _, desired, current, _)| {
            desired == "Running" && current.starts_with("Running")
        })
        .map(|(name, node, ..)| (name, node))
        .collect()
}

#[track_caller]
fn wait_running(n: &Node, service: &str, count: usize, within: Duration) -> Vec<(String, String)> {
    retry_for(
        within,
        &format!("{count} running tasks of {service}"),
        || {
            let r = running_tasks(n, service);
            let replicas = n.docker_ok(&[
                "service",
                "ls",
                "--filter",
                &format!("name={service}"),
                "--format",
                "{{.Name}} {{.Replicas}}",
            ]);
            if r.len() == count && replicas.contains(&format!("{service} {count}/")) {
                Ok(r)
            } else {
                Err(format!(
                    "{} running: {:?}; service ls: {replicas}",
                    r.len(),
                    service_ps(n, service)
                ))
            }
        },
    )
}

/// The running containers of `service` on node `n`.
fn containers_of(n: &Node, service: &str) -> Vec<String> {
    n.docker_ok(&[
        "ps",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_owned)
    .filter(|l| !l.is_empty())
    .collect()
}

#[track_caller]
fn field(n: &Node, obj: &str, fmt: &str) -> String {
    n.docker_ok(&["inspect", "-f", fmt, obj]).trim().to_owned()
}

/// `docker service create -d --name web --replicas 3 --network net1
/// EXTRA... nginx` on `n`, and waits for the 3 tasks.
fn create_web(n: &Node, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "net1",
    ];
    args.extend_from_slice(extra);
    args.push("nginx");
    n.docker_ok(&args);
    wait_running(n, "web", 3, Duration::from_secs(60))
}

/// A swarm of `nodes` with net1 (not attachable: services only).
fn swarm(nodes: usize) -> Cluster {
    let c = Cluster::builder(nodes).registry().build();
    c.form_swarm();
    c.manager().docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "198.19.2.0/24",
        "net1",
    ]);
    c
}

/// 3 nodes: 3 replicas of nginx land one per node; each answers HTTP on
/// its overlay address from a task of another service on another node;
/// the service has a VIP on net1; `service rm` leaves no container and
/// frees the network.
#[test]
fn replicas_spread_and_answer_over_the_overlay() {
    let c = swarm(3);
    let m = c.manager();
    let start = Instant::now();
    let tasks = create_web(m, &[]);
    println!(
        "3 replicas running {:.2} s after service create",
        start.elapsed().as_secs_f64()
    );
    let nodes: BTreeSet<&str> = tasks.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one task per node: {tasks:?}");
    let names: BTreeSet<&str> = tasks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["web.1", "web.2", "web.3"]));
    let vip = m.docker_ok(&[
        "service",
        "inspect",
        "-f",
        "{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}",
        "web",
    ]);
    assert!(vip.trim().starts_with("198.19.2."), "VIP {vip:?}");

    m.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "probe",
        "--mode",
        "global",
        "--network",
        "net1",
        "busybox",
        "sleep",
        "3600",
    ]);
    wait_running(m, "probe", 3, Duration::from_secs(60));
    for (i, n) in c.nodes().iter().enumerate() {
        let web = containers_of(n, "web");
        assert_eq!(web.len(), 1, "one web container on {}", n.hostname());
        let ip = field(
            n,
            &web[0],
            "{{(index .NetworkSettings.Networks \"net1\").IPAddress}}",
        );
        let host = field(n, &web[0], "{{.Config.Hostname}}");
        assert!(ip.starts_with("198.19.2."), "{ip}");
        let other = c.node((i + 1) % 3 + 1);
        let probe = containers_of(other, "probe");
        assert_eq!(probe.len(), 1);
        let page = retry(&format!("{} reaches {ip}", other.hostname()), || {
            let out = other.docker(&[
                "exec",
                &probe[0],
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{ip}/"),
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                Ok(text)
            } else {
                let ping = other.docker(&["exec", &probe[0], "ping", "-c", "1", "-W", "1", &ip]);
                let addr = other.docker(&["exec", &probe[0], "ip", "addr"]);
                Err(format!(
                    "{} {text} {}; ping: {}; {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&ping.stdout),
                    String::from_utf8_lossy(&addr.stdout)
                ))
            }
        });
        assert!(page.contains(&host), "the page of {host}: {page}");
    }

    m.docker_ok(&["service", "rm", "web", "probe"]);
    retry("no task container left", || {
        let left: usize = c
            .nodes()
            .iter()
            .map(|n| {
                n.docker_ok(&["ps", "-aq", "--filter", "label=com.docker.swarm.task"])
                    .lines()
                    .count()
            })
            .sum();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    });
    assert_eq!(m.docker_ok(&["service", "ls", "-q"]).trim(), "");
    retry("net1 can be removed", || {
        let out = m.docker(&["network", "rm", "net1"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
}

/// `scale web=6` then `web=2`: the running tasks follow within 10 s, and
/// the nodes run exactly that many containers.
#[test]
fn scaling_follows_within_ten_seconds() {
    let c = swarm(3);
    let m = c.manager();
    create_web(m, &[]);
    for (n, spread) in [(6usize, 2usize), (2, 0)] {
        let t = Instant::now();
        m.docker_ok(&["service", "scale", "-d", &format!("web={n}")]);
        wait_running(m, "web", n, Duration::from_secs(10));
        retry_for(Duration::from_secs(10), "containers follow", || {
            let per: Vec<usize> = c
                .nodes()
                .iter()
                .map(|x| containers_of(x, "web").len())
                .collect();
            let total: usize = per.iter().sum();
            let spread_ok = spread == 0 || per.iter().all(|k| *k == spread);
            if total == n && spread_ok {
                Ok(())
            } else {
                Err(format!("{per:?}"))
            }
        });
        println!("scaled to {n} in {:.2} s", t.elapsed().as_secs_f64());
    }
    retry("scaled-away slots are forgotten", || {
        let ps = service_ps(m, "web");
        if ps.len() == 2 {
            Ok(())
        } else {
            Err(format!("{ps:?}"))
        }
    });
}

/// Node 3 cut off the underlay: its replica runs elsewhere (after the
/// restart delay); back, node 3 stops its stale task and the service has
/// exactly 3 replicas.
#[test]
fn a_lost_node_loses_its_tasks() {
    let c = swarm(3);
    let m = c.manager();
    create_web(m, &["--restart-delay", "1s"]);
    let n3 = c.node(3);
    let lost = n3.hostname().to_owned();
    n3.cut_link();
    let t = Instant::now();
    let tasks = retry_for(Duration::from_secs(20), "3 replicas without node 3", || {
        let r = running_tasks(m, "web");
        if r.len() == 3 && r.iter().all(|(_, n)| *n != lost) {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    println!(
        "replica moved off the lost node in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "within 10 s: {:?}",
        t.elapsed()
    );
    let nodes: BTreeSet<&str> = tasks.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes.len(), 2);
    n3.heal_link();
    retry_for(
        Duration::from_secs(30),
        "node 3 stops its stale task",
        || {
            let k = containers_of(n3, "web").len();
            if k == 0 {
                Ok(())
            } else {
                Err(format!("{k} running on node 3"))
            }
        },
    );
    thread::sleep(Duration::from_secs(2));
    let total: usize = c
        .nodes()
        .iter()
        .map(|x| containers_of(x, "web").len())
        .sum();
    assert_eq!(total, 3, "exactly 3 replicas");
    assert_eq!(running_tasks(m, "web").len(), 3);
}

/// Constraints, pending tasks, drain, and global services on a node that
/// joins later.
#[test]
fn placement_follows_constraints_availability_and_nodes() {
    let c = Cluster::builder(4).registry().build();
    let tokens = c.init_swarm();
    for i in 2..=3 {
        c.join(i, &tokens.worker);
    }
    c.wait_ready(3);
    let m = c.manager();
    m.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "mgr",
        "--replicas",
        "2",
        "--constraint",
        "node.role==manager",
        "busybox",
        "sleep",
        "3600",
    ]);
    let tasks = wait_running(m, "mgr", 2, Duration::from_secs(60));
    assert!(tasks.iter().all(|(_, n)| n == "node1"), "{tasks:?}");

    m.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "mars",
        "--constraint",
        "node.labels.zone==mars",
        "busybox",
        "sleep",
        "3600",
    ]);
    let pending = retry("mars is pending", || {
        let ps = service_ps(m, "mars");
        match ps.as_slice() {
            [one] if one.3.starts_with("Pending") => Ok(one.clone()),
            _ => Err(format!("{ps:?}")),
        }
    });
    assert_eq!(
        pending.4,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );
    m.docker_ok(&["node", "update", "--label-add", "zone=mars", "node2"]);
    let t = wait_running(m, "mars", 1, Duration::from_secs(30));
    assert_eq!(t[0].1, "node2");

    m.docker_ok(&[
        "service", "create", "-d", "--name", "g", "--mode", "global", "busybox", "sleep", "3600",
    ]);
    wait_running(m, "g", 3, Duration::from_secs(60));

    // Drain node2: its tasks stop; mars has nowhere else to go.
    m.docker_ok(&["node", "update", "--availability", "drain", "node2"]);
    retry("node2 drained", || {
        let left = containers_of(c.node(2), "mars").len() + containers_of(c.node(2), "g").len();
        let mars = service_ps(m, "mars");
        let pending = mars
            .iter()
            .any(|r| r.2 == "Running" && r.3.starts_with("Pending"));
        if left == 0 && pending {
            Ok(())
        } else {
            Err(format!("{left} left on node2; {mars:?}"))
        }
    });
    wait_running(m, "g", 2, Duration::from_secs(10));
    m.docker_ok(&["node", "update", "--availability", "active", "node2"]);
    wait_running(m, "mars", 1, Duration::from_secs(30));
    wait_running(m, "g", 3, Duration::from_secs(30));

    // A node that joins gets the global task.
    c.join(4, &tokens.worker);
    c.wait_ready(4);
    let g = wait_running(m, "g", 4, Duration::from_secs(60));
    assert!(g.iter().any(|(_, n)| n == "node4"), "{g:?}");
    assert_eq!(containers_of(c.node(4), "g").len(), 1);
}

/// Restart policies: `on-failure` restarts a task that exits non-zero
/// (and not one that exits 0), `none` never does.
#[test]
fn restart_policy_applies_to_exited_tasks() {
    let c = swarm(2);
    let m = c.manager();
    let svc = |name: &str, cond: &str, code: u32| {
        m.docker_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--restart-condition",
            cond,
            "--restart-delay",
            "0s",
            "busybox",
            "sh",
            "-c",
            &format!("sleep 1; exit {code}"),
        ]);
    };
    svc("fails", "on-failure", 3);
    svc("once", "none", 3);
    svc("done", "on-failure", 0);
    let failed = retry("fails is restarted", || {
        let ps = service_ps(m, "fails");
        let failed: Vec<_> = ps
            .iter()
            .filter(|r| r.3.starts_with("Failed"))
            .cloned()
            .collect();
        if failed.len() >= 2 {
            Ok(failed)
        } else {
            Err(format!("{ps:?}"))
        }
    });
    assert!(
        failed.iter().all(|r| r.4 == "task: non-zero exit (3)"),
        "{failed:?}"
    );
    retry("once failed", || {
        let ps = service_ps(m, "once");
        if ps.iter().any(|r| r.3.starts_with("Failed")) {
            Ok(())
        } else {
            Err(format!("{ps:?}"))
        }
    });
    retry("done completed", || {
        let ps = service_ps(m, "done");
        if ps.iter().any(|r| r.3.starts_with("Complete")) {
            Ok(())
        } else {
            Err(format!("{ps:?}"))
        }
    });
    thread::sleep(Duration::from_secs(4));
    assert_eq!(service_ps(m, "once").len(), 1, "none: never restarted");
    assert_eq!(
        service_ps(m, "done").len(),
        1,
        "on-failure: exit 0 stays done"
    );
    assert!(
        service_ps(m, "fails").len() >= 3,
        "on-failure: restarted again"
    );
}

/// The env of the task containers of `service`, on all nodes.
fn envs_of(c: &Cluster, service: &str) -> Vec<String> {
    let mut out = Vec::new();
    for n in c.nodes() {
        for name in containers_of(n, service) {
            out.push(field(n, &name, "{{range .Config.Env}}{{.}} {{end}}"));
        }
    }
    out
}

/// A rolling update with parallelism 1 and delay 2 s replaces one task at
/// a time, at least 2 s apart, with 2 or more running throughout; rollback
/// brings the old env back.
#[test]
fn rolling_update_and_rollback() {
    let c = swarm(3);
    let m = c.manager();
    m.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "--update-parallelism",
        "1",
        "--update-delay",
        "2s",
        "--stop-grace-period",
        "1s",
        "--env",
        "V=1",
        "busybox",
        "sleep",
        "3600",
    ]);
    let before: BTreeSet<String> = wait_running(m, "web", 3, Duration::from_secs(60))
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(before.len(), 3);
    let ids = |m: &Node| -> Vec<(String, bool)> {
        m.docker_ok(&[
            "service",
            "ps",
            "-q",
            "--no-trunc",
            "--format",
            "{{.ID}}|{{.DesiredState}}|{{.CurrentState}}",
            "web",
        ])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 3).then(|| {
                (
                    f[0].to_owned(),
                    f[1] == "Running" && f[2].starts_with("Running"),
                )
            })
        })
        .collect()
    };
    let old: BTreeSet<String> = ids(m).into_iter().map(|(id, _)| id).collect();
    let t0 = Instant::now();
    m.docker_ok(&["service", "update", "-d", "--env-add", "V=2", "web"]);
    let mut first_running: Vec<(String, Duration)> = Vec::new();
    let mut min_running = usize::MAX;
    while t0.elapsed() < Duration::from_secs(60) {
        let now = ids(m);
        let running = now.iter().filter(|(_, r)| *r).count();
        min_running = min_running.min(running);
        for (id, r) in &now {
            if *r && !old.contains(id) && !first_running.iter().any(|(x, _)| x == id) {
                first_running.push((id.clone(), t0.elapsed()));
            }
        }
        if first_running.len() == 3 && running == 3 {
            break;
        }
        thread::sleep(Duration::from_millis(150));
    }
    println!("new tasks running at {first_running:?}; at least {min_running} running throughout");
    assert_eq!(first_running.len(), 3, "all three replaced");
    for w in first_running.windows(2) {
        let gap = w[1].1 - w[0].1;
        assert!(
            gap >= Duration::from_millis(1800),
            "batches 2 s apart: {first_running:?}"
        );
    }
    assert!(min_running >= 2, "at least 2 running at every moment");
    let envs = envs_of(&c, "web");
    assert_eq!(envs.len(), 3);
    assert!(envs.iter().all(|e| e.contains("V=2")), "{envs:?}");
    let state = m.docker_ok(&["service", "inspect", "-f", "{{.UpdateStatus.State}}", "web"]);
    assert_eq!(state.trim(), "completed");

    m.docker_ok(&["service", "rollback", "-d", "web"]);
    retry_for(Duration::from_secs(60), "rolled back", || {
        let envs = envs_of(&c, "web");
        if envs.len() == 3 && envs.iter().all(|e| e.contains("V=1") && !e.contains("V=2")) {
            Ok(())
        } else {
            Err(format!("{envs:?}"))
        }
    });
    retry("rollback completed", || {
        let state = m.docker_ok(&["service", "inspect", "-f", "{{.UpdateStatus.State}}", "web"]);
        if state.trim() == "rollback_completed" {
            Ok(())
        } else {
            Err(state)
        }
    });
}

/// Invalid specs are refused with Docker's kind of message and change
/// nothing.
#[test]
fn bad_service_requests_change_nothing() {
    let c = swarm(2);
    let m = c.manager();
    m.docker_ok(&[
        "service", "create", "-d", "--name", "web", "busybox", "sleep", "3600",
    ]);
    wait_running(m, "web", 1, Duration::from_secs(60));
    let before = m.docker_ok(&[
        "service",
        "ls",
        "--format",
        "{{.ID}} {{.Name}} {{.Replicas}}",
    ]);
    let version = m.docker_ok(&["service", "inspect", "-f", "{{.Version.Index}}", "web"]);
    let cli = |args: &[&str], want: &str| {
        let out = m.docker(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    cli(
        &[
            "service",
            "create",
            "--name",
            "x",
            "--network",
            "nosuch",
            "busybox",
        ],
        "network nosuch not found",
    );
    cli(
        &[
            "service",
            "create",
            "--name",
            "x",
            "--constraint",
            "node.role=manager",
            "busybox",
        ],
        "constraint expected one operator from ==, !=",
    );
    cli(
        &["service", "create", "--name", "web", "busybox"],
        "already exists",
    );
    cli(
        &["service", "update", "--constraint-add", "zone", "web"],
        "constraint expected one operator",
    );
    cli(&["service", "inspect", "nope"], "nope");
    cli(&["service", "rm", "nope"], "service nope not found");
    let w = c.node(2);
    let out = w.docker(&["service", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("This node is not a swarm manager"),
        "a worker refuses"
    );

    let api = |body: &str, code: u16, want: &str| {
        let r = m.api("POST", "/v1.47/services/create", Some(body.as_bytes()));
        assert_eq!(r.status, code, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{body}: {}", r.text());
    };
    let image = r#""TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}"#;
    api(
        &format!(r#"{{"Name":"neg",{image},"Mode":{{"Replicated":{{"Replicas":-1}}}}}}"#),
        400,
        "must not be negative",
    );
    api(
        r#"{"Name":"noimage","TaskTemplate":{"ContainerSpec":{"Image":""}}}"#,
        400,
        "image reference must be provided",
    );
    api(
        &format!(r#"{{"Name":"bad name!",{image}}}"#),
        400,
        "valid as a DNS name component",
    );
    api(
        &format!(r#"{{"Name":"",{image}}}"#),
        400,
        "valid as a DNS name component",
    );
    api("{not json", 400, "invalid JSON");
    let r = m.api(
        "POST",
        "/v1.47/services/web/update?version=1",
        Some(br#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("update out of sequence"), "{}", r.text());
    let r = m.api(
        "GET",
        "/v1.47/tasks?filters=%7B%22bogus%22%3A%7B%22x%22%3Atrue%7D%7D",
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());

    assert_eq!(
        m.docker_ok(&[
            "service",
            "ls",
            "--format",
            "{{.ID}} {{.Name}} {{.Replicas}}"
        ]),
        before
    );
    assert_eq!(
        m.docker_ok(&["service", "inspect", "-f", "{{.Version.Index}}", "web"]),
        version
    );
    let tasks = c
        .nodes()
        .iter()
        .map(|n| containers_of(n, "web").len())
        .sum::<usize>();
    assert_eq!(tasks, 1);
}
