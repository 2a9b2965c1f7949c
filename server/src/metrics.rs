//! Prometheus metrics, kept in process and rendered as text at `/metrics`: requests by route and
//! status, latency histograms per route, spans appended, live stream clients.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub spans_appended: AtomicU64,
    pub stream_clients: AtomicI64,
}

impl Metrics {
    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route.to_string()).or_default();
            for (i, b) in BOUNDS.iter().enumerate() {
                if seconds <= *b {
                    h.buckets[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP logline_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE logline_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "logline_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP logline_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE logline_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                for (i, b) in BOUNDS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "logline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                        h.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "logline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "logline_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "logline_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        out.push_str("# HELP logline_spans_appended_total Spans appended through this server.\n");
        out.push_str("# TYPE logline_spans_appended_total counter\n");
        let _ = writeln!(
            out,
            "logline_spans_appended_total {}",
            self.spans_appended.load(Ordering::Relaxed)
        );
        out.push_str("# HELP logline_stream_clients Connected live-stream clients.\n");
        out.push_str("# TYPE logline_stream_clients gauge\n");
        let _ = writeln!(
            out,
            "logline_stream_clients {}",
            self.stream_clients.load(Ordering::Relaxed)
        );
        out
    }
}

/// Records every request under its route template (not its concrete path, which would let
/// clients create unbounded label sets).
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Arbitrary extension methods would let a client mint unbounded label values.
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(
        &route,
        &method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// Decrements the stream-client gauge when a stream ends, however it ends.
pub struct ClientGuard(pub std::sync::Arc<Metrics>);

impl ClientGuard {
    pub fn new(m: std::sync::Arc<Metrics>) -> Self {
        m.stream_clients.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}
