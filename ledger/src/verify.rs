//! Chain verification: recompute every hash, check every link, signature and body digest, and
//! name the first broken link of each tenant.

use std::borrow::Cow;
use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::span::{StoredSpan, TrustedKeys};
use crate::store::{AuditRow, Store};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Break {
    pub chain_pos: i64,
    pub span_id: Option<Uuid>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TenantReport {
    pub tenant_id: String,
    pub spans: i64,
    pub ok: bool,
    pub first_break: Option<Break>,
}

/// Rows fetched per audit page.
const PAGE: i64 = 8192;

/// Verifies one tenant's chain from genesis to tip. The next page is fetched while the
/// current one is checked on every core.
pub async fn verify_tenant(
    store: &dyn Store,
    tenant: &str,
    trusted: &[String],
) -> Result<TenantReport, StoreError> {
    let mut expected_pos = 0i64;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut rows = store.audit_page(tenant, 0, PAGE).await?;
    loop {
        let fetched = rows.len() as i64;
        let (t, k) = (tenant.to_string(), trusted.to_vec());
        let checking = tokio::task::spawn_blocking(move || {
            let checks = check_rows_parallel(&rows, &t, &k);
            (rows, checks)
        });
        let next = async {
            if fetched < PAGE {
                Ok(Vec::new())
            } else {
                store.audit_page(tenant, expected_pos + fetched, PAGE).await
            }
        };
        let (checked, next) = tokio::join!(checking, next);
        let (page, checks) =
            checked.map_err(|e| StoreError::Corrupt(format!("verifier task failed: {e}")))?;
        for (row, check) in page.iter().zip(checks) {
            let fail =
                |reason: String| broken(tenant, expected_pos, row.chain_pos, Some(row.id), reason);
            if row.chain_pos != expected_pos {
                return Ok(broken(
                    tenant,
                    expected_pos,
                    expected_pos,
                    Some(row.id),
                    format!(
                        "chain_pos {expected_pos} is missing: the next stored span (id {}) is at {}",
                        row.id, row.chain_pos
                    ),
                ));
            }
            let linked = match check {
                Ok(linked) => linked,
                Err(reason) => return Ok(fail(reason)),
            };
            if linked != prev_hash {
                return Ok(fail(format!(
                    "prev_hash {linked} does not match the previous span's curr_hash {prev_hash}"
                )));
            }
            prev_hash.clone_from(&row.curr_hash);
            expected_pos += 1;
        }
        if fetched < PAGE {
            break;
        }
        rows = next?;
    }
    Ok(TenantReport {
        tenant_id: tenant.to_string(),
        spans: expected_pos,
        ok: true,
        first_break: None,
    })
}

fn broken(tenant: &str, count: i64, pos: i64, id: Option<Uuid>, reason: String) -> TenantReport {
    TenantReport {
        tenant_id: tenant.to_string(),
        spans: count,
        ok: false,
        first_break: Some(Break {
            chain_pos: pos,
            span_id: id,
            reason,
        }),
    }
}

fn check_rows_parallel(
    rows: &[AuditRow],
    tenant: &str,
    trusted: &[String],
) -> Vec<Result<String, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if rows.len() < 256 || threads == 1 {
        return check_rows(rows, tenant, trusted);
    }
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| s.spawn(move || check_rows(part, tenant, trusted)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("verifier thread panicked".to_string())])
            })
            .collect()
    })
}

/// Checks rows, verifying the node signatures as one Ed25519 batch (about twice as fast as
/// one by one); only when the batch fails are they checked singly to name the culprit.
fn check_rows(rows: &[AuditRow], tenant: &str, trusted: &[String]) -> Vec<Result<String, String>> {
    let mut keys: HashMap<String, Result<VerifyingKey, String>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    let mut batch: Vec<(usize, [u8; 32], Signature, VerifyingKey)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        match check_row(row, tenant, trusted, &mut keys) {
            Ok(c) => {
                batch.push((i, c.message, c.signature, c.key));
                out.push(Ok(c.prev_hash));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    let messages: Vec<&[u8]> = batch.iter().map(|b| &b.1[..]).collect();
    let signatures: Vec<Signature> = batch.iter().map(|b| b.2).collect();
    let verifying: Vec<VerifyingKey> = batch.iter().map(|b| b.3).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_err() {
        for (i, msg, sig, key) in &batch {
            if key.verify_strict(msg, sig).is_err() {
                out[*i] = Err("signature: Ed25519 signature does not match".to_string());
            }
        }
    }
    out
}

/// The envelope fields verification reads, parsed without building a generic JSON tree.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
    chain_pos: i64,
    id: Uuid,
    seq: i64,
    #[serde(borrow)]
    entity_type: Cow<'a, str>,
    #[serde(borrow)]
    owner_id: Cow<'a, str>,
    #[serde(borrow)]
    visibility: Cow<'a, str>,
    prev_hash: String,
    #[serde(borrow)]
    public_key: Cow<'a, str>,
    #[serde(borrow)]
    body_digest: Cow<'a, str>,
    #[serde(borrow, default)]
    client_public_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_digest: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_signature: Option<Cow<'a, str>>,
}

/// A row that passed its own checks: the hash it links to, and its node signature to verify
/// in the batch.
struct Checked {
    prev_hash: String,
    message: [u8; 32],
    signature: Signature,
    key: VerifyingKey,
}

/// Why one span's seal does not hold: its content, its signer or its signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The envelope or the body is not what was hashed (or is unreadable).
    #[error("{0}")]
    Altered(String),
    /// Signed by a key the manifest does not trust.
    #[error("signed by {0}, which the manifest does not trust")]
    Untrusted(String),
    /// The signature (node or client) does not verify.
    #[error("{0}")]
    Signature(String),
}

/// Checks one stored span on its own: its envelope hashes to `curr_hash`, its body (unless
/// redacted) matches `body_digest`, and it is signed by a trusted key. The same checks as
/// [`verify_tenant`] minus the links to its neighbours, for readers that must trust one span
/// (Stage-0 before booting a kernel). Returns the span's envelope as JSON.
pub fn verify_span(
    span: &StoredSpan,
    trusted: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, SealError> {
    let env = open_envelope(&span.envelope, &span.curr_hash)?;
    let checked = check_seal(
        env,
        span.body.as_deref(),
        span.redacted_by.is_some(),
        &span.curr_hash,
        &span.signature,
        trusted,
        &mut HashMap::new(),
    )?;
    checked
        .key
        .verify_strict(&checked.message, &checked.signature)
        .map_err(|_| SealError::Signature("signature: Ed25519 signature does not match".into()))?;
    serde_json::from_str(&span.envelope).map_err(|e| SealError::Altered(format!("envelope: {e}")))
}

/// Recomputes the envelope's hash and parses the fields verification reads.
fn open_envelope<'a>(envelope: &'a str, curr_hash: &str) -> Result<Envelope<'a>, SealError> {
    let computed = crypto::digest(envelope.as_bytes());
    if computed != curr_hash {
        return Err(SealError::Altered(format!(
            "content was altered: stored curr_hash {curr_hash} but the envelope hashes to {computed}"
        )));
    }
    serde_json::from_str(envelope).map_err(|e| SealError::Altered(format!("envelope: {e}")))
}

/// Everything about one row that does not depend on its neighbours, except the node signature,
/// which is returned for batch verification.
fn check_row(
    row: &AuditRow,
    tenant: &str,
    trusted: &[String],
    keys: &mut HashMap<String, Result<VerifyingKey, String>>,
) -> Result<Checked, String> {
    let env = open_envelope(&row.envelope, &row.curr_hash).map_err(|e| e.to_string())?;
    let mismatch = |k: &str, column: &dyn std::fmt::Display, signed: &dyn std::fmt::Display| {
        Err(format!(
            "indexed column `{k}` ({column}) disagrees with the signed envelope ({signed})"
        ))
    };
    if env.tenant_id != tenant {
        return mismatch("tenant_id", &tenant, &env.tenant_id);
    }
    if env.chain_pos != row.chain_pos {
        return mismatch("chain_pos", &row.chain_pos, &env.chain_pos);
    }
    if env.id != row.id {
        return mismatch("id", &row.id, &env.id);
    }
    if env.seq != row.seq {
        return mismatch("seq", &row.seq, &env.seq);
    }
    if env.entity_type != row.entity_type {
        return mismatch("entity_type", &row.entity_type, &env.entity_type);
    }
    if env.owner_id != row.owner_id {
        return mismatch("owner_id", &row.owner_id, &env.owner_id);
    }
    if env.visibility != row.visibility {
        return mismatch("visibility", &row.visibility, &env.visibility);
    }
    check_seal(
        env,
        row.body.as_deref(),
        row.redacted,
        &row.curr_hash,
        &row.signature,
        trusted,
        keys,
    )
    .map_err(|e| e.to_string())
}

/// The checks shared by chain verification and [`verify_span`]: trusted signer, well-formed
/// signature, client signature, body digest. The node signature itself is left to the caller.
fn check_seal(
    env: Envelope<'_>,
    body: Option<&str>,
    redacted: bool,
    curr_hash: &str,
    signature: &str,
    trusted: &[String],
    keys: &mut HashMap<String, Result<VerifyingKey, String>>,
) -> Result<Checked, SealError> {
    if !trusted.is_trusted(&env.public_key) {
        return Err(SealError::Untrusted(env.public_key.to_string()));
    }
    let key = keys
        .entry(env.public_key.to_string())
        .or_insert_with(|| crypto::parse_public_key(&env.public_key))
        .clone()
        .map_err(|e| SealError::Signature(format!("signature: {e}")))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature, &mut sig)
        .map_err(|e| SealError::Signature(format!("signature is not 128 hex characters: {e}")))?;
    if let (Some(ck), Some(cd), Some(cs)) = (
        &env.client_public_key,
        &env.client_digest,
        &env.client_signature,
    ) {
        crypto::verify_hash_signature(ck, cd, cs)
            .map_err(|e| SealError::Signature(format!("client signature: {e}")))?;
    }
    match body {
        Some(body) => {
            if crypto::digest(body.as_bytes()) != env.body_digest {
                return Err(SealError::Altered(
                    "content was altered: the body does not match body_digest".to_string(),
                ));
            }
        }
        None if redacted => {}
        None => {
            return Err(SealError::Altered(
                "the body is missing and no redaction span withheld it".to_string(),
            ));
        }
    }
    Ok(Checked {
        prev_hash: env.prev_hash,
        message: crypto::digest_bytes(curr_hash).map_err(SealError::Altered)?,
        signature: Signature::from_bytes(&sig),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKey;
    use crate::span::{Draft, Placement, Principal};
    use chrono::Utc;
    use serde_json::json;

    fn chain(key: &NodeKey, n: usize) -> Vec<AuditRow> {
        let p = Principal::new("ana", "bakery");
        let mut prev = GENESIS_HASH.to_string();
        (0..n)
            .map(|i| {
                let d = Draft::from_value(
                    json!({"who": "ana", "this": format!("item {i}")}),
                    &p,
                    &[],
                    Utc::now(),
                );
                let d = d.unwrap_or_else(|e| panic!("{e}"));
                let id = Uuid::now_v7();
                let s = d.seal(
                    Placement {
                        id,
                        seq: 0,
                        chain_pos: i as i64,
                        prev_hash: &prev,
                        recorded_at: Utc::now(),
                    },
                    key,
                );
                prev = s.curr_hash.clone();
                AuditRow {
                    chain_pos: i as i64,
                    id,
                    seq: 0,
                    entity_type: s.entity_type,
                    owner_id: s.owner_id,
                    visibility: s.visibility.as_str().to_string(),
                    envelope: s.envelope,
                    body: Some(s.body),
                    redacted: false,
                    curr_hash: s.curr_hash,
                    signature: s.signature,
                }
            })
            .collect()
    }

    #[test]
    fn a_forged_signature_is_found_inside_a_batch() {
        let key = NodeKey::generate();
        let trusted = vec![key.public_key().to_string()];
        let mut rows = chain(&key, 600);
        assert!(
            check_rows_parallel(&rows, "bakery", &trusted)
                .iter()
                .all(Result::is_ok)
        );
        // Same hash, signed by a key the manifest does not know, claimed as the node's.
        let forger = NodeKey::generate();
        rows[417].signature = forger.sign_hash(&rows[417].curr_hash);
        let results = check_rows_parallel(&rows, "bakery", &trusted);
        let bad: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(bad, vec![417]);
    }

    #[test]
    fn one_span_is_checked_on_its_own_and_says_which_seal_failed() {
        let key = NodeKey::generate();
        let row = chain(&key, 1).remove(0);
        let span = StoredSpan {
            envelope: row.envelope,
            body: row.body,
            curr_hash: row.curr_hash,
            signature: row.signature,
            redacted_by: None,
        };
        let trusted = vec![key.public_key().to_string()];
        let envelope = verify_span(&span, &trusted).unwrap();
        assert_eq!(envelope["chain_pos"], json!(0));
        assert!(
            matches!(verify_span(&span, &[]), Err(SealError::Untrusted(k)) if k == key.public_key())
        );
        let mut altered = span.clone();
        altered.body = altered.body.map(|b| b.replace("item", "ITEM"));
        assert!(matches!(
            verify_span(&altered, &trusted),
            Err(SealError::Altered(_))
        ));
        let mut forged = span.clone();
        forged.signature = NodeKey::generate().sign_hash(&span.curr_hash);
        assert!(matches!(
            verify_span(&forged, &trusted),
            Err(SealError::Signature(_))
        ));
    }

    #[test]
    fn an_untrusted_signer_and_a_missing_body_are_reported() {
        let key = NodeKey::generate();
        let mut rows = chain(&key, 3);
        let results = check_rows(&rows, "bakery", &[]);
        assert!(results[0].as_ref().unwrap_err().contains("does not trust"));
        rows[1].body = None;
        let results = check_rows(&rows, "bakery", &[key.public_key().to_string()]);
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .contains("no redaction span")
        );
    }
}
