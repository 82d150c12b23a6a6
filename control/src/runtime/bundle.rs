//! A container's bundle: the OCI spec (`config.json`) from its record and
//! its image, and the `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`
//! files dockerd writes for each container.

use std::path::{Path, PathBuf};

use bollard_stubs::models::HostConfig;

use super::{
    Runtime, RuntimeError,
    container::{self, BridgeEndpoint, ContainerRecord, ImageDefaults},
    io_err,
    rootfs::Rootfs,
    spec, user,
};

impl Runtime {
    pub(super) fn bundle_spec(
        &self,
        rec: &ContainerRecord,
        dir: &Path,
        rootfs: &Rootfs,
        net: spec::NetNamespace,
        ep: Option<&BridgeEndpoint>,
        overlays: &[crate::overlay::OverlayEndpoint],
    ) -> Result<oci_spec::runtime::Spec, RuntimeError> {
        let c = &rec.config;
        let hostname = c.hostname.clone().unwrap_or_default();
        let read = |p: &str| std::fs::read_to_string(rootfs.target.join(p)).unwrap_or_default();
        let u = user::resolve(
            c.user.as_deref().unwrap_or(""),
            &read("etc/passwd"),
            &read("etc/group"),
        )
        .map_err(RuntimeError::Invalid)?;
        let cwd = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        if cwd != "/" {
            // dockerd creates a missing working dir.
            let rel = cwd.trim_start_matches('/');
            let p = rootfs.target.join(rel);
            if !p.exists() {
                std::fs::create_dir_all(&p).map_err(io_err(format!("create working dir {cwd}")))?;
            }
        }
        let etc = self.write_etc_files(rec, dir, ep, overlays, net == spec::NetNamespace::Host)?;
        let h = &rec.host_config;
        let tty = c.tty.unwrap_or(false);
        let binds = h
            .binds
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|b| container::parse_bind(b))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = vec![rec.path.clone()];
        args.extend(rec.args.iter().cloned());
        let input = spec::SpecInput {
            args,
            env: container::process_env(
                c.env.as_deref().unwrap_or_default(),
                &hostname,
                &u.home,
                tty,
            ),
            cwd,
            user: u.user,
            tty,
            hostname,
            domainname: c.domainname.clone().filter(|d| !d.is_empty()),
            readonly_rootfs: h.readonly_rootfs.unwrap_or(false),
            net,
            cgroups_path: format!(
                "{}/{}",
                self.cfg.cgroup_parent.trim_end_matches('/'),
                rec.id
            ),
            limits: spec::Limits {
                memory: h.memory,
                memory_swap: h.memory_swap,
                nano_cpus: h.nano_cpus,
                cpu_shares: h.cpu_shares,
                cpu_quota: h.cpu_quota,
                cpu_period: h.cpu_period,
                pids_limit: h.pids_limit,
            },
            cap_add: h.cap_add.clone().unwrap_or_default(),
            cap_drop: h.cap_drop.clone().unwrap_or_default(),
            etc_files: etc,
            binds,
        };
        spec::build(&input).map_err(|e| RuntimeError::Invalid(e.to_string()))
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of a container,
    /// written in its dir and bind-mounted, as dockerd does.
    pub(super) fn write_etc_files(
        &self,
        rec: &ContainerRecord,
        dir: &Path,
        ep: Option<&BridgeEndpoint>,
        overlays: &[crate::overlay::OverlayEndpoint],
        host_net: bool,
    ) -> Result<Vec<(PathBuf, &'static str)>, RuntimeError> {
        let hostname = rec.config.hostname.clone().unwrap_or_default();
        let mut hosts = String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        );
        for extra in rec.host_config.extra_hosts.as_deref().unwrap_or_default() {
            if let Some((h, ip)) = extra.split_once(':') {
                hosts.push_str(&format!("{ip}\t{h}\n"));
            }
        }
        if let Some(ep) = ep {
            hosts.push_str(&format!("{}\t{hostname}\n", ep.ip));
        }
        for o in overlays {
            hosts.push_str(&format!("{}\t{hostname}\n", o.ip));
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = resolv_conf(&host_resolv, &rec.host_config, host_net);
        let files = [
            ("hosts", hosts, "/etc/hosts"),
            ("hostname", format!("{hostname}\n"), "/etc/hostname"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
        ];
        let mut out = Vec::new();
        for (file, content, dest) in files {
            let p = dir.join(file);
            std::fs::write(&p, content).map_err(io_err(format!("write {}", p.display())))?;
            out.push((p, dest));
        }
        Ok(out)
    }
}

/// What a container inherits from its image's config.
pub(super) fn image_defaults(cfg: &oci_spec::image::ImageConfiguration) -> ImageDefaults {
    let Some(c) = cfg.config() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        user: c.user().clone(),
        env: c.env().clone().unwrap_or_default(),
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        working_dir: c.working_dir().clone(),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        stop_signal: c.stop_signal().clone(),
        volumes: c.volumes().clone().unwrap_or_default(),
    }
}

/// A container's resolv.conf: `--dns`, `--dns-search`, `--dns-option`
/// when given, else the node's without loopback nameservers (unreachable
/// from another namespace), as dockerd does.
fn resolv_conf(host: &str, h: &HostConfig, host_net: bool) -> String {
    let mut out = String::new();
    let dns = h.dns.clone().unwrap_or_default();
    let search = h.dns_search.clone().unwrap_or_default();
    let opts = h.dns_options.clone().unwrap_or_default();
    if dns.is_empty() && search.is_empty() && opts.is_empty() {
        for line in host.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("nameserver")
                && !host_net
                && words
                    .next()
                    .is_some_and(|ip| ip.starts_with("127.") || ip == "::1")
            {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        return out;
    }
    for ns in &dns {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\n";
        let h = HostConfig::default();
        assert_eq!(
            resolv_conf(host, &h, false),
            "nameserver 192.0.2.53\nsearch example.test\n"
        );
        assert_eq!(resolv_conf(host, &h, true), host);
        let h = HostConfig {
            dns: Some(vec!["192.0.2.1".into()]),
            dns_search: Some(vec!["a.test".into()]),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(host, &h, false),
            "nameserver 192.0.2.1\nsearch a.test\n"
        );
    }
}
