//! The store's metadata (`images.json`): which images exist, their
//! layers, and the tag and digest references pointing at them. Written
//! whole, to a temporary file that is fsynced and renamed, then the
//! directory fsynced, so a crash leaves the old or the new version.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Image ID (`sha256:<config digest hex>`) -> image.
    pub images: BTreeMap<String, ImageRecord>,
    /// Normalized reference (`docker.io/library/nginx:latest`,
    /// `docker.io/library/nginx@sha256:...`) -> image ID.
    pub refs: BTreeMap<String, String>,
    /// Diff ID -> unpacked layer.
    pub layers: BTreeMap<String, LayerRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Diff IDs, base first.
    pub layers: Vec<String>,
    /// Digests of the manifests kept for it in `blobs/`.
    pub manifests: Vec<String>,
    /// When a reference last moved to it (RFC 3339).
    pub last_tag_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// Bytes of regular files.
    pub size: u64,
}

impl Meta {
    pub fn load(path: &Path) -> io::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(path, &bytes)
    }

    /// References to `id`, sorted.
    pub fn refs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.refs
            .iter()
            .filter(move |(_, v)| *v == id)
            .map(|(k, _)| k)
    }

    /// True if an image other than `except` uses layer `diff_id`.
    pub fn layer_used(&self, diff_id: &str, except: &str) -> bool {
        self.images
            .iter()
            .any(|(id, img)| id != except && img.layers.iter().any(|l| l == diff_id))
    }

    /// True if an image other than `except` keeps blob `digest`.
    pub fn blob_used(&self, digest: &str, except: &str) -> bool {
        self.images.iter().any(|(id, img)| {
            id != except && (id == digest || img.manifests.iter().any(|m| m == digest))
        })
    }
}

/// Temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path without a directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path without a file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}
