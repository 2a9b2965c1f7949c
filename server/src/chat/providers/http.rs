//! The HTTP transport shared by the providers: one place that sends a request, waits within
//! the call's deadline, retries 429 and transient 5xx with backoff (or the server's
//! `Retry-After`), and turns every failure into a typed [`ProviderError`] with a redacted body
//! excerpt; and [`complete`], the one call wrapper both HTTP providers run their
//! [`Provider::complete`](super::types::Provider::complete) through. The client libraries
//! (async-openai, ollama-rs) build the requests and read the answers; they never decide about
//! retries or lose a status code.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;

use super::settings::{ProviderSettings, RetryPolicy};
use super::text_tools;
use super::types::{ChatMessage, Completion, CompletionRequest, ProviderError};

/// Longest body excerpt kept in an error.
const EXCERPT_CHARS: usize = 500;

/// Makes sure rustls has a crypto provider (ring) before any HTTPS client is built: the
/// dependencies are built without aws-lc-rs, so none is installed by default.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only means another thread installed one first, which is just as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// The reqwest client of one provider.
pub(crate) fn client(settings: &ProviderSettings) -> Result<reqwest::Client, ProviderError> {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("logline/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))
}

/// The URL as it may be shown and recorded: no user, password, query or fragment.
pub(crate) fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "(invalid URL)".to_string(),
    }
}

/// Removes a secret from text (a server might echo the Authorization header back).
pub(crate) fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    }
}

/// The first [`EXCERPT_CHARS`] characters of a body, secret removed.
pub(crate) fn excerpt(body: &[u8], secret: Option<&str>) -> String {
    let text = String::from_utf8_lossy(body);
    let text = redact(&text, secret);
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Removes a secret from every string of a value (a server could echo it).
pub(crate) fn scrub(value: Value, secret: Option<&str>) -> Value {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return value;
    };
    match value {
        Value::String(s) if s.contains(secret) => Value::String(s.replace(secret, "[redacted]")),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| scrub(v, Some(secret))).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, scrub(v, Some(secret))))
                .collect(),
        ),
        other => other,
    }
}

/// `Retry-After` in seconds or as an HTTP date, or the `retry-after-ms` some servers send.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn retryable(status: u16) -> bool {
    status == 429 || (500..600).contains(&status) && status != 501 && status != 505
}

/// Classifies a reqwest failure that happened before or while reading a response.
pub(crate) fn transport_error(
    e: reqwest::Error,
    url: &str,
    attempts: u32,
    timeout: Duration,
) -> ProviderError {
    // The message would otherwise repeat the request URL, credentials and all.
    let e = e.without_url();
    if e.is_timeout() {
        return ProviderError::Timeout {
            after: timeout,
            attempts,
        };
    }
    // The chain carries the useful part ("Connection refused", "dns error", …).
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_decode() || e.is_body() {
        return ProviderError::BadResponse(detail);
    }
    ProviderError::Unreachable {
        url: display_url(url),
        detail,
        attempts,
    }
}

/// One provider call's budget: its deadline and the attempts made so far (shared with the
/// code that reads the answer, so errors after the response can report them).
#[derive(Clone)]
pub(crate) struct CallBudget {
    pub deadline: Instant,
    pub timeout: Duration,
    pub attempts: Arc<AtomicU32>,
}

impl CallBudget {
    pub fn start(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            attempts: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> ProviderError {
        ProviderError::Timeout {
            after: self.timeout,
            attempts: self.attempts().max(1),
        }
    }

    /// A reqwest failure of this call (see [`transport_error`]), with its attempts so far.
    pub fn transport_error(&self, e: reqwest::Error, url: &str) -> ProviderError {
        transport_error(e, url, self.attempts(), self.timeout)
    }
}

/// Reads a streamed answer against the first-token and idle limits. The first-token limit
/// counts from the start of the call, so waiting for the response headers counts too.
pub(crate) struct Pace {
    first_deadline: Instant,
    first: Duration,
    idle: Duration,
    started: bool,
}

impl Pace {
    pub fn new(settings: &ProviderSettings) -> Self {
        Self {
            first_deadline: Instant::now() + settings.first_token_timeout,
            first: settings.first_token_timeout,
            idle: settings.idle_timeout,
            started: false,
        }
    }

    fn stalled(&self, budget: &CallBudget) -> ProviderError {
        ProviderError::Stalled {
            first_token: !self.started,
            after: if self.started { self.idle } else { self.first },
            attempts: budget.attempts().max(1),
        }
    }

    /// `fut` (sending the request, reading the headers) within the first-token limit.
    pub async fn before_first<T>(
        &self,
        fut: impl Future<Output = Result<T, ProviderError>>,
        budget: &CallBudget,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout_at(self.first_deadline, fut)
            .await
            .map_err(|_| self.stalled(budget))?
    }

    /// The stream's next item, or [`ProviderError::Stalled`] when it does not come in time.
    pub async fn next<S>(
        &mut self,
        stream: &mut S,
        budget: &CallBudget,
    ) -> Result<Option<S::Item>, ProviderError>
    where
        S: futures::Stream + Unpin,
    {
        use futures::StreamExt;
        let deadline = if self.started {
            Instant::now() + self.idle
        } else {
            self.first_deadline
        };
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(item) => {
                self.started = true;
                Ok(item)
            }
            Err(_) => Err(self.stalled(budget)),
        }
    }
}

/// What a provider read from the model's answer, before the call wrapper times and records it.
pub(crate) struct Answer {
    pub message: ChatMessage,
    pub tokens_in: Option<u32>,
    pub tokens_out: Option<u32>,
    /// The response (for a streamed answer: the assembled equivalent), secrets not yet removed.
    pub raw: Value,
}

/// The call wrapper of the HTTP providers: checks the request, runs `run` (which sends through
/// [`execute_with_retry`] and reads the answer) within the call's deadline and budget, logs the
/// call, and returns the [`Completion`] with `secret` scrubbed from the raw response.
pub(crate) async fn complete<F, Fut>(
    req: &CompletionRequest,
    settings: &ProviderSettings,
    secret: Option<&str>,
    run: F,
) -> Result<Completion, ProviderError>
where
    F: FnOnce(CallBudget) -> Fut,
    Fut: Future<Output = Result<Answer, ProviderError>>,
{
    req.check()?;
    let started = Instant::now();
    let budget = CallBudget::start(settings.timeout);
    let mut answer = match tokio::time::timeout_at(budget.deadline, run(budget.clone())).await {
        Err(_) => return Err(budget.timed_out()),
        Ok(r) => r?,
    };
    // A model that wrote its tool calls as text (its chat template's format) still called them;
    // the raw response keeps the text as it came.
    if answer.message.tool_calls.is_empty() && !req.tools.is_empty() {
        let offered: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
        if let Some((calls, rest)) = text_tools::extract(&answer.message.content, &offered) {
            tracing::info!(calls = calls.len(), "tool calls read from the message text");
            answer.message = ChatMessage::assistant_tool_calls(rest, calls);
        }
    }
    let latency = started.elapsed();
    tracing::info!(
        latency_ms = latency.as_millis() as u64,
        tokens_in = answer.tokens_in,
        tokens_out = answer.tokens_out,
        attempts = budget.attempts(),
        "provider call completed"
    );
    Ok(Completion {
        message: answer.message,
        tokens_in: answer.tokens_in,
        tokens_out: answer.tokens_out,
        latency,
        raw: scrub(answer.raw, secret),
        attempts: budget.attempts().max(1),
    })
}

/// Sends the request `build` makes (once per attempt) until it succeeds, fails for good, or the
/// deadline passes. Returns the successful response with its body unread.
pub(crate) async fn execute_with_retry<F, Fut>(
    client: &reqwest::Client,
    policy: &RetryPolicy,
    budget: &CallBudget,
    secret: Option<&str>,
    build: F,
) -> Result<reqwest::Response, ProviderError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<reqwest::Request, ProviderError>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        budget.attempts.store(attempt, Ordering::Relaxed);
        let request = build().await?;
        let url = request.url().to_string();
        let response = match tokio::time::timeout_at(budget.deadline, client.execute(request)).await
        {
            Err(_) => return Err(budget.timed_out()),
            Ok(Err(e)) => return Err(transport_error(e, &url, attempt, budget.timeout)),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(response);
        }
        let wait = retry_after(response.headers());
        let body = match tokio::time::timeout_at(budget.deadline, response.bytes()).await {
            Err(_) => return Err(budget.timed_out()),
            Ok(Ok(b)) => excerpt(&b, secret),
            Ok(Err(e)) => format!("(body unreadable: {e})"),
        };
        let give_up = |retry_after: Option<Duration>| {
            if status == 429 {
                ProviderError::RateLimited {
                    retry_after,
                    attempts: attempt,
                    body: body.clone(),
                }
            } else {
                ProviderError::Http {
                    status,
                    body: body.clone(),
                    attempts: attempt,
                }
            }
        };
        if !retryable(status) || attempt >= policy.max_attempts {
            return Err(give_up(wait));
        }
        let delay = match wait {
            Some(w) if w > policy.max_retry_after => return Err(give_up(Some(w))),
            Some(w) => w,
            None => policy.backoff(attempt),
        };
        // Sleeping past the deadline would only turn this answer into a timeout.
        if Instant::now() + delay >= budget.deadline {
            return Err(give_up(wait));
        }
        tracing::warn!(
            status,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "provider answered a retryable status; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn excerpts_are_short_and_never_hold_the_secret() {
        let body = format!("bad key sk-123 {}", "x".repeat(1000));
        let e = excerpt(body.as_bytes(), Some("sk-123"));
        assert!(!e.contains("sk-123"));
        assert!(e.starts_with("bad key [redacted]"));
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            display_url("https://user:pw@example.com/v1/?key=abc"),
            "https://example.com/v1"
        );
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(1),
        };
        let b1 = p.backoff(1);
        assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
        let b2 = p.backoff(2);
        assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
        assert!(p.backoff(10) <= Duration::from_millis(300));
    }
}
