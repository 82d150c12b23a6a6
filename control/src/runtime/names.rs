//! Container names: Docker's validation, and generated names of its
//! `adjective_surname` shape for containers created without `--name`.

const LEFT: [&str; 32] = [
    "agile", "bold", "brave", "busy", "calm", "clever", "cool", "crisp", "eager", "fervent",
    "gentle", "happy", "jolly", "keen", "kind", "lively", "lucid", "merry", "modest", "nifty",
    "noble", "proud", "quick", "quiet", "sharp", "shy", "steady", "sunny", "swift", "tender",
    "vivid", "witty",
];

/// Engineers and scientists of networking and distributed systems.
const RIGHT: [&str; 32] = [
    "baran",
    "bellovin",
    "cerf",
    "clark",
    "davies",
    "deering",
    "dijkstra",
    "estrin",
    "floyd",
    "hopper",
    "jacobson",
    "kahn",
    "kleinrock",
    "lamport",
    "liskov",
    "lynch",
    "mockapetris",
    "metcalfe",
    "needham",
    "ousterhout",
    "perlman",
    "postel",
    "pouzin",
    "reed",
    "roberts",
    "saltzer",
    "shannon",
    "shoch",
    "stonebraker",
    "tanenbaum",
    "thompson",
    "zhang",
];

/// A generated name; `retry` > 0 appends a digit, as Docker does when the
/// first pick is taken.
pub fn generate(random: u64, retry: u32) -> String {
    let l = LEFT[(random % LEFT.len() as u64) as usize];
    let r = RIGHT[((random >> 16) % RIGHT.len() as u64) as usize];
    if retry == 0 {
        format!("{l}_{r}")
    } else {
        format!("{l}_{r}{}", (random >> 32) % 10)
    }
}

/// Docker's rule for `--name`: `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`. Returns the
/// name without its leading slash.
pub fn validate(name: &str) -> Result<&str, String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let ok = bare.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(bare)
    } else {
        Err(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate("/web-1.a_b"), Ok("web-1.a_b"));
        assert!(validate("-x").is_err());
        assert!(
            validate("a").is_err(),
            "Docker wants two characters at least"
        );
        assert!(validate("a b").is_err());
        assert!(validate("ünï").is_err());
        let n = generate(0x1234_5678_9abc, 0);
        assert!(validate(&n).is_ok() && n.contains('_'), "{n}");
        assert_ne!(generate(7, 1), generate(7, 0));
    }
}
