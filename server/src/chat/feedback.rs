//! Feedback on a chat answer (issue 11): thumbs or a score in `[0, 1]` on one turn, by the user
//! who asked it, as a private `feedback` span related to the turn's `prompt_run`. The bandit
//! reads it as the run's reward (`kernels::prompt_bandit`).
//!
//! Only the asker may rate a run: the run must be a `prompt_run` the caller can see, of the
//! caller's tenant and owned by the caller. A prompt run is private, so another user's or
//! another tenant's run reads as not found (nothing says it exists); a visible run that is not
//! the caller's (e.g. one written with `tenant` visibility) is refused as such. One vote per
//! user and run: a second vote is the next `seq` of the same span and supersedes the first.

use ledger::query::{Filter, Order};
use ledger::span::format_time;
use ledger::{Draft, Principal, Store, StoreError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::proposals::next_seq;
use super::record::{SpanWriter, append_one};
use kernels::prompt_bandit::FEEDBACK;

/// Longest comment.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// A rating, already checked at the edge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Score {
    Up,
    Down,
    /// In `[0, 1]`.
    Value(f64),
}

impl Score {
    /// `"up"`, `"down"` or a number from 0 to 1.
    pub fn parse(v: &Value) -> Result<Self, FeedbackError> {
        match v {
            Value::String(s) if s == "up" => Ok(Self::Up),
            Value::String(s) if s == "down" => Ok(Self::Down),
            Value::Number(n) => match n.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => Ok(Self::Value(x)),
                _ => Err(FeedbackError::BadScore(v.to_string())),
            },
            other => Err(FeedbackError::BadScore(other.to_string())),
        }
    }

    /// As recorded (the bandit reads it back with `prompt_bandit::feedback_score`).
    pub fn to_json(self) -> Value {
        match self {
            Self::Up => json!("up"),
            Self::Down => json!("down"),
            Self::Value(x) => json!(x),
        }
    }

    /// The reward it stands for.
    pub fn reward(self) -> f64 {
        match self {
            Self::Up => 1.0,
            Self::Down => 0.0,
            Self::Value(x) => x,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("`score` must be \"up\", \"down\" or a number from 0 to 1, not {0}")]
    BadScore(String),
    #[error("`comment` is longer than {MAX_COMMENT_CHARS} characters")]
    CommentTooLong,
    #[error("no chat run {0} of yours: feedback rates a run you asked")]
    RunNotFound(Uuid),
    #[error("span {id} is a `{kind}`, not a chat run (`prompt_run`)")]
    NotARun { id: Uuid, kind: String },
    #[error("chat run {0} was asked by another user; only its asker may rate it")]
    NotYours(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rating to record.
#[derive(Clone, Debug)]
pub struct Feedback {
    pub run_id: Uuid,
    pub score: Score,
    pub comment: Option<String>,
}

/// What recording did.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The `feedback` span.
    pub id: Uuid,
    /// Its seq: 0 for a first vote, more when it supersedes an earlier one.
    pub seq: i64,
    /// The variant the rated run used.
    pub variant: Option<String>,
}

/// Records `principal`'s rating of one of their runs.
pub async fn record(
    store: &dyn Store,
    writer: &dyn SpanWriter,
    principal: &Principal,
    f: &Feedback,
) -> Result<Recorded, FeedbackError> {
    if f.comment
        .as_deref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        return Err(FeedbackError::CommentTooLong);
    }
    let run = store
        .get(principal, f.run_id, None)
        .await?
        .ok_or(FeedbackError::RunNotFound(f.run_id))?;
    let run = run.to_view().map_err(StoreError::Corrupt)?;
    let text = |k: &str| run.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("entity_type") != "prompt_run" {
        return Err(FeedbackError::NotARun {
            id: f.run_id,
            kind: text("entity_type").to_string(),
        });
    }
    if text("tenant_id") != principal.tenant_id || text("owner_id") != principal.user_id {
        return Err(FeedbackError::NotYours(f.run_id));
    }
    let variant = run
        .pointer("/content/variant")
        .and_then(Value::as_str)
        .map(str::to_string);
    let conversation = run.pointer("/content/conversation_id").cloned();
    let now = chrono::Utc::now();
    let fresh = json!({
        "entity_type": FEEDBACK,
        "visibility": "private",
        "related_to": [f.run_id],
        "trace_id": run.get("trace_id"),
        "when": format_time(now),
        "who": principal.user_id,
        "did": "rated an answer",
        "this": format!("chat run {}", f.run_id),
        "confirmed_by": principal.user_id,
        "if_ok": "the run's variant is rewarded accordingly",
        "if_doubt": "a later vote supersedes this one",
        "if_not": "the run's reward is derived from how it ended",
        "status": "recorded",
        "content": {
            "run_id": f.run_id,
            "score": f.score.to_json(),
            "reward": f.score.reward(),
            "comment": f.comment,
            "variant": variant,
            "conversation_id": conversation,
        },
    });
    // A run has one owner, so one vote span: its first version takes an id derived from the
    // run, and two first votes sent at once collide on it instead of becoming two votes. The
    // one that loses reads the winner and appends the next version.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let span = match earlier_vote(store, principal, f.run_id).await? {
            Some(prev) => {
                let mut next = next_seq(&prev, principal, json!({}));
                for k in ["when", "status", "content", "did"] {
                    next[k] = fresh[k].clone();
                }
                next["did"] = json!("changed a rating");
                next
            }
            None => {
                let mut first = fresh.clone();
                first["id"] = json!(vote_id(f.run_id));
                first
            }
        };
        let draft = Draft::from_value(span, principal, &[], now).map_err(StoreError::Input)?;
        match append_one(writer, principal, draft).await {
            Ok(a) => {
                return Ok(Recorded {
                    id: a.id,
                    seq: a.seq,
                    variant,
                });
            }
            Err(StoreError::Append(_)) if attempts < 4 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The id of the vote span on `run` (a UUIDv8 from BLAKE3 of the run id).
pub fn vote_id(run: Uuid) -> Uuid {
    let hash = blake3::hash(format!("logline feedback v1:{run}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The caller's latest vote on a run, if any.
async fn earlier_vote(
    store: &dyn Store,
    principal: &Principal,
    run: Uuid,
) -> Result<Option<Value>, StoreError> {
    let filter = Filter {
        entity_type: Some(FEEDBACK.into()),
        related_to: Some(run),
        owner_id: Some(principal.user_id.clone()),
        tenant_id: Some(principal.tenant_id.clone()),
        order: Order::Desc,
        limit: Some(1),
        ..Filter::default()
    };
    let page = store.query(principal, &filter).await?;
    Ok(match page.rows.first() {
        Some(row) => Some(row.span.to_view().map_err(StoreError::Corrupt)?),
        None => None,
    })
}
