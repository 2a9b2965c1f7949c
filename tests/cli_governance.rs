//! End-to-end tests of the governance commands of the real binary: `demo seed`, `ruler run`,
//! `law simulate`, on the embedded store and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use serde_json::Value;
use testkit::{Backend, Ledger};

const BIN: &str = env!("CARGO_BIN_EXE_logline");
const TENANT: &str = "demo";

/// What these tests do with a ledger: run the binary configured through the environment.
trait Governance {
    fn run(&self, args: &[&str]) -> String;
    fn query(&self, entity_type: &str) -> Vec<Value>;
    /// Spans in the demo tenant's chain.
    fn spans(&self) -> u64;
}

impl Governance for Ledger {
    fn run(&self, args: &[&str]) -> String {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_remove("LOGLINE_DATABASE_URL")
            .env("LOGLINE_DATA_DIR", self.data_dir().join("data"))
            .env("LOGLINE_USER", "auditor")
            .env("LOGLINE_TENANT", TENANT)
            .env_remove("LOGLINE_JWT_SECRET")
            .stdin(Stdio::null());
        if let Some(url) = &self.url {
            c.env("LOGLINE_DATABASE_URL", url);
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "logline {args:?} failed\n--- stdout\n{stdout}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn query(&self, entity_type: &str) -> Vec<Value> {
        let out = self.run(&[
            "query",
            "--entity-type",
            entity_type,
            "--limit",
            "1000",
            "--format",
            "json",
        ]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn spans(&self) -> u64 {
        let out = self.run(&["verify", "--only-tenant", TENANT, "--format", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        v["tenants"][0]["spans"].as_u64().unwrap()
    }
}

/// The newest version of the contract named `name`.
fn latest<'a>(contracts: &'a [Value], name: &str) -> &'a Value {
    contracts
        .iter()
        .filter(|c| c["name"] == name)
        .max_by_key(|c| c["seq"].as_i64().unwrap())
        .unwrap()
}

async fn demo_seed_terminates_d1_citing_midnight_deadline(l: Ledger) {
    let out = l.run(&["demo", "seed"]);
    assert!(
        out.contains("Padaria Lisboa") && out.contains("Luz Filmes"),
        "{out}"
    );
    assert!(out.contains("D3's guarantor"), "{out}");
    let contracts = l.query("contract");
    let names: std::collections::BTreeSet<&str> = contracts
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["D1", "D2", "D3", "D4", "D5"]
    );
    let d1 = latest(&contracts, "D1");
    assert_eq!(d1["status"], "terminated");
    assert_eq!(d1["content"]["state_reason"], "deadline_passed");
    assert_eq!(d1["who"], "midnight_ruler");
    assert!(
        contracts
            .iter()
            .filter(|c| c["name"] == "D3")
            .all(|c| c["content"]["guarantor"]["responded_at"].is_null())
    );

    let law = l
        .query("law")
        .into_iter()
        .find(|l| l["name"] == "midnight_deadline")
        .unwrap();
    let decisions = l.query("law.decision");
    let d = decisions
        .iter()
        .find(|d| d["content"]["contract"]["name"] == "D1")
        .unwrap();
    assert_eq!(d["status"], "not");
    assert_eq!(d["content"]["law"]["id"], "midnight_deadline");
    assert_eq!(d["content"]["law"]["span_id"], law["id"]);
    assert_eq!(d["content"]["law"]["seq"], law["seq"]);
    assert_eq!(d["content"]["law"]["curr_hash"], law["curr_hash"]);
    // Decided at a past midnight, by the ruler, and the contract's ruling cites it.
    assert_eq!(d["at"], d1["at"]);
    assert_eq!(d1["content"]["last_decision"]["decisions"][0], d["id"]);
    assert!(out.contains(d["id"].as_str().unwrap()), "{out}");

    // Seeding again changes nothing.
    let before = l.spans();
    let again = l.run(&["demo", "seed"]);
    assert!(again.contains("spans written: 0"), "{again}");
    assert!(again.contains("already there"), "{again}");
    assert_eq!(l.spans(), before);
    let _ = l.data_dir();
}

#[tokio::test]
async fn demo_seed_then_d1_is_terminated_with_a_decision_citing_midnight_deadline() {
    demo_seed_terminates_d1_citing_midnight_deadline(Ledger::new(Backend::Sqlite).await).await;
}

#[tokio::test]
async fn demo_seed_on_postgres_then_d1_is_terminated_with_a_decision_citing_midnight_deadline() {
    demo_seed_terminates_d1_citing_midnight_deadline(Ledger::new(Backend::Postgres).await).await;
}

#[tokio::test]
async fn ruler_run_prints_the_utc_instant_and_the_counts_and_is_idempotent() {
    let l = Ledger::new(Backend::Sqlite).await;
    l.run(&["demo", "seed"]);
    let ruled: Vec<Value> = l.query("demo_seed");
    let m = ruled[0]["content"]["ruled_at"]
        .as_str()
        .unwrap()
        .to_string();
    // The anchor midnight again, by instant: everything was decided already.
    let before = l.spans();
    let out = l.run(&["ruler", "run", "--at", &m]);
    let shown = m.replace(".000000Z", "Z");
    assert!(out.contains(&format!("scheduled_at: {shown}")), "{out}");
    assert!(
        out.contains("decided: 3 (ok 1, doubt 1, not 1); new decisions 0"),
        "{out}"
    );
    assert_eq!(l.spans(), before);

    // A DST day by date, with a zone override.
    let out = l.run(&["ruler", "run", "--at", "2027-03-28", "--tz", "Europe/Paris"]);
    assert!(out.contains("scheduled_at: 2027-03-27T23:00:00Z"), "{out}");
    let out = l.run(&[
        "ruler",
        "run",
        "--at",
        "2027-03-29",
        "--tz",
        "Europe/Paris",
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["laws"][0]["scheduled_at"], "2027-03-28T22:00:00Z");
    let bad = Command::new(BIN)
        .args(["ruler", "run", "--at", "tomorrow"])
        .env("LOGLINE_DATA_DIR", l.data_dir().join("data"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a date"));
}

#[tokio::test]
async fn law_simulate_prints_the_changed_contracts_and_leaves_the_ledger_unchanged() {
    let l = Ledger::new(Backend::Sqlite).await;
    l.run(&["demo", "seed"]);
    let before = l.spans();
    let decisions = l.query("law.decision").len();
    let out = l.run(&["law", "simulate", "midnight_deadline", "--set", "quorum=3"]);
    assert!(out.contains("│ D5       ┆ ok     ┆ doubt │"), "{out}");
    assert!(out.contains("1 contract would change"), "{out}");
    assert!(out.contains("nothing was written"), "{out}");
    let json_out = l.run(&[
        "law",
        "simulate",
        "midnight_deadline",
        "--set",
        "quorum=3",
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["changed"][0]["contract"], "D5");
    assert_eq!(l.spans(), before, "simulate writes nothing");
    assert_eq!(l.query("law.decision").len(), decisions);
}
