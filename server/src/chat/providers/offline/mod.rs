//! The embedded offline provider (`LOGLINE_PROVIDER=offline`, the default; DESIGN.md §7).
//!
//! It is not a language model and says so. It recognises a handful of question shapes about
//! contracts (why was D1 terminated, whose guarantor has not answered, which contracts are open,
//! extend a deadline, what if a law parameter changed, show a span), emits the tool calls a
//! model would make for them ([`intents`]), and then writes the answer from the tool results in
//! the answer schema (`prompts/answer.schema.json`), citing only span ids the tools returned
//! ([`answer`]). Anything else gets a plain statement of what it is, what it understands and how
//! to configure a real provider. It is deterministic (no clock, no randomness) so the whole chat
//! pipeline — prompt, tools, schema, spans — runs with no network and tests can assert on exact
//! answers.

mod answer;
mod intents;

use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

use super::types::{
    ChatMessage, Completion, CompletionRequest, Provider, ProviderError, Role, ToolCall,
};
use crate::chat::prompt::{encoding_for, message_tokens};
use intents::Classified;

/// The model name the offline provider reports (recorded in `provider_execution` spans).
pub const OFFLINE_MODEL: &str = "logline-offline-1";

/// The embedded offline provider: a rule-based stand-in for a model, honest about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OfflineProvider;

impl OfflineProvider {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Provider for OfflineProvider {
    fn kind(&self) -> &str {
        "offline"
    }

    fn model(&self) -> &str {
        OFFLINE_MODEL
    }

    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        req.check()?;
        let reply = respond(req);
        if let Some(tx) = deltas
            && reply.message.tool_calls.is_empty()
        {
            for chunk in chunks(&reply.message.content, 3) {
                // A closed receiver only means nobody listens any more; the answer stands.
                let _ = tx.send(chunk).await;
            }
        }
        let (_, bpe) = encoding_for(OFFLINE_MODEL);
        let system = ChatMessage {
            role: Role::System,
            content: req.system.text().to_string(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        let tools = if req.tools.is_empty() {
            0
        } else {
            serde_json::to_string(&req.tools)
                .map(|s| bpe.encode_ordinary(&s).len())
                .unwrap_or(0)
        };
        let tokens_in = std::iter::once(&system)
            .chain(&req.messages)
            .map(|m| message_tokens(bpe, m))
            .sum::<usize>()
            + tools;
        let tokens_out = message_tokens(bpe, &reply.message);
        Ok(Completion {
            message: reply.message,
            tokens_in: u32::try_from(tokens_in).ok(),
            tokens_out: u32::try_from(tokens_out).ok(),
            latency: started.elapsed(),
            raw: reply.raw,
            attempts: 1,
        })
    }
}

/// Splits `text` into at most `n` pieces of about equal length, on char boundaries.
fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// What the provider answers: the assistant message and a small description of what it did.
struct Reply {
    message: ChatMessage,
    raw: Value,
}

/// The current turn: the last user message and what followed it.
struct Turn<'a> {
    question: &'a str,
    /// Tool calls the assistant made in this turn, in order.
    calls: Vec<&'a ToolCall>,
    /// Tool results of this turn, with the call each answers (when it can be found).
    results: Vec<(Option<&'a ToolCall>, &'a str)>,
}

fn current_turn(messages: &[ChatMessage]) -> Turn<'_> {
    let start = messages.iter().rposition(|m| m.role == Role::User);
    let question = start.map_or("", |i| messages[i].content.as_str());
    let rest = start.map_or(messages, |i| &messages[i + 1..]);
    let calls: Vec<&ToolCall> = rest
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| &m.tool_calls)
        .collect();
    let results = rest
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| {
            let call = m
                .tool_call_id
                .as_deref()
                .and_then(|id| calls.iter().copied().find(|c| c.id == id));
            (call, m.content.as_str())
        })
        .collect();
    Turn {
        question,
        calls,
        results,
    }
}

/// The whole decision, pure and synchronous: tool calls, an answer from results, or help.
fn respond(req: &CompletionRequest) -> Reply {
    let turn = current_turn(&req.messages);
    let tool_use_count = turn.calls.len();
    if !turn.results.is_empty() {
        let (answer, shape) = answer::from_results(&turn.results, tool_use_count);
        return final_reply(answer, shape, "answer");
    }
    let intent = match intents::classify(turn.question) {
        Classified::Known(intent) => intent,
        Classified::Unclear(hint) => {
            return final_reply(help(Some(&hint), tool_use_count), "unclear", "help");
        }
        Classified::Unknown => return final_reply(help(None, tool_use_count), "unknown", "help"),
    };
    let tool = intent.tool();
    if req.tools.is_empty() {
        let answer = Answer {
            text: format!(
                "I am LogLine's offline helper, not a language model. I recognise this as a \
                 question for the `{tool}` tool, but no tools are available to me in this turn, \
                 so I have no evidence from the ledger to answer with."
            ),
            confidence: 0.3,
            follow_up_question: Some(
                "Would you like to ask the same question again in a new turn?".into(),
            ),
            actions: Vec::new(),
            citations: Vec::new(),
            tool_use_count,
        };
        return final_reply(answer, intent.shape(), "no_tools");
    }
    if !req.tools.iter().any(|t| t.name == tool.as_str()) {
        let hint =
            format!("This question needs the `{tool}` tool, which is not available in this turn.");
        return final_reply(help(Some(&hint), tool_use_count), intent.shape(), "help");
    }
    let calls: Vec<ToolCall> = intent
        .calls(turn.question)
        .into_iter()
        .enumerate()
        .map(|(i, (name, arguments))| ToolCall {
            id: format!("call_{}", tool_use_count + i + 1),
            name: name.as_str().to_string(),
            arguments,
        })
        .collect();
    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    let raw = json!({
        "offline": true,
        "model": OFFLINE_MODEL,
        "shape": intent.shape(),
        "step": "tool_calls",
        "tool_calls": names,
    });
    Reply {
        message: ChatMessage::assistant_tool_calls("", calls),
        raw,
    }
}

fn final_reply(answer: Answer, shape: &str, step: &str) -> Reply {
    let content = serde_json::to_string(&answer.into_json()).unwrap_or_default();
    Reply {
        message: ChatMessage::assistant(content),
        raw: json!({"offline": true, "model": OFFLINE_MODEL, "shape": shape, "step": step}),
    }
}

/// The answer object of `prompts/answer.schema.json`.
struct Answer {
    text: String,
    confidence: f64,
    follow_up_question: Option<String>,
    actions: Vec<Value>,
    citations: Vec<String>,
    tool_use_count: usize,
}

/// [`Answer`] as written, in the schema's field order.
#[derive(Serialize)]
struct AnswerJson {
    text: String,
    confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow_up_question: Option<String>,
    actions: Vec<Value>,
    citations: Vec<String>,
    telemetry: Telemetry,
}

#[derive(Serialize)]
struct Telemetry {
    tool_use_count: usize,
}

impl Answer {
    fn into_json(self) -> AnswerJson {
        AnswerJson {
            text: if self.text.trim().is_empty() {
                "I have nothing to report.".into()
            } else {
                self.text
            },
            confidence: self.confidence,
            follow_up_question: self.follow_up_question.filter(|q| !q.is_empty()),
            actions: self.actions,
            citations: self.citations,
            telemetry: Telemetry {
                tool_use_count: self.tool_use_count,
            },
        }
    }
}

const EXAMPLES: [&str; 3] = [
    "Why was D1 terminated?",
    "Which contracts have a guarantor who hasn't responded in 24h?",
    "Extend D5's deadline by 3 days.",
];

/// What the offline provider is, what it understands, and how to configure a real model.
fn help(hint: Option<&str>, tool_use_count: usize) -> Answer {
    let mut text = String::new();
    if let Some(h) = hint {
        text.push_str(h);
        text.push_str("\n\n");
    }
    text.push_str(
        "I am LogLine's offline helper, not a language model: I only understand a few kinds of \
         question about contracts and the ledger, and I did not recognise this one. For example:\n",
    );
    for e in EXAMPLES {
        text.push_str(&format!("- \"{e}\"\n"));
    }
    text.push_str(
        "I also understand \"which contracts are open?\" (or terminated, held, accepted, void), \
         \"how many contracts are terminated?\", \"what happened to D4?\", \"what if the quorum \
         were 3?\" and \"show span <id>\".\n\n\
         To talk to a real model, configure a provider: LOGLINE_PROVIDER=openai with \
         OPENAI_BASE_URL, OPENAI_API_KEY and LOGLINE_MODEL (any OpenAI-compatible server: \
         OpenAI, vLLM, llama.cpp server, LM Studio), or LOGLINE_PROVIDER=ollama with OLLAMA_URL \
         and LOGLINE_MODEL.",
    );
    Answer {
        text,
        confidence: 0.9,
        follow_up_question: Some(format!("Would you like to try: \"{}\"", EXAMPLES[0])),
        actions: Vec::new(),
        citations: Vec::new(),
        tool_use_count,
    }
}
#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::chat::blocks::EMBEDDED_ANSWER_SCHEMA;
    use crate::chat::providers::CompiledPrompt;
    use crate::chat::providers::{ProviderConfig, ToolSpec, provider_from_config};
    use crate::chat::tools::ToolName;

    fn tools() -> Vec<ToolSpec> {
        ToolName::ALL
            .iter()
            .map(|n| ToolSpec {
                name: n.as_str().into(),
                description: format!("the {n} tool"),
                parameters: json!({"type": "object"}),
            })
            .collect()
    }

    fn request(messages: Vec<ChatMessage>, tools: Vec<ToolSpec>) -> CompletionRequest {
        CompletionRequest {
            system: CompiledPrompt::new("You are LogLine."),
            messages,
            tools,
            response_schema: None,
        }
    }

    async fn ask(question: &str) -> Completion {
        OfflineProvider::new()
            .complete(&request(vec![ChatMessage::user(question)], tools()), None)
            .await
            .unwrap()
    }

    /// Runs the second step: the question, the calls, the canned results.
    async fn answer_with(question: &str, results: &[Value]) -> (Value, Completion) {
        let first = ask(question).await;
        let calls = first.message.tool_calls.clone();
        assert_eq!(calls.len(), results.len(), "{question}");
        let mut messages = vec![ChatMessage::user(question), first.message];
        for (c, r) in calls.iter().zip(results) {
            messages.push(ChatMessage::tool_result(&c.id, r.to_string()));
        }
        let done = OfflineProvider::new()
            .complete(&request(messages, tools()), None)
            .await
            .unwrap();
        assert!(done.message.tool_calls.is_empty());
        let answer: Value = serde_json::from_str(&done.message.content).unwrap();
        assert_valid(&answer);
        assert_cites_only_result_ids(&answer, results);
        (answer, done)
    }

    fn assert_valid(answer: &Value) {
        let schema: Value = serde_json::from_str(EMBEDDED_ANSWER_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {answer:#}");
    }

    fn ids_in(v: &Value, out: &mut HashSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    if (k == "id" || k == "contract_id")
                        && let Some(s) = v.as_str()
                    {
                        out.insert(s.to_string());
                    }
                    ids_in(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| ids_in(v, out)),
            _ => {}
        }
    }

    fn assert_cites_only_result_ids(answer: &Value, results: &[Value]) {
        let mut ids = HashSet::new();
        results.iter().for_each(|r| ids_in(r, &mut ids));
        for c in answer["citations"].as_array().unwrap() {
            assert!(ids.contains(c.as_str().unwrap()), "{c} was not returned");
        }
    }

    fn citations(answer: &Value) -> Vec<&str> {
        answer["citations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect()
    }

    const D1: &str = "0195a1b2-0000-7000-8000-000000000001";
    const D3: &str = "0195a1b2-0000-7000-8000-000000000003";
    const D4: &str = "0195a1b2-0000-7000-8000-000000000004";
    const D5: &str = "0195a1b2-0000-7000-8000-000000000005";
    const LAW: &str = "0195a1b2-0000-7000-8000-0000000000aa";
    const DECISION: &str = "0195a1b2-0000-7000-8000-0000000000d1";
    const HIST: &str = "0195a1b2-0000-7000-8000-0000000000e1";
    const PROPOSAL: &str = "0195a1b2-0000-7000-8000-0000000000f1";

    #[tokio::test]
    async fn offline_provider_says_what_it_is() {
        let p = provider_from_config(&ProviderConfig::Offline).unwrap();
        assert_eq!(p.kind(), "offline");
        assert_eq!(p.model(), "logline-offline-1");
        assert_eq!(p.base_url(), None);
    }

    /// Question, canned results, text fragments, citations, confidence: one row per behaviour.
    #[tokio::test]
    async fn offline_answers_from_typed_results() {
        let decision = json!({
            "contract": {"id": D1, "name": "D1", "title": "300 pastéis de nata", "state": "terminated"},
            "history": [{"id": HIST, "seq": 1, "at": "2025-03-04T09:00:00Z", "state": "open"}],
            "decisions": [{
                "id": DECISION, "seq": 4, "at": "2025-03-11T00:00:01Z", "scheduled_at": "2025-03-11T00:00:00Z",
                "law": {"id": LAW, "seq": 2, "name": "midnight_deadline"}, "triage": "not",
                "actions": [{"type": "terminate", "reason": "deadline passed without acceptance"}],
                "variables": {"now": "2025-03-11T00:00:00Z", "accepted": false, "deadline_at": "2025-03-08T17:00:00Z"},
            }],
            "laws": [{"id": LAW, "seq": 2, "name": "midnight_deadline"}],
        });
        let doubt = json!({
            "contract": {"id": D3, "name": "D3", "state": "held"}, "history": [], "laws": [],
            "decisions": [{
                "id": DECISION, "seq": 2, "scheduled_at": "2025-03-12T00:00:00Z",
                "law": {"id": LAW, "seq": 1, "name": "guarantor_response"}, "triage": "doubt",
                "actions": [{"type": "hold"}], "variables": {"quorum": 1},
                "missing": ["guarantor.responded_at"], "fail_closed": true,
            }],
        });
        let history = json!({
            "contract": {"id": D5, "name": "D5", "title": "menu photos", "state": "open", "deadline_at": "2025-03-14T00:00:00Z"},
            "history": [{"id": HIST, "seq": 1, "at": "2025-03-06T11:00:00Z", "state": "open", "status": "ok", "reason": "created"}],
            "decisions": [], "laws": [],
        });
        let silent = json!({"spans": [{
            "id": D3, "seq": 1, "entity_type": "contract", "name": "D3", "at": "2025-03-10T08:00:00Z",
            "content": {"title": "the bakery's delivery van", "state": "open",
                "guarantor": {"who": "pedro", "requested_at": "2025-03-10T08:00:00Z"}},
        }], "returned": 1, "truncated": false});
        let proposal = json!({
            "proposal_id": PROPOSAL, "status": "pending", "contract": {"id": D1, "name": "D1"},
            "before": {"deadline_at": "2025-03-08T17:00:00Z"}, "after": {"deadline_at": "2025-03-11T17:00:00Z"},
            "summary": "Move D1's deadline from 2025-03-08T17:00:00Z to 2025-03-11T17:00:00Z",
        });
        let simulation = json!({"law": {"id": LAW, "seq": 2, "name": "midnight_deadline"}, "evaluated": 5,
            "changes": [{"contract_id": D5, "name": "D5", "from": "ok", "to": "doubt"}]});
        let span = json!({"span": {"id": D4, "seq": 1, "entity_type": "contract", "name": "D4",
            "who": "marta", "did": "proposed", "this": "contract", "status": "ok",
            "at": "2025-03-04T15:00:00Z", "content": {"title": "30-second advert", "state": "open"}}});
        let open = json!({"contract": {"id": D1, "name": "D1", "state": "open"}, "history": [], "decisions": [], "laws": []});
        // An id that appears only in free text is not cited; a malformed id makes the result
        // unreadable as the tool's output.
        let free_text = json!({"contract": {"name": "D1", "state": "open"}, "decisions": [], "laws": [],
            "history": [{"id": HIST, "seq": 1, "at": "x", "state": "open", "reason": format!("see {D5}")}]});
        let empty = json!({"spans": [], "returned": 0, "truncated": false});
        let span_q = format!("show span {D4}");
        let cases: Vec<(&str, Vec<Value>, Vec<&str>, Vec<&str>, f64)> = vec![
            (
                "why was D1 terminated?",
                vec![decision],
                vec![
                    "D1 (\"300 pastéis de nata\") was terminated at the midnight of 2025-03-11T00:00:00Z by law midnight_deadline (seq 2): triage `not` because deadline_at 2025-03-08T17:00:00Z, accepted false, now 2025-03-11T00:00:00Z; actions: terminate(reason=deadline passed without acceptance). Its current state is `terminated`.",
                ],
                vec![DECISION, LAW, D1],
                0.9,
            ),
            (
                "why is D3 held?",
                vec![doubt],
                vec![
                    "D3 was put on hold at the midnight of 2025-03-12T00:00:00Z by law guarantor_response (seq 1): triage `doubt` because quorum 1 (missing: guarantor.responded_at) (the law failed closed); actions: hold.",
                ],
                vec![DECISION, LAW, D3],
                0.9,
            ),
            (
                "what happened to D5?",
                vec![history],
                vec![
                    "No law decision about D5 (\"menu photos\") is recorded; it is `open`. Its deadline is 2025-03-14T00:00:00Z. History:\n- seq 1 at 2025-03-06T11:00:00Z: `open` (ok) — created",
                ],
                vec![HIST, D5],
                0.9,
            ),
            (
                "which contracts have a guarantor who hasn't responded in 24h?",
                vec![silent],
                vec![
                    "1 contract whose guarantor has not responded within 24 hours:\n- D3 \"the bakery's delivery van\" — state `open`; guarantor pedro, asked at 2025-03-10T08:00:00Z",
                ],
                vec![D3],
                0.9,
            ),
            (
                "which contracts are void?",
                vec![empty],
                vec!["I found no contracts in state `void`."],
                vec![],
                0.8,
            ),
            (
                "how many contracts are terminated?",
                vec![json!({"count": 2})],
                vec!["There are 2 contracts in state `terminated`."],
                vec![],
                0.9,
            ),
            (
                "extend D1's deadline by 3 days",
                vec![proposal],
                vec![
                    "I proposed a change to D1: Move D1's deadline from 2025-03-08T17:00:00Z to 2025-03-11T17:00:00Z (deadline_at 2025-03-08T17:00:00Z → 2025-03-11T17:00:00Z). Nothing has changed yet: the proposal 0195a1b2-0000-7000-8000-0000000000f1 is pending and awaits your confirmation.",
                ],
                vec![D1],
                0.9,
            ),
            (
                "what if the quorum were 3?",
                vec![simulation],
                vec![
                    "Simulating law midnight_deadline (seq 2) with quorum = 3 over 5 contracts: 1 contract would change triage:\n- D5: `ok` → `doubt`\nThis is a simulation",
                ],
                vec![LAW, D5],
                0.9,
            ),
            (
                &span_q,
                vec![span],
                vec![
                    "Span 0195a1b2-0000-7000-8000-000000000004 (contract `D4`, seq 1): marta proposed contract at 2025-03-04T15:00:00Z, status ok. Title \"30-second advert\". State `open`.",
                ],
                vec![D4],
                0.9,
            ),
            (
                "why was D9 terminated?",
                vec![json!({"error": "no contract named D9 is visible to you"})],
                vec![
                    "I could not explain the decision on D9: no contract named D9 is visible to you.",
                ],
                vec![],
                0.3,
            ),
            // One of two results failed: the other still counts, cited; confidence drops.
            (
                "why were D1 and D9 terminated?",
                vec![open, json!({"error": "not found"})],
                vec!["I could not explain the decision on D9: not found."],
                vec![D1],
                0.7,
            ),
            (
                "why is D1 open?",
                vec![free_text],
                vec!["see 0195a1b2"],
                vec![HIST],
                0.9,
            ),
            (
                "why is D1 open?",
                vec![json!({"contract": {"id": "not-a-uuid", "name": "D1"}})],
                vec!["not in the shape I expected"],
                vec![],
                0.3,
            ),
        ];
        for (question, results, texts, cites, confidence) in cases {
            let n = results.len();
            let (a, done) = answer_with(question, &results).await;
            let text = a["text"].as_str().unwrap();
            for t in texts {
                assert!(text.contains(t), "{question}: {t:?} not in {text:?}");
            }
            assert_eq!(citations(&a), cites, "{question}");
            assert_eq!(a["confidence"], json!(confidence), "{question}");
            assert_eq!(
                a["follow_up_question"].is_string(),
                confidence < 0.9 && confidence != 0.8
            );
            assert_eq!(a["telemetry"]["tool_use_count"], json!(n));
            let actions = a["actions"].as_array().unwrap();
            assert_eq!(
                actions.len(),
                usize::from(question.starts_with("extend")),
                "{question}"
            );
            assert!(
                done.attempts == 1 && done.tokens_in.unwrap() > 0 && done.tokens_out.unwrap() > 0
            );
        }
        let (a, done) = answer_with(
            "extend D1's deadline by 3 days",
            &[json!({
            "proposal_id": PROPOSAL, "contract": {"id": D1, "name": "D1"}, "summary": "Move it"})],
        )
        .await;
        assert_eq!(
            a["actions"],
            json!([{"type": "propose_amendment", "summary": "Move it", "target": "D1", "proposal_id": PROPOSAL}])
        );
        assert_eq!(done.raw["shape"], json!("propose_amendment"));
    }

    #[tokio::test]
    async fn offline_admits_it_is_not_a_language_model() {
        let c = ask("Write me a poem about croissants").await;
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        let text = a["text"].as_str().unwrap();
        for needle in [
            "not a language model",
            "Why was D1 terminated?",
            "LOGLINE_PROVIDER=openai",
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "LOGLINE_MODEL",
            "vLLM",
            "LOGLINE_PROVIDER=ollama",
            "OLLAMA_URL",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
        assert_eq!(a["confidence"], json!(0.9));
        assert!(citations(&a).is_empty());
        assert!(a["follow_up_question"].as_str().unwrap().contains("D1"));
        assert_eq!(c.raw["shape"], json!("unknown"));
    }

    #[tokio::test]
    async fn offline_without_the_needed_tool_falls_back_to_help() {
        let only_query: Vec<ToolSpec> = tools()
            .into_iter()
            .filter(|t| t.name == "query_ledger")
            .collect();
        let c = OfflineProvider::new()
            .complete(
                &request(
                    vec![ChatMessage::user("why was D1 terminated?")],
                    only_query,
                ),
                None,
            )
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert!(
            a["text"]
                .as_str()
                .unwrap()
                .contains("`explain_decision` tool")
        );
    }

    #[tokio::test]
    async fn offline_with_tools_removed_by_the_breaker_answers_without_calls() {
        // Results already in the turn, tools removed: answer from the results.
        let question = "which contracts are terminated?";
        let call = ToolCall {
            id: "call_1".into(),
            name: "query_ledger".into(),
            arguments: json!({"entity_type": "contract", "where": [{"path": "content.state", "op": "eq", "value": "terminated"}], "latest_only": true}),
        };
        let result = json!({"spans": [{"id": D1, "name": "D1", "entity_type": "contract", "content": {"title": "pastéis", "state": "terminated"}}], "returned": 1, "truncated": false});
        let messages = vec![
            ChatMessage::user(question),
            ChatMessage::assistant_tool_calls("", vec![call]),
            ChatMessage::tool_result("call_1", result.to_string()),
        ];
        let c = OfflineProvider::new()
            .complete(&request(messages, Vec::new()), None)
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert_eq!(citations(&a), [D1]);

        // No results and no tools: no call, an honest low-confidence answer.
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user(question)], Vec::new()),
                None,
            )
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert_eq!(a["confidence"], json!(0.3));
        assert!(citations(&a).is_empty());
    }

    #[tokio::test]
    async fn offline_streams_the_answer_but_not_tool_calls() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user("hello")], tools()),
                Some(tx),
            )
            .await
            .unwrap();
        let mut streamed = String::new();
        let mut pieces = 0;
        while let Some(s) = rx.recv().await {
            streamed.push_str(&s);
            pieces += 1;
        }
        assert_eq!(streamed, c.message.content);
        assert!(pieces > 1);

        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user("why was D1 terminated?")], tools()),
                Some(tx),
            )
            .await
            .unwrap();
        assert_eq!(c.message.tool_calls.len(), 1);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn offline_answers_are_deterministic_and_read_only_the_current_turn() {
        let earlier = vec![
            ChatMessage::user("why was D4 terminated?"),
            ChatMessage::assistant_tool_calls(
                "",
                vec![ToolCall {
                    id: "call_1".into(),
                    name: "explain_decision".into(),
                    arguments: json!({"contract": "D4"}),
                }],
            ),
            ChatMessage::tool_result("call_1", json!({"error": "boom"}).to_string()),
            ChatMessage::assistant("{}"),
            ChatMessage::user("which contracts are open?"),
        ];
        let a = OfflineProvider::new()
            .complete(&request(earlier.clone(), tools()), None)
            .await
            .unwrap();
        let b = OfflineProvider::new()
            .complete(&request(earlier, tools()), None)
            .await
            .unwrap();
        assert_eq!(a.message, b.message);
        assert_eq!(a.message.tool_calls[0].id, "call_1");
        assert_eq!(a.message.tool_calls[0].name, "query_ledger");
    }
}
