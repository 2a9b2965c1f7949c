//! `recall_memory`: what the user asked to be remembered, within the turn's memory scope
//! (`session-only`: this conversation; `on`: this conversation, the user's own, the tenant's,
//! public). An empty query lists the user's items, newest first.

use ledger::StoreError;
use ledger::store::memory::MemoryLayer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput};
use crate::memory::{MemoryError, MemoryKind, RECALL_K};

pub(super) const DESCRIPTION: &str =
    "Recall what the user asked you to remember; cite the ids you rely on.";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "query": {"type": "string", "maxLength": 500}
        }
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(default)]
    pub query: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub id: Uuid,
    pub text: String,
    pub kind: MemoryKind,
    pub layer: MemoryLayer,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub items: Vec<Item>,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let Some(m) = &ctx.memory else {
        return Ok(ToolOutput::error(
            "memory is off for this conversation (X-LogLine-Memory: off): nothing is recalled",
        ));
    };
    let found = m
        .memory
        .recall(
            ctx.principal,
            m.reach,
            Some(&m.session_id),
            &args.query,
            RECALL_K * 2,
            ctx.now,
        )
        .await;
    let mut items: Vec<Item> = match found {
        Ok(r) => r
            .into_iter()
            .map(|r| r.item)
            .filter(|i| i.kind != MemoryKind::Turn)
            .map(|i| Item {
                id: i.id,
                text: i.text,
                kind: i.kind,
                layer: i.layer,
                created_at: ledger::span::format_time(i.created_at),
            })
            .collect(),
        Err(MemoryError::Store(e)) => return Err(e),
        Err(e) => return Ok(ToolOutput::error(e.to_string())),
    };
    items.truncate(RECALL_K);
    let cites = items.iter().map(|i| i.id).collect();
    Ok(ToolOutput::ok(&Output { items }, cites))
}
