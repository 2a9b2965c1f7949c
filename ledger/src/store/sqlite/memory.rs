//! The memory index on the embedded store: scope in SQL, the semantic order computed in Rust
//! over the in-scope rows' vectors (BLOBs), the full-text order from FTS5's bm25 over keyed
//! term hashes.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{SqliteStore, parse_visibility};
use crate::error::StoreError;
use crate::span::{Appended, Draft, Principal, format_time};
use crate::store::memory::{
    Candidates, Expired, MemoryIndex, MemoryLayer, MemoryRow, MemoryScope, NewMemory, WrappedKey,
    blob_vector, check_item, cosine, push_scope, vector_blob,
};

const ROW_COLUMNS: &str = "m.id, m.tenant_id, m.owner_id, m.visibility, m.session_id, m.layer, \
     m.created_at, m.ttl_at, m.supersedes, b.body";
const FROM: &str =
    " FROM memory_items m LEFT JOIN span_bodies b ON b.id = m.id AND b.seq = 0 WHERE ";

fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("memory time `{s}`: {e}")))
}

fn uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("memory id `{s}`: {e}")))
}

fn memory_row(r: &SqliteRow) -> Result<MemoryRow, StoreError> {
    let layer: String = r.try_get(5)?;
    Ok(MemoryRow {
        id: uuid(&r.try_get::<String, _>(0)?)?,
        tenant_id: r.try_get(1)?,
        owner_id: r.try_get(2)?,
        visibility: parse_visibility(&r.try_get::<String, _>(3)?)?,
        session_id: r.try_get(4)?,
        layer: MemoryLayer::parse(&layer)
            .ok_or_else(|| StoreError::Corrupt(format!("memory layer `{layer}`")))?,
        created_at: time(&r.try_get::<String, _>(6)?)?,
        ttl_at: r
            .try_get::<Option<String>, _>(7)?
            .map(|s| time(&s))
            .transpose()?,
        supersedes: r
            .try_get::<Option<String>, _>(8)?
            .map(|s| uuid(&s))
            .transpose()?,
        body: r.try_get(9)?,
    })
}

#[async_trait]
impl MemoryIndex for SqliteStore {
    async fn memory_key(&self, principal: &Principal) -> Result<Option<WrappedKey>, StoreError> {
        let row = sqlx::query("SELECT kek_id, wrapped FROM memory_keys WHERE tenant_id = ?")
            .bind(&principal.tenant_id)
            .fetch_optional(&self.pool)
            .await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO memory_keys (tenant_id, kek_id, wrapped, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&principal.tenant_id)
        .bind(&key.kek_id)
        .bind(&key.wrapped)
        .bind(format_time(Utc::now()))
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query("SELECT kek_id, wrapped FROM memory_keys WHERE tenant_id = ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let drafts: Vec<Draft> = items.iter().map(|(d, _)| d.clone()).collect();
        let mut heads = Vec::new();
        let results = self
            .append_in(&mut tx, principal, &drafts, &mut heads)
            .await?;
        let mut out = Vec::with_capacity(items.len());
        for ((draft, item), appended) in items.into_iter().zip(results) {
            let appended = appended?;
            if !appended.duplicate {
                let rowid: i64 = sqlx::query_scalar(
                    "INSERT INTO memory_items (id, tenant_id, owner_id, visibility, session_id, \
                     layer, created_at, ttl_at, supersedes, embedding) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rowid",
                )
                .bind(appended.id.to_string())
                .bind(&principal.tenant_id)
                .bind(&principal.user_id)
                .bind(draft.visibility.as_str())
                .bind(&item.session_id)
                .bind(item.layer.as_str())
                .bind(format_time(draft.at))
                .bind(item.ttl_at.map(format_time))
                .bind(item.supersedes.map(|u| u.to_string()))
                .bind(vector_blob(&item.embedding))
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO memory_fts (rowid, terms) VALUES (?, ?)")
                    .bind(rowid)
                    .bind(&item.terms)
                    .execute(&mut *tx)
                    .await?;
            }
            out.push(appended);
        }
        tx.commit().await?;
        crate::checkpoint::record(self, &self.key, &heads).await;
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
        let now = format_time(scope.now);
        let mut conn = self.pool.acquire().await?;
        // Semantic: every in-scope vector, scored here (bodies are read only for the winners).
        let mut qb =
            QueryBuilder::<Sqlite>::new("SELECT m.id, m.embedding FROM memory_items m WHERE ");
        push_scope(&mut qb, principal, scope, now.clone(), true);
        let mut scored: Vec<(f32, String)> = Vec::new();
        for r in qb.build().fetch_all(&mut *conn).await? {
            let blob: Vec<u8> = r.try_get(1)?;
            scored.push((cosine(&blob_vector(&blob), embedding), r.try_get(0)?));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        let semantic: Vec<String> = scored.into_iter().map(|(_, id)| id).collect();

        let mut lexical: Vec<String> = Vec::new();
        if !terms.is_empty() {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT m.id FROM memory_fts f JOIN memory_items m ON m.rowid = f.rowid \
                 WHERE memory_fts MATCH ",
            );
            qb.push_bind(terms.join(" OR ")).push(" AND ");
            push_scope(&mut qb, principal, scope, now.clone(), true);
            qb.push(" ORDER BY bm25(memory_fts), m.created_at DESC LIMIT ")
                .push_bind(i64::try_from(k).unwrap_or(i64::MAX));
            for r in qb.build().fetch_all(&mut *conn).await? {
                lexical.push(r.try_get(0)?);
            }
        }

        let mut rows: HashMap<Uuid, MemoryRow> = HashMap::new();
        let wanted: Vec<&String> = semantic.iter().chain(lexical.iter()).collect();
        if !wanted.is_empty() {
            let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {ROW_COLUMNS}{FROM}"));
            push_scope(&mut qb, principal, scope, now, true);
            qb.push(" AND m.id IN (");
            let mut sep = qb.separated(", ");
            for id in &wanted {
                sep.push_bind((*id).clone());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *conn).await? {
                let row = memory_row(&r)?;
                rows.insert(row.id, row);
            }
        }
        let ids = |v: Vec<String>| -> Result<Vec<Uuid>, StoreError> {
            v.iter().map(|s| uuid(s)).collect()
        };
        Ok(Candidates {
            semantic: ids(semantic)?,
            lexical: ids(lexical)?,
            rows,
        })
    }

    async fn list(
        &self,
        principal: &Principal,
        scope: &MemoryScope,
        limit: i64,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {ROW_COLUMNS}{FROM}"));
        push_scope(&mut qb, principal, scope, format_time(scope.now), false);
        qb.push(" ORDER BY m.created_at DESC, m.id DESC LIMIT ")
            .push_bind(limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(memory_row).collect()
    }

    async fn expired(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Expired>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, owner_id, ttl_at FROM memory_items \
             WHERE ttl_at IS NOT NULL AND ttl_at <= ? ORDER BY ttl_at, id LIMIT ?",
        )
        .bind(format_time(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Expired {
                    id: uuid(&r.try_get::<String, _>(0)?)?,
                    tenant_id: r.try_get(1)?,
                    owner_id: r.try_get(2)?,
                    ttl_at: time(&r.try_get::<String, _>(3)?)?,
                })
            })
            .collect()
    }
}
