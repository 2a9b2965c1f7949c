//! Contracts under the Midnight Ruler: the seed's acceptance fixtures (Article 33) and the
//! social rules of Articles 6–8, on the embedded store (one scenario also on PostgreSQL in
//! `midnight_ruler.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::TimeDelta;
use common::*;
use kernels::contracts::{
    self, ContractError, DespachoOutcome, Evidence, Guarantor, Party, ReputationGate, State,
};
use kernels::midnight_ruler::{self, run_midnight};
use serde_json::{Value, json};
use testkit::sqlite;

/// 2026-03-07 00:00 Europe/Paris, after every fixture's deadline.
const MIDNIGHT: &str = "2026-03-06T23:00:00Z";
const MORNING: &str = "2026-03-07T08:00:00Z";

fn delivered() -> Vec<Evidence> {
    vec![Evidence {
        kind: "delivery_note".into(),
        by: Some("ana".into()),
        at: Some(t("2026-03-05T10:00:00Z")),
        note: Some("signed by the set runner".into()),
    }]
}

fn actions(d: &Value) -> Vec<String> {
    d["content"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn deliverable_accepted_ok_is_accepted_at_midnight_with_a_ledger_event() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    let law = enact(s, &seed_law("midnight_deadline.law")).await;
    let mut terms = deliverable("D1");
    terms.accepted = true;
    sign(s, &terms).await;

    let report = run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    assert_eq!(report.laws.len(), 1);
    assert_eq!(report.laws[0].scheduled_at, t(MIDNIGHT));
    assert_eq!(report.decided().ok, 1);

    let d = decision_for(s, "D1").await;
    assert_eq!(d["status"], "ok");
    assert_eq!(d["content"]["triage"], "ok");
    assert_eq!(actions(&d), ["accept", "tag", "append_ledger"]);
    assert_eq!(d["content"]["law"]["span_id"], json!(law.id));
    assert_eq!(d["content"]["law"]["seq"], json!(law.seq));
    assert_eq!(d["content"]["law"]["curr_hash"], json!(law.curr_hash));
    assert_eq!(d["content"]["variables"]["accepted"], json!(true));
    assert_eq!(d["at"], "2026-03-06T23:00:00.000000Z");
    let c = latest(s, "D1").await;
    assert_eq!(c.state(), Some(State::Accepted));
    assert_eq!(c.status, "accepted");
    assert_eq!(c.content["tags"]["status"], "accepted");
    assert_eq!(c.at, t(MIDNIGHT));
}

#[tokio::test]
async fn deliverable_doubt_evidence_missing_is_held_24h_and_ops_notified() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    sign(s, &deliverable("D4")).await;

    let report = run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    assert_eq!(report.decided().doubt, 1);
    let d = decision_for(s, "D4").await;
    assert_eq!(d["content"]["triage"], "doubt");
    assert!(d["content"].get("fail_closed").is_none(), "{d:#}");
    assert_eq!(actions(&d), ["hold", "notify", "tag", "append_ledger"]);
    assert_eq!(d["content"]["actions"][0]["hours"], 24);
    assert_eq!(d["content"]["actions"][1]["role"], "ops");
    assert_eq!(d["content"]["variables"]["evidence.missing"], json!(true));
    let c = latest(s, "D4").await;
    assert_eq!(c.state(), Some(State::Held));
    assert_eq!(c.content["hold_until"], "2026-03-07T23:00:00.000000Z");
    assert_eq!(c.content["last_decision"]["notify"], json!(["ops"]));
    assert_eq!(c.content["tags"]["status"], "under_review");
}

#[tokio::test]
async fn deliverable_not_terminate_terminates_after_the_deadline() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let mut terms = deliverable("D1");
    terms.evidence = delivered();
    sign(s, &terms).await;

    run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    let d = decision_for(s, "D1").await;
    assert_eq!(d["content"]["triage"], "not");
    assert_eq!(
        d["content"]["actions"][0],
        json!({"action": "terminate", "reason": "deadline_passed"})
    );
    let c = latest(s, "D1").await;
    assert_eq!(c.state(), Some(State::Terminated));
    assert_eq!(c.content["state_reason"], "deadline_passed");
    assert_eq!(c.content["last_decision"]["decisions"][0], d["id"]);
    // The ruling version cites the decision and the law.
    assert!(c.view["related_to"].as_array().unwrap().contains(&d["id"]));
}

#[tokio::test]
async fn idempotency_re_run_writes_nothing_and_returns_the_original_decisions() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let mut ok = deliverable("D1");
    ok.accepted = true;
    sign(s, &ok).await;
    sign(s, &deliverable("D2")).await;
    let mut not = deliverable("D3");
    not.evidence = delivered();
    sign(s, &not).await;

    let first = run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    let before = span_count(s).await;
    let decided = decisions(s).await;
    let second = run_midnight(s, TENANT, t(MIDNIGHT), None).await.unwrap();
    assert_eq!(span_count(s).await, before, "a re-run appends nothing");
    assert_eq!(decisions(s).await, decided);
    assert_eq!(second.spans_written, 0);
    assert_eq!(second.laws[0].new_decisions, 0);
    assert_eq!(second.decided(), first.decided());
    assert_eq!(
        (
            first.decided().ok,
            first.decided().doubt,
            first.decided().not
        ),
        (1, 1, 1)
    );

    // The same idempotency key on a plain request returns the original result.
    let again = contracts::create(
        s,
        &as_user("ana"),
        &ok,
        &ReputationGate::default(),
        t(CREATED),
    )
    .await
    .unwrap();
    assert!(again.duplicate);
    assert_eq!(span_count(s).await, before);
}

fn loan(name: &str, guarantor_confirmed: &str) -> contracts::Terms {
    let mut terms = deliverable(name);
    terms.scope = "loan".into();
    terms.title = format!("{name}: the bakery's van lent to the film crew");
    terms.parties = vec![
        Party {
            who: "joao".into(),
            role: "borrower".into(),
            confirmed_at: Some(t("2026-03-02T09:00:00Z")),
        },
        Party {
            who: "ana".into(),
            role: "lender".into(),
            confirmed_at: Some(t("2026-03-02T08:50:00Z")),
        },
    ];
    terms.guarantor = Some(Guarantor {
        who: "pedro".into(),
        for_party: None,
        liability: "joint_and_several".into(),
        requested_at: Some(t("2026-03-02T09:00:00Z")),
        responded_at: Some(t(guarantor_confirmed)),
        confirmed_at: Some(t(guarantor_confirmed)),
        declined: false,
    });
    terms.asset_value = Some(4_000.0);
    terms
}

const LOAN_LAW: &str = "law loan_return:1.0.0:
scope: loan
clock: midnight Europe/Paris

if ok: accepted == true
then: accept, append_ledger

if not: now >= deadline_at AND accepted == false
then: terminate(reason=not_returned), notify(role=guarantor), append_ledger
";

#[tokio::test]
async fn guarantor_joint_liability_charges_both_and_lowers_both_reputations() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, LOAN_LAW).await;
    let lender = as_user("ana");
    for who in ["joao", "pedro"] {
        contracts::adjust_reputation(
            s,
            &lender,
            who,
            20,
            "regular customer",
            &format!("onboard:{who}"),
            t(CREATED),
        )
        .await
        .unwrap();
    }
    sign(s, &loan("L1", "2026-03-02T09:30:00Z")).await;
    assert_eq!(
        contracts::reputation(s, &lender, "pedro").await.unwrap(),
        70
    );

    run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    assert_eq!(decision_for(s, "L1").await["content"]["triage"], "not");
    assert_eq!(latest(s, "L1").await.state(), Some(State::Terminated));
    let charges = views(s, contracts::CHARGE).await;
    let mut charged: Vec<&str> = charges
        .iter()
        .map(|c| c["content"]["who"].as_str().unwrap())
        .collect();
    charged.sort();
    assert_eq!(charged, ["joao", "pedro"]);
    assert!(
        charges
            .iter()
            .all(|c| c["content"]["liability"] == "joint_and_several")
    );
    assert_eq!(contracts::reputation(s, &lender, "joao").await.unwrap(), 50);
    assert_eq!(
        contracts::reputation(s, &lender, "pedro").await.unwrap(),
        50
    );

    // Re-running the midnight charges nobody twice.
    run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    assert_eq!(views(s, contracts::CHARGE).await.len(), 2);
    assert_eq!(
        contracts::reputation(s, &lender, "pedro").await.unwrap(),
        50
    );
}

#[tokio::test]
async fn guarantor_anti_coercion_rejects_confirmations_under_five_minutes_apart() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    let ana = as_user("ana");
    contracts::adjust_reputation(s, &ana, "pedro", 30, "known", "k", t(CREATED))
        .await
        .unwrap();
    let before = span_count(s).await;
    // The borrower confirmed at 09:00, the guarantor at 09:03.
    let e = contracts::create(
        s,
        &ana,
        &loan("L2", "2026-03-02T09:03:00Z"),
        &ReputationGate::default(),
        t(CREATED),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ContractError::Coercion {
                gap_seconds: 180,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(span_count(s).await, before, "nothing written");

    // Asked without an answer yet, then answering three minutes after the borrower: rejected.
    let mut pending = loan("L3", "2026-03-02T09:30:00Z");
    if let Some(g) = pending.guarantor.as_mut() {
        g.responded_at = None;
        g.confirmed_at = None;
    }
    contracts::create(s, &ana, &pending, &ReputationGate::default(), t(CREATED))
        .await
        .unwrap();
    let pedro = as_user("pedro");
    let e = contracts::respond_as_guarantor(s, &pedro, "L3", true, t("2026-03-02T09:03:00Z"))
        .await
        .unwrap_err();
    assert!(matches!(e, ContractError::Coercion { .. }), "{e}");
    // Six minutes after: accepted.
    contracts::respond_as_guarantor(s, &pedro, "L3", true, t("2026-03-02T09:06:00Z"))
        .await
        .unwrap();
    let g = latest(s, "L3").await.content["guarantor"].clone();
    assert_eq!(g["confirmed_at"], "2026-03-02T09:06:00Z");
}

#[tokio::test]
async fn guarantor_reputation_gate_rejects_a_guarantor_below_the_bar_at_creation() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    let ana = as_user("ana");
    // A 4,000 van needs 60; pedro has the default 50 less a past default's 20.
    contracts::adjust_reputation(s, &ana, "pedro", -20, "defaulted on L0", "d", t(CREATED))
        .await
        .unwrap();
    let before = span_count(s).await;
    let e = contracts::create(
        s,
        &ana,
        &loan("L4", "2026-03-02T09:30:00Z"),
        &ReputationGate::default(),
        t(CREATED),
    )
    .await
    .unwrap_err();
    match e {
        ContractError::Reputation {
            who,
            score,
            required,
        } => {
            assert_eq!((who.as_str(), score, required), ("pedro", 30, 60));
        }
        other => panic!("expected the reputation gate, got {other}"),
    }
    assert_eq!(span_count(s).await, before, "nothing written");
}

#[tokio::test]
async fn a_guarantor_may_not_be_the_borrower_nor_a_witness_a_party() {
    let mut terms = loan("L5", "2026-03-02T09:30:00Z");
    if let Some(g) = terms.guarantor.as_mut() {
        g.who = " JOAO ".into();
    }
    assert!(matches!(
        contracts::check_shape(&terms),
        Err(ContractError::SelfGuarantee(_))
    ));
    let mut terms = deliverable("D9");
    terms.witness.who = "marta".into();
    assert!(matches!(
        contracts::check_shape(&terms),
        Err(ContractError::PartialWitness(_))
    ));
}

#[tokio::test]
async fn a_witness_who_misses_the_hour_voids_the_contract() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    enact(s, &seed_law("midnight_deadline.law")).await;
    let ana = as_user("ana");
    let gate = ReputationGate::default();
    contracts::create(s, &ana, &deliverable("D7"), &gate, t(CREATED))
        .await
        .unwrap();
    let state = contracts::confirm_witness(
        s,
        &as_user("clara"),
        "D7",
        t(CREATED) + TimeDelta::minutes(61),
    )
    .await
    .unwrap();
    assert_eq!(state, State::Void);
    assert_eq!(latest(s, "D7").await.state(), Some(State::Void));
    // Only the named witness may confirm.
    contracts::create(s, &ana, &deliverable("D8"), &gate, t(CREATED))
        .await
        .unwrap();
    let e = contracts::confirm_witness(s, &as_user("marta"), "D8", t(CREATED))
        .await
        .unwrap_err();
    assert!(matches!(e, ContractError::NotYourRole { .. }));
    // Nobody confirmed D8: the ruler voids it at midnight instead of deciding it.
    let report = run_midnight(s, TENANT, t(MORNING), None).await.unwrap();
    assert_eq!(report.voided, 1);
    assert_eq!(report.decided().total(), 0);
    assert_eq!(latest(s, "D8").await.state(), Some(State::Void));
    assert_eq!(decisions(s).await.len(), 0);
}

#[tokio::test]
async fn despacho_is_witnessed_rated_by_its_delay_and_silence_accepts_it() {
    let f = sqlite().await;
    let s = f.store.as_ref();
    let now = t("2026-03-03T10:00:00Z");
    let d = contracts::Despacho {
        subject: "vase found broken in studio 3".into(),
        to: "marta".into(),
        observed_at: now - TimeDelta::seconds(20),
        witness: contracts::Witness {
            who: "clara".into(),
            confirmed_at: Some(now),
        },
        evidence: vec![Evidence {
            kind: "photo".into(),
            by: Some("ana".into()),
            at: Some(now),
            note: None,
        }],
    };
    let mut self_witnessed = d.clone();
    self_witnessed.witness.who = "ana".into();
    assert!(
        contracts::despacho(s, &as_user("ana"), &self_witnessed, now)
            .await
            .is_err()
    );

    let a = contracts::despacho(s, &as_user("ana"), &d, now)
        .await
        .unwrap();
    let view = s
        .get(&as_user("ana"), a.id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    assert_eq!(view["content"]["credibility"], "credible");
    assert_eq!(view["content"]["report_delay_s"], 20);
    let p = as_user("marta");
    assert_eq!(
        contracts::despacho_status(s, &p, a.id, now + TimeDelta::minutes(30))
            .await
            .unwrap(),
        DespachoOutcome::Pending
    );
    assert_eq!(
        contracts::despacho_status(s, &p, a.id, now + TimeDelta::minutes(61))
            .await
            .unwrap(),
        DespachoOutcome::AcceptedBySilence
    );

    let b = contracts::despacho(s, &as_user("ana"), &d, now)
        .await
        .unwrap();
    contracts::answer_despacho(
        s,
        &p,
        b.id,
        false,
        "it was already broken on Monday",
        now + TimeDelta::minutes(10),
    )
    .await
    .unwrap();
    assert_eq!(
        contracts::despacho_status(s, &p, b.id, now + TimeDelta::hours(2))
            .await
            .unwrap(),
        DespachoOutcome::Rejected
    );
    assert!(midnight_ruler::DECISION.starts_with("law."));
}
