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

    fn answers_only_from_tools(&self) -> bool {
        true
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
        let (message, raw) = respond(req);
        if let Some(tx) = deltas
            && message.tool_calls.is_empty()
        {
            for chunk in chunks(&message.content, 3) {
                // A closed receiver only means nobody listens any more; the answer stands.
                let _ = tx.send(chunk).await;
            }
        }
        let (_, bpe) = encoding_for(OFFLINE_MODEL);
        let system = ChatMessage {
            role: Role::System,
            ..ChatMessage::user(req.system.text())
        };
        let tools = (serde_json::to_string(&req.tools).ok()).filter(|_| !req.tools.is_empty());
        let tools = tools.map_or(0, |s| bpe.encode_ordinary(&s).len());
        let messages = std::iter::once(&system).chain(&req.messages);
        let tokens_in = messages.map(|m| message_tokens(bpe, m)).sum::<usize>() + tools;
        let tokens_out = message_tokens(bpe, &message);
        Ok(Completion {
            message,
            tokens_in: u32::try_from(tokens_in).ok(),
            tokens_out: u32::try_from(tokens_out).ok(),
            latency: started.elapsed(),
            raw,
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
type Reply = (ChatMessage, Value);

/// The current turn, read back from the conversation.
struct Turn<'a> {
    /// The last user message.
    question: &'a str,
    /// Tool calls the assistant made since.
    tool_use_count: usize,
    /// The turn's tool results, each with the call it answers.
    results: Vec<(&'a ToolCall, &'a str)>,
}

fn current_turn(messages: &[ChatMessage]) -> Turn<'_> {
    let start = messages.iter().rposition(|m| m.role == Role::User);
    let question = start.map_or("", |i| messages[i].content.as_str());
    let rest = start.map_or(messages, |i| &messages[i + 1..]);
    let by = |role: Role| rest.iter().filter(move |m| m.role == role);
    let calls: Vec<&ToolCall> = by(Role::Assistant).flat_map(|m| &m.tool_calls).collect();
    let call = |id: Option<&str>| calls.iter().copied().find(|c| Some(c.id.as_str()) == id);
    let results =
        by(Role::Tool).filter_map(|m| Some((call(m.tool_call_id.as_deref())?, &*m.content)));
    Turn {
        question,
        tool_use_count: calls.len(),
        results: results.collect(),
    }
}

/// The whole decision, pure and synchronous: tool calls, an answer from results, or help.
fn respond(req: &CompletionRequest) -> Reply {
    let turn = current_turn(&req.messages);
    let (question, tool_use_count) = (turn.question, turn.tool_use_count);
    if !turn.results.is_empty() {
        let (answer, shape) = answer::from_results(&turn.results, tool_use_count);
        return final_reply(answer, shape, "answer");
    }
    let intent = match intents::classify(question) {
        Classified::Known(intent) => intent,
        Classified::Unclear(hint) => {
            return final_reply(help(Some(&hint), tool_use_count), "unclear", "help");
        }
        Classified::Unknown => return final_reply(help(None, tool_use_count), "unknown", "help"),
    };
    let tool = intent.tool;
    if !req.tools.iter().any(|t| t.name == tool.as_str()) {
        let hint =
            format!("This question needs the `{tool}` tool, which is not available in this turn.");
        return final_reply(help(Some(&hint), tool_use_count), intent.shape, "help");
    }
    let calls: Vec<ToolCall> = (intent.args.into_iter().enumerate())
        .map(|(i, arguments)| ToolCall {
            id: format!("call_{}", tool_use_count + i + 1),
            name: tool.as_str().to_string(),
            arguments,
        })
        .collect();
    let mut raw = raw(intent.shape, "tool_calls");
    raw["tool_calls"] = json!(calls.iter().map(|c| &c.name).collect::<Vec<_>>());
    (ChatMessage::assistant_tool_calls("", calls), raw)
}

fn final_reply(answer: Answer, shape: &str, step: &str) -> Reply {
    let content = serde_json::to_string(&answer).unwrap_or_default();
    (ChatMessage::assistant(content), raw(shape, step))
}

/// What the provider did, for the `provider_execution` span's raw response.
fn raw(shape: &str, step: &str) -> Value {
    json!({"offline": true, "model": OFFLINE_MODEL, "shape": shape, "step": step})
}

/// The answer object of `prompts/answer.schema.json`, in the schema's field order.
#[derive(Serialize)]
struct Answer {
    text: String,
    confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow_up_question: Option<String>,
    actions: Vec<Value>,
    citations: Vec<String>,
    /// `{"tool_use_count": n}`.
    telemetry: Value,
}

/// What the offline provider is, what it understands, and how to configure a real model.
fn help(hint: Option<&str>, tool_use_count: usize) -> Answer {
    const FIRST: &str = "Why was D1 terminated?";
    let text = format!(
        "{}I am LogLine's offline helper, not a language model: I only understand a few kinds of \
         question about contracts and the ledger, and I did not recognise this one. For \
         example:\n- \"{FIRST}\"\n- \"Which contracts have a guarantor who hasn't responded in \
         24h?\"\n- \"Extend D5's deadline by 3 days.\"\nI also understand \"which contracts are \
         open?\" (or terminated, held, accepted, void), \"how many contracts are terminated?\", \
         \"what happened to D4?\", \"what if the quorum were 3?\" and \"show span <id>\".\n\n\
         To talk to a real model, configure a provider: LOGLINE_PROVIDER=openai with \
         OPENAI_BASE_URL, OPENAI_API_KEY and LOGLINE_MODEL (any OpenAI-compatible server: \
         OpenAI, vLLM, llama.cpp server, LM Studio), or LOGLINE_PROVIDER=ollama with OLLAMA_URL \
         and LOGLINE_MODEL.",
        hint.map(|h| format!("{h}\n\n")).unwrap_or_default(),
    );
    Answer {
        text,
        confidence: 0.9,
        follow_up_question: Some(format!("Would you like to try: \"{FIRST}\"")),
        actions: Vec::new(),
        citations: Vec::new(),
        telemetry: json!({ "tool_use_count": tool_use_count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::blocks::EMBEDDED_ANSWER_SCHEMA;
    use crate::chat::providers::{CompiledPrompt, ProviderConfig, ToolSpec, provider_from_config};
    use crate::chat::tools::ToolName;

    /// A completion offering every tool or `only` one, streaming into `deltas`.
    async fn complete(
        messages: Vec<ChatMessage>,
        only: Option<&str>,
        deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Completion {
        let tools = (ToolName::ALL.iter())
            .filter(|n| only.is_none_or(|o| n.as_str() == o))
            .map(|n| ToolSpec {
                name: n.as_str().into(),
                description: format!("the {n} tool"),
                parameters: json!({"type": "object"}),
            });
        let req = CompletionRequest {
            system: CompiledPrompt::new("You are LogLine."),
            messages,
            tools: tools.collect(),
            response_schema: None,
            answer_schema: None,
            tool_choice: Default::default(),
        };
        OfflineProvider::new().complete(&req, deltas).await.unwrap()
    }

    /// The final answer of a completion, checked against the answer schema.
    fn answer_of(c: &Completion) -> Value {
        let answer: Value = serde_json::from_str(&c.message.content).unwrap();
        let schema: Value = serde_json::from_str(EMBEDDED_ANSWER_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&answer), "{answer:#}");
        answer
    }

    /// What the golden test (`server/tests/chat_offline_golden.rs`) cannot see: the provider's
    /// name, streaming, token counts and what it says when the tool it needs is not offered.
    #[tokio::test]
    async fn offline_provider_says_what_it_is_and_admits_it_is_not_a_language_model() {
        let p = provider_from_config(&ProviderConfig::Offline).unwrap();
        assert_eq!(
            (p.kind(), p.model(), p.base_url()),
            ("offline", "logline-offline-1", None)
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let c = complete(vec![ChatMessage::user("Write me a poem")], None, Some(tx)).await;
        let mut streamed = Vec::new();
        while let Some(s) = rx.recv().await {
            streamed.push(s);
        }
        assert!(streamed.len() > 1 && streamed.concat() == c.message.content);
        let text = answer_of(&c)["text"].to_string();
        assert!(
            text.contains("not a language model") && text.contains("vLLM"),
            "{text}"
        );
        assert_eq!(c.raw["shape"], json!("unknown"));
        assert!(c.attempts == 1 && c.tokens_in > Some(0) && c.tokens_out > Some(0));
        let why = vec![ChatMessage::user("why was D1 terminated?")];
        let c = complete(why, Some("query_ledger"), None).await;
        let text = answer_of(&c)["text"].to_string();
        assert!(text.contains("`explain_decision` tool"), "{text}");
    }

    /// Tool calls are not streamed; earlier turns' calls and results are not read again.
    #[tokio::test]
    async fn offline_calls_are_deterministic_and_read_only_the_current_turn() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "explain_decision".into(),
            arguments: json!({"contract": "D4"}),
        };
        let earlier = vec![
            ChatMessage::user("why was D4 terminated?"),
            ChatMessage::assistant_tool_calls("", vec![call]),
            ChatMessage::tool_result("call_1", json!({"error": "boom"}).to_string()),
            ChatMessage::assistant("{}"),
            ChatMessage::user("which contracts are open?"),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let a = complete(earlier.clone(), None, Some(tx)).await;
        assert_eq!(rx.recv().await, None);
        let b = complete(earlier, None, None).await;
        assert_eq!(a.message, b.message);
        let call = &a.message.tool_calls[0];
        assert_eq!((&*call.id, &*call.name), ("call_1", "query_ledger"));
    }
}
