//! Frames on the shim's socket, in the layout of Docker's multiplexed
//! stream (`[kind, 0, 0, 0, len: u32 BE]` then `len` bytes): stdout and
//! stderr frames pass through to a hijacked API connection unchanged,
//! and the control kinds reuse the same header.
//!
//! Pure: encoding and an incremental decoder, no I/O.

/// Container stdin (client -> shim); also kind 0 in Docker's framing.
pub const STDIN: u8 = 0;
/// Container stdout (shim -> client).
pub const STDOUT: u8 = 1;
/// Container stderr (shim -> client).
pub const STDERR: u8 = 2;
/// The container exited (shim -> client); payload: [`ExitInfo`] as JSON.
pub const EXIT: u8 = 3;
/// Close the container's stdin (client -> shim), no payload.
pub const CLOSE_STDIN: u8 = 4;
/// Resize the container's TTY (client -> shim); payload: rows, cols as
/// two big-endian u16.
pub const RESIZE: u8 = 5;

pub const HEADER_LEN: usize = 8;
/// The largest payload a peer may announce; bigger headers are garbage.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// How a container's init process ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitInfo {
    /// The exit status, or 128 + the signal that killed it.
    pub exit_code: i64,
    /// RFC 3339 with nanoseconds.
    pub finished_at: String,
    /// Set when the shim could not run or watch the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The header of a frame of `kind` carrying `len` bytes.
pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind, 0, 0, 0, n[0], n[1], n[2], n[3]]
}

/// A whole frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header(kind, payload.len()));
    v.extend_from_slice(payload);
    v
}

pub fn resize_payload(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    match p {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the {MAX_PAYLOAD} allowed")]
    TooLarge(usize),
}

/// Incremental decoder: feed bytes, take whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut bytes = encode(STDOUT, b"hello\n");
        bytes.extend(encode(STDERR, b""));
        bytes.extend(encode(RESIZE, &resize_payload(24, 80)));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            d.push(chunk);
            while let Some(f) = d.next_frame().expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (STDOUT, b"hello\n".to_vec()));
        assert_eq!(got[1], (STDERR, Vec::new()));
        assert_eq!(parse_resize(&got[2].1), Some((24, 80)));
        assert_eq!(
            header(STDOUT, 6),
            [1, 0, 0, 0, 0, 0, 0, 6],
            "Docker's layout"
        );
    }

    #[test]
    fn oversized_headers_are_refused() {
        let mut d = Decoder::default();
        d.push(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));
    }
}
