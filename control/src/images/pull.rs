//! `docker pull`: two steps, so that errors found before any progress is
//! streamed are real HTTP errors. [`ImageStore::prepare_pull`] parses the
//! name and fetches manifest and config; [`ImageStore::run_pull`] streams
//! Docker's progress while layers download (three at a time, as dockerd),
//! verify, unpack under `tmp/` and are committed together.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use oci_client::Reference as OciReference;
use oci_spec::image::{Descriptor, ImageConfiguration};
use tokio::{io::AsyncWriteExt, sync::Semaphore, task::JoinSet};
use tracing::info;

pub use super::registry::Registry;
use super::{
    ImageError, ImageStore,
    hash::{Hasher, check_sha256, digest_of},
    progress::Progress,
    reference::ImageRef,
    registry::{self, Resolved},
    store::{NewImage, StagedLayer},
    unpack,
};

const CONCURRENT_DOWNLOADS: usize = 3;
const PROGRESS_EVERY: u64 = 512 * 1024;

/// A pull whose manifest and config are fetched and checked.
pub struct PullPlan {
    image: ImageRef,
    resolved: Resolved,
    config: Vec<u8>,
    parsed: ImageConfiguration,
}

/// The name a pull asks for: `fromImage`, with `tag` (which may be a
/// digest) as dockerd combines them; `latest` when neither names one.
pub fn pull_ref(from_image: &str, tag: Option<&str>) -> Result<ImageRef, ImageError> {
    let r = ImageRef::parse(from_image)?;
    match tag.filter(|t| !t.is_empty()) {
        Some(t) if t.contains(':') => {
            let d = ImageRef::parse(&format!("{}@{t}", r.name()))?;
            Ok(r.with_digest(d.digest().unwrap_or(t)))
        }
        Some(t) => ImageRef::parse(&format!("{}:{t}", r.name())),
        None => Ok(r.with_default_tag()),
    }
}

struct LayerJob {
    desc: Descriptor,
    diff_id: String,
    short: String,
}

impl ImageStore {
    /// Resolves what to pull; every error here comes before any output.
    pub async fn prepare_pull(
        &self,
        from_image: &str,
        tag: Option<&str>,
    ) -> Result<PullPlan, ImageError> {
        let image = pull_ref(from_image, tag)?;
        let resolved = self.registry.resolve(&image).await?;
        let m = &resolved.manifest;
        let config = self
            .registry
            .fetch_small(&resolved.source, &image, m.config())
            .await?;
        let parsed: ImageConfiguration = serde_json::from_slice(&config)
            .map_err(|e| ImageError::InvalidImage(format!("invalid image config: {e}")))?;
        let diff_ids = parsed.rootfs().diff_ids();
        if diff_ids.len() != m.layers().len() {
            return Err(ImageError::InvalidImage(format!(
                "image config has {} diff IDs for {} layers",
                diff_ids.len(),
                m.layers().len()
            )));
        }
        if let Some(bad) = diff_ids
            .iter()
            .map(String::as_str)
            .chain(m.layers().iter().map(|l| l.digest().as_ref()))
            .find(|d| check_sha256(d).is_none())
        {
            return Err(ImageError::InvalidImage(format!(
                "unsupported digest {bad}"
            )));
        }
        Ok(PullPlan {
            image,
            resolved,
            config,
            parsed,
        })
    }

    /// Downloads, verifies and stores what `plan` names, reporting on
    /// `progress`. Nothing is stored unless everything verified.
    pub async fn run_pull(
        self: &Arc<Self>,
        plan: PullPlan,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let PullPlan {
            image,
            resolved,
            config,
            parsed,
        } = plan;
        // Docker names the repository without its registry here.
        progress
            .status(
                Some(&image.tag_or_digest()),
                &format!("Pulling from {}", image.path()),
            )
            .await;
        let diff_ids = parsed.rootfs().diff_ids().clone();
        let _guards = self.lock_layers(&diff_ids).await;
        let id = digest_of(&config);
        let mut jobs = Vec::new();
        if !self.has_image(&id) {
            for (desc, diff_id) in resolved.manifest.layers().iter().zip(&diff_ids) {
                let short = short_digest(desc);
                if self.has_layer(diff_id) || jobs.iter().any(|j: &LayerJob| &j.diff_id == diff_id)
                {
                    progress.status(Some(&short), "Already exists").await;
                    continue;
                }
                progress.status(Some(&short), "Pulling fs layer").await;
                jobs.push(LayerJob {
                    desc: desc.clone(),
                    diff_id: diff_id.clone(),
                    short,
                });
            }
        }
        let staged = self
            .fetch_layers(&image, &resolved.source, jobs, progress)
            .await?;
        let mut refs = vec![image.with_digest(&resolved.digest)];
        if image.digest().is_none() {
            refs.push(image.clone());
        }
        let done = self.commit(
            vec![NewImage {
                config,
                parsed,
                manifests: resolved.raw,
                refs,
            }],
            staged,
        )?;
        let changed = done.iter().any(|c| c.new || c.added > 0);
        info!(image = %image, id = %id, changed, "pulled");
        progress
            .status(None, &format!("Digest: {}", resolved.digest))
            .await;
        let status = if changed {
            "Downloaded newer image for"
        } else {
            "Image is up to date for"
        };
        progress
            .status(None, &format!("Status: {status} {}", image.familiar()))
            .await;
        Ok(())
    }

    /// Runs the layer jobs; on the first failure the others stop and all
    /// their temporary files go.
    async fn fetch_layers(
        self: &Arc<Self>,
        image: &ImageRef,
        source: &OciReference,
        jobs: Vec<LayerJob>,
        progress: &Progress,
    ) -> Result<Vec<StagedLayer>, ImageError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let slots = Arc::new(Semaphore::new(CONCURRENT_DOWNLOADS));
        let mut set = JoinSet::new();
        for job in jobs {
            let (store, image, source) = (self.clone(), image.clone(), source.clone());
            let (cancel, slots, progress) = (cancel.clone(), slots.clone(), progress.clone());
            set.spawn(async move {
                let r = match slots.acquire_owned().await {
                    Ok(_slot) => {
                        store
                            .fetch_layer(&image, &source, &job, &progress, &cancel)
                            .await
                    }
                    Err(_) => Err(ImageError::InvalidImage("download slots closed".into())),
                };
                if r.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                r
            });
        }
        let mut staged = Vec::new();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let r = joined.unwrap_or_else(|e| {
                Err(ImageError::io("layer task")(std::io::Error::other(
                    e.to_string(),
                )))
            });
            match r {
                Ok(s) => staged.push(s),
                // A layer stopped because another failed says nothing new.
                Err(ImageError::Unpack {
                    source: unpack::UnpackError::Cancelled,
                    ..
                }) => {}
                Err(e) => {
                    cancel.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None if cancel.load(Ordering::Relaxed) => {
                Err(ImageError::InvalidImage("pull cancelled".into()))
            }
            None => Ok(staged),
        }
    }

    async fn fetch_layer(
        self: &Arc<Self>,
        image: &ImageRef,
        source: &OciReference,
        job: &LayerJob,
        progress: &Progress,
        cancel: &Arc<AtomicBool>,
    ) -> Result<StagedLayer, ImageError> {
        let blob = self.staged("blob");
        self.download(
            image,
            source,
            job,
            blob.path().to_path_buf(),
            progress,
            cancel,
        )
        .await?;
        let dir = self.staged_dir()?;
        let read = Arc::new(AtomicU64::new(0));
        let task = {
            let (path, dest, cancel, read) = (
                blob.path().to_path_buf(),
                dir.path().to_path_buf(),
                cancel.clone(),
                read.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let f =
                    std::fs::File::open(&path).map_err(ImageError::io("open downloaded layer"))?;
                let counted = Counting { inner: f, read };
                Ok::<_, ImageError>(unpack::unpack_layer(counted, &dest, &cancel))
            })
        };
        tokio::pin!(task);
        let total = job.desc.size();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let unpacked = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = tick.tick() => {
                    progress.bar(&job.short, "Extracting", read.load(Ordering::Relaxed), total).await;
                }
            }
        };
        let unpacked = unpacked
            .map_err(|e| ImageError::io("unpack task")(std::io::Error::other(e.to_string())))??
            .map_err(|source| ImageError::Unpack {
                digest: job.desc.digest().to_string(),
                source,
            })?;
        if unpacked.diff_id != job.diff_id {
            return Err(ImageError::Verification {
                digest: job.desc.digest().to_string(),
                detail: format!(
                    "uncompressed content is {}, the image config says {}",
                    unpacked.diff_id, job.diff_id
                ),
            });
        }
        progress.bar(&job.short, "Extracting", total, total).await;
        progress.status(Some(&job.short), "Pull complete").await;
        Ok(StagedLayer {
            diff_id: job.diff_id.clone(),
            dir,
            size: unpacked.size,
        })
    }

    /// Streams a layer blob to `dest`, hashing as it goes.
    async fn download(
        &self,
        image: &ImageRef,
        source: &OciReference,
        job: &LayerJob,
        dest: PathBuf,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Result<(), ImageError> {
        let desc = &job.desc;
        let mut stream = self.registry.blob_stream(source, image, desc).await?;
        let mut file = tokio::fs::File::create(&dest)
            .await
            .map_err(ImageError::io(format!("create {}", dest.display())))?;
        let mut hasher = Hasher::default();
        let mut reported = 0;
        let total = desc.size();
        while let Some(chunk) = stream.next().await {
            if cancel.load(Ordering::Relaxed) {
                return Err(ImageError::Unpack {
                    digest: desc.digest().to_string(),
                    source: unpack::UnpackError::Cancelled,
                });
            }
            let bytes = match chunk {
                Ok(b) => b,
                // oci-client fails the last read of a blob whose digest
                // is wrong; say it as Docker does.
                Err(_) if hasher.len() >= total => break,
                Err(e) => return Err(ImageError::io(format!("download {}", desc.digest()))(e)),
            };
            hasher.update(&bytes);
            if hasher.len() > total {
                break;
            }
            file.write_all(&bytes)
                .await
                .map_err(ImageError::io(format!("write {}", dest.display())))?;
            if hasher.len() - reported >= PROGRESS_EVERY {
                reported = hasher.len();
                progress
                    .bar(&job.short, "Downloading", reported, total)
                    .await;
            }
        }
        file.flush()
            .await
            .map_err(ImageError::io(format!("write {}", dest.display())))?;
        progress
            .status(Some(&job.short), "Verifying Checksum")
            .await;
        registry::verify(desc, hasher)?;
        progress.status(Some(&job.short), "Download complete").await;
        Ok(())
    }
}

/// The 12 hex digits Docker shows for a layer.
fn short_digest(desc: &Descriptor) -> String {
    super::short_id(desc.digest().as_ref()).to_owned()
}

/// Counts bytes read, for the `Extracting` bar.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
