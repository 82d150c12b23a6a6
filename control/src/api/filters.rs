//! The `filters` query parameter: JSON, either `{"name": ["a", "b"]}` or
//! the older `{"name": {"a": true}}`. Unknown keys are refused with
//! Docker's "invalid filter" error.

use std::collections::{BTreeMap, HashMap};

use super::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Values {
    List(Vec<String>),
    Map(HashMap<String, bool>),
}

impl Filters {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(Self::default());
        };
        let parsed: HashMap<String, Values> = serde_json::from_str(raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid filter: {e}")))?;
        let mut out = BTreeMap::new();
        for (k, v) in parsed {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!("invalid filter '{k}'")));
            }
            let values = match v {
                Values::List(l) => l,
                Values::Map(m) => m
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(k, _)| k)
                    .collect(),
            };
            out.insert(k, values);
        }
        Ok(Self(out))
    }

    /// Values given for `key`, if the filter names it.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.0.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
    }

    /// True when `key` is not filtered or `pred` holds for one of its values.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        self.get(key)
            .is_none_or(|vals| vals.iter().any(|v| pred(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_and_unknown_keys() {
        let f = Filters::parse(Some(r#"{"role":["manager"]}"#), &["role"]).expect("list");
        assert_eq!(f.get("role"), Some(&["manager".to_owned()][..]));
        let f = Filters::parse(Some(r#"{"role":{"worker":true}}"#), &["role"]).expect("map");
        assert!(f.any("role", |v| v == "worker"));
        assert!(f.any("name", |_| false), "absent keys do not filter");
        let e = Filters::parse(Some(r#"{"bogus":["x"]}"#), &["role"]);
        assert!(matches!(e, Err(ApiError::BadRequest(m)) if m == "invalid filter 'bogus'"));
        assert!(Filters::parse(Some("{not json"), &["role"]).is_err());
        assert_eq!(Filters::parse(None, &[]).expect("none"), Filters::default());
    }
}
