//! `docker attach` and the attach half of `docker run`: a client's
//! hijacked connection joined to the container's stdio held by its shim.
//! Output frames pass through in Docker's multiplexed framing (or raw for
//! a TTY); the client's bytes become the container's stdin.

use std::sync::Arc;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::UnixStream,
};
use tracing::debug;

use super::{
    Container, Runtime, RuntimeError,
    container::Status,
    frames::{self, ExitInfo},
    logs::{LogFilter, LogReader, render},
    shim::{Hello, ShimPaths},
    shim_connect,
};

pub type BoxReader = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The two halves of a client's hijacked connection.
pub struct ClientIo {
    pub reader: BoxReader,
    pub writer: BoxWriter,
}

/// What an attach asks for (`stdin`, `stdout`, `stderr`, `logs`,
/// `stream` query parameters).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub logs: bool,
    pub stream: bool,
}

/// An attach checked before the connection is hijacked.
pub struct AttachPlan {
    container: Arc<Container>,
    opts: AttachOpts,
    pub tty: bool,
}

/// An attach client waiting for its container's start.
pub struct Pending {
    hello: Hello,
    client: ClientIo,
    tty: bool,
}

impl Runtime {
    /// Checks an attach request (errors are answered before the hijack).
    pub fn attach_plan(
        &self,
        name: &str,
        mut opts: AttachOpts,
    ) -> Result<AttachPlan, RuntimeError> {
        let c = self.get(name)?;
        let rec = c.record();
        if opts.stream
            && matches!(
                rec.state.status,
                Status::Exited | Status::Dead | Status::Removing
            )
            && !opts.logs
        {
            return Err(RuntimeError::Conflict(
                "You cannot attach to a stopped container, start it first".to_owned(),
            ));
        }
        if !rec.config.open_stdin.unwrap_or(false) {
            opts.stdin = false;
        }
        Ok(AttachPlan {
            tty: rec.config.tty.unwrap_or(false),
            container: c,
            opts,
        })
    }

    /// Runs a checked attach on the hijacked connection until the
    /// container exits or the client hangs up.
    pub async fn attach(self: &Arc<Self>, plan: AttachPlan, mut client: ClientIo) {
        let c = plan.container;
        let o = plan.opts;
        if o.logs {
            let filter = LogFilter {
                stdout: o.stdout,
                stderr: o.stderr,
                ..Default::default()
            };
            if let Ok(mut r) = LogReader::open(&self.log_path(&c.id))
                && let Ok(entries) = r.read_new()
            {
                for e in entries.iter().filter(|e| filter.wants(e)) {
                    if write_output(&mut client.writer, plan.tty, e.stream, &render(e, false))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if !o.stream {
            let _ = client.writer.shutdown().await;
            return;
        }
        let hello = Hello {
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        };
        let status = c.status();
        if status.is_running() {
            match shim_connect(&self.shim_paths(&c.id), &hello).await {
                Ok((shim, _)) => forward(shim, client, hello.stdin, plan.tty).await,
                Err(e) => {
                    debug!(error = %e, "attach: shim gone");
                    let _ = client.writer.shutdown().await;
                }
            }
        } else if status == Status::Created {
            self.add_pending(
                &c,
                Pending {
                    hello,
                    client,
                    tty: plan.tty,
                },
            );
        } else {
            let _ = client.writer.shutdown().await;
        }
    }

    /// `POST /containers/{id}/resize?h=&w=`.
    pub async fn resize(&self, name: &str, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        let c = self.get(name)?;
        if !c.status().is_running() {
            return Err(RuntimeError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        let (mut s, _) = shim_connect(&self.shim_paths(&c.id), &Hello::default())
            .await
            .map_err(|e| RuntimeError::Internal(format!("connect to the shim: {e}")))?;
        s.write_all(&frames::encode(
            frames::RESIZE,
            &frames::resize_payload(rows, cols),
        ))
        .await
        .map_err(|e| RuntimeError::Internal(format!("resize: {e}")))?;
        let _ = s.shutdown().await;
        Ok(())
    }
}

/// Connects an attach client that waited for the start (before `runc
/// start`, so it sees all output).
pub async fn connect_pending(paths: &ShimPaths, p: Pending) {
    match shim_connect(paths, &p.hello).await {
        Ok((shim, _)) => {
            tokio::spawn(forward(shim, p.client, p.hello.stdin, p.tty));
        }
        Err(e) => debug!(error = %e, "attach: shim gone before start"),
    }
}

/// Writes container output to a client: framed, or raw for a TTY.
pub async fn write_output(
    w: &mut BoxWriter,
    tty: bool,
    stream: u8,
    data: &[u8],
) -> std::io::Result<()> {
    if !tty {
        w.write_all(&frames::header(stream, data.len())).await?;
    }
    w.write_all(data).await?;
    w.flush().await
}

/// Joins a client to a shim connection.
async fn forward(shim: UnixStream, client: ClientIo, stdin: bool, tty: bool) {
    let (mut sr, mut sw) = shim.into_split();
    let ClientIo {
        mut reader,
        mut writer,
    } = client;
    let to_client = async {
        let mut dec = frames::Decoder::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            while let Ok(Some((kind, payload))) = dec.next_frame() {
                let failed = match kind {
                    frames::STDOUT | frames::STDERR => {
                        write_output(&mut writer, tty, kind, &payload)
                            .await
                            .is_err()
                    }
                    frames::EXIT => true,
                    _ => false,
                };
                if failed {
                    return;
                }
            }
        }
    };
    let from_client = async {
        if !stdin {
            return std::future::pending::<()>().await;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sw
                        .write_all(&frames::encode(frames::CLOSE_STDIN, &[]))
                        .await;
                    return std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if sw
                        .write_all(&frames::encode(frames::STDIN, &buf[..n]))
                        .await
                        .is_err()
                    {
                        return std::future::pending::<()>().await;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = to_client => {}
        () = from_client => {}
    }
    let _ = writer.shutdown().await;
}

/// The monitor's side of a shim connection: the exit, or `None` if the
/// shim hung up without one.
pub async fn wait_exit(mut stream: UnixStream) -> Option<ExitInfo> {
    let mut dec = frames::Decoder::default();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        loop {
            match dec.next_frame() {
                Ok(Some((frames::EXIT, payload))) => return serde_json::from_slice(&payload).ok(),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return None,
            }
        }
    }
}
