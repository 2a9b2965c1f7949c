//! `get_span`: read one span by id, the latest version or a given seq.

use ledger::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{SpanBrief, ToolContext, ToolOutput};

pub(super) const DESCRIPTION: &str = "Read one span by id (latest version, or `seq`).";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "seq": {"type": "integer", "minimum": 0}
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub span: SpanBrief,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let Args { id, seq } = args;
    if seq.is_some_and(|s| s < 0) {
        return Ok(ToolOutput::error("`seq` must be a non-negative integer"));
    }
    let Some(span) = ctx.store.get(ctx.principal, id, seq).await? else {
        // The id is not repeated: an error must not confirm anything about other tenants.
        return Ok(ToolOutput::error(format!(
            "no span with that id{} that you may see",
            seq.map(|s| format!(" and seq {s}")).unwrap_or_default()
        )));
    };
    match span.to_view() {
        Ok(v) => Ok(ToolOutput::ok(
            &Output {
                span: SpanBrief::of(&v),
            },
            vec![id],
        )),
        Err(e) => Ok(ToolOutput::error(format!("span {id} is unreadable: {e}"))),
    }
}
