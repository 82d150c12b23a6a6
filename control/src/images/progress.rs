//! Docker's JSON-lines progress stream (`jsonmessage.JSONMessage`), which
//! the docker CLI draws as progress bars: one object per line with
//! `status`, `id`, `progressDetail` and `progress`, `stream` for load's
//! lines, and a final `errorDetail`/`error` when a pull fails after the
//! answer began.

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Serialize, Default)]
struct Message<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    progress_detail: Option<Detail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "errorDetail", skip_serializing_if = "Option::is_none")]
    error_detail: Option<ErrorDetail<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
}

/// Where a pull reports progress: the HTTP answer's body, or a test.
/// Sending never fails the work: a client that went away only stops
/// seeing it.
#[derive(Clone)]
pub struct Progress {
    tx: mpsc::Sender<Bytes>,
}

impl Progress {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    async fn send(&self, m: &Message<'_>) {
        if let Some(line) = line(m) {
            let _ = self.tx.send(Bytes::from(line)).await;
        }
    }

    /// `{"status": S}` or, with an ID, `{"status": S, "progressDetail": {}, "id": I}`.
    pub async fn status(&self, id: Option<&str>, status: &str) {
        self.send(&Message {
            status: Some(status),
            progress_detail: id.map(|_| Detail::default()),
            id,
            ..Default::default()
        })
        .await
    }

    /// A line with a progress bar (`Downloading`, `Extracting`).
    pub async fn bar(&self, id: &str, status: &str, current: u64, total: u64) {
        self.send(&Message {
            status: Some(status),
            progress_detail: Some(Detail {
                current: Some(current),
                total: Some(total),
            }),
            progress: Some(bar(current, total)),
            id: Some(id),
            ..Default::default()
        })
        .await
    }

    pub async fn error(&self, message: &str) {
        self.send(&Message {
            error_detail: Some(ErrorDetail { message }),
            error: Some(message),
            ..Default::default()
        })
        .await
    }
}

/// `{"stream": S}` lines, for answers written whole (`docker load`).
pub fn stream_lines(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .filter_map(|l| {
            line(&Message {
                stream: Some(l),
                ..Default::default()
            })
        })
        .flatten()
        .collect()
}

/// One message as a line of the stream.
fn line(m: &Message<'_>) -> Option<Vec<u8>> {
    let mut bytes = serde_json::to_vec(m).ok()?;
    bytes.extend_from_slice(b"\r\n");
    Some(bytes)
}

/// Docker's bar: `[=====>        ]  1.2MB/34.5MB`.
fn bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    if total == 0 {
        return format!("{:>8}", human(current));
    }
    let filled = (current.min(total) * WIDTH / total) as usize;
    let mut s = String::with_capacity(80);
    s.push('[');
    s.push_str(&"=".repeat(filled));
    if filled < WIDTH as usize {
        s.push('>');
        s.push_str(&" ".repeat(WIDTH as usize - filled - 1));
    }
    s.push_str(&format!("] {:>8}/{}", human(current), human(total)));
    s
}

/// Sizes as Docker's `units.HumanSize` writes them (decimal units).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines() {
        let (p, mut rx) = Progress::channel(8);
        p.status(Some("latest"), "Pulling from library/nginx").await;
        p.status(None, "Digest: sha256:x").await;
        p.error("boom").await;
        let a = rx.recv().await.expect("line");
        assert_eq!(
            &a[..],
            &b"{\"status\":\"Pulling from library/nginx\",\"progressDetail\":{},\"id\":\"latest\"}\r\n"[..]
        );
        let b = rx.recv().await.expect("line");
        assert_eq!(&b[..], &b"{\"status\":\"Digest: sha256:x\"}\r\n"[..]);
        let c = rx.recv().await.expect("line");
        assert_eq!(
            &c[..],
            &b"{\"errorDetail\":{\"message\":\"boom\"},\"error\":\"boom\"}\r\n"[..]
        );
        assert_eq!(human(1_234_567), "1.23MB");
        assert_eq!(human(999), "999B");
        assert!(bar(5, 10).starts_with("[=========================>"));
    }
}
