//! The manifest as the runtime reads and changes it (DESIGN §5).
//!
//! The manifest is one span with a well-known id in the system tenant; its latest `seq` is the
//! node's configuration. Readers here never take it on faith: [`load`] checks its hash and
//! signature against the trusted keys first, and a manifest that does not verify is an error
//! (Stage-0 then boots nothing). Changing it is appending the next `seq`, signed by the node key
//! ([`set`]); the store's version check makes two concurrent changes serialise instead of one
//! silently overwriting the other.

use std::collections::BTreeMap;

use chrono::Utc;
use ledger::error::{AppendError, InputError};
use ledger::span::format_time;
use ledger::store::{
    self, DEFAULT_DAILY_EXEC_LIMIT, DEFAULT_SLOW_MS, MANIFEST_ID, SYSTEM_TENANT, system_principal,
};
use ledger::verify::{SealError, verify_span};
use ledger::{Draft, Store, StoreError};
use serde_json::{Map, Value, json};
use thiserror::Error;
use uuid::Uuid;

/// Top-level keys a manifest may hold; `manifest set` refuses others so a typo is not stored as
/// configuration nobody reads. Feature flags go under `features.<name>`.
pub const KNOWN_KEYS: [&str; 6] = [
    "kernels",
    "allowed_boot_ids",
    "throttle",
    "policy",
    "trusted_keys",
    "features",
];

/// How often [`set`] re-reads and re-applies its change when another writer got there first.
const SET_ATTEMPTS: u32 = 8;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("the ledger has no manifest yet: run `logline init`")]
    Missing,
    #[error("the manifest span does not verify: {0}")]
    Seal(#[from] SealError),
    #[error("the manifest span is not what it claims: {0}")]
    Misplaced(String),
    #[error("manifest `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("`{0}` is not KEY=VALUE (for example throttle.per_tenant_daily_exec_limit=100)")]
    Assignment(String),
    #[error("the span changed under us {0} times in a row; try again")]
    Contention(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the new version was refused: {0}")]
    Append(#[from] AppendError),
    #[error("the new version is not a valid span: {0}")]
    Input(#[from] InputError),
}

fn invalid(key: &str, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// A verified manifest: its version and the settings the runtime uses, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub seq: i64,
    pub curr_hash: String,
    /// The `content` object as stored.
    pub content: Value,
    /// Kernel name → the span id Stage-0 boots for it.
    pub kernels: BTreeMap<String, Uuid>,
    pub allowed_boot_ids: Vec<Uuid>,
    /// `throttle.per_tenant_daily_exec_limit`.
    pub daily_exec_limit: u64,
    /// `policy.slow_ms`.
    pub slow_ms: u64,
}

impl Manifest {
    /// Reads the typed settings out of a manifest's `content`; missing settings take their
    /// defaults, settings of the wrong type are errors (the runtime fails closed on them).
    pub fn from_content(
        seq: i64,
        curr_hash: String,
        content: Value,
    ) -> Result<Self, ManifestError> {
        let obj = content
            .as_object()
            .ok_or_else(|| invalid("content", "must be an object"))?;
        let kernels = match obj.get("kernels") {
            None | Some(Value::Null) => BTreeMap::new(),
            // The first manifests wrote an empty list here.
            Some(Value::Array(a)) if a.is_empty() => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(name, id)| {
                    id.as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .map(|id| (name.clone(), id))
                        .ok_or_else(|| invalid(&format!("kernels.{name}"), "must be a UUID string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(invalid(
                    "kernels",
                    "must be an object of kernel name to span id",
                ));
            }
        };
        let allowed_boot_ids = match obj.get("allowed_boot_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .ok_or_else(|| invalid("allowed_boot_ids", "must hold UUID strings only"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("allowed_boot_ids", "must be an array of UUIDs")),
        };
        let number = |section: &str, field: &str, default: u64| -> Result<u64, ManifestError> {
            let key = format!("{section}.{field}");
            match obj.get(section) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Object(m)) => match m.get(field) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => v
                        .as_u64()
                        .ok_or_else(|| invalid(&key, "must be a non-negative integer")),
                },
                Some(_) => Err(invalid(section, "must be an object")),
            }
        };
        let daily_exec_limit = number(
            "throttle",
            "per_tenant_daily_exec_limit",
            DEFAULT_DAILY_EXEC_LIMIT,
        )?;
        let slow_ms = number("policy", "slow_ms", DEFAULT_SLOW_MS)?;
        match obj.get("trusted_keys") {
            None | Some(Value::Null) => {}
            Some(Value::Array(keys)) => {
                for k in keys {
                    let text = k
                        .as_str()
                        .ok_or_else(|| invalid("trusted_keys", "must hold key strings only"))?;
                    ledger::crypto::parse_public_key(text)
                        .map_err(|e| invalid("trusted_keys", format!("`{text}`: {e}")))?;
                }
            }
            Some(_) => return Err(invalid("trusted_keys", "must be an array of public keys")),
        }
        match obj.get("features") {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(_) => return Err(invalid("features", "must be an object of flags")),
        }
        Ok(Self {
            seq,
            curr_hash,
            content,
            kernels,
            allowed_boot_ids,
            daily_exec_limit,
            slow_ms,
        })
    }

    /// What `logline manifest show` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "id": MANIFEST_ID,
            "seq": self.seq,
            "curr_hash": self.curr_hash,
            "content": self.content,
        })
    }
}

/// Reads the latest manifest and checks its seal (hash, body digest, trusted signer) and that
/// it is the system tenant's manifest span, before trusting a word of it.
pub async fn load(store: &dyn Store) -> Result<Manifest, ManifestError> {
    let (seq, curr_hash, view) = load_verified(store, MANIFEST_ID, "manifest").await?;
    let content = view.get("content").cloned().unwrap_or(Value::Null);
    Manifest::from_content(seq, curr_hash, content)
}

/// Loads the latest version of a system-tenant span, verifies its seal against the trusted
/// keys and checks that the signed envelope names this id, the system tenant and the expected
/// entity type. Returns its seq, hash and view.
pub(crate) async fn load_verified(
    store: &dyn Store,
    id: Uuid,
    entity_type: &str,
) -> Result<(i64, String, Value), ManifestError> {
    let span = store
        .get(&system_principal(), id, None)
        .await?
        .ok_or(ManifestError::Missing)?;
    let trusted = store::trusted_keys(store).await?;
    let envelope = verify_span(&span, &trusted)?;
    check_envelope(&envelope, id, entity_type).map_err(ManifestError::Misplaced)?;
    let view = span.to_view().map_err(StoreError::Corrupt)?;
    let seq = envelope.get("seq").and_then(Value::as_i64).unwrap_or(0);
    Ok((seq, span.curr_hash, view))
}

/// The signed envelope must say what the row was found as: a span can be moved under another
/// id (or into another tenant) only behind the store's back, and that is tampering.
pub(crate) fn check_envelope(
    envelope: &Map<String, Value>,
    id: Uuid,
    entity_type: &str,
) -> Result<(), String> {
    check_place(envelope, id)?;
    let text = |k: &str| envelope.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("entity_type") != entity_type {
        return Err(format!(
            "it is a `{}` span, not a `{entity_type}` span",
            text("entity_type")
        ));
    }
    Ok(())
}

/// The id and tenant half of [`check_envelope`].
pub(crate) fn check_place(envelope: &Map<String, Value>, id: Uuid) -> Result<(), String> {
    let text = |k: &str| envelope.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("id") != id.to_string() {
        return Err(format!(
            "found under id {id} but its signed envelope says {}",
            text("id")
        ));
    }
    if text("tenant_id") != SYSTEM_TENANT {
        return Err(format!(
            "its signed envelope places it in tenant `{}`, not `{SYSTEM_TENANT}`",
            text("tenant_id")
        ));
    }
    Ok(())
}

/// Parses `KEY=VALUE`: the key is dotted (`throttle.per_tenant_daily_exec_limit`), the value is
/// JSON when it parses as JSON (`100`, `true`, `["a"]`, `{"x":1}`) and a string otherwise.
pub fn parse_assignment(text: &str) -> Result<(String, Value), ManifestError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| ManifestError::Assignment(text.to_string()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ManifestError::Assignment(text.to_string()));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// Sets a dotted key inside a JSON object, creating intermediate objects.
pub fn set_path(target: &mut Value, key: &str, value: Value) -> Result<(), ManifestError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .ok_or_else(|| ManifestError::Assignment(key.to_string()))?;
    let mut here = target;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let obj = here
            .as_object_mut()
            .ok_or_else(|| invalid(&walked, "is not an object, so it has no fields to set"))?;
        here = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let obj = here.as_object_mut().ok_or_else(|| {
        invalid(
            if walked.is_empty() { key } else { &walked },
            "is not an object, so it has no fields to set",
        )
    })?;
    obj.insert(last.to_string(), value);
    Ok(())
}

/// Checks a manifest content a user is about to store: the known settings well-typed, no
/// unknown top-level keys, no unknown fields under `throttle` and `policy`.
pub fn validate_new_content(content: &Value) -> Result<(), ManifestError> {
    Manifest::from_content(0, String::new(), content.clone())?;
    let obj = content
        .as_object()
        .ok_or_else(|| invalid("content", "must be an object"))?;
    if let Some(k) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(invalid(
            k,
            format!(
                "is not a manifest setting (known: {}; feature flags go under features.<name>)",
                KNOWN_KEYS.join(", ")
            ),
        ));
    }
    for (section, fields) in [
        ("throttle", &["per_tenant_daily_exec_limit"][..]),
        ("policy", &["slow_ms"][..]),
    ] {
        if let Some(Value::Object(m)) = obj.get(section)
            && let Some(k) = m.keys().find(|k| !fields.contains(&k.as_str()))
        {
            return Err(invalid(
                &format!("{section}.{k}"),
                format!("is not a setting (known: {})", fields.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Appends the next manifest seq with the assignments applied, as the system principal (so it
/// is signed by the node key). `who` is the operator recorded in the span. If another writer
/// appended a seq in between, the change is re-applied to the newer manifest. Returns the new,
/// verified manifest.
pub async fn set(
    store: &dyn Store,
    who: &str,
    assignments: &[(String, Value)],
) -> Result<Manifest, ManifestError> {
    let principal = system_principal();
    for _ in 0..SET_ATTEMPTS {
        let current = load(store).await?;
        let mut content = current.content.clone();
        for (key, value) in assignments {
            set_path(&mut content, key, value.clone())?;
        }
        validate_new_content(&content)?;
        let keys: Vec<&str> = assignments.iter().map(|(k, _)| k.as_str()).collect();
        let draft = Draft::from_value(
            json!({
                "id": MANIFEST_ID,
                "seq": current.seq + 1,
                "entity_type": "manifest",
                "visibility": "public",
                "name": "manifest",
                "when": format_time(Utc::now()),
                "who": who,
                "did": "changed the manifest",
                "this": "manifest",
                "confirmed_by": "node key",
                "if_ok": "boot the allow-listed kernels with these settings",
                "if_doubt": "boot nothing and record a boot_event",
                "if_not": "refuse to start",
                "status": "active",
                "content": content,
                "metadata": {"changed": keys, "previous_seq": current.seq},
            }),
            &principal,
            &[],
            Utc::now(),
        )?;
        let result = store::append(store, &principal, vec![draft]).await?;
        match result.into_iter().next() {
            Some(Ok(_)) => return load(store).await,
            Some(Err(AppendError::SeqConflict { .. })) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(StoreError::Corrupt("the store reported no result".into()).into()),
        }
    }
    Err(ManifestError::Contention(SET_ATTEMPTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_parse_json_values_and_fall_back_to_strings() {
        let (k, v) = parse_assignment("throttle.per_tenant_daily_exec_limit=100").unwrap();
        assert_eq!(
            (k.as_str(), v),
            ("throttle.per_tenant_daily_exec_limit", json!(100))
        );
        assert_eq!(
            parse_assignment("features.chat=true").unwrap().1,
            json!(true)
        );
        assert_eq!(
            parse_assignment("features.tz=Europe/Paris").unwrap().1,
            json!("Europe/Paris")
        );
        assert_eq!(parse_assignment("features.x=").unwrap().1, json!(""));
        assert!(parse_assignment("no-equals").is_err());
        assert!(parse_assignment("a..b=1").is_err());
        assert!(parse_assignment("=1").is_err());
    }

    #[test]
    fn dotted_keys_create_objects_and_refuse_to_descend_into_values() {
        let mut c = json!({"policy": {"slow_ms": 5}, "kernels": {}});
        set_path(&mut c, "policy.slow_ms", json!(10)).unwrap();
        set_path(&mut c, "features.a.b", json!(1)).unwrap();
        assert_eq!(c["policy"]["slow_ms"], json!(10));
        assert_eq!(c["features"]["a"]["b"], json!(1));
        let e = set_path(&mut c, "policy.slow_ms.x", json!(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest `policy.slow_ms`: is not an object, so it has no fields to set"
        );
    }

    #[test]
    fn new_content_is_checked_for_types_and_unknown_keys() {
        let ok = json!({"throttle": {"per_tenant_daily_exec_limit": 2}, "policy": {"slow_ms": 10},
            "kernels": {}, "allowed_boot_ids": [], "features": {"x": 1}});
        validate_new_content(&ok).unwrap();
        let bad = |c: Value| validate_new_content(&c).unwrap_err().to_string();
        assert_eq!(
            bad(json!({"throttle": {"per_tenant_daily_exec_limit": "lots"}})),
            "manifest `throttle.per_tenant_daily_exec_limit`: must be a non-negative integer"
        );
        assert!(
            bad(json!({"trottle": {}}))
                .starts_with("manifest `trottle`: is not a manifest setting")
        );
        assert!(
            bad(json!({"policy": {"slow": 1}}))
                .starts_with("manifest `policy.slow`: is not a setting")
        );
        assert!(bad(json!({"allowed_boot_ids": ["nope"]})).contains("UUID"));
        assert!(
            bad(json!({"trusted_keys": ["ed25519:zz"]})).starts_with("manifest `trusted_keys`")
        );
    }

    #[test]
    fn missing_settings_take_the_defaults() {
        let m = Manifest::from_content(3, "h".into(), json!({"kernels": []})).unwrap();
        assert_eq!(m.daily_exec_limit, DEFAULT_DAILY_EXEC_LIMIT);
        assert_eq!(m.slow_ms, DEFAULT_SLOW_MS);
        assert!(m.kernels.is_empty() && m.allowed_boot_ids.is_empty());
    }
}
