//! Writing the answer from the turn's tool results. Which tool ran comes from the call each
//! result answers (the tool-call/tool-result pairing), and its result is read as that tool's
//! `Output` type; only what tools pass through from span content as written (a contract's
//! title, a decision's actions and variables) is read as JSON.

use std::collections::HashSet;
use std::fmt::Display;

use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Answer, Telemetry};
use crate::chat::providers::ToolCall;
use crate::chat::tools::{
    ToolError, ToolName, Truncated, explain_decision as explain, get_span,
    propose_amendment as amend, query_ledger as query, simulate_law as simulate,
};
use Evidence::{Error, Found, Nothing};
use ToolName as T;
use query::Output as Q;

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

fn part(text: String, evidence: Evidence, cites: impl IntoIterator<Item = Option<Uuid>>) -> Part {
    let citations = cites.into_iter().flatten().collect();
    Part {
        text,
        citations,
        actions: Vec::new(),
        evidence,
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
    let confidence = match (has(Found), has(Nothing), has(Error)) {
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
        follow_up_question: has(Error).then(|| {
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
        telemetry: Telemetry { tool_use_count },
    };
    (answer, shape.map_or("answer", ToolName::as_str))
}

/// One result, read as its tool's `Output` (or as the error or cut-off result any tool may
/// return instead).
fn read(tool: Option<ToolName>, name: &str, args: &Value, v: &Value) -> Part {
    if let Ok(ToolError { error }) = ToolError::deserialize(v) {
        return error_part(tool, name, args, &compact(&error, 300));
    }
    let Some(tool) = tool else {
        return part(format!("`{name}` returned: {}", compact(v, 300)), Found, []);
    };
    let part = match tool {
        ToolName::ExplainDecision => {
            explain::Output::deserialize(v).map(|o| explain_part(o, typed_args(args)))
        }
        ToolName::QueryLedger => query::Output::deserialize(v)
            .map(|o| query_part(o, typed_args(args).unwrap_or_default())),
        ToolName::GetSpan => get_span::Output::deserialize(v).map(get_span_part),
        ToolName::ProposeAmendment => {
            amend::Output::deserialize(v).map(|o| amend_part(o, typed_args(args)))
        }
        ToolName::SimulateLaw => {
            simulate::Output::deserialize(v).map(|o| simulate_part(o, typed_args(args)))
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
fn typed_args<A: for<'de> Deserialize<'de>>(args: &Value) -> Option<A> {
    A::deserialize(args).ok()
}

/// `pre`, the value and `post`, or nothing when there is no value.
fn opt(pre: &str, v: Option<impl Display>, post: &str) -> String {
    v.map(|v| format!("{pre}{v}{post}")).unwrap_or_default()
}

/// `items` joined by `sep` between `pre` and `post`, or nothing when there are none.
fn joined(pre: &str, items: &[String], sep: &str, post: &str) -> String {
    opt(pre, (!items.is_empty()).then(|| items.join(sep)), post)
}

/// `v`, or `?` for what the result did not say.
fn q(v: Option<String>) -> String {
    v.unwrap_or_else(|| "?".into())
}

/// The text of a value passed through from span content: strings as they are, other scalars
/// and structures as compact JSON, nothing for null.
fn text(v: Option<&Value>) -> Option<String> {
    let v = v.filter(|v| !v.is_null())?;
    Some(v.as_str().map_or_else(|| compact(v, 120), str::to_string))
}

/// [`text`] of the field at a dotted path.
fn at(v: Option<&Value>, path: &str) -> Option<String> {
    text(path.split('.').try_fold(v?, |cur, k| cur.get(k)))
}

/// A value for a person: strings as they are, anything else as compact JSON, cut at `max`.
fn compact(v: &Value, max: usize) -> String {
    let s = v.as_str().map_or_else(|| v.to_string(), str::to_string);
    if s.chars().count() <= max {
        return s;
    }
    s.chars().take(max).chain(['…']).collect()
}

fn sentence(s: &str) -> String {
    let s = s.trim();
    format!(
        "{s}{}",
        if s.ends_with(['.', '!', '?']) {
            ""
        } else {
            "."
        }
    )
}

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

/// The count beyond `shown`, if any.
fn beyond(len: usize, shown: usize) -> Option<usize> {
    len.checked_sub(shown).filter(|n| *n > 0)
}

/// What each tool was asked to do, and the argument that names its object.
const ATTEMPTS: [(T, &str, &str); 5] = [
    (T::ExplainDecision, "explain the decision on", "contract"),
    (T::QueryLedger, "query the ledger", ""),
    (T::GetSpan, "read span", "id"),
    (T::ProposeAmendment, "propose the change to", "contract"),
    (T::SimulateLaw, "simulate law", "law"),
];

fn error_part(tool: Option<ToolName>, name: &str, args: &Value, error: &str) -> Part {
    let what = match ATTEMPTS.iter().find(|(t, ..)| Some(*t) == tool) {
        Some((_, verb, key)) => format!("{verb} {}", at(Some(args), key).unwrap_or_default()),
        None => format!("use {name}"),
    };
    part(
        sentence(&format!("I could not {}: {error}", what.trim())),
        Error,
        [],
    )
}

/// The keys under which a law's action names itself.
const ACTION_NAME_KEYS: [&str; 5] = ["type", "action", "kind", "name", "do"];

/// Renders one action of a decision (free-form law output): `terminate(reason=…)`.
fn action_text(a: &Value) -> String {
    let named = a.as_object().and_then(|o| {
        let (key, name) = ACTION_NAME_KEYS
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str).map(|s| (*k, s)))?;
        Some((o, key, name))
    });
    let Some((o, key, name)) = named else {
        return compact(a, 120);
    };
    let mut args = Vec::new();
    for (k, v) in o.iter().filter(|(k, v)| *k != key && !v.is_null()) {
        match v.as_object() {
            Some(inner) if ["args", "params", "with", "arguments"].contains(&k.as_str()) => {
                args.extend(inner.iter().map(|(k, v)| format!("{k}={}", compact(v, 80))));
            }
            _ => args.push(format!("{k}={}", compact(v, 80))),
        }
    }
    format!("{name}{}", joined("(", &args, ", ", ")"))
}

fn actions_text(actions: Option<&Value>) -> String {
    match actions.and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a.iter().map(action_text).collect::<Vec<_>>().join(", "),
        _ => "none".into(),
    }
}

/// The variables a decision was made on, the usual decisive ones first.
fn variables_text(vars: Option<&Value>) -> String {
    const FIRST: &str = "deadline_at accepted state now evidence evidence_count approvals quorum";
    let Some(o) = vars.and_then(Value::as_object) else {
        return String::new();
    };
    let first = || FIRST.split(' ');
    let mut keys: Vec<&str> = first().filter(|k| o.contains_key(*k)).collect();
    keys.extend(
        o.keys()
            .map(String::as_str)
            .filter(|k| !first().any(|f| f == *k)),
    );
    let shown: Vec<String> = keys
        .iter()
        .take(8)
        .map(|k| format!("{k} {}", compact(&o[*k], 80)))
        .collect();
    format!(
        "{}{}",
        shown.join(", "),
        opt(" (and ", beyond(keys.len(), 8), " more)")
    )
}

/// How a decision's first action reads in "D1 was … by law".
fn outcome_verb(actions: Option<&Value>) -> &'static str {
    const VERBS: [(&str, &str); 5] = [
        ("terminate", "terminated"),
        ("hold", "put on hold"),
        ("accept", "accepted"),
        ("void", "voided"),
        ("", "evaluated"),
    ];
    let first = actions
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| {
            a.as_str().or_else(|| {
                ACTION_NAME_KEYS
                    .iter()
                    .find_map(|k| a.get(*k).and_then(Value::as_str))
            })
        });
    let first = first.unwrap_or_default().to_lowercase();
    VERBS
        .iter()
        .find(|(a, _)| *a == first)
        .map_or("acted on", |(_, v)| v)
}

/// `scheduled_at`, else `at`, of a decision.
fn when(d: &explain::Decision) -> Option<String> {
    text(d.scheduled_at.as_ref()).or_else(|| text(d.at.as_ref()))
}

fn explain_part(out: explain::Output, args: Option<explain::Args>) -> Part {
    let (decisions, history) = (&out.decisions, &out.history);
    let found = out.contract.is_some() || !decisions.is_empty() || !history.is_empty();
    let c = out.contract.clone().unwrap_or_default();
    let name = c.name.clone().or_else(|| args.map(|a| a.contract));
    let name = name.unwrap_or_else(|| "the contract".into());
    if !found {
        let text =
            format!("I found nothing about {name}: no contract, history or decision came back.");
        return part(text, Nothing, []);
    }
    let title = opt(" (\"", text(c.title.as_ref()), "\")");
    // The latest decision (highest seq; the last one when seqs are missing) is the decisive one.
    let Some((li, d)) = decisions
        .iter()
        .enumerate()
        .max_by_key(|(i, d)| (d.seq, *i))
    else {
        let lines: Vec<String> = history
            .iter()
            .take(20)
            .map(|h| {
                let (seq, at, state) =
                    (h.seq.map(|s| s.to_string()), h.at.clone(), h.state.clone());
                let status = opt(" (", h.status.as_ref(), ")");
                format!(
                    "- seq {} at {}: `{}`{status}{}",
                    q(seq),
                    q(at),
                    q(state),
                    opt(" — ", text(h.reason.as_ref()), "")
                )
            })
            .collect();
        let more = opt("\n… and ", beyond(history.len(), 20), " more.");
        let history_text = match lines.is_empty() {
            true => " Its history is empty.".to_string(),
            false => format!(" History:\n{}{more}", lines.join("\n")),
        };
        let state = c
            .state
            .as_ref()
            .map_or(".".into(), |s| format!("; it is `{s}`."));
        let deadline = opt(" Its deadline is ", text(c.deadline_at.as_ref()), ".");
        let text = format!(
            "No law decision about {name}{title} is recorded{state}{deadline}{history_text}"
        );
        return part(text, Found, history.iter().map(|h| h.id).chain([c.id]));
    };
    let vars = variables_text(d.variables.as_ref());
    // Variables the law needed and could not read decide a `doubt` as much as those it saw.
    let missing: Vec<String> = match &d.missing {
        Some(Value::Array(a)) => a.iter().map(|m| compact(m, 60)).collect(),
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let because = format!(
        "{}{}{}",
        opt(" because ", (!vars.is_empty()).then_some(vars), ""),
        joined(" (missing: ", &missing, ", ", ")"),
        if d.fail_closed == Some(json!(true)) {
            " (the law failed closed)"
        } else {
            ""
        },
    );
    let earlier: Vec<String> = decisions
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .take(5)
        .map(|(_, e)| {
            format!(
                "{} by {}: triage `{}`",
                q(when(e)),
                q(text(e.law.name.as_ref())),
                q(text(e.triage.as_ref()))
            )
        })
        .collect();
    let text = format!(
        "{name}{title} was {} at the midnight of {} by law {}{}: triage `{}`{because}; actions: {}.{}{}",
        outcome_verb(d.actions.as_ref()),
        when(d).unwrap_or_else(|| "an unrecorded time".into()),
        text(d.law.name.as_ref()).unwrap_or_else(|| "an unnamed law".into()),
        opt(" (seq ", d.law.seq, ")"),
        text(d.triage.as_ref()).unwrap_or_else(|| "unknown".into()),
        actions_text(d.actions.as_ref()),
        opt(" Its current state is `", c.state.as_ref(), "`."),
        joined(" Other decisions: ", &earlier, "; ", "."),
    );
    let cites = decisions.iter().flat_map(|d| [d.id, d.law.id]);
    part(
        text,
        Found,
        cites.chain(out.laws.iter().map(|l| l.id)).chain([c.id]),
    )
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
    let value = |path: &str| {
        clauses
            .iter()
            .find(|c| c.path == path)
            .map(|c| text(c.value.as_ref()))
    };
    if value("content.guarantor.responded_at").is_some() {
        // `now-24h` reads "within 24 hours".
        let within = value("content.guarantor.requested_at")
            .flatten()
            .and_then(|v| {
                let d = v.strip_prefix("now-")?.to_string();
                let digits = d.chars().take_while(char::is_ascii_digit).count();
                Some(match (d[..digits].parse::<usize>(), &d[digits..]) {
                    (Ok(n), "h") => plural(n, "hour"),
                    (Ok(n), "d") => plural(n, "day"),
                    _ => d,
                })
            });
        return format!(
            "whose guarantor has not responded{}",
            opt(" within ", within, "")
        );
    }
    if let [c] = clauses
        && (c.path.as_str(), c.op.as_str()) == ("content.state", "eq")
        && let Some(s) = text(c.value.as_ref())
    {
        return format!("in state `{s}`");
    }
    let parts: Vec<String> = clauses
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.path,
                c.op,
                opt(" ", c.value.as_ref().map(|v| compact(v, 60)), "")
            )
        })
        .collect();
    joined("matching ", &parts, " and ", "")
}

const MORE_MATCHED: &str =
    "\nMore matched than were returned; ask for a narrower list to see the rest.";

fn query_part(out: query::Output, args: QueryArgs) -> Part {
    let entity = args.entity_type.unwrap_or_else(|| "span".into());
    let desc = describe_where(&args.clauses);
    let with_desc =
        |s: String| format!("{s}{}", opt(" ", Some(&desc).filter(|d| !d.is_empty()), ""));
    let said = |s: String, evidence| part(sentence(&with_desc(s)), evidence, []);
    let (spans, truncated) = match out {
        Q::Count { count: 0 } => return said(format!("There are no {entity}s"), Nothing),
        Q::Count { count } => {
            let n = usize::try_from(count).unwrap_or(usize::MAX);
            let verb = if n == 1 { "is" } else { "are" };
            return said(format!("There {verb} {}", plural(n, &entity)), Found);
        }
        Q::Groups { groups } if groups.is_empty() => return said(format!("No {entity}s"), Nothing),
        Q::Groups { groups } => {
            let lines: Vec<String> = (groups.iter())
                .map(|g| format!("- {}: {}", compact(&g.key, 80), g.count))
                .collect();
            let head = with_desc(format!("{entity}s by group"));
            return part(format!("{head}:\n{}", lines.join("\n")), Found, []);
        }
        Q::Rows { spans, .. } if spans.is_empty() => {
            return said(format!("I found no {entity}s"), Nothing);
        }
        Q::Rows {
            spans, truncated, ..
        } => (spans, truncated),
    };
    let guarantor = desc.contains("guarantor");
    let lines: Vec<String> = spans
        .iter()
        .take(50)
        .map(|s| {
            let content = s.content.as_ref();
            let name = text(s.name.as_ref())
                .or_else(|| text(s.this.as_ref()))
                .or_else(|| s.id.map(|id| id.to_string()));
            let state = at(content, "state");
            let other = state
                .is_none()
                .then(|| text(s.entity_type.as_ref()).filter(|e| *e != entity));
            let guarantor = |path| at(content, path).filter(|_| guarantor);
            format!(
                "- {}{}{}{}{}{}{}",
                q(name),
                opt(" \"", at(content, "title"), "\""),
                opt(" — state `", state.as_ref(), "`"),
                opt(" (", other.flatten(), ")"),
                opt("; guarantor ", guarantor("guarantor.who"), ""),
                opt(", asked at ", guarantor("guarantor.requested_at"), ""),
                opt(", at ", text(s.at.as_ref()).filter(|_| state.is_none()), ""),
            )
        })
        .collect();
    let text = format!(
        "{}:\n{}{}{}",
        with_desc(plural(spans.len(), &entity)),
        lines.join("\n"),
        opt("\n… and ", beyond(spans.len(), 50), " more."),
        opt("", truncated.then_some(MORE_MATCHED), ""),
    );
    part(text, Found, spans.iter().map(|s| s.id))
}

fn get_span_part(out: get_span::Output) -> Part {
    let s = out.span;
    let get = |v: &Option<Value>| q(text(v.as_ref()));
    let content = s.content.as_ref();
    let (title, state) = (at(content, "title"), at(content, "state"));
    let body = if title.is_none() && state.is_none() {
        opt(
            " Content: ",
            content.filter(|c| !c.is_null()).map(|c| compact(c, 300)),
            "",
        )
    } else {
        format!(
            "{}{}",
            opt(" Title \"", title, "\"."),
            opt(" State `", state, "`.")
        )
    };
    let text = format!(
        "Span {} ({}{}{}): {} {} {} at {}{}.{body}",
        q(s.id.map(|id| id.to_string())),
        get(&s.entity_type),
        opt(" `", text(s.name.as_ref()), "`"),
        opt(", seq ", s.seq, ""),
        get(&s.who),
        get(&s.did),
        get(&s.this),
        get(&s.at),
        opt(", status ", text(s.status.as_ref()), ""),
    );
    part(text, Found, [s.id])
}

fn amend_part(out: amend::Output, args: Option<amend::Args>) -> Part {
    let contract = out.contract.unwrap_or_default();
    let name = contract
        .name
        .or_else(|| args.map(|a| a.contract))
        .unwrap_or_else(|| "the contract".into());
    let diffs: Vec<String> = (out.after.as_object().into_iter().flatten())
        .map(|(k, a)| match out.before.get(k) {
            Some(b) if b != a => format!("{k} {} → {}", compact(b, 80), compact(a, 80)),
            Some(_) => format!("{k} stays {}", compact(a, 80)),
            None => format!("{k} → {}", compact(a, 80)),
        })
        .collect();
    let summary = (out.summary.filter(|s| !s.trim().is_empty()))
        .or_else(|| (!diffs.is_empty()).then(|| format!("{name}: {}", diffs.join(", "))))
        .unwrap_or_else(|| format!("change {name}"));
    let text = format!(
        "I proposed a change to {name}: {}{}. Nothing has changed yet: the proposal{} is {} and \
         awaits your confirmation.",
        summary.trim_end_matches(['.', ' ']),
        joined(" (", &diffs, "; ", ")"),
        opt(" ", out.proposal_id, ""),
        out.status.as_deref().unwrap_or("pending"),
    );
    let mut action =
        json!({"type": ToolName::ProposeAmendment.as_str(), "summary": summary, "target": name});
    if let Some(p) = out.proposal_id {
        action["proposal_id"] = json!(p);
    }
    let mut part = part(text, Found, [contract.id]);
    part.actions.push(action);
    part
}

fn simulate_part(out: simulate::Output, args: Option<simulate::Args>) -> Part {
    let law = out.law.unwrap_or_default();
    let set: Vec<String> = args
        .iter()
        .flat_map(|a| &a.set)
        .map(|(k, v)| format!("{k} = {}", compact(v, 60)))
        .collect();
    let name = law
        .name
        .or_else(|| args.map(|a| a.law))
        .unwrap_or_else(|| "the law".into());
    let lines: Vec<String> = (out.changes.iter())
        .map(|c| {
            let who = c
                .name
                .clone()
                .or_else(|| c.contract_id.map(|id| id.to_string()));
            format!(
                "- {}: `{}` → `{}`",
                q(who),
                q(text(c.from.as_ref())),
                q(text(c.to.as_ref()))
            )
        })
        .collect();
    let changes = match lines.is_empty() {
        true => "no contract's triage would change. ".to_string(),
        false => format!(
            "{} would change triage:\n{}\n",
            plural(lines.len(), "contract"),
            lines.join("\n")
        ),
    };
    let over = out
        .evaluated
        .map(|n| plural(usize::try_from(n).unwrap_or(usize::MAX), "contract"));
    let text = format!(
        "Simulating law {name}{}{}{}: {changes}This is a simulation: nothing was decided or changed.",
        opt(" (seq ", law.seq, ")"),
        joined(" with ", &set, ", ", ""),
        opt(" over ", over, ""),
    );
    let evidence = if out.evaluated == Some(0) {
        Nothing
    } else {
        Found
    };
    part(
        text,
        evidence,
        [law.id]
            .into_iter()
            .chain(out.changes.iter().map(|c| c.contract_id)),
    )
}
