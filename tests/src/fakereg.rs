//! A registry that lies: it speaks just enough of the distribution API
//! (`/v2/`, manifests, blobs) to serve one image whose blobs are given as
//! bytes, so a test can hand out a layer whose bytes do not match the
//! digest the manifest names. Runs on a thread; its socket lives in the
//! namespace it was made in.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// What the fake registry serves for one repository.
#[derive(Debug, Clone, Default)]
pub struct FakeImage {
    /// `repo` as in `/v2/<repo>/...`.
    pub repo: String,
    /// The manifest's media type and bytes, served for any tag or digest.
    pub manifest_type: String,
    pub manifest: Vec<u8>,
    /// Blob bytes by digest (`sha256:...`), served as they are.
    pub blobs: HashMap<String, Vec<u8>>,
}

#[derive(Debug)]
pub struct FakeRegistry {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    pub addr: SocketAddrV4,
}

impl FakeRegistry {
    /// Serves `image` on `addr` in namespace `netns`.
    #[track_caller]
    pub fn start(netns: &str, addr: SocketAddrV4, image: FakeImage) -> Self {
        let listener = crate::netns::in_netns(netns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("fake registry: bind {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("fake registry: nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let image = Arc::new(image);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let image = image.clone();
                        thread::spawn(move || serve(conn, &image));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    if !head {
        let _ = conn.write_all(body);
    }
}

fn serve(mut conn: TcpStream, image: &FakeImage) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut words = text.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let head = method == "HEAD";
    let path = target.split('?').next().unwrap_or(target);
    let not_found = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
    if path == "/v2/" || path == "/v2" {
        return respond(
            &mut conn,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            b"{}",
            head,
        );
    }
    let Some(rest) = path.strip_prefix(&format!("/v2/{}/", image.repo)) else {
        return respond(
            &mut conn,
            "404 Not Found",
            &[("Content-Type", "application/json".into())],
            not_found,
            head,
        );
    };
    if rest.starts_with("manifests/") {
        let digest = crate::util::sha256_hex(&image.manifest);
        return respond(
            &mut conn,
            "200 OK",
            &[
                ("Content-Type", image.manifest_type.clone()),
                ("Docker-Content-Digest", format!("sha256:{digest}")),
            ],
            &image.manifest,
            head,
        );
    }
    if let Some(digest) = rest.strip_prefix("blobs/")
        && let Some(bytes) = image.blobs.get(digest)
    {
        return respond(
            &mut conn,
            "200 OK",
            &[("Content-Type", "application/octet-stream".into())],
            bytes,
            head,
        );
    }
    respond(
        &mut conn,
        "404 Not Found",
        &[("Content-Type", "application/json".into())],
        not_found,
        head,
    );
}
