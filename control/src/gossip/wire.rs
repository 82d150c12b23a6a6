//! The gossip datagram envelope: every SWIM datagram on 7946 is sealed with
//! the cluster's gossip key (XChaCha20-Poly1305, random 24-byte nonce), and
//! carries, inside the sealed part, the sender's instance ID and a sequence
//! number taken from the wall clock. Receivers keep a sliding window per
//! sender and refuse anything seen before or older than [`MAX_AGE`].
//!
//! ```text
//! | "SN" | version=1 | nonce (24) | sealed( sender u64 | seq u64 | foca bytes ) + tag (16) |
//! ```
//!
//! Pure: no sockets, no clock it is not handed.

use std::collections::HashMap;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};

const MAGIC: &[u8; 2] = b"SN";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
const INNER_HEADER_LEN: usize = 16;
/// Bytes the envelope adds to a foca payload.
pub const OVERHEAD: usize = HEADER_LEN + INNER_HEADER_LEN + TAG_LEN;
/// Datagrams whose sequence (nanoseconds since the epoch) is older than
/// this, by the receiver's clock, are refused: a receiver that restarted
/// has lost its windows, and this bounds what can be replayed to it.
pub const MAX_AGE_NANOS: u64 = 30_000_000_000;
/// How far ahead of the receiver's clock a sender may be.
pub const MAX_SKEW_NANOS: u64 = 30_000_000_000;
const WINDOW: u64 = 128;

/// Why a datagram was dropped; each is a label of the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Drop {
    #[error("malformed")]
    Malformed,
    #[error("auth")]
    Auth,
    #[error("replay")]
    Replay,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Auth => "auth",
            Drop::Replay => "replay",
        }
    }
}

/// Seals datagrams for one sender instance.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    sender: u64,
    last_seq: u64,
}

impl Sealer {
    pub fn new(key: &[u8; 32], sender: u64) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            sender,
            last_seq: 0,
        }
    }

    /// Seals `payload`; `now_nanos` is the wall clock (sequence numbers are
    /// forced to grow even if the clock steps back).
    pub fn seal(&mut self, payload: &[u8], now_nanos: u64) -> Vec<u8> {
        self.last_seq = now_nanos.max(self.last_seq + 1);
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let mut inner = Vec::with_capacity(INNER_HEADER_LEN + payload.len());
        inner.extend_from_slice(&self.sender.to_be_bytes());
        inner.extend_from_slice(&self.last_seq.to_be_bytes());
        inner.extend_from_slice(payload);
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        // The header is authenticated too.
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &inner,
                    aad: &out,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }
}

/// Per-sender replay window: the highest sequence seen and a bitmap of
/// the [`WINDOW`] sequences below it (RFC 4303's anti-replay window,
/// over sparse sequence numbers).
#[derive(Debug, Default, Clone)]
struct Window {
    highest: u64,
    seen: Vec<u64>,
}

impl Window {
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            self.highest = seq;
            self.seen.push(seq);
            if self.seen.len() as u64 > WINDOW {
                self.seen.remove(0);
            }
            return true;
        }
        // Older than everything we remember: refuse.
        if self.seen.len() as u64 >= WINDOW && seq < self.seen[0] {
            return false;
        }
        if self.seen.contains(&seq) {
            return false;
        }
        let pos = self.seen.partition_point(|&s| s < seq);
        self.seen.insert(pos, seq);
        if self.seen.len() as u64 > WINDOW {
            self.seen.remove(0);
        }
        true
    }
}

/// Opens datagrams from every sender and remembers what it has seen.
pub struct Opener {
    cipher: XChaCha20Poly1305,
    windows: HashMap<u64, (Window, u64)>,
}

/// Senders not heard from in this long are forgotten (their datagrams are
/// past [`MAX_AGE_NANOS`] by then anyway).
const FORGET_AFTER_NANOS: u64 = 2 * MAX_AGE_NANOS;

impl Opener {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            windows: HashMap::new(),
        }
    }

    /// Returns the foca payload of an authentic, fresh datagram.
    pub fn open(&mut self, datagram: &[u8], now_nanos: u64) -> Result<Vec<u8>, Drop> {
        if datagram.len() < OVERHEAD || &datagram[..2] != MAGIC || datagram[2] != VERSION {
            return Err(Drop::Malformed);
        }
        let (header, sealed) = datagram.split_at(HEADER_LEN);
        let nonce = XNonce::from_slice(&header[3..]);
        let inner = self
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| Drop::Auth)?;
        let (ids, payload) = inner.split_at(INNER_HEADER_LEN);
        let mut sender = [0u8; 8];
        sender.copy_from_slice(&ids[..8]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&ids[8..]);
        let (sender, seq) = (u64::from_be_bytes(sender), u64::from_be_bytes(seq));
        if seq.saturating_add(MAX_AGE_NANOS) < now_nanos
            || seq > now_nanos.saturating_add(MAX_SKEW_NANOS)
        {
            return Err(Drop::Replay);
        }
        let (window, last) = self.windows.entry(sender).or_default();
        if !window.accept(seq) {
            return Err(Drop::Replay);
        }
        *last = now_nanos;
        if self.windows.len() > 4096 {
            self.windows
                .retain(|_, (_, last)| last.saturating_add(FORGET_AFTER_NANOS) > now_nanos);
        }
        Ok(payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000_000_000;

    #[test]
    fn seal_open_round_trip() {
        let key = [7u8; 32];
        let mut s = Sealer::new(&key, 42);
        let mut o = Opener::new(&key);
        let d = s.seal(b"hello", T0);
        assert_eq!(d.len(), OVERHEAD + 5);
        assert_eq!(o.open(&d, T0).as_deref(), Ok(&b"hello"[..]));
    }

    #[test]
    fn replays_are_refused() {
        let key = [7u8; 32];
        let mut s = Sealer::new(&key, 1);
        let mut o = Opener::new(&key);
        let a = s.seal(b"a", T0);
        let b = s.seal(b"b", T0 + 10);
        // Out of order delivery is fine, a second delivery is not.
        assert!(o.open(&b, T0 + 20).is_ok());
        assert!(o.open(&a, T0 + 20).is_ok());
        assert_eq!(o.open(&a, T0 + 30), Err(Drop::Replay));
        assert_eq!(o.open(&b, T0 + 30), Err(Drop::Replay));
        // Too old for any window.
        let c = s.seal(b"c", T0 + 40);
        assert_eq!(o.open(&c, T0 + 40 + MAX_AGE_NANOS + 1), Err(Drop::Replay));
        // From the future.
        let mut s2 = Sealer::new(&key, 2);
        let f = s2.seal(b"f", T0 + MAX_SKEW_NANOS + 1000);
        assert_eq!(o.open(&f, T0), Err(Drop::Replay));
    }

    #[test]
    fn window_slides() {
        let mut w = Window::default();
        for seq in 1..=1000 {
            assert!(w.accept(seq));
        }
        assert!(!w.accept(1000));
        assert!(!w.accept(5), "below the window");
        assert!(w.accept(2000));
        assert!(w.accept(1500), "inside the window, unseen");
        assert!(!w.accept(1500));
    }

    #[test]
    fn wrong_key_and_garbage_are_dropped() {
        let mut s = Sealer::new(&[1u8; 32], 1);
        let mut o = Opener::new(&[2u8; 32]);
        let d = s.seal(b"x", T0);
        assert_eq!(o.open(&d, T0), Err(Drop::Auth));
        assert_eq!(o.open(b"", T0), Err(Drop::Malformed));
        assert_eq!(o.open(&[0u8; 200], T0), Err(Drop::Malformed));
        let mut forged = d.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut o1 = Opener::new(&[1u8; 32]);
        assert_eq!(o1.open(&forged, T0), Err(Drop::Auth));
        // Flipping a header bit breaks authentication too.
        let mut hdr = d;
        hdr[5] ^= 1;
        assert_eq!(o1.open(&hdr, T0), Err(Drop::Auth));
    }
}
