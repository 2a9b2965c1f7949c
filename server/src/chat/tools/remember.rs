//! `remember`: keep a fact, preference or name the user gave for later turns. The memory mode
//! of the turn decides whether anything is written and in which layer: `off` writes nothing,
//! `session-only` writes to this conversation's session layer, `on` writes the user's private
//! `temporary` layer only when the user's own message asked to remember (explicit consent for
//! that item), and the session layer otherwise.

use ledger::StoreError;
use ledger::store::memory::{MemoryLayer, Reach};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, non_empty};
use crate::memory::{Consent, MemoryError, MemoryKind, RememberRequest};

pub(super) const DESCRIPTION: &str =
    "Remember what the user asked you to remember (a fact, preference or name).";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": crate::memory::MAX_TEXT_CHARS},
            "kind": {"type": "string", "enum": ["fact", "preference", "name"]},
            "supersedes": {"type": "string", "format": "uuid"}
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MemoryKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    /// The memory span.
    pub id: Uuid,
    pub text: String,
    pub layer: MemoryLayer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<Uuid>,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let Some(m) = &ctx.memory else {
        return Ok(ToolOutput::error(
            "memory is off for this conversation (X-LogLine-Memory: off): nothing was remembered",
        ));
    };
    let text = match non_empty("text", &args.text) {
        Ok(t) => t.to_string(),
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let (layer, consent) = match (m.reach, m.explicit) {
        (Reach::All, true) => (MemoryLayer::Temporary, Consent::Explicit),
        (_, true) => (MemoryLayer::Session, Consent::Explicit),
        (_, false) => (MemoryLayer::Session, Consent::Tool),
    };
    let req = RememberRequest {
        text,
        kind: args.kind.unwrap_or_default(),
        layer,
        session_id: Some(m.session_id.clone()),
        supersedes: args.supersedes,
        consent,
        trace_id: Some(ctx.trace_id.to_string()),
    };
    match m.memory.remember(ctx.principal, req, ctx.now).await {
        Ok(item) => Ok(ToolOutput::ok(
            &Output {
                id: item.id,
                text: item.text,
                layer: item.layer,
                supersedes: item.supersedes,
            },
            vec![item.id],
        )),
        Err(MemoryError::Store(e)) => Err(e),
        Err(e) => Ok(ToolOutput::error(e.to_string())),
    }
}
