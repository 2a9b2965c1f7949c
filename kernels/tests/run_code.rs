//! Stage-0 and `run_code` in-process, against a real embedded store: configuration changes
//! without a restart, the quota under concurrency and across days, untrusted signers.
#![expect(
    clippy::unwrap_used,
    reason = "fixtures outside #[test] functions panic on failure by design"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use kernels::manifest;
use kernels::run_code::{Outcome, RunCode};
use kernels::stage0::{self, Refusal, State};
use ledger::crypto::NodeKey;
use ledger::store::{self, Store, system_principal};
use ledger::{Draft, Filter, Principal};
use serde_json::{Value, json};
use testkit::Fixture;
use uuid::Uuid;

/// A seeded embedded ledger.
async fn ledger() -> Fixture {
    let l = testkit::sqlite().await;
    stage0::seed(l.store.as_ref()).await.unwrap();
    l
}

fn ana() -> Principal {
    Principal::new("ana", "bakery")
}

/// Appends a `function` span as `p` and returns its id.
async fn function(store: &dyn Store, p: &Principal, source: &str) -> Uuid {
    let draft = Draft::from_value(
        json!({"entity_type": "function", "name": "f", "visibility": "tenant",
            "who": p.user_id, "did": "defined", "this": "a function", "when": "2026-11-20T10:00:00Z",
            "confirmed_by": p.user_id, "if_ok": "run", "if_doubt": "ask", "if_not": "stop",
            "status": "active", "content": {"language": "javascript", "source": source}}),
        p,
        &[],
        Utc::now(),
    )
    .unwrap();
    let r = store::append(store, p, vec![draft]).await.unwrap();
    r.into_iter().next().unwrap().unwrap().id
}

async fn count(store: &dyn Store, p: &Principal, entity_type: &str) -> usize {
    let filter = Filter {
        entity_type: Some(entity_type.into()),
        limit: Some(1000),
        ..Filter::default()
    };
    store.query(p, &filter).await.unwrap().rows.len()
}

const SPIN: &str = "function main() { while (true) {} }";

#[tokio::test]
async fn a_new_kernel_seq_takes_effect_on_the_next_run_without_a_restart() {
    let l = ledger().await;
    stage0::set_kernel(
        l.store.as_ref(),
        "run_code",
        "ops",
        &[("config.time_ms".into(), json!(300))],
    )
    .await
    .unwrap();
    let f = function(l.store.as_ref(), &ana(), SPIN).await;
    let kernel = RunCode::new(l.store.clone());

    let started = Instant::now();
    let Outcome::Executed { execution, ok, .. } = kernel.run(&ana(), f, json!(null)).await.unwrap()
    else {
        panic!("not executed")
    };
    assert!(!ok);
    assert_eq!(execution["content"]["error"]["kind"], json!("time_limit"));
    assert_eq!(
        execution["content"]["error"]["message"],
        json!("time limit of 300 ms exceeded")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Same kernel object, same process: the next run reads the new seq.
    let seq = stage0::set_kernel(
        l.store.as_ref(),
        "run_code",
        "ops",
        &[("config.time_ms".into(), json!(120))],
    )
    .await
    .unwrap();
    assert_eq!(seq, 2);
    let Outcome::Executed { execution, .. } = kernel.run(&ana(), f, json!(null)).await.unwrap()
    else {
        panic!("not executed")
    };
    assert_eq!(
        execution["content"]["error"]["message"],
        json!("time limit of 120 ms exceeded")
    );

    // A manifest change applies the same way: run_code taken off the allow-list stops runs.
    manifest::set(
        l.store.as_ref(),
        "ops",
        &[("allowed_boot_ids".into(), json!([]))],
    )
    .await
    .unwrap();
    let e = kernel.run(&ana(), f, json!(null)).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("run_code is not running: not allow-listed"),
        "{e}"
    );
}

#[tokio::test]
async fn concurrent_runs_in_one_process_never_exceed_the_daily_limit() {
    let l = ledger().await;
    manifest::set(
        l.store.as_ref(),
        "ops",
        &[("throttle.per_tenant_daily_exec_limit".into(), json!(5))],
    )
    .await
    .unwrap();
    let f = function(l.store.as_ref(), &ana(), "function main(i) { return i; }").await;
    let kernel = Arc::new(RunCode::new(l.store.clone()));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let kernel = kernel.clone();
            // Different owners of one tenant share its quota.
            let who = Principal::new(format!("user{}", i % 3), "bakery");
            tokio::spawn(async move { kernel.run(&who, f, json!(i)).await.unwrap() })
        })
        .collect();
    let mut executed = 0;
    let mut blocked = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Executed { ok: true, .. } => executed += 1,
            Outcome::Blocked { .. } => blocked += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((executed, blocked), (5, 15));
    let auditor = Principal::new("user0", "bakery");
    // Executions are as visible as the function (tenant): every member sees all five.
    assert_eq!(count(l.store.as_ref(), &auditor, "execution").await, 5);
    assert_eq!(
        count(l.store.as_ref(), &auditor, "policy_violation").await,
        15
    );
}

#[tokio::test]
async fn the_quota_day_follows_the_injected_clock() {
    let l = ledger().await;
    manifest::set(
        l.store.as_ref(),
        "ops",
        &[("throttle.per_tenant_daily_exec_limit".into(), json!(1))],
    )
    .await
    .unwrap();
    let f = function(
        l.store.as_ref(),
        &ana(),
        "function main(i, ctx) { return ctx.now(); }",
    )
    .await;
    let now = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 11, 20, 23, 59, 0).unwrap(),
    ));
    let clock = now.clone();
    let kernel = RunCode::new(l.store.clone()).with_clock(Arc::new(move || -> DateTime<Utc> {
        *clock.lock().unwrap()
    }));

    let first = kernel.run(&ana(), f, json!(null)).await.unwrap();
    let Outcome::Executed { execution, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        execution["content"]["output"],
        json!("2026-11-20T23:59:00.000000Z")
    );
    assert_eq!(execution["content"]["quota"]["day"], json!("2026-11-20"));
    let Outcome::Blocked { violation } = kernel.run(&ana(), f, json!(null)).await.unwrap() else {
        panic!("the second run of the day was not blocked")
    };
    assert_eq!(violation["content"]["used"], json!(1));
    assert_eq!(violation["content"]["limit"], json!(1));

    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 1).unwrap();
    let next_day = kernel.run(&ana(), f, json!(null)).await.unwrap();
    assert!(
        matches!(next_day, Outcome::Executed { ok: true, .. }),
        "{next_day:?}"
    );
}

#[tokio::test]
async fn kernels_signed_by_a_key_the_manifest_no_longer_trusts_are_refused() {
    let l = ledger().await;
    let old = l.store.node_key().public_key().to_string();
    drop(l.store);
    // The same ledger file, now run by a node with a new key that the manifest trusts instead.
    let new_key = NodeKey::generate();
    let new_public = new_key.public_key().to_string();
    let store = store::open(None, l.dir.path(), new_key).await.unwrap();
    manifest::set(
        store.as_ref(),
        "ops",
        &[("trusted_keys".into(), json!([new_public]))],
    )
    .await
    .unwrap();

    let report = stage0::inspect(store.as_ref()).await.unwrap();
    assert!(report.manifest.is_ok(), "{:?}", report.manifest);
    assert_eq!(report.kernels.len(), 7);
    for k in &report.kernels {
        assert_eq!(k.state, State::Refused(Refusal::UntrustedSigner), "{k:?}");
        assert!(k.reason.contains(&old), "{}", k.reason);
    }
    assert!(report.allowed_refused());
    assert_eq!(
        stage0::record_refusals(store.as_ref(), &report)
            .await
            .unwrap(),
        7
    );
    // Recording again (another process, another status call) writes nothing new.
    assert_eq!(
        stage0::record_refusals(store.as_ref(), &report)
            .await
            .unwrap(),
        0
    );
    let events = store
        .query(
            &system_principal(),
            &Filter {
                entity_type: Some("boot_event".into()),
                ..Filter::default()
            },
        )
        .await
        .unwrap();
    let views: Vec<Value> = events
        .rows
        .iter()
        .map(|r| r.span.to_view().unwrap())
        .collect();
    assert_eq!(views.len(), 7);
    assert!(
        views
            .iter()
            .all(|v| v["content"]["refusal"] == json!("untrusted_signer"))
    );

    // Re-signing the kernel from a span that verifies no longer is refused too.
    let e = stage0::set_kernel(
        store.as_ref(),
        "run_code",
        "ops",
        &[("config.time_ms".into(), json!(10))],
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("refusing to build on the `run_code` kernel span"),
        "{e}"
    );
    let e = RunCode::new(store.clone())
        .run(&ana(), Uuid::now_v7(), json!(null))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("run_code is not running: untrusted signer"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unknown_kernel_and_a_second_span_for_a_bound_name_are_refused() {
    let l = ledger().await;
    let node = system_principal();
    let mut ids = Vec::new();
    for name in ["crypto_miner", "run_code"] {
        let d = Draft::from_value(
            json!({"entity_type": "kernel", "visibility": "tenant", "who": "node", "did": "defined kernel",
                "this": name, "when": "2026-11-20T10:00:00Z", "confirmed_by": "node key",
                "if_ok": "boot", "if_doubt": "no", "if_not": "no", "status": "active",
                "content": {"name": name, "version": "1.0.0", "config": {}}}),
            &node,
            &[],
            Utc::now(),
        )
        .unwrap();
        let r = store::append(l.store.as_ref(), &node, vec![d])
            .await
            .unwrap();
        ids.push(r.into_iter().next().unwrap().unwrap().id);
    }
    let mut allowed: Vec<Value> = store::NATIVE_KERNELS
        .iter()
        .map(|(_, id)| json!(id))
        .collect();
    allowed.extend(ids.iter().map(|id| json!(id)));
    manifest::set(
        l.store.as_ref(),
        "ops",
        &[("allowed_boot_ids".into(), json!(allowed))],
    )
    .await
    .unwrap();

    let report = stage0::inspect(l.store.as_ref()).await.unwrap();
    let by_id = |id: Uuid| report.kernels.iter().find(|k| k.id == id).unwrap();
    assert_eq!(by_id(ids[0]).state, State::Refused(Refusal::UnknownKernel));
    assert!(by_id(ids[0]).reason.contains("`crypto_miner`"));
    assert_eq!(by_id(ids[1]).state, State::Refused(Refusal::NotBound));
    // The bound run_code is unaffected by an impostor.
    assert_eq!(report.kernel("run_code").unwrap().state, State::Ready);
}
