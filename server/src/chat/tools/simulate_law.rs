//! `simulate_law`: dry-run a law with some contract variables overridden and list the
//! contracts whose triage would change. Writes nothing.

use kernels::midnight_ruler;
use ledger::StoreError;
use ledger::span::format_time;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, non_empty};

pub(super) const DESCRIPTION: &str = "Dry-run a law with contract variables overridden; lists the contracts \
    whose triage would change. Writes nothing.";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["law", "set"],
        "properties": {
            "law": {"type": "string", "description": "Law id, name or span id."},
            "set": {"type": "object", "description": "Variable → value, e.g. {\"quorum\": 3}."},
            "at": {"type": "string", "description": "Date; next midnight by default."}
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The law's id, span name or span id.
    pub law: String,
    /// Variable path → value.
    pub set: Map<String, Value>,
    /// The midnight to simulate (date or RFC 3339); the next one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// Optional fields let a reader cope with less than a full result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    pub law: Option<LawRef>,
    pub set: Map<String, Value>,
    pub scheduled_at: Option<String>,
    pub zone: Option<String>,
    /// Contracts the law would decide.
    pub evaluated: Option<u64>,
    /// Contracts (the caller may see) whose triage would change.
    pub changes: Vec<Change>,
    pub writes: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LawRef {
    pub id: Option<Uuid>,
    pub seq: Option<i64>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Change {
    pub contract_id: Option<Uuid>,
    pub id: Option<Uuid>,
    pub name: Option<String>,
    /// Triage before and after.
    pub from: Option<Value>,
    pub to: Option<Value>,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let law = match non_empty("law", &args.law) {
        Ok(l) => l,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let set = &args.set;
    if set.is_empty() {
        return Ok(ToolOutput::error(
            "`set` must be an object such as {\"quorum\": 3}",
        ));
    }
    if set.len() > 10 {
        return Ok(ToolOutput::error("`set` takes at most 10 variables"));
    }
    for k in set.keys() {
        let ok = !k.is_empty()
            && k.len() <= 128
            && k.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            return Ok(ToolOutput::error(format!(
                "`set.{k}`: a variable path is dotted names of letters, digits and _"
            )));
        }
    }
    let overrides: Vec<(String, Value)> = set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let when = match args.at.as_deref() {
        None => None,
        Some(s) => match kernels::midnight_ruler::parse_when(s) {
            Ok(w) => Some(w),
            Err(e) => return Ok(ToolOutput::error(format!("`at`: {e}"))),
        },
    };
    // The simulation reads as the ruler; the caller is shown only what the caller may see.
    let sim = match midnight_ruler::simulate(
        ctx.store,
        &ctx.principal.tenant_id,
        law,
        &overrides,
        when,
        None,
        ctx.now,
    )
    .await
    {
        Ok(s) => s,
        Err(midnight_ruler::RulerError::Store(e)) => return Err(e),
        Err(e) => return Ok(ToolOutput::error(e.to_string())),
    };
    if ctx
        .store
        .get(ctx.principal, sim.law_span_id, None)
        .await?
        .is_none()
    {
        return Ok(ToolOutput::error(format!(
            "no law `{law}` that you may see"
        )));
    }
    let mut cited = vec![sim.law_span_id];
    let mut changes = Vec::new();
    for c in &sim.changed {
        if ctx
            .store
            .get(ctx.principal, c.contract_id, None)
            .await?
            .is_none()
        {
            continue;
        }
        cited.push(c.contract_id);
        changes.push(Change {
            contract_id: Some(c.contract_id),
            id: Some(c.contract_id),
            name: Some(c.contract.clone()),
            from: Some(json!(c.before)),
            to: Some(json!(c.after)),
        });
    }
    Ok(ToolOutput::ok(
        &Output {
            law: Some(LawRef {
                id: Some(sim.law_span_id),
                seq: Some(sim.law_seq),
                name: Some(sim.law.clone()),
            }),
            set: args.set.clone(),
            scheduled_at: Some(format_time(sim.scheduled_at)),
            zone: Some(sim.zone.clone()),
            evaluated: u64::try_from(sim.considered).ok(),
            changes,
            writes: Some("none: this was a simulation".into()),
        },
        cited,
    ))
}
