//! Containers on a node, driven with the real docker CLI: images pulled
//! through the harness's registry mirror or loaded from an archive, run by
//! runc under a shim, reached over the node's bridge network, and live
//! through an agent kill -9.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use swarmnet_tests::{Cluster, Node, containers, retry, util::describe};

/// The container's address on the node's bridge network.
#[track_caller]
fn ip_of(n: &Node, name: &str) -> String {
    n.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
    .trim()
    .to_owned()
}

#[track_caller]
fn inspect_field(n: &Node, name: &str, field: &str) -> String {
    n.docker_ok(&["inspect", "-f", &format!("{{{{{field}}}}}"), name])
        .trim()
        .to_owned()
}

/// `curl http://IP/PATH` from the node's namespace.
fn curl(n: &Node, ip: &str, path: &str) -> Result<String, String> {
    let out = n.exec(&["curl", "-sS", "-m", "5", &format!("http://{ip}{path}")]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(describe(&out))
    }
}

/// The digest the registry holds for `library/NAME:latest`.
fn registry_digest(name: &str) -> String {
    let link = containers::registry_data()
        .join("docker/registry/v2/repositories/library")
        .join(name)
        .join("_manifests/tags/latest/current/link");
    std::fs::read_to_string(&link)
        .unwrap_or_else(|e| panic!("read {}: {e}", link.display()))
        .trim()
        .to_owned()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// On a node of a 3-node swarm: `docker pull nginx` through the mirror,
/// listed with its digest; run it; its page (naming its hostname) answers
/// on its bridge address; `exec` and `logs` work.
#[test]
fn pull_run_curl_exec_logs_on_a_swarm_node() {
    let c = Cluster::builder(3).registry().build();
    c.form_swarm();
    let n = c.node(2);
    n.docker_ok(&["pull", "nginx"]);
    let listed = n.docker_ok(&[
        "images",
        "--digests",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.Digest}}",
    ]);
    let want = format!("nginx:latest {}", registry_digest("nginx"));
    assert!(
        lines(&listed).contains(&want),
        "docker images --digests: {listed:?}, want {want:?}"
    );

    let id = n.docker_ok(&["run", "-d", "--name", "web", "nginx"]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "docker run -d prints the ID: {id:?}");
    let hostname = n.docker_ok(&["exec", "web", "cat", "/etc/hostname"]);
    let hostname = hostname.trim();
    assert_eq!(hostname, &id[..12], "the hostname is the short ID");
    let ip = ip_of(n, "web");
    assert!(ip.starts_with("198.18.1."), "bridge address {ip:?}");
    let page = retry(&format!("nginx answering on {ip}"), || curl(n, &ip, "/"));
    assert!(
        page.contains(&format!("hostname: {hostname}")),
        "page does not name {hostname}: {page}"
    );
    // Only the node with the container can reach it.
    assert!(
        curl(c.node(3), &ip, "/").is_err(),
        "node3 reached node2's bridge"
    );
    retry("the request in docker logs", || {
        let out = n.docker(&["logs", "web"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("GET / HTTP/1.1") {
            Ok(())
        } else {
            Err(describe(&out))
        }
    });
    let ps = n.docker_ok(&["ps", "--format", "{{.Names}} {{.Image}} {{.Status}}"]);
    assert!(ps.starts_with("web nginx Up"), "docker ps: {ps:?}");
}

/// `docker run --rm` attaches both streams and exits with the
/// container's code; exec gets a TTY with -t and stdin with -i.
#[test]
fn run_streams_exit_codes_tty_and_stdin() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    let out = n.docker(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(
        n.docker_ok(&["ps", "-a", "-q"]).trim(),
        "",
        "--rm removed it"
    );

    n.docker_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    let tty = n.docker_ok(&["exec", "-t", "box", "tty"]);
    assert!(tty.trim().starts_with("/dev/pts/"), "exec -t: {tty:?}");
    let no_tty = n.docker(&["exec", "box", "tty"]);
    assert_eq!(no_tty.status.code(), Some(1), "{}", describe(&no_tty));
    assert!(String::from_utf8_lossy(&no_tty.stdout).contains("not a tty"));
    let echoed = n.docker_stdin(&["exec", "-i", "box", "cat"], b"hello\nworld\n");
    assert!(echoed.status.success(), "{}", describe(&echoed));
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "hello\nworld\n");
    let code = n.docker(&["exec", "box", "sh", "-c", "exit 42"]);
    assert_eq!(code.status.code(), Some(42), "exec exit code");
    // docker run -i: stdin reaches the container.
    let cat = n.docker_stdin(&["run", "--rm", "-i", "busybox", "wc", "-l"], b"a\nb\nc\n");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout).trim(),
        "3",
        "{}",
        describe(&cat)
    );
    // A container with a TTY: one stream, raw.
    let tty_run = n.docker_ok(&[
        "run",
        "--rm",
        "-t",
        "busybox",
        "sh",
        "-c",
        "tty; echo err >&2",
    ]);
    assert!(tty_run.starts_with("/dev/pts/"), "run -t: {tty_run:?}");
    assert!(
        tty_run.contains("err\r\n"),
        "stderr joins stdout on a TTY: {tty_run:?}"
    );
    // docker logs --timestamps: RFC 3339 with nanoseconds, then the line.
    let stamped = n.docker_ok(&["logs", "--timestamps", "box"]);
    assert!(stamped.is_empty(), "sleep printed nothing: {stamped:?}");
    n.docker_ok(&[
        "run",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "echo one; echo two >&2",
    ]);
    let stamped = n.docker_ok(&["logs", "--timestamps", "talker"]);
    let first = stamped.lines().next().unwrap_or_default();
    let (ts, rest) = first.split_once(' ').unwrap_or_default();
    assert_eq!(rest, "one", "{stamped:?}");
    assert!(
        ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts:?}"
    );
    let err_only = n.docker(&["logs", "talker"]);
    assert_eq!(String::from_utf8_lossy(&err_only.stdout), "one\n");
    assert_eq!(String::from_utf8_lossy(&err_only.stderr), "two\n");
    // docker wait reports the code of a container that exits on its own.
    n.docker_ok(&[
        "run",
        "-d",
        "--name",
        "seven",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 7",
    ]);
    assert_eq!(n.docker_ok(&["wait", "seven"]).trim(), "7");
    assert_eq!(inspect_field(n, "seven", ".State.ExitCode"), "7");
    assert!(
        n.docker_ok(&["ps", "-a", "--filter", "exited=7", "--format", "{{.Names}}"])
            .contains("seven")
    );
}

/// `docker load -i` of a skopeo docker-archive: runnable on a node that
/// has no registry at all.
#[test]
fn loaded_archive_runs_without_a_registry() {
    let c = Cluster::new(1);
    let n = c.node(1);
    let archive = containers::docker_archive("busybox");
    let out = n.docker_ok(&["load", "-i", &archive.display().to_string()]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    let ran = n.docker_ok(&["run", "--rm", "busybox", "echo", "loaded"]);
    assert_eq!(ran, "loaded\n");
    // Nothing to pull from: a pull fails, and the image stays.
    let pull = n.docker(&["pull", "nginx"]);
    assert!(
        !pull.status.success(),
        "pull without a registry: {}",
        describe(&pull)
    );
    assert!(
        n.docker_ok(&["images", "--format", "{{.Repository}}"])
            .contains("busybox")
    );
}

/// kill -9 of the agent: the container keeps running with the same PID;
/// the restarted agent lists it, follows its log and execs into it; a
/// container that exits while the agent is away is found exited.
#[test]
fn containers_outlive_an_agent_kill9() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    n.docker_ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    ]);
    n.docker_ok(&["run", "-d", "--name", "victim", "busybox", "sleep", "600"]);
    let pid = inspect_field(n, "ticker", ".State.Pid");
    let victim_pid: i32 = inspect_field(n, "victim", ".State.Pid")
        .parse()
        .expect("pid");
    let ip = ip_of(n, "ticker");
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    n.kill9();
    thread::sleep(Duration::from_millis(500));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with its agent"
    );
    assert_eq!(
        n.ping(ip.parse().expect("ip"), 1),
        1,
        "reachable while the agent is down"
    );
    // Exits while the agent is away: its shim records it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the victim");
    thread::sleep(Duration::from_millis(300));
    n.restart();

    let ps = n.docker_ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(lines(&ps), ["ticker"], "docker ps after the restart");
    assert_eq!(
        inspect_field(n, "ticker", ".State.Pid"),
        pid,
        "same PID throughout"
    );
    assert_eq!(inspect_field(n, "victim", ".State.Status"), "exited");
    assert_eq!(inspect_field(n, "victim", ".State.ExitCode"), "137");

    // docker logs -f shows new lines as they come.
    let last_before: u64 = n
        .docker_ok(&["logs", "--tail", "1", "ticker"])
        .trim()
        .trim_start_matches("tick ")
        .parse()
        .expect("a tick line");
    let mut follow = n.docker_command(&["logs", "-f", "--tail", "1", "ticker"]);
    let mut child = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("docker logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut newer = 0;
    while newer < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1))
            && let Some(k) = line
                .strip_prefix("tick ")
                .and_then(|k| k.parse::<u64>().ok())
            && k > last_before
        {
            newer += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        newer, 3,
        "docker logs -f after the restart showed new lines"
    );
    assert_eq!(n.docker_ok(&["exec", "ticker", "echo", "in"]), "in\n");
    n.docker_ok(&["rm", "-f", "ticker", "victim"]);
}

/// 20 `docker run -d` at once on one node: all run, with distinct
/// addresses; `docker rm -f` of all of them leaves no mount, namespace,
/// veth, cgroup, runc container or process behind.
#[test]
fn twenty_at_once_then_nothing_left() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    thread::scope(|s| {
        for name in &names {
            s.spawn(move || n.docker_ok(&["run", "-d", "--name", name, "busybox", "sleep", "600"]));
        }
    });
    let running = n.docker_ok(&["ps", "-q"]);
    assert_eq!(lines(&running).len(), 20, "docker ps: {running}");
    let ips: BTreeSet<String> = names.iter().map(|name| ip_of(n, name)).collect();
    assert_eq!(ips.len(), 20, "distinct addresses: {ips:?}");
    for ip in &ips {
        assert_eq!(n.ping(ip.parse().expect("ip"), 1), 1, "ping {ip}");
    }
    assert_eq!(containers::shim_pids(n.dir()).len(), 20, "one shim each");

    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    n.docker_ok(&rm);
    assert_eq!(n.docker_ok(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(
        containers::mounts_under(n.dir()),
        Vec::<std::path::PathBuf>::new(),
        "mounts left"
    );
    assert_eq!(
        containers::runc_containers(&n.run_dir().join("runc")),
        Vec::<String>::new(),
        "runc containers left"
    );
    let netns: Vec<_> = std::fs::read_dir(n.run_dir().join("netns"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespace files left: {netns:?}");
    let links = n.exec_ok(&["ip", "-o", "link", "show"]);
    let names_left: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or(""))
        .collect();
    assert_eq!(names_left, ["lo", "eth0", "docker0"], "links: {links}");
    let cgroups: Vec<_> = containers::cgroup_dirs(n.cgroup_parent())
        .into_iter()
        .filter(|d| !d.ends_with(n.cgroup_parent()))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    retry("no shim left", || {
        match containers::shim_pids(n.dir()).as_slice() {
            [] => Ok(()),
            left => Err(format!("{left:?}")),
        }
    });
}

/// Memory and CPU limits land in the container's cgroups; `none` and
/// `host` networks are what they say.
#[test]
fn limits_and_network_modes() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    let mem = n.docker_ok(&[
        "run",
        "--rm",
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    ]);
    assert_eq!(lines(&mem), ["67108864", "50000"], "cgroup limits");
    let none = n.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ip",
        "-o",
        "link",
    ]);
    assert_eq!(lines(&none).len(), 1, "only lo: {none}");
    let host = n.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
    ]);
    assert!(
        host.contains(&n.addr().to_string()),
        "the node's address: {host}"
    );
    let user = n.docker_ok(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        "-w",
        "/tmp/work",
        "-e",
        "GREETING=hi",
        "busybox",
        "sh",
        "-c",
        "id -u; pwd; echo $GREETING; hostname",
    ]);
    let got = lines(&user);
    assert_eq!(&got[..3], ["65534", "/tmp/work", "hi"], "{user}");
    let custom = n.docker_ok(&["run", "--rm", "--hostname", "custom", "busybox", "hostname"]);
    assert_eq!(custom.trim(), "custom");
    let ep = n.docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        "busybox",
        "via",
        "entrypoint",
    ]);
    assert_eq!(ep.trim(), "via entrypoint");
}

/// `docker stop` sends the stop signal, then SIGKILL after `-t`;
/// `docker kill -s`, `pause`/`unpause`, `restart`.
#[test]
fn stop_kill_pause_restart() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    // sleep as PID 1 ignores SIGTERM: stop waits -t, then kills.
    n.docker_ok(&["run", "-d", "--name", "stubborn", "busybox", "sleep", "600"]);
    let t0 = Instant::now();
    n.docker_ok(&["stop", "-t", "1", "stubborn"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "stop took {took:?}"
    );
    assert_eq!(inspect_field(n, "stubborn", ".State.ExitCode"), "137");
    // A shell that traps TERM exits with its own code.
    n.docker_ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 5' TERM; while true; do sleep 0.1; done",
    ]);
    n.docker_ok(&["kill", "-s", "TERM", "polite"]);
    assert_eq!(n.docker_ok(&["wait", "polite"]).trim(), "5");
    n.docker_ok(&["start", "stubborn"]);
    assert_eq!(inspect_field(n, "stubborn", ".State.Status"), "running");
    n.docker_ok(&["pause", "stubborn"]);
    assert_eq!(inspect_field(n, "stubborn", ".State.Status"), "paused");
    n.docker_ok(&["unpause", "stubborn"]);
    let pid = inspect_field(n, "stubborn", ".State.Pid");
    n.docker_ok(&["restart", "-t", "0", "stubborn"]);
    assert_ne!(
        inspect_field(n, "stubborn", ".State.Pid"),
        pid,
        "a new process"
    );
    assert_eq!(inspect_field(n, "stubborn", ".RestartCount"), "1");
    let kill = n.docker(&["kill", "polite"]);
    assert!(!kill.status.success());
    assert!(
        String::from_utf8_lossy(&kill.stderr).contains("is not running"),
        "{}",
        describe(&kill)
    );
}

/// Bad input gets Docker's errors and changes nothing.
#[test]
fn bad_input_gets_docker_errors() {
    let c = Cluster::builder(1).registry().build();
    let n = c.node(1);
    n.docker_ok(&["pull", "busybox"]);
    n.docker_ok(&["run", "-d", "--name", "dup", "busybox", "sleep", "600"]);
    let images_before = n.docker_ok(&["images", "-q", "--no-trunc"]);
    let ps_before = n.docker_ok(&["ps", "-a", "-q", "--no-trunc"]);

    let check = |args: &[&str], want: &str| {
        let out = n.docker(args);
        assert!(
            !out.status.success(),
            "`docker {}` succeeded",
            args.join(" ")
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "`docker {}`: want {want:?} in {err:?}",
            args.join(" ")
        );
    };
    check(
        &["run", "--rm", "nosuchimage"],
        "Unable to find image 'nosuchimage:latest' locally",
    );
    check(&["pull", "nosuchimage"], "nosuchimage");
    check(&["run", "--rm", "NGINX"], "invalid reference format");
    check(
        &["run", "-d", "--name", "dup", "busybox", "true"],
        "Conflict. The container name \"/dup\" is already in use by container",
    );
    check(
        &["run", "--name", "x", "busybox", "true"],
        "Invalid container name (x)",
    );
    check(
        &["rmi", "busybox"],
        "conflict: unable to remove repository reference \"busybox\" (must force) - container",
    );
    check(
        &["rmi", "-f", "busybox"],
        "image is being used by running container",
    );
    check(
        &["run", "-p", "8080:80", "busybox", "true"],
        "not supported",
    );
    check(
        &["run", "--network", "nonet", "busybox", "true"],
        "network nonet not found",
    );
    check(
        &["start", "nosuchcontainer"],
        "No such container: nosuchcontainer",
    );
    check(
        &["rm", "dup"],
        "container is running: stop the container before removing or force remove",
    );
    check(
        &["exec", "nosuchcontainer", "true"],
        "No such container: nosuchcontainer",
    );
    check(
        &["exec", "dup", "nosuchbinary"],
        "executable file not found",
    );

    // A corrupt archive.
    let archive = containers::docker_archive("busybox");
    let bytes = std::fs::read(&archive).expect("read archive");
    let cut = c.dir().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write cut archive");
    check(&["load", "-i", &cut.display().to_string()], "");
    let garbage = c.dir().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive at all").expect("write garbage");
    check(&["load", "-i", &garbage.display().to_string()], "");

    // Raw API: malformed bodies and unknown objects.
    let r = n.api("POST", "/containers/create", Some(b"{not json"));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = n.api("POST", "/containers/create", Some(br#"{"Image": 5}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = n.api("POST", "/containers/create", Some(br#"{}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = n.api("POST", "/containers/dup/wait?condition=someday", None);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = n.api("POST", "/containers/dup/kill?signal=NOPE", None);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = n.api(
        "GET",
        "/containers/json?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.message().as_deref(), Some("invalid filter 'bogus'"));
    let r = n.api("POST", "/exec/nosuchexec/start", Some(b"{}"));
    assert_eq!(r.status, 404, "{}", r.text());

    assert_eq!(
        n.docker_ok(&["images", "-q", "--no-trunc"]),
        images_before,
        "images changed"
    );
    assert_eq!(
        n.docker_ok(&["ps", "-a", "-q", "--no-trunc"]),
        ps_before,
        "containers changed"
    );
    assert_eq!(inspect_field(n, "dup", ".State.Status"), "running");
}

/// A registry that serves a layer whose bytes do not match its digest:
/// the pull fails with a clear error and the node stores nothing.
#[test]
fn corrupt_layer_from_a_registry_stores_nothing() {
    let c = Cluster::builder(1)
        .agent_arg("--insecure-registry")
        .agent_arg("198.18.0.3:5000")
        .build();
    let n = c.node(1);
    c.hub()
        .ip_ok(&["addr", "add", "198.18.0.3/24", "dev", "br0"]);
    // The real busybox image of the cache, its layer's bytes tampered with.
    let oci = Path::new(
        &std::env::var(containers::ENV_IMAGE_CACHE)
            .unwrap_or_else(|_| containers::DEFAULT_IMAGE_CACHE.to_owned()),
    )
    .join("oci/busybox");
    let blob = |digest: &str| {
        std::fs::read(
            oci.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap_or_else(|e| panic!("read blob {digest}: {e}"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest");
    let manifest_bytes = blob(mdigest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("manifest");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config")
        .to_owned();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let mut layer = blob(&layer_digest);
    let mid = layer.len() / 2;
    layer[mid] ^= 0xff;
    let _reg = swarmnet_tests::fakereg::FakeRegistry::start(
        c.hub().name(),
        "198.18.0.3:5000".parse().expect("addr"),
        swarmnet_tests::fakereg::FakeImage {
            repo: "bad/busybox".into(),
            manifest_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: manifest_bytes.clone(),
            blobs: [
                (config_digest.clone(), blob(&config_digest)),
                (layer_digest.clone(), layer),
            ]
            .into(),
        },
    );
    let out = n.docker(&["pull", "198.18.0.3:5000/bad/busybox:latest"]);
    assert!(
        !out.status.success(),
        "pull of a corrupt layer: {}",
        describe(&out)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("verification failed") && text.contains(&layer_digest),
        "the error names the layer: {text}"
    );
    assert_eq!(n.docker_ok(&["images", "-q"]).trim(), "", "no image");
    let store = n.data_dir().join("images");
    for d in ["layers", "blobs/sha256", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(store.join(d))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{d} keeps {left:?} after a failed pull");
    }
    let run = n.docker(&["run", "--rm", "198.18.0.3:5000/bad/busybox", "true"]);
    assert!(
        !run.status.success(),
        "ran an image that failed verification"
    );
}
