//! `docker exec`: a process run in a running container by `runc exec` in
//! the foreground (runc exits with the process's status), its stdio piped
//! to the agent or, with `-t`, a TTY whose master end runc sends over a
//! console socket. Exec instances live in memory, as dockerd's do.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
};

use bollard_stubs::models::ExecConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::watch,
};
use tracing::{debug, info, warn};

use super::{
    ClientIo, Runtime, RuntimeError,
    attach::{BoxWriter, write_output},
    console, container, frames,
    rootfs::Rootfs,
    runc, spec, user,
};

#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i64>,
    pub pid: i64,
}

pub struct Exec {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    state: Mutex<ExecState>,
    done: watch::Sender<bool>,
}

impl Exec {
    pub fn state(&self) -> ExecState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, f: impl FnOnce(&mut ExecState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[derive(Default)]
pub struct Execs {
    map: Mutex<HashMap<String, Arc<Exec>>>,
}

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exec>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn forget_container(&self, container_id: &str) {
        self.lock().retain(|_, e| e.container_id != container_id);
    }

    pub fn of_container(&self, container_id: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|e| e.container_id == container_id)
            .map(|e| e.id.clone())
            .collect()
    }
}

impl Runtime {
    /// `POST /containers/{id}/exec`.
    pub fn exec_create(&self, name: &str, config: ExecConfig) -> Result<String, RuntimeError> {
        let c = self.get(name)?;
        let rec = c.record();
        if !rec.state.status.is_running() {
            return Err(RuntimeError::Conflict(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if rec.state.status == container::Status::Paused {
            return Err(RuntimeError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(RuntimeError::Invalid(
                "No exec command specified".to_owned(),
            ));
        }
        if config.privileged.unwrap_or(false) {
            return Err(RuntimeError::Invalid(
                "privileged exec is not supported by swarmnet".to_owned(),
            ));
        }
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        let id = hex::encode(b);
        let exec = Arc::new(Exec {
            id: id.clone(),
            container_id: rec.id,
            config,
            state: Mutex::new(ExecState::default()),
            done: watch::channel(false).0,
        });
        self.execs.lock().insert(id.clone(), exec);
        Ok(id)
    }

    pub fn exec_get(&self, id: &str) -> Result<Arc<Exec>, RuntimeError> {
        self.execs
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NoSuchExec(id.to_owned()))
    }

    /// Checks an exec start (answered before the hijack) and marks it
    /// started.
    pub fn exec_begin(&self, id: &str) -> Result<Arc<Exec>, RuntimeError> {
        let e = self.exec_get(id)?;
        let c = self.get(&e.container_id)?;
        if !c.status().is_running() {
            return Err(RuntimeError::Conflict(format!(
                "container {} is not running",
                e.container_id
            )));
        }
        let mut st = e.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.started {
            return Err(RuntimeError::Conflict(format!(
                "Error: Exec command {id} is already running"
            )));
        }
        st.started = true;
        drop(st);
        Ok(e)
    }

    /// Runs a begun exec; with a client, its stdio goes there and this
    /// returns when the process has exited (its exit code recorded before
    /// the client's stream ends, so `docker exec` can read it).
    pub async fn exec_run(self: &Arc<Self>, e: Arc<Exec>, tty: bool, client: Option<ClientIo>) {
        if let Err(err) = self.exec_inner(&e, tty, client).await {
            warn!(exec = container::short(&e.id), error = %err, "exec failed");
            e.set(|s| {
                s.running = false;
                s.exit_code = Some(126);
            });
            e.done.send_replace(true);
        }
    }

    async fn exec_inner(
        self: &Arc<Self>,
        e: &Arc<Exec>,
        tty: bool,
        client: Option<ClientIo>,
    ) -> Result<(), RuntimeError> {
        let c = self.get(&e.container_id)?;
        let rec = c.record();
        let cfg = &e.config;
        let dir = self.cfg.data_dir.join(&rec.id);
        let rootfs = Rootfs::in_dir(&dir);
        let read = |p: &str| std::fs::read_to_string(rootfs.target.join(p)).unwrap_or_default();
        let user_spec = cfg
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| rec.config.user.clone())
            .unwrap_or_default();
        let u = user::resolve(&user_spec, &read("etc/passwd"), &read("etc/group"))
            .map_err(RuntimeError::Invalid)?;
        let merged_env = container::merge_env(
            rec.config.env.as_deref().unwrap_or_default(),
            cfg.env.as_deref().unwrap_or_default(),
        );
        let hostname = rec.config.hostname.clone().unwrap_or_default();
        let caps = spec::capabilities(
            rec.host_config.cap_add.as_deref().unwrap_or_default(),
            rec.host_config.cap_drop.as_deref().unwrap_or_default(),
        )
        .map_err(|err| RuntimeError::Invalid(err.to_string()))?;
        let process = spec::process(&spec::ProcessInput {
            args: cfg.cmd.clone().unwrap_or_default(),
            env: container::process_env(&merged_env, &hostname, &u.home, tty),
            cwd: cfg
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .or_else(|| rec.config.working_dir.clone().filter(|w| !w.is_empty()))
                .unwrap_or_else(|| "/".to_owned()),
            user: u.user,
            tty,
            caps,
        })
        .map_err(|err| RuntimeError::Invalid(err.to_string()))?;
        let paths = self.shim_paths(&rec.id);
        let short = container::short(&e.id);
        let process_file = paths.dir().join(format!("exec-{short}.json"));
        let pid_file = paths.dir().join(format!("exec-{short}.pid"));
        let console_sock = paths.dir().join(format!("exec-{short}.sock"));
        let bytes =
            serde_json::to_vec(&process).map_err(|err| RuntimeError::Internal(err.to_string()))?;
        std::fs::write(&process_file, bytes).map_err(super::io_err("write the exec process"))?;
        let listener = if tty {
            let _ = std::fs::remove_file(&console_sock);
            Some(
                tokio::net::UnixListener::bind(&console_sock)
                    .map_err(super::io_err("console socket"))?,
            )
        } else {
            None
        };
        let attach_stdin = cfg.attach_stdin.unwrap_or(false) && client.is_some();
        let mut cmd = Command::new(&self.runc.binary);
        cmd.args(self.runc.exec_args(
            &rec.id,
            &process_file,
            &pid_file,
            listener.as_ref().map(|_| console_sock.as_path()),
        ));
        if tty {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
        } else {
            cmd.stdin(if attach_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if client.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(super::io_err("run runc exec"))?;
        e.set(|s| s.running = true);
        info!(exec = short, container = rec.short_id(), "exec started");
        let cleanup = || {
            let _ = std::fs::remove_file(&process_file);
            let _ = std::fs::remove_file(&pid_file);
            let _ = std::fs::remove_file(&console_sock);
        };
        let pid_of = || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };

        if let Some(listener) = listener {
            // `runc exec -d`: runc sends the terminal, starts the process
            // and exits; the process is then the agent's child (the agent
            // is a child subreaper), whose status waitpid collects.
            let status = child
                .wait()
                .await
                .map_err(super::io_err("wait for runc exec"))?;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err).await;
                }
                cleanup();
                return Err(RuntimeError::Oci(runc::error_from_log("", &err)));
            }
            let conn = tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
                .await
                .map_err(|_| RuntimeError::Internal("runc sent no terminal".into()))?
                .map_err(super::io_err("accept the console socket"))?
                .0;
            drop(listener);
            let std = conn.into_std().map_err(super::io_err("console socket"))?;
            std.set_nonblocking(false)
                .map_err(super::io_err("console socket"))?;
            let master = tokio::task::spawn_blocking(move || console::receive_fd(&std))
                .await
                .map_err(|err| RuntimeError::Internal(err.to_string()))?
                .map_err(super::io_err("receive the terminal"))?;
            let master = std::fs::File::from(master);
            let pid = pid_of();
            e.set(|s| s.pid = pid);
            let terminal = |m: &std::fs::File| m.try_clone().map_err(super::io_err("terminal"));
            self.exec_terminals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(e.id.clone(), terminal(&master)?);
            let mut rd = tokio::fs::File::from_std(terminal(&master)?);
            let mut wr = tokio::fs::File::from_std(master);
            let (mut creader, mut cwriter) = match client {
                Some(ClientIo { reader, writer }) => (Some(reader), Some(writer)),
                None => (None, None),
            };
            let to_client = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        // EIO once the process has closed the terminal.
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Some(w) = cwriter.as_mut()
                                && (w.write_all(&buf[..n]).await.is_err()
                                    || w.flush().await.is_err())
                            {
                                cwriter = None;
                            }
                        }
                    }
                }
            };
            let from_client = async {
                let Some(r) = creader
                    .as_mut()
                    .filter(|_| cfg.attach_stdin.unwrap_or(false))
                else {
                    return std::future::pending::<()>().await;
                };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return std::future::pending::<()>().await,
                        Ok(n) => {
                            if wr.write_all(&buf[..n]).await.is_err() {
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
            let code = wait_pid(pid).await;
            self.exec_terminals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&e.id);
            self.exec_finish(e, code);
            if let Some(mut w) = cwriter {
                let _ = w.shutdown().await;
            }
            cleanup();
            return Ok(());
        }

        // Pipes.
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let Some(client) = client else {
            let status = child.wait().await;
            e.set(|s| s.pid = pid_of());
            self.exec_finish(e, status.ok().and_then(|s| s.code()));
            cleanup();
            return Ok(());
        };
        let ClientIo {
            reader: mut creader,
            writer,
        } = client;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let pump = |stream: u8,
                    src: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
                    w: Arc<tokio::sync::Mutex<BoxWriter>>| async move {
            let Some(mut src) = src else { return };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut g = w.lock().await;
                        if write_output(&mut g, false, stream, &buf[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        };
        let want_out = cfg.attach_stdout.unwrap_or(true);
        let want_err = cfg.attach_stderr.unwrap_or(true);
        let out_task = pump(
            frames::STDOUT,
            stdout
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)
                .filter(|_| want_out),
            writer.clone(),
        );
        let err_task = pump(
            frames::STDERR,
            stderr
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)
                .filter(|_| want_err),
            writer.clone(),
        );
        let stdin_task = async move {
            let Some(mut stdin) = stdin else { return };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match creader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stdin.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let stdin_handle = tokio::spawn(stdin_task);
        let (_, _, status) = tokio::join!(out_task, err_task, child.wait());
        stdin_handle.abort();
        e.set(|s| s.pid = pid_of());
        self.exec_finish(e, status.ok().and_then(|s| s.code()));
        let _ = writer.lock().await.shutdown().await;
        cleanup();
        debug!(exec = short, "exec stream closed");
        Ok(())
    }

    fn exec_finish(&self, e: &Exec, code: Option<i32>) {
        let code = i64::from(code.unwrap_or(255));
        e.set(|s| {
            s.running = false;
            s.exit_code = Some(code);
        });
        e.done.send_replace(true);
        info!(
            exec = container::short(&e.id),
            exit_code = code,
            "exec exited"
        );
    }

    /// `POST /exec/{id}/resize`.
    pub fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        let _ = self.exec_get(id)?;
        let g = self
            .exec_terminals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match g.get(id) {
            Some(master) => console::resize(master, rows, cols).map_err(super::io_err("resize")),
            None => Ok(()),
        }
    }
}

/// The exit status of a process that is the agent's child (reparented to
/// it as the subreaper): the code, or 128 + the signal.
async fn wait_pid(pid: i64) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok().filter(|p| *p > 0)?);
    tokio::task::spawn_blocking(move || {
        loop {
            match nix::sys::wait::waitpid(pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Some(c),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Some(128 + s as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
