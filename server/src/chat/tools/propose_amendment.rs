//! `propose_amendment`: propose a change to a contract (deadline, title, quorum) as a pending
//! `amendment_proposal` span. Nothing changes until an authorized user confirms it.
//! The domain rules (who may amend, how changes apply) live in [`crate::chat::proposals`].

use kernels::contracts::State;
use ledger::span::format_time;
use ledger::{Draft, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ToolContext, ToolOutput, find_contract, non_empty};
use crate::chat::grounding;
use crate::chat::proposals::{PROPOSAL, amended_content, may_amend, pick, summarize};
use crate::chat::record::append_one;

pub(super) const DESCRIPTION: &str = "Propose a contract change; it applies only when an authorized user \
    confirms it.";

/// Longest reason kept with a proposal. Limits are checked here, not only in the schema, whose
/// bounds are left out to keep the prompt short.
const MAX_REASON_BYTES: usize = 500;

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["contract", "changes", "reason"],
        "properties": {
            "contract": {"type": "string", "description": "Name or span id."},
            "changes": {
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "properties": {
                    "deadline_at": {"type": "string", "description": "RFC 3339, a date, or +3d, -12h"},
                    "title": {"type": "string"},
                    "quorum": {"type": "integer"}
                }
            },
            "reason": {"type": "string"}
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The contract's name or span id.
    pub contract: String,
    /// Field → new value; checked field by field by `amended_content`, whose messages say which
    /// change is wrong.
    #[serde(default)]
    pub changes: Value,
    /// Why, in the user's words.
    pub reason: String,
}

/// Optional fields let a reader cope with less than a full result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    pub proposal_id: Option<Uuid>,
    pub status: Option<String>,
    pub contract: Option<ContractRef>,
    /// The changed fields (and `state`) before and after.
    pub before: Value,
    pub after: Value,
    pub summary: Option<String>,
    pub requires: Option<String>,
    /// Why nothing was proposed, when the request cannot be one (a deletion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContractRef {
    pub id: Option<Uuid>,
    pub name: Option<String>,
    pub seq: Option<i64>,
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let (reference, reason) = match (
        non_empty("contract", &args.contract),
        non_empty("reason", &args.reason),
    ) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => return Ok(ToolOutput::error(e)),
    };
    if reason.len() > MAX_REASON_BYTES {
        return Ok(ToolOutput::error(format!(
            "`reason` is {} bytes; at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    // The user's message decides whether a proposal may be made at all; the model's reading
    // of it does not (grounding.rs).
    let deletion = grounding::asks_to_delete(ctx.request);
    if !deletion && grounding::asks_no_change(ctx.request) {
        return Ok(ToolOutput::error(
            "not proposed: the user asked a question, not for a change. Answer the question \
             from the ledger (list, explain_decision) instead.",
        ));
    }
    let Some(contract) = find_contract(ctx, reference).await? else {
        return Ok(ToolOutput::error(format!(
            "no contract named or identified `{reference}` that you may see"
        )));
    };
    let Some(latest) = contract.latest() else {
        return Ok(ToolOutput::error(format!(
            "contract {reference} has no versions"
        )));
    };
    if deletion {
        // Shown with the contract it is about, so the answer can cite what it declines on.
        let out = Output {
            status: Some("refused".into()),
            contract: Some(ContractRef {
                id: Some(contract.id),
                name: Some(latest.label()),
                seq: Some(latest.seq),
            }),
            refused: Some(format!(
                "{} cannot be deleted: the ledger is append-only and keeps every version. Tell \
                 the user so; its deadline, title or quorum can be amended instead.",
                latest.label()
            )),
            ..Output::default()
        };
        return Ok(ToolOutput::ok(&out, vec![contract.id]));
    }
    if !may_amend(ctx.principal, ctx.roles, latest) {
        return Ok(ToolOutput::error(format!(
            "permission denied: {} is not a party to contract {} and has no admin role",
            ctx.principal.user_id,
            latest.label()
        )));
    }
    if latest.state() == Some(State::Void) {
        return Ok(ToolOutput::error(format!(
            "contract {} is void (its witness never confirmed): it cannot be amended",
            latest.label()
        )));
    }
    let (after_content, changes) = match amended_content(latest, &args.changes) {
        Ok(x) => x,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = changes
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        k.push("state");
        k
    };
    let before = pick(&latest.content, &keys);
    let after = pick(&after_content, &keys);
    let summary = summarize(&latest.label(), &before, &after);
    let id = Uuid::now_v7();
    let draft = Draft::from_value(
        json!({
            "id": id,
            "entity_type": PROPOSAL,
            "name": format!("amend {}", latest.label()),
            "visibility": "tenant",
            "trace_id": ctx.trace_id,
            "related_to": [contract.id],
            "when": format_time(ctx.now),
            "who": ctx.principal.user_id,
            "did": "proposed an amendment",
            "this": format!("contract {}", latest.label()),
            "confirmed_by": "pending: an authorized user confirms with POST /api/chat/confirm",
            "if_ok": "the contract gets a new version with the changes",
            "if_doubt": "a reviewer decides",
            "if_not": "nothing changes",
            "status": "pending",
            "content": {
                "contract": {"id": contract.id, "seq": latest.seq, "name": latest.label()},
                "changes": changes,
                "before": before,
                "after": after,
                "new_content": after_content,
                "reason": reason,
                "summary": summary,
            },
        }),
        ctx.principal,
        &[],
        ctx.now,
    )
    .map_err(StoreError::Input)?;
    let appended = append_one(ctx.writer, ctx.principal, draft).await?;
    let mut out = ToolOutput::ok(
        &Output {
            proposal_id: Some(appended.id),
            status: Some("pending".into()),
            contract: Some(ContractRef {
                id: Some(contract.id),
                name: Some(latest.label()),
                seq: Some(latest.seq),
            }),
            before,
            after,
            summary: Some(summary),
            requires: Some("confirmation by a party to the contract or an administrator".into()),
            refused: None,
        },
        vec![contract.id, appended.id],
    );
    out.proposal = Some(appended.id);
    out.evidence = true;
    Ok(out)
}
