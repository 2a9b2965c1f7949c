//! Health, readiness, metrics, the manifest and chain verification (the OpenAPI document is
//! served by `openapi.rs`, which lists these handlers).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger::store;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::routes::spans::Span;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/manifest/{name}", get(manifest))
        .route("/api/verify", get(verify))
}

/// The process is up.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(pattern = "^ok$", example = "ok")]
    pub status: &'static str,
}

/// The store answers.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(pattern = "^ready$", example = "ready")]
    pub status: &'static str,
    /// The store backend (`sqlite` or `postgres`).
    pub store: &'static str,
}

/// The integrity status of one tenant: positions, columns and hashes, no content.
#[derive(ToSchema)]
pub struct VerifyReport {
    pub tenant_id: String,
    /// Spans checked.
    #[schema(minimum = 0)]
    pub spans: i64,
    /// True when every hash, link, signature and indexed column checks out, and the chain
    /// head, the redactions and the idempotency keys agree with the spans.
    pub ok: bool,
    /// The first problem, or null.
    #[schema(required = true)]
    pub first_break: Option<ChainBreak>,
    /// The problems found (at most 100).
    pub problems: Vec<ChainBreak>,
    /// How many problems were found in all.
    #[schema(minimum = 0)]
    pub problem_count: usize,
}

/// One problem: where, which table and column, and why.
#[derive(ToSchema)]
pub struct ChainBreak {
    /// What is wrong.
    #[schema(value_type = String, example = "column_mismatch")]
    pub kind: String,
    #[schema(minimum = 0, required = true)]
    pub chain_pos: Option<i64>,
    /// The span concerned, when there is one.
    #[schema(value_type = Option<String>, format = "uuid", required = true)]
    pub span_id: Option<uuid::Uuid>,
    /// `spans`, `span_bodies`, `redactions`, `chain_heads` or `idempotency`.
    pub table: String,
    /// The column that differs, when one does.
    #[schema(required = true)]
    pub column: Option<String>,
    /// The stored value, for positions and hashes only (content values are withheld).
    #[schema(required = true)]
    pub stored: Option<String>,
    /// The value the signed span (or the rows) says, for positions and hashes only.
    #[schema(required = true)]
    pub signed: Option<String>,
    pub reason: String,
}

/// Liveness
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "The server is running.", body = Health)),
)]
async fn healthz() -> Response {
    axum::Json(Health { status: "ok" }).into_response()
}

/// Readiness
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "The store answers.", body = Ready),
        (status = 503, description = "The store does not answer.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    store::manifest(st.store.as_ref()).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the {} store is not answering: {e}",
            st.store.backend()
        ))
    })?;
    Ok(axum::Json(Ready {
        status: "ready",
        store: st.store.backend(),
    })
    .into_response())
}

/// Prometheus metrics
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain")),
)]
async fn metrics(State(st): State<AppState>) -> Response {
    let mut resp = st.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The ledger manifest
///
/// Public: the manifest span, whose `content` holds the trusted keys, the allowed kernels and
/// the policy. `current` and the manifest's own `name` both find it.
#[utoipa::path(
    get,
    path = "/manifest/{name}",
    tag = "system",
    params(("name" = String, Path, description = "`current`, or the manifest's name.", example = "current")),
    responses(
        (status = 200, description = "The manifest.", body = Span),
        (status = 400, description = "The path is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No manifest by that name.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn manifest(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = store::manifest(st.store.as_ref())
        .await?
        .ok_or_else(|| ApiError::NotFound("this ledger has no manifest yet".into()))?;
    if name != "current" && m.get("name").and_then(|v| v.as_str()) != Some(name.as_str()) {
        return Err(ApiError::NotFound(format!("no manifest named `{name}`")));
    }
    Ok(axum::Json(m).into_response())
}

/// Verify the caller's chain
///
/// Recomputes every hash, link and signature of the caller's tenant chain and checks every
/// indexed column, the chain head, the redactions and the idempotency keys against the signed
/// spans (positions, columns and hashes only: no content).
#[utoipa::path(
    get,
    path = "/api/verify",
    tag = "system",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The chain is intact.", body = VerifyReport),
        (status = 409, description = "The chain is broken or the store was altered: the report names each problem.", body = VerifyReport),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn verify(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let trusted = st.trusted_keys().await?;
    let report =
        ledger::verify::verify_tenant(st.store.as_ref(), &caller.principal.tenant_id, &trusted)
            .await?
            .without_values();
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, axum::Json(report)).into_response())
}
