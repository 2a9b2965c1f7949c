//! Recognising a question: which of the shapes the offline provider understands it has, and
//! the tool calls a model would make for it. A table of rules ([`RULES`]), most specific first,
//! each a set of cue words and a reader that pulls the details (contract names, durations, a
//! parameter and its value) out of the question; the first rule that applies decides.

use serde_json::{Map, Value, json, to_value};

use crate::chat::tools::{
    ToolName, ToolName as T, explain_decision, get_span, propose_amendment, recall_memory,
    remember, simulate_law,
};

/// The law a what-if question simulates when it names none.
const DEFAULT_LAW: &str = "midnight_deadline";

/// One word of the question: punctuation trimmed, a possessive `'s` removed.
struct Word {
    raw: String,
    lower: String,
    possessive: bool,
}

const TRIM: &str = "?!.,;:\"'()[]{}`“”‘’«»";

fn words(question: &str) -> Vec<Word> {
    let trim = |c: char| TRIM.contains(c);
    let word = |w: &str| {
        let w = w.trim_matches(trim);
        let stem = (["'s", "’s", "'S", "’S"].iter()).find_map(|s| w.strip_suffix(s));
        let raw = stem.map_or(w, |s| s.trim_matches(trim));
        let (lower, possessive) = (raw.to_lowercase(), stem.is_some());
        (!raw.is_empty()).then(|| Word {
            raw: raw.into(),
            lower,
            possessive,
        })
    };
    question.split_whitespace().filter_map(word).collect()
}

/// `8-4-4-4-12` hex digits, as the answer schema's citation pattern wants (36 characters
/// parse only in the hyphenated form).
fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// A contract name like `D1`, `D12` or `AB-7`: 1–4 letters, an optional dash, 1–6 digits.
fn is_contract_name(s: &str) -> bool {
    let letters = s.chars().take_while(char::is_ascii_alphabetic).count();
    let rest = &s[letters..];
    let digits = rest.strip_prefix('-').unwrap_or(rest);
    (1..=4).contains(&letters)
        && (1..=6).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
}

/// Contract names and UUIDs mentioned, in order, without repeats. A name written all in lower
/// case (`d1`) is upper-cased, the way contract names are written.
fn contracts(ws: &[Word]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in ws {
        let name = if is_uuid(&w.raw) {
            w.lower.clone()
        } else if is_contract_name(&w.raw) && w.raw == w.lower {
            w.raw.to_uppercase()
        } else if is_contract_name(&w.raw) {
            w.raw.clone()
        } else {
            continue;
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn number_word(s: &str) -> Option<u32> {
    const WORDS: &str = "zero one two three four five six seven eight nine ten eleven twelve";
    match s {
        "a" | "an" => Some(1),
        _ => s.parse().ok().or_else(|| {
            let n = WORDS.split(' ').position(|w| w == s)?;
            u32::try_from(n).ok()
        }),
    }
}

/// A unit of time, as the letter `query_ledger` and `propose_amendment` read (`h`, `d`), and
/// how many of it the word means.
fn unit(s: &str) -> Option<(char, u32)> {
    match s {
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(('h', 1)),
        "d" | "day" | "days" => Some(('d', 1)),
        "w" | "wk" | "wks" | "week" | "weeks" => Some(('d', 7)),
        _ => None,
    }
}

/// Durations mentioned (`24h`, `24 hours`, `48-hour`, `a day`, `two weeks`), each with the
/// index of its first word. Weeks become days.
fn durations(ws: &[Word]) -> Vec<(usize, u32, char)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        let w = ws[i].lower.as_str();
        let digits = w.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && digits < w.len() {
            let rest = w[digits..].trim_start_matches('-');
            if let (Ok(n), Some((u, k))) = (w[..digits].parse::<u32>(), unit(rest)) {
                out.push((i, n.saturating_mul(k), u));
                i += 1;
                continue;
            }
        }
        if let (Some(n), Some(next)) = (number_word(w), ws.get(i + 1))
            && let Some((u, k)) = unit(&next.lower)
        {
            out.push((i, n.saturating_mul(k), u));
            i += 2;
            continue;
        }
        i += 1;
    }
    out
}

/// A date as the user wrote it, when it is `YYYY-MM-DD` or RFC 3339.
fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        || chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A recognised question: its shape (recorded in `provider_execution` spans), the tool it
/// needs and the arguments of each call, written by the tools' own `Args` types.
pub(super) struct Intent {
    pub shape: &'static str,
    pub tool: ToolName,
    pub args: Vec<Value>,
}

pub(super) enum Classified {
    Known(Intent),
    /// Recognised in part; the hint says what is missing.
    Unclear(String),
    Unknown,
}

/// A recognised question; its shape is named after its tool unless `shape` says otherwise.
fn known(tool: T, shape: Option<&'static str>, args: Vec<Value>) -> Classified {
    let shape = shape.unwrap_or(tool.as_str());
    Classified::Known(Intent { shape, tool, args })
}

/// A tool's typed arguments as the JSON of a call.
fn typed(args: impl serde::Serialize) -> Value {
    to_value(args).unwrap_or(Value::Null)
}

/// Whether any word of the question is one of `cues` (words separated by spaces).
fn has(ws: &[Word], cues: &str) -> bool {
    ws.iter().any(|w| cues.split(' ').any(|c| c == w.lower))
}

fn has_phrase(ws: &[Word], phrase: &[&str]) -> bool {
    ws.windows(phrase.len())
        .any(|win| win.iter().zip(phrase).all(|(w, p)| w.lower == *p))
}

/// A question, read once.
struct Question<'a> {
    text: &'a str,
    ws: Vec<Word>,
    /// Contract names and UUIDs mentioned.
    named: Vec<String>,
}

/// The rules, most specific first: the first that applies classifies the question.
const RULES: [fn(&Question<'_>) -> Option<Classified>; 7] = [
    memory,
    show_span,
    what_if,
    change_deadline,
    silent_guarantors,
    explain,
    by_state,
];

/// Sorts a question into one of the shapes.
pub(super) fn classify(question: &str) -> Classified {
    let ws = words(question);
    let q = Question {
        text: question,
        named: contracts(&ws),
        ws,
    };
    (RULES.iter().find_map(|rule| rule(&q))).unwrap_or(Classified::Unknown)
}

/// "remember that …" (the rest is what to remember) and "what do you remember [about …]".
fn memory(q: &Question) -> Option<Classified> {
    // The cues are ASCII: find them in the original text, ignoring ASCII case, so the rest is
    // cut at a character boundary of the text as written.
    let find = |cue: &str| {
        (q.text.char_indices().map(|(i, _)| i))
            .find(|&i| (q.text.get(i..i + cue.len())).is_some_and(|s| s.eq_ignore_ascii_case(cue)))
    };
    for cue in ["remember that ", "remember: ", "please remember "] {
        if let Some(at) = find(cue) {
            let rest = q.text.get(at + cue.len()..).unwrap_or_default();
            let text = rest.trim().trim_end_matches(['.', '!']).trim().to_string();
            if text.is_empty() {
                return Some(Classified::Unclear("what should I remember?".into()));
            }
            let args = vec![typed(remember::Args {
                text,
                kind: None,
                supersedes: None,
            })];
            return Some(known(T::Remember, None, args));
        }
    }
    let asks = has_phrase(&q.ws, &["you", "remember"])
        || has_phrase(&q.ws, &["you", "know", "about", "me"])
        || has(&q.ws[..q.ws.len().min(1)], "recall");
    if !asks {
        return None;
    }
    let query = find(" about ")
        .and_then(|at| q.text.get(at + 7..))
        .map(|rest| rest.trim().trim_end_matches(['?', '.', '!']).to_string())
        .filter(|s| !matches!(s.as_str(), "me" | "me?" | ""))
        .unwrap_or_default();
    let args = vec![typed(recall_memory::Args { query })];
    Some(known(T::RecallMemory, None, args))
}

const SHOW_VERBS: &str = "show get open display fetch print";
const NOT_SHOW: &str = "why explain happened decision decided";

/// show/get span <uuid>: a UUID, the word `span` or a leading verb, and no why-question.
fn show_span(q: &Question) -> Option<Classified> {
    let ws = &q.ws;
    let id = ws.iter().find(|w| is_uuid(&w.raw))?.lower.parse().ok()?;
    let cued = has(ws, "span") || has(&ws[..ws.len().min(1)], SHOW_VERBS);
    let args = vec![typed(get_span::Args { id, seq: None })];
    (cued && !has(ws, NOT_SHOW)).then(|| known(T::GetSpan, None, args))
}

/// what if <param> were N, simulate <law> with <param>=N.
fn what_if(q: &Question) -> Option<Classified> {
    (has_phrase(&q.ws, &["what", "if"]) || has(&q.ws, "simulate simulation what-if"))
        .then(|| simulate(&q.ws))
}

const AMEND_VERBS: &str =
    "extend push postpone delay move set change shift bring pull give shorten update add prolong";

/// extend/postpone the deadline of X by N days, set X's deadline to <date>.
fn change_deadline(q: &Question) -> Option<Classified> {
    let ws = &q.ws;
    let deadline_word = has(ws, "deadline deadlines due");
    (has(ws, AMEND_VERBS) && (deadline_word || has(ws, "extend postpone delay"))).then(|| amend(q))
}

const GUARANTOR: &str = "guarantor guarantors surety";
const NO_RESPONSE: &str = "respond responded response answer answered reply replied confirm \
    confirmed silent pending waiting unanswered ignored not no never hasn't haven't didn't hasnt \
    havent didnt yet";

/// contracts whose guarantor has not responded within N hours/days (24 hours by default).
fn silent_guarantors(q: &Question) -> Option<Classified> {
    let ws = &q.ws;
    if !(has(ws, GUARANTOR) && has(ws, NO_RESPONSE)) {
        return None;
    }
    let (n, unit) = durations(ws).first().map_or((24, 'h'), |&(_, n, u)| (n, u));
    // `query_ledger` takes a ledger `QuerySpec`, written as the JSON a model would send.
    let args = json!({
        "entity_type": "contract",
        "where": [
            {"path": "content.guarantor.who", "op": "exists"},
            {"path": "content.guarantor.responded_at", "op": "missing"},
            {"path": "content.guarantor.requested_at", "op": "lt", "value": format!("now-{n}{unit}")},
        ],
        "latest_only": true,
        "order": "desc",
        "limit": 50,
    });
    Some(known(T::QueryLedger, Some("guarantor_silent"), vec![args]))
}

const EXPLAIN_CUES: &str = "why explain explanation happened happen reason reasons decided \
    decision decisions status tell about what was is did got get terminated held accepted voided";

/// why was X terminated, what happened to X, explain X: a contract named and a cue.
fn explain(q: &Question) -> Option<Classified> {
    let args = (q.named.iter()).map(|c| {
        typed(explain_decision::Args {
            contract: c.clone(),
        })
    });
    (!q.named.is_empty() && has(&q.ws, EXPLAIN_CUES))
        .then(|| known(T::ExplainDecision, None, args.collect()))
}

/// The states a contract can be in (the first word), and the words that name each.
const STATES: [&str; 5] = [
    "terminated terminate termination terminations",
    "open opened",
    "held hold",
    "accepted accept acceptance",
    "void voided",
];

/// which contracts are terminated, how many contracts are open.
fn by_state(q: &Question) -> Option<Classified> {
    let ws = &q.ws;
    // In the order the question names them.
    let first = |cues: &str| (ws.iter()).position(|w| cues.split(' ').any(|c| c == w.lower));
    let state = |cues: &'static str| Some((first(cues)?, cues.split(' ').next()?));
    let mut named: Vec<(usize, &str)> = STATES.into_iter().filter_map(state).collect();
    named.sort_unstable();
    let listed = has(ws, "contract contracts") || has(ws, "which list show what many");
    if named.is_empty() || !listed {
        return None;
    }
    let count = has_phrase(ws, &["how", "many"]) || has(ws, "count number");
    let args = named.into_iter().map(|(_, s)| {
        let mut args = json!({"entity_type": "contract", "latest_only": true,
            "where": [{"path": "content.state", "op": "eq", "value": s}]});
        if count {
            args["count"] = json!(true);
        }
        args
    });
    let shape = Some("contracts_by_state");
    Some(known(T::QueryLedger, shape, args.collect()))
}

fn simulate(ws: &[Word]) -> Classified {
    const FILLER: &[&str] = &[
        "we", "you", "i", "they", "the", "a", "an", "set", "change", "changed", "raise", "raised",
        "lower", "lowered", "its", "law", "with", "of",
    ];
    const VERBS: &[&str] = &[
        "were", "was", "is", "are", "be", "equals", "equal", "=", "to", "became", "becomes",
    ];
    let mut law: Option<String> = None;
    let mut param: Option<String> = None;
    let mut value: Option<Value> = None;

    // `quorum=3`, written as one word.
    for w in ws {
        if let Some((k, v)) = w.lower.split_once('=')
            && is_identifier(k)
            && !v.is_empty()
        {
            param = Some(k.to_string());
            value = Some(parse_value(v));
        }
    }
    // Law names: possessive identifiers, snake_case identifiers, the word after `law`/`under`.
    for (i, w) in ws.iter().enumerate() {
        let after_law = i > 0 && ["law", "under"].contains(&ws[i - 1].lower.as_str());
        if is_identifier(&w.lower)
            && (w.lower.contains('_') || w.possessive || after_law)
            && !FILLER.contains(&w.lower.as_str())
            && !VERBS.contains(&w.lower.as_str())
            && !["if", "what", "which", "the"].contains(&w.lower.as_str())
        {
            law = Some(w.lower.clone());
            break;
        }
    }
    if param.is_none() {
        let pos = |word: &str| ws.iter().position(|w| w.lower == word);
        let anchor = pos("if").or_else(|| pos("with"));
        if let Some(a) = anchor {
            let mut name: Vec<&str> = Vec::new();
            let mut i = a + 1;
            while let Some(w) = ws.get(i) {
                let l = w.lower.as_str();
                if VERBS.contains(&l) || number_word(l).is_some_and(|_| l != "a" && l != "an") {
                    break;
                }
                let is_law = law.as_deref() == Some(l);
                if !FILLER.contains(&l) && !is_law {
                    name.push(l);
                }
                i += 1;
            }
            if VERBS.contains(&ws.get(i).map_or("", |w| w.lower.as_str())) {
                i += 1;
            }
            if let Some(v) = ws.get(i)
                && !name.is_empty()
                && name.len() <= 3
                && name.iter().all(|n| is_identifier(n))
            {
                param = Some(name.join("_"));
                value = Some(parse_value(&v.lower));
            }
        }
    }
    match (param, value) {
        (Some(param), Some(value)) if law.as_deref() != Some(param.as_str()) => {
            let law = law.unwrap_or_else(|| DEFAULT_LAW.into());
            let set = Map::from_iter([(param, value)]);
            let args = vec![typed(simulate_law::Args { law, set, at: None })];
            known(T::SimulateLaw, None, args)
        }
        _ => Classified::Unclear(
            "I understood a what-if question, but not which parameter should take which value; \
             ask it like \"what if the quorum were 3?\"."
                .into(),
        ),
    }
}

fn parse_value(s: &str) -> Value {
    let float = || {
        (s.parse::<f64>().ok())
            .filter(|f| f.is_finite())
            .map(Value::from)
    };
    let number = s.parse::<i64>().ok().map(Value::from).or_else(float);
    number.unwrap_or_else(|| match s {
        "true" | "yes" => json!(true),
        "false" | "no" => json!(false),
        "a" | "an" => json!(s),
        _ => number_word(s).map_or_else(|| json!(s), Value::from),
    })
}

fn amend(q: &Question) -> Classified {
    let (ws, named) = (&q.ws, &q.named);
    if named.is_empty() {
        return Classified::Unclear(
            "I understood that you want to change a deadline, but not of which contract; name it \
             like \"extend D1's deadline by 3 days\"."
                .into(),
        );
    }
    let earlier = has(ws, "earlier sooner shorten forward advance reduce");
    let ds = durations(ws);
    // Prefer the duration right after `by`; otherwise the first one mentioned.
    let after_by = (ds.iter()).find(|(i, _, _)| *i > 0 && ws[*i - 1].lower == "by");
    let by = after_by.or_else(|| ds.first());
    let deadline = if let Some(&(_, n, u)) = by.filter(|(_, n, _)| *n > 0) {
        Some(format!("{}{n}{u}", if earlier { '-' } else { '+' }))
    } else {
        ws.iter().find(|w| is_date(&w.raw)).map(|w| w.raw.clone())
    };
    let Some(deadline) = deadline else {
        return Classified::Unclear(format!(
            "I understood that you want to change the deadline of {}, but not by how much; say \
             e.g. \"extend {}'s deadline by 3 days\" or \"set {}'s deadline to 2030-01-31\".",
            named.join(", "),
            named[0],
            named[0]
        ));
    };
    let args = named.iter().map(|c| {
        typed(propose_amendment::Args {
            contract: c.clone(),
            changes: json!({"deadline_at": deadline}),
            reason: q.text.trim().into(),
        })
    });
    known(T::ProposeAmendment, None, args.collect())
}
