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
use ledger::query::{MAX_LIMIT, parse_instant};
use ledger::{Filter, Order, Principal, Store};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::hub::HubEvent;
use crate::metrics::ClientGuard;
use crate::routes::spans::Span;
use crate::state::AppState;

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

/// The filters shared by the timeline and its stream (parsed by [`parse_filter`]; this type
/// only describes them). Empty text filters are ignored; text filters must not contain NUL
/// (U+0000).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// Only this span id.
    #[param(value_type = Option<String>, format = "uuid")]
    pub id: Option<Uuid>,
    /// Only spans of this entity type (e.g. `logline`).
    pub entity_type: Option<String>,
    /// Exact `who`.
    pub who: Option<String>,
    /// Exact `did`.
    pub did: Option<String>,
    /// Exact `this`.
    pub this: Option<String>,
    /// Exact status (e.g. `valid`, `ghost`).
    pub status: Option<String>,
    /// Only spans of this tenant.
    pub tenant: Option<String>,
    /// Only spans owned by this user.
    pub owner: Option<String>,
    /// Spans with `at` at or after this instant (RFC 3339) or date (`YYYY-MM-DD`, midnight UTC).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Spans with `at` before this instant (RFC 3339) or date (`YYYY-MM-DD`, midnight UTC).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Spans that list this span id in `related_to`.
    #[param(value_type = Option<String>, format = "uuid")]
    pub related_to: Option<Uuid>,
    /// Only spans of this trace.
    pub trace_id: Option<String>,
}

/// Sort order of the timeline (by ingest order).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

/// Paging of `GET /api/timeline`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Spans per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, with the same `order`.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    #[param(inline)]
    pub order: Option<SortOrder>,
}

/// Resuming `GET /api/timeline/stream` (the `Last-Event-ID` header wins over the query).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Resume after this event id: spans recorded since are sent first.
    pub last_event_id: Option<i64>,
    /// The bearer token, for clients that cannot set headers (browsers' `EventSource`).
    pub access_token: Option<String>,
}

/// One page of the timeline.
#[derive(Serialize, ToSchema)]
pub struct TimelinePage {
    #[schema(value_type = Vec<Span>)]
    pub spans: Vec<Value>,
    /// Pass as `cursor` (with the same `order`) for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Parses the shared filter parameters; unknown parameters are ignored.
pub fn parse_filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    // No stored text can hold U+0000 on PostgreSQL, which fails the whole query on one: refuse
    // it here, the same on every store.
    let text = |k: &str| match q.get(k).filter(|v| !v.is_empty()) {
        Some(v) if v.contains('\0') => Err(ApiError::BadRequest(format!(
            "{k}: NUL characters (U+0000) are not allowed"
        ))),
        v => Ok(v.cloned()),
    };
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
        entity_type: text("entity_type")?,
        who: text("who")?,
        did: text("did")?,
        this: text("this")?,
        status: text("status")?,
        tenant_id: text("tenant")?,
        owner_id: text("owner")?,
        since: time("since")?,
        until: time("until")?,
        related_to: uuid("related_to")?,
        trace_id: text("trace_id")?,
        after,
        order,
        limit,
    })
}

/// Query the timeline
///
/// Spans the caller may see, filtered, in ingest order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/timeline",
    tag = "timeline",
    security(("bearer" = []), ()),
    params(FilterParams, PageParams),
    responses(
        (status = 200, description = "A page of spans.", body = TimelinePage),
        (status = 400, description = "A filter, `limit`, `order` or `cursor` is malformed (text filters must not contain NUL).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
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
    Ok(axum::Json(TimelinePage {
        spans,
        next_cursor: next,
    })
    .into_response())
}

fn span_event(ingest_id: i64, view: &serde_json::Value) -> Event {
    Event::default()
        .id(ingest_id.to_string())
        .event("span")
        .data(view.to_string())
}

type EventTx = tokio::sync::mpsc::Sender<Result<Event, Infallible>>;

/// Sends the spans after `after` that the principal may see, one page at a time, so a client
/// catching up holds at most one page in server memory. Returns the last id sent, or `None`
/// when the client went away or the store failed (the client is told, and may resume).
async fn backfill(
    store: &dyn Store,
    principal: &Principal,
    filter: &Filter,
    mut after: i64,
    tx: &EventTx,
) -> Option<i64> {
    loop {
        let page = match store
            .query(
                principal,
                &Filter {
                    after: Some(after),
                    order: Order::Asc,
                    limit: Some(MAX_LIMIT),
                    ..filter.clone()
                },
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "stream catch-up failed");
                let _ = tx
                    .send(Ok(Event::default().event("error").data(
                        "{\"detail\":\"could not read missed spans; reconnect with Last-Event-ID\"}",
                    )))
                    .await;
                return None;
            }
        };
        for r in &page.rows {
            let Ok(view) = r.span.to_view() else { continue };
            if tx.send(Ok(span_event(r.ingest_id, &view))).await.is_err() {
                return None;
            }
            after = r.ingest_id;
        }
        if page.next_cursor.is_none() {
            return Some(after);
        }
    }
}

/// Stream new spans
///
/// Server-Sent Events: one `span` event per new span the caller may see and the filters match
/// (`id`: its event id, `data`: the span as JSON); a `shutdown` event when the server stops;
/// `heartbeat` comments every 15 s. Reconnect with `Last-Event-ID` to get what was missed.
#[utoipa::path(
    get,
    path = "/api/timeline/stream",
    tag = "timeline",
    security(("bearer" = []), ()),
    params(
        FilterParams,
        StreamParams,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "Resume after this event id."),
    ),
    responses(
        (status = 200, description = "An endless event stream.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A filter or the event id is malformed (text filters must not contain NUL).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
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
    // A fresh client starts at what the hub has already published; it is never sent history,
    // not even when it lags and has to catch up from the store.
    let start = resume.unwrap_or_else(|| st.hub.published_through());
    let principal = caller.principal.clone();
    let guard = ClientGuard::new(st.metrics.clone());
    let store = st.store.clone();
    let mut shutdown = st.shutdown.clone();
    let s = async_stream(move |tx| async move {
        let _guard = guard;
        let mut last_sent = start;
        // Events at or below this id came from the store; the live copies are duplicates.
        let mut caught_up_to = 0;
        if resume.is_some() {
            match backfill(store.as_ref(), &principal, &filter, last_sent, &tx).await {
                Some(last) => {
                    last_sent = last;
                    caught_up_to = last;
                }
                None => return,
            }
        }
        loop {
            let ev: Arc<HubEvent> = tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live channel: catch up from the store instead.
                        match backfill(store.as_ref(), &principal, &filter, last_sent, &tx).await {
                            Some(last) => {
                                last_sent = last;
                                caught_up_to = last;
                            }
                            None => return,
                        }
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                _ = shutdown.changed() => {
                    let _ = tx.send(Ok(Event::default().event("shutdown").data("{\"reason\":\"server shutting down; reconnect with Last-Event-ID\"}"))).await;
                    return;
                }
            };
            // The hub publishes each id once, so only store catch-ups can duplicate.
            if ev.ingest_id <= caught_up_to {
                continue;
            }
            if principal.can_see(&ev.tenant_id, &ev.owner_id, ev.visibility)
                && filter.matches(&ev.view)
            {
                last_sent = last_sent.max(ev.ingest_id);
                let event = Event::default()
                    .id(ev.ingest_id.to_string())
                    .event("span")
                    .data(&*ev.data);
                if tx.send(Ok(event)).await.is_err() {
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
