//! The OCI runtime's command line (runc's, which crun and youki share):
//! the arguments of each verb, and the error a failed call left in its
//! JSON log. The shim runs `create`; the agent runs the other verbs.

use std::path::{Path, PathBuf};

/// Where a runtime binary keeps its state and logs for this agent.
#[derive(Debug, Clone)]
pub struct Runc {
    /// The binary (`runc` from PATH by default).
    pub binary: PathBuf,
    /// `--root`: its state dir (under the agent's exec root).
    pub root: PathBuf,
}

impl Runc {
    fn global(&self, log: Option<&Path>) -> Vec<String> {
        let mut v = vec!["--root".to_owned(), self.root.display().to_string()];
        if let Some(log) = log {
            v.extend([
                "--log".to_owned(),
                log.display().to_string(),
                "--log-format".to_owned(),
                "json".to_owned(),
            ]);
        }
        v
    }

    /// `runc create --bundle B --pid-file P [--console-socket S] ID`.
    pub fn create_args(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        log: &Path,
    ) -> Vec<String> {
        let mut v = self.global(Some(log));
        v.extend([
            "create".to_owned(),
            "--bundle".to_owned(),
            bundle.display().to_string(),
            "--pid-file".to_owned(),
            pid_file.display().to_string(),
        ]);
        if let Some(s) = console_socket {
            v.extend(["--console-socket".to_owned(), s.display().to_string()]);
        }
        v.push(id.to_owned());
        v
    }

    /// `runc start ID`.
    pub fn start_args(&self, id: &str, log: &Path) -> Vec<String> {
        let mut v = self.global(Some(log));
        v.extend(["start".to_owned(), id.to_owned()]);
        v
    }

    /// `runc kill [--all] ID SIGNAL`.
    pub fn kill_args(&self, id: &str, signal: i32, all: bool) -> Vec<String> {
        let mut v = self.global(None);
        v.push("kill".to_owned());
        if all {
            v.push("--all".to_owned());
        }
        v.extend([id.to_owned(), signal.to_string()]);
        v
    }

    /// `runc delete --force ID`.
    pub fn delete_args(&self, id: &str) -> Vec<String> {
        let mut v = self.global(None);
        v.extend(["delete".to_owned(), "--force".to_owned(), id.to_owned()]);
        v
    }

    /// `runc pause ID` / `runc resume ID`.
    pub fn freeze_args(&self, id: &str, pause: bool) -> Vec<String> {
        let mut v = self.global(None);
        v.extend([
            if pause { "pause" } else { "resume" }.to_owned(),
            id.to_owned(),
        ]);
        v
    }

    /// `runc exec --process P --pid-file F ID` in the foreground (runc
    /// exits with the process's status), or with a TTY `runc exec --detach
    /// --tty --console-socket S ...` (runc allows a console socket only
    /// when it detaches).
    pub fn exec_args(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
    ) -> Vec<String> {
        let mut v = self.global(None);
        v.extend([
            "exec".to_owned(),
            "--process".to_owned(),
            process.display().to_string(),
            "--pid-file".to_owned(),
            pid_file.display().to_string(),
        ]);
        if let Some(s) = console_socket {
            v.extend([
                "--detach".to_owned(),
                "--tty".to_owned(),
                "--console-socket".to_owned(),
                s.display().to_string(),
            ]);
        }
        v.push(id.to_owned());
        v
    }
}

/// The last error runc wrote to its JSON log (`{"level":"error","msg":..}`),
/// else the last line of plain output, else a generic message.
pub fn error_from_log(log: &str, output: &str) -> String {
    let from_log = log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error")
            .then(|| v.get("msg")?.as_str().map(str::to_owned))
            .flatten()
    });
    from_log
        .or_else(|| {
            output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "the OCI runtime failed without a message".to_owned())
}

/// Docker's wording for a failed `create`, e.g. for a missing binary:
/// `OCI runtime create failed: runc create failed: unable to start container
/// process: exec: "nosuch": executable file not found in $PATH`.
pub fn create_failed(runtime: &str, detail: &str) -> String {
    let name = Path::new(runtime)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| runtime.to_owned());
    format!(
        "failed to create task for container: OCI runtime create failed: {name} create failed: {detail}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_errors() {
        let r = Runc {
            binary: "runc".into(),
            root: "/run/swarmnet/runc".into(),
        };
        assert_eq!(
            r.kill_args("abc", 9, false),
            ["--root", "/run/swarmnet/runc", "kill", "abc", "9"]
        );
        let c = r.create_args(
            "abc",
            Path::new("/b"),
            Path::new("/p"),
            Some(Path::new("/s")),
            Path::new("/l"),
        );
        assert_eq!(c.last().map(String::as_str), Some("abc"));
        assert!(c.windows(2).any(|w| w == ["--console-socket", "/s"]));
        let log = r#"{"level":"info","msg":"x"}
{"level":"error","msg":"unable to start container process: exec: \"nosuch\": executable file not found in $PATH"}"#;
        assert_eq!(
            error_from_log(log, ""),
            "unable to start container process: exec: \"nosuch\": executable file not found in $PATH"
        );
        assert_eq!(error_from_log("", "a\nlast line\n\n"), "last line");
        assert!(create_failed("/usr/bin/runc", "boom").contains("runc create failed: boom"));
    }
}
