//! `logline bench`: ingest and verify throughput with latency percentiles, printed as JSON
//! lines (one per store × mode × writer count). The embedded store always runs (in a temporary
//! directory); PostgreSQL runs when a database URL is given, in a fresh tenant of that database.
//! The HTTP API ([`http`]), chat turns ([`chat`]), the prompt bandit's choice ([`bandit`]) and
//! the Midnight Ruler ([`ruler`]) have their own modules.

mod bandit;
mod chat;
mod checkpoints;
mod http;
mod memory;
mod ruler;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use clap::Subcommand;
use ledger::crypto::NodeKey;
use ledger::store::group::GroupCommit;
use ledger::store::{self, Store};
use ledger::verify::verify_tenant;
use ledger::{Draft, Principal};
use serde_json::{Value, json};

use crate::cli::progress;
use crate::config::{self, Settings};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Append signed, chained spans with 1 and 8 concurrent writers.
    Ingest {
        /// Spans per run (a run also stops after --max-seconds).
        #[arg(long, default_value_t = 20_000)]
        spans: usize,
        /// Concurrent writer counts to try.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        writers: Vec<usize>,
        /// Spans per request in batch mode.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 15.0)]
        max_seconds: f64,
    },
    /// The HTTP API: single-span POSTs over many connections, NDJSON batches, SSE fan-out.
    Http {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Single-span requests in all.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// NDJSON batches of 1000 spans.
        #[arg(long, default_value_t = 40)]
        batches: usize,
        /// SSE subscribers (0 skips the stream bench).
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Spans appended while the subscribers listen.
        #[arg(long, default_value_t = 100)]
        events: usize,
    },
    /// Server-side overhead of a chat turn (an in-process provider that answers at once).
    Chat {
        /// Concurrent conversations.
        #[arg(long, default_value_t = 100)]
        conversations: usize,
        /// Turns in all.
        #[arg(long, default_value_t = 2000)]
        turns: usize,
        /// Pause of each conversation between its turns, in ms (0: a closed loop).
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
    },
    /// The prompt bandit's choice per new conversation (target: ≤ 0.2 ms).
    Bandit {
        /// Rewarded runs seeded before measuring.
        #[arg(long, default_value_t = 5000)]
        runs: usize,
        /// Choices measured.
        #[arg(long, default_value_t = 20_000)]
        choices: usize,
    },
    /// Verify a chain of this many spans.
    Verify {
        #[arg(long, default_value_t = 100_000)]
        spans: usize,
        /// Only this store (by default: the embedded store, and PostgreSQL when a database URL
        /// is given).
        #[arg(long, value_enum)]
        store: Option<BenchStore>,
        /// Verify the seeded chain this many times (timings vary on a shared machine).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Keep the embedded store (and its node key) in this directory and reuse a chain seeded
        /// there by an earlier run, so that two builds can be compared on the same file.
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
    },
    /// The Midnight Ruler over this many contracts (PostgreSQL with --database-url, else the
    /// embedded store).
    Ruler(ruler::BenchRulerArgs),
    /// Memory recall latency and quality, and a turn's added server time with memory on.
    Memory(memory::BenchMemoryArgs),
    /// Checkpointing overhead on ingest (tree off vs on) and proof latency at 1,000,000 spans.
    Checkpoints(checkpoints::BenchCheckpointsArgs),
}

/// A store the verify bench can be limited to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchStore {
    Sqlite,
    Postgres,
}

pub async fn run(settings: &Settings, what: BenchCommand) -> Result<std::process::ExitCode> {
    let what = match what {
        BenchCommand::Verify {
            spans,
            store,
            runs,
            keep,
        } => {
            verify(settings, spans, store, runs, keep.as_deref()).await?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        BenchCommand::Ruler(a) => return ruler::run(settings, a).await,
        BenchCommand::Memory(a) => return memory::run(settings, a).await,
        BenchCommand::Checkpoints(a) => {
            checkpoints::run(settings.store.database_url.as_deref(), a).await?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        other => other,
    };
    let tmp = tempfile::tempdir()?;
    let mut stores: Vec<Arc<dyn Store>> =
        vec![store::open(None, tmp.path(), NodeKey::generate()).await?];
    if let Some(url) = &settings.store.database_url {
        stores.push(store::open(Some(url), tmp.path(), NodeKey::generate()).await?);
    }
    for s in &stores {
        store::ensure_manifest(s.as_ref()).await?;
    }
    match what {
        BenchCommand::Ingest {
            spans,
            writers,
            batch,
            max_seconds,
        } => {
            for s in &stores {
                for &w in &writers {
                    for (mode, per_call) in [("single", 1usize), ("batch", batch.max(1))] {
                        let r = ingest(
                            s.clone(),
                            w.max(1),
                            per_call,
                            spans,
                            Duration::from_secs_f64(max_seconds),
                        )
                        .await?;
                        println!("{}", json!({"bench": "ingest", "store": s.backend(), "mode": mode, "writers": w, "spans_per_request": per_call}).as_object().map(|o| merge(o.clone(), r)).unwrap_or_default());
                    }
                }
            }
        }
        BenchCommand::Chat {
            conversations,
            turns,
            think_ms,
        } => {
            let think = Duration::from_millis(think_ms);
            for s in &stores {
                println!(
                    "{}",
                    chat::run(
                        s.clone(),
                        conversations,
                        turns,
                        think,
                        config::context_tokens(config::env),
                    )
                    .await?
                );
            }
        }
        BenchCommand::Bandit { runs, choices } => {
            for s in &stores {
                println!("{}", bandit::run(s.clone(), runs, choices).await?);
            }
        }
        BenchCommand::Http {
            connections,
            requests,
            batches,
            subscribers,
            events,
        } => {
            for s in &stores {
                for line in http::run(
                    s.clone(),
                    connections,
                    requests,
                    batches,
                    subscribers,
                    events,
                )
                .await?
                {
                    println!("{line}");
                }
            }
        }
        // Returned above: they pick their own stores.
        BenchCommand::Ruler(_)
        | BenchCommand::Memory(_)
        | BenchCommand::Checkpoints(_)
        | BenchCommand::Verify { .. } => {}
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Seeds a chain of `spans` spans in each store asked for and times `runs` verifications of it.
async fn verify(
    settings: &Settings,
    spans: usize,
    only: Option<BenchStore>,
    runs: usize,
    keep: Option<&std::path::Path>,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    if only != Some(BenchStore::Postgres) {
        let stores_dir = keep.unwrap_or(tmp.path());
        let key = match keep {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                NodeKey::load_or_create(&dir.join("node.key"))?.0
            }
            None => NodeKey::generate(),
        };
        stores.push(store::open(None, stores_dir, key).await?);
    }
    if only != Some(BenchStore::Sqlite) {
        match &settings.store.database_url {
            Some(url) => {
                stores.push(store::open(Some(url), tmp.path(), NodeKey::generate()).await?)
            }
            None if only == Some(BenchStore::Postgres) => {
                anyhow::bail!("--store postgres needs --database-url")
            }
            None => {}
        }
    }
    for s in &stores {
        store::ensure_manifest(s.as_ref()).await?;
        // A kept store reuses its chain; elsewhere each run seeds a fresh tenant.
        let tenant = match keep {
            Some(_) if s.backend() == "sqlite" => format!("bench-verify-{spans}"),
            _ => format!("bench-{}", uuid::Uuid::now_v7()),
        };
        let p = Principal::new("bench", &tenant);
        let seeded = s.audit_head(&tenant).await?.next_pos.unwrap_or(0) as usize;
        let gc = GroupCommit::start(s.clone());
        let bar = progress::bar(spans as u64, &format!("seeding {}", s.backend()));
        let mut left = spans.saturating_sub(seeded);
        while left > 0 {
            let n = left.min(1000);
            gc.append(&p, drafts(&p, n)).await?;
            left -= n;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        let trusted = store::trusted_keys(s.as_ref()).await?;
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            let report = verify_tenant(s.as_ref(), &tenant, &trusted).await?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"bench": "verify", "store": s.backend(), "spans": report.spans, "ok": report.ok,
                       "seconds": round(secs), "spans_per_sec": round(report.spans as f64 / secs)})
            );
        }
    }
    Ok(())
}

fn merge(mut a: serde_json::Map<String, Value>, b: Value) -> Value {
    if let Value::Object(b) = b {
        a.extend(b);
    }
    Value::Object(a)
}

/// The `q` quantile of an ascending sample (0 when empty), shared by every bench.
pub(super) fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn drafts(p: &Principal, n: usize) -> Vec<Draft> {
    let now = Utc::now();
    (0..n)
        .filter_map(|i| {
            Draft::from_value(
                json!({"who": p.user_id, "did": "confirmed delivery", "this": format!("delivery {i}"),
                       "when": "2026-11-20T10:00:00Z", "confirmed_by": "courier", "if_ok": "send receipt",
                       "if_doubt": "ask the courier", "if_not": "open an incident", "status": "valid",
                       "entity_type": "delivery", "visibility": "tenant", "content": {"parcel": i, "weight_g": 1200}}),
                p,
                &[],
                now,
            )
            .ok()
        })
        .collect()
}

async fn ingest(
    store: Arc<dyn Store>,
    writers: usize,
    per_call: usize,
    total: usize,
    max: Duration,
) -> Result<Value> {
    let tenant = format!("bench-{}", uuid::Uuid::now_v7());
    let gc = GroupCommit::start(store);
    let per_writer = total.div_ceil(writers);
    let bar = progress::bar((per_writer * writers) as u64, "ingest");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let gc = gc.clone();
        let p = Principal::new(format!("writer-{w}"), &tenant);
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut done = 0usize;
            while done < per_writer && start.elapsed() < max {
                let n = per_call.min(per_writer - done);
                let batch = drafts(&p, n);
                let t = Instant::now();
                let results = gc.append(&p, batch).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    anyhow::bail!("append failed: {e}");
                }
                done += n;
                bar.inc(n as u64);
            }
            Ok::<_, anyhow::Error>((done, lat))
        }));
    }
    let mut spans = 0usize;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await??;
        spans += n;
        lat.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    lat.sort_by(f64::total_cmp);
    Ok(
        json!({"spans": spans, "seconds": round(secs), "spans_per_sec": round(spans as f64 / secs),
              "request_p50_ms": round(pct(&lat, 0.5)), "request_p99_ms": round(pct(&lat, 0.99))}),
    )
}
