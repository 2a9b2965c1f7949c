//! `explain_decision`: what the laws decided about a contract — its `law.decision` spans, the
//! laws they cite and the contract's history of versions.

use std::collections::BTreeSet;

use kernels::contracts::ContractVersion;
use kernels::midnight_ruler;
use ledger::StoreError;
use ledger::span::format_time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, cut, find_contract, id_of, non_empty};

/// Newest law.decision spans returned (a contract held night after night collects one per
/// midnight).
const MAX_DECISIONS: i64 = 10;

pub(super) const DESCRIPTION: &str = "Everything about one contract: state, deadline, parties, approvals, \
    versions, and the law decisions on it with the laws they cite.";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["contract"],
        "properties": {
            "contract": {"type": "string", "description": "Name (e.g. D1) or span id."}
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The contract's name or span id.
    pub contract: String,
}

/// Fields are optional where a reader must cope with less than a full result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    pub contract: Option<Summary>,
    pub history: Vec<Version>,
    pub decisions: Vec<Decision>,
    pub laws: Vec<Law>,
}

/// The contract's latest version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub name: Option<String>,
    pub title: Option<Value>,
    pub state: Option<String>,
    pub deadline_at: Option<Value>,
    pub parties: Option<Value>,
    pub approvals: Option<Value>,
    pub quorum: Option<Value>,
    pub accepted: Option<Value>,
}

/// One version of the contract.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Version {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub at: Option<String>,
    pub state: Option<String>,
    pub status: Option<String>,
    pub did: Option<Value>,
    pub who: Option<Value>,
    pub reason: Option<Value>,
    pub deadline_at: Option<Value>,
}

/// One `law.decision` span; everything but its id comes from the span's content as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub at: Option<Value>,
    pub scheduled_at: Option<Value>,
    pub zone: Option<Value>,
    pub law: DecisionLaw,
    pub contract_seq: Option<Value>,
    pub triage: Option<Value>,
    pub actions: Option<Value>,
    pub variables: Option<Value>,
    pub missing: Option<Value>,
    pub fail_closed: Option<Value>,
}

/// The law a decision cites.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionLaw {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub hash: Option<Value>,
    pub name: Option<Value>,
    pub version: Option<Value>,
}

/// A law version a decision cites, with (the start of) its source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Law {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub name: Option<Value>,
    pub status: Option<Value>,
    pub curr_hash: Option<Value>,
    pub source: Option<String>,
}

fn summary(v: &ContractVersion) -> Summary {
    Summary {
        id: Some(v.id),
        seq: Some(v.seq),
        name: Some(v.label()),
        title: v.content.get("title").cloned(),
        state: v.state().map(|s| s.as_str().to_string()),
        deadline_at: v.content.get("deadline_at").cloned(),
        parties: v.content.get("parties").cloned(),
        approvals: v.content.get("approvals").cloned(),
        quorum: v.content.get("quorum").cloned(),
        accepted: v.content.get("accepted").cloned(),
    }
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let reference = match non_empty("contract", &args.contract) {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let Some(contract) = find_contract(ctx, reference).await? else {
        // A lookup by exact name that finds nothing shows the name is unknown ("what is D9?"):
        // evidence for saying so, as for `query_ledger` by name.
        let mut out = ToolOutput::error(format!(
            "no contract named or identified `{reference}` that you may see"
        ));
        out.evidence = true;
        return Ok(out);
    };
    let Some(latest) = contract.latest() else {
        return Ok(ToolOutput::error(format!(
            "contract {reference} has no versions"
        )));
    };
    let mut cited: BTreeSet<Uuid> = BTreeSet::from([contract.id]);
    let history: Vec<Version> = contract
        .versions
        .iter()
        .map(|v| Version {
            id: Some(v.id),
            seq: Some(v.seq),
            at: Some(format_time(v.at)),
            state: v.state().map(|s| s.as_str().to_string()),
            status: Some(v.status.clone()),
            did: v.view.get("did").cloned(),
            who: v.view.get("who").cloned(),
            reason: v.content.get("state_reason").cloned(),
            deadline_at: v.content.get("deadline_at").cloned(),
        })
        .collect();
    // Decisions relate to the contract; the filter keeps only what the caller may see.
    let filter = ledger::query::Filter {
        entity_type: Some(midnight_ruler::DECISION.into()),
        related_to: Some(contract.id),
        tenant_id: Some(ctx.principal.tenant_id.clone()),
        order: ledger::query::Order::Desc,
        limit: Some(MAX_DECISIONS),
        ..Default::default()
    };
    let page = ctx.store.query(ctx.principal, &filter).await?;
    let mut decisions = Vec::new();
    let mut law_refs: Vec<(Uuid, i64)> = Vec::new();
    for row in &page.rows {
        let Ok(v) = row.span.to_view() else { continue };
        let Some(id) = id_of(&v) else { continue };
        let c = v.get("content").cloned().unwrap_or(Value::Null);
        let law = c.get("law").cloned().unwrap_or(Value::Null);
        let law_span = law
            .get("span_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok());
        let law_seq = law.get("seq").and_then(Value::as_i64);
        if let (Some(s), Some(q)) = (law_span, law_seq)
            && !law_refs.contains(&(s, q))
        {
            law_refs.push((s, q));
        }
        cited.insert(id);
        let get = |k: &str| c.get(k).cloned();
        decisions.push(Decision {
            id: Some(id),
            seq: v.get("seq").and_then(Value::as_i64),
            at: v.get("at").cloned(),
            scheduled_at: get("scheduled_at"),
            zone: get("zone"),
            law: DecisionLaw {
                id: law_span,
                seq: law_seq,
                hash: law.get("curr_hash").cloned(),
                name: law.get("id").cloned(),
                version: law.get("version").cloned(),
            },
            contract_seq: c.pointer("/contract/seq").cloned(),
            triage: get("triage"),
            actions: get("actions"),
            variables: get("variables"),
            missing: get("missing"),
            fail_closed: get("fail_closed"),
        });
    }
    let mut laws = Vec::new();
    for (span_id, seq) in law_refs {
        let Some(s) = ctx.store.get(ctx.principal, span_id, Some(seq)).await? else {
            continue;
        };
        let Ok(v) = s.to_view() else { continue };
        cited.insert(span_id);
        let source = v
            .get("content")
            .and_then(midnight_ruler::law_source)
            .map(|s| cut(s, 2000).to_string());
        laws.push(Law {
            id: Some(span_id),
            seq: Some(seq),
            name: v.get("name").cloned(),
            status: v.get("status").cloned(),
            curr_hash: v.get("curr_hash").cloned(),
            source,
        });
    }
    Ok(ToolOutput::ok(
        &Output {
            contract: Some(summary(latest)),
            history,
            decisions,
            laws,
        },
        cited.into_iter().collect(),
    ))
}
