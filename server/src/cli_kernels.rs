//! `logline manifest …`, `logline kernels …` and `logline run`: the CLI face of the manifest,
//! Stage-0 and the `run_code` kernel, plus the Stage-0 boot that `logline serve` runs first.
//! The logic lives in the `kernels` crate; this module parses, calls and prints.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use kernels::manifest;
use kernels::midnight_ruler;
use kernels::observer_bot::{ObserverBot, ObserverConfig};
use kernels::policy_agent::{PolicyAgent, PolicyAgentConfig};
use kernels::request_worker::{RequestWorker, WorkerConfig};
use kernels::run_code::{Outcome, RunCode};
use kernels::runner;
use kernels::stage0::{self, BootReport, State};
use ledger::{Principal, Store};
use serde_json::Value;
use uuid::Uuid;

use crate::cli::{Global, open};

#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Print the current manifest (id, seq, hash, content) after verifying its signature.
    Show,
    /// Append a new signed manifest seq: `throttle.per_tenant_daily_exec_limit=100`,
    /// `policy.slow_ms=2000`, `allowed_boot_ids=["…"]`, `features.chat=true`. Values are JSON
    /// when they parse as JSON, strings otherwise. Prints the new seq.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum StatusFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum KernelsCommand {
    /// Run Stage-0's checks and print each kernel's state; exit 1 if an allow-listed kernel is
    /// refused. Every refusal is recorded once as a `boot_event` span.
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
    /// Append a new signed seq of a kernel's span with content fields changed
    /// (`config.time_ms=300`, `version=1.1.0`). Prints the new seq.
    Set {
        /// run_code, observer_bot, request_worker, policy_agent, provider_exec, midnight_ruler.
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The `function` span to run.
    pub function: Uuid,
    /// The input passed to `main(input, ctx)`, as JSON (default: null).
    #[arg(long)]
    pub input: Option<String>,
}

fn principal(g: &Global) -> Principal {
    Principal::new(g.user.clone(), g.tenant.clone())
}

fn assignments(texts: &[String]) -> Result<Vec<(String, Value)>> {
    texts
        .iter()
        .map(|t| manifest::parse_assignment(t).map_err(|e| anyhow!(e)))
        .collect()
}

/// Seeds the native kernel spans (what `logline init` adds to the manifest); prints a line.
pub async fn init_kernels(store: &dyn Store) -> Result<()> {
    let seeded = stage0::seed(store).await?;
    println!(
        "kernels:     {} native kernel spans{}",
        stage0::NATIVE.len(),
        if seeded.is_empty() {
            String::new()
        } else {
            format!(" ({} seeded now)", seeded.len())
        }
    );
    Ok(())
}

pub async fn manifest(g: &Global, what: ManifestCommand) -> Result<ExitCode> {
    let store = open(g).await?;
    match what {
        ManifestCommand::Show => {
            let m = manifest::load(store.as_ref()).await?;
            writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&m.to_json())?
            )?;
        }
        ManifestCommand::Set { assignments: a } => {
            let sets = assignments(&a)?;
            let m = manifest::set(store.as_ref(), &g.user, &sets).await?;
            for (k, v) in &sets {
                eprintln!("manifest: {k} = {v}");
            }
            writeln!(std::io::stdout(), "{}", m.seq)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn kernels(g: &Global, what: KernelsCommand) -> Result<ExitCode> {
    let store = open(g).await?;
    stage0::seed(store.as_ref()).await?;
    match what {
        KernelsCommand::Status { format } => {
            let report = stage0::inspect(store.as_ref()).await?;
            stage0::record_refusals(store.as_ref(), &report).await?;
            let mut out = std::io::stdout().lock();
            match format {
                StatusFormat::Json => writeln!(out, "{}", report.to_json())?,
                StatusFormat::Table => writeln!(out, "{}", table(&report))?,
            }
            Ok(if report.allowed_refused() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        KernelsCommand::Set {
            name,
            assignments: a,
        } => {
            let sets = assignments(&a)?;
            let seq = stage0::set_kernel(store.as_ref(), &name, &g.user, &sets).await?;
            for (k, v) in &sets {
                eprintln!("kernel {name}: {k} = {v}");
            }
            writeln!(std::io::stdout(), "{seq}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `kernels status` table, with the manifest it was decided on.
fn table(report: &BootReport) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["name", "id", "seq", "version", "state", "reason"]);
    for k in &report.kernels {
        t.add_row([
            k.name.clone(),
            k.id.to_string(),
            k.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            k.version.clone().unwrap_or_else(|| "-".into()),
            k.state.label().to_string(),
            k.reason.clone(),
        ]);
    }
    let manifest = match &report.manifest {
        Ok(m) => format!("manifest seq {} {}", m.seq, m.curr_hash),
        Err(e) => format!("manifest REFUSED: {e}"),
    };
    format!("{t}\n{manifest}")
}

pub async fn run(g: &Global, args: RunArgs) -> Result<ExitCode> {
    let input: Value = match &args.input {
        Some(text) => serde_json::from_str(text).context("--input is not valid JSON")?,
        None => Value::Null,
    };
    let store = open(g).await?;
    stage0::seed(store.as_ref()).await?;
    let outcome = RunCode::new(store)
        .run(&principal(g), args.function, input)
        .await?;
    match outcome {
        Outcome::Executed {
            execution,
            ok,
            slow,
        } => {
            writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&execution)?
            )?;
            if let Some(patch) = slow {
                eprintln!(
                    "slow: took {} ms, over policy.slow_ms; status_patch {}",
                    execution["duration_ms"], patch["id"]
                );
            }
            if ok {
                Ok(ExitCode::SUCCESS)
            } else {
                let error = &execution["content"]["error"];
                eprintln!(
                    "error: the function failed ({}): {}",
                    error["kind"].as_str().unwrap_or("error"),
                    error["message"].as_str().unwrap_or_default()
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Outcome::Blocked { violation } => {
            writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&violation)?
            )?;
            eprintln!(
                "blocked: {} (policy_violation {})",
                violation["content"]["message"].as_str().unwrap_or_default(),
                violation["id"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// How often a running server re-reads the manifest and kernel spans (about eight small
/// reads), so a new seq takes effect within this long without a restart.
const RECHECK: Duration = Duration::from_secs(3);

/// Stage-0 for `logline serve`: seeds missing kernel spans, verifies them, records refusals and
/// one `boot_event` for this boot, logs what started, and keeps re-checking in the background
/// so a new manifest or kernel seq is noticed (and a new refusal recorded) without a restart.
/// It then starts the loops of the kernels that run on their own (`policy_agent`,
/// `observer_bot`, `request_worker`, `midnight_ruler`); each asks Stage-0 before every step, so each runs only while verified and
/// allow-listed, at the `interval_ms` of its newest kernel seq.
pub async fn boot_for_serve(store: Arc<dyn Store>) -> Result<()> {
    stage0::seed(store.as_ref()).await?;
    let report = stage0::inspect(store.as_ref()).await?;
    stage0::record_refusals(store.as_ref(), &report).await?;
    let process = format!("logline serve (pid {})", std::process::id());
    stage0::record_boot(store.as_ref(), &report, &process).await?;
    log_report(&report);
    start_kernel_loops(&store);
    tokio::spawn(async move {
        let mut last = report.fingerprint();
        loop {
            tokio::time::sleep(RECHECK).await;
            let report = match stage0::inspect(store.as_ref()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stage0: re-check failed");
                    continue;
                }
            };
            let now = report.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            if let Err(e) = stage0::record_refusals(store.as_ref(), &report).await {
                tracing::warn!(error = %e, "stage0: cannot record refusals");
            }
            log_report(&report);
        }
    });
    Ok(())
}

/// Spawns the interval loops of `policy_agent`, `observer_bot`, `request_worker` and
/// `midnight_ruler` (see [`runner::every`]).
fn start_kernel_loops(store: &Arc<dyn Store>) {
    let agent = Arc::new(PolicyAgent::new(store.clone()));
    tokio::spawn(runner::every(
        store.clone(),
        "policy_agent",
        move |config| {
            let agent = agent.clone();
            async move {
                let config = PolicyAgentConfig::from_value(&config)?;
                let r = agent.pass_with(&config).await.map_err(|e| e.to_string())?;
                Ok(if r.evaluated + r.errors + r.actions == 0 {
                    String::new()
                } else {
                    format!(
                        "{} spans evaluated, {} actions, {} policy_error",
                        r.evaluated, r.actions, r.errors
                    )
                })
            }
        },
    ));
    let observer = Arc::new(ObserverBot::new(store.clone()));
    tokio::spawn(runner::every(
        store.clone(),
        "observer_bot",
        move |config| {
            let observer = observer.clone();
            async move {
                let config = ObserverConfig::from_value(&config)?;
                let r = observer
                    .pass_with(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(if r.requested == 0 {
                    String::new()
                } else {
                    format!("{} requests", r.requested)
                })
            }
        },
    ));
    let worker = Arc::new(RequestWorker::new(store.clone()));
    tokio::spawn(runner::every(
        store.clone(),
        "request_worker",
        move |config| {
            let worker = worker.clone();
            async move {
                let config = WorkerConfig::from_value(&config)?;
                let r = worker.pass_with(&config).await.map_err(|e| e.to_string())?;
                Ok(if r.claimed == 0 {
                    String::new()
                } else {
                    format!(
                        "{} claimed, {} executed, {} recovered",
                        r.claimed, r.executed, r.recovered
                    )
                })
            }
        },
    ));
    let ruler_store = store.clone();
    tokio::spawn(runner::every(store.clone(), "midnight_ruler", move |_| {
        let store = ruler_store.clone();
        async move {
            let reports = midnight_ruler::catch_up(store.as_ref(), chrono::Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            let written: usize = reports.iter().map(|r| r.spans_written).sum();
            let decided: usize = reports.iter().map(|r| r.decided().total()).sum();
            if decided > 0 || written > 0 {
                tracing::info!(
                    decided,
                    spans_written = written,
                    "midnight_ruler: caught up"
                );
            }
            Ok(String::new())
        }
    }));
}

fn log_report(report: &BootReport) {
    if let Err(e) = &report.manifest {
        tracing::error!(error = %e, "stage0: the manifest does not verify; no kernel runs");
    }
    for k in &report.kernels {
        match k.state {
            State::Ready => {
                tracing::info!(kernel = %k.name, id = %k.id, seq = ?k.seq, "stage0: started")
            }
            State::NoRuntime => tracing::info!(
                kernel = %k.name, id = %k.id, seq = ?k.seq,
                "stage0: verified, not started (no runtime in this build yet)"
            ),
            State::Refused(why) => tracing::warn!(
                kernel = %k.name, id = %k.id, seq = ?k.seq, refusal = why.as_str(),
                reason = %k.reason, "stage0: refused"
            ),
        }
    }
}
