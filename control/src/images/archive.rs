//! `docker load`: `docker save` archives (`manifest.json`, a config and
//! a tar per layer, plain or gzip, as skopeo's `docker-archive:` writes
//! them) and OCI image layouts (`index.json`, `oci-layout`,
//! `blobs/sha256/...`).
//!
//! The request body is first saved under `tmp/`; the archive is then
//! indexed once (member name -> offset, size) and members are read in
//! place, so layers stream straight from the file into the unpacker.
//! Configs are taken by their digest, OCI blobs checked against theirs,
//! and every layer's uncompressed stream against the config's diff IDs;
//! nothing is stored unless every image in the archive checked out.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Component, Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tracing::info;

use super::{
    ImageError, ImageStore,
    hash::{HashingReader, check_sha256, digest_of},
    reference::ImageRef,
    registry::{MAX_JSON, pick_platform},
    store::{NewImage, StagedLayer},
    unpack::{self, UnpackError},
};

const NAME_ANNOTATIONS: &[&str] = &[
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

fn bad(msg: impl std::fmt::Display) -> ImageError {
    ImageError::InvalidArchive(format!("invalid archive: {msg}"))
}

/// One file of the archive, or a link to one.
enum Member {
    File { offset: u64, size: u64 },
    Link(PathBuf),
}

/// The archive on disk, indexed.
struct Archive {
    file: File,
    members: HashMap<PathBuf, Member>,
}

/// One `manifest.json` entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A layer as the archive holds it.
struct LayerSource {
    member: PathBuf,
    diff_id: String,
    /// OCI blobs carry the digest and size of their compressed bytes.
    blob: Option<(String, u64)>,
}

struct Candidate {
    image: NewImage,
    layers: Vec<LayerSource>,
}

/// `./a/../b` -> `b`; `None` if it climbs out.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

impl Archive {
    fn index(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(ImageError::io("open uploaded archive"))?;
        let len = file
            .metadata()
            .map_err(ImageError::io("stat uploaded archive"))?
            .len();
        let mut members = HashMap::new();
        let mut tar = tar::Archive::new(BufReader::new(&file));
        for entry in tar.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.into_owned();
            let Some(name) = normalize(&raw) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                let base = if kind.is_symlink() {
                    name.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                match normalize(&base.join(target)) {
                    Some(t) => Member::Link(t),
                    None => continue,
                }
            } else if kind.is_file() {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                if offset + size > len {
                    return Err(bad(format!("{} is truncated", name.display())));
                }
                Member::File { offset, size }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Self { file, members })
    }

    fn locate(&self, name: &Path) -> Result<(u64, u64), ImageError> {
        let mut cur = normalize(name).ok_or_else(|| bad(format!("bad path {}", name.display())))?;
        for _ in 0..8 {
            match self.members.get(&cur) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link(t)) => cur = t.clone(),
                None => break,
            }
        }
        Err(bad(format!("{} is missing", name.display())))
    }

    fn has(&self, name: &str) -> bool {
        self.members.contains_key(Path::new(name))
    }

    fn open(&self, name: &Path) -> Result<(std::io::Take<File>, u64), ImageError> {
        let (offset, size) = self.locate(name)?;
        let mut f = self
            .file
            .try_clone()
            .map_err(ImageError::io("reopen archive"))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(ImageError::io("seek archive"))?;
        Ok((f.take(size), size))
    }

    fn read(&self, name: &Path) -> Result<Vec<u8>, ImageError> {
        let (mut r, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(bad(format!("{} is too large", name.display())));
        }
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(bad)?;
        Ok(out)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &Path) -> Result<T, ImageError> {
        serde_json::from_slice(&self.read(name)?)
            .map_err(|e| bad(format!("{}: {e}", name.display())))
    }

    /// A blob of an OCI layout, checked against its digest.
    fn blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read(&blob_path(digest)?)?;
        if digest_of(&bytes) != digest {
            return Err(bad(format!("blob {digest} does not match its digest")));
        }
        Ok(bytes)
    }
}

fn blob_path(digest: &str) -> Result<PathBuf, ImageError> {
    let hex = check_sha256(digest).ok_or_else(|| bad(format!("unsupported digest {digest}")))?;
    Ok(PathBuf::from("blobs/sha256").join(hex))
}

fn config_of(bytes: &[u8], layers: usize) -> Result<ImageConfiguration, ImageError> {
    let c: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("image config: {e}")))?;
    let diff_ids = c.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(bad(format!(
            "image config has {} diff IDs for {layers} layers",
            diff_ids.len()
        )));
    }
    if let Some(d) = diff_ids.iter().find(|d| check_sha256(d).is_none()) {
        return Err(bad(format!("unsupported diff ID {d}")));
    }
    Ok(c)
}

fn docker_save(a: &Archive) -> Result<Vec<Candidate>, ImageError> {
    let entries: Vec<SaveEntry> = a.json(Path::new("manifest.json"))?;
    let mut out = Vec::new();
    for e in entries {
        let config = a.read(Path::new(&e.config))?;
        let parsed = config_of(&config, e.layers.len())?;
        let layers = e
            .layers
            .iter()
            .zip(parsed.rootfs().diff_ids())
            .map(|(m, d)| LayerSource {
                member: PathBuf::from(m),
                diff_id: d.clone(),
                blob: None,
            })
            .collect();
        let refs = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| ImageRef::parse_default_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Candidate {
            image: NewImage {
                config,
                parsed,
                manifests: Vec::new(),
                refs,
            },
            layers,
        });
    }
    Ok(out)
}

/// The name an OCI index entry gives its image, if a full one.
fn oci_name(annotations: Option<&HashMap<String, String>>) -> Result<Option<ImageRef>, ImageError> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    for key in NAME_ANNOTATIONS {
        match a.get(*key) {
            // A bare tag (`latest`, as umoci and skopeo write) names no
            // repository.
            Some(v) if v.contains(['/', ':']) => return ImageRef::parse_default_tag(v).map(Some),
            _ => {}
        }
    }
    Ok(None)
}

fn oci_layout(a: &Archive) -> Result<Vec<Candidate>, ImageError> {
    let index: ImageIndex = a.json(Path::new("index.json"))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let name = oci_name(desc.annotations().as_ref())?;
        let mut raw = a.blob(desc.digest().as_ref())?;
        let mut manifests = Vec::new();
        let probe: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest: {e}")))?;
        if probe.get("manifests").is_some() {
            let nested: ImageIndex =
                serde_json::from_slice(&raw).map_err(|e| bad(format!("index: {e}")))?;
            let chosen = pick_platform(nested.manifests())
                .ok_or_else(|| bad("no manifest for this platform in the index"))?;
            manifests.push(raw);
            raw = a.blob(chosen.digest().as_ref())?;
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest: {e}")))?;
        manifests.push(raw);
        let config = a.blob(manifest.config().digest().as_ref())?;
        let parsed = config_of(&config, manifest.layers().len())?;
        let layers = manifest
            .layers()
            .iter()
            .zip(parsed.rootfs().diff_ids())
            .map(|(l, d)| {
                Ok(LayerSource {
                    member: blob_path(l.digest().as_ref())?,
                    diff_id: d.clone(),
                    blob: Some((l.digest().to_string(), l.size())),
                })
            })
            .collect::<Result<_, ImageError>>()?;
        out.push(Candidate {
            image: NewImage {
                config,
                parsed,
                manifests,
                refs: name.into_iter().collect(),
            },
            layers,
        });
    }
    Ok(out)
}

impl ImageStore {
    /// Saves the request body under `tmp/` and loads it. Returns the
    /// lines `docker load` prints.
    pub async fn load<S, E>(self: &Arc<Self>, mut body: S) -> Result<Vec<String>, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.staged("load");
        let mut f = tokio::fs::File::create(upload.path())
            .await
            .map_err(ImageError::io("create upload file"))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| bad(format!("read request body: {e}")))?;
            f.write_all(&chunk)
                .await
                .map_err(ImageError::io("write upload file"))?;
        }
        f.flush()
            .await
            .map_err(ImageError::io("write upload file"))?;
        drop(f);
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let r = store.load_file(upload.path());
            drop(upload);
            r
        })
        .await
        .map_err(|e| ImageError::io("load task")(std::io::Error::other(e.to_string())))?
    }

    /// Loads the archive at `path` (blocking).
    pub(super) fn load_file(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let archive = Archive::index(path)?;
        let candidates = if archive.has("manifest.json") {
            docker_save(&archive)?
        } else if archive.has("index.json") {
            oci_layout(&archive)?
        } else {
            return Err(bad(
                "no manifest.json (docker save) or index.json (OCI layout) in it",
            ));
        };
        let all: Vec<String> = candidates
            .iter()
            .flat_map(|c| c.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let _guards = self.lock_layers_blocking(&all);
        let mut staged: Vec<StagedLayer> = Vec::new();
        for layer in candidates.iter().flat_map(|c| &c.layers) {
            if self.has_layer(&layer.diff_id) || staged.iter().any(|s| s.diff_id == layer.diff_id) {
                continue;
            }
            staged.push(self.load_layer(&archive, layer)?);
        }
        let images: Vec<NewImage> = candidates.into_iter().map(|c| c.image).collect();
        let names: Vec<Vec<ImageRef>> = images.iter().map(|i| i.refs.clone()).collect();
        let done = self.commit(images, staged)?;
        let mut lines = Vec::new();
        for (c, refs) in done.iter().zip(&names) {
            for (r, old) in &c.moved {
                lines.push(format!(
                    "The image {} already exists, renaming the old one with ID {old} to empty string\n",
                    r.familiar()
                ));
            }
            if refs.is_empty() {
                lines.push(format!("Loaded image ID: {}\n", c.id));
            }
            for r in refs {
                lines.push(format!("Loaded image: {}\n", r.familiar()));
            }
            info!(image = %c.id, "loaded");
        }
        Ok(lines)
    }

    fn load_layer(&self, a: &Archive, layer: &LayerSource) -> Result<StagedLayer, ImageError> {
        let (reader, size) = a.open(&layer.member)?;
        let dir = self.staged_dir()?;
        let mut hashing = HashingReader::new(reader);
        let unpacked = unpack::unpack_layer(&mut hashing, dir.path(), &AtomicBool::new(false))
            .map_err(|e| match e {
                UnpackError::Fs { .. } | UnpackError::Cancelled => ImageError::Unpack {
                    digest: layer.diff_id.clone(),
                    source: e,
                },
                other => bad(format!(
                    "layer {}: {}",
                    layer.member.display(),
                    ImageError::Unpack {
                        digest: layer.diff_id.clone(),
                        source: other
                    }
                    .full_message()
                )),
            })?;
        let blob_digest = hashing.finish().map_err(bad)?;
        if let Some((digest, want)) = &layer.blob
            && (*digest != blob_digest || *want != size)
        {
            return Err(bad(format!(
                "layer {digest} does not match its digest (got {blob_digest}, {size} bytes)"
            )));
        }
        if unpacked.diff_id != layer.diff_id {
            return Err(bad(format!(
                "layer {} has diff ID {}, the image config expects {}",
                layer.member.display(),
                unpacked.diff_id,
                layer.diff_id
            )));
        }
        Ok(StagedLayer {
            diff_id: layer.diff_id.clone(),
            dir,
            size: unpacked.size,
        })
    }
}
