//! The OCI runtime spec (`config.json`) of a container, with Docker's
//! defaults: its 14 capabilities, masked and read-only paths, the standard
//! mounts, cgroup limits, and the sysctls dockerd sets on containers with
//! a network namespace of their own. Pure: built from [`SpecInput`].

use std::path::PathBuf;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, Process, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Paths dockerd masks (moby `oci/defaults.go`).
const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNamespace {
    /// One the agent prepared (bridge, none).
    Path(PathBuf),
    /// The node's own (`--network host`).
    Host,
}

/// The resolved user a process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// cgroup limits, in Docker's units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes (`-m`).
    pub memory: Option<i64>,
    /// Memory + swap in bytes (`--memory-swap`; -1 unlimited).
    pub memory_swap: Option<i64>,
    /// Billionths of a CPU (`--cpus`).
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// A bind mount from the node into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone)]
pub struct SpecInput {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ProcessUser,
    pub tty: bool,
    pub hostname: String,
    pub domainname: Option<String>,
    pub readonly_rootfs: bool,
    pub net: NetNamespace,
    pub cgroups_path: String,
    pub limits: Limits,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` as files the
    /// agent wrote for this container.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    pub binds: Vec<Bind>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid capability: {0}")]
    Capability(String),
    #[error("build the runtime spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

/// Parses a capability as Docker accepts it: `NET_ADMIN`, `CAP_NET_ADMIN`,
/// any case.
fn capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>()
        .map_err(|_| SpecError::Capability(name.to_owned()))
}

/// Docker's defaults, plus `cap_add`, minus `cap_drop` (`ALL` works in
/// both).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Capabilities, SpecError> {
    let is_all = |v: &String| v.eq_ignore_ascii_case("ALL") || v.eq_ignore_ascii_case("CAP_ALL");
    let mut caps = Capabilities::new();
    if !drop.iter().any(is_all) {
        for c in DEFAULT_CAPS {
            caps.insert(capability(c)?);
        }
    }
    if add.iter().any(is_all) {
        return Err(SpecError::Capability(
            "ALL (privileged containers are not supported)".to_owned(),
        ));
    }
    for c in add {
        caps.insert(capability(c)?);
    }
    for c in drop.iter().filter(|c| !is_all(c)) {
        caps.remove(&capability(c)?);
    }
    Ok(caps)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(input: &SpecInput) -> Result<Vec<Mount>, SpecError> {
    let mut v = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    ];
    for (src, dest) in &input.etc_files {
        v.push(mount(
            dest,
            "bind",
            &src.display().to_string(),
            &["rbind", "rprivate"],
        )?);
    }
    for b in &input.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if b.readonly {
            opts.push("ro");
        }
        v.push(mount(
            &b.destination.display().to_string(),
            "bind",
            &b.source.display().to_string(),
            &opts,
        )?);
    }
    Ok(v)
}

fn resources(l: &Limits) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut r = LinuxResourcesBuilder::default().devices(vec![
        // Deny all; runc adds its default devices (null, zero, tty, ...).
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if l.memory.is_some() || l.memory_swap.is_some() {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(limit) = l.memory.filter(|m| *m > 0) {
            m = m.limit(limit);
        }
        if let Some(swap) = l.memory_swap.filter(|s| *s != 0) {
            m = m.swap(swap);
        }
        r = r.memory(m.build()?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(n) = l.nano_cpus.filter(|n| *n > 0) {
        // --cpus: a quota per 100 ms period, as dockerd computes it.
        const PERIOD: u64 = 100_000;
        cpu = cpu.period(PERIOD).quota(n * PERIOD as i64 / 1_000_000_000);
        any_cpu = true;
    } else {
        if let Some(q) = l.cpu_quota.filter(|q| *q > 0) {
            cpu = cpu.quota(q);
            any_cpu = true;
        }
        if let Some(p) = l.cpu_period.filter(|p| *p > 0) {
            cpu = cpu.period(p as u64);
            any_cpu = true;
        }
    }
    if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
        cpu = cpu.shares(s as u64);
        any_cpu = true;
    }
    if any_cpu {
        r = r.cpu(cpu.build()?);
    }
    if let Some(p) = l.pids_limit.filter(|p| *p > 0) {
        r = r.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    Ok(r.build()?)
}

/// A process of a container: its init, or one `docker exec` runs.
#[derive(Debug, Clone)]
pub struct ProcessInput {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ProcessUser,
    pub tty: bool,
    pub caps: Capabilities,
}

/// The `process` object (also what `runc exec --process` reads).
pub fn process(p: &ProcessInput) -> Result<Process, SpecError> {
    let mut user = UserBuilder::default().uid(p.user.uid).gid(p.user.gid);
    if !p.user.additional_gids.is_empty() {
        user = user.additional_gids(p.user.additional_gids.clone());
    }
    Ok(ProcessBuilder::default()
        .terminal(p.tty)
        .user(user.build()?)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(&p.cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(p.caps.clone())
                .effective(p.caps.clone())
                .permitted(p.caps.clone())
                .build()?,
        )
        .rlimits(Vec::new())
        .no_new_privileges(false)
        .oom_score_adj(0)
        .build()?)
}

/// The whole spec. The rootfs is `rootfs/` in the bundle.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let process = process(&ProcessInput {
        args: input.args.clone(),
        env: input.env.clone(),
        cwd: input.cwd.clone(),
        user: input.user.clone(),
        tty: input.tty,
        caps: capabilities(&input.cap_add, &input.cap_drop)?,
    })?;
    let ns = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
    ];
    let mut sysctl = std::collections::HashMap::new();
    if let NetNamespace::Path(p) = &input.net {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(p.clone())
                .build()?,
        );
        // What dockerd sets for containers with their own network
        // namespace: any port, and ping without NET_RAW.
        sysctl.insert(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "0".to_owned(),
        );
        sysctl.insert(
            "net.ipv4.ping_group_range".to_owned(),
            "0 2147483647".to_owned(),
        );
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources(&input.limits)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .sysctl(sysctl)
        .build()?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(input.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .hostname(&input.hostname)
        .mounts(mounts(input)?)
        .linux(linux)
        .build()?;
    if let Some(d) = &input.domainname {
        spec.set_domainname(Some(d.clone()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SpecInput {
        SpecInput {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: ProcessUser::default(),
            tty: false,
            hostname: "abc".into(),
            domainname: None,
            readonly_rootfs: false,
            net: NetNamespace::Path("/run/swarmnet/netns/abc".into()),
            cgroups_path: "/swarmnet/abc".into(),
            limits: Limits {
                memory: Some(64 << 20),
                nano_cpus: Some(500_000_000),
                ..Default::default()
            },
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["CAP_MKNOD".into()],
            etc_files: vec![("/x/hosts".into(), "/etc/hosts")],
            binds: Vec::new(),
        }
    }

    #[test]
    fn docker_defaults_and_overrides() {
        let spec = build(&input()).expect("spec");
        let v = serde_json::to_value(&spec).expect("json");
        let caps = v["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps");
        assert_eq!(caps.len(), 14, "14 defaults + NET_ADMIN - MKNOD: {caps:?}");
        assert!(caps.iter().any(|c| c == "CAP_NET_ADMIN"));
        assert!(!caps.iter().any(|c| c == "CAP_MKNOD"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        let nss = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(
            nss.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/swarmnet/netns/abc")
        );
        assert_eq!(
            v["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert!(
            v["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["destination"] == "/etc/hosts" && m["type"] == "bind")
        );
        assert_eq!(v["root"]["path"], "rootfs");
    }

    #[test]
    fn host_network_has_no_network_namespace() {
        let mut i = input();
        i.net = NetNamespace::Host;
        let v = serde_json::to_value(build(&i).expect("spec")).expect("json");
        let nss = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(!nss.iter().any(|n| n["type"] == "network"));
        assert!(
            v["linux"]["sysctl"]
                .as_object()
                .is_none_or(|m| m.is_empty())
        );
    }

    #[test]
    fn bad_capabilities_are_refused() {
        assert!(matches!(
            capabilities(&["NOPE".into()], &[]),
            Err(SpecError::Capability(_))
        ));
        assert!(
            capabilities(&[], &["ALL".into()])
                .expect("drop all")
                .is_empty()
        );
        assert!(capabilities(&["ALL".into()], &[]).is_err());
    }
}
