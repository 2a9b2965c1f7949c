//! The span: what a client submits (a [`Draft`]), what the ledger stores (a [`Sealed`] span:
//! a hashed envelope plus a redactable body), and what readers get back (a JSON view).
//!
//! The envelope commits to the body by digest (`body_digest`), and the body carries a random
//! salt, so deleting a body on redaction leaves every hash in the chain checkable while the
//! withheld content cannot be guessed back from its digest.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::crypto::{self, NodeKey};
use crate::error::InputError;

pub use crate::strict::MAX_SPAN_BYTES;

/// Longest accepted value of a field the stores index (`who`, `entity_type`, `trace_id`,
/// `idempotency_key`, `tenant_id`, `owner_id`), in bytes. PostgreSQL cannot index a B-tree
/// entry over 2,704 bytes, so one limit well below that keeps both stores accepting the same
/// spans (and answers 422, not a database error).
pub const MAX_INDEXED_BYTES: usize = 1024;

/// The indexed fields [`MAX_INDEXED_BYTES`] applies to.
const INDEXED_FIELDS: [&str; 6] = [
    "who",
    "entity_type",
    "trace_id",
    "idempotency_key",
    "tenant_id",
    "owner_id",
];

/// The nine LogLine fields; a span missing any of them is kept as a ghost.
pub const NINE_FIELDS: [&str; 9] = [
    "who",
    "did",
    "this",
    "when",
    "confirmed_by",
    "if_ok",
    "if_doubt",
    "if_not",
    "status",
];

/// Body fields that must be strings when present.
const BODY_STRINGS: [&str; 11] = [
    "who",
    "did",
    "this",
    "confirmed_by",
    "if_ok",
    "if_doubt",
    "if_not",
    "name",
    "description",
    "code",
    "language",
];
/// Body fields that may hold any JSON.
const BODY_ANY: [&str; 5] = ["input", "output", "error", "content", "metadata"];

/// Fields the ledger computes; a client may send them back (e.g. re-importing an export) but
/// they are recomputed, never trusted.
const SERVER_FIELDS: [&str; 9] = [
    "chain_pos",
    "prev_hash",
    "curr_hash",
    "body_digest",
    "recorded_at",
    "ghost_reason",
    "redacted",
    "signed_by",
    "client_digest",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Private,
    Tenant,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Tenant => "tenant",
            Self::Public => "public",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(Self::Private),
            "tenant" => Some(Self::Tenant),
            "public" => Some(Self::Public),
            _ => None,
        }
    }
}

/// Who is acting: every read and write runs with a principal's visibility.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub user_id: String,
    pub tenant_id: String,
}

impl Principal {
    pub fn new(user_id: impl Into<String>, tenant_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            tenant_id: tenant_id.into(),
        }
    }

    /// Whether this principal may see a span with these envelope fields (the rule RLS enforces
    /// on PostgreSQL, restated for the embedded store and for in-memory checks).
    pub fn can_see(&self, tenant_id: &str, owner_id: &str, visibility: Visibility) -> bool {
        visibility == Visibility::Public
            || (tenant_id == self.tenant_id
                && (visibility == Visibility::Tenant || owner_id == self.user_id))
    }
}

/// The timestamp format of the ledger: RFC 3339, UTC, microseconds. Fixed width, so it sorts
/// as text too.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A client's own signature over its submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSignature {
    pub digest: String,
    pub signature: String,
    pub public_key: String,
}

/// A validated submission, not yet placed in a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub entity_type: String,
    pub parent_id: Option<Uuid>,
    pub related_to: Vec<Uuid>,
    pub tenant_id: String,
    pub owner_id: String,
    pub visibility: Visibility,
    pub at: DateTime<Utc>,
    pub status: String,
    pub declared_status: Option<String>,
    pub ghost_reason: Option<String>,
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Content fields (the nine minus `when`/`status`, code, payloads, unknown extras).
    pub body: Map<String, Value>,
    pub client: Option<ClientSignature>,
}

/// Keys trusted to sign spans (from the manifest).
pub trait TrustedKeys {
    fn is_trusted(&self, public_key: &str) -> bool;
}

impl TrustedKeys for [String] {
    fn is_trusted(&self, public_key: &str) -> bool {
        self.iter().any(|k| k == public_key)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &'static str) -> InputError {
    InputError::WrongType {
        field: field.to_string(),
        expected,
    }
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, InputError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong(field, "a string")),
    }
}

fn opt_uuid(obj: &Map<String, Value>, field: &str) -> Result<Option<Uuid>, InputError> {
    match opt_string(obj, field).map_err(|_| wrong(field, "a UUID string"))? {
        None => Ok(None),
        Some(s) => Uuid::parse_str(&s)
            .map(Some)
            .map_err(|_| wrong(field, "a UUID string")),
    }
}

fn opt_time(obj: &Map<String, Value>, field: &str) -> Result<Option<DateTime<Utc>>, InputError> {
    match opt_string(obj, field).map_err(|_| wrong(field, "an RFC 3339 timestamp string"))? {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            // Both stores and RFC 3339 itself stop at four-digit years.
            .filter(|t| (0..=9999).contains(&t.year()))
            .map(Some)
            .ok_or_else(|| wrong(field, "an RFC 3339 timestamp string (years 0000-9999 UTC)")),
    }
}

/// Finds the first string (key or value) holding U+0000, which PostgreSQL text cannot store;
/// refusing it up front keeps both stores accepting exactly the same spans.
fn find_nul(value: &Value, path: &mut String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_nul(v, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => find_nul_in(map, path),
        _ => None,
    }
}

fn find_nul_in(map: &Map<String, Value>, path: &mut String) -> Option<String> {
    map.iter().find_map(|(k, v)| {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        let found = if k.contains('\0') {
            Some(path.clone())
        } else {
            find_nul(v, path)
        };
        path.truncate(len);
        found
    })
}

impl Draft {
    /// Parses one line of input (JSON text) strictly (see [`crate::strict`]).
    pub fn parse_line(
        line: &str,
        principal: &Principal,
        trusted: &[String],
        now: DateTime<Utc>,
    ) -> Result<Self, InputError> {
        Self::from_value(crate::strict::parse(line)?, principal, trusted, now)
    }

    /// Validates a submitted JSON value. Missing LogLine fields make a ghost, never an error;
    /// wrong types, foreign tenants and bad signatures are errors.
    pub fn from_value(
        value: Value,
        principal: &Principal,
        trusted: &[String],
        now: DateTime<Utc>,
    ) -> Result<Self, InputError> {
        let mut obj = match value {
            Value::Object(o) => o,
            other => return Err(InputError::NotObject(type_name(&other))),
        };
        if let Some(at) = find_nul_in(&obj, &mut String::new()) {
            return Err(InputError::NulCharacter(at));
        }
        for field in INDEXED_FIELDS {
            if let Some(Value::String(s)) = obj.get(field)
                && s.len() > MAX_INDEXED_BYTES
            {
                return Err(InputError::FieldTooLong {
                    field,
                    size: s.len(),
                    limit: MAX_INDEXED_BYTES,
                });
            }
        }
        let size = serde_json::to_vec(&obj).map_or(usize::MAX, |v| v.len());
        if size > MAX_SPAN_BYTES {
            return Err(InputError::TooLarge {
                size,
                limit: MAX_SPAN_BYTES,
            });
        }

        // A client signature covers the submission exactly as sent, minus the signature itself.
        let client = match (obj.remove("signature"), obj.remove("public_key")) {
            (None | Some(Value::Null), None | Some(Value::Null)) => None,
            (Some(Value::String(signature)), Some(Value::String(public_key))) => {
                if !trusted.is_trusted(&public_key) {
                    return Err(InputError::UntrustedKey(public_key));
                }
                let digest =
                    crypto::digest(crypto::canonical(&Value::Object(obj.clone())).as_bytes());
                crypto::verify_hash_signature(&public_key, &digest, &signature)
                    .map_err(InputError::BadSignature)?;
                Some(ClientSignature {
                    digest,
                    signature,
                    public_key,
                })
            }
            (Some(Value::String(_)), None) | (None, Some(Value::String(_))) => {
                return Err(InputError::HalfSigned);
            }
            (Some(v), _) if !v.is_string() => return Err(wrong("signature", "a hex string")),
            _ => return Err(wrong("public_key", "an `ed25519:<hex>` string")),
        };

        let tenant_id =
            opt_string(&obj, "tenant_id")?.unwrap_or_else(|| principal.tenant_id.clone());
        if tenant_id != principal.tenant_id {
            return Err(InputError::ForeignTenant {
                caller: principal.tenant_id.clone(),
                target: tenant_id,
            });
        }
        let owner_id = opt_string(&obj, "owner_id")?.unwrap_or_else(|| principal.user_id.clone());
        if owner_id != principal.user_id {
            return Err(InputError::ForeignOwner {
                given: owner_id,
                caller: principal.user_id.clone(),
            });
        }
        let visibility = match opt_string(&obj, "visibility")
            .map_err(|_| wrong("visibility", "one of private, tenant, public"))?
        {
            None => Visibility::Private,
            Some(s) => Visibility::parse(&s)
                .ok_or_else(|| wrong("visibility", "one of private, tenant, public"))?,
        };
        let id = opt_uuid(&obj, "id")?;
        let seq = match obj.get("seq") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| wrong("seq", "a non-negative integer"))?,
            ),
        };
        let parent_id = opt_uuid(&obj, "parent_id")?;
        let related_to = match obj.get("related_to") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .ok_or_else(|| wrong("related_to", "an array of UUID strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong("related_to", "an array of UUID strings")),
        };
        let entity_type = opt_string(&obj, "entity_type")?.unwrap_or_else(|| "logline".to_string());
        if entity_type.is_empty() {
            return Err(wrong("entity_type", "a non-empty string"));
        }
        let trace_id = opt_string(&obj, "trace_id")?;
        let idempotency_key = opt_string(&obj, "idempotency_key")?;
        let when = match (opt_time(&obj, "at")?, opt_time(&obj, "when")?) {
            (Some(a), _) => Some(a),
            (None, w) => w,
        };
        let declared_status = opt_string(&obj, "status")?;
        if let Some(v) = obj.get("duration_ms")
            && !v.is_null()
            && v.as_u64().is_none()
        {
            return Err(wrong("duration_ms", "a non-negative integer"));
        }

        let mut body = Map::new();
        for field in BODY_STRINGS {
            if let Some(s) = opt_string(&obj, field)? {
                body.insert(field.to_string(), Value::String(s));
            }
        }
        for field in BODY_ANY.iter().chain(["duration_ms"].iter()) {
            if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
                body.insert((*field).to_string(), v.clone());
            }
        }
        // Unknown fields (tags, details, …) are kept, not dropped: they travel in the body.
        let known: Vec<&str> = [
            "id",
            "seq",
            "entity_type",
            "parent_id",
            "related_to",
            "owner_id",
            "tenant_id",
            "visibility",
            "at",
            "when",
            "status",
            "trace_id",
            "idempotency_key",
            "duration_ms",
        ]
        .into_iter()
        .chain(BODY_STRINGS)
        .chain(BODY_ANY)
        .chain(SERVER_FIELDS)
        .collect();
        let extra: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !extra.is_empty() {
            body.insert("extra".to_string(), Value::Object(extra));
        }

        let missing: Vec<&str> = NINE_FIELDS
            .iter()
            .copied()
            .filter(|f| match *f {
                "when" => when.is_none(),
                "status" => declared_status.is_none(),
                other => !body.contains_key(other),
            })
            .collect();
        let (status, ghost_reason) = if missing.is_empty() {
            (declared_status.clone().unwrap_or_default(), None)
        } else {
            (
                "ghost".to_string(),
                Some(format!("missing: {}", missing.join(", "))),
            )
        };

        Ok(Self {
            id,
            seq,
            entity_type,
            parent_id,
            related_to,
            tenant_id,
            owner_id,
            visibility,
            at: when.unwrap_or(now),
            declared_status: if ghost_reason.is_some() {
                declared_status
            } else {
                None
            },
            status,
            ghost_reason,
            trace_id,
            idempotency_key,
            body,
            client,
        })
    }
}

/// A span placed in its chain, hashed and signed: exactly what the stores persist.
#[derive(Clone, Debug, PartialEq)]
pub struct Sealed {
    pub id: Uuid,
    pub seq: i64,
    pub tenant_id: String,
    pub chain_pos: i64,
    pub entity_type: String,
    pub owner_id: String,
    pub visibility: Visibility,
    pub at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub status: String,
    pub parent_id: Option<Uuid>,
    pub related_to: Vec<Uuid>,
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Canonical JSON of the envelope; `curr_hash` is its digest.
    pub envelope: String,
    /// Canonical JSON of the body (salted); `body_digest` in the envelope is its digest.
    pub body: String,
    pub who: Option<String>,
    pub did: Option<String>,
    pub this: Option<String>,
    pub curr_hash: String,
    pub signature: String,
}

/// Where a draft lands: decided by the store inside its writing transaction.
pub struct Placement<'a> {
    pub id: Uuid,
    pub seq: i64,
    pub chain_pos: i64,
    pub prev_hash: &'a str,
    pub recorded_at: DateTime<Utc>,
}

impl Draft {
    /// Hashes and signs the draft at its place in the chain.
    pub fn seal(&self, place: Placement<'_>, key: &NodeKey) -> Sealed {
        let mut sealed = self.hash(place, key.public_key());
        sealed.signature = key.sign_hash(&sealed.curr_hash);
        sealed
    }

    /// Hashes the draft at its place in the chain, leaving `signature` empty: hashing must follow
    /// chain order, but signatures are independent and can be made in parallel afterwards.
    pub fn hash(&self, place: Placement<'_>, public_key: &str) -> Sealed {
        let mut body = self.body.clone();
        body.insert(
            "salt".to_string(),
            Value::String(hex::encode(crypto::random_bytes::<16>())),
        );
        let body = Value::Object(body);
        let body_text = crypto::canonical(&body);
        let body_digest = crypto::digest(body_text.as_bytes());

        let mut env = Map::new();
        env.insert("v".into(), json!(1));
        env.insert("id".into(), json!(place.id));
        env.insert("seq".into(), json!(place.seq));
        env.insert("tenant_id".into(), json!(self.tenant_id));
        env.insert("chain_pos".into(), json!(place.chain_pos));
        env.insert("prev_hash".into(), json!(place.prev_hash));
        env.insert("entity_type".into(), json!(self.entity_type));
        env.insert("owner_id".into(), json!(self.owner_id));
        env.insert("visibility".into(), json!(self.visibility.as_str()));
        env.insert("at".into(), json!(format_time(self.at)));
        env.insert("recorded_at".into(), json!(format_time(place.recorded_at)));
        env.insert("status".into(), json!(self.status));
        if let Some(r) = &self.ghost_reason {
            env.insert("ghost_reason".into(), json!(r));
        }
        if let Some(s) = &self.declared_status {
            env.insert("declared_status".into(), json!(s));
        }
        if let Some(p) = self.parent_id {
            env.insert("parent_id".into(), json!(p));
        }
        env.insert("related_to".into(), json!(self.related_to));
        if let Some(t) = &self.trace_id {
            env.insert("trace_id".into(), json!(t));
        }
        if let Some(k) = &self.idempotency_key {
            env.insert("idempotency_key".into(), json!(k));
        }
        env.insert("body_digest".into(), json!(body_digest));
        if let Some(c) = &self.client {
            env.insert("client_digest".into(), json!(c.digest));
            env.insert("client_signature".into(), json!(c.signature));
            env.insert("client_public_key".into(), json!(c.public_key));
        }
        env.insert("public_key".into(), json!(public_key));
        let envelope = crypto::canonical(&Value::Object(env));
        let curr_hash = crypto::digest(envelope.as_bytes());
        let text = |f: &str| self.body.get(f).and_then(Value::as_str).map(str::to_string);
        Sealed {
            id: place.id,
            seq: place.seq,
            tenant_id: self.tenant_id.clone(),
            chain_pos: place.chain_pos,
            entity_type: self.entity_type.clone(),
            owner_id: self.owner_id.clone(),
            visibility: self.visibility,
            at: self.at,
            recorded_at: place.recorded_at,
            status: self.status.clone(),
            parent_id: self.parent_id,
            related_to: self.related_to.clone(),
            trace_id: self.trace_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            envelope,
            body: body_text,
            who: text("who"),
            did: text("did"),
            this: text("this"),
            curr_hash,
            signature: String::new(),
        }
    }
}

/// A stored span as read back: its envelope, its body unless redacted, and its seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSpan {
    pub envelope: String,
    pub body: Option<String>,
    pub curr_hash: String,
    pub signature: String,
    /// The redaction span that withheld the body, if any.
    pub redacted_by: Option<Uuid>,
}

impl StoredSpan {
    /// The JSON a reader sees: envelope and body fields side by side, integrity fields included,
    /// and `{"redacted": true}` in place of withheld content.
    pub fn to_view(&self) -> Result<Value, String> {
        let mut out: Map<String, Value> = serde_json::from_str(&self.envelope)
            .map_err(|e| format!("envelope is not JSON: {e}"))?;
        out.remove("v");
        match (&self.body, self.redacted_by) {
            (Some(body), None) => {
                let body: Map<String, Value> =
                    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
                for (k, v) in body {
                    match k.as_str() {
                        "salt" => {}
                        "extra" => {
                            if let Value::Object(extra) = v {
                                for (ek, ev) in extra {
                                    out.entry(ek).or_insert(ev);
                                }
                            }
                        }
                        _ => {
                            out.insert(k, v);
                        }
                    }
                }
            }
            (_, Some(by)) => {
                out.insert("content".into(), json!({"redacted": true}));
                out.insert("redacted".into(), json!(true));
                out.insert("redacted_by".into(), json!(by));
            }
            // Gone without a redaction span that proves it was withheld: shown as missing,
            // never as redacted, so a deletion behind the ledger's back cannot pass for one.
            (None, None) => {
                out.insert("content".into(), json!({"missing": true}));
                out.insert("integrity_warning".into(), json!(MISSING_CONTENT));
            }
        }
        out.insert("curr_hash".into(), json!(self.curr_hash));
        out.insert("signature".into(), json!(self.signature));
        Ok(Value::Object(out))
    }
}

/// What a reader is told about content that is gone without a valid redaction span.
pub const MISSING_CONTENT: &str = "the content of this span is missing and no valid redaction \
     span withheld it: the store was altered behind the ledger's back (run `logline verify`)";

/// The columns of the redaction span a `redactions` row names, read alongside the span it
/// claims to withhold.
#[derive(Clone, Copy, Debug)]
pub struct RedactionProof<'a> {
    /// The tenant the `redactions` row was filed under.
    pub tenant_id: &'a str,
    pub envelope: &'a str,
    pub curr_hash: &'a str,
    pub signature: &'a str,
}

/// The envelope fields that make a span a redaction of something.
#[derive(Deserialize)]
struct RedactionEnvelope<'a> {
    entity_type: std::borrow::Cow<'a, str>,
    tenant_id: std::borrow::Cow<'a, str>,
    #[serde(default)]
    related_to: Vec<Uuid>,
    public_key: std::borrow::Cow<'a, str>,
}

impl RedactionProof<'_> {
    /// Whether this is a sealed `redaction` span of the row's tenant naming `target`: its
    /// envelope hashes to its `curr_hash` and its signature verifies under the key it names.
    /// Readers honour a `redactions` row only then (a forged row is ignored); whether that key
    /// is trusted is for `verify`, which knows the manifest.
    pub fn proves(&self, target: Uuid) -> bool {
        if crypto::digest(self.envelope.as_bytes()) != self.curr_hash {
            return false;
        }
        let Ok(env) = serde_json::from_str::<RedactionEnvelope<'_>>(self.envelope) else {
            return false;
        };
        env.entity_type == "redaction"
            && env.tenant_id == self.tenant_id
            && env.related_to.contains(&target)
            && crypto::verify_hash_signature(&env.public_key, self.curr_hash, self.signature)
                .is_ok()
    }
}

/// What a caller learns about an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub id: Uuid,
    pub seq: i64,
    pub chain_pos: i64,
    pub curr_hash: String,
    pub status: String,
    /// True when an earlier span with the same idempotency key was returned instead.
    pub duplicate: bool,
}

/// The next version of a span as a draft: the same id, `seq + 1`, its descriptive fields
/// carried forward (integrity and signature fields are the ledger's to recompute), the caller
/// as `who`, and `changes` merged over it.
pub fn next_seq(view: &Value, principal: &Principal, changes: Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "id",
        "entity_type",
        "name",
        "visibility",
        "trace_id",
        "parent_id",
        "related_to",
        "this",
        "confirmed_by",
        "if_ok",
        "if_doubt",
        "if_not",
        "status",
        "content",
        "did",
    ] {
        if let Some(v) = view.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    let seq = view.get("seq").and_then(Value::as_i64).unwrap_or(0);
    out.insert("seq".into(), json!(seq + 1));
    out.insert("who".into(), json!(principal.user_id));
    if let Value::Object(c) = changes {
        out.extend(c);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Principal {
        Principal::new("ana", "bakery")
    }
    const NO_KEYS: &[String] = &[];

    fn full() -> Value {
        json!({"who":"ana","did":"confirmed delivery","this":"delivery 312","when":"2026-11-20T10:00:00Z",
               "confirmed_by":"joao","if_ok":"send receipt","if_doubt":"ask","if_not":"open incident","status":"valid"})
    }

    #[test]
    fn a_complete_span_is_not_a_ghost() {
        let d = Draft::from_value(full(), &p(), NO_KEYS, Utc::now()).unwrap();
        assert_eq!(d.status, "valid");
        assert_eq!(d.ghost_reason, None);
        assert_eq!(d.visibility, Visibility::Private);
    }

    #[test]
    fn a_span_missing_fields_becomes_a_ghost_naming_them() {
        let mut v = full();
        v.as_object_mut().unwrap().remove("who");
        v.as_object_mut().unwrap().remove("when");
        let d = Draft::from_value(v, &p(), NO_KEYS, Utc::now()).unwrap();
        assert_eq!(d.status, "ghost");
        assert_eq!(d.ghost_reason.as_deref(), Some("missing: who, when"));
        assert_eq!(d.declared_status.as_deref(), Some("valid"));
    }

    #[test]
    fn wrong_types_and_foreign_tenants_are_rejected_precisely() {
        let e = Draft::from_value(json!({"who": 3}), &p(), NO_KEYS, Utc::now()).unwrap_err();
        assert_eq!(e.to_string(), "field `who` must be a string");
        let e = Draft::from_value(json!({"tenant_id": "other"}), &p(), NO_KEYS, Utc::now())
            .unwrap_err();
        assert!(matches!(e, InputError::ForeignTenant { .. }));
        let e = Draft::from_value(json!([1]), &p(), NO_KEYS, Utc::now()).unwrap_err();
        assert_eq!(e.to_string(), "a span must be a JSON object, got an array");
        let e = Draft::parse_line("{nope", &p(), NO_KEYS, Utc::now()).unwrap_err();
        assert!(matches!(e, InputError::NotJson(_)));
    }

    #[test]
    fn nul_characters_and_out_of_range_years_are_refused_by_name() {
        let e = Draft::from_value(
            json!({"who": "ana", "details": {"note": ["ok", "a\0b"]}}),
            &p(),
            NO_KEYS,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "text at `details.note[1]` contains a NUL character (U+0000), which the ledger cannot store"
        );
        let e = Draft::from_value(
            json!({"when": "+10000-01-01T00:00:00Z"}),
            &p(),
            NO_KEYS,
            Utc::now(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("field `when` must be an RFC 3339"),
            "{e}"
        );
        let ok = Draft::from_value(
            json!({"when": "9999-12-31T23:59:59Z"}),
            &p(),
            NO_KEYS,
            Utc::now(),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn indexed_fields_over_the_limit_are_refused_with_field_size_and_limit() {
        for field in INDEXED_FIELDS {
            let mut v = json!({"did": "x"});
            v[field] = json!("a".repeat(MAX_INDEXED_BYTES + 1));
            let e = Draft::from_value(v, &p(), NO_KEYS, Utc::now()).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "field `{field}` is 1025 bytes, over the 1024-byte limit for indexed fields"
                )
            );
        }
        let ok = json!({"who": "é".repeat(MAX_INDEXED_BYTES / 2), "trace_id": "t".repeat(MAX_INDEXED_BYTES)});
        assert!(Draft::from_value(ok, &p(), NO_KEYS, Utc::now()).is_ok());
    }

    #[test]
    fn oversized_spans_are_rejected_with_the_limit() {
        let big = "x".repeat(MAX_SPAN_BYTES);
        let e = Draft::from_value(json!({"content": big}), &p(), NO_KEYS, Utc::now()).unwrap_err();
        assert!(matches!(
            e,
            InputError::TooLarge {
                limit: MAX_SPAN_BYTES,
                ..
            }
        ));
    }

    #[test]
    fn unknown_fields_are_kept_and_read_back() {
        let mut v = full();
        v["tags"] = json!(["deploy"]);
        let d = Draft::from_value(v, &p(), NO_KEYS, Utc::now()).unwrap();
        let key = NodeKey::generate();
        let s = d.seal(
            Placement {
                id: Uuid::now_v7(),
                seq: 0,
                chain_pos: 0,
                prev_hash: crypto::GENESIS_HASH,
                recorded_at: Utc::now(),
            },
            &key,
        );
        let view = StoredSpan {
            envelope: s.envelope,
            body: Some(s.body),
            curr_hash: s.curr_hash,
            signature: s.signature,
            redacted_by: None,
        }
        .to_view()
        .unwrap();
        assert_eq!(view["tags"], json!(["deploy"]));
        assert_eq!(view["who"], json!("ana"));
        assert!(view.get("salt").is_none());
    }

    #[test]
    fn client_signatures_must_come_from_trusted_keys_and_match() {
        let key = NodeKey::generate();
        let v = full();
        let digest = crypto::digest(crypto::canonical(&v).as_bytes());
        let mut signed = v.clone();
        signed["signature"] = json!(key.sign_hash(&digest));
        signed["public_key"] = json!(key.public_key());
        let trusted = vec![key.public_key().to_string()];
        let d = Draft::from_value(signed.clone(), &p(), trusted.as_slice(), Utc::now()).unwrap();
        assert_eq!(d.client.unwrap().digest, digest);

        let e = Draft::from_value(signed.clone(), &p(), NO_KEYS, Utc::now()).unwrap_err();
        assert!(matches!(e, InputError::UntrustedKey(_)));

        let mut tampered = signed;
        tampered["did"] = json!("denied delivery");
        let e = Draft::from_value(tampered, &p(), trusted.as_slice(), Utc::now()).unwrap_err();
        assert!(matches!(e, InputError::BadSignature(_)));
    }
}
