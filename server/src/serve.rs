//! `logline serve`: the HTTP API over the ledger, the routers of `routes/` behind one stack of
//! layers (request ids, tracing, metrics, body limit, `Content-Encoding`, problem documents),
//! served by [`crate::edge`] with graceful shutdown. Every error is `application/problem+json`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use ledger::Store;
use tokio::sync::watch;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::chat::candidates::{Gate, TrialRunner};
use crate::config::{Limits, ServeSettings};
use crate::error::{ApiError, PROBLEM_JSON, problem};
use crate::state::AppState;
use crate::{openapi, routes};

/// Rewrites error responses produced outside our handlers (unknown routes, wrong methods,
/// body-limit and extractor rejections) as problem documents.
async fn problem_everywhere(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let slug = match status.as_u16() {
        404 => "not-found",
        405 => "method-not-allowed",
        413 => "payload-too-large",
        414 => "uri-too-long",
        415 => "unsupported-media-type",
        431 => "header-fields-too-large",
        _ => "bad-request",
    };
    let mut out = problem(status, slug, &detail, None);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: the connection cannot carry another request,
        // and a client must not find that out by reusing it.
        out.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    out
}

/// Refuses a body in a `Content-Encoding` other than gzip (undone by the decompression layer,
/// within the body limit) with 415, so an encoded body is never taken for plain JSON.
async fn content_encoding(req: Request, next: Next) -> Response {
    let unsupported = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .find(|c| !matches!(c.as_str(), "gzip" | "x-gzip" | "identity" | ""));
    match unsupported {
        Some(c) => ApiError::UnsupportedMediaType(format!(
            "Content-Encoding `{c}` is not supported: send the body as gzip or unencoded"
        ))
        .into_response(),
        None => next.run(req).await,
    }
}

pub fn router(state: AppState, limits: &Limits) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(routes::spans::router())
        .merge(routes::checkpoints::router())
        .merge(routes::timeline::router())
        .merge(routes::system::router())
        .merge(routes::chat::router())
        .merge(routes::memory::router())
        .merge(routes::evals::router())
        .merge(routes::web::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
        // Extractors apply the limit to the decoded body: a gzip bomb stops at it (413).
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(RequestDecompressionLayer::new().gzip(true))
        .layer(middleware::from_fn(content_encoding))
        .layer(middleware::from_fn(problem_everywhere))
        .layer(middleware::from_fn_with_state(metrics, crate::metrics::track))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id,
                    user = tracing::field::Empty, tenant = tracing::field::Empty)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Binds the API's socket; [`crate::edge::serve`] serves it (TCP_NODELAY, keepalive and the
/// edge's limits on every accepted connection).
pub async fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Runs until Ctrl-C or SIGTERM, then stops accepting, lets in-flight requests finish and sends
/// stream clients a final event.
///
/// `trials` runs the evaluation suites for the `prompt_eval` kernel (the `logline` binary
/// passes the `evals` runner). Before listening, one pass evaluates the candidates this build
/// published (bounded by [`FIRST_PASS_WAIT`]; a longer one goes on in the background while the
/// chat answers 503 for variants not active yet). Without `trials` nothing is ever activated.
pub async fn run(
    store: Arc<dyn Store>,
    settings: ServeSettings,
    trials: Option<Arc<dyn TrialRunner>>,
) -> anyhow::Result<()> {
    let ServeSettings {
        bind: addr,
        limits,
        auth,
        chat,
    } = settings;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(store.clone(), auth, &limits, &chat, stop_rx.clone()).await?;
    match trials {
        Some(runner) => start_prompt_eval(&state, runner).await,
        None => tracing::warn!(
            "no evaluation runner in this build: prompt candidates stay inactive (use the logline binary)"
        ),
    }
    if let Some(every) = chat.memory.sweep_every {
        sweep_memory(state.chat.memory.clone(), every, stop_rx.clone());
    }
    let app = router(state, &limits);
    let edge = limits.edge.clone();
    let listener = listen(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port when binding port 0.
    println!("logline listening on http://{local}");
    crate::edge::serve(listener, app, edge, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
        // Give streams a moment to flush their final event.
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await?;
    Ok(())
}

/// Redacts expired memory items every `every` until shutdown (issue 13: a session item lives a
/// day, then nothing recoverable remains of it).
fn sweep_memory(
    memory: Arc<crate::memory::Memory>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const BATCH: i64 = 500;
    tokio::spawn(async move {
        loop {
            match memory.sweep_expired(chrono::Utc::now(), BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(swept = n, "memory: expired items redacted"),
                Err(e) => tracing::warn!(error = %e, "memory: the expiry sweep failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// How long `serve` waits for the first prompt_eval pass before it listens anyway.
pub const FIRST_PASS_WAIT: Duration = Duration::from_secs(60);

/// Runs prompt_eval's first pass (bounded), then its loop.
async fn start_prompt_eval(state: &AppState, runner: Arc<dyn TrialRunner>) {
    let gate = Arc::new(Gate {
        store: state.store.clone(),
        live: state.chat.prompts.clone(),
        provider: state.chat.provider.clone(),
        context_tokens: state.context_tokens,
        runner,
    });
    let started = std::time::Instant::now();
    let first = kernels::prompt_eval::run_once(state.store.as_ref(), gate.as_ref());
    match tokio::time::timeout(FIRST_PASS_WAIT, first).await {
        Ok(Ok(summary)) => tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            summary = %summary,
            "prompt_eval: first pass done"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "prompt_eval: first pass did not run; no prompt candidate can become active until Stage-0 \
             lets prompt_eval run (a ledger from before it existed must allow-list it: \
             `logline manifest set allowed_boot_ids=[…, \"00000000-0000-4000-8000-000000000007\"]`)"
        ),
        Err(_) => tracing::warn!(
            "prompt_eval: the first pass takes longer than {FIRST_PASS_WAIT:?}; listening now, variants not yet active answer 503"
        ),
    }
    kernels::prompt_eval::start(state.store.clone(), gate);
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
