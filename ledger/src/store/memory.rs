//! The memory index (issue 13): what recall needs besides the `memory` spans themselves.
//!
//! A memory item is a span whose body holds AES-256-GCM ciphertext (the server encrypts; the
//! ledger never sees plaintext). Beside it the stores keep one index row per item — scope
//! columns (tenant, owner, visibility, session, layer, expiry, what it supersedes), keyed hashes
//! of its words for full-text ranking and its embedding — and each tenant's wrapped data key.
//! Scope is decided by SQL `WHERE` clauses (and row level security on PostgreSQL) *before*
//! anything is ranked, so an item outside the caller's scope is never a candidate. Forgetting is
//! a redaction: a trigger on `redactions` drops the index row in the same transaction that
//! deletes the ciphertext.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Database, Encode, QueryBuilder, Type};
use uuid::Uuid;

use crate::error::StoreError;
use crate::span::{Appended, Draft, Principal, Visibility};

/// Dimensions of every stored embedding (all-MiniLM-L6-v2 and multilingual-e5-small size; the
/// PostgreSQL column is `vector(384)` so that it can carry an HNSW index).
pub const EMBED_DIM: usize = 384;

/// How long an item lives and who must agree to keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemoryLayer {
    /// This conversation only; expires (`ttl_at`, 24 h by default).
    #[default]
    Session,
    /// The user's, for days; may be promoted.
    Temporary,
    /// Kept until forgotten; only a reviewer's approval puts an item here.
    Permanent,
}

impl MemoryLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Temporary => "temporary",
            Self::Permanent => "permanent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(Self::Session),
            "temporary" => Some(Self::Temporary),
            "permanent" => Some(Self::Permanent),
            _ => None,
        }
    }
}

/// A tenant's data key, wrapped by the key-encryption key named by `kek_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_id: String,
    pub wrapped: String,
}

/// One index row, and the item's span body (ciphertext) when it was read with it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub owner_id: String,
    pub visibility: Visibility,
    pub session_id: Option<String>,
    pub layer: MemoryLayer,
    pub created_at: DateTime<Utc>,
    pub ttl_at: Option<DateTime<Utc>>,
    pub supersedes: Option<Uuid>,
    /// The span's body (canonical JSON), absent once redacted.
    pub body: Option<String>,
}

/// What to index for a new item (tenant and owner come from the principal that writes it).
#[derive(Clone, Debug)]
pub struct NewMemory {
    pub session_id: Option<String>,
    pub layer: MemoryLayer,
    pub ttl_at: Option<DateTime<Utc>>,
    pub supersedes: Option<Uuid>,
    /// Space-separated keyed term hashes (letters only).
    pub terms: String,
    /// [`EMBED_DIM`] numbers.
    pub embedding: Vec<f32>,
}

/// Which items a read may consider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// `session-only`: the caller's session-layer items of this session.
    Session,
    /// `on`: this session's items, then the caller's own, then the tenant's, then public ones.
    All,
    /// The caller's own items in every session (listing, export, forgetting).
    Own,
}

/// The scope of a read: applied in SQL before any ranking.
#[derive(Clone, Debug)]
pub struct MemoryScope {
    pub reach: Reach,
    /// The conversation; session-layer items of other conversations are out of scope.
    pub session_id: Option<String>,
    /// Items whose `ttl_at` is at or before this are expired.
    pub now: DateTime<Utc>,
}

/// Recall candidates: ids in semantic order and in full-text order (each at most `k`), and the
/// rows (with bodies) of every id in either list. The caller fuses the orders.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    pub semantic: Vec<Uuid>,
    pub lexical: Vec<Uuid>,
    pub rows: HashMap<Uuid, MemoryRow>,
}

#[async_trait]
pub trait MemoryIndex: Send + Sync {
    /// The caller's tenant's wrapped data key, if one was made.
    async fn memory_key(&self, principal: &Principal) -> Result<Option<WrappedKey>, StoreError>;

    /// Stores `key` as the tenant's data key unless another writer got there first; returns
    /// the key that is stored (so concurrent first writers agree on one).
    async fn put_memory_key(
        &self,
        principal: &Principal,
        key: &WrappedKey,
    ) -> Result<WrappedKey, StoreError>;

    /// Appends items' spans (ciphertext bodies) and their index rows in one transaction.
    async fn remember(
        &self,
        principal: &Principal,
        items: Vec<(Draft, NewMemory)>,
    ) -> Result<Vec<Appended>, StoreError>;

    /// Candidates in scope, best first by embedding distance and by keyed-term match.
    async fn recall(
        &self,
        principal: &Principal,
        scope: &MemoryScope,
        terms: &[String],
        embedding: &[f32],
        k: usize,
    ) -> Result<Candidates, StoreError>;

    /// Items in scope, newest first, with their bodies.
    async fn list(
        &self,
        principal: &Principal,
        scope: &MemoryScope,
        limit: i64,
    ) -> Result<Vec<MemoryRow>, StoreError>;

    /// Items of every tenant whose `ttl_at` is at or before `now`, soonest expired first, for
    /// the sweeper that redacts them on their owners' behalf. Reads no content.
    async fn expired(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Expired>, StoreError>;
}

/// An item past its `ttl_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub id: Uuid,
    pub tenant_id: String,
    pub owner_id: String,
    pub ttl_at: DateTime<Utc>,
}

/// The scope predicate over the index row alias `m`, shared by both dialects. `time` binds an
/// instant the way the dialect compares it; `not_superseded` excludes items a newer item
/// supersedes (a listing shows both).
pub(crate) fn push_scope<'a, DB, T>(
    qb: &mut QueryBuilder<DB>,
    principal: &Principal,
    scope: &MemoryScope,
    now: T,
    not_superseded: bool,
) where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    T: Encode<'a, DB> + Type<DB>,
{
    qb.push("(m.ttl_at IS NULL OR m.ttl_at > ")
        .push_bind(now)
        .push(")");
    if not_superseded {
        qb.push(" AND NOT EXISTS (SELECT 1 FROM ");
        qb.push(if DB::NAME == "PostgreSQL" {
            "ledger.memory_items"
        } else {
            "memory_items"
        });
        qb.push(" n WHERE n.supersedes = m.id)");
    }
    let session = scope.session_id.clone().unwrap_or_default();
    match scope.reach {
        Reach::Session => {
            qb.push(" AND m.layer = 'session' AND m.tenant_id = ")
                .push_bind(principal.tenant_id.clone())
                .push(" AND m.owner_id = ")
                .push_bind(principal.user_id.clone())
                .push(" AND m.session_id = ")
                .push_bind(session);
        }
        Reach::All => {
            // Three arms — public items, the tenant's shared ones, the caller's own — each
            // matching an index, so the planner can find a small scope without a scan.
            qb.push(" AND (m.layer <> 'session' OR (m.owner_id = ")
                .push_bind(principal.user_id.clone())
                .push(" AND m.session_id = ")
                .push_bind(session)
                .push(")) AND (m.visibility = 'public' OR (m.tenant_id = ")
                .push_bind(principal.tenant_id.clone())
                .push(" AND m.visibility = 'tenant') OR (m.tenant_id = ")
                .push_bind(principal.tenant_id.clone())
                .push(" AND m.owner_id = ")
                .push_bind(principal.user_id.clone())
                .push("))");
        }
        Reach::Own => {
            qb.push(" AND m.tenant_id = ")
                .push_bind(principal.tenant_id.clone())
                .push(" AND m.owner_id = ")
                .push_bind(principal.user_id.clone());
            if let Some(s) = &scope.session_id {
                qb.push(" AND m.session_id = ").push_bind(s.clone());
            }
        }
    }
}

/// Cosine similarity of two vectors of equal length (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a), dot(b, b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na.sqrt() * nb.sqrt())
    }
}

/// The dot product, summed in eight lanes so that the compiler vectorizes it (a single running
/// sum of floats may not be reordered, so it would not be); recall scores every in-scope vector
/// of the embedded store with it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Most matching items the full-text side of one recall ranks. Ranking costs a row read per
/// matching item, so a word most items share (`note`, `user`) would make every recall touch the
/// whole tenant while telling almost nothing (it is the lowest-IDF word there is).
pub const LEXICAL_BUDGET: i64 = 1000;

/// The query terms the full-text side uses, given how many items hold each: the rarest first,
/// while the items they match together stay within [`LEXICAL_BUDGET`]. Terms no item holds are
/// dropped; when even the rarest is too common, there is no full-text order and the semantic
/// one decides alone.
pub(crate) fn pick_terms(mut counted: Vec<(String, i64)>) -> Vec<String> {
    counted.retain(|(_, n)| *n > 0);
    counted.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let mut spent = 0i64;
    let mut out = Vec::new();
    for (term, n) in counted {
        spent += n;
        if spent > LEXICAL_BUDGET {
            break;
        }
        out.push(term);
    }
    out
}

/// `[1,2,3]`, pgvector's text form (bound as text and cast, so no extra client crate is needed).
pub(crate) fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Non-finite numbers are not valid vectors; an embedder that made one gets zeros.
        let x = if x.is_finite() { *x } else { 0.0 };
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// Little-endian f32 bytes, the embedded store's BLOB form.
pub(crate) fn vector_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn blob_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Refuses an item whose embedding has the wrong size before anything is written.
pub(crate) fn check_item(item: &NewMemory) -> Result<(), StoreError> {
    if item.embedding.len() != EMBED_DIM {
        return Err(StoreError::Config(format!(
            "memory embeddings have {EMBED_DIM} dimensions, got {}",
            item.embedding.len()
        )));
    }
    if !item
        .terms
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == ' ')
    {
        return Err(StoreError::Config(
            "memory terms must be keyed hashes (lowercase letters)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_on_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }

    #[test]
    fn pick_terms_keeps_the_rarest_within_the_budget() {
        let t = |s: &str, n| (s.to_string(), n);
        let picked = pick_terms(vec![
            t("common", LEXICAL_BUDGET),
            t("rare", 1),
            t("absent", 0),
            t("middling", 40),
        ]);
        assert_eq!(picked, ["rare", "middling"]);
        assert!(pick_terms(vec![t("everywhere", LEXICAL_BUDGET + 1)]).is_empty());
    }
}
