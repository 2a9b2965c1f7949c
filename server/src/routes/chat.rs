//! `POST /api/chat` (JSON or SSE), `POST /api/chat/confirm` (apply or cancel a proposed
//! amendment), `POST /api/chat/feedback` (rate an answer), `GET /api/variants` (the prompt
//! bandit's state), and the reviewers' `GET /api/reviews` / `POST /api/reviews/{id}`.

use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use kernels::contracts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::chat::agent::{self, ChatError, ChatEvent, MemoryMode, TurnRequest};
use crate::chat::bandit::active_variants;
use crate::chat::feedback::{self, Feedback, FeedbackError, Score};
use crate::chat::proposals::{self, Actor, Confirmation, Decision, ProposalError};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/chat/confirm", post(confirm))
        .route("/api/chat/feedback", post(feedback))
        .route("/api/variants", get(variants))
        .route("/api/reviews", get(reviews))
        .route("/api/reviews/{id}", post(review))
}

/// A question for the agent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// The question or request, in plain language (at most 8000 characters).
    #[schema(min_length = 1, max_length = 8000)]
    pub message: String,
    /// Continue a conversation (its earlier turns are read back); a new one when absent.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub conversation_id: Option<Uuid>,
    /// A prompt variant from `prompts/variants` (`default` when absent).
    pub variant: Option<String>,
}

/// The agent's answer: the validated JSON object of `prompts/answer.schema.json`
/// (`text`, `confidence`, `follow_up_question`, `actions`, `citations`,
/// `telemetry.tool_use_count`), or `{"error": "Insufficient evidence."}`.
#[derive(Serialize, ToSchema)]
pub struct ChatAnswer {
    /// See `prompts/answer.schema.json`.
    #[schema(value_type = Object)]
    pub answer: Value,
    #[schema(value_type = String, format = "uuid")]
    pub conversation_id: Uuid,
    /// The turn's `prompt_run` span.
    #[schema(value_type = String, format = "uuid")]
    pub run_id: Uuid,
    /// The trace every span of this turn carries.
    pub trace_id: String,
    /// `answered`, `escalated` (confidence below 0.6: a reviewer decides; nothing proposed
    /// can be applied until then), `unsupported` (a ledger question the model answered with no
    /// tool evidence: shown as a decline with a question back, and escalated) or
    /// `insufficient_evidence`.
    pub outcome: String,
    /// The `escalation_request` span, when escalated.
    #[schema(value_type = Option<String>, format = "uuid")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation_id: Option<Uuid>,
    /// Pending amendment proposals of this turn (apply with `POST /api/chat/confirm`).
    #[schema(value_type = Vec<String>)]
    pub proposals: Vec<Uuid>,
    /// What each tool returned (for tables and timelines in a UI).
    #[schema(value_type = Vec<Object>)]
    pub tool_results: Vec<Value>,
}

fn memory_mode(headers: &HeaderMap) -> Result<MemoryMode, ApiError> {
    match headers.get("x-logline-memory") {
        None => Ok(MemoryMode::Off),
        Some(v) => v.to_str().ok().and_then(MemoryMode::parse).ok_or_else(|| {
            ApiError::BadRequest("X-LogLine-Memory must be `off`, `session-only` or `on`".into())
        }),
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"))
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        use crate::chat::PromptError;
        match e {
            ChatError::BadRequest(m) => ApiError::BadRequest(m),
            ChatError::Prompt(p @ PromptError::OverBudget { .. }) => {
                ApiError::PayloadTooLarge(format!("the conversation does not fit the model: {p}"))
            }
            ChatError::Prompt(p @ PromptError::NotActive { .. }) => {
                ApiError::Unavailable(p.to_string())
            }
            ChatError::Prompt(p) => ApiError::Internal(anyhow::Error::new(p)),
            ChatError::Provider { error, run_id } => ApiError::Provider {
                status: error.api_status().max(502),
                detail: format!("the model provider failed: {error}"),
                run_id: Some(run_id),
            },
            ChatError::Store(s) => ApiError::from(s),
            ChatError::KernelRefused(why) => {
                ApiError::Unavailable(format!("model calls are switched off: {why}"))
            }
        }
    }
}

impl From<ProposalError> for ApiError {
    fn from(e: ProposalError) -> Self {
        use ProposalError as E;
        match e {
            E::NotFound(_)
            | E::ContractNotVisible(_)
            | E::NoVersions(_)
            | E::EscalationNotFound(_) => ApiError::NotFound(e.to_string()),
            E::NotAllowed { .. } => ApiError::Forbidden(e.to_string()),
            E::NotPending { .. }
            | E::NoContract(_)
            | E::Stale { .. }
            | E::NoNewContent(_)
            | E::ChangedWhileConfirming { .. }
            | E::AlreadyDecided { .. }
            | E::DecidedConcurrently { .. } => ApiError::Conflict(e.to_string()),
            E::Input(i) => ApiError::from_input(i, None),
            E::Unreadable(why) => ApiError::Internal(anyhow::anyhow!(why)),
            E::Store(s) => s.into(),
        }
    }
}

/// Who acts, as the proposals module needs it.
fn actor<'a>(state: &'a AppState, caller: &'a Caller) -> Actor<'a> {
    Actor {
        store: state.store.as_ref(),
        writer: &state.writer,
        principal: &caller.principal,
        roles: &caller.roles,
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match b {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
            "send the body as `content-type: application/json`".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(e.body_text())),
    }
}

#[utoipa::path(
    post,
    path = "/api/chat",
    tag = "chat",
    security(("bearer" = []), ()),
    params(
        ("X-LogLine-Memory" = Option<String>, Header, nullable = false,
         description = "`off` (default), `session-only` or `on`: consent for the agent to remember. Recorded with the turn."),
    ),
    request_body(content = ChatBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The answer (JSON), or with `Accept: text/event-stream` a stream of `delta`, `tool_call`, `tool_result`, `breaker`, `repair` events ending with `answer` (a ChatAnswer) or `error` (a problem document).",
         content((ChatAnswer = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Malformed body, empty or too long message, unknown variant, bad X-LogLine-Memory.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body or the conversation is too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 502, description = "The model provider failed; `run_id` names the recorded turn.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The model provider is unreachable or rate limited, or Stage-0 refuses the provider_exec kernel.", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The model provider did not answer in time.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    b: Result<Json<ChatBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req = TurnRequest {
        message: b.message,
        conversation_id: b.conversation_id,
        variant: b.variant,
        memory: memory_mode(&headers)?,
    };
    let agent = state.chat.clone();
    if !wants_sse(&headers) {
        let r = agent
            .turn(&caller.principal, &caller.roles, req, None)
            .await?;
        return Ok(Json(answer_json(r)).into_response());
    }
    // Streamed: the turn runs in its own task; a client that goes away does not stop it (the
    // turn is still recorded), it only stops receiving.
    let (tx, rx) = mpsc::channel::<ChatEvent>(64);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = agent
            .turn(&caller.principal, &caller.roles, req, Some(tx))
            .await;
        let _ = done_tx.send(r);
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
        let name = match &e {
            ChatEvent::Delta { .. } => "delta",
            ChatEvent::ToolCall { .. } => "tool_call",
            ChatEvent::ToolResult { .. } => "tool_result",
            ChatEvent::Breaker { .. } => "breaker",
            ChatEvent::Repair { .. } => "repair",
        };
        Ok::<_, Infallible>(
            Event::default()
                .event(name)
                .data(serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())),
        )
    });
    let last = futures::stream::once(async move {
        let ev = match done_rx.await {
            Ok(Ok(r)) => Event::default()
                .event("answer")
                .data(answer_json(r).to_string()),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                Event::default().event("error").data(problem_json(e).await)
            }
            Err(_) => Event::default()
                .event("error")
                .data(json!({"type": "/problems/internal", "title": "Internal Server Error", "status": 500, "detail": "the turn stopped unexpectedly"}).to_string()),
        };
        Ok::<_, Infallible>(ev)
    });
    Ok(Sse::new(events.chain(last))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn problem_json(e: ApiError) -> String {
    let resp = e.into_response();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn answer_json(r: agent::TurnResult) -> Value {
    json!(ChatAnswer {
        answer: r.answer,
        conversation_id: r.conversation_id,
        run_id: r.run_id,
        trace_id: r.trace_id,
        outcome: r.outcome.as_str().to_string(),
        escalation_id: r.escalation_id,
        proposals: r.proposals,
        tool_results: r
            .tool_results
            .into_iter()
            .map(|t| json!({"id": t.id, "name": t.name, "ok": t.ok, "result": t.result}))
            .collect(),
    })
}

/// Apply or cancel a pending amendment proposal.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    #[schema(value_type = String, format = "uuid")]
    pub proposal_id: Uuid,
    /// `apply` (default) or `cancel`.
    pub action: Option<ConfirmAction>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmAction {
    Apply,
    Cancel,
}

/// What confirming did.
#[derive(Serialize, ToSchema)]
pub struct Confirmed {
    #[schema(value_type = String, format = "uuid")]
    pub proposal_id: Uuid,
    /// `applied` or `cancelled`.
    pub status: String,
    /// The contract as it is now (after an apply: its new version).
    #[schema(value_type = Object)]
    pub contract: Value,
    /// The `contract_amendment` span (after an apply).
    #[schema(value_type = Option<String>, format = "uuid")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amendment_id: Option<Uuid>,
}

#[utoipa::path(
    post,
    path = "/api/chat/confirm",
    tag = "chat",
    security(("bearer" = []), ()),
    request_body(content = ConfirmBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied (the contract has a new version and a `contract_amendment` span records it) or cancelled.", body = Confirmed),
        (status = 400, description = "Malformed body.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not a party to the contract and not an administrator.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such proposal visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The proposal is not pending (applied, cancelled, withdrawn, rejected, or held for a reviewer), or the contract changed since it was proposed.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    b: Result<Json<ConfirmBody>, JsonRejection>,
) -> Result<Json<Confirmed>, ApiError> {
    let b = body(b)?;
    let id = b.proposal_id;
    let actor = actor(&state, &caller);
    let done = match b.action {
        Some(ConfirmAction::Cancel) => proposals::cancel(actor, id).await?,
        Some(ConfirmAction::Apply) | None => proposals::apply(actor, id).await?,
    };
    let Confirmation {
        status,
        contract,
        amendment_id,
    } = done;
    Ok(Json(Confirmed {
        proposal_id: id,
        status: status.into(),
        contract: contract.as_ref().map_or(Value::Null, contract_view),
        amendment_id,
    }))
}

fn contract_view(v: &contracts::ContractVersion) -> Value {
    json!({
        "id": v.id,
        "seq": v.seq,
        "name": v.label(),
        "state": v.state().map(contracts::State::as_str),
        "deadline_at": v.content.get("deadline_at"),
        "title": v.content.get("title"),
        "curr_hash": v.curr_hash,
    })
}

/// Reviews (escalations, requests to keep a memory permanently) need a reviewer.
pub(crate) fn require_reviewer(caller: &Caller) -> Result<(), ApiError> {
    if caller.roles.iter().any(|r| r == "reviewer" || r == "admin") {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "reviewing needs the `reviewer` or `admin` role".into(),
        ))
    }
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
pub struct ReviewQuery {
    /// `open` (default), `approved`, `rejected` or `all`.
    pub status: Option<String>,
}

/// Escalation requests of the caller's tenant.
#[derive(Serialize, ToSchema)]
pub struct Reviews {
    #[schema(value_type = Vec<Object>)]
    pub reviews: Vec<Value>,
}

#[utoipa::path(
    get,
    path = "/api/reviews",
    tag = "chat",
    security(("bearer" = []), ()),
    params(ReviewQuery),
    responses(
        (status = 200, description = "Escalation requests, newest first (latest version of each).", body = Reviews),
        (status = 400, description = "Unknown status filter.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller has neither the `reviewer` nor the `admin` role.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn reviews(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ReviewQuery>,
) -> Result<Json<Reviews>, ApiError> {
    require_reviewer(&caller)?;
    let want = q.status.as_deref().unwrap_or("open");
    if !["open", "approved", "rejected", "all"].contains(&want) {
        return Err(ApiError::BadRequest(
            "`status` must be open, approved, rejected or all".into(),
        ));
    }
    let status = (want != "all").then_some(want);
    let reviews = proposals::escalations(state.store.as_ref(), &caller.principal, status).await?;
    Ok(Json(Reviews { reviews }))
}

/// A reviewer's decision on an escalation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub decision: ReviewDecision,
    /// Why, for the record.
    #[schema(max_length = 2000)]
    pub note: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    Approve,
    Reject,
}

/// What the decision did.
#[derive(Serialize, ToSchema)]
pub struct Reviewed {
    #[schema(value_type = String, format = "uuid")]
    pub escalation_id: Uuid,
    /// The `review_decision` span.
    #[schema(value_type = String, format = "uuid")]
    pub review_id: Uuid,
    /// `approved` or `rejected`.
    pub status: String,
    /// Proposals released for confirmation (approve) or rejected.
    #[schema(value_type = Vec<String>)]
    pub proposals: Vec<Uuid>,
}

#[utoipa::path(
    post,
    path = "/api/reviews/{id}",
    tag = "chat",
    security(("bearer" = []), ()),
    params(("id" = String, Path, format = "uuid", description = "The escalation_request span.")),
    request_body(content = ReviewBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided: a `review_decision` span is appended and the escalation closed.", body = Reviewed),
        (status = 400, description = "Malformed body or id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller has neither the `reviewer` nor the `admin` role.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such escalation visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already decided.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Json<ReviewBody>, JsonRejection>,
) -> Result<Json<Reviewed>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a UUID")))?;
    let b = body(b)?;
    require_reviewer(&caller)?;
    let decision = match b.decision {
        ReviewDecision::Approve => Decision::Approve,
        ReviewDecision::Reject => Decision::Reject,
    };
    let decided = proposals::decide(actor(&state, &caller), id, decision, b.note).await?;
    Ok(Json(Reviewed {
        escalation_id: id,
        review_id: decided.review_id,
        status: decided.status.into(),
        proposals: decided.proposals,
    }))
}

/// A rating of one chat answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The answer's `run_id` (its `prompt_run` span), as `POST /api/chat` returned it.
    #[schema(value_type = String, format = "uuid")]
    pub run_id: Uuid,
    /// `"up"`, `"down"`, or a number from 0 (bad) to 1 (good).
    #[schema(value_type = Object)]
    pub score: Value,
    /// Why, in the user's words (at most 2000 characters).
    #[schema(max_length = 2000)]
    pub comment: Option<String>,
}

/// The recorded rating.
#[derive(Serialize, ToSchema)]
pub struct FeedbackRecorded {
    /// The `feedback` span (the same id for every vote of a user on a run).
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    /// 0 for a first vote; a later vote is the next seq and supersedes it.
    pub seq: i64,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: Uuid,
    /// As given: `"up"`, `"down"` or a number.
    #[schema(value_type = Object)]
    pub score: Value,
    /// The prompt variant the rated answer used.
    pub variant: Option<String>,
}

impl From<FeedbackError> for ApiError {
    fn from(e: FeedbackError) -> Self {
        use FeedbackError as E;
        match e {
            E::BadScore(_) | E::CommentTooLong => ApiError::BadRequest(e.to_string()),
            E::RunNotFound(_) => ApiError::NotFound(e.to_string()),
            E::NotARun { .. } => ApiError::Unprocessable {
                detail: e.to_string(),
                line: None,
            },
            E::NotYours(_) => ApiError::Forbidden(e.to_string()),
            E::Store(s) => s.into(),
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/chat/feedback",
    tag = "chat",
    security(("bearer" = []), ()),
    request_body(content = FeedbackBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded as a private `feedback` span related to the run; a second vote on the same run supersedes the first (next seq).", body = FeedbackRecorded),
        (status = 400, description = "Malformed body, a score that is not up, down or a number from 0 to 1, or a comment too long.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The run was asked by another user.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No chat run of the caller's with this id (it does not exist, or it is another user's or another tenant's).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another vote on the same run was recorded at the same moment; send it again.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id names a span that is not a chat run.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn feedback(
    State(state): State<AppState>,
    caller: Caller,
    b: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Json<FeedbackRecorded>, ApiError> {
    let b = body(b)?;
    let score = Score::parse(&b.score)?;
    let f = Feedback {
        run_id: b.run_id,
        score,
        comment: b.comment,
    };
    let r = feedback::record(state.store.as_ref(), &state.writer, &caller.principal, &f).await?;
    Ok(Json(FeedbackRecorded {
        id: r.id,
        seq: r.seq,
        run_id: b.run_id,
        score: score.to_json(),
        variant: r.variant,
    }))
}

/// One prompt variant as the bandit sees it.
#[derive(Serialize, ToSchema)]
pub struct VariantState {
    pub name: String,
    /// Offered to new conversations (a variant of the prompt library, not dropped).
    pub eligible: bool,
    /// Rewarded runs.
    pub samples: u64,
    /// Their mean reward (null without samples).
    pub mean_reward: Option<f64>,
    /// The Beta posterior of its reward.
    pub alpha: f64,
    pub beta: f64,
    /// The chance a new conversation that names no variant gets it now.
    pub probability: f64,
    /// Dropped by the guardrail (failure share above the limit).
    pub dropped: bool,
}

/// The prompt bandit's state.
#[derive(Serialize, ToSchema)]
pub struct Variants {
    pub variants: Vec<VariantState>,
    /// The promoted variant every new conversation gets, if any.
    pub promoted: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/variants",
    tag = "chat",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "Every prompt variant with its samples, posterior and current probability (the prompt_bandit kernel's state, refreshed from the ledger first).", body = Variants),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn variants(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Variants>, ApiError> {
    let eligible = active_variants(&state.chat.prompts.current());
    let (status, _refused) = state.chat.variants.status(&eligible).await?;
    Ok(Json(Variants {
        variants: status
            .variants
            .into_iter()
            .map(|v| VariantState {
                name: v.name,
                eligible: v.eligible,
                samples: v.samples,
                mean_reward: v.mean_reward,
                alpha: v.alpha,
                beta: v.beta,
                probability: v.probability,
                dropped: v.dropped,
            })
            .collect(),
        promoted: status.promoted,
    }))
}
