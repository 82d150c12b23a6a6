//! What the privileged test binaries share: namespaces of their own under
//! [`DIR`], named `<NS_PREFIX><pid>-<n>-<tag>` after the including binary's
//! `NS_PREFIX`, removed by a guard also when a test panics (and, when a run
//! was killed before its guards ran, by the next run), and commands run
//! inside them through `nsenter --net=PATH`.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use nix::unistd::geteuid;
use swarmnet_dataplane::{Netlink, netns};

use crate::NS_PREFIX;

/// Where the tests' namespace files live; one file per namespace.
pub const DIR: &str = "/run/swarmnet-dataplane-tests";

fn require_root() {
    assert!(
        geteuid().is_root(),
        "this test needs root: it creates network namespaces (unshare, bind mounts) and \
         links in them. Run it as root, e.g. through scripts/test.sh"
    );
}

/// A namespace bind-mounted under [`DIR`], removed on drop (with the links
/// inside it), also when the test panics.
pub struct Ns {
    path: PathBuf,
}

impl Ns {
    pub fn create(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(DIR).join(format!("{NS_PREFIX}{}-{n}-{tag}", std::process::id()));
        netns::create(&path).unwrap_or_else(|e| panic!("create {}: {e:?}", path.display()));
        Ns { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `nsenter --net=PATH PROG ARGS`, whatever its outcome.
    pub fn try_run(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("run `nsenter {prog}`: {e} (util-linux, iproute2 installed?)")
            })
    }

    /// `nsenter --net=PATH PROG ARGS`, its stdout; panics with its stderr if
    /// it fails.
    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        let out = self.try_run(prog, args);
        assert!(
            out.status.success(),
            "`{prog} {}` in {} failed: {}{}",
            args.join(" "),
            self.path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        self.run("ip", args)
    }

    /// One echo reply from `addr` within 5 s (ping retries each second).
    pub fn ping(&self, addr: Ipv4Addr) {
        self.run("ping", &["-c", "1", "-w", "5", "-q", &addr.to_string()]);
    }

    pub async fn netlink(&self) -> Netlink {
        Netlink::connect_in(&self.path)
            .await
            .unwrap_or_else(|e| panic!("netlink in {}: {e:?}", self.path.display()))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.path) {
            eprintln!("cleanup: remove {}: {e:?}", self.path.display());
        }
    }
}

/// Removes namespaces left by earlier runs that were killed before their
/// guards ran: `<NS_PREFIX><pid>-...` whose process is gone.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir(DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            drop(Ns { path: entry.path() });
        }
    }
}

pub fn setup() {
    require_root();
    remove_stale_namespaces();
}
