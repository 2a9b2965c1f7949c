//! Shared fixtures of the governance tests: laws and contracts at fixed instants (the stores
//! come from `testkit`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeDelta, Utc};
use kernels::contracts::{self, ContractVersion, Party, ReputationGate, Terms, Witness};
use kernels::midnight_ruler;
use ledger::Principal;
use ledger::store::Store;
use serde_json::Value;

pub const TENANT: &str = "bakery";

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn as_user(who: &str) -> Principal {
    Principal::new(who, TENANT)
}

pub fn seed_law(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ledger/tests/laws")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Enacts a law as the tenant's lawmaker on 2026-03-01.
pub async fn enact(s: &dyn Store, source: &str) -> ledger::Appended {
    midnight_ruler::enact_law(
        s,
        &as_user("lawmaker"),
        source,
        "test fixture",
        t("2026-03-01T08:00:00Z"),
    )
    .await
    .unwrap()
}

/// A deliverable from the bakery to the film company, created 2026-03-02 09:00 UTC,
/// due 2026-03-05 17:00 UTC.
pub fn deliverable(name: &str) -> Terms {
    Terms {
        name: name.into(),
        scope: "deliverable".into(),
        title: format!("{name}: catering for the shoot"),
        parties: vec![
            Party {
                who: "ana".into(),
                role: "supplier".into(),
                confirmed_at: Some(t("2026-03-02T09:00:00Z")),
            },
            Party {
                who: "marta".into(),
                role: "client".into(),
                confirmed_at: Some(t("2026-03-02T09:10:00Z")),
            },
        ],
        witness: Witness {
            who: "clara".into(),
            confirmed_at: None,
        },
        guarantor: None,
        asset_value: None,
        deadline_at: t("2026-03-05T17:00:00Z"),
        accepted: false,
        approvals: vec![],
        quorum: 2,
        evidence: vec![],
        evidence_required: vec![],
    }
}

pub const CREATED: &str = "2026-03-02T09:00:00Z";

/// Creates the contract as ana and has clara witness it 20 minutes later.
pub async fn sign(s: &dyn Store, terms: &Terms) -> ledger::Appended {
    let created = contracts::create(
        s,
        &as_user("ana"),
        terms,
        &ReputationGate::default(),
        t(CREATED),
    )
    .await
    .unwrap();
    contracts::confirm_witness(
        s,
        &as_user(&terms.witness.who),
        &terms.name,
        t(CREATED) + TimeDelta::minutes(20),
    )
    .await
    .unwrap();
    created
}

pub async fn latest(s: &dyn Store, name: &str) -> ContractVersion {
    contracts::find(s, &as_user("ana"), name)
        .await
        .unwrap()
        .unwrap()
        .latest()
        .unwrap()
        .clone()
}

pub async fn views(s: &dyn Store, entity_type: &str) -> Vec<Value> {
    contracts::load_views(s, &as_user("auditor"), entity_type)
        .await
        .unwrap()
}

pub async fn decisions(s: &dyn Store) -> Vec<Value> {
    views(s, midnight_ruler::DECISION).await
}

pub async fn decision_for(s: &dyn Store, name: &str) -> Value {
    let all = decisions(s).await;
    let mut mine: Vec<Value> = all
        .into_iter()
        .filter(|d| d["content"]["contract"]["name"] == name)
        .collect();
    assert_eq!(mine.len(), 1, "one decision for {name}: {mine:#?}");
    mine.remove(0)
}

pub async fn span_count(s: &dyn Store) -> i64 {
    s.last_ingest_id().await.unwrap()
}

pub async fn count(s: &dyn Store, entity_type: &str) -> usize {
    views(s, entity_type).await.len()
}
