//! A scripted fake model server speaking the real wire protocols, on 127.0.0.1:0:
//! - OpenAI chat completions: `POST /v1/chat/completions`, JSON or `stream: true` SSE
//!   (`data: {chunk}` events, then `data: [DONE]`), tool calls with argument fragments;
//! - Ollama: `POST /api/chat`, JSON or NDJSON streaming (`done: true` on the last line).
//!
//! Each test queues [`Reply`]s; every request pops the next one (an empty script answers 500
//! "script exhausted", so a test notices an unexpected call). Requests are recorded with their
//! headers and JSON bodies for assertions. Builders below make protocol-correct bodies, as
//! plain JSON values: the fake depends on no crate of ours, so any crate's tests can use it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::serve::{Listener, ListenerExt};
use serde_json::{Value, json};
use tokio::time::Instant;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    },
    /// Any body, verbatim.
    Text {
        status: u16,
        content_type: String,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// OpenAI SSE: each value is sent as `data: <json>\n\n`, `gap` apart, then `data: [DONE]`
    /// when `done` (leave it out to simulate a cut stream).
    Sse {
        events: Vec<Value>,
        gap: Duration,
        done: bool,
    },
    /// Ollama NDJSON: one JSON value per line, `gap` apart.
    Ndjson { lines: Vec<Value>, gap: Duration },
    /// Waits, then answers with the inner reply (for timeouts).
    Delayed(Duration, Box<Reply>),
    /// A status whose body repeats the request's `Authorization` header (a careless server):
    /// the key must still never reach a span.
    EchoAuthorization { status: u16 },
}

impl Reply {
    pub fn json(body: Value) -> Self {
        Self::Json {
            status: 200,
            headers: Vec::new(),
            body,
        }
    }

    pub fn status(status: u16, body: Value) -> Self {
        Self::Json {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Self::Json {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Self::Json {
                    status,
                    headers,
                    body,
                }
            }
            Self::Text {
                status,
                content_type,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Self::Text {
                    status,
                    content_type,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::Text {
            status,
            content_type: "text/plain".into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn sse(events: Vec<Value>) -> Self {
        Self::Sse {
            events,
            gap: Duration::ZERO,
            done: true,
        }
    }

    pub fn ndjson(lines: Vec<Value>) -> Self {
        Self::Ndjson {
            lines,
            gap: Duration::ZERO,
        }
    }

    /// The same reply, its stream pieces `gap` apart.
    pub fn spaced(self, gap: Duration) -> Self {
        match self {
            Self::Sse { events, done, .. } => Self::Sse { events, gap, done },
            Self::Ndjson { lines, .. } => Self::Ndjson { lines, gap },
            other => other,
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed(delay, Box::new(self))
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
}

/// A running fake; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct FakeLlm {
    pub addr: SocketAddr,
    script: Arc<Script>,
}

impl FakeLlm {
    /// Starts a fake on a free loopback port (TCP_NODELAY on, like the real servers: delayed
    /// ACKs would otherwise add ~40 ms per exchange).
    pub async fn start() -> Self {
        let script = Arc::new(Script::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/api/chat", post(handle))
            // Embeddings (memory, issue 13): scripted like the chat replies.
            .route("/v1/embeddings", post(handle))
            .route("/api/embed", post(handle))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, script }
    }

    /// With the replies queued, in order.
    pub async fn with(replies: impl IntoIterator<Item = Reply>) -> Self {
        let fake = Self::start().await;
        for r in replies {
            fake.push(r);
        }
        fake
    }

    pub fn push(&self, reply: Reply) {
        self.script.replies.lock().unwrap().push_back(reply);
    }

    /// `http://127.0.0.1:<port>/v1` (what `OPENAI_BASE_URL` takes).
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:<port>` (what `OLLAMA_URL` takes).
    pub fn ollama_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.script.received.lock().unwrap().len()
    }

    /// Replies not used yet.
    pub fn remaining(&self) -> usize {
        self.script.replies.lock().unwrap().len()
    }
}

async fn handle(
    State(script): State<Arc<Script>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: parsed,
        at: Instant::now(),
    });
    let next = script.replies.lock().unwrap().pop_front();
    let reply =
        next.unwrap_or_else(|| Reply::status(500, json!({"error": "fake: script exhausted"})));
    respond(reply, &headers).await
}

fn build(status: u16, content_type: &str, extra: &[(String, String)], body: Body) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type);
    for (k, v) in extra {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(body).unwrap()
}

async fn respond(reply: Reply, request_headers: &HeaderMap) -> Response {
    match reply {
        Reply::Json {
            status,
            headers,
            body,
        } => build(
            status,
            "application/json",
            &headers,
            Body::from(body.to_string()),
        ),
        Reply::Text {
            status,
            content_type,
            headers,
            body,
        } => build(status, &content_type, &headers, Body::from(body)),
        Reply::Delayed(delay, inner) => {
            tokio::time::sleep(delay).await;
            Box::pin(respond(*inner, request_headers)).await
        }
        Reply::EchoAuthorization { status } => {
            let auth = request_headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            build(
                status,
                "application/json",
                &[],
                Body::from(
                    json!({"error": {"message": format!("rejected credentials: {auth}"), "type": "invalid_request_error"}})
                        .to_string(),
                ),
            )
        }
        Reply::Sse { events, gap, done } => {
            let mut pieces: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            if done {
                pieces.push("data: [DONE]\n\n".into());
            }
            build(200, "text/event-stream", &[], streamed(pieces, gap))
        }
        Reply::Ndjson { lines, gap } => {
            let pieces = lines.iter().map(|l| format!("{l}\n")).collect();
            build(200, "application/x-ndjson", &[], streamed(pieces, gap))
        }
    }
}

/// A body sent piece by piece, `gap` apart (each piece flushed as its own chunk).
fn streamed(pieces: Vec<String>, gap: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        for (i, p) in pieces.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Bytes::from(p))).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// OpenAI wire bodies.
pub mod openai {
    use serde_json::{Value, json};

    /// A `chat.completion` with text content.
    pub fn answer(content: &str) -> Value {
        completion(json!({"role": "assistant", "content": content}), "stop")
    }

    /// A `/v1/embeddings` response: one `embedding` object per vector, in order.
    pub fn embeddings(model: &str, vectors: &[Vec<f32>]) -> Value {
        let data: Vec<Value> = (vectors.iter().enumerate())
            .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        json!({"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    }

    /// A `chat.completion` asking for tool calls: `(id, name, arguments JSON text)`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Value {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        completion(
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            "tool_calls",
        )
    }

    pub fn completion(message: Value, finish_reason: &str) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_763_800_000,
            "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
        })
    }

    /// One `chat.completion.chunk` with a delta.
    pub fn chunk(delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_763_800_000,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        })
    }

    /// The final usage chunk (`stream_options.include_usage`): no choices.
    pub fn usage_chunk(prompt: u32, completion: u32) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_763_800_000,
            "model": "fake-model",
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        })
    }

    /// A streamed text answer: a role chunk, one chunk per piece, a stop chunk, usage.
    pub fn text_stream(pieces: &[&str]) -> Vec<Value> {
        let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        out.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
        out.push(chunk(json!({}), Some("stop")));
        out.push(usage_chunk(30, pieces.len() as u32));
        out
    }

    /// A tool-call fragment chunk: the first for an index carries id and name.
    pub fn tool_fragment(index: u32, id_name: Option<(&str, &str)>, arguments: &str) -> Value {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let Some((id, name)) = id_name {
            call["id"] = json!(id);
            call["type"] = json!("function");
            call["function"]["name"] = json!(name);
        }
        chunk(json!({"tool_calls": [call]}), None)
    }
}

/// Ollama wire bodies.
pub mod ollama {
    use serde_json::{Value, json};

    /// An `/api/embed` response.
    pub fn embed(model: &str, vectors: &[Vec<f32>]) -> Value {
        json!({"model": model, "embeddings": vectors,
               "total_duration": 1000, "prompt_eval_count": 3})
    }

    /// A complete (`done: true`) answer with text, counts included.
    pub fn answer(content: &str) -> Value {
        done(json!({"role": "assistant", "content": content}))
    }

    /// A complete answer asking for tool calls `(name, arguments)`.
    pub fn tool_calls(calls: &[(&str, Value)]) -> Value {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(name, args)| json!({"function": {"name": name, "arguments": args}}))
            .collect();
        done(json!({"role": "assistant", "content": "", "tool_calls": calls}))
    }

    pub fn done(message: Value) -> Value {
        json!({
            "model": "fake-model",
            "created_at": "2026-11-22T10:00:00.000000Z",
            "message": message,
            "done": true,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "load_duration": 1000,
            "prompt_eval_count": 33,
            "prompt_eval_duration": 1000,
            "eval_count": 5,
            "eval_duration": 1000
        })
    }

    /// A streamed piece (`done: false`).
    pub fn piece(message: Value) -> Value {
        json!({
            "model": "fake-model",
            "created_at": "2026-11-22T10:00:00.000000Z",
            "message": message,
            "done": false
        })
    }

    /// A streamed text answer: one line per piece, then the final counts line.
    pub fn text_stream(pieces: &[&str]) -> Vec<Value> {
        let mut out: Vec<Value> = pieces
            .iter()
            .map(|p| piece(json!({"role": "assistant", "content": p})))
            .collect();
        out.push(done(json!({"role": "assistant", "content": ""})));
        out
    }
}
