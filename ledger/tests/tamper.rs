//! An attacker with write access to the database files, tampering behind the application's back
//! (append-only triggers dropped on SQLite, disabled for the statement on PostgreSQL as the
//! superuser): `verify` must catch every kind of change a reader could see, and name the kind,
//! the position, the span and the column. Reads must not honour a forged redaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use ledger::crypto::NodeKey;
use ledger::store::postgres::PgStore;
use ledger::store::sqlite::SqliteStore;
use ledger::store::{self, Store};
use ledger::verify::{Problem, ProblemKind, TenantReport, verify_tenant};
use ledger::{Draft, Filter, Principal};
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::Backend;
use uuid::Uuid;

const TENANT: &str = "bakery";

fn ana() -> Principal {
    Principal::new("ana", TENANT)
}

/// The database behind the store, as the attacker reaches it.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(String),
}

/// A ledger of nine spans in tenant bakery, and a way to tamper with it.
///
/// chain_pos 0: a delivery; 1: a delivery with parent, related span, trace id and idempotency
/// key; 2: a delivery, redacted by 3; 4..=8: deliveries.
struct Ledger {
    store: Arc<dyn Store>,
    raw: Raw,
    ids: Vec<Uuid>,
    _dir: tempfile::TempDir,
}

fn line(i: usize, extra: Value) -> Value {
    let mut v = json!({"who": "ana", "did": "confirmed delivery", "this": format!("delivery {i}"),
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask again", "if_not": "open incident", "status": "valid",
        "entity_type": "delivery", "visibility": "tenant"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

async fn add(s: &dyn Store, v: Value) -> Uuid {
    let d = Draft::from_value(v, &ana(), &[], Utc::now()).unwrap();
    let r = store::append(s, &ana(), vec![d]).await.unwrap();
    r.into_iter().next().unwrap().unwrap().id
}

impl Ledger {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate();
        let (store, raw): (Arc<dyn Store>, Raw) = match backend {
            Backend::Sqlite => {
                let s = SqliteStore::open_file(&dir.path().join("ledger.sqlite3"), key)
                    .await
                    .unwrap();
                let pool = s.pool().clone();
                (Arc::new(s), Raw::Sqlite(pool))
            }
            Backend::Postgres => {
                let url = testkit::pg::fresh_database().await;
                (
                    Arc::new(PgStore::connect(&url, key).await.unwrap()),
                    Raw::Postgres(url),
                )
            }
        };
        store::ensure_manifest(store.as_ref()).await.unwrap();
        let s = store.as_ref();
        let mut ids = vec![add(s, line(0, json!({}))).await];
        let first = ids[0];
        ids.push(
            add(
                s,
                line(
                    1,
                    json!({"parent_id": first, "related_to": [first], "trace_id": "trace-1",
                       "idempotency_key": "order-1"}),
                ),
            )
            .await,
        );
        ids.push(add(s, line(2, json!({}))).await);
        let redaction = s.redact(&ana(), ids[2], "asked to forget").await.unwrap();
        assert_eq!(redaction.chain_pos, 3);
        ids.push(redaction.id);
        for i in 4..9 {
            ids.push(add(s, line(i, json!({}))).await);
        }
        let l = Self {
            store,
            raw,
            ids,
            _dir: dir,
        };
        let report = l.verify().await;
        assert!(report.ok, "the untampered ledger must verify: {report:#?}");
        l
    }

    /// Runs `sql` behind the application's back; `{t}` is the schema prefix. Returns the rows
    /// it changed.
    async fn tamper(&self, sql: &str) -> u64 {
        match &self.raw {
            Raw::Sqlite(pool) => {
                for trigger in [
                    "spans_no_update",
                    "spans_no_delete",
                    "bodies_no_update",
                    "bodies_delete_only_redacted",
                    "redactions_no_update",
                    "redactions_no_delete",
                    "idempotency_no_update",
                    "idempotency_no_delete",
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS {trigger}"
                    )))
                    .execute(pool)
                    .await
                    .unwrap();
                }
                sqlx::query(sqlx::AssertSqlSafe(sql.replace("{t}", "")))
                    .execute(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .rows_affected()
            }
            Raw::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query("SET session_replication_role = replica")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.replace("{t}", "ledger.")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .rows_affected();
                conn.close().await.unwrap();
                n
            }
        }
    }

    async fn verify(&self) -> TenantReport {
        let trusted = store::trusted_keys(self.store.as_ref()).await.unwrap();
        verify_tenant(self.store.as_ref(), TENANT, &trusted)
            .await
            .unwrap()
    }

    /// Verifies, expecting a problem of `kind` in `table.column` at `pos`; returns it.
    async fn expect(
        &self,
        what: &str,
        kind: ProblemKind,
        table: &str,
        column: Option<&str>,
        pos: Option<i64>,
    ) -> Problem {
        let report = self.verify().await;
        assert!(!report.ok, "{what}: verify passed the tampered ledger");
        assert_eq!(report.problem_count, report.problems.len());
        report
            .problems
            .iter()
            .find(|p| {
                p.kind == kind && p.table == table && p.column == column && p.chain_pos == pos
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!("{what}: no {kind:?} in {table}.{column:?} at {pos:?}: {report:#?}")
            })
    }
}

/// Each column of `spans` that reads, filters or streams use, changed at chain_pos 1.
async fn every_tampered_span_column_is_named(backend: Backend) {
    let cases = [
        ("status", "'void'", "valid", "void"),
        (
            "at",
            "'2001-01-01T00:00:00.000000Z'",
            "2026-11-20T10:00:00.000000Z",
            "2001-01-01T00:00:00.000000Z",
        ),
        (
            "recorded_at",
            "'2001-01-01T00:00:00.000000Z'",
            "",
            "2001-01-01T00:00:00.000000Z",
        ),
        ("related_to", "'[]'", "", "[]"),
        ("trace_id", "'trace-2'", "trace-1", "trace-2"),
        ("parent_id", "NULL", "", "NULL"),
        ("idempotency_key", "'order-2'", "order-1", "order-2"),
        ("entity_type", "'contract'", "delivery", "contract"),
        ("owner_id", "'bob'", "ana", "bob"),
        ("visibility", "'public'", "tenant", "public"),
        ("seq", "5", "0", "5"),
        (
            "id",
            "'00000000-0000-4000-8000-000000000000'",
            "",
            "00000000-0000-4000-8000-000000000000",
        ),
    ];
    for (column, value, signed, stored) in cases {
        let l = Ledger::new(backend).await;
        let n = l
            .tamper(&format!(
                "UPDATE {{t}}spans SET {column} = {value} WHERE tenant_id = 'bakery' AND chain_pos = 1"
            ))
            .await;
        assert_eq!(n, 1, "{column}");
        let p = l
            .expect(
                column,
                ProblemKind::ColumnMismatch,
                "spans",
                Some(column),
                Some(1),
            )
            .await;
        assert_eq!(p.span_id, Some(l.ids[1]), "{column}");
        assert_eq!(p.stored.as_deref(), Some(stored), "{column}");
        if !signed.is_empty() {
            assert_eq!(p.signed.as_deref(), Some(signed), "{column}");
        }
    }
    // The example of the issue: the status column is what `query --status` reads.
    let l = Ledger::new(backend).await;
    l.tamper("UPDATE {t}spans SET status = 'void' WHERE tenant_id = 'bakery' AND chain_pos = 4")
        .await;
    let page = l
        .store
        .query(
            &ana(),
            &Filter {
                status: Some("void".into()),
                ..Filter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 1, "the filter reads the column");
    let p = l
        .expect(
            "status",
            ProblemKind::ColumnMismatch,
            "spans",
            Some("status"),
            Some(4),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[4]));
}

/// Each indexed column of `span_bodies`, changed for chain_pos 1.
async fn every_tampered_body_column_is_named(backend: Backend) {
    let mut cases = vec![
        ("who", "'mallory'", "ana"),
        ("did", "'denied delivery'", "confirmed delivery"),
        ("this", "NULL", "delivery 1"),
        ("tenant_id", "'studio'", "bakery"),
    ];
    if backend == Backend::Postgres {
        cases.push(("owner_id", "'bob'", "ana"));
        cases.push(("visibility", "'public'", "tenant"));
    }
    for (column, value, signed) in cases {
        let l = Ledger::new(backend).await;
        let n = l
            .tamper(&format!(
                "UPDATE {{t}}span_bodies SET {column} = {value} WHERE id = '{}'",
                l.ids[1]
            ))
            .await;
        assert_eq!(n, 1, "{column}");
        let p = l
            .expect(
                column,
                ProblemKind::ColumnMismatch,
                "span_bodies",
                Some(column),
                Some(1),
            )
            .await;
        assert_eq!(p.span_id, Some(l.ids[1]), "{column}");
        assert_eq!(p.signed.as_deref(), Some(signed), "{column}");
    }
    // The body itself.
    let l = Ledger::new(backend).await;
    l.tamper(&format!(
        "UPDATE {{t}}span_bodies SET body = replace(body, 'receipt', 'refund') WHERE id = '{}'",
        l.ids[5]
    ))
    .await;
    let p = l
        .expect(
            "body",
            ProblemKind::BodyAltered,
            "span_bodies",
            Some("body"),
            Some(5),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[5]));
}

/// A `redactions` row and a deleted body, with no redaction span: reads show the content as
/// missing with a warning, never as redacted, and verify names the forged row.
async fn a_forged_redaction_is_reported_and_not_honoured_by_reads(backend: Backend) {
    let l = Ledger::new(backend).await;
    let target = l.ids[5];
    let forged = Uuid::now_v7();
    let insert = match backend {
        Backend::Sqlite => format!(
            "INSERT INTO redactions (target_id, tenant_id, redaction_id, at) \
             VALUES ('{target}', 'bakery', '{forged}', '2026-11-20T10:00:00.000000Z')"
        ),
        Backend::Postgres => format!(
            "INSERT INTO ledger.redactions (target_id, tenant_id, visibility, redaction_id, at) \
             VALUES ('{target}', 'bakery', 'tenant', '{forged}', now())"
        ),
    };
    l.tamper(&insert).await;
    l.tamper(&format!(
        "DELETE FROM {{t}}span_bodies WHERE id = '{target}'"
    ))
    .await;
    let span = l.store.get(&ana(), target, None).await.unwrap().unwrap();
    assert_eq!(span.redacted_by, None, "a forged redaction is not honoured");
    let view = span.to_view().unwrap();
    assert_eq!(view["content"], json!({"missing": true}), "{view}");
    assert!(view.get("redacted").is_none(), "{view}");
    assert!(view["integrity_warning"].is_string(), "{view}");
    let p = l
        .expect(
            "forged",
            ProblemKind::ForgedRedaction,
            "redactions",
            Some("redaction_id"),
            Some(5),
        )
        .await;
    assert_eq!(p.span_id, Some(target));

    // Pointing the row at a real redaction span of another target does not make it valid.
    let l = Ledger::new(backend).await;
    let real = l.ids[3];
    let insert = match backend {
        Backend::Sqlite => format!(
            "INSERT INTO redactions (target_id, tenant_id, redaction_id, at) \
             VALUES ('{}', 'bakery', '{real}', '2026-11-20T10:00:00.000000Z')",
            l.ids[6]
        ),
        Backend::Postgres => format!(
            "INSERT INTO ledger.redactions (target_id, tenant_id, visibility, redaction_id, at) \
             VALUES ('{}', 'bakery', 'tenant', '{real}', now())",
            l.ids[6]
        ),
    };
    l.tamper(&insert).await;
    let span = l.store.get(&ana(), l.ids[6], None).await.unwrap().unwrap();
    assert_eq!(span.redacted_by, None);
    assert_eq!(span.to_view().unwrap()["this"], json!("delivery 6"));
    l.expect(
        "reused",
        ProblemKind::ForgedRedaction,
        "redactions",
        Some("redaction_id"),
        Some(6),
    )
    .await;
}

/// A body deleted without any redaction: missing for readers, named by verify.
async fn a_deleted_body_reads_as_missing_and_is_reported(backend: Backend) {
    let l = Ledger::new(backend).await;
    l.tamper(&format!(
        "DELETE FROM {{t}}span_bodies WHERE id = '{}'",
        l.ids[7]
    ))
    .await;
    let view = l
        .store
        .get(&ana(), l.ids[7], None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    assert_eq!(view["content"], json!({"missing": true}));
    let p = l
        .expect(
            "body",
            ProblemKind::BodyMissing,
            "span_bodies",
            Some("body"),
            Some(7),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[7]));
}

async fn a_span_deleted_from_the_middle_is_reported_by_position(backend: Backend) {
    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}spans WHERE tenant_id = 'bakery' AND chain_pos = 5")
        .await;
    let report = l.verify().await;
    let p = l
        .expect("hole", ProblemKind::MissingSpans, "spans", None, Some(5))
        .await;
    assert_eq!(p.span_id, None);
    // The hole explains the next link: it is not reported twice.
    assert!(
        !report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::BrokenLink),
        "{report:#?}"
    );
    assert_eq!(report.spans, 8, "the spans after the hole are checked too");
}

/// Cutting the tail: with the head untouched, with `next_pos` rolled back, with both head
/// columns rolled back (caught here by the orphaned idempotency key), and rows left beyond a
/// rolled-back head.
async fn a_cut_tail_is_reported_with_or_without_a_rolled_back_head(backend: Backend) {
    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}spans WHERE tenant_id = 'bakery' AND chain_pos >= 7")
        .await;
    l.expect(
        "no rollback",
        ProblemKind::MissingSpans,
        "spans",
        None,
        Some(7),
    )
    .await;
    l.expect(
        "no rollback",
        ProblemKind::ChainHead,
        "chain_heads",
        Some("next_pos"),
        None,
    )
    .await;

    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}spans WHERE tenant_id = 'bakery' AND chain_pos >= 7")
        .await;
    l.tamper("UPDATE {t}chain_heads SET next_pos = 7 WHERE tenant_id = 'bakery'")
        .await;
    l.expect(
        "next_pos rolled back",
        ProblemKind::ChainHead,
        "chain_heads",
        Some("last_hash"),
        None,
    )
    .await;

    // A consistent rollback of both head columns leaves nothing in the rows to contradict it
    // except what the cut spans left elsewhere: here the idempotency key of chain_pos 1.
    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}spans WHERE tenant_id = 'bakery' AND chain_pos >= 1")
        .await;
    l.tamper(
        "UPDATE {t}chain_heads SET next_pos = 1, last_hash = (SELECT curr_hash FROM {t}spans \
         WHERE tenant_id = 'bakery' AND chain_pos = 0) WHERE tenant_id = 'bakery'",
    )
    .await;
    let p = l
        .expect(
            "consistent rollback",
            ProblemKind::Idempotency,
            "idempotency",
            Some("chain_pos"),
            Some(1),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[1]));

    let l = Ledger::new(backend).await;
    l.tamper("UPDATE {t}chain_heads SET next_pos = 7 WHERE tenant_id = 'bakery'")
        .await;
    l.expect(
        "rows beyond",
        ProblemKind::ChainHead,
        "chain_heads",
        Some("next_pos"),
        None,
    )
    .await;
}

async fn a_changed_or_deleted_chain_head_is_reported(backend: Backend) {
    let l = Ledger::new(backend).await;
    l.tamper(
        "UPDATE {t}chain_heads SET last_hash = \
         'blake3:1111111111111111111111111111111111111111111111111111111111111111' \
         WHERE tenant_id = 'bakery'",
    )
    .await;
    let p = l
        .expect(
            "last_hash",
            ProblemKind::ChainHead,
            "chain_heads",
            Some("last_hash"),
            None,
        )
        .await;
    assert!(p.stored.unwrap().starts_with("blake3:1111"));

    // Without its head row the tenant is still found and verified.
    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}chain_heads WHERE tenant_id = 'bakery'")
        .await;
    assert!(
        l.store
            .audit_tenants()
            .await
            .unwrap()
            .contains(&TENANT.to_string())
    );
    l.expect(
        "deleted head",
        ProblemKind::ChainHead,
        "chain_heads",
        Some("next_pos"),
        None,
    )
    .await;
}

async fn a_tampered_idempotency_row_is_reported(backend: Backend) {
    let cases = [
        ("chain_pos", "0"),
        ("curr_hash", "'blake3:00'"),
        ("status", "'void'"),
        ("seq", "3"),
    ];
    for (column, value) in cases {
        let l = Ledger::new(backend).await;
        let n = l
            .tamper(&format!(
                "UPDATE {{t}}idempotency SET {column} = {value} WHERE tenant_id = 'bakery' AND key = 'order-1'"
            ))
            .await;
        assert_eq!(n, 1);
        let report = l.verify().await;
        assert!(!report.ok, "{column}");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::Idempotency
                    && p.table == "idempotency"
                    && p.span_id == Some(l.ids[1])),
            "{column}: {report:#?}"
        );
    }
    let l = Ledger::new(backend).await;
    l.tamper("DELETE FROM {t}idempotency WHERE tenant_id = 'bakery' AND key = 'order-1'")
        .await;
    let p = l
        .expect(
            "deleted",
            ProblemKind::Idempotency,
            "idempotency",
            Some("key"),
            Some(1),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[1]));
}

async fn flipped_hash_and_signature_bytes_are_reported(backend: Backend) {
    // substr is 1-based on both stores: flip the last hex digit.
    let flip = |col: &str| {
        format!(
            "UPDATE {{t}}spans SET {col} = substr({col}, 1, length({col}) - 1) || \
             CASE WHEN substr({col}, length({col}), 1) = '0' THEN '1' ELSE '0' END \
             WHERE tenant_id = 'bakery' AND chain_pos = 4"
        )
    };
    let l = Ledger::new(backend).await;
    l.tamper(&flip("signature")).await;
    let p = l
        .expect(
            "signature",
            ProblemKind::BadSignature,
            "spans",
            Some("signature"),
            Some(4),
        )
        .await;
    assert_eq!(p.span_id, Some(l.ids[4]));

    let l = Ledger::new(backend).await;
    l.tamper(&flip("curr_hash")).await;
    l.expect(
        "curr_hash",
        ProblemKind::EnvelopeAltered,
        "spans",
        Some("envelope"),
        Some(4),
    )
    .await;
    l.expect(
        "curr_hash",
        ProblemKind::BrokenLink,
        "spans",
        Some("prev_hash"),
        Some(5),
    )
    .await;

    let l = Ledger::new(backend).await;
    l.tamper(
        "UPDATE {t}spans SET envelope = replace(envelope, 'delivery', 'contract') \
         WHERE tenant_id = 'bakery' AND chain_pos = 4",
    )
    .await;
    l.expect(
        "envelope",
        ProblemKind::EnvelopeAltered,
        "spans",
        Some("envelope"),
        Some(4),
    )
    .await;
}

/// Real redactions, repeated versions and idempotency keys verify, and read as redacted.
async fn an_untampered_ledger_with_redactions_verifies(backend: Backend) {
    let l = Ledger::new(backend).await;
    let s = l.store.as_ref();
    let again = s.redact(&ana(), l.ids[8], "second").await.unwrap();
    let report = l.verify().await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.spans, 10);
    assert!(report.problems.is_empty());
    let span = s.get(&ana(), l.ids[8], None).await.unwrap().unwrap();
    assert_eq!(span.redacted_by, Some(again.id));
    let view = span.to_view().unwrap();
    assert_eq!(view["content"], json!({"redacted": true}));
    assert!(view.get("integrity_warning").is_none());
    let page = s.query(&ana(), &Filter::default()).await.unwrap();
    let redacted: Vec<Uuid> = page
        .rows
        .iter()
        .filter_map(|r| r.span.redacted_by.map(|_| r.span.to_view().unwrap()))
        .filter_map(|v| v["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()))
        .collect();
    assert_eq!(redacted, vec![l.ids[2], l.ids[8]]);
}

testkit::both_stores!(
    every_tampered_span_column_is_named,
    every_tampered_body_column_is_named,
    a_forged_redaction_is_reported_and_not_honoured_by_reads,
    a_deleted_body_reads_as_missing_and_is_reported,
    a_span_deleted_from_the_middle_is_reported_by_position,
    a_cut_tail_is_reported_with_or_without_a_rolled_back_head,
    a_changed_or_deleted_chain_head_is_reported,
    a_tampered_idempotency_row_is_reported,
    flipped_hash_and_signature_bytes_are_reported,
    an_untampered_ledger_with_redactions_verifies,
);
