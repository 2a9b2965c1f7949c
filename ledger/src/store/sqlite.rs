//! The embedded store: one SQLite file, created on first use. Writers serialise on
//! `BEGIN IMMEDIATE` (also across processes); readers get the visibility predicate in SQL.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use super::{AppendResults, Store, redaction_draft};
use crate::crypto::{GENESIS_HASH, NodeKey};
use crate::error::StoreError;
use crate::plan::{self, ChainHead, IdHead, Known, Plan};
use crate::query::{Filter, Order, Page, Row as PageRow, TailRow};
use crate::span::{Appended, Draft, Principal, StoredSpan, Visibility, format_time};
use crate::spec::{
    CmpOp, Condition, Field, Output, QuerySpec, SPEC_GRACE, Scalar, SpecResult, Test,
    sqlite_json_path, timed_out,
};
use crate::verify::AuditRow;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql/sqlite");

/// Rows per multi-row INSERT, well under SQLite's bound-parameter limit.
const INSERT_CHUNK: usize = 500;

pub struct SqliteStore {
    pool: SqlitePool,
    key: NodeKey,
}

const TAIL_SELECT: &str = "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature, r.redaction_id, \
     s.tenant_id, s.owner_id, s.visibility \
     FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq \
     LEFT JOIN redactions r ON r.target_id = s.id WHERE ";

impl SqliteStore {
    async fn tail_rows(&self, mut qb: QueryBuilder<Sqlite>) -> Result<Vec<TailRow>, StoreError> {
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let row = to_row(r)?;
                Ok(TailRow {
                    ingest_id: row.ingest_id,
                    tenant_id: r.get(6),
                    owner_id: r.get(7),
                    visibility: r.get(8),
                    span: row.span,
                })
            })
            .collect()
    }

    pub async fn open_file(path: &Path, key: NodeKey) -> Result<Self, StoreError> {
        // Processes opening a fresh file at the same moment must not both apply the migrations:
        // hold an exclusive lock on a sidecar file while migrating.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("sqlite3.lock"))?;
        lock.lock()?;
        let opts = SqliteConnectOptions::new().filename(path);
        let store = Self::open_with(opts, key).await;
        lock.unlock()?;
        store
    }

    pub async fn open_url(url: &str, key: NodeKey) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?;
        Self::open_with(opts, key).await
    }

    async fn open_with(opts: SqliteConnectOptions, key: NodeKey) -> Result<Self, StoreError> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged span survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            // Deleted content (redacted bodies) is overwritten with zeros, not left in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, key })
    }

    /// The pool, for tests that must act behind the application's back.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn append_in(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        principal: &Principal,
        drafts: &[Draft],
    ) -> Result<AppendResults, StoreError> {
        let tenant = principal.tenant_id.as_str();
        let head = sqlx::query("SELECT next_pos, last_hash FROM chain_heads WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| ChainHead {
                next_pos: r.get(0),
                last_hash: r.get(1),
            })
            .unwrap_or(ChainHead {
                next_pos: 0,
                last_hash: GENESIS_HASH.to_string(),
            });

        let keys: Vec<&str> = drafts
            .iter()
            .filter_map(|d| d.idempotency_key.as_deref())
            .collect();
        let mut prior = HashMap::new();
        for chunk in keys.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT key, id, seq, chain_pos, curr_hash, status FROM idempotency WHERE tenant_id = ",
            );
            qb.push_bind(tenant).push(" AND key IN (");
            let mut sep = qb.separated(", ");
            for k in chunk {
                sep.push_bind(*k);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut **tx).await? {
                let id: String = r.get(1);
                prior.insert(
                    r.get::<String, _>(0),
                    Appended {
                        id: parse_uuid(&id)?,
                        seq: r.get(2),
                        chain_pos: r.get(3),
                        curr_hash: r.get(4),
                        status: r.get(5),
                        duplicate: true,
                    },
                );
            }
        }

        let ids: Vec<String> = drafts
            .iter()
            .filter_map(|d| d.id.map(|u| u.to_string()))
            .collect();
        let mut id_heads = HashMap::new();
        let mut foreign = HashSet::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT id, tenant_id, latest_seq, owner_id, visibility FROM id_heads WHERE id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut **tx).await? {
                let id = parse_uuid(&r.get::<String, _>(0))?;
                if r.get::<String, _>(1) != tenant {
                    foreign.insert(id);
                    continue;
                }
                id_heads.insert(
                    id,
                    IdHead {
                        latest_seq: r.get(2),
                        owner_id: r.get(3),
                        visibility: parse_visibility(&r.get::<String, _>(4))?,
                    },
                );
            }
        }

        let plan = plan::plan(
            principal,
            drafts,
            Known {
                head,
                prior,
                id_heads,
                foreign,
            },
            &self.key,
            Utc::now(),
        );
        self.persist(tx, tenant, &plan).await?;
        Ok(plan.results)
    }

    async fn persist(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        tenant: &str,
        plan: &Plan,
    ) -> Result<(), StoreError> {
        if plan.sealed.is_empty() {
            return Ok(());
        }
        for chunk in plan.sealed.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO spans (tenant_id, chain_pos, id, seq, entity_type, owner_id, visibility, at, \
                 recorded_at, status, parent_id, related_to, trace_id, idempotency_key, envelope, curr_hash, signature) ",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(s.tenant_id.clone())
                    .push_bind(s.chain_pos)
                    .push_bind(s.id.to_string())
                    .push_bind(s.seq)
                    .push_bind(s.entity_type.clone())
                    .push_bind(s.owner_id.clone())
                    .push_bind(s.visibility.as_str())
                    .push_bind(format_time(s.at))
                    .push_bind(format_time(s.recorded_at))
                    .push_bind(s.status.clone())
                    .push_bind(s.parent_id.map(|p| p.to_string()))
                    .push_bind(serde_json::to_string(&s.related_to).unwrap_or_else(|_| "[]".into()))
                    .push_bind(s.trace_id.clone())
                    .push_bind(s.idempotency_key.clone())
                    .push_bind(s.envelope.clone())
                    .push_bind(s.curr_hash.clone())
                    .push_bind(s.signature.clone());
            });
            qb.build().execute(&mut **tx).await?;

            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO span_bodies (id, seq, tenant_id, who, did, this, body) ",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(s.id.to_string())
                    .push_bind(s.seq)
                    .push_bind(s.tenant_id.clone())
                    .push_bind(s.who.clone())
                    .push_bind(s.did.clone())
                    .push_bind(s.this.clone())
                    .push_bind(s.body.clone());
            });
            qb.build().execute(&mut **tx).await?;

            let keyed: Vec<_> = chunk
                .iter()
                .filter(|s| s.idempotency_key.is_some())
                .collect();
            if !keyed.is_empty() {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO idempotency (tenant_id, key, id, seq, chain_pos, curr_hash, status) ",
                );
                qb.push_values(keyed, |mut b, s| {
                    b.push_bind(s.tenant_id.clone())
                        .push_bind(s.idempotency_key.clone())
                        .push_bind(s.id.to_string())
                        .push_bind(s.seq)
                        .push_bind(s.chain_pos)
                        .push_bind(s.curr_hash.clone())
                        .push_bind(s.status.clone());
                });
                qb.build().execute(&mut **tx).await?;
            }
        }
        let heads: Vec<_> = plan.id_heads.iter().collect();
        for chunk in heads.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO id_heads (id, tenant_id, latest_seq, owner_id, visibility) ",
            );
            qb.push_values(chunk, |mut b, (id, h)| {
                b.push_bind(id.to_string())
                    .push_bind(tenant.to_string())
                    .push_bind(h.latest_seq)
                    .push_bind(h.owner_id.clone())
                    .push_bind(h.visibility.as_str());
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET latest_seq = excluded.latest_seq, \
                 owner_id = excluded.owner_id, visibility = excluded.visibility",
            );
            qb.build().execute(&mut **tx).await?;
        }
        sqlx::query(
            "INSERT INTO chain_heads (tenant_id, next_pos, last_hash) VALUES (?, ?, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET next_pos = excluded.next_pos, last_hash = excluded.last_hash",
        )
        .bind(tenant)
        .bind(plan.head.next_pos)
        .bind(&plan.head.last_hash)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("id `{s}`: {e}")))
}

fn parse_visibility(s: &str) -> Result<Visibility, StoreError> {
    Visibility::parse(s).ok_or_else(|| StoreError::Corrupt(format!("visibility `{s}`")))
}

const SELECT_SPAN: &str = "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature, r.redaction_id \
     FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq \
     LEFT JOIN redactions r ON r.target_id = s.id WHERE ";

fn push_visible(qb: &mut QueryBuilder<Sqlite>, p: &Principal) {
    qb.push("(s.visibility = 'public' OR (s.tenant_id = ")
        .push_bind(p.tenant_id.clone())
        .push(" AND (s.visibility = 'tenant' OR s.owner_id = ")
        .push_bind(p.user_id.clone())
        .push(")))");
}

fn to_row(r: &sqlx::sqlite::SqliteRow) -> Result<PageRow, StoreError> {
    let redacted_by: Option<String> = r.get(5);
    Ok(PageRow {
        ingest_id: r.get(0),
        span: StoredSpan {
            envelope: r.get(1),
            body: r.get(2),
            curr_hash: r.get(3),
            signature: r.get(4),
            redacted_by: redacted_by.as_deref().map(parse_uuid).transpose()?,
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn node_key(&self) -> &NodeKey {
        &self.key
    }

    #[tracing::instrument(skip_all, fields(backend = "sqlite", batches = batches.len()))]
    async fn append_many(
        &self,
        batches: Vec<(Principal, Vec<Draft>)>,
    ) -> Result<Vec<AppendResults>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(batches.len());
        for (principal, drafts) in &batches {
            out.push(self.append_in(&mut tx, principal, drafts).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get(
        &self,
        principal: &Principal,
        id: Uuid,
        seq: Option<i64>,
    ) -> Result<Option<StoredSpan>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT_SPAN);
        push_visible(&mut qb, principal);
        qb.push(" AND s.id = ").push_bind(id.to_string());
        if let Some(seq) = seq {
            qb.push(" AND s.seq = ").push_bind(seq);
        }
        qb.push(" ORDER BY s.seq DESC LIMIT 1");
        match qb.build().fetch_optional(&self.pool).await? {
            None => Ok(None),
            Some(r) => Ok(Some(to_row(&r)?.span)),
        }
    }

    async fn versions(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Vec<StoredSpan>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT_SPAN);
        push_visible(&mut qb, principal);
        qb.push(" AND s.id = ").push_bind(id.to_string());
        qb.push(" ORDER BY s.seq ASC");
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| to_row(r).map(|r| r.span))
            .collect()
    }

    async fn query(&self, principal: &Principal, f: &Filter) -> Result<Page, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT_SPAN);
        push_visible(&mut qb, principal);
        if let Some(v) = f.id {
            qb.push(" AND s.id = ").push_bind(v.to_string());
        }
        if let Some(v) = &f.entity_type {
            qb.push(" AND s.entity_type = ").push_bind(v.clone());
        }
        if let Some(v) = &f.status {
            qb.push(" AND s.status = ").push_bind(v.clone());
        }
        if let Some(v) = &f.tenant_id {
            qb.push(" AND s.tenant_id = ").push_bind(v.clone());
        }
        if let Some(v) = &f.owner_id {
            qb.push(" AND s.owner_id = ").push_bind(v.clone());
        }
        if let Some(v) = &f.trace_id {
            qb.push(" AND s.trace_id = ").push_bind(v.clone());
        }
        if let Some(v) = &f.who {
            qb.push(" AND b.who = ").push_bind(v.clone());
        }
        if let Some(v) = &f.did {
            qb.push(" AND b.did = ").push_bind(v.clone());
        }
        if let Some(v) = &f.this {
            qb.push(" AND b.this = ").push_bind(v.clone());
        }
        if let Some(v) = f.since {
            qb.push(" AND s.at >= ").push_bind(format_time(v));
        }
        if let Some(v) = f.until {
            qb.push(" AND s.at < ").push_bind(format_time(v));
        }
        if let Some(v) = f.related_to {
            qb.push(" AND EXISTS (SELECT 1 FROM json_each(s.related_to) j WHERE j.value = ")
                .push_bind(v.to_string())
                .push(")");
        }
        if let Some(after) = f.after {
            match f.order {
                Order::Asc => qb.push(" AND s.ingest_id > ").push_bind(after),
                Order::Desc => qb.push(" AND s.ingest_id < ").push_bind(after),
            };
        }
        let limit = f.effective_limit();
        qb.push(match f.order {
            Order::Asc => " ORDER BY s.ingest_id ASC LIMIT ",
            Order::Desc => " ORDER BY s.ingest_id DESC LIMIT ",
        })
        .push_bind(limit + 1);
        let mut rows = qb
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(to_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| r.ingest_id)
        } else {
            None
        };
        Ok(Page { rows, next_cursor })
    }

    #[tracing::instrument(skip_all, fields(backend = "sqlite", user = %principal.user_id))]
    async fn query_spec(
        &self,
        principal: &Principal,
        spec: &QuerySpec,
    ) -> Result<SpecResult, StoreError> {
        // The progress handler interrupts the statement at the limit; the outer timeout also
        // bounds the wait for a connection.
        match tokio::time::timeout(spec.timeout() + SPEC_GRACE, self.run_spec(principal, spec))
            .await
        {
            Err(_) => Err(timed_out(spec.timeout())),
            Ok(result) => result,
        }
    }

    #[tracing::instrument(skip_all, fields(backend = "sqlite", %id))]
    async fn redact(
        &self,
        principal: &Principal,
        id: Uuid,
        reason: &str,
    ) -> Result<Appended, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT s.owner_id, s.visibility, (SELECT 1 FROM redactions r WHERE r.target_id = s.id) FROM spans s WHERE ",
        );
        push_visible(&mut qb, principal);
        qb.push(" AND s.id = ")
            .push_bind(id.to_string())
            .push(" ORDER BY s.seq DESC LIMIT 1");
        let row = qb
            .build()
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let owner: String = row.get(0);
        let visibility = parse_visibility(&row.get::<String, _>(1))?;
        if row.get::<Option<i64>, _>(2).is_some() {
            return Err(StoreError::AlreadyRedacted(id));
        }
        if owner != principal.user_id {
            return Err(StoreError::NotOwner(id));
        }
        let draft = redaction_draft(principal, id, visibility, reason)?;
        let appended = self
            .append_in(&mut tx, principal, &[draft])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("redaction produced no result".into()))??;
        sqlx::query(
            "INSERT INTO redactions (target_id, tenant_id, redaction_id, at) VALUES (?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(&principal.tenant_id)
        .bind(appended.id.to_string())
        .bind(format_time(Utc::now()))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM span_bodies WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // The write-ahead log still holds the old pages: fold it into the (zeroed) database
        // file and truncate it, so the erased content leaves the disk now. Readers holding old
        // snapshots can make this partial; the next checkpoint finishes it.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "checkpoint after redaction failed");
        }
        Ok(appended)
    }

    async fn tail(&self, after: i64, limit: i64) -> Result<Vec<TailRow>, StoreError> {
        let mut qb = QueryBuilder::new(TAIL_SELECT);
        qb.push("s.ingest_id > ")
            .push_bind(after)
            .push(" ORDER BY s.ingest_id LIMIT ")
            .push_bind(limit);
        self.tail_rows(qb).await
    }

    async fn tail_ids(&self, ids: &[i64]) -> Result<Vec<TailRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One bound JSON array instead of a variable number of placeholders.
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Config(e.to_string()))?;
        let mut qb = QueryBuilder::new(TAIL_SELECT);
        qb.push("s.ingest_id IN (SELECT value FROM json_each(")
            .push_bind(list)
            .push(")) ORDER BY s.ingest_id");
        self.tail_rows(qb).await
    }

    async fn last_ingest_id(&self) -> Result<i64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(ingest_id) FROM spans")
            .fetch_one(&self.pool)
            .await?;
        Ok(last.unwrap_or(0))
    }

    async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM chain_heads ORDER BY tenant_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn audit_page(
        &self,
        tenant: &str,
        from_pos: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.chain_pos, s.id, s.seq, s.entity_type, s.owner_id, s.visibility, s.envelope, b.body, \
             (SELECT 1 FROM redactions r WHERE r.target_id = s.id), s.curr_hash, s.signature \
             FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq \
             WHERE s.tenant_id = ? AND s.chain_pos >= ? ORDER BY s.chain_pos LIMIT ?",
        )
        .bind(tenant)
        .bind(from_pos)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    chain_pos: r.get(0),
                    id: parse_uuid(&r.get::<String, _>(1))?,
                    seq: r.get(2),
                    entity_type: r.get(3),
                    owner_id: r.get(4),
                    visibility: r.get(5),
                    envelope: r.get(6),
                    body: r.get(7),
                    redacted: r.get::<Option<i64>, _>(8).is_some(),
                    curr_hash: r.get(9),
                    signature: r.get(10),
                })
            })
            .collect()
    }
}

// ---- the model's `query_ledger` specs ------------------------------------------------------
//
// Everything pushed as SQL text below is a fixed fragment chosen by the spec's typed fields;
// every value is a bound parameter, and JSON paths are bound `$."key"…` strings built only from
// keys the spec grammar validated. Visibility is the same predicate `query` applies.

const SPEC_FROM: &str = " FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq \
     LEFT JOIN redactions r ON r.target_id = s.id WHERE ";

/// The text column behind a field, if it is one.
fn spec_column(field: &Field) -> Option<&'static str> {
    match field {
        Field::EntityType => Some("s.entity_type"),
        Field::Status => Some("s.status"),
        Field::OwnerId => Some("s.owner_id"),
        Field::Who => Some("b.who"),
        Field::Did => Some("b.did"),
        Field::This => Some("b.this"),
        Field::At | Field::Body(_) => None,
    }
}

/// Body fields vanish with redaction: conditions on them must never match a redacted span.
fn spec_guarded(field: &Field) -> bool {
    matches!(
        field,
        Field::Who | Field::Did | Field::This | Field::Body(_)
    )
}

/// `json_type(b.body, <path>)`: NULL when absent, 'null', 'text', 'integer', 'real', …
fn push_json_type(qb: &mut QueryBuilder<Sqlite>, keys: &[String]) {
    qb.push("json_type(b.body, ")
        .push_bind(sqlite_json_path(keys))
        .push(")");
}

fn push_json_value(qb: &mut QueryBuilder<Sqlite>, keys: &[String]) {
    qb.push("json_extract(b.body, ")
        .push_bind(sqlite_json_path(keys))
        .push(")");
}

/// The value at `keys` when its JSON type is one of `types` (a fixed SQL list), else NULL.
fn push_json_typed(qb: &mut QueryBuilder<Sqlite>, keys: &[String], types: &'static str) {
    qb.push("(CASE WHEN ");
    push_json_type(qb, keys);
    qb.push(" IN ").push(types).push(" THEN ");
    push_json_value(qb, keys);
    qb.push(" END)");
}

const TEXT: &str = "('text')";
const NUMBER: &str = "('integer', 'real')";

/// A comparison (possibly NULL when the field is absent or of another type). SQLite compares
/// text bytewise, as the PostgreSQL store does with `COLLATE "C"`.
fn push_spec_cmp(qb: &mut QueryBuilder<Sqlite>, field: &Field, op: CmpOp, value: &Scalar) {
    match (field, value) {
        (Field::At, Scalar::Time(t)) => {
            qb.push("(s.at")
                .push(op.sql())
                .push_bind(format_time(*t))
                .push(")");
        }
        (Field::Body(keys), Scalar::Text(v)) => {
            qb.push("(");
            push_json_typed(qb, keys, TEXT);
            qb.push(op.sql()).push_bind(v.clone()).push(")");
        }
        (Field::Body(keys), Scalar::Number(n)) => {
            qb.push("(");
            push_json_typed(qb, keys, NUMBER);
            qb.push(op.sql()).push_bind(*n).push(")");
        }
        (Field::Body(keys), Scalar::Bool(b)) => {
            qb.push("(");
            push_json_type(qb, keys);
            qb.push(op.sql()).push_bind(b.to_string()).push(")");
        }
        (f, Scalar::Text(v)) => match spec_column(f) {
            Some(col) => {
                qb.push("(")
                    .push(col)
                    .push(op.sql())
                    .push_bind(v.clone())
                    .push(")");
            }
            None => {
                qb.push("0");
            }
        },
        // Combinations validation rules out (numbers on text columns, …) match nothing.
        _ => {
            qb.push("0");
        }
    }
}

/// `x IN (one bound JSON array)`, so the statement has a fixed number of placeholders.
fn push_in_list(qb: &mut QueryBuilder<Sqlite>, list: Value) {
    qb.push(" IN (SELECT value FROM json_each(")
        .push_bind(list.to_string())
        .push("))");
}

fn push_spec_in(qb: &mut QueryBuilder<Sqlite>, field: &Field, values: &[Scalar]) {
    let pick = |f: &dyn Fn(&Scalar) -> Option<Value>| -> Vec<Value> {
        values.iter().filter_map(f).collect()
    };
    let texts = pick(&|v| match v {
        Scalar::Text(s) => Some(Value::String(s.clone())),
        _ => None,
    });
    let numbers = pick(&|v| match v {
        Scalar::Number(n) => serde_json::Number::from_f64(*n).map(Value::Number),
        _ => None,
    });
    let bools = pick(&|v| match v {
        Scalar::Bool(b) => Some(Value::String(b.to_string())),
        _ => None,
    });
    let times = pick(&|v| match v {
        Scalar::Time(t) => Some(Value::String(format_time(*t))),
        _ => None,
    });
    qb.push("(0");
    match field {
        Field::At => {
            if !times.is_empty() {
                qb.push(" OR s.at");
                push_in_list(qb, Value::Array(times));
            }
        }
        Field::Body(keys) => {
            if !texts.is_empty() {
                qb.push(" OR ");
                push_json_typed(qb, keys, TEXT);
                push_in_list(qb, Value::Array(texts));
            }
            if !numbers.is_empty() {
                qb.push(" OR ");
                push_json_typed(qb, keys, NUMBER);
                push_in_list(qb, Value::Array(numbers));
            }
            if !bools.is_empty() {
                qb.push(" OR ");
                push_json_type(qb, keys);
                push_in_list(qb, Value::Array(bools));
            }
        }
        f => {
            if let (Some(col), false) = (spec_column(f), texts.is_empty()) {
                qb.push(" OR ").push(col);
                push_in_list(qb, Value::Array(texts));
            }
        }
    }
    qb.push(")");
}

/// Whether the field is present (never NULL, so `NOT` of it is safe).
fn push_spec_present(qb: &mut QueryBuilder<Sqlite>, field: &Field) {
    match field {
        Field::Body(keys) => {
            qb.push("(COALESCE(");
            push_json_type(qb, keys);
            qb.push(", 'null') <> 'null')");
        }
        f => match spec_column(f) {
            Some(col) => {
                qb.push("(").push(col).push(" IS NOT NULL)");
            }
            None => {
                qb.push("1");
            }
        },
    }
}

fn push_spec_condition(qb: &mut QueryBuilder<Sqlite>, c: &Condition) {
    qb.push(" AND ");
    let guarded = spec_guarded(&c.field);
    if guarded {
        qb.push("(b.body IS NOT NULL AND r.redaction_id IS NULL AND ");
    }
    match &c.test {
        Test::Cmp(CmpOp::Ne, v) => {
            qb.push("NOT COALESCE(");
            push_spec_cmp(qb, &c.field, CmpOp::Eq, v);
            qb.push(", 0)");
        }
        Test::Cmp(op, v) => push_spec_cmp(qb, &c.field, *op, v),
        Test::In(vs) => push_spec_in(qb, &c.field, vs),
        Test::Contains(needle) => {
            // instr, not LIKE: the needle has no wildcards to escape.
            qb.push("COALESCE(instr(lower(");
            match &c.field {
                Field::Body(keys) => push_json_typed(qb, keys, TEXT),
                f => {
                    qb.push(spec_column(f).unwrap_or("NULL"));
                }
            }
            qb.push("), lower(")
                .push_bind(needle.clone())
                .push(")) > 0, 0)");
        }
        Test::Exists => push_spec_present(qb, &c.field),
        Test::Missing => {
            qb.push("NOT ");
            push_spec_present(qb, &c.field);
        }
    }
    if guarded {
        qb.push(")");
    }
}

fn push_spec_filters(qb: &mut QueryBuilder<Sqlite>, principal: &Principal, spec: &QuerySpec) {
    push_visible(qb, principal);
    if spec.latest_only() {
        // The newest version among those the principal may see, as `get` picks it.
        qb.push(
            " AND NOT EXISTS (SELECT 1 FROM spans s2 WHERE s2.id = s.id AND s2.seq > s.seq \
             AND (s2.visibility = 'public' OR (s2.tenant_id = ",
        )
        .push_bind(principal.tenant_id.clone())
        .push(" AND (s2.visibility = 'tenant' OR s2.owner_id = ")
        .push_bind(principal.user_id.clone())
        .push("))))");
    }
    for c in spec.conditions() {
        push_spec_condition(qb, c);
    }
}

/// The group key as JSON text (NULL when missing, null or redacted).
fn push_spec_group_key(qb: &mut QueryBuilder<Sqlite>, field: &Field) {
    match field {
        Field::Body(keys) => {
            qb.push("(CASE WHEN r.redaction_id IS NULL THEN NULLIF(b.body -> ")
                .push_bind(sqlite_json_path(keys))
                .push(", 'null') END)");
        }
        Field::At => {
            qb.push("json_quote(s.at)");
        }
        f => {
            let col = spec_column(f).unwrap_or("NULL");
            qb.push("(CASE WHEN ").push(col).push(" IS NOT NULL");
            if spec_guarded(f) {
                qb.push(" AND r.redaction_id IS NULL");
            }
            qb.push(" THEN json_quote(").push(col).push(") END)");
        }
    }
}

/// A version appended after its span was redacted still has a body row: never hand it out.
fn withheld(mut span: StoredSpan) -> StoredSpan {
    if span.redacted_by.is_some() {
        span.body = None;
    }
    span
}

/// Turns off a progress handler left on a pooled connection if the call is abandoned midway.
struct Disarm(Arc<AtomicBool>);

impl Drop for Disarm {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run_spec_on(
    conn: &mut SqliteConnection,
    principal: &Principal,
    spec: &QuerySpec,
) -> Result<SpecResult, StoreError> {
    match spec.output() {
        Output::Rows => {
            let mut qb = QueryBuilder::<Sqlite>::new(SELECT_SPAN);
            push_spec_filters(&mut qb, principal, spec);
            qb.push(match spec.order() {
                Order::Asc => " ORDER BY s.at ASC, s.id ASC, s.seq ASC LIMIT ",
                Order::Desc => " ORDER BY s.at DESC, s.id DESC, s.seq DESC LIMIT ",
            })
            .push_bind(spec.limit() + 1);
            let mut spans = qb
                .build()
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| to_row(r).map(|r| withheld(r.span)))
                .collect::<Result<Vec<_>, _>>()?;
            let truncated = spans.len() as i64 > spec.limit();
            spans.truncate(spec.limit() as usize);
            Ok(SpecResult::Rows { spans, truncated })
        }
        Output::Count => {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT count(*)");
            qb.push(SPEC_FROM);
            push_spec_filters(&mut qb, principal, spec);
            let n: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
            Ok(SpecResult::Count(n))
        }
        Output::Groups(field) => {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT g.k, g.n FROM (SELECT ");
            push_spec_group_key(&mut qb, field);
            qb.push(" AS k, count(*) AS n").push(SPEC_FROM);
            push_spec_filters(&mut qb, principal, spec);
            qb.push(" GROUP BY 1) g ORDER BY g.n DESC, (g.k IS NULL), g.k LIMIT ")
                .push_bind(spec.limit());
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let mut groups = Vec::with_capacity(rows.len());
            for r in &rows {
                let key: Option<String> = r.get(0);
                let key = match key {
                    None => Value::Null,
                    Some(k) => serde_json::from_str(&k)
                        .map_err(|e| StoreError::Corrupt(format!("group key `{k}`: {e}")))?,
                };
                groups.push((key, r.get::<i64, _>(1)));
            }
            Ok(SpecResult::Groups(groups))
        }
    }
}

impl SqliteStore {
    /// Runs a spec on one connection whose progress handler interrupts the statement at the
    /// deadline (SQLite has no statement timeout of its own).
    async fn run_spec(
        &self,
        principal: &Principal,
        spec: &QuerySpec,
    ) -> Result<SpecResult, StoreError> {
        let deadline = Instant::now() + spec.timeout();
        let mut conn = self.pool.acquire().await?;
        let armed = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&armed);
        conn.lock_handle()
            .await?
            .set_progress_handler(1000, move || {
                !(flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() >= deadline)
            });
        let disarm = Disarm(armed);
        let result = run_spec_on(&mut conn, principal, spec).await;
        conn.lock_handle().await?.remove_progress_handler();
        drop(disarm);
        match result {
            Err(StoreError::Database(_)) if Instant::now() >= deadline => {
                Err(timed_out(spec.timeout()))
            }
            other => other,
        }
    }
}
