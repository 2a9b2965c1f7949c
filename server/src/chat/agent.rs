//! One chat turn (DESIGN §7): build the prompt, call the model through provider_exec, run the
//! tools it asks for with the caller's visibility, break tool loops, force the answer into the
//! output schema (one repair round trip, then "Insufficient evidence."), refuse citations the
//! tools did not return, escalate low confidence to a human, and record the turn.
//!
//! Grounding is enforced, not requested (issue 12; the rules live in [`grounding`]): a round
//! that offers tools never carries the answer schema (a grammar-constrained server could not
//! call a tool under it), the first round of a ledger question may require a tool call (the
//! variant's `tool_choice`), a confident answer to a ledger question with no tool evidence is
//! sent back once and then shown as `unsupported`, `actions[]` must be this turn's proposals,
//! claims of a change need one, and a repair that returns the same reply is not retried.
//!
//! The prompt variant is the one the request names, else the conversation's own (from its
//! earlier turns), else the prompt_bandit kernel's choice for a new conversation ([`super::bandit`],
//! recorded as a `prompt_variant_selection` span with the turn), else `default`.
//!
//! Records: every model call is a `provider_execution` span, every tool call a `tool_call`
//! span, the turn a `prompt_run` span (its id is the `run_id`), all in the turn's trace. They
//! are appended together when the turn ends — one commit instead of one per step — except
//! proposals and the breaker's block, which must exist while the turn runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::query::{Filter, Order};
use ledger::span::format_time;
use ledger::{Draft, Principal, Store, StoreError, Visibility};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::bandit::{Picker, active_variants, selection_draft};
use super::blocks::{Layer, LivePrompts, PromptBlock, PromptError};
use super::grounding;
use super::memory_turn;
use super::prompt::{Budget, PromptInput, build_prompt};
use super::proposals::{self, ESCALATION_THRESHOLD, Escalation};
use super::providers::{ChatMessage, Provider, ProviderError, ToolCall, ToolChoice};
use super::record::{
    ExecContext, SpanWriter, TurnRecord, append_one, prompt_run_draft, provider_call,
};
pub use super::record::{MemoryMode, Outcome};
use super::tools::{self, ToolContext, ToolOutput};

/// The 6th tool call of a turn engages the circuit breaker.
pub const MAX_TOOL_CALLS: usize = 5;
/// Model calls in one turn, whatever happens (tool rounds, the breaker's synthesis, a repair).
pub const MAX_MODEL_CALLS: usize = 10;
/// What a turn that cannot produce a valid answer says.
pub const INSUFFICIENT: &str = "Insufficient evidence.";
/// The breaker's block text.
pub const BREAKER_TEXT: &str = "Synthesize now. No more tool calls.";
/// How long the breaker's temporary block lives.
pub const BREAKER_TTL: TimeDelta = TimeDelta::minutes(30);
/// Earlier turns of a conversation read back into the prompt (build_prompt trims further).
const HISTORY_TURNS: i64 = 20;
/// Longest user message.
pub const MAX_MESSAGE_CHARS: usize = 8000;

/// Everything a turn needs from the server.
pub struct Agent {
    pub store: Arc<dyn Store>,
    pub writer: Arc<dyn SpanWriter>,
    pub provider: Arc<dyn Provider>,
    /// The prompt set turns compile from (a server's: active versions only).
    pub prompts: Arc<LivePrompts>,
    pub validator: Arc<jsonschema::Validator>,
    pub budget: Budget,
    /// The prompt_bandit kernel's choice of variant for a new conversation that names none.
    pub variants: Arc<Picker>,
    /// Memory (issue 13): recalled into turns and written as `X-LogLine-Memory` allows.
    pub memory: Arc<crate::memory::Memory>,
    /// Stage-0's last word on the provider_exec kernel, and when it was asked.
    gate: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How long Stage-0's verdict on provider_exec is trusted before it is asked again (a new
/// kernel or manifest seq takes effect within this).
const GATE_TTL: Duration = Duration::from_secs(5);

/// A question.
#[derive(Clone, Debug)]
pub struct TurnRequest {
    pub message: String,
    pub conversation_id: Option<Uuid>,
    pub variant: Option<String>,
    /// The `X-LogLine-Memory` mode the client asked for (recorded with the turn).
    pub memory: MemoryMode,
}

/// What the client sees while a turn runs (SSE events; the JSON answer is the last one).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChatEvent {
    /// A piece of the model's text as it streams.
    Delta { text: String },
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    ToolResult {
        id: String,
        name: String,
        ok: bool,
        result: Value,
    },
    /// The breaker engaged: no more tool calls in this turn.
    Breaker { block_id: Uuid },
    /// The answer did not validate; the model is asked once to repair it.
    Repair { errors: Vec<String> },
}

/// A finished turn.
#[derive(Clone, Debug, Serialize)]
pub struct TurnResult {
    /// The validated answer, or `{"error": "Insufficient evidence."}`.
    pub answer: Value,
    pub conversation_id: Uuid,
    /// The turn's `prompt_run` span.
    pub run_id: Uuid,
    pub trace_id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation_id: Option<Uuid>,
    /// Pending proposals this turn created (confirm with `POST /api/chat/confirm`).
    pub proposals: Vec<Uuid>,
    /// Per-tool results the client may render (query rows as tables, decision histories).
    pub tool_results: Vec<ToolTrace>,
    /// Time the server spent outside provider calls.
    #[serde(skip)]
    pub overhead: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct ToolTrace {
    pub id: String,
    pub name: String,
    pub ok: bool,
    pub result: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("the model provider failed: {error}")]
    Provider { error: ProviderError, run_id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stage-0 does not let the provider_exec kernel run (missing, tampered or unlisted).
    #[error("model calls are switched off: {0}")]
    KernelRefused(String),
}

struct Turn<'a> {
    agent: &'a Agent,
    principal: &'a Principal,
    roles: &'a [String],
    /// What was asked: the message (trimmed), the prompt variant, the conversation, and the
    /// memory consent the client sent.
    message: &'a str,
    variant: &'a str,
    conversation_id: Uuid,
    memory: MemoryMode,
    events: Option<mpsc::Sender<ChatEvent>>,
    trace_id: String,
    run_id: Uuid,
    now: DateTime<Utc>,
    records: Vec<Draft>,
    /// Span ids the turn's answer may cite (tool results, recalled memories), in the order
    /// they were returned; a turn holds tens, so a list is the right set.
    citable: Vec<Uuid>,
    proposals: Vec<Uuid>,
    tool_results: Vec<ToolTrace>,
    tool_calls: usize,
    provider_time: Duration,
    tokens_in: u64,
    tokens_out: u64,
    /// Cached prompt tokens, summed over the calls whose server reported them.
    tokens_cached: Option<u64>,
    breaker: Option<(PromptBlock, i64)>,
    /// The message asks about the ledger (`grounding::asks_about_ledger`) and the provider is
    /// a language model (`Provider::answers_only_from_tools`).
    ledger_question: bool,
    /// The variant's tool choice for the first round of a ledger question.
    tool_choice: ToolChoice,
    /// A tool call in this turn returned evidence (spans, a proposal, a non-zero count; not an
    /// error or an empty result): the answer has something to rest on.
    grounded: bool,
    /// The last compiled system prompt's hash and its blocks (`id`, `seq`, `name`), recorded
    /// even when the call made with it failed.
    compiled_hash: String,
    blocks: Vec<Value>,
    /// Memory items recalled for this turn, as lines of the `turn` block.
    recalled: Vec<String>,
    /// Memory items this turn recalled or wrote: the `prompt_run` relates to them, so
    /// forgetting one also redacts the turns that hold its text.
    memories: Vec<Uuid>,
}

impl Agent {
    /// The agent with memory configured otherwise (a `LOGLINE_MEMORY_KEY`, an embedder).
    pub fn with_memory(mut self, memory: Arc<crate::memory::Memory>) -> Self {
        self.memory = memory;
        self
    }

    /// Runs one turn. `events` (for SSE) receives progress; the result is the same either way.
    #[tracing::instrument(skip_all, fields(user = %principal.user_id, tenant = %principal.tenant_id))]
    pub async fn turn(
        &self,
        principal: &Principal,
        roles: &[String],
        req: TurnRequest,
        events: Option<mpsc::Sender<ChatEvent>>,
    ) -> Result<TurnResult, ChatError> {
        let started = Instant::now();
        let message = req.message.trim();
        if message.is_empty() {
            return Err(ChatError::BadRequest("`message` must not be empty".into()));
        }
        if message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ChatError::BadRequest(format!(
                "`message` is longer than {MAX_MESSAGE_CHARS} characters"
            )));
        }
        if message.contains('\0') {
            return Err(ChatError::BadRequest(
                "`message` contains a NUL character".into(),
            ));
        }
        // The active prompts of this turn (prompt_eval may activate new ones meanwhile).
        let prompts = self.prompts.current();
        // Refuse an unknown or never-activated variant before anything is recorded.
        if let Some(v) = &req.variant {
            check_variant(&prompts, v)?;
        }
        self.provider_exec_allowed().await?;
        let conversation_id = req.conversation_id.unwrap_or_else(Uuid::now_v7);
        let run_id = Uuid::now_v7();
        let (mut history, earlier_variant) = self.history(principal, conversation_id).await?;
        // The variant: the one the request names; else the conversation's own (sticky); else
        // the bandit's choice, recorded with the turn; else `default`.
        let mut selection = None;
        let variant: String = match (req.variant, earlier_variant) {
            (Some(v), _) => v,
            (None, Some(v)) if prompts.variant(&v).is_ok() => v,
            (None, _) => {
                match self
                    .variants
                    .pick(&active_variants(&prompts), conversation_id)
                    .await?
                {
                    Some(p) if prompts.variant(&p.variant).is_ok() => {
                        selection = Some(p.selection);
                        p.variant
                    }
                    _ => "default".to_string(),
                }
            }
        };
        let variant = variant.as_str();
        let tool_choice = check_variant(&prompts, variant)?.tool_choice;
        let mut t = Turn {
            agent: self,
            principal,
            roles,
            message,
            variant,
            conversation_id,
            memory: req.memory,
            events,
            trace_id: run_id.to_string(),
            run_id,
            now: Utc::now(),
            records: Vec::new(),
            citable: Vec::new(),
            proposals: Vec::new(),
            tool_results: Vec::new(),
            tool_calls: 0,
            provider_time: Duration::ZERO,
            tokens_in: 0,
            tokens_out: 0,
            tokens_cached: None,
            breaker: None,
            ledger_question: !self.provider.answers_only_from_tools()
                && grounding::asks_about_ledger(message),
            tool_choice,
            grounded: false,
            compiled_hash: String::new(),
            blocks: Vec::new(),
            recalled: Vec::new(),
            memories: Vec::new(),
        };
        if let Some(selection) = &selection {
            let draft = selection_draft(
                principal,
                run_id,
                &t.trace_id,
                conversation_id,
                selection,
                t.now,
            )
            .map_err(StoreError::Input)?;
            t.records.push(draft);
        }
        let recall = memory_turn::recall(
            &self.memory,
            principal,
            req.memory,
            conversation_id,
            message,
            t.now,
        )
        .await;
        t.recalled = recall.lines;
        t.memories.extend(&recall.ids);
        t.allow_citing(recall.ids);
        history.push(ChatMessage::user(message));

        let mut settled = match t.run(&mut history).await {
            Ok(x) => x,
            Err(ChatError::Provider { error, .. }) => {
                t.set_proposals("withdrawn", "the model provider failed")
                    .await?;
                let failed = Settled {
                    answer: json!({"error": error.to_string()}),
                    outcome: Outcome::ProviderError,
                    repair: None,
                    repair_identical: false,
                    draft: None,
                };
                let run = t.prompt_run(&failed, started.elapsed())?;
                t.records.push(run);
                t.flush().await?;
                return Err(ChatError::Provider { error, run_id });
            }
            Err(e) => return Err(e),
        };
        let mut escalation_id = None;
        let low = settled
            .answer
            .get("confidence")
            .and_then(Value::as_f64)
            .is_some_and(|c| c < ESCALATION_THRESHOLD);
        match settled.outcome {
            Outcome::Answered if low => {
                settled.outcome = Outcome::Escalated;
                escalation_id = Some(t.escalate(&settled.answer).await?);
            }
            // Its confidence is capped below the line, so a reviewer sees it too; the outcome
            // keeps saying why.
            Outcome::Unsupported => escalation_id = Some(t.escalate(&settled.answer).await?),
            _ => {}
        }
        if settled.outcome == Outcome::InsufficientEvidence {
            t.set_proposals("withdrawn", "the answer did not validate")
                .await?;
        }
        memory_turn::record(
            &self.memory,
            principal,
            t.memory,
            conversation_id,
            message,
            &t.trace_id,
            t.now,
        )
        .await;
        let run = t.prompt_run(&settled, started.elapsed())?;
        t.records.push(run);
        t.flush().await?;
        let overhead = started.elapsed().saturating_sub(t.provider_time);
        let Settled {
            answer, outcome, ..
        } = settled;
        Ok(TurnResult {
            answer,
            conversation_id,
            run_id,
            trace_id: t.trace_id,
            outcome,
            escalation_id,
            proposals: t.proposals,
            tool_results: t.tool_results,
            overhead,
        })
    }

    /// Model calls run only while Stage-0 verifies the provider_exec kernel span.
    async fn provider_exec_allowed(&self) -> Result<(), ChatError> {
        let mut gate = self.gate.lock().await;
        if let Some((at, verdict)) = gate.as_ref()
            && at.elapsed() < GATE_TTL
        {
            return verdict.clone().map_err(ChatError::KernelRefused);
        }
        let verdict =
            match kernels::stage0::inspect_kernel(self.store.as_ref(), "provider_exec").await {
                Ok((_, status)) => match status.state {
                    kernels::stage0::State::Refused(_) => Err(status.reason),
                    _ => Ok(()),
                },
                Err(kernels::stage0::Stage0Error::Store(e)) => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            };
        *gate = Some((Instant::now(), verdict.clone()));
        verdict.map_err(ChatError::KernelRefused)
    }

    /// Earlier turns of this conversation that the caller recorded (question and answer text),
    /// and the variant its latest turn used.
    async fn history(
        &self,
        principal: &Principal,
        conversation_id: Uuid,
    ) -> Result<(Vec<ChatMessage>, Option<String>), StoreError> {
        let filter = Filter {
            entity_type: Some("prompt_run".into()),
            this: Some(format!("conversation {conversation_id}")),
            owner_id: Some(principal.user_id.clone()),
            tenant_id: Some(principal.tenant_id.clone()),
            order: Order::Desc,
            limit: Some(HISTORY_TURNS),
            ..Filter::default()
        };
        let page = self.store.query(principal, &filter).await?;
        let mut out = Vec::new();
        let mut variant = None;
        for row in page.rows.iter().rev() {
            let Ok(v) = row.span.to_view() else { continue };
            let Some(c) = v.get("content") else { continue };
            if let Some(name) = c.get("variant").and_then(Value::as_str) {
                variant = Some(name.to_string());
            }
            let (Some(q), Some(a)) = (c.get("message").and_then(Value::as_str), c.get("answer"))
            else {
                continue;
            };
            out.push(ChatMessage::user(q));
            let text = a
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| a.to_string());
            out.push(ChatMessage::assistant(text));
        }
        Ok((out, variant))
    }
}

/// What the model loop settled on: the answer and how it was reached (the turn's `prompt_run`
/// span records it).
struct Settled {
    /// The validated answer, the decline that replaced an unsupported one, or `{"error": …}`.
    answer: Value,
    outcome: Outcome,
    /// Why the model was asked (once) to answer again, if it was.
    repair: Option<Repair>,
    /// The repair returned the very reply it was asked to repair (judged without a retry).
    repair_identical: bool,
    /// The model's own answer when it was replaced as unsupported (recorded, never shown).
    draft: Option<Value>,
}

/// The active variant `name`: a never-activated one is a 503 (`ChatError::Prompt`), an unknown
/// one a bad request.
fn check_variant<'a>(
    prompts: &'a super::blocks::ActivePrompts,
    name: &str,
) -> Result<&'a super::blocks::Variant, ChatError> {
    match prompts.variant(name) {
        Ok(v) => Ok(v),
        Err(e @ PromptError::NotActive { .. }) => Err(ChatError::Prompt(e)),
        Err(e) => Err(ChatError::BadRequest(e.to_string())),
    }
}

/// Why a turn's one repair round was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    /// The reply was not a valid answer (JSON, schema, citations, actions, change claims).
    Invalid,
    /// A valid answer to a ledger question, confident, with no tool evidence.
    Ungrounded,
    /// A confident answer to a ledger question that cites none of the spans the turn's tools
    /// returned.
    Uncited,
}

impl Repair {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Ungrounded => "ungrounded",
            Self::Uncited => "uncited",
        }
    }
}

impl Turn<'_> {
    async fn emit(&self, e: ChatEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e).await;
        }
    }

    /// The model loop. A round either offers the tools (no output constraint: a server that
    /// compiles the answer schema into a grammar could not emit a tool call; `tool_choice:
    /// required` on the first round of a ledger question when the variant says so) or is an
    /// answer round (no tools, the answer schema as `response_format`): after the breaker, or
    /// after a repair request when no more evidence is needed.
    async fn run(&mut self, history: &mut Vec<ChatMessage>) -> Result<Settled, ChatError> {
        let mut repair: Option<Repair> = None;
        // The reply sent back for repair and what it was judged to be.
        let mut repaired_reply: Option<(String, Option<Value>)> = None;
        let mut answer_round = false;
        let mut require_tool = self.ledger_question && self.tool_choice == ToolChoice::Required;
        for _ in 0..MAX_MODEL_CALLS {
            let offer_tools = self.breaker.is_none() && !answer_round;
            let tools = if offer_tools {
                tools::specs_for(memory_turn::reach(self.memory).is_some())
            } else {
                Vec::new()
            };
            // A call of a tool this round did not offer (written in the text, or memory tools
            // with memory off) is refused, not run.
            let offered: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
            let extra: Vec<(PromptBlock, i64)> = self.breaker.iter().cloned().collect();
            let prompts = self.agent.prompts.current();
            let built = build_prompt(
                &prompts,
                PromptInput {
                    variant: self.variant,
                    principal: self.principal,
                    now: self.now,
                    tools: &tools,
                    memory: &self.recalled,
                    extra_blocks: &extra,
                    history: history.clone(),
                    model: self.agent.provider.model(),
                    budget: self.agent.budget,
                },
            )?;
            self.compiled_hash = built.system.hash().to_string();
            self.blocks = built
                .blocks
                .iter()
                .map(|b| json!({"id": b.id, "seq": b.seq, "name": b.name}))
                .collect();
            let mut request = built.request(
                tools,
                (!offer_tools).then(|| prompts.library().answer_schema().clone()),
            );
            if offer_tools {
                request.answer_schema = Some(prompts.library().answer_schema().clone());
                if require_tool {
                    request.tool_choice = ToolChoice::Required;
                }
            }
            require_tool = false;
            let ctx = ExecContext {
                trace_id: Some(self.trace_id.clone()),
                parent_id: Some(self.run_id),
                visibility: Visibility::Private,
            };
            let (deltas, forward) = match &self.events {
                Some(events) => {
                    let (tx, mut rx) = mpsc::channel::<String>(64);
                    let events = events.clone();
                    let fwd = tokio::spawn(async move {
                        while let Some(text) = rx.recv().await {
                            let _ = events.send(ChatEvent::Delta { text }).await;
                        }
                    });
                    (Some(tx), Some(fwd))
                }
                None => (None, None),
            };
            let call_started = Instant::now();
            let (outcome, draft) = provider_call(
                self.principal,
                self.agent.provider.as_ref(),
                &request,
                deltas,
                &ctx,
            )
            .await?;
            // The provider's own measure of its call (the draft that records it is ours).
            self.provider_time += match &outcome {
                Ok(c) => c.latency,
                Err(_) => call_started.elapsed(),
            };
            if let Some(f) = forward {
                let _ = f.await;
            }
            self.records.push(draft);
            let completion = outcome.map_err(|error| ChatError::Provider {
                error,
                run_id: self.run_id,
            })?;
            self.tokens_in += u64::from(completion.tokens_in.unwrap_or(0));
            self.tokens_out += u64::from(completion.tokens_out.unwrap_or(0));
            if let Some(cached) = cached_tokens(&completion.raw) {
                *self.tokens_cached.get_or_insert(0) += cached;
            }
            let msg = completion.message;

            if !msg.tool_calls.is_empty() {
                if self.breaker.is_some() {
                    // Tools were withdrawn; a model that still calls them has not answered.
                    for c in &msg.tool_calls {
                        self.tool_calls += 1;
                        self.record_tool(
                            c,
                            "refused",
                            &json!({"error": "refused by the circuit breaker"}),
                            0,
                        );
                    }
                    if repair.is_some() {
                        return Ok(self.insufficient(repair, false));
                    }
                    repair = Some(Repair::Invalid);
                    let errors = vec![
                        "tool calls are refused in this turn (circuit breaker); answer with the JSON object now"
                            .to_string(),
                    ];
                    self.emit(ChatEvent::Repair {
                        errors: errors.clone(),
                    })
                    .await;
                    history.push(ChatMessage::assistant(msg.content.clone()));
                    history.push(ChatMessage::user(repair_prompt(&errors, false)));
                    continue;
                }
                history.push(ChatMessage::assistant_tool_calls(
                    msg.content.clone(),
                    msg.tool_calls.clone(),
                ));
                for call in &msg.tool_calls {
                    self.emit(ChatEvent::ToolCall {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    })
                    .await;
                    let result = if self.tool_calls >= MAX_TOOL_CALLS {
                        self.engage_breaker().await?;
                        self.tool_calls += 1;
                        let out = ToolOutput::error(format!(
                            "refused by the circuit breaker: a turn may make at most {MAX_TOOL_CALLS} tool calls. {BREAKER_TEXT}"
                        ));
                        self.record_tool(call, "refused", &out.result, 0);
                        out
                    } else if !offered.contains(&call.name) {
                        self.tool_calls += 1;
                        let out = ToolOutput::error(if offered.is_empty() {
                            format!("`{}` is not offered now: no tool is; answer now", call.name)
                        } else {
                            format!(
                                "`{}` is not offered now; call one of: {}",
                                call.name,
                                offered.join(", ")
                            )
                        });
                        self.record_tool(call, "refused", &out.result, 0);
                        out
                    } else {
                        self.tool_calls += 1;
                        let ctx = ToolContext {
                            store: self.agent.store.as_ref(),
                            writer: self.agent.writer.as_ref(),
                            principal: self.principal,
                            roles: self.roles,
                            now: self.now,
                            trace_id: &self.trace_id,
                            request: self.message,
                            memory: memory_turn::reach(self.memory).map(|reach| {
                                tools::MemoryAccess {
                                    memory: &self.agent.memory,
                                    reach,
                                    session_id: self.conversation_id.to_string(),
                                    explicit: memory_turn::asks_to_remember(self.message),
                                }
                            }),
                        };
                        let t0 = Instant::now();
                        let out = tools::run(&ctx, call).await?;
                        let ms = t0.elapsed().as_millis();
                        self.allow_citing(out.citable.iter().copied());
                        if matches!(
                            tools::ToolName::parse(&call.name),
                            Some(tools::ToolName::Remember | tools::ToolName::RecallMemory)
                        ) {
                            self.memories.extend(out.citable.iter().copied());
                        }
                        self.proposals.extend(out.proposal);
                        let status = if out.error.is_some() { "error" } else { "ok" };
                        // Evidence: a call that ran and answered, even with nothing found.
                        self.grounded |= out.evidence;
                        self.record_tool(call, status, &out.result, ms);
                        out
                    };
                    self.emit(ChatEvent::ToolResult {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        ok: result.error.is_none(),
                        result: result.result.clone(),
                    })
                    .await;
                    self.tool_results.push(ToolTrace {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        ok: result.error.is_none(),
                        result: result.result.clone(),
                    });
                    history.push(ChatMessage::tool_result(call.id.clone(), result.text()));
                }
                continue;
            }

            // A repair that returns the reply it was asked to repair is judged as that reply
            // was: asking again would only repeat it.
            if let Some((before, judged)) = &repaired_reply
                && same_reply(before, &msg.content)
            {
                tracing::info!(repair = ?repair, "the repair returned the same reply");
                return Ok(match judged.clone() {
                    Some(draft) => self.unsupported(draft, repair, true),
                    None => self.insufficient(repair, true),
                });
            }
            match self.check(&msg.content) {
                Ok(answer) if self.needs_evidence(&answer) => {
                    if repair.is_some() {
                        tracing::info!(
                            "the answer still rests on no tool result; shown as unsupported"
                        );
                        return Ok(self.unsupported(answer, repair, false));
                    }
                    repair = Some(Repair::Ungrounded);
                    let errors = vec![GROUNDING_REPAIR.to_string()];
                    self.emit(ChatEvent::Repair {
                        errors: errors.clone(),
                    })
                    .await;
                    repaired_reply = Some((msg.content.clone(), Some(answer)));
                    history.push(ChatMessage::assistant(msg.content.clone()));
                    history.push(ChatMessage::user(GROUNDING_REPAIR));
                    answer_round = self.breaker.is_some();
                    require_tool = !answer_round;
                }
                Ok(mut answer) if self.uncited(&answer) => {
                    if repair.is_some() {
                        // Still nothing cited: it stands, but below the escalation line, so a
                        // person sees it before anyone relies on it.
                        tracing::info!("the answer still cites nothing; confidence capped");
                        answer["confidence"] = json!(grounding::UNCITED_CONFIDENCE);
                        return Ok(Settled {
                            answer,
                            outcome: Outcome::Answered,
                            repair,
                            repair_identical: false,
                            draft: None,
                        });
                    }
                    repair = Some(Repair::Uncited);
                    let ask = grounding::citation_repair(&self.citable);
                    self.emit(ChatEvent::Repair {
                        errors: vec![ask.clone()],
                    })
                    .await;
                    repaired_reply = Some((msg.content.clone(), Some(answer)));
                    history.push(ChatMessage::assistant(msg.content.clone()));
                    history.push(ChatMessage::user(ask));
                    // The evidence is in: the correction is an answer round.
                    answer_round = true;
                }
                Ok(answer) => {
                    return Ok(Settled {
                        answer,
                        outcome: Outcome::Answered,
                        repair,
                        repair_identical: false,
                        draft: None,
                    });
                }
                Err(errors) if repair.is_none() => {
                    repair = Some(Repair::Invalid);
                    tracing::info!(errors = ?errors, "answer did not validate; asking for a repair");
                    self.emit(ChatEvent::Repair {
                        errors: errors.clone(),
                    })
                    .await;
                    // Still no evidence for a ledger question: the repair round offers the
                    // tools again and asks for a call; otherwise it is an answer round.
                    let gather = self.ledger_question && !self.grounded && self.breaker.is_none();
                    repaired_reply = Some((msg.content.clone(), None));
                    history.push(ChatMessage::assistant(msg.content.clone()));
                    history.push(ChatMessage::user(repair_prompt(&errors, gather)));
                    answer_round = !gather;
                    require_tool = gather;
                }
                Err(errors) => {
                    tracing::info!(errors = ?errors, "repaired answer did not validate either");
                    return Ok(self.insufficient(repair, false));
                }
            }
        }
        Ok(self.insufficient(repair, false))
    }

    /// A valid answer that may not stand as it is: a ledger question answered with confidence
    /// at or above the escalation line by a turn in which no tool call ran (grounding.rs).
    fn needs_evidence(&self, answer: &Value) -> bool {
        self.ledger_question
            && !self.grounded
            && answer
                .get("confidence")
                .and_then(Value::as_f64)
                .is_some_and(|c| c >= ESCALATION_THRESHOLD)
    }

    /// A confident answer to a ledger question that cites nothing although this turn's tools
    /// returned spans it could cite (grounding.rs). An answer that proposes a change is judged
    /// by its `actions[]` instead.
    fn uncited(&self, answer: &Value) -> bool {
        self.ledger_question
            && self.grounded
            && !self.citable.is_empty()
            && self.proposals.is_empty()
            && answer
                .get("confidence")
                .and_then(Value::as_f64)
                .is_some_and(|c| c >= ESCALATION_THRESHOLD)
            && answer
                .get("citations")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    }

    fn insufficient(&self, repair: Option<Repair>, identical: bool) -> Settled {
        Settled {
            answer: json!({ "error": INSUFFICIENT }),
            outcome: Outcome::InsufficientEvidence,
            repair,
            repair_identical: identical,
            draft: None,
        }
    }

    /// The decline that replaces an answer with no evidence behind it.
    fn unsupported(&self, draft: Value, repair: Option<Repair>, identical: bool) -> Settled {
        Settled {
            answer: grounding::unsupported_answer(&draft, self.tool_calls),
            outcome: Outcome::Unsupported,
            repair,
            repair_identical: identical,
            draft: Some(draft),
        }
    }

    /// Parses and validates an answer; the errors are what the repair prompt tells the model.
    fn check(&self, content: &str) -> Result<Value, Vec<String>> {
        let text = strip_fences(content);
        let mut answer: Value = serde_json::from_str(text)
            .map_err(|e| vec![format!("the answer is not a JSON object: {e}")])?;
        let mut errors: Vec<String> = self
            .agent
            .validator
            .iter_errors(&answer)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        errors.extend(grounding::action_errors(&answer, &self.proposals));
        let cites_something = answer
            .get("citations")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        if self.proposals.is_empty()
            && answer
                .get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| grounding::claims_unmade_change(t, cites_something))
        {
            errors.push(
                "/text: it says something was changed, but no change was proposed in this turn; \
                 you cannot change the ledger, only propose a change with propose_amendment (a \
                 person confirms it)"
                    .to_string(),
            );
        }
        if let Some(cites) = answer.get("citations").and_then(Value::as_array) {
            for (i, c) in cites.iter().enumerate() {
                let ok = c
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
                    .is_some_and(|id| self.citable.contains(&id));
                if !ok {
                    errors.push(format!(
                        "/citations/{i}: {c} is not the id of a span a tool returned in this turn; cite only ids from tool results"
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // The count is the server's, not the model's.
        answer["telemetry"]["tool_use_count"] = json!(self.tool_calls);
        Ok(answer)
    }

    /// Adds ids the answer may cite, each once, keeping their order.
    fn allow_citing(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            if !self.citable.contains(&id) {
                self.citable.push(id);
            }
        }
    }

    fn record_tool(&mut self, call: &ToolCall, status: &str, result: &Value, ms: u128) {
        let text = result.to_string();
        let result = if text.len() > 32 * 1024 {
            json!({"truncated": true, "bytes": text.len()})
        } else {
            result.clone()
        };
        let span = json!({
            "entity_type": "tool_call",
            "visibility": "private",
            "trace_id": self.trace_id,
            "parent_id": self.run_id,
            "when": format_time(Utc::now()),
            "who": self.principal.user_id,
            "did": format!("called {}", call.name),
            "this": format!("tool call {} of run {}", call.id, self.run_id),
            "confirmed_by": "agent",
            "if_ok": "hand the result to the model",
            "if_doubt": "hand the error to the model",
            "if_not": "refuse the call",
            "status": status,
            "duration_ms": u64::try_from(ms).unwrap_or(u64::MAX),
            "name": call.name,
            "input": call.arguments,
            "output": result,
        });
        match Draft::from_value(span, self.principal, &[], Utc::now()) {
            Ok(d) => self.records.push(d),
            Err(e) => tracing::warn!(error = %e, tool = %call.name, "tool_call span refused"),
        }
    }

    /// Appends the breaker's temporary block (once per turn) and withdraws the tools.
    async fn engage_breaker(&mut self) -> Result<(), ChatError> {
        if self.breaker.is_some() {
            return Ok(());
        }
        let id = Uuid::now_v7();
        let expires = self.now + BREAKER_TTL;
        let block = PromptBlock {
            id,
            name: "circuit_breaker".into(),
            layer: Layer::Task,
            priority: 71,
            version: 1,
            description: "Temporary: the turn reached its tool-call limit.".into(),
            template: BREAKER_TEXT.into(),
            source: "agent:circuit_breaker".into(),
            digest: format!("blake3:{}", blake3::hash(BREAKER_TEXT.as_bytes()).to_hex()),
        };
        let draft = Draft::from_value(
            json!({
                "id": id,
                "entity_type": "prompt_block",
                "name": "circuit_breaker",
                "visibility": "private",
                "trace_id": self.trace_id,
                "parent_id": self.run_id,
                "when": format_time(self.now),
                "who": "agent",
                "did": "engaged the circuit breaker",
                "this": format!("run {}", self.run_id),
                "confirmed_by": "agent",
                "if_ok": "the model synthesizes an answer",
                "if_doubt": "the answer is repaired once",
                "if_not": "Insufficient evidence.",
                "status": "temporary",
                "content": {
                    "layer": "task",
                    "priority": 71,
                    "template": BREAKER_TEXT,
                    "ttl_seconds": BREAKER_TTL.num_seconds(),
                    "expires_at": format_time(expires),
                    "tool_calls": self.tool_calls,
                },
            }),
            self.principal,
            &[],
            self.now,
        )
        .map_err(StoreError::Input)?;
        let appended = append_one(self.agent.writer.as_ref(), self.principal, draft).await?;
        self.emit(ChatEvent::Breaker { block_id: id }).await;
        self.breaker = Some((block, appended.seq));
        Ok(())
    }

    /// Holds this turn's proposals and asks a reviewer.
    async fn escalate(&self, answer: &Value) -> Result<Uuid, ChatError> {
        let escalation = Escalation {
            trace_id: &self.trace_id,
            run_id: self.run_id,
            conversation_id: self.conversation_id,
            question: self.message,
            answer,
            proposals: &self.proposals,
        };
        let a = self.agent;
        Ok(proposals::escalate(
            a.store.as_ref(),
            a.writer.as_ref(),
            self.principal,
            &escalation,
        )
        .await?)
    }

    /// Gives every proposal of this turn a new status (withdrawn when the turn fails).
    async fn set_proposals(&self, status: &str, why: &str) -> Result<(), StoreError> {
        let a = self.agent;
        proposals::set_all(
            a.store.as_ref(),
            a.writer.as_ref(),
            self.principal,
            &self.proposals,
            status,
            why,
        )
        .await
    }

    /// The turn's `prompt_run` span.
    fn prompt_run(&self, settled: &Settled, elapsed: Duration) -> Result<Draft, StoreError> {
        let record = TurnRecord {
            run_id: self.run_id,
            trace_id: &self.trace_id,
            at: self.now,
            conversation_id: self.conversation_id,
            message: self.message,
            variant: self.variant,
            answer: &settled.answer,
            outcome: settled.outcome,
            repair: settled.repair.map(Repair::as_str),
            repair_identical: settled.repair_identical,
            grounding: &json!({
                "ledger_question": self.ledger_question,
                "tool_evidence": self.grounded,
                "unsupported": settled.outcome == Outcome::Unsupported,
                "draft": settled.draft,
            }),
            compiled_hash: &self.compiled_hash,
            blocks: &self.blocks,
            memory: self.memory,
            provider: self.agent.provider.as_ref(),
            elapsed,
            provider_time: self.provider_time,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            tokens_cached: self.tokens_cached,
            tool_use_count: self.tool_calls,
            breaker: self.breaker.as_ref().map(|(b, _)| b.id),
            proposals: &self.proposals,
            memories: &self.memories,
        };
        Ok(prompt_run_draft(self.principal, &record)?)
    }

    /// Appends the turn's records in one commit.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let drafts = std::mem::take(&mut self.records);
        for r in self.agent.writer.append(self.principal, drafts).await? {
            r?;
        }
        Ok(())
    }
}

/// What the model is told when its answer to a ledger question rests on no tool result.
pub const GROUNDING_REPAIR: &str = "Your answer states facts about the ledger, but no tool returned evidence in this turn. Call a tool now (list, explain_decision, query_ledger, get_span, simulate_law, or propose_amendment for a change) and answer from its result. If no tool can tell, answer with confidence below 0.6 and ask a follow_up_question instead.";

/// What the model is told when its reply is not a valid answer. `gather`: no tool has given
/// evidence yet, so the model is asked to call one before answering.
fn repair_prompt(errors: &[String], gather: bool) -> String {
    let then = if gather {
        "First call a tool to get the evidence, then reply with only the JSON answer object"
    } else {
        "Reply again with only the JSON answer object"
    };
    format!(
        "Your last reply is not a valid answer:\n- {}\n{then}, citing only span ids returned by tools in this turn.",
        errors.join("\n- ")
    )
}

/// Two replies are the same when they are the same JSON value, or the same text.
fn same_reply(a: &str, b: &str) -> bool {
    let (a, b) = (strip_fences(a), strip_fences(b));
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Prompt tokens the server served from its cache (OpenAI
/// `usage.prompt_tokens_details.cached_tokens`; also read from llama.cpp's and vLLM's usage).
fn cached_tokens(raw: &Value) -> Option<u64> {
    raw.get("usage")?
        .get("prompt_tokens_details")?
        .get("cached_tokens")?
        .as_u64()
}

/// Models often wrap JSON in a Markdown fence.
fn strip_fences(s: &str) -> &str {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

impl Agent {
    /// An agent on `provider` that compiles this build's prompt files: they are published
    /// to the ledger first (a new or changed block or variant becomes a candidate seq), and
    /// the agent compiles exactly those seqs. That is an *evaluation* of the build — what
    /// `ll-eval` in process and the agent's tests run; a server swaps in the active set
    /// (`AppState::new`, [`super::candidates::load_active`]) so its chat never compiles an
    /// unevaluated prompt. `context_tokens` is the model's context window when configured
    /// (`LOGLINE_CONTEXT_TOKENS`, read by `config`); without it the budget comes from the
    /// model's name.
    pub async fn new(
        store: Arc<dyn Store>,
        writer: Arc<dyn SpanWriter>,
        provider: Arc<dyn Provider>,
        context_tokens: Option<usize>,
    ) -> anyhow::Result<Self> {
        let library = super::blocks::PromptLibrary::embedded()?;
        let (prompts, _) = library.publish(store.as_ref(), Utc::now()).await?;
        Self::with_prompts(
            store,
            writer,
            provider,
            Arc::new(LivePrompts::new(prompts)),
            context_tokens,
        )
        .await
    }

    /// An agent that compiles from `prompts` (prompt_eval's trial runs, a server's active set).
    pub async fn with_prompts(
        store: Arc<dyn Store>,
        writer: Arc<dyn SpanWriter>,
        provider: Arc<dyn Provider>,
        prompts: Arc<LivePrompts>,
        context_tokens: Option<usize>,
    ) -> anyhow::Result<Self> {
        // The manifest and the kernel spans Stage-0 checks before model calls (idempotent, as
        // at every `serve` start).
        ledger::store::ensure_manifest(store.as_ref()).await?;
        kernels::stage0::seed(store.as_ref()).await?;
        let validator = jsonschema::validator_for(prompts.current().library().answer_schema())
            .map_err(|e| anyhow::anyhow!("the answer schema does not compile: {e}"))?;
        // The offline provider reads no context window; only a model's budget is real.
        let context = context_tokens.or((provider.kind() == "offline").then_some(128_000));
        let budget = Budget::for_model(provider.model(), context);
        super::prompt::warm_up();
        record_provider(store.as_ref(), provider.as_ref()).await?;
        let variants = Picker::new(store.clone());
        Ok(Self {
            variants,
            memory: Arc::new(crate::memory::Memory::new(store.clone())),
            store,
            writer,
            provider,
            prompts,
            validator: Arc::new(validator),
            budget,
            gate: tokio::sync::Mutex::new(None),
        })
    }
}

/// The `provider` span of the node: which provider, where, which model (never a key: keys
/// live only in the environment). Once per distinct configuration.
async fn record_provider(store: &dyn Store, provider: &dyn Provider) -> Result<(), StoreError> {
    let node = ledger::store::system_principal();
    let base = provider.base_url().unwrap_or("(in process)");
    let draft = Draft::from_value(
        json!({
            "entity_type": "provider",
            "visibility": "tenant",
            "name": format!("{} {}", provider.kind(), provider.model()),
            "idempotency_key": format!("provider:{}:{}:{}", provider.kind(), base, provider.model()),
            "who": "node",
            "did": "configured a model provider",
            "this": format!("{} at {base}", provider.kind()),
            "confirmed_by": "the node's environment (LOGLINE_PROVIDER and friends)",
            "if_ok": "chat turns call it through provider_exec",
            "if_doubt": "calls are retried with backoff",
            "if_not": "turns fail with a problem document and are recorded",
            "status": "active",
            "content": {
                "kind": provider.kind(),
                "base_url": provider.base_url(),
                "model": provider.model(),
                "keys": "from the environment only",
            },
        }),
        &node,
        &[],
        Utc::now(),
    )?;
    for r in ledger::store::append(store, &node, vec![draft]).await? {
        r?;
    }
    Ok(())
}
