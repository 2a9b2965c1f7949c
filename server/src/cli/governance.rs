//! Governance from the command line: `logline ruler run` (one midnight by hand) and `logline
//! demo seed` (a small believable tenant). The work is done by `kernels::midnight_ruler` and
//! `kernels::demo`; this module parses arguments and prints.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use kernels::demo::{self, ANA, CLARA, DEMO_ZONE, JOAO, MARTA, PEDRO, RUI};
use kernels::midnight_ruler::{self, RulerReport, parse_when};
use serde_json::Value;

use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum RulerCommand {
    /// Run one midnight by hand: every active `clock: midnight` law of the tenant decides every
    /// open contract in its scope, as of that midnight (idempotent: a second run writes nothing).
    Run {
        /// A local date (YYYY-MM-DD: that date's 00:00 in each law's zone) or an RFC 3339
        /// instant (the latest local midnight at or before it).
        #[arg(long)]
        at: String,
        /// Use this IANA zone instead of each law's (an unknown zone fails closed to doubt).
        #[arg(long)]
        tz: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum DemoCommand {
    /// Create (idempotently) a small tenant: a bakery and a film production company, their
    /// contracts D1–D5, laws, and D1 terminated at a past midnight by `midnight_deadline`.
    Seed,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

pub async fn ruler(s: &Settings, what: RulerCommand) -> Result<ExitCode> {
    match what {
        RulerCommand::Run { at, tz, format } => {
            let when = parse_when(&at)?;
            let store = s.store.open().await?;
            let report = midnight_ruler::run_when(
                store.as_ref(),
                &s.principal.tenant_id,
                when,
                tz.as_deref(),
            )
            .await?;
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                Format::Text => print_report(&mut out, &report)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn print_report(out: &mut impl Write, r: &RulerReport) -> Result<()> {
    if r.laws.is_empty() {
        writeln!(
            out,
            "no active `clock: midnight` law in force at that midnight in tenant {}",
            r.tenant
        )?;
        return Ok(());
    }
    for l in &r.laws {
        writeln!(
            out,
            "law {} (span {} seq {}), zone {}{}",
            l.law,
            l.law_span_id,
            l.law_seq,
            l.zone,
            if l.zone_known {
                ""
            } else {
                " (unknown: UTC midnight, every decision fails closed to doubt)"
            }
        )?;
        writeln!(out, "scheduled_at: {}", rfc3339(l.scheduled_at))?;
        writeln!(
            out,
            "decided: {} (ok {}, doubt {}, not {}); new decisions {}, failed closed {}",
            l.decided.total(),
            l.decided.ok,
            l.decided.doubt,
            l.decided.not,
            l.new_decisions,
            l.fail_closed
        )?;
    }
    writeln!(
        out,
        "contracts changed {}, voided {}, spans written {}",
        r.contracts_changed, r.voided, r.spans_written
    )?;
    Ok(())
}

pub async fn demo(s: &Settings, what: DemoCommand) -> Result<ExitCode> {
    match what {
        DemoCommand::Seed => {
            let store = s.store.open().await?;
            let r = demo::seed_demo(store.as_ref(), &s.principal.tenant_id, Utc::now()).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "tenant {}: Padaria Lisboa (bakery: {ANA}, {RUI}) and Luz Filmes (production company: {MARTA}, {JOAO}, {PEDRO}); witness {CLARA}",
                r.tenant
            )?;
            for l in &r.laws {
                writeln!(
                    out,
                    "law {}: span {} seq {}{}",
                    l.label,
                    l.span_id,
                    l.seq,
                    if l.new { "" } else { " (already there)" }
                )?;
            }
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header(["contract", "title", "state", ""]);
            for c in &r.contracts {
                table.add_row([
                    c.name.as_str(),
                    c.title.as_str(),
                    c.state.as_str(),
                    if c.new { "created" } else { "already there" },
                ]);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "D3's guarantor {PEDRO} was asked and never answered.")?;
            writeln!(
                out,
                "Midnight Ruler run at {} (00:00 {DEMO_ZONE}):",
                rfc3339(r.ruled_at)
            )?;
            print_report(&mut out, &r.ruler)?;
            if let Some(d) = &r.d1_decision {
                writeln!(
                    out,
                    "D1: {} by law.decision {} citing law {} span {} seq {} {}",
                    d.pointer("/content/triage")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d["id"].as_str().unwrap_or("?"),
                    d.pointer("/content/law/id")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d.pointer("/content/law/span_id")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d.pointer("/content/law/seq")
                        .and_then(Value::as_i64)
                        .unwrap_or(-1),
                    d.pointer("/content/law/curr_hash")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                )?;
            }
            writeln!(out, "spans written: {}", r.spans_written)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
