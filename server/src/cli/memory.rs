//! `logline memory remember|list|forget|export|promote|promotions|review`: the caller's own
//! memory items (issue 13), as the HTTP API shows them; forgetting is the same redaction, and
//! the permanent layer is reached through the same review.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Subcommand;
use uuid::Uuid;

use crate::config::{self, Settings};
use crate::export::SignedExport;
use ledger::store::memory::MemoryLayer;

use crate::memory::{Consent, ForgetTarget, Memory, MemoryKind, MemorySettings, RememberRequest};

#[derive(Subcommand, Debug)]
pub enum MemoryCommand {
    /// What is remembered for the caller (one session's with --session), as JSON lines.
    List {
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: i64,
    },
    /// Remember TEXT (the temporary layer; the session layer with --session).
    Remember {
        text: String,
        #[arg(long)]
        session: Option<String>,
    },
    /// Forget one item (ID), the last one (--last), a session's (--session) or all (--all).
    Forget {
        id: Option<Uuid>,
        #[arg(long)]
        last: bool,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Ask the tenant's reviewers to keep item ID permanently.
    Promote { id: Uuid },
    /// Requests to keep items permanently in the tenant (reviewers), as JSON lines.
    Promotions {
        /// `open`, `approved`, `rejected` or `all`.
        #[arg(long, default_value = "open")]
        status: String,
    },
    /// Decide a request (REQUEST, the `memory_promotion` span): --approve or --reject.
    Review {
        request: Uuid,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        note: Option<String>,
    },
    /// Every item as NDJSON with a signed trailer.
    Export {
        /// File to write, or `-` for stdout.
        #[arg(long, default_value = "-")]
        out: String,
    },
}

async fn open(s: &Settings) -> Result<Memory> {
    let store = s.store.open().await?;
    let settings = MemorySettings::from_lookup(config::env).map_err(anyhow::Error::msg)?;
    Ok(Memory::with_settings(store, &settings)?)
}

pub async fn run(s: &Settings, what: MemoryCommand) -> Result<ExitCode> {
    let memory = open(s).await?;
    let p = &s.principal;
    let now = Utc::now();
    match what {
        MemoryCommand::List { session, limit } => {
            let mut out = std::io::stdout().lock();
            for item in memory.list(p, session.as_deref(), now, limit).await? {
                writeln!(out, "{}", serde_json::to_string(&item)?)?;
            }
        }
        MemoryCommand::Remember { text, session } => {
            let layer = if session.is_some() {
                MemoryLayer::Session
            } else {
                MemoryLayer::Temporary
            };
            let req = RememberRequest {
                text,
                kind: MemoryKind::Fact,
                layer,
                session_id: session,
                supersedes: None,
                consent: Consent::Explicit,
                trace_id: None,
            };
            let item = memory.remember(p, req, now).await?;
            println!("{}", serde_json::to_string(&item)?);
        }
        MemoryCommand::Forget {
            id,
            last,
            session,
            all,
        } => {
            let target = match (id, last, session, all) {
                (Some(id), false, None, false) => ForgetTarget::Item { id },
                (None, true, session_id, false) => ForgetTarget::Last { session_id },
                (None, false, Some(session_id), false) => ForgetTarget::Session { session_id },
                (None, false, None, true) => ForgetTarget::All,
                _ => bail!("name one item ID, or --last [--session S], --session S or --all"),
            };
            let forgotten = memory.forget(p, &target, now).await?;
            for id in &forgotten {
                println!("{id}");
            }
            eprintln!("forgot {} item(s)", forgotten.len());
        }
        MemoryCommand::Promote { id } => {
            let asked = memory.request_permanent(p, id, now).await?;
            println!("{}", serde_json::to_string(&asked)?);
            eprintln!("asked the reviewers of {} to keep it", p.tenant_id);
        }
        MemoryCommand::Promotions { status } => {
            if !["open", "approved", "rejected", "all"].contains(&status.as_str()) {
                bail!("--status must be open, approved, rejected or all");
            }
            let filter = (status != "all").then_some(status.as_str());
            let mut out = std::io::stdout().lock();
            for r in memory.promotions(p, filter, now).await? {
                writeln!(out, "{}", serde_json::to_string(&r)?)?;
            }
        }
        MemoryCommand::Review {
            request,
            approve,
            reject: _,
            note,
        } => {
            let decided = memory
                .decide_promotion(p, request, approve, note, now)
                .await?;
            println!("{}", serde_json::to_string(&decided)?);
        }
        MemoryCommand::Export { out } => {
            let mut writer: Box<dyn Write> = if out == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&out).with_context(|| format!("cannot create {out}"))?,
                ))
            };
            let store = s.store.open().await?;
            let mut export = SignedExport::new();
            for item in memory.list(p, None, now, i64::MAX).await? {
                writeln!(writer, "{}", export.line(serde_json::to_string(&item)?))?;
            }
            writeln!(writer, "{}", export.trailer(store.node_key(), p, now))?;
            writer.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
