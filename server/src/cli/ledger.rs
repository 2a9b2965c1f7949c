//! The ledger from the command line: `init`, `add`, `query`, `get`, `verify`, `export` and
//! `redact`. Each opens the store of the [`Settings`] and acts as its principal (`verify` reads
//! as the auditor: every chain, or one tenant's).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use ledger::store::{self, Store};
use ledger::verify::{TenantReport, verify_tenant, verify_tenant_against};
use ledger::{Filter, Order, query};
use serde_json::{Value, json};
use uuid::Uuid;

use super::progress;
use crate::config::{Settings, StoreSettings};
use crate::ingest;

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum AddFormat {
    Text,
    Ndjson,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum QueryFormat {
    Table,
    Json,
    Ndjson,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[arg(long)]
    entity_type: Option<String>,
    #[arg(long)]
    who: Option<String>,
    #[arg(long)]
    did: Option<String>,
    #[arg(long)]
    this: Option<String>,
    #[arg(long)]
    status: Option<String>,
    /// Spans with `at` on or after this date (YYYY-MM-DD) or instant (RFC 3339).
    #[arg(long, value_parser = query::parse_instant)]
    since: Option<DateTime<Utc>>,
    /// Spans with `at` before this date or instant.
    #[arg(long, value_parser = query::parse_instant)]
    until: Option<DateTime<Utc>>,
    #[arg(long)]
    related_to: Option<Uuid>,
    #[arg(long)]
    trace_id: Option<String>,
    /// Only spans of this tenant (public spans of other tenants are visible otherwise).
    #[arg(long = "of-tenant")]
    of_tenant: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    desc: bool,
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    format: QueryFormat,
}

pub async fn init(s: &Settings) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let (manifest, _) = store::ensure_manifest(store.as_ref()).await?;
    println!("store:       {}", describe_store(&s.store));
    println!(
        "node key:    {} (file {}, mode 0600)",
        store.node_key().public_key(),
        s.store.key_path().display()
    );
    println!(
        "manifest:    {} seq {} {}",
        store::MANIFEST_ID,
        manifest["seq"],
        manifest["curr_hash"].as_str().unwrap_or_default()
    );
    super::kernels::init_kernels(store.as_ref()).await?;
    Ok(ExitCode::SUCCESS)
}

fn describe_store(s: &StoreSettings) -> String {
    match &s.database_url {
        Some(url) => format!("postgres ({})", redact_url(url)),
        None => format!("embedded sqlite ({})", s.sqlite_path().display()),
    }
}

/// Hides a password in a database URL before printing it.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Lines per append transaction when reading NDJSON.
const ADD_BATCH: usize = 1000;

pub async fn add(
    s: &Settings,
    file: Option<PathBuf>,
    format: AddFormat,
    allow_reserved: bool,
) -> Result<ExitCode> {
    let mut input = String::new();
    match &file {
        Some(path) => {
            input = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read stdin")?;
        }
    }
    let store = s.store.open().await?;
    let trusted = store::trusted_keys(store.as_ref()).await?;
    let p = &s.principal;
    let by = ingest::Submitter {
        principal: p,
        trusted: &trusted,
        allow_reserved,
    };
    let lines = split_input(&input);
    let total = lines.len();
    let bar = progress::bar(total as u64, "appending");
    let mut failed = 0usize;
    let mut out = std::io::stdout().lock();
    for chunk in lines.chunks(ADD_BATCH) {
        let (drafts, slots) = ingest::parse_lines(chunk, by, None);
        let results = ingest::append_each(drafts, |d| store::append(store.as_ref(), p, d)).await?;
        for (line_no, result) in ingest::join(slots, &results) {
            if result.is_err() {
                failed += 1;
            }
            write_add_result(&mut out, format, line_no, &result)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if total == 0 {
        eprintln!("no spans on input: give one JSON object per line");
        return Ok(ExitCode::FAILURE);
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {total} lines failed; the other {} were stored",
            total - failed
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Numbered non-blank lines. A single pretty-printed object (several lines that only parse
/// together) counts as one span on line 1.
fn split_input(input: &str) -> Vec<(usize, &str)> {
    let lines = ingest::ndjson_lines(input);
    if lines.len() > 1
        && serde_json::from_str::<Value>(lines[0].1).is_err()
        && matches!(serde_json::from_str::<Value>(input), Ok(Value::Object(_)))
    {
        return vec![(lines[0].0, input.trim())];
    }
    lines
}

fn write_add_result(
    out: &mut impl Write,
    format: AddFormat,
    line: usize,
    result: &Result<ledger::Appended, String>,
) -> Result<()> {
    match (format, result) {
        (AddFormat::Text, Ok(a)) => writeln!(
            out,
            "line {line}: ok {} seq {} chain_pos {} {}{}{}",
            a.id,
            a.seq,
            a.chain_pos,
            a.curr_hash,
            if a.status == "ghost" { " (ghost)" } else { "" },
            if a.duplicate {
                " (duplicate: original returned)"
            } else {
                ""
            }
        )?,
        (AddFormat::Text, Err(e)) => writeln!(out, "line {line}: error: {e}")?,
        (_, r) => writeln!(out, "{}", ingest::result_json(line, r))?,
    }
    Ok(())
}

pub async fn query(s: &Settings, a: QueryArgs) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let filter = Filter {
        entity_type: a.entity_type,
        who: a.who,
        did: a.did,
        this: a.this,
        status: a.status,
        tenant_id: a.of_tenant,
        since: a.since,
        until: a.until,
        related_to: a.related_to,
        trace_id: a.trace_id,
        order: if a.desc { Order::Desc } else { Order::Asc },
        limit: Some(a.limit),
        ..Filter::default()
    };
    let page = store.query(&s.principal, &filter).await?;
    let views: Vec<Value> = page
        .rows
        .iter()
        .map(|r| r.span.to_view().map_err(|e| anyhow!(e)))
        .collect::<Result<_>>()?;
    let mut out = std::io::stdout().lock();
    match a.format {
        QueryFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?,
        QueryFormat::Ndjson => {
            for v in &views {
                writeln!(out, "{v}")?;
            }
        }
        QueryFormat::Table => {
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header([
                "at",
                "entity_type",
                "who",
                "did",
                "this",
                "status",
                "id",
                "seq",
            ]);
            for v in &views {
                let s = |k: &str| match &v[k] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let who = if v["redacted"] == json!(true) {
                    "(redacted)".to_string()
                } else {
                    s("who")
                };
                table.add_row([
                    s("at"),
                    s("entity_type"),
                    who,
                    s("did"),
                    s("this"),
                    s("status"),
                    s("id"),
                    s("seq"),
                ]);
            }
            writeln!(out, "{table}")?;
            if page.next_cursor.is_some() {
                writeln!(
                    out,
                    "(more spans match: raise --limit or narrow the filter)"
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn get(s: &Settings, id: Uuid, seq: Option<i64>, versions: bool) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let p = &s.principal;
    let value = if versions {
        let all = store.versions(p, id).await?;
        if all.is_empty() {
            bail!(
                "span {id} not found (or not visible to {} in tenant {})",
                p.user_id,
                p.tenant_id
            );
        }
        Value::Array(
            all.iter()
                .map(|s| s.to_view().map_err(|e| anyhow!(e)))
                .collect::<Result<_>>()?,
        )
    } else {
        match store.get(p, id, seq).await? {
            Some(s) => s.to_view().map_err(|e| anyhow!(e))?,
            None => bail!(
                "span {id}{} not found (or not visible to {} in tenant {})",
                seq.map(|s| format!(" seq {s}")).unwrap_or_default(),
                p.user_id,
                p.tenant_id
            ),
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// Verifies chains: the auditor's view, so it needs the database itself (not a principal).
/// With a checkpoint note, only the tenant its origin names (or `only`) is verified, against it.
async fn verify_all(
    store: &dyn Store,
    only: Option<String>,
    note: Option<&str>,
) -> Result<Vec<TenantReport>> {
    let trusted = store::trusted_keys(store).await?;
    if let Some(note) = note {
        let tenant = only
            .or_else(|| note.lines().next().and_then(ledger::checkpoint::tenant_of))
            .ok_or_else(|| {
                anyhow!("the checkpoint's origin names no tenant of this node; add --only-tenant")
            })?;
        return Ok(vec![
            verify_tenant_against(store, &tenant, &trusted, Some(note)).await?,
        ]);
    }
    let tenants = match only {
        Some(t) => vec![t],
        None => store.audit_tenants().await?,
    };
    let mut reports = Vec::new();
    for t in tenants {
        reports.push(verify_tenant(store, &t, &trusted).await?);
    }
    Ok(reports)
}

pub async fn verify(
    s: &Settings,
    only: Option<String>,
    format: AddFormat,
    checkpoint: Option<PathBuf>,
) -> Result<ExitCode> {
    let note = checkpoint
        .map(|p| {
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        })
        .transpose()?;
    let store = s.store.open().await?;
    let reports = verify_all(store.as_ref(), only, note.as_deref()).await?;
    let ok = reports.iter().all(|r| r.ok);
    if format == AddFormat::Text {
        for r in &reports {
            if r.ok {
                println!("tenant {}: ok, {} spans", r.tenant_id, r.spans);
                continue;
            }
            if let Some(b) = &r.first_break {
                println!(
                    "tenant {}: BROKEN at {}: {} ({} problem(s) in {} spans)",
                    r.tenant_id,
                    problem_place(b),
                    b.reason,
                    r.problem_count,
                    r.spans
                );
            }
            for p in &r.problems {
                println!("  - {}", problem_line(p));
            }
            if r.problem_count > r.problems.len() {
                println!("  … and {} more", r.problem_count - r.problems.len());
            }
        }
    } else {
        println!("{}", json!({"ok": ok, "tenants": reports}));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where a problem is: `chain_pos N (span ID)`, or the table when it concerns no span.
fn problem_place(p: &ledger::verify::Problem) -> String {
    match (p.chain_pos, p.span_id) {
        (Some(pos), Some(id)) => format!("chain_pos {pos} (span {id})"),
        (Some(pos), None) => format!("chain_pos {pos} (span -)"),
        (None, _) => format!("table {}", p.table),
    }
}

/// One problem as a line: where, what kind, which column, what differs, why.
fn problem_line(p: &ledger::verify::Problem) -> String {
    let kind = serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!("{} {kind}", problem_place(p));
    if let Some(c) = p.column {
        line.push_str(&format!(" in {}.{c}", p.table));
    }
    if p.stored.is_some() || p.signed.is_some() {
        let q = |v: &Option<String>| {
            v.as_deref()
                .map_or_else(|| "-".to_string(), |v| format!("{v:?}"))
        };
        line.push_str(&format!(
            ": stored {}, expected {}",
            q(&p.stored),
            q(&p.signed)
        ));
    }
    line.push_str(&format!(" ({})", p.reason));
    line
}

pub async fn export(s: &Settings, out: &str) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let p = &s.principal;
    let mut writer: Box<dyn Write> = if out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("cannot create {out}"))?,
        ))
    };
    let mut export = crate::export::SignedExport::new();
    let mut filter = Filter {
        limit: Some(ledger::query::MAX_LIMIT),
        ..Filter::default()
    };
    loop {
        let page = store.query(p, &filter).await?;
        for row in &page.rows {
            let line = export.line(row.span.to_view().map_err(|e| anyhow!(e))?.to_string());
            writeln!(writer, "{line}")?;
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    // The trailer lets a recipient check that nothing was added, dropped or changed.
    let trailer = export.trailer(store.node_key(), p, Utc::now());
    writeln!(writer, "{trailer}")?;
    let (count, digest) = (export.count(), export.digest());
    writer.flush()?;
    if out != "-" {
        eprintln!("exported {count} spans to {out} ({digest})");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn redact(s: &Settings, id: Uuid, reason: &str) -> Result<ExitCode> {
    let store = s.store.open().await?;
    let a = store.redact(&s.principal, id, reason).await?;
    println!(
        "redacted {id}: redaction span {} chain_pos {} {}",
        a.id, a.chain_pos, a.curr_hash
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pretty_printed_object_is_one_span() {
        let input = "{\n  \"who\": \"ana\"\n}\n";
        assert_eq!(split_input(input).len(), 1);
        let ndjson = "{\"a\":1}\n\n{\"b\":2}\n";
        assert_eq!(
            split_input(ndjson),
            vec![(1, "{\"a\":1}"), (3, "{\"b\":2}")]
        );
    }

    #[test]
    fn passwords_are_hidden_in_printed_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
