//! Image references as Docker reads and prints them.
//!
//! Parsing follows `reference.ParseNormalizedNamed` of Docker's
//! distribution library: `nginx` is `docker.io/library/nginx`, `foo/bar`
//! is `docker.io/foo/bar`, a first component with a `.` or `:` (or
//! `localhost`) is a registry. The grammar itself is checked by
//! `oci_spec`'s port of the same regular expression; what Docker checks
//! before it (64-hex names, upper case) is done here, with Docker's words.
//! Printing uses Docker's "familiar" form (`nginx:latest`,
//! `foo/bar@sha256:...`, `198.18.0.2:5000/library/busybox:latest`).

use std::fmt;

use oci_client::Reference as OciReference;

use super::ImageError;

pub const HUB_DOMAIN: &str = "docker.io";
const LEGACY_HUB_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";

/// A normalized reference: registry domain, repository path, and a tag
/// and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses as Docker does, without adding a default tag.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let invalid = |m: String| ImageError::InvalidReference(m);
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid(format!(
                "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
            )));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder
            .split_once(':')
            .map_or(remainder.as_str(), |(r, _)| r);
        if remote.to_lowercase() != remote {
            return Err(invalid(format!(
                "invalid reference format: repository name ({remote}) must be lowercase"
            )));
        }
        let parsed = OciReference::try_from(format!("{domain}/{remainder}").as_str())
            .map_err(|e| invalid(e.to_string()))?;
        let digest = parsed.digest().map(str::to_owned);
        // oci_spec adds `latest` when neither is given; Docker's parser
        // does not (the caller decides, e.g. `TagNameOnly`).
        let name = remainder.split('@').next().unwrap_or_default();
        let last = name.rsplit('/').next().unwrap_or_default();
        let tag = last.split_once(':').map(|(_, t)| t.to_owned());
        let path = match &tag {
            Some(t) => name[..name.len() - t.len() - 1].to_owned(),
            None => name.to_owned(),
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Parses and adds the `latest` tag when the reference has neither a
    /// tag nor a digest (Docker's `TagNameOnly`).
    pub fn parse_default_tag(s: &str) -> Result<Self, ImageError> {
        Self::parse(s).map(Self::with_default_tag)
    }

    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_owned());
        }
        self
    }

    /// The same repository with `digest` (and no tag).
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            tag: None,
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    pub fn is_hub(&self) -> bool {
        self.domain == HUB_DOMAIN
    }

    /// `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `nginx`, `foo/bar`, `host:5000/x`.
    pub fn familiar_name(&self) -> String {
        if !self.is_hub() {
            return self.name();
        }
        match self.path.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.path.clone(),
        }
    }

    /// `nginx:latest`, `nginx@sha256:...`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        push_suffix(&mut s, self.tag(), self.digest());
        s
    }

    /// The reference as the distribution client wants it, pulling by
    /// digest when there is one (the tag is then only a label).
    pub fn to_oci(&self) -> OciReference {
        match &self.digest {
            Some(d) => OciReference::with_digest(self.domain.clone(), self.path.clone(), d.clone()),
            None => OciReference::with_tag(
                self.domain.clone(),
                self.path.clone(),
                self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned()),
            ),
        }
    }

    /// The tag or digest, as Docker names a pull in its progress
    /// (`latest: Pulling from library/nginx`).
    pub fn tag_or_digest(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| DEFAULT_TAG.to_owned())
    }
}

/// The full normalized form (`docker.io/library/nginx:latest`), the key
/// under which the store keeps references.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        push_suffix(&mut s, self.tag(), self.digest());
        f.write_str(&s)
    }
}

fn push_suffix(s: &mut String, tag: Option<&str>, digest: Option<&str>) {
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
}

/// Docker's `splitDockerDomain`.
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (HUB_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_HUB_DOMAIN {
        domain = HUB_DOMAIN.to_owned();
    }
    if domain == HUB_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_PREFIX}{remainder}");
    }
    (domain, remainder)
}

/// True for `sha256:<64 hex>`.
pub fn is_full_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn full(s: &str) -> String {
        ImageRef::parse_default_tag(s).expect(s).to_string()
    }

    #[test]
    fn normalisation() {
        assert_eq!(full("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(full("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(full("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(full("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            full("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(full("localhost/x"), "localhost/x:latest");
        assert_eq!(full("host:5000/x"), "host:5000/x:latest");
        assert_eq!(
            full("198.18.0.2:5000/library/busybox:v1"),
            "198.18.0.2:5000/library/busybox:v1"
        );
        assert_eq!(
            full(&format!("nginx@{D}")),
            format!("docker.io/library/nginx@{D}")
        );
        let r = ImageRef::parse(&format!("a/b:t@{D}")).expect("tag and digest");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.path(), "a/b");
        assert!(ImageRef::parse("nginx").expect("plain").tag().is_none());
    }

    #[test]
    fn familiar_forms() {
        let f = |s: &str| ImageRef::parse_default_tag(s).expect(s).familiar();
        assert_eq!(f("docker.io/library/nginx:latest"), "nginx:latest");
        assert_eq!(f("nginx"), "nginx:latest");
        assert_eq!(f("foo/bar"), "foo/bar:latest");
        assert_eq!(f("docker.io/library/a/b"), "library/a/b:latest");
        assert_eq!(f(&format!("nginx@{D}")), format!("nginx@{D}"));
        assert_eq!(
            f("198.18.0.2:5000/library/busybox"),
            "198.18.0.2:5000/library/busybox:latest"
        );
        let r = ImageRef::parse("nginx").expect("nginx");
        assert_eq!(r.familiar_name(), "nginx");
        assert_eq!(r.tag_or_digest(), "latest");
    }

    #[test]
    fn docker_errors() {
        let e = |s: &str| match ImageRef::parse(s) {
            Err(ImageError::InvalidReference(m)) => m,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            e("NGINX"),
            "invalid reference format: repository name (library/NGINX) must be lowercase"
        );
        assert_eq!(e("foo bar"), "invalid reference format");
        assert_eq!(e("nginx:bad tag"), "invalid reference format");
        assert_eq!(e(""), "invalid reference format");
        assert!(e(&D[7..]).contains("cannot specify 64-byte hexadecimal strings"));
        assert_eq!(e("nginx@sha256:abc"), "invalid reference format");
    }
}
