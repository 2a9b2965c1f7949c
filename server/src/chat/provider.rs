//! The model provider interface the chat loop codes against, its typed errors, and the
//! configuration read from the environment (`LOGLINE_PROVIDER`, `LOGLINE_MODEL`,
//! `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OLLAMA_URL`, …).
//!
//! A provider receives a [`CompletionRequest`] whose system prompt is a [`CompiledPrompt`]: the
//! only way to give a provider a system message is a compiled prompt, which always carries the
//! hash of exactly its text, so the hash a turn records is the hash of what was sent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::prompt::CompiledPrompt;

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

/// One call to a model.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// The system prompt: sent first, exactly as compiled.
    pub system: CompiledPrompt,
    /// The conversation after the system prompt, oldest first (user, assistant, tool).
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    /// When set, the provider asks the model for JSON that follows this schema.
    pub response_schema: Option<Value>,
}

impl CompletionRequest {
    /// Refuses system messages inside `messages`: the system prompt travels only as a
    /// [`CompiledPrompt`], so what is sent is always what is hashed.
    pub fn check(&self) -> Result<(), ProviderError> {
        if let Some(i) = self.messages.iter().position(|m| m.role == Role::System) {
            return Err(ProviderError::InvalidRequest(format!(
                "message {i} has role `system`: the system prompt must be the compiled prompt"
            )));
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
    /// chat module, not by [`provider_from_config`].
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
            Self::RateLimited { .. } => "rate_limited",
            Self::Http { .. } => "http_status",
            Self::BadResponse(_) => "bad_response",
        }
    }

    /// HTTP attempts made before giving up (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Timeout { attempts, .. }
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
            Self::Timeout { .. } => 504,
            Self::Unreachable { .. } | Self::RateLimited { .. } | Self::Offline => 503,
            Self::Config(_) | Self::InvalidRequest(_) => 500,
            Self::Http { .. } | Self::BadResponse(_) => 502,
        }
    }
}

/// Retries on HTTP 429 and transient 5xx: exponential backoff with jitter, or the server's
/// `Retry-After` when it sends one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the call fails as rate-limited and
    /// the caller is told when to come back.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `attempt + 1`, after `attempt` attempts failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        // Equal jitter: half fixed, half random, so clients that failed together spread out.
        let half = capped / 2;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
    }
}

/// Time limits and retries shared by the HTTP providers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The whole call, retries and streaming included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// An API key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Refuses keys that cannot travel in an HTTP header.
    pub fn new(key: impl Into<String>) -> Result<Self, ProviderError> {
        let key = key.into();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProviderError::Config(
                "OPENAI_API_KEY must be non-empty printable ASCII without spaces".into(),
            ));
        }
        Ok(Self(key))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Which provider to use, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderConfig {
    Offline,
    OpenAi {
        base_url: String,
        api_key: Option<ApiKey>,
        model: String,
        settings: ProviderSettings,
    },
    Ollama {
        url: String,
        model: String,
        settings: ProviderSettings,
    },
}

/// The official endpoint, used when `OPENAI_BASE_URL` is not set.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

impl ProviderConfig {
    /// Reads the process environment; see [`ProviderConfig::from_lookup`].
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map):
    /// - `LOGLINE_PROVIDER`: `offline` (default), `openai` or `ollama`;
    /// - `LOGLINE_MODEL`: the model name (required for `openai` and `ollama`);
    /// - `OPENAI_BASE_URL` (default the official API), `OPENAI_API_KEY` (required for the
    ///   official API, optional for local OpenAI-compatible servers);
    /// - `OLLAMA_URL` (required for `ollama`, e.g. `http://127.0.0.1:11434`);
    /// - `LOGLINE_PROVIDER_TIMEOUT_SECS` (default 120, the whole call) and
    ///   `LOGLINE_PROVIDER_MAX_ATTEMPTS` (default 3).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ProviderError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let kind = get("LOGLINE_PROVIDER").unwrap_or_else(|| "offline".into());
        let model = || {
            get("LOGLINE_MODEL").ok_or_else(|| {
                ProviderError::Config(format!(
                    "LOGLINE_PROVIDER={kind} needs LOGLINE_MODEL (the model name, e.g. gpt-4o-mini or llama3.1)"
                ))
            })
        };
        let mut settings = ProviderSettings::default();
        if let Some(v) = get("LOGLINE_PROVIDER_TIMEOUT_SECS") {
            let secs: f64 = v.parse().ok().filter(|s: &f64| *s > 0.0 && *s <= 3600.0).ok_or_else(|| {
                ProviderError::Config(format!(
                    "LOGLINE_PROVIDER_TIMEOUT_SECS must be a number of seconds in (0, 3600], not `{v}`"
                ))
            })?;
            settings.timeout = Duration::from_secs_f64(secs);
        }
        if let Some(v) = get("LOGLINE_PROVIDER_MAX_ATTEMPTS") {
            settings.retry.max_attempts = v
                .parse()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or_else(|| {
                    ProviderError::Config(format!(
                        "LOGLINE_PROVIDER_MAX_ATTEMPTS must be an integer from 1 to 10, not `{v}`"
                    ))
                })?;
        }
        match kind.as_str() {
            "offline" => Ok(Self::Offline),
            "openai" => {
                let base_url =
                    get("OPENAI_BASE_URL").unwrap_or_else(|| OPENAI_DEFAULT_BASE_URL.into());
                check_url("OPENAI_BASE_URL", &base_url)?;
                let api_key = get("OPENAI_API_KEY").map(ApiKey::new).transpose()?;
                if api_key.is_none() && base_url.trim_end_matches('/') == OPENAI_DEFAULT_BASE_URL {
                    return Err(ProviderError::Config(
                        "LOGLINE_PROVIDER=openai with the official API needs OPENAI_API_KEY \
                         (or set OPENAI_BASE_URL to a local OpenAI-compatible server)"
                            .into(),
                    ));
                }
                Ok(Self::OpenAi {
                    base_url,
                    api_key,
                    model: model()?,
                    settings,
                })
            }
            "ollama" => {
                let url = get("OLLAMA_URL").ok_or_else(|| {
                    ProviderError::Config(
                        "LOGLINE_PROVIDER=ollama needs OLLAMA_URL (e.g. http://127.0.0.1:11434)"
                            .into(),
                    )
                })?;
                check_url("OLLAMA_URL", &url)?;
                Ok(Self::Ollama {
                    url,
                    model: model()?,
                    settings,
                })
            }
            other => Err(ProviderError::Config(format!(
                "LOGLINE_PROVIDER must be offline, openai or ollama, not `{other}`"
            ))),
        }
    }
}

fn check_url(var: &str, url: &str) -> Result<(), ProviderError> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(()),
        _ => Err(ProviderError::Config(format!(
            "{var} must be an http:// or https:// URL, not `{url}`"
        ))),
    }
}

/// Builds the configured provider; `Offline` is the embedded
/// [`OfflineProvider`](super::offline::OfflineProvider), which is not a language model.
pub fn provider_from_config(config: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    match config {
        ProviderConfig::Offline => Ok(Arc::new(super::offline::OfflineProvider::new())),
        ProviderConfig::OpenAi {
            base_url,
            api_key,
            model,
            settings,
        } => Ok(Arc::new(super::openai::OpenAiProvider::new(
            base_url,
            api_key.clone(),
            model,
            settings.clone(),
        )?)),
        ProviderConfig::Ollama {
            url,
            model,
            settings,
        } => Ok(Arc::new(super::ollama::OllamaProvider::new(
            url,
            model,
            settings.clone(),
        )?)),
    }
}

/// [`ProviderConfig::from_env`] then [`provider_from_config`].
pub fn provider_from_env() -> Result<Arc<dyn Provider>, ProviderError> {
    provider_from_config(&ProviderConfig::from_env()?)
}
