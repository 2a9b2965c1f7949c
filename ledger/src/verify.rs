//! Chain verification: everything a reader can see must be what was signed. Every hash, link,
//! signature and body digest is recomputed, and every column that reads, filters and streams
//! use is compared with the signed envelope or body in the same pass (no query per span); then
//! the chain head, the redactions and the idempotency keys are checked against the rows. Each
//! problem is named: tenant, chain position, span, table, column, stored and signed values.

use std::borrow::Cow;
use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::{self, Checkpoint};
use crate::crypto::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::merkle::{self, Frontier, Hash};
use crate::span::{StoredSpan, TrustedKeys};
use crate::store::{AuditHead, AuditRow, IdempotencyAudit, Store};

/// What is wrong, as a closed list a script can match on.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The envelope does not hash to the stored `curr_hash`, or cannot be read.
    EnvelopeAltered,
    /// The body does not match the envelope's `body_digest`.
    BodyAltered,
    /// The body is gone and no redaction claims it.
    BodyMissing,
    /// An indexed column disagrees with the signed envelope or body.
    ColumnMismatch,
    /// Signed by a key the manifest does not trust.
    UntrustedSigner,
    /// A node or client signature does not verify.
    BadSignature,
    /// `prev_hash` is not the previous span's `curr_hash`.
    BrokenLink,
    /// Chain positions with no span.
    MissingSpans,
    /// The chain head disagrees with the rows (a cut tail, rows beyond the head, a changed hash).
    ChainHead,
    /// A `redactions` row that no valid redaction span of the tenant backs.
    ForgedRedaction,
    /// The idempotency table disagrees with the spans.
    Idempotency,
    /// A checkpoint covers more spans than the chain has: the tail was cut (with or without
    /// rolling the chain head back).
    Truncated,
    /// The chain's Merkle root at a checkpoint's size is not the signed one: the chain was
    /// rewritten (rolled back and appended again, or forked).
    Fork,
    /// A checkpoint that cannot be used: bad signature, another node's or tenant's origin.
    BadCheckpoint,
    /// The stored Merkle tree (`merkle_heads`) disagrees with the chain.
    TreeHead,
}

/// One problem found, with everything needed to find it again.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The chain position concerned, when there is one.
    pub chain_pos: Option<i64>,
    /// The span concerned, when there is one.
    pub span_id: Option<Uuid>,
    /// The table whose row is wrong: `spans`, `span_bodies`, `redactions`, `chain_heads`,
    /// `idempotency` or `merkle_heads`, or `checkpoint` for a checkpoint the chain contradicts.
    pub table: &'static str,
    /// The column that differs, when one does.
    pub column: Option<&'static str>,
    /// What the column holds (content values are only shown by the CLI, see [`Problem::without_values`]).
    pub stored: Option<String>,
    /// What the signed envelope or body (or the rows, for the chain head) says instead.
    pub signed: Option<String>,
    pub reason: String,
}

impl Problem {
    /// The problem without stored and signed values other than positions and hashes, for
    /// readers who must not see another member's content (the HTTP report).
    pub fn without_values(mut self) -> Self {
        let structural = matches!(
            self.column,
            Some(
                "prev_hash"
                    | "curr_hash"
                    | "last_hash"
                    | "next_pos"
                    | "chain_pos"
                    | "signature"
                    | "tree_size"
                    | "root_hash"
            )
        );
        if !structural {
            self.stored = None;
            self.signed = None;
        }
        self
    }
}

/// The result of verifying one tenant.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TenantReport {
    pub tenant_id: String,
    /// Spans checked.
    pub spans: i64,
    pub ok: bool,
    /// The first problem found, or none.
    pub first_break: Option<Problem>,
    /// Problems found, in chain order and then the tables checked after the chain (at most
    /// [`MAX_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// How many problems were found in all.
    pub problem_count: usize,
}

/// Problems kept per tenant: one tampered column over a million rows must not become a
/// million-line report.
pub const MAX_PROBLEMS: usize = 100;

/// Rows fetched per audit page.
const PAGE: i64 = 8192;

/// Collects a tenant's problems.
struct Findings {
    tenant: String,
    problems: Vec<Problem>,
    count: usize,
}

impl Findings {
    fn push(&mut self, p: Problem) {
        self.count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    fn report(self, spans: i64) -> TenantReport {
        TenantReport {
            first_break: self.problems.first().cloned(),
            ok: self.count == 0,
            tenant_id: self.tenant,
            spans,
            problems: self.problems,
            problem_count: self.count,
        }
    }
}

/// A problem found in one row, before its position is attached.
#[derive(Debug)]
struct Finding {
    kind: ProblemKind,
    table: &'static str,
    column: Option<&'static str>,
    stored: Option<String>,
    signed: Option<String>,
    reason: String,
}

impl TenantReport {
    /// The report without content values (see [`Problem::without_values`]).
    pub fn without_values(mut self) -> Self {
        self.first_break = self.first_break.map(Problem::without_values);
        self.problems = self
            .problems
            .into_iter()
            .map(Problem::without_values)
            .collect();
        self
    }
}

impl Finding {
    fn new(kind: ProblemKind, table: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            table,
            column: None,
            stored: None,
            signed: None,
            reason: reason.into(),
        }
    }

    fn at(self, chain_pos: Option<i64>, span_id: Option<Uuid>) -> Problem {
        Problem {
            kind: self.kind,
            chain_pos,
            span_id,
            table: self.table,
            column: self.column,
            stored: self.stored,
            signed: self.signed,
            reason: self.reason,
        }
    }
}

/// A column that disagrees with what was signed.
fn mismatch(table: &'static str, column: &'static str, stored: String, signed: String) -> Finding {
    Finding {
        kind: ProblemKind::ColumnMismatch,
        table,
        column: Some(column),
        reason: format!("column `{table}.{column}` disagrees with the signed span"),
        stored: Some(stored),
        signed: Some(signed),
    }
}

fn show(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".to_string(), str::to_string)
}

/// What the sequential pass needs from a checked row.
struct RowResult {
    /// The envelope's `prev_hash`, when the envelope could be read.
    linked: Option<String>,
    findings: Vec<Finding>,
    /// For a `redaction` span: the span ids it withholds and its visibility.
    redacts: Option<(Vec<Uuid>, String)>,
    /// The envelope's idempotency key.
    key: Option<String>,
    /// The envelope's span id.
    id: Option<Uuid>,
    /// The row's Merkle leaf hash, computed with the row's other checks (on every core).
    leaf: Hash,
}

/// A `redactions` row met during the pass.
struct Claim {
    chain_pos: i64,
    span_id: Option<Uuid>,
    target: Uuid,
    redaction_id: String,
    tenant_id: String,
    visibility: Option<String>,
}

/// A tree head the chain must match: a checkpoint, or the stored Merkle tree.
struct Anchor {
    size: u64,
    root: Hash,
    /// Where the claim comes from, for the report (`checkpoint logline/…/acme` or
    /// `merkle_heads`).
    source: String,
    table: &'static str,
}

/// Verifies one tenant against the checkpoint this node remembers for it (if any), see
/// [`verify_tenant_against`].
pub async fn verify_tenant(
    store: &dyn Store,
    tenant: &str,
    trusted: &[String],
) -> Result<TenantReport, StoreError> {
    // This process may still be writing its newest head to the file.
    store.checkpointer().flush();
    let remembered = match store.checkpointer().policy.dir.as_deref() {
        Some(dir) => checkpoint::read_latest(dir, tenant)?,
        None => None,
    };
    verify_tenant_against(store, tenant, trusted, remembered.as_deref()).await
}

/// Verifies one tenant: its chain from genesis to the head, every indexed column against the
/// signed span, the chain head, the redactions, the idempotency keys, the stored Merkle tree
/// and the signed checkpoint `note` (when given): a chain shorter than the checkpoint was
/// truncated, one whose root at the checkpoint's size differs was rewritten. The next page is
/// fetched while the current one is checked on every core.
pub async fn verify_tenant_against(
    store: &dyn Store,
    tenant: &str,
    trusted: &[String],
    note: Option<&str>,
) -> Result<TenantReport, StoreError> {
    let mut findings = Findings {
        tenant: tenant.to_string(),
        problems: Vec::new(),
        count: 0,
    };
    // Tree heads are read before the chain head: spans committed in between only extend the
    // chain past them, never make a sound chain look short.
    let mut anchors = Vec::new();
    if let Some(note) = note {
        match Checkpoint::open_for(note, store.node_key().public_key(), tenant) {
            Ok(c) => anchors.push(Anchor {
                size: c.size,
                root: c.root,
                source: format!("checkpoint {} at size {}", c.origin, c.size),
                table: "checkpoint",
            }),
            Err(e) => findings.push(Problem {
                kind: ProblemKind::BadCheckpoint,
                chain_pos: None,
                span_id: None,
                table: "checkpoint",
                column: None,
                stored: None,
                signed: None,
                reason: e.to_string(),
            }),
        }
    }
    match store.tree_frontier(tenant).await {
        Ok(None) => {}
        Ok(Some(f)) => anchors.push(Anchor {
            size: f.size(),
            root: f.root(),
            source: "the stored Merkle tree (merkle_heads)".to_string(),
            table: "merkle_heads",
        }),
        Err(StoreError::Corrupt(reason)) => findings.push(Problem {
            kind: ProblemKind::TreeHead,
            chain_pos: None,
            span_id: None,
            table: "merkle_heads",
            column: Some("peaks"),
            stored: None,
            signed: None,
            reason,
        }),
        Err(e) => return Err(e),
    }
    let mut tree = Frontier::new();
    // One consistent reading of the head and the highest stored position, taken first: spans
    // appended while we check lie beyond it and are left for the next run.
    let head = store.audit_head(tenant).await?;
    let end = head
        .next_pos
        .unwrap_or(0)
        .max(head.max_pos.map_or(0, |m| m + 1));
    let mut expected_pos = 0i64;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut checked = 0i64;
    let mut hash_at_head: Option<String> = None;
    let mut redactions: HashMap<Uuid, (Vec<Uuid>, String)> = HashMap::new();
    let mut claims: Vec<Claim> = Vec::new();
    let mut keyed: Vec<(i64, Option<Uuid>, String)> = Vec::new();
    let head_pos = head.next_pos.map(|n| n - 1);
    let mut rows = if end > 0 {
        store.audit_page(tenant, 0, PAGE.min(end)).await?
    } else {
        Vec::new()
    };
    loop {
        let fetched = rows.len() as i64;
        let last_pos = rows.last().map(|r| r.chain_pos);
        let (t, k) = (tenant.to_string(), trusted.to_vec());
        let checking = tokio::task::spawn_blocking(move || {
            let checks = check_rows_parallel(&rows, &t, &k);
            (rows, checks)
        });
        let more = fetched == PAGE && last_pos.is_some_and(|p| p + 1 < end);
        let next = async {
            match last_pos {
                Some(p) if more => store.audit_page(tenant, p + 1, PAGE.min(end - p - 1)).await,
                _ => Ok(Vec::new()),
            }
        };
        let (done, next) = tokio::join!(checking, next);
        let (page, results) =
            done.map_err(|e| StoreError::Corrupt(format!("verifier task failed: {e}")))?;
        for (row, result) in page.iter().zip(results) {
            if row.chain_pos >= end {
                break;
            }
            let span_id = result.id.or_else(|| Uuid::parse_str(&row.id).ok());
            let mut linked_ok = true;
            if row.chain_pos != expected_pos {
                findings.push(Problem {
                    kind: ProblemKind::MissingSpans,
                    chain_pos: Some(expected_pos),
                    span_id: None,
                    table: "spans",
                    column: None,
                    stored: None,
                    signed: None,
                    reason: format!(
                        "{}: the next stored span (id {}) is at {}",
                        missing(expected_pos, row.chain_pos - 1),
                        row.id,
                        row.chain_pos
                    ),
                });
                // The link across the hole cannot hold; the hole is the problem to report.
                linked_ok = false;
                expected_pos = row.chain_pos;
            }
            let clean = result.findings.is_empty();
            for f in result.findings {
                findings.push(f.at(Some(row.chain_pos), span_id));
            }
            if linked_ok
                && let Some(linked) = &result.linked
                && *linked != prev_hash
            {
                findings.push(Problem {
                    kind: ProblemKind::BrokenLink,
                    chain_pos: Some(row.chain_pos),
                    span_id,
                    table: "spans",
                    column: Some("prev_hash"),
                    stored: Some(linked.clone()),
                    signed: Some(prev_hash.clone()),
                    reason: "prev_hash does not match the previous span's curr_hash".to_string(),
                });
            }
            if clean && let (Some((targets, vis)), Some(id)) = (result.redacts, span_id) {
                redactions.insert(id, (targets, vis));
            }
            if let Some(key) = result.key {
                keyed.push((row.chain_pos, span_id, key));
            }
            if let (Some(r), Ok(target)) = (&row.redaction, Uuid::parse_str(&row.id)) {
                claims.push(Claim {
                    chain_pos: row.chain_pos,
                    span_id,
                    target,
                    redaction_id: r.redaction_id.clone(),
                    tenant_id: r.tenant_id.clone(),
                    visibility: r.visibility.clone(),
                });
            }
            if Some(row.chain_pos) == head_pos {
                hash_at_head = Some(row.curr_hash.clone());
            }
            if !anchors.is_empty() {
                tree.push(result.leaf, |_, _| {});
                check_anchors(&mut findings, &anchors, &tree, span_id, row.chain_pos);
            }
            prev_hash.clone_from(&row.curr_hash);
            expected_pos += 1;
            checked += 1;
        }
        if !more {
            break;
        }
        rows = next?;
    }
    if expected_pos < end {
        // Only reachable when the last rows were removed: the head or max_pos said more.
        findings.push(Problem {
            kind: ProblemKind::MissingSpans,
            chain_pos: Some(expected_pos),
            span_id: None,
            table: "spans",
            column: None,
            stored: None,
            signed: None,
            reason: format!(
                "{} (the end of the chain was cut)",
                missing(expected_pos, end - 1)
            ),
        });
    }
    for a in anchors.iter().filter(|a| a.size > tree.size()) {
        let (kind, reason) = if a.table == "checkpoint" {
            (
                ProblemKind::Truncated,
                format!(
                    "{} says the chain had {} spans; it now has {} (the tail was cut)",
                    a.source,
                    a.size,
                    tree.size()
                ),
            )
        } else {
            (
                ProblemKind::TreeHead,
                format!(
                    "{} holds {} spans; the chain has {}",
                    a.source,
                    a.size,
                    tree.size()
                ),
            )
        };
        findings.push(Problem {
            kind,
            chain_pos: Some(tree.size() as i64),
            span_id: None,
            table: a.table,
            column: Some("tree_size"),
            stored: Some(tree.size().to_string()),
            signed: Some(a.size.to_string()),
            reason,
        });
    }
    check_head(&mut findings, &head, expected_pos, hash_at_head.as_deref());
    check_claims(&mut findings, tenant, &claims, &redactions);
    let ledger = store.audit_idempotency(tenant).await?;
    check_idempotency(&mut findings, &ledger, &keyed);
    Ok(findings.report(checked))
}

/// Compares the chain's Merkle root with every tree head of the size just reached.
fn check_anchors(
    findings: &mut Findings,
    anchors: &[Anchor],
    tree: &Frontier,
    span_id: Option<Uuid>,
    chain_pos: i64,
) {
    for a in anchors.iter().filter(|a| a.size == tree.size()) {
        let root = tree.root();
        if root == a.root {
            continue;
        }
        let (kind, what) = if a.table == "checkpoint" {
            (
                ProblemKind::Fork,
                "the chain was rewritten after it was checkpointed (rolled back and appended \
                 again, or forked)",
            )
        } else {
            (
                ProblemKind::TreeHead,
                "the stored tree was altered or built from other spans",
            )
        };
        findings.push(Problem {
            kind,
            chain_pos: Some(chain_pos),
            span_id,
            table: a.table,
            column: Some("root_hash"),
            stored: Some(checkpoint::b64(&root)),
            signed: Some(checkpoint::b64(&a.root)),
            reason: format!(
                "the Merkle root of the first {} spans is not the one {} states: {what}",
                a.size, a.source
            ),
        });
    }
}

/// `chain_pos 4 is missing` or `chain positions 4..=9 are missing`.
fn missing(from: i64, to: i64) -> String {
    if from == to {
        format!("chain_pos {from} is missing")
    } else {
        format!("chain positions {from}..={to} are missing")
    }
}

/// The chain head must point just past the last span, at its hash.
fn check_head(findings: &mut Findings, head: &AuditHead, rows_end: i64, last: Option<&str>) {
    let problem = |column: &'static str, stored: String, signed: String, reason: String| Problem {
        kind: ProblemKind::ChainHead,
        chain_pos: None,
        span_id: None,
        table: "chain_heads",
        column: Some(column),
        stored: Some(stored),
        signed: Some(signed),
        reason,
    };
    let (Some(next_pos), Some(last_hash)) = (head.next_pos, head.last_hash.as_deref()) else {
        if rows_end > 0 {
            findings.push(problem(
                "next_pos",
                "NULL".into(),
                rows_end.to_string(),
                format!(
                    "the tenant has spans up to chain_pos {} but no chain head",
                    rows_end - 1
                ),
            ));
        }
        return;
    };
    if let Some(max) = head.max_pos
        && max >= next_pos
    {
        findings.push(problem(
            "next_pos",
            next_pos.to_string(),
            (max + 1).to_string(),
            format!(
                "spans at chain_pos {next_pos}..{max} lie beyond the chain head (the head was \
                 rolled back)"
            ),
        ));
    } else if next_pos > 0 && last.is_none() {
        findings.push(problem(
            "next_pos",
            next_pos.to_string(),
            rows_end.min(next_pos).to_string(),
            format!(
                "the chain head says the chain ends at chain_pos {} but that span is missing \
                 (the tail was cut)",
                next_pos - 1
            ),
        ));
    }
    let expected_hash = if next_pos == 0 {
        Some(GENESIS_HASH)
    } else {
        last
    };
    if let Some(expected) = expected_hash
        && expected != last_hash
    {
        findings.push(problem(
            "last_hash",
            last_hash.to_string(),
            expected.to_string(),
            format!(
                "the chain head's last_hash is not the curr_hash of the span at chain_pos {}",
                next_pos - 1
            ),
        ));
    }
}

/// A `redactions` row is honoured only when a valid redaction span of the same tenant names
/// its target; its other columns must agree with that span.
fn check_claims(
    findings: &mut Findings,
    tenant: &str,
    claims: &[Claim],
    redactions: &HashMap<Uuid, (Vec<Uuid>, String)>,
) {
    for c in claims {
        let at = |f: Finding| f.at(Some(c.chain_pos), c.span_id);
        let by = Uuid::parse_str(&c.redaction_id).ok();
        match by.and_then(|id| redactions.get(&id)) {
            Some((targets, vis)) if targets.contains(&c.target) => {
                if c.tenant_id != tenant {
                    findings.push(at(mismatch(
                        "redactions",
                        "tenant_id",
                        c.tenant_id.clone(),
                        tenant.to_string(),
                    )));
                }
                if let Some(v) = &c.visibility
                    && v != vis
                {
                    findings.push(at(mismatch(
                        "redactions",
                        "visibility",
                        v.clone(),
                        vis.clone(),
                    )));
                }
            }
            _ => findings.push(at(Finding {
                kind: ProblemKind::ForgedRedaction,
                table: "redactions",
                column: Some("redaction_id"),
                stored: Some(c.redaction_id.clone()),
                signed: None,
                reason: format!(
                    "the redactions row withholding span {} names {}, which is not a valid \
                     redaction span of this tenant for it",
                    c.target, c.redaction_id
                ),
            })),
        }
    }
}

/// Every idempotency row must describe the span at its position, and every span with a key
/// must have its row (else a retry would take effect twice, or get another span's result).
fn check_idempotency(
    findings: &mut Findings,
    rows: &[IdempotencyAudit],
    keyed: &[(i64, Option<Uuid>, String)],
) {
    let mut by_key: HashMap<&str, i64> = HashMap::with_capacity(rows.len());
    // Each row was read with its span in one statement, so a span appended since the pass
    // began is there with its key: every row can be checked.
    for r in rows {
        by_key.insert(&r.key, r.chain_pos);
        let problem = |column: &'static str, stored: String, signed: String| Problem {
            kind: ProblemKind::Idempotency,
            chain_pos: Some(r.chain_pos),
            span_id: Uuid::parse_str(&r.id).ok(),
            table: "idempotency",
            column: Some(column),
            stored: Some(stored),
            signed: Some(signed),
            reason: format!(
                "idempotency key `{}` disagrees with the span at chain_pos {}",
                r.key, r.chain_pos
            ),
        };
        let Some(s) = &r.span else {
            findings.push(Problem {
                kind: ProblemKind::Idempotency,
                chain_pos: Some(r.chain_pos),
                span_id: Uuid::parse_str(&r.id).ok(),
                table: "idempotency",
                column: Some("chain_pos"),
                stored: Some(r.chain_pos.to_string()),
                signed: None,
                reason: format!(
                    "idempotency key `{}` points at chain_pos {}, which holds no span",
                    r.key, r.chain_pos
                ),
            });
            continue;
        };
        if s.idempotency_key.as_deref() != Some(r.key.as_str()) {
            findings.push(problem(
                "key",
                r.key.clone(),
                show(s.idempotency_key.as_deref()),
            ));
        }
        if s.id != r.id {
            findings.push(problem("id", r.id.clone(), s.id.clone()));
        }
        if s.seq != r.seq {
            findings.push(problem("seq", r.seq.to_string(), s.seq.to_string()));
        }
        if s.curr_hash != r.curr_hash {
            findings.push(problem(
                "curr_hash",
                r.curr_hash.clone(),
                s.curr_hash.clone(),
            ));
        }
        if s.status != r.status {
            findings.push(problem("status", r.status.clone(), s.status.clone()));
        }
    }
    for (pos, id, key) in keyed {
        if by_key.get(key.as_str()) != Some(pos) {
            findings.push(Problem {
                kind: ProblemKind::Idempotency,
                chain_pos: Some(*pos),
                span_id: *id,
                table: "idempotency",
                column: Some("key"),
                stored: None,
                signed: Some(key.clone()),
                reason: format!(
                    "the span's idempotency key `{key}` has no idempotency row pointing at it \
                     (a retry would take effect again)"
                ),
            });
        }
    }
}

fn check_rows_parallel(rows: &[AuditRow], tenant: &str, trusted: &[String]) -> Vec<RowResult> {
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
            .map(|part| {
                (
                    part.len(),
                    s.spawn(move || check_rows(part, tenant, trusted)),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(len, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..len)
                        .map(|_| RowResult {
                            linked: None,
                            findings: vec![Finding::new(
                                ProblemKind::EnvelopeAltered,
                                "spans",
                                "verifier thread panicked",
                            )],
                            redacts: None,
                            key: None,
                            id: None,
                            leaf: [0; 32],
                        })
                        .collect()
                })
            })
            .collect()
    })
}

/// Checks rows, verifying the node signatures as one Ed25519 batch (about twice as fast as
/// one by one); only when the batch fails are they checked singly to name the culprit.
fn check_rows(rows: &[AuditRow], tenant: &str, trusted: &[String]) -> Vec<RowResult> {
    let mut keys: HashMap<String, Result<VerifyingKey, String>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    let mut batch: Vec<(usize, [u8; 32], Signature, VerifyingKey)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let (result, sig) = check_row(row, tenant, trusted, &mut keys);
        if let Some(c) = sig {
            batch.push((i, c.message, c.signature, c.key));
        }
        out.push(result);
    }
    let messages: Vec<&[u8]> = batch.iter().map(|b| &b.1[..]).collect();
    let signatures: Vec<Signature> = batch.iter().map(|b| b.2).collect();
    let verifying: Vec<VerifyingKey> = batch.iter().map(|b| b.3).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_err() {
        for (i, msg, sig, key) in &batch {
            if key.verify_strict(msg, sig).is_err() {
                out[*i].findings.push(bad_signature());
            }
        }
    }
    out
}

fn bad_signature() -> Finding {
    Finding {
        column: Some("signature"),
        ..Finding::new(
            ProblemKind::BadSignature,
            "spans",
            "signature: Ed25519 signature does not match",
        )
    }
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
    #[serde(borrow)]
    at: Cow<'a, str>,
    #[serde(borrow)]
    recorded_at: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    parent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    related_to: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
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

/// The body fields copied into indexed columns.
#[derive(Deserialize)]
struct BodyFields<'a> {
    #[serde(borrow, default)]
    who: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    did: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    this: Option<Cow<'a, str>>,
}

/// A row whose seal is intact except, possibly, its node signature, which is returned to be
/// verified in the batch.
struct Checked {
    message: [u8; 32],
    signature: Signature,
    key: VerifyingKey,
}

const BODY_ALTERED: &str = "content was altered: the body does not match body_digest";

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

impl SealError {
    fn finding(self) -> Finding {
        let (kind, column) = match &self {
            Self::Altered(m) if m.starts_with(BODY_ALTERED) => {
                (ProblemKind::BodyAltered, Some("body"))
            }
            Self::Altered(_) => (ProblemKind::EnvelopeAltered, Some("envelope")),
            Self::Untrusted(_) => (ProblemKind::UntrustedSigner, Some("envelope")),
            Self::Signature(_) => (ProblemKind::BadSignature, Some("signature")),
        };
        let table = if column == Some("body") {
            "span_bodies"
        } else {
            "spans"
        };
        Finding {
            column,
            ..Finding::new(kind, table, self.to_string())
        }
    }
}

/// Checks one stored span on its own: its envelope hashes to `curr_hash`, its body (unless
/// redacted) matches `body_digest`, and it is signed by a trusted key. The same checks as
/// [`verify_tenant`] minus the links to its neighbours and the indexed columns, for readers that
/// must trust one span (Stage-0 before booting a kernel). Returns the span's envelope as JSON.
pub fn verify_span(
    span: &StoredSpan,
    trusted: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, SealError> {
    let env = open_envelope(&span.envelope, &span.curr_hash)?;
    if span.body.is_none() && span.redacted_by.is_none() {
        return Err(SealError::Altered(
            "the body is missing and no redaction span withheld it".to_string(),
        ));
    }
    let checked = check_seal(
        &env,
        span.body.as_deref(),
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
) -> (RowResult, Option<Checked>) {
    // An unreadable curr_hash is reported below; its leaf still takes its place in the tree.
    let leaf = merkle::span_leaf(&row.curr_hash)
        .unwrap_or_else(|_| merkle::leaf_hash(row.curr_hash.as_bytes()));
    let mut result = RowResult {
        linked: None,
        findings: Vec::new(),
        redacts: None,
        key: None,
        id: None,
        leaf,
    };
    let env = match open_envelope(&row.envelope, &row.curr_hash) {
        Ok(env) => env,
        Err(e) => {
            result.findings.push(e.finding());
            return (result, None);
        }
    };
    result.linked = Some(env.prev_hash.clone());
    result.id = Some(env.id);
    result.key = env.idempotency_key.as_deref().map(str::to_string);
    compare_columns(row, tenant, &env, &mut result.findings);
    if env.entity_type == "redaction" {
        let targets = env
            .related_to
            .iter()
            .filter_map(|t| Uuid::parse_str(t).ok())
            .collect();
        result.redacts = Some((targets, env.visibility.to_string()));
    }
    if row.body.is_none() && row.redaction.is_none() {
        result.findings.push(Finding {
            column: Some("body"),
            ..Finding::new(
                ProblemKind::BodyMissing,
                "span_bodies",
                "the body is missing and no redaction span withheld it",
            )
        });
    }
    match check_seal(
        &env,
        row.body.as_deref(),
        &row.curr_hash,
        &row.signature,
        trusted,
        keys,
    ) {
        Ok(c) => (result, Some(c)),
        Err(e) => {
            result.findings.push(e.finding());
            (result, None)
        }
    }
}

/// Compares every indexed column of the row (spans and span_bodies) with the envelope and body.
fn compare_columns(row: &AuditRow, tenant: &str, env: &Envelope<'_>, out: &mut Vec<Finding>) {
    let mut eq = |table: &'static str, column: &'static str, stored: &str, signed: &str| {
        if stored != signed {
            out.push(mismatch(
                table,
                column,
                stored.to_string(),
                signed.to_string(),
            ));
        }
    };
    eq("spans", "tenant_id", tenant, &env.tenant_id);
    if row.chain_pos != env.chain_pos {
        eq(
            "spans",
            "chain_pos",
            &row.chain_pos.to_string(),
            &env.chain_pos.to_string(),
        );
    }
    if Uuid::parse_str(&row.id).ok() != Some(env.id) || row.id.len() != 36 {
        eq("spans", "id", &row.id, &env.id.to_string());
    }
    if row.seq != env.seq {
        eq("spans", "seq", &row.seq.to_string(), &env.seq.to_string());
    }
    eq("spans", "entity_type", &row.entity_type, &env.entity_type);
    eq("spans", "owner_id", &row.owner_id, &env.owner_id);
    eq("spans", "visibility", &row.visibility, &env.visibility);
    eq("spans", "at", &row.at, &env.at);
    eq("spans", "recorded_at", &row.recorded_at, &env.recorded_at);
    eq("spans", "status", &row.status, &env.status);
    let mut eq_opt = |column: &'static str, stored: Option<&str>, signed: Option<&str>| {
        if stored != signed {
            out.push(mismatch("spans", column, show(stored), show(signed)));
        }
    };
    eq_opt(
        "parent_id",
        row.parent_id.as_deref(),
        env.parent_id.as_deref(),
    );
    eq_opt("trace_id", row.trace_id.as_deref(), env.trace_id.as_deref());
    eq_opt(
        "idempotency_key",
        row.idempotency_key.as_deref(),
        env.idempotency_key.as_deref(),
    );
    let related: Option<Vec<Cow<'_, str>>> = serde_json::from_str(&row.related_to).ok();
    if related.as_ref() != Some(&env.related_to) {
        out.push(mismatch(
            "spans",
            "related_to",
            row.related_to.clone(),
            serde_json::to_string(&env.related_to).unwrap_or_default(),
        ));
    }
    let (Some(body), Some(cols)) = (&row.body, &row.body_columns) else {
        return;
    };
    let mut eq = |column: &'static str, stored: Option<&str>, signed: Option<&str>| {
        if stored != signed {
            out.push(mismatch("span_bodies", column, show(stored), show(signed)));
        }
    };
    eq("tenant_id", Some(&cols.tenant_id), Some(&env.tenant_id));
    if let Some(owner) = &cols.owner_id {
        eq("owner_id", Some(owner), Some(&env.owner_id));
    }
    if let Some(vis) = &cols.visibility {
        eq("visibility", Some(vis), Some(&env.visibility));
    }
    // An unreadable body fails its digest check, which names it.
    if let Ok(fields) = serde_json::from_str::<BodyFields<'_>>(body) {
        eq("who", cols.who.as_deref(), fields.who.as_deref());
        eq("did", cols.did.as_deref(), fields.did.as_deref());
        eq("this", cols.this.as_deref(), fields.this.as_deref());
    }
}

/// The checks shared by chain verification and [`verify_span`]: trusted signer, well-formed
/// signature, client signature, body digest (a missing body is the caller's to judge). The node
/// signature itself is left to the caller.
fn check_seal(
    env: &Envelope<'_>,
    body: Option<&str>,
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
    if let Some(body) = body
        && crypto::digest(body.as_bytes()) != env.body_digest
    {
        return Err(SealError::Altered(BODY_ALTERED.to_string()));
    }
    Ok(Checked {
        message: crypto::digest_bytes(curr_hash).map_err(SealError::Altered)?,
        signature: Signature::from_bytes(&sig),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKey;
    use crate::span::{Draft, Placement, Principal, format_time};
    use crate::store::BodyColumns;
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
                    id: id.to_string(),
                    seq: 0,
                    entity_type: s.entity_type,
                    owner_id: s.owner_id.clone(),
                    visibility: s.visibility.as_str().to_string(),
                    at: format_time(s.at),
                    recorded_at: format_time(s.recorded_at),
                    status: s.status,
                    parent_id: None,
                    related_to: "[]".to_string(),
                    trace_id: None,
                    idempotency_key: None,
                    envelope: s.envelope,
                    body: Some(s.body),
                    body_columns: Some(BodyColumns {
                        tenant_id: s.tenant_id,
                        owner_id: Some(s.owner_id),
                        visibility: Some(s.visibility.as_str().to_string()),
                        who: s.who,
                        did: s.did,
                        this: s.this,
                    }),
                    redaction: None,
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
                .all(|r| r.findings.is_empty())
        );
        // Same hash, signed by a key the manifest does not know, claimed as the node's.
        let forger = NodeKey::generate();
        rows[417].signature = forger.sign_hash(&rows[417].curr_hash);
        let results = check_rows_parallel(&rows, "bakery", &trusted);
        let bad: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.findings.is_empty())
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
        assert_eq!(results[0].findings[0].kind, ProblemKind::UntrustedSigner);
        rows[1].body = None;
        let results = check_rows(&rows, "bakery", &[key.public_key().to_string()]);
        assert_eq!(results[1].findings.len(), 1, "{:?}", results[1].findings);
        assert_eq!(results[1].findings[0].kind, ProblemKind::BodyMissing);
    }

    #[test]
    fn every_indexed_column_is_compared_with_the_signed_span() {
        let key = NodeKey::generate();
        let trusted = vec![key.public_key().to_string()];
        type Tamper = fn(&mut AuditRow);
        let cases: [(&str, &str, Tamper); 16] = [
            ("spans", "entity_type", |r| r.entity_type = "x".into()),
            ("spans", "owner_id", |r| r.owner_id = "x".into()),
            ("spans", "visibility", |r| r.visibility = "public".into()),
            ("spans", "at", |r| {
                r.at = "2001-01-01T00:00:00.000000Z".into()
            }),
            ("spans", "recorded_at", |r| {
                r.recorded_at = "2001-01-01T00:00:00.000000Z".into()
            }),
            ("spans", "status", |r| r.status = "void".into()),
            ("spans", "parent_id", |r| {
                r.parent_id = Some(Uuid::nil().to_string())
            }),
            ("spans", "related_to", |r| {
                r.related_to = format!("[\"{}\"]", Uuid::nil())
            }),
            ("spans", "trace_id", |r| r.trace_id = Some("t".into())),
            ("spans", "idempotency_key", |r| {
                r.idempotency_key = Some("k".into())
            }),
            ("spans", "seq", |r| r.seq = 7),
            ("span_bodies", "tenant_id", |r| {
                if let Some(c) = &mut r.body_columns {
                    c.tenant_id = "other".into();
                }
            }),
            ("span_bodies", "visibility", |r| {
                if let Some(c) = &mut r.body_columns {
                    c.visibility = Some("public".into());
                }
            }),
            ("span_bodies", "who", |r| {
                if let Some(c) = &mut r.body_columns {
                    c.who = Some("mallory".into());
                }
            }),
            ("span_bodies", "did", |r| {
                if let Some(c) = &mut r.body_columns {
                    c.did = Some("sold".into());
                }
            }),
            ("span_bodies", "this", |r| {
                if let Some(c) = &mut r.body_columns {
                    c.this = Some("nothing".into());
                }
            }),
        ];
        for (table, column, tamper) in cases {
            let mut rows = chain(&key, 2);
            tamper(&mut rows[1]);
            let results = check_rows(&rows, "bakery", &trusted);
            assert!(results[0].findings.is_empty());
            let f = &results[1].findings;
            assert_eq!(f.len(), 1, "{column}: {f:?}");
            assert_eq!(f[0].kind, ProblemKind::ColumnMismatch);
            assert_eq!((f[0].table, f[0].column), (table, Some(column)));
        }
    }
}
