//! The model provider interface the chat loop codes against, the messages it exchanges and
//! its typed errors. This module imports nothing else of the chat module: the prompt builder,
//! the implementations and the factory all depend on it, never the other way round.
//!
//! A provider receives a [`CompletionRequest`] whose system prompt is a [`CompiledPrompt`]: the
//! only way to give a provider a system message is a compiled prompt, which always carries the
//! hash of exactly its text, so the hash a turn records is the hash of what was sent.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message of the conversation. `System` exists for completeness of the wire
/// model, but providers refuse it inside [`CompletionRequest::messages`]: the system prompt is
/// [`CompletionRequest::system`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One message of a conversation, as providers exchange them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Tools the assistant asked to call (assistant messages only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (tool messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(Role::Assistant, content)
    }

    /// An assistant message that asks for tool calls (content may be empty).
    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::plain(Role::Assistant, content)
        }
    }

    /// The result of a tool call, sent back to the model.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::plain(Role::Tool, content)
        }
    }

    fn plain(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool call the model asked for. `arguments` is the parsed JSON the model produced; when a
/// model streams arguments that are not valid JSON, they are kept verbatim as a JSON string so
/// the chat loop can tell the model what went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// A tool offered to the model: `parameters` is a JSON Schema object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A system prompt and the BLAKE3 hash of exactly its text. Immutable: the hash cannot drift
/// from the text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CompiledPrompt {
    text: String,
    hash: String,
}

impl CompiledPrompt {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let hash = format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex());
        Self { text, hash }
    }

    /// A prompt whose first `stable_len` bytes are the same every turn (the blocks before the
    /// `turn` layer): the hash covers only them, so it names the template version and turns
    /// that differ in caller or time share it (and the server's cached prefix).
    pub fn with_stable_prefix(text: impl Into<String>, stable_len: usize) -> Self {
        let text = text.into();
        let prefix = text.get(..stable_len).unwrap_or(&text);
        let hash = format!("blake3:{}", blake3::hash(prefix.as_bytes()).to_hex());
        Self { text, hash }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// `blake3:<hex>` of [`CompiledPrompt::text`] (of its stable prefix when built with
    /// [`CompiledPrompt::with_stable_prefix`]).
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// One call to a model.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// The system prompt: sent first, exactly as compiled.
    pub system: CompiledPrompt,
    /// The conversation after the system prompt, oldest first (user, assistant, tool).
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    /// When set, the provider asks the model for JSON that follows this schema. The chat loop
    /// sets it only on a round that offers no tools: a server that compiles the schema into an
    /// output grammar (llama.cpp, Ollama's `format`) cannot emit a tool call under it.
    pub response_schema: Option<Value>,
    /// The final answer's schema on a round that offers tools, for a provider in
    /// [`ToolMode::Grammar`](super::settings::ToolMode) that constrains the reply to "a call or
    /// the answer"; native tool calling ignores it.
    pub answer_schema: Option<Value>,
    /// Whether the model must call a tool in this round (ignored when no tools are offered).
    pub tool_choice: ToolChoice,
}

/// What a round lets the model do with the tools it offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (the API default).
    #[default]
    Auto,
    /// The model must call at least one tool (OpenAI `tool_choice: "required"`; Ollama has no
    /// equivalent and is told only by the prompt).
    Required,
}

impl CompletionRequest {
    /// Refuses system messages inside `messages` (the system prompt travels only as a
    /// [`CompiledPrompt`], so what is sent is always what is hashed) and a round that offers
    /// tools while constraining the answer to a schema.
    pub fn check(&self) -> Result<(), ProviderError> {
        if let Some(i) = self.messages.iter().position(|m| m.role == Role::System) {
            return Err(ProviderError::InvalidRequest(format!(
                "message {i} has role `system`: the system prompt must be the compiled prompt"
            )));
        }
        if !self.tools.is_empty() && self.response_schema.is_some() {
            return Err(ProviderError::InvalidRequest(
                "a round that offers tools cannot also constrain the answer to a schema: \
                 servers that compile the schema into a grammar (llama.cpp, Ollama) could then \
                 never call a tool"
                    .into(),
            ));
        }
        if let Some(i) = self
            .messages
            .iter()
            .position(|m| m.role == Role::Tool && m.tool_call_id.is_none())
        {
            return Err(ProviderError::InvalidRequest(format!(
                "message {i} has role `tool` but no tool_call_id"
            )));
        }
        Ok(())
    }
}

/// What a model answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The assistant message: text (possibly JSON) and/or tool calls.
    pub message: ChatMessage,
    /// Prompt tokens as the server counted them (OpenAI `usage.prompt_tokens`, Ollama
    /// `prompt_eval_count`); cached prompt tokens are read from `raw` when the server says.
    pub tokens_in: Option<u32>,
    pub tokens_out: Option<u32>,
    /// Wall time of the whole call, retries included.
    pub latency: Duration,
    /// The provider's response (for a streamed answer: the assembled equivalent), secrets
    /// removed. Recorded in the `provider_execution` span.
    pub raw: Value,
    /// HTTP attempts made (1 when no retry was needed).
    pub attempts: u32,
}

/// A language model behind some API.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `"openai"`, `"ollama"`, `"offline"`, …
    fn kind(&self) -> &str;
    fn model(&self) -> &str;
    /// Where requests go, without credentials (recorded in spans). `None` for in-process
    /// providers.
    fn base_url(&self) -> Option<&str> {
        None
    }
    /// True for a provider that is not a language model and writes every answer from the
    /// turn's tool results by construction (the offline helper): its help and "I did not
    /// understand" answers state no ledger facts, so the grounding rules (grounding.rs) that
    /// hold a model to evidence do not apply to it.
    fn answers_only_from_tools(&self) -> bool {
        false
    }
    /// Runs one completion. When `deltas` is given the answer is streamed and each piece of
    /// assistant text is sent on it, in order, as it arrives; the returned [`Completion`] is the
    /// same as without streaming.
    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError>;
}

/// Why a provider call failed. `Display` never contains an API key: bodies are redacted when
/// the error is made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider is not configured correctly (missing model, bad URL, …).
    #[error("provider configuration: {0}")]
    Config(String),
    /// `LOGLINE_PROVIDER=offline` (the default): the embedded offline provider is built by the
    /// chat module, not by `provider_from_config`.
    #[error("the offline provider is embedded in the chat module, not built from configuration")]
    Offline,
    /// The request itself is malformed (our side): nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection could be made (refused, DNS, TLS, reset before a response).
    #[error("provider unreachable at {url} (attempt {attempts}): {detail}")]
    Unreachable {
        url: String,
        detail: String,
        attempts: u32,
    },
    /// No complete answer within the time limit (retries included).
    #[error("provider did not answer within {} ms (after {attempts} attempt(s))", after.as_millis())]
    Timeout { after: Duration, attempts: u32 },
    /// A streamed answer stopped coming: no first chunk within the first-token limit, or a
    /// silence between chunks longer than the idle limit.
    #[error("provider stream stalled: no {} within {} ms (after {attempts} attempt(s))",
        if *first_token { "first token" } else { "chunk" }, after.as_millis())]
    Stalled {
        first_token: bool,
        after: Duration,
        attempts: u32,
    },
    /// HTTP 429 on every attempt, or a `Retry-After` longer than we are willing to wait.
    #[error("provider rate limit (HTTP 429) after {attempts} attempt(s){}: {body}",
        retry_after.map(|d| format!("; retry after {} s", d.as_secs_f64().ceil())).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        attempts: u32,
        body: String,
    },
    /// Any other non-success HTTP status (5xx after the retries), with an excerpt of the body.
    #[error("provider answered HTTP {status} after {attempts} attempt(s): {body}")]
    Http {
        status: u16,
        body: String,
        attempts: u32,
    },
    /// The provider answered 2xx, but not with something we can read.
    #[error("provider response unreadable: {0}")]
    BadResponse(String),
}

impl ProviderError {
    /// A stable name for spans, metrics and problem types.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Offline => "offline",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unreachable { .. } => "unreachable",
            Self::Timeout { .. } => "timeout",
            Self::Stalled { .. } => "stalled",
            Self::RateLimited { .. } => "rate_limited",
            Self::Http { .. } => "http_status",
            Self::BadResponse(_) => "bad_response",
        }
    }

    /// HTTP attempts made before giving up (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Timeout { attempts, .. }
            | Self::Stalled { attempts, .. }
            | Self::RateLimited { attempts, .. }
            | Self::Http { attempts, .. }
            | Self::Unreachable { attempts, .. } => *attempts,
            // The answer arrived and was unreadable: at least the attempt that got it.
            Self::BadResponse(_) => 1,
            Self::Config(_) | Self::Offline | Self::InvalidRequest(_) => 0,
        }
    }

    /// The status our API should answer with when this error ends a turn: 504 for a timeout,
    /// 503 for an unreachable or rate-limited provider, 500 for our own mistakes, 502 otherwise.
    pub fn api_status(&self) -> u16 {
        match self {
            Self::Timeout { .. } | Self::Stalled { .. } => 504,
            Self::Unreachable { .. } | Self::RateLimited { .. } | Self::Offline => 503,
            Self::Config(_) | Self::InvalidRequest(_) => 500,
            Self::Http { .. } | Self::BadResponse(_) => 502,
        }
    }
}
