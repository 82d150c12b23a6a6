//! Container logs in Docker's `json-file` format: one JSON object a line,
//! `{"log":"out\n","stream":"stdout","time":"2026-12-01T08:00:00.000000001Z"}`.
//!
//! The shim writes them (it holds the container's stdio, also while the
//! agent is away); the agent reads them for `docker logs`. Lines are split
//! at newlines, and a line longer than [`MAX_LINE`] is cut into pieces, as
//! dockerd does.

use std::{
    fs::File,
    io::{self, Read, Write},
    path::Path,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::frames::{STDERR, STDOUT};

/// Longest piece of a line kept in one entry (dockerd's 16 KiB buffer).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    log: std::borrow::Cow<'a, str>,
    stream: std::borrow::Cow<'a, str>,
    time: std::borrow::Cow<'a, str>,
}

/// One entry: which stream, when the shim read it, the bytes (a line with
/// its newline, or a piece of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: u8,
    pub time: DateTime<Utc>,
    pub line: Vec<u8>,
}

/// Appends entries to a log file, holding partial lines per stream.
pub struct LogWriter {
    file: File,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Logs what `stream` (STDOUT or STDERR) produced: every complete line,
    /// and pieces of [`MAX_LINE`] bytes of a line that has no end yet.
    pub fn write(&mut self, stream: u8, bytes: &[u8], now: DateTime<Utc>) -> io::Result<()> {
        let idx = usize::from(stream == STDERR);
        let mut out = Vec::new();
        let buf = &mut self.partial[idx];
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl + 1;
            encode_entry(&mut out, stream, &buf[start..end], now);
            start = end;
        }
        while buf.len() - start >= MAX_LINE {
            encode_entry(&mut out, stream, &buf[start..start + MAX_LINE], now);
            start += MAX_LINE;
        }
        buf.drain(..start);
        if !out.is_empty() {
            self.file.write_all(&out)?;
        }
        Ok(())
    }

    /// Logs what is left of unfinished lines (at the end of the output).
    pub fn flush_partial(&mut self, now: DateTime<Utc>) -> io::Result<()> {
        let mut out = Vec::new();
        for (idx, stream) in [(0, STDOUT), (1, STDERR)] {
            let buf = std::mem::take(&mut self.partial[idx]);
            if !buf.is_empty() {
                encode_entry(&mut out, stream, &buf, now);
            }
        }
        if !out.is_empty() {
            self.file.write_all(&out)?;
        }
        self.file.flush()
    }
}

fn stream_name(stream: u8) -> &'static str {
    if stream == STDERR { "stderr" } else { "stdout" }
}

fn encode_entry(out: &mut Vec<u8>, stream: u8, line: &[u8], now: DateTime<Utc>) {
    let e = Entry {
        log: String::from_utf8_lossy(line),
        stream: stream_name(stream).into(),
        time: now.to_rfc3339_opts(SecondsFormat::Nanos, true).into(),
    };
    if serde_json::to_writer(&mut *out, &e).is_ok() {
        out.push(b'\n');
    }
}

/// Parses one line of a log file; `None` for a line that is not an entry.
pub fn parse_entry(line: &[u8]) -> Option<LogEntry> {
    let e: Entry<'_> = serde_json::from_slice(line).ok()?;
    let stream = match &*e.stream {
        "stdout" => STDOUT,
        "stderr" => STDERR,
        _ => return None,
    };
    let time = DateTime::parse_from_rfc3339(&e.time)
        .ok()?
        .with_timezone(&Utc);
    Some(LogEntry {
        stream,
        time,
        line: e.log.into_owned().into_bytes(),
    })
}

/// Reads a log file from an offset on, entry by entry, so `docker logs -f`
/// can follow a file the shim keeps appending to.
pub struct LogReader {
    file: File,
    pending: Vec<u8>,
}

impl LogReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            pending: Vec::new(),
        })
    }

    /// Every entry written since the last call (a line still being
    /// written stays pending until its newline arrives).
    pub fn read_new(&mut self) -> io::Result<Vec<LogEntry>> {
        let mut chunk = Vec::new();
        self.file.read_to_end(&mut chunk)?;
        self.pending.extend_from_slice(&chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            if let Some(e) = parse_entry(&self.pending[start..start + nl]) {
                out.push(e);
            }
            start += nl + 1;
        }
        self.pending.drain(..start);
        Ok(out)
    }
}

/// `docker logs` options on entries.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub stdout: bool,
    pub stderr: bool,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl LogFilter {
    pub fn wants(&self, e: &LogEntry) -> bool {
        let stream_ok = if e.stream == STDERR {
            self.stderr
        } else {
            self.stdout
        };
        stream_ok
            && self.since.is_none_or(|s| e.time >= s)
            && self.until.is_none_or(|u| e.time <= u)
    }
}

/// The bytes `docker logs` shows for an entry: with `timestamps`, the
/// entry's time in RFC 3339 with nanoseconds and a space first.
pub fn render(e: &LogEntry, timestamps: bool) -> Vec<u8> {
    if !timestamps {
        return e.line.clone();
    }
    let mut v = e
        .time
        .to_rfc3339_opts(SecondsFormat::Nanos, true)
        .into_bytes();
    v.push(b' ');
    v.extend_from_slice(&e.line);
    v
}

/// Parses Docker's `since`/`until` values: unix seconds with an optional
/// fraction (what the CLI sends), or RFC 3339.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse().ok()?
    };
    DateTime::from_timestamp(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 5).expect("time")
    }

    #[test]
    fn lines_partials_and_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c-json.log");
        let mut w = LogWriter::open(&path).expect("open");
        let mut r = LogReader::open(&path).expect("reader");
        w.write(STDOUT, b"one\ntw", t(0)).expect("write");
        w.write(STDERR, b"err\n", t(1)).expect("write");
        let got = r.read_new().expect("read");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].stream, got[0].line.as_slice()),
            (STDOUT, &b"one\n"[..])
        );
        assert_eq!(
            (got[1].stream, got[1].line.as_slice()),
            (STDERR, &b"err\n"[..])
        );
        assert_eq!(got[1].time, t(1));
        w.write(STDOUT, b"o\nlast", t(2)).expect("write");
        w.flush_partial(t(3)).expect("flush");
        let got = r.read_new().expect("read");
        assert_eq!(got[0].line, b"two\n");
        assert_eq!(got[1].line, b"last", "the unfinished line at the end");
        assert!(r.read_new().expect("read").is_empty());
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c-json.log");
        let mut w = LogWriter::open(&path).expect("open");
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        w.write(STDOUT, &long, t(0)).expect("write");
        w.write(STDOUT, b"\n", t(0)).expect("write");
        let got = LogReader::open(&path).expect("r").read_new().expect("read");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].line.len(), MAX_LINE);
        assert_eq!(got[2].line.len(), 11);
    }

    #[test]
    fn docker_format_and_filters() {
        let line = br#"{"log":"hi\n","stream":"stderr","time":"2026-12-01T08:37:04.123456789Z"}"#;
        let e = parse_entry(line).expect("entry");
        assert_eq!(e.stream, STDERR);
        assert_eq!(render(&e, true), b"2026-12-01T08:37:04.123456789Z hi\n");
        assert!(parse_entry(b"garbage").is_none());
        let f = LogFilter {
            stdout: true,
            stderr: false,
            ..Default::default()
        };
        assert!(!f.wants(&e));
        assert_eq!(
            parse_time("1800000000.5").map(|t| t.timestamp_subsec_nanos()),
            Some(500_000_000)
        );
        assert_eq!(parse_time("0"), None);
        assert!(parse_time("2026-12-01T08:37:04Z").is_some());
    }
}
