//! The `logline` command line. Every command opens the store chosen by `--database-url` /
//! `LOGLINE_DATABASE_URL` (PostgreSQL) or the embedded SQLite file under `--data-dir`, and acts
//! as the principal given by `--as` / `--tenant`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ledger::crypto::NodeKey;
use ledger::store::{self, Store};
use ledger::verify::{TenantReport, verify_tenant};
use ledger::{Filter, Order, Principal};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{auth, bench, ingest};

#[derive(Parser, Debug)]
#[command(
    name = "logline",
    version,
    about = "A governed, append-only ledger of signed spans"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Directory of the embedded ledger and the node key.
    #[arg(
        long,
        env = "LOGLINE_DATA_DIR",
        default_value = ".logline",
        global = true
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://…); without it the embedded SQLite file is used.
    #[arg(long, env = "LOGLINE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The user to act as.
    #[arg(
        long = "as",
        env = "LOGLINE_USER",
        default_value = "local",
        global = true
    )]
    pub user: String,
    /// The tenant to act in.
    #[arg(long, env = "LOGLINE_TENANT", default_value = "local", global = true)]
    pub tenant: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the data directory, the node key and the signed manifest span.
    Init,
    /// Append spans: one JSON object per line from stdin or --file.
    Add {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = AddFormat::Text)]
        format: AddFormat,
    },
    /// List spans the caller may see.
    Query(QueryArgs),
    /// Show one span (latest version unless --seq), or all its versions.
    Get {
        id: Uuid,
        #[arg(long)]
        seq: Option<i64>,
        #[arg(long)]
        versions: bool,
    },
    /// Verify every chain (or one tenant's): exit 0, or name the first broken link.
    Verify {
        #[arg(long = "only-tenant")]
        only_tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = AddFormat::Text)]
        format: AddFormat,
    },
    /// Export what the caller may see as NDJSON with a signed trailer.
    Export {
        /// File to write, or `-` for stdout.
        #[arg(long)]
        out: String,
    },
    /// Withhold a span's content from now on, recording who and why.
    Redact {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// The manifest: `manifest show`, `manifest set KEY=VALUE…` (a new signed seq).
    Manifest {
        #[command(subcommand)]
        what: crate::cli_kernels::ManifestCommand,
    },
    /// Kernels: `kernels status` (Stage-0's verdict), `kernels set NAME KEY=VALUE…`.
    Kernels {
        #[command(subcommand)]
        what: crate::cli_kernels::KernelsCommand,
    },
    /// Run a `function` span now and print its execution span (exit 1 if it failed).
    Run(crate::cli_kernels::RunArgs),
    /// Serve the HTTP API (loopback only unless token auth is configured).
    Serve {
        #[arg(long, env = "LOGLINE_BIND", default_value = "127.0.0.1:8787")]
        bind: std::net::SocketAddr,
        /// Largest request body in bytes (413 beyond).
        #[arg(long, env = "LOGLINE_BODY_LIMIT", default_value_t = 16 * 1024 * 1024)]
        body_limit: usize,
        /// Requests per second per tenant (429 with Retry-After beyond; bursts of twice that).
        #[arg(long, env = "LOGLINE_RATE_LIMIT", default_value_t = 2000)]
        rate_limit: u32,
    },
    /// Access tokens for the HTTP API (needs LOGLINE_JWT_SECRET).
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Measure ingest or verify throughput and latency; prints JSON.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Law language tools: `law check FILE` parses a law and points at any error.
    Law {
        #[command(subcommand)]
        what: crate::cli_law::LawCommand,
    },
    /// The Midnight Ruler: `ruler run --at DATE|INSTANT [--tz ZONE]` runs one midnight by hand.
    Ruler {
        #[command(subcommand)]
        what: crate::cli_governance::RulerCommand,
    },
    /// Demo data: `demo seed` creates a small bakery and film-company tenant (idempotent).
    Demo {
        #[command(subcommand)]
        what: crate::cli_governance::DemoCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a signed token; the token is the last line of output.
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long)]
        tenant: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime: 30m, 1h, 7d, or seconds.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

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
    #[arg(long, value_parser = parse_instant)]
    since: Option<DateTime<Utc>>,
    /// Spans with `at` before this date or instant.
    #[arg(long, value_parser = parse_instant)]
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

/// Accepts `2026-11-01` (midnight UTC) or a full RFC 3339 instant.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{s}` is neither a date (YYYY-MM-DD) nor an RFC 3339 instant"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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

/// Opens the node key (creating it on first use) and the store.
pub async fn open(global: &Global) -> Result<Arc<dyn Store>> {
    let key_path = global.data_dir.join("node.key");
    let (key, _) = NodeKey::load_or_create(&key_path).with_context(|| {
        format!(
            "cannot read or create the node key at {}",
            key_path.display()
        )
    })?;
    let store = store::open(global.database_url.as_deref(), &global.data_dir, key)
        .await
        .context("cannot open the ledger store")?;
    store::ensure_manifest(store.as_ref())
        .await
        .context("cannot write the manifest")?;
    Ok(store)
}

/// Token auth when `LOGLINE_JWT_SECRET` or `LOGLINE_JWT_PUBLIC_KEY` is set; otherwise the
/// single local user given by `--as`/`--tenant`.
fn auth_from_env(g: &Global) -> Result<auth::Auth> {
    let secret = std::env::var("LOGLINE_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let public = std::env::var("LOGLINE_JWT_PUBLIC_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    if secret.is_none() && public.is_none() {
        return Ok(auth::Auth::Local(principal(g)));
    }
    let eddsa = public
        .map(|k| {
            ledger::crypto::parse_public_key(&k).map_err(|e| anyhow!("LOGLINE_JWT_PUBLIC_KEY: {e}"))
        })
        .transpose()?;
    Ok(auth::Auth::Jwt {
        hs256: secret.map(auth::Secret::new),
        eddsa,
    })
}

fn principal(global: &Global) -> Principal {
    Principal::new(global.user.clone(), global.tenant.clone())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init => init(g).await,
        Command::Add { file, format } => add(g, file, format).await,
        Command::Query(args) => query(g, args).await,
        Command::Get { id, seq, versions } => get(g, id, seq, versions).await,
        Command::Verify {
            only_tenant,
            format,
        } => verify(g, only_tenant, format).await,
        Command::Export { out } => export(g, &out).await,
        Command::Redact { id, reason } => redact(g, id, &reason).await,
        Command::Manifest { what } => crate::cli_kernels::manifest(g, what).await,
        Command::Kernels { what } => crate::cli_kernels::kernels(g, what).await,
        Command::Run(args) => crate::cli_kernels::run(g, args).await,
        Command::Bench { what } => bench::run(g, what).await,
        Command::Law {
            what: crate::cli_law::LawCommand::Simulate(args),
        } => crate::cli_governance::simulate(g, args).await,
        Command::Law { what } => crate::cli_law::run(what),
        Command::Ruler { what } => crate::cli_governance::ruler(g, what).await,
        Command::Demo { what } => crate::cli_governance::demo(g, what).await,
        Command::Serve {
            bind,
            body_limit,
            rate_limit,
        } => {
            let store = open(g).await?;
            crate::cli_kernels::boot_for_serve(store.clone()).await?;
            let limits = crate::serve::Limits {
                body_bytes: body_limit,
                tenant_rps: rate_limit,
            };
            crate::serve::run(store, auth_from_env(g)?, bind, limits).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            what:
                TokenCommand::Issue {
                    user,
                    tenant,
                    roles,
                    ttl,
                },
        } => {
            let secret = std::env::var("LOGLINE_JWT_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| anyhow!("LOGLINE_JWT_SECRET is not set: tokens are signed with it (set the same value for `logline serve`)"))?;
            let ttl = auth::parse_ttl(&ttl).map_err(|e| anyhow!(e))?;
            let now = Utc::now().timestamp();
            let claims = auth::Claims {
                sub: user,
                tenant,
                roles,
                exp: now + ttl,
                iat: now,
            };
            eprintln!(
                "token for {} in tenant {} (roles: {}), expires {}",
                claims.sub,
                claims.tenant,
                if claims.roles.is_empty() {
                    "none".to_string()
                } else {
                    claims.roles.join(", ")
                },
                DateTime::from_timestamp(claims.exp, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
            println!("{}", auth::issue(&auth::Secret::new(secret), &claims));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn init(g: &Global) -> Result<ExitCode> {
    let store = open(g).await?;
    let (manifest, _) = store::ensure_manifest(store.as_ref()).await?;
    println!("store:       {}", describe_store(g));
    println!(
        "node key:    {} (file {}, mode 0600)",
        store.node_key().public_key(),
        g.data_dir.join("node.key").display()
    );
    println!(
        "manifest:    {} seq {} {}",
        store::MANIFEST_ID,
        manifest["seq"],
        manifest["curr_hash"].as_str().unwrap_or_default()
    );
    crate::cli_kernels::init_kernels(store.as_ref()).await?;
    Ok(ExitCode::SUCCESS)
}

fn describe_store(g: &Global) -> String {
    match &g.database_url {
        Some(url) => format!("postgres ({})", redact_url(url)),
        None => format!(
            "embedded sqlite ({})",
            g.data_dir.join("ledger.sqlite3").display()
        ),
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

async fn add(g: &Global, file: Option<PathBuf>, format: AddFormat) -> Result<ExitCode> {
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
    let store = open(g).await?;
    let trusted = store::trusted_keys(store.as_ref()).await?;
    let p = principal(g);
    let lines = split_input(&input);
    let total = lines.len();
    let bar = progress(total as u64, "appending");
    let mut failed = 0usize;
    let mut out = std::io::stdout().lock();
    for chunk in lines.chunks(ADD_BATCH) {
        let (drafts, slots) = ingest::parse_lines(chunk, &p, &trusted, None);
        let results = store::append(store.as_ref(), &p, drafts).await?;
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

pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

async fn query(g: &Global, a: QueryArgs) -> Result<ExitCode> {
    let store = open(g).await?;
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
    let page = store.query(&principal(g), &filter).await?;
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

async fn get(g: &Global, id: Uuid, seq: Option<i64>, versions: bool) -> Result<ExitCode> {
    let store = open(g).await?;
    let p = principal(g);
    let value = if versions {
        let all = store.versions(&p, id).await?;
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
        match store.get(&p, id, seq).await? {
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
pub async fn verify_all(store: &dyn Store, only: Option<String>) -> Result<Vec<TenantReport>> {
    let trusted = store::trusted_keys(store).await?;
    let tenants = match only {
        Some(t) => vec![t],
        None => store.tenants().await?,
    };
    let mut reports = Vec::new();
    for t in tenants {
        reports.push(verify_tenant(store, &t, &trusted).await?);
    }
    Ok(reports)
}

async fn verify(g: &Global, only: Option<String>, format: AddFormat) -> Result<ExitCode> {
    let store = open(g).await?;
    let reports = verify_all(store.as_ref(), only).await?;
    let ok = reports.iter().all(|r| r.ok);
    if format == AddFormat::Text {
        for r in &reports {
            match &r.first_break {
                None => println!("tenant {}: ok, {} spans", r.tenant_id, r.spans),
                Some(b) => println!(
                    "tenant {}: BROKEN at chain_pos {} (span {}): {}",
                    r.tenant_id,
                    b.chain_pos,
                    b.span_id
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    b.reason
                ),
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

async fn export(g: &Global, out: &str) -> Result<ExitCode> {
    let store = open(g).await?;
    let p = principal(g);
    let mut writer: Box<dyn Write> = if out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("cannot create {out}"))?,
        ))
    };
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u64;
    let mut filter = Filter {
        limit: Some(ledger::query::MAX_LIMIT),
        ..Filter::default()
    };
    loop {
        let page = store.query(&p, &filter).await?;
        for row in &page.rows {
            let line = row.span.to_view().map_err(|e| anyhow!(e))?.to_string();
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
            writeln!(writer, "{line}")?;
            count += 1;
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    // The trailer lets a recipient check that nothing was added, dropped or changed.
    let digest = format!("blake3:{}", hasher.finalize().to_hex());
    let key = store.node_key();
    let trailer = json!({"trailer": {
        "count": count,
        "digest": digest,
        "exported_by": p.user_id,
        "tenant_id": p.tenant_id,
        "exported_at": ledger::span::format_time(Utc::now()),
        "public_key": key.public_key(),
        "signature": key.sign_hash(&digest),
    }});
    writeln!(writer, "{trailer}")?;
    writer.flush()?;
    if out != "-" {
        eprintln!("exported {count} spans to {out} ({digest})");
    }
    Ok(ExitCode::SUCCESS)
}

async fn redact(g: &Global, id: Uuid, reason: &str) -> Result<ExitCode> {
    let store = open(g).await?;
    let a = store.redact(&principal(g), id, reason).await?;
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
    fn dates_and_instants_parse_to_utc() {
        assert_eq!(
            parse_instant("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-11-01T12:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T11:00:00+00:00"
        );
        assert!(parse_instant("yesterday").is_err());
    }

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
