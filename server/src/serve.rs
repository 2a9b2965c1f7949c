//! `logline serve`: the HTTP API over the ledger. Handlers are thin: parse, authorize, call the
//! store, map the result. Every error is `application/problem+json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::serve::{Listener, ListenerExt, TapIo};
use ledger::Store;
use ledger::store::group::GroupCommit;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{Auth, Caller};
use crate::error::{ApiError, PROBLEM_JSON, problem};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes;

/// Tunables of a running server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub body_bytes: usize,
    /// Requests per second each tenant may make (burst: twice that).
    pub tenant_rps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 16 * 1024 * 1024,
            tenant_rps: 2000,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub writer: GroupCommit,
    pub auth: Arc<Auth>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<RateLimiter>,
    /// Flips to true when the server starts shutting down (streams send a last event).
    pub shutdown: watch::Receiver<bool>,
    /// The conversational agent (`POST /api/chat`).
    pub chat: Arc<crate::chat::agent::Agent>,
    trusted: Arc<tokio::sync::RwLock<Option<TrustedCache>>>,
}

/// The manifest's trusted keys as of a manifest generation seen by the hub.
struct TrustedCache {
    generation: u64,
    fetched: Instant,
    keys: Arc<Vec<String>>,
}

/// Re-read at least this often even if the hub saw no manifest change (belt and braces).
const TRUSTED_TTL: Duration = Duration::from_secs(30);

impl AppState {
    pub async fn new(
        store: Arc<dyn Store>,
        auth: Auth,
        limits: &Limits,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        ledger::store::ensure_manifest(store.as_ref()).await?;
        let writer = GroupCommit::start(store.clone());
        let chat = Arc::new(
            crate::chat::agent::Agent::from_env(store.clone(), Arc::new(writer.clone())).await?,
        );
        Ok(Self {
            chat,
            writer,
            hub: Hub::start(store.clone()).await?,
            store,
            auth: Arc::new(auth),
            metrics: Arc::new(Metrics::default()),
            limiter: Arc::new(RateLimiter::new(limits.tenant_rps)),
            shutdown,
            trusted: Arc::default(),
        })
    }

    /// The keys client signatures may verify against. Cached so that an append does not cost
    /// a manifest read; a new manifest seq (seen by the hub, from any process) invalidates it.
    pub async fn trusted_keys(&self) -> Result<Arc<Vec<String>>, ledger::StoreError> {
        let generation = self.hub.manifest_generation();
        if let Some(c) = self.trusted.read().await.as_ref()
            && c.generation == generation
            && c.fetched.elapsed() < TRUSTED_TTL
        {
            return Ok(c.keys.clone());
        }
        let keys = Arc::new(ledger::store::trusted_keys(self.store.as_ref()).await?);
        *self.trusted.write().await = Some(TrustedCache {
            generation,
            fetched: Instant::now(),
            keys: keys.clone(),
        });
        Ok(keys)
    }
}

/// A token bucket per tenant.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rps: u32) -> Self {
        Self {
            rate: f64::from(rps.max(1)),
            burst: f64::from(rps.max(1)) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says how many seconds until one is available.
    pub fn check(&self, tenant: &str) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, at) = buckets
            .entry(tenant.to_string())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header_token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        // Browsers' EventSource cannot set headers: the stream also takes `?access_token=`.
        let query_token = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(str::to_string)
        });
        let caller = state
            .auth
            .authenticate(header_token.or(query_token.as_deref()))?;
        state
            .limiter
            .check(&caller.principal.tenant_id)
            .map_err(|retry_after| ApiError::RateLimited {
                tenant: caller.principal.tenant_id.clone(),
                retry_after,
            })?;
        tracing::Span::current().record("user", caller.principal.user_id.as_str());
        tracing::Span::current().record("tenant", caller.principal.tenant_id.as_str());
        Ok(caller)
    }
}

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
        415 => "unsupported-media-type",
        _ => "bad-request",
    };
    let mut out = problem(status, slug, &detail, None);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

pub fn router(state: AppState, limits: &Limits) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(routes::spans::router())
        .merge(routes::timeline::router())
        .merge(routes::system::router())
        .merge(routes::chat::router())
        .merge(routes::web::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
        .layer(DefaultBodyLimit::max(limits.body_bytes))
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

/// Binds with TCP_NODELAY on every accepted connection: stream events and small responses are
/// written at once instead of waiting behind Nagle's algorithm for the peer's delayed ACK.
pub async fn listen(
    addr: SocketAddr,
) -> std::io::Result<TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>> {
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
    Ok(tokio::net::TcpListener::bind(addr)
        .await?
        .tap_io(no_delay as fn(&mut tokio::net::TcpStream)))
}

/// Refuses to expose an unauthenticated server beyond this machine.
pub fn check_bind(addr: &SocketAddr, auth: &Auth) -> Result<(), String> {
    if !auth.is_enabled() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without authentication: set LOGLINE_JWT_SECRET (or \
             LOGLINE_JWT_PUBLIC_KEY) to require tokens, or bind a loopback address such as 127.0.0.1"
        ));
    }
    Ok(())
}

/// Runs until Ctrl-C or SIGTERM, then stops accepting, lets in-flight requests finish and sends
/// stream clients a final event.
pub async fn run(
    store: Arc<dyn Store>,
    auth: Auth,
    addr: SocketAddr,
    limits: Limits,
) -> anyhow::Result<()> {
    check_bind(&addr, &auth).map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(store, auth, &limits, stop_rx).await?;
    let app = router(state, &limits);
    let listener = listen(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port when binding port 0.
    println!("logline listening on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
            // Give streams a moment to flush their final event.
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await?;
    Ok(())
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

/// `Location` header value for a span.
pub fn location(id: uuid::Uuid) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/spans/{id}"))
        .unwrap_or(HeaderValue::from_static("/api/spans"))
}
