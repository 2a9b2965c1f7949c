//! Health, readiness, metrics, the manifest, chain verification and the OpenAPI document.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger::store;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::serve::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/manifest/{name}", get(manifest))
        .route("/api/verify", get(verify))
        .route("/api/openapi.json", get(openapi))
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    store::manifest(st.store.as_ref()).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the {} store is not answering: {e}",
            st.store.backend()
        ))
    })?;
    Ok(axum::Json(json!({"status": "ready", "store": st.store.backend()})).into_response())
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut resp = st.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The manifest is public; `current` and its own name both find it.
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

/// The chain status of the caller's tenant (positions and hashes only: no content).
async fn verify(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let trusted = store::trusted_keys(st.store.as_ref()).await?;
    let report =
        ledger::verify::verify_tenant(st.store.as_ref(), &caller.principal.tenant_id, &trusted)
            .await?;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, axum::Json(report)).into_response())
}

async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}
