//! `docker images`: the list and its filters (`reference` globs matched
//! as Docker's `FamiliarMatch`, `dangling`, `label`, `before`, `since`),
//! newest first.

use bollard_stubs::models::ImageSummary;

use super::{
    ImageError, ImageStore,
    reference::ImageRef,
    store::lookup,
    view::{created_unix, summary},
};

/// The filters of `GET /images/json`, values as given.
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    pub references: Vec<String>,
    pub dangling: Option<String>,
    pub labels: Vec<String>,
    pub before: Option<String>,
    pub since: Option<String>,
}

impl ImageStore {
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<ImageSummary>, ImageError> {
        let dangling = match opts
            .dangling
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => None,
            Some("true" | "1") => Some(true),
            Some("false" | "0") => Some(false),
            Some(_) => {
                return Err(ImageError::InvalidArgument(format!(
                    "invalid filter 'dangling={}'",
                    opts.dangling.as_deref().unwrap_or_default()
                )));
            }
        };
        let st = self.lock_state();
        let created_of = |name: &str| -> Result<i64, ImageError> {
            let id = lookup(&st.meta, name)?;
            Ok(st.configs.get(&id).map_or(0, |c| created_unix(c)))
        };
        let before = opts.before.as_deref().map(created_of).transpose()?;
        let since = opts.since.as_deref().map(created_of).transpose()?;
        let mut out = Vec::new();
        for (id, config) in &st.configs {
            let s = summary(&st, id, config);
            let untagged = s.repo_tags.is_empty() && s.repo_digests.is_empty();
            match dangling {
                Some(true) if !s.repo_tags.is_empty() => continue,
                Some(false) if untagged => continue,
                _ => {}
            }
            if !opts.references.is_empty() {
                let refs = st
                    .meta
                    .refs_of(id)
                    .filter_map(|r| ImageRef::parse(r).ok())
                    .collect::<Vec<_>>();
                let hit = opts
                    .references
                    .iter()
                    .any(|p| refs.iter().any(|r| familiar_match(p, r)));
                if !hit {
                    continue;
                }
            }
            if !opts.labels.iter().all(|l| label_match(l, &s.labels)) {
                continue;
            }
            if before.is_some_and(|b| s.created >= b) || since.is_some_and(|t| s.created <= t) {
                continue;
            }
            out.push(s);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

fn label_match(filter: &str, labels: &std::collections::HashMap<String, String>) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

/// Docker's `FamiliarMatch`: the pattern against `nginx:latest`, then
/// against the bare name `nginx`.
fn familiar_match(pattern: &str, r: &ImageRef) -> bool {
    glob(pattern.as_bytes(), r.familiar().as_bytes())
        || glob(pattern.as_bytes(), r.familiar_name().as_bytes())
}

/// Go's `path.Match`: `*` and `?` stop at `/`, `[...]` classes with
/// ranges and `^`, `\` escapes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            for i in 0..=s.len() {
                if glob(&p[1..], &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    return false;
                }
            }
            false
        }
        Some(b'?') => s.first().is_some_and(|&c| c != b'/') && glob(&p[1..], &s[1..]),
        Some(b'[') => match (s.first(), class(&p[1..], s.first().copied().unwrap_or(0))) {
            (Some(&c), Some((true, used))) if c != b'/' => glob(&p[1 + used..], &s[1..]),
            _ => false,
        },
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// Matches `c` against a class body (after `[`): (matched, bytes used
/// including the closing `]`); `None` for a malformed class.
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let esc = |i: usize| -> Option<(u8, usize)> {
        match *p.get(i)? {
            b'\\' => Some((*p.get(i + 1)?, 2)),
            ch => Some((ch, 1)),
        }
    };
    let negate = p.first() == Some(&b'^');
    let mut i = usize::from(negate);
    let mut matched = false;
    let mut first = true;
    loop {
        if *p.get(i)? == b']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, n) = esc(i)?;
        i += n;
        let mut hi = lo;
        if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|&x| x != b']') {
            let (h, n) = esc(i + 1)?;
            hi = h;
            i += 1 + n;
        }
        matched |= lo <= c && c <= hi;
    }
    Some((matched != negate, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_go() {
        let r = |s: &str| ImageRef::parse_default_tag(s).expect(s);
        assert!(familiar_match("nginx", &r("nginx:latest")));
        assert!(familiar_match("nginx:*", &r("nginx:1.25")));
        assert!(familiar_match("ngi?x", &r("nginx")));
        assert!(!familiar_match("*", &r("foo/bar")), "* stops at /");
        assert!(familiar_match("*/*", &r("foo/bar")));
        assert!(familiar_match("[m-o]ginx", &r("nginx")));
        assert!(!familiar_match("[^n]ginx", &r("nginx")));
        assert!(!familiar_match("busybox", &r("nginx")));
        assert!(familiar_match(
            "198.18.0.2:5000/library/*",
            &r("198.18.0.2:5000/library/busybox")
        ));
    }
}
