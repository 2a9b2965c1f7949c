//! Chain verification: recompute every hash, check every link, signature and body digest, and
//! name the first broken link of each tenant.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::crypto::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::span::TrustedKeys;
use crate::store::Store;

/// A span as the auditor reads it: raw, with the indexed columns to cross-check.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub chain_pos: i64,
    pub id: Uuid,
    pub seq: i64,
    pub entity_type: String,
    pub owner_id: String,
    pub visibility: String,
    pub envelope: String,
    pub body: Option<String>,
    pub redacted: bool,
    pub curr_hash: String,
    pub signature: String,
}

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

/// Verifies one tenant's chain from genesis to tip.
pub async fn verify_tenant(
    store: &dyn Store,
    tenant: &str,
    trusted: &[String],
) -> Result<TenantReport, StoreError> {
    let mut expected_pos = 0i64;
    let mut prev_hash = GENESIS_HASH.to_string();
    loop {
        let rows = store.audit_page(tenant, expected_pos, PAGE).await?;
        let fetched = rows.len() as i64;
        // Signatures and hashes are independent per row: check them on both cores.
        let checks = check_rows_parallel(&rows, tenant, trusted);
        for (row, check) in rows.iter().zip(checks) {
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
            if let Err(reason) = check {
                return Ok(broken(
                    tenant,
                    expected_pos,
                    row.chain_pos,
                    Some(row.id),
                    reason,
                ));
            }
            if let Err(reason) = link(row, &prev_hash) {
                return Ok(broken(
                    tenant,
                    expected_pos,
                    row.chain_pos,
                    Some(row.id),
                    reason,
                ));
            }
            prev_hash = row.curr_hash.clone();
            expected_pos += 1;
        }
        if fetched < PAGE {
            break;
        }
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

fn link(row: &AuditRow, prev_hash: &str) -> Result<(), String> {
    let env: Value = serde_json::from_str(&row.envelope).map_err(|e| format!("envelope: {e}"))?;
    let linked = env.get("prev_hash").and_then(Value::as_str);
    if linked != Some(prev_hash) {
        return Err(format!(
            "prev_hash {} does not match the previous span's curr_hash {prev_hash}",
            linked.unwrap_or("(none)")
        ));
    }
    Ok(())
}

fn check_rows_parallel(
    rows: &[AuditRow],
    tenant: &str,
    trusted: &[String],
) -> Vec<Result<(), String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if rows.len() < 256 || threads == 1 {
        return rows.iter().map(|r| check_row(r, tenant, trusted)).collect();
    }
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|r| check_row(r, tenant, trusted))
                        .collect::<Vec<_>>()
                })
            })
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

/// Everything about one row that does not depend on its neighbours.
fn check_row(row: &AuditRow, tenant: &str, trusted: &[String]) -> Result<(), String> {
    let computed = crypto::digest(row.envelope.as_bytes());
    if computed != row.curr_hash {
        return Err(format!(
            "content was altered: stored curr_hash {} but the envelope hashes to {computed}",
            row.curr_hash
        ));
    }
    let env: Value = serde_json::from_str(&row.envelope).map_err(|e| format!("envelope: {e}"))?;
    let field = |k: &str| env.get(k).cloned().unwrap_or(Value::Null);
    let expect = [
        ("tenant_id", Value::from(tenant)),
        ("chain_pos", Value::from(row.chain_pos)),
        ("id", Value::from(row.id.to_string())),
        ("seq", Value::from(row.seq)),
        ("entity_type", Value::from(row.entity_type.as_str())),
        ("owner_id", Value::from(row.owner_id.as_str())),
        ("visibility", Value::from(row.visibility.as_str())),
    ];
    for (k, v) in expect {
        if field(k) != v {
            return Err(format!(
                "indexed column `{k}` ({v}) disagrees with the signed envelope ({})",
                field(k)
            ));
        }
    }
    let public_key = env
        .get("public_key")
        .and_then(Value::as_str)
        .ok_or("envelope has no public_key")?;
    if !trusted.is_trusted(public_key) {
        return Err(format!(
            "signed by {public_key}, which the manifest does not trust"
        ));
    }
    crypto::verify_hash_signature(public_key, &row.curr_hash, &row.signature)
        .map_err(|e| format!("signature: {e}"))?;
    if let (Some(ck), Some(cd), Some(cs)) = (
        env.get("client_public_key").and_then(Value::as_str),
        env.get("client_digest").and_then(Value::as_str),
        env.get("client_signature").and_then(Value::as_str),
    ) {
        crypto::verify_hash_signature(ck, cd, cs).map_err(|e| format!("client signature: {e}"))?;
    }
    match &row.body {
        Some(body) => {
            let digest = crypto::digest(body.as_bytes());
            if env.get("body_digest").and_then(Value::as_str) != Some(digest.as_str()) {
                return Err("content was altered: the body does not match body_digest".to_string());
            }
        }
        None if row.redacted => {}
        None => return Err("the body is missing and no redaction span withheld it".to_string()),
    }
    Ok(())
}
