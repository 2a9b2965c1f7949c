//! `query_ledger`: find, count or group the spans the caller may see. Its arguments are a
//! [`QuerySpec`] (closed field and operator lists, binds only), whose parser and JSON schema
//! live in `ledger::spec`.

use ledger::StoreError;
use ledger::spec::{QuerySpec, SpecResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{SpanBrief, ToolContext, ToolOutput};

pub(super) const DESCRIPTION: &str =
    "Find, count or group the spans you may see (latest versions by default). Read-only.";

/// What an empty result says about itself.
const EMPTY: &str = "Nothing matched this filter. That does not show that none exist: check the \
    filter (a contract's state is content.state: active, accepted, held, terminated or void; \
    `list` lists them by state).";

pub(super) fn schema() -> Value {
    QuerySpec::json_schema()
}

/// What a query returns: rows, a count, or counts per group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Rows {
        spans: Vec<SpanBrief>,
        #[serde(default)]
        returned: usize,
        /// More matched than the limit.
        #[serde(default)]
        truncated: bool,
        /// Set when nothing matched: small models read an empty result as "none exist"
        /// when their filter was simply wrong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Count {
        count: i64,
    },
    Groups {
        groups: Vec<Group>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// The group's value (null when the field is missing).
    pub key: Value,
    pub count: i64,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    let spec = match QuerySpec::from_json(args, ctx.now) {
        Ok(s) => s,
        Err(e) => return Ok(ToolOutput::error(format!("invalid query: {e}"))),
    };
    let by_name = args
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.trim().is_empty());
    let out = match ctx.store.query_spec(ctx.principal, &spec).await {
        Ok(r) => r,
        Err(StoreError::Input(e)) => return Ok(ToolOutput::error(format!("invalid query: {e}"))),
        Err(e) => return Err(e),
    };
    Ok(match out {
        SpecResult::Rows { spans, truncated } => {
            let mut rows = Vec::with_capacity(spans.len());
            let mut ids = Vec::with_capacity(spans.len());
            for s in &spans {
                match s.to_view() {
                    Ok(v) => {
                        let brief = SpanBrief::of(&v);
                        ids.extend(brief.id);
                        rows.push(brief);
                    }
                    Err(e) => tracing::warn!(error = %e, "query_ledger: unreadable span skipped"),
                }
            }
            let returned = rows.len();
            ToolOutput::ok(
                &Output::Rows {
                    spans: rows,
                    returned,
                    truncated,
                    note: (returned == 0).then(|| EMPTY.to_string()),
                },
                ids,
            )
            // A lookup by exact name that finds nothing shows that the name is unknown ("what
            // is D9?"); any other empty result may only show that the filter was wrong.
            .evidence(by_name)
        }
        SpecResult::Count(count) => {
            ToolOutput::ok(&Output::Count { count }, Vec::new()).evidence(count > 0)
        }
        SpecResult::Groups(groups) => {
            let any = !groups.is_empty();
            ToolOutput::ok(
                &Output::Groups {
                    groups: groups
                        .into_iter()
                        .map(|(key, count)| Group { key, count })
                        .collect(),
                },
                Vec::new(),
            )
            .evidence(any)
        }
    })
}
