//! The Docker API's views of a stored image: `ImageSummary` for
//! `docker images`, `ImageInspect` for `docker image inspect`.

use std::collections::HashMap;

use bollard_stubs::models::{
    DriverData, ImageConfig, ImageHistoryResponseItem, ImageInspect, ImageInspectMetadata,
    ImageInspectRootFs, ImageSummary,
};
use oci_spec::image::ImageConfiguration;

use super::{
    ImageError, ImageStore,
    meta::Meta,
    reference::ImageRef,
    store::{State, lookup},
};

/// Tags and digest references of `id`, in Docker's familiar form.
pub(super) fn names(meta: &Meta, id: &str) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    for r in meta.refs_of(id).filter_map(|r| ImageRef::parse(r).ok()) {
        if r.digest().is_some() {
            digests.push(r.familiar());
        } else {
            tags.push(r.familiar());
        }
    }
    (tags, digests)
}

/// Seconds since the epoch of the config's `created` (0 if absent).
pub(super) fn created_unix(c: &ImageConfiguration) -> i64 {
    c.created()
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0, |t| t.timestamp())
}

fn size(meta: &Meta, id: &str) -> i64 {
    meta.images.get(id).map_or(0, |img| {
        img.layers
            .iter()
            .filter_map(|l| meta.layers.get(l))
            .map(|l| l.size as i64)
            .sum()
    })
}

pub(super) fn summary(st: &State, id: &str, config: &ImageConfiguration) -> ImageSummary {
    let (repo_tags, repo_digests) = names(&st.meta, id);
    ImageSummary {
        id: id.to_owned(),
        parent_id: String::new(),
        repo_tags,
        repo_digests,
        created: created_unix(config),
        size: size(&st.meta, id),
        shared_size: -1,
        labels: config
            .config()
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default(),
        containers: -1,
        manifests: None,
        descriptor: None,
    }
}

impl ImageStore {
    /// `GET /images/{name}/json`.
    pub fn inspect(&self, name: &str) -> Result<ImageInspect, ImageError> {
        let st = self.lock_state();
        let id = lookup(&st.meta, name)?;
        let (Some(img), Some(c)) = (st.meta.images.get(&id), st.configs.get(&id)) else {
            return Err(ImageError::NoSuchImage(name.to_owned()));
        };
        let (repo_tags, repo_digests) = names(&st.meta, &id);
        let cfg = c.config().clone().unwrap_or_default();
        // overlayfs order: the top layer first.
        let lower: Vec<String> = img
            .layers
            .iter()
            .rev()
            .filter_map(|l| self.layer_dir(l))
            .map(|p| p.display().to_string())
            .collect();
        Ok(ImageInspect {
            id: Some(id.clone()),
            repo_tags: Some(repo_tags),
            repo_digests: Some(repo_digests),
            comment: c
                .history()
                .as_ref()
                .and_then(|h| h.last())
                .and_then(|h| h.comment().clone())
                .or(Some(String::new())),
            created: c.created().clone(),
            author: c.author().clone().or(Some(String::new())),
            config: Some(ImageConfig {
                user: cfg.user().clone(),
                exposed_ports: cfg.exposed_ports().clone(),
                env: cfg.env().clone(),
                cmd: cfg.cmd().clone(),
                volumes: cfg.volumes().clone(),
                working_dir: cfg.working_dir().clone(),
                entrypoint: cfg.entrypoint().clone(),
                labels: cfg.labels().clone(),
                stop_signal: cfg.stop_signal().clone(),
                ..Default::default()
            }),
            architecture: Some(c.architecture().to_string()),
            variant: c.variant().clone(),
            os: Some(c.os().to_string()),
            size: Some(size(&st.meta, &id)),
            graph_driver: Some(DriverData {
                name: "overlay2".into(),
                data: HashMap::from([("LowerDir".to_owned(), lower.join(":"))]),
            }),
            root_fs: Some(ImageInspectRootFs {
                typ: "layers".into(),
                layers: Some(img.layers.clone()),
            }),
            metadata: Some(ImageInspectMetadata {
                last_tag_time: img.last_tag_time.clone(),
            }),
            ..Default::default()
        })
    }
}

impl ImageStore {
    /// `GET /images/{name}/history`: the config's history, newest first;
    /// only the newest entry carries the image ID (`<missing>` for the
    /// others, as for pulled images in dockerd).
    pub fn history(&self, name: &str) -> Result<Vec<ImageHistoryResponseItem>, ImageError> {
        let st = self.lock_state();
        let id = lookup(&st.meta, name)?;
        let (Some(img), Some(c)) = (st.meta.images.get(&id), st.configs.get(&id)) else {
            return Err(ImageError::NoSuchImage(name.to_owned()));
        };
        let (tags, _) = names(&st.meta, &id);
        let mut layer_sizes = img
            .layers
            .iter()
            .map(|l| st.meta.layers.get(l).map_or(0, |r| r.size as i64));
        let mut out: Vec<ImageHistoryResponseItem> = c
            .history()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|h| ImageHistoryResponseItem {
                id: "<missing>".into(),
                created: h
                    .created()
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp()),
                created_by: h.created_by().clone().unwrap_or_default(),
                tags: Vec::new(),
                size: if h.empty_layer().unwrap_or(false) {
                    0
                } else {
                    layer_sizes.next().unwrap_or(0)
                },
                comment: h.comment().clone().unwrap_or_default(),
            })
            .collect();
        out.reverse();
        if let Some(top) = out.first_mut() {
            top.id = id.clone();
            top.tags = tags;
        }
        Ok(out)
    }
}
