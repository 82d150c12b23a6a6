//! Interface names as the kernel accepts them (`dev_valid_name`).

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub(crate) const IFNAME_MAX: usize = 15;

/// Why the kernel would reject `name` as an interface name, if it would.
/// Checking first gives a clear error, and spares aya a panic on an interior
/// NUL.
pub(crate) fn invalid(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        Some("contains NUL, '/', ':' or whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for good in ["eth0", "veth1a2b3c4", "br-0123456789a", "docker0"] {
            assert_eq!(invalid(good), None, "{good}");
        }
    }

    #[test]
    fn rejects_what_the_kernel_rejects() {
        for bad in [
            "",
            "a-name-longer-than-15",
            "a/b",
            "a b",
            "a\0b",
            "..",
            "a:b",
        ] {
            assert!(invalid(bad).is_some(), "{bad:?}");
        }
    }
}
