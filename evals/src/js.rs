//! The `javascript` assertion, run in the kernels' sandbox (QuickJS, fresh runtime per run,
//! memory and time limits, no filesystem or network) with `output` (the answer text) and
//! `context` (the answer, outcome, tool calls, citations, proposals, latency, tokens) bound.
//! As in promptfoo, a single line is an expression whose value is the verdict; several lines
//! are a function body that `return`s it. The verdict is a boolean, a score (a number), or
//! `{pass, score, reason}`. The assertion gets no ledger access: its host refuses every call.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kernels::sandbox::{Host, Limits, Sandbox};
use serde_json::{Value, json};

/// A script's verdict.
#[derive(Debug)]
pub struct JsVerdict {
    pub pass: Option<bool>,
    pub score: f64,
    pub reason: Option<String>,
}

struct NoLedger;

impl Host for NoLedger {
    fn query(&self, _: Value) -> Result<Vec<Value>, String> {
        Err("an assertion cannot read the ledger".into())
    }

    fn append(&self, _: Value) -> Result<Value, String> {
        Err("an assertion cannot write the ledger".into())
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The source the sandbox runs for an assertion.
fn program(src: &str) -> String {
    let body = if src.trim().contains('\n') {
        src.to_string()
    } else {
        format!("return ({});", src.trim().trim_end_matches(';'))
    };
    format!(
        "function main(input, ctx) {{\nconst output = input.output;\nconst context = input.context;\n{body}\n}}"
    )
}

/// Runs an assertion script.
pub async fn evaluate(src: &str, output: &str, context: Value) -> Result<JsVerdict, String> {
    let limits = Limits {
        time: Duration::from_secs(2),
        ..Limits::default()
    };
    let run = Sandbox::run(
        &program(src),
        json!({"output": output, "context": context}),
        Arc::new(NoLedger),
        limits,
    )
    .await
    .map_err(|e| e.to_string())?;
    match run.output {
        Value::Bool(b) => Ok(JsVerdict {
            pass: Some(b),
            score: if b { 1.0 } else { 0.0 },
            reason: None,
        }),
        Value::Number(n) => Ok(JsVerdict {
            pass: None,
            score: n.as_f64().unwrap_or(0.0),
            reason: None,
        }),
        Value::Object(m) => {
            let pass = m.get("pass").and_then(Value::as_bool);
            let score = m
                .get("score")
                .and_then(Value::as_f64)
                .unwrap_or(if pass == Some(true) { 1.0 } else { 0.0 });
            Ok(JsVerdict {
                pass,
                score,
                reason: m.get("reason").and_then(Value::as_str).map(str::to_string),
            })
        }
        other => Err(format!(
            "the script returned {other}, not a boolean, a number or {{pass, score, reason}}"
        )),
    }
}
