//! The memory index on PostgreSQL: row level security on both tables, pgvector's HNSW index
//! for the semantic order (iterative scans, so scope filters do not starve it), a GIN-indexed
//! tsvector of keyed term hashes for the full-text order.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PgStore, parse_visibility};
use crate::error::StoreError;
use crate::span::{Appended, Draft, Principal};
use crate::store::memory::{
    Candidates, Expired, MemoryIndex, MemoryLayer, MemoryRow, MemoryScope, NewMemory, WrappedKey,
    check_item, pick_terms, push_scope, vector_literal,
};

/// The index row without its body: bodies are read by id afterwards ([`attach_bodies`]), since
/// joining them made the planner scan every span body of every tenant.
const RANK_COLUMNS: &str = "SELECT m.id, m.tenant_id, m.owner_id, m.visibility, m.session_id, \
     m.layer, m.created_at, m.ttl_at, m.supersedes, NULL::text FROM ledger.memory_items m WHERE ";

/// The index rows of one `remember`, column by column (bound as arrays).
#[derive(Default)]
struct NewRows {
    id: Vec<Uuid>,
    visibility: Vec<&'static str>,
    session_id: Vec<Option<String>>,
    layer: Vec<&'static str>,
    created_at: Vec<DateTime<Utc>>,
    ttl_at: Vec<Option<DateTime<Utc>>>,
    supersedes: Vec<Option<Uuid>>,
    terms: Vec<String>,
    embedding: Vec<String>,
}

/// Fills in the span bodies (ciphertext) of `rows`, one query for all.
async fn attach_bodies<'r>(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    rows: impl Iterator<Item = &'r mut MemoryRow>,
) -> Result<(), StoreError> {
    let mut by_id: HashMap<Uuid, &'r mut MemoryRow> = rows.map(|r| (r.id, r)).collect();
    if by_id.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = by_id.keys().copied().collect();
    let bodies =
        sqlx::query("SELECT id, body FROM ledger.span_bodies WHERE id = ANY($1) AND seq = 0")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
    for b in bodies {
        if let Some(row) = by_id.get_mut(&b.try_get::<Uuid, _>(0)?) {
            row.body = b.try_get(1)?;
        }
    }
    Ok(())
}

fn memory_row(r: &PgRow) -> Result<MemoryRow, StoreError> {
    let layer: String = r.try_get(5)?;
    Ok(MemoryRow {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        owner_id: r.try_get(2)?,
        visibility: parse_visibility(&r.try_get::<String, _>(3)?)?,
        session_id: r.try_get(4)?,
        layer: MemoryLayer::parse(&layer)
            .ok_or_else(|| StoreError::Corrupt(format!("memory layer `{layer}`")))?,
        created_at: r.try_get::<DateTime<Utc>, _>(6)?,
        ttl_at: r.try_get(7)?,
        supersedes: r.try_get(8)?,
        body: r.try_get(9)?,
    })
}

#[async_trait]
impl MemoryIndex for PgStore {
    async fn memory_key(&self, principal: &Principal) -> Result<Option<WrappedKey>, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let row =
            sqlx::query("SELECT kek_id, wrapped FROM ledger.memory_keys WHERE tenant_id = $1")
                .bind(&principal.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row.map(|r| WrappedKey {
            kek_id: r.get(0),
            wrapped: r.get(1),
        }))
    }

    async fn put_memory_key(
        &self,
        principal: &Principal,
        key: &WrappedKey,
    ) -> Result<WrappedKey, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        sqlx::query(
            "INSERT INTO ledger.memory_keys (tenant_id, kek_id, wrapped) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&principal.tenant_id)
        .bind(&key.kek_id)
        .bind(&key.wrapped)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query("SELECT kek_id, wrapped FROM ledger.memory_keys WHERE tenant_id = $1")
            .bind(&principal.tenant_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(WrappedKey {
            kek_id: r.get(0),
            wrapped: r.get(1),
        })
    }

    async fn remember(
        &self,
        principal: &Principal,
        items: Vec<(Draft, NewMemory)>,
    ) -> Result<Vec<Appended>, StoreError> {
        for (_, item) in &items {
            check_item(item)?;
        }
        let mut tx = self.begin_as(principal).await?;
        let drafts: Vec<Draft> = items.iter().map(|(d, _)| d.clone()).collect();
        let mut trees = super::Trees::default();
        let results = self
            .append_in(&mut tx, principal, &drafts, &mut trees)
            .await?;
        // One statement for the whole batch (a round trip per item made seeding slow).
        let mut new = NewRows::default();
        let mut out = Vec::with_capacity(items.len());
        for ((draft, item), appended) in items.into_iter().zip(results) {
            let appended = appended?;
            if !appended.duplicate {
                new.id.push(appended.id);
                new.visibility.push(draft.visibility.as_str());
                new.session_id.push(item.session_id);
                new.layer.push(item.layer.as_str());
                new.created_at.push(draft.at);
                new.ttl_at.push(item.ttl_at);
                new.supersedes.push(item.supersedes);
                new.terms.push(item.terms);
                new.embedding.push(vector_literal(&item.embedding));
            }
            out.push(appended);
        }
        if !new.id.is_empty() {
            sqlx::query(
                "INSERT INTO ledger.memory_items (id, tenant_id, owner_id, visibility, \
                 session_id, layer, created_at, ttl_at, supersedes, terms, embedding) \
                 SELECT u.id, $1, $2, u.visibility, u.session_id, u.layer, u.created_at, u.ttl_at, \
                 u.supersedes, to_tsvector('simple', u.terms), u.embedding::vector \
                 FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], \
                 $8::timestamptz[], $9::uuid[], $10::text[], $11::text[]) \
                 AS u(id, visibility, session_id, layer, created_at, ttl_at, supersedes, terms, \
                 embedding)",
            )
            .bind(&principal.tenant_id)
            .bind(&principal.user_id)
            .bind(&new.id)
            .bind(&new.visibility)
            .bind(&new.session_id)
            .bind(&new.layer)
            .bind(&new.created_at)
            .bind(&new.ttl_at)
            .bind(&new.supersedes)
            .bind(&new.terms)
            .bind(&new.embedding)
            .execute(&mut *tx)
            .await?;
        }
        self.save_tree(&mut tx, &mut trees).await?;
        tx.commit().await?;
        crate::checkpoint::record(self, &self.key, &trees.heads).await;
        Ok(out)
    }

    async fn recall(
        &self,
        principal: &Principal,
        scope: &MemoryScope,
        terms: &[String],
        embedding: &[f32],
        k: usize,
    ) -> Result<Candidates, StoreError> {
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        let mut tx = self.begin_as(principal).await?;
        // With a selective scope an HNSW scan may find too few rows among its first
        // candidates; iterative scans keep going until the LIMIT is met (or
        // `hnsw.max_scan_tuples` is reached: then the exact order below is used).
        sqlx::query(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), \
             set_config('hnsw.ef_search', '64', true)",
        )
        .execute(&mut *tx)
        .await?;
        let mut out = Candidates::default();
        let mut rows: HashMap<Uuid, MemoryRow> = HashMap::new();

        // Full-text: only the rarer terms (see `pick_terms`), so that GIN finds few rows.
        let picked = if terms.is_empty() {
            Vec::new()
        } else {
            let counted = sqlx::query(
                "SELECT term, items FROM ledger.memory_terms WHERE tenant_id = $1 \
                 AND term = ANY($2)",
            )
            .bind(&principal.tenant_id)
            .bind(terms)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
            pick_terms(counted)
        };
        if !picked.is_empty() {
            let query = picked.join(" | ");
            // The GIN lookup goes through `ledger.memory_term_hits` (see its migration: under
            // row level security the planner would not use the index and scanned the tenant).
            let mut qb = QueryBuilder::<Postgres>::new(RANK_COLUMNS);
            push_scope(&mut qb, principal, scope, scope.now, true);
            qb.push(" AND m.id IN (SELECT ledger.memory_term_hits(to_tsquery('simple', ")
                .push_bind(query.clone())
                .push("))) ORDER BY ts_rank(m.terms, to_tsquery('simple', ")
                .push_bind(query)
                .push(")) DESC, m.created_at DESC LIMIT ")
                .push_bind(limit);
            for r in qb.build().fetch_all(&mut *tx).await? {
                let row = memory_row(&r)?;
                out.lexical.push(row.id);
                rows.insert(row.id, row);
            }
        }

        // Semantic: the HNSW index, filtered by scope as it walks.
        let vector = vector_literal(embedding);
        let semantic = |exact: bool| {
            let mut qb = QueryBuilder::<Postgres>::new(RANK_COLUMNS);
            push_scope(&mut qb, principal, scope, scope.now, true);
            // `+ 0` hides the distance from the index: an exact order over the scope.
            qb.push(" ORDER BY (m.embedding <=> ")
                .push_bind(vector.clone())
                .push(if exact { "::vector) + 0" } else { "::vector)" })
                .push(" LIMIT ")
                .push_bind(limit);
            qb
        };
        let mut found = semantic(false).build().fetch_all(&mut *tx).await?;
        if found.len() < k {
            // Too few from the index: either the scope holds fewer items (the exact order is
            // then cheap) or the walk stopped early.
            found = semantic(true).build().fetch_all(&mut *tx).await?;
        }
        for r in &found {
            let row = memory_row(r)?;
            out.semantic.push(row.id);
            rows.insert(row.id, row);
        }

        // Bodies only for the candidates (joining them into the ranking queries made the planner
        // scan every span body).
        attach_bodies(&mut tx, rows.values_mut()).await?;
        tx.commit().await?;
        out.rows = rows;
        Ok(out)
    }

    async fn list(
        &self,
        principal: &Principal,
        scope: &MemoryScope,
        limit: i64,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let mut tx = self.begin_as(principal).await?;
        let mut qb = QueryBuilder::<Postgres>::new(RANK_COLUMNS);
        push_scope(&mut qb, principal, scope, scope.now, false);
        qb.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
            .push_bind(limit);
        let mut rows = qb
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(memory_row)
            .collect::<Result<Vec<_>, _>>()?;
        attach_bodies(&mut tx, rows.iter_mut()).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn expired(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Expired>, StoreError> {
        let mut tx = self.begin_auditor().await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, owner_id, ttl_at FROM ledger.memory_items \
             WHERE ttl_at IS NOT NULL AND ttl_at <= $1 ORDER BY ttl_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Expired {
                    id: r.try_get(0)?,
                    tenant_id: r.try_get(1)?,
                    owner_id: r.try_get(2)?,
                    ttl_at: r.try_get(3)?,
                })
            })
            .collect()
    }
}
