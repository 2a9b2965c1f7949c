//! `logline bench http`: the HTTP API measured over real loopback connections. An in-process
//! server (the same router `logline serve` runs) is driven by plain HTTP/1.1 clients: single-span
//! POSTs over many keep-alive connections, NDJSON batches, and many SSE subscribers measuring
//! commit-to-delivery latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ledger::Store;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::pct;
use crate::auth::Auth;
use crate::config::{self, ChatSettings, Limits};
use crate::serve::{listen, router};
use crate::state::AppState;

type Conn = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn post(conn: &mut Conn, content_type: &str, body: String) -> Result<(u16, Bytes)> {
    conn.ready().await?;
    let req = hyper::Request::post("/api/spans")
        .header("host", "127.0.0.1")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))?;
    let resp = conn.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn span(marker: &str) -> String {
    json!({"who": "bench", "did": "confirmed delivery", "this": marker, "when": "2026-11-20T10:00:00Z",
           "confirmed_by": "courier", "if_ok": "send receipt", "if_doubt": "ask", "if_not": "open incident",
           "status": "valid", "entity_type": "delivery", "visibility": "tenant"})
    .to_string()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Starts the API on an ephemeral loopback port.
async fn start(store: Arc<dyn Store>) -> Result<SocketAddr> {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    // The sender must outlive the server; leaking one small channel per bench run is fine.
    std::mem::forget(_tx);
    let limits = Limits {
        tenant_rps: 1_000_000,
        ..Limits::default()
    };
    let chat = ChatSettings::from_lookup(config::env)?;
    let state = AppState::new(
        store,
        Auth::Local(ledger::Principal::new("bench", "bench")),
        &limits,
        &chat,
        rx,
    )
    .await?;
    let app = router(state, &limits);
    let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::edge::serve(
        listener,
        app,
        limits.edge,
        std::future::pending(),
    ));
    Ok(addr)
}

pub async fn run(
    store: Arc<dyn Store>,
    connections: usize,
    requests: usize,
    batches: usize,
    subscribers: usize,
    events: usize,
) -> Result<Vec<Value>> {
    let addr = start(store.clone()).await?;
    let mut out = Vec::new();

    // Single-span requests over many keep-alive connections.
    let per = requests.div_ceil(connections.max(1));
    let start_t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections.max(1) {
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr).await?;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let (status, body) = post(
                    &mut conn,
                    "application/json",
                    span(&format!("single-{c}-{i}")),
                )
                .await?;
                if status != 201 {
                    return Err(anyhow!(
                        "POST answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start_t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    out.push(json!({"bench": "http", "store": store.backend(), "mode": "single", "connections": connections,
        "spans": lat.len(), "seconds": round(secs), "spans_per_sec": round(lat.len() as f64 / secs),
        "request_p50_ms": round(pct(&lat, 0.5)), "request_p99_ms": round(pct(&lat, 0.99))}));

    // NDJSON batches of 1000 lines over 4 connections.
    let start_t = Instant::now();
    let mut tasks = Vec::new();
    let conns = 4usize;
    for c in 0..conns {
        let n = batches.div_ceil(conns);
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr).await?;
            let mut lat = Vec::new();
            for b in 0..n {
                let body: String = (0..1000)
                    .map(|i| span(&format!("batch-{c}-{b}-{i}")) + "\n")
                    .collect();
                let t = Instant::now();
                let (status, resp) = post(&mut conn, "application/x-ndjson", body).await?;
                if status != 200 || resp.windows(11).any(|w| w == b"\"ok\":false,") {
                    return Err(anyhow!("NDJSON batch failed: {status}"));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start_t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let spans = lat.len() * 1000;
    out.push(json!({"bench": "http", "store": store.backend(), "mode": "ndjson", "connections": conns,
        "spans_per_request": 1000, "spans": spans, "seconds": round(secs), "spans_per_sec": round(spans as f64 / secs),
        "request_p50_ms": round(pct(&lat, 0.5)), "request_p99_ms": round(pct(&lat, 0.99))}));

    if subscribers > 0 {
        out.push(stream(addr, store.backend(), subscribers, events).await?);
    }
    Ok(out)
}

/// The bench marker (`"this":"stream-N"`) of one SSE event, if it carries one.
fn marker_of(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let at = text.find("\"this\":\"stream-")? + 8;
    let rest = &text[at..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Opens `subscribers` SSE streams, then appends `events` spans one at a time and measures, per
/// subscriber and span, the time from the append being acknowledged to the event arriving.
async fn stream(
    addr: SocketAddr,
    backend: &str,
    subscribers: usize,
    events: usize,
) -> Result<Value> {
    // Let the hub publish what earlier phases wrote, so subscribers start from a quiet ledger.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers);
    let mut handles = Vec::new();
    for _ in 0..subscribers {
        let arrivals = arrivals.clone();
        let ready = ready_tx.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = connect(addr).await?;
            conn.ready().await?;
            let req = hyper::Request::get("/api/timeline/stream?entity_type=delivery")
                .header("host", "127.0.0.1")
                .header("accept", "text/event-stream")
                .body(Full::new(Bytes::new()))?;
            let resp = conn.send_request(req).await?;
            let mut body = resp.into_body();
            ready.send(()).await.ok();
            // Parse whole SSE events (separated by a blank line); keep only the unfinished one.
            let mut carry: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let now = Instant::now();
                carry.extend_from_slice(data);
                let mut consumed = 0;
                while let Some(end) = carry[consumed..].windows(2).position(|w| w == b"\n\n") {
                    let event = &carry[consumed..consumed + end];
                    if let Some(marker) = marker_of(event) {
                        arrivals.lock().await.push((marker, now));
                    }
                    consumed += end + 2;
                }
                carry.drain(..consumed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        ready_rx
            .recv()
            .await
            .context("a subscriber failed to connect")?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = connect(addr).await?;
    for i in 0..events {
        let marker = format!("stream-{i}");
        let (status, _) = post(&mut conn, "application/json", span(&marker)).await?;
        acked.lock().await.insert(marker, Instant::now());
        if status != 201 {
            return Err(anyhow!("POST answered {status}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    let arrivals = arrivals.lock().await;
    let acked = acked.lock().await;
    let mut lat: Vec<f64> = arrivals
        .iter()
        .filter_map(|(m, t)| {
            acked
                .get(m)
                .map(|a| t.saturating_duration_since(*a).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(
        json!({"bench": "http", "store": backend, "mode": "stream", "subscribers": subscribers, "events": events,
        "deliveries": lat.len(), "expected_deliveries": subscribers * events,
        "delivery_p50_ms": round(pct(&lat, 0.5)), "delivery_p99_ms": round(pct(&lat, 0.99))}),
    )
}
