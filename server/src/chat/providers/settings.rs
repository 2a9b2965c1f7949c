//! How an HTTP provider behaves on the wire: its time limits, its retry policy and its API key
//! (which never shows in `Debug`).

use std::fmt;
use std::time::Duration;

use super::types::ProviderError;

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

/// The default cap on the tokens of one model reply (`LOGLINE_MAX_TOKENS`).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// How tool calls travel (`LOGLINE_TOOL_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolMode {
    /// The API's own tool calling (`tools`, `tool_choice`, `tool_calls`): OpenAI, vLLM with a
    /// tool parser, Ollama with a tool-capable model.
    #[default]
    Native,
    /// The tools are offered and the reply is constrained to one JSON object, a call or the
    /// answer ([`super::tool_grammar`]): for servers that do not constrain tool calls
    /// themselves (llama.cpp's server with most small models). The default of `local`.
    Grammar,
}

impl ToolMode {
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "native" => Some(Self::Native),
            "grammar" => Some(Self::Grammar),
            _ => None,
        }
    }
}

/// Time limits, retries and the reply length shared by the HTTP providers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The whole call, retries and streaming included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Sent with every request (OpenAI `max_tokens`, Ollama `options.num_predict`): a small
    /// model that never closes its JSON would otherwise write until its context is full.
    pub max_tokens: u32,
    pub tool_mode: ToolMode,
    /// Longest wait for the first streamed chunk (`LOGLINE_PROVIDER_FIRST_TOKEN_SECS`; by
    /// default the whole-call limit). A CPU model reads a long prompt for a minute before it
    /// writes anything, so this is the generous limit and `idle_timeout` the tight one.
    pub first_token_timeout: Duration,
    /// Longest silence between two streamed chunks (`LOGLINE_PROVIDER_IDLE_SECS`, default
    /// 60 s): a server that stopped generating is given up on without waiting for the total.
    pub idle_timeout: Duration,
    /// Stream every call, even when nobody listens to the text as it comes, so that the
    /// first-token and idle limits apply (the default of `local`).
    pub stream: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_tokens: DEFAULT_MAX_TOKENS,
            tool_mode: ToolMode::Native,
            first_token_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            stream: false,
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
