//! Unpacking one layer tar (gzip or plain) into a directory of its own
//! that overlayfs can use as a lowerdir.
//!
//! Everything a root filesystem needs is kept: modes with setuid bits,
//! owners, mtimes, xattrs (`security.capability` on ping), hard links,
//! symlinks, device nodes and fifos. OCI whiteouts become overlayfs ones:
//! `.wh.NAME` a 0/0 character device `NAME`, `.wh..wh..opq` the xattr
//! `trusted.overlay.opaque=y` on its directory.
//!
//! Nothing may land outside the directory: `..` that climbs out, a path
//! through a symlink, a hard link to outside, or a relative symlink that
//! points above the root (Docker's `breakoutError` rule) fails the layer.
//! The uncompressed stream is hashed on the way, giving the diff ID.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{self, BufRead, BufReader, Read},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::sys::{
    stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat},
    time::TimeSpec,
};
use tar::EntryType;
use tracing::{debug, warn};

use super::hash::HashingReader;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("read layer archive")]
    Read(#[source] io::Error),
    #[error("zstd-compressed layers are not supported")]
    Zstd,
    #[error("path {0:?} escapes the layer directory")]
    Escape(String),
    #[error("{op} {path}")]
    Fs {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("unpack cancelled")]
    Cancelled,
}

/// What unpacking found.
#[derive(Debug)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of regular files.
    pub size: u64,
}

fn fs_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Fs {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn nix_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> UnpackError + 'a {
    move |e| fs_err(op, path)(io::Error::from(e))
}

/// Unpacks `input` (compression sniffed from its first bytes, as Docker
/// does) into `dest`, an existing empty directory. `cancel` stops it
/// between entries.
pub fn unpack_layer<R: Read>(
    input: R,
    dest: &Path,
    cancel: &AtomicBool,
) -> Result<Unpacked, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let head = buffered.fill_buf().map_err(UnpackError::Read)?;
    let plain: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(UnpackError::Zstd);
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader::new(plain);
    let mut dirs = Vec::new();
    let mut size = 0;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            if cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            let mut entry = entry.map_err(UnpackError::Read)?;
            size += apply(&mut entry, dest, &mut dirs)?;
        }
    }
    let diff_id = hashing.finish().map_err(UnpackError::Read)?;
    // Directory mtimes last: creating their children changed them.
    for (dir, mtime) in dirs.iter().rev() {
        set_mtime(dir, *mtime)?;
    }
    Ok(Unpacked { diff_id, size })
}

/// Owner, mode and times of an entry, from its header.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    /// Seconds and nanoseconds (PAX headers carry the fraction).
    mtime: (i64, i64),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn apply<R: Read>(
    entry: &mut tar::Entry<R>,
    root: &Path,
    dirs: &mut Vec<(PathBuf, (i64, i64))>,
) -> Result<u64, UnpackError> {
    let path = entry.path().map_err(UnpackError::Read)?.into_owned();
    let shown = path.display().to_string();
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(0);
    }
    let meta = header_meta(entry)?;
    let rel = clean(&path).ok_or_else(|| UnpackError::Escape(shown.clone()))?;
    let Some((name, parents)) = rel.split_last() else {
        // `./`: the layer's root directory itself.
        if kind.is_dir() {
            set_meta(root, &meta, false)?;
            dirs.push((root.to_path_buf(), meta.mtime));
        }
        return Ok(0);
    };
    let parent = ensure_parent(root, parents, &shown)?;
    let name_str = name.to_string_lossy();
    if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
        if name_str == OPAQUE {
            return set_xattr(&parent, OPAQUE_XATTR, b"y").map(|()| 0);
        }
        if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
            debug!(path = %shown, "skipping whiteout metadata entry");
            return Ok(0);
        }
        let target = parent.join(hidden);
        remove_existing(&target, false)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(nix_err("make whiteout", &target))?;
        std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
            .map_err(fs_err("chown", &target))?;
        return Ok(0);
    }
    let target = parent.join(name);
    remove_existing(&target, kind.is_dir())?;
    match kind {
        EntryType::Directory => {
            match fs::create_dir(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fs_err("create dir", &target)(e)),
            }
            set_meta(&target, &meta, false)?;
            dirs.push((target, meta.mtime));
            Ok(0)
        }
        EntryType::Symlink => {
            let link = link_name(entry, &shown)?;
            check_symlink(parents, &link, &shown)?;
            std::os::unix::fs::symlink(&link, &target).map_err(fs_err("symlink", &target))?;
            set_meta(&target, &meta, true)?;
            set_mtime(&target, meta.mtime)?;
            Ok(0)
        }
        EntryType::Link => {
            let link = link_name(entry, &shown)?;
            let src = resolve_existing(root, &link, &shown)?;
            fs::hard_link(&src, &target).map_err(fs_err("hard link", &target))?;
            Ok(0)
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let (sflag, dev) = match kind {
                EntryType::Char => (SFlag::S_IFCHR, device(entry)?),
                EntryType::Block => (SFlag::S_IFBLK, device(entry)?),
                _ => (SFlag::S_IFIFO, 0),
            };
            mknod(&target, sflag, Mode::from_bits_truncate(0o600), dev)
                .map_err(nix_err("mknod", &target))?;
            set_meta(&target, &meta, false)?;
            set_mtime(&target, meta.mtime)?;
            Ok(0)
        }
        // Regular files, and what POSIX says to treat as one.
        _ => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(fs_err("create", &target))?;
            let n = io::copy(entry, &mut f).map_err(UnpackError::Read)?;
            drop(f);
            set_meta(&target, &meta, false)?;
            set_mtime(&target, meta.mtime)?;
            Ok(n)
        }
    }
}

fn header_meta<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta, UnpackError> {
    let h = entry.header();
    let num = |v: io::Result<u64>| v.map_err(UnpackError::Read);
    let uid = u32::try_from(num(h.uid())?).unwrap_or(0);
    let gid = u32::try_from(num(h.gid())?).unwrap_or(0);
    let mode = num(h.mode().map(u64::from))? as u32;
    let mut mtime = (i64::try_from(num(h.mtime())?).unwrap_or(0), 0);
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Read)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Read)?;
            match ext.key() {
                Ok("mtime") => mtime = pax_time(ext.value_bytes()).unwrap_or(mtime),
                Ok(k) => {
                    if let Some(name) = k.strip_prefix(PAX_XATTR) {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
                Err(_) => {}
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// A PAX time, `1796114633.959389557`: seconds and nanoseconds.
fn pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10_i64.pow(9 - digits.len() as u32)
    };
    Some((secs.parse().ok()?, nanos))
}

fn link_name<R: Read>(entry: &tar::Entry<R>, shown: &str) -> Result<PathBuf, UnpackError> {
    entry
        .link_name()
        .map_err(UnpackError::Read)?
        .map(|l| l.into_owned())
        .filter(|l| !l.as_os_str().is_empty())
        .ok_or_else(|| UnpackError::Escape(format!("{shown} (link without a target)")))
}

fn device<R: Read>(entry: &tar::Entry<R>) -> Result<u64, UnpackError> {
    let h = entry.header();
    let major = h.device_major().map_err(UnpackError::Read)?.unwrap_or(0);
    let minor = h.device_minor().map_err(UnpackError::Read)?.unwrap_or(0);
    Ok(makedev(u64::from(major), u64::from(minor)))
}

/// The components of `path` below the root, `..` applied lexically;
/// `None` if it climbs above the root.
fn clean(path: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Walks (creating as needed) the directories above an entry, refusing
/// to pass through a symlink: a layer cannot write through one of its
/// own links to outside its directory.
fn ensure_parent(root: &Path, parents: &[OsString], shown: &str) -> Result<PathBuf, UnpackError> {
    let mut p = root.to_path_buf();
    for c in parents {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Escape(format!("{shown} (through a symlink)")));
            }
            Ok(_) => {
                return Err(fs_err("parent is not a directory", &p)(io::Error::from(
                    io::ErrorKind::NotADirectory,
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(fs_err("create dir", &p))?;
            }
            Err(e) => return Err(fs_err("stat", &p)(e)),
        }
    }
    Ok(p)
}

/// The target of a hard link: inside the layer, already unpacked, not a
/// directory, reached without symlinks.
fn resolve_existing(root: &Path, link: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
    let escape = || UnpackError::Escape(format!("{shown} (hard link to {})", link.display()));
    let rel = clean(link).ok_or_else(escape)?;
    let (last, parents) = rel.split_last().ok_or_else(escape)?;
    let mut p = root.to_path_buf();
    for c in parents {
        p.push(c);
        if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            return Err(escape());
        }
    }
    p.push(last);
    match fs::symlink_metadata(&p) {
        Ok(m) if !m.is_dir() => Ok(p),
        _ => Err(escape()),
    }
}

/// Docker's rule for symlinks: the target, taken relative to the link's
/// directory, must not climb above the root.
fn check_symlink(parents: &[OsString], link: &Path, shown: &str) -> Result<(), UnpackError> {
    let mut depth = parents.len();
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    UnpackError::Escape(format!("{shown} (symlink to {})", link.display()))
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes room for an entry: a later entry replaces an earlier one, except
/// that a directory stays a directory.
fn remove_existing(target: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(target).map_err(fs_err("remove", target)),
        Ok(_) => fs::remove_file(target).map_err(fs_err("remove", target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fs_err("stat", target)(e)),
    }
}

/// Owner first (chown clears setuid bits and file capabilities), then the
/// mode, then xattrs.
fn set_meta(path: &Path, meta: &Meta, symlink: bool) -> Result<(), UnpackError> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
        .map_err(fs_err("chown", path))?;
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(fs_err("chmod", path))?;
    }
    for (name, value) in &meta.xattrs {
        if name.starts_with("trusted.overlay.") {
            // Only the unpacker speaks to overlayfs.
            warn!(path = %path.display(), xattr = %name, "ignoring overlayfs xattr in layer");
            continue;
        }
        set_xattr(path, name, value)?;
    }
    Ok(())
}

/// Sets an xattr on the path itself (never a symlink's target). Like
/// Docker, a filesystem that refuses one (EPERM, ENOTSUP) only warns.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    match xattr::set(path, OsStr::new(name), value) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                nix::errno::Errno::EPERM | nix::errno::Errno::ENOTSUP
            ) && name != OPAQUE_XATTR =>
        {
            warn!(path = %path.display(), xattr = %name, error = %e, "xattr not kept");
            Ok(())
        }
        Err(e) => Err(fs_err("set xattr", path)(e)),
    }
}

fn set_mtime(path: &Path, (secs, nanos): (i64, i64)) -> Result<(), UnpackError> {
    let t = TimeSpec::new(secs, nanos);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(nix_err("set mtime", path))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    /// Builds layer tars for tests.
    pub struct LayerBuilder {
        b: tar::Builder<Vec<u8>>,
    }

    impl LayerBuilder {
        pub fn new() -> Self {
            Self {
                b: tar::Builder::new(Vec::new()),
            }
        }

        fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h
        }

        pub fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(EntryType::Directory, 0o755, 0);
            self.b
                .append_data(&mut h, path, io::empty())
                .expect("append dir");
            self
        }

        pub fn file(self, path: &str, data: &[u8]) -> Self {
            self.file_with(path, data, 0o644, 0, 0)
        }

        pub fn file_with(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
            let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            self.b.append_data(&mut h, path, data).expect("append file");
            self
        }

        /// A file whose name the builder would refuse (`..`).
        pub fn raw_file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, 0o644, data.len() as u64);
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            self.b.append(&h, data).expect("append raw");
            self
        }

        pub fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777, 0);
            self.b
                .append_link(&mut h, path, target)
                .expect("append link");
            self
        }

        pub fn xattr_file(mut self, path: &str, name: &str, value: &[u8]) -> Self {
            let key = format!("{PAX_XATTR}{name}");
            self.b
                .append_pax_extensions([(key.as_str(), value)])
                .expect("pax");
            self.file(path, b"x")
        }

        pub fn char_dev(mut self, path: &str, major: u32, minor: u32) -> Self {
            let mut h = Self::header(EntryType::Char, 0o666, 0);
            h.set_device_major(major).expect("major");
            h.set_device_minor(minor).expect("minor");
            self.b
                .append_data(&mut h, path, io::empty())
                .expect("append dev");
            self
        }

        pub fn finish(self) -> Vec<u8> {
            self.b.into_inner().expect("tar")
        }
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = unpack_layer(data, dir.path(), &AtomicBool::new(false));
        (dir, r)
    }

    #[test]
    fn files_links_whiteouts_and_metadata() {
        let tar = LayerBuilder::new()
            .dir("etc/")
            .file_with("etc/secret", b"s3cret", 0o4750, 1000, 1001)
            .link(EntryType::Link, "etc/hard", "etc/secret")
            .link(EntryType::Symlink, "etc/sym", "/usr/bin/x")
            .link(EntryType::Symlink, "etc/rel", "../bin/sh")
            .xattr_file(
                "bin/ping",
                "security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            )
            .file(".wh.gone", b"")
            .file("var/.wh..wh..opq", b"")
            .char_dev("dev/null", 1, 3)
            .finish();
        let gz = gzip(&tar);
        let (dir, r) = unpack(&gz);
        let u = r.expect("unpack");
        assert_eq!(
            u.diff_id,
            super::super::hash::digest_of(&tar),
            "diff ID is the uncompressed digest"
        );
        assert_eq!(u.size, 6 + 1);
        let root = dir.path();
        let secret = fs::metadata(root.join("etc/secret")).expect("secret");
        assert_eq!(secret.mode() & 0o7777, 0o4750);
        assert_eq!((secret.uid(), secret.gid()), (1000, 1001));
        assert_eq!(secret.mtime(), 1_700_000_000);
        let hard = fs::metadata(root.join("etc/hard")).expect("hard");
        assert_eq!(hard.ino(), secret.ino(), "hard link shares the inode");
        assert_eq!(
            fs::read_link(root.join("etc/sym")).expect("sym"),
            PathBuf::from("/usr/bin/x")
        );
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax_time(b"7"), Some((7, 0)));
        let cap = xattr::get(root.join("bin/ping"), "security.capability").expect("get");
        assert!(cap.is_some(), "file capability kept");
        let wh = fs::symlink_metadata(root.join("gone")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!root.join(".wh.gone").exists());
        let opq = xattr::get(root.join("var"), OPAQUE_XATTR).expect("get");
        assert_eq!(opq.as_deref(), Some(&b"y"[..]));
        assert!(!root.join("var/.wh..wh..opq").exists());
        let null = fs::symlink_metadata(root.join("dev/null")).expect("null");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.mode() & 0o777, 0o666);
        let etc = fs::metadata(root.join("etc")).expect("etc");
        assert_eq!(
            etc.mtime(),
            1_700_000_000,
            "directory mtimes set after children"
        );
    }

    #[test]
    fn plain_tar_and_later_entries_replace() {
        let tar = LayerBuilder::new()
            .file("a", b"one")
            .file("a", b"two")
            .finish();
        let (dir, r) = unpack(&tar);
        r.expect("plain tar");
        assert_eq!(fs::read(dir.path().join("a")).expect("a"), b"two");
    }

    #[test]
    fn escapes_are_refused() {
        let escape = |tar: Vec<u8>| {
            let outside = tempfile::tempdir().expect("outside");
            let (dir, r) = unpack(&tar);
            assert!(
                matches!(r, Err(UnpackError::Escape(_))),
                "expected escape, got {r:?}"
            );
            drop(dir);
            drop(outside);
        };
        escape(LayerBuilder::new().raw_file("../evil", b"x").finish());
        escape(
            LayerBuilder::new()
                .link(EntryType::Symlink, "a/b", "../../etc")
                .finish(),
        );
        escape(
            LayerBuilder::new()
                .link(EntryType::Symlink, "l", "/tmp")
                .file("l/evil", b"x")
                .finish(),
        );
        escape(
            LayerBuilder::new()
                .link(EntryType::Link, "h", "../../etc/passwd")
                .finish(),
        );
        // Inside the root, `..` is fine.
        let (dir, r) = unpack(&LayerBuilder::new().raw_file("a/../b", b"x").finish());
        r.expect("lexical ..");
        assert!(dir.path().join("b").exists());
    }

    #[test]
    fn zstd_and_garbage() {
        let (_d, r) = unpack(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]);
        assert!(matches!(r, Err(UnpackError::Zstd)));
        let (_d, r) = unpack(&gzip(
            b"not a tar at all, but long enough to fill a header block?",
        ));
        assert!(r.is_err(), "garbage is refused");
    }
}
