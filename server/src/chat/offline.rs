//! The embedded offline provider (`LOGLINE_PROVIDER=offline`, the default; DESIGN.md §7).
//!
//! It is not a language model and says so. It recognises a handful of question shapes about
//! contracts (why was D1 terminated, whose guarantor has not answered, which contracts are open,
//! extend a deadline, what if a law parameter changed, show a span), emits the tool calls a
//! model would make for them, and then writes the answer from the tool results in the answer
//! schema (`prompts/answer.schema.json`), citing only span ids the tools returned. Anything else
//! gets a plain statement of what it is, what it understands and how to configure a real
//! provider. It is deterministic (no clock, no randomness) so the whole chat pipeline — prompt,
//! tools, schema, spans — runs with no network and tests can assert on exact answers.

use std::collections::HashSet;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::prompt::{encoding_for, message_tokens};
use super::providers::{
    ChatMessage, Completion, CompletionRequest, Provider, ProviderError, Role, ToolCall,
};

/// The model name the offline provider reports (recorded in `provider_execution` spans).
pub const OFFLINE_MODEL: &str = "logline-offline-1";

/// The law a what-if question simulates when it names none.
const DEFAULT_LAW: &str = "midnight_deadline";

/// The embedded offline provider: a rule-based stand-in for a model, honest about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OfflineProvider;

impl OfflineProvider {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Provider for OfflineProvider {
    fn kind(&self) -> &str {
        "offline"
    }

    fn model(&self) -> &str {
        OFFLINE_MODEL
    }

    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        req.check()?;
        let reply = respond(req);
        if let Some(tx) = deltas
            && reply.message.tool_calls.is_empty()
        {
            for chunk in chunks(&reply.message.content, 3) {
                // A closed receiver only means nobody listens any more; the answer stands.
                let _ = tx.send(chunk).await;
            }
        }
        let (_, bpe) = encoding_for(OFFLINE_MODEL);
        let system = ChatMessage {
            role: Role::System,
            content: req.system.text().to_string(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        let tools = if req.tools.is_empty() {
            0
        } else {
            serde_json::to_string(&req.tools)
                .map(|s| bpe.encode_ordinary(&s).len())
                .unwrap_or(0)
        };
        let tokens_in = std::iter::once(&system)
            .chain(&req.messages)
            .map(|m| message_tokens(bpe, m))
            .sum::<usize>()
            + tools;
        let tokens_out = message_tokens(bpe, &reply.message);
        Ok(Completion {
            message: reply.message,
            tokens_in: u32::try_from(tokens_in).ok(),
            tokens_out: u32::try_from(tokens_out).ok(),
            latency: started.elapsed(),
            raw: reply.raw,
            attempts: 1,
        })
    }
}

/// Splits `text` into at most `n` pieces of about equal length, on char boundaries.
fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// What the provider answers: the assistant message and a small description of what it did.
struct Reply {
    message: ChatMessage,
    raw: Value,
}

/// The current turn: the last user message and what followed it.
struct Turn<'a> {
    question: &'a str,
    /// Tool calls the assistant made in this turn, in order.
    calls: Vec<&'a ToolCall>,
    /// Tool results of this turn, with the call each answers (when it can be found).
    results: Vec<(Option<&'a ToolCall>, &'a str)>,
}

fn current_turn(messages: &[ChatMessage]) -> Turn<'_> {
    let start = messages.iter().rposition(|m| m.role == Role::User);
    let question = start.map_or("", |i| messages[i].content.as_str());
    let rest = start.map_or(messages, |i| &messages[i + 1..]);
    let calls: Vec<&ToolCall> = rest
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| &m.tool_calls)
        .collect();
    let results = rest
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| {
            let call = m
                .tool_call_id
                .as_deref()
                .and_then(|id| calls.iter().copied().find(|c| c.id == id));
            (call, m.content.as_str())
        })
        .collect();
    Turn {
        question,
        calls,
        results,
    }
}

/// The whole decision, pure and synchronous: tool calls, an answer from results, or help.
fn respond(req: &CompletionRequest) -> Reply {
    let turn = current_turn(&req.messages);
    let tool_use_count = turn.calls.len();
    if !turn.results.is_empty() {
        let (answer, shape) = answer_from_results(&turn, tool_use_count);
        return final_reply(answer, shape, "answer");
    }
    let intent = classify(turn.question);
    match intent {
        Classified::Known(intent) => {
            let tool = intent.tool();
            if req.tools.is_empty() {
                let answer = Answer {
                    text: format!(
                        "I am LogLine's offline helper, not a language model. I recognise this \
                         as a question for the `{tool}` tool, but no tools are available to me \
                         in this turn, so I have no evidence from the ledger to answer with."
                    ),
                    confidence: 0.3,
                    follow_up_question: Some(
                        "Would you like to ask the same question again in a new turn?".into(),
                    ),
                    actions: Vec::new(),
                    citations: Vec::new(),
                    tool_use_count,
                };
                return final_reply(answer, intent.shape(), "no_tools");
            }
            if !req.tools.iter().any(|t| t.name == tool) {
                let hint = format!(
                    "This question needs the `{tool}` tool, which is not available in this turn."
                );
                return final_reply(help(Some(&hint), tool_use_count), intent.shape(), "help");
            }
            let calls: Vec<ToolCall> = intent
                .calls(turn.question)
                .into_iter()
                .enumerate()
                .map(|(i, (name, arguments))| ToolCall {
                    id: format!("call_{}", tool_use_count + i + 1),
                    name: name.to_string(),
                    arguments,
                })
                .collect();
            let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            let raw = json!({
                "offline": true,
                "model": OFFLINE_MODEL,
                "shape": intent.shape(),
                "step": "tool_calls",
                "tool_calls": names,
            });
            Reply {
                message: ChatMessage::assistant_tool_calls("", calls),
                raw,
            }
        }
        Classified::Unclear(hint) => {
            final_reply(help(Some(&hint), tool_use_count), "unclear", "help")
        }
        Classified::Unknown => final_reply(help(None, tool_use_count), "unknown", "help"),
    }
}

fn final_reply(answer: Answer, shape: &str, step: &str) -> Reply {
    let content = answer.to_json().to_string();
    Reply {
        message: ChatMessage::assistant(content),
        raw: json!({"offline": true, "model": OFFLINE_MODEL, "shape": shape, "step": step}),
    }
}

/// The answer object of `prompts/answer.schema.json`.
struct Answer {
    text: String,
    confidence: f64,
    follow_up_question: Option<String>,
    actions: Vec<Value>,
    citations: Vec<String>,
    tool_use_count: usize,
}

impl Answer {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        let text = if self.text.trim().is_empty() {
            "I have nothing to report.".to_string()
        } else {
            self.text.clone()
        };
        o.insert("text".into(), json!(text));
        o.insert("confidence".into(), json!(self.confidence));
        if let Some(q) = self.follow_up_question.as_ref().filter(|q| !q.is_empty()) {
            o.insert("follow_up_question".into(), json!(q));
        }
        o.insert("actions".into(), Value::Array(self.actions.clone()));
        o.insert("citations".into(), json!(self.citations));
        o.insert(
            "telemetry".into(),
            json!({"tool_use_count": self.tool_use_count}),
        );
        Value::Object(o)
    }
}

const EXAMPLES: [&str; 3] = [
    "Why was D1 terminated?",
    "Which contracts have a guarantor who hasn't responded in 24h?",
    "Extend D5's deadline by 3 days.",
];

/// What the offline provider is, what it understands, and how to configure a real model.
fn help(hint: Option<&str>, tool_use_count: usize) -> Answer {
    let mut text = String::new();
    if let Some(h) = hint {
        text.push_str(h);
        text.push_str("\n\n");
    }
    text.push_str(
        "I am LogLine's offline helper, not a language model: I only understand a few kinds of \
         question about contracts and the ledger, and I did not recognise this one. For example:\n",
    );
    for e in EXAMPLES {
        text.push_str(&format!("- \"{e}\"\n"));
    }
    text.push_str(
        "I also understand \"which contracts are open?\" (or terminated, held, accepted, void), \
         \"how many contracts are terminated?\", \"what happened to D4?\", \"what if the quorum \
         were 3?\" and \"show span <id>\".\n\n\
         To talk to a real model, configure a provider: LOGLINE_PROVIDER=openai with \
         OPENAI_BASE_URL, OPENAI_API_KEY and LOGLINE_MODEL (any OpenAI-compatible server: \
         OpenAI, vLLM, llama.cpp server, LM Studio), or LOGLINE_PROVIDER=ollama with OLLAMA_URL \
         and LOGLINE_MODEL.",
    );
    Answer {
        text,
        confidence: 0.9,
        follow_up_question: Some(format!("Would you like to try: \"{}\"", EXAMPLES[0])),
        actions: Vec::new(),
        citations: Vec::new(),
        tool_use_count,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the question.
// ---------------------------------------------------------------------------------------------

/// One word of the question: punctuation trimmed, a possessive `'s` removed.
#[derive(Debug)]
struct Word {
    raw: String,
    lower: String,
    possessive: bool,
}

const TRIM: &[char] = &[
    '?', '!', '.', ',', ';', ':', '"', '\'', '(', ')', '[', ']', '{', '}', '`', '“', '”', '‘', '’',
    '«', '»',
];

fn words(question: &str) -> Vec<Word> {
    question
        .split_whitespace()
        .filter_map(|w| {
            let mut w = w.trim_matches(TRIM);
            let mut possessive = false;
            for suffix in ["'s", "’s", "'S", "’S"] {
                if let Some(stem) = w.strip_suffix(suffix) {
                    w = stem.trim_matches(TRIM);
                    possessive = true;
                    break;
                }
            }
            (!w.is_empty()).then(|| Word {
                raw: w.to_string(),
                lower: w.to_lowercase(),
                possessive,
            })
        })
        .collect()
}

/// `8-4-4-4-12` hex digits, as the answer schema's citation pattern wants.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
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
        } else if is_contract_name(&w.raw) {
            if w.raw == w.lower {
                w.raw.to_uppercase()
            } else {
                w.raw.clone()
            }
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
    const WORDS: [&str; 13] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    match s {
        "a" | "an" => Some(1),
        _ => s.parse().ok().or_else(|| {
            WORDS
                .iter()
                .position(|w| *w == s)
                .and_then(|i| u32::try_from(i).ok())
        }),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Hours,
    Days,
}

fn unit(s: &str) -> Option<(Unit, u32)> {
    match s {
        "h" | "hr" | "hrs" | "hour" | "hours" => Some((Unit::Hours, 1)),
        "d" | "day" | "days" => Some((Unit::Days, 1)),
        "w" | "wk" | "wks" | "week" | "weeks" => Some((Unit::Days, 7)),
        _ => None,
    }
}

/// Durations mentioned (`24h`, `24 hours`, `48-hour`, `a day`, `two weeks`), each with the
/// index of its first word. Weeks become days.
fn durations(ws: &[Word]) -> Vec<(usize, u32, Unit)> {
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

fn span_text(n: u32, u: Unit) -> String {
    match (n, u) {
        (1, Unit::Hours) => "1 hour".into(),
        (1, Unit::Days) => "1 day".into(),
        (n, Unit::Hours) => format!("{n} hours"),
        (n, Unit::Days) => format!("{n} days"),
    }
}

fn unit_letter(u: Unit) -> char {
    match u {
        Unit::Hours => 'h',
        Unit::Days => 'd',
    }
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

/// The question shapes the offline provider understands.
#[derive(Debug, PartialEq)]
enum Intent {
    GetSpan(String),
    Simulate {
        law: String,
        param: String,
        value: Value,
    },
    Amend {
        contracts: Vec<String>,
        deadline: String,
    },
    Guarantor {
        amount: u32,
        unit: Unit,
    },
    Explain(Vec<String>),
    States {
        states: Vec<&'static str>,
        count: bool,
    },
}

#[derive(Debug, PartialEq)]
enum Classified {
    Known(Intent),
    /// Recognised in part; the hint says what is missing.
    Unclear(String),
    Unknown,
}

impl Intent {
    fn tool(&self) -> &'static str {
        match self {
            Self::GetSpan(_) => "get_span",
            Self::Simulate { .. } => "simulate_law",
            Self::Amend { .. } => "propose_amendment",
            Self::Guarantor { .. } | Self::States { .. } => "query_ledger",
            Self::Explain(_) => "explain_decision",
        }
    }

    fn shape(&self) -> &'static str {
        match self {
            Self::GetSpan(_) => "get_span",
            Self::Simulate { .. } => "simulate_law",
            Self::Amend { .. } => "propose_amendment",
            Self::Guarantor { .. } => "guarantor_silent",
            Self::States { .. } => "contracts_by_state",
            Self::Explain(_) => "explain_decision",
        }
    }

    /// The calls a model would make: `(tool, arguments)`.
    fn calls(&self, question: &str) -> Vec<(&'static str, Value)> {
        let tool = self.tool();
        match self {
            Self::GetSpan(id) => vec![(tool, json!({"id": id}))],
            Self::Simulate { law, param, value } => {
                let mut set = Map::new();
                set.insert(param.clone(), value.clone());
                vec![(tool, json!({"law": law, "set": set}))]
            }
            Self::Amend {
                contracts,
                deadline,
            } => contracts
                .iter()
                .map(|c| {
                    (
                        tool,
                        json!({
                            "contract": c,
                            "changes": {"deadline_at": deadline},
                            "reason": question.trim(),
                        }),
                    )
                })
                .collect(),
            Self::Guarantor { amount, unit } => vec![(
                tool,
                json!({
                    "entity_type": "contract",
                    "where": [
                        {"path": "content.guarantor.who", "op": "exists"},
                        {"path": "content.guarantor.responded_at", "op": "missing"},
                        {
                            "path": "content.guarantor.requested_at",
                            "op": "lt",
                            "value": format!("now-{amount}{}", unit_letter(*unit)),
                        },
                    ],
                    "latest_only": true,
                    "order": "desc",
                    "limit": 50,
                }),
            )],
            Self::Explain(contracts) => contracts
                .iter()
                .map(|c| (tool, json!({"contract": c})))
                .collect(),
            Self::States { states, count } => states
                .iter()
                .map(|s| {
                    let mut args = json!({
                        "entity_type": "contract",
                        "where": [{"path": "content.state", "op": "eq", "value": s}],
                        "latest_only": true,
                    });
                    if *count && let Some(o) = args.as_object_mut() {
                        o.insert("count".into(), json!(true));
                    }
                    (tool, args)
                })
                .collect(),
        }
    }
}

fn has(ws: &[Word], any: &[&str]) -> bool {
    ws.iter().any(|w| any.contains(&w.lower.as_str()))
}

fn has_phrase(ws: &[Word], phrase: &[&str]) -> bool {
    ws.windows(phrase.len())
        .any(|win| win.iter().zip(phrase).all(|(w, p)| w.lower == *p))
}

const EXPLAIN_CUES: &[&str] = &[
    "why",
    "explain",
    "explanation",
    "happened",
    "happen",
    "reason",
    "reasons",
    "decided",
    "decision",
    "decisions",
    "status",
    "tell",
    "about",
    "what",
    "was",
    "is",
    "did",
    "got",
    "get",
    "terminated",
    "held",
    "accepted",
    "voided",
];

/// Sorts a question into one of the shapes, most specific first.
fn classify(question: &str) -> Classified {
    let ws = words(question);
    let named = contracts(&ws);
    let uuids: Vec<&Word> = ws.iter().filter(|w| is_uuid(&w.raw)).collect();

    // show/get span <uuid>
    if let Some(id) = uuids.first()
        && (has(&ws, &["span"])
            || ws.first().is_some_and(|w| {
                ["show", "get", "open", "display", "fetch", "print"].contains(&w.lower.as_str())
            }))
        && !has(&ws, &["why", "explain", "happened", "decision", "decided"])
    {
        return Classified::Known(Intent::GetSpan(id.lower.clone()));
    }

    // what if <param> were N
    if has_phrase(&ws, &["what", "if"]) || has(&ws, &["simulate", "simulation", "what-if"]) {
        return simulate(&ws);
    }

    // extend/postpone the deadline of X by N days, set X's deadline to <date>
    const AMEND_VERBS: &[&str] = &[
        "extend", "push", "postpone", "delay", "move", "set", "change", "shift", "bring", "pull",
        "give", "shorten", "update", "add", "prolong",
    ];
    let deadline_word = has(&ws, &["deadline", "deadlines", "due"]);
    if has(&ws, AMEND_VERBS) && (deadline_word || has(&ws, &["extend", "postpone", "delay"])) {
        return amend(&ws, named);
    }

    // contracts whose guarantor has not responded within N hours/days
    if has(&ws, &["guarantor", "guarantors", "surety"])
        && has(
            &ws,
            &[
                "respond",
                "responded",
                "response",
                "answer",
                "answered",
                "reply",
                "replied",
                "confirm",
                "confirmed",
                "silent",
                "pending",
                "waiting",
                "unanswered",
                "ignored",
                "not",
                "no",
                "never",
                "hasn't",
                "haven't",
                "didn't",
                "hasnt",
                "havent",
                "didnt",
                "yet",
            ],
        )
    {
        let (amount, unit) = durations(&ws)
            .first()
            .map_or((24, Unit::Hours), |&(_, n, u)| (n, u));
        return Classified::Known(Intent::Guarantor { amount, unit });
    }

    // why was X terminated, what happened to X, explain X
    if !named.is_empty() && has(&ws, EXPLAIN_CUES) {
        return Classified::Known(Intent::Explain(named));
    }

    // which contracts are terminated, how many contracts are open
    let mut states: Vec<&'static str> = Vec::new();
    for w in &ws {
        let s = match w.lower.as_str() {
            "terminated" | "terminate" | "termination" | "terminations" => "terminated",
            "open" | "opened" => "open",
            "held" | "hold" => "held",
            "accepted" | "accept" | "acceptance" => "accepted",
            "void" | "voided" => "void",
            _ => continue,
        };
        if !states.contains(&s) {
            states.push(s);
        }
    }
    if !states.is_empty()
        && (has(&ws, &["contract", "contracts"])
            || has(&ws, &["which", "list", "show", "what", "many"]))
    {
        let count = has_phrase(&ws, &["how", "many"]) || has(&ws, &["count", "number"]);
        return Classified::Known(Intent::States { states, count });
    }
    Classified::Unknown
}

fn simulate(ws: &[Word]) -> Classified {
    const FILLER: &[&str] = &[
        "we", "you", "i", "they", "the", "a", "an", "set", "change", "changed", "raise", "raised",
        "lower", "lowered", "its", "law", "with", "of",
    ];
    const VERBS: &[&str] = &[
        "were", "was", "is", "are", "be", "equals", "equal", "=", "to", "became", "becomes",
    ];
    let unclear = || {
        Classified::Unclear(
            "I understood a what-if question, but not which parameter should take which value; \
             ask it like \"what if the quorum were 3?\"."
                .into(),
        )
    };
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
        let anchor = ws
            .iter()
            .position(|w| w.lower == "if")
            .or_else(|| ws.iter().position(|w| w.lower == "with"));
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
            Classified::Known(Intent::Simulate {
                law: law.unwrap_or_else(|| DEFAULT_LAW.into()),
                param,
                value,
            })
        }
        _ => unclear(),
    }
}

fn parse_value(s: &str) -> Value {
    if let Ok(n) = s.parse::<i64>() {
        return json!(n);
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return json!(f);
    }
    match s {
        "true" | "yes" => json!(true),
        "false" | "no" => json!(false),
        _ => number_word(s)
            .filter(|_| s != "a" && s != "an")
            .map_or_else(|| json!(s), |n| json!(n)),
    }
}

fn amend(ws: &[Word], named: Vec<String>) -> Classified {
    if named.is_empty() {
        return Classified::Unclear(
            "I understood that you want to change a deadline, but not of which contract; name it \
             like \"extend D1's deadline by 3 days\"."
                .into(),
        );
    }
    let earlier = has(
        ws,
        &[
            "earlier", "sooner", "shorten", "forward", "advance", "reduce",
        ],
    );
    let ds = durations(ws);
    // Prefer the duration right after `by`; otherwise the first one mentioned.
    let by = ds
        .iter()
        .find(|(i, _, _)| *i > 0 && ws[*i - 1].lower == "by")
        .or_else(|| ds.first());
    let deadline = if let Some(&(_, n, u)) = by.filter(|(_, n, _)| *n > 0) {
        Some(format!(
            "{}{n}{}",
            if earlier { '-' } else { '+' },
            unit_letter(u)
        ))
    } else {
        ws.iter().find(|w| is_date(&w.raw)).map(|w| w.raw.clone())
    };
    match deadline {
        Some(deadline) => Classified::Known(Intent::Amend {
            contracts: named,
            deadline,
        }),
        None => Classified::Unclear(format!(
            "I understood that you want to change the deadline of {}, but not by how much; say \
             e.g. \"extend {}'s deadline by 3 days\" or \"set {}'s deadline to 2030-01-31\".",
            named.join(", "),
            named[0],
            named[0]
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing the answer from tool results.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Evidence {
    Found,
    Nothing,
    Error,
}

/// What one tool result contributes to the answer.
struct Part {
    text: String,
    citations: Vec<String>,
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

    /// Cites the string at `v` if it is a span id.
    fn cite(&mut self, v: Option<&Value>) {
        if let Some(id) = v.and_then(Value::as_str).filter(|s| is_uuid(s)) {
            self.citations.push(id.to_lowercase());
        }
    }
}

fn answer_from_results(turn: &Turn<'_>, tool_use_count: usize) -> (Answer, &'static str) {
    let mut parts = Vec::new();
    let mut shape = "answer";
    for (call, content) in &turn.results {
        let parsed: Option<Value> = serde_json::from_str(content).ok();
        let name = call.map(|c| c.name.as_str()).or_else(|| {
            parsed.as_ref().map(|v| match v {
                v if v.get("decisions").is_some() || v.get("history").is_some() => {
                    "explain_decision"
                }
                v if v.get("proposal_id").is_some() => "propose_amendment",
                v if v.get("evaluated").is_some() || v.get("changes").is_some() => "simulate_law",
                v if v.get("span").is_some() => "get_span",
                v if ["spans", "count", "groups"]
                    .iter()
                    .any(|k| v.get(k).is_some()) =>
                {
                    "query_ledger"
                }
                _ => "a tool",
            })
        });
        let name = name.unwrap_or("a tool");
        let args = call.map_or(&Value::Null, |c| &c.arguments);
        if shape == "answer" {
            shape = match name {
                "explain_decision" => "explain_decision",
                "propose_amendment" => "propose_amendment",
                "simulate_law" => "simulate_law",
                "get_span" => "get_span",
                "query_ledger" => "query_ledger",
                _ => "answer",
            };
        }
        let part = match parsed {
            None => error_part(name, args, "its answer was not JSON I could read"),
            Some(v) => match v.get("error") {
                Some(e) => {
                    let e = e
                        .as_str()
                        .map_or_else(|| compact(e, 300), |s| truncate(s, 300));
                    error_part(name, args, &e)
                }
                None => match name {
                    "explain_decision" => explain_part(&v, args),
                    "query_ledger" => query_part(&v, args),
                    "get_span" => get_span_part(&v, args),
                    "propose_amendment" => amend_part(&v, args),
                    "simulate_law" => simulate_part(&v, args),
                    other => Part::new(
                        format!("`{other}` returned: {}", compact(&v, 300)),
                        Evidence::Found,
                    ),
                },
            },
        };
        parts.push(part);
    }

    let found = parts.iter().any(|p| p.evidence == Evidence::Found);
    let nothing = parts.iter().any(|p| p.evidence == Evidence::Nothing);
    let error = parts.iter().any(|p| p.evidence == Evidence::Error);
    let confidence = match (found, nothing, error) {
        (true, _, false) => 0.9,
        // Part of the question rests on evidence, part failed: still above review.
        (true, _, true) => 0.7,
        (false, true, false) => 0.8,
        _ => 0.3,
    };
    let follow_up_question = error.then(|| {
        "Could you check the contract name or span id (or try again in a moment) and ask again?"
            .to_string()
    });
    let mut seen = HashSet::new();
    let citations = parts
        .iter()
        .flat_map(|p| p.citations.iter().cloned())
        .filter(|c| seen.insert(c.clone()))
        .collect();
    let actions = parts
        .iter()
        .flat_map(|p| p.actions.iter().cloned())
        .collect();
    let text = parts
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    (
        Answer {
            text,
            confidence,
            follow_up_question,
            actions,
            citations,
            tool_use_count,
        },
        shape,
    )
}

/// The string at a dotted path, or a compact rendering of a non-string scalar.
fn field(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k)?;
    }
    match cur {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(compact(other, 120)),
    }
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

fn error_part(tool: &str, args: &Value, error: &str) -> Part {
    let arg = |k: &str| field(args, k).unwrap_or_default();
    let what = match tool {
        "explain_decision" => format!("explain the decision on {}", arg("contract")),
        "query_ledger" => "query the ledger".to_string(),
        "get_span" => format!("read span {}", arg("id")),
        "propose_amendment" => format!("propose the change to {}", arg("contract")),
        "simulate_law" => format!("simulate law {}", arg("law")),
        other => format!("use {other}"),
    };
    Part::new(
        sentence(&format!("I could not {}: {error}", what.trim())),
        Evidence::Error,
    )
}

/// Renders one action of a decision: `terminate(reason=…)`.
fn action_text(a: &Value) -> String {
    let Some(o) = a.as_object() else {
        return compact(a, 120);
    };
    let name = ["type", "action", "kind", "name", "do"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str).map(|s| (*k, s)));
    let Some((name_key, name)) = name else {
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
        .map(|a| {
            a.as_str().map(str::to_string).or_else(|| {
                ["type", "action", "kind", "name", "do"]
                    .iter()
                    .find_map(|k| a.get(*k).and_then(Value::as_str).map(str::to_string))
            })
        })
        .unwrap_or_default()
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

fn explain_part(v: &Value, args: &Value) -> Part {
    let contract = v.get("contract").unwrap_or(&Value::Null);
    let name = field(contract, "name")
        .or_else(|| field(args, "contract"))
        .unwrap_or_else(|| "the contract".into());
    let title = field(contract, "title")
        .map(|t| format!(" (\"{t}\")"))
        .unwrap_or_default();
    let state = field(contract, "state");
    let decisions: Vec<&Value> = v
        .get("decisions")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let history: Vec<&Value> = v
        .get("history")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if contract.is_null() && decisions.is_empty() && history.is_empty() {
        return Part::new(
            format!("I found nothing about {name}: no contract, history or decision came back."),
            Evidence::Nothing,
        );
    }
    let mut text;
    let mut part = Part::new(String::new(), Evidence::Found);
    // The latest decision (highest seq; the last one when seqs are missing) is the decisive one.
    let latest = decisions
        .iter()
        .enumerate()
        .max_by_key(|(i, d)| (d.get("seq").and_then(Value::as_i64), *i))
        .map(|(_, d)| *d);
    if let Some(d) = latest {
        let when = field(d, "scheduled_at")
            .or_else(|| field(d, "at"))
            .unwrap_or_else(|| "an unrecorded time".into());
        let law = field(d, "law.name").unwrap_or_else(|| "an unnamed law".into());
        let seq = field(d, "law.seq")
            .map(|s| format!(" (seq {s})"))
            .unwrap_or_default();
        let triage = field(d, "triage").unwrap_or_else(|| "unknown".into());
        let vars = variables_text(d.get("variables"));
        let mut because = if vars.is_empty() {
            String::new()
        } else {
            format!(" because {vars}")
        };
        // Variables the law needed and could not read decide a `doubt` as much as those it saw.
        let missing: Vec<String> = match d.get("missing") {
            Some(Value::Array(a)) => a.iter().map(|m| compact(m, 60)).collect(),
            Some(Value::Object(o)) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            because.push_str(&format!(" (missing: {})", missing.join(", ")));
        }
        if d.get("fail_closed").and_then(Value::as_bool) == Some(true) {
            because.push_str(" (the law failed closed)");
        }
        text = format!(
            "{name}{title} was {} at the midnight of {when} by law {law}{seq}: triage `{triage}`{because}; actions: {}.",
            outcome_verb(d.get("actions")),
            actions_text(d.get("actions")),
        );
        if let Some(s) = &state {
            text.push_str(&format!(" Its current state is `{s}`."));
        }
        let earlier: Vec<String> = decisions
            .iter()
            .filter(|e| !std::ptr::eq(**e, d))
            .take(5)
            .map(|e| {
                format!(
                    "{} by {}: triage `{}`",
                    field(e, "scheduled_at")
                        .or_else(|| field(e, "at"))
                        .unwrap_or_else(|| "?".into()),
                    field(e, "law.name").unwrap_or_else(|| "?".into()),
                    field(e, "triage").unwrap_or_else(|| "?".into()),
                )
            })
            .collect();
        if !earlier.is_empty() {
            text.push_str(&format!(" Other decisions: {}.", earlier.join("; ")));
        }
        for d in &decisions {
            part.cite(d.get("id"));
            part.cite(d.get("law").and_then(|l| l.get("id")));
        }
        for l in v
            .get("laws")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            part.cite(l.get("id"));
        }
    } else {
        text = format!("No law decision about {name}{title} is recorded");
        match &state {
            Some(s) => text.push_str(&format!("; it is `{s}`.")),
            None => text.push('.'),
        }
        if let Some(dl) = field(contract, "deadline_at") {
            text.push_str(&format!(" Its deadline is {dl}."));
        }
        if history.is_empty() {
            text.push_str(" Its history is empty.");
        } else {
            let lines: Vec<String> = history
                .iter()
                .take(20)
                .map(|h| {
                    let mut line = format!(
                        "- seq {} at {}: `{}`",
                        field(h, "seq").unwrap_or_else(|| "?".into()),
                        field(h, "at").unwrap_or_else(|| "?".into()),
                        field(h, "state").unwrap_or_else(|| "?".into()),
                    );
                    if let Some(s) = field(h, "status") {
                        line.push_str(&format!(" ({s})"));
                    }
                    if let Some(r) = field(h, "reason") {
                        line.push_str(&format!(" — {r}"));
                    }
                    line
                })
                .collect();
            text.push_str(&format!(" History:\n{}", lines.join("\n")));
            if history.len() > 20 {
                text.push_str(&format!("\n… and {} more.", history.len() - 20));
            }
            for h in &history {
                part.cite(h.get("id"));
            }
        }
    }
    part.cite(contract.get("id"));
    part.text = text;
    part
}

/// `where` clauses, for a person.
fn describe_where(args: &Value) -> String {
    let clauses: Vec<&Value> = args
        .get("where")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let path = |c: &Value| field(c, "path").unwrap_or_default();
    if clauses
        .iter()
        .any(|c| path(c) == "content.guarantor.responded_at")
    {
        let within = clauses
            .iter()
            .find(|c| path(c) == "content.guarantor.requested_at")
            .and_then(|c| field(c, "value"))
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
    if let [c] = clauses.as_slice()
        && path(c) == "content.state"
        && field(c, "op").as_deref() == Some("eq")
        && let Some(s) = field(c, "value")
    {
        return format!("in state `{s}`");
    }
    if clauses.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = clauses
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", path(c), field(c, "op").unwrap_or_default());
            if let Some(v) = c.get("value") {
                s.push(' ');
                s.push_str(&compact(v, 60));
            }
            s
        })
        .collect();
    format!("matching {}", parts.join(" and "))
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn query_part(v: &Value, args: &Value) -> Part {
    let entity = field(args, "entity_type").unwrap_or_else(|| "span".into());
    let desc = describe_where(args);
    let with_desc = |s: String| {
        if desc.is_empty() {
            s
        } else {
            format!("{s} {desc}")
        }
    };
    if let Some(n) = v.get("count").and_then(Value::as_u64) {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let text = if n == 0 {
            with_desc(format!("There are no {entity}s"))
        } else {
            with_desc(format!(
                "There {} {}",
                if n == 1 { "is" } else { "are" },
                plural(n, &entity)
            ))
        };
        let evidence = if n == 0 {
            Evidence::Nothing
        } else {
            Evidence::Found
        };
        return Part::new(sentence(&text), evidence);
    }
    if let Some(groups) = v.get("groups").and_then(Value::as_array) {
        if groups.is_empty() {
            return Part::new(
                sentence(&with_desc(format!("No {entity}s"))),
                Evidence::Nothing,
            );
        }
        let lines: Vec<String> = groups
            .iter()
            .map(|g| {
                format!(
                    "- {}: {}",
                    g.get("key").map_or_else(|| "?".into(), |k| compact(k, 80)),
                    field(g, "count").unwrap_or_else(|| "?".into())
                )
            })
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
    let spans: Vec<&Value> = v
        .get("spans")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
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
            let name = field(s, "name")
                .or_else(|| field(s, "this"))
                .unwrap_or_else(|| field(s, "id").unwrap_or_else(|| "?".into()));
            let mut line = format!("- {name}");
            if let Some(t) = field(s, "content.title") {
                line.push_str(&format!(" \"{t}\""));
            }
            if let Some(st) = field(s, "content.state") {
                line.push_str(&format!(" — state `{st}`"));
            } else if let Some(e) = field(s, "entity_type").filter(|e| *e != entity) {
                line.push_str(&format!(" ({e})"));
            }
            if guarantor {
                if let Some(who) = field(s, "content.guarantor.who") {
                    line.push_str(&format!("; guarantor {who}"));
                }
                if let Some(at) = field(s, "content.guarantor.requested_at") {
                    line.push_str(&format!(", asked at {at}"));
                }
            }
            if field(s, "content.state").is_none()
                && let Some(at) = field(s, "at")
            {
                line.push_str(&format!(", at {at}"));
            }
            line
        })
        .collect();
    let mut text = format!(
        "{}:\n{}",
        with_desc(plural(spans.len(), &entity)),
        lines.join("\n")
    );
    if spans.len() > 50 {
        text.push_str(&format!("\n… and {} more.", spans.len() - 50));
    }
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        text.push_str(
            "\nMore matched than were returned; ask for a narrower list to see the rest.",
        );
    }
    let mut part = Part::new(text, Evidence::Found);
    for s in &spans {
        part.cite(s.get("id"));
    }
    part
}

fn get_span_part(v: &Value, args: &Value) -> Part {
    let Some(s) = v.get("span").filter(|s| s.is_object()) else {
        return Part::new(
            format!(
                "No span with id {} was found.",
                field(args, "id").unwrap_or_else(|| "(none given)".into())
            ),
            Evidence::Nothing,
        );
    };
    let get = |k: &str| field(s, k).unwrap_or_else(|| "?".into());
    let mut text = format!("Span {} ({}", get("id"), get("entity_type"));
    if let Some(n) = field(s, "name") {
        text.push_str(&format!(" `{n}`"));
    }
    if let Some(seq) = field(s, "seq") {
        text.push_str(&format!(", seq {seq}"));
    }
    text.push_str(&format!(
        "): {} {} {} at {}",
        get("who"),
        get("did"),
        get("this"),
        get("at")
    ));
    if let Some(st) = field(s, "status") {
        text.push_str(&format!(", status {st}"));
    }
    text.push('.');
    match (field(s, "content.title"), field(s, "content.state")) {
        (None, None) => {
            if let Some(c) = s.get("content").filter(|c| !c.is_null()) {
                text.push_str(&format!(" Content: {}", compact(c, 300)));
            }
        }
        (title, state) => {
            if let Some(t) = title {
                text.push_str(&format!(" Title \"{t}\"."));
            }
            if let Some(st) = state {
                text.push_str(&format!(" State `{st}`."));
            }
        }
    }
    let mut part = Part::new(text, Evidence::Found);
    part.cite(s.get("id"));
    part
}

fn amend_part(v: &Value, args: &Value) -> Part {
    let contract = v.get("contract").unwrap_or(&Value::Null);
    let name = field(contract, "name")
        .or_else(|| field(args, "contract"))
        .unwrap_or_else(|| "the contract".into());
    let before = v.get("before").unwrap_or(&Value::Null);
    let after = v.get("after").unwrap_or(&Value::Null);
    let diffs: Vec<String> = after
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, a)| match before.get(k) {
                    Some(b) if b != a => format!("{k} {} → {}", compact(b, 80), compact(a, 80)),
                    Some(_) => format!("{k} stays {}", compact(a, 80)),
                    None => format!("{k} → {}", compact(a, 80)),
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = field(v, "summary")
        .filter(|s| !s.trim().is_empty())
        .or_else(|| (!diffs.is_empty()).then(|| format!("{name}: {}", diffs.join(", "))))
        .unwrap_or_else(|| format!("change {name}"));
    let proposal = field(v, "proposal_id");
    let mut text = format!(
        "I proposed a change to {name}: {}",
        summary.trim_end_matches(['.', ' '])
    );
    if !diffs.is_empty() {
        text.push_str(&format!(" ({})", diffs.join("; ")));
    }
    text.push_str(". Nothing has changed yet: the proposal");
    if let Some(p) = &proposal {
        text.push_str(&format!(" {p}"));
    }
    text.push_str(&format!(
        " is {} and awaits your confirmation.",
        field(v, "status").unwrap_or_else(|| "pending".into())
    ));
    let mut action = Map::new();
    action.insert("type".into(), json!("propose_amendment"));
    action.insert("summary".into(), json!(summary));
    action.insert("target".into(), json!(name));
    if let Some(p) = proposal {
        action.insert("proposal_id".into(), json!(p));
    }
    let mut part = Part::new(text, Evidence::Found);
    part.actions.push(Value::Object(action));
    part.cite(contract.get("id"));
    part
}

fn simulate_part(v: &Value, args: &Value) -> Part {
    let law = v.get("law").unwrap_or(&Value::Null);
    let name = field(law, "name")
        .or_else(|| field(args, "law"))
        .unwrap_or_else(|| "the law".into());
    let seq = field(law, "seq")
        .map(|s| format!(" (seq {s})"))
        .unwrap_or_default();
    let set = args
        .get("set")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k} = {}", compact(v, 60)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .map(|s| format!(" with {s}"))
        .unwrap_or_default();
    let evaluated = v.get("evaluated").and_then(Value::as_u64);
    let changes: Vec<&Value> = v
        .get("changes")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let over = evaluated
        .map(|n| {
            format!(
                " over {}",
                plural(usize::try_from(n).unwrap_or(usize::MAX), "contract")
            )
        })
        .unwrap_or_default();
    let mut text = format!("Simulating law {name}{seq}{set}{over}: ");
    if changes.is_empty() {
        text.push_str("no contract's triage would change.");
    } else {
        text.push_str(&format!(
            "{} would change triage:\n",
            plural(changes.len(), "contract")
        ));
        let lines: Vec<String> = changes
            .iter()
            .map(|c| {
                format!(
                    "- {}: `{}` → `{}`",
                    field(c, "name")
                        .or_else(|| field(c, "contract_id"))
                        .unwrap_or_else(|| "?".into()),
                    field(c, "from").unwrap_or_else(|| "?".into()),
                    field(c, "to").unwrap_or_else(|| "?".into()),
                )
            })
            .collect();
        text.push_str(&lines.join("\n"));
        text.push('\n');
    }
    if changes.is_empty() {
        text.push(' ');
    }
    text.push_str("This is a simulation: nothing was decided or changed.");
    let evidence = if evaluated == Some(0) {
        Evidence::Nothing
    } else {
        Evidence::Found
    };
    let mut part = Part::new(text, evidence);
    part.cite(law.get("id"));
    for c in &changes {
        part.cite(c.get("contract_id"));
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::blocks::EMBEDDED_ANSWER_SCHEMA;
    use crate::chat::providers::{CompiledPrompt, ProviderConfig, ToolSpec, provider_from_config};

    const TOOLS: [&str; 5] = [
        "query_ledger",
        "get_span",
        "explain_decision",
        "propose_amendment",
        "simulate_law",
    ];

    fn tools() -> Vec<ToolSpec> {
        TOOLS
            .iter()
            .map(|n| ToolSpec {
                name: (*n).into(),
                description: format!("the {n} tool"),
                parameters: json!({"type": "object"}),
            })
            .collect()
    }

    fn request(messages: Vec<ChatMessage>, tools: Vec<ToolSpec>) -> CompletionRequest {
        CompletionRequest {
            system: CompiledPrompt::new("You are LogLine."),
            messages,
            tools,
            response_schema: None,
        }
    }

    async fn ask(question: &str) -> Completion {
        OfflineProvider::new()
            .complete(&request(vec![ChatMessage::user(question)], tools()), None)
            .await
            .unwrap()
    }

    /// The single tool call a question produces.
    async fn call_for(question: &str) -> ToolCall {
        let c = ask(question).await;
        assert_eq!(c.message.tool_calls.len(), 1, "{question}: {:?}", c.message);
        assert_eq!(c.message.content, "");
        c.message.tool_calls[0].clone()
    }

    /// Runs the second step: the question, the calls, the canned results.
    async fn answer_with(question: &str, results: &[Value]) -> (Value, Completion) {
        let first = ask(question).await;
        let calls = first.message.tool_calls.clone();
        assert_eq!(calls.len(), results.len(), "{question}");
        let mut messages = vec![ChatMessage::user(question), first.message];
        for (c, r) in calls.iter().zip(results) {
            messages.push(ChatMessage::tool_result(&c.id, r.to_string()));
        }
        let done = OfflineProvider::new()
            .complete(&request(messages, tools()), None)
            .await
            .unwrap();
        assert!(done.message.tool_calls.is_empty());
        let answer: Value = serde_json::from_str(&done.message.content).unwrap();
        assert_valid(&answer);
        assert_cites_only_result_ids(&answer, results);
        (answer, done)
    }

    fn assert_valid(answer: &Value) {
        let schema: Value = serde_json::from_str(EMBEDDED_ANSWER_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {answer:#}");
    }

    fn ids_in(v: &Value, out: &mut HashSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    if (k == "id" || k == "contract_id")
                        && let Some(s) = v.as_str()
                    {
                        out.insert(s.to_string());
                    }
                    ids_in(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| ids_in(v, out)),
            _ => {}
        }
    }

    fn assert_cites_only_result_ids(answer: &Value, results: &[Value]) {
        let mut ids = HashSet::new();
        results.iter().for_each(|r| ids_in(r, &mut ids));
        for c in answer["citations"].as_array().unwrap() {
            assert!(ids.contains(c.as_str().unwrap()), "{c} was not returned");
        }
    }

    fn citations(answer: &Value) -> Vec<&str> {
        answer["citations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect()
    }

    const D1: &str = "0195a1b2-0000-7000-8000-000000000001";
    const D3: &str = "0195a1b2-0000-7000-8000-000000000003";
    const D4: &str = "0195a1b2-0000-7000-8000-000000000004";
    const D5: &str = "0195a1b2-0000-7000-8000-000000000005";
    const LAW: &str = "0195a1b2-0000-7000-8000-0000000000aa";
    const DECISION: &str = "0195a1b2-0000-7000-8000-0000000000d1";
    const HIST: &str = "0195a1b2-0000-7000-8000-0000000000e1";
    const PROPOSAL: &str = "0195a1b2-0000-7000-8000-0000000000f1";

    #[tokio::test]
    async fn offline_provider_says_what_it_is() {
        let p = provider_from_config(&ProviderConfig::Offline).unwrap();
        assert_eq!(p.kind(), "offline");
        assert_eq!(p.model(), "logline-offline-1");
        assert_eq!(p.base_url(), None);
    }

    #[tokio::test]
    async fn offline_why_questions_call_explain_decision() {
        for q in [
            "why was D1 terminated?",
            "Why did D1 get terminated",
            "what happened to D1?",
            "Explain the decision on d1.",
            "why was D1's contract held",
        ] {
            let c = call_for(q).await;
            assert_eq!(c.id, "call_1");
            assert_eq!(c.name, "explain_decision", "{q}");
            assert_eq!(c.arguments, json!({"contract": "D1"}), "{q}");
        }
        let c = call_for(&format!("explain {D3}")).await;
        assert_eq!(c.arguments, json!({"contract": D3}));
        let two = ask("why were D1 and D4 terminated?").await;
        let names: Vec<_> = two
            .message
            .tool_calls
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(names, ["call_1", "call_2"]);
        assert_eq!(
            two.message.tool_calls[1].arguments,
            json!({"contract": "D4"})
        );
    }

    #[tokio::test]
    async fn offline_guarantor_questions_query_the_ledger() {
        let expected = |v: &str| {
            json!({
                "entity_type": "contract",
                "where": [
                    {"path": "content.guarantor.who", "op": "exists"},
                    {"path": "content.guarantor.responded_at", "op": "missing"},
                    {"path": "content.guarantor.requested_at", "op": "lt", "value": v},
                ],
                "latest_only": true,
                "order": "desc",
                "limit": 50,
            })
        };
        for (q, v) in [
            (
                "Which contracts have a guarantor who didn't respond within 24h?",
                "now-24h",
            ),
            ("contracts where the guarantor hasn't answered", "now-24h"),
            ("guarantors that haven't responded in 48 hours", "now-48h"),
            (
                "Show contracts whose guarantor did not reply in 2 days",
                "now-2d",
            ),
            ("which guarantors are silent for a week", "now-7d"),
        ] {
            let c = call_for(q).await;
            assert_eq!(c.name, "query_ledger", "{q}");
            assert_eq!(c.arguments, expected(v), "{q}");
        }
    }

    #[tokio::test]
    async fn offline_state_questions_list_or_count_contracts() {
        let c = call_for("Which contracts are terminated?").await;
        assert_eq!(c.name, "query_ledger");
        assert_eq!(
            c.arguments,
            json!({
                "entity_type": "contract",
                "where": [{"path": "content.state", "op": "eq", "value": "terminated"}],
                "latest_only": true,
            })
        );
        let c = call_for("how many contracts are open?").await;
        assert_eq!(
            c.arguments,
            json!({
                "entity_type": "contract",
                "where": [{"path": "content.state", "op": "eq", "value": "open"}],
                "latest_only": true,
                "count": true,
            })
        );
        for (q, s) in [
            ("list held contracts", "held"),
            ("show me the contracts on hold", "held"),
            ("which contracts were accepted", "accepted"),
            ("List void contracts", "void"),
        ] {
            let c = call_for(q).await;
            assert_eq!(c.arguments["where"][0]["value"], json!(s), "{q}");
            assert!(c.arguments.get("count").is_none());
        }
    }

    #[tokio::test]
    async fn offline_deadline_changes_propose_amendments() {
        for (q, d) in [
            ("extend D1's deadline by 3 days", "+3d"),
            ("Push the deadline of D1 by 12 hours.", "+12h"),
            ("postpone D1 by two days", "+2d"),
            ("please extend the deadline for D1 by a week", "+7d"),
            ("set D1's deadline to 2030-01-31", "2030-01-31"),
            (
                "move D1's deadline to 2030-01-31T18:00:00Z",
                "2030-01-31T18:00:00Z",
            ),
            ("bring D1's deadline forward by 1 day", "-1d"),
        ] {
            let c = call_for(q).await;
            assert_eq!(c.name, "propose_amendment", "{q}");
            assert_eq!(
                c.arguments,
                json!({"contract": "D1", "changes": {"deadline_at": d}, "reason": q}),
                "{q}"
            );
        }
    }

    #[tokio::test]
    async fn offline_what_if_questions_simulate_a_law() {
        for (q, law, set) in [
            (
                "What if the quorum were 3?",
                "midnight_deadline",
                json!({"quorum": 3}),
            ),
            (
                "if the quorum was 3 which contracts would change? what if",
                "midnight_deadline",
                json!({"quorum": 3}),
            ),
            (
                "what if the grace hours were 6 under law late_delivery",
                "late_delivery",
                json!({"grace_hours": 6}),
            ),
            (
                "simulate midnight_deadline with quorum=1",
                "midnight_deadline",
                json!({"quorum": 1}),
            ),
        ] {
            let c = call_for(q).await;
            assert_eq!(c.name, "simulate_law", "{q}");
            assert_eq!(c.arguments, json!({"law": law, "set": set}), "{q}");
        }
    }

    #[tokio::test]
    async fn offline_show_span_calls_get_span() {
        let c = call_for(&format!("show span {}", D1.to_uppercase())).await;
        assert_eq!(c.name, "get_span");
        assert_eq!(c.arguments, json!({"id": D1}));
    }

    #[tokio::test]
    async fn offline_answers_why_from_the_decision() {
        let result = json!({
            "contract": {"id": D1, "name": "D1", "title": "300 pastéis de nata", "state": "terminated", "deadline_at": "2025-03-08T17:00:00Z"},
            "history": [{"id": HIST, "seq": 1, "at": "2025-03-04T09:00:00Z", "state": "open", "status": "ok", "reason": null}],
            "decisions": [{
                "id": DECISION, "seq": 4, "at": "2025-03-11T00:00:01Z", "scheduled_at": "2025-03-11T00:00:00Z",
                "law": {"id": LAW, "seq": 2, "hash": "blake3:00", "name": "midnight_deadline"},
                "triage": "not",
                "actions": [{"type": "terminate", "reason": "deadline passed without acceptance"}],
                "variables": {"now": "2025-03-11T00:00:00Z", "accepted": false, "deadline_at": "2025-03-08T17:00:00Z"},
            }],
            "laws": [{"id": LAW, "seq": 2, "name": "midnight_deadline", "curr_hash": "blake3:00"}],
        });
        let (a, done) = answer_with("why was D1 terminated?", &[result]).await;
        let text = a["text"].as_str().unwrap();
        assert!(text.starts_with("D1 (\"300 pastéis de nata\") was terminated at the midnight of 2025-03-11T00:00:00Z by law midnight_deadline (seq 2): triage `not` because deadline_at 2025-03-08T17:00:00Z, accepted false"), "{text}");
        assert!(
            text.contains("terminate(reason=deadline passed without acceptance)"),
            "{text}"
        );
        assert_eq!(citations(&a), [DECISION, LAW, D1]);
        assert!(!text.contains("missing"), "{text}");
        assert_eq!(a["confidence"], json!(0.9));
        assert_eq!(a["telemetry"]["tool_use_count"], json!(1));
        assert_eq!(done.raw["shape"], json!("explain_decision"));
        assert_eq!(done.attempts, 1);
        assert!(done.tokens_in.unwrap() > 0 && done.tokens_out.unwrap() > 0);
    }

    #[tokio::test]
    async fn offline_names_what_a_doubtful_law_could_not_read() {
        let result = json!({
            "contract": {"id": D3, "name": "D3", "state": "held"},
            "history": [],
            "decisions": [{
                "id": DECISION, "seq": 2, "scheduled_at": "2025-03-12T00:00:00Z",
                "law": {"id": LAW, "seq": 1, "name": "guarantor_response"},
                "triage": "doubt", "actions": [{"type": "hold"}],
                "variables": {"quorum": 1}, "missing": ["guarantor.responded_at"], "fail_closed": true,
            }],
            "laws": [],
        });
        let (a, _) = answer_with("why is D3 held?", &[result]).await;
        let text = a["text"].as_str().unwrap();
        assert!(text.contains("D3 was put on hold at the midnight of 2025-03-12T00:00:00Z by law guarantor_response (seq 1): triage `doubt` because quorum 1 (missing: guarantor.responded_at) (the law failed closed); actions: hold."), "{text}");
        assert_eq!(citations(&a), [DECISION, LAW, D3]);
    }

    #[tokio::test]
    async fn offline_describes_the_history_when_no_law_decided() {
        let result = json!({
            "contract": {"id": D5, "name": "D5", "title": "menu photos", "state": "open", "deadline_at": "2025-03-14T00:00:00Z"},
            "history": [{"id": HIST, "seq": 1, "at": "2025-03-06T11:00:00Z", "state": "open", "status": "ok", "reason": "created"}],
            "decisions": [],
            "laws": [],
        });
        let (a, _) = answer_with("what happened to D5?", &[result]).await;
        let text = a["text"].as_str().unwrap();
        assert!(text.contains("No law decision about D5"), "{text}");
        assert!(
            text.contains("seq 1 at 2025-03-06T11:00:00Z: `open` (ok) — created"),
            "{text}"
        );
        assert_eq!(citations(&a), [HIST, D5]);
    }

    #[tokio::test]
    async fn offline_lists_silent_guarantors() {
        let result = json!({
            "spans": [{
                "id": D3, "seq": 1, "entity_type": "contract", "name": "D3", "who": "ana", "did": "proposed",
                "this": "contract", "status": "ok", "at": "2025-03-10T08:00:00Z",
                "content": {"title": "the bakery's delivery van", "state": "open",
                    "guarantor": {"who": "pedro", "requested_at": "2025-03-10T08:00:00Z"}},
            }],
            "returned": 1, "truncated": false,
        });
        let (a, _) = answer_with(
            "which contracts have a guarantor who hasn't responded in 24h?",
            &[result],
        )
        .await;
        let text = a["text"].as_str().unwrap();
        assert!(
            text.contains("1 contract whose guarantor has not responded within 24 hours"),
            "{text}"
        );
        assert!(text.contains("D3 \"the bakery's delivery van\" — state `open`; guarantor pedro, asked at 2025-03-10T08:00:00Z"), "{text}");
        assert_eq!(citations(&a), [D3]);
        assert_eq!(a["confidence"], json!(0.9));
    }

    #[tokio::test]
    async fn offline_says_so_when_a_query_finds_nothing() {
        let (a, _) = answer_with(
            "which contracts are void?",
            &[json!({"spans": [], "returned": 0, "truncated": false})],
        )
        .await;
        assert_eq!(a["text"], json!("I found no contracts in state `void`."));
        assert_eq!(a["confidence"], json!(0.8));
        assert!(citations(&a).is_empty());

        let (a, _) =
            answer_with("how many contracts are terminated?", &[json!({"count": 2})]).await;
        assert_eq!(
            a["text"],
            json!("There are 2 contracts in state `terminated`.")
        );
        assert_eq!(a["confidence"], json!(0.9));
    }

    #[tokio::test]
    async fn offline_amendments_await_confirmation() {
        let result = json!({
            "proposal_id": PROPOSAL, "status": "pending",
            "contract": {"id": D1, "name": "D1"},
            "before": {"deadline_at": "2025-03-08T17:00:00Z"},
            "after": {"deadline_at": "2025-03-11T17:00:00Z"},
            "summary": "Move D1's deadline from 2025-03-08T17:00:00Z to 2025-03-11T17:00:00Z",
        });
        let (a, _) = answer_with("extend D1's deadline by 3 days", &[result]).await;
        assert_eq!(
            a["actions"],
            json!([{
                "type": "propose_amendment",
                "summary": "Move D1's deadline from 2025-03-08T17:00:00Z to 2025-03-11T17:00:00Z",
                "target": "D1",
                "proposal_id": PROPOSAL,
            }])
        );
        assert_eq!(citations(&a), [D1]);
        assert!(
            a["text"]
                .as_str()
                .unwrap()
                .contains("awaits your confirmation")
        );
    }

    #[tokio::test]
    async fn offline_reports_what_a_simulation_would_change() {
        let result = json!({
            "law": {"id": LAW, "seq": 2, "name": "midnight_deadline"},
            "evaluated": 5,
            "changes": [{"contract_id": D5, "name": "D5", "from": "ok", "to": "doubt"}],
        });
        let (a, _) = answer_with("what if the quorum were 3?", &[result]).await;
        let text = a["text"].as_str().unwrap();
        assert!(text.contains("Simulating law midnight_deadline (seq 2) with quorum = 3 over 5 contracts: 1 contract would change triage:\n- D5: `ok` → `doubt`"), "{text}");
        assert_eq!(citations(&a), [LAW, D5]);
    }

    #[tokio::test]
    async fn offline_shows_a_span() {
        let result = json!({"span": {"id": D4, "seq": 1, "entity_type": "contract", "name": "D4",
            "who": "marta", "did": "proposed", "this": "contract", "status": "ok",
            "at": "2025-03-04T15:00:00Z", "content": {"title": "30-second advert", "state": "open"}}});
        let (a, _) = answer_with(&format!("show span {D4}"), &[result]).await;
        assert!(
            a["text"]
                .as_str()
                .unwrap()
                .contains("Title \"30-second advert\"")
        );
        assert_eq!(citations(&a), [D4]);
    }

    #[tokio::test]
    async fn offline_explains_tool_errors_and_cites_nothing() {
        let (a, _) = answer_with(
            "why was D9 terminated?",
            &[json!({"error": "no contract named D9 is visible to you"})],
        )
        .await;
        assert_eq!(
            a["text"],
            json!(
                "I could not explain the decision on D9: no contract named D9 is visible to you."
            )
        );
        assert_eq!(a["confidence"], json!(0.3));
        assert!(citations(&a).is_empty());
        assert!(a["follow_up_question"].is_string());

        // One of two results failed: the other still counts, cited; confidence drops.
        let ok = json!({"contract": {"id": D1, "name": "D1", "state": "open"}, "history": [], "decisions": [], "laws": []});
        let (a, _) = answer_with(
            "why were D1 and D9 terminated?",
            &[ok, json!({"error": "not found"})],
        )
        .await;
        assert_eq!(a["confidence"], json!(0.7));
        assert_eq!(citations(&a), [D1]);
        assert_eq!(a["telemetry"]["tool_use_count"], json!(2));
    }

    #[tokio::test]
    async fn offline_never_cites_ids_outside_id_fields() {
        // An id that appears only in free text must not be cited; a malformed id neither.
        let result = json!({
            "contract": {"id": "not-a-uuid", "name": "D1", "state": "open"},
            "history": [{"id": HIST, "seq": 1, "at": "x", "state": "open", "reason": format!("see {D5}")}],
            "decisions": [], "laws": [],
        });
        let (a, _) = answer_with("why is D1 open?", &[result]).await;
        assert_eq!(citations(&a), [HIST]);
    }

    #[tokio::test]
    async fn offline_admits_it_is_not_a_language_model() {
        let c = ask("Write me a poem about croissants").await;
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        let text = a["text"].as_str().unwrap();
        for needle in [
            "not a language model",
            "Why was D1 terminated?",
            "LOGLINE_PROVIDER=openai",
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "LOGLINE_MODEL",
            "vLLM",
            "LOGLINE_PROVIDER=ollama",
            "OLLAMA_URL",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
        assert_eq!(a["confidence"], json!(0.9));
        assert!(citations(&a).is_empty());
        assert!(a["follow_up_question"].as_str().unwrap().contains("D1"));
        assert_eq!(c.raw["shape"], json!("unknown"));
    }

    #[tokio::test]
    async fn offline_without_the_needed_tool_falls_back_to_help() {
        let only_query: Vec<ToolSpec> = tools()
            .into_iter()
            .filter(|t| t.name == "query_ledger")
            .collect();
        let c = OfflineProvider::new()
            .complete(
                &request(
                    vec![ChatMessage::user("why was D1 terminated?")],
                    only_query,
                ),
                None,
            )
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert!(
            a["text"]
                .as_str()
                .unwrap()
                .contains("`explain_decision` tool")
        );
    }

    #[tokio::test]
    async fn offline_with_tools_removed_by_the_breaker_answers_without_calls() {
        // Results already in the turn, tools removed: answer from the results.
        let question = "which contracts are terminated?";
        let call = ToolCall {
            id: "call_1".into(),
            name: "query_ledger".into(),
            arguments: json!({"entity_type": "contract", "where": [{"path": "content.state", "op": "eq", "value": "terminated"}], "latest_only": true}),
        };
        let result = json!({"spans": [{"id": D1, "name": "D1", "entity_type": "contract", "content": {"title": "pastéis", "state": "terminated"}}], "returned": 1, "truncated": false});
        let messages = vec![
            ChatMessage::user(question),
            ChatMessage::assistant_tool_calls("", vec![call]),
            ChatMessage::tool_result("call_1", result.to_string()),
        ];
        let c = OfflineProvider::new()
            .complete(&request(messages, Vec::new()), None)
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert_eq!(citations(&a), [D1]);

        // No results and no tools: no call, an honest low-confidence answer.
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user(question)], Vec::new()),
                None,
            )
            .await
            .unwrap();
        assert!(c.message.tool_calls.is_empty());
        let a: Value = serde_json::from_str(&c.message.content).unwrap();
        assert_valid(&a);
        assert_eq!(a["confidence"], json!(0.3));
        assert!(citations(&a).is_empty());
    }

    #[tokio::test]
    async fn offline_streams_the_answer_but_not_tool_calls() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user("hello")], tools()),
                Some(tx),
            )
            .await
            .unwrap();
        let mut streamed = String::new();
        let mut pieces = 0;
        while let Some(s) = rx.recv().await {
            streamed.push_str(&s);
            pieces += 1;
        }
        assert_eq!(streamed, c.message.content);
        assert!(pieces > 1);

        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let c = OfflineProvider::new()
            .complete(
                &request(vec![ChatMessage::user("why was D1 terminated?")], tools()),
                Some(tx),
            )
            .await
            .unwrap();
        assert_eq!(c.message.tool_calls.len(), 1);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn offline_answers_are_deterministic_and_read_only_the_current_turn() {
        let earlier = vec![
            ChatMessage::user("why was D4 terminated?"),
            ChatMessage::assistant_tool_calls(
                "",
                vec![ToolCall {
                    id: "call_1".into(),
                    name: "explain_decision".into(),
                    arguments: json!({"contract": "D4"}),
                }],
            ),
            ChatMessage::tool_result("call_1", json!({"error": "boom"}).to_string()),
            ChatMessage::assistant("{}"),
            ChatMessage::user("which contracts are open?"),
        ];
        let a = OfflineProvider::new()
            .complete(&request(earlier.clone(), tools()), None)
            .await
            .unwrap();
        let b = OfflineProvider::new()
            .complete(&request(earlier, tools()), None)
            .await
            .unwrap();
        assert_eq!(a.message, b.message);
        assert_eq!(a.message.tool_calls[0].id, "call_1");
        assert_eq!(a.message.tool_calls[0].name, "query_ledger");
    }

    #[test]
    fn offline_unclear_requests_say_what_is_missing() {
        assert!(
            matches!(classify("extend D1's deadline"), Classified::Unclear(h) if h.contains("by how much"))
        );
        assert!(matches!(
            classify("what if it rained?"),
            Classified::Unclear(_)
        ));
        assert_eq!(classify("hello there"), Classified::Unknown);
    }
}
