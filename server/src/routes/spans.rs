//! `POST /api/spans` (one JSON span, or NDJSON with one result per line), `GET /api/spans/{id}`,
//! `GET /api/spans/{id}/versions`, `GET /api/spans/{id}/verify` (one span's seal) and
//! `GET /api/spans/{id}/proof` (its inclusion in the latest checkpoint).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger::verify::{SealError, verify_span as verify_seal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::ingest;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/spans", axum::routing::post(post_spans))
        .route("/api/spans/{id}", get(get_span))
        .route("/api/spans/{id}/versions", get(get_versions))
        .route("/api/spans/{id}/verify", get(verify_span))
        .route("/api/spans/{id}/proof", get(span_proof))
}

/// A span as submitted: one JSON object, at most 256 KiB. Every field is optional: a span
/// missing any of the nine LogLine fields (`who`, `did`, `this`, `when`, `confirmed_by`,
/// `if_ok`, `if_doubt`, `if_not`, `status`) is kept as a ghost. Fields not listed here are kept
/// too. Server fields (`chain_pos`, `prev_hash`, `curr_hash`, ...) may be sent back, e.g. when
/// re-importing an export, but are recomputed. Keys may not repeat within an object, and
/// numbers must be storable exactly as sent (an IEEE double printing the same decimal value).
#[derive(ToSchema)]
#[schema(example = json!({"who": "ana", "did": "confirmed delivery",
    "this": "delivery 312", "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao",
    "if_ok": "send receipt", "if_doubt": "ask", "if_not": "open incident", "status": "valid"}))]
pub struct SpanDraft {
    /// With `seq`, a new version of this span; new spans get a fresh id.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub id: Option<Uuid>,
    /// The version: 0 for a new span, the next number for an amendment (needs `id`).
    #[schema(minimum = 0)]
    pub seq: Option<i64>,
    /// Default `logline`. Types the node writes for itself (`prompt_run`, `feedback`,
    /// `eval_run`, `memory`, `redaction`, ...) are refused with 422.
    #[schema(min_length = 1, max_length = 1024)]
    pub entity_type: Option<String>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub parent_id: Option<Uuid>,
    /// Ids (UUIDs) of related spans.
    #[schema(value_type = Option<Vec<String>>)]
    pub related_to: Option<Vec<Uuid>>,
    /// The caller's tenant (the default); any other is refused with 403.
    #[schema(max_length = 1024)]
    pub tenant_id: Option<String>,
    /// The caller (the default); any other is refused with 403.
    #[schema(max_length = 1024)]
    pub owner_id: Option<String>,
    /// Default `private`.
    pub visibility: Option<Visibility>,
    /// When it happened (default: now). `when` is read if `at` is absent.
    #[schema(format = DateTime)]
    pub at: Option<String>,
    #[schema(format = DateTime)]
    pub when: Option<String>,
    /// Indexed: at most 1,024 bytes, as `entity_type`, `trace_id` and `idempotency_key`.
    #[schema(max_length = 1024)]
    pub who: Option<String>,
    pub did: Option<String>,
    pub this: Option<String>,
    pub confirmed_by: Option<String>,
    pub if_ok: Option<String>,
    pub if_doubt: Option<String>,
    pub if_not: Option<String>,
    pub status: Option<String>,
    #[schema(max_length = 1024)]
    pub trace_id: Option<String>,
    /// Retrying with the same key returns the first span instead of appending another.
    #[schema(max_length = 1024)]
    pub idempotency_key: Option<String>,
    #[schema(minimum = 0)]
    pub duration_ms: Option<u64>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub code: Option<String>,
    pub language: Option<String>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub content: Option<Value>,
    pub metadata: Option<Value>,
    /// A client signature (hex) over the canonical span without `signature` and `public_key`;
    /// needs `public_key`, which the manifest must trust.
    pub signature: Option<String>,
    /// `ed25519:<hex>`.
    pub public_key: Option<String>,
}

/// Who may read a span: its owner, its tenant, or everyone.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Visibility {
    Private,
    Tenant,
    Public,
}

/// An NDJSON body: one span (a JSON object, as in `SpanDraft`) per line. Blank lines are
/// skipped; at least one line must have content.
#[derive(ToSchema)]
#[schema(
    pattern = "\\S",
    example = "{\"who\":\"ana\",\"did\":\"baked\",\"this\":\"bread\"}\n{\"who\":\"joao\",\"did\":\"sold\",\"this\":\"bread\"}\n"
)]
pub struct NdjsonSpans(pub String);

/// A stored span as readers see it: its envelope fields, its content fields (unless redacted:
/// then `content` is `{"redacted": true}` and `redacted` is true; content gone without a valid
/// redaction span reads `{"missing": true}` with an `integrity_warning`) and its seal
/// (`curr_hash`, `signature`). Fields beyond those listed here are content the writer sent.
#[derive(ToSchema)]
pub struct Span {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    /// Version of the span: 0 for the first, then one more per amendment.
    #[schema(minimum = 0)]
    pub seq: i64,
    pub tenant_id: String,
    /// Position in the tenant's hash chain.
    #[schema(minimum = 0)]
    pub chain_pos: i64,
    pub prev_hash: String,
    pub entity_type: String,
    pub owner_id: String,
    pub visibility: Visibility,
    /// When it happened (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub at: String,
    /// When the ledger recorded it (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub recorded_at: String,
    /// `ghost` when LogLine fields are missing, else the declared status.
    pub status: String,
    #[schema(value_type = Vec<String>)]
    pub related_to: Vec<Uuid>,
    pub body_digest: String,
    /// The ledger node key that signed the span.
    pub public_key: String,
    /// BLAKE3 of the canonical envelope.
    pub curr_hash: String,
    /// The node's Ed25519 signature over `curr_hash`.
    pub signature: String,
}

/// What an append did: where the span landed in its chain, or which earlier span with the same
/// idempotency key was returned instead (`duplicate`).
#[derive(Serialize, ToSchema)]
pub struct AppendResult {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    #[schema(minimum = 0)]
    pub seq: i64,
    #[schema(minimum = 0)]
    pub chain_pos: i64,
    pub curr_hash: String,
    /// `ghost` when LogLine fields are missing, else the declared status.
    pub status: String,
    pub duplicate: bool,
}

/// Every stored version of a span, oldest first.
#[derive(Serialize, ToSchema)]
pub struct Versions {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    #[schema(value_type = Vec<Span>)]
    pub versions: Vec<Value>,
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a span id (a UUID)")))
}

/// Append spans
///
/// Send one span as `application/json`, or many as `application/x-ndjson` (one JSON object per
/// line; `application/ndjson` and `application/jsonl` are accepted too). A JSON span answers
/// `201` with the append result, or `200` if an earlier span with the same idempotency key was
/// returned instead. An NDJSON body answers `200` with one result per non-blank input line, in
/// order: `{"line", "ok": true, "id", "seq", "chain_pos", "curr_hash", "status", "duplicate"}`
/// or `{"line", "ok": false, "error"}`; lines that fail do not stop the others (not even a
/// line the store itself fails: the batch is then retried a line at a time).
///
/// Input is strict and lossless: repeated keys, numbers that would not read back exactly,
/// indexed fields over 1,024 bytes and entity types the node reserves are refused by name.
#[utoipa::path(
    post,
    path = "/api/spans",
    tag = "spans",
    security(("bearer" = []), ()),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
         description = "Makes retries safe: a span (or, with NDJSON, `<key>:<line number>` per \
                        line) keeps this key unless it carries its own `idempotency_key`. \
                        Visible ASCII."),
    ),
    request_body(
        description = "One span (JSON object) or an NDJSON stream of spans.",
        content(
            (SpanDraft = "application/json"),
            (NdjsonSpans = "application/x-ndjson"),
        ),
    ),
    responses(
        (status = 201, description = "The span was appended.", body = AppendResult,
         headers(("Location" = String, description = "`/api/spans/{id}`"))),
        (status = 200, description = "JSON: an earlier span with the same idempotency key (`duplicate`: true). NDJSON: one result per line.",
         headers(("Location" = String, description = "JSON only: `/api/spans/{id}`")),
         content(
            (AppendResult = "application/json"),
            (String = "application/x-ndjson"),
         )),
        (status = 400, description = "The body is not UTF-8, or the Idempotency-Key is not visible ASCII.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The span names another tenant or owner than the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The span conflicts with the ledger (e.g. its id and seq are taken).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The span is over 256 KiB, or the body over the server's limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor NDJSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The span is not a JSON object, has a field of the wrong type, repeats a key in one object (at any depth; the detail names the key and its JSON pointer), has a number the ledger cannot store exactly (e.g. `18446744073709551617`, `1e-400`; the detail names its JSON pointer), has an indexed field (`who`, `entity_type`, `trace_id`, `idempotency_key`, `tenant_id`, `owner_id`) over 1,024 bytes (the detail names the field, its size and the limit), or has an entity type the node reserves for itself (`prompt_run`, `feedback`, `eval_run`, ...; the detail names what writes it); or an NDJSON body has no spans. In an NDJSON body these are per-line results instead.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(user = %caller.principal.user_id, tenant = %caller.principal.tenant_id))]
async fn post_spans(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let trusted = st.trusted_keys().await?;
    let p = &caller.principal;
    let by = ingest::Submitter {
        principal: p,
        trusted: &trusted,
        allow_reserved: false,
    };
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            let lines = ingest::ndjson_lines(text);
            if lines.is_empty() {
                return Err(ApiError::Unprocessable {
                    detail: "no spans in the body: send one JSON object per line".into(),
                    line: None,
                });
            }
            let (drafts, slots) = ingest::parse_lines(&lines, by, key.as_deref());
            let results = ingest::append_each(drafts, |d| st.writer.append(p, d)).await?;
            st.hub.poke();
            let joined = ingest::join(slots, &results);
            let appended = joined
                .iter()
                .filter(|(_, r)| r.as_ref().is_ok_and(|a| !a.duplicate))
                .count();
            st.metrics
                .spans_appended
                .fetch_add(appended as u64, Ordering::Relaxed);
            let mut out = String::new();
            for (line, r) in &joined {
                out.push_str(&ingest::result_json(*line, r).to_string());
                out.push('\n');
            }
            let mut resp = (StatusCode::OK, out).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            Ok(resp)
        }
        "application/json" | "" => {
            let draft = ingest::parse_one(text, by, key.as_deref(), chrono::Utc::now())
                .map_err(|e| ApiError::from_input(e, None))?;
            let result = st
                .writer
                .append(p, vec![draft])
                .await?
                .pop()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no result from the store")))?
                .map_err(|e| ApiError::Conflict(e.to_string()))?;
            st.hub.poke();
            let status = if result.duplicate {
                StatusCode::OK
            } else {
                st.metrics.spans_appended.fetch_add(1, Ordering::Relaxed);
                StatusCode::CREATED
            };
            let body = AppendResult {
                id: result.id,
                seq: result.seq,
                chain_pos: result.chain_pos,
                curr_hash: result.curr_hash,
                status: result.status,
                duplicate: result.duplicate,
            };
            Ok((
                status,
                [(header::LOCATION, location(result.id))],
                axum::Json(body),
            )
                .into_response())
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type `{other}` is not accepted: send application/json (one span) or application/x-ndjson"
        ))),
    }
}

#[derive(Deserialize)]
struct SeqParam {
    seq: Option<String>,
}

/// The version `seq` (the latest by default) of span `id`, if the caller may see it.
async fn visible_span(
    st: &AppState,
    caller: &Caller,
    id: Uuid,
    q: SeqParam,
) -> Result<ledger::StoredSpan, ApiError> {
    let seq = q
        .seq
        .map(|s| {
            s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::BadRequest(format!("seq `{s}` is not a non-negative integer"))
            })
        })
        .transpose()?;
    st.store
        .get(&caller.principal, id, seq)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("span {id} not found or not visible to you")))
}

/// Read a span
///
/// The latest version the caller may see, or the version `seq`.
#[utoipa::path(
    get,
    path = "/api/spans/{id}",
    tag = "spans",
    security(("bearer" = []), ()),
    params(
        ("id" = String, Path, format = "uuid", description = "The span id."),
        ("seq" = Option<i64>, Query, minimum = 0, description = "A version of the span; the latest by default."),
    ),
    responses(
        (status = 200, description = "The span.", body = Span),
        (status = 400, description = "`id` is not a UUID or `seq` not a non-negative integer.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such span, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn get_span(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeqParam>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let span = visible_span(&st, &caller, id, q).await?;
    let view = span
        .to_view()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    Ok(axum::Json(view).into_response())
}

/// List a span's versions
///
/// Every version of the span the caller may see, oldest first.
#[utoipa::path(
    get,
    path = "/api/spans/{id}/versions",
    tag = "spans",
    security(("bearer" = []), ()),
    params(("id" = String, Path, format = "uuid", description = "The span id.")),
    responses(
        (status = 200, description = "The versions.", body = Versions),
        (status = 400, description = "`id` is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such span, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn get_versions(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let versions = st.store.versions(&caller.principal, id).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "span {id} not found or not visible to you"
        )));
    }
    let views = versions
        .iter()
        .map(|s| {
            s.to_view()
                .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(Versions {
        id,
        versions: views,
    })
    .into_response())
}

/// `Location` header value for a span.
pub fn location(id: uuid::Uuid) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/spans/{id}"))
        .unwrap_or(HeaderValue::from_static("/api/spans"))
}

/// Whether one stored span's seal holds, as the ledger checks it: its envelope hashes to
/// `curr_hash`, its body (unless redacted) matches `body_digest`, and its signature verifies
/// under a key the manifest trusts. Links to its chain neighbours are not checked here (see
/// `GET /api/verify` for the whole chain).
#[derive(Serialize, ToSchema)]
pub struct SpanSeal {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    #[schema(minimum = 0)]
    pub seq: i64,
    /// Position in the tenant's hash chain.
    #[schema(minimum = 0)]
    pub chain_pos: i64,
    pub prev_hash: String,
    pub curr_hash: String,
    /// True when the hash and the signature both verify.
    pub verified: bool,
    /// The envelope hashes to `curr_hash` and the body to its digest.
    pub hash_ok: bool,
    /// Signed by a trusted key and the signature verifies (false when the hash already failed).
    pub signature_ok: bool,
    /// The body was withheld by a redaction span; the envelope is still checked.
    pub redacted: bool,
    /// Why it does not verify, for a person to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Verify one span
///
/// Recomputes the hash of one span version and checks its signature. Answers `200` whether or
/// not it verifies: `verified` says which.
#[utoipa::path(
    get,
    path = "/api/spans/{id}/verify",
    tag = "spans",
    security(("bearer" = []), ()),
    params(
        ("id" = String, Path, format = "uuid", description = "The span id."),
        ("seq" = Option<i64>, Query, minimum = 0, description = "A version of the span; the latest by default."),
    ),
    responses(
        (status = 200, description = "The span's seal, verified or not.", body = SpanSeal),
        (status = 400, description = "`id` is not a UUID or `seq` not a non-negative integer.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such span, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(span_id = %id))]
async fn verify_span(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeqParam>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let span = visible_span(&st, &caller, id, q).await?;
    let trusted = st.trusted_keys().await?;
    // Positions come from the envelope as stored, readable even when the seal is broken.
    let envelope: Value = serde_json::from_str(&span.envelope).unwrap_or(Value::Null);
    let int = |k: &str| envelope.get(k).and_then(Value::as_i64).unwrap_or(-1).max(0);
    let (hash_ok, signature_ok, detail) = match verify_seal(&span, &trusted) {
        Ok(_) => (true, true, None),
        Err(e @ SealError::Altered(_)) => (false, false, Some(e.to_string())),
        Err(e @ (SealError::Untrusted(_) | SealError::Signature(_))) => {
            (true, false, Some(e.to_string()))
        }
    };
    Ok(axum::Json(SpanSeal {
        id,
        seq: int("seq"),
        chain_pos: int("chain_pos"),
        prev_hash: envelope
            .get("prev_hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        curr_hash: span.curr_hash.clone(),
        verified: hash_ok && signature_ok,
        hash_ok,
        signature_ok,
        redacted: span.redacted_by.is_some(),
        detail,
    })
    .into_response())
}

/// Inclusion proof of a span
///
/// Proves that this span version is leaf `leaf_index` (its `chain_pos`) of the latest signed
/// checkpoint of its tenant's chain (RFC 9162 §2.1.3). Only for spans the caller may see; the
/// proof reveals hashes of other spans, never their content. `logline proof verify` checks the
/// document offline; docs/checkpoints.md says how to by hand.
#[utoipa::path(
    get,
    path = "/api/spans/{id}/proof",
    tag = "spans",
    security(("bearer" = []), ()),
    params(
        ("id" = String, Path, format = "uuid", description = "The span id."),
        ("seq" = Option<i64>, Query, minimum = 0, description = "A version of the span; the latest by default."),
    ),
    responses(
        (status = 200, description = "The proof document (`type: inclusion`).", body = Object),
        (status = 400, description = "`id` is not a UUID or `seq` not a non-negative integer.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such span, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The chain no longer extends the remembered checkpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(span_id = %id))]
async fn span_proof(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeqParam>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let span = visible_span(&st, &caller, id, q).await?;
    let seq = serde_json::from_str::<Value>(&span.envelope)
        .ok()
        .and_then(|e| e.get("seq").and_then(Value::as_i64))
        .unwrap_or_default();
    let doc = ledger::proof::span_inclusion(st.store.as_ref(), id, seq, &span).await?;
    Ok(axum::Json(doc).into_response())
}
