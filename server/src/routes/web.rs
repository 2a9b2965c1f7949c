//! The browser UI (`web/`): the chat at `/`, span pages at `/spans/{id}`, the live timeline at
//! `/timeline`, escalation reviews at `/reviews` and evaluation runs, pass rates, prompt
//! candidates and the bandit's probabilities at `/evals`. The span page asks
//! `GET /api/spans/{id}/verify` (in `spans.rs`) whether a span's hash and signature hold.
//!
//! The files are embedded in the binary (`include_bytes!`) so `logline serve` works from any
//! directory and needs no build step. Every page is served with a strict Content-Security-Policy:
//! scripts, styles, images and connections come from this server only (no CDN, no inline code),
//! so the UI makes no request beyond it.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page("index.html") }))
        .route("/spans/{id}", get(|| async { page("span.html") }))
        .route("/timeline", get(|| async { page("timeline.html") }))
        .route("/reviews", get(|| async { page("reviews.html") }))
        .route("/evals", get(|| async { page("evals.html") }))
        .route("/assets/{file}", get(asset))
}

/// What a page may load: everything from this server, nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// One embedded file of `web/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../../web/", $name)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI serves. Pages are reached by their routes, the rest under `/assets/`.
static FILES: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("span.html", HTML),
    asset!("timeline.html", HTML),
    asset!("reviews.html", HTML),
    asset!("evals.html", HTML),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("common.js", JS),
    asset!("render.js", JS),
    asset!("chat.js", JS),
    asset!("span.js", JS),
    asset!("merkle.js", JS),
    asset!("timeline.js", JS),
    asset!("reviews.js", JS),
    asset!("evals.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}

fn respond(a: &Asset) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: revalidate instead of serving a stale UI.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, a.body).into_response()
}

fn page(name: &str) -> Response {
    match find(name) {
        Some(a) if a.content_type == HTML => respond(a),
        _ => ApiError::NotFound(format!("no page {name}")).into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match find(&file) {
        // Pages have their own routes; `/assets/` serves the rest.
        Some(a) if a.content_type != HTML => respond(a),
        _ => ApiError::NotFound(format!("no asset `{file}`")).into_response(),
    }
}
