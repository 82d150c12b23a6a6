//! `docker rmi` with dockerd's rules (`daemon/images/image_delete.go`):
//! removing one of several references only untags; the last reference
//! deletes the image and the layers no other image uses. Images that
//! containers use are guarded: without force any use refuses, with force
//! a stopped container's image is untagged but kept (its layers are that
//! container's root filesystem), and a running container's image is
//! refused outright.

use std::collections::BTreeSet;

use bollard_stubs::models::ImageDeleteResponseItem;
use tracing::info;

use super::{
    ImageError, ImageStore, ImageUser,
    reference::ImageRef,
    short_id,
    store::{is_id_name, lookup},
};

fn untagged(r: &ImageRef) -> ImageDeleteResponseItem {
    ImageDeleteResponseItem {
        untagged: Some(r.familiar()),
        deleted: None,
    }
}

fn deleted(id: &str) -> ImageDeleteResponseItem {
    ImageDeleteResponseItem {
        untagged: None,
        deleted: Some(id.to_owned()),
    }
}

/// All references in one repository, at most one of them a tag
/// (Docker's `isSingleReference`).
fn is_single_reference(refs: &[ImageRef]) -> bool {
    if refs.len() <= 1 {
        return refs.len() == 1;
    }
    let tags = refs.iter().filter(|r| r.digest().is_none()).count();
    let names: BTreeSet<String> = refs.iter().map(ImageRef::name).collect();
    tags <= 1 && names.len() == 1
}

fn same_image(a: &str, b: &str) -> bool {
    a.strip_prefix("sha256:").unwrap_or(a) == b.strip_prefix("sha256:").unwrap_or(b)
}

impl ImageStore {
    /// Removes `name` (a reference or an ID) as `docker rmi` does.
    /// `users` are the containers and the images they use.
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        users: &[ImageUser],
    ) -> Result<Vec<ImageDeleteResponseItem>, ImageError> {
        let mut st = self.lock_state();
        let id = lookup(&st.meta, name)?;
        let mut meta = st.meta.clone();
        let users: Vec<&ImageUser> = users
            .iter()
            .filter(|u| same_image(&u.image_id, &id))
            .collect();
        let running = users.iter().find(|u| u.running);
        let hard = |u: &ImageUser| {
            ImageError::Conflict(format!(
                "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                short_id(&id),
                short_id(&u.container_id)
            ))
        };
        let refs: Vec<ImageRef> = meta
            .refs_of(&id)
            .filter_map(|r| ImageRef::parse(r).ok())
            .collect();
        let mut records = Vec::new();
        if !is_id_name(&id, name) {
            let target = ImageRef::parse_default_tag(name)?;
            if is_single_reference(&refs)
                && let Some(u) = users.first()
            {
                if !force {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                        short_id(&u.container_id),
                        short_id(&id)
                    )));
                }
                if let Some(u) = running {
                    return Err(hard(u));
                }
            }
            meta.refs.remove(&target.to_string());
            records.push(untagged(&target));
            // A tag gone, and no other tag of its repository left: the
            // repository's digest references go too.
            let other_tag = refs
                .iter()
                .any(|r| r.digest().is_none() && r.name() == target.name() && *r != target);
            if target.digest().is_none() && !other_tag {
                for r in refs
                    .iter()
                    .filter(|r| r.digest().is_some() && r.name() == target.name())
                {
                    meta.refs.remove(&r.to_string());
                    records.push(untagged(r));
                }
            }
        } else {
            if let Some(u) = running {
                return Err(hard(u));
            }
            if !force {
                if !refs.is_empty() && !is_single_reference(&refs) {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        short_id(&id)
                    )));
                }
                if let Some(u) = users.first() {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                        short_id(&id),
                        short_id(&u.container_id)
                    )));
                }
            }
            for r in &refs {
                meta.refs.remove(&r.to_string());
                records.push(untagged(r));
            }
        }
        if meta.refs_of(&id).next().is_some() || !users.is_empty() {
            self.save(&meta)?;
            st.meta = meta;
            return Ok(records);
        }
        let Some(img) = meta.images.remove(&id) else {
            return Err(ImageError::NoSuchImage(name.to_owned()));
        };
        let layers: Vec<String> = img
            .layers
            .iter()
            .filter(|l| !meta.layer_used(l, &id) && !self.layer_busy(l))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for l in &layers {
            meta.layers.remove(l);
        }
        let blobs: Vec<String> = std::iter::once(id.clone())
            .chain(img.manifests.iter().cloned())
            .filter(|b| !meta.blob_used(b, &id))
            .collect();
        self.save(&meta)?;
        st.meta = meta;
        st.configs.remove(&id);
        drop(st);
        self.delete_files(&blobs, &layers);
        info!(image = %id, layers = layers.len(), "image deleted");
        records.push(deleted(&id));
        records.extend(layers.iter().map(|l| deleted(l)));
        Ok(records)
    }
}
