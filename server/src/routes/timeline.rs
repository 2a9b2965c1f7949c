//! `GET /api/timeline` (filters, opaque cursor pagination) and `GET /api/timeline/stream`
//! (Server-Sent Events of new spans the caller may see, resumable with `Last-Event-ID`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures::Stream;
use ledger::query::MAX_LIMIT;
use ledger::{Filter, Order, Principal, Store};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::auth::Caller;
use crate::cli::parse_instant;
use crate::error::ApiError;
use crate::hub::HubEvent;
use crate::metrics::ClientGuard;
use crate::serve::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/timeline", get(timeline))
        .route("/api/timeline/stream", get(stream))
}

fn encode_cursor(order: Order, after: i64) -> String {
    let o = if order == Order::Desc { "d" } else { "a" };
    B64.encode(format!("v1:{o}:{after}"))
}

fn decode_cursor(c: &str, order: Order) -> Result<i64, ApiError> {
    let bad = || ApiError::BadRequest(format!("cursor `{c}` is not one this server issued"));
    let text = String::from_utf8(B64.decode(c).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(o), Some(n)) => {
            let want = if order == Order::Desc { "d" } else { "a" };
            if o != want {
                return Err(ApiError::BadRequest(
                    "the cursor was issued for the other order".into(),
                ));
            }
            n.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Parses the shared filter parameters; unknown parameters are ignored.
pub fn parse_filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let time = |k: &str| {
        q.get(k)
            .map(|v| parse_instant(v).map_err(|e| ApiError::BadRequest(format!("{k}: {e}"))))
            .transpose()
    };
    let uuid = |k: &str| {
        q.get(k)
            .map(|v| {
                Uuid::parse_str(v)
                    .map_err(|_| ApiError::BadRequest(format!("{k}: `{v}` is not a UUID")))
            })
            .transpose()
    };
    let order = match q.get("order").map(String::as_str) {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(o) => {
            return Err(ApiError::BadRequest(format!(
                "order: `{o}` is not asc or desc"
            )));
        }
    };
    let limit = match q.get("limit") {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit: `{l}` is not between 1 and {MAX_LIMIT}"
                )));
            }
        },
    };
    let after = q
        .get("cursor")
        .map(|c| decode_cursor(c, order))
        .transpose()?;
    Ok(Filter {
        id: uuid("id")?,
        entity_type: text("entity_type"),
        who: text("who"),
        did: text("did"),
        this: text("this"),
        status: text("status"),
        tenant_id: text("tenant"),
        owner_id: text("owner"),
        since: time("since")?,
        until: time("until")?,
        related_to: uuid("related_to")?,
        trace_id: text("trace_id"),
        after,
        order,
        limit,
    })
}

async fn timeline(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filter = parse_filter(&q)?;
    let page = st.store.query(&caller.principal, &filter).await?;
    let spans = page
        .rows
        .iter()
        .map(|r| {
            r.span
                .to_view()
                .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next = page.next_cursor.map(|c| encode_cursor(filter.order, c));
    Ok(axum::Json(json!({"spans": spans, "next_cursor": next})).into_response())
}

fn span_event(ingest_id: i64, view: &serde_json::Value) -> Event {
    Event::default()
        .id(ingest_id.to_string())
        .event("span")
        .data(view.to_string())
}

/// Pages through spans after `after` that the principal may see; returns the events and the
/// last ingest id sent.
async fn backfill(
    store: &dyn Store,
    principal: &Principal,
    filter: &Filter,
    mut after: i64,
) -> Result<(Vec<Event>, i64), ApiError> {
    let mut events = Vec::new();
    loop {
        let page = store
            .query(
                principal,
                &Filter {
                    after: Some(after),
                    order: Order::Asc,
                    limit: Some(MAX_LIMIT),
                    ..filter.clone()
                },
            )
            .await?;
        for r in &page.rows {
            let view = r
                .span
                .to_view()
                .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
            events.push(span_event(r.ingest_id, &view));
            after = r.ingest_id;
        }
        if page.next_cursor.is_none() {
            return Ok((events, after));
        }
    }
}

async fn stream(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = Filter {
        after: None,
        limit: None,
        order: Order::Asc,
        ..parse_filter(&q)?
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("last_event_id").cloned())
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID `{v}` is not an event id from this stream"
                ))
            })
        })
        .transpose()?;
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut rx = st.hub.subscribe();
    let principal = caller.principal.clone();
    let (initial, mut last_sent) = match resume {
        Some(after) => backfill(st.store.as_ref(), &principal, &filter, after).await?,
        None => (Vec::new(), 0),
    };
    let guard = ClientGuard::new(st.metrics.clone());
    let store = st.store.clone();
    let mut shutdown = st.shutdown.clone();
    let s = async_stream(move |tx| async move {
        let _guard = guard;
        for e in initial {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let ev: Arc<HubEvent> = tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live channel: catch up from the store instead.
                        match backfill(store.as_ref(), &principal, &filter, last_sent).await {
                            Ok((events, last)) => {
                                last_sent = last;
                                for e in events {
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "stream catch-up failed"),
                        }
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = shutdown.changed() => {
                    let _ = tx.send(Ok(Event::default().event("shutdown").data("{\"reason\":\"server shutting down; reconnect with Last-Event-ID\"}"))).await;
                    return;
                }
            };
            if ev.ingest_id <= last_sent && resume.is_some() {
                continue;
            }
            if principal.can_see(&ev.tenant_id, &ev.owner_id, ev.visibility)
                && filter.matches(&ev.view)
            {
                last_sent = last_sent.max(ev.ingest_id);
                if tx
                    .send(Ok(span_event(ev.ingest_id, &ev.view)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(s).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

/// A stream fed by a task through a small bounded channel: a slow client holds at most this
/// many events in memory; the rest waits in the hub's bounded buffer or the store.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
