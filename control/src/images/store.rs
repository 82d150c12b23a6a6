//! [`ImageStore`]: the on-disk store, its in-memory view, name
//! resolution, staging and the commit that makes a pull or load visible.

use std::{
    collections::HashMap,
    fs, io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use oci_spec::image::ImageConfiguration;
use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

use super::{
    ImageError, RegistryConfig, ResolvedImage,
    hash::digest_of,
    meta::{ImageRecord, LayerRecord, Meta, write_atomic},
    pull::Registry,
    reference::{ImageRef, is_full_id, is_hex64},
};

const META_FILE: &str = "images.json";

pub struct ImageStore {
    root: PathBuf,
    pub(super) registry: Registry,
    /// One lock per layer, held from "is it there?" until the commit that
    /// adds it (or the failure that drops it), so two pulls never unpack
    /// the same layer and removal never deletes one a pull relies on.
    /// Lock order: layer locks (ascending diff ID) before `state`.
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    state: Mutex<State>,
}

pub(super) struct State {
    pub meta: Meta,
    /// Parsed configs of the images in `meta`.
    pub configs: HashMap<String, Arc<ImageConfiguration>>,
}

/// A file or directory under `tmp/`, removed when dropped unless kept.
pub(super) struct Staged {
    path: PathBuf,
    armed: bool,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let r = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&self.path),
            Ok(_) => fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(error) = r {
            warn!(path = %self.path.display(), %error, "remove temporary file");
        }
    }
}

/// A layer unpacked under `tmp/`, moved into `layers/` by the commit.
pub(super) struct StagedLayer {
    pub diff_id: String,
    pub dir: Staged,
    pub size: u64,
}

/// An image to add, with everything fetched and verified.
pub(super) struct NewImage {
    pub config: Vec<u8>,
    pub parsed: ImageConfiguration,
    /// Manifests to keep (an index and the platform's manifest).
    pub manifests: Vec<Vec<u8>>,
    /// Tags and digest references to point at it.
    pub refs: Vec<ImageRef>,
}

/// What a commit did for one image.
#[derive(Debug)]
pub(super) struct Committed {
    pub id: String,
    /// The image was not in the store before.
    pub new: bool,
    /// References that pointed at other images before: (reference, old ID).
    pub moved: Vec<(ImageRef, String)>,
    /// Tags that were added or moved here.
    pub added: usize,
}

impl ImageStore {
    /// Opens (creating) the store at `root`: drops what an interrupted
    /// operation left under `tmp/`, and layers or blobs no image uses.
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<Self, ImageError> {
        for d in ["layers", "blobs/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ImageError::io(format!("create {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        for e in read_dir(&tmp)? {
            remove_any(&e);
        }
        let meta_path = root.join(META_FILE);
        let meta = Meta::load(&meta_path)
            .map_err(ImageError::io(format!("read {}", meta_path.display())))?;
        let registry = Registry::new(&registries)?;
        let store = Self {
            root: root.to_path_buf(),
            registry,
            layer_locks: Mutex::new(HashMap::new()),
            state: Mutex::new(State {
                meta,
                configs: HashMap::new(),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// Reconciles metadata and disk after a restart or crash.
    fn recover(&self) -> Result<(), ImageError> {
        let mut st = self.lock_state();
        let before = serde_json::to_vec(&st.meta).unwrap_or_default();
        let mut meta = st.meta.clone();
        let mut configs = HashMap::new();
        meta.layers
            .retain(|diff_id, _| self.layer_dir(diff_id).is_some_and(|d| d.is_dir()));
        let ids: Vec<String> = meta.images.keys().cloned().collect();
        for id in ids {
            let usable = meta
                .images
                .get(&id)
                .is_some_and(|img| img.layers.iter().all(|l| meta.layers.contains_key(l)));
            match self.read_config(&id) {
                Ok(c) if usable => {
                    configs.insert(id, Arc::new(c));
                }
                other => {
                    warn!(image = %id, error = ?other.err(), "image incomplete on disk, dropped");
                    meta.images.remove(&id);
                    meta.refs.retain(|_, v| *v != id);
                }
            }
        }
        meta.layers
            .retain(|diff_id, _| meta.images.values().any(|i| i.layers.contains(diff_id)));
        for dir in read_dir(&self.root.join("layers"))? {
            let name = dir
                .file_name()
                .map(|n| format!("sha256:{}", n.to_string_lossy()));
            if !name.is_some_and(|n| meta.layers.contains_key(&n)) {
                info!(path = %dir.display(), "removing unused layer");
                remove_any(&dir);
            }
        }
        for blob in read_dir(&self.blobs())? {
            let name = blob
                .file_name()
                .map(|n| format!("sha256:{}", n.to_string_lossy()));
            if !name.is_some_and(|n| meta.blob_used(&n, "")) {
                remove_any(&blob);
            }
        }
        if serde_json::to_vec(&meta).unwrap_or_default() != before {
            self.save(&meta)?;
        }
        st.meta = meta;
        st.configs = configs;
        Ok(())
    }

    pub(super) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn save(&self, meta: &Meta) -> Result<(), ImageError> {
        let p = self.root.join(META_FILE);
        meta.save(&p)
            .map_err(ImageError::io(format!("write {}", p.display())))
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// `layers/<hex>` for a valid `sha256:<hex>` diff ID.
    pub(super) fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        let hex = diff_id.strip_prefix("sha256:").filter(|h| is_hex64(h))?;
        Some(self.root.join("layers").join(hex))
    }

    fn read_config(&self, id: &str) -> Result<ImageConfiguration, ImageError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let p = self.blobs().join(hex);
        let bytes = fs::read(&p).map_err(ImageError::io(format!("read {}", p.display())))?;
        if digest_of(&bytes) != id {
            return Err(ImageError::InvalidImage(format!(
                "{} is corrupt",
                p.display()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::InvalidImage(format!("{}: {e}", p.display())))
    }

    /// A new path under `tmp/`, removed when the guard drops.
    pub(super) fn staged(&self, prefix: &str) -> Staged {
        let r: u64 = rand::random();
        Staged {
            path: self.root.join("tmp").join(format!("{prefix}-{r:016x}")),
            armed: true,
        }
    }

    pub(super) fn staged_dir(&self) -> Result<Staged, ImageError> {
        let s = self.staged("layer");
        fs::create_dir(s.path())
            .map_err(ImageError::io(format!("create {}", s.path().display())))?;
        Ok(s)
    }

    pub(super) fn has_layer(&self, diff_id: &str) -> bool {
        self.lock_state().meta.layers.contains_key(diff_id)
    }

    pub(super) fn has_image(&self, id: &str) -> bool {
        self.lock_state().meta.images.contains_key(id)
    }

    fn layer_lock(&self, diff_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(diff_id.to_owned()).or_default().clone()
    }

    fn sorted(diff_ids: &[String]) -> Vec<String> {
        let mut ids = diff_ids.to_vec();
        ids.sort();
        ids.dedup();
        ids
    }

    pub(super) async fn lock_layers(&self, diff_ids: &[String]) -> Vec<OwnedMutexGuard<()>> {
        let mut guards = Vec::new();
        for id in Self::sorted(diff_ids) {
            guards.push(self.layer_lock(&id).lock_owned().await);
        }
        guards
    }

    /// For blocking threads (load runs on one).
    pub(super) fn lock_layers_blocking(&self, diff_ids: &[String]) -> Vec<OwnedMutexGuard<()>> {
        Self::sorted(diff_ids)
            .into_iter()
            .map(|id| self.layer_lock(&id).blocking_lock_owned())
            .collect()
    }

    /// True while a pull or load holds the layer.
    pub(super) fn layer_busy(&self, diff_id: &str) -> bool {
        self.layer_lock(diff_id).try_lock().is_err()
    }

    /// Makes staged work visible: blobs written, layers renamed into
    /// `layers/`, then the metadata. The caller holds the layer locks.
    pub(super) fn commit(
        &self,
        images: Vec<NewImage>,
        layers: Vec<StagedLayer>,
    ) -> Result<Vec<Committed>, ImageError> {
        if !layers.is_empty() {
            // The unpacked files reach the disk before the names that
            // make them part of the store.
            let root = fs::File::open(&self.root).map_err(ImageError::io("open store root"))?;
            nix::unistd::syncfs(root.as_raw_fd())
                .map_err(|e| ImageError::io("syncfs")(io::Error::from(e)))?;
        }
        let mut st = self.lock_state();
        let mut meta = st.meta.clone();
        for img in &images {
            self.write_blob(&img.config)?;
            for m in &img.manifests {
                self.write_blob(m)?;
            }
        }
        for layer in layers {
            let dest = self.layer_dir(&layer.diff_id).ok_or_else(|| {
                ImageError::InvalidImage(format!("invalid diff ID {}", layer.diff_id))
            })?;
            if !dest.exists() {
                fs::rename(layer.dir.path(), &dest)
                    .map_err(ImageError::io(format!("rename into {}", dest.display())))?;
                layer.dir.keep();
            }
            meta.layers
                .insert(layer.diff_id, LayerRecord { size: layer.size });
        }
        let now = crate::util::now_rfc3339();
        let mut out = Vec::new();
        let mut configs = Vec::new();
        for img in images {
            let id = digest_of(&img.config);
            let diff_ids = img.parsed.rootfs().diff_ids().clone();
            if let Some(missing) = diff_ids.iter().find(|d| !meta.layers.contains_key(*d)) {
                return Err(ImageError::InvalidImage(format!(
                    "layer {missing} of image {id} is not in the store"
                )));
            }
            let new = !meta.images.contains_key(&id);
            let record = meta
                .images
                .entry(id.clone())
                .or_insert_with(|| ImageRecord {
                    layers: diff_ids,
                    manifests: Vec::new(),
                    last_tag_time: None,
                });
            for m in &img.manifests {
                let d = digest_of(m);
                if !record.manifests.contains(&d) {
                    record.manifests.push(d);
                }
            }
            let mut moved = Vec::new();
            let mut added = 0;
            for r in img.refs {
                // Only tags count as news; digest references ride along.
                let tag = usize::from(r.digest().is_none());
                match meta.refs.insert(r.to_string(), id.clone()) {
                    Some(old) if old == id => {}
                    Some(old) => {
                        moved.push((r, old));
                        added += tag;
                    }
                    None => added += tag,
                }
            }
            if added > 0
                && let Some(rec) = meta.images.get_mut(&id)
            {
                rec.last_tag_time = Some(now.clone());
            }
            configs.push((id.clone(), img.parsed));
            out.push(Committed {
                id,
                new,
                moved,
                added,
            });
        }
        self.save(&meta)?;
        st.meta = meta;
        for (id, c) in configs {
            st.configs.entry(id).or_insert_with(|| Arc::new(c));
        }
        Ok(out)
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<(), ImageError> {
        let digest = digest_of(bytes);
        let p = self.blobs().join(&digest[7..]);
        if p.exists() {
            return Ok(());
        }
        write_atomic(&p, bytes).map_err(ImageError::io(format!("write {}", p.display())))
    }

    /// Deletes blobs and layer dirs after their image left the metadata.
    pub(super) fn delete_files(&self, blobs: &[String], layers: &[String]) {
        for b in blobs {
            let hex = b.strip_prefix("sha256:").unwrap_or(b);
            if is_hex64(hex) {
                remove_any(&self.blobs().join(hex));
            }
        }
        for l in layers {
            if let Some(dir) = self.layer_dir(l) {
                // Renamed first, so a half-deleted layer never looks whole.
                let doomed = self.staged("deleted");
                match fs::rename(&dir, doomed.path()) {
                    Ok(()) => drop(doomed),
                    Err(error) => warn!(layer = %l, %error, "remove layer"),
                }
            }
        }
    }

    /// What a container needs: the image ID, its config, its layer dirs
    /// lowest (base) first.
    pub fn resolve(&self, name_or_id: &str) -> Result<ResolvedImage, ImageError> {
        let st = self.lock_state();
        let id = lookup(&st.meta, name_or_id)?;
        let img = st
            .meta
            .images
            .get(&id)
            .ok_or_else(|| ImageError::NoSuchImage(name_or_id.to_owned()))?;
        let config = st
            .configs
            .get(&id)
            .ok_or_else(|| ImageError::NoSuchImage(name_or_id.to_owned()))?;
        let layers = img
            .layers
            .iter()
            .map(|l| {
                self.layer_dir(l)
                    .ok_or_else(|| ImageError::InvalidImage(format!("invalid diff ID {l}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedImage {
            id,
            config: (**config).clone(),
            layers,
        })
    }

    /// `docker tag SOURCE REPO[:TAG]` (`POST /images/{name}/tag`).
    pub fn tag(&self, source: &str, repo: &str, tag: Option<&str>) -> Result<ImageRef, ImageError> {
        if repo.is_empty() {
            return Err(ImageError::InvalidArgument(
                "repository name must have at least one component".into(),
            ));
        }
        let parsed = ImageRef::parse(repo)?;
        if parsed.digest().is_some() {
            return Err(ImageError::InvalidArgument(
                "cannot tag with a digest".into(),
            ));
        }
        if parsed.familiar_name() == "sha256" {
            return Err(ImageError::InvalidArgument(
                "refusing to create an ambiguous tag using digest algorithm as name".into(),
            ));
        }
        let tag = tag
            .filter(|t| !t.is_empty())
            .or(parsed.tag())
            .unwrap_or("latest");
        let target = ImageRef::parse(&format!("{}:{tag}", parsed.name()))
            .map_err(|_| ImageError::InvalidArgument("invalid tag format".into()))?;
        let mut st = self.lock_state();
        let id = lookup(&st.meta, source)?;
        let mut meta = st.meta.clone();
        meta.refs.insert(target.to_string(), id.clone());
        if let Some(rec) = meta.images.get_mut(&id) {
            rec.last_tag_time = Some(crate::util::now_rfc3339());
        }
        self.save(&meta)?;
        st.meta = meta;
        Ok(target)
    }
}

/// Finds an image as dockerd's `GetImage` does: a full ID, a reference
/// (tag or digest; `latest` added to a bare name), then a unique ID
/// prefix (with or without `sha256:`).
pub(super) fn lookup(meta: &Meta, name: &str) -> Result<String, ImageError> {
    if is_full_id(name) || is_hex64(name) {
        let id = if is_hex64(name) {
            format!("sha256:{name}")
        } else {
            name.to_owned()
        };
        return match meta.images.contains_key(&id) {
            true => Ok(id),
            false => Err(ImageError::NoSuchImage(name.to_owned())),
        };
    }
    let parsed = ImageRef::parse_default_tag(name);
    if let Ok(r) = &parsed
        && let Some(id) = meta.refs.get(&r.to_string())
    {
        return Ok(id.clone());
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if !hex.is_empty()
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        let mut found = meta
            .images
            .keys()
            .filter(|id| id.get(7..).is_some_and(|h| h.starts_with(hex)));
        if let (Some(id), None) = (found.next(), found.next()) {
            return Ok(id.clone());
        }
    }
    match parsed {
        Ok(r) => Err(ImageError::NoSuchImage(r.familiar())),
        Err(e) => Err(e),
    }
}

/// True when `name` designates the image by ID (full or prefix) rather
/// than by a reference (Docker's `isImageIDPrefix`).
pub(super) fn is_id_name(id: &str, name: &str) -> bool {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    !name.is_empty() && (id.starts_with(name) || hex.starts_with(name))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let rd = fs::read_dir(dir).map_err(ImageError::io(format!("read {}", dir.display())))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn remove_any(p: &Path) {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    };
    if let Err(error) = r {
        warn!(path = %p.display(), %error, "remove");
    }
}
