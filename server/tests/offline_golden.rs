//! TEMPORARY golden recorder/replayer for the offline provider rewrite (issue 10). Not to be merged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use ledger::Principal;
use ledger::store::group::GroupCommit;
use serde_json::{Value, json};
use server::chat::agent::{Agent, MemoryMode, TurnRequest};
use server::chat::offline::OfflineProvider;
use server::chat::{
    ChatMessage, CompiledPrompt, Completion, CompletionRequest, Provider, ProviderError,
    SpanWriter, ToolSpec,
};
use support::store;

struct Recording {
    inner: OfflineProvider,
    log: Arc<Mutex<Vec<Value>>>,
}

#[async_trait]
impl Provider for Recording {
    fn kind(&self) -> &str {
        self.inner.kind()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        let c = self.inner.complete(req, deltas).await?;
        self.log.lock().unwrap().push(json!({
            "messages": req.messages,
            "tools": req.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "message": c.message,
            "raw": c.raw,
        }));
        Ok(c)
    }
}

const QUESTIONS: &[(&str, &str)] = &[
    ("ana", "Why was D1 terminated?"),
    ("ana", "why was D2 terminated?"),
    ("ana", "what happened to D3?"),
    ("ana", "what happened to D4?"),
    ("ana", "Explain the decision on d5."),
    ("ana", "why were D1 and D4 terminated?"),
    ("ana", "why was D9 terminated?"),
    ("ana", "why were D1 and D9 terminated?"),
    ("ana", "tell me about D2"),
    (
        "ana",
        "Which contracts have a guarantor who hasn't responded in 24h?",
    ),
    ("ana", "guarantors that haven't responded in 48 hours"),
    ("ana", "which guarantors are silent for a week"),
    ("ana", "Which contracts are terminated?"),
    ("ana", "which contracts are open?"),
    ("ana", "list held contracts"),
    ("ana", "which contracts were accepted"),
    ("ana", "List void contracts"),
    ("ana", "how many contracts are open?"),
    ("ana", "how many contracts are terminated?"),
    ("ana", "which contracts are terminated or held?"),
    ("ana", "What if the quorum were 3?"),
    ("ana", "what if the quorum were 1?"),
    ("ana", "simulate midnight_deadline with quorum=1"),
    ("ana", "what if the grace hours were 6 under law late_delivery"),
    ("ana", "what if loan_return's quorum were 2?"),
    ("ana", "what if it rained?"),
    ("ana", "extend D1's deadline"),
    ("ana", "Extend D5's deadline by 3 days."),
    ("ana", "Push the deadline of D3 by 12 hours."),
    ("ana", "set D4's deadline to 2030-01-31"),
    ("ana", "bring D5's deadline forward by 1 day"),
    ("ana", "extend D9's deadline by 2 days"),
    ("clara", "extend D1's deadline by 2 days"),
    ("ana", "postpone D1 and D2 by two days"),
    ("ana", "show span 0195a1b2-0000-7000-8000-000000000001"),
    ("ana", "Write me a poem about croissants"),
    ("ana", "hello"),
    ("ana", "why is D3 held?"),
    ("clara", "which contracts are open?"),
    ("clara", "why was D1 terminated?"),
    ("ana", "how many contracts are void?"),
    ("ana", "why did D5 get accepted"),
];

const SHOW_SPAN: &str = "show span of D1";

fn out_dir() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(std::env::var("GOLDEN_DIR").unwrap());
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs every question through the real agent with the offline provider on the demo data and
/// writes (a) every provider call and its reply, (b) every turn's answer and tool results.
#[tokio::test]
async fn record() {
    if std::env::var("GOLDEN_DIR").is_err() {
        return;
    }
    let (_dir, store) = store().await;
    server::cli_governance::seed_demo(store.as_ref(), "demo", Utc::now())
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let provider = Arc::new(Recording {
        inner: OfflineProvider::new(),
        log: log.clone(),
    });
    let writer: Arc<dyn SpanWriter> = Arc::new(GroupCommit::start(store.clone()));
    let agent = Agent::new(store.clone(), writer, provider).await.unwrap();
    let d1 = kernels::contracts::find(
        store.as_ref(),
        &Principal::new("ana@padaria-lisboa.pt", "demo"),
        "D1",
    )
    .await
    .unwrap()
    .unwrap()
    .id;
    let mut turns = Vec::new();
    let mut qs: Vec<(String, String)> = QUESTIONS
        .iter()
        .map(|(u, q)| (u.to_string(), q.to_string()))
        .collect();
    qs.push(("ana".into(), format!("show span {d1}")));
    qs.push(("ana".into(), format!("explain {d1}")));
    qs.push(("ana".into(), SHOW_SPAN.into()));
    for (who, q) in &qs {
        let user = match who.as_str() {
            "ana" => "ana@padaria-lisboa.pt",
            _ => "clara@cartorio-baixa.pt",
        };
        let p = Principal::new(user, "demo");
        let r = agent
            .turn(
                &p,
                &[],
                TurnRequest {
                    message: q.clone(),
                    conversation_id: None,
                    variant: None,
                    memory: MemoryMode::Off,
                },
                None,
            )
            .await
            .unwrap();
        turns.push(json!({
            "who": who, "question": q, "answer": r.answer, "outcome": format!("{:?}", r.outcome),
            "tool_results": r.tool_results.iter().map(|t| json!({"name": t.name, "ok": t.ok, "result": t.result})).collect::<Vec<_>>(),
        }));
    }
    let dir = out_dir();
    let calls = log.lock().unwrap().clone();
    std::fs::write(
        dir.join("calls.json"),
        serde_json::to_string_pretty(&calls).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("turns.json"),
        serde_json::to_string_pretty(&turns).unwrap(),
    )
    .unwrap();
}

/// Replays recorded provider calls against the current offline provider: same message, same raw.
#[tokio::test]
async fn replay() {
    let Ok(path) = std::env::var("GOLDEN_REPLAY") else {
        return;
    };
    let calls: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut n = 0;
    for c in &calls {
        let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
        let tools = c["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| ToolSpec {
                name: t.as_str().unwrap().into(),
                description: String::new(),
                parameters: json!({"type": "object"}),
            })
            .collect();
        let req = CompletionRequest {
            system: CompiledPrompt::new("x"),
            messages,
            tools,
            response_schema: None,
        };
        let got = OfflineProvider::new().complete(&req, None).await.unwrap();
        let want: ChatMessage = serde_json::from_value(c["message"].clone()).unwrap();
        assert_eq!(got.message, want, "call {n}");
        assert_eq!(got.raw, c["raw"], "call {n}");
        n += 1;
    }
    assert!(n > 40, "{n}");
}
