//! `LOGLINE_PROVIDER=local`: a real model with no network and no key. `serve` starts llama.cpp's
//! OpenAI-compatible server (PyPI `xllamacpp`, installed by `scripts/local-model.sh install`)
//! on a free loopback port with the GGUF file `LOGLINE_MODEL_PATH` names, waits until it has
//! loaded the model, talks to it as an OpenAI-compatible provider, and restarts it (at most
//! [`MAX_RESTARTS`] times) when it dies. The server process ends with ours.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::openai::OpenAiProvider;
use super::settings::ProviderSettings;
use super::types::{Provider, ProviderError};

/// The launcher, passed to `python -c` so that the binary needs no file beside it.
const LAUNCHER: &str = include_str!("local_server.py");
/// How often a dead model server is started again before the supervisor gives up.
pub const MAX_RESTARTS: u32 = 3;
/// Loading a 1 GB model from a cold disk takes seconds; this is the limit.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What `LOGLINE_PROVIDER=local` was configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalModel {
    /// The GGUF file (`LOGLINE_MODEL_PATH`).
    pub model_path: PathBuf,
    /// A python with `xllamacpp` (`LOGLINE_MODEL_PYTHON`; by default the virtualenv
    /// `scripts/local-model.sh` makes, else `python3`).
    pub python: PathBuf,
    /// The context the server allocates (`LOGLINE_CONTEXT_TOKENS`, default 8192).
    pub context_tokens: usize,
    /// CPU threads (`LOGLINE_MODEL_THREADS`, default all cores).
    pub threads: Option<usize>,
    pub settings: ProviderSettings,
}

/// The context a local model server gets unless `LOGLINE_CONTEXT_TOKENS` says otherwise: room
/// for our prompt (~1,500 tokens), a conversation and tool results, and a 1,024-token answer.
pub const LOCAL_CONTEXT_TOKENS: usize = 8192;

impl LocalModel {
    /// Reads `LOGLINE_MODEL_PATH`, `LOGLINE_MODEL_PYTHON`, `LOGLINE_MODEL_THREADS` and
    /// `LOGLINE_CONTEXT_TOKENS`; the file must exist.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        settings: ProviderSettings,
    ) -> Result<Self, ProviderError> {
        let model_path = PathBuf::from(get("LOGLINE_MODEL_PATH").ok_or_else(|| {
            ProviderError::Config(
                "LOGLINE_PROVIDER=local needs LOGLINE_MODEL_PATH, a GGUF model file \
                 (`scripts/local-model.sh path qwen` installs one and prints its path)"
                    .into(),
            )
        })?);
        if !model_path.is_file() {
            return Err(ProviderError::Config(format!(
                "LOGLINE_MODEL_PATH: no model file at {}",
                model_path.display()
            )));
        }
        let python = get("LOGLINE_MODEL_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(default_python);
        let number = |var: &str, max: usize| -> Result<Option<usize>, ProviderError> {
            get(var)
                .map(|v| {
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| {
                            ProviderError::Config(format!(
                                "{var} must be a whole number from 1 to {max}, not `{v}`"
                            ))
                        })
                })
                .transpose()
        };
        Ok(Self {
            model_path,
            python,
            context_tokens: number("LOGLINE_CONTEXT_TOKENS", 1 << 20)?
                .unwrap_or(LOCAL_CONTEXT_TOKENS),
            threads: number("LOGLINE_MODEL_THREADS", 1024)?,
            settings,
        })
    }

    /// The model's name as the server reports it and spans record it: the file's stem.
    pub fn name(&self) -> String {
        self.model_path
            .file_stem()
            .map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// The virtualenv `scripts/local-model.sh` installs into, when it exists, else `python3`.
fn default_python() -> PathBuf {
    let venv = Path::new("target/local-model/venv/bin/python");
    if venv.is_file() {
        venv.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// A running, supervised model server. Dropping it stops the supervisor and the process.
pub struct LocalServer {
    base_url: String,
    model: String,
    settings: ProviderSettings,
    supervisor: JoinHandle<()>,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // The task owns the child with kill_on_drop: aborting it ends the process.
        self.supervisor.abort();
    }
}

impl LocalServer {
    /// Starts the model server and returns once it answers `/health`.
    pub async fn start(cfg: &LocalModel) -> Result<Self, ProviderError> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("logline-local-model-{port}.log"));
        let child = spawn_ready(cfg, port, &log).await?;
        tracing::info!(model = %cfg.model_path.display(), port, log = %log.display(), "local model server ready");
        let supervisor = tokio::spawn(supervise(cfg.clone(), port, log, child));
        Ok(Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            model: cfg.name(),
            settings: cfg.settings.clone(),
            supervisor,
        })
    }

    /// The OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// An OpenAI-compatible provider talking to this server.
    pub fn provider(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        Ok(Arc::new(OpenAiProvider::new(
            &self.base_url,
            None,
            &self.model,
            self.settings.clone(),
        )?))
    }
}

/// Restarts the server on the same port when it exits, at most [`MAX_RESTARTS`] times.
async fn supervise(cfg: LocalModel, port: u16, log: PathBuf, mut child: Child) {
    let mut restarts = 0;
    loop {
        let status = child.wait().await;
        if restarts == MAX_RESTARTS {
            tracing::error!(?status, log = %log.display(), "local model server exited; restarted {MAX_RESTARTS} times already, giving up (chat turns will fail as unreachable)");
            return;
        }
        restarts += 1;
        tracing::warn!(?status, restart = restarts, log = %log.display(), "local model server exited; starting it again");
        match spawn_ready(&cfg, port, &log).await {
            Ok(c) => child = c,
            Err(e) => {
                tracing::error!(error = %e, "local model server could not be restarted");
                return;
            }
        }
    }
}

fn free_port() -> Result<u16, ProviderError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            ProviderError::Config(format!("no free loopback port for the model server: {e}"))
        })
}

/// Spawns the launcher and waits until `/health` answers 200 (llama.cpp says 503 while it loads).
async fn spawn_ready(cfg: &LocalModel, port: u16, log: &Path) -> Result<Child, ProviderError> {
    let out = std::fs::File::create(log)
        .map_err(|e| ProviderError::Config(format!("cannot write {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| ProviderError::Config(format!("cannot write {}: {e}", log.display())))?;
    let mut cmd = Command::new(&cfg.python);
    cmd.arg("-c")
        .arg(LAUNCHER)
        .arg(&cfg.model_path)
        .arg(port.to_string())
        .arg("--ctx")
        .arg(cfg.context_tokens.to_string())
        .arg("--alias")
        .arg(cfg.name())
        // `serve` killed with SIGKILL cannot stop its child: the child stops itself.
        .arg("--exit-with-parent");
    if let Some(t) = cfg.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ProviderError::Config(format!(
                "cannot run {} for the local model server: {e} (set LOGLINE_MODEL_PYTHON to \
                 the python `scripts/local-model.sh python` prints)",
                cfg.python.display()
            ))
        })?;
    let client = super::http::client(&cfg.settings)?;
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ProviderError::Config(format!(
                "the local model server exited ({status}) before it was ready:\n{}",
                tail(log)
            )));
        }
        if let Ok(r) = client
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(child);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProviderError::Config(format!(
                "the local model server was not ready within {} s:\n{}",
                READY_TIMEOUT.as_secs(),
                tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of the server's log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
