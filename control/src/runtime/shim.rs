//! `swarmnet shim`: the monitor of one container, as containerd's shim or
//! conmon. The agent starts one per container start; it outlives the agent
//! (its own session, no parent-death signal), so a killed or restarted
//! agent leaves the container running and finds it again here.
//!
//! The shim
//! - runs `runc create` with the container's stdio (pipes, or a TTY whose
//!   master end runc sends over the console socket), and reports the
//!   init PID (or the error) as one JSON line on its stdout to the agent,
//!   which then runs `runc start`;
//! - is the child subreaper, so the container's init becomes its child
//!   and its exit status is the shim's to collect;
//! - writes everything the container prints to its `json-file` log, and
//!   serves attach clients on `shim.sock` ([`super::frames`]);
//! - when init exits: drains the output, writes `exit.json`, sends an
//!   EXIT frame to every client and exits.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::unix::net::UnixListener as StdUnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use super::{
    console,
    frames::{self, ExitInfo},
    logs::LogWriter,
    runc::{self, Runc},
};
use crate::util::now_rfc3339;

/// How long the shim waits for the output to end after init exited.
const DRAIN: Duration = Duration::from_secs(2);
/// Frames buffered for one client before it is dropped as too slow.
const CLIENT_QUEUE: usize = 4096;

#[derive(clap::Args, Debug, Clone)]
pub struct ShimArgs {
    /// The container ID (runc's container ID too).
    #[arg(long)]
    pub id: String,
    /// The OCI bundle (holds config.json and the rootfs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Where the shim keeps its socket, pid and exit files.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The container's json-file log.
    #[arg(long)]
    pub log: PathBuf,
    /// The OCI runtime binary.
    #[arg(long, default_value = "runc")]
    pub runtime: PathBuf,
    /// The runtime's --root.
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// Give the container a TTY.
    #[arg(long)]
    pub tty: bool,
    /// Keep the container's stdin open (docker run -i).
    #[arg(long)]
    pub stdin: bool,
    /// Close stdin when the first attached client closes its input.
    #[arg(long)]
    pub stdin_once: bool,
}

/// The files of a shim's state dir, as the shim and the agent name them.
#[derive(Debug, Clone)]
pub struct ShimPaths {
    dir: PathBuf,
}

impl ShimPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn runc_log(&self) -> PathBuf {
        self.dir.join("runc.log")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    /// The exit the shim recorded, if it did.
    pub fn read_exit(&self) -> Option<ExitInfo> {
        let bytes = std::fs::read(self.exit()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// What the shim reports on its stdout once `runc create` is done.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A client's first line on `shim.sock`: which streams it wants.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

/// The shim's answer to a hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub pid: i32,
    pub tty: bool,
}

enum Io {
    Tty(File),
    Pipes {
        stdin: Option<io::PipeWriter>,
        stdout: io::PipeReader,
        stderr: io::PipeReader,
    },
}

/// Entry point of `swarmnet shim`; returns the process's exit status.
pub fn main(args: ShimArgs) -> i32 {
    // Its own session: no signal meant for the agent's process group or
    // terminal reaches it.
    let _ = nix::unistd::setsid();
    // `ps` and the test harness tell shims from agents by this name.
    let _ = nix::sys::prctl::set_name(c"swarmnet-shim");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&Ready {
                pid: None,
                error: Some(format!("shim runtime: {e}")),
            });
            return 1;
        }
    };
    rt.block_on(run(args))
}

fn report(r: &Ready) {
    let mut out = io::stdout().lock();
    if let Ok(line) = serde_json::to_string(r) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

async fn run(args: ShimArgs) -> i32 {
    let paths = ShimPaths::new(&args.state_dir);
    let fail = |msg: String| {
        warn!(id = %args.id, error = %msg, "shim: container not created");
        report(&Ready {
            pid: None,
            error: Some(msg),
        });
        1
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return fail(format!("become child subreaper: {e}"));
    }
    // Installed before the container exists, so its exit cannot be missed.
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => return fail(format!("SIGCHLD handler: {e}")),
    };
    let _ = std::fs::remove_file(paths.socket());
    let listener = match StdUnixListener::bind(paths.socket())
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(UnixListener::from_std)
    {
        Ok(l) => l,
        Err(e) => return fail(format!("listen on {}: {e}", paths.socket().display())),
    };
    let _ = std::fs::write(paths.shim_pid(), std::process::id().to_string());
    let _ = std::fs::remove_file(paths.exit());
    let (pid, io) = match create(&args, &paths) {
        Ok(c) => c,
        Err(msg) => {
            let _ = std::fs::remove_file(paths.socket());
            return fail(msg);
        }
    };
    report(&Ready {
        pid: Some(pid.as_raw()),
        error: None,
    });
    info!(id = %args.id, pid = pid.as_raw(), "shim: container created");
    let exit = serve(&args, &paths, listener, &mut sigchld, pid, io).await;
    info!(id = %args.id, exit_code = exit.exit_code, "shim: container exited");
    0
}

/// `runc create`, with the container's stdio wired to what the shim holds.
fn create(args: &ShimArgs, paths: &ShimPaths) -> Result<(Pid, Io), String> {
    let runc = Runc {
        binary: args.runtime.clone(),
        root: args.runtime_root.clone(),
    };
    let log = paths.runc_log();
    let _ = std::fs::remove_file(&log);
    let rt_name = args.runtime.display().to_string();
    let failed = |out: &str| {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        runc::create_failed(&rt_name, &runc::error_from_log(&log_text, out))
    };
    let io = if args.tty {
        let sock = paths.console();
        let _ = std::fs::remove_file(&sock);
        let listener = StdUnixListener::bind(&sock)
            .map_err(|e| format!("console socket {}: {e}", sock.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = listener.accept().and_then(|(c, _)| console::receive_fd(&c));
            let _ = tx.send(r);
        });
        let out = Command::new(&runc.binary)
            .args(runc.create_args(&args.id, &args.bundle, &paths.init_pid(), Some(&sock), &log))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run {}: {e}", runc.binary.display()))?;
        let _ = std::fs::remove_file(&sock);
        if !out.status.success() {
            return Err(failed(&String::from_utf8_lossy(&out.stderr)));
        }
        let fd = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "runc sent no terminal on the console socket".to_owned())?
            .map_err(|e| format!("receive the terminal: {e}"))?;
        Io::Tty(File::from(fd))
    } else {
        let pipe = || io::pipe().map_err(|e| format!("pipe: {e}"));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin_child, stdin) = if args.stdin {
            let (r, w) = pipe()?;
            (Stdio::from(r), Some(w))
        } else {
            (Stdio::null(), None)
        };
        let mut cmd = Command::new(&runc.binary);
        cmd.args(runc.create_args(&args.id, &args.bundle, &paths.init_pid(), None, &log))
            .stdin(stdin_child)
            .stdout(out_w)
            .stderr(err_w);
        let status = cmd
            .status()
            .map_err(|e| format!("run {}: {e}", runc.binary.display()))?;
        // The Command holds the container's ends of the pipes; only the
        // container may keep them open from here on.
        drop(cmd);
        if !status.success() {
            return Err(failed(""));
        }
        Io::Pipes {
            stdin,
            stdout: out_r,
            stderr: err_r,
        }
    };
    let pid = std::fs::read_to_string(paths.init_pid())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| "runc wrote no init pid".to_owned())?;
    Ok((Pid::from_raw(pid), io))
}

/// Reaps every exited child; returns init's exit code if init was one.
fn reap(init: Pid) -> Option<i64> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p == init => code = Some(i64::from(c)),
            Ok(WaitStatus::Signaled(p, s, _)) if p == init => code = Some(128 + s as i64),
            Ok(WaitStatus::StillAlive) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    code
}

/// Reads a stream of the container on a thread of its own; an empty
/// chunk says it ended.
fn pump(stream: u8, mut r: impl Read + Send + 'static, tx: mpsc::UnboundedSender<(u8, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send((stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: the terminal's other end is closed.
                Err(_) => break,
            }
        }
        let _ = tx.send((stream, Vec::new()));
    });
}

/// Writes to the container's stdin on a thread of its own (a container
/// that does not read must not stall the shim); `None` closes it.
fn stdin_writer(mut w: Box<dyn Write + Send>) -> std::sync::mpsc::Sender<Option<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        while let Ok(Some(data)) = rx.recv() {
            if w.write_all(&data).and_then(|()| w.flush()).is_err() {
                break;
            }
        }
    });
    tx
}

enum Control {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

struct Client {
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    stdout: bool,
    stderr: bool,
}

type Clients = Arc<Mutex<Vec<Client>>>;

fn broadcast(clients: &Clients, kind: u8, data: &[u8]) {
    let frame = Arc::new(frames::encode(kind, data));
    let mut g = clients.lock().unwrap_or_else(|e| e.into_inner());
    g.retain(|c| {
        let wants = match kind {
            frames::STDOUT => c.stdout,
            frames::STDERR => c.stderr,
            _ => true,
        };
        !wants || c.tx.try_send(frame.clone()).is_ok()
    });
}

async fn serve(
    args: &ShimArgs,
    paths: &ShimPaths,
    listener: UnixListener,
    sigchld: &mut tokio::signal::unix::Signal,
    pid: Pid,
    io: Io,
) -> ExitInfo {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let mut open = 0usize;
    let mut master = None;
    let stdin = match io {
        Io::Tty(m) => {
            match m.try_clone() {
                Ok(r) => {
                    pump(frames::STDOUT, r, out_tx.clone());
                    open += 1;
                }
                Err(e) => warn!(error = %e, "shim: clone the terminal"),
            }
            let w = m.try_clone().ok();
            master = Some(m);
            w.map(|w| stdin_writer(Box::new(w)))
        }
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            pump(frames::STDOUT, stdout, out_tx.clone());
            pump(frames::STDERR, stderr, out_tx.clone());
            open += 2;
            stdin.map(|w| stdin_writer(Box::new(w)))
        }
    };
    drop(out_tx);
    let mut stdin = stdin;
    let tty = args.tty;
    let mut log = match LogWriter::open(&args.log) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(log = %args.log.display(), error = %e, "shim: cannot open the log; output is not kept");
            None
        }
    };
    let clients: Clients = Arc::new(Mutex::new(Vec::new()));
    let mut writers = tokio::task::JoinSet::new();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let mut exit_code = reap(pid);
    let mut deadline = exit_code.map(|_| tokio::time::Instant::now() + DRAIN);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if exit_code.is_some() && open == 0 {
            break;
        }
        let drain_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + DRAIN);
        tokio::select! {
            chunk = out_rx.recv(), if open > 0 => match chunk {
                Some((_, data)) if data.is_empty() => open -= 1,
                Some((stream, data)) => {
                    if let Some(l) = log.as_mut()
                        && let Err(e) = l.write(stream, &data, chrono::Utc::now())
                    {
                        warn!(error = %e, "shim: write the log");
                    }
                    broadcast(&clients, stream, &data);
                }
                None => open = 0,
            },
            conn = listener.accept() => match conn {
                Ok((conn, _)) => {
                    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
                    writers.spawn(client(conn, tx, rx, clients.clone(), ctl_tx.clone(), Welcome { pid: pid.as_raw(), tty }));
                }
                Err(e) => warn!(error = %e, "shim: accept"),
            },
            Some(ctl) = ctl_rx.recv() => match ctl {
                Control::Stdin(data) => {
                    if let Some(s) = &stdin && s.send(Some(data)).is_err() {
                        stdin = None;
                    }
                }
                Control::CloseStdin => {
                    if args.stdin_once && !tty && let Some(s) = stdin.take() {
                        let _ = s.send(None);
                    }
                }
                Control::Resize(rows, cols) => {
                    if let Some(m) = &master && let Err(e) = console::resize(m, rows, cols) {
                        warn!(error = %e, "shim: resize the terminal");
                    }
                }
            },
            _ = sigchld.recv() => {
                if exit_code.is_none() && let Some(c) = reap(pid) {
                    exit_code = Some(c);
                    deadline = Some(tokio::time::Instant::now() + DRAIN);
                }
            }
            _ = tick.tick() => {
                if exit_code.is_none() && let Some(c) = reap(pid) {
                    exit_code = Some(c);
                    deadline = Some(tokio::time::Instant::now() + DRAIN);
                }
            }
            _ = tokio::time::sleep_until(drain_until), if deadline.is_some() => break,
        }
    }
    if let Some(l) = log.as_mut() {
        let _ = l.flush_partial(chrono::Utc::now());
    }
    let exit = ExitInfo {
        exit_code: exit_code.unwrap_or(255),
        finished_at: now_rfc3339(),
        error: None,
    };
    if let Err(e) = write_exit(paths, &exit) {
        warn!(error = %e, "shim: write exit.json");
    }
    let payload = serde_json::to_vec(&exit).unwrap_or_default();
    broadcast(&clients, frames::EXIT, &payload);
    clients.lock().unwrap_or_else(|e| e.into_inner()).clear();
    drop(listener);
    let _ = std::fs::remove_file(paths.socket());
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    exit
}

fn write_exit(paths: &ShimPaths, exit: &ExitInfo) -> io::Result<()> {
    let tmp = paths.dir().join("exit.json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(exit).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(tmp, paths.exit())
}

/// One client of `shim.sock`: hello line, welcome line, then frames both
/// ways until either side is done.
async fn client(
    conn: UnixStream,
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    clients: Clients,
    ctl: mpsc::UnboundedSender<Control>,
    welcome: Welcome,
) {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    let hello: Hello = match (&mut rd).take(4096).read_until(b'\n', &mut line).await {
        Ok(n) if n > 0 => match serde_json::from_slice(&line) {
            Ok(h) => h,
            Err(_) => return,
        },
        _ => return,
    };
    let Ok(mut w) = serde_json::to_vec(&welcome) else {
        return;
    };
    w.push(b'\n');
    if wr.write_all(&w).await.is_err() {
        return;
    }
    clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Client {
            tx,
            stdout: hello.stdout,
            stderr: hello.stderr,
        });
    let writer = async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut dec = frames::Decoder::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            loop {
                let (kind, payload) = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let msg = match kind {
                    frames::STDIN if hello.stdin => Control::Stdin(payload),
                    frames::CLOSE_STDIN if hello.stdin => Control::CloseStdin,
                    frames::RESIZE => match frames::parse_resize(&payload) {
                        Some((r, c)) => Control::Resize(r, c),
                        None => continue,
                    },
                    _ => continue,
                };
                if ctl.send(msg).is_err() {
                    return;
                }
            }
        }
    };
    // The writer ends when the shim drops this client (exit); the reader
    // when the client hangs up. The client is done when the writer is.
    tokio::select! {
        () = writer => {}
        () = async { reader.await; std::future::pending::<()>().await } => {}
    }
}

/// Reads a shim's ready line from its stdout.
pub fn parse_ready(line: &str) -> Result<i32, String> {
    let r: Ready = serde_json::from_str(line.trim())
        .map_err(|_| format!("the shim said something unexpected: {:?}", line.trim()))?;
    match (r.pid, r.error) {
        (_, Some(e)) => Err(e),
        (Some(pid), None) => Ok(pid),
        (None, None) => Err("the shim reported neither a pid nor an error".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        assert_eq!(parse_ready(r#"{"pid":42}"#), Ok(42));
        assert_eq!(parse_ready(r#"{"error":"boom"}"#), Err("boom".to_owned()));
        assert!(parse_ready("").is_err());
    }
}
