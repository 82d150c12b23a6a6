//! Talking to registries through `oci-client`: which endpoints serve a
//! name (mirrors for Docker Hub names, as dockerd's `--registry-mirror`),
//! plain HTTP for `--insecure-registry` hosts, manifest resolution
//! (OCI and Docker schema 2, indexes and manifest lists narrowed to
//! linux and this host's architecture), and registry errors in Docker's
//! words.

use std::time::Duration;

use futures_util::StreamExt;
use oci_client::{
    Client, Reference as OciReference,
    client::{ClientConfig, ClientProtocol, SizedStream},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tracing::{debug, warn};

use super::{ImageError, RegistryConfig, hash::Hasher, reference::ImageRef};

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Larger manifests or configs than this are refused unread.
pub const MAX_JSON: u64 = 16 << 20;

pub struct Registry {
    client: Client,
    /// `host[:port]` of each mirror, in order.
    mirrors: Vec<String>,
}

/// A manifest as a registry served it, resolved to one platform.
pub struct Resolved {
    /// Where it came from; blobs are fetched from the same place.
    pub source: OciReference,
    /// Digest of what the reference names (an index, or the manifest).
    pub digest: String,
    /// Raw bytes to keep: the index (if any) and the manifest.
    pub raw: Vec<Vec<u8>>,
    pub manifest: ImageManifest,
}

impl Registry {
    pub fn new(cfg: &RegistryConfig) -> Result<Self, ImageError> {
        let mut http = cfg.insecure.clone();
        let mut mirrors = Vec::new();
        for m in &cfg.mirrors {
            let (scheme, rest) = m.split_once("://").ok_or_else(|| {
                ImageError::InvalidArgument(format!(
                    "invalid mirror: unsupported scheme in {m:?} (use http:// or https://)"
                ))
            })?;
            let host = rest
                .trim_end_matches('/')
                .split('/')
                .next()
                .unwrap_or_default();
            if host.is_empty() || !matches!(scheme, "http" | "https") {
                return Err(ImageError::InvalidArgument(format!(
                    "invalid mirror: {m:?}"
                )));
            }
            if scheme == "http" {
                http.push(host.to_owned());
            }
            mirrors.push(host.to_owned());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("swarmnet/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| ImageError::Registry {
            message: "registry client".into(),
            source: Box::new(e),
        })?;
        Ok(Self { client, mirrors })
    }

    /// Where to look for `image`: its mirrors first for Docker Hub names.
    fn endpoints(&self, image: &ImageRef) -> Vec<OciReference> {
        let base = image.to_oci();
        let mut out = Vec::new();
        if image.is_hub() {
            for m in &self.mirrors {
                let mut r = base.clone();
                r.set_mirror_registry(m.clone());
                out.push(r);
            }
        }
        out.push(base);
        out
    }

    /// Fetches the manifest of `image`, trying each endpoint in turn as
    /// dockerd does. When one endpoint says the image is not there and a
    /// later one cannot be reached (docker.io without internet), the
    /// "not there" is the answer: it is the one a user can act on.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Resolved, ImageError> {
        let mut not_found = None;
        let mut last = None;
        for ep in self.endpoints(image) {
            match self.resolve_at(image, &ep).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    debug!(registry = %ep.resolve_registry(), error = %e.full_message(), "manifest not fetched");
                    match e {
                        ImageError::NotFound(_) if not_found.is_none() => not_found = Some(e),
                        e => last = Some(e),
                    }
                }
            }
        }
        Err(not_found.or(last).unwrap_or_else(|| {
            ImageError::NotFound(format!("no registry for {}", image.familiar()))
        }))
    }

    async fn resolve_at(
        &self,
        image: &ImageRef,
        ep: &OciReference,
    ) -> Result<Resolved, ImageError> {
        let (bytes, digest) = match self
            .client
            .pull_manifest_raw(ep, &RegistryAuth::Anonymous, ACCEPT)
            .await
        {
            Ok(found) => found,
            Err(e) => return Err(self.manifest_error(image, ep, e).await),
        };
        let mut raw = vec![bytes.to_vec()];
        let manifest_bytes = if is_index(&bytes)? {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::InvalidImage(format!("invalid manifest list: {e}")))?;
            let chosen = pick_platform(index.manifests()).ok_or_else(|| {
                ImageError::NotFound(format!(
                    "no matching manifest for linux/{} in the manifest list entries",
                    host_arch()
                ))
            })?;
            let (m, _) = self
                .client
                .pull_manifest_raw(
                    &ep.clone_with_digest(chosen.digest().to_string()),
                    &RegistryAuth::Anonymous,
                    ACCEPT,
                )
                .await
                .map_err(|e| registry_error(image, ep, e))?;
            if is_index(&m)? {
                return Err(ImageError::InvalidImage(
                    "nested manifest lists are not supported".into(),
                ));
            }
            raw.push(m.to_vec());
            m
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImageError::InvalidImage(format!("invalid manifest: {e}")))?;
        Ok(Resolved {
            source: ep.clone(),
            digest,
            raw,
            manifest,
        })
    }

    /// Registries (distribution's among them) answer `MANIFEST_UNKNOWN`
    /// for a repository they do not have; Docker Hub says "denied". The
    /// tag list tells the two apart, so a missing repository gets
    /// Docker's "pull access denied" and a missing tag "manifest for".
    async fn manifest_error(
        &self,
        image: &ImageRef,
        ep: &OciReference,
        e: OciDistributionError,
    ) -> ImageError {
        if image.digest().is_none()
            && is_code(&e, &[OciErrorCode::ManifestUnknown])
            && let Err(probe) = self
                .client
                .list_tags(ep, &RegistryAuth::Anonymous, Some(1), None)
                .await
            && repo_unknown(&probe)
        {
            return registry_error(image, ep, probe);
        }
        registry_error(image, ep, e)
    }

    /// A small blob (a config) in memory, verified against its digest.
    pub async fn fetch_small(
        &self,
        source: &OciReference,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, ImageError> {
        if desc.size() > MAX_JSON {
            return Err(ImageError::InvalidImage(format!(
                "config {} is too large ({} bytes)",
                desc.digest(),
                desc.size()
            )));
        }
        let mut out = Vec::new();
        let mut stream = self.blob_stream(source, image, desc).await?;
        let mut hasher = Hasher::default();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    hasher.update(&b);
                    if hasher.len() > desc.size() {
                        break;
                    }
                    out.extend_from_slice(&b);
                }
                // oci-client's own check fails at the end of a bad blob.
                Err(_) if hasher.len() >= desc.size() => break,
                Err(e) => return Err(ImageError::io(format!("fetch {}", desc.digest()))(e)),
            }
        }
        verify(desc, hasher)?;
        Ok(out)
    }

    pub async fn blob_stream(
        &self,
        source: &OciReference,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> Result<SizedStream, ImageError> {
        self.client
            .pull_blob_stream(source, desc.digest().as_ref())
            .await
            .map_err(|e| registry_error(image, source, e))
    }
}

/// Checks what was streamed against the descriptor: size and digest.
pub fn verify(desc: &Descriptor, hasher: Hasher) -> Result<(), ImageError> {
    let len = hasher.len();
    let actual = hasher.finish();
    let expected = desc.digest().to_string();
    if len != desc.size() || actual != expected {
        return Err(ImageError::Verification {
            digest: expected,
            detail: format!(
                "got {len} bytes with digest {actual}, expected {} bytes",
                desc.size()
            ),
        });
    }
    Ok(())
}

fn is_index(bytes: &[u8]) -> Result<bool, ImageError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::InvalidImage(format!("invalid manifest: {e}")))?;
    if v.get("schemaVersion").and_then(|s| s.as_i64()) != Some(2) {
        return Err(ImageError::InvalidImage(
            "unsupported manifest: only schema version 2 manifests are supported".into(),
        ));
    }
    Ok(v.get("manifests").is_some())
}

/// The OCI/Docker name of this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The linux entry for this architecture, as dockerd picks it.
pub fn pick_platform(entries: &[Descriptor]) -> Option<&Descriptor> {
    entries.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
        })
    })
}

/// `MANIFEST_UNKNOWN` -> `manifest unknown`, as Docker's errcode prints.
fn code_words(code: &OciErrorCode) -> String {
    serde_json::to_string(code)
        .unwrap_or_default()
        .trim_matches('"')
        .to_lowercase()
        .replace('_', " ")
}

/// True if the registry answered with one of `codes`.
fn is_code(e: &OciDistributionError, codes: &[OciErrorCode]) -> bool {
    matches!(e, OciDistributionError::RegistryError { envelope, .. }
        if envelope.errors.first().is_some_and(|f| codes.contains(&f.code)))
}

/// The registry does not have the repository (or will not say).
fn repo_unknown(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::UnauthorizedError { .. })
        || is_code(
            e,
            &[
                OciErrorCode::NameUnknown,
                OciErrorCode::Denied,
                OciErrorCode::Unauthorized,
            ],
        )
}

/// Registry errors in the words dockerd uses (`distribution/errors.go`).
fn registry_error(image: &ImageRef, ep: &OciReference, e: OciDistributionError) -> ImageError {
    let denied = |cause: &str| {
        ImageError::NotFound(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': {cause}",
            image.familiar_name()
        ))
    };
    let unknown = |cause: &str| {
        ImageError::NotFound(format!(
            "manifest for {} not found: {cause}",
            image.familiar()
        ))
    };
    match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            if let Some(first) = envelope.errors.first() {
                let cause = format!("{}: {}", code_words(&first.code), first.message);
                match first.code {
                    OciErrorCode::ManifestUnknown => return unknown(&cause),
                    OciErrorCode::NameUnknown
                    | OciErrorCode::Denied
                    | OciErrorCode::Unauthorized => return denied(&cause),
                    _ => {}
                }
            }
        }
        OciDistributionError::UnauthorizedError { .. } => {
            return denied("denied: requested access to the resource is denied");
        }
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => {
            return unknown("manifest unknown");
        }
        _ => {}
    }
    warn!(registry = %ep.resolve_registry(), error = %e, "registry request failed");
    ImageError::Registry {
        message: format!(
            "error pulling {} from {}",
            image.familiar(),
            ep.resolve_registry()
        ),
        source: Box::new(e),
    }
}
