//! Test support: images built in memory, a tiny registry serving them on
//! 127.0.0.1, and archives in `docker save` and OCI layout form.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{
    hash::digest_of,
    registry::host_arch,
    unpack::tests::{LayerBuilder, gzip},
};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An image as a registry or an archive holds it.
#[derive(Clone)]
pub struct TestImage {
    /// Uncompressed layer tars, base first.
    pub layers: Vec<Vec<u8>>,
    /// The gzip blobs of the layers.
    pub blobs: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// An image of the given layers, with `labels` and a `created` time.
    pub fn new(layers: Vec<Vec<u8>>, created: &str, labels: &[(&str, &str)]) -> Self {
        Self::with_diff_ids(layers, created, labels, None)
    }

    /// `diff_ids` overrides what the config claims (to test mismatches).
    pub fn with_diff_ids(
        layers: Vec<Vec<u8>>,
        created: &str,
        labels: &[(&str, &str)],
        diff_ids: Option<Vec<String>>,
    ) -> Self {
        let blobs: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
        let diff_ids =
            diff_ids.unwrap_or_else(|| layers.iter().map(|l| digest_of(l)).collect::<Vec<_>>());
        let labels: HashMap<&str, &str> = labels.iter().copied().collect();
        let config = serde_json::to_vec(&json!({
            "created": created,
            "architecture": host_arch(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                "Cmd": ["sh"],
                "WorkingDir": "/",
                "ExposedPorts": {"80/tcp": {}},
                "Labels": labels,
                "StopSignal": "SIGQUIT"
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": "test"}]
        }))
        .expect("config json");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(&config),
                "size": config.len()
            },
            "layers": blobs.iter().map(|b| json!({
                "mediaType": OCI_LAYER_GZIP,
                "digest": digest_of(b),
                "size": b.len()
            })).collect::<Vec<_>>()
        }))
        .expect("manifest json");
        Self {
            layers,
            blobs,
            config,
            manifest,
        }
    }

    /// One small layer with a file `name` holding `content`.
    pub fn simple(name: &str, content: &[u8]) -> Self {
        let layer = LayerBuilder::new()
            .dir("bin/")
            .file(&format!("bin/{name}"), content)
            .finish();
        Self::new(vec![layer], "2024-01-02T03:04:05Z", &[])
    }

    pub fn id(&self) -> String {
        digest_of(&self.config)
    }
}

/// An index with an entry for another architecture and one for this host.
pub fn index_for(img: &TestImage) -> Vec<u8> {
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
             "platform": {"architecture": other, "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": digest_of(&img.manifest), "size": img.manifest.len(),
             "platform": {"architecture": host_arch(), "os": "linux"}}
        ]
    }))
    .expect("index json")
}

#[derive(Default)]
struct Repo {
    /// Tag or digest -> (media type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
}

#[derive(Default)]
struct RegistryState {
    repos: HashMap<String, Repo>,
    blobs: HashMap<String, Vec<u8>>,
    /// Blob requests served, by digest.
    hits: HashMap<String, usize>,
}

/// A registry on 127.0.0.1 speaking just enough of the distribution API.
#[derive(Clone)]
pub struct TestRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<RegistryState>>,
}

fn oci_error(code: &str, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&json!({"errors": [{"code": code, "message": message}]}))
            .unwrap_or_default(),
    )
        .into_response()
}

async fn serve(State(st): State<Arc<Mutex<RegistryState>>>, Path(rest): Path<String>) -> Response {
    let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return match st.repos.get(repo) {
            Some(_) => {
                (StatusCode::OK, format!(r#"{{"name":"{repo}","tags":[]}}"#)).into_response()
            }
            None => oci_error("NAME_UNKNOWN", "repository name not known to registry"),
        };
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        // As distribution does: an unknown repository's manifests are
        // just unknown manifests.
        let Some(r) = st.repos.get(repo) else {
            return oci_error("MANIFEST_UNKNOWN", "manifest unknown");
        };
        let Some((mt, bytes)) = r.manifests.get(reference) else {
            return oci_error("MANIFEST_UNKNOWN", "manifest unknown");
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, mt.parse().expect("media type"));
        h.insert(
            "Docker-Content-Digest",
            digest_of(bytes).parse().expect("digest header"),
        );
        return (StatusCode::OK, h, bytes.clone()).into_response();
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let digest = digest.to_owned();
        *st.hits.entry(digest.clone()).or_default() += 1;
        return match st.blobs.get(&digest) {
            Some(b) => (StatusCode::OK, b.clone()).into_response(),
            None => oci_error("BLOB_UNKNOWN", "blob unknown to registry"),
        };
    }
    StatusCode::NOT_FOUND.into_response()
}

impl TestRegistry {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(RegistryState::default()));
        let app = Router::new()
            .route("/v2/", get(|| async { "{}" }))
            .route("/v2/{*rest}", get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind registry");
        let addr = listener.local_addr().expect("registry addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RegistryState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Serves `img` as `repo:tag` (and by its manifest digest).
    pub fn push(&self, repo: &str, tag: &str, img: &TestImage) {
        self.with(|st| {
            st.blobs.insert(digest_of(&img.config), img.config.clone());
            for b in &img.blobs {
                st.blobs.insert(digest_of(b), b.clone());
            }
            let r = st.repos.entry(repo.to_owned()).or_default();
            let m = (OCI_MANIFEST.to_owned(), img.manifest.clone());
            r.manifests.insert(digest_of(&img.manifest), m.clone());
            r.manifests.insert(tag.to_owned(), m);
        })
    }

    /// Serves an index as `repo:tag`, pointing at manifests pushed before.
    pub fn push_index(&self, repo: &str, tag: &str, index: Vec<u8>) {
        self.with(|st| {
            let r = st.repos.entry(repo.to_owned()).or_default();
            let m = (OCI_INDEX.to_owned(), index);
            r.manifests.insert(digest_of(&m.1), m.clone());
            r.manifests.insert(tag.to_owned(), m);
        })
    }

    /// Replaces the bytes served for blob `digest`.
    pub fn corrupt_blob(&self, digest: &str, bytes: Vec<u8>) {
        self.with(|st| st.blobs.insert(digest.to_owned(), bytes));
    }

    pub fn blob_hits(&self, digest: &str) -> usize {
        self.with(|st| st.hits.get(digest).copied().unwrap_or(0))
    }
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o444);
    b.append_data(&mut h, name, data).expect("append");
}

/// A `docker save` archive (skopeo's layout): `manifest.json`, the
/// config as `<hex>.json`, layers as `<hex>.tar` (gzip when `gz`).
pub fn docker_archive(img: &TestImage, tags: &[&str], gz: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| add_file(&mut b, name, data);
    let config_name = format!("{}.json", &img.id()[7..]);
    add(&config_name, &img.config);
    let mut layer_names = Vec::new();
    for l in &img.layers {
        let name = format!("{}.tar", &digest_of(l)[7..]);
        let data = if gz { gzip(l) } else { l.clone() };
        add(&name, &data);
        layer_names.push(name);
    }
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name, "RepoTags": tags, "Layers": layer_names
    }]))
    .expect("manifest.json");
    add("manifest.json", &manifest);
    b.into_inner().expect("archive")
}

/// An OCI image layout archive, named by `io.containerd.image.name`.
pub fn oci_archive(img: &TestImage, name: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| add_file(&mut b, name, data);
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in std::iter::once(&img.config)
        .chain(std::iter::once(&img.manifest))
        .chain(&img.blobs)
    {
        add(&format!("blobs/sha256/{}", &digest_of(blob)[7..]), blob);
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("org.opencontainers.image.ref.name".into(), "latest".into());
    if let Some(n) = name {
        annotations.insert("io.containerd.image.name".into(), n.into());
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(&img.manifest),
                       "size": img.manifest.len(), "annotations": annotations}]
    }))
    .expect("index.json");
    add("index.json", &index);
    b.into_inner().expect("archive")
}
