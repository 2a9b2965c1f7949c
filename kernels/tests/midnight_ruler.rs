//! The Midnight Ruler: idempotency, backfill in order, DST-correct instants, failing closed on
//! unknown zones and poison data, simulation that writes nothing, and the same run on
//! PostgreSQL (with two rulers racing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::NaiveDate;
use common::*;
use kernels::contracts::{self, Evidence, State};
use kernels::midnight_ruler::{self, When, catch_up, run_midnight, run_when, simulate};
use ledger::Draft;
use ledger::store::{self, Store};
use serde_json::{Value, json};
use testkit::{postgres, sqlite};

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn evidence() -> Vec<Evidence> {
    vec![Evidence {
        kind: "delivery_note".into(),
        by: Some("ana".into()),
        at: None,
        note: None,
    }]
}

/// D1 accepted (ok), D2 without evidence (doubt), D3 delivered but never accepted (not).
async fn three_contracts(s: &dyn Store) {
    enact(s, &seed_law("midnight_deadline.law")).await;
    let mut d1 = deliverable("D1");
    d1.accepted = true;
    sign(s, &d1).await;
    sign(s, &deliverable("D2")).await;
    let mut d3 = deliverable("D3");
    d3.evidence = evidence();
    sign(s, &d3).await;
}

#[tokio::test]
async fn backfill_runs_three_missed_midnights_in_order_and_checkpoints_each() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let mut terms = deliverable("D1");
    terms.evidence = evidence();
    sign(s, &terms).await;

    // Up on the evening of 2026-03-02: the midnights of 03-02 (law enacted 03-01) run.
    let first = catch_up(s, t("2026-03-02T23:30:00Z")).await.unwrap();
    let runs: Vec<String> = first[0]
        .laws
        .iter()
        .map(|l| l.scheduled_at.to_rfc3339())
        .collect();
    assert_eq!(
        runs,
        ["2026-03-01T23:00:00+00:00", "2026-03-02T23:00:00+00:00"]
    );
    // D1 was created 03-02 09:00, so only the second midnight decides it (not due: doubt).
    assert_eq!(first[0].decided().total(), 1);

    // Down for three days; back up on 03-06 at 07:00 UTC.
    let back = catch_up(s, t("2026-03-06T07:00:00Z")).await.unwrap();
    let runs: Vec<(String, usize, usize)> = back[0]
        .laws
        .iter()
        .map(|l| (l.scheduled_at.to_rfc3339(), l.decided.doubt, l.decided.not))
        .collect();
    assert_eq!(
        runs,
        [
            ("2026-03-03T23:00:00+00:00".to_string(), 1, 0),
            ("2026-03-04T23:00:00+00:00".to_string(), 1, 0),
            ("2026-03-05T23:00:00+00:00".to_string(), 0, 1),
        ]
    );
    // Decisions were written in midnight order; the third terminated D1 at its midnight.
    let at: Vec<String> = decisions(s)
        .await
        .iter()
        .map(|d| d["content"]["scheduled_at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        at,
        [
            "2026-03-02T23:00:00.000000Z",
            "2026-03-03T23:00:00.000000Z",
            "2026-03-04T23:00:00.000000Z",
            "2026-03-05T23:00:00.000000Z"
        ]
    );
    let c = latest(s, "D1").await;
    assert_eq!(c.state(), Some(State::Terminated));
    assert_eq!(c.at, t("2026-03-05T23:00:00Z"));
    let law = midnight_ruler::load_laws(s, &as_user("x")).await.unwrap();
    let last =
        midnight_ruler::last_checkpoint(s, &midnight_ruler::ruler_principal(TENANT), law[0].id)
            .await
            .unwrap();
    assert_eq!(last, Some(t("2026-03-05T23:00:00Z")));

    // Nothing left to do: a second call writes nothing.
    let before = span_count(s).await;
    let again = catch_up(s, t("2026-03-06T07:00:00Z")).await.unwrap();
    assert!(again[0].laws.is_empty());
    assert_eq!(span_count(s).await, before);
}

#[tokio::test]
async fn the_paris_midnight_on_dst_days_is_the_right_utc_instant() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    sign(s, &deliverable("D2")).await;
    // Clocks go forward at 02:00 on 2026-03-29: that midnight is still CET (+01:00) …
    let r = run_when(s, TENANT, When::Date(date("2026-03-29")), None)
        .await
        .unwrap();
    assert_eq!(r.laws[0].scheduled_at, t("2026-03-28T23:00:00Z"));
    // … and the next one is CEST (+02:00): a 23-hour day.
    let r = run_when(s, TENANT, When::Date(date("2026-03-30")), None)
        .await
        .unwrap();
    assert_eq!(r.laws[0].scheduled_at, t("2026-03-29T22:00:00Z"));
    // Back to CET on 2026-10-25 at 03:00: the 26th starts at 23:00 UTC.
    let r = run_when(s, TENANT, When::Date(date("2026-10-26")), None)
        .await
        .unwrap();
    assert_eq!(r.laws[0].scheduled_at, t("2026-10-25T23:00:00Z"));
    let d: Vec<Value> = decisions(s).await;
    assert_eq!(d[1]["at"], "2026-03-29T22:00:00.000000Z");
    assert_eq!(d[1]["content"]["variables"]["now"], "2026-03-29T22:00:00Z");
    // An instant in the evening of the 29th means that day's midnight.
    let r = run_midnight(s, TENANT, t("2026-03-29T21:59:00Z"), None)
        .await
        .unwrap();
    assert_eq!(r.laws[0].scheduled_at, t("2026-03-28T23:00:00Z"));
    assert_eq!(r.spans_written, 0);
}

#[tokio::test]
async fn an_unknown_zone_fails_closed_to_doubt_and_changes_no_contract() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    let src = seed_law("midnight_deadline.law").replace("Europe/Paris", "Mars/Olympus_Mons");
    enact(s, &src).await;
    let mut d3 = deliverable("D3");
    d3.evidence = evidence();
    sign(s, &d3).await;
    let r = run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None)
        .await
        .unwrap();
    assert!(!r.laws[0].zone_known);
    // UTC midnight stands in for the unknown zone's.
    assert_eq!(r.laws[0].scheduled_at, t("2026-03-07T00:00:00Z"));
    assert_eq!((r.decided().doubt, r.laws[0].fail_closed), (1, 1));
    let d = decision_for(s, "D3").await;
    assert_eq!(
        d["content"]["fail_closed"],
        json!({"reason": "unknown_time_zone", "zone": "Mars/Olympus_Mons"})
    );
    assert_eq!(d["content"]["actions"], json!([]));
    assert_eq!(latest(s, "D3").await.state(), Some(State::Active));
    // An override with an unknown zone fails closed the same way.
    let r = run_midnight(
        s,
        TENANT,
        t("2026-03-08T08:00:00Z"),
        Some("Nowhere/Atlantis"),
    )
    .await
    .unwrap();
    assert_eq!(r.decided().doubt, 1);
}

#[tokio::test]
async fn poison_contract_content_is_decided_doubt_not_a_crash() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let p = as_user("mallory");
    let poison = [
        json!("not an object at all"),
        json!({"scope": "deliverable", "deadline_at": 42, "accepted": "maybe", "approvals": "many"}),
        json!({"scope": "deliverable", "deadline_at": "yesterday", "accepted": false, "evidence": {"missing": "?"}, "quorum": null, "approvals": []}),
        json!({"scope": ["deliverable"], "state": 7, "tags": "x", "witness": 3, "created_at": "soon"}),
    ];
    let drafts: Vec<Draft> = poison
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Draft::from_value(
                json!({"entity_type": "contract", "name": format!("P{i}"), "visibility": "tenant",
                       "when": "2026-03-02T09:00:00Z", "who": "mallory", "did": "proposed", "this": "x",
                       "confirmed_by": "nobody", "if_ok": "a", "if_doubt": "b", "if_not": "c",
                       "status": "active", "content": c}),
                &p,
                &[],
                t("2026-03-02T09:00:00Z"),
            )
            .unwrap()
        })
        .collect();
    for r in store::append(s, &p, drafts).await.unwrap() {
        r.unwrap();
    }
    let r = run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None)
        .await
        .unwrap();
    assert_eq!(r.decided().doubt, 4, "{r:#?}");
    assert_eq!(r.laws[0].fail_closed, 4);
    for d in decisions(s).await {
        assert_eq!(d["content"]["triage"], "doubt");
        assert!(d["content"]["fail_closed"].is_object(), "{d:#}");
    }
    // Re-running over poison is as idempotent as over good data.
    let before = span_count(s).await;
    run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None)
        .await
        .unwrap();
    assert_eq!(span_count(s).await, before);
}

#[tokio::test]
async fn simulating_a_higher_quorum_lists_the_changes_and_writes_nothing() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let approvals = |n: usize| {
        (0..n)
            .map(|i| contracts::Approval {
                who: format!("approver{i}"),
                at: t("2026-03-03T10:00:00Z"),
            })
            .collect::<Vec<_>>()
    };
    let mut d5 = deliverable("D5");
    d5.approvals = approvals(2);
    d5.evidence = evidence();
    sign(s, &d5).await;
    let mut d6 = deliverable("D6");
    d6.approvals = approvals(3);
    sign(s, &d6).await;
    let before = span_count(s).await;

    let sim = simulate(
        s,
        TENANT,
        "midnight_deadline",
        &[("quorum".to_string(), json!(3))],
        Some(When::Date(date("2026-03-07"))),
        None,
        t("2026-03-04T12:00:00Z"),
    )
    .await
    .unwrap();
    assert_eq!(sim.scheduled_at, t("2026-03-06T23:00:00Z"));
    assert_eq!(sim.considered, 2);
    assert_eq!(sim.changed.len(), 1);
    let c = &sim.changed[0];
    assert_eq!(
        (c.contract.as_str(), c.before.as_str(), c.after.as_str()),
        ("D5", "ok", "not")
    );
    assert_eq!(span_count(s).await, before, "a simulation writes nothing");
    assert!(decisions(s).await.is_empty());
    // Unknown laws are named in the error.
    let e = simulate(
        s,
        TENANT,
        "no_such_law",
        &[],
        None,
        None,
        t("2026-03-04T12:00:00Z"),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no_such_law"));
}

#[tokio::test]
async fn postgres_rulers_racing_on_one_midnight_write_each_decision_once() {
    let f = postgres().await;
    let s = f.store.as_ref();
    three_contracts(s).await;
    let (a, b) = tokio::join!(
        run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None),
        run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.decided(), b.decided());
    let d = decisions(s).await;
    assert_eq!(d.len(), 3, "{d:#?}");
    let triage: Vec<(String, String)> = d
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        triage,
        [
            ("D1".into(), "ok".into()),
            ("D2".into(), "doubt".into()),
            ("D3".into(), "not".into())
        ]
    );
    assert_eq!(latest(s, "D1").await.state(), Some(State::Accepted));
    assert_eq!(latest(s, "D2").await.state(), Some(State::Held));
    assert_eq!(latest(s, "D3").await.state(), Some(State::Terminated));
    // One ruling version per contract, whoever won.
    for name in ["D1", "D2", "D3"] {
        let c = contracts::find(s, &as_user("ana"), name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.versions.len(), 3, "{name}: created, witnessed, ruled");
    }
    let before = span_count(s).await;
    let again = run_midnight(s, TENANT, t("2026-03-07T08:00:00Z"), None)
        .await
        .unwrap();
    assert_eq!((again.spans_written, span_count(s).await), (0, before));
    // The chain still verifies after the ruler's writes.
    let trusted = store::trusted_keys(s).await.unwrap();
    let report = ledger::verify::verify_tenant(s, TENANT, &trusted)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
}
