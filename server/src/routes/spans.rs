//! `POST /api/spans` (one JSON span, or NDJSON with one result per line), `GET /api/spans/{id}`
//! and `GET /api/spans/{id}/versions`.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger::store;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ingest;
use crate::serve::{AppState, location};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/spans", axum::routing::post(post_spans))
        .route("/api/spans/{id}", get(get_span))
        .route("/api/spans/{id}/versions", get(get_versions))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a span id (a UUID)")))
}

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
    let trusted = store::trusted_keys(st.store.as_ref()).await?;
    let p = &caller.principal;
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            let lines = ingest::ndjson_lines(text);
            if lines.is_empty() {
                return Err(ApiError::Unprocessable {
                    detail: "no spans in the body: send one JSON object per line".into(),
                    line: None,
                });
            }
            let (drafts, slots) = ingest::parse_lines(&lines, p, &trusted, key.as_deref());
            let results = st.writer.append(p, drafts).await?;
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
            let value = match &key {
                Some(k) => ingest::with_key(text, k).map_err(|e| ApiError::from_input(e, None))?,
                None => {
                    if text.len() > ledger::span::MAX_SPAN_BYTES {
                        return Err(ApiError::PayloadTooLarge(format!(
                            "span is {} bytes, over the {}-byte limit",
                            text.len(),
                            ledger::span::MAX_SPAN_BYTES
                        )));
                    }
                    serde_json::from_str::<Value>(text).map_err(|e| {
                        ApiError::from_input(ledger::InputError::NotJson(e.to_string()), None)
                    })?
                }
            };
            let draft = ledger::Draft::from_value(value, p, &trusted, chrono::Utc::now())
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
            let body = json!({"id": result.id, "seq": result.seq, "chain_pos": result.chain_pos,
                              "curr_hash": result.curr_hash, "status": result.status, "duplicate": result.duplicate});
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

async fn get_span(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeqParam>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
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
    let view = span
        .to_view()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    Ok(axum::Json(view).into_response())
}

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
    Ok(axum::Json(json!({"id": id, "versions": views})).into_response())
}
