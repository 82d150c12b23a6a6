//! Small helpers: root check, unique names, commands with a deadline,
//! random bytes.

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Panics, saying why, unless the process runs as root: the cluster tests
/// create network namespaces and never pass silently without them.
#[track_caller]
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "swarmnet cluster tests must run as root (they create network namespaces, \
         veths and bridges); running as uid {euid}. Run `cargo test` as root."
    );
}

/// A current-thread tokio runtime for the async clients (bollard).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this process and call, `sn{pid%100000}x{n}`, at
/// most 12 characters so `{prefix}-hub` stays short.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sn{}x{}", std::process::id() % 100_000, n)
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr, and panics if
/// it cannot be started or does not finish within `timeout` (killing it).
#[track_caller]
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_timeout_input(cmd, timeout, None)
}

/// [`run_timeout`] with `input` written to the command's stdin (then
/// closed).
#[track_caller]
pub fn run_timeout_input(cmd: &mut Command, timeout: Duration, input: Option<&[u8]>) -> Output {
    let shown = show(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "`{shown}` did not finish within {timeout:?}; stdout: {}; stderr: {}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(e) => panic!("waiting for `{shown}`: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs `cmd` and panics unless it exits 0; returns its stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let shown = show(cmd);
    let out = run_timeout(cmd, timeout);
    if !out.status.success() {
        panic!("`{shown}` failed ({}): {}", out.status, describe(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stdout: ...; stderr: ...` of an output, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "stdout: {}; stderr: {}",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A command line as text, for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Hex SHA-256 of `bytes` (registry digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

static RNG_STREAM: AtomicU64 = AtomicU64::new(0);

/// `n` pseudo-random bytes (xorshift64*, seeded from the clock, the pid and
/// a counter): test traffic, not cryptography.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let stream = RNG_STREAM.fetch_add(1, Ordering::Relaxed);
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A random string of `n` characters from `alphabet`.
pub fn random_string(n: usize, alphabet: &[u8]) -> String {
    random_bytes(n)
        .into_iter()
        .map(|b| char::from(alphabet[usize::from(b) % alphabet.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.len() <= 12, "{a}");
        // Interface names built from them stay within IFNAMSIZ - 1.
        assert!(format!("{a}-hub").len() <= 15);
    }

    #[test]
    fn random_bytes_differ() {
        let a = random_bytes(64);
        let b = random_bytes(64);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn run_timeout_captures_output() {
        let out = run_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    }
}
