//! The model's `query_ledger` spec, run against both stores: every operator, relative times,
//! versions, counts and groups, limits, visibility, redaction, and values that look like SQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::span::format_time;
use ledger::store::{self, Store};
use ledger::{Draft, Principal, QuerySpec, SpecError, SpecResult, StoreError};
use serde_json::{Value, json};
use testkit::Fixture;
use uuid::Uuid;

/// The instant relative times resolve against (and the seed's times are relative to).
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn ago(hours: i64) -> String {
    format_time(now() - TimeDelta::hours(hours))
}

fn ana() -> Principal {
    Principal::new("ana", "bakery")
}
fn bob() -> Principal {
    Principal::new("bob", "bakery")
}
fn carl() -> Principal {
    Principal::new("carl", "bakery")
}
fn eve() -> Principal {
    Principal::new("eve", "mill")
}

/// A complete contract span (tenant-visible unless `extra` says otherwise).
fn contract(who: &str, name: &str, hours_ago: i64, extra: Value) -> Value {
    let mut v = json!({"entity_type": "contract", "visibility": "tenant", "name": name,
        "who": who, "did": "signed", "this": format!("contract {name}"), "when": ago(hours_ago),
        "confirmed_by": "joao", "if_ok": "deliver", "if_doubt": "ask", "if_not": "cancel",
        "status": "active"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

async fn add(s: &dyn Store, p: &Principal, v: Value) -> Uuid {
    let d = Draft::from_value(v, p, &[], now()).unwrap();
    store::append(s, p, vec![d])
        .await
        .unwrap()
        .remove(0)
        .unwrap()
        .id
}

struct Seed {
    d1: Uuid,
    r1: Uuid,
}

/// Ana's contracts D1 (two versions), D2, D3 and R1 (redacted), her delivery L1, Bob's private
/// contract P1 in the same tenant, and Eve's contract E1 in another tenant.
async fn seed(s: &dyn Store) -> Seed {
    let d1_content = |state: &str| {
        json!({"state": state, "amount": 100, "urgent": true, "note": "Flour 50% OFF_today",
               "guarantor": {"requested_at": ago(48), "responded_at": null}})
    };
    let d1 = add(
        s,
        &ana(),
        contract("ana", "D1", 48, json!({"content": d1_content("open")})),
    )
    .await;
    add(
        s,
        &ana(),
        contract(
            "ana",
            "D1",
            1,
            json!({"id": d1, "seq": 1, "content": d1_content("held")}),
        ),
    )
    .await;
    add(
        s,
        &ana(),
        contract(
            "ana",
            "D2",
            24,
            json!({"content": {"state": "open", "amount": 25.5, "urgent": false,
                "note": "x' OR 1=1 --",
                "guarantor": {"requested_at": ago(2), "responded_at": ago(1)}}}),
        ),
    )
    .await;
    add(
        s,
        &ana(),
        contract(
            "ana",
            "D3",
            240,
            json!({"status": "closed", "content": {"state": "closed", "amount": "100", "guarantor": {}},
                   "metadata": {"source": "import"}}),
        ),
    )
    .await;
    add(
        s,
        &ana(),
        contract(
            "ana",
            "L1",
            3,
            json!({"entity_type": "delivery", "status": "valid", "content": {"state": "open"}}),
        ),
    )
    .await;
    add(
        s,
        &bob(),
        contract(
            "bob",
            "P1",
            5,
            json!({"visibility": "private", "content": {"state": "open", "amount": 100}}),
        ),
    )
    .await;
    add(
        s,
        &eve(),
        contract(
            "eve",
            "E1",
            5,
            json!({"content": {"state": "open", "amount": 100}}),
        ),
    )
    .await;
    let r1 = add(
        s,
        &ana(),
        contract(
            "ana",
            "R1",
            6,
            json!({"content": {"state": "open", "amount": 100, "secret": "s3cr3t"}}),
        ),
    )
    .await;
    s.redact(&ana(), r1, "test").await.unwrap();
    Seed { d1, r1 }
}

fn spec(args: Value) -> QuerySpec {
    QuerySpec::from_json(&args, now()).unwrap_or_else(|e| panic!("{args}: {e}"))
}

async fn run(s: &dyn Store, p: &Principal, args: Value) -> SpecResult {
    s.query_spec(p, &spec(args.clone()))
        .await
        .unwrap_or_else(|e| panic!("{args}: {e}"))
}

fn views(r: &SpecResult) -> Vec<Value> {
    match r {
        SpecResult::Rows { spans, .. } => spans.iter().map(|s| s.to_view().unwrap()).collect(),
        other => panic!("expected rows, got {other:?}"),
    }
}

/// Names of the spans returned, `(redacted)` for a withheld one.
fn names(r: &SpecResult) -> Vec<String> {
    views(r)
        .iter()
        .map(|v| match v["name"].as_str() {
            Some(n) => n.to_string(),
            None if v["redacted"] == json!(true) => "(redacted)".to_string(),
            None => format!("?{}", v["entity_type"]),
        })
        .collect()
}

async fn found(s: &dyn Store, p: &Principal, args: Value) -> Vec<String> {
    names(&run(s, p, args).await)
}

/// Names of Ana's contracts matching one condition, newest first.
async fn where1(s: &dyn Store, path: &str, op: &str, value: Value) -> Vec<String> {
    let cond = if value.is_null() {
        json!({"path": path, "op": op})
    } else {
        json!({"path": path, "op": op, "value": value})
    };
    found(
        s,
        &ana(),
        json!({"entity_type": "contract", "where": [cond]}),
    )
    .await
}

async fn count(s: &dyn Store, p: &Principal, args: Value) -> i64 {
    let mut args = args;
    args["count"] = json!(true);
    match run(s, p, args).await {
        SpecResult::Count(n) => n,
        other => panic!("expected a count, got {other:?}"),
    }
}

async fn groups(s: &dyn Store, p: &Principal, args: Value) -> Vec<(Value, i64)> {
    match run(s, p, args).await {
        SpecResult::Groups(g) => g,
        other => panic!("expected groups, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

async fn eq_and_ne_compare_by_type_and_ne_includes_missing_fields(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    // D1's latest version is held; R1 is redacted: only D2 is open.
    assert_eq!(
        where1(s, "content.state", "eq", json!("open")).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.state", "ne", json!("open")).await,
        ["D1", "D3"]
    );
    // A number matches numbers only, a string strings only.
    assert_eq!(where1(s, "content.amount", "eq", json!(100)).await, ["D1"]);
    assert_eq!(
        where1(s, "content.amount", "eq", json!(100.0)).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.amount", "eq", json!("100")).await,
        ["D3"]
    );
    assert_eq!(where1(s, "content.urgent", "eq", json!(true)).await, ["D1"]);
    assert_eq!(
        where1(s, "content.urgent", "eq", json!(false)).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.urgent", "ne", json!(true)).await,
        ["D2", "D3"]
    );
    // ne matches spans without the field, but never a redacted one.
    assert_eq!(
        where1(s, "metadata.source", "ne", json!("import")).await,
        ["D1", "D2"]
    );
    assert_eq!(
        where1(s, "metadata.source", "eq", json!("import")).await,
        ["D3"]
    );
    // Top-level columns work as paths too.
    assert_eq!(where1(s, "status", "eq", json!("closed")).await, ["D3"]);
    assert_eq!(
        where1(s, "status", "ne", json!("closed")).await,
        ["D1", "(redacted)", "D2"]
    );
    assert_eq!(where1(s, "name", "eq", json!("D2")).await, ["D2"]);
    assert_eq!(
        where1(s, "who", "ne", json!("ana")).await,
        Vec::<String>::new()
    );
    assert_eq!(where1(s, "owner_id", "eq", json!("ana")).await.len(), 4);
    assert_eq!(where1(s, "this", "eq", json!("contract D3")).await, ["D3"]);
    assert_eq!(
        where1(s, "did", "eq", json!("signed")).await,
        ["D1", "D2", "D3"]
    );
}

async fn ordering_operators_compare_numbers_numerically_and_strings_as_text(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    // D3's amount is the string "100": never compared with numbers.
    assert_eq!(where1(s, "content.amount", "gt", json!(50)).await, ["D1"]);
    assert_eq!(
        where1(s, "content.amount", "gte", json!(25.5)).await,
        ["D1", "D2"]
    );
    assert_eq!(where1(s, "content.amount", "lt", json!(100)).await, ["D2"]);
    assert_eq!(
        where1(s, "content.amount", "lte", json!(100)).await,
        ["D1", "D2"]
    );
    // Numerically 9 < 25.5; as text "9" > "25.5".
    assert_eq!(
        where1(s, "content.amount", "gt", json!(9)).await,
        ["D1", "D2"]
    );
    assert_eq!(where1(s, "content.amount", "lt", json!("2")).await, ["D3"]);
    assert_eq!(where1(s, "content.state", "gt", json!("i")).await, ["D2"]);
    assert_eq!(
        where1(s, "content.state", "lte", json!("held")).await,
        ["D1", "D3"]
    );
    assert_eq!(
        where1(s, "at", "gte", json!(ago(24))).await,
        ["D1", "(redacted)", "D2"]
    );
    assert_eq!(where1(s, "at", "lt", json!("now-6h")).await, ["D2", "D3"]);
    assert_eq!(
        where1(s, "at", "lte", json!("now-6h")).await,
        ["(redacted)", "D2", "D3"]
    );
    assert_eq!(where1(s, "at", "gt", json!("now-2h")).await, ["D1"]);
    assert_eq!(where1(s, "entity_type", "lt", json!("d")).await.len(), 4);
}

async fn in_contains_exists_and_missing_behave_as_documented(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    assert_eq!(
        where1(s, "content.state", "in", json!(["open", "held"])).await,
        ["D1", "D2"]
    );
    // Mixed types: each value matches its own type.
    assert_eq!(
        where1(s, "content.amount", "in", json!([100, "100", true])).await,
        ["D1", "D3"]
    );
    assert_eq!(
        where1(s, "content.urgent", "in", json!([false])).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "status", "in", json!(["closed", "x"])).await,
        ["D3"]
    );
    assert_eq!(
        where1(s, "at", "in", json!([ago(24), ago(240)])).await,
        ["D2", "D3"]
    );
    // contains: case-insensitive, and LIKE wildcards are plain characters.
    assert_eq!(
        where1(s, "content.note", "contains", json!("off_")).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("FLOUR")).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("%")).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("_")).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("f%f")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("1=1")).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.amount", "contains", json!("10")).await,
        ["D3"]
    );
    assert_eq!(where1(s, "this", "contains", json!("D3")).await, ["D3"]);
    // JSON null counts as missing.
    assert_eq!(
        where1(s, "content.guarantor.responded_at", "missing", Value::Null).await,
        ["D1", "D3"]
    );
    assert_eq!(
        where1(s, "content.guarantor.responded_at", "exists", Value::Null).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.guarantor", "exists", Value::Null).await,
        ["D1", "D2", "D3"]
    );
    // Paths address object keys only, and never pass through scalars.
    assert_eq!(
        where1(s, "content.state.x", "exists", Value::Null).await,
        Vec::<String>::new()
    );
    assert_eq!(
        where1(s, "metadata.source", "missing", Value::Null).await,
        ["D1", "D2"]
    );
    assert_eq!(where1(s, "status", "exists", Value::Null).await.len(), 4);
    assert_eq!(where1(s, "status", "missing", Value::Null).await.len(), 0);
}

async fn relative_times_resolve_against_now_for_at_and_for_content(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    // `since` is inclusive: D2 is exactly a day old.
    assert_eq!(
        found(
            s,
            &ana(),
            json!({"entity_type": "contract", "since": "now-1d"})
        )
        .await,
        ["D1", "(redacted)", "D2"]
    );
    assert_eq!(
        found(
            s,
            &ana(),
            json!({"entity_type": "contract", "since": "now-1d", "until": "now-6h"})
        )
        .await,
        ["D2"]
    );
    assert_eq!(
        found(
            s,
            &ana(),
            json!({"entity_type": "contract", "since": "2026-11-19T12:00:00Z", "until": "now"})
        )
        .await,
        ["D1", "(redacted)", "D2"]
    );
    // Times inside content compare as RFC 3339 text with the resolved instant.
    assert_eq!(
        where1(s, "content.guarantor.requested_at", "lt", json!("now-24h")).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.guarantor.requested_at", "gte", json!("now-3h")).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.guarantor.responded_at", "lte", json!("now")).await,
        ["D2"]
    );
}

async fn latest_only_picks_the_newest_version_before_filtering(f: Fixture) {
    let s = f.store.as_ref();
    let seed = seed(s).await;
    // D1 was open at seq 0 and is held now: by default only its current state counts.
    let r = run(
        s,
        &ana(),
        json!({"where": [{"path": "content.state", "op": "eq", "value": "open"}]}),
    )
    .await;
    assert_eq!(names(&r), ["L1", "D2"]);
    let r = run(
        s,
        &ana(),
        json!({"where": [{"path": "content.state", "op": "eq", "value": "open"}], "latest_only": false}),
    )
    .await;
    assert_eq!(names(&r), ["L1", "D2", "D1"]);
    assert_eq!(views(&r)[2]["seq"], json!(0));
    assert_eq!(views(&r)[2]["id"], json!(seed.d1));
    // Every version of D1, newest first or oldest first.
    let all = json!({"name": "D1", "latest_only": false});
    let seqs = |r: &SpecResult| {
        views(r)
            .iter()
            .map(|v| v["seq"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(&run(s, &ana(), all.clone()).await),
        [json!(1), json!(0)]
    );
    let mut asc = all;
    asc["order"] = json!("asc");
    assert_eq!(seqs(&run(s, &ana(), asc).await), [json!(0), json!(1)]);
    assert_eq!(
        seqs(&run(s, &ana(), json!({"name": "D1"})).await),
        [json!(1)]
    );
    // A window before D1's newest version finds nothing of D1 by default, its old version otherwise.
    assert_eq!(
        found(
            s,
            &ana(),
            json!({"entity_type": "contract", "until": "now-1d"})
        )
        .await,
        ["D3"]
    );
    assert_eq!(
        found(
            s,
            &ana(),
            json!({"entity_type": "contract", "until": "now-1d", "latest_only": false})
        )
        .await,
        ["D1", "D3"]
    );
}

async fn the_newest_visible_version_is_chosen_like_get_does(f: Fixture) {
    let s = f.store.as_ref();
    // Bob's contract is tenant-visible at seq 0 and private at seq 1: Ana still sees seq 0,
    // exactly as `get` shows it to her.
    let id = add(
        s,
        &bob(),
        contract("bob", "V", 5, json!({"content": {"state": "open"}})),
    )
    .await;
    add(
        s,
        &bob(),
        contract(
            "bob",
            "V",
            1,
            json!({"id": id, "seq": 1, "visibility": "private", "content": {"state": "closed"}}),
        ),
    )
    .await;
    let seen = s
        .get(&ana(), id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    assert_eq!(seen["seq"], json!(0));
    let r = run(s, &ana(), json!({"name": "V"})).await;
    assert_eq!(views(&r).len(), 1);
    assert_eq!(views(&r)[0]["seq"], json!(0));
    assert_eq!(views(&r)[0]["content"]["state"], json!("open"));
    let r = run(s, &bob(), json!({"name": "V"})).await;
    assert_eq!(views(&r)[0]["seq"], json!(1));
    assert_eq!(count(s, &carl(), json!({"name": "V"})).await, 1);
    assert_eq!(count(s, &carl(), json!({"name": "V", "where": [{"path": "content.state", "op": "eq", "value": "closed"}]})).await, 0);
}

async fn count_and_group_by_summarise_what_matches(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    let contracts = json!({"entity_type": "contract"});
    assert_eq!(count(s, &ana(), contracts.clone()).await, 4);
    let mut all_versions = contracts.clone();
    all_versions["latest_only"] = json!(false);
    assert_eq!(count(s, &ana(), all_versions).await, 5);
    assert_eq!(
        count(
            s,
            &ana(),
            json!({"where": [{"path": "content.amount", "op": "gte", "value": 0}]})
        )
        .await,
        2
    );

    let mut by_status = contracts.clone();
    by_status["group_by"] = json!("status");
    assert_eq!(
        groups(s, &ana(), by_status).await,
        [(json!("active"), 3), (json!("closed"), 1)]
    );
    // R1's content is withheld: it lands in the null group.
    let mut by_state = contracts.clone();
    by_state["group_by"] = json!("content.state");
    assert_eq!(
        groups(s, &ana(), by_state.clone()).await,
        [
            (json!("closed"), 1),
            (json!("held"), 1),
            (json!("open"), 1),
            (Value::Null, 1)
        ]
    );
    // Group keys keep their JSON type.
    let mut by_amount = contracts.clone();
    by_amount["group_by"] = json!("content.amount");
    assert_eq!(
        groups(s, &ana(), by_amount).await,
        [
            (json!("100"), 1),
            (json!(100), 1),
            (json!(25.5), 1),
            (Value::Null, 1)
        ]
    );
    let mut by_guarantor = contracts.clone();
    by_guarantor["group_by"] = json!("content.guarantor.responded_at");
    assert_eq!(
        groups(s, &ana(), by_guarantor).await,
        [(Value::Null, 3), (json!(ago(1)), 1)]
    );
    assert_eq!(
        groups(
            s,
            &ana(),
            json!({"group_by": "entity_type", "where": [{"path": "entity_type", "op": "in", "value": ["contract", "delivery"]}]})
        )
        .await,
        [(json!("contract"), 4), (json!("delivery"), 1)]
    );
    let mut by_who = contracts.clone();
    by_who["group_by"] = json!("who");
    assert_eq!(
        groups(s, &ana(), by_who).await,
        [(json!("ana"), 3), (Value::Null, 1)]
    );
    // The limit bounds the groups, biggest first.
    by_state["limit"] = json!(2);
    assert_eq!(
        groups(s, &ana(), by_state).await,
        [(json!("closed"), 1), (json!("held"), 1)]
    );
}

async fn the_limit_truncates_and_says_so(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    let r = run(s, &ana(), json!({"entity_type": "contract", "limit": 2})).await;
    assert_eq!(names(&r), ["D1", "(redacted)"]);
    assert!(matches!(
        r,
        SpecResult::Rows {
            truncated: true,
            ..
        }
    ));
    let r = run(
        s,
        &ana(),
        json!({"entity_type": "contract", "limit": 2, "order": "asc"}),
    )
    .await;
    assert_eq!(names(&r), ["D3", "D2"]);
    let r = run(s, &ana(), json!({"entity_type": "contract", "limit": 4})).await;
    assert_eq!(names(&r), ["D1", "(redacted)", "D2", "D3"]);
    assert!(matches!(
        r,
        SpecResult::Rows {
            truncated: false,
            ..
        }
    ));
    let r = run(s, &ana(), json!({"entity_type": "nothing"})).await;
    assert!(matches!(r, SpecResult::Rows { ref spans, truncated: false } if spans.is_empty()));
}

async fn the_default_and_maximum_limits_hold_on_many_spans(f: Fixture) {
    let s = f.store.as_ref();
    let p = ana();
    let drafts: Vec<Draft> = (0..230)
        .map(|i| {
            let v = contract(
                "ana",
                &format!("M{i}"),
                1000 - i,
                json!({"entity_type": "memo"}),
            );
            Draft::from_value(v, &p, &[], now()).unwrap()
        })
        .collect();
    store::append(s, &p, drafts).await.unwrap();
    let r = run(s, &p, json!({"entity_type": "memo"})).await;
    assert_eq!(views(&r).len(), 50);
    assert_eq!(names(&r)[0], "M229");
    assert!(matches!(
        r,
        SpecResult::Rows {
            truncated: true,
            ..
        }
    ));
    let r = run(s, &p, json!({"entity_type": "memo", "limit": 200})).await;
    assert_eq!(views(&r).len(), 200);
    assert!(matches!(
        r,
        SpecResult::Rows {
            truncated: true,
            ..
        }
    ));
    assert_eq!(count(s, &p, json!({"entity_type": "memo"})).await, 230);
}

async fn spans_the_caller_may_not_see_are_never_returned_nor_counted(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    let open = json!({"where": [{"path": "content.state", "op": "eq", "value": "open"}]});
    assert_eq!(found(s, &ana(), open.clone()).await, ["L1", "D2"]);
    assert_eq!(found(s, &bob(), open.clone()).await, ["L1", "P1", "D2"]);
    assert_eq!(found(s, &carl(), open.clone()).await, ["L1", "D2"]);
    assert_eq!(found(s, &eve(), open.clone()).await, ["E1"]);
    for (p, n) in [(ana(), 2), (bob(), 3), (carl(), 2), (eve(), 1)] {
        assert_eq!(count(s, &p, open.clone()).await, n, "{p:?}");
    }
    for who in [ana(), carl(), eve()] {
        assert!(found(s, &who, json!({"name": "P1"})).await.is_empty());
        assert_eq!(
            count(s, &who, json!({"name": "P1", "latest_only": false})).await,
            0
        );
    }
    assert!(found(s, &ana(), json!({"name": "E1"})).await.is_empty());
    assert!(found(s, &ana(), json!({"who": "eve"})).await.is_empty());
    assert!(
        found(
            s,
            &ana(),
            json!({"where": [{"path": "owner_id", "op": "in", "value": ["bob", "eve"]}]})
        )
        .await
        .is_empty()
    );

    // Nor through groups.
    let by_name = json!({"group_by": "name", "entity_type": "contract", "latest_only": false});
    let keys = |g: Vec<(Value, i64)>| g.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(groups(s, &ana(), by_name.clone()).await),
        [json!("D1"), json!("D2"), json!("D3"), Value::Null]
    );
    assert_eq!(
        keys(groups(s, &bob(), by_name.clone()).await),
        [
            json!("D1"),
            json!("D2"),
            json!("D3"),
            json!("P1"),
            Value::Null
        ]
    );
    assert_eq!(keys(groups(s, &eve(), by_name).await), [json!("E1")]);
    assert_eq!(
        groups(
            s,
            &ana(),
            json!({"group_by": "owner_id", "entity_type": "contract"})
        )
        .await,
        [(json!("ana"), 4)]
    );
    assert_eq!(
        groups(
            s,
            &bob(),
            json!({"group_by": "owner_id", "entity_type": "contract"})
        )
        .await,
        [(json!("ana"), 4), (json!("bob"), 1)]
    );
    // Public spans (the manifest) are everyone's.
    assert_eq!(
        count(s, &eve(), json!({"entity_type": "manifest"})).await,
        1
    );
}

async fn a_redacted_span_matches_no_content_condition(f: Fixture) {
    let s = f.store.as_ref();
    let seed = seed(s).await;
    let none = Vec::<String>::new();
    assert_eq!(
        where1(s, "content.secret", "eq", json!("s3cr3t")).await,
        none
    );
    assert_eq!(
        where1(s, "content.secret", "exists", Value::Null).await,
        none
    );
    assert_eq!(
        where1(s, "content.secret", "contains", json!("3")).await,
        none
    );
    assert_eq!(
        where1(s, "content.secret", "ne", json!("other")).await,
        ["D1", "D2", "D3"]
    );
    assert_eq!(
        where1(s, "content.secret", "missing", Value::Null).await,
        ["D1", "D2", "D3"]
    );
    assert_eq!(where1(s, "content.redacted", "eq", json!(true)).await, none);
    assert_eq!(where1(s, "name", "missing", Value::Null).await, none);
    assert_eq!(where1(s, "who", "missing", Value::Null).await, none);
    assert_eq!(
        where1(s, "who", "eq", json!("ana")).await,
        ["D1", "D2", "D3"]
    );
    // Envelope conditions still find it, and it reads back withheld.
    let r = run(
        s,
        &ana(),
        json!({"entity_type": "contract", "since": "now-6h", "until": "now-5h"}),
    )
    .await;
    let v = &views(&r)[0];
    assert_eq!(v["id"], json!(seed.r1));
    assert_eq!(v["content"], json!({"redacted": true}));
    assert!(v.get("name").is_none());
    assert!(!v.to_string().contains("s3cr3t"));
    // The redaction span itself is an ordinary span.
    assert_eq!(
        where1(s, "content.target", "eq", json!(seed.r1.to_string())).await,
        none,
        "the redaction is not a contract"
    );
    assert_eq!(
        found(s, &ana(), json!({"entity_type": "redaction", "where": [{"path": "content.target", "op": "eq", "value": seed.r1.to_string()}]}))
            .await
            .len(),
        1
    );
}

async fn a_version_appended_after_redaction_stays_withheld(f: Fixture) {
    let s = f.store.as_ref();
    let id = add(
        s,
        &ana(),
        contract("ana", "W", 5, json!({"content": {"state": "open"}})),
    )
    .await;
    s.redact(&ana(), id, "test").await.unwrap();
    add(
        s,
        &ana(),
        contract(
            "ana",
            "W",
            4,
            json!({"id": id, "seq": 1, "content": {"state": "again", "secret": "s3cr3t"}}),
        ),
    )
    .await;
    let none = Vec::<String>::new();
    assert_eq!(where1(s, "content.state", "eq", json!("again")).await, none);
    assert_eq!(where1(s, "name", "eq", json!("W")).await, none);
    assert_eq!(
        found(s, &ana(), json!({"who": "ana", "entity_type": "contract"})).await,
        none
    );
    let r = run(
        s,
        &ana(),
        json!({"entity_type": "contract", "latest_only": false}),
    )
    .await;
    let SpecResult::Rows { spans, .. } = &r else {
        panic!("{r:?}")
    };
    assert_eq!(spans.len(), 2);
    assert!(
        spans
            .iter()
            .all(|s| s.body.is_none() && s.redacted_by.is_some())
    );
    assert!(!format!("{r:?}").contains("s3cr3t"));
    let mut by_state = json!({"entity_type": "contract", "group_by": "content.state"});
    assert_eq!(
        groups(s, &ana(), by_state.clone()).await,
        [(Value::Null, 1)]
    );
    by_state["group_by"] = json!("who");
    assert_eq!(groups(s, &ana(), by_state).await, [(Value::Null, 1)]);
}

async fn values_that_look_like_sql_are_matched_literally(f: Fixture) {
    let s = f.store.as_ref();
    seed(s).await;
    let none = Vec::<String>::new();
    let evil = "x' OR 1=1 --";
    assert_eq!(found(s, &ana(), json!({"status": evil})).await, none);
    assert_eq!(
        found(s, &ana(), json!({"entity_type": "contract' --"})).await,
        none
    );
    assert_eq!(
        found(s, &ana(), json!({"who": "ana' OR owner_id <> 'ana"})).await,
        none
    );
    assert_eq!(where1(s, "content.note", "eq", json!(evil)).await, ["D2"]);
    assert_eq!(
        where1(
            s,
            "content.state",
            "eq",
            json!("open'); DROP TABLE spans; --")
        )
        .await,
        none
    );
    assert_eq!(
        where1(s, "content.state", "in", json!(["x\") OR 1=1 --", "held"])).await,
        ["D1"]
    );
    assert_eq!(
        where1(s, "content.note", "contains", json!("' OR 1")).await,
        ["D2"]
    );
    assert_eq!(
        where1(s, "content.state", "lt", json!("' OR 1=1")).await,
        none
    );
    // The ledger is intact afterwards.
    assert_eq!(
        count(s, &ana(), json!({"entity_type": "contract"})).await,
        4
    );
    // Paths outside the grammar never reach the store.
    for path in [
        "content.state' OR '1'='1",
        "content.state\") OR 1=1 --",
        "content.$.x",
        "content.a[0]",
        "content.\"a\"",
        "envelope",
        "tenant_id",
        "s.owner_id",
        "metadata.a b",
        "content.*",
    ] {
        let e = QuerySpec::from_json(&json!({"where": [{"path": path, "op": "exists"}]}), now())
            .unwrap_err();
        assert_eq!(e.at(), "where[0].path", "{path}: {e}");
        let e = QuerySpec::from_json(&json!({"group_by": path}), now()).unwrap_err();
        assert_eq!(e.at(), "group_by", "{path}: {e}");
    }
}

async fn a_query_over_its_time_limit_fails_with_a_clear_timeout(f: Fixture) {
    let s = f.store.as_ref();
    let p = ana();
    let mut content = serde_json::Map::new();
    for k in 0..60 {
        content.insert(
            format!("k{k}"),
            json!(format!("value number {k} of a wide span")),
        );
    }
    for batch in 0..4 {
        let drafts: Vec<Draft> = (0..500)
            .map(|i| {
                let v = contract(
                    "ana",
                    &format!("W{batch}-{i}"),
                    1,
                    json!({"entity_type": "wide", "content": content.clone()}),
                );
                Draft::from_value(v, &p, &[], now()).unwrap()
            })
            .collect();
        store::append(s, &p, drafts).await.unwrap();
    }
    let conditions: Vec<Value> = (0..12)
        .map(|k| json!({"path": format!("content.k{k}"), "op": "contains", "value": "zzz"}))
        .collect();
    let heavy = json!({"latest_only": false, "count": true, "where": conditions});
    let quick = spec(heavy).with_timeout(Duration::from_millis(1));
    let e = s.query_spec(&p, &quick).await.unwrap_err();
    match &e {
        StoreError::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("ran out of time (1 ms)"), "{e}");
    // The store (and every pooled connection) is fine afterwards, within the normal limit.
    for _ in 0..10 {
        assert_eq!(
            count(
                s,
                &p,
                json!({"entity_type": "wide", "where": [{"path": "content.k1", "op": "exists"}]})
            )
            .await,
            2000
        );
    }
}

#[test]
fn refusals_name_the_offending_field() {
    let cases = [
        (
            json!({"where": [{"path": "content.a", "op": "like", "value": "x"}]}),
            "where[0].op",
            "unknown operator `like`",
        ),
        (json!({"limit": 1000}), "limit", "from 1 to 200"),
        (json!({"since": "last week"}), "since", "RFC 3339"),
        (
            json!({"colour": "red"}),
            "arguments",
            "unknown key `colour`",
        ),
        (
            json!({"where": [{"path": "content.a", "op": "eq", "value": 1}, {"path": "x.y", "op": "exists"}]}),
            "where[1].path",
            "is not a field",
        ),
    ];
    for (args, at, message) in cases {
        let e: SpecError = QuerySpec::from_json(&args, now()).unwrap_err();
        assert_eq!(e.at(), at, "{e}");
        assert!(e.to_string().starts_with(at), "{e}");
        assert!(e.to_string().contains(message), "{e}");
    }
}

testkit::both_stores!(
    mod on_sqlite, on_postgres; open = testkit::Fixture::new;
    eq_and_ne_compare_by_type_and_ne_includes_missing_fields,
    ordering_operators_compare_numbers_numerically_and_strings_as_text,
    in_contains_exists_and_missing_behave_as_documented,
    relative_times_resolve_against_now_for_at_and_for_content,
    latest_only_picks_the_newest_version_before_filtering,
    the_newest_visible_version_is_chosen_like_get_does,
    count_and_group_by_summarise_what_matches,
    the_limit_truncates_and_says_so,
    the_default_and_maximum_limits_hold_on_many_spans,
    spans_the_caller_may_not_see_are_never_returned_nor_counted,
    a_redacted_span_matches_no_content_condition,
    a_version_appended_after_redaction_stays_withheld,
    values_that_look_like_sql_are_matched_literally,
    a_query_over_its_time_limit_fails_with_a_clear_timeout,
);
