//! Memory (issue 13): consented, encrypted, session-scoped, recallable and really forgettable.
//!
//! - **Items are spans** (`entity_type: memory`, private unless the user promotes them). The
//!   text is AES-256-GCM ciphertext under the tenant's data key ([`keys`]), bound to the span's
//!   tenant and id; the ledger's hash and signature cover the ciphertext.
//! - **Layers**: `session` (this conversation, expires after [`SESSION_TTL`]), `temporary`
//!   ([`TEMPORARY_TTL`]), `permanent` (only through a reviewer: the owner asks with a
//!   `memory_promotion` span, a reviewer of the tenant other than the owner approves, and the
//!   approval appends a permanent copy that supersedes the temporary item).
//!   A new item about the same subject as an older one (`my dog is …`) is appended with a
//!   `supersedes` link; the older one stays in the ledger but is no longer recalled.
//! - **Recall**: scope is SQL in the stores ([`ledger::store::memory`]); ranking here fuses the
//!   semantic and keyed full-text orders by reciprocal rank fusion, with a recency boost and a
//!   small preference for closer tiers (session, own, tenant, public).
//! - **Forget** appends a redaction per item: the store deletes the ciphertext (the body) and,
//!   by trigger in the same transaction, the index row with its embedding and term hashes.

pub mod embed;
mod error;
pub mod keys;
pub mod terms;

pub use error::MemoryError;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::query::Filter;
use ledger::store::memory::{MemoryLayer, MemoryRow, MemoryScope, NewMemory, Reach};
use ledger::{Draft, Principal, Store, StoreError, Visibility};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use self::embed::{EmbedConfig, EmbedError, Embedder, LexicalHash, OllamaEmbedder, OpenAiEmbedder};
use self::keys::{KeyRing, Sealed, Secret32};

/// How long a session-layer item lives.
pub const SESSION_TTL: TimeDelta = TimeDelta::hours(24);
/// How long a temporary item lives unless promoted.
pub const TEMPORARY_TTL: TimeDelta = TimeDelta::days(30);
/// The spans a chat turn writes under its trace that may hold a memory's text: the turn's
/// record, its model calls, its tool calls and the review it asked for (kept in step with
/// `chat::record`, `chat::agent` and `chat::proposals`), besides its session-layer turn record (a `memory` with [`Consent::TurnRecord`];
/// other items the turn remembered are the user's to forget, not collateral).
pub const TURN_RECORDS: &[&str] = &[
    "prompt_run",
    "provider_execution",
    "tool_call",
    "escalation_request",
];

/// Longest remembered text.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Items recalled into a turn.
pub const RECALL_K: usize = 5;
/// The RRF constant (the usual 60).
const RRF_K: f64 = 60.0;

/// Why an item may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// The user said "remember that …" or asked through the API or CLI.
    Explicit,
    /// The model's `remember` tool, in a turn whose memory mode allows writes.
    Tool,
    /// The short record of a turn kept in the session layer.
    TurnRecord,
    /// A reviewer approved the owner's request to keep the item permanently (the only way
    /// into the permanent layer).
    Approved,
}

/// The entity type of a request to keep an item permanently.
pub const PROMOTION: &str = "memory_promotion";

/// A request to keep an item permanently, as its owner and the tenant's reviewers see it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Promotion {
    /// The `memory_promotion` span.
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    /// The item asked about.
    #[schema(value_type = String, format = "uuid")]
    pub memory_id: Uuid,
    pub owner_id: String,
    /// `open`, `approved` or `rejected`.
    pub status: String,
    /// The item's text while it can still be read (reviewing is reading what would be kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: DateTime<Utc>,
    /// The reviewer who decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The permanent item an approval appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub permanent_id: Option<Uuid>,
}

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    #[default]
    Fact,
    Preference,
    Name,
    Turn,
}

/// A request to remember one thing.
#[derive(Clone, Debug)]
pub struct RememberRequest {
    pub text: String,
    pub kind: MemoryKind,
    pub layer: MemoryLayer,
    pub session_id: Option<String>,
    /// An item this one replaces; found automatically when `None` and the subject matches.
    pub supersedes: Option<Uuid>,
    pub consent: Consent,
    pub trace_id: Option<String>,
}

/// A remembered item as its owner (or a reader in scope) sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MemoryItem {
    /// The `memory` span (cite it).
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    pub text: String,
    pub kind: MemoryKind,
    /// `session`, `temporary` or `permanent`.
    #[schema(value_type = String)]
    pub layer: MemoryLayer,
    /// `private`, `tenant` or `public`.
    #[schema(value_type = String)]
    pub visibility: Visibility,
    pub owner_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ttl_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub supersedes: Option<Uuid>,
}

/// A recalled item and its fused score.
#[derive(Clone, Debug, Serialize)]
pub struct Recalled {
    #[serde(flatten)]
    pub item: MemoryItem,
    pub score: f64,
}

/// What to forget.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "target")]
pub enum ForgetTarget {
    /// The newest of the caller's items (in the session, when one is given).
    Last { session_id: Option<String> },
    /// Every item of one session.
    Session { session_id: String },
    /// Everything the caller remembered.
    All,
    Item {
        #[schema(value_type = String, format = "uuid")]
        id: Uuid,
    },
}

/// The plaintext inside an item's ciphertext.
#[derive(Serialize, Deserialize)]
struct Plain {
    text: String,
    kind: MemoryKind,
}

/// The memory service the agent, the routes and the CLI share.
pub struct Memory {
    store: Arc<dyn Store>,
    keys: KeyRing,
    embedder: Arc<dyn Embedder>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("keys", &self.keys)
            .field("embedder", &self.embedder.name())
            .finish()
    }
}

/// The settings memory runs with (read once by `config`). `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct MemorySettings {
    /// `LOGLINE_MEMORY_KEY` (64 hex digits), else the KEK is derived from the node key.
    pub kek_hex: Option<String>,
    pub embed: EmbedConfig,
    /// How often `serve` redacts expired items (`LOGLINE_MEMORY_SWEEP_SECS`, default
    /// [`SWEEP_EVERY`]; 0 turns it off).
    pub sweep_every: Option<std::time::Duration>,
}

/// The default interval of the expiry sweeper.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
const SWEEP_ENV: &str = "LOGLINE_MEMORY_SWEEP_SECS";

impl std::fmt::Debug for MemorySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySettings")
            .field("kek_hex", &self.kek_hex.as_ref().map(|_| "…"))
            .field("embed", &self.embed)
            .field("sweep_every", &self.sweep_every)
            .finish()
    }
}

impl MemorySettings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let sweep_every = match lookup(SWEEP_ENV) {
            None => Some(SWEEP_EVERY),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(secs) => Some(std::time::Duration::from_secs(secs)),
                Err(_) => return Err(format!("{SWEEP_ENV}: `{v}` is not a number of seconds")),
            },
        };
        Ok(Self {
            kek_hex: lookup(keys::MEMORY_KEY_ENV),
            embed: EmbedConfig::from_lookup(&lookup)?,
            sweep_every,
        })
    }
}

fn aad(tenant: &str, id: Uuid) -> Vec<u8> {
    format!("logline-memory:v1:{tenant}:{id}").into_bytes()
}

/// The subject of a statement (`my dog's name` in `My dog's name is Rex`): a new item with the
/// subject of an older one supersedes it.
fn subject(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    [" is ", " are ", " = ", " was "]
        .iter()
        .filter_map(|sep| lower.find(sep))
        .min()
        .map(|at| terms::words(&lower[..at]).join(" "))
        .filter(|s| !s.is_empty())
}

impl Memory {
    /// Memory over `store` with the default settings: the KEK from the node key, the lexical
    /// embedder.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let keys = KeyRing::from_node_key(store.node_key());
        let embedder = Arc::new(LexicalHash::new(
            keys.node_subkey("logline memory lexical v1"),
        ));
        Self {
            store,
            keys,
            embedder,
        }
    }

    pub fn with_settings(
        store: Arc<dyn Store>,
        settings: &MemorySettings,
    ) -> Result<Self, MemoryError> {
        let hex = settings.kek_hex.clone();
        let keys = KeyRing::from_lookup(store.node_key(), |_| hex.clone())?;
        let embedder: Arc<dyn Embedder> = match &settings.embed {
            EmbedConfig::Lexical => Arc::new(LexicalHash::new(
                keys.node_subkey("logline memory lexical v1"),
            )),
            EmbedConfig::OpenAi {
                base_url,
                model,
                api_key,
            } => Arc::new(OpenAiEmbedder::new(base_url, model, api_key.clone())?),
            EmbedConfig::Ollama { base_url, model } => {
                Arc::new(OllamaEmbedder::new(base_url, model)?)
            }
        };
        Ok(Self {
            store,
            keys,
            embedder,
        })
    }

    /// Replaces the embedder (tests, benches).
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = embedder;
        self
    }

    /// One query's embedding (timed separately by `logline bench memory`).
    pub async fn embed_for_bench(&self, text: &str) -> Result<Vec<f32>, MemoryError> {
        self.embed_one(text).await
    }

    pub fn embedder_name(&self) -> String {
        self.embedder.name()
    }

    async fn key(&self, principal: &Principal) -> Result<Secret32, MemoryError> {
        self.keys.data_key(self.store.memory(), principal).await
    }

    async fn embed_one(&self, text: &str) -> Result<Vec<f32>, MemoryError> {
        self.embedder
            .embed(&[text.to_string()])
            .await?
            .pop()
            .ok_or_else(|| MemoryError::Embed(EmbedError::Http("no vector returned".into())))
    }

    /// Encrypts and appends one item with its index row.
    pub async fn remember(
        &self,
        principal: &Principal,
        req: RememberRequest,
        now: DateTime<Utc>,
    ) -> Result<MemoryItem, MemoryError> {
        let (row, item) = self
            .prepare(principal, req, Uuid::now_v7(), now, true)
            .await?;
        self.store.memory().remember(principal, vec![row]).await?;
        Ok(item)
    }

    /// Encrypts and appends many items in one transaction (imports, benchmarks). Contradictions
    /// are not looked for: give `supersedes` explicitly.
    pub async fn remember_many(
        &self,
        principal: &Principal,
        reqs: Vec<RememberRequest>,
        now: DateTime<Utc>,
    ) -> Result<Vec<MemoryItem>, MemoryError> {
        let mut rows = Vec::with_capacity(reqs.len());
        let mut items = Vec::with_capacity(reqs.len());
        for req in reqs {
            let (row, item) = self
                .prepare(principal, req, Uuid::now_v7(), now, false)
                .await?;
            rows.push(row);
            items.push(item);
        }
        self.store.memory().remember(principal, rows).await?;
        Ok(items)
    }

    /// Validates, encrypts and embeds one item: its draft, index row and view.
    async fn prepare(
        &self,
        principal: &Principal,
        req: RememberRequest,
        id: Uuid,
        now: DateTime<Utc>,
        find_superseded: bool,
    ) -> Result<((Draft, NewMemory), MemoryItem), MemoryError> {
        let text = req.text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS || text.contains('\0') {
            return Err(MemoryError::BadRequest(format!(
                "a memory is 1 to {MAX_TEXT_CHARS} characters of text"
            )));
        }
        if req.layer == MemoryLayer::Permanent && req.consent != Consent::Approved {
            return Err(MemoryError::BadRequest(
                "the permanent layer needs a reviewer's approval: remember it as `temporary`, \
                 then ask for it with POST /api/memory/{id}/promote"
                    .into(),
            ));
        }
        if req.layer == MemoryLayer::Session && req.session_id.is_none() {
            return Err(MemoryError::BadRequest(
                "a session memory needs a session (conversation) id".into(),
            ));
        }
        let key = self.key(principal).await?;
        let supersedes = match req.supersedes {
            Some(id) => Some(id),
            // A turn's record states nothing that could contradict a fact.
            None if find_superseded && req.kind != MemoryKind::Turn => {
                self.superseded_by(principal, text, &req, now).await?
            }
            None => None,
        };
        let ttl_at = match req.layer {
            MemoryLayer::Session => Some(now + SESSION_TTL),
            MemoryLayer::Temporary => Some(now + TEMPORARY_TTL),
            MemoryLayer::Permanent => None,
        };
        let plain = serde_json::to_vec(&Plain {
            text: text.to_string(),
            kind: req.kind,
        })
        .map_err(|e| MemoryError::Crypto(e.to_string()))?;
        let sealed = keys::seal(&key, &aad(&principal.tenant_id, id), &plain)?;
        let embedding = self.embed_one(text).await?;
        let terms = terms::hashed(&key.derive("logline memory terms v1"), text).join(" ");
        let span = json!({
            "id": id,
            "entity_type": "memory",
            "visibility": "private",
            "trace_id": req.trace_id,
            "related_to": supersedes.into_iter().collect::<Vec<_>>(),
            "when": ledger::span::format_time(now),
            "who": principal.user_id,
            "did": "remembered",
            "this": format!("memory ({})", req.layer.as_str()),
            "confirmed_by": format!("consent: {}", serde_json::to_value(req.consent).unwrap_or(Value::Null).as_str().unwrap_or("")),
            "if_ok": "recall it when it is relevant, citing this span",
            "if_doubt": "ask the user before relying on it",
            "if_not": "forget it (a redaction destroys the ciphertext)",
            "status": "active",
            "content": {"alg": "A256GCM", "nonce": sealed.nonce, "ciphertext": sealed.ciphertext},
            "metadata": {
                "layer": req.layer,
                "session_id": req.session_id,
                "ttl_at": ttl_at.map(ledger::span::format_time),
                "supersedes": supersedes,
                "embedder": self.embedder.name(),
            },
        });
        let draft = Draft::from_value(span, principal, &[], now)
            .map_err(|e| MemoryError::BadRequest(e.to_string()))?;
        let index = NewMemory {
            session_id: req.session_id.clone(),
            layer: req.layer,
            ttl_at,
            supersedes,
            terms,
            embedding,
        };
        Ok((
            (draft, index),
            MemoryItem {
                id,
                text: text.to_string(),
                kind: req.kind,
                layer: req.layer,
                visibility: Visibility::Private,
                owner_id: principal.user_id.clone(),
                session_id: req.session_id,
                created_at: now,
                ttl_at,
                supersedes,
            },
        ))
    }

    /// The caller's live item with the same subject as `text`, if any (and not the same text).
    async fn superseded_by(
        &self,
        principal: &Principal,
        text: &str,
        req: &RememberRequest,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, MemoryError> {
        let Some(subj) = subject(text) else {
            return Ok(None);
        };
        let own = self.list(principal, None, now, 200).await?;
        let superseded: std::collections::HashSet<Uuid> =
            own.iter().filter_map(|i| i.supersedes).collect();
        Ok(own
            .into_iter()
            .filter(|i| !superseded.contains(&i.id) && i.kind != MemoryKind::Turn)
            .filter(|i| i.layer != MemoryLayer::Session || i.session_id == req.session_id)
            .find(|i| subject(&i.text).as_deref() == Some(subj.as_str()) && i.text != text)
            .map(|i| i.id))
    }

    /// Decrypts an index row's item; `None` when its body is gone or does not authenticate
    /// (logged: it is skipped, never shown half-read).
    fn open_row(&self, key: &Secret32, row: MemoryRow) -> Option<MemoryItem> {
        let body: Value = serde_json::from_str(row.body.as_deref()?).ok()?;
        let c = body.get("content")?;
        let sealed = Sealed {
            nonce: c.get("nonce")?.as_str()?.to_string(),
            ciphertext: c.get("ciphertext")?.as_str()?.to_string(),
        };
        let plain = match keys::open(key, &aad(&row.tenant_id, row.id), &sealed) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(id = %row.id, error = %e, "memory item does not decrypt; skipped");
                return None;
            }
        };
        let plain: Plain = serde_json::from_slice(&plain).ok()?;
        Some(MemoryItem {
            id: row.id,
            text: plain.text,
            kind: plain.kind,
            layer: row.layer,
            visibility: row.visibility,
            owner_id: row.owner_id,
            session_id: row.session_id,
            created_at: row.created_at,
            ttl_at: row.ttl_at,
            supersedes: row.supersedes,
        })
    }

    /// Data keys for every tenant among `rows` the caller may read (public items of another
    /// tenant are encrypted under that tenant's key).
    async fn keys_for(
        &self,
        principal: &Principal,
        rows: &[&MemoryRow],
    ) -> Result<HashMap<String, Secret32>, MemoryError> {
        let mut out = HashMap::new();
        for r in rows {
            if !out.contains_key(&r.tenant_id) {
                let p = Principal::new(principal.user_id.clone(), r.tenant_id.clone());
                out.insert(
                    r.tenant_id.clone(),
                    self.keys.data_key(self.store.memory(), &p).await?,
                );
            }
        }
        Ok(out)
    }

    /// The items most relevant to `query` within `reach`, best first (at most `k`).
    pub async fn recall(
        &self,
        principal: &Principal,
        reach: Reach,
        session_id: Option<&str>,
        query: &str,
        k: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let key = self.key(principal).await?;
        let terms = terms::hashed(&key.derive("logline memory terms v1"), query);
        let embedding = self.embed_one(query).await?;
        let scope = MemoryScope {
            reach,
            session_id: session_id.map(str::to_string),
            now,
        };
        let mut c = self
            .store
            .memory()
            .recall(principal, &scope, &terms, &embedding, k * 4)
            .await?;
        let mut score: HashMap<Uuid, f64> = HashMap::new();
        for list in [&c.semantic, &c.lexical] {
            for (rank, id) in list.iter().enumerate() {
                *score.entry(*id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
            }
        }
        // Only the lexical list is a real match signal for the lexical embedder, and an item
        // of another scope tier only beats a closer one on relevance.
        for (id, s) in &mut score {
            let Some(row) = c.rows.get(id) else { continue };
            let age_days = (now - row.created_at).num_seconds().max(0) as f64 / 86_400.0;
            *s += 0.004 * (-age_days / 14.0).exp();
            *s += if row.layer == MemoryLayer::Session {
                0.003
            } else if row.tenant_id == principal.tenant_id && row.owner_id == principal.user_id {
                0.002
            } else if row.tenant_id == principal.tenant_id {
                0.001
            } else {
                0.0
            };
        }
        let mut ranked: Vec<(Uuid, f64)> = score.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        let rows: Vec<MemoryRow> = ranked
            .iter()
            .filter_map(|(id, _)| c.rows.remove(id))
            .collect();
        let mut keys = self
            .keys_for(principal, &rows.iter().collect::<Vec<_>>())
            .await?;
        keys.insert(principal.tenant_id.clone(), key);
        let scores: HashMap<Uuid, f64> = ranked.into_iter().collect();
        let mut out = Vec::new();
        for row in rows {
            let s = scores.get(&row.id).copied().unwrap_or(0.0);
            let Some(key) = keys.get(&row.tenant_id) else {
                continue;
            };
            if let Some(item) = self.open_row(key, row) {
                out.push(Recalled { item, score: s });
            }
            if out.len() >= k {
                break;
            }
        }
        Ok(out)
    }

    /// The caller's own live items (one session's, when given), newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        session_id: Option<&str>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<MemoryItem>, MemoryError> {
        let key = self.key(principal).await?;
        let scope = MemoryScope {
            reach: Reach::Own,
            session_id: session_id.map(str::to_string),
            now,
        };
        let rows = self.store.memory().list(principal, &scope, limit).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| self.open_row(&key, r))
            .collect())
    }

    /// Forgets items for real: a redaction per item (the store deletes the ciphertext and, in
    /// the same transaction, the index row, embedding and term hashes). Returns what was
    /// forgotten.
    pub async fn forget(
        &self,
        principal: &Principal,
        target: &ForgetTarget,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, MemoryError> {
        // Expired items are forgotten too: `Own` lists live ones, so read far into the future.
        let all = |session: Option<&str>| {
            let scope = MemoryScope {
                reach: Reach::Own,
                session_id: session.map(str::to_string),
                now: now - TimeDelta::days(365 * 100),
            };
            async move { self.store.memory().list(principal, &scope, 100_000).await }
        };
        let ids: Vec<Uuid> = match target {
            ForgetTarget::Item { id } => {
                let owned = all(None).await?.iter().any(|r| r.id == *id);
                if !owned {
                    return Err(MemoryError::NotFound(*id));
                }
                vec![*id]
            }
            // The last thing remembered, not the record of the turn that asked to forget it.
            ForgetTarget::Last { session_id } => {
                let key = self.key(principal).await?;
                all(session_id.as_deref())
                    .await?
                    .into_iter()
                    .filter_map(|r| self.open_row(&key, r))
                    .find(|i| i.kind != MemoryKind::Turn)
                    .map(|i| i.id)
                    .into_iter()
                    .collect()
            }
            ForgetTarget::Session { session_id } => all(Some(session_id))
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect(),
            ForgetTarget::All => all(None).await?.into_iter().map(|r| r.id).collect(),
        };
        // The turns that wrote or recalled an item hold its text too (the message, the model's
        // output, tool arguments and results): found before the items' bodies go.
        let turns = self.turns_holding(principal, &ids).await?;
        let mut done = Vec::new();
        for id in ids {
            match self
                .store
                .redact(principal, id, "forgotten at the user's request")
                .await
            {
                Ok(_) | Err(StoreError::AlreadyRedacted(_)) => done.push(id),
                Err(e) => return Err(e.into()),
            }
        }
        for id in turns {
            match self
                .store
                .redact(
                    principal,
                    id,
                    "held a memory forgotten at the user's request",
                )
                .await
            {
                Ok(_) | Err(StoreError::AlreadyRedacted(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    /// One of `owner`'s live items, decrypted.
    async fn own_item(
        &self,
        owner: &Principal,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<MemoryItem>, MemoryError> {
        let scope = MemoryScope {
            reach: Reach::Own,
            session_id: None,
            now,
        };
        let rows = self.store.memory().list(owner, &scope, 100_000).await?;
        let superseded = rows.iter().any(|r| r.supersedes == Some(id));
        let Some(row) = rows.into_iter().find(|r| r.id == id) else {
            return Ok(None);
        };
        if superseded {
            return Err(MemoryError::BadRequest(format!(
                "memory item {id} was replaced by a newer one; ask about that one"
            )));
        }
        let key = self.key(owner).await?;
        Ok(self.open_row(&key, row))
    }

    /// Asks the tenant's reviewers to keep one of the caller's items permanently: a
    /// `memory_promotion` span, visible to the tenant, naming the item but never its text.
    /// Asking again while a request is open returns that request.
    pub async fn request_permanent(
        &self,
        principal: &Principal,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Promotion, MemoryError> {
        let item = self
            .own_item(principal, id, now)
            .await?
            .ok_or(MemoryError::NotFound(id))?;
        if item.layer == MemoryLayer::Permanent {
            return Err(MemoryError::BadRequest(format!(
                "memory item {id} is already permanent"
            )));
        }
        if item.kind == MemoryKind::Turn {
            return Err(MemoryError::BadRequest(
                "a turn's record lives with its session; it is not kept permanently".into(),
            ));
        }
        if let Some(open) = self
            .promotions_in(principal, Some(id))
            .await?
            .into_iter()
            .find(|p| p.status == "open" && p.owner_id == principal.user_id)
        {
            return Ok(Promotion {
                text: Some(item.text),
                ..open
            });
        }
        let request = Uuid::now_v7();
        let span = json!({
            "id": request,
            "entity_type": PROMOTION,
            "visibility": "tenant",
            "related_to": [id],
            "when": ledger::span::format_time(now),
            "who": principal.user_id,
            "did": "asked to keep a memory permanently",
            "this": "memory_promotion",
            "confirmed_by": format!("requested by its owner, {}", principal.user_id),
            "if_ok": "a reviewer approves: the item is kept until it is forgotten",
            "if_doubt": "it stays temporary",
            "if_not": "rejected: it expires as before",
            "status": "open",
            "content": {"memory_id": id, "owner_id": principal.user_id},
        });
        self.append(principal, span, now).await?;
        Ok(Promotion {
            id: request,
            memory_id: id,
            owner_id: principal.user_id.clone(),
            status: "open".into(),
            text: Some(item.text),
            requested_at: now,
            decided_by: None,
            note: None,
            permanent_id: None,
        })
    }

    /// Promotion requests of the reviewer's tenant, newest first, with the texts of the items
    /// still live (`status` filters: `open`, `approved`, `rejected`). The caller must already
    /// be known to be a reviewer.
    pub async fn promotions(
        &self,
        reviewer: &Principal,
        status: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Promotion>, MemoryError> {
        let mut out = Vec::new();
        // Each owner's items are read once, however many requests they made.
        let mut rows_of: HashMap<String, Vec<MemoryRow>> = HashMap::new();
        let key = self.key(reviewer).await?;
        for mut p in self.promotions_in(reviewer, None).await? {
            if status.is_some_and(|s| s != p.status) {
                continue;
            }
            if p.status == "open" {
                if !rows_of.contains_key(&p.owner_id) {
                    let owner = Principal::new(p.owner_id.clone(), reviewer.tenant_id.clone());
                    let scope = MemoryScope {
                        reach: Reach::Own,
                        session_id: None,
                        now,
                    };
                    let rows = self.store.memory().list(&owner, &scope, 100_000).await?;
                    rows_of.insert(p.owner_id.clone(), rows);
                }
                p.text = rows_of[&p.owner_id]
                    .iter()
                    .find(|r| r.id == p.memory_id)
                    .cloned()
                    .and_then(|r| self.open_row(&key, r))
                    .map(|i| i.text);
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Decides an open request. Closing it comes first (its seq check lets one reviewer
    /// decide); an approval then appends, on the owner's behalf, a permanent copy of the item
    /// that supersedes it. Nobody approves their own item. The caller must already be known to
    /// be a reviewer.
    pub async fn decide_promotion(
        &self,
        reviewer: &Principal,
        request: Uuid,
        approve: bool,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Promotion, MemoryError> {
        let span = self
            .store
            .get(reviewer, request, None)
            .await?
            .ok_or(MemoryError::PromotionNotFound(request))?;
        let view = span
            .to_view()
            .map_err(|e| MemoryError::Crypto(e.to_string()))?;
        let Some(mut p) = promotion_of(&view) else {
            return Err(MemoryError::PromotionNotFound(request));
        };
        if p.status != "open" {
            return Err(MemoryError::Conflict(format!(
                "promotion request {request} was already {}",
                p.status
            )));
        }
        if p.owner_id == reviewer.user_id && approve {
            return Err(MemoryError::Forbidden(
                "nobody approves keeping their own memory: another reviewer must".into(),
            ));
        }
        if note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
            return Err(MemoryError::BadRequest(
                "a note is at most 2000 characters".into(),
            ));
        }
        let owner = Principal::new(p.owner_id.clone(), reviewer.tenant_id.clone());
        let item = if approve {
            Some(
                self.own_item(&owner, p.memory_id, now)
                    .await?
                    .ok_or(MemoryError::NotFound(p.memory_id))?,
            )
        } else {
            None
        };
        let status = if approve { "approved" } else { "rejected" };
        let permanent_id = Uuid::now_v7();
        let mut content = view.get("content").cloned().unwrap_or_else(|| json!({}));
        content["note"] = json!(note);
        if approve {
            content["permanent_id"] = json!(permanent_id);
        }
        let closed = ledger::span::next_seq(
            &view,
            reviewer,
            json!({
                "when": ledger::span::format_time(now),
                "did": format!("memory promotion {status}"),
                "status": status,
                "confirmed_by": reviewer.user_id,
                "content": content,
            }),
        );
        self.append(reviewer, closed, now)
            .await
            .map_err(|e| match e {
                MemoryError::Store(StoreError::Append(_)) => MemoryError::Conflict(format!(
                    "promotion request {request} was decided concurrently"
                )),
                other => other,
            })?;
        if let Some(item) = item {
            let req = RememberRequest {
                text: item.text,
                kind: item.kind,
                layer: MemoryLayer::Permanent,
                session_id: None,
                supersedes: Some(item.id),
                consent: Consent::Approved,
                trace_id: None,
            };
            let (row, _) = self.prepare(&owner, req, permanent_id, now, false).await?;
            self.store.memory().remember(&owner, vec![row]).await?;
            p.permanent_id = Some(permanent_id);
        }
        p.status = status.into();
        p.decided_by = Some(reviewer.user_id.clone());
        p.note = note;
        Ok(p)
    }

    /// The latest version of every promotion request in the caller's tenant (about one item,
    /// when given), newest first.
    async fn promotions_in(
        &self,
        principal: &Principal,
        memory_id: Option<Uuid>,
    ) -> Result<Vec<Promotion>, MemoryError> {
        let mut filter = Filter {
            entity_type: Some(PROMOTION.into()),
            tenant_id: Some(principal.tenant_id.clone()),
            related_to: memory_id,
            limit: Some(ledger::query::MAX_LIMIT),
            ..Filter::default()
        };
        let mut latest: HashMap<Uuid, (i64, Promotion)> = HashMap::new();
        loop {
            let page = self.store.query(principal, &filter).await?;
            for row in &page.rows {
                let Ok(view) = row.span.to_view() else {
                    continue;
                };
                let Some(p) = promotion_of(&view) else {
                    continue;
                };
                let seq = view.get("seq").and_then(Value::as_i64).unwrap_or(0);
                if latest.get(&p.id).is_none_or(|(s, _)| *s < seq) {
                    latest.insert(p.id, (seq, p));
                }
            }
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        let mut out: Vec<Promotion> = latest.into_values().map(|(_, p)| p).collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.id));
        Ok(out)
    }

    /// Appends one span the memory service writes for itself.
    async fn append(
        &self,
        principal: &Principal,
        span: Value,
        now: DateTime<Utc>,
    ) -> Result<(), MemoryError> {
        let draft = Draft::from_value(span, principal, &[], now)
            .map_err(|e| MemoryError::BadRequest(e.to_string()))?;
        for r in ledger::store::append(self.store.as_ref(), principal, vec![draft]).await? {
            r.map_err(StoreError::from)?;
        }
        Ok(())
    }

    /// Redacts up to `limit` items of any tenant past their `ttl_at` (session items after a day,
    /// temporary ones after a month), each on its owner's behalf: recall and listing already
    /// ignore them, this destroys their ciphertext and index rows as forgetting does. Only the
    /// item goes; the turns it came from stay. Returns how many were redacted.
    pub async fn sweep_expired(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<usize, MemoryError> {
        let mut swept = 0;
        for e in self.store.memory().expired(now, limit).await? {
            let owner = Principal::new(e.owner_id.clone(), e.tenant_id.clone());
            let reason = format!("expired at {}", ledger::span::format_time(e.ttl_at));
            match self.store.redact(&owner, e.id, &reason).await {
                Ok(_) => swept += 1,
                Err(StoreError::AlreadyRedacted(_) | StoreError::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(swept)
    }

    /// The caller's own turn records (see [`TURN_RECORDS`]) in the traces of the turns that
    /// wrote one of `items` (the item's `trace_id`) or recalled it (a `prompt_run` related to
    /// it), besides the items themselves.
    async fn turns_holding(
        &self,
        principal: &Principal,
        items: &[Uuid],
    ) -> Result<Vec<Uuid>, MemoryError> {
        let mut traces = std::collections::BTreeSet::new();
        for id in items {
            let mine = |f: Filter| Filter {
                owner_id: Some(principal.user_id.clone()),
                tenant_id: Some(principal.tenant_id.clone()),
                limit: Some(ledger::query::MAX_LIMIT),
                ..f
            };
            let wrote = self
                .store
                .query(
                    principal,
                    &mine(Filter {
                        id: Some(*id),
                        ..Filter::default()
                    }),
                )
                .await?;
            let recalled = self
                .store
                .query(
                    principal,
                    &mine(Filter {
                        related_to: Some(*id),
                        entity_type: Some("prompt_run".into()),
                        ..Filter::default()
                    }),
                )
                .await?;
            for row in wrote.rows.iter().chain(&recalled.rows) {
                if let Some(t) = field(row, "trace_id") {
                    traces.insert(t);
                }
            }
        }
        let mut out = Vec::new();
        for trace in traces {
            let mut filter = Filter {
                trace_id: Some(trace),
                owner_id: Some(principal.user_id.clone()),
                tenant_id: Some(principal.tenant_id.clone()),
                limit: Some(ledger::query::MAX_LIMIT),
                ..Filter::default()
            };
            loop {
                let page = self.store.query(principal, &filter).await?;
                for row in &page.rows {
                    let kind = field(row, "entity_type").unwrap_or_default();
                    let turn_record = kind == "memory"
                        && field(row, "confirmed_by").as_deref() == Some(TURN_RECORD_CONSENT);
                    let id = field(row, "id").and_then(|i| i.parse().ok());
                    if let Some(id) = id
                        && (TURN_RECORDS.contains(&kind.as_str()) || turn_record)
                        && !items.contains(&id)
                        && !out.contains(&id)
                    {
                        out.push(id);
                    }
                }
                match page.next_cursor {
                    Some(c) => filter.after = Some(c),
                    None => break,
                }
            }
        }
        Ok(out)
    }
}

/// A promotion request read from its span's view.
fn promotion_of(view: &Value) -> Option<Promotion> {
    if view.get("entity_type")?.as_str()? != PROMOTION {
        return None;
    }
    let content = view.get("content")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let status = text(view.get("status"))?;
    let decided = status != "open";
    Some(Promotion {
        id: view.get("id")?.as_str()?.parse().ok()?,
        memory_id: content.get("memory_id")?.as_str()?.parse().ok()?,
        owner_id: text(content.get("owner_id"))?,
        status,
        text: None,
        requested_at: view
            .get("id")?
            .as_str()?
            .parse::<Uuid>()
            .ok()
            .and_then(|u| u.get_timestamp())
            .and_then(|t| {
                let (s, n) = t.to_unix();
                DateTime::from_timestamp(s as i64, n)
            })
            .unwrap_or_default(),
        decided_by: if decided {
            text(view.get("confirmed_by"))
        } else {
            None
        },
        note: text(content.get("note")),
        permanent_id: content
            .get("permanent_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
    })
}

/// What a memory span's `confirmed_by` says of a turn record.
const TURN_RECORD_CONSENT: &str = "consent: turn_record";

/// A string field of a listed span (envelope or body), `None` when absent or not text.
fn field(row: &ledger::query::Row, key: &str) -> Option<String> {
    let view = row.span.to_view().ok()?;
    view.get(key)?.as_str().map(str::to_string)
}
