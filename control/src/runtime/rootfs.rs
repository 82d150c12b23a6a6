//! A container's root filesystem: an overlayfs of its image's layers
//! (read-only lower dirs) and a writable upper dir of its own, mounted
//! at `rootfs/` in its bundle while it runs.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount overlay on {target} ({layers} layers)")]
    Mount {
        target: PathBuf,
        layers: usize,
        #[source]
        source: nix::Error,
    },
    #[error("the overlay options for {0} layers exceed a page; too many layers")]
    TooManyLayers(usize),
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The directories of one container's rootfs.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The mount point (`<bundle>/rootfs`).
    pub target: PathBuf,
    /// The container's writable layer.
    pub upper: PathBuf,
    /// overlayfs's work dir (same filesystem as `upper`).
    pub work: PathBuf,
    /// Lower dir for an image without layers.
    pub empty: PathBuf,
}

impl Rootfs {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            target: dir.join("rootfs"),
            upper: dir.join("diff"),
            work: dir.join("work"),
            empty: dir.join("empty"),
        }
    }

    /// `mount -t overlay overlay -o lowerdir=TOP:..:BASE,upperdir=U,workdir=W T`.
    /// `layers` come base first, as images list them.
    pub fn mount(&self, layers: &[PathBuf]) -> Result<(), RootfsError> {
        for d in [&self.target, &self.upper, &self.work] {
            std::fs::create_dir_all(d).map_err(|source| RootfsError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        if is_mounted(&self.target) {
            return Ok(());
        }
        let lower = if layers.is_empty() {
            std::fs::create_dir_all(&self.empty).map_err(|source| RootfsError::Dir {
                path: self.empty.clone(),
                source,
            })?;
            self.empty.display().to_string()
        } else {
            layers
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            self.upper.display(),
            self.work.display()
        );
        if opts.len() >= 4096 {
            return Err(RootfsError::TooManyLayers(layers.len()));
        }
        nix::mount::mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|source| RootfsError::Mount {
            target: self.target.clone(),
            layers: layers.len(),
            source,
        })
    }

    /// Unmounts the rootfs (lazily, so a straggling process cannot keep it
    /// busy); not mounted is fine.
    pub fn unmount(&self) -> Result<(), RootfsError> {
        unmount_all_under(&self.target)
    }
}

/// Unmounts `target` and anything mounted below it, deepest first.
pub fn unmount_all_under(target: &Path) -> Result<(), RootfsError> {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(target))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => return Err(RootfsError::Unmount { target: p, source }),
        }
    }
    Ok(())
}

/// Mount points of this mount namespace (`/proc/self/mountinfo`, field 5,
/// with its octal escapes undone).
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\04"), r"/x\04");
        assert!(mount_points().iter().any(|p| p == Path::new("/")));
    }
}
