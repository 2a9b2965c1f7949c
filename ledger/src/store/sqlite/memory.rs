//! The memory index on the embedded store: scope in SQL, the semantic order computed in Rust
//! over the in-scope rows' vectors (kept in memory by [`VectorCache`]), the full-text order
//! from FTS5's bm25 over the rarer keyed term hashes of the query.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{SqliteStore, parse_visibility};
use crate::error::StoreError;
use crate::span::{Appended, Draft, Principal, format_time};
use crate::store::memory::{
    Candidates, Expired, MemoryIndex, MemoryLayer, MemoryRow, MemoryScope, NewMemory, WrappedKey,
    blob_vector, check_item, dot, pick_terms, push_scope, vector_blob,
};

const ROW_COLUMNS: &str = "m.id, m.tenant_id, m.owner_id, m.visibility, m.session_id, m.layer, \
     m.created_at, m.ttl_at, m.supersedes, b.body";
const FROM: &str =
    " FROM memory_items m LEFT JOIN span_bodies b ON b.id = m.id AND b.seq = 0 WHERE ";

/// Most vectors the cache holds (about 1.5 KB each); past it, it starts again empty.
const CACHE_MAX: usize = 200_000;
/// Row ids per statement when loading vectors.
const LOAD_CHUNK: usize = 500;

/// The embedded store's memory vectors, unit-normalized, by `memory_items` rowid. Reading and
/// decoding every in-scope BLOB per query was most of a recall's time; with this, a recall asks
/// SQL for the in-scope rowids (one row: a `group_concat`, since fetching ten thousand rows
/// costs more than finding them) and scores vectors already in memory.
///
/// It never decides scope: SQL does, on every recall, so a cached vector of an item that is out
/// of scope, expired or forgotten is never ranked. An item's vector never changes; a rowid can
/// be reused only after its item's row is deleted, which only a redaction does. So the store
/// evicts an item when it redacts it ([`VectorCache::evict`]), and every recall first evicts,
/// in the snapshot it then reads the scope from, the targets of redactions appended since it
/// last looked, whichever process appended them.
#[derive(Debug, Default)]
pub(crate) struct VectorCache {
    state: RwLock<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    vectors: HashMap<i64, Box<[f32]>>,
    rowids: HashMap<Uuid, i64>,
    /// The highest `redactions` rowid whose target is known to be out of the cache.
    redactions_seen: Option<i64>,
}

impl CacheState {
    fn remove(&mut self, id: Uuid) {
        if let Some(rowid) = self.rowids.remove(&id) {
            self.vectors.remove(&rowid);
        }
    }

    fn clear(&mut self) {
        self.vectors.clear();
        self.rowids.clear();
    }
}

impl VectorCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        // A panic while holding the lock leaves maps that are still consistent.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops one item's vector (it was forgotten).
    pub(crate) fn evict(&self, id: Uuid) {
        self.write().remove(id);
    }

    /// Evicts the targets of redactions appended since the last look.
    async fn catch_up(&self, tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
        let seen = self.read().redactions_seen;
        let Some(seen) = seen else {
            // Nothing was cached before this: start from the newest redaction.
            let max: i64 = sqlx::query_scalar("SELECT coalesce(max(rowid), 0) FROM redactions")
                .fetch_one(&mut **tx)
                .await?;
            let mut st = self.write();
            if st.redactions_seen.is_none() {
                st.clear();
                st.redactions_seen = Some(max);
            }
            return Ok(());
        };
        let rows =
            sqlx::query("SELECT rowid, target_id FROM redactions WHERE rowid > ? ORDER BY rowid")
                .bind(seen)
                .fetch_all(&mut **tx)
                .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut st = self.write();
        for r in &rows {
            if let Ok(id) = Uuid::parse_str(&r.try_get::<String, _>(1)?) {
                st.remove(id);
            }
            let rowid: i64 = r.try_get(0)?;
            st.redactions_seen = Some(st.redactions_seen.unwrap_or(0).max(rowid));
        }
        Ok(())
    }

    /// Reads the vectors of in-scope items not cached yet. A scope larger than the cache is
    /// scored from vectors returned here instead of cached ones.
    async fn load_missing(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        eligible: &[i64],
    ) -> Result<HashMap<i64, Box<[f32]>>, StoreError> {
        let oversized = eligible.len() > CACHE_MAX;
        let missing: Vec<i64> = {
            let mut st = self.write();
            if oversized {
                eligible.to_vec()
            } else {
                let mut missing: Vec<i64> = eligible
                    .iter()
                    .filter(|r| !st.vectors.contains_key(r))
                    .copied()
                    .collect();
                if st.vectors.len() + missing.len() > CACHE_MAX {
                    st.clear();
                    missing = eligible.to_vec();
                }
                missing
            }
        };
        let mut uncached = HashMap::new();
        for chunk in missing.chunks(LOAD_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT rowid, id, embedding FROM memory_items WHERE rowid IN (",
            );
            let mut sep = qb.separated(", ");
            for rowid in chunk {
                sep.push_bind(*rowid);
            }
            qb.push(")");
            let mut loaded = Vec::with_capacity(chunk.len());
            for r in qb.build().fetch_all(&mut **tx).await? {
                let mut v = blob_vector(&r.try_get::<Vec<u8>, _>(2)?);
                let norm = dot(&v, &v).sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                let id = uuid(&r.try_get::<String, _>(1)?)?;
                loaded.push((r.try_get::<i64, _>(0)?, id, v.into_boxed_slice()));
            }
            if oversized {
                uncached.extend(loaded.into_iter().map(|(rowid, _, v)| (rowid, v)));
            } else {
                let mut st = self.write();
                for (rowid, id, v) in loaded {
                    st.rowids.insert(id, rowid);
                    st.vectors.insert(rowid, v);
                }
            }
        }
        Ok(uncached)
    }

    /// Cosine similarity of each in-scope item that has a vector to `query`, unordered.
    fn score(
        &self,
        eligible: &[i64],
        uncached: &HashMap<i64, Box<[f32]>>,
        query: &[f32],
    ) -> Vec<(f32, i64)> {
        let norm = dot(query, query).sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        let st = self.read();
        eligible
            .iter()
            .filter_map(|r| {
                let v = st.vectors.get(r).or_else(|| uncached.get(r))?;
                Some((dot(v, query) * scale, *r))
            })
            .collect()
    }

    #[cfg(test)]
    fn holds(&self, id: Uuid) -> bool {
        self.read().rowids.contains_key(&id)
    }
}

fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("memory time `{s}`: {e}")))
}

fn uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("memory id `{s}`: {e}")))
}

/// An index row read from `ROW_COLUMNS` starting at column `at`.
fn memory_row(r: &SqliteRow, at: usize) -> Result<MemoryRow, StoreError> {
    let layer: String = r.try_get(at + 5)?;
    Ok(MemoryRow {
        id: uuid(&r.try_get::<String, _>(at)?)?,
        tenant_id: r.try_get(at + 1)?,
        owner_id: r.try_get(at + 2)?,
        visibility: parse_visibility(&r.try_get::<String, _>(at + 3)?)?,
        session_id: r.try_get(at + 4)?,
        layer: MemoryLayer::parse(&layer)
            .ok_or_else(|| StoreError::Corrupt(format!("memory layer `{layer}`")))?,
        created_at: time(&r.try_get::<String, _>(at + 6)?)?,
        ttl_at: r
            .try_get::<Option<String>, _>(at + 7)?
            .map(|s| time(&s))
            .transpose()?,
        supersedes: r
            .try_get::<Option<String>, _>(at + 8)?
            .map(|s| uuid(&s))
            .transpose()?,
        body: r.try_get(at + 9)?,
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
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        // One read transaction: evictions, scope, vectors and matches come from one snapshot.
        let mut tx = self.pool.begin().await?;
        self.vectors.catch_up(&mut tx).await?;

        // Scope first, in SQL (from the covering index `memory_items_scope`).
        let mut qb =
            QueryBuilder::<Sqlite>::new("SELECT group_concat(m.rowid) FROM memory_items m WHERE ");
        push_scope(&mut qb, principal, scope, now.clone(), true);
        let listed: Option<String> = qb.build_query_scalar().fetch_one(&mut *tx).await?;
        let eligible = listed
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|e| StoreError::Corrupt(format!("memory rowid `{s}`: {e}")))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let uncached = self.vectors.load_missing(&mut tx, &eligible).await?;

        // Semantic: every in-scope item scored against its cached vector.
        let mut scored = self.vectors.score(&eligible, &uncached, embedding);
        let top = k.min(scored.len());
        if top > 0 && top < scored.len() {
            scored.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
        }
        scored.truncate(top);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let best: Vec<i64> = scored.into_iter().map(|(_, rowid)| rowid).collect();

        // Full-text: bm25 over the rarer query terms (few matches), scope in SQL again.
        let picked = if terms.is_empty() {
            Vec::new()
        } else {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT term, doc FROM memory_fts_vocab WHERE term IN (",
            );
            let mut sep = qb.separated(", ");
            for t in terms {
                sep.push_bind(t.clone());
            }
            qb.push(")");
            let counted = qb
                .build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            pick_terms(counted)
        };
        let mut lexical: Vec<Uuid> = Vec::new();
        if !picked.is_empty() {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT m.id FROM memory_fts f JOIN memory_items m ON m.rowid = f.rowid \
                 WHERE memory_fts MATCH ",
            );
            qb.push_bind(picked.join(" OR ")).push(" AND ");
            push_scope(&mut qb, principal, scope, now.clone(), true);
            qb.push(" ORDER BY bm25(memory_fts), m.created_at DESC LIMIT ")
                .push_bind(limit);
            for r in qb.build().fetch_all(&mut *tx).await? {
                lexical.push(uuid(&r.try_get::<String, _>(0)?)?);
            }
        }

        // The rows (with bodies) of both lists, scope applied once more.
        let mut rows: HashMap<Uuid, MemoryRow> = HashMap::new();
        let mut by_rowid: HashMap<i64, Uuid> = HashMap::new();
        if !best.is_empty() || !lexical.is_empty() {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("SELECT m.rowid, {ROW_COLUMNS}{FROM}"));
            push_scope(&mut qb, principal, scope, now, true);
            qb.push(" AND (m.rowid IN (");
            let mut sep = qb.separated(", ");
            for rowid in &best {
                sep.push_bind(*rowid);
            }
            qb.push(") OR m.id IN (");
            let mut sep = qb.separated(", ");
            for id in &lexical {
                sep.push_bind(id.to_string());
            }
            qb.push("))");
            for r in qb.build().fetch_all(&mut *tx).await? {
                let row = memory_row(&r, 1)?;
                by_rowid.insert(r.try_get(0)?, row.id);
                rows.insert(row.id, row);
            }
        }
        tx.commit().await?;
        let semantic = best
            .iter()
            .filter_map(|r| by_rowid.get(r).copied())
            .collect();
        Ok(Candidates {
            semantic,
            lexical,
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
        rows.iter().map(|r| memory_row(r, 0)).collect()
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

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::crypto::NodeKey;
    use crate::store::Store;
    use crate::store::memory::{EMBED_DIM, Reach};

    fn item(axis: usize) -> NewMemory {
        let mut embedding = vec![0f32; EMBED_DIM];
        embedding[axis] = 1.0;
        NewMemory {
            session_id: None,
            layer: MemoryLayer::Temporary,
            ttl_at: None,
            supersedes: None,
            terms: "abc".into(),
            embedding,
        }
    }

    async fn remember(s: &SqliteStore, p: &Principal, axis: usize) -> Uuid {
        let id = Uuid::now_v7();
        let draft = Draft::from_value(
            json!({"id": id, "entity_type": "memory", "visibility": "private"}),
            p,
            &[],
            Utc::now(),
        )
        .unwrap();
        s.remember(p, vec![(draft, item(axis))]).await.unwrap();
        id
    }

    async fn recall(s: &SqliteStore, p: &Principal, axis: usize) -> Vec<Uuid> {
        let scope = MemoryScope {
            reach: Reach::All,
            session_id: None,
            now: Utc::now(),
        };
        s.recall(p, &scope, &[], &item(axis).embedding, 10)
            .await
            .unwrap()
            .semantic
    }

    #[tokio::test]
    async fn the_vector_cache_follows_new_and_forgotten_items_and_never_widens_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let key = NodeKey::generate();
        let s = SqliteStore::open_file(&path, key.clone()).await.unwrap();
        let (ana, bob) = (Principal::new("ana", "t"), Principal::new("bob", "t"));
        let a1 = remember(&s, &ana, 1).await;
        let b1 = remember(&s, &bob, 1).await;
        // Bob's recall caches his vector; Ana's recall, however close the vector, never sees it.
        assert_eq!(recall(&s, &bob, 1).await, [b1]);
        assert!(s.vectors.holds(b1));
        assert_eq!(recall(&s, &ana, 1).await, [a1]);
        // A new item is ranked by the next recall.
        let a2 = remember(&s, &ana, 2).await;
        assert_eq!(recall(&s, &ana, 2).await[0], a2);
        // Forgetting through this store evicts at once.
        s.redact(&ana, a1, "forgotten").await.unwrap();
        assert!(!s.vectors.holds(a1));
        assert_eq!(recall(&s, &ana, 1).await, [a2]);
        // Forgetting through another process's store: never ranked (SQL decides the scope),
        // and evicted by this store's next recall.
        let other = SqliteStore::open_file(&path, key).await.unwrap();
        assert!(s.vectors.holds(a2));
        other.redact(&ana, a2, "forgotten").await.unwrap();
        assert!(recall(&s, &ana, 2).await.is_empty());
        assert!(!s.vectors.holds(a2));
    }
}
