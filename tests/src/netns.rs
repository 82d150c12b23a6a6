//! Named network namespaces (`ip netns add`), and running code inside one.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};

use crate::util::{run_ok, run_timeout};

const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `ip netns add` mounts a namespace.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace, deleted on drop (which also deletes the
/// interfaces inside it, veths with their peers).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME` and `ip -n NAME link set lo up`.
    #[track_caller]
    pub fn create(name: &str) -> Self {
        run_ok(Command::new("ip").args(["netns", "add", name]), IP_TIMEOUT);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip_ok(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Output {
        ip(&self.name, args)
    }

    /// `ip -n NAME ARGS...`, panicking unless it succeeds; returns stdout.
    #[track_caller]
    pub fn ip_ok(&self, args: &[&str]) -> String {
        ip_ok(&self.name, args)
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// `ip -n NS ARGS...`.
pub fn ip(ns: &str, args: &[&str]) -> Output {
    run_timeout(Command::new("ip").arg("-n").arg(ns).args(args), IP_TIMEOUT)
}

/// `ip -n NS ARGS...`, panicking unless it succeeds; returns stdout.
#[track_caller]
pub fn ip_ok(ns: &str, args: &[&str]) -> String {
    run_ok(Command::new("ip").arg("-n").arg(ns).args(args), IP_TIMEOUT)
}

/// `/var/run/netns/NAME`.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// `ip netns del NAME`, ignoring a namespace that is already gone.
pub fn delete(name: &str) {
    if !path_of(name).exists() {
        return;
    }
    let out = run_timeout(Command::new("ip").args(["netns", "del", name]), IP_TIMEOUT);
    if !out.status.success() && path_of(name).exists() {
        eprintln!(
            "swarmnet-tests: could not delete netns {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Names of the namespaces `ip netns list` shows.
pub fn list() -> Vec<String> {
    let out = run_ok(Command::new("ip").args(["netns", "list"]), IP_TIMEOUT);
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Runs `f` on a fresh thread that has entered the network namespace
/// `name` (setns), and returns its result. Sockets created inside `f` stay
/// in that namespace when handed back to the caller, so this is how the
/// harness sends packets from a node. The caller's thread never changes
/// namespace.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    in_netns_path(&path_of(name), f)
}

/// [`in_netns`] for a namespace bind-mounted anywhere (e.g. a container's,
/// under its agent's exec root).
pub fn in_netns_path<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let file =
                File::open(path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
