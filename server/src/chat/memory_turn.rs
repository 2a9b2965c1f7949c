//! Memory in a chat turn, as the `X-LogLine-Memory` mode allows it: `off` reads and writes
//! nothing; `session-only` recalls and records only this conversation's session layer; `on`
//! recalls the session, then the user's own, the tenant's and public items. Recalled items go
//! into the `turn` prompt block with their span ids (citable in this turn's answer), and each
//! turn leaves a short record in the session layer. A memory failure never fails the turn: it
//! is logged and the turn runs without memory.

use chrono::{DateTime, Utc};
use ledger::Principal;
use ledger::store::memory::{MemoryLayer, Reach};
use uuid::Uuid;

use super::record::MemoryMode;
use crate::memory::{Consent, Memory, MemoryKind, RECALL_K, RememberRequest};

/// Longest part of a message kept in the turn record.
const TURN_RECORD_CHARS: usize = 200;

/// How far a mode reaches; `None` for `off`.
pub fn reach(mode: MemoryMode) -> Option<Reach> {
    match mode {
        MemoryMode::Off => None,
        MemoryMode::SessionOnly => Some(Reach::Session),
        MemoryMode::On => Some(Reach::All),
    }
}

/// Whether the user's own message asks to remember something ("remember that …").
pub fn asks_to_remember(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "remember that",
        "remember this",
        "remember my",
        "please remember",
        "remember:",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// What recall put into a turn.
#[derive(Debug, Default)]
pub struct Recall {
    /// One line per item for the `turn` block: `` `<span id>` (layer): text ``.
    pub lines: Vec<String>,
    pub ids: Vec<Uuid>,
}

/// The items most relevant to `message` in the mode's scope.
pub async fn recall(
    memory: &Memory,
    principal: &Principal,
    mode: MemoryMode,
    conversation_id: Uuid,
    message: &str,
    now: DateTime<Utc>,
) -> Recall {
    let Some(reach) = reach(mode) else {
        return Recall::default();
    };
    let session = conversation_id.to_string();
    match memory
        .recall(principal, reach, Some(&session), message, RECALL_K, now)
        .await
    {
        Ok(items) => Recall {
            lines: items
                .iter()
                .map(|r| {
                    // One line each: a remembered newline must not open a new prompt section.
                    let text: String = r.item.text.split_whitespace().collect::<Vec<_>>().join(" ");
                    format!("`{}` ({}): {text}", r.item.id, r.item.layer.as_str())
                })
                .collect(),
            ids: items.iter().map(|r| r.item.id).collect(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "memory recall failed; the turn runs without memory");
            Recall::default()
        }
    }
}

/// The short record of a turn in the session layer (nothing when memory is off).
pub async fn record(
    memory: &Memory,
    principal: &Principal,
    mode: MemoryMode,
    conversation_id: Uuid,
    message: &str,
    trace_id: &str,
    now: DateTime<Utc>,
) {
    if reach(mode).is_none() {
        return;
    }
    let excerpt: String = message.chars().take(TURN_RECORD_CHARS).collect();
    let req = RememberRequest {
        text: format!("The user asked: {excerpt}"),
        kind: MemoryKind::Turn,
        layer: MemoryLayer::Session,
        session_id: Some(conversation_id.to_string()),
        supersedes: None,
        consent: Consent::TurnRecord,
        trace_id: Some(trace_id.to_string()),
    };
    if let Err(e) = memory.remember(principal, req, now).await {
        tracing::warn!(error = %e, "the turn's memory record was not written");
    }
}
