//! The store end to end: pulls from a registry served by the test, loads
//! of archives built by the test, and the rules of tag, list and rmi.

use std::{path::Path, sync::Arc};

use serde_json::Value;

use super::{
    ImageError, ImageStore, ImageUser, ListOptions, Progress, RegistryConfig,
    hash::digest_of,
    testutil::{TestImage, TestRegistry, docker_archive, index_for, oci_archive},
    unpack::tests::LayerBuilder,
};

fn open(root: &Path, reg: Option<&TestRegistry>, mirror: bool) -> Arc<ImageStore> {
    let cfg = match reg {
        Some(r) if mirror => RegistryConfig {
            mirrors: vec![format!("http://{}", r.addr)],
            insecure: vec![],
        },
        Some(r) => RegistryConfig {
            mirrors: vec![],
            insecure: vec![r.addr.to_string()],
        },
        None => RegistryConfig::default(),
    };
    Arc::new(ImageStore::open(root, cfg).expect("open store"))
}

/// Runs a whole pull; the progress lines as JSON.
async fn pull(store: &Arc<ImageStore>, name: &str) -> Result<Vec<Value>, ImageError> {
    let plan = store.prepare_pull(name, None).await?;
    let (p, mut rx) = Progress::channel(4096);
    let r = store.run_pull(plan, &p).await;
    drop(p);
    r?;
    let mut out = Vec::new();
    while let Ok(line) = rx.try_recv() {
        out.push(serde_json::from_slice(&line).expect("progress line is JSON"));
    }
    Ok(out)
}

fn statuses(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l["status"].as_str().map(str::to_owned))
        .collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// No image, no layer, nothing left in tmp/.
fn assert_empty(store: &ImageStore, root: &Path) {
    assert!(
        store
            .list(&ListOptions::default())
            .expect("list")
            .is_empty()
    );
    assert_eq!(count(&root.join("layers")), 0, "no layer dir");
    assert_eq!(count(&root.join("tmp")), 0, "no temporary files");
}

fn users(image: &str, running: bool) -> Vec<ImageUser> {
    vec![ImageUser {
        container_id: "0123456789abcdef0123".into(),
        image_id: image.into(),
        running,
    }]
}

#[tokio::test]
async fn pull_verify_store_and_reopen() {
    let reg = TestRegistry::start().await;
    let base = LayerBuilder::new()
        .dir("bin/")
        .file("bin/sh", b"#!shell")
        .finish();
    let top = LayerBuilder::new().file("etc/motd", b"hello").finish();
    let img = TestImage::new(vec![base, top], "2024-01-02T03:04:05Z", &[("a", "b")]);
    reg.push("library/test", "latest", &img);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), false);
    let name = format!("{}/library/test", reg.addr);

    let lines = pull(&store, &name).await.expect("pull");
    let st = statuses(&lines);
    assert_eq!(st[0], "Pulling from library/test");
    assert_eq!(lines[0]["id"], "latest");
    assert_eq!(
        st.iter().filter(|s| *s == "Pull complete").count(),
        2,
        "{st:?}"
    );
    let digest = digest_of(&img.manifest);
    assert!(st.contains(&format!("Digest: {digest}")), "{st:?}");
    assert_eq!(
        st.last().map(String::as_str),
        Some(format!("Status: Downloaded newer image for {name}:latest").as_str())
    );

    let r = store.resolve(&name).expect("resolve");
    assert_eq!(r.id, img.id());
    assert_eq!(r.layers.len(), 2);
    assert_eq!(
        std::fs::read(r.layers[0].join("bin/sh")).expect("base file"),
        b"#!shell"
    );
    assert_eq!(
        std::fs::read(r.layers[1].join("etc/motd")).expect("top file"),
        b"hello"
    );
    assert_eq!(count(&dir.path().join("tmp")), 0);

    let list = store.list(&ListOptions::default()).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].repo_tags, vec![format!("{name}:latest")]);
    assert_eq!(list[0].repo_digests, vec![format!("{name}@{digest}")]);
    assert_eq!(list[0].created, 1_704_164_645);
    assert_eq!(list[0].size, 12);
    assert_eq!(list[0].containers, -1);

    let ins = store.inspect(&name).expect("inspect");
    let cfg = ins.config.expect("config");
    assert_eq!(cfg.cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(cfg.exposed_ports, Some(vec!["80/tcp".to_owned()]));
    assert_eq!(cfg.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(
        ins.root_fs.expect("rootfs").layers.expect("layers").len(),
        2
    );

    // Again: nothing is downloaded.
    let blob = digest_of(&img.blobs[0]);
    assert_eq!(reg.blob_hits(&blob), 1);
    let again = statuses(&pull(&store, &name).await.expect("pull again"));
    assert_eq!(
        again.last().map(String::as_str),
        Some(format!("Status: Image is up to date for {name}:latest").as_str())
    );
    assert_eq!(reg.blob_hits(&blob), 1);

    // A restarted agent finds it all again.
    drop(store);
    let store = open(dir.path(), Some(&reg), false);
    let r2 = store
        .resolve(&format!("{name}@{digest}"))
        .expect("by digest after reopen");
    assert_eq!(r2.id, img.id());
    assert_eq!(r2.layers, r.layers);
}

#[tokio::test]
async fn shared_layers_are_not_fetched_twice() {
    let reg = TestRegistry::start().await;
    let base = LayerBuilder::new().file("base", b"base").finish();
    let a = TestImage::new(vec![base.clone()], "2024-01-01T00:00:00Z", &[]);
    let b = TestImage::new(
        vec![base, LayerBuilder::new().file("b", b"b").finish()],
        "2024-01-02T00:00:00Z",
        &[],
    );
    reg.push("library/a", "latest", &a);
    reg.push("library/b", "latest", &b);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), true);
    pull(&store, "a").await.expect("pull a via mirror");
    let st = statuses(&pull(&store, "b").await.expect("pull b"));
    assert!(st.contains(&"Already exists".to_owned()), "{st:?}");
    assert_eq!(
        st.last().map(String::as_str),
        Some("Status: Downloaded newer image for b:latest")
    );
    assert_eq!(count(&dir.path().join("layers")), 2);

    // Removing a keeps the base layer b needs.
    let out = store.remove("a", false, &[]).expect("rmi a");
    assert_eq!(out[0].untagged.as_deref(), Some("a:latest"));
    assert_eq!(out[2].deleted.as_deref(), Some(a.id().as_str()));
    assert_eq!(
        out.len(),
        3,
        "untag, untag digest, delete; no layer: {out:?}"
    );
    assert_eq!(count(&dir.path().join("layers")), 2);
    assert!(
        store
            .resolve("b")
            .expect("b intact")
            .layers
            .iter()
            .all(|l| l.is_dir())
    );
}

#[tokio::test]
async fn index_picks_this_platform() {
    let reg = TestRegistry::start().await;
    let img = TestImage::simple("x", b"x");
    reg.push("library/multi", "only-manifest", &img);
    let index = index_for(&img);
    reg.push_index("library/multi", "latest", index.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), false);
    let name = format!("{}/library/multi", reg.addr);
    let st = statuses(&pull(&store, &name).await.expect("pull index"));
    assert!(
        st.contains(&format!("Digest: {}", digest_of(&index))),
        "{st:?}"
    );
    let list = store.list(&ListOptions::default()).expect("list");
    assert_eq!(list[0].id, img.id());
    assert_eq!(
        list[0].repo_digests,
        vec![format!("{name}@{}", digest_of(&index))]
    );
}

#[tokio::test]
async fn corrupt_layer_stores_nothing() {
    let reg = TestRegistry::start().await;
    let img = TestImage::new(
        vec![
            LayerBuilder::new().file("good", b"good").finish(),
            LayerBuilder::new().file("bad", b"bad").finish(),
        ],
        "2024-01-01T00:00:00Z",
        &[],
    );
    reg.push("library/bad", "latest", &img);
    let bad = digest_of(&img.blobs[1]);
    let mut tampered = img.blobs[1].clone();
    let last = tampered.len() - 9;
    tampered[last] ^= 0xff;
    reg.corrupt_blob(&bad, tampered);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), false);
    let err = pull(&store, &format!("{}/library/bad", reg.addr))
        .await
        .expect_err("corrupt layer");
    assert_eq!(
        err.to_string(),
        format!("filesystem layer verification failed for digest {bad}")
    );
    assert_empty(&store, dir.path());

    // A config whose diff ID does not match the layer's content.
    let lie = TestImage::with_diff_ids(
        vec![LayerBuilder::new().file("x", b"x").finish()],
        "2024-01-01T00:00:00Z",
        &[],
        Some(vec![format!("sha256:{}", "ab".repeat(32))]),
    );
    reg.push("library/lie", "latest", &lie);
    let err = pull(&store, &format!("{}/library/lie", reg.addr))
        .await
        .expect_err("diff ID mismatch");
    assert!(matches!(err, ImageError::Verification { .. }), "{err:?}");
    assert!(
        err.full_message().contains("the image config says"),
        "{}",
        err.full_message()
    );
    assert_empty(&store, dir.path());
}

#[tokio::test]
async fn registry_errors_in_dockers_words() {
    let reg = TestRegistry::start().await;
    reg.push("library/test", "latest", &TestImage::simple("x", b"x"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), false);
    let tag = store
        .prepare_pull(&format!("{}/library/test", reg.addr), Some("nope"))
        .await
        .err()
        .expect("unknown tag");
    assert!(matches!(tag, ImageError::NotFound(_)));
    assert_eq!(
        tag.to_string(),
        format!(
            "manifest for {}/library/test:nope not found: manifest unknown: manifest unknown",
            reg.addr
        )
    );
    let repo = store
        .prepare_pull(&format!("{}/nosuch", reg.addr), None)
        .await
        .err()
        .expect("unknown repo");
    assert!(
        repo.to_string().starts_with(&format!(
            "pull access denied for {}/nosuch, repository does not exist or may require 'docker login': name unknown: ",
            reg.addr
        )),
        "{repo}"
    );
    let bad = store
        .prepare_pull("NGINX", None)
        .await
        .err()
        .expect("bad name");
    assert!(matches!(bad, ImageError::InvalidReference(_)));
    // Nothing listens on port 9 of loopback: an unreachable registry.
    let store = Arc::new(
        ImageStore::open(
            &dir.path().join("other"),
            RegistryConfig {
                mirrors: vec![],
                insecure: vec!["127.0.0.1:9".into()],
            },
        )
        .expect("open"),
    );
    let down = store
        .prepare_pull("127.0.0.1:9/x", None)
        .await
        .err()
        .expect("unreachable");
    assert!(matches!(down, ImageError::Registry { .. }), "{down:?}");
    assert_empty(&store, &dir.path().join("other"));
}

#[tokio::test]
async fn concurrent_pulls_of_one_image() {
    let reg = TestRegistry::start().await;
    let img = TestImage::simple("c", &[7u8; 100_000]);
    reg.push("library/c", "latest", &img);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Some(&reg), false);
    let name = format!("{}/library/c", reg.addr);
    let (a, b) = tokio::join!(pull(&store, &name), pull(&store, &name));
    a.expect("first");
    b.expect("second");
    assert_eq!(
        reg.blob_hits(&digest_of(&img.blobs[0])),
        1,
        "the layer is fetched once"
    );
    assert_eq!(count(&dir.path().join("layers")), 1);
    assert_eq!(count(&dir.path().join("tmp")), 0);
}

async fn load(store: &Arc<ImageStore>, archive: Vec<u8>) -> Result<Vec<String>, ImageError> {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = archive
        .chunks(7000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    store.load(futures_util::stream::iter(chunks)).await
}

#[tokio::test]
async fn load_docker_and_oci_archives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), None, false);
    let img = TestImage::new(
        vec![
            LayerBuilder::new().file("bin/busybox", b"bb").finish(),
            LayerBuilder::new().file("etc/x", b"x").finish(),
        ],
        "2024-01-01T00:00:00Z",
        &[],
    );
    let plain = load(
        &store,
        docker_archive(&img, &["docker.io/library/busybox:latest"], false),
    )
    .await
    .expect("load plain layers");
    assert_eq!(plain, vec!["Loaded image: busybox:latest\n"]);
    assert_eq!(store.resolve("busybox").expect("resolve").id, img.id());

    let other = TestImage::simple("y", b"y");
    let gz = load(&store, docker_archive(&other, &["busybox:latest"], true))
        .await
        .expect("load gzip layers");
    assert_eq!(
        gz,
        vec![
            format!(
                "The image busybox:latest already exists, renaming the old one with ID {} to empty string\n",
                img.id()
            ),
            "Loaded image: busybox:latest\n".to_owned()
        ]
    );
    let untagged = load(
        &store,
        docker_archive(&TestImage::simple("z", b"z"), &[], true),
    )
    .await
    .expect("untagged");
    assert!(
        untagged[0].starts_with("Loaded image ID: sha256:"),
        "{untagged:?}"
    );

    let oci = TestImage::simple("o", b"oci");
    let lines = load(
        &store,
        oci_archive(&oci, Some("docker.io/library/ociimg:v1")),
    )
    .await
    .expect("load OCI");
    assert_eq!(lines, vec!["Loaded image: ociimg:v1\n"]);
    let bare = load(&store, oci_archive(&TestImage::simple("p", b"p"), None))
        .await
        .expect("load OCI without a name");
    assert!(bare[0].starts_with("Loaded image ID: "), "{bare:?}");
    assert_eq!(count(&dir.path().join("tmp")), 0);

    let dangling = ListOptions {
        dangling: Some("true".into()),
        ..Default::default()
    };
    assert_eq!(store.list(&dangling).expect("dangling").len(), 3);
}

#[tokio::test]
async fn corrupt_archives_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), None, false);
    let img = TestImage::new(
        vec![
            LayerBuilder::new().file("a", &[1u8; 30_000]).finish(),
            LayerBuilder::new().file("b", &[2u8; 30_000]).finish(),
        ],
        "2024-01-01T00:00:00Z",
        &[],
    );
    let whole = docker_archive(&img, &["t:latest"], false);
    let mut cases = vec![
        ("truncated", whole[..whole.len() - 40_000].to_vec()),
        ("not a tar", b"hello, this is not an archive".repeat(40)),
        (
            "empty tar",
            tar::Builder::new(Vec::new()).into_inner().expect("tar"),
        ),
    ];
    // A layer whose bytes differ from what the config says.
    let lie = TestImage::with_diff_ids(
        img.layers.clone(),
        "2024-01-01T00:00:00Z",
        &[],
        Some(vec![
            digest_of(&img.layers[0]),
            format!("sha256:{}", "cd".repeat(32)),
        ]),
    );
    cases.push((
        "diff ID mismatch",
        docker_archive(&lie, &["t:latest"], true),
    ));
    let oci = oci_archive(&img, Some("t:latest"));
    cases.push(("truncated OCI", oci[..oci.len() / 2].to_vec()));
    for (what, bytes) in cases {
        let e = load(&store, bytes).await.expect_err(what);
        assert!(matches!(e, ImageError::InvalidArchive(_)), "{what}: {e:?}");
        assert!(
            e.to_string().starts_with("invalid archive: "),
            "{what}: {e}"
        );
        assert_empty(&store, dir.path());
    }
}

#[tokio::test]
async fn tag_lookup_and_remove_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), None, false);
    let img = TestImage::simple("r", b"r");
    load(&store, docker_archive(&img, &["busybox:latest"], true))
        .await
        .expect("load");
    let id = img.id();
    assert_eq!(store.resolve(&id).expect("full id").id, id);
    assert_eq!(store.resolve(&id[7..19]).expect("short id").id, id);
    assert_eq!(store.resolve(&id[..19]).expect("sha256: prefix").id, id);
    assert_eq!(
        store.resolve("nosuch").expect_err("missing").to_string(),
        "No such image: nosuch:latest"
    );
    store
        .tag(&id[7..15], "198.18.0.2:5000/library/busybox", None)
        .expect("tag by id");
    store
        .tag("busybox", "mine", Some("v1"))
        .expect("tag by name");
    assert!(
        store
            .tag("busybox", "x@sha256:".to_owned().as_str(), None)
            .is_err()
    );
    let tags = |s: &ImageStore| store_tags(s);
    assert_eq!(
        tags(&store),
        vec![
            "198.18.0.2:5000/library/busybox:latest",
            "busybox:latest",
            "mine:v1"
        ]
    );
    let by_ref = ListOptions {
        references: vec!["busy*".into()],
        ..Default::default()
    };
    assert_eq!(store.list(&by_ref).expect("filter").len(), 1);

    // Several references: removing one only untags, even when used.
    let out = store
        .remove("mine:v1", false, &users(&id, true))
        .expect("untag");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].untagged.as_deref(), Some("mine:v1"));
    // By ID with references in several repositories: must be forced.
    let e = store.remove(&id, false, &[]).expect_err("multiple repos");
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &id[7..19]
        )
    );
    store
        .remove("198.18.0.2:5000/library/busybox", false, &[])
        .expect("untag registry name");
    // The last reference, used by a stopped container.
    let e = store
        .remove("busybox", false, &users(&id, false))
        .expect_err("used");
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to remove repository reference \"busybox\" (must force) - container 0123456789ab is using its referenced image {}",
            &id[7..19]
        )
    );
    let e = store
        .remove("busybox", true, &users(&id, true))
        .expect_err("running");
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to delete {} (cannot be forced) - image is being used by running container 0123456789ab",
            &id[7..19]
        )
    );
    // Forced with a stopped container: untagged, kept for the container.
    let out = store
        .remove("busybox", true, &users(&id, false))
        .expect("force untag");
    assert_eq!(out.len(), 1);
    assert!(store.resolve(&id).is_ok(), "image kept for its container");
    // Unused now: deleted with its layer.
    let out = store.remove(&id[7..19], false, &[]).expect("delete");
    assert_eq!(out[0].deleted.as_deref(), Some(id.as_str()));
    assert_eq!(out.len(), 2, "image and its layer: {out:?}");
    assert_empty(&store, dir.path());
    assert_eq!(count(&dir.path().join("blobs/sha256")), 0);
}

fn store_tags(s: &ImageStore) -> Vec<String> {
    let mut t: Vec<String> = s
        .list(&ListOptions::default())
        .expect("list")
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn list_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), None, false);
    let old = TestImage::new(
        vec![LayerBuilder::new().file("o", b"o").finish()],
        "2020-01-01T00:00:00Z",
        &[("tier", "db")],
    );
    let new = TestImage::new(
        vec![LayerBuilder::new().file("n", b"n").finish()],
        "2024-01-01T00:00:00Z",
        &[("tier", "web")],
    );
    load(&store, docker_archive(&old, &["old:1"], true))
        .await
        .expect("old");
    load(&store, docker_archive(&new, &["new:1"], true))
        .await
        .expect("new");
    let ids = |o: ListOptions| -> Vec<String> {
        store
            .list(&o)
            .expect("list")
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(
        ids(ListOptions::default()),
        vec![new.id(), old.id()],
        "newest first"
    );
    let label = |l: &str| ListOptions {
        labels: vec![l.into()],
        ..Default::default()
    };
    assert_eq!(ids(label("tier=db")), vec![old.id()]);
    assert_eq!(ids(label("tier")).len(), 2);
    assert!(ids(label("nope")).is_empty());
    let before = ListOptions {
        before: Some("new:1".into()),
        ..Default::default()
    };
    assert_eq!(ids(before), vec![old.id()]);
    let since = ListOptions {
        since: Some("old:1".into()),
        ..Default::default()
    };
    assert_eq!(ids(since), vec![new.id()]);
    let bad = ListOptions {
        dangling: Some("maybe".into()),
        ..Default::default()
    };
    assert_eq!(
        store.list(&bad).expect_err("bad dangling").to_string(),
        "invalid filter 'dangling=maybe'"
    );
}
