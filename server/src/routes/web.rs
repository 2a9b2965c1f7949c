//! The browser UI (`web/`): the chat at `/`, span pages at `/spans/{id}`, the live timeline at
//! `/timeline` and escalation reviews at `/reviews`, plus `GET /api/spans/{id}/verify`, which
//! the span page uses to say whether a span's hash and signature hold.
//!
//! The files are embedded in the binary (`include_bytes!`) so `logline serve` works from any
//! directory and needs no build step. Every page is served with a strict Content-Security-Policy:
//! scripts, styles, images and connections come from this server only (no CDN, no inline code),
//! so the UI makes no request beyond it.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger::verify::{SealError, verify_span as verify_seal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::serve::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page("index.html") }))
        .route("/spans/{id}", get(|| async { page("span.html") }))
        .route("/timeline", get(|| async { page("timeline.html") }))
        .route("/reviews", get(|| async { page("reviews.html") }))
        .route("/assets/{file}", get(asset))
        .route("/api/spans/{id}/verify", get(verify_span))
}

/// What a page may load: everything from this server, nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// One embedded file of `web/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../../web/", $name)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI serves. Pages are reached by their routes, the rest under `/assets/`.
static FILES: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("span.html", HTML),
    asset!("timeline.html", HTML),
    asset!("reviews.html", HTML),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("common.js", JS),
    asset!("render.js", JS),
    asset!("chat.js", JS),
    asset!("span.js", JS),
    asset!("timeline.js", JS),
    asset!("reviews.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}

fn respond(a: &Asset) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: revalidate instead of serving a stale UI.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, a.body).into_response()
}

fn page(name: &str) -> Response {
    match find(name) {
        Some(a) if a.content_type == HTML => respond(a),
        _ => ApiError::NotFound(format!("no page {name}")).into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match find(&file) {
        // Pages have their own routes; `/assets/` serves the rest.
        Some(a) if a.content_type != HTML => respond(a),
        _ => ApiError::NotFound(format!("no asset `{file}`")).into_response(),
    }
}

#[derive(Deserialize)]
struct SeqParam {
    seq: Option<String>,
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
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a span id (a UUID)")))?;
    let seq = q
        .seq
        .map(|s| {
            s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::BadRequest(format!("seq `{s}` is not a non-negative integer"))
            })
        })
        .transpose()?;
    let span = st
        .store
        .get(&caller.principal, id, seq)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("span {id} not found or not visible to you")))?;
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
