//! `logline bench memory`: recall latency (p50/p99) at growing numbers of memories in one
//! tenant, recall quality on a small question set (share of questions whose memory is in the
//! top 5), and the server time a chat turn gains with memory `on` over `off` (embedding time
//! reported separately). The embedded store runs up to `--sqlite-max`; PostgreSQL (with
//! `--database-url`) at every size. The embedder is the configured one (the lexical fallback
//! unless `LOGLINE_EMBED_PROVIDER` says otherwise).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use chrono::Utc;
use clap::Args;
use ledger::store::memory::{MemoryLayer, Reach};
use ledger::store::{self, Store};
use ledger::{Principal, crypto::NodeKey};
use serde_json::{Value, json};
use uuid::Uuid;

use super::pct;
use crate::chat::agent::{Agent, MemoryMode, Outcome, TurnRequest};
use crate::chat::memory_turn;
use crate::chat::providers::offline::OfflineProvider;
use crate::config::{self, Settings};
use crate::memory::{Consent, Memory, MemoryKind, MemorySettings, RememberRequest};

#[derive(Args, Debug)]
pub struct BenchMemoryArgs {
    /// Memories in the tenant at each measurement (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// The embedded store stops at this size.
    #[arg(long, default_value_t = 10_000)]
    sqlite_max: usize,
    /// Recalls timed per size.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Chat turns timed per mode.
    #[arg(long, default_value_t = 200)]
    turns: usize,
    /// Memories written per transaction while seeding.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

/// The question set: a fact to remember and a question whose answer needs it.
const QUALITY: [(&str, &str); 12] = [
    ("My dog is called Rex", "what is my dog called?"),
    (
        "I prefer answers in Portuguese",
        "which language do I prefer for answers?",
    ),
    (
        "The warehouse door code is 4471",
        "what is the warehouse door code?",
    ),
    ("Our accountant is Marta Silva", "who is our accountant?"),
    (
        "The bakery opens at 6am on weekdays",
        "when does the bakery open on weekdays?",
    ),
    ("My manager's name is Joao", "what is my manager's name?"),
    (
        "Invoices go out on the 5th of each month",
        "when do invoices go out?",
    ),
    (
        "The guarantor for D9 is Rui",
        "who is the guarantor for D9?",
    ),
    ("I am allergic to peanuts", "what am I allergic to?"),
    (
        "The VPN password rotates every 90 days",
        "how often does the VPN password rotate?",
    ),
    (
        "Our biggest client is Cafe Aurora",
        "which client is our biggest?",
    ),
    (
        "The quarterly review is in room B12",
        "where is the quarterly review?",
    ),
];

const NOISE: [&str; 24] = [
    "contract", "deadline", "witness", "quorum", "shipment", "pallet", "flour", "oven", "rent",
    "supplier", "meeting", "budget", "ticket", "holiday", "printer", "coffee", "schedule",
    "review", "report", "training", "parking", "delivery", "market", "license",
];

/// A filler memory unlike any question (deterministic).
fn noise(i: usize) -> String {
    let w = |k: usize| NOISE[(i.wrapping_mul(2654435761).wrapping_add(k * 40503)) % NOISE.len()];
    format!(
        "note {i}: the {} {} needs a {} before {}",
        w(1),
        w(2),
        w(3),
        w(4)
    )
}

fn req(text: String) -> RememberRequest {
    RememberRequest {
        text,
        kind: MemoryKind::Fact,
        layer: MemoryLayer::Temporary,
        session_id: None,
        supersedes: None,
        consent: Consent::Explicit,
        trace_id: None,
    }
}

/// Which build measured: debug numbers are not comparable with the targets.
const BUILD: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn fill(memory: &Memory, p: &Principal, from: usize, to: usize, batch: usize) -> Result<()> {
    let mut i = from;
    while i < to {
        let end = (i + batch.max(1)).min(to);
        let reqs = (i..end).map(|k| req(noise(k))).collect();
        memory.remember_many(p, reqs, Utc::now()).await?;
        i = end;
    }
    Ok(())
}

async fn one_store(store: Arc<dyn Store>, args: &BenchMemoryArgs, max: usize) -> Result<()> {
    let settings = MemorySettings::from_lookup(config::env).map_err(anyhow::Error::msg)?;
    let memory = Memory::with_settings(store.clone(), &settings)?;
    let tenant = format!("bench-memory-{}", Uuid::now_v7().simple());
    let p = Principal::new("bench", tenant.clone());
    kernels::demo::seed_demo(store.as_ref(), &tenant, Utc::now()).await?;
    let facts = memory
        .remember_many(
            &p,
            QUALITY.iter().map(|(f, _)| req((*f).into())).collect(),
            Utc::now(),
        )
        .await?;
    let mut have = QUALITY.len();
    for &size in args.sizes.iter().filter(|s| **s <= max) {
        let seeding = Instant::now();
        fill(&memory, &p, have, size, args.batch).await?;
        let seeded = size.saturating_sub(have);
        let seed_s = seeding.elapsed().as_secs_f64();
        have = size.max(have);
        let mut ms = Vec::with_capacity(args.queries);
        let mut embed_ms = Vec::with_capacity(args.queries);
        for q in 0..args.queries {
            let query = if q % 2 == 0 {
                QUALITY[q / 2 % QUALITY.len()].1.to_string()
            } else {
                noise(q * 7919 % have.max(1))
            };
            let t = Instant::now();
            memory
                .recall(&p, Reach::All, Some("bench"), &query, 5, Utc::now())
                .await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            memory.embed_for_bench(&query).await?;
            embed_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        embed_ms.sort_by(f64::total_cmp);
        let mut hits = 0usize;
        for ((_, question), fact) in QUALITY.iter().zip(&facts) {
            let got = memory
                .recall(&p, Reach::All, Some("bench"), question, 5, Utc::now())
                .await?;
            hits += usize::from(got.iter().any(|r| r.item.id == fact.id));
        }
        println!(
            "{}",
            json!({
                "bench": "memory_recall",
                "build": BUILD,
                "store": store.backend(),
                "embedder": memory.embedder_name(),
                "memories": have,
                "queries": ms.len(),
                "recall_ms": {"p50": round(pct(&ms, 0.5)), "p99": round(pct(&ms, 0.99))},
                "embed_ms": {"p50": round(pct(&embed_ms, 0.5)), "p99": round(pct(&embed_ms, 0.99))},
                "quality_top5": round(hits as f64 / QUALITY.len() as f64),
                "seeded": seeded,
                "seed_s": round(seed_s),
                "questions": QUALITY.len(),
                "targets": {"recall_p99_ms": if store.backend() == "postgres" { 10.0 } else { 20.0 }},
            })
        );
    }
    println!(
        "{}",
        turn_overhead(store, Arc::new(memory), &p, args.turns).await?
    );
    Ok(())
}

/// Median and p99 server time of a turn (offline provider) with memory off and on.
async fn turn_overhead(
    store: Arc<dyn Store>,
    memory: Arc<Memory>,
    p: &Principal,
    turns: usize,
) -> Result<Value> {
    let writer = Arc::new(ledger::store::group::GroupCommit::start(store.clone()));
    let agent = Agent::new(
        store.clone(),
        writer,
        Arc::new(OfflineProvider::new()),
        None,
    )
    .await?
    .with_memory(memory.clone());
    let mut out = serde_json::Map::new();
    for mode in [
        MemoryMode::Off,
        MemoryMode::On,
        MemoryMode::Off,
        MemoryMode::On,
    ] {
        let mut ms = Vec::with_capacity(turns);
        for _ in 0..turns {
            let r = agent
                .turn(
                    p,
                    &[],
                    TurnRequest {
                        message: "why was D1 terminated?".into(),
                        conversation_id: None,
                        variant: None,
                        memory: mode,
                    },
                    None,
                )
                .await?;
            if r.outcome != Outcome::Answered {
                bail!("a turn did not answer: {}", r.answer);
            }
            ms.push(r.overhead.as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        // The second round of each mode is kept (the first warms caches).
        out.insert(
            serde_json::to_value(mode)?
                .as_str()
                .unwrap_or("?")
                .to_string(),
            json!({"p50": round(pct(&ms, 0.5)), "p99": round(pct(&ms, 0.99))}),
        );
    }
    // Where memory's share goes: the recall and the turn's record, timed on their own.
    let (mut recall_ms, mut record_ms) = (Vec::with_capacity(turns), Vec::with_capacity(turns));
    for _ in 0..turns {
        let conversation = Uuid::now_v7();
        let t = Instant::now();
        memory_turn::recall(
            &memory,
            p,
            MemoryMode::On,
            conversation,
            "why was D1 terminated?",
            Utc::now(),
        )
        .await;
        recall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        memory_turn::record(
            &memory,
            p,
            MemoryMode::On,
            conversation,
            "why was D1 terminated?",
            &conversation.to_string(),
            Utc::now(),
        )
        .await;
        record_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    recall_ms.sort_by(f64::total_cmp);
    record_ms.sort_by(f64::total_cmp);
    let get = |m: &str| out.get(m).and_then(|v| v["p50"].as_f64()).unwrap_or(0.0);
    Ok(json!({
        "bench": "memory_turn",
        "build": BUILD,
        "store": store.backend(),
        "turns_per_mode": turns,
        "overhead_ms": out,
        "added_p50_ms": round(get("on") - get("off")),
        "parts_ms": {
            "recall": {"p50": round(pct(&recall_ms, 0.5)), "p99": round(pct(&recall_ms, 0.99))},
            "record": {"p50": round(pct(&record_ms, 0.5)), "p99": round(pct(&record_ms, 0.99))},
        },
        "target_added_ms": 3.0,
    }))
}

pub async fn run(settings: &Settings, args: BenchMemoryArgs) -> Result<std::process::ExitCode> {
    let tmp = tempfile::tempdir()?;
    let sqlite = store::open(None, tmp.path(), NodeKey::generate()).await?;
    store::ensure_manifest(sqlite.as_ref()).await?;
    one_store(sqlite, &args, args.sqlite_max).await?;
    if let Some(url) = &settings.store.database_url {
        let pg = store::open(Some(url), tmp.path(), NodeKey::generate()).await?;
        store::ensure_manifest(pg.as_ref()).await?;
        one_store(pg, &args, usize::MAX).await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
