//! The `Store` trait and its two implementations: PostgreSQL (multi-tenant, RLS) and an
//! embedded SQLite file (the zero-setup default). One conformance suite runs against both.

pub mod group;
pub mod memory;
pub mod postgres;
mod spec_sql;
pub mod sqlite;
mod tree;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::checkpoint::{CheckpointPolicy, Tree};
use crate::crypto::NodeKey;
use crate::error::{AppendError, StoreError};
use crate::merkle::Hash;
use crate::query::{Filter, Page, TailRow};
use crate::span::{
    Appended, Draft, Principal, RedactionProof, StoredSpan, Visibility, format_time,
};
use crate::spec::{QuerySpec, SpecResult};

/// A span as the auditor reads it: raw, with every indexed column of its `spans` and
/// `span_bodies` rows to cross-check (see [`crate::verify`]). Columns are text as stored (ids,
/// instants in the ledger's format, `related_to` as JSON) so that any alteration shows.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub chain_pos: i64,
    pub id: String,
    pub seq: i64,
    pub entity_type: String,
    pub owner_id: String,
    pub visibility: String,
    pub at: String,
    pub recorded_at: String,
    pub status: String,
    pub parent_id: Option<String>,
    /// JSON array text.
    pub related_to: String,
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub envelope: String,
    pub body: Option<String>,
    /// The `span_bodies` row's own columns, when it exists.
    pub body_columns: Option<BodyColumns>,
    /// The `redactions` row naming this span's id, if any.
    pub redaction: Option<RedactionRow>,
    pub curr_hash: String,
    pub signature: String,
}

/// The indexed columns of a `span_bodies` row (`owner_id` and `visibility` exist on PostgreSQL
/// only, for row level security).
#[derive(Clone, Debug)]
pub struct BodyColumns {
    pub tenant_id: String,
    pub owner_id: Option<String>,
    pub visibility: Option<String>,
    pub who: Option<String>,
    pub did: Option<String>,
    pub this: Option<String>,
}

/// A `redactions` row (`visibility` on PostgreSQL only).
#[derive(Clone, Debug)]
pub struct RedactionRow {
    pub redaction_id: String,
    pub tenant_id: String,
    pub visibility: Option<String>,
}

/// A tenant's chain head and its highest stored position, read in one statement.
#[derive(Clone, Debug, Default)]
pub struct AuditHead {
    pub next_pos: Option<i64>,
    pub last_hash: Option<String>,
    pub max_pos: Option<i64>,
}

/// An idempotency row and the span stored at its `chain_pos`, if any.
#[derive(Clone, Debug)]
pub struct IdempotencyAudit {
    pub key: String,
    pub id: String,
    pub seq: i64,
    pub chain_pos: i64,
    pub curr_hash: String,
    pub status: String,
    pub span: Option<IdempotencySpan>,
}

/// The columns of the span an idempotency row points at.
#[derive(Clone, Debug)]
pub struct IdempotencySpan {
    pub id: String,
    pub seq: i64,
    pub curr_hash: String,
    pub status: String,
    pub idempotency_key: Option<String>,
}

/// Decodes one row of `audit_idempotency`'s query, which selects the same columns on both
/// stores: `i.key, i.id, i.seq, i.chain_pos, i.curr_hash, i.status` then the span at that
/// position (`s.id, s.seq, s.curr_hash, s.status, s.idempotency_key`, all NULL when none).
pub(crate) fn idempotency_audit<R: sqlx::Row>(r: &R) -> Result<IdempotencyAudit, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let span_id: Option<String> = r.try_get(6)?;
    Ok(IdempotencyAudit {
        key: r.try_get(0)?,
        id: r.try_get(1)?,
        seq: r.try_get(2)?,
        chain_pos: r.try_get(3)?,
        curr_hash: r.try_get(4)?,
        status: r.try_get(5)?,
        span: match span_id {
            None => None,
            Some(id) => Some(IdempotencySpan {
                id,
                seq: r.try_get(7)?,
                curr_hash: r.try_get(8)?,
                status: r.try_get(9)?,
                idempotency_key: r.try_get(10)?,
            }),
        },
    })
}

/// The columns every span read selects besides the span's own, and the joins they come from:
/// the `redactions` row that claims the span is withheld and the redaction span it names, so
/// the claim is honoured only when that span proves it ([`honoured_redaction`]). `{t}` is the
/// schema prefix.
macro_rules! redaction_columns {
    () => {
        ", s.id AS target, r.redaction_id, r.tenant_id AS r_tenant, rs.envelope AS r_envelope, \
         rs.curr_hash AS r_hash, rs.signature AS r_signature"
    };
}
pub(crate) use redaction_columns;

/// The joins [`redaction_columns`] reads from, for the schema prefix `$t`.
macro_rules! redaction_join {
    ($t:literal) => {
        concat!(
            " LEFT JOIN ",
            $t,
            "redactions r ON r.target_id = s.id LEFT JOIN ",
            $t,
            "spans rs ON rs.id = r.redaction_id AND rs.seq = 0"
        )
    };
}
pub(crate) use redaction_join;

/// The redaction a reader may honour: the `redactions` row's claim, only when the redaction
/// span it names is sealed, of the row's tenant and names `target` (a forged row is ignored,
/// and content gone without one reads as missing, see [`StoredSpan::to_view`]).
/// `proof` holds the `r_tenant, r_envelope, r_hash, r_signature` columns.
pub(crate) fn honoured_redaction(
    target: Uuid,
    claim: Option<Uuid>,
    proof: &[Option<String>; 4],
) -> Option<Uuid> {
    let claim = claim?;
    let [
        Some(tenant_id),
        Some(envelope),
        Some(curr_hash),
        Some(signature),
    ] = proof
    else {
        return None;
    };
    RedactionProof {
        tenant_id,
        envelope,
        curr_hash,
        signature,
    }
    .proves(target)
    .then_some(claim)
}

/// Results of one append call: one per draft, in order.
pub type AppendResults = Vec<Result<Appended, AppendError>>;

#[async_trait]
pub trait Store: Tree + Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// The key that signs what this node appends.
    fn node_key(&self) -> &NodeKey;

    /// The memory index (issue 13) over this store's tables.
    fn memory(&self) -> &dyn memory::MemoryIndex;

    /// Appends several principals' batches in one transaction (group commit): each batch is
    /// placed in its principal's tenant chain with that principal's rights. A draft that
    /// cannot be placed gets its own error; the others are still written.
    async fn append_many(
        &self,
        batches: Vec<(Principal, Vec<Draft>)>,
    ) -> Result<Vec<AppendResults>, StoreError>;

    /// The latest version of a span, or a given `seq`, if the principal may see it.
    async fn get(
        &self,
        principal: &Principal,
        id: Uuid,
        seq: Option<i64>,
    ) -> Result<Option<StoredSpan>, StoreError>;

    /// Every version of a span the principal may see, oldest first.
    async fn versions(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Vec<StoredSpan>, StoreError>;

    async fn query(&self, principal: &Principal, filter: &Filter) -> Result<Page, StoreError>;

    /// Runs the model's `query_ledger` spec: read-only, with the principal's visibility (the
    /// newest version of a span is chosen among the versions the principal may see, as `get`
    /// does), under the spec's row limit and time limit. A query that runs out of time fails
    /// with `StoreError::Io` of kind `TimedOut`.
    async fn query_spec(
        &self,
        principal: &Principal,
        spec: &QuerySpec,
    ) -> Result<SpecResult, StoreError>;

    /// Appends a `redaction` span and withholds every version's body, in one transaction.
    async fn redact(
        &self,
        principal: &Principal,
        id: Uuid,
        reason: &str,
    ) -> Result<Appended, StoreError>;

    /// Spans stored after `after` in ingest order, across tenants (administrative: the live
    /// stream hub reads them once and filters per subscriber).
    async fn tail(&self, after: i64, limit: i64) -> Result<Vec<TailRow>, StoreError>;

    /// The given ingest ids that exist now, in ingest order: lets the hub pick up spans whose
    /// transactions committed after higher ids were already seen, without re-reading a window.
    async fn tail_ids(&self, ids: &[i64]) -> Result<Vec<TailRow>, StoreError>;

    /// The highest ingest id stored (0 for an empty ledger).
    async fn last_ingest_id(&self) -> Result<i64, StoreError>;

    /// Wakes `wake` whenever another process may have appended (PostgreSQL `LISTEN`); the
    /// embedded store has no other writers worth waking for, so the default does nothing.
    fn watch_appends(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let _ = wake;
    }

    /// Tenants that have a chain (administrative: not filtered by visibility).
    async fn tenants(&self) -> Result<Vec<String>, StoreError>;

    /// A tenant's spans in chain order from `from_pos` (administrative: the auditor sees all).
    async fn audit_page(
        &self,
        tenant: &str,
        from_pos: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError>;

    /// Every tenant that has a chain head or a span (administrative): a tenant whose head row
    /// was deleted must still be verified.
    async fn audit_tenants(&self) -> Result<Vec<String>, StoreError>;

    /// The tenant's chain head and highest stored position, in one consistent read.
    async fn audit_head(&self, tenant: &str) -> Result<AuditHead, StoreError>;

    /// The tenant's idempotency rows, each with the span at its `chain_pos`.
    async fn audit_idempotency(&self, tenant: &str) -> Result<Vec<IdempotencyAudit>, StoreError>;
}

/// Decodes a stored 32-byte hash.
pub(crate) fn stored_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a Merkle hash of {} bytes", bytes.len())))
}

/// Where a node keeps the signed checkpoint files of its tenants.
pub fn checkpoint_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("checkpoints")
}

/// Opens the store named by `database_url`, or the embedded file under `data_dir`, with the
/// default checkpoint policy and checkpoint files under `data_dir`.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    key: NodeKey,
) -> Result<Arc<dyn Store>, StoreError> {
    let policy = CheckpointPolicy {
        dir: Some(checkpoint_dir(data_dir)),
        ..CheckpointPolicy::default()
    };
    open_with(database_url, data_dir, key, policy).await
}

/// [`open`] with a given checkpoint policy.
pub async fn open_with(
    database_url: Option<&str>,
    data_dir: &Path,
    key: NodeKey,
    policy: CheckpointPolicy,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(
                postgres::PgStore::connect(url, key)
                    .await?
                    .with_checkpoints(policy),
            ))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(
            sqlite::SqliteStore::open_url(url, key)
                .await?
                .with_checkpoints(policy),
        )),
        Some(other) => Err(StoreError::Config(format!(
            "unsupported database URL `{other}`: use postgres://… or sqlite:…"
        ))),
        None => {
            std::fs::create_dir_all(data_dir)?;
            Ok(Arc::new(
                sqlite::SqliteStore::open_file(&data_dir.join("ledger.sqlite3"), key)
                    .await?
                    .with_checkpoints(policy),
            ))
        }
    }
}

/// Appends one principal's drafts.
pub async fn append(
    store: &dyn Store,
    principal: &Principal,
    drafts: Vec<Draft>,
) -> Result<AppendResults, StoreError> {
    let mut out = store.append_many(vec![(principal.clone(), drafts)]).await?;
    Ok(out.pop().unwrap_or_default())
}

/// The manifest's well-known id (a valid UUID, unlike the seed's ids).
pub const MANIFEST_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_6d61_6e69_6673);
/// The tenant that holds node-level spans such as the manifest.
pub const SYSTEM_TENANT: &str = "system";
/// The principal the node acts as for its own spans.
pub fn system_principal() -> Principal {
    Principal::new("node", SYSTEM_TENANT)
}

/// The native kernels and their well-known span ids (valid UUIDs; the seed's numbering, with
/// `midnight_ruler` and `prompt_eval` added). The first manifest lists and allow-lists all of them; Stage-0 (in
/// the `kernels` crate) seeds their spans and verifies them before booting any.
pub const NATIVE_KERNELS: [(&str, Uuid); 8] = [
    (
        "run_code",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001),
    ),
    (
        "observer_bot",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0002),
    ),
    (
        "request_worker",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0003),
    ),
    (
        "policy_agent",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0004),
    ),
    (
        "provider_exec",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0005),
    ),
    (
        "midnight_ruler",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0006),
    ),
    (
        "prompt_eval",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0007),
    ),
    (
        "prompt_bandit",
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0008),
    ),
];

/// Executions each tenant may start per UTC day unless the manifest says otherwise.
pub const DEFAULT_DAILY_EXEC_LIMIT: u64 = 1000;
/// A run slower than this many milliseconds gets a `status_patch` unless the manifest says
/// otherwise.
pub const DEFAULT_SLOW_MS: u64 = 1000;

/// The latest manifest, if `init` has run.
pub async fn manifest(store: &dyn Store) -> Result<Option<Value>, StoreError> {
    match store.get(&system_principal(), MANIFEST_ID, None).await? {
        None => Ok(None),
        Some(s) => s.to_view().map(Some).map_err(StoreError::Corrupt),
    }
}

/// Public keys the manifest trusts to sign spans (the node key is always among them).
pub async fn trusted_keys(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut keys = vec![store.node_key().public_key().to_string()];
    if let Some(m) = manifest(store).await?
        && let Some(list) = m.pointer("/content/trusted_keys").and_then(Value::as_array)
    {
        keys.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Writes the first manifest when there is none, so a fresh ledger is self-describing.
/// Returns the manifest's view and whether it was created now.
pub async fn ensure_manifest(store: &dyn Store) -> Result<(Value, bool), StoreError> {
    if let Some(m) = manifest(store).await? {
        return Ok((m, false));
    }
    let principal = system_principal();
    let node = store.node_key().public_key().to_string();
    let kernels: serde_json::Map<String, Value> = NATIVE_KERNELS
        .iter()
        .map(|(name, id)| ((*name).to_string(), json!(id)))
        .collect();
    let allowed: Vec<Uuid> = NATIVE_KERNELS.iter().map(|(_, id)| *id).collect();
    let draft = Draft::from_value(
        json!({
            "id": MANIFEST_ID,
            "seq": 0,
            "entity_type": "manifest",
            "visibility": "public",
            "idempotency_key": "manifest:genesis",
            "when": format_time(Utc::now()),
            "who": principal.user_id,
            "did": "initialised the ledger",
            "this": "manifest",
            "confirmed_by": "node key",
            "if_ok": "boot the allow-listed kernels",
            "if_doubt": "boot nothing and record a boot_event",
            "if_not": "refuse to start",
            "status": "active",
            "name": "manifest",
            "content": {
                "trusted_keys": [node],
                "kernels": kernels,
                "allowed_boot_ids": allowed,
                "throttle": {"per_tenant_daily_exec_limit": DEFAULT_DAILY_EXEC_LIMIT},
                "policy": {"slow_ms": DEFAULT_SLOW_MS},
                "features": {}
            }
        }),
        &principal,
        &[],
        Utc::now(),
    )?;
    let result = append(store, &principal, vec![draft]).await?;
    match result.into_iter().next() {
        Some(Ok(_)) | None => {}
        Some(Err(e)) => return Err(e.into()),
    }
    let m = manifest(store)
        .await?
        .ok_or_else(|| StoreError::Corrupt("manifest vanished after append".into()))?;
    Ok((m, true))
}

/// The redaction span itself: a complete LogLine naming who withheld what and why.
/// It is as visible as the span it withholds: redacting reveals nothing to new readers.
pub(crate) fn redaction_draft(
    principal: &Principal,
    target: Uuid,
    visibility: Visibility,
    reason: &str,
) -> Result<Draft, StoreError> {
    Ok(Draft::from_value(
        json!({
            "entity_type": "redaction",
            "related_to": [target],
            "visibility": visibility.as_str(),
            "when": format_time(Utc::now()),
            "who": principal.user_id,
            "did": "redacted",
            "this": format!("span {target}"),
            "confirmed_by": principal.user_id,
            "if_ok": "withhold the content of every version",
            "if_doubt": "keep withholding",
            "if_not": "keep withholding",
            "status": "applied",
            "content": {"target": target, "reason": reason}
        }),
        principal,
        &[],
        Utc::now(),
    )?)
}

/// The statement text each store would run for `spec` as `principal` (PostgreSQL, SQLite),
/// without running it: the fuzz target `query_spec` checks that whatever
/// [`QuerySpec::from_json`](crate::spec::QuerySpec::from_json) accepts compiles without
/// panicking.
#[doc(hidden)]
pub fn spec_sql_text(spec: &crate::spec::QuerySpec, principal: &Principal) -> [String; 2] {
    fn text<D: spec_sql::Dialect>(c: spec_sql::Compiled<D>) -> String {
        match c {
            spec_sql::Compiled::Rows(qb)
            | spec_sql::Compiled::Count(qb)
            | spec_sql::Compiled::Groups(qb) => qb.sql().as_str().to_string(),
        }
    }
    [
        text(spec_sql::compile::<sqlx::Postgres>(spec, principal)),
        text(spec_sql::compile::<sqlx::Sqlite>(spec, principal)),
    ]
}
