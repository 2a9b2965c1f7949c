//! `GET /api/checkpoints/latest` (the caller's tenant's newest signed checkpoint) and
//! `GET /api/checkpoints/consistency?from=N[&to=M]` (a proof that the tree of N spans is a
//! prefix of the tree of M). See docs/checkpoints.md for the formats and the algorithms.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/checkpoints/latest", get(latest))
        .route("/api/checkpoints/consistency", get(consistency))
}

/// A signed checkpoint of the caller's tenant chain (C2SP tlog-checkpoint in a signed note).
#[derive(Serialize, ToSchema)]
pub struct CheckpointView {
    /// `logline/<node key id>/<tenant>`.
    pub origin: String,
    /// Spans covered: chain positions `0..size`.
    #[schema(minimum = 0)]
    pub size: u64,
    /// Base64 RFC 9162 (SHA-256) Merkle root.
    pub root: String,
    /// The signed note, exactly as signed.
    pub note: String,
    /// The node key that signed it (`ed25519:<hex>`).
    pub public_key: String,
}

/// Latest checkpoint
///
/// The newest signed checkpoint of the caller's tenant chain. The node signs its tree only when
/// it extends the checkpoint it remembers outside the database; a truncated or rewritten chain
/// answers 409 naming what differs.
#[utoipa::path(
    get,
    path = "/api/checkpoints/latest",
    tag = "checkpoints",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The checkpoint.", body = CheckpointView),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The tenant has no spans yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The chain no longer extends the remembered checkpoint (truncated, rolled back or forked).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant_id))]
async fn latest(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let store = st.store.as_ref();
    let c =
        ledger::checkpoint::latest(store, store.node_key(), &caller.principal.tenant_id).await?;
    Ok(axum::Json(CheckpointView {
        root: c.checkpoint.root_b64(),
        origin: c.checkpoint.origin,
        size: c.checkpoint.size,
        note: c.note,
        public_key: store.node_key().public_key().to_string(),
    })
    .into_response())
}

#[derive(Deserialize)]
struct Sizes {
    from: Option<String>,
    to: Option<String>,
}

fn size(name: &str, v: Option<String>) -> Result<Option<u64>, ApiError> {
    v.map(|s| {
        s.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`{name}` must be a tree size (an integer >= 0), not `{s}`"
            ))
        })
    })
    .transpose()
}

/// Consistency proof
///
/// Proves that the caller's tenant tree of `from` spans is a prefix of the tree of `to` spans
/// (the latest checkpoint by default): RFC 9162 §2.1.4. The answer is a proof document that
/// `logline proof verify` checks offline; compare its `old_root` with the older checkpoint
/// you hold.
#[utoipa::path(
    get,
    path = "/api/checkpoints/consistency",
    tag = "checkpoints",
    security(("bearer" = []), ()),
    params(
        ("from" = u64, Query, description = "The older tree size."),
        ("to" = Option<u64>, Query, description = "The newer tree size; the latest checkpoint's by default."),
    ),
    responses(
        (status = 200, description = "The proof document (`type: consistency`).", body = Object),
        (status = 400, description = "`from` missing or not a size.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The tenant has no spans yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The chain no longer extends the remembered checkpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A size beyond the tree, or `from` > `to`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant_id))]
async fn consistency(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<Sizes>,
) -> Result<Response, ApiError> {
    let from = size("from", q.from)?
        .ok_or_else(|| ApiError::BadRequest("`from` (the older tree size) is required".into()))?;
    let to = size("to", q.to)?;
    let doc =
        ledger::proof::consistency_doc(st.store.as_ref(), &caller.principal.tenant_id, from, to)
            .await?;
    Ok(axum::Json(doc).into_response())
}
