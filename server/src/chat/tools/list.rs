//! `list`: contracts (optionally in one state), laws, or the newest law decisions, as the
//! caller may see them. A generic `query_ledger` answers "which contracts are on hold?" only
//! if the model knows that a contract's state lives at `content.state` and is spelled `held`;
//! small models guess (`status: "on_hold"`), match nothing and report that none exist. Here
//! kind and state are enums the schema enforces, and a contract list carries the counts per
//! state, so an empty list reads as "0 held of 5", never as "there are none".

use std::collections::BTreeMap;

use kernels::contracts::{self, State};
use kernels::midnight_ruler;
use ledger::StoreError;
use ledger::spec::{QuerySpec, SpecResult};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, id_of};

/// Most items listed; contract counts still cover all of them.
const MAX_LISTED: i64 = 50;
/// Newest decisions listed: enough for the last few midnights of a small tenant.
const MAX_DECISIONS: i64 = 20;

pub(super) const DESCRIPTION: &str =
    "List contracts (optionally by state; held = on hold), laws, or the newest midnight decisions.";

const STATES: [State; 5] = [
    State::Active,
    State::Accepted,
    State::Held,
    State::Terminated,
    State::Void,
];

/// What to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Contracts,
    Laws,
    Decisions,
}

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": ["contracts", "laws", "decisions"]},
            "state": {"type": "string", "enum": STATES.map(State::as_str)}
        }
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(default)]
    pub kind: Kind,
    /// Contracts only (ignored otherwise): those whose latest version is in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

/// Optional fields let a reader cope with less than a full result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contracts: Option<Vec<Listed>>,
    /// Every contract the caller may see, counted by state (not only the listed ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_state: Option<BTreeMap<String, i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub laws: Option<Vec<LawItem>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Vec<DecisionItem>>,
    /// More matched than were listed.
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

/// One law's latest version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LawItem {
    pub id: Option<Uuid>,
    pub name: Option<Value>,
    pub status: Option<Value>,
    pub seq: Option<i64>,
    pub description: Option<Value>,
}

/// One `law.decision` span, in brief (`explain_decision` gives the whole story).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionItem {
    pub id: Option<Uuid>,
    pub at: Option<Value>,
    pub contract: Option<Value>,
    pub law: Option<Value>,
    pub triage: Option<Value>,
    pub actions: Option<Value>,
}

/// The queries are fixed shapes, so a refusal here is a bug, reported to the model as a tool
/// error rather than failing the turn.
fn spec(ctx: &ToolContext<'_>, json: Value) -> Result<QuerySpec, String> {
    QuerySpec::from_json(&json, ctx.now).map_err(|e| format!("list: {e}"))
}

/// The rows of a row query, as views.
async fn rows(
    ctx: &ToolContext<'_>,
    json: Value,
) -> Result<Result<(Vec<Value>, bool), String>, StoreError> {
    let spec = match spec(ctx, json) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(
        match ctx.store.query_spec(ctx.principal, &spec).await? {
            SpecResult::Rows { spans, truncated } => (
                spans.iter().filter_map(|s| s.to_view().ok()).collect(),
                truncated,
            ),
            _ => (Vec::new(), false),
        },
    ))
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    // `state` means a contract state; with laws or decisions it is ignored rather than refused
    // (Qwen2.5-1.5B sent `{"kind": "laws", "state": "active"}` and gave up on the error).
    match args.kind {
        Kind::Contracts => contracts_list(ctx, args.state).await,
        Kind::Laws => laws_list(ctx).await,
        Kind::Decisions => decisions_list(ctx).await,
    }
}

async fn contracts_list(
    ctx: &ToolContext<'_>,
    state: Option<State>,
) -> Result<ToolOutput, StoreError> {
    let mut query = json!({"entity_type": contracts::ENTITY_TYPE, "latest_only": true,
                           "order": "desc", "limit": MAX_LISTED});
    if let Some(state) = state {
        query["where"] = json!([{"path": "content.state", "op": "eq", "value": state.as_str()}]);
    }
    let (views, truncated) = match rows(ctx, query).await? {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let counts = json!({"entity_type": contracts::ENTITY_TYPE, "latest_only": true,
                        "group_by": "content.state"});
    let counts = match spec(ctx, counts) {
        Ok(c) => ctx.store.query_spec(ctx.principal, &c).await?,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let listed: Vec<Listed> = views
        .iter()
        .map(|v| {
            let content = v.get("content").cloned().unwrap_or(Value::Null);
            Listed {
                id: id_of(v),
                name: v.get("name").cloned(),
                title: content.get("title").cloned(),
                state: content.get("state").cloned(),
                since: v.get("at").cloned(),
                deadline_at: content.get("deadline_at").cloned(),
            }
        })
        .collect();
    let mut by_state = BTreeMap::new();
    if let SpecResult::Groups(groups) = counts {
        for (key, n) in groups {
            let key = key
                .as_str()
                .map_or_else(|| "unknown".to_string(), str::to_string);
            *by_state.entry(key).or_default() += n;
        }
    }
    let cited = listed.iter().filter_map(|c| c.id).collect();
    // "None of the 5 is void" rests on the counts, which cite no span.
    let counted = !by_state.is_empty();
    let out = Output {
        contracts: Some(listed),
        by_state: Some(by_state),
        truncated,
        ..Output::default()
    };
    Ok(ToolOutput::ok(&out, cited).evidence(counted))
}

async fn laws_list(ctx: &ToolContext<'_>) -> Result<ToolOutput, StoreError> {
    let query = json!({"entity_type": midnight_ruler::LAW, "latest_only": true,
                       "order": "desc", "limit": MAX_LISTED});
    let (views, truncated) = match rows(ctx, query).await? {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let laws: Vec<LawItem> = views
        .iter()
        .map(|v| LawItem {
            id: id_of(v),
            name: v.get("name").cloned(),
            status: v.get("status").cloned(),
            seq: v.get("seq").and_then(Value::as_i64),
            description: v.get("description").cloned().filter(|d| !d.is_null()),
        })
        .collect();
    let cited = laws.iter().filter_map(|l| l.id).collect();
    let out = Output {
        laws: Some(laws),
        truncated,
        ..Output::default()
    };
    Ok(ToolOutput::ok(&out, cited))
}

async fn decisions_list(ctx: &ToolContext<'_>) -> Result<ToolOutput, StoreError> {
    let query = json!({"entity_type": midnight_ruler::DECISION, "order": "desc",
                       "limit": MAX_DECISIONS});
    let (views, truncated) = match rows(ctx, query).await? {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let decisions: Vec<DecisionItem> = views
        .iter()
        .map(|v| {
            let c = v.get("content").cloned().unwrap_or(Value::Null);
            DecisionItem {
                id: id_of(v),
                at: v.get("at").cloned(),
                contract: c.pointer("/contract/name").cloned(),
                law: c.pointer("/law/id").cloned(),
                triage: c.get("triage").cloned(),
                actions: c.get("actions").cloned(),
            }
        })
        .collect();
    let cited = decisions.iter().filter_map(|d| d.id).collect();
    let out = Output {
        decisions: Some(decisions),
        truncated,
        ..Output::default()
    };
    Ok(ToolOutput::ok(&out, cited))
}
