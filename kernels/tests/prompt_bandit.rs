//! The prompt bandit (issue 11, part 6): a simulation with two variants of known reward rates
//! where the better one comes to receive nearly every new conversation while the worse keeps
//! its floor; and, against both stores, the posteriors folded from recorded spans (runs,
//! feedback, eval cases), the guardrail's drop written as a span, promotion, and the replay of
//! a recorded choice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use kernels::prompt_bandit::{
    self, Bandit, BanditConfig, Learner, Mode, Rng, RunFacts, RunOutcome, choose, replay,
};
use ledger::store::{self, Store, system_principal};
use ledger::{Draft, Filter, Principal};
use serde_json::{Value, json};
use testkit::{Backend, Fixture};
use uuid::Uuid;

/// Episodes of the simulation, and the one from which the better variant must get ≥ 90%.
const EPISODES: usize = 1500;
const CONVERGED_BY: usize = 400;

/// Two variants, rewarded 1 with probability 0.8 and 0.4 (fixed seed): after the warm-up and
/// at most `CONVERGED_BY` episodes, ≥ 90% of new conversations go to the better one (counted
/// over every later episode and in its probability), and the worse one's probability never
/// falls below the floor.
#[test]
fn the_better_variant_gets_ninety_percent_of_new_conversations_and_the_worse_keeps_its_floor() {
    let cfg = BanditConfig::default();
    let names = vec!["good".to_string(), "poor".to_string()];
    let rate = |name: &str| if name == "good" { 0.8 } else { 0.4 };
    let mut world = Rng::new(2026);
    let mut l = Learner::default();
    let (mut late_good, mut late_all) = (0usize, 0usize);
    let mut min_poor = 1.0f64;
    let mut first_ninety = None;
    let t0 = Utc::now();
    for episode in 0..EPISODES {
        let cands = l.candidates(&names);
        let rules = prompt_bandit::Rules {
            warmup_samples: cfg.warmup_samples,
            floor: cfg.floor,
            promoted: None,
        };
        let c = choose(&cands, &rules, 0x5eed_0000 + episode as u64, None);
        let chosen = c.chosen.clone().unwrap();
        min_poor = min_poor.min(c.probabilities[1]);
        assert!(
            c.probabilities[1] >= cfg.floor - 1e-12,
            "episode {episode}: {c:?}"
        );
        if first_ninety.is_none() && c.probabilities[0] >= 0.9 {
            first_ninety = Some(episode);
        }
        if episode >= CONVERGED_BY {
            late_all += 1;
            late_good += usize::from(chosen == "good");
            assert!(c.probabilities[0] >= 0.9, "episode {episode}: {c:?}");
        }
        let success = world.uniform() < rate(&chosen);
        let facts = RunFacts {
            outcome: if success {
                RunOutcome::Answered
            } else {
                RunOutcome::InsufficientEvidence
            },
            repaired: false,
            latency_ms: 100,
        };
        l.observe_run(Uuid::now_v7(), &chosen, t0, "t", "u", &facts, &cfg);
    }
    let share = late_good as f64 / late_all as f64;
    println!(
        "bandit simulation: P(good) ≥ 0.9 from episode {first_ninety:?}; episodes {CONVERGED_BY}..{EPISODES}: good got {:.1}%; lowest P(poor) {min_poor:.3} (floor {})",
        share * 100.0,
        cfg.floor
    );
    assert!(share >= 0.9, "good got only {share}");
    assert!(first_ninety.is_some_and(|e| e < CONVERGED_BY));
    let poor = l.arm("poor");
    assert!(
        poor.samples >= cfg.warmup_samples,
        "the floor kept it measured: {poor:?}"
    );
}

/// Any recorded choice, whatever its mode, is recomputed from its span's content alone.
#[test]
fn a_choice_is_a_pure_function_of_its_inputs_so_it_replays() {
    let cfg = BanditConfig::default();
    let mut l = Learner::default();
    let t0 = Utc::now();
    for i in 0..40 {
        let facts = RunFacts {
            outcome: if i % 3 == 0 {
                RunOutcome::Escalated
            } else {
                RunOutcome::Answered
            },
            repaired: i % 5 == 0,
            latency_ms: 1000 * i,
        };
        l.observe_run(
            Uuid::now_v7(),
            ["default", "brief"][i as usize % 2],
            t0,
            "t",
            "u",
            &facts,
            &cfg,
        );
    }
    let names = vec!["brief".to_string(), "default".to_string()];
    let cands = l.candidates(&names);
    let rules = prompt_bandit::Rules {
        warmup_samples: 10,
        floor: 0.05,
        promoted: None,
    };
    let mut modes = std::collections::BTreeSet::new();
    for seed in 0..200u64 {
        let c = choose(&cands, &rules, seed.wrapping_mul(0x9E37_79B9), None);
        modes.insert(c.mode.as_str());
        let content = prompt_bandit::selection_content(Uuid::now_v7(), &cands, &rules, &c);
        assert_eq!(replay(&content).unwrap(), c.chosen);
    }
    assert!(
        modes.contains("thompson") && modes.contains("explore"),
        "{modes:?}"
    );
}

testkit::both_stores!(
    threads = 2;
    recorded_runs_feedback_and_eval_cases_become_posteriors_incrementally,
    the_guardrail_drops_a_failing_variant_with_a_span_and_a_promotion_pins_the_choice,
);

fn run_span(variant: &str, outcome: &str, repaired: bool, latency_ms: u64) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "entity_type": "prompt_run",
        "visibility": "private",
        "who": "ana", "did": "asked the agent", "this": "conversation x",
        "confirmed_by": "test", "if_ok": "-", "if_doubt": "-", "if_not": "-",
        "status": outcome,
        "content": {"variant": variant, "outcome": outcome, "repaired": repaired, "latency_ms": latency_ms},
    })
}

async fn append(store: &dyn Store, p: &Principal, spans: Vec<Value>) -> Vec<Uuid> {
    let drafts: Vec<Draft> = spans
        .into_iter()
        .map(|s| Draft::from_value(s, p, &[], Utc::now()).unwrap())
        .collect();
    store::append(store, p, drafts)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect()
}

fn feedback(run: Uuid, score: Value) -> Value {
    json!({
        "entity_type": "feedback",
        "visibility": "private",
        "related_to": [run],
        "who": "ana", "did": "rated an answer", "this": "run",
        "confirmed_by": "ana", "if_ok": "-", "if_doubt": "-", "if_not": "-",
        "status": "recorded",
        "content": {"run_id": run, "score": score},
    })
}

async fn recorded_runs_feedback_and_eval_cases_become_posteriors_incrementally(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s: Arc<dyn Store> = f.store.clone();
    let ana = Principal::new("ana", "bakery");
    let eve = Principal::new("eve", "films");
    let cfg = BanditConfig::default();
    let bandit = Bandit::new(s.clone());
    let runs = append(
        s.as_ref(),
        &ana,
        vec![
            run_span("default", "answered", false, 100),
            run_span("default", "answered", true, 100),
            run_span("brief", "insufficient_evidence", false, 100),
            run_span("brief", "provider_error", false, 100),
        ],
    )
    .await;
    let r = bandit.refresh(&cfg).await.unwrap();
    assert_eq!(r.runs, 4);
    let l = bandit.learner();
    assert_eq!(
        (l.arm("default").samples, l.arm("default").reward_sum),
        (2, 1.75)
    );
    assert_eq!(
        (l.arm("brief").samples, l.arm("brief").reward_sum),
        (1, 0.0)
    );

    // Feedback from the asker replaces the derived reward; another tenant's (even naming the
    // run) does not count; an eval case's verdict replaces a derived reward.
    append(s.as_ref(), &ana, vec![feedback(runs[0], json!("down"))]).await;
    append(s.as_ref(), &eve, vec![feedback(runs[1], json!("down"))]).await;
    let eval = json!({
        "entity_type": "eval_case", "visibility": "private",
        "who": "ana", "did": "evaluated a case", "this": "case",
        "confirmed_by": "ll-eval", "if_ok": "-", "if_doubt": "-", "if_not": "-",
        "status": "passed",
        "content": {"prompt_run": runs[2], "pass": true},
    });
    append(s.as_ref(), &ana, vec![eval]).await;
    let r = bandit.refresh(&cfg).await.unwrap();
    assert_eq!(r.feedback, 1, "{r:?}");
    let l = bandit.learner();
    assert_eq!(l.arm("default").reward_sum, 0.75);
    assert_eq!(l.arm("brief").reward_sum, 1.0);
    // Nothing new: nothing changes, and the status has the API's shape.
    let g = l.generation();
    let r = bandit.refresh(&cfg).await.unwrap();
    assert_eq!((r.runs, r.feedback), (0, 0));
    assert_eq!(bandit.learner().generation(), g);
    let st = bandit.status(&["brief".into(), "compact".into(), "default".into()], &cfg);
    let names: Vec<&str> = st.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["brief", "compact", "default"]);
    let total: f64 = st.variants.iter().map(|v| v.probability).sum();
    assert!((total - 1.0).abs() < 1e-9, "{st:?}");
    // All three are warming up: uniform.
    assert!(
        st.variants
            .iter()
            .all(|v| (v.probability - 1.0 / 3.0).abs() < 1e-9)
    );
}

async fn the_guardrail_drops_a_failing_variant_with_a_span_and_a_promotion_pins_the_choice(
    backend: Backend,
) {
    let f = Fixture::new(backend).await;
    let s: Arc<dyn Store> = f.store.clone();
    let ana = Principal::new("ana", "bakery");
    let cfg = BanditConfig {
        guardrail_min_samples: 10,
        guardrail_failure_rate: 0.5,
        warmup_samples: 0,
        ..BanditConfig::default()
    };
    let mut spans = Vec::new();
    for i in 0..12 {
        // compact fails 8 of 12 (67% > 50%); default fails none.
        let outcome = if i < 8 {
            "insufficient_evidence"
        } else {
            "answered"
        };
        spans.push(run_span("compact", outcome, false, 50));
        spans.push(run_span("default", "answered", false, 50));
    }
    append(s.as_ref(), &ana, spans).await;
    let bandit = Bandit::new(s.clone());
    let r = bandit.refresh(&cfg).await.unwrap();
    assert_eq!(r.dropped, ["compact"]);
    let eligible = vec!["compact".to_string(), "default".to_string()];
    for seed in 0..100 {
        let (_, _, c) = bandit.choose(&eligible, &cfg, seed);
        assert_eq!(c.chosen.as_deref(), Some("default"), "{c:?}");
    }
    let node = system_principal();
    let filter = Filter {
        entity_type: Some(prompt_bandit::GUARDRAIL.into()),
        ..Filter::default()
    };
    let page = s.query(&node, &filter).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    let view = page.rows[0].span.to_view().unwrap();
    assert_eq!(view["content"]["variant"], "compact");
    assert_eq!(view["content"]["failures"], 8);
    // Another process noticing the same drop writes nothing more.
    let again = Bandit::new(s.clone());
    again.refresh(&cfg).await.unwrap();
    assert_eq!(s.query(&node, &filter).await.unwrap().rows.len(), 1);
    assert!(again.learner().arm("compact").dropped);

    // A promotion pins every choice, even to a dropped variant; clearing it lets the bandit
    // choose again.
    let d = prompt_bandit::promotion_draft(Some("compact"), "operator", Utc::now()).unwrap();
    store::append(s.as_ref(), &node, vec![d]).await.unwrap();
    bandit.refresh(&cfg).await.unwrap();
    for seed in 0..20 {
        let (_, _, c) = bandit.choose(&eligible, &cfg, seed);
        assert_eq!(
            (c.chosen.as_deref(), c.mode),
            (Some("compact"), Mode::Promoted)
        );
    }
    assert_eq!(
        bandit.status(&eligible, &cfg).promoted.as_deref(),
        Some("compact")
    );
    // A promotion written in a user's tenant is no promotion.
    let forged = Draft::from_value(
        json!({
            "entity_type": prompt_bandit::PROMOTION, "visibility": "tenant",
            "who": "ana", "did": "promoted", "this": "x", "confirmed_by": "ana",
            "if_ok": "-", "if_doubt": "-", "if_not": "-", "status": "promoted",
            "content": {"variant": "default"},
        }),
        &ana,
        &[],
        Utc::now(),
    )
    .unwrap();
    store::append(s.as_ref(), &ana, vec![forged]).await.unwrap();
    bandit.refresh(&cfg).await.unwrap();
    assert_eq!(bandit.learner().promoted(), Some("compact"));
    let clear = prompt_bandit::promotion_draft(None, "operator", Utc::now()).unwrap();
    store::append(s.as_ref(), &node, vec![clear]).await.unwrap();
    let readmit = prompt_bandit::readmission_draft("compact", "operator", Utc::now()).unwrap();
    store::append(s.as_ref(), &node, vec![readmit])
        .await
        .unwrap();
    bandit.refresh(&cfg).await.unwrap();
    let l = bandit.learner();
    assert_eq!(l.promoted(), None);
    assert!(!l.arm("compact").dropped);
    assert_eq!(l.arm("compact").recent_samples, 0);
    let picked: std::collections::BTreeSet<String> = (0..200)
        .filter_map(|seed| bandit.choose(&eligible, &cfg, seed).2.chosen)
        .collect();
    assert_eq!(
        picked.len(),
        2,
        "the floor offers the readmitted one again: {picked:?}"
    );
}
