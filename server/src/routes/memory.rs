//! Memory (issue 13) over HTTP: the caller's own items only. `GET /api/memory` lists them
//! (one session's with `?session_id=`), `POST /api/memory` remembers one explicitly,
//! `DELETE /api/memory/{id}` and `POST /api/memory/forget` (`last`, `session`, `all`, `item`)
//! forget for real (a redaction per item: ciphertext, index row and embedding are gone), and
//! `GET /api/memory/export` gives everything as NDJSON with a signed trailer. The permanent
//! layer is reached through review: `POST /api/memory/{id}/promote` asks, a reviewer lists
//! (`GET /api/memory/promotions`) and decides (`POST /api/memory/promotions/{id}`).

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, http::StatusCode};
use chrono::Utc;
use ledger::store::memory::MemoryLayer;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::export::SignedExport;
use crate::memory::{
    Consent, ForgetTarget, MemoryError, MemoryItem, MemoryKind, Promotion, RememberRequest,
};
use crate::routes::chat::{ReviewDecision, require_reviewer};
use crate::state::AppState;

/// Most items one listing returns.
const MAX_LIST: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/memory", get(list).post(remember))
        .route("/api/memory/{id}", delete(forget_one))
        .route("/api/memory/forget", post(forget))
        .route("/api/memory/export", get(export))
        .route("/api/memory/{id}/promote", post(promote))
        .route("/api/memory/promotions", get(promotions))
        .route("/api/memory/promotions/{id}", post(decide_promotion))
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::BadRequest(m) => ApiError::Unprocessable {
                detail: m,
                line: None,
            },
            MemoryError::NotFound(_) | MemoryError::PromotionNotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            MemoryError::Conflict(m) => ApiError::Conflict(m),
            MemoryError::Forbidden(m) => ApiError::Forbidden(m),
            MemoryError::Store(s) => ApiError::from(s),
            MemoryError::Embed(_) => ApiError::Unavailable(e.to_string()),
            MemoryError::Config(_) | MemoryError::Crypto(_) => {
                ApiError::Internal(anyhow::Error::new(e))
            }
        }
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match b {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
            "send the body as `content-type: application/json`".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(e.body_text())),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this session's (conversation's) items.
    pub session_id: Option<String>,
    /// Most items listed (1–1000, default 200), newest first.
    pub limit: Option<i64>,
}

/// The caller's live items.
#[derive(Serialize, ToSchema)]
pub struct MemoryList {
    pub items: Vec<MemoryItem>,
}

/// The items a forget request redacted.
#[derive(Serialize, ToSchema)]
pub struct Forgotten {
    #[schema(value_type = Vec<String>)]
    pub forgotten: Vec<Uuid>,
}

#[utoipa::path(
    get,
    path = "/api/memory",
    tag = "memory",
    security(("bearer" = []), ()),
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's own live items (not expired, not forgotten), newest first.", body = MemoryList),
        (status = 400, description = "A query parameter is malformed or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_LIST);
    let items = state
        .chat
        .memory
        .list(
            &caller.principal,
            q.session_id.as_deref(),
            Utc::now(),
            limit,
        )
        .await?;
    Ok(Json(MemoryList { items }).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberBody {
    pub text: String,
    #[serde(default)]
    pub kind: Option<MemoryKind>,
    /// `session` (needs `session_id`) or `temporary` (default).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub layer: Option<MemoryLayer>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub supersedes: Option<Uuid>,
}

#[utoipa::path(
    post,
    path = "/api/memory",
    tag = "memory",
    security(("bearer" = []), ()),
    request_body(content = RememberBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Remembered: encrypted under the tenant's data key and appended as a private `memory` span.", body = MemoryItem),
        (status = 400, description = "The body is not the JSON described.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty or too long text, the permanent layer (needs a reviewer), or a session item without `session_id`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The configured embedding provider is unreachable.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn remember(
    State(state): State<AppState>,
    caller: Caller,
    b: Result<Json<RememberBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req = RememberRequest {
        text: b.text,
        kind: b.kind.unwrap_or_default(),
        layer: b.layer.unwrap_or(MemoryLayer::Temporary),
        session_id: b.session_id,
        supersedes: b.supersedes,
        consent: Consent::Explicit,
        trace_id: None,
    };
    let item = state
        .chat
        .memory
        .remember(&caller.principal, req, Utc::now())
        .await?;
    Ok((StatusCode::CREATED, Json(item)).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/memory/{id}",
    tag = "memory",
    security(("bearer" = []), ()),
    params(("id" = String, Path, format = "uuid", description = "The `memory` span.")),
    responses(
        (status = 200, description = "Forgotten: a redaction destroyed the ciphertext, index row and embedding, and the caller's records of the turns that wrote or recalled it were redacted too.", body = Forgotten),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No item of the caller's has this id.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn forget_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let forgotten = state
        .chat
        .memory
        .forget(&caller.principal, &ForgetTarget::Item { id }, Utc::now())
        .await?;
    Ok(Json(Forgotten { forgotten }).into_response())
}

#[utoipa::path(
    post,
    path = "/api/memory/forget",
    tag = "memory",
    security(("bearer" = []), ()),
    request_body(content = ForgetTarget, content_type = "application/json"),
    responses(
        (status = 200, description = "What was forgotten (possibly nothing).", body = Forgotten),
        (status = 400, description = "The body is not one of the targets described.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`item`: no item of the caller's has this id.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    b: Result<Json<ForgetTarget>, JsonRejection>,
) -> Result<Response, ApiError> {
    let target = body(b)?;
    let forgotten = state
        .chat
        .memory
        .forget(&caller.principal, &target, Utc::now())
        .await?;
    Ok(Json(Forgotten { forgotten }).into_response())
}

#[utoipa::path(
    get,
    path = "/api/memory/export",
    tag = "memory",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The caller's live items, one JSON object per line, then a trailer signed by the node key over every line.", body = String, content_type = "application/x-ndjson"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let now = Utc::now();
    let items = state
        .chat
        .memory
        .list(&caller.principal, None, now, i64::MAX)
        .await?;
    let mut out = String::new();
    let mut signed = SignedExport::new();
    for item in items {
        let line = serde_json::to_string(&item).map_err(anyhow::Error::new)?;
        out.push_str(&signed.line(line));
        out.push('\n');
    }
    out.push_str(
        &signed
            .trailer(state.store.node_key(), &caller.principal, now)
            .to_string(),
    );
    out.push('\n');
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

#[utoipa::path(
    post,
    path = "/api/memory/{id}/promote",
    tag = "memory",
    security(("bearer" = []), ()),
    params(("id" = String, Path, format = "uuid", description = "One of the caller's `memory` spans.")),
    responses(
        (status = 201, description = "Asked: a `memory_promotion` span (visible to the tenant, naming the item, never its text) waits for a reviewer. Asking again while it is open returns the same request.", body = Promotion),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No live item of the caller's has this id.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Already permanent, a turn's record, or replaced by a newer item.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let p = state
        .chat
        .memory
        .request_permanent(&caller.principal, id, Utc::now())
        .await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PromotionsQuery {
    /// `open` (default), `approved`, `rejected` or `all`.
    pub status: Option<String>,
}

/// Requests to keep memories permanently, newest first.
#[derive(Serialize, ToSchema)]
pub struct Promotions {
    pub promotions: Vec<Promotion>,
}

#[utoipa::path(
    get,
    path = "/api/memory/promotions",
    tag = "memory",
    security(("bearer" = []), ()),
    params(PromotionsQuery),
    responses(
        (status = 200, description = "The tenant's requests, with the text of each open request's item (reviewing is reading what would be kept).", body = Promotions),
        (status = 400, description = "Unknown status filter.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller has neither the `reviewer` nor the `admin` role.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn promotions(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PromotionsQuery>,
) -> Result<Response, ApiError> {
    require_reviewer(&caller)?;
    let want = q.status.as_deref().unwrap_or("open");
    if !["open", "approved", "rejected", "all"].contains(&want) {
        return Err(ApiError::BadRequest(
            "`status` must be open, approved, rejected or all".into(),
        ));
    }
    let promotions = state
        .chat
        .memory
        .promotions(
            &caller.principal,
            (want != "all").then_some(want),
            Utc::now(),
        )
        .await?;
    Ok(Json(Promotions { promotions }).into_response())
}

/// A reviewer's decision on a request to keep a memory permanently.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionDecision {
    pub decision: ReviewDecision,
    /// Why, for the record (at most 2000 characters).
    #[schema(max_length = 2000)]
    pub note: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/memory/promotions/{id}",
    tag = "memory",
    security(("bearer" = []), ()),
    params(("id" = String, Path, format = "uuid", description = "The `memory_promotion` span.")),
    request_body(content = PromotionDecision, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided: the request is closed; an approval appended a permanent copy of the item (on its owner's behalf) that supersedes the temporary one.", body = Promotion),
        (status = 400, description = "Malformed body or id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a reviewer, or approving one's own item.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request in the caller's tenant, or its item was forgotten or expired.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already decided.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The note is too long, or the item was replaced by a newer one.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn decide_promotion(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    b: Result<Json<PromotionDecision>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    require_reviewer(&caller)?;
    let p = state
        .chat
        .memory
        .decide_promotion(
            &caller.principal,
            id,
            b.decision == ReviewDecision::Approve,
            b.note,
            Utc::now(),
        )
        .await?;
    Ok(Json(p).into_response())
}
