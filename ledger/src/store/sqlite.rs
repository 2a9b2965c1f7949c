//! The embedded store: one SQLite file, created on first use. Writers serialise on
//! `BEGIN IMMEDIATE` (also across processes); readers get the visibility predicate in SQL.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use super::spec_sql::{self, Compiled, Dialect, List};
use super::tree::{self, Growth};
use super::{
    AppendResults, AuditHead, AuditRow, BodyColumns, IdempotencyAudit, RedactionRow, Store,
    honoured_redaction, idempotency_audit, redaction_columns, redaction_draft, redaction_join,
};
use crate::checkpoint::{self, CheckpointPolicy, Checkpointer, Tree, TreeHead, TreeRead};
use crate::crypto::{GENESIS_HASH, NodeKey};
use crate::error::StoreError;
use crate::merkle::{Frontier, NodeKey as TreeKey};
use crate::plan::{self, ChainHead, IdHead, Known, Plan};
use crate::query::{Filter, Order, Page, Row as PageRow, TailRow};
use crate::span::{Appended, Draft, Principal, StoredSpan, Visibility, format_time};
use crate::spec::{QuerySpec, SpecResult};

mod memory;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql/sqlite");

/// Rows per multi-row INSERT, well under SQLite's bound-parameter limit.
const INSERT_CHUNK: usize = 500;

pub struct SqliteStore {
    pool: SqlitePool,
    key: NodeKey,
    checkpoints: Checkpointer,
    /// Memory embeddings kept in memory for recall (see [`memory::VectorCache`]).
    vectors: memory::VectorCache,
}

const TAIL_SELECT: &str = concat!(
    "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature, s.tenant_id, s.owner_id, \
     s.visibility",
    redaction_columns!(),
    " FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq",
    redaction_join!(""),
    " WHERE "
);

impl SqliteStore {
    async fn tail_rows(&self, mut qb: QueryBuilder<Sqlite>) -> Result<Vec<TailRow>, StoreError> {
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let row = to_row(r)?;
                Ok(TailRow {
                    ingest_id: row.ingest_id,
                    tenant_id: r.get(5),
                    owner_id: r.get(6),
                    visibility: r.get(7),
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
            .pragma("secure_delete", "ON")
            // 16 MiB of page cache per connection (the default 2 MiB made every memory recall
            // re-read its scope index from the OS, page by page).
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            key,
            checkpoints: Checkpointer::new(CheckpointPolicy::default()),
            vectors: memory::VectorCache::default(),
        })
    }

    /// Sets how this store checkpoints (by default: a span every
    /// [`crate::checkpoint::DEFAULT_EVERY`] spans, no files).
    pub fn with_checkpoints(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoints = Checkpointer::new(policy);
        self
    }

    /// Reads the tenant's stored tree and catches it up with spans it has not seen yet (a
    /// ledger from before the tree existed, or appends made with the tree turned off).
    async fn load_tree(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        tenant: &str,
        next_pos: i64,
    ) -> Result<Growth, StoreError> {
        if let Some(f) = self
            .checkpoints
            .cached_frontier(tenant, next_pos.max(0) as u64)
        {
            return Ok(Growth::new(f));
        }
        let row = sqlx::query("SELECT size, peaks FROM merkle_heads WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?;
        let frontier = match row {
            None => Frontier::new(),
            Some(r) => Frontier::from_parts(r.get::<i64, _>(0).max(0) as u64, r.get(1))
                .map_err(StoreError::Corrupt)?,
        };
        tree::check_frontier(&frontier, next_pos, tenant)?;
        let mut growth = Growth::new(frontier);
        if (growth.size() as i64) < next_pos {
            let rows = sqlx::query(
                "SELECT chain_pos, curr_hash FROM spans WHERE tenant_id = ? AND chain_pos >= ? \
                 AND chain_pos < ? ORDER BY chain_pos",
            )
            .bind(tenant)
            .bind(growth.size() as i64)
            .bind(next_pos)
            .fetch_all(&mut **tx)
            .await?;
            for r in &rows {
                let pos: i64 = r.get(0);
                if pos != growth.size() as i64 {
                    return Err(StoreError::Corrupt(format!(
                        "tenant `{tenant}`: chain_pos {} is missing",
                        growth.size()
                    )));
                }
                growth.push_hashes([r.get::<&str, _>(1)])?;
            }
        }
        Ok(growth)
    }

    async fn save_tree(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        tenant: &str,
        growth: &Growth,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO merkle_heads (tenant_id, size, peaks) VALUES (?, ?, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET size = excluded.size, peaks = excluded.peaks",
        )
        .bind(tenant)
        .bind(growth.size() as i64)
        .bind(growth.frontier.peak_bytes())
        .execute(&mut **tx)
        .await?;
        for chunk in growth.nodes.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO merkle_nodes (tenant_id, level, idx, hash) ",
            );
            qb.push_values(chunk, |mut b, ((level, idx), hash)| {
                b.push_bind(tenant)
                    .push_bind(i64::from(*level))
                    .push_bind(*idx as i64)
                    .push_bind(hash.to_vec());
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Grows the tenant's tree by the plan's spans, appends a `checkpoint` span when one is
    /// due, and notes the new tree head for the checkpoint file.
    async fn grow(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        tenant: &str,
        old_next: i64,
        plan: &Plan,
        heads: &mut Vec<TreeHead>,
    ) -> Result<(), StoreError> {
        if plan.sealed.is_empty() || !self.checkpoints.policy.tree {
            return Ok(());
        }
        let mut growth = self.load_tree(tx, tenant, old_next).await?;
        let old = growth.size();
        let old_root = growth.frontier.root();
        growth.push_sealed(&plan.sealed)?;
        if tree::checkpoint_due(old, growth.size(), self.checkpoints.policy.every) {
            let cp = tree::checkpoint_plan(
                tenant,
                &self.key,
                plan.head.clone(),
                growth.size(),
                growth.frontier.root(),
            )?;
            self.persist(tx, tenant, &cp).await?;
            growth.push_sealed(&cp.sealed)?;
        }
        self.save_tree(tx, tenant, &growth).await?;
        self.checkpoints.cache_frontier(tenant, &growth.frontier);
        heads.push(TreeHead {
            tenant: tenant.to_string(),
            size: growth.size(),
            root: growth.frontier.root(),
            old_size: old,
            old_root,
        });
        Ok(())
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
        heads: &mut Vec<TreeHead>,
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
        let old_next = head.next_pos;

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
        self.grow(tx, tenant, old_next, &plan, heads).await?;
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

const SELECT_SPAN: &str = concat!(
    "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature",
    redaction_columns!(),
    " FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq",
    redaction_join!(""),
    " WHERE "
);

/// The rows of `alias` (a spans alias) that `p` may see: public, or in `p`'s tenant and either
/// tenant-visible or `p`'s own (the SQLite counterpart of PostgreSQL's RLS policy).
fn push_visible(qb: &mut QueryBuilder<Sqlite>, alias: &'static str, p: &Principal) {
    qb.push("(")
        .push(alias)
        .push(".visibility = 'public' OR (")
        .push(alias);
    qb.push(".tenant_id = ").push_bind(p.tenant_id.clone());
    qb.push(" AND (")
        .push(alias)
        .push(".visibility = 'tenant' OR ")
        .push(alias);
    qb.push(".owner_id = ")
        .push_bind(p.user_id.clone())
        .push(")))");
}

/// A span row (`ingest_id, envelope, body, curr_hash, signature` and [`redaction_columns`]).
fn to_row(r: &sqlx::sqlite::SqliteRow) -> Result<PageRow, StoreError> {
    let claim: Option<String> = r.try_get("redaction_id")?;
    let redacted_by = match claim.as_deref().map(parse_uuid).transpose()? {
        None => None,
        claim => {
            let target = parse_uuid(&r.try_get::<String, _>("target")?)?;
            let proof = [
                r.try_get("r_tenant")?,
                r.try_get("r_envelope")?,
                r.try_get("r_hash")?,
                r.try_get("r_signature")?,
            ];
            honoured_redaction(target, claim, &proof)
        }
    };
    Ok(PageRow {
        ingest_id: r.get(0),
        span: StoredSpan {
            envelope: r.get(1),
            body: r.get(2),
            curr_hash: r.get(3),
            signature: r.get(4),
            redacted_by,
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

    fn memory(&self) -> &dyn super::memory::MemoryIndex {
        self
    }

    #[tracing::instrument(skip_all, fields(backend = "sqlite", batches = batches.len()))]
    async fn append_many(
        &self,
        batches: Vec<(Principal, Vec<Draft>)>,
    ) -> Result<Vec<AppendResults>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(batches.len());
        let mut heads = Vec::new();
        for (principal, drafts) in &batches {
            out.push(
                self.append_in(&mut tx, principal, drafts, &mut heads)
                    .await?,
            );
        }
        tx.commit().await?;
        checkpoint::record(self, &self.key, &heads).await;
        Ok(out)
    }

    async fn get(
        &self,
        principal: &Principal,
        id: Uuid,
        seq: Option<i64>,
    ) -> Result<Option<StoredSpan>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT_SPAN);
        push_visible(&mut qb, "s", principal);
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
        push_visible(&mut qb, "s", principal);
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
        push_visible(&mut qb, "s", principal);
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
        spec_sql::bounded(spec, self.run_spec(principal, spec)).await
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
            "SELECT s.owner_id, s.visibility, (SELECT 1 FROM redactions r WHERE r.target_id = s.id), \
             s.tenant_id FROM spans s WHERE ",
        );
        push_visible(&mut qb, "s", principal);
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
        // Only the owner, in the span's own tenant: a public span of another tenant whose owner
        // has the same user id is not the caller's (its redaction would land in the wrong chain).
        if owner != principal.user_id || row.get::<String, _>(3) != principal.tenant_id {
            return Err(StoreError::NotOwner(id));
        }
        let draft = redaction_draft(principal, id, visibility, reason)?;
        let mut heads = Vec::new();
        let appended = self
            .append_in(&mut tx, principal, &[draft], &mut heads)
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
        // A forgotten memory's vector leaves this process's memory now, not at the next recall.
        self.vectors.evict(id);
        checkpoint::record(self, &self.key, &heads).await;
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
            "SELECT s.chain_pos, s.id, s.seq, s.entity_type, s.owner_id, s.visibility, s.at, \
             s.recorded_at, s.status, s.parent_id, s.related_to, s.trace_id, s.idempotency_key, \
             s.envelope, b.body, b.tenant_id, b.who, b.did, b.this, r.redaction_id, r.tenant_id, \
             s.curr_hash, s.signature \
             FROM spans s LEFT JOIN span_bodies b ON b.id = s.id AND b.seq = s.seq \
             LEFT JOIN redactions r ON r.target_id = s.id \
             WHERE s.tenant_id = ? AND s.chain_pos >= ? ORDER BY s.chain_pos LIMIT ?",
        )
        .bind(tenant)
        .bind(from_pos)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let body: Option<String> = r.try_get(14)?;
                let redaction_id: Option<String> = r.try_get(19)?;
                Ok(AuditRow {
                    chain_pos: r.try_get(0)?,
                    id: r.try_get(1)?,
                    seq: r.try_get(2)?,
                    entity_type: r.try_get(3)?,
                    owner_id: r.try_get(4)?,
                    visibility: r.try_get(5)?,
                    at: r.try_get(6)?,
                    recorded_at: r.try_get(7)?,
                    status: r.try_get(8)?,
                    parent_id: r.try_get(9)?,
                    related_to: r.try_get(10)?,
                    trace_id: r.try_get(11)?,
                    idempotency_key: r.try_get(12)?,
                    envelope: r.try_get(13)?,
                    body_columns: match body {
                        None => None,
                        Some(_) => Some(BodyColumns {
                            tenant_id: r.try_get(15)?,
                            owner_id: None,
                            visibility: None,
                            who: r.try_get(16)?,
                            did: r.try_get(17)?,
                            this: r.try_get(18)?,
                        }),
                    },
                    body,
                    redaction: match redaction_id {
                        None => None,
                        Some(redaction_id) => Some(RedactionRow {
                            redaction_id,
                            tenant_id: r.try_get(20)?,
                            visibility: None,
                        }),
                    },
                    curr_hash: r.try_get(21)?,
                    signature: r.try_get(22)?,
                })
            })
            .collect()
    }

    async fn audit_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT tenant_id FROM chain_heads UNION SELECT DISTINCT tenant_id FROM spans ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit_head(&self, tenant: &str) -> Result<AuditHead, StoreError> {
        let r = sqlx::query(
            "SELECT (SELECT next_pos FROM chain_heads WHERE tenant_id = ?1), \
             (SELECT last_hash FROM chain_heads WHERE tenant_id = ?1), \
             (SELECT max(chain_pos) FROM spans WHERE tenant_id = ?1)",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(AuditHead {
            next_pos: r.try_get(0)?,
            last_hash: r.try_get(1)?,
            max_pos: r.try_get(2)?,
        })
    }

    async fn audit_idempotency(&self, tenant: &str) -> Result<Vec<IdempotencyAudit>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.key, i.id, i.seq, i.chain_pos, i.curr_hash, i.status, \
             s.id, s.seq, s.curr_hash, s.status, s.idempotency_key \
             FROM idempotency i LEFT JOIN spans s ON s.tenant_id = i.tenant_id AND s.chain_pos = i.chain_pos \
             WHERE i.tenant_id = ? ORDER BY i.chain_pos",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(idempotency_audit)
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl Tree for SqliteStore {
    fn checkpointer(&self) -> &Checkpointer {
        &self.checkpoints
    }

    async fn tree_frontier(&self, tenant: &str) -> Result<Option<Frontier>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        frontier(&mut conn, tenant).await
    }

    async fn tree_read(
        &self,
        tenant: &str,
        stored: &[TreeKey],
        leaves: &[u64],
    ) -> Result<TreeRead, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let frontier = frontier(&mut conn, tenant).await?;
        let mut nodes = HashMap::new();
        for chunk in stored.chunks(INSERT_CHUNK / 3) {
            // Every OR term names the whole primary key, so SQLite looks each node up by the
            // key. Given `tenant_id = ? AND (… OR …)` with a proof's forty-odd terms, it scanned
            // every node of the tenant instead (50 ms per proof at a million spans).
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT level, idx, hash FROM merkle_nodes WHERE ");
            for (i, (level, idx)) in chunk.iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push("(tenant_id = ")
                    .push_bind(tenant)
                    .push(" AND level = ")
                    .push_bind(i64::from(*level))
                    .push(" AND idx = ")
                    .push_bind(*idx as i64)
                    .push(")");
            }
            for r in qb.build().fetch_all(&mut *conn).await? {
                let level: i64 = r.get(0);
                let idx: i64 = r.get(1);
                nodes.insert(
                    (level as u8, idx as u64),
                    super::stored_hash(r.get::<&[u8], _>(2))?,
                );
            }
        }
        let mut out = HashMap::new();
        for chunk in leaves.chunks(INSERT_CHUNK) {
            let list =
                serde_json::to_string(chunk).map_err(|e| StoreError::Config(e.to_string()))?;
            let rows = sqlx::query(
                "SELECT chain_pos, curr_hash FROM spans WHERE tenant_id = ? AND chain_pos IN \
                 (SELECT value FROM json_each(?))",
            )
            .bind(tenant)
            .bind(list)
            .fetch_all(&mut *conn)
            .await?;
            for r in rows {
                let pos: i64 = r.get(0);
                let leaf =
                    crate::merkle::span_leaf(r.get::<&str, _>(1)).map_err(StoreError::Corrupt)?;
                out.insert(pos as u64, leaf);
            }
        }
        Ok(TreeRead {
            frontier,
            nodes,
            leaves: out,
        })
    }
}

/// The tenant's stored frontier.
async fn frontier(
    conn: &mut sqlx::SqliteConnection,
    tenant: &str,
) -> Result<Option<Frontier>, StoreError> {
    let row = sqlx::query("SELECT size, peaks FROM merkle_heads WHERE tenant_id = ?")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        Frontier::from_parts(r.get::<i64, _>(0).max(0) as u64, r.get(1))
            .map_err(StoreError::Corrupt)
    })
    .transpose()
}

// ---- the model's `query_ledger` specs ------------------------------------------------------

/// SQLite's side of the one spec compiler (`spec_sql`). JSON paths are bound `$."key"…` strings
/// ([`json_path`]); visibility is the same predicate `query` applies.
impl Dialect for Sqlite {
    const SCHEMA: &'static str = "";
    const TRUE: &'static str = "1";
    const FALSE: &'static str = "0";
    const NULL_TEXT: &'static str = "NULL";
    /// SQLite compares text bytewise already.
    const BYTE_ORDER: &'static str = "";
    const POSITION: &'static str = "instr";
    const AT_AS_JSON: &'static str = "json_quote(s.at)";

    fn push_visible(qb: &mut QueryBuilder<Self>, alias: &'static str, principal: &Principal) {
        push_visible(qb, alias, principal);
    }

    /// The JSON functions read `b.body` directly.
    fn push_body_join(_qb: &mut QueryBuilder<Self>) {}

    fn push_json_text(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_typed(qb, keys, "('text')");
    }

    fn push_json_number(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_typed(qb, keys, "('integer', 'real')");
    }

    /// `json_type` names booleans `true` and `false`.
    fn push_json_bool(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_type(qb, keys);
    }

    fn push_json_present(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        qb.push("(COALESCE(");
        push_json_type(qb, keys);
        qb.push(", 'null') <> 'null')");
    }

    fn push_json_group_key(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        qb.push("NULLIF(b.body -> ")
            .push_bind(json_path(keys))
            .push(", 'null')");
    }

    fn push_json_quote(qb: &mut QueryBuilder<Self>, col: &'static str) {
        qb.push("json_quote(").push(col).push(")");
    }

    /// `x IN (one bound JSON array)`.
    fn push_in(qb: &mut QueryBuilder<Self>, list: List) {
        let list: Vec<Value> = match list {
            List::Texts(v) => v.into_iter().map(Value::String).collect(),
            List::Numbers(v) => v
                .into_iter()
                .filter_map(|n| serde_json::Number::from_f64(n).map(Value::Number))
                .collect(),
            List::Times(v) => v
                .into_iter()
                .map(|t| Value::String(format_time(t)))
                .collect(),
        };
        qb.push(" IN (SELECT value FROM json_each(")
            .push_bind(Value::Array(list).to_string())
            .push("))");
    }

    fn bind_text(qb: &mut QueryBuilder<Self>, v: String) {
        qb.push_bind(v);
    }

    fn bind_int(qb: &mut QueryBuilder<Self>, v: i64) {
        qb.push_bind(v);
    }

    fn bind_number(qb: &mut QueryBuilder<Self>, v: f64) {
        qb.push_bind(v);
    }

    /// `at` is stored as the ledger's fixed-width UTC text, which orders as time does.
    fn bind_time(qb: &mut QueryBuilder<Self>, v: DateTime<Utc>) {
        qb.push_bind(format_time(v));
    }
}

/// The `$."a"."b"` path SQLite's JSON functions take, built only from validated keys.
fn json_path(keys: &[String]) -> String {
    let mut p = String::from("$");
    for k in keys {
        p.push_str(".\"");
        p.push_str(k);
        p.push('"');
    }
    p
}

/// `json_type(b.body, <path>)`: NULL when absent, 'null', 'text', 'integer', 'real', …
fn push_json_type(qb: &mut QueryBuilder<Sqlite>, keys: &[String]) {
    qb.push("json_type(b.body, ")
        .push_bind(json_path(keys))
        .push(")");
}

/// The value at `keys` when its JSON type is one of `types` (a fixed SQL list), else NULL.
fn push_json_typed(qb: &mut QueryBuilder<Sqlite>, keys: &[String], types: &'static str) {
    qb.push("(CASE WHEN ");
    push_json_type(qb, keys);
    qb.push(" IN ")
        .push(types)
        .push(" THEN json_extract(b.body, ")
        .push_bind(json_path(keys))
        .push(") END)");
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
    Ok(match spec_sql::compile::<Sqlite>(spec, principal) {
        Compiled::Rows(mut qb) => {
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let spans = rows
                .iter()
                .map(|r| to_row(r).map(|r| r.span))
                .collect::<Result<Vec<_>, _>>()?;
            spec_sql::rows(spec, spans)
        }
        Compiled::Count(mut qb) => {
            SpecResult::Count(qb.build_query_scalar().fetch_one(&mut *conn).await?)
        }
        Compiled::Groups(mut qb) => {
            spec_sql::groups(qb.build_query_as().fetch_all(&mut *conn).await?)?
        }
    })
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
                Err(spec_sql::timed_out(spec.timeout()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_are_built_from_quoted_validated_keys() {
        assert_eq!(
            json_path(&["content".into(), "a_1".into()]),
            "$.\"content\".\"a_1\""
        );
    }
}
