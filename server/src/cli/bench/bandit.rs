//! `logline bench bandit`: what the prompt bandit adds to a chat turn. The ledger is seeded
//! with rewarded runs of every variant (past the warm-up, so choices are Thompson draws), the
//! posteriors are folded in once, and then each measured choice is what a turn of a new
//! conversation does: Stage-0's cached verdict, the choice (a lock, the cached `P(best)`, one
//! Beta draw per variant) and the `prompt_variant_selection` draft. Prints one JSON line per
//! store with p50/p99 in microseconds (the whole, and the choice without the draft), and how
//! long folding the seeded runs took.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use chrono::Utc;
use ledger::store::{self, Store};
use ledger::{Draft, Principal};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{pct, round};
use crate::chat::PromptLibrary;
use crate::chat::bandit::{Picker, eligible_variants, selection_draft};

pub async fn run(store: Arc<dyn Store>, runs: usize, choices: usize) -> Result<Value> {
    kernels::stage0::seed(store.as_ref()).await?;
    let library = PromptLibrary::embedded()?;
    let eligible = eligible_variants(&library);
    let tenant = format!("bench-{}", Uuid::now_v7());
    let p = Principal::new("bench", &tenant);
    // Runs of each variant, answered with a variant-specific rate (deterministic pattern).
    let now = Utc::now();
    let mut left = runs;
    let mut i = 0usize;
    while left > 0 {
        let n = left.min(1000);
        let drafts: Vec<Draft> = (0..n)
            .filter_map(|_| {
                i += 1;
                let v = &eligible[i % eligible.len()];
                let ok = (i / eligible.len()) % 10 < 5 + 2 * (i % eligible.len());
                Draft::from_value(
                    json!({"entity_type": "prompt_run", "visibility": "private", "who": "bench",
                           "did": "asked the agent", "this": format!("conversation {i}"),
                           "confirmed_by": "bench", "if_ok": "-", "if_doubt": "-", "if_not": "-",
                           "status": "answered",
                           "content": {"variant": v, "outcome": if ok { "answered" } else { "insufficient_evidence" },
                                       "repaired": false, "latency_ms": 900}}),
                    &p,
                    &[],
                    now,
                )
                .ok()
            })
            .collect();
        for r in store::append(store.as_ref(), &p, drafts).await? {
            r?;
        }
        left -= n;
    }
    let picker = Picker::new(store.clone());
    let t = Instant::now();
    let (status, refused) = picker.status(&eligible).await?;
    let fold_ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Some(why) = refused {
        bail!("Stage-0 refuses prompt_bandit: {why}");
    }
    let mut lat = Vec::with_capacity(choices);
    let mut choose_only = Vec::with_capacity(choices);
    let mut modes = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..choices {
        let conversation = Uuid::now_v7();
        let run = Uuid::now_v7();
        let t = Instant::now();
        let picked = picker.pick(&eligible, conversation).await?;
        choose_only.push(t.elapsed().as_secs_f64() * 1e6);
        let draft = match &picked {
            Some(pk) => Some(selection_draft(
                &p,
                run,
                &run.to_string(),
                conversation,
                &pk.selection,
                Utc::now(),
            )?),
            None => None,
        };
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(draft);
        let mode = picked
            .as_ref()
            .and_then(|pk| pk.selection.get("mode").and_then(Value::as_str))
            .unwrap_or("none");
        *modes.entry(mode.to_string()).or_default() += 1;
    }
    lat.sort_by(f64::total_cmp);
    choose_only.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    Ok(json!({
        "bench": "bandit",
        "store": store.backend(),
        "variants": eligible.len(),
        "runs_folded": runs,
        "fold_ms": round(fold_ms),
        "choices": choices,
        "choice_p50_us": round(pct(&lat, 0.5)),
        "choice_p99_us": round(pct(&lat, 0.99)),
        "choice_mean_us": round(mean),
        "of_which_choose_p50_us": round(pct(&choose_only, 0.5)),
        "of_which_choose_p99_us": round(pct(&choose_only, 0.99)),
        "modes": modes,
        "probabilities": status.variants.iter().map(|v| json!({"name": v.name, "probability": round(v.probability)})).collect::<Vec<_>>(),
    }))
}
