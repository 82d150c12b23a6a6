//! The node's image store: pulls from registries (OCI distribution, via
//! `oci-client`), loads `docker save` / OCI archives, and keeps images
//! content-addressed under `<data-dir>/images`:
//!
//! ```text
//! layers/<diff-id hex>/   one unpacked layer, usable as an overlayfs lowerdir
//! blobs/sha256/<hex>      image configs and manifests, as fetched
//! images.json             images, their layers, tag and digest references
//! tmp/                    downloads and layers being unpacked (emptied at open)
//! ```
//!
//! Every byte taken in is checked: blobs against their digests, each
//! layer's uncompressed stream against the config's `rootfs.diff_ids`.
//! A pull or load is staged under `tmp/` and committed as a whole (layers
//! renamed into place, then the metadata written atomically), so a
//! failure leaves nothing behind.
//!
//! The container runtime uses [`ImageStore::resolve`] (config and layer
//! dirs of an image) and passes the containers that use images to
//! [`ImageStore::remove`].

mod archive;
mod hash;
mod list;
mod meta;
mod progress;
mod pull;
mod reference;
mod registry;
mod remove;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
mod unpack;
mod view;

use std::path::PathBuf;

pub use self::{
    list::ListOptions,
    progress::{Progress, stream_lines},
    store::ImageStore,
};

/// Where images come from: dockerd's `--registry-mirror` and
/// `--insecure-registry`.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Mirrors for Docker Hub names, tried in order before docker.io
    /// (`http://198.18.0.2:5000`; the scheme says whether TLS is used).
    pub mirrors: Vec<String>,
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

/// A container's use of an image, as the container runtime reports it;
/// images in use are not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub container_id: String,
    /// `sha256:<hex>`.
    pub image_id: String,
    pub running: bool,
}

/// What a container needs of its image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `sha256:<hex>` of the config.
    pub id: String,
    pub config: oci_spec::image::ImageConfiguration,
    /// Unpacked layer directories, lowest (base) first.
    pub layers: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Docker's exact words; the argument is the familiar name asked for.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// The whole message, Docker's (`invalid reference format...`).
    #[error("{0}")]
    InvalidReference(String),
    /// A refused removal (409), in Docker's words.
    #[error("{0}")]
    Conflict(String),
    /// The registry does not have the repository, tag or platform (404).
    #[error("{0}")]
    NotFound(String),
    /// A request Docker refuses with 400 (bad tag target, filter value).
    #[error("{0}")]
    InvalidArgument(String),
    /// A corrupt, truncated or unsupported archive given to load (400).
    #[error("{0}")]
    InvalidArchive(String),
    /// The registry could not be reached or answered with an error.
    #[error("{message}")]
    Registry {
        message: String,
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// A blob or layer whose content does not match its digest.
    #[error("filesystem layer verification failed for digest {digest}")]
    Verification { digest: String, detail: String },
    /// A manifest or config that cannot be used.
    #[error("{0}")]
    InvalidImage(String),
    #[error("unpack layer {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }

    /// The message with its causes, for the progress stream's final
    /// error line, where the chain cannot be logged separately.
    pub fn full_message(&self) -> String {
        let mut s = self.to_string();
        if let ImageError::Verification { detail, .. } = self {
            s.push_str(": ");
            s.push_str(detail);
        }
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            s.push_str(": ");
            s.push_str(&e.to_string());
            source = e.source();
        }
        s
    }
}

/// `sha256:0123456789ab...` -> `0123456789ab` (Docker's `TruncateID`).
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}
