//! The life of an amendment the agent proposes (DESIGN §7.3), in one place.
//!
//! A `propose_amendment` tool call appends a `pending` `amendment_proposal` span (the tool
//! validates the changes with [`amended_content`]). A turn whose answer did not validate
//! withdraws its proposals; one whose confidence is low holds them (`escalated`) and opens an
//! `escalation_request` ([`escalate`]) that a reviewer approves (the proposals are `pending`
//! again) or rejects ([`decide`]). Only then may a party to the contract, or an administrator,
//! apply a pending proposal — a new contract version plus a `contract_amendment` span
//! ([`apply`]) — or cancel it ([`cancel`]).
//!
//! Every status change is the next seq of the same span ([`set_status`]): the ledger's seq
//! check makes two concurrent changes conflict instead of both winning, and the idempotency
//! keys of the amendment spans make a retried apply harmless. Errors are a [`ProposalError`];
//! the HTTP routes map it to a problem document once.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use kernels::contracts::{self, Change, ContractVersion, State};
use ledger::span::format_time;
use ledger::{AppendError, Appended, Draft, InputError, Principal, Store, StoreError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

pub use ledger::span::next_seq;

use super::record::{SpanWriter, append_one};

/// Entity type of a pending change the agent proposed.
pub const PROPOSAL: &str = "amendment_proposal";
/// Entity type of an applied amendment.
pub const AMENDMENT: &str = "contract_amendment";
/// Entity type of a request for human review.
pub const ESCALATION: &str = "escalation_request";
/// Entity type of a reviewer's decision.
pub const REVIEW: &str = "review_decision";
/// Below this confidence the answer goes to a human reviewer.
pub const ESCALATION_THRESHOLD: f64 = 0.6;

/// Who acts on a proposal, and where the spans that record it go.
#[derive(Clone, Copy)]
pub struct Actor<'a> {
    pub store: &'a dyn Store,
    pub writer: &'a dyn SpanWriter,
    pub principal: &'a Principal,
    pub roles: &'a [String],
}

/// Why a proposal or an escalation could not be acted on. The messages are the problem
/// documents' `detail`s.
#[derive(Debug, thiserror::Error)]
pub enum ProposalError {
    /// No such proposal, or not one the caller may see.
    #[error("no amendment proposal {0} visible to you")]
    NotFound(Uuid),
    /// Applied, cancelled, withdrawn, rejected or held for a reviewer.
    #[error("proposal {id} {}", not_pending(status))]
    NotPending { id: Uuid, status: String },
    #[error("proposal {0} names no contract")]
    NoContract(Uuid),
    #[error("the contract of proposal {0} is not visible to you")]
    ContractNotVisible(Uuid),
    #[error("contract {0} has no versions")]
    NoVersions(String),
    /// The caller is neither a party to the contract nor an administrator.
    #[error("{user} is not a party to contract {contract} and has no admin role")]
    NotAllowed { user: String, contract: String },
    /// The contract has a newer version than the one the proposal was made against.
    #[error(
        "contract {contract} changed since the proposal (proposed on seq {}, now seq {now}); ask again",
        proposed.map_or("?".into(), |s| s.to_string())
    )]
    Stale {
        contract: String,
        proposed: Option<i64>,
        now: i64,
    },
    #[error("proposal {0} carries no new content")]
    NoNewContent(Uuid),
    /// Another change of the contract won the race.
    #[error("contract {contract} changed while confirming: {source}")]
    ChangedWhileConfirming {
        contract: String,
        source: AppendError,
    },
    /// No such escalation request, or not one the caller may see.
    #[error("no escalation request {0} visible to you")]
    EscalationNotFound(Uuid),
    #[error("escalation {id} was already decided ({status})")]
    AlreadyDecided { id: Uuid, status: String },
    /// Another reviewer's decision won the race.
    #[error("escalation {id} was decided concurrently: {source}")]
    DecidedConcurrently { id: Uuid, source: AppendError },
    /// A span the ledger refused to build.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A stored span that does not read back.
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_pending(status: &str) -> &'static str {
    match status {
        "escalated" => "is held for a reviewer (the answer's confidence was low)",
        "applied" => "was already applied",
        "cancelled" => "was cancelled",
        "withdrawn" => "was withdrawn (its answer did not validate)",
        "rejected" => "was rejected by a reviewer",
        _ => "is not pending",
    }
}

/// May this caller change this contract? Parties may; so may tenant administrators.
pub fn may_amend(principal: &Principal, roles: &[String], v: &ContractVersion) -> bool {
    if roles.iter().any(|r| r == "admin" || r == "amend") {
        return true;
    }
    v.content
        .get("parties")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter().any(|p| {
                p.get("who")
                    .and_then(Value::as_str)
                    .is_some_and(|w| contracts::same_person(w, &principal.user_id))
            })
        })
}

/// A relative offset such as `+3d`, `-12h`, `+90m`.
fn parse_offset(s: &str) -> Option<TimeDelta> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let unit = rest.chars().last()?;
    let n: i64 = rest[..rest.len() - unit.len_utf8()].trim().parse().ok()?;
    let d = match unit {
        'w' => TimeDelta::try_weeks(n)?,
        'd' => TimeDelta::try_days(n)?,
        'h' => TimeDelta::try_hours(n)?,
        'm' => TimeDelta::try_minutes(n)?,
        _ => return None,
    };
    Some(d * sign)
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v?.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Applies the proposed `changes` to a contract's content; errors say which change is wrong.
pub fn amended_content(v: &ContractVersion, changes: &Value) -> Result<(Value, Value), String> {
    let Some(changes) = changes.as_object().filter(|c| !c.is_empty()) else {
        return Err(
            "`changes` must be an object with at least one of deadline_at, title, quorum".into(),
        );
    };
    let mut content = match &v.content {
        Value::Object(m) => m.clone(),
        _ => return Err(format!("contract {} has unreadable content", v.label())),
    };
    let mut normalized = Map::new();
    for (k, val) in changes {
        match k.as_str() {
            "deadline_at" => {
                let s = val
                    .as_str()
                    .map(str::trim)
                    .ok_or("`changes.deadline_at` must be a string")?;
                let new = if let Some(d) = parse_offset(s) {
                    let cur = parse_time(content.get("deadline_at")).ok_or_else(|| {
                        format!("contract {} has no deadline to move by {s}", v.label())
                    })?;
                    cur + d
                } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                    t.with_timezone(&Utc)
                } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    d.and_hms_opt(23, 59, 59)
                        .ok_or("`changes.deadline_at`: invalid date")?
                        .and_utc()
                } else {
                    return Err(format!(
                        "`changes.deadline_at` `{s}` is not a time: use RFC 3339, YYYY-MM-DD or +3d/+12h"
                    ));
                };
                normalized.insert(k.clone(), json!(format_time(new)));
                content.insert(k.clone(), json!(format_time(new)));
            }
            "title" => {
                let s = val
                    .as_str()
                    .filter(|s| !s.trim().is_empty() && s.len() <= 200)
                    .ok_or("`changes.title` must be a non-empty string of at most 200 bytes")?;
                normalized.insert(k.clone(), json!(s));
                content.insert(k.clone(), json!(s));
            }
            "quorum" => {
                let n = val
                    .as_i64()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or("`changes.quorum` must be an integer from 1 to 100")?;
                normalized.insert(k.clone(), json!(n));
                content.insert(k.clone(), json!(n));
            }
            other => {
                return Err(format!(
                    "`changes.{other}` cannot be amended here; allowed: deadline_at, title, quorum"
                ));
            }
        }
    }
    // A deadline moved past a termination for a missed deadline reinstates the contract: that
    // is what "extend the deadline" means to the people asking for it.
    if normalized.contains_key("deadline_at") && v.state() == Some(State::Terminated) {
        content.insert("state".into(), json!(State::Active.as_str()));
        content.insert(
            "state_reason".into(),
            json!("reinstated by an amendment of the deadline"),
        );
    }
    Ok((Value::Object(content), Value::Object(normalized)))
}

/// The `keys` of `content` (null where absent): the before and after of a proposal.
pub fn pick(content: &Value, keys: &[&str]) -> Value {
    let mut m = Map::new();
    for k in keys {
        m.insert((*k).into(), content.get(*k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// One line for people: `D1: deadline_at 2026-11-30… → 2026-12-03…`.
pub fn summarize(name: &str, before: &Value, after: &Value) -> String {
    let mut parts = Vec::new();
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (k, av) in a {
            let bv = b.get(k).unwrap_or(&Value::Null);
            if bv != av {
                let show = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "(none)".into(),
                    other => other.to_string(),
                };
                parts.push(format!("{k} {} → {}", show(bv), show(av)));
            }
        }
    }
    if parts.is_empty() {
        format!("{name}: no change")
    } else {
        format!("{name}: {}", parts.join("; "))
    }
}

/// Appends the next seq of a proposal with a new status (the seq check makes concurrent
/// changes of one proposal conflict instead of both winning).
pub async fn set_status(
    store: &dyn Store,
    writer: &dyn SpanWriter,
    principal: &Principal,
    id: Uuid,
    status: &str,
    why: &str,
) -> Result<Appended, StoreError> {
    let span = store
        .get(principal, id, None)
        .await?
        .ok_or_else(|| StoreError::NotFound(id))?;
    let view = span.to_view().map_err(StoreError::Config)?;
    if view.get("entity_type").and_then(Value::as_str) != Some(PROPOSAL) {
        return Err(StoreError::NotFound(id));
    }
    let now = Utc::now();
    let next = next_seq(
        &view,
        principal,
        json!({
            "status": status,
            "when": format_time(now),
            "did": format!("proposal {status}: {why}"),
        }),
    );
    let draft = Draft::from_value(next, principal, &[], now)?;
    append_one(writer, principal, draft).await
}

/// [`set_status`] for each of a turn's proposals, in order; the first failure stops.
pub async fn set_all(
    store: &dyn Store,
    writer: &dyn SpanWriter,
    principal: &Principal,
    ids: &[Uuid],
    status: &str,
    why: &str,
) -> Result<(), StoreError> {
    for id in ids {
        set_status(store, writer, principal, *id, status, why).await?;
    }
    Ok(())
}

/// What applying or cancelling did.
#[derive(Debug)]
pub struct Confirmation {
    /// `applied` or `cancelled`.
    pub status: &'static str,
    /// The contract as it is now (after an apply, its new version; absent if it no longer
    /// reads back).
    pub contract: Option<ContractVersion>,
    /// The `contract_amendment` span (after an apply).
    pub amendment_id: Option<Uuid>,
}

/// A pending proposal the caller may act on, with the contract version it amends.
struct Pending {
    view: Value,
    content: Value,
    contract_id: Uuid,
    latest: ContractVersion,
}

/// Reads a proposal and checks, in this order, that the caller sees it, that it is pending,
/// that its contract is visible and that the caller may amend that contract.
async fn pending(actor: Actor<'_>, id: Uuid) -> Result<Pending, ProposalError> {
    let p = actor.principal;
    let span = actor
        .store
        .get(p, id, None)
        .await?
        .ok_or(ProposalError::NotFound(id))?;
    let view = span.to_view().map_err(ProposalError::Unreadable)?;
    if view.get("entity_type").and_then(Value::as_str) != Some(PROPOSAL) {
        return Err(ProposalError::NotFound(id));
    }
    let status = view.get("status").and_then(Value::as_str).unwrap_or("");
    if status != "pending" {
        return Err(ProposalError::NotPending {
            id,
            status: status.to_string(),
        });
    }
    let content = view.get("content").cloned().unwrap_or(Value::Null);
    let contract_ref = content
        .pointer("/contract/id")
        .and_then(Value::as_str)
        .ok_or(ProposalError::NoContract(id))?;
    let contract = contracts::find(actor.store, p, contract_ref)
        .await?
        .ok_or(ProposalError::ContractNotVisible(id))?;
    let latest = contract
        .latest()
        .cloned()
        .ok_or_else(|| ProposalError::NoVersions(contract_ref.to_string()))?;
    if !may_amend(p, actor.roles, &latest) {
        return Err(ProposalError::NotAllowed {
            user: p.user_id.clone(),
            contract: latest.label(),
        });
    }
    Ok(Pending {
        contract_id: contract.id,
        view,
        content,
        latest,
    })
}

/// Cancels a pending proposal (the caller must be allowed to amend its contract).
pub async fn cancel(actor: Actor<'_>, id: Uuid) -> Result<Confirmation, ProposalError> {
    let Pending { latest, .. } = pending(actor, id).await?;
    set_status(
        actor.store,
        actor.writer,
        actor.principal,
        id,
        "cancelled",
        "cancelled by the user",
    )
    .await?;
    Ok(Confirmation {
        status: "cancelled",
        contract: Some(latest),
        amendment_id: None,
    })
}

/// Applies a pending proposal: the contract's next version (refused if the contract changed
/// since the proposal), a `contract_amendment` span that records it, and the proposal
/// `applied`.
pub async fn apply(actor: Actor<'_>, id: Uuid) -> Result<Confirmation, ProposalError> {
    let Pending {
        view,
        content,
        contract_id,
        latest,
    } = pending(actor, id).await?;
    let p = actor.principal;
    let base_seq = content.pointer("/contract/seq").and_then(Value::as_i64);
    if base_seq != Some(latest.seq) {
        return Err(ProposalError::Stale {
            contract: latest.label(),
            proposed: base_seq,
            now: latest.seq,
        });
    }
    let new_content = content
        .get("new_content")
        .cloned()
        .filter(Value::is_object)
        .ok_or(ProposalError::NoNewContent(id))?;
    let summary = content
        .get("summary")
        .and_then(Value::as_str)
        .unwrap_or("amended")
        .to_string();
    let now = Utc::now();
    let draft = contracts::next_version(
        p,
        &latest,
        new_content,
        Change {
            did: &format!("amended: {summary}"),
            confirmed_by: &format!("proposal {id} confirmed by {}", p.user_id),
            idempotency_key: format!("amendment:{id}"),
            related_to: vec![id],
            at: now,
        },
    )?;
    let applied = append_one(actor.writer, p, draft)
        .await
        .map_err(|e| match e {
            StoreError::Append(source) => ProposalError::ChangedWhileConfirming {
                contract: latest.label(),
                source,
            },
            other => other.into(),
        })?;
    let amendment = Draft::from_value(
        json!({
            "entity_type": AMENDMENT,
            "visibility": "tenant",
            "idempotency_key": format!("amendment-record:{id}"),
            "trace_id": view.get("trace_id"),
            "related_to": [contract_id, id],
            "when": format_time(now),
            "who": p.user_id,
            "did": "applied an amendment",
            "this": format!("contract {}", latest.label()),
            "confirmed_by": p.user_id,
            "if_ok": "the contract continues under the amended terms",
            "if_doubt": "the parties discuss",
            "if_not": "a new amendment reverts it",
            "status": "applied",
            "content": {
                "proposal_id": id,
                "contract": {"id": contract_id, "name": latest.label(), "from_seq": latest.seq, "to_seq": applied.seq, "curr_hash": applied.curr_hash},
                "changes": content.get("changes"),
                "before": content.get("before"),
                "after": content.get("after"),
                "reason": content.get("reason"),
                "summary": summary,
            },
        }),
        p,
        &[],
        now,
    )?;
    let amendment = append_one(actor.writer, p, amendment).await?;
    set_status(actor.store, actor.writer, p, id, "applied", "confirmed").await?;
    let now_contract = contracts::find(actor.store, p, &contract_id.to_string())
        .await?
        .and_then(|c| c.latest().cloned());
    Ok(Confirmation {
        status: "applied",
        contract: now_contract,
        amendment_id: Some(amendment.id),
    })
}

/// A turn whose answer a human must see first.
pub struct Escalation<'a> {
    pub trace_id: &'a str,
    /// The turn's `prompt_run` span.
    pub run_id: Uuid,
    pub conversation_id: Uuid,
    pub question: &'a str,
    pub answer: &'a Value,
    /// The turn's proposals, held until the reviewer decides.
    pub proposals: &'a [Uuid],
}

/// Holds a turn's proposals (`escalated`) and opens an `escalation_request` for a reviewer;
/// returns its id.
pub async fn escalate(
    store: &dyn Store,
    writer: &dyn SpanWriter,
    principal: &Principal,
    e: &Escalation<'_>,
) -> Result<Uuid, StoreError> {
    set_all(
        store,
        writer,
        principal,
        e.proposals,
        "escalated",
        "held for a reviewer: the answer's confidence was below 0.6",
    )
    .await?;
    let id = Uuid::now_v7();
    let draft = Draft::from_value(
        json!({
            "id": id,
            "entity_type": ESCALATION,
            "visibility": "tenant",
            "trace_id": e.trace_id,
            "related_to": std::iter::once(e.run_id).chain(e.proposals.iter().copied()).collect::<Vec<_>>(),
            "when": format_time(Utc::now()),
            "who": principal.user_id,
            "did": "asked for a human review",
            "this": format!("run {}", e.run_id),
            "confirmed_by": "pending: a reviewer",
            "if_ok": "the reviewer approves; held proposals may be confirmed",
            "if_doubt": "the reviewer asks the user",
            "if_not": "the reviewer rejects; held proposals are rejected",
            "status": "open",
            "content": {
                "run_id": e.run_id,
                "conversation_id": e.conversation_id,
                "question": e.question,
                "answer": e.answer,
                "confidence": e.answer.get("confidence"),
                "threshold": ESCALATION_THRESHOLD,
                "proposals": e.proposals,
            },
        }),
        principal,
        &[],
        Utc::now(),
    )
    .map_err(StoreError::Input)?;
    append_one(writer, principal, draft).await?;
    Ok(id)
}

/// The latest version of each escalation request of the caller's tenant whose status is
/// `status` (every one when `None`), newest first.
pub async fn escalations(
    store: &dyn Store,
    principal: &Principal,
    status: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let views = contracts::load_views(store, principal, ESCALATION).await?;
    let mut latest: std::collections::BTreeMap<String, Value> = Default::default();
    for v in views {
        let Some(id) = v.get("id").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let seq = v.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let newer = latest
            .get(&id)
            .is_none_or(|o| o.get("seq").and_then(Value::as_i64).unwrap_or(0) < seq);
        if newer {
            latest.insert(id, v);
        }
    }
    let mut out: Vec<Value> = latest
        .into_values()
        .filter(|v| status.is_none_or(|s| v.get("status").and_then(Value::as_str) == Some(s)))
        .collect();
    out.sort_by(|a, b| {
        b.get("id")
            .and_then(Value::as_str)
            .cmp(&a.get("id").and_then(Value::as_str))
    });
    Ok(out)
}

/// A reviewer's decision on an escalation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// The held proposals may be confirmed.
    Approve,
    /// The held proposals are rejected.
    Reject,
}

/// What a reviewer's decision did.
#[derive(Debug)]
pub struct Decided {
    /// The `review_decision` span.
    pub review_id: Uuid,
    /// `approved` or `rejected`.
    pub status: &'static str,
    /// Proposals released for confirmation (approve) or rejected.
    pub proposals: Vec<Uuid>,
}

/// Decides an open escalation: closes it (its seq check lets only one reviewer decide),
/// releases (`pending`) or rejects its held proposals, and records a `review_decision` span.
/// The caller must already be known to be a reviewer.
pub async fn decide(
    actor: Actor<'_>,
    id: Uuid,
    decision: Decision,
    note: Option<String>,
) -> Result<Decided, ProposalError> {
    let p = actor.principal;
    let span = actor
        .store
        .get(p, id, None)
        .await?
        .ok_or(ProposalError::EscalationNotFound(id))?;
    let view = span.to_view().map_err(ProposalError::Unreadable)?;
    if view.get("entity_type").and_then(Value::as_str) != Some(ESCALATION) {
        return Err(ProposalError::EscalationNotFound(id));
    }
    if view.get("status").and_then(Value::as_str) != Some("open") {
        return Err(ProposalError::AlreadyDecided {
            id,
            status: view
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        });
    }
    let (status, proposal_status) = match decision {
        Decision::Approve => ("approved", "pending"),
        Decision::Reject => ("rejected", "rejected"),
    };
    let now = Utc::now();
    // Closing the escalation first: its seq check lets only one reviewer decide.
    let next = next_seq(
        &view,
        p,
        json!({
            "status": status,
            "when": format_time(now),
            "did": format!("review {status}"),
            "confirmed_by": p.user_id,
        }),
    );
    let closed = Draft::from_value(next, p, &[], now)?;
    append_one(actor.writer, p, closed)
        .await
        .map_err(|e| match e {
            StoreError::Append(source) => ProposalError::DecidedConcurrently { id, source },
            other => other.into(),
        })?;
    let proposals: Vec<Uuid> = view
        .pointer("/content/proposals")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut released = Vec::new();
    for pid in &proposals {
        match set_status(
            actor.store,
            actor.writer,
            p,
            *pid,
            proposal_status,
            &format!("review {status}"),
        )
        .await
        {
            Ok(_) => released.push(*pid),
            Err(e) => {
                tracing::warn!(proposal = %pid, error = %e, "cannot update a reviewed proposal")
            }
        }
    }
    let decision = Draft::from_value(
        json!({
            "entity_type": REVIEW,
            "visibility": "tenant",
            "idempotency_key": format!("review:{id}"),
            "trace_id": view.get("trace_id"),
            "related_to": std::iter::once(id).chain(proposals.iter().copied()).collect::<Vec<_>>(),
            "when": format_time(now),
            "who": p.user_id,
            "did": format!("{status} an escalation"),
            "this": format!("escalation {id}"),
            "confirmed_by": p.user_id,
            "if_ok": "held proposals may be confirmed",
            "if_doubt": "ask the user",
            "if_not": "held proposals are rejected",
            "status": status,
            "content": {
                "escalation_id": id,
                "decision": status,
                "note": note,
                "run_id": view.pointer("/content/run_id"),
                "proposals": proposals,
            },
        }),
        p,
        &[],
        now,
    )?;
    let decided = append_one(actor.writer, p, decision).await?;
    Ok(Decided {
        review_id: decided.id,
        status,
        proposals: released,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+3d"), Some(TimeDelta::days(3)));
        assert_eq!(parse_offset("-12h"), Some(TimeDelta::hours(-12)));
        assert_eq!(parse_offset("+90m"), Some(TimeDelta::minutes(90)));
        assert_eq!(parse_offset("3d"), None);
        assert_eq!(parse_offset("+d"), None);
        assert_eq!(parse_offset("+3y"), None);
        assert_eq!(parse_offset("+99999999999999d"), None);
    }
}
