//! Network namespaces kept alive by a bind mount, the way `ip netns add`
//! keeps them under `/run/netns`, but at any path (the agent keeps them under
//! its exec-root, e.g. `/run/swarmnet/netns/<id>`).
//!
//! `setns` and `unshare` change only the calling thread, so everything here
//! that enters a namespace does it on a short-lived thread of its own: the
//! caller's thread never changes namespace. These calls block for the time a
//! thread takes to start and finish (well under a millisecond, plus the
//! work); async callers wrap them in `spawn_blocking`.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    thread,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use tracing::{debug, info};

use crate::link::{LinkError, Netlink};

/// The calling thread's own network namespace, as a file to bind-mount.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Errors of the namespace functions; every one names the namespace path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("{} already holds a network namespace", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not a network namespace mount", path.display())]
    NotNetns { path: PathBuf },
    #[error("create directory {} for namespace files", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create the mount point {}", path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolve {}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spawn a thread for namespace {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{call} for namespace {} (needs CAP_SYS_ADMIN)", path.display())]
    Syscall {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("open namespace {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("remove the mount point {}", path.display())]
    Unlink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("set loopback up in namespace {}", path.display())]
    Loopback {
        path: PathBuf,
        #[source]
        source: Box<LinkError>,
    },
}

/// Creates a network namespace and keeps it alive with a bind mount of its
/// nsfs file onto `path` (`ip netns add`), with loopback up inside
/// (`ip -n NS link set dev lo up`). Parent directories are created; an empty
/// file left at `path` by a crash is reused. Errors if `path` already holds a
/// namespace. If a step fails, nothing of it is left: no mount, no file that
/// this call created.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if is_netns(path) {
        return Err(NetnsError::Exists { path: path.into() });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| NetnsError::CreateDir {
            path: dir.into(),
            source,
        })?;
    }
    let existed = path.exists();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| NetnsError::CreateFile {
            path: path.into(),
            source,
        })?;

    let made = on_thread(path, || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Syscall {
            call: "unshare(CLONE_NEWNET)",
            path: path.into(),
            source,
        })?;
        // `mount --bind /proc/thread-self/ns/net PATH`
        mount(
            Some(THREAD_NETNS),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NetnsError::Syscall {
            call: "mount(MS_BIND)",
            path: path.into(),
            source,
        })?;
        loopback_up().map_err(|source| NetnsError::Loopback {
            path: path.into(),
            source: Box::new(source),
        })
    })
    .and_then(|r| r);

    if let Err(error) = made {
        // Undo whatever got done: the mount (if any) and the file we made.
        let _ = umount2(path, MntFlags::MNT_DETACH);
        if !existed {
            let _ = fs::remove_file(path);
        }
        return Err(error);
    }
    info!(path = %path.display(), "network namespace created");
    Ok(())
}

/// `ip link set dev lo up` in the calling thread's namespace, through the
/// crate's netlink wrapper on a current-thread runtime of this thread (it is
/// a fresh thread, never a runtime's).
fn loopback_up() -> Result<(), LinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| LinkError::Runtime { source })?;
    rt.block_on(async {
        let nl = Netlink::connect()?;
        let up = nl.set_up("lo").await;
        nl.close().await;
        up
    })
}

/// Removes the namespace mounted at `path`: detaches the bind mount
/// (`umount2(MNT_DETACH)`, as `ip netns del`) and unlinks the file. The
/// namespace itself goes away, with the devices in it, once nothing else
/// holds it (a process, an open fd, a socket). A missing path is Ok; so is a
/// plain file left without its mount. Anything else mounted there is refused.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let mut detached = false;
    // A namespace mounted twice on the same path (by someone else) stacks;
    // detach until none is left.
    while is_netns(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|source| NetnsError::Syscall {
            call: "umount2(MNT_DETACH)",
            path: path.into(),
            source,
        })?;
        detached = true;
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NetnsError::Resolve {
                path: path.into(),
                source,
            });
        }
        Ok(meta) if !meta.is_file() || is_mount_point(path) => {
            return Err(NetnsError::NotNetns { path: path.into() });
        }
        Ok(_) => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetnsError::Unlink {
                    path: path.into(),
                    source,
                });
            }
        },
    }
    if detached {
        info!(path = %path.display(), "network namespace removed");
    } else {
        debug!(path = %path.display(), "no network namespace to remove");
    }
    Ok(())
}

/// Whether a network namespace is bind-mounted at `path`: an nsfs mount of a
/// `net:[...]` inode, per `/proc/self/mountinfo`. A magic link such as
/// `/proc/self/ns/net` is not a mount and gives false.
pub fn is_netns(path: &Path) -> bool {
    mounts_at(path).is_some_and(|mounts| {
        mounts
            .last()
            .is_some_and(|m| m.fstype == "nsfs" && m.root.starts_with("net:["))
    })
}

/// Runs `f` on a new OS thread that has entered the namespace at `path`
/// (`nsenter --net=PATH`), and returns what it returns. The caller's thread
/// stays in its namespace. A panic in `f` is resumed on the caller's thread.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    on_thread(path, move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Syscall {
            call: "setns(CLONE_NEWNET)",
            path: path.into(),
            source,
        })?;
        drop(ns);
        Ok(f())
    })
    .and_then(|r| r)
}

/// Runs `f` on a new scoped thread and waits for it; a panic is resumed here.
fn on_thread<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, f)
            .map_err(|source| NetnsError::Spawn {
                path: path.into(),
                source,
            })?;
        Ok(handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// One line of `/proc/self/mountinfo`, the fields used here.
#[derive(Debug, PartialEq, Eq)]
struct MountInfo {
    /// Field 4: the root of the mount within its filesystem; for nsfs,
    /// `net:[4026532283]`.
    root: String,
    mount_point: PathBuf,
    fstype: String,
}

/// The mounts whose mount point is `path` (made absolute, parent symlinks
/// resolved), in mount order; `None` when `path` cannot be resolved.
fn mounts_at(path: &Path) -> Option<Vec<MountInfo>> {
    let target = absolute(path).ok()?;
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    Some(
        table
            .lines()
            .filter_map(parse_mountinfo)
            .filter(|m| m.mount_point == target)
            .collect(),
    )
}

fn is_mount_point(path: &Path) -> bool {
    mounts_at(path).is_some_and(|m| !m.is_empty())
}

/// `path` made absolute with its parent directory canonicalized, the file
/// name kept as it is (it is the mount point itself, not to be followed).
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(fs::canonicalize(parent)?.join(name))
}

/// Parses `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`
/// (proc(5)): root is field 4, the mount point field 5, the filesystem type
/// the first field after the `-` separator.
fn parse_mountinfo(line: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    let root = unescape(fields.nth(3)?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let fstype = fields.skip_while(|f| *f != "-").nth(1)?.to_owned();
    Some(MountInfo {
        root,
        mount_point,
        fstype,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134` for a backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_nsfs_line() {
        let line = "612 29 0:4 net:[4026532283] /run/swarmnet/netns/a\\040b rw \
                    shared:5 - nsfs nsfs rw";
        assert_eq!(
            parse_mountinfo(line),
            Some(MountInfo {
                root: "net:[4026532283]".into(),
                mount_point: "/run/swarmnet/netns/a b".into(),
                fstype: "nsfs".into(),
            })
        );
    }

    #[test]
    fn parses_a_line_without_optional_fields() {
        let line = "36 35 98:0 /mnt1 /mnt2 rw,noatime - ext3 /dev/root rw,errors=continue";
        let m = parse_mountinfo(line).expect("parse");
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.fstype, "ext3");
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"a\040b\011c\134d"), "a b\tc\\d");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn a_magic_link_is_not_a_netns_mount() {
        assert!(!is_netns(Path::new("/proc/self/ns/net")));
        assert!(!is_netns(Path::new("/nonexistent/dir/ns")));
    }
}
