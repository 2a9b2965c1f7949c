//! `logline manifest …`, `logline kernels …` and `logline run`: the CLI face of the manifest,
//! Stage-0 and the `run_code` kernel. The logic lives in the `kernels` crate (the Stage-0 boot
//! that `logline serve` runs first is `kernels::runner::boot_for_serve`); this module parses,
//! calls and prints.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use kernels::manifest;
use kernels::run_code::{Outcome, RunCode};
use kernels::stage0::{self, BootReport};
use ledger::Store;
use serde_json::Value;
use uuid::Uuid;

use crate::config::Settings;

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
        /// run_code, observer_bot, request_worker, policy_agent, provider_exec, midnight_ruler,
        /// prompt_bandit.
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

pub async fn manifest(s: &Settings, what: ManifestCommand) -> Result<ExitCode> {
    let store = s.store.open().await?;
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
            let m = manifest::set(store.as_ref(), &s.principal.user_id, &sets).await?;
            for (k, v) in &sets {
                eprintln!("manifest: {k} = {v}");
            }
            writeln!(std::io::stdout(), "{}", m.seq)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn kernels(s: &Settings, what: KernelsCommand) -> Result<ExitCode> {
    let store = s.store.open().await?;
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
            let seq =
                stage0::set_kernel(store.as_ref(), &name, &s.principal.user_id, &sets).await?;
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

pub async fn run(s: &Settings, args: RunArgs) -> Result<ExitCode> {
    let input: Value = match &args.input {
        Some(text) => serde_json::from_str(text).context("--input is not valid JSON")?,
        None => Value::Null,
    };
    let store = s.store.open().await?;
    stage0::seed(store.as_ref()).await?;
    let outcome = RunCode::new(store)
        .run(&s.principal, args.function, input)
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
