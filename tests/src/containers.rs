//! What the harness needs of nodes that run containers: the local registry
//! that serves the test images to every agent (its mirror), the cleanup
//! of everything a node's containers made (shims, runc containers, mounts,
//! cgroups) when the node goes, also after a failed test, and views of
//! that state for tests to assert on.
//!
//! Each node's agent keeps its runtime state under the node's dir
//! (`--exec-root <node>/run`, data in `<node>/data`) and its cgroups under
//! `/swarmnet-tests/<prefix>-n<i>`, so everything is found by path.

use std::{
    fs,
    io::{self, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
    thread,
    time::{Duration, Instant},
};

use crate::util::{run_timeout, show};

/// Env var: the registry storage root seeded by `scripts/registry.sh seed`.
pub const ENV_REGISTRY_DATA: &str = "SWARMNET_REGISTRY_DATA";
pub const DEFAULT_REGISTRY_DATA: &str = "/var/cache/swarmnet/registry";
/// Env var: the image cache of `scripts/images.sh` (docker-archive files).
pub const ENV_IMAGE_CACHE: &str = "SWARMNET_IMAGE_CACHE";
pub const DEFAULT_IMAGE_CACHE: &str = "/var/cache/swarmnet/images";
/// The registry's address on the hub's bridge.
pub const REGISTRY_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5000);
/// The bridge network of every node (`--bip`): each node has its own
/// bridge in its own namespace, as every Docker host has its default bridge range.
pub const BIP: &str = "198.18.1.1/24";
/// The parent of every test agent's cgroups.
pub const CGROUP_ROOT: &str = "swarmnet-tests";
/// The name shims give themselves (`ps` comm).
pub const SHIM_COMM: &str = "swarmnet-shim";

/// A docker-archive of a test image (`docker load -i`).
#[track_caller]
pub fn docker_archive(name: &str) -> PathBuf {
    let cache = std::env::var(ENV_IMAGE_CACHE).unwrap_or_else(|_| DEFAULT_IMAGE_CACHE.to_owned());
    let p = Path::new(&cache)
        .join("docker-archive")
        .join(format!("{name}.tar"));
    assert!(
        p.is_file(),
        "test image archive {} missing: run `bash scripts/images.sh` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The seeded registry storage.
#[track_caller]
pub fn registry_data() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var(ENV_REGISTRY_DATA).unwrap_or_else(|_| DEFAULT_REGISTRY_DATA.to_owned()),
    );
    assert!(
        dir.join(".seeded").is_file(),
        "registry storage {} is not seeded: run `bash scripts/registry.sh seed {}` \
         (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

/// A `docker-registry` (distribution) serving the seeded storage read-only
/// on [`REGISTRY_ADDR`] inside the hub namespace. Killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: SocketAddrV4,
}

impl Registry {
    #[track_caller]
    pub fn start(hub_netns: &str, dir: &Path) -> Self {
        let data = registry_data();
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: true\n    uploadpurging:\n      enabled: false\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: {REGISTRY_ADDR}\nhealth:\n  storagedriver:\n    enabled: false\n",
                data.display()
            ),
        )
        .expect("write registry config");
        let log = fs::File::create(dir.join("registry.log")).expect("registry log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", hub_netns, "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        crate::cluster::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show(&cmd)));
        let mut reg = Self {
            child,
            addr: REGISTRY_ADDR,
        };
        reg.wait_ready(hub_netns, dir);
        reg
    }

    fn wait_ready(&mut self, hub: &str, dir: &Path) {
        let start = Instant::now();
        let addr = self.addr;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            let up = crate::netns::in_netns(hub, move || {
                TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
            });
            if up {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {addr} within 20 s: {}",
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent flags that make this registry the nodes' Docker Hub
    /// mirror.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--registry-mirror".into(),
            format!("http://{}", self.addr),
            "--insecure-registry".into(),
            self.addr.to_string(),
        ]
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Once per test process: orphaned shims (their agent was killed) become
/// this process's children, so [`reap_shims`] can collect them instead of
/// leaving zombies to an init that may not reap.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("swarmnet-tests: PR_SET_CHILD_SUBREAPER: {e}");
        }
    });
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

/// Live shim processes whose command line names `dir` (a node's dir).
pub fn shim_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    pids()
        .into_iter()
        .filter(|p| comm(*p).as_deref() == Some(SHIM_COMM))
        .filter(|p| !is_zombie(*p) && cmdline(*p).contains(&needle))
        .collect()
}

/// Collects exited shims that are this process's children.
pub fn reap_shims() {
    let me = std::process::id();
    for pid in pids() {
        if comm(pid).as_deref() != Some(SHIM_COMM) || !is_zombie(pid) {
            continue;
        }
        let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 1..].to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if ppid == Some(me)
            && let Ok(p) = i32::try_from(pid)
        {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(p),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// The runc containers in the state dir `root` (`runc --root R list`).
pub fn runc_containers(root: &Path) -> Vec<String> {
    if !root.is_dir() {
        return Vec::new();
    }
    let out = run_timeout(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"]),
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// cgroup dirs of `parent` (e.g. `swarmnet-tests/sn123x0-n1`) in every
/// hierarchy, deepest first.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for h in hierarchies.flatten() {
        let base = h.path().join(parent);
        if base.is_dir() {
            walk_dirs(&base, &mut out);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_dirs(&e.path(), out);
            }
        }
    }
}

/// What a test process that died left under its cluster dir `dir`
/// (`/tmp/swarmnet-tests/<prefix>`): every runc state dir in it (a node's
/// `run/runc`, a benchmark's own), then each node as [`cleanup_node`].
pub fn cleanup_stale(dir: &Path) {
    let Some(prefix) = dir.file_name().and_then(|p| p.to_str()) else {
        return;
    };
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("runc"))
                && p.is_dir()
            {
                delete_runc_containers(&p);
            }
        }
    }
    for i in 1..=200 {
        let node = dir.join(format!("node{i}"));
        if !node.is_dir() {
            break;
        }
        cleanup_node(&node, &format!("{CGROUP_ROOT}/{prefix}-n{i}"));
    }
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn delete_runc_containers(root: &Path) {
    for id in runc_containers(root) {
        let out = run_timeout(
            Command::new("runc")
                .arg("--root")
                .arg(root)
                .args(["delete", "--force", &id]),
            Duration::from_secs(30),
        );
        if !out.status.success() {
            let _ = writeln!(
                io::stderr(),
                "swarmnet-tests: runc delete {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Removes everything the containers of a node made, its agent already
/// stopped: shims (killed by PID, ours only: their command line names the
/// node's dir), runc containers, mounts under the node's dir, cgroups.
pub fn cleanup_node(dir: &Path, cgroup_parent: &str) {
    for pid in shim_pids(dir) {
        if let Ok(p) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    delete_runc_containers(&dir.join("run").join("runc"));
    for m in mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("swarmnet-tests: umount {}: {e}", m.display());
        }
    }
    // A cgroup dir goes once its processes have; they were just killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<PathBuf> = cgroup_dirs(cgroup_parent)
            .into_iter()
            .filter(|d| fs::remove_dir(d).is_err())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            for d in left {
                eprintln!("swarmnet-tests: could not remove cgroup {}", d.display());
            }
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // The shared parent goes with the last node that used it.
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = fs::remove_dir(h.path().join(CGROUP_ROOT));
        }
    }
    reap_shims();
}
