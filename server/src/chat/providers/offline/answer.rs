//! Writing the answer from the turn's tool results. Which tool ran comes from the call each
//! result answers (the tool-call/tool-result pairing), and its result is read as that tool's
//! `Output` type; only what tools pass through from span content as written (a contract's
//! title, a decision's actions and variables) is read as JSON.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::Answer;
use super::intents::{Unit, span_text};
use crate::chat::providers::ToolCall;
use crate::chat::tools::{
    ToolError, ToolName, Truncated, explain_decision as explain, get_span,
    propose_amendment as amend, query_ledger as query, simulate_law as simulate,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Evidence {
    Found,
    Nothing,
    Error,
}

/// What one tool result contributes to the answer.
struct Part {
    text: String,
    citations: Vec<Uuid>,
    actions: Vec<Value>,
    evidence: Evidence,
}

impl Part {
    fn new(text: String, evidence: Evidence) -> Self {
        Self {
            text,
            citations: Vec::new(),
            actions: Vec::new(),
            evidence,
        }
    }

    fn cite(&mut self, id: Option<Uuid>) {
        self.citations.extend(id);
    }
}

/// The answer from every result of the turn (each with the call it answers, when found), and
/// the shape: the tool of the first result whose tool is known.
pub(super) fn from_results(
    results: &[(Option<&ToolCall>, &str)],
    tool_use_count: usize,
) -> (Answer, &'static str) {
    let mut parts = Vec::new();
    let mut shape = None;
    for (call, content) in results {
        let tool = call.and_then(|c| ToolName::parse(&c.name));
        shape = shape.or(tool);
        let name = call.map_or("a tool", |c| c.name.as_str());
        let args = call.map_or(&Value::Null, |c| &c.arguments);
        parts.push(match serde_json::from_str::<Value>(content) {
            Err(_) => error_part(tool, name, args, "its answer was not JSON I could read"),
            Ok(v) => read(tool, name, args, &v),
        });
    }

    let has = |e: Evidence| parts.iter().any(|p| p.evidence == e);
    let (found, nothing, error) = (
        has(Evidence::Found),
        has(Evidence::Nothing),
        has(Evidence::Error),
    );
    let confidence = match (found, nothing, error) {
        (true, _, false) => 0.9,
        // Part of the question rests on evidence, part failed: still above review.
        (true, _, true) => 0.7,
        (false, true, false) => 0.8,
        _ => 0.3,
    };
    let mut seen = HashSet::new();
    let answer = Answer {
        text: parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        confidence,
        follow_up_question: error.then(|| {
            "Could you check the contract name or span id (or try again in a moment) and ask \
             again?"
                .to_string()
        }),
        actions: parts.iter().flat_map(|p| p.actions.clone()).collect(),
        citations: parts
            .iter()
            .flat_map(|p| p.citations.iter().copied())
            .filter(|c| seen.insert(*c))
            .map(|c| c.to_string())
            .collect(),
        tool_use_count,
    };
    (answer, shape.map_or("answer", ToolName::as_str))
}

/// One result, read as its tool's `Output` (or as the error or cut-off result any tool may
/// return instead).
fn read(tool: Option<ToolName>, name: &str, args: &Value, v: &Value) -> Part {
    if let Ok(ToolError { error }) = ToolError::deserialize(v) {
        let e = error
            .as_str()
            .map_or_else(|| compact(&error, 300), |s| truncate(s, 300));
        return error_part(tool, name, args, &e);
    }
    let Some(tool) = tool else {
        return Part::new(
            format!("`{name}` returned: {}", compact(v, 300)),
            Evidence::Found,
        );
    };
    let part = match tool {
        ToolName::ExplainDecision => {
            explain::Output::deserialize(v).map(|o| explain_part(o, typed(args)))
        }
        ToolName::QueryLedger => {
            query::Output::deserialize(v).map(|o| query_part(o, typed(args).unwrap_or_default()))
        }
        ToolName::GetSpan => get_span::Output::deserialize(v).map(get_span_part),
        ToolName::ProposeAmendment => {
            amend::Output::deserialize(v).map(|o| amend_part(o, typed(args)))
        }
        ToolName::SimulateLaw => {
            simulate::Output::deserialize(v).map(|o| simulate_part(o, typed(args)))
        }
    };
    part.unwrap_or_else(|_| {
        let why = if Truncated::deserialize(v).is_ok() {
            "its result was too large to read"
        } else {
            "its answer was not in the shape I expected"
        };
        error_part(Some(tool), name, args, why)
    })
}

/// A call's arguments as the tool's `Args` (they are the offline provider's own).
fn typed<A: for<'de> Deserialize<'de>>(args: &Value) -> Option<A> {
    A::deserialize(args).ok()
}

/// The text of a value passed through from span content: strings as they are, other scalars
/// and structures as compact JSON, nothing for null.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(compact(other, 120)),
    }
}

/// [`text`] of the field at a dotted path.
fn at(v: Option<&Value>, path: &str) -> Option<String> {
    text(path.split('.').try_fold(v?, |cur, k| cur.get(k)))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// A value for a person: strings as they are, anything else as compact JSON, cut at `max`.
fn compact(v: &Value, max: usize) -> String {
    match v {
        Value::String(s) => truncate(s, max),
        other => truncate(&other.to_string(), max),
    }
}

fn sentence(s: &str) -> String {
    let s = s.trim();
    if s.ends_with(['.', '!', '?']) {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn error_part(tool: Option<ToolName>, name: &str, args: &Value, error: &str) -> Part {
    let what = match tool {
        Some(ToolName::ExplainDecision) => format!(
            "explain the decision on {}",
            typed::<explain::Args>(args)
                .map(|a| a.contract)
                .unwrap_or_default()
        ),
        Some(ToolName::QueryLedger) => "query the ledger".to_string(),
        Some(ToolName::GetSpan) => format!(
            "read span {}",
            typed::<get_span::Args>(args)
                .map(|a| a.id.to_string())
                .unwrap_or_default()
        ),
        Some(ToolName::ProposeAmendment) => format!(
            "propose the change to {}",
            typed::<amend::Args>(args)
                .map(|a| a.contract)
                .unwrap_or_default()
        ),
        Some(ToolName::SimulateLaw) => format!(
            "simulate law {}",
            typed::<simulate::Args>(args)
                .map(|a| a.law)
                .unwrap_or_default()
        ),
        None => format!("use {name}"),
    };
    Part::new(
        sentence(&format!("I could not {}: {error}", what.trim())),
        Evidence::Error,
    )
}

/// The keys under which a law's action names itself.
const ACTION_NAME_KEYS: [&str; 5] = ["type", "action", "kind", "name", "do"];

/// Renders one action of a decision (free-form law output): `terminate(reason=…)`.
fn action_text(a: &Value) -> String {
    let Some(o) = a.as_object() else {
        return compact(a, 120);
    };
    let Some((name_key, name)) = ACTION_NAME_KEYS
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str).map(|s| (*k, s)))
    else {
        return compact(a, 120);
    };
    let mut args = Vec::new();
    for (k, v) in o {
        if k == name_key {
            continue;
        }
        match v {
            Value::Object(inner)
                if ["args", "params", "with", "arguments"].contains(&k.as_str()) =>
            {
                args.extend(inner.iter().map(|(k, v)| format!("{k}={}", compact(v, 80))));
            }
            Value::Null => {}
            v => args.push(format!("{k}={}", compact(v, 80))),
        }
    }
    if args.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", args.join(", "))
    }
}

fn actions_text(actions: Option<&Value>) -> String {
    match actions.and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a.iter().map(action_text).collect::<Vec<_>>().join(", "),
        _ => "none".into(),
    }
}

/// The variables a decision was made on, the usual decisive ones first.
fn variables_text(vars: Option<&Value>) -> String {
    const FIRST: &[&str] = &[
        "deadline_at",
        "accepted",
        "state",
        "now",
        "evidence",
        "evidence_count",
        "approvals",
        "quorum",
    ];
    let Some(o) = vars.and_then(Value::as_object) else {
        return String::new();
    };
    let mut keys: Vec<&String> = FIRST
        .iter()
        .filter_map(|k| o.get_key_value(*k).map(|(k, _)| k))
        .collect();
    keys.extend(o.keys().filter(|k| !FIRST.contains(&k.as_str())));
    let shown: Vec<String> = keys
        .iter()
        .take(8)
        .filter_map(|k| o.get(k.as_str()).map(|v| format!("{k} {}", compact(v, 80))))
        .collect();
    let more = keys.len().saturating_sub(8);
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn outcome_verb(actions: Option<&Value>) -> &'static str {
    let first = actions
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| {
            a.as_str().or_else(|| {
                ACTION_NAME_KEYS
                    .iter()
                    .find_map(|k| a.get(*k).and_then(Value::as_str))
            })
        })
        .unwrap_or_default();
    match first.to_lowercase().as_str() {
        "terminate" => "terminated",
        "hold" => "put on hold",
        "accept" => "accepted",
        "void" => "voided",
        "" => "evaluated",
        _ => "acted on",
    }
}

/// `scheduled_at`, else `at`, of a decision.
fn when(d: &explain::Decision) -> Option<String> {
    text(d.scheduled_at.as_ref()).or_else(|| text(d.at.as_ref()))
}

fn explain_part(out: explain::Output, args: Option<explain::Args>) -> Part {
    let contract = out.contract.clone().unwrap_or_default();
    let name = contract
        .name
        .clone()
        .or_else(|| args.map(|a| a.contract))
        .unwrap_or_else(|| "the contract".into());
    let title = text(contract.title.as_ref())
        .map(|t| format!(" (\"{t}\")"))
        .unwrap_or_default();
    let (decisions, history) = (&out.decisions, &out.history);
    if out.contract.is_none() && decisions.is_empty() && history.is_empty() {
        return Part::new(
            format!("I found nothing about {name}: no contract, history or decision came back."),
            Evidence::Nothing,
        );
    }
    let mut part = Part::new(String::new(), Evidence::Found);
    // The latest decision (highest seq; the last one when seqs are missing) is the decisive one.
    let latest = decisions
        .iter()
        .enumerate()
        .max_by_key(|(i, d)| (d.seq, *i));
    let mut text_out;
    if let Some((li, d)) = latest {
        let law = text(d.law.name.as_ref()).unwrap_or_else(|| "an unnamed law".into());
        let seq = d.law.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
        let triage = text(d.triage.as_ref()).unwrap_or_else(|| "unknown".into());
        let vars = variables_text(d.variables.as_ref());
        let mut because = if vars.is_empty() {
            String::new()
        } else {
            format!(" because {vars}")
        };
        // Variables the law needed and could not read decide a `doubt` as much as those it saw.
        let missing: Vec<String> = match &d.missing {
            Some(Value::Array(a)) => a.iter().map(|m| compact(m, 60)).collect(),
            Some(Value::Object(o)) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            because.push_str(&format!(" (missing: {})", missing.join(", ")));
        }
        if d.fail_closed == Some(Value::Bool(true)) {
            because.push_str(" (the law failed closed)");
        }
        text_out = format!(
            "{name}{title} was {} at the midnight of {} by law {law}{seq}: triage `{triage}`{because}; actions: {}.",
            outcome_verb(d.actions.as_ref()),
            when(d).unwrap_or_else(|| "an unrecorded time".into()),
            actions_text(d.actions.as_ref()),
        );
        if let Some(s) = &contract.state {
            text_out.push_str(&format!(" Its current state is `{s}`."));
        }
        let earlier: Vec<String> = decisions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != li)
            .take(5)
            .map(|(_, e)| {
                format!(
                    "{} by {}: triage `{}`",
                    when(e).unwrap_or_else(|| "?".into()),
                    text(e.law.name.as_ref()).unwrap_or_else(|| "?".into()),
                    text(e.triage.as_ref()).unwrap_or_else(|| "?".into()),
                )
            })
            .collect();
        if !earlier.is_empty() {
            text_out.push_str(&format!(" Other decisions: {}.", earlier.join("; ")));
        }
        for d in decisions {
            part.cite(d.id);
            part.cite(d.law.id);
        }
        for l in &out.laws {
            part.cite(l.id);
        }
    } else {
        text_out = format!("No law decision about {name}{title} is recorded");
        match &contract.state {
            Some(s) => text_out.push_str(&format!("; it is `{s}`.")),
            None => text_out.push('.'),
        }
        if let Some(dl) = text(contract.deadline_at.as_ref()) {
            text_out.push_str(&format!(" Its deadline is {dl}."));
        }
        if history.is_empty() {
            text_out.push_str(" Its history is empty.");
        } else {
            let q = |s: Option<String>| s.unwrap_or_else(|| "?".into());
            let lines: Vec<String> = history
                .iter()
                .take(20)
                .map(|h| {
                    let mut line = format!(
                        "- seq {} at {}: `{}`",
                        q(h.seq.map(|s| s.to_string())),
                        q(h.at.clone()),
                        q(h.state.clone()),
                    );
                    if let Some(s) = &h.status {
                        line.push_str(&format!(" ({s})"));
                    }
                    if let Some(r) = text(h.reason.as_ref()) {
                        line.push_str(&format!(" — {r}"));
                    }
                    line
                })
                .collect();
            text_out.push_str(&format!(" History:\n{}", lines.join("\n")));
            if history.len() > 20 {
                text_out.push_str(&format!("\n… and {} more.", history.len() - 20));
            }
            for h in history {
                part.cite(h.id);
            }
        }
    }
    part.cite(contract.id);
    part.text = text_out;
    part
}

/// The `query_ledger` arguments the answer describes: the offline provider's own, so only the
/// parts it writes (an entity type and `where` clauses).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct QueryArgs {
    entity_type: Option<String>,
    #[serde(rename = "where")]
    clauses: Vec<Clause>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Clause {
    path: String,
    op: String,
    value: Option<Value>,
}

/// `where` clauses, for a person.
fn describe_where(clauses: &[Clause]) -> String {
    if clauses
        .iter()
        .any(|c| c.path == "content.guarantor.responded_at")
    {
        let within = clauses
            .iter()
            .find(|c| c.path == "content.guarantor.requested_at")
            .and_then(|c| text(c.value.as_ref()))
            .and_then(|v| v.strip_prefix("now-").map(str::to_string))
            .map(|d| {
                let digits = d.chars().take_while(char::is_ascii_digit).count();
                match (d[..digits].parse::<u32>(), &d[digits..]) {
                    (Ok(n), "h") => span_text(n, Unit::Hours),
                    (Ok(n), "d") => span_text(n, Unit::Days),
                    _ => d.clone(),
                }
            });
        return match within {
            Some(w) => format!("whose guarantor has not responded within {w}"),
            None => "whose guarantor has not responded".into(),
        };
    }
    if let [c] = clauses
        && c.path == "content.state"
        && c.op == "eq"
        && let Some(s) = text(c.value.as_ref())
    {
        return format!("in state `{s}`");
    }
    if clauses.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = clauses
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", c.path, c.op);
            if let Some(v) = &c.value {
                s.push(' ');
                s.push_str(&compact(v, 60));
            }
            s
        })
        .collect();
    format!("matching {}", parts.join(" and "))
}

fn query_part(out: query::Output, args: QueryArgs) -> Part {
    let entity = args.entity_type.unwrap_or_else(|| "span".into());
    let desc = describe_where(&args.clauses);
    let with_desc = |s: String| {
        if desc.is_empty() {
            s
        } else {
            format!("{s} {desc}")
        }
    };
    let (spans, truncated) = match out {
        query::Output::Count { count } => {
            let n = usize::try_from(count).unwrap_or(usize::MAX);
            let (text, evidence) = if n == 0 {
                (format!("There are no {entity}s"), Evidence::Nothing)
            } else {
                let verb = if n == 1 { "is" } else { "are" };
                (
                    format!("There {verb} {}", plural(n, &entity)),
                    Evidence::Found,
                )
            };
            return Part::new(sentence(&with_desc(text)), evidence);
        }
        query::Output::Groups { groups } if groups.is_empty() => {
            return Part::new(
                sentence(&with_desc(format!("No {entity}s"))),
                Evidence::Nothing,
            );
        }
        query::Output::Groups { groups } => {
            let lines: Vec<String> = groups
                .iter()
                .map(|g| format!("- {}: {}", compact(&g.key, 80), g.count))
                .collect();
            return Part::new(
                format!(
                    "{}:\n{}",
                    with_desc(format!("{entity}s by group")),
                    lines.join("\n")
                ),
                Evidence::Found,
            );
        }
        query::Output::Rows {
            spans, truncated, ..
        } => (spans, truncated),
    };
    if spans.is_empty() {
        return Part::new(
            sentence(&with_desc(format!("I found no {entity}s"))),
            Evidence::Nothing,
        );
    }
    let guarantor = desc.contains("guarantor");
    let lines: Vec<String> = spans
        .iter()
        .take(50)
        .map(|s| {
            let content = s.content.as_ref();
            let name = text(s.name.as_ref())
                .or_else(|| text(s.this.as_ref()))
                .or_else(|| s.id.map(|id| id.to_string()))
                .unwrap_or_else(|| "?".into());
            let mut line = format!("- {name}");
            if let Some(t) = at(content, "title") {
                line.push_str(&format!(" \"{t}\""));
            }
            let state = at(content, "state");
            if let Some(st) = &state {
                line.push_str(&format!(" — state `{st}`"));
            } else if let Some(e) = text(s.entity_type.as_ref()).filter(|e| *e != entity) {
                line.push_str(&format!(" ({e})"));
            }
            if guarantor {
                if let Some(who) = at(content, "guarantor.who") {
                    line.push_str(&format!("; guarantor {who}"));
                }
                if let Some(asked) = at(content, "guarantor.requested_at") {
                    line.push_str(&format!(", asked at {asked}"));
                }
            }
            if state.is_none()
                && let Some(t) = text(s.at.as_ref())
            {
                line.push_str(&format!(", at {t}"));
            }
            line
        })
        .collect();
    let mut text_out = format!(
        "{}:\n{}",
        with_desc(plural(spans.len(), &entity)),
        lines.join("\n")
    );
    if spans.len() > 50 {
        text_out.push_str(&format!("\n… and {} more.", spans.len() - 50));
    }
    if truncated {
        text_out.push_str(
            "\nMore matched than were returned; ask for a narrower list to see the rest.",
        );
    }
    let mut part = Part::new(text_out, Evidence::Found);
    for s in &spans {
        part.cite(s.id);
    }
    part
}

fn get_span_part(out: get_span::Output) -> Part {
    let s = out.span;
    let get = |v: Option<&Value>| text(v).unwrap_or_else(|| "?".into());
    let id = s.id.map_or_else(|| "?".into(), |id| id.to_string());
    let mut t = format!("Span {id} ({}", get(s.entity_type.as_ref()));
    if let Some(n) = text(s.name.as_ref()) {
        t.push_str(&format!(" `{n}`"));
    }
    if let Some(seq) = s.seq {
        t.push_str(&format!(", seq {seq}"));
    }
    t.push_str(&format!(
        "): {} {} {} at {}",
        get(s.who.as_ref()),
        get(s.did.as_ref()),
        get(s.this.as_ref()),
        get(s.at.as_ref())
    ));
    if let Some(st) = text(s.status.as_ref()) {
        t.push_str(&format!(", status {st}"));
    }
    t.push('.');
    let content = s.content.as_ref();
    match (at(content, "title"), at(content, "state")) {
        (None, None) => {
            if let Some(c) = content.filter(|c| !c.is_null()) {
                t.push_str(&format!(" Content: {}", compact(c, 300)));
            }
        }
        (title, state) => {
            if let Some(title) = title {
                t.push_str(&format!(" Title \"{title}\"."));
            }
            if let Some(st) = state {
                t.push_str(&format!(" State `{st}`."));
            }
        }
    }
    let mut part = Part::new(t, Evidence::Found);
    part.cite(s.id);
    part
}

fn amend_part(out: amend::Output, args: Option<amend::Args>) -> Part {
    let contract = out.contract.unwrap_or_default();
    let name = contract
        .name
        .or_else(|| args.map(|a| a.contract))
        .unwrap_or_else(|| "the contract".into());
    let diffs: Vec<String> = out
        .after
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, a)| match out.before.get(k) {
                    Some(b) if b != a => format!("{k} {} → {}", compact(b, 80), compact(a, 80)),
                    Some(_) => format!("{k} stays {}", compact(a, 80)),
                    None => format!("{k} → {}", compact(a, 80)),
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = out
        .summary
        .filter(|s| !s.trim().is_empty())
        .or_else(|| (!diffs.is_empty()).then(|| format!("{name}: {}", diffs.join(", "))))
        .unwrap_or_else(|| format!("change {name}"));
    let mut text = format!(
        "I proposed a change to {name}: {}",
        summary.trim_end_matches(['.', ' '])
    );
    if !diffs.is_empty() {
        text.push_str(&format!(" ({})", diffs.join("; ")));
    }
    text.push_str(". Nothing has changed yet: the proposal");
    if let Some(p) = out.proposal_id {
        text.push_str(&format!(" {p}"));
    }
    text.push_str(&format!(
        " is {} and awaits your confirmation.",
        out.status.as_deref().unwrap_or("pending")
    ));
    let mut action = Map::new();
    action.insert("type".into(), json!(ToolName::ProposeAmendment.as_str()));
    action.insert("summary".into(), json!(summary));
    action.insert("target".into(), json!(name));
    if let Some(p) = out.proposal_id {
        action.insert("proposal_id".into(), json!(p));
    }
    let mut part = Part::new(text, Evidence::Found);
    part.actions.push(Value::Object(action));
    part.cite(contract.id);
    part
}

fn simulate_part(out: simulate::Output, args: Option<simulate::Args>) -> Part {
    let law = out.law.unwrap_or_default();
    let set = args
        .as_ref()
        .map(|a| {
            a.set
                .iter()
                .map(|(k, v)| format!("{k} = {}", compact(v, 60)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .map(|s| format!(" with {s}"))
        .unwrap_or_default();
    let name = law
        .name
        .or_else(|| args.map(|a| a.law))
        .unwrap_or_else(|| "the law".into());
    let seq = law.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
    let over = out
        .evaluated
        .map(|n| {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            format!(" over {}", plural(n, "contract"))
        })
        .unwrap_or_default();
    let mut text_out = format!("Simulating law {name}{seq}{set}{over}: ");
    if out.changes.is_empty() {
        text_out.push_str("no contract's triage would change. ");
    } else {
        let lines: Vec<String> = out
            .changes
            .iter()
            .map(|c| {
                format!(
                    "- {}: `{}` → `{}`",
                    c.name
                        .clone()
                        .or_else(|| c.contract_id.map(|id| id.to_string()))
                        .unwrap_or_else(|| "?".into()),
                    text(c.from.as_ref()).unwrap_or_else(|| "?".into()),
                    text(c.to.as_ref()).unwrap_or_else(|| "?".into()),
                )
            })
            .collect();
        text_out.push_str(&format!(
            "{} would change triage:\n{}\n",
            plural(out.changes.len(), "contract"),
            lines.join("\n")
        ));
    }
    text_out.push_str("This is a simulation: nothing was decided or changed.");
    let evidence = if out.evaluated == Some(0) {
        Evidence::Nothing
    } else {
        Evidence::Found
    };
    let mut part = Part::new(text_out, evidence);
    part.cite(law.id);
    for c in &out.changes {
        part.cite(c.contract_id);
    }
    part
}
