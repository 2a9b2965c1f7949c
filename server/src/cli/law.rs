//! `logline law …`: working with law text. `check` needs no store, so it runs anywhere a law
//! is being written, including an editor's save hook or CI; `simulate` dry-runs a stored law
//! with overridden variables (`kernels::midnight_ruler::simulate`) and writes nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use kernels::midnight_ruler::{self, parse_when};
use ledger::law::{self, Law, ParseError};
use serde_json::Value;

use super::governance::{Format, rfc3339};
use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum LawCommand {
    /// Parse law files: print a one-line summary of each, or `FILE:LINE:COL: message` with the
    /// offending line; exit 1 if any file does not parse.
    Check {
        /// Law files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dry-run a law with overridden variables (`--set quorum=3`) and print which contracts'
    /// triage would change; writes nothing.
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The law: its span id, span name or law id (`midnight_deadline`).
    pub law: String,
    /// Override a variable in every contract, e.g. `quorum=3` (value read as JSON, else text).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// The midnight to simulate: a local date or an RFC 3339 instant (default: the next one).
    #[arg(long)]
    pub at: Option<String>,
    /// Use this IANA zone instead of the law's.
    #[arg(long)]
    pub tz: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub async fn run(s: &Settings, command: LawCommand) -> Result<ExitCode> {
    match command {
        LawCommand::Check { files } => check(&files),
        LawCommand::Simulate(args) => simulate(s, args).await,
    }
}

fn parse_override(s: &str) -> Result<(String, Value)> {
    let (path, raw) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("`--set {s}`: expected PATH=VALUE, e.g. quorum=3"))?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        bail!("`--set {s}`: the path must be a dotted name such as quorum or user.settings.x");
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((path.to_string(), value))
}

async fn simulate(s: &Settings, a: SimulateArgs) -> Result<ExitCode> {
    let overrides = a
        .set
        .iter()
        .map(|o| parse_override(o))
        .collect::<Result<Vec<_>>>()?;
    let when = a.at.as_deref().map(parse_when).transpose()?;
    let store = s.store.open().await?;
    let sim = midnight_ruler::simulate(
        store.as_ref(),
        &s.principal.tenant_id,
        &a.law,
        &overrides,
        when,
        a.tz.as_deref(),
        Utc::now(),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if a.format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&sim)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let set: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        out,
        "law {} (span {} seq {}) at {} ({}), with {}",
        sim.law,
        sim.law_span_id,
        sim.law_seq,
        rfc3339(sim.scheduled_at),
        sim.zone,
        if set.is_empty() {
            "no overrides".to_string()
        } else {
            set.join(", ")
        }
    )?;
    writeln!(
        out,
        "{} contracts considered; before: ok {}, doubt {}, not {}; after: ok {}, doubt {}, not {}",
        sim.considered,
        sim.before.ok,
        sim.before.doubt,
        sim.before.not,
        sim.after.ok,
        sim.after.doubt,
        sim.after.not
    )?;
    if sim.changed.is_empty() {
        writeln!(out, "no contract's triage would change")?;
    } else {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        table.set_header(["contract", "before", "after"]);
        for c in &sim.changed {
            table.add_row([c.contract.as_str(), c.before.as_str(), c.after.as_str()]);
        }
        writeln!(out, "{table}")?;
        writeln!(
            out,
            "{} contract{} would change",
            sim.changed.len(),
            if sim.changed.len() == 1 { "" } else { "s" }
        )?;
    }
    writeln!(out, "(simulation: nothing was written)")?;
    Ok(ExitCode::SUCCESS)
}

fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for file in files {
        let (name, source) = read(file)?;
        match law::parse(&source) {
            Ok(law) => writeln!(out, "{name}: ok: {}", summary(&law))?,
            Err(e) => {
                failed = true;
                write!(err, "{}", render_error(&name, &source, &e))?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn read(file: &Path) -> Result<(String, String)> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        return Ok(("<stdin>".into(), s));
    }
    let s =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((file.display().to_string(), s))
}

/// `law midnight_deadline:1.0.0, scope deliverable, clock midnight Europe/Paris, blocks ok doubt not`
pub fn summary(law: &Law) -> String {
    let blocks: Vec<&str> = law.blocks().map(|(t, _)| t.as_str()).collect();
    format!(
        "law {}:{}, scope {}, clock {}, blocks {}",
        law.id,
        law.version,
        law.scope.as_deref().unwrap_or("(none)"),
        law.clock
            .as_ref()
            .map_or_else(|| "(none)".to_string(), ToString::to_string),
        blocks.join(" ")
    )
}

/// `FILE:LINE:COL: message`, then the source line and a caret under the column. The caret line
/// copies the line's tabs so it lines up however the terminal renders them.
pub fn render_error(name: &str, source: &str, e: &ParseError) -> String {
    let at = e.position();
    let mut out = format!("{name}:{e}\n");
    let line_index = usize::try_from(at.line.saturating_sub(1)).unwrap_or(usize::MAX);
    if let Some(line) = source.split('\n').nth(line_index) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let column = usize::try_from(at.column.saturating_sub(1)).unwrap_or(usize::MAX);
        let pad: String = line
            .chars()
            .take(column)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("  {line}\n  {pad}^\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caret_sits_under_the_column_of_the_error() {
        let src = "law a:1.0.0:\nif ok: a\nthen: accept, hodl\n";
        let e = law::parse(src).unwrap_err();
        assert_eq!(
            render_error("x.law", src, &e),
            "x.law:3:15: expected an action such as accept or hold(hours=N), found \"hodl\"\n  then: accept, hodl\n                ^\n"
        );
    }
}
