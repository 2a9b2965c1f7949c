//! `ll-eval` (also `logline eval`): parses arguments, loads the suites, picks the target, runs
//! and prints. Exit codes: 0 when every suite passes its threshold (under every variant), 100
//! when cases fail, 1 when the run could not happen (a bad fixture — with its file, line and
//! reason — a provider or server that is down, a store that cannot be opened).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ledger::Principal;
use server::chat::{PromptLibrary, ProviderConfig};
use server::config::{self, AuthSettings, StoreSettings};

use crate::fixture::Suite;
use crate::report;
use crate::runner::{self, Options};
use crate::target::{InProcess, Remote, Target};

/// Cases failed: the suite did not reach its threshold.
pub const EXIT_FAILED: u8 = 100;

#[derive(Parser, Debug)]
#[command(
    name = "ll-eval",
    version,
    about = "Run prompt fixtures (YAML suites) against the chat agent and record every case as spans"
)]
struct Cli {
    /// Suite files (YAML, one suite each), e.g. evals/suites/happy.yaml.
    #[arg(required = true)]
    suites: Vec<PathBuf>,
    /// Ask a running server instead of an agent in this process.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for --url (with LOGLINE_JWT_SECRET set, one is minted per case instead).
    #[arg(long, env = "LOGLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// In process: the provider (offline, openai, ollama); default LOGLINE_PROVIDER or offline.
    #[arg(long)]
    provider: Option<String>,
    /// In process: the model (LOGLINE_MODEL).
    #[arg(long)]
    model: Option<String>,
    /// In process: the provider's URL (OPENAI_BASE_URL for openai, OLLAMA_URL for ollama).
    #[arg(long)]
    base_url: Option<String>,
    /// Prompt variants, comma-separated; several run side by side.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    variant: Vec<String>,
    /// Attempts per case.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Fraction of a case's attempts that must pass for the case to pass.
    #[arg(long, default_value_t = 1.0)]
    case_threshold: f64,
    /// Attempts in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Only cases whose name matches this regular expression.
    #[arg(long)]
    filter: Option<String>,
    /// Write results: `*.xml` as JUnit, anything else as JSON Lines (repeatable).
    #[arg(long)]
    output: Vec<PathBuf>,
    /// In process: the embedded ledger's directory (as for `logline`).
    #[arg(long, env = "LOGLINE_DATA_DIR", default_value = ".logline")]
    data_dir: PathBuf,
    /// In process: a PostgreSQL URL instead of the embedded ledger.
    #[arg(long, env = "LOGLINE_DATABASE_URL")]
    database_url: Option<String>,
    /// In process: a throwaway ledger in a temporary directory (nothing is kept).
    #[arg(long, conflicts_with_all = ["url", "database_url"])]
    fresh: bool,
    /// Record the run as this user (default: the suite's user).
    #[arg(long = "as")]
    recorder_user: Option<String>,
    /// Record the run in this tenant (default: the suite's tenant).
    #[arg(long = "tenant")]
    recorder_tenant: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Entry point for `ll-eval` and `logline eval` (`args` includes the program name).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(config::log_filter(config::env))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The provider configuration: the flags over the environment.
fn provider_config(cli: &Cli) -> anyhow::Result<ProviderConfig> {
    let kind = cli
        .provider
        .clone()
        .or_else(|| config::env("LOGLINE_PROVIDER"))
        .unwrap_or_else(|| "offline".into());
    let lookup = |k: &str| -> Option<String> {
        match k {
            "LOGLINE_PROVIDER" => Some(kind.clone()),
            "LOGLINE_MODEL" => cli.model.clone().or_else(|| config::env(k)),
            "OPENAI_BASE_URL" if kind == "openai" => {
                cli.base_url.clone().or_else(|| config::env(k))
            }
            "OLLAMA_URL" if kind == "ollama" => cli.base_url.clone().or_else(|| config::env(k)),
            _ => config::env(k),
        }
    };
    ProviderConfig::from_lookup(lookup).map_err(|e| anyhow::anyhow!("provider: {e}"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.repeat == 0 || cli.concurrency == 0 {
        anyhow::bail!("--repeat and --concurrency must be at least 1");
    }
    if !(0.0..=1.0).contains(&cli.case_threshold) {
        anyhow::bail!("--case-threshold must be a fraction from 0 to 1");
    }
    let filter = cli
        .filter
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
    let mut suites = Vec::new();
    for path in &cli.suites {
        suites.push(Suite::load(path)?);
    }
    let mut variants: Vec<String> = Vec::new();
    for v in &cli.variant {
        let v = v.trim().to_string();
        if !v.is_empty() && !variants.contains(&v) {
            variants.push(v);
        }
    }
    if variants.is_empty() {
        anyhow::bail!("--variant names no variant");
    }
    let recorder = match (&cli.recorder_user, &cli.recorder_tenant) {
        (None, None) => None,
        (u, t) => Some(Principal::new(
            u.clone().unwrap_or_else(|| "local".into()),
            t.clone().unwrap_or_else(|| "local".into()),
        )),
    };

    let _tmp; // keeps a --fresh ledger alive for the run
    let (target, provider): (Arc<dyn Target>, Option<(String, String)>) = match &cli.url {
        Some(url) => {
            let secret = AuthSettings::from_lookup(config::env).signing_secret().ok();
            (Arc::new(Remote::new(url, cli.token.clone(), secret)?), None)
        }
        None => {
            let library = PromptLibrary::embedded()?;
            for v in &variants {
                library
                    .variant(v)
                    .map_err(|e| anyhow::anyhow!("--variant {v}: {e}"))?;
            }
            let store_settings = if cli.fresh {
                let dir = tempfile::tempdir()?;
                let s = StoreSettings {
                    data_dir: dir.path().to_path_buf(),
                    database_url: None,
                };
                _tmp = Some(dir);
                s
            } else {
                _tmp = None;
                StoreSettings {
                    data_dir: cli.data_dir.clone(),
                    database_url: cli.database_url.clone(),
                }
            };
            let store = store_settings.open().await?;
            let config = provider_config(&cli)?;
            let seed: Vec<String> = suites.iter().flat_map(|s| s.seed.clone()).collect();
            let target =
                InProcess::start(store, &config, config::context_tokens(config::env), &seed)
                    .await?;
            let provider = server::chat::provider_from_config(&config)
                .ok()
                .map(|p| (p.kind().to_string(), p.model().to_string()));
            (Arc::new(target), provider)
        }
    };
    let opts = Options {
        variants,
        repeat: cli.repeat,
        case_threshold: cli.case_threshold,
        concurrency: cli.concurrency,
        filter,
        progress: !cli.no_progress,
        recorder,
        target: target.describe(),
        provider,
        visibility: "private",
        candidates: None,
    };
    let color = std::io::stdout().is_terminal();
    let mut runs = Vec::new();
    for suite in &suites {
        match runner::run_suite(target.clone(), suite, &opts).await {
            Ok(r) => {
                print!("{}", report::table(&r, color));
                runs.push(r);
            }
            Err(e) => {
                for path in &cli.output {
                    report::write(path, &runs)?;
                }
                anyhow::bail!("{}: could not run: {e}", suite.path.display());
            }
        }
    }
    for path in &cli.output {
        report::write(path, &runs)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if runs.iter().all(runner::SuiteRun::pass) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_FAILED))
    }
}
