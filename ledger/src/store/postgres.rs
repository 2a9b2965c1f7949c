//! The PostgreSQL store: every transaction runs as the non-superuser role `logline_app` with the
//! principal set locally, so row level security decides what each caller reads and writes.
//! A tenant's chain is extended under a row lock on its chain head, which keeps `chain_pos`
//! gapless and idempotency race-free across any number of processes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::spec_sql::{self, Compiled, Dialect, List};
use super::tree::{self, Growth, Pending, Trees};
use super::{
    AppendResults, AuditHead, AuditRow, BodyColumns, IdempotencyAudit, RedactionRow, Store,
    honoured_redaction, idempotency_audit, redaction_columns, redaction_draft, redaction_join,
};
use crate::checkpoint::{self, CheckpointPolicy, Checkpointer, Tree, TreeRead};
use crate::crypto::{GENESIS_HASH, NodeKey};
use crate::error::StoreError;
use crate::merkle::{Frontier, NodeKey as TreeKey};
use crate::plan::{self, ChainHead, IdHead, Known, Plan};
use crate::query::{Filter, Order, Page, Row as PageRow, TailRow};
use crate::span::{Appended, Draft, Principal, StoredSpan, Visibility, format_time};
use crate::spec::{QuerySpec, SpecResult};

mod memory;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql/postgres");

pub struct PgStore {
    pool: PgPool,
    key: NodeKey,
    checkpoints: Checkpointer,
}

type Tx = Transaction<'static, Postgres>;

/// How long a pooled connection may sit idle before it is pinged when handed out again.
const PING_IF_IDLE: Duration = Duration::from_secs(10);

const TAIL_SELECT: &str = concat!(
    "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature, s.tenant_id, s.owner_id, \
     s.visibility",
    redaction_columns!(),
    " FROM ledger.spans s LEFT JOIN ledger.span_bodies b ON b.id = s.id AND b.seq = s.seq",
    redaction_join!("ledger."),
    " WHERE "
);

impl PgStore {
    /// Runs a tail query (administrative: across tenants, as the auditor role).
    async fn tail_rows(&self, mut qb: QueryBuilder<Postgres>) -> Result<Vec<TailRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('role', 'logline_auditor', true)")
            .execute(&mut *tx)
            .await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| {
                let row = to_row(r);
                TailRow {
                    ingest_id: row.ingest_id,
                    tenant_id: r.get(5),
                    owner_id: r.get(6),
                    visibility: r.get(7),
                    span: row.span,
                }
            })
            .collect())
    }

    pub async fn connect(url: &str, key: NodeKey) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings every connection it hands out: a round trip per transaction (a proof
            // document is three of them). Only a connection idle for a while can have been
            // closed under us (a server restart, a proxy's idle timeout), so only it is pinged.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            key,
            checkpoints: Checkpointer::new(CheckpointPolicy::default()),
        })
    }

    /// Sets how this store checkpoints (by default: a span every
    /// [`crate::checkpoint::DEFAULT_EVERY`] spans, no files).
    pub fn with_checkpoints(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoints = Checkpointer::new(policy);
        self
    }

    /// Reads the tenant's stored tree and catches it up with spans it has not seen yet (a
    /// ledger from before the tree existed, or appends made with the tree turned off). The
    /// catch-up reads every span of the tenant, so it runs as the auditor and then acts as
    /// `principal` again.
    async fn load_tree(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        next_pos: i64,
    ) -> Result<Growth, StoreError> {
        let tenant = principal.tenant_id.as_str();
        if let Some(f) = self
            .checkpoints
            .cached_frontier(tenant, next_pos.max(0) as u64)
        {
            return Ok(Growth::new(f));
        }
        let row = sqlx::query("SELECT size, peaks FROM ledger.merkle_heads WHERE tenant_id = $1")
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
            sqlx::query("SELECT set_config('role', 'logline_auditor', true)")
                .execute(&mut **tx)
                .await?;
            let rows = sqlx::query(
                "SELECT chain_pos, curr_hash FROM ledger.spans WHERE tenant_id = $1 \
                 AND chain_pos >= $2 AND chain_pos < $3 ORDER BY chain_pos",
            )
            .bind(tenant)
            .bind(growth.size() as i64)
            .bind(next_pos)
            .fetch_all(&mut **tx)
            .await?;
            act_as(tx, principal).await?;
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

    /// Grows the tenant's pending tree by the plan's spans (loading it at the tenant's first
    /// batch of the transaction); [`PgStore::save_tree`] writes it after the last.
    async fn grow(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        old_next: i64,
        plan: &Plan,
        trees: &mut Trees,
    ) -> Result<(), StoreError> {
        if plan.sealed.is_empty() || !self.checkpoints.policy.tree {
            return Ok(());
        }
        let tenant = principal.tenant_id.as_str();
        if let Some(p) = trees.pending_for(tenant) {
            p.growth.push_sealed(&plan.sealed)?;
            p.head = plan.head.clone();
            return Ok(());
        }
        let growth = self.load_tree(tx, principal, old_next).await?;
        let mut pending = Pending::new(tenant, growth, plan.head.clone());
        pending.growth.push_sealed(&plan.sealed)?;
        trees.pending = Some(pending);
        Ok(())
    }

    /// Writes the pending tree, after a `checkpoint` span when one is due (appended as the
    /// node), and notes its head. Runs while the transaction still acts for that tenant (row
    /// level security checks the tree rows' tenant); leaves it acting as the node when a
    /// checkpoint was appended.
    async fn save_tree(&self, tx: &mut Tx, trees: &mut Trees) -> Result<(), StoreError> {
        let Some(mut p) = trees.pending.take() else {
            return Ok(());
        };
        let tenant = p.tenant.as_str();
        if p.checkpoint_due(self.checkpoints.policy.every) {
            let cp = tree::checkpoint_plan(
                tenant,
                &self.key,
                p.head.clone(),
                p.growth.size(),
                p.growth.frontier.root(),
            )?;
            act_as(tx, &tree::node_principal(tenant)).await?;
            persist(tx, tenant, &cp).await?;
            p.growth.push_sealed(&cp.sealed)?;
        }
        let nodes = &p.growth.nodes;
        // One statement for the head and the new nodes: a round trip per commit is what the
        // tree costs a single-span commit.
        sqlx::query(
            "WITH nodes AS (INSERT INTO ledger.merkle_nodes (tenant_id, level, idx, hash) \
             SELECT $1, * FROM UNNEST($4::smallint[], $5::bigint[], $6::bytea[])) \
             INSERT INTO ledger.merkle_heads (tenant_id, size, peaks) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET size = EXCLUDED.size, peaks = EXCLUDED.peaks",
        )
        .bind(tenant)
        .bind(p.growth.size() as i64)
        .bind(p.growth.frontier.peak_bytes())
        .bind(
            nodes
                .iter()
                .map(|((l, _), _)| i16::from(*l))
                .collect::<Vec<_>>(),
        )
        .bind(
            nodes
                .iter()
                .map(|((_, i), _)| *i as i64)
                .collect::<Vec<_>>(),
        )
        .bind(nodes.iter().map(|(_, h)| h.to_vec()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        self.checkpoints.cache_frontier(tenant, &p.growth.frontier);
        trees.heads.push(p.head());
        Ok(())
    }

    /// The pool (owner role), for tests that must act behind the application's back.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction as the auditor, who reads every chain (and writes nothing).
    async fn begin_auditor(&self) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('role', 'logline_auditor', true)")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Starts a transaction acting as `principal` under row level security.
    async fn begin_as(&self, principal: &Principal) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await?;
        act_as(&mut tx, principal).await?;
        Ok(tx)
    }

    async fn append_in(
        &self,
        tx: &mut Tx,
        principal: &Principal,
        drafts: &[Draft],
        trees: &mut Trees,
    ) -> Result<AppendResults, StoreError> {
        // Another tenant's tree is written while the transaction still acts for that tenant.
        if trees.other_than(&principal.tenant_id) {
            self.save_tree(tx, trees).await?;
        }
        act_as(tx, principal).await?;
        let tenant = principal.tenant_id.as_str();
        // Creating-or-touching the head row locks it until commit: the tenant's chain is ours.
        let r = sqlx::query(
            "INSERT INTO ledger.chain_heads (tenant_id, next_pos, last_hash) VALUES ($1, 0, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id \
             RETURNING next_pos, last_hash",
        )
        .bind(tenant)
        .bind(GENESIS_HASH)
        .fetch_one(&mut **tx)
        .await?;
        let head = ChainHead {
            next_pos: r.get(0),
            last_hash: r.get(1),
        };
        let old_next = head.next_pos;

        let keys: Vec<String> = drafts
            .iter()
            .filter_map(|d| d.idempotency_key.clone())
            .collect();
        let mut prior = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT key, id, seq, chain_pos, curr_hash, status FROM ledger.idempotency \
                 WHERE tenant_id = $1 AND key = ANY($2)",
            )
            .bind(tenant)
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                prior.insert(
                    r.get::<String, _>(0),
                    Appended {
                        id: r.get(1),
                        seq: r.get(2),
                        chain_pos: r.get(3),
                        curr_hash: r.get(4),
                        status: r.get(5),
                        duplicate: true,
                    },
                );
            }
        }

        let ids: Vec<Uuid> = drafts.iter().filter_map(|d| d.id).collect();
        let mut id_heads = HashMap::new();
        let mut foreign = HashSet::new();
        if !ids.is_empty() {
            let rows = sqlx::query(
                "SELECT id, latest_seq, owner_id, visibility FROM ledger.id_heads WHERE id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                id_heads.insert(
                    r.get::<Uuid, _>(0),
                    IdHead {
                        latest_seq: r.get(1),
                        owner_id: r.get(2),
                        visibility: parse_visibility(&r.get::<String, _>(3))?,
                    },
                );
            }
            // Ids we cannot see are new, or another tenant's: claiming them tells which, without
            // revealing anything about the other tenant.
            let unseen: Vec<Uuid> = ids
                .iter()
                .copied()
                .filter(|i| !id_heads.contains_key(i))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if !unseen.is_empty() {
                let claimed: HashSet<Uuid> = sqlx::query_scalar(
                    "INSERT INTO ledger.id_heads (id, tenant_id, latest_seq, owner_id, visibility) \
                     SELECT u, $2, -1, $3, 'private' FROM UNNEST($1::uuid[]) AS u \
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                )
                .bind(&unseen)
                .bind(tenant)
                .bind(&principal.user_id)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .collect();
                foreign.extend(unseen.into_iter().filter(|i| !claimed.contains(i)));
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
        persist(tx, tenant, &plan).await?;
        self.grow(tx, principal, old_next, &plan, trees).await?;
        Ok(plan.results)
    }
}

async fn act_as(tx: &mut Tx, principal: &Principal) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT set_config('role', 'logline_app', true), set_config('app.user_id', $1, true), \
         set_config('app.tenant_id', $2, true)",
    )
    .bind(&principal.user_id)
    .bind(&principal.tenant_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn persist(tx: &mut Tx, tenant: &str, plan: &Plan) -> Result<(), StoreError> {
    if plan.sealed.is_empty() {
        return Ok(());
    }
    let s = &plan.sealed;
    let col = |f: &dyn Fn(&crate::span::Sealed) -> String| s.iter().map(f).collect::<Vec<String>>();
    let opt = |f: &dyn Fn(&crate::span::Sealed) -> Option<String>| {
        s.iter().map(f).collect::<Vec<Option<String>>>()
    };
    let pos: Vec<i64> = s.iter().map(|x| x.chain_pos).collect();
    let ids: Vec<Uuid> = s.iter().map(|x| x.id).collect();
    let seqs: Vec<i64> = s.iter().map(|x| x.seq).collect();
    let at: Vec<DateTime<Utc>> = s.iter().map(|x| x.at).collect();
    let recorded: Vec<DateTime<Utc>> = s.iter().map(|x| x.recorded_at).collect();
    let parents: Vec<Option<Uuid>> = s.iter().map(|x| x.parent_id).collect();
    let tenants = col(&|x| x.tenant_id.clone());
    let owners = col(&|x| x.owner_id.clone());
    let vis = col(&|x| x.visibility.as_str().to_string());
    sqlx::query(
        "INSERT INTO ledger.spans (tenant_id, chain_pos, id, seq, entity_type, owner_id, visibility, at, \
         recorded_at, status, parent_id, related_to, trace_id, idempotency_key, envelope, curr_hash, signature) \
         SELECT t, p, i, q, e, o, v, a, r, st, pa, rel::jsonb, tr, ik, env, h, sg FROM UNNEST(\
         $1::text[], $2::bigint[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::text[], \
         $8::timestamptz[], $9::timestamptz[], $10::text[], $11::uuid[], $12::text[], $13::text[], \
         $14::text[], $15::text[], $16::text[], $17::text[]) \
         AS u(t, p, i, q, e, o, v, a, r, st, pa, rel, tr, ik, env, h, sg)",
    )
    .bind(&tenants)
    .bind(&pos)
    .bind(&ids)
    .bind(&seqs)
    .bind(col(&|x| x.entity_type.clone()))
    .bind(&owners)
    .bind(&vis)
    .bind(&at)
    .bind(&recorded)
    .bind(col(&|x| x.status.clone()))
    .bind(&parents)
    .bind(col(&|x| serde_json::to_string(&x.related_to).unwrap_or_else(|_| "[]".into())))
    .bind(opt(&|x| x.trace_id.clone()))
    .bind(opt(&|x| x.idempotency_key.clone()))
    .bind(col(&|x| x.envelope.clone()))
    .bind(col(&|x| x.curr_hash.clone()))
    .bind(col(&|x| x.signature.clone()))
    .execute(&mut **tx)
    .await?;

    sqlx::query(
        "INSERT INTO ledger.span_bodies (id, seq, tenant_id, owner_id, visibility, who, did, this, body) \
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[])",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&tenants)
    .bind(&owners)
    .bind(&vis)
    .bind(opt(&|x| x.who.clone()))
    .bind(opt(&|x| x.did.clone()))
    .bind(opt(&|x| x.this.clone()))
    .bind(col(&|x| x.body.clone()))
    .execute(&mut **tx)
    .await?;

    let keyed: Vec<&crate::span::Sealed> =
        s.iter().filter(|x| x.idempotency_key.is_some()).collect();
    if !keyed.is_empty() {
        sqlx::query(
            "INSERT INTO ledger.idempotency (tenant_id, key, id, seq, chain_pos, curr_hash, status) \
             SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])",
        )
        .bind(tenant)
        .bind(keyed.iter().map(|x| x.idempotency_key.clone().unwrap_or_default()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|x| x.id).collect::<Vec<_>>())
        .bind(keyed.iter().map(|x| x.seq).collect::<Vec<_>>())
        .bind(keyed.iter().map(|x| x.chain_pos).collect::<Vec<_>>())
        .bind(keyed.iter().map(|x| x.curr_hash.clone()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|x| x.status.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }

    let heads: Vec<(&Uuid, &IdHead)> = plan.id_heads.iter().collect();
    sqlx::query(
        "INSERT INTO ledger.id_heads (id, tenant_id, latest_seq, owner_id, visibility) \
         SELECT i, $2, q, o, v FROM UNNEST($1::uuid[], $3::bigint[], $4::text[], $5::text[]) AS u(i, q, o, v) \
         ON CONFLICT (id) DO UPDATE SET latest_seq = EXCLUDED.latest_seq, owner_id = EXCLUDED.owner_id, \
         visibility = EXCLUDED.visibility",
    )
    .bind(heads.iter().map(|(i, _)| **i).collect::<Vec<_>>())
    .bind(tenant)
    .bind(heads.iter().map(|(_, h)| h.latest_seq).collect::<Vec<_>>())
    .bind(heads.iter().map(|(_, h)| h.owner_id.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|(_, h)| h.visibility.as_str().to_string()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;

    sqlx::query("UPDATE ledger.chain_heads SET next_pos = $2, last_hash = $3 WHERE tenant_id = $1")
        .bind(tenant)
        .bind(plan.head.next_pos)
        .bind(&plan.head.last_hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn parse_visibility(s: &str) -> Result<Visibility, StoreError> {
    Visibility::parse(s).ok_or_else(|| StoreError::Corrupt(format!("visibility `{s}`")))
}

// RLS already limits rows to what the principal may see; the store adds no predicate of its own.
const SELECT_SPAN: &str = concat!(
    "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature",
    redaction_columns!(),
    " FROM ledger.spans s LEFT JOIN ledger.span_bodies b ON b.id = s.id AND b.seq = s.seq",
    redaction_join!("ledger."),
    " WHERE true"
);

/// A span row (`ingest_id, envelope, body, curr_hash, signature` and [`redaction_columns`]).
fn to_row(r: &PgRow) -> PageRow {
    let proof = [
        r.get("r_tenant"),
        r.get("r_envelope"),
        r.get("r_hash"),
        r.get("r_signature"),
    ];
    PageRow {
        ingest_id: r.get(0),
        span: StoredSpan {
            envelope: r.get(1),
            body: r.get(2),
            curr_hash: r.get(3),
            signature: r.get(4),
            redacted_by: honoured_redaction(r.get("target"), r.get("redaction_id"), &proof),
        },
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn node_key(&self) -> &NodeKey {
        &self.key
    }

    fn memory(&self) -> &dyn super::memory::MemoryIndex {
        self
    }

    #[tracing::instrument(skip_all, fields(backend = "postgres", batches = batches.len()))]
    async fn append_many(
        &self,
        batches: Vec<(Principal, Vec<Draft>)>,
    ) -> Result<Vec<AppendResults>, StoreError> {
        // Lock tenant chains in one global order so concurrent group commits cannot deadlock.
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by(|a, b| batches[*a].0.tenant_id.cmp(&batches[*b].0.tenant_id));
        let mut tx = self.pool.begin().await?;
        let mut out: Vec<AppendResults> = vec![Vec::new(); batches.len()];
        let mut trees = Trees::default();
        for i in order {
            let (principal, drafts) = &batches[i];
            out[i] = self
                .append_in(&mut tx, principal, drafts, &mut trees)
                .await?;
        }
        self.save_tree(&mut tx, &mut trees).await?;
        tx.commit().await?;
        checkpoint::record(self, &self.key, &trees.heads).await;
        Ok(out)
    }

    async fn get(
        &self,
        principal: &Principal,
        id: Uuid,
        seq: Option<i64>,
    ) -> Result<Option<StoredSpan>, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let mut qb = QueryBuilder::<Postgres>::new(SELECT_SPAN);
        qb.push(" AND s.id = ").push_bind(id);
        if let Some(seq) = seq {
            qb.push(" AND s.seq = ").push_bind(seq);
        }
        qb.push(" ORDER BY s.seq DESC LIMIT 1");
        let row = qb.build().fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(row.map(|r| to_row(&r).span))
    }

    async fn versions(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Vec<StoredSpan>, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let mut qb = QueryBuilder::<Postgres>::new(SELECT_SPAN);
        qb.push(" AND s.id = ")
            .push_bind(id)
            .push(" ORDER BY s.seq ASC");
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows.iter().map(|r| to_row(r).span).collect())
    }

    async fn query(&self, principal: &Principal, f: &Filter) -> Result<Page, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let mut qb = QueryBuilder::<Postgres>::new(SELECT_SPAN);
        if let Some(v) = f.id {
            qb.push(" AND s.id = ").push_bind(v);
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
            qb.push(" AND s.at >= ").push_bind(v);
        }
        if let Some(v) = f.until {
            qb.push(" AND s.at < ").push_bind(v);
        }
        if let Some(v) = f.related_to {
            qb.push(" AND s.related_to @> jsonb_build_array(")
                .push_bind(v.to_string())
                .push("::text)");
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
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut rows: Vec<PageRow> = rows.iter().map(to_row).collect();
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| r.ingest_id)
        } else {
            None
        };
        Ok(Page { rows, next_cursor })
    }

    #[tracing::instrument(skip_all, fields(backend = "postgres", user = %principal.user_id))]
    async fn query_spec(
        &self,
        principal: &Principal,
        spec: &QuerySpec,
    ) -> Result<SpecResult, StoreError> {
        // The database cancels the statement at the limit; the outer timeout also bounds the
        // wait for a connection.
        match spec_sql::bounded(spec, self.run_spec(principal, spec)).await {
            Err(StoreError::Database(e)) if is_statement_timeout(&e) => {
                Err(spec_sql::timed_out(spec.timeout()))
            }
            result => result,
        }
    }

    #[tracing::instrument(skip_all, fields(backend = "postgres", %id))]
    async fn redact(
        &self,
        principal: &Principal,
        id: Uuid,
        reason: &str,
    ) -> Result<Appended, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let row = sqlx::query(
            "SELECT s.owner_id, s.visibility, EXISTS (SELECT 1 FROM ledger.redactions r WHERE r.target_id = s.id), \
             s.tenant_id FROM ledger.spans s WHERE s.id = $1 ORDER BY s.seq DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound(id))?;
        let owner: String = row.get(0);
        let visibility = parse_visibility(&row.get::<String, _>(1))?;
        if row.get::<bool, _>(2) {
            return Err(StoreError::AlreadyRedacted(id));
        }
        // Only the owner, in the span's own tenant: a public span of another tenant whose owner
        // has the same user id is not the caller's (its redaction would land in the wrong chain).
        if owner != principal.user_id || row.get::<String, _>(3) != principal.tenant_id {
            return Err(StoreError::NotOwner(id));
        }
        let draft = redaction_draft(principal, id, visibility, reason)?;
        let mut trees = Trees::default();
        let appended = self
            .append_in(&mut tx, principal, &[draft], &mut trees)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("redaction produced no result".into()))??;
        sqlx::query(
            "INSERT INTO ledger.redactions (target_id, tenant_id, visibility, redaction_id, at) VALUES ($1, $2, $3, $4, now())",
        )
        .bind(id)
        .bind(&principal.tenant_id)
        .bind(visibility.as_str())
        .bind(appended.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM ledger.span_bodies WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.save_tree(&mut tx, &mut trees).await?;
        tx.commit().await?;
        checkpoint::record(self, &self.key, &trees.heads).await;
        Ok(appended)
    }

    fn watch_appends(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(mut l) => match l.listen("logline_spans").await {
                        Ok(()) => {
                            while l.recv().await.is_ok() {
                                wake.notify_one();
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "LISTEN logline_spans failed"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "append listener cannot connect; polling only")
                    }
                }
                // Notifications may have been missed while disconnected: wake once to re-read.
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
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
        let mut qb = QueryBuilder::new(TAIL_SELECT);
        qb.push("s.ingest_id = ANY(")
            .push_bind(ids.to_vec())
            .push(") ORDER BY s.ingest_id");
        self.tail_rows(qb).await
    }

    async fn last_ingest_id(&self) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('role', 'logline_auditor', true)")
            .execute(&mut *tx)
            .await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(ingest_id) FROM ledger.spans")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(last.unwrap_or(0))
    }

    async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('role', 'logline_auditor', true)")
            .execute(&mut *tx)
            .await?;
        let out = sqlx::query_scalar("SELECT tenant_id FROM ledger.chain_heads ORDER BY tenant_id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn audit_page(
        &self,
        tenant: &str,
        from_pos: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut tx = self.begin_auditor().await?;
        let rows = sqlx::query(
            "SELECT s.chain_pos, s.id::text, s.seq, s.entity_type, s.owner_id, s.visibility, s.at, \
             s.recorded_at, s.status, s.parent_id::text, s.related_to::text, s.trace_id, \
             s.idempotency_key, s.envelope, b.body, b.tenant_id, b.owner_id, b.visibility, b.who, \
             b.did, b.this, r.redaction_id::text, r.tenant_id, r.visibility, s.curr_hash, s.signature \
             FROM ledger.spans s LEFT JOIN ledger.span_bodies b ON b.id = s.id AND b.seq = s.seq \
             LEFT JOIN ledger.redactions r ON r.target_id = s.id \
             WHERE s.tenant_id = $1 AND s.chain_pos >= $2 ORDER BY s.chain_pos LIMIT $3",
        )
        .bind(tenant)
        .bind(from_pos)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let body: Option<String> = r.try_get(14)?;
                let redaction_id: Option<String> = r.try_get(21)?;
                Ok(AuditRow {
                    chain_pos: r.try_get(0)?,
                    id: r.try_get(1)?,
                    seq: r.try_get(2)?,
                    entity_type: r.try_get(3)?,
                    owner_id: r.try_get(4)?,
                    visibility: r.try_get(5)?,
                    at: format_time(r.try_get(6)?),
                    recorded_at: format_time(r.try_get(7)?),
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
                            owner_id: Some(r.try_get(16)?),
                            visibility: Some(r.try_get(17)?),
                            who: r.try_get(18)?,
                            did: r.try_get(19)?,
                            this: r.try_get(20)?,
                        }),
                    },
                    body,
                    redaction: match redaction_id {
                        None => None,
                        Some(redaction_id) => Some(RedactionRow {
                            redaction_id,
                            tenant_id: r.try_get(22)?,
                            visibility: Some(r.try_get(23)?),
                        }),
                    },
                    curr_hash: r.try_get(24)?,
                    signature: r.try_get(25)?,
                })
            })
            .collect()
    }

    async fn audit_tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_auditor().await?;
        let out = sqlx::query_scalar(
            "SELECT tenant_id FROM ledger.chain_heads UNION SELECT DISTINCT tenant_id FROM ledger.spans \
             ORDER BY 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn audit_head(&self, tenant: &str) -> Result<AuditHead, StoreError> {
        let mut tx = self.begin_auditor().await?;
        let r = sqlx::query(
            "SELECT (SELECT next_pos FROM ledger.chain_heads WHERE tenant_id = $1), \
             (SELECT last_hash FROM ledger.chain_heads WHERE tenant_id = $1), \
             (SELECT max(chain_pos) FROM ledger.spans WHERE tenant_id = $1)",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditHead {
            next_pos: r.try_get(0)?,
            last_hash: r.try_get(1)?,
            max_pos: r.try_get(2)?,
        })
    }

    async fn audit_idempotency(&self, tenant: &str) -> Result<Vec<IdempotencyAudit>, StoreError> {
        let mut tx = self.begin_auditor().await?;
        let rows = sqlx::query(
            "SELECT i.key, i.id::text, i.seq, i.chain_pos, i.curr_hash, i.status, \
             s.id::text, s.seq, s.curr_hash, s.status, s.idempotency_key \
             FROM ledger.idempotency i LEFT JOIN ledger.spans s \
             ON s.tenant_id = i.tenant_id AND s.chain_pos = i.chain_pos \
             WHERE i.tenant_id = $1 ORDER BY i.chain_pos",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(idempotency_audit)
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl Tree for PgStore {
    fn checkpointer(&self) -> &Checkpointer {
        &self.checkpoints
    }

    async fn tree_frontier(&self, tenant: &str) -> Result<Option<Frontier>, StoreError> {
        Ok(self.tree_read(tenant, &[], &[]).await?.frontier)
    }

    /// One statement: `ledger.tree_read` (migration 0016) reads as the auditor, without a
    /// transaction of our own around it.
    async fn tree_read(
        &self,
        tenant: &str,
        stored: &[TreeKey],
        leaves: &[u64],
    ) -> Result<TreeRead, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, level, idx, bytes, curr_hash FROM ledger.tree_read($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(
            stored
                .iter()
                .map(|(l, _)| i16::from(*l))
                .collect::<Vec<_>>(),
        )
        .bind(stored.iter().map(|(_, i)| *i as i64).collect::<Vec<_>>())
        .bind(leaves.iter().map(|p| *p as i64).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut read = TreeRead::default();
        for r in rows {
            let idx: i64 = r.get(2);
            match r.get::<i16, _>(0) {
                0 => {
                    read.frontier = Some(
                        Frontier::from_parts(idx.max(0) as u64, r.get(3))
                            .map_err(StoreError::Corrupt)?,
                    );
                }
                1 => {
                    let level: i16 = r.get(1);
                    read.nodes.insert(
                        (level as u8, idx as u64),
                        super::stored_hash(r.get::<&[u8], _>(3))?,
                    );
                }
                _ => {
                    let leaf = crate::merkle::span_leaf(r.get::<&str, _>(4))
                        .map_err(StoreError::Corrupt)?;
                    read.leaves.insert(idx as u64, leaf);
                }
            }
        }
        Ok(read)
    }
}

// ---- the model's `query_ledger` specs ------------------------------------------------------

/// PostgreSQL's side of the one spec compiler (`spec_sql`). JSON keys are bound as `text`
/// parameters of `->`; RLS decides visibility, as for `query`.
impl Dialect for Postgres {
    const SCHEMA: &'static str = "ledger.";
    const TRUE: &'static str = "true";
    const FALSE: &'static str = "false";
    const NULL_TEXT: &'static str = "NULL::text";
    const BYTE_ORDER: &'static str = " COLLATE \"C\"";
    const POSITION: &'static str = "strpos";
    const AT_AS_JSON: &'static str =
        "to_jsonb(to_char(s.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text";

    /// Row level security already limits every table to what the acting principal may see (the
    /// transaction runs as `logline_app` with the principal set), `s2` included.
    fn push_visible(qb: &mut QueryBuilder<Self>, _alias: &'static str, _principal: &Principal) {
        qb.push("true");
    }

    /// Parses the body once per row (`OFFSET 0` keeps the planner from inlining the parse into
    /// every reference).
    fn push_body_join(qb: &mut QueryBuilder<Self>) {
        qb.push(" CROSS JOIN LATERAL (SELECT b.body::jsonb AS j OFFSET 0) bj");
    }

    fn push_json_text(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_typed(qb, keys, "'string' THEN ", " #>> '{}' END)");
    }

    /// CASE keeps the cast from ever seeing text.
    fn push_json_number(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_typed(qb, keys, "'number' THEN (", " #>> '{}')::numeric END)");
    }

    fn push_json_bool(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        push_json_typed(qb, keys, "'boolean' THEN ", " #>> '{}' END)");
    }

    fn push_json_present(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        qb.push("(");
        push_json(qb, keys);
        qb.push(" #>> '{}' IS NOT NULL)");
    }

    fn push_json_group_key(qb: &mut QueryBuilder<Self>, keys: &[String]) {
        qb.push("NULLIF(");
        push_json(qb, keys);
        qb.push(", 'null'::jsonb)::text");
    }

    fn push_json_quote(qb: &mut QueryBuilder<Self>, col: &'static str) {
        qb.push("to_jsonb(").push(col).push(")::text");
    }

    fn push_in(qb: &mut QueryBuilder<Self>, list: List) {
        qb.push(" = ANY(");
        match list {
            List::Texts(v) => qb.push_bind(v).push("::text[])"),
            List::Numbers(v) => qb.push_bind(v).push("::numeric[])"),
            List::Times(v) => qb.push_bind(v).push("::timestamptz[])"),
        };
    }

    fn bind_text(qb: &mut QueryBuilder<Self>, v: String) {
        qb.push_bind(v);
    }

    fn bind_int(qb: &mut QueryBuilder<Self>, v: i64) {
        qb.push_bind(v);
    }

    fn bind_number(qb: &mut QueryBuilder<Self>, v: f64) {
        qb.push_bind(v).push("::numeric");
    }

    fn bind_time(qb: &mut QueryBuilder<Self>, v: DateTime<Utc>) {
        qb.push_bind(v);
    }
}

/// The jsonb at `keys` in the body (`->` with text keys: object members only, like SQLite).
fn push_json(qb: &mut QueryBuilder<Postgres>, keys: &[String]) {
    qb.push("(bj.j");
    for k in keys {
        qb.push(" -> ").push_bind(k.clone()).push("::text");
    }
    qb.push(")");
}

/// `(CASE WHEN jsonb_typeof(<json>) = <then><json><end>`: the value at `keys` only when its
/// JSON type is the one named in `then`.
fn push_json_typed(
    qb: &mut QueryBuilder<Postgres>,
    keys: &[String],
    then: &'static str,
    end: &'static str,
) {
    qb.push("(CASE WHEN jsonb_typeof(");
    push_json(qb, keys);
    qb.push(") = ").push(then);
    push_json(qb, keys);
    qb.push(end);
}

fn is_statement_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "57014")
}

impl PgStore {
    async fn run_spec(
        &self,
        principal: &Principal,
        spec: &QuerySpec,
    ) -> Result<SpecResult, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN READ ONLY").await?;
        act_as(&mut tx, principal).await?;
        let ms = spec.timeout().as_millis().clamp(1, i32::MAX as u128);
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(format!("{ms}ms"))
            .execute(&mut *tx)
            .await?;
        let result = match spec_sql::compile::<Postgres>(spec, principal) {
            Compiled::Rows(mut qb) => {
                let rows = qb.build().fetch_all(&mut *tx).await?;
                spec_sql::rows(spec, rows.iter().map(|r| to_row(r).span).collect())
            }
            Compiled::Count(mut qb) => {
                SpecResult::Count(qb.build_query_scalar().fetch_one(&mut *tx).await?)
            }
            Compiled::Groups(mut qb) => {
                spec_sql::groups(qb.build_query_as().fetch_all(&mut *tx).await?)?
            }
        };
        tx.commit().await?;
        Ok(result)
    }
}
