//! Memory (issue 13) over HTTP: the caller's own items only. `GET /api/memory` lists them
//! (one session's with `?session_id=`), `POST /api/memory` remembers one explicitly,
//! `DELETE /api/memory/{id}` and `POST /api/memory/forget` (`last`, `session`, `all`, `item`)
//! forget for real (a redaction per item: ciphertext, index row and embedding are gone), and
//! `GET /api/memory/export` gives everything as NDJSON with a signed trailer.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, http::StatusCode};
use chrono::Utc;
use ledger::store::memory::MemoryLayer;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::export::SignedExport;
use crate::memory::{Consent, ForgetTarget, MemoryError, MemoryKind, RememberRequest};
use crate::state::AppState;

/// Most items one listing returns.
const MAX_LIST: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/memory", get(list).post(remember))
        .route("/api/memory/{id}", delete(forget_one))
        .route("/api/memory/forget", post(forget))
        .route("/api/memory/export", get(export))
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::BadRequest(m) => ApiError::Unprocessable {
                detail: m,
                line: None,
            },
            MemoryError::NotFound(_) => ApiError::NotFound(e.to_string()),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub session_id: Option<String>,
    pub limit: Option<i64>,
}

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
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RememberBody {
    pub text: String,
    #[serde(default)]
    pub kind: Option<MemoryKind>,
    /// `session` (needs `session_id`) or `temporary` (default).
    #[serde(default)]
    pub layer: Option<MemoryLayer>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub supersedes: Option<Uuid>,
}

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
    Ok(Json(json!({ "forgotten": forgotten })).into_response())
}

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
    Ok(Json(json!({ "forgotten": forgotten })).into_response())
}

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
