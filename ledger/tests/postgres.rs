//! What PostgreSQL itself must guarantee, whatever the application code does: row level
//! security as a non-superuser role, the append-only triggers, NOTIFY on insert, and a gapless
//! chain under concurrent writers with separate connection pools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use ledger::crypto::NodeKey;
use ledger::store::postgres::PgStore;
use ledger::store::{self, Store};
use ledger::{Draft, Principal};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgListener;
use testkit::pg;

async fn open(url: &str) -> PgStore {
    let s = PgStore::connect(url, NodeKey::generate()).await.unwrap();
    store::ensure_manifest(&s).await.unwrap();
    s
}

fn ana() -> Principal {
    Principal::new("ana", "bakery")
}

async fn add(s: &dyn Store, p: &Principal, v: Value) -> ledger::Appended {
    let d = Draft::from_value(v, p, &[], Utc::now()).unwrap();
    store::append(s, p, vec![d])
        .await
        .unwrap()
        .remove(0)
        .unwrap()
}

#[tokio::test]
async fn the_application_role_cannot_bypass_row_level_security() {
    let s = open(&pg::fresh_database().await).await;
    let role =
        sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'logline_app'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(!role.get::<bool, _>(0) && !role.get::<bool, _>(1));
    let tables = sqlx::query(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ledger' AND c.relkind = 'r'",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    // spans, span_bodies, redactions, chain_heads, id_heads, idempotency, memory_keys, memory_items,
    // memory_terms, merkle_heads, merkle_nodes.
    assert_eq!(tables.len(), 11);
    for t in tables {
        let name: String = t.get(0);
        assert!(
            t.get::<bool, _>(1) && t.get::<bool, _>(2),
            "RLS not enabled and forced on {name}"
        );
    }
}

#[tokio::test]
async fn raw_sql_as_another_tenant_sees_only_public_rows() {
    let s = open(&pg::fresh_database().await).await;
    add(&s, &ana(), json!({"who": "ana", "this": "private"})).await;
    add(
        &s,
        &ana(),
        json!({"who": "ana", "this": "tenant", "visibility": "tenant"}),
    )
    .await;
    let count_as = |user: &'static str, tenant: &'static str| {
        let pool = s.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('role', 'logline_app', true), set_config('app.user_id', $1, true), set_config('app.tenant_id', $2, true)")
                .bind(user)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .unwrap();
            let spans: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ledger.spans WHERE tenant_id = 'bakery'")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            let bodies: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM ledger.span_bodies WHERE tenant_id = 'bakery'",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            (spans, bodies)
        }
    };
    assert_eq!(count_as("ana", "bakery").await, (2, 2));
    assert_eq!(count_as("bob", "bakery").await, (1, 1));
    assert_eq!(count_as("ana", "studio").await, (0, 0));
    // Not setting a principal at all shows nothing private either.
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE logline_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger.spans WHERE visibility <> 'public'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_application_role_cannot_read_another_tenants_tree_through_tree_read() {
    let s = open(&pg::fresh_database().await).await;
    add(&s, &ana(), json!({"who": "ana", "this": "private"})).await;
    let call = "SELECT count(*) FROM ledger.tree_read('bakery', '{}', '{}', '{0}')";
    // The owner role the store connects as reads through it (as the auditor)...
    let n: i64 = sqlx::query_scalar(call).fetch_one(s.pool()).await.unwrap();
    assert_eq!(n, 2, "the frontier and the span at chain_pos 0");
    // ...the role every request acts as may not call it at all.
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SELECT set_config('role', 'logline_app', true), set_config('app.user_id', 'mallory', true), set_config('app.tenant_id', 'rival', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query_scalar::<_, i64>(call)
        .fetch_one(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn the_database_refuses_writes_into_another_tenant() {
    let s = open(&pg::fresh_database().await).await;
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SELECT set_config('role', 'logline_app', true), set_config('app.user_id', 'mallory', true), set_config('app.tenant_id', 'rival', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(
        "INSERT INTO ledger.spans (tenant_id, chain_pos, id, seq, entity_type, owner_id, visibility, at, recorded_at, \
         status, envelope, curr_hash, signature) VALUES ('bakery', 99, gen_random_uuid(), 0, 'x', 'mallory', 'private', \
         now(), now(), 'valid', '{}', 'h', 's')",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
}

#[tokio::test]
async fn updates_deletes_and_truncates_are_refused_even_for_a_superuser() {
    let s = open(&pg::fresh_database().await).await;
    let a = add(
        &s,
        &ana(),
        json!({"who": "ana", "this": "keep me", "idempotency_key": "k"}),
    )
    .await;
    for sql in [
        "UPDATE ledger.spans SET status = 'forged'",
        "DELETE FROM ledger.spans",
        "TRUNCATE ledger.spans CASCADE",
        "UPDATE ledger.span_bodies SET body = '{}'",
        "DELETE FROM ledger.span_bodies",
        "DELETE FROM ledger.idempotency",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("append-only") || err.contains("redaction span"),
            "{sql}: {err}"
        );
    }
    let still = s
        .get(&ana(), a.id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    assert_eq!(still["this"], "keep me");
    assert_eq!(still["status"], "ghost");
}

#[tokio::test]
async fn every_insert_notifies_a_small_payload() {
    let s = open(&pg::fresh_database().await).await;
    let mut listener = PgListener::connect_with(s.pool()).await.unwrap();
    listener.listen("logline_spans").await.unwrap();
    let big = "x".repeat(100_000);
    let a = add(&s, &ana(), json!({"who": "ana", "content": {"blob": big}})).await;
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    let payload: Value = serde_json::from_str(note.payload()).unwrap();
    assert_eq!(payload["id"], json!(a.id));
    assert_eq!(payload["seq"], json!(0));
    assert_eq!(payload["tenant"], json!("bakery"));
    assert!(
        note.payload().len() < 200,
        "payload carries ids, not the row"
    );
}

#[tokio::test]
async fn writers_on_separate_pools_keep_one_gapless_chain() {
    let url = pg::fresh_database().await;
    let key = NodeKey::generate();
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(PgStore::connect(&url, key.clone()).await.unwrap()));
    }
    store::ensure_manifest(stores[0].as_ref()).await.unwrap();
    let mut tasks = Vec::new();
    for (w, st) in stores.iter().enumerate() {
        for t in 0..4 {
            let st = st.clone();
            tasks.push(tokio::spawn(async move {
                let p = Principal::new(format!("w{w}"), "bakery");
                for i in 0..25 {
                    let d = Draft::from_value(
                        json!({"who": p.user_id, "this": format!("{t}-{i}"), "idempotency_key": format!("shared-{}", i % 5)}),
                        &p,
                        &[],
                        Utc::now(),
                    )
                    .unwrap();
                    let d2 = Draft::from_value(json!({"who": p.user_id, "this": format!("{t}-{i}")}), &p, &[], Utc::now()).unwrap();
                    store::append(st.as_ref(), &p, vec![d, d2]).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = stores[0].as_ref();
    let trusted = store::trusted_keys(s).await.unwrap();
    let report = ledger::verify::verify_tenant(s, "bakery", &trusted)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    // 16 writers × 25 unkeyed spans, plus exactly one span per shared idempotency key.
    assert_eq!(report.spans, 16 * 25 + 5);
}
