//! `list_contracts`: the contracts the caller may see, optionally in one state. A generic
//! `query_ledger` can answer "which contracts are on hold?" only if the model knows that a
//! contract's state lives at `content.state` and is spelled `held`; small models guess
//! (`status: "on_hold"`), match nothing and report that none exist. Here the state is an enum
//! the schema enforces, and every result carries the counts per state, so an empty list reads
//! as "0 held of 5", never as "there are none".

use std::collections::BTreeMap;

use kernels::contracts::{self, State};
use ledger::StoreError;
use ledger::spec::{QuerySpec, SpecResult};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, id_of};

/// Most contracts listed; the counts still cover all of them.
const MAX_LISTED: i64 = 50;

pub(super) const DESCRIPTION: &str = "List the contracts you may see (name, title, state, deadline), optionally only one state; \
     held = on hold.";

const STATES: [State; 5] = [
    State::Active,
    State::Accepted,
    State::Held,
    State::Terminated,
    State::Void,
];

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "state": {"type": "string", "enum": STATES.map(State::as_str)}
        }
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Only contracts whose latest version is in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

/// Optional fields let a reader cope with less than a full result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    pub contracts: Vec<Listed>,
    /// Every contract the caller may see, counted by state (not only the listed ones).
    pub by_state: BTreeMap<String, i64>,
    /// More matched than [`MAX_LISTED`].
    pub truncated: bool,
}

/// One contract's latest version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Listed {
    pub id: Option<Uuid>,
    pub name: Option<Value>,
    pub title: Option<Value>,
    pub state: Option<Value>,
    /// When the latest version was written (for a final state: when it was reached).
    pub since: Option<Value>,
    pub deadline_at: Option<Value>,
}

/// The two queries are fixed shapes, so a refusal here is a bug, reported to the model as a
/// tool error rather than failing the turn.
fn spec(ctx: &ToolContext<'_>, json: Value) -> Result<QuerySpec, String> {
    QuerySpec::from_json(&json, ctx.now).map_err(|e| format!("list_contracts: {e}"))
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let mut rows = json!({"entity_type": contracts::ENTITY_TYPE, "latest_only": true,
                          "order": "desc", "limit": MAX_LISTED});
    if let Some(state) = args.state {
        rows["where"] = json!([{"path": "content.state", "op": "eq", "value": state.as_str()}]);
    }
    let counts = json!({"entity_type": contracts::ENTITY_TYPE, "latest_only": true,
                        "group_by": "content.state"});
    let (rows, counts) = match (spec(ctx, rows), spec(ctx, counts)) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return Ok(ToolOutput::error(e)),
    };
    let listed = ctx.store.query_spec(ctx.principal, &rows).await?;
    let counts = ctx.store.query_spec(ctx.principal, &counts).await?;
    let mut out = Output::default();
    if let SpecResult::Rows { spans, truncated } = listed {
        out.truncated = truncated;
        for s in spans {
            let Ok(v) = s.to_view() else { continue };
            let content = v.get("content").cloned().unwrap_or(Value::Null);
            out.contracts.push(Listed {
                id: id_of(&v),
                name: v.get("name").cloned(),
                title: content.get("title").cloned(),
                state: content.get("state").cloned(),
                since: v.get("at").cloned(),
                deadline_at: content.get("deadline_at").cloned(),
            });
        }
    }
    if let SpecResult::Groups(groups) = counts {
        for (key, n) in groups {
            let key = key
                .as_str()
                .map_or_else(|| "unknown".to_string(), str::to_string);
            *out.by_state.entry(key).or_default() += n;
        }
    }
    let cited = out.contracts.iter().filter_map(|c| c.id).collect();
    Ok(ToolOutput::ok(&out, cited))
}
