//! `ll-eval-fake`: an OpenAI-compatible chat completions server that answers every request at
//! once with the same answer, for benchmarking eval runners (ours and promptfoo) against one
//! server whose cost is ~0. TCP_NODELAY is set on every connection: with Nagle and delayed ACKs
//! each exchange would wait ~40 ms and the benchmark would measure that.
//!
//! Prints its base URL (`http://127.0.0.1:PORT/v1`) as the first line of stdout and serves
//! until killed. `--answer TEXT` sets the message content (default: an answer object in the
//! agent's schema, which any runner's string assertions can also read).

use std::process::ExitCode;

use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use axum::serve::{Listener, ListenerExt};
use serde_json::{Value, json};

const DEFAULT_ANSWER: &str = r#"{"text": "D1 was terminated by midnight_deadline: delivered, never accepted, and the deadline passed.", "confidence": 0.9, "actions": [], "citations": [], "telemetry": {"tool_use_count": 0}}"#;

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130},
    })
}

fn stream(content: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                       "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130}});
    format!(
        "data: {}\n\ndata: {}\n\ndata: {usage}\n\ndata: [DONE]\n\n",
        chunk(
            json!({"role": "assistant", "content": content}),
            Value::Null
        ),
        chunk(json!({}), json!("stop")),
    )
}

async fn run(bind: String, answer: String) -> std::io::Result<()> {
    let answer: &'static str = Box::leak(answer.into_boxed_str());
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: axum::body::Bytes| async move {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (ctype, text) = if req["stream"].as_bool() == Some(true) {
                ("text/event-stream", stream(answer))
            } else {
                ("application/json", completion(answer).to_string())
            };
            Response::builder()
                .header(header::CONTENT_TYPE, ctype)
                .body(Body::from(text))
                .unwrap_or_default()
        }),
    );
    let listener = tokio::net::TcpListener::bind(&bind).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!("http://{}/v1", listener.local_addr()?);
    axum::serve(listener, app).await
}

fn main() -> ExitCode {
    let mut bind = "127.0.0.1:0".to_string();
    let mut answer = DEFAULT_ANSWER.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--bind", Some(v)) => bind = v,
            ("--answer", Some(v)) => answer = v,
            _ => {
                eprintln!("usage: ll-eval-fake [--bind ADDR] [--answer TEXT]");
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(bind, answer)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
