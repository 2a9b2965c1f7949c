//! observer_bot and request_worker against both stores: one request per (function, slot), FIFO
//! execution exactly once, lapsed claims retried, and a run that already happened never
//! repeated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use kernels::observer_bot::{self, ObserverBot, ObserverConfig};
use kernels::request_worker::{self, RequestWorker, WorkerConfig};
use kernels::run_code::RunCode;
use kernels::sandbox::Clock;
use kernels::stage0;
use ledger::store::{self, Store};
use ledger::{Appended, Draft, Filter, Principal};
use serde_json::{Value, json};
use testkit::{Backend, Fixture};
use uuid::Uuid;

testkit::both_stores!(
    threads = 4;
    the_observer_makes_one_request_per_function_and_slot_however_many_observe,
    workers_run_each_request_once_oldest_first,
    a_lapsed_claim_is_retried_and_a_run_that_already_happened_is_not_repeated,
);

async fn ledger(backend: Backend) -> Fixture {
    let f = Fixture::new(backend).await;
    stage0::seed(f.store.as_ref()).await.unwrap();
    f
}

fn ana() -> Principal {
    Principal::new("ana", "bakery")
}

fn movable(start: DateTime<Utc>) -> (Clock, Arc<Mutex<DateTime<Utc>>>) {
    let now = Arc::new(Mutex::new(start));
    let read = now.clone();
    (Arc::new(move || *read.lock().unwrap()), now)
}

async fn append(s: &dyn Store, p: &Principal, mut span: Value) -> Appended {
    for (k, v) in [
        ("who", json!(p.user_id)),
        ("did", json!("recorded")),
        ("this", json!("something")),
        ("when", json!("2026-11-20T10:00:00Z")),
        ("confirmed_by", json!(p.user_id)),
        ("if_ok", json!("go on")),
        ("if_doubt", json!("ask")),
        ("if_not", json!("stop")),
        ("status", json!("valid")),
        ("visibility", json!("tenant")),
    ] {
        span.as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert(v);
    }
    let draft = Draft::from_value(span, p, &[], Utc::now()).unwrap();
    store::append(s, p, vec![draft])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

async fn function(s: &dyn Store, status: &str, schedule: Value) -> Uuid {
    append(
        s,
        &ana(),
        json!({"entity_type": "function", "name": "tick", "status": status,
               "content": {"language": "javascript", "schedule": schedule,
                           "source": "function main(i) { return {request: i.request, n: i.input && i.input.n}; }"}}),
    )
    .await
    .id
}

async fn request(s: &dyn Store, f: Uuid, n: u64) -> Uuid {
    append(
        s,
        &ana(),
        json!({"entity_type": "request", "status": "queued", "parent_id": f, "related_to": [f],
               "content": {"function": f, "input": {"n": n}}}),
    )
    .await
    .id
}

async fn views(s: &dyn Store, entity_type: &str) -> Vec<Value> {
    let filter = Filter {
        entity_type: Some(entity_type.into()),
        limit: Some(1000),
        ..Filter::default()
    };
    s.query(&ana(), &filter)
        .await
        .unwrap()
        .rows
        .iter()
        .map(|r| r.span.to_view().unwrap())
        .collect()
}

async fn latest(s: &dyn Store, id: Uuid) -> Value {
    s.get(&ana(), id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap()
}

fn worker_config() -> WorkerConfig {
    WorkerConfig::from_value(&request_worker::default_config()).unwrap()
}

async fn the_observer_makes_one_request_per_function_and_slot_however_many_observe(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let f = function(
        s,
        "scheduled",
        json!({"every_seconds": 60, "input": {"n": 7}}),
    )
    .await;
    function(s, "active", json!({"every_seconds": 60})).await; // not scheduled
    let start = DateTime::parse_from_rfc3339("2026-11-20T10:00:30Z")
        .unwrap()
        .to_utc();
    let (clock, now) = movable(start);
    let config = ObserverConfig::from_value(&observer_bot::default_config()).unwrap();
    let one = ObserverBot::new(l.store.clone()).with_clock(clock.clone());
    let two = ObserverBot::new(l.store.clone()).with_clock(clock);
    assert_eq!(one.pass_with(&config).await.unwrap().requested, 1);
    assert_eq!(two.pass_with(&config).await.unwrap().requested, 0);
    *now.lock().unwrap() = start + TimeDelta::seconds(20); // same slot
    assert_eq!(one.pass_with(&config).await.unwrap().requested, 0);
    *now.lock().unwrap() = start + TimeDelta::seconds(31); // next slot
    assert_eq!(two.pass_with(&config).await.unwrap().requested, 1);
    let requests = views(s, "request").await;
    let mut slots: Vec<&str> = requests
        .iter()
        .map(|r| r["content"]["scheduled_at"].as_str().unwrap())
        .collect();
    slots.sort_unstable();
    assert_eq!(
        slots,
        ["2026-11-20T10:00:00.000000Z", "2026-11-20T10:01:00.000000Z"]
    );
    assert!(requests.iter().all(|r| r["content"]["function"] == json!(f)
        && r["content"]["input"] == json!({"n": 7})
        && r["owner_id"] == json!("ana")));

    // Unscheduled by a new seq: no more requests.
    append(
        s,
        &ana(),
        json!({"id": f, "seq": 1, "entity_type": "function", "status": "active",
               "content": {"language": "javascript", "source": "function main() {}"}}),
    )
    .await;
    *now.lock().unwrap() = start + TimeDelta::seconds(200);
    assert_eq!(one.pass_with(&config).await.unwrap().requested, 0);
}

async fn workers_run_each_request_once_oldest_first(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let f = function(s, "active", Value::Null).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(request(s, f, n).await);
    }
    let mut c = worker_config();
    c.batch = 2;
    let one = RequestWorker::new(l.store.clone());
    let two = RequestWorker::new(l.store.clone());
    let (r1, r2) = tokio::join!(one.pass_with(&c), two.pass_with(&c));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(r1.executed + r2.executed >= 2, "{r1:?} {r2:?}");
    for _ in 0..4 {
        one.pass_with(&c).await.unwrap();
        two.pass_with(&c).await.unwrap();
    }
    let executions = views(s, "execution").await;
    assert_eq!(executions.len(), 5, "{executions:#?}");
    let mut ran: Vec<Value> = executions
        .iter()
        .map(|e| e["content"]["output"]["request"].clone())
        .collect();
    ran.dedup();
    assert_eq!(ran.len(), 5);
    for id in &ids {
        let r = latest(s, *id).await;
        assert_eq!(r["status"], json!("done"), "{r}");
        assert_eq!(r["seq"], json!(2), "claimed once, then done: {r}");
    }
    // FIFO: a single worker takes the oldest first.
    let lone = request(s, f, 10).await;
    let newer = request(s, f, 11).await;
    c.batch = 1;
    one.pass_with(&c).await.unwrap();
    assert_eq!(latest(s, lone).await["status"], json!("done"));
    assert_eq!(latest(s, newer).await["status"], json!("queued"));
}

async fn a_lapsed_claim_is_retried_and_a_run_that_already_happened_is_not_repeated(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let f = function(s, "active", Value::Null).await;
    let start = Utc::now();
    let (clock, now) = movable(start);
    let claim = |id: Uuid, until: DateTime<Utc>| {
        json!({"id": id, "seq": 1, "entity_type": "request", "status": "claimed",
               "content": {"function": f, "input": {"n": 1},
                           "claim": {"by": "a dead process", "attempt": 1,
                                     "until": ledger::span::format_time(until)}}})
    };
    // A: claimed by a process that died before running it.
    let a = request(s, f, 1).await;
    append(s, &ana(), claim(a, start + TimeDelta::seconds(30))).await;
    // B: claimed by a process that died after its run, before recording it.
    let bb = request(s, f, 2).await;
    append(s, &ana(), claim(bb, start + TimeDelta::seconds(30))).await;
    RunCode::new(l.store.clone())
        .run(
            &ana(),
            f,
            json!({"request": bb, "scheduled_at": null, "input": {"n": 2}}),
        )
        .await
        .unwrap();
    // C: claimed by a live process.
    let c = request(s, f, 3).await;
    append(s, &ana(), claim(c, start + TimeDelta::hours(1))).await;

    let worker = RequestWorker::new(l.store.clone()).with_clock(clock);
    let mut config = worker_config();
    config.lease = std::time::Duration::from_secs(1);
    let r = worker.pass_with(&config).await.unwrap();
    assert_eq!(r.claimed, 0, "every claim still holds: {r:?}");
    *now.lock().unwrap() = start + TimeDelta::seconds(31);
    let r = worker.pass_with(&config).await.unwrap();
    assert_eq!((r.claimed, r.executed, r.recovered), (2, 1, 1), "{r:?}");
    let a = latest(s, a).await;
    assert_eq!(a["status"], json!("done"));
    assert_eq!(a["content"]["claim"]["attempt"], json!(2));
    let bv = latest(s, bb).await;
    assert_eq!(bv["status"], json!("done"));
    assert_eq!(bv["content"]["recovered"], json!(true));
    assert_eq!(latest(s, c).await["status"], json!("claimed"));
    // One execution each for A and B.
    let mut ran: Vec<String> = views(s, "execution")
        .await
        .iter()
        .map(|e| e["input"]["request"].as_str().unwrap().to_string())
        .collect();
    ran.sort();
    let mut want = vec![a["id"].as_str().unwrap().to_string(), bb.to_string()];
    want.sort();
    assert_eq!(ran, want);
}
