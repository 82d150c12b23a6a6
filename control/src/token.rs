//! Join tokens in Docker Swarm's shape:
//! `SWMTKN-1-<base36 sha256 of the root CA certificate, 50 chars>-<base36 secret, 25 chars>`.
//!
//! The digest lets a joining node pin the manager's CA before it trusts
//! anything the manager says; the secret proves the joiner was invited and
//! decides its role (worker and manager tokens differ only in the secret).

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The wording is Docker's, so the CLI prints what operators know.
    #[error("invalid join token")]
    Malformed,
}

/// A parsed join token. Its `Debug` never shows the secret, so a token
/// that ends up in a log line leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl JoinToken {
    /// A token for the CA certificate `ca_der` and a fresh random secret.
    pub fn generate(ca_der: &[u8]) -> Self {
        let mut secret = [0u8; 16];
        rand::fill(&mut secret);
        Self {
            ca_digest: ca_digest(ca_der),
            secret: base36(&secret, SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('-');
        let (Some(prefix), Some(version), Some(digest), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let is_b36 = |p: &str| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        if prefix != PREFIX
            || version != VERSION
            || digest.len() != DIGEST_LEN
            || secret.len() != SECRET_LEN
            || !is_b36(digest)
            || !is_b36(secret)
        {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            ca_digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// Whether `der` is the CA certificate this token pins.
    pub fn pins(&self, ca_der: &[u8]) -> bool {
        ca_digest(ca_der)
            .as_bytes()
            .ct_eq(self.ca_digest.as_bytes())
            .into()
    }

    /// Constant-time comparison of the secrets (the digest is public).
    pub fn same_secret(&self, other: &JoinToken) -> bool {
        self.secret.as_bytes().ct_eq(other.secret.as_bytes()).into()
    }

    /// The full token text; only ever handed to an authorised API client.
    pub fn expose(&self) -> String {
        format!("{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

/// Base-36 of the SHA-256 of a DER certificate, zero-padded to 50 chars.
pub fn ca_digest(ca_der: &[u8]) -> String {
    base36(&Sha256::digest(ca_der), DIGEST_LEN)
}

/// Big-endian bytes as a base-36 number, left-padded with '0' to `width`.
pub fn base36(bytes: &[u8], width: usize) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        // Divide the big number by 36 in place; the remainder is the digit.
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 36) as u8;
            rem = acc % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A random identifier in Docker's style for swarm objects (25 base-36 chars).
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    rand::fill(&mut raw);
    base36(&raw, SECRET_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_known_values() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[1, 0], 1), "74"); // 256 = 7*36 + 4
        // 2^128 - 1 needs exactly 25 base-36 digits, so secrets never overflow.
        assert_eq!(base36(&[0xff; 16], 0).len(), 25);
        assert_eq!(base36(&[0xff; 32], 0).len(), 50);
    }

    #[test]
    fn generate_then_parse_round_trips() {
        let t = JoinToken::generate(b"ca cert bytes");
        let s = t.expose();
        assert!(s.starts_with("SWMTKN-1-"));
        assert_eq!(s.len(), 9 + 50 + 1 + 25);
        let p = JoinToken::parse(&s).expect("parse");
        assert_eq!(p, t);
        assert!(p.pins(b"ca cert bytes"));
        assert!(!p.pins(b"another ca"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate(b"x").expose();
        for bad in [
            "",
            "SWMTKN-1-garbage",
            "SWMTKN-2-aaa-bbb",
            &good.replace("SWMTKN", "SWMTKX"),
            &format!("{good}-extra"),
            &good.to_uppercase(),
            &good[..good.len() - 1],
        ] {
            assert_eq!(JoinToken::parse(bad), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn secrets_compare() {
        let a = JoinToken::generate(b"x");
        let b = JoinToken::generate(b"x");
        assert!(a.same_secret(&a.clone()));
        assert!(!a.same_secret(&b));
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}
