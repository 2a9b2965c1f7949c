//! Writing the answer from the turn's tool results. Each result is read as the `Output` type of
//! the tool its call named (or as the error or cut-off result any tool may return instead);
//! only what tools pass through from span content as written (a contract's title, a decision's
//! actions and variables) is read as JSON.

use std::collections::HashSet;
use std::fmt::Display;

use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Answer;
use crate::chat::providers::ToolCall;
use crate::chat::tools::{
    ToolError, ToolName as T, Truncated, explain_decision as explain, get_span, list,
    propose_amendment as amend, query_ledger as query, recall_memory, remember,
    simulate_law as simulate,
};
use Evidence::{Error, Found, Nothing};

#[derive(Clone, Copy, PartialEq)]
enum Evidence {
    Found,
    Nothing,
    Error,
}

/// What one tool result contributes to the answer.
struct Part {
    text: String,
    citations: Vec<Uuid>,
    action: Option<Value>,
    evidence: Evidence,
}

fn part(text: String, evidence: Evidence, cites: impl IntoIterator<Item = Option<Uuid>>) -> Part {
    let citations = cites.into_iter().flatten().collect();
    Part {
        text,
        citations,
        action: None,
        evidence,
    }
}

const FOLLOW_UP: &str =
    "Could you check the contract name or span id (or try again in a moment) and ask again?";

/// The answer from every result of the turn, each with the call it answers, and the shape: the
/// tool of the first call.
pub(super) fn from_results(
    results: &[(&ToolCall, &str)],
    tool_use_count: usize,
) -> (Answer, &'static str) {
    let parts: Vec<Part> = results.iter().map(|(c, r)| read(c, r)).collect();
    let has = |e: Evidence| parts.iter().any(|p| p.evidence == e);
    let confidence = match (has(Found), has(Nothing), has(Error)) {
        (true, _, false) => 0.9,
        // Part of the question rests on evidence, part failed: still above review.
        (true, _, true) => 0.7,
        (false, true, false) => 0.8,
        _ => 0.3,
    };
    let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
    let mut seen = HashSet::new();
    let answer = Answer {
        text: texts.join("\n\n"),
        confidence,
        follow_up_question: has(Error).then(|| FOLLOW_UP.into()),
        actions: parts.iter().filter_map(|p| p.action.clone()).collect(),
        citations: (parts.iter().flat_map(|p| &p.citations))
            .filter(|c| seen.insert(**c))
            .map(Uuid::to_string)
            .collect(),
        telemetry: json!({ "tool_use_count": tool_use_count }),
    };
    let shape = results.first().and_then(|(c, _)| T::parse(&c.name));
    (answer, shape.map_or("answer", T::as_str))
}

/// One result, read as its tool's `Output`.
fn read(call: &ToolCall, content: &str) -> Part {
    let v: Value = serde_json::from_str(content).unwrap_or_default();
    if let Ok(ToolError { error }) = ToolError::deserialize(&v) {
        return error_part(call, &compact(&error, 300));
    }
    let args = &call.arguments;
    let part = match T::parse(&call.name) {
        Some(T::ExplainDecision) => explain::Output::deserialize(&v).map(explain_part),
        Some(T::QueryLedger) => query::Output::deserialize(&v).map(|o| query_part(o, args)),
        Some(T::List) => list::Output::deserialize(&v).map(|o| list_part(o, args)),
        Some(T::GetSpan) => get_span::Output::deserialize(&v).map(|o| get_span_part(o.span)),
        Some(T::ProposeAmendment) => amend::Output::deserialize(&v).map(amend_part),
        Some(T::SimulateLaw) => simulate::Output::deserialize(&v).map(simulate_part),
        Some(T::Remember) => remember::Output::deserialize(&v).map(remember_part),
        Some(T::RecallMemory) => recall_memory::Output::deserialize(&v).map(recall_part),
        None => Err(serde::de::Error::custom("not a tool")),
    };
    part.unwrap_or_else(|_| match Truncated::deserialize(&v) {
        Ok(_) => error_part(call, "its result was too large to read"),
        Err(_) => error_part(call, "its answer was not in the shape I expected"),
    })
}

/// What each tool was asked to do, and the argument that names its object.
const ATTEMPTS: [(T, &str, &str); 8] = [
    (T::List, "list", "kind"),
    (T::Remember, "remember", "text"),
    (T::RecallMemory, "recall what I remember about", "query"),
    (T::ExplainDecision, "explain the decision on", "contract"),
    (T::QueryLedger, "query the ledger", ""),
    (T::GetSpan, "read span", "id"),
    (T::ProposeAmendment, "propose the change to", "contract"),
    (T::SimulateLaw, "simulate law", "law"),
];

fn error_part(call: &ToolCall, error: &str) -> Part {
    let (_, verb, key) = (ATTEMPTS.iter())
        .find(|(t, ..)| Some(*t) == T::parse(&call.name))
        .unwrap_or(&(T::QueryLedger, "use", ""));
    let what = format!(
        "{verb} {}",
        at(Some(&call.arguments), key).unwrap_or_default()
    );
    let text = format!("I could not {}: {}", what.trim(), error.trim());
    let stop = if text.ends_with(['.', '!', '?']) {
        ""
    } else {
        "."
    };
    part(format!("{text}{stop}"), Error, [])
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

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

/// The lines shown of `items` (at most `max`), and a line saying how many more there are.
fn lines<T>(items: &[T], max: usize, line: impl Fn(&T) -> String) -> (String, String) {
    let shown: Vec<String> = items.iter().take(max).map(line).collect();
    let more = items.len().checked_sub(max).filter(|n| *n > 0);
    (shown.join("\n"), opt("\n… and ", more, " more."))
}

/// One action of a decision, as the law engine writes it (`{"action": "terminate", "reason":
/// …}`): `terminate(reason=…)`.
fn action_text(a: &Value) -> String {
    let Some((o, name)) = a.as_object().zip(a.get("action").and_then(Value::as_str)) else {
        return compact(a, 120);
    };
    let args: Vec<String> = (o.iter())
        .filter(|(k, v)| *k != "action" && !v.is_null())
        .map(|(k, v)| format!("{k}={}", compact(v, 80)))
        .collect();
    format!("{name}{}", joined("(", &args, ", ", ")"))
}

/// The variables a decision was made on, the usual decisive ones first.
fn variables_text(vars: Option<&Value>) -> String {
    const FIRST: &str = "deadline_at accepted state now evidence evidence_count approvals quorum";
    let Some(o) = vars.and_then(Value::as_object) else {
        return String::new();
    };
    let mut keys: Vec<&str> = FIRST.split(' ').filter(|k| o.contains_key(*k)).collect();
    let rest: Vec<&String> = o.keys().filter(|k| !keys.contains(&k.as_str())).collect();
    keys.extend(rest.into_iter().map(String::as_str));
    let shown: Vec<String> = (keys.iter().take(8))
        .map(|k| format!("{k} {}", compact(&o[*k], 80)))
        .collect();
    let more = keys.len().checked_sub(8).filter(|n| *n > 0);
    format!("{}{}", shown.join(", "), opt(" (and ", more, " more)"))
}

/// How a decision's first action reads in "D1 was … by law".
fn outcome_verb(actions: &[Value]) -> &'static str {
    let first = actions.first().and_then(|a| a.get("action")?.as_str());
    match first.unwrap_or_default() {
        "terminate" => "terminated",
        "hold" => "put on hold",
        "accept" => "accepted",
        "" => "evaluated",
        _ => "acted on",
    }
}

/// `scheduled_at`, else `at`, of a decision.
fn when(d: &explain::Decision) -> Option<String> {
    text(d.scheduled_at.as_ref()).or_else(|| text(d.at.as_ref()))
}

fn explain_part(out: explain::Output) -> Part {
    let (decisions, history) = (&out.decisions, &out.history);
    let c = out.contract.clone().unwrap_or_default();
    let name = c.name.as_deref().unwrap_or("the contract");
    let title = opt(" (\"", text(c.title.as_ref()), "\")");
    // The latest decision (highest seq; the last one when seqs are missing) is the decisive one.
    let Some((li, d)) = (decisions.iter().enumerate()).max_by_key(|(i, d)| (d.seq, *i)) else {
        let (lines, more) = lines(history, 20, |h| {
            format!(
                "- seq {} at {}: `{}`{}{}",
                q(h.seq.map(|s| s.to_string())),
                q(h.at.clone()),
                q(h.state.clone()),
                opt(" (", h.status.as_ref(), ")"),
                opt(" — ", text(h.reason.as_ref()), "")
            )
        });
        let history_text = match lines.is_empty() {
            true => " Its history is empty.".to_string(),
            false => format!(" History:\n{lines}{more}"),
        };
        let state = opt("; it is `", c.state.as_ref(), "`");
        let deadline = opt(" Its deadline is ", text(c.deadline_at.as_ref()), ".");
        let text = format!(
            "No law decision about {name}{title} is recorded{state}.{deadline}{history_text}"
        );
        return part(text, Found, history.iter().map(|h| h.id).chain([c.id]));
    };
    let vars = variables_text(d.variables.as_ref());
    // Variables the law needed and could not read decide a `doubt` as much as those it saw.
    let missing = (d.missing.as_ref().and_then(Value::as_array)).map_or(&[][..], |a| a);
    let missing: Vec<String> = missing.iter().map(|m| compact(m, 60)).collect();
    let missing = joined(" (missing: ", &missing, ", ", ")");
    let because = opt(" because ", (!vars.is_empty()).then_some(vars), "") + &missing;
    let earlier: Vec<String> = (decisions.iter().enumerate())
        .filter(|(i, _)| *i != li)
        .take(5)
        .map(|(_, e)| {
            let (law, triage) = (text(e.law.name.as_ref()), text(e.triage.as_ref()));
            format!("{} by {}: triage `{}`", q(when(e)), q(law), q(triage))
        })
        .collect();
    let actions = (d.actions.as_ref().and_then(Value::as_array)).map_or(&[][..], |a| a);
    let acts: Vec<String> = actions.iter().map(action_text).collect();
    let acts = acts.join(", ");
    let text = format!(
        "{name}{title} was {} at the midnight of {} by law {}{}: triage `{}`{because}; actions: \
         {}.{}{}",
        outcome_verb(actions),
        when(d).unwrap_or_else(|| "an unrecorded time".into()),
        text(d.law.name.as_ref()).unwrap_or_else(|| "an unnamed law".into()),
        opt(" (seq ", d.law.seq, ")"),
        text(d.triage.as_ref()).unwrap_or_else(|| "unknown".into()),
        if acts.is_empty() { "none" } else { &acts },
        opt(" Its current state is `", c.state.as_ref(), "`."),
        joined(" Other decisions: ", &earlier, "; ", "."),
    );
    let cites = decisions.iter().flat_map(|d| [d.id, d.law.id]);
    let laws = out.laws.iter().map(|l| l.id);
    part(text, Found, cites.chain(laws).chain([c.id]))
}

const MORE_MATCHED: &str =
    "\nMore matched than were returned; ask for a narrower list to see the rest.";

/// A contract query of the offline provider's own: guarantors who have not responded (the
/// `requested_at` clause reads `now-24h`) or contracts in a state.
fn query_part(out: query::Output, args: &Value) -> Part {
    let clause = |i: usize| at(args.pointer(&format!("/where/{i}")), "value");
    let desc = match clause(2).as_deref().and_then(|w| w.strip_prefix("now-")) {
        Some(w) => {
            let digits = w.chars().take_while(char::is_ascii_digit).count();
            let within = match (w[..digits].parse::<usize>(), &w[digits..]) {
                (Ok(n), "h") => plural(n, "hour"),
                (Ok(n), "d") => plural(n, "day"),
                _ => w.to_string(),
            };
            format!("whose guarantor has not responded within {within}")
        }
        None => format!("in state `{}`", q(clause(0))),
    };
    let guarantor = desc.starts_with("whose");
    let said = |s: &str, evidence| part(format!("{s} contracts {desc}."), evidence, []);
    let (spans, truncated) = match out {
        query::Output::Count { count: 0 } => return said("There are no", Nothing),
        query::Output::Count { count } => {
            let n = usize::try_from(count).unwrap_or(usize::MAX);
            let (verb, n) = (if n == 1 { "is" } else { "are" }, plural(n, "contract"));
            return part(format!("There {verb} {n} {desc}."), Found, []);
        }
        query::Output::Rows {
            spans, truncated, ..
        } if !spans.is_empty() => (spans, truncated),
        _ => return said("I found no", Nothing),
    };
    let (lines, more) = lines(&spans, 50, |s| {
        let content = s.content.as_ref();
        let name = text(s.name.as_ref()).or_else(|| s.id.map(|id| id.to_string()));
        let guarantor = |path| at(content, path).filter(|_| guarantor);
        format!(
            "- {}{}{}{}{}",
            q(name),
            opt(" \"", at(content, "title"), "\""),
            opt(" — state `", at(content, "state"), "`"),
            opt("; guarantor ", guarantor("guarantor.who"), ""),
            opt(", asked at ", guarantor("guarantor.requested_at"), ""),
        )
    });
    let text = format!(
        "{} {desc}:\n{lines}{more}{}",
        plural(spans.len(), "contract"),
        opt("", truncated.then_some(MORE_MATCHED), ""),
    );
    part(text, Found, spans.iter().map(|s| s.id))
}

fn list_part(out: list::Output, args: &Value) -> Part {
    if let Some(laws) = out.laws {
        let (lines, more) = lines(&laws, 50, |l| {
            format!(
                "- {}{}",
                q(text(l.name.as_ref())),
                opt(" — ", text(l.status.as_ref()), "")
            )
        });
        let text = format!("{}:\n{lines}{more}", plural(laws.len(), "law"));
        return part(
            text,
            if laws.is_empty() { Nothing } else { Found },
            laws.iter().map(|l| l.id),
        );
    }
    if let Some(decisions) = out.decisions {
        let (lines, more) = lines(&decisions, 50, |d| {
            format!(
                "- {}: {} by {} — triage `{}`",
                q(text(d.at.as_ref())),
                q(text(d.contract.as_ref())),
                q(text(d.law.as_ref())),
                q(text(d.triage.as_ref())),
            )
        });
        let text = format!(
            "The newest {}:\n{lines}{more}",
            plural(decisions.len(), "decision")
        );
        let evidence = if decisions.is_empty() { Nothing } else { Found };
        return part(text, evidence, decisions.iter().map(|d| d.id));
    }
    let contracts = out.contracts.unwrap_or_default();
    let state = at(Some(args), "state");
    let desc = opt(" in state `", state.as_ref(), "`");
    if contracts.is_empty() {
        let total = out.by_state.map_or(0, |b| b.values().sum::<i64>());
        let total = usize::try_from(total).unwrap_or(0);
        let text = format!(
            "None of the {} you may see is{desc}.",
            plural(total, "contract")
        );
        return part(text, Nothing, []);
    }
    let (lines, more) = lines(&contracts, 50, |c| {
        format!(
            "- {}{}{}",
            q(text(c.name.as_ref())),
            opt(" \"", text(c.title.as_ref()), "\""),
            opt(" — state `", text(c.state.as_ref()), "`"),
        )
    });
    let text = format!(
        "{}{desc}:\n{lines}{more}{}",
        plural(contracts.len(), "contract"),
        opt("", out.truncated.then_some(MORE_MATCHED), ""),
    );
    part(text, Found, contracts.iter().map(|c| c.id))
}

fn get_span_part(s: crate::chat::tools::SpanBrief) -> Part {
    let get = |v: &Option<Value>| q(text(v.as_ref()));
    let content = s.content.as_ref();
    let (title, state) = (at(content, "title"), at(content, "state"));
    let body = if title.is_none() && state.is_none() {
        let content = content.filter(|c| !c.is_null()).map(|c| compact(c, 300));
        opt(" Content: ", content, "")
    } else {
        opt(" Title \"", title, "\".") + &opt(" State `", state, "`.")
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

fn amend_part(out: amend::Output) -> Part {
    let contract = out.contract.unwrap_or_default();
    if let Some(refused) = out.refused {
        return part(refused, Found, [contract.id]);
    }
    let name = contract.name.unwrap_or_else(|| "the contract".into());
    let diffs: Vec<String> = (out.after.as_object().into_iter().flatten())
        .map(|(k, a)| match out.before.get(k) {
            Some(b) if b != a => format!("{k} {} → {}", compact(b, 80), compact(a, 80)),
            _ => format!("{k} stays {}", compact(a, 80)),
        })
        .collect();
    let summary = out.summary.unwrap_or_else(|| format!("change {name}"));
    let text = format!(
        "I proposed a change to {name}: {}{}. Nothing has changed yet: the proposal{} is {} and \
         awaits your confirmation.",
        summary.trim_end_matches(['.', ' ']),
        joined(" (", &diffs, "; ", ")"),
        opt(" ", out.proposal_id, ""),
        out.status.as_deref().unwrap_or("pending"),
    );
    let action = json!({"type": T::ProposeAmendment.as_str(), "summary": summary,
        "target": name, "proposal_id": out.proposal_id});
    Part {
        action: Some(action),
        ..part(text, Found, [contract.id])
    }
}

fn simulate_part(out: simulate::Output) -> Part {
    let law = out.law.unwrap_or_default();
    let set: Vec<String> = (out.set.iter())
        .map(|(k, v)| format!("{k} = {}", compact(v, 60)))
        .collect();
    let changes: Vec<String> = (out.changes.iter())
        .map(|c| {
            let (from, to) = (text(c.from.as_ref()), text(c.to.as_ref()));
            format!("- {}: `{}` → `{}`", q(c.name.clone()), q(from), q(to))
        })
        .collect();
    let (n, changes) = (plural(changes.len(), "contract"), changes.join("\n"));
    let changes = match changes.is_empty() {
        true => "no contract's triage would change. ".to_string(),
        false => format!("{n} would change triage:\n{changes}\n"),
    };
    let over =
        (out.evaluated).map(|n| plural(usize::try_from(n).unwrap_or(usize::MAX), "contract"));
    let text = format!(
        "Simulating law {}{}{}{}: {changes}This is a simulation: nothing was decided or changed.",
        law.name.as_deref().unwrap_or("the law"),
        opt(" (seq ", law.seq, ")"),
        joined(" with ", &set, ", ", ""),
        opt(" over ", over, ""),
    );
    let nothing = out.evaluated == Some(0);
    let evidence = if nothing { Nothing } else { Found };
    let cites = out.changes.iter().map(|c| c.contract_id);
    part(text, evidence, [law.id].into_iter().chain(cites))
}

fn remember_part(out: remember::Output) -> Part {
    let replaces = opt(" It replaces memory `", out.supersedes, "`.");
    let text = format!(
        "I will remember that {} (memory `{}`, {} layer).{replaces}",
        out.text.trim_end_matches(['.', '!']),
        out.id,
        out.layer.as_str()
    );
    part(text, Found, [Some(out.id)])
}

fn recall_part(out: recall_memory::Output) -> Part {
    if out.items.is_empty() {
        return part(
            "I have nothing remembered for you that fits.".into(),
            Nothing,
            [],
        );
    }
    let (list, _) = lines(&out.items, 10, |i| {
        format!("- {} (memory `{}`)", i.text, i.id)
    });
    let text = format!("I remember:\n{list}");
    part(text, Found, out.items.iter().map(|i| Some(i.id)))
}
