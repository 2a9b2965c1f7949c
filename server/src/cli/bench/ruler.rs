//! `logline bench ruler`: the Midnight Ruler over many contracts.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use kernels::{contracts, demo, midnight_ruler};
use ledger::crypto::NodeKey;
use ledger::span::format_time;
use ledger::store::{self, Store};
use ledger::{Draft, Principal};
use serde_json::json;

use crate::cli::progress;
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct BenchRulerArgs {
    /// Contracts to seed and decide.
    #[arg(long, default_value_t = 100_000)]
    pub contracts: usize,
}

/// `logline bench ruler`: seeds `contracts` contracts in a fresh tenant (PostgreSQL when a URL
/// is given, else the embedded store in a temporary directory), runs one midnight over them,
/// then runs it again (idempotent), and prints one JSON line.
pub async fn run(s: &Settings, a: BenchRulerArgs) -> Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let store: Arc<dyn Store> = store::open(
        s.store.database_url.as_deref(),
        tmp.path(),
        NodeKey::generate(),
    )
    .await?;
    store::ensure_manifest(store.as_ref()).await?;
    let tenant = format!("bench-ruler-{}", uuid::Uuid::now_v7().simple());
    let st = store.as_ref();
    let lawmaker = Principal::new("lawmaker", &tenant);
    let midnight = DateTime::parse_from_rfc3339("2026-03-06T23:00:00Z")?.with_timezone(&Utc);
    midnight_ruler::enact_law(
        st,
        &lawmaker,
        demo::MIDNIGHT_DEADLINE,
        "bench",
        midnight - TimeDelta::days(30),
    )
    .await?;
    let seeded = Instant::now();
    let p = Principal::new("bench", &tenant);
    let bar = progress::bar(a.contracts as u64, "seeding contracts");
    let mut i = 0;
    while i < a.contracts {
        let n = (a.contracts - i).min(5_000);
        let drafts = (i..i + n)
            .map(|k| bench_contract(&p, k, midnight))
            .collect::<Result<Vec<_>>>()?;
        for r in store::append(st, &p, drafts).await? {
            r.map_err(|e| anyhow!("seeding: {e}"))?;
        }
        i += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let seed_seconds = seeded.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = midnight_ruler::run_midnight(st, &tenant, midnight, None).await?;
    let seconds = started.elapsed().as_secs_f64();
    let again = Instant::now();
    let rerun = midnight_ruler::run_midnight(st, &tenant, midnight, None).await?;
    let rerun_seconds = again.elapsed().as_secs_f64();
    let decided = report.decided();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "bench": "ruler",
            "store": st.backend(),
            "contracts": a.contracts,
            "decided": decided.total(),
            "ok": decided.ok,
            "doubt": decided.doubt,
            "not": decided.not,
            "contracts_changed": report.contracts_changed,
            "spans_written": report.spans_written,
            "seconds": round(seconds),
            "decisions_per_s": round(decided.total() as f64 / seconds.max(1e-9)),
            "seed_seconds": round(seed_seconds),
            "rerun_seconds": round(rerun_seconds),
            "rerun_spans_written": rerun.spans_written,
            "target": "100000 contracts in <= 30 s on PostgreSQL",
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// One of four kinds in turn: accepted (ok), due without evidence (doubt), delivered but never
/// accepted (not), not yet due (doubt: no block holds).
fn bench_contract(p: &Principal, k: usize, midnight: DateTime<Utc>) -> Result<Draft> {
    let created = midnight - TimeDelta::days(10);
    let deadline = if k % 4 == 3 {
        midnight + TimeDelta::days(5)
    } else {
        midnight - TimeDelta::days(2)
    };
    let evidence = if k % 4 == 1 {
        json!([])
    } else {
        json!([{"kind": "delivery_note", "by": "courier"}])
    };
    Ok(Draft::from_value(
        json!({
            "entity_type": contracts::ENTITY_TYPE,
            "name": format!("B{k}"),
            "visibility": "tenant",
            "when": format_time(created),
            "who": p.user_id,
            "did": "proposed contract",
            "this": format!("bench deliverable {k}"),
            "confirmed_by": "witness",
            "if_ok": "accept", "if_doubt": "hold", "if_not": "terminate",
            "status": "active",
            "content": {
                "name": format!("B{k}"), "scope": "deliverable", "title": format!("bench deliverable {k}"),
                "parties": [{"who": "supplier", "role": "supplier"}, {"who": "client", "role": "client"}],
                "witness": {"who": "witness", "confirmed_at": format_time(created + TimeDelta::minutes(10))},
                "created_at": format_time(created),
                "deadline_at": format_time(deadline),
                "accepted": k.is_multiple_of(4),
                "approvals": [], "quorum": 2,
                "evidence": evidence,
                "state": "active", "tags": {}
            }
        }),
        p,
        &[],
        created,
    )?)
}
