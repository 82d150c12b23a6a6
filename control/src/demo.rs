//! `swarmnet demo up|down`: a swarm of agents in network namespaces on
//! this machine, joined by a bridge in a hub namespace (underlay
//! 198.18.0.0/24), formed with the real docker CLI. Nothing is created in
//! the root namespace; `down` (or Ctrl-C on `up`) removes it all.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "swarmnet-demo";
/// The registry on the hub's bridge, every agent's Docker Hub mirror.
const REGISTRY_ADDR: &str = "198.18.0.2:5000";
/// Each node's `bridge` network (every node has its own, as every Docker
/// host has 172.17.0.0/16).
const BIP: &str = "198.18.1.1/24";

#[derive(Subcommand)]
pub enum DemoCmd {
    /// Start the demo cluster and keep it running until Ctrl-C.
    Up {
        /// How many nodes (the first is the manager).
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// How many of them are managers (Raft voters).
        #[arg(long, default_value_t = 1)]
        managers: u8,
        /// Where sockets, data and logs go.
        #[arg(long, default_value = "/run/swarmnet-demo")]
        dir: PathBuf,
        /// Start the cluster and return instead of waiting for Ctrl-C.
        #[arg(long)]
        detach: bool,
        /// Registry storage with the test images (`bash scripts/registry.sh
        /// seed DIR`), served read-only as every node's Docker Hub mirror.
        #[arg(long, default_value = "/var/cache/swarmnet/registry")]
        registry_data: PathBuf,
    },
    /// Stop a demo cluster started with `up`.
    Down {
        #[arg(long, default_value = "/run/swarmnet-demo")]
        dir: PathBuf,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct DemoState {
    namespaces: Vec<String>,
    pids: Vec<u32>,
}

pub fn run(cmd: DemoCmd) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    match cmd {
        DemoCmd::Up {
            nodes,
            managers,
            dir,
            detach,
            registry_data,
        } => up(nodes, managers, &dir, detach, &registry_data),
        DemoCmd::Down { dir } => down(&dir),
    }
}

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn save(dir: &Path, st: &DemoState) -> Result<()> {
    fs::write(state_path(dir), serde_json::to_vec(st)?).context("save demo state")
}

fn node_ip(i: u8) -> String {
    format!("198.18.0.{}", 10 + u16::from(i))
}

fn up(nodes: u8, managers: u8, dir: &Path, detach: bool, registry_data: &Path) -> Result<()> {
    if !(1..=50).contains(&nodes) {
        bail!("--nodes must be between 1 and 50");
    }
    if !(1..=nodes).contains(&managers) {
        bail!("--managers must be between 1 and --nodes");
    }
    if state_path(dir).exists() {
        bail!(
            "a demo is already running (state in {}): run `swarmnet demo down` first",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut st = DemoState::default();
    let result = build(nodes, managers, dir, registry_data, &mut st);
    if let Err(e) = result {
        let _ = teardown(dir, &st);
        let _ = fs::remove_file(state_path(dir));
        return Err(e);
    }
    let sock = dir.join("node1/docker.sock");
    println!("\nThe demo swarm is up. Try:");
    println!("  export DOCKER_HOST=unix://{}", sock.display());
    println!("  docker node ls");
    println!("  docker info");
    if let Ok(ip) = fs::read_to_string(dir.join("ping-b.ip")) {
        println!(
            "  docker exec ping-a ping -c 3 {}    # node1 to node2 over the overlay network demo-net",
            ip.trim()
        );
    }
    println!("  docker service ls; docker service ps web  # 3 replicas of nginx on demo-net");
    println!("  docker service scale web=6");
    println!("  docker run -d --name site nginx         # from the demo's registry mirror");
    println!(
        "  ip netns exec {PREFIX}-n1 curl -s $(docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' site)"
    );
    println!("  docker exec -it site sh");
    for i in 1..=nodes {
        println!(
            "  node{i}: DOCKER_HOST=unix://{}  underlay {}",
            dir.join(format!("node{i}/docker.sock")).display(),
            node_ip(i)
        );
    }
    if detach {
        println!("\nStop it with: swarmnet demo down --dir {}", dir.display());
        return Ok(());
    }
    println!("\nCtrl-C stops the demo and removes everything it made.");
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::spawn(move || {
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    down(dir)
}

fn build(
    nodes: u8,
    managers: u8,
    dir: &Path,
    registry_data: &Path,
    st: &mut DemoState,
) -> Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    if !registry_data.join(".seeded").is_file() {
        bail!(
            "{} holds no seeded registry: run `bash scripts/images.sh && bash scripts/registry.sh seed {}` (scripts/demo.sh does)",
            registry_data.display(),
            registry_data.display()
        );
    }
    let hub = format!("{PREFIX}-hub");
    sh(&["ip", "netns", "add", &hub])?;
    st.namespaces.push(hub.clone());
    save(dir, st)?;
    sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
    sh(&[
        "ip",
        "-n",
        &hub,
        "addr",
        "add",
        "198.18.0.2/24",
        "dev",
        "br0",
    ])?;
    st.pids.push(start_registry(&hub, dir, registry_data)?);
    save(dir, st)?;
    for i in 1..=nodes {
        let ns = format!("{PREFIX}-n{i}");
        sh(&["ip", "netns", "add", &ns])?;
        st.namespaces.push(ns.clone());
        save(dir, st)?;
        let port = format!("p{i}");
        sh(&[
            "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        sh(&[
            "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
        ])?;
        let cidr = format!("{}/24", node_ip(i));
        sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let ndir = dir.join(format!("node{i}"));
        fs::create_dir_all(&ndir)?;
        let log = fs::File::create(ndir.join("agent.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("--")
            .arg(&exe)
            .args(["agent", "--data-dir"])
            .arg(ndir.join("data"))
            .arg("-H")
            .arg(format!("unix://{}", ndir.join("docker.sock").display()))
            .args(["--hostname", &format!("node{i}")])
            .args(["--advertise-addr", &node_ip(i)])
            .args(["--metrics-addr", &format!("{}:9323", node_ip(i))])
            .arg("--exec-root")
            .arg(ndir.join("run"))
            .args(["--bip", BIP])
            .args(["--cgroup-parent", &format!("/{PREFIX}/node{i}")])
            .args(["--registry-mirror", &format!("http://{REGISTRY_ADDR}")])
            .args(["--insecure-registry", REGISTRY_ADDR])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start agent")?;
        st.pids.push(child.id());
        save(dir, st)?;
    }
    for i in 1..=nodes {
        wait_ping(&dir.join(format!("node{i}/docker.sock")))?;
    }
    let docker = |i: u8, args: &[&str]| -> Result<String> {
        let host = format!(
            "unix://{}",
            dir.join(format!("node{i}/docker.sock")).display()
        );
        let mut full = vec!["docker", "-H", host.as_str()];
        full.extend_from_slice(args);
        println!("$ docker -H {host} {}", args.join(" "));
        sh(&full)
    };
    let manager = node_ip(1);
    print!(
        "{}",
        docker(1, &["swarm", "init", "--advertise-addr", &manager])?
    );
    let worker_token = docker(1, &["swarm", "join-token", "-q", "worker"])?;
    let manager_token = docker(1, &["swarm", "join-token", "-q", "manager"])?;
    let remote = format!("{manager}:2377");
    for i in 2..=nodes {
        let token = if i <= managers {
            &manager_token
        } else {
            &worker_token
        };
        print!(
            "{}",
            docker(i, &["swarm", "join", "--token", token.trim(), &remote])?
        );
    }
    // Wait until every node is Ready, then show the list.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let host = format!("unix://{}", dir.join("node1/docker.sock").display());
        let ready = sh(&[
            "docker",
            "-H",
            &host,
            "node",
            "ls",
            "--format",
            "{{.Status}}",
        ])?;
        if ready.lines().filter(|l| *l == "Ready").count() == usize::from(nodes) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes did not all become Ready within 30 s:\n{ready}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    print!("{}", docker(1, &["node", "ls"])?);
    // Containers on two nodes, on one overlay network, ping each other.
    let other = if nodes >= 2 { 2 } else { 1 };
    print!(
        "{}",
        docker(
            1,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--attachable",
                "--subnet",
                "198.19.0.0/24",
                "demo-net",
            ],
        )?
    );
    for (i, name) in [(1, "ping-a"), (other, "ping-b")] {
        print!(
            "{}",
            docker(
                i,
                &[
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "demo-net",
                    "busybox",
                    "sleep",
                    "2147483647",
                ],
            )?
        );
    }
    let ip = docker(
        other,
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"demo-net\").IPAddress}}",
            "ping-b",
        ],
    )?;
    let ip = ip.trim();
    fs::write(dir.join("ping-b.ip"), ip)?;
    // The first ping may race the endpoint's announcement; give it a few.
    let mut last = String::new();
    let mut pinged = false;
    for _ in 0..20 {
        match docker(1, &["exec", "ping-a", "ping", "-c", "3", "-W", "1", ip]) {
            Ok(out) => {
                print!("{out}");
                pinged = true;
                break;
            }
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(250));
    }
    if !pinged {
        bail!("ping-a on node1 could not reach ping-b on node{other} at {ip}: {last}");
    }
    web_service(nodes, &docker)
}

/// `web`: 3 replicas of nginx on demo-net, spread over the nodes; node1's
/// ping-a fetches the page of a task on another node over the overlay.
fn web_service(nodes: u8, docker: &dyn Fn(u8, &[&str]) -> Result<String>) -> Result<()> {
    docker(
        1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "demo-net",
            "nginx",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ls = docker(1, &["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])?;
        if ls.lines().any(|l| l.trim() == "web 3/3") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the web service did not get 3 running tasks within 90 s:\n{ls}");
        }
        thread::sleep(Duration::from_millis(250));
    }
    print!("{}", docker(1, &["service", "ls"])?);
    print!("{}", docker(1, &["service", "ps", "web"])?);
    let far = nodes.min(3);
    let names = docker(
        far,
        &[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=web",
        ],
    )?;
    let Some(task) = names.lines().next() else {
        return Ok(());
    };
    let ip = docker(
        far,
        &[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"demo-net\").IPAddress}}",
            task,
        ],
    )?;
    let page = docker(
        1,
        &[
            "exec",
            "ping-a",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{}/", ip.trim()),
        ],
    )?;
    println!(
        "node1's ping-a fetched the page of a web task on node{far} ({}): {}",
        ip.trim(),
        page.lines().next().unwrap_or_default()
    );
    Ok(())
}

fn wait_ping(sock: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let host = format!("unix://{}", sock.display());
    while Instant::now() < deadline {
        let ok = Command::new("docker")
            .args(["-H", &host, "version", "--format", "{{.Server.APIVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("agent at {} did not answer within 20 s", sock.display())
}

/// `docker-registry serve` in the hub, on the seeded storage, read-only.
fn start_registry(hub: &str, dir: &Path, data: &Path) -> Result<u32> {
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: true\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {REGISTRY_ADDR}\n",
            data.display()
        ),
    )
    .context("write the registry config")?;
    let log = fs::File::create(dir.join("registry.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", hub, "docker-registry", "serve"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context(
            "start docker-registry (Debian package docker-registry; scripts/images.sh installs it)",
        )?;
    Ok(child.id())
}

/// Removes what the nodes' containers left once their agents are gone:
/// shims (only those whose command line names the demo's dir), runc
/// containers, mounts under the dir, cgroups.
fn cleanup_containers(dir: &Path, nodes: usize) {
    let needle = dir.display().to_string();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            if comm.trim() == "swarmnet-shim" && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for i in 1..=nodes {
        let root = dir.join(format!("node{i}/run/runc"));
        if let Ok(list) = sh(&["runc", "--root", &root.display().to_string(), "list", "-q"]) {
            for id in list.lines().filter(|l| !l.trim().is_empty()) {
                let _ = sh(&[
                    "runc",
                    "--root",
                    &root.display().to_string(),
                    "delete",
                    "--force",
                    id.trim(),
                ]);
            }
        }
    }
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let base = h.path().join(PREFIX);
            let mut dirs = Vec::new();
            collect_dirs(&base, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn teardown(dir: &Path, st: &DemoState) -> Result<()> {
    // Containers first, through each node's API, while the agents run.
    let node_prefix = format!("{PREFIX}-n");
    let nodes = st
        .namespaces
        .iter()
        .filter(|n| n.starts_with(&node_prefix))
        .count();
    for i in 1..=nodes {
        let host = format!(
            "unix://{}",
            dir.join(format!("node{i}/docker.sock")).display()
        );
        if let Ok(ids) = sh(&["docker", "-H", &host, "ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["docker", "-H", &host, "rm", "-f"];
                args.extend(ids);
                let _ = sh(&args);
            }
        }
    }
    for pid in &st.pids {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    thread::sleep(Duration::from_millis(300));
    for pid in &st.pids {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    cleanup_containers(dir, nodes);
    for ns in st.namespaces.iter().rev() {
        let _ = sh(&["ip", "netns", "del", ns]);
    }
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
    let bytes = match fs::read(state_path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no demo is running (nothing in {})", dir.display());
            return Ok(());
        }
        Err(e) => return Err(e).context("read demo state"),
    };
    let st: DemoState = serde_json::from_slice(&bytes).context("parse demo state")?;
    teardown(dir, &st)?;
    fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    println!("demo stopped and removed");
    Ok(())
}
