//! The typed tools a model may call in a chat turn (DESIGN §7.3). The model never writes SQL:
//! every tool takes JSON arguments that are validated here, and every read runs through the
//! store with the caller's principal, so a tool sees exactly what the caller may see.
//!
//! A tool never fails the turn: bad arguments, unknown contracts or refused permissions come
//! back to the model as `{"error": "…"}` so it can correct itself or say so. Each result also
//! lists the span ids it returned ([`ToolOutput::citable`]): the only ids an answer may cite.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kernels::contracts::{self, ContractVersion, State};
use kernels::midnight_ruler;
use ledger::span::format_time;
use ledger::spec::{QuerySpec, SpecResult};
use ledger::{Draft, Principal, Store, StoreError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::proposals::{PROPOSAL, amended_content, may_amend, pick, summarize};
use super::providers::{ToolCall, ToolSpec};
use super::record::{SpanWriter, append_one};

/// Longest tool result (JSON text) handed back to the model; larger results are cut and say so.
pub const MAX_RESULT_BYTES: usize = 48 * 1024;
/// Newest law.decision spans `explain_decision` returns (a contract held night after night
/// collects one per midnight).
const MAX_DECISIONS: i64 = 10;
/// Longest `content` of one span inside a `query_ledger` result.
const MAX_CONTENT_BYTES: usize = 4 * 1024;

/// Who is calling, and when.
pub struct ToolContext<'a> {
    pub store: &'a dyn Store,
    pub writer: &'a dyn SpanWriter,
    pub principal: &'a Principal,
    pub roles: &'a [String],
    pub now: DateTime<Utc>,
    /// The turn's trace id: proposals hang in it.
    pub trace_id: &'a str,
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
}

impl ToolOutput {
    fn ok(result: Value, citable: Vec<Uuid>) -> Self {
        Self {
            result,
            citable,
            error: None,
            proposal: None,
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        Self {
            result: json!({ "error": msg }),
            citable: Vec::new(),
            error: Some(msg),
            proposal: None,
        }
    }

    /// The result as the tool message's text, cut to [`MAX_RESULT_BYTES`].
    pub fn text(&self) -> String {
        let s = self.result.to_string();
        if s.len() <= MAX_RESULT_BYTES {
            return s;
        }
        json!({
            "truncated": true,
            "note": "the result was too large; ask for fewer rows (limit) or use count/group_by",
            "excerpt": cut(&s, MAX_RESULT_BYTES - 256),
        })
        .to_string()
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
    static SPECS: std::sync::LazyLock<Vec<ToolSpec>> = std::sync::LazyLock::new(build_specs);
    SPECS.clone()
}

fn build_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "query_ledger".into(),
            description: "Find spans in the ledger you may see: filter by entity type, status, \
                who/did/this, name, time range and conditions on content fields; newest versions \
                only by default; or count them, or count them per group. Read-only."
                .into(),
            parameters: QuerySpec::json_schema(),
        },
        ToolSpec {
            name: "get_span".into(),
            description: "Read one span by id (the latest version, or a given seq).".into(),
            parameters: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["id"],
                "properties": {
                    "id": {"type": "string", "format": "uuid", "description": "The span id."},
                    "seq": {"type": "integer", "minimum": 0, "description": "A version; latest when absent."}
                }
            }),
        },
        ToolSpec {
            name: "explain_decision".into(),
            description: "Explain what the laws decided about a contract: its law.decision spans \
                (triage, actions, the variables the law saw), the laws they cite, and the \
                contract's history of versions."
                .into(),
            parameters: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["contract"],
                "properties": {
                    "contract": {"type": "string", "minLength": 1, "description": "The contract's name (e.g. D1) or span id."}
                }
            }),
        },
        ToolSpec {
            name: "propose_amendment".into(),
            description: "Propose a change to a contract (deadline, title, quorum). Nothing \
                changes until an authorized user confirms the proposal."
                .into(),
            parameters: json!({
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
            }),
        },
        ToolSpec {
            name: "simulate_law".into(),
            description: "Dry-run a law with some contract variables overridden (e.g. quorum=3) \
                and list the contracts whose triage would change. Writes nothing."
                .into(),
            parameters: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["law", "set"],
                "properties": {
                    "law": {"type": "string", "minLength": 1, "description": "The law's id (e.g. midnight_deadline), span name or span id."},
                    "set": {"type": "object", "minProperties": 1, "maxProperties": 10, "description": "Variable path → value, e.g. {\"quorum\": 3}."},
                    "at": {"type": "string", "description": "The midnight to simulate (date or RFC 3339); the next one by default."}
                }
            }),
        },
    ]
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
    match call.name.as_str() {
        "query_ledger" => query_ledger(ctx, args).await,
        "get_span" => get_span(ctx, args).await,
        "explain_decision" => explain_decision(ctx, args).await,
        "propose_amendment" => propose_amendment(ctx, args).await,
        "simulate_law" => simulate_law(ctx, args).await,
        other => Ok(ToolOutput::error(format!(
            "unknown tool `{other}`; the tools are query_ledger, get_span, explain_decision, \
             propose_amendment and simulate_law"
        ))),
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(_) => Err(format!("`{key}` must be a non-empty string")),
        None => Err(format!("`{key}` is required")),
    }
}

fn unknown_keys(args: &Value, allowed: &[&str]) -> Option<String> {
    let extra: Vec<&str> = args
        .as_object()?
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    (!extra.is_empty()).then(|| {
        format!(
            "unknown argument(s) {}; allowed: {}",
            extra.join(", "),
            allowed.join(", ")
        )
    })
}

/// The fields of a span a model needs, with long content cut.
fn brief(view: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "id",
        "seq",
        "entity_type",
        "name",
        "who",
        "did",
        "this",
        "status",
        "at",
        "owner_id",
        "visibility",
        "redacted",
    ] {
        if let Some(v) = view.get(k)
            && !v.is_null()
        {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(c) = view.get("content") {
        let text = c.to_string();
        let v = if text.len() > MAX_CONTENT_BYTES {
            json!({"truncated": true, "excerpt": cut(&text, MAX_CONTENT_BYTES)})
        } else {
            c.clone()
        };
        out.insert("content".into(), v);
    }
    Value::Object(out)
}

fn id_of(view: &Value) -> Option<Uuid> {
    view.get("id")?.as_str()?.parse().ok()
}

async fn query_ledger(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    let spec = match QuerySpec::from_json(args, ctx.now) {
        Ok(s) => s,
        Err(e) => return Ok(ToolOutput::error(format!("invalid query: {e}"))),
    };
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
                        ids.extend(id_of(&v));
                        rows.push(brief(&v));
                    }
                    Err(e) => tracing::warn!(error = %e, "query_ledger: unreadable span skipped"),
                }
            }
            ToolOutput::ok(
                json!({"spans": rows, "returned": rows.len(), "truncated": truncated}),
                ids,
            )
        }
        SpecResult::Count(n) => ToolOutput::ok(json!({ "count": n }), Vec::new()),
        SpecResult::Groups(groups) => ToolOutput::ok(
            json!({"groups": groups.into_iter().map(|(key, count)| json!({"key": key, "count": count})).collect::<Vec<_>>()}),
            Vec::new(),
        ),
    })
}

async fn get_span(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    if let Some(e) = unknown_keys(args, &["id", "seq"]) {
        return Ok(ToolOutput::error(e));
    }
    let id = match str_arg(args, "id").map(str::parse::<Uuid>) {
        Ok(Ok(id)) => id,
        Ok(Err(_)) => return Ok(ToolOutput::error("`id` must be a UUID")),
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let seq = match args.get("seq") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => return Ok(ToolOutput::error("`seq` must be a non-negative integer")),
        },
    };
    let Some(span) = ctx.store.get(ctx.principal, id, seq).await? else {
        // The id is not repeated: an error must not confirm anything about other tenants.
        return Ok(ToolOutput::error(format!(
            "no span with that id{} that you may see",
            seq.map(|s| format!(" and seq {s}")).unwrap_or_default()
        )));
    };
    match span.to_view() {
        Ok(v) => Ok(ToolOutput::ok(json!({ "span": brief(&v) }), vec![id])),
        Err(e) => Ok(ToolOutput::error(format!("span {id} is unreadable: {e}"))),
    }
}

fn contract_summary(v: &ContractVersion) -> Value {
    json!({
        "id": v.id,
        "seq": v.seq,
        "name": v.label(),
        "title": v.content.get("title"),
        "state": v.state().map(State::as_str),
        "deadline_at": v.content.get("deadline_at"),
    })
}

async fn explain_decision(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    if let Some(e) = unknown_keys(args, &["contract"]) {
        return Ok(ToolOutput::error(e));
    }
    let reference = match str_arg(args, "contract") {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::error(e)),
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
    let mut cited: BTreeSet<Uuid> = BTreeSet::from([contract.id]);
    let history: Vec<Value> = contract
        .versions
        .iter()
        .map(|v| {
            json!({
                "id": v.id,
                "seq": v.seq,
                "at": format_time(v.at),
                "state": v.state().map(State::as_str),
                "status": v.status,
                "did": v.view.get("did"),
                "who": v.view.get("who"),
                "reason": v.content.get("state_reason"),
                "deadline_at": v.content.get("deadline_at"),
            })
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
        decisions.push(json!({
            "id": id,
            "seq": v.get("seq"),
            "at": v.get("at"),
            "scheduled_at": c.get("scheduled_at"),
            "zone": c.get("zone"),
            "law": {
                "id": law_span,
                "seq": law_seq,
                "hash": law.get("curr_hash"),
                "name": law.get("id"),
                "version": law.get("version"),
            },
            "contract_seq": c.pointer("/contract/seq"),
            "triage": c.get("triage"),
            "actions": c.get("actions"),
            "variables": c.get("variables"),
            "missing": c.get("missing"),
            "fail_closed": c.get("fail_closed"),
        }));
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
        laws.push(json!({
            "id": span_id,
            "seq": seq,
            "name": v.get("name"),
            "status": v.get("status"),
            "curr_hash": v.get("curr_hash"),
            "source": source,
        }));
    }
    Ok(ToolOutput::ok(
        json!({
            "contract": contract_summary(latest),
            "history": history,
            "decisions": decisions,
            "laws": laws,
        }),
        cited.into_iter().collect(),
    ))
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

async fn propose_amendment(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    if let Some(e) = unknown_keys(args, &["contract", "changes", "reason"]) {
        return Ok(ToolOutput::error(e));
    }
    let (reference, reason) = match (str_arg(args, "contract"), str_arg(args, "reason")) {
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
    let (after_content, changes) =
        match amended_content(latest, args.get("changes").unwrap_or(&Value::Null)) {
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
        json!({
            "proposal_id": appended.id,
            "status": "pending",
            "contract": {"id": contract.id, "name": latest.label(), "seq": latest.seq},
            "before": before,
            "after": after,
            "summary": summary,
            "requires": "confirmation by a party to the contract or an administrator",
        }),
        vec![contract.id, appended.id],
    );
    out.proposal = Some(appended.id);
    Ok(out)
}

async fn simulate_law(ctx: &ToolContext<'_>, args: &Value) -> Result<ToolOutput, StoreError> {
    if let Some(e) = unknown_keys(args, &["law", "set", "at"]) {
        return Ok(ToolOutput::error(e));
    }
    let law = match str_arg(args, "law") {
        Ok(l) => l,
        Err(e) => return Ok(ToolOutput::error(e)),
    };
    let Some(set) = args
        .get("set")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    else {
        return Ok(ToolOutput::error(
            "`set` must be an object such as {\"quorum\": 3}",
        ));
    };
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
    let when = match args.get("at").and_then(Value::as_str) {
        None => None,
        Some(s) => match midnight_ruler::parse_when(s) {
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
        changes.push(json!({
            "contract_id": c.contract_id,
            "id": c.contract_id,
            "name": c.contract,
            "from": c.before,
            "to": c.after,
        }));
    }
    Ok(ToolOutput::ok(
        json!({
            "law": {"id": sim.law_span_id, "seq": sim.law_seq, "name": sim.law},
            "set": set,
            "scheduled_at": format_time(sim.scheduled_at),
            "zone": sim.zone,
            "evaluated": sim.considered,
            "changes": changes,
            "writes": "none: this was a simulation",
        }),
        cited,
    ))
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
}
