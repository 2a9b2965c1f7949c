//! `propose_amendment`: propose a change to a contract (deadline, title, quorum) as a pending
//! `amendment_proposal` span. Nothing changes until an authorized user confirms it.
//!
//! The domain functions below (`may_amend`, `parse_offset`, `parse_time`, `amended_content`,
//! `pick`, `summarize`) are moved here verbatim from the old `tools.rs`; they are to become
//! `proposals::` calls when that module lands.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use kernels::contracts::{self, ContractVersion, State};
use ledger::span::format_time;
use ledger::{Draft, Principal, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::super::record::append_one;
use super::{ToolContext, ToolOutput, find_contract, non_empty};

/// Entity type of a pending change the agent proposed.
pub const PROPOSAL: &str = "amendment_proposal";
/// Entity type of an applied amendment.
pub const AMENDMENT: &str = "contract_amendment";

pub(super) const DESCRIPTION: &str = "Propose a change to a contract (deadline, title, quorum). Nothing \
    changes until an authorized user confirms the proposal.";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["contract", "changes", "reason"],
        "properties": {
            "contract": {"type": "string", "minLength": 1, "description": "The contract's name or span id."},
            "changes": {
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "properties": {
                    "deadline_at": {"type": "string", "description": "A new deadline: RFC 3339, a date (YYYY-MM-DD, end of that day UTC), or relative to the current deadline such as +3d, +12h, -1d."},
                    "title": {"type": "string", "minLength": 1, "maxLength": 200},
                    "quorum": {"type": "integer", "minimum": 1, "maximum": 100}
                }
            },
            "reason": {"type": "string", "minLength": 1, "maxLength": 500, "description": "Why, in the user's words."}
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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContractRef {
    pub id: Option<Uuid>,
    pub name: Option<String>,
    pub seq: Option<i64>,
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
fn amended_content(v: &ContractVersion, changes: &Value) -> Result<(Value, Value), String> {
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

fn pick(content: &Value, keys: &[&str]) -> Value {
    let mut m = Map::new();
    for k in keys {
        m.insert((*k).into(), content.get(*k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

pub(super) async fn run(ctx: &ToolContext<'_>, args: Args) -> Result<ToolOutput, StoreError> {
    let (reference, reason) = match (
        non_empty("contract", &args.contract),
        non_empty("reason", &args.reason),
    ) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => return Ok(ToolOutput::error(e)),
    };
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
        },
        vec![contract.id, appended.id],
    );
    out.proposal = Some(appended.id);
    Ok(out)
}

fn summarize(name: &str, before: &Value, after: &Value) -> String {
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
