//! The typed tools a model may call in a chat turn (DESIGN §7.3). The model never writes SQL:
//! every tool takes JSON arguments that are validated here, and every read runs through the
//! store with the caller's principal, so a tool sees exactly what the caller may see.
//!
//! One file per tool holds its name-independent parts in one place: the argument type
//! (`Args`, `deny_unknown_fields`), the JSON schema and description models are shown, the
//! result type (`Output`) and the code. [`ToolName`] is the only place a tool's name is spelled.
//! The agent dispatches through [`run`], models see [`specs`], and the offline provider both
//! builds `Args` and reads `Output` with these same types.
//!
//! A tool never fails the turn: bad arguments, unknown contracts or refused permissions come
//! back to the model as `{"error": "…"}` so it can correct itself or say so. Each result also
//! lists the span ids it returned ([`ToolOutput::citable`]): the only ids an answer may cite.

pub mod explain_decision;
pub mod get_span;
pub mod list;
pub mod propose_amendment;
pub mod query_ledger;
pub mod recall_memory;
pub mod remember;
pub mod simulate_law;

use chrono::{DateTime, Utc};
use kernels::contracts;
use ledger::spec::{QuerySpec, SpecResult};
use ledger::{Principal, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::providers::{ToolCall, ToolSpec};
use super::record::SpanWriter;

pub use super::proposals::{AMENDMENT, PROPOSAL, may_amend};

/// Longest tool result (JSON text) handed back to the model; larger results are cut and say so.
pub const MAX_RESULT_BYTES: usize = 48 * 1024;
/// Longest `content` of one span inside a `query_ledger` or `get_span` result.
const MAX_CONTENT_BYTES: usize = 4 * 1024;

/// The tools, by name: the one place their names are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolName {
    QueryLedger,
    List,
    GetSpan,
    ExplainDecision,
    ProposeAmendment,
    SimulateLaw,
    Remember,
    RecallMemory,
}

impl ToolName {
    /// Every tool, in the order models are shown them.
    pub const ALL: [Self; 8] = [
        Self::QueryLedger,
        Self::List,
        Self::GetSpan,
        Self::ExplainDecision,
        Self::ProposeAmendment,
        Self::SimulateLaw,
        Self::Remember,
        Self::RecallMemory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueryLedger => "query_ledger",
            Self::List => "list",
            Self::GetSpan => "get_span",
            Self::ExplainDecision => "explain_decision",
            Self::ProposeAmendment => "propose_amendment",
            Self::SimulateLaw => "simulate_law",
            Self::Remember => "remember",
            Self::RecallMemory => "recall_memory",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn spec(self) -> ToolSpec {
        let (description, parameters) = match self {
            Self::QueryLedger => (query_ledger::DESCRIPTION, query_ledger::schema()),
            Self::List => (list::DESCRIPTION, list::schema()),
            Self::GetSpan => (get_span::DESCRIPTION, get_span::schema()),
            Self::ExplainDecision => (explain_decision::DESCRIPTION, explain_decision::schema()),
            Self::ProposeAmendment => (propose_amendment::DESCRIPTION, propose_amendment::schema()),
            Self::SimulateLaw => (simulate_law::DESCRIPTION, simulate_law::schema()),
            Self::Remember => (remember::DESCRIPTION, remember::schema()),
            Self::RecallMemory => (recall_memory::DESCRIPTION, recall_memory::schema()),
        };
        ToolSpec {
            name: self.as_str().into(),
            description: description.into(),
            parameters,
        }
    }
}

impl std::fmt::Display for ToolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, and when.
pub struct ToolContext<'a> {
    pub store: &'a dyn Store,
    pub writer: &'a dyn SpanWriter,
    pub principal: &'a Principal,
    pub roles: &'a [String],
    pub now: DateTime<Utc>,
    /// The turn's trace id: proposals hang in it.
    pub trace_id: &'a str,
    /// The user's message of this turn: whether a proposal may be made is read from it, not
    /// from the model's arguments.
    pub request: &'a str,
    /// Memory as the turn's `X-LogLine-Memory` mode allows it; `None` when it is `off`.
    pub memory: Option<MemoryAccess<'a>>,
}

/// What the memory tools may reach in this turn.
pub struct MemoryAccess<'a> {
    pub memory: &'a crate::memory::Memory,
    /// `session-only` → [`Reach::Session`](ledger::store::memory::Reach), `on` → `All`.
    pub reach: ledger::store::memory::Reach,
    /// The conversation.
    pub session_id: String,
    /// The user's own message asked to remember something (consent for that item).
    pub explicit: bool,
}

/// What one call produced.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The JSON handed back to the model.
    pub result: Value,
    /// Ids of spans this result showed the caller (all read with the caller's visibility).
    pub citable: Vec<Uuid>,
    /// Set when the call was refused or failed; the model sees it as `{"error": …}`.
    pub error: Option<String>,
    /// A proposal this call created.
    pub proposal: Option<Uuid>,
    /// The result shows something an answer can rest on: spans, a proposal, a non-zero count.
    /// A call that ran but matched nothing is not evidence (small models read an empty result
    /// from a wrong filter as "there are none").
    pub evidence: bool,
}

/// A refused or failed call, as the model sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolError {
    pub error: Value,
}

/// What the model sees instead of a result longer than [`MAX_RESULT_BYTES`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truncated {
    pub truncated: bool,
    pub note: String,
    pub excerpt: String,
}

impl ToolOutput {
    /// A tool's typed result.
    fn ok(result: &impl Serialize, citable: Vec<Uuid>) -> Self {
        match serde_json::to_value(result) {
            Ok(result) => Self {
                result,
                evidence: !citable.is_empty(),
                citable,
                error: None,
                proposal: None,
            },
            Err(e) => Self::error(format!("the result could not be written: {e}")),
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        Self {
            result: json!({ "error": msg }),
            citable: Vec::new(),
            error: Some(msg),
            proposal: None,
            evidence: false,
        }
    }

    /// Marks a result that is evidence although it lists no span (a count, counts per group).
    fn evidence(mut self, evidence: bool) -> Self {
        self.evidence |= evidence && self.error.is_none();
        self
    }

    /// The result as the tool message's text, cut to [`MAX_RESULT_BYTES`].
    pub fn text(&self) -> String {
        let s = self.result.to_string();
        if s.len() <= MAX_RESULT_BYTES {
            return s;
        }
        let cut = Truncated {
            truncated: true,
            note: "the result was too large; ask for fewer rows (limit) or use count/group_by"
                .into(),
            excerpt: cut(&s, MAX_RESULT_BYTES - 256).into(),
        };
        serde_json::to_string(&cut).unwrap_or_default()
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The tools offered in every turn, with their argument schemas (built once).
pub fn specs() -> Vec<ToolSpec> {
    static SPECS: std::sync::LazyLock<Vec<ToolSpec>> =
        std::sync::LazyLock::new(|| ToolName::ALL.map(ToolName::spec).to_vec());
    SPECS.clone()
}

/// The tools offered in a turn: the memory tools only when the turn's memory mode is not
/// `off` (a model is not shown what it may not use).
pub fn specs_for(memory: bool) -> Vec<ToolSpec> {
    let mut all = specs();
    if !memory {
        all.retain(|t| {
            ![ToolName::Remember, ToolName::RecallMemory]
                .iter()
                .any(|m| m.as_str() == t.name)
        });
    }
    all
}

/// Runs one call. Store failures are errors of the turn; everything the model got wrong is a
/// [`ToolOutput::error`].
pub async fn run(ctx: &ToolContext<'_>, call: &ToolCall) -> Result<ToolOutput, StoreError> {
    let args = &call.arguments;
    if !args.is_object() {
        return Ok(ToolOutput::error(format!(
            "the arguments of {} must be a JSON object",
            call.name
        )));
    }
    let Some(tool) = ToolName::parse(&call.name) else {
        let names: Vec<&str> = ToolName::ALL.map(ToolName::as_str).to_vec();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        return Ok(ToolOutput::error(format!(
            "unknown tool `{}`; the tools are {} and {last}",
            call.name,
            rest.join(", ")
        )));
    };
    match tool {
        ToolName::QueryLedger => query_ledger::run(ctx, args).await,
        ToolName::List => match parse_args(tool, args) {
            Ok(a) => list::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::GetSpan => match parse_args(tool, args) {
            Ok(a) => get_span::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::ExplainDecision => match parse_args(tool, args) {
            Ok(a) => explain_decision::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::ProposeAmendment => match parse_args(tool, args) {
            Ok(a) => propose_amendment::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::SimulateLaw => match parse_args(tool, args) {
            Ok(a) => simulate_law::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::Remember => match parse_args(tool, args) {
            Ok(a) => remember::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
        ToolName::RecallMemory => match parse_args(tool, args) {
            Ok(a) => recall_memory::run(ctx, a).await,
            Err(e) => Ok(ToolOutput::error(e)),
        },
    }
}

/// A tool's arguments as its `Args` type; serde's message names the field at fault (an
/// unknown field also lists the allowed ones).
fn parse_args<A: DeserializeOwned>(tool: ToolName, args: &Value) -> Result<A, String> {
    A::deserialize(args).map_err(|e| format!("invalid arguments for {tool}: {e}"))
}

/// A string argument trimmed, refused when empty.
fn non_empty<'a>(key: &str, s: &'a str) -> Result<&'a str, String> {
    let s = s.trim();
    if s.is_empty() {
        Err(format!("`{key}` must be a non-empty string"))
    } else {
        Ok(s)
    }
}

/// The fields of a span a model needs, with long content cut.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpanBrief {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Value>,
    /// The span's content, or `{"truncated": true, "excerpt": …}` when longer than 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
}

impl SpanBrief {
    /// The brief of a span view.
    fn of(view: &Value) -> Self {
        let get = |k: &str| view.get(k).filter(|v| !v.is_null()).cloned();
        let content = view.get("content").map(|c| {
            let text = c.to_string();
            if text.len() > MAX_CONTENT_BYTES {
                json!({"truncated": true, "excerpt": cut(&text, MAX_CONTENT_BYTES)})
            } else {
                c.clone()
            }
        });
        Self {
            id: id_of(view),
            seq: view.get("seq").and_then(Value::as_i64),
            entity_type: get("entity_type"),
            name: get("name"),
            who: get("who"),
            did: get("did"),
            this: get("this"),
            status: get("status"),
            at: get("at"),
            owner_id: get("owner_id"),
            visibility: get("visibility"),
            redacted: get("redacted"),
            content,
        }
    }
}

fn id_of(view: &Value) -> Option<Uuid> {
    view.get("id")?.as_str()?.parse().ok()
}

/// A contract by id or by name, read with the caller's visibility. A name is looked up with one
/// parameterized query for the newest version carrying it (not by loading every contract of
/// the tenant), then the contract's versions are read by id.
async fn find_contract(
    ctx: &ToolContext<'_>,
    reference: &str,
) -> Result<Option<contracts::Contract>, StoreError> {
    if reference.parse::<Uuid>().is_ok() {
        return contracts::find(ctx.store, ctx.principal, reference).await;
    }
    let Ok(spec) = QuerySpec::from_json(
        &json!({"entity_type": contracts::ENTITY_TYPE, "name": reference, "latest_only": true,
                "order": "desc", "limit": 1}),
        ctx.now,
    ) else {
        return Ok(None);
    };
    let SpecResult::Rows { spans, .. } = ctx.store.query_spec(ctx.principal, &spec).await? else {
        return Ok(None);
    };
    let Some(id) = spans
        .first()
        .and_then(|s| s.to_view().ok())
        .as_ref()
        .and_then(id_of)
    else {
        return Ok(None);
    };
    contracts::find(ctx.store, ctx.principal, &id.to_string()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema() {
        for t in specs() {
            assert_eq!(t.parameters["type"], "object", "{}", t.name);
        }
    }

    #[test]
    fn tool_names_round_trip() {
        for t in ToolName::ALL {
            assert_eq!(ToolName::parse(t.as_str()), Some(t));
        }
        assert_eq!(ToolName::parse("drop_table"), None);
    }

    #[test]
    fn bad_arguments_name_the_field_at_fault() {
        let e =
            parse_args::<get_span::Args>(ToolName::GetSpan, &json!({"id": Uuid::nil(), "sq": 1}))
                .err()
                .unwrap_or_default();
        assert!(
            e.contains("unknown field `sq`") && e.contains("`seq`"),
            "{e}"
        );
        let e = parse_args::<explain_decision::Args>(ToolName::ExplainDecision, &json!({}))
            .err()
            .unwrap_or_default();
        assert!(e.contains("missing field `contract`"), "{e}");
    }

    /// The schema a model reads and the type its arguments are parsed into are one contract:
    /// every property the schema offers is a field of `Args`, and nothing else is accepted.
    fn schema_and_args_agree<A: serde::de::DeserializeOwned>(tool: ToolName) {
        let spec = tool.spec();
        let props = spec.parameters["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(!props.is_empty(), "{tool} offers no properties");
        for key in props.keys() {
            let e = parse_args::<A>(tool, &json!({ key: null }))
                .err()
                .unwrap_or_default();
            assert!(!e.contains("unknown field"), "{tool}: `{key}`: {e}");
        }
        let e = parse_args::<A>(tool, &json!({"not_in_the_schema": 1}))
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("unknown field `not_in_the_schema`"),
            "{tool}: {e}"
        );
    }

    #[test]
    fn every_tool_schema_matches_its_argument_type() {
        schema_and_args_agree::<get_span::Args>(ToolName::GetSpan);
        schema_and_args_agree::<list::Args>(ToolName::List);
        schema_and_args_agree::<explain_decision::Args>(ToolName::ExplainDecision);
        schema_and_args_agree::<propose_amendment::Args>(ToolName::ProposeAmendment);
        schema_and_args_agree::<simulate_law::Args>(ToolName::SimulateLaw);
    }
}
