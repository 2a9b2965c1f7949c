//! `logline bench chat`: the server-side cost of a chat turn, without the model. An in-process
//! provider answers at once (a tool call, then an answer citing what the tool returned), so
//! each turn does everything a real one does — two prompt builds with token counting, the
//! conversation read, a tool over the ledger, schema and citation checks, and the turn's
//! records committed — and the figure is the turn's wall time minus the provider's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;
use chrono::Utc;
use ledger::store::group::GroupCommit;
use ledger::{Principal, Store};
use serde_json::{Value, json};
use uuid::Uuid;

use super::pct;
use crate::chat::agent::{Agent, MemoryMode, Outcome, TurnRequest};
use crate::chat::providers::{
    ChatMessage, Completion, CompletionRequest, Provider, ProviderError, Role, ToolCall,
};
use crate::chat::record::SpanWriter;

/// Answers at once: on a fresh turn it asks for `explain_decision` of D1; with the tool's
/// result in hand it answers citing the first id it finds there.
struct InstantProvider;

fn first_id(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| s.parse::<Uuid>().is_ok())
            .map(str::to_string)
            .or_else(|| m.values().find_map(first_id)),
        Value::Array(a) => a.iter().find_map(first_id),
        _ => None,
    }
}

#[async_trait]
impl Provider for InstantProvider {
    fn kind(&self) -> &str {
        "bench"
    }

    fn model(&self) -> &str {
        "instant"
    }

    async fn complete(
        &self,
        req: &CompletionRequest,
        _deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        let tool_result = req
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role != Role::User)
            .find(|m| m.role == Role::Tool);
        let message = match tool_result {
            None => ChatMessage::assistant_tool_calls(
                "",
                vec![ToolCall {
                    id: "call_1".into(),
                    name: crate::chat::tools::ToolName::ExplainDecision
                        .as_str()
                        .into(),
                    arguments: json!({"contract": "D1"}),
                }],
            ),
            Some(m) => {
                let cited: Vec<String> = serde_json::from_str::<Value>(&m.content)
                    .ok()
                    .as_ref()
                    .and_then(first_id)
                    .into_iter()
                    .collect();
                ChatMessage::assistant(
                    json!({"text": "D1 was terminated by midnight_deadline.", "confidence": 0.9,
                           "actions": [], "citations": cited, "telemetry": {"tool_use_count": 1}})
                    .to_string(),
                )
            }
        };
        Ok(Completion {
            message,
            tokens_in: None,
            tokens_out: None,
            latency: Duration::ZERO,
            raw: json!({"bench": true}),
            attempts: 1,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `turns` turns over `conversations` concurrent conversations (each its own task, its
/// turns in sequence, continuing one conversation) on the demo tenant of `store`. With
/// `think` > 0 each conversation pauses that long between turns, as a person would (an open
/// conversation rather than a closed loop that measures only queueing on a saturated machine);
/// the conversations start spread over one think time.
pub async fn run(
    store: Arc<dyn Store>,
    conversations: usize,
    turns: usize,
    think: Duration,
    context_tokens: Option<usize>,
) -> Result<Value> {
    let tenant = format!("bench-chat-{}", Uuid::now_v7().simple());
    kernels::demo::seed_demo(store.as_ref(), &tenant, Utc::now()).await?;
    let writer: Arc<dyn SpanWriter> = Arc::new(GroupCommit::start(store.clone()));
    let agent = Arc::new(
        Agent::new(
            store.clone(),
            writer,
            Arc::new(InstantProvider),
            context_tokens,
        )
        .await?,
    );
    let principal = Principal::new("ana@padaria-lisboa.pt", tenant.as_str());
    // One warm-up turn: tokenizers, prepared statements, caches.
    let warm = agent.turn(&principal, &[], request(None), None).await?;
    if warm.outcome != Outcome::Answered {
        bail!("the warm-up turn did not answer: {}", warm.answer);
    }
    let per = turns.div_ceil(conversations.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let n = conversations.max(1);
    for c in 0..n {
        let agent = agent.clone();
        let principal = principal.clone();
        let offset = think.mul_f64(c as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let mut overhead = Vec::with_capacity(per);
            let mut total = Vec::with_capacity(per);
            let mut conversation = None;
            tokio::time::sleep(offset).await;
            for i in 0..per {
                if i > 0 && !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
                let t = Instant::now();
                let r = agent
                    .turn(&principal, &[], request(conversation), None)
                    .await?;
                total.push(t.elapsed().as_secs_f64() * 1000.0);
                if r.outcome != Outcome::Answered {
                    bail!("a turn did not answer: {}", r.answer);
                }
                conversation = Some(r.conversation_id);
                overhead.push(r.overhead.as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>((overhead, total))
        }));
    }
    let mut overhead = Vec::new();
    let mut total = Vec::new();
    for t in tasks {
        let (o, w) = t.await??;
        overhead.extend(o);
        total.extend(w);
    }
    let secs = started.elapsed().as_secs_f64();
    overhead.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "chat",
        "store": store.backend(),
        "conversations": conversations,
        "think_ms": u64::try_from(think.as_millis()).unwrap_or(u64::MAX),
        "turns": overhead.len(),
        "turns_per_s": round(overhead.len() as f64 / secs),
        "overhead_ms": {"p50": round(pct(&overhead, 0.5)), "p99": round(pct(&overhead, 0.99)), "max": round(overhead.last().copied().unwrap_or(0.0))},
        "turn_ms": {"p50": round(pct(&total, 0.5)), "p99": round(pct(&total, 0.99))},
        "targets": {"overhead_p50_ms": 2.0, "overhead_p99_ms": 5.0},
    }))
}

fn request(conversation_id: Option<Uuid>) -> TurnRequest {
    TurnRequest {
        message: "why was D1 terminated?".into(),
        conversation_id,
        variant: None,
        memory: MemoryMode::Off,
    }
}
