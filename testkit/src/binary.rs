//! A ledger for end-to-end tests of the real `logline` binary: a temporary data dir (the
//! embedded store and the node key) and, on PostgreSQL, a fresh database of its own; plus
//! running the binary and reading what it printed.
//!
//! The binary's path is `env!("CARGO_BIN_EXE_logline")`, known only when the calling test
//! crate is compiled, so commands take it as `bin`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::{Backend, pg};

/// One ledger under test. It can be served, or run against, more than once.
pub struct Ledger {
    /// The data dir: the embedded store and the node key.
    pub dir: tempfile::TempDir,
    /// On PostgreSQL, the URL of this ledger's own fresh database.
    pub url: Option<String>,
    pub backend: Backend,
}

impl Ledger {
    /// An empty data dir and, on PostgreSQL, a fresh database; nothing initialised yet.
    pub async fn new(backend: Backend) -> Self {
        let url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(pg::fresh_database().await),
        };
        Self {
            dir: tempfile::tempdir().unwrap(),
            url,
            backend,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where `init` writes the node key.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir().join("node.key")
    }

    /// `sqlite` or `postgres`, as the binary reports its store.
    pub fn store_name(&self) -> &'static str {
        self.backend.name()
    }

    /// `bin --data-dir <dir> [--database-url <url>]`, with no `LOGLINE_*` variable inherited
    /// from the test's environment. Callers add arguments and choose the standard streams.
    pub fn logline(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LOGLINE_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--data-dir").arg(self.data_dir());
        if let Some(url) = &self.url {
            cmd.arg("--database-url").arg(url);
        }
        cmd
    }

    /// [`Ledger::logline`] acting as `user` of `tenant` with `args`, all three streams piped.
    pub fn logline_as(&self, bin: &str, user: &str, tenant: &str, args: &[&str]) -> Command {
        let mut cmd = self.logline(bin);
        cmd.args(["--as", user, "--tenant", tenant]).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Starts a command whose stdin is piped and feeds it `stdin` without waiting for it.
pub fn spawn(mut cmd: Command, stdin: &str) -> Child {
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_string();
    // A writer thread, so a large input never deadlocks against the child's output.
    std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    child
}

/// Waits for a child whose output is piped and collects what it printed.
pub fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(
            self.success(),
            "logline failed (exit {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Stdout and stderr together, for checking messages wherever they were printed.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Stdout as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Stdout as NDJSON values.
    pub fn ndjson(&self) -> Vec<Value> {
        ndjson(&self.stdout)
    }
}

/// The JSON values of the non-blank lines of `text`.
pub fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
