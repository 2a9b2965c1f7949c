//! `logline prompts`: the prompt lifecycle from the command line (issue 11). `status` lists
//! every block and variant version with its state (active, candidate, rejected, …) and the
//! pass rates its decision cites; `propose FILE` appends a block (`<name>.tera`) or variant
//! (`<name>.json`) as a candidate, which a running server's prompt_eval kernel evaluates
//! within its `interval_ms` and activates only if it passes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use comfy_table::Table;
use serde_json::Value;

use crate::chat::PromptLibrary;
use crate::chat::candidates::{Catalog, Proposal, propose};
use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum PromptsCommand {
    /// Every block and variant version, its state and the pass rates behind its decision.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Propose a block (`<name>.tera`, with its front matter) or a variant (`<name>.json`) as
    /// a candidate; `serve`'s prompt_eval kernel evaluates it before it can go live.
    Propose { file: PathBuf },
}

pub async fn run(s: &Settings, what: PromptsCommand) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let mut out = std::io::stdout().lock();
    match what {
        PromptsCommand::Status { json } => {
            let views = Catalog::load(store.as_ref()).await?.overview();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.set_header(["kind", "name", "seq", "state", "pass rates", "decision"]);
            for v in views {
                let rates = v
                    .pass_rates
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                format!(
                                    "{}/{} {:.0}%",
                                    r["suite"].as_str().unwrap_or("?"),
                                    r["variant"].as_str().unwrap_or("?"),
                                    r["pass_rate"].as_f64().unwrap_or(0.0) * 100.0
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let rates = match &v.problem {
                    Value::String(p) => format!("{rates} {p}").trim().to_string(),
                    _ => rates,
                };
                t.add_row([
                    v.kind.as_str().to_string(),
                    v.name,
                    v.seq.to_string(),
                    serde_json::to_value(v.state)?
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    rates,
                    v.decision.map(|d| d.to_string()).unwrap_or_default(),
                ]);
            }
            writeln!(out, "{t}")?;
            Ok(ExitCode::SUCCESS)
        }
        PromptsCommand::Propose { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let shown = file.display().to_string();
            let proposal = Proposal::parse(&shown, &text)?;
            let schema = PromptLibrary::embedded()?.answer_schema().clone();
            let p = propose(store.as_ref(), &proposal, &schema).await?;
            if p.appended {
                eprintln!(
                    "{} is candidate seq {} of {} (id {}); a running server evaluates it within prompt_eval's interval_ms — see `logline prompts status`",
                    shown, p.seq, p.name, p.id
                );
            } else {
                eprintln!(
                    "{shown} is identical to seq {} of {}: nothing appended",
                    p.seq, p.name
                );
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({"id": p.id, "seq": p.seq, "appended": p.appended})
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
