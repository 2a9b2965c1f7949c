//! provider_exec: every model call goes through here, and leaves a `provider_execution` span
//! in the caller's tenant: provider kind, base URL (no credentials), model, latency, tokens,
//! attempts, the compiled prompt's hash, and the raw response or the error. Never the API key:
//! providers redact it from bodies and raw responses, and the span is built from those.
//!
//! Also the shape of a chat turn's own record, its `prompt_run` span ([`prompt_run_draft`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger::span::MAX_SPAN_BYTES;
use ledger::store::AppendResults;
use ledger::store::group::GroupCommit;
use ledger::{Appended, Draft, InputError, Principal, Store, StoreError, Visibility};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::providers::{Completion, CompletionRequest, Provider, ProviderError, ToolChoice};

/// Raw responses larger than this (as JSON) are kept as a truncated excerpt, so the span stays
/// well under the ledger's size limit next to everything else it carries.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// Where spans go: the store directly, or the server's group committer.
#[async_trait]
pub trait SpanWriter: Send + Sync {
    async fn append(
        &self,
        principal: &Principal,
        drafts: Vec<Draft>,
    ) -> Result<AppendResults, StoreError>;
}

#[async_trait]
impl SpanWriter for dyn Store {
    async fn append(
        &self,
        principal: &Principal,
        drafts: Vec<Draft>,
    ) -> Result<AppendResults, StoreError> {
        ledger::store::append(self, principal, drafts).await
    }
}

#[async_trait]
impl SpanWriter for GroupCommit {
    async fn append(
        &self,
        principal: &Principal,
        drafts: Vec<Draft>,
    ) -> Result<AppendResults, StoreError> {
        GroupCommit::append(self, principal, drafts).await
    }
}

/// How the execution span hangs in the turn's trace.
#[derive(Clone, Debug, Default)]
pub struct ExecContext {
    /// The turn's trace id (shared by its prompt_run, tool_call, … spans).
    pub trace_id: Option<String>,
    /// The span this call belongs to (e.g. the turn's prompt_run), when it already exists.
    pub parent_id: Option<Uuid>,
    /// `private` (the default: the raw answer may quote the user's data) or `tenant`.
    pub visibility: Visibility,
}

/// One provider call and where its record went.
#[derive(Debug)]
pub struct Executed {
    pub outcome: Result<Completion, ProviderError>,
    /// The `provider_execution` span.
    pub span: Appended,
}

/// Calls the provider and records the call. The outer error is a failure to record (the call
/// may have happened); the provider's own failure is in [`Executed::outcome`].
#[tracing::instrument(skip_all, fields(provider = provider.kind(), model = provider.model(), trace_id = ctx.trace_id.as_deref()))]
pub async fn provider_exec(
    writer: &(impl SpanWriter + ?Sized),
    principal: &Principal,
    provider: &dyn Provider,
    request: &CompletionRequest,
    deltas: Option<mpsc::Sender<String>>,
    ctx: &ExecContext,
) -> Result<Executed, StoreError> {
    let (outcome, draft) = provider_call(principal, provider, request, deltas, ctx).await?;
    let span = append_one(writer, principal, draft).await?;
    Ok(Executed { outcome, span })
}

/// Appends one draft and returns its result (the ledger's refusal as an error).
pub async fn append_one(
    writer: &(impl SpanWriter + ?Sized),
    principal: &Principal,
    draft: Draft,
) -> Result<Appended, StoreError> {
    Ok(writer
        .append(principal, vec![draft])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Config("the store returned no result".into()))??)
}

/// provider_exec without the append: the call and the `provider_execution` draft that records
/// it. A chat turn appends its records together at the end of the turn (one commit instead of
/// one per model call); everything else should use [`provider_exec`].
pub async fn provider_call(
    principal: &Principal,
    provider: &dyn Provider,
    request: &CompletionRequest,
    deltas: Option<mpsc::Sender<String>>,
    ctx: &ExecContext,
) -> Result<(Result<Completion, ProviderError>, Draft), StoreError> {
    let started_at = Utc::now();
    let started = Instant::now();
    let streamed = deltas.is_some();
    let outcome = provider.complete(request, deltas).await;
    let latency = match &outcome {
        Ok(c) => c.latency,
        Err(_) => started.elapsed(),
    };
    let draft = provider_execution_draft(
        principal,
        &ExecutionRecord {
            kind: provider.kind(),
            model: provider.model(),
            base_url: provider.base_url(),
            compiled_hash: request.system.hash(),
            messages: request.messages.len(),
            tools: request.tools.iter().map(|t| t.name.as_str()).collect(),
            tool_choice: request.tool_choice,
            answer_schema: request.response_schema.is_some(),
            streamed,
            latency,
            outcome: outcome.as_ref(),
            at: started_at,
        },
        ctx,
    )?;
    Ok((outcome, draft))
}

/// Everything a `provider_execution` span says.
#[derive(Debug)]
pub struct ExecutionRecord<'a> {
    pub kind: &'a str,
    pub model: &'a str,
    pub base_url: Option<&'a str>,
    pub compiled_hash: &'a str,
    pub messages: usize,
    pub tools: Vec<&'a str>,
    /// Whether the round required a tool call.
    pub tool_choice: ToolChoice,
    /// Whether the reply was constrained to the answer schema (an answer round).
    pub answer_schema: bool,
    pub streamed: bool,
    pub latency: Duration,
    pub outcome: Result<&'a Completion, &'a ProviderError>,
    /// When the call started.
    pub at: DateTime<Utc>,
}

/// The `provider_execution` span for one call, owned by `principal` in its tenant.
pub fn provider_execution_draft(
    principal: &Principal,
    rec: &ExecutionRecord<'_>,
    ctx: &ExecContext,
) -> Result<Draft, InputError> {
    let latency_ms = u64::try_from(rec.latency.as_millis()).unwrap_or(u64::MAX);
    let (tokens_in, tokens_out, attempts) = match rec.outcome {
        Ok(c) => (c.tokens_in, c.tokens_out, c.attempts),
        Err(e) => (None, None, e.attempts()),
    };
    let mut span = json!({
        "entity_type": "provider_execution",
        "visibility": ctx.visibility.as_str(),
        "when": ledger::span::format_time(rec.at),
        "who": format!("provider:{}", rec.kind),
        "did": if rec.outcome.is_ok() { "completed a chat request" } else { "failed a chat request" },
        "this": format!("model {} at {}", rec.model, rec.base_url.unwrap_or("(in process)")),
        "confirmed_by": "node",
        "if_ok": "hand the completion to the chat turn",
        "if_doubt": "record the response and let the turn decide",
        "if_not": "surface the provider error to the caller",
        "status": if rec.outcome.is_ok() { "ok" } else { "error" },
        "duration_ms": latency_ms,
        "input": {
            "compiled_hash": rec.compiled_hash,
            "messages": rec.messages,
            "tools": rec.tools,
            "tool_choice": rec.tool_choice,
            "answer_schema": rec.answer_schema,
            "streamed": rec.streamed,
        },
        "metadata": {
            "provider": rec.kind,
            "base_url": rec.base_url,
            "model": rec.model,
            "latency_ms": latency_ms,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "attempts": attempts,
        },
    });
    match rec.outcome {
        Ok(c) => span["output"] = bounded(without_nul(c.raw.clone())),
        Err(e) => {
            let mut error = json!({
                "kind": e.kind(),
                "message": without_nul(Value::String(e.to_string())),
                "attempts": e.attempts(),
            });
            match e {
                ProviderError::Http { status, .. } => error["status"] = json!(status),
                ProviderError::RateLimited { retry_after, .. } => {
                    error["status"] = json!(429);
                    error["retry_after_ms"] = json!(
                        retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    );
                }
                _ => {}
            }
            span["error"] = error;
        }
    }
    if let Some(t) = &ctx.trace_id {
        span["trace_id"] = json!(t);
    }
    if let Some(p) = ctx.parent_id {
        span["parent_id"] = json!(p);
    }
    Draft::from_value(span, principal, &[], Utc::now())
}

/// Everything a `prompt_run` span says: one chat turn, what was asked, what the model
/// settled on, and what it cost.
pub struct TurnRecord<'a> {
    /// The span's id, the turn's `run_id`.
    pub run_id: Uuid,
    pub trace_id: &'a str,
    /// When the turn started.
    pub at: DateTime<Utc>,
    pub conversation_id: Uuid,
    pub message: &'a str,
    pub variant: &'a str,
    pub answer: &'a Value,
    pub outcome: Outcome,
    /// Why the model was asked (once) to answer again: `invalid` or `ungrounded`.
    pub repair: Option<&'a str>,
    /// The repair returned the same reply it was asked to repair.
    pub repair_identical: bool,
    /// Whether the message asked about the ledger, whether a tool gave evidence, and the
    /// model's replaced answer when it was shown as unsupported.
    pub grounding: &'a Value,
    /// The hash of the last compiled system prompt (empty if none was sent).
    pub compiled_hash: &'a str,
    /// The prompt blocks it was compiled from.
    pub blocks: &'a [Value],
    pub memory: MemoryMode,
    pub provider: &'a dyn Provider,
    /// The whole turn.
    pub elapsed: Duration,
    /// The part of it spent waiting for the provider.
    pub provider_time: Duration,
    /// Prompt tokens as the servers reported them (summed over the turn's calls).
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Of those, served from the server's prompt cache, when it said.
    pub tokens_cached: Option<u64>,
    pub tool_use_count: usize,
    /// The circuit breaker's temporary block, if it engaged.
    pub breaker: Option<Uuid>,
    /// Proposals the turn created.
    pub proposals: &'a [Uuid],
    /// Memory items the turn recalled or wrote (their text may be in this turn's records).
    pub memories: &'a [Uuid],
}

/// The `prompt_run` span of a turn, private to the `principal` who asked.
pub fn prompt_run_draft(principal: &Principal, rec: &TurnRecord<'_>) -> Result<Draft, InputError> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let p = rec.provider;
    let mut related = rec.proposals.to_vec();
    for m in rec.memories {
        if !related.contains(m) {
            related.push(*m);
        }
    }
    let span = json!({
        "id": rec.run_id,
        "entity_type": "prompt_run",
        "visibility": "private",
        "trace_id": rec.trace_id,
        "related_to": related,
        "when": ledger::span::format_time(rec.at),
        "who": principal.user_id,
        "did": "asked the agent",
        "this": format!("conversation {}", rec.conversation_id),
        "confirmed_by": format!("provider {} model {}", p.kind(), p.model()),
        "if_ok": "the answer is shown with its citations",
        "if_doubt": "a reviewer is asked",
        "if_not": "Insufficient evidence.",
        "status": rec.outcome.as_str(),
        "duration_ms": ms(rec.elapsed),
        "content": {
            "conversation_id": rec.conversation_id,
            "message": rec.message,
            "answer": rec.answer,
            "provider": p.kind(),
            "model": p.model(),
            "base_url": p.base_url(),
            "variant": rec.variant,
            "compiled_hash": rec.compiled_hash,
            "blocks": rec.blocks,
            "latency_ms": ms(rec.elapsed),
            "provider_ms": ms(rec.provider_time),
            "tokens_in": rec.tokens_in,
            "tokens_out": rec.tokens_out,
            "tokens_cached": rec.tokens_cached,
            "tool_use_count": rec.tool_use_count,
            "breaker": rec.breaker,
            "repaired": rec.repair.is_some(),
            "repair": rec.repair,
            "repair_identical": rec.repair_identical,
            "grounding": rec.grounding,
            "confidence": rec.answer.get("confidence"),
            "outcome": rec.outcome.as_str(),
            "memory": rec.memory,
            "proposals": rec.proposals,
            "memories": &related[rec.proposals.len()..],
        },
    });
    Draft::from_value(span, principal, &[], rec.at)
}

/// The ledger cannot store U+0000 (PostgreSQL text); a model may well emit it.
fn without_nul(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn bounded(raw: Value) -> Value {
    let text = raw.to_string();
    if text.len() <= MAX_RAW_BYTES.min(MAX_SPAN_BYTES / 2) {
        return raw;
    }
    let excerpt: String = text.chars().take(MAX_RAW_BYTES / 2).collect();
    json!({"truncated": true, "bytes": text.len(), "excerpt": excerpt})
}

/// `X-LogLine-Memory`: off (default), session-only, on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryMode {
    #[default]
    Off,
    SessionOnly,
    On,
}

impl MemoryMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Some(Self::Off),
            "session-only" | "session" => Some(Self::SessionOnly),
            "on" => Some(Self::On),
            _ => None,
        }
    }
}

/// How a turn ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Answered,
    Escalated,
    InsufficientEvidence,
    /// A ledger question answered with no tool evidence, even after a repair: shown as a
    /// decline with its confidence capped below the escalation line (grounding.rs).
    Unsupported,
    ProviderError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Escalated => "escalated",
            Self::InsufficientEvidence => "insufficient_evidence",
            Self::Unsupported => "unsupported",
            Self::ProviderError => "provider_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_raw_responses_are_truncated_and_nul_is_replaced() {
        let v = bounded(json!({"x": "y".repeat(MAX_RAW_BYTES)}));
        assert_eq!(v["truncated"], json!(true));
        assert_eq!(
            without_nul(json!({"a\0": ["b\0"]})),
            json!({"a\u{FFFD}": ["b\u{FFFD}"]})
        );
    }
}
