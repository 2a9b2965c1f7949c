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
    check_item, push_scope, vector_literal,
};

const ROW_COLUMNS: &str = "SELECT m.id, m.tenant_id, m.owner_id, m.visibility, m.session_id, \
     m.layer, m.created_at, m.ttl_at, m.supersedes, b.body FROM ledger.memory_items m \
     LEFT JOIN ledger.span_bodies b ON b.id = m.id AND b.seq = 0 WHERE ";

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
        let mut out = Vec::with_capacity(items.len());
        for ((draft, item), appended) in items.into_iter().zip(results) {
            let appended = appended?;
            if !appended.duplicate {
                sqlx::query(
                    "INSERT INTO ledger.memory_items (id, tenant_id, owner_id, visibility, \
                     session_id, layer, created_at, ttl_at, supersedes, terms, embedding) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_tsvector('simple', $10), \
                     $11::vector)",
                )
                .bind(appended.id)
                .bind(&principal.tenant_id)
                .bind(&principal.user_id)
                .bind(draft.visibility.as_str())
                .bind(&item.session_id)
                .bind(item.layer.as_str())
                .bind(draft.at)
                .bind(item.ttl_at)
                .bind(item.supersedes)
                .bind(&item.terms)
                .bind(vector_literal(&item.embedding))
                .execute(&mut *tx)
                .await?;
            }
            out.push(appended);
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
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        let mut tx = self.begin_as(principal).await?;
        // With a selective scope an HNSW scan may find too few rows among its first
        // candidates; iterative scans keep going until the LIMIT is met.
        sqlx::query(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), \
             set_config('hnsw.ef_search', '64', true)",
        )
        .execute(&mut *tx)
        .await?;
        let mut out = Candidates::default();
        let mut rows: HashMap<Uuid, MemoryRow> = HashMap::new();

        let mut qb = QueryBuilder::<Postgres>::new(ROW_COLUMNS);
        push_scope(&mut qb, principal, scope, scope.now, true);
        qb.push(" ORDER BY m.embedding <=> ")
            .push_bind(vector_literal(embedding))
            .push("::vector LIMIT ")
            .push_bind(k);
        for r in qb.build().fetch_all(&mut *tx).await? {
            let row = memory_row(&r)?;
            out.semantic.push(row.id);
            rows.insert(row.id, row);
        }

        if !terms.is_empty() {
            let query = terms.join(" | ");
            let mut qb = QueryBuilder::<Postgres>::new(ROW_COLUMNS);
            push_scope(&mut qb, principal, scope, scope.now, true);
            qb.push(" AND m.terms @@ to_tsquery('simple', ")
                .push_bind(query.clone())
                .push(") ORDER BY ts_rank(m.terms, to_tsquery('simple', ")
                .push_bind(query)
                .push(")) DESC, m.created_at DESC LIMIT ")
                .push_bind(k);
            for r in qb.build().fetch_all(&mut *tx).await? {
                let row = memory_row(&r)?;
                out.lexical.push(row.id);
                rows.insert(row.id, row);
            }
        }
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
        let mut qb = QueryBuilder::<Postgres>::new(ROW_COLUMNS);
        push_scope(&mut qb, principal, scope, scope.now, false);
        qb.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
            .push_bind(limit);
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(memory_row).collect()
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
