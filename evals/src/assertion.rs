//! Assertions: promptfoo's vocabulary where it fits (`equals`, `contains`, `icontains`,
//! `contains-any`, `contains-all`, `starts-with`, `regex`, `is-json`, `javascript`, any of them
//! with a `not-` prefix, `weight` and `threshold`) plus the agent's own: `cites`, `tool-called`,
//! `no-tool`, `proposes`, `no-write`, `outcome`, `confidence`, `latency`, `tokens`,
//! `no-citation-outside-turn`, `no-data-of-tenant`.
//!
//! A fixture's assertion becomes a closed [`Check`] when the file is parsed (a regex that does
//! not compile or a schema that is not one is a fixture error with its line), and is evaluated
//! against what one turn did ([`Observed`]). String assertions look at the answer's `text` (or
//! its `error`); the others at the turn's tool calls, citations, proposals and records.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::js;

/// What one turn did, as the assertions see it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observed {
    /// The answer's `text`, or its `error`, or the refusal's message.
    pub output: String,
    /// The whole answer object.
    pub answer: Value,
    /// `answered`, `escalated`, `insufficient_evidence`, `provider_error` or `rejected`.
    pub outcome: String,
    pub tool_calls: Vec<ToolSeen>,
    pub citations: Vec<String>,
    pub proposals: Vec<Uuid>,
    pub latency_ms: f64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// The turn's `prompt_run` span.
    pub run_id: Option<Uuid>,
    pub compiled_hash: Option<String>,
    /// Provider and model as the turn's `prompt_run` recorded them.
    pub provider: Option<String>,
    pub model: Option<String>,
    /// What the target knows of spans the turn mentioned (citations, tool results).
    #[serde(skip)]
    pub spans: HashMap<Uuid, SpanInfo>,
    /// For `no-data-of-tenant`: the span ids of each named tenant (in-process target only).
    #[serde(skip)]
    pub tenant_ids: HashMap<String, HashSet<Uuid>>,
}

/// One tool call of the turn, with its arguments and result.
#[derive(Clone, Debug, Serialize)]
pub struct ToolSeen {
    pub name: String,
    pub arguments: Value,
    pub ok: bool,
    pub result: Value,
}

/// A span the turn mentioned, as the asker may see it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpanInfo {
    pub entity_type: String,
    pub name: Option<String>,
    pub tenant_id: String,
}

impl Observed {
    /// Every UUID in the answer and the tool results (what the turn showed the user).
    pub fn mentioned_ids(&self) -> HashSet<Uuid> {
        let mut out = HashSet::new();
        collect_ids(&self.answer, &mut out);
        for t in &self.tool_calls {
            collect_ids(&t.result, &mut out);
        }
        out
    }

    fn tool_result_ids(&self) -> HashSet<Uuid> {
        let mut out = HashSet::new();
        for t in &self.tool_calls {
            collect_ids(&t.result, &mut out);
        }
        out
    }
}

fn collect_ids(v: &Value, out: &mut HashSet<Uuid>) {
    match v {
        Value::String(s) if s.len() == 36 => {
            if let Ok(id) = s.parse() {
                out.insert(id);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_ids(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_ids(x, out)),
        _ => {}
    }
}

/// An assertion as written in a fixture.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssertion {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<Value>,
    /// For `tool-called`, `no-tool` and `proposes`: the arguments that must match (a subset).
    #[serde(default)]
    args: Option<Map<String, Value>>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

/// A checked assertion.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawAssertion")]
pub struct Assertion {
    /// The type as written (`not-icontains`, `cites`, …), for reports.
    pub kind: String,
    pub negate: bool,
    pub check: Check,
    pub weight: f64,
    pub threshold: Option<f64>,
}

/// What an assertion checks.
#[derive(Clone, Debug)]
pub enum Check {
    Equals(String),
    Contains {
        needle: String,
        fold: bool,
    },
    ContainsAny {
        needles: Vec<String>,
        fold: bool,
    },
    ContainsAll {
        needles: Vec<String>,
        fold: bool,
    },
    StartsWith(String),
    Regex(regex::Regex),
    IsJson(Option<Arc<jsonschema::Validator>>),
    Javascript(String),
    /// A citation of a span of this entity type, or a span named `name` (of `entity_type`).
    Cites {
        entity_type: Option<String>,
        name: Option<String>,
        id: Option<Uuid>,
    },
    /// A call of `name` (any tool if `None`) whose arguments include `args`.
    ToolCalled {
        name: Option<String>,
        args: Map<String, Value>,
    },
    /// At least one pending proposal, made by a `propose_amendment` call including `args`.
    Proposes {
        args: Map<String, Value>,
    },
    /// No proposal and no successful write tool.
    NoWrite,
    Outcome(String),
    Confidence {
        min: f64,
        max: f64,
    },
    /// The turn's wall time, at most this many ms.
    Latency(f64),
    /// Tokens in + out, at most this many.
    Tokens(u64),
    NoCitationOutsideTurn,
    NoDataOfTenant(String),
}

const OUTCOMES: &[&str] = &[
    "answered",
    "escalated",
    "insufficient_evidence",
    "provider_error",
    "rejected",
];

const TYPES: &str = "equals, contains, icontains, contains-any, contains-all, icontains-any, icontains-all, starts-with, regex, is-json, javascript, cites, tool-called, no-tool, proposes, no-write, outcome, confidence, latency, tokens, no-citation-outside-turn, no-data-of-tenant (any with a `not-` prefix)";

impl TryFrom<RawAssertion> for Assertion {
    type Error = String;

    fn try_from(r: RawAssertion) -> Result<Self, String> {
        let (negate, base) = match r.kind.strip_prefix("not-") {
            Some(b) => (true, b),
            None => (false, r.kind.as_str()),
        };
        let weight = r.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(format!(
                "`{}`: weight must be a non-negative number",
                r.kind
            ));
        }
        let kind = r.kind.clone();
        let text = |what: &str| -> Result<String, String> {
            match &r.value {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::Bool(b)) => Ok(b.to_string()),
                _ => Err(format!("`{kind}` needs `value`: {what}")),
            }
        };
        let list = || -> Result<Vec<String>, String> {
            match &r.value {
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        Value::Number(n) => Ok(n.to_string()),
                        _ => Err(format!("`{kind}`: every value must be a string")),
                    })
                    .collect(),
                _ => Err(format!("`{kind}` needs `value`: a list of strings")),
            }
        };
        let args = r.args.clone().unwrap_or_default();
        let check = match base {
            "equals" => Check::Equals(text("the exact answer text")?),
            "contains" | "icontains" => Check::Contains {
                needle: text("the text to find")?,
                fold: base == "icontains",
            },
            "contains-any" | "icontains-any" => Check::ContainsAny {
                needles: list()?,
                fold: base.starts_with('i'),
            },
            "contains-all" | "icontains-all" => Check::ContainsAll {
                needles: list()?,
                fold: base.starts_with('i'),
            },
            "starts-with" => Check::StartsWith(text("the prefix")?),
            "regex" => {
                let src = text("a regular expression")?;
                Check::Regex(
                    regex::Regex::new(&src)
                        .map_err(|e| format!("`{kind}`: the regex does not compile: {e}"))?,
                )
            }
            "is-json" => Check::IsJson(match &r.value {
                None | Some(Value::Null) => None,
                Some(schema) => Some(Arc::new(
                    jsonschema::validator_for(schema)
                        .map_err(|e| format!("`{kind}`: the value is not a JSON schema: {e}"))?,
                )),
            }),
            "javascript" => Check::Javascript(text("a JavaScript expression or function body")?),
            "cites" => match &r.value {
                Some(Value::String(s)) => match s.parse::<Uuid>() {
                    Ok(id) => Check::Cites {
                        entity_type: None,
                        name: None,
                        id: Some(id),
                    },
                    Err(_) => Check::Cites {
                        entity_type: Some(s.clone()),
                        name: None,
                        id: None,
                    },
                },
                Some(Value::Object(m)) => {
                    let field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                    if let Some(extra) = m
                        .keys()
                        .find(|k| !["entity_type", "name", "id"].contains(&k.as_str()))
                    {
                        return Err(format!(
                            "`{kind}`: unknown key `{extra}` (use entity_type, name or id)"
                        ));
                    }
                    let id = match field("id") {
                        Some(s) => Some(
                            s.parse::<Uuid>()
                                .map_err(|_| format!("`{kind}`: id `{s}` is not a UUID"))?,
                        ),
                        None => None,
                    };
                    let (entity_type, name) = (field("entity_type"), field("name"));
                    if entity_type.is_none() && name.is_none() && id.is_none() {
                        return Err(format!("`{kind}` needs entity_type, name or id"));
                    }
                    Check::Cites {
                        entity_type,
                        name,
                        id,
                    }
                }
                _ => {
                    return Err(format!(
                        "`{kind}` needs `value`: an entity type, a span id, or {{entity_type, name}}"
                    ));
                }
            },
            "tool-called" | "no-tool" => {
                let name = match &r.value {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => return Err(format!("`{kind}`: `value` must be a tool name")),
                };
                let (negate, base_is_no) = (negate, base == "no-tool");
                return Ok(Self {
                    kind,
                    negate: negate ^ base_is_no,
                    check: Check::ToolCalled { name, args },
                    weight,
                    threshold: r.threshold,
                });
            }
            "proposes" => Check::Proposes { args },
            "no-write" => Check::NoWrite,
            "outcome" => {
                let o = text("an outcome")?;
                if !OUTCOMES.contains(&o.as_str()) {
                    return Err(format!(
                        "`{kind}`: unknown outcome `{o}` (one of {})",
                        OUTCOMES.join(", ")
                    ));
                }
                Check::Outcome(o)
            }
            "confidence" => {
                let (min, max) = match (&r.value, r.min, r.max) {
                    (Some(Value::Array(a)), None, None) if a.len() == 2 => (
                        a[0].as_f64().unwrap_or(f64::NAN),
                        a[1].as_f64().unwrap_or(f64::NAN),
                    ),
                    (None, min, max) if min.is_some() || max.is_some() => {
                        (min.unwrap_or(0.0), max.unwrap_or(1.0))
                    }
                    _ => {
                        return Err(format!(
                            "`{kind}` needs `min` and/or `max`, or `value: [min, max]`"
                        ));
                    }
                };
                if !(0.0..=1.0).contains(&min) || !(0.0..=1.0).contains(&max) || min > max {
                    return Err(format!(
                        "`{kind}`: the range must lie within 0..1 with min ≤ max"
                    ));
                }
                Check::Confidence { min, max }
            }
            "latency" => Check::Latency(
                r.threshold
                    .or(r.max)
                    .filter(|t| *t > 0.0)
                    .ok_or_else(|| format!("`{kind}` needs `threshold`: milliseconds"))?,
            ),
            "tokens" => Check::Tokens(
                r.threshold
                    .or(r.max)
                    .filter(|t| *t >= 0.0)
                    .map(|t| t as u64)
                    .ok_or_else(|| format!("`{kind}` needs `threshold`: a token count"))?,
            ),
            "no-citation-outside-turn" => Check::NoCitationOutsideTurn,
            "no-data-of-tenant" => Check::NoDataOfTenant(text("a tenant")?),
            other => {
                return Err(format!("unknown assertion type `{other}` (known: {TYPES})"));
            }
        };
        if matches!(check, Check::Latency(_) | Check::Tokens(_)) {
            return Ok(Self {
                kind,
                negate,
                check,
                weight,
                threshold: None,
            });
        }
        Ok(Self {
            kind,
            negate,
            check,
            weight,
            threshold: r.threshold,
        })
    }
}

/// One assertion's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind: String,
    pub pass: bool,
    pub score: f64,
    pub weight: f64,
    pub reason: String,
}

fn fold(s: &str, yes: bool) -> String {
    if yes { s.to_lowercase() } else { s.to_string() }
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(80).collect();
    if e.len() < s.len() {
        e.push('…');
    }
    e
}

/// Whether `have` includes every key of `want` with an equal value (strings compare without
/// regard to case, numbers by value).
fn includes(have: &Value, want: &Map<String, Value>) -> bool {
    want.iter().all(|(k, w)| match (have.get(k), w) {
        (Some(Value::String(h)), Value::String(w)) => h.eq_ignore_ascii_case(w),
        (Some(Value::Number(h)), Value::Number(w)) => h.as_f64() == w.as_f64(),
        (Some(h), Value::Object(m)) => includes(h, m),
        (Some(h), w) => h == w,
        (None, Value::Null) => true,
        (None, _) => false,
    })
}

impl Assertion {
    /// Evaluates the assertion on one turn.
    pub async fn evaluate(&self, o: &Observed) -> Verdict {
        let (pass, score, reason) = self.raw(o).await;
        let pass = if self.negate { !pass } else { pass };
        let score = if self.negate { 1.0 - score } else { score };
        Verdict {
            kind: self.kind.clone(),
            pass,
            score,
            weight: self.weight,
            reason: if self.negate && !pass {
                format!("expected not: {reason}")
            } else {
                reason
            },
        }
    }

    async fn raw(&self, o: &Observed) -> (bool, f64, String) {
        let b = |pass: bool, reason: String| (pass, if pass { 1.0 } else { 0.0 }, reason);
        let out = &o.output;
        match &self.check {
            Check::Equals(v) => b(
                out.trim() == v.trim(),
                format!("output is `{}`", excerpt(out)),
            ),
            Check::Contains { needle, fold: f } => b(
                fold(out, *f).contains(&fold(needle, *f)),
                format!("`{needle}` in `{}`", excerpt(out)),
            ),
            Check::ContainsAny { needles, fold: f } => {
                let h = fold(out, *f);
                b(
                    needles.iter().any(|n| h.contains(&fold(n, *f))),
                    format!("any of {needles:?} in `{}`", excerpt(out)),
                )
            }
            Check::ContainsAll { needles, fold: f } => {
                let h = fold(out, *f);
                let missing: Vec<&String> = needles
                    .iter()
                    .filter(|n| !h.contains(&fold(n, *f)))
                    .collect();
                b(
                    missing.is_empty(),
                    format!("missing {missing:?} in `{}`", excerpt(out)),
                )
            }
            Check::StartsWith(p) => b(
                out.trim_start().starts_with(p.as_str()),
                format!("`{}` starts with `{p}`", excerpt(out)),
            ),
            Check::Regex(re) => b(
                re.is_match(out),
                format!("/{}/ on `{}`", re.as_str(), excerpt(out)),
            ),
            Check::IsJson(schema) => match serde_json::from_str::<Value>(out) {
                Err(e) => b(false, format!("output is not JSON: {e}")),
                Ok(v) => match schema {
                    None => b(true, "output is JSON".into()),
                    Some(s) => {
                        let errors: Vec<String> =
                            s.iter_errors(&v).map(|e| e.to_string()).take(3).collect();
                        b(errors.is_empty(), format!("schema: {}", errors.join("; ")))
                    }
                },
            },
            Check::Javascript(src) => {
                let context = json!({
                    "answer": o.answer, "outcome": o.outcome, "tool_calls": o.tool_calls,
                    "citations": o.citations, "proposals": o.proposals,
                    "latency_ms": o.latency_ms, "tokens_in": o.tokens_in, "tokens_out": o.tokens_out,
                });
                match js::evaluate(src, out, context).await {
                    Err(e) => b(false, format!("javascript failed: {e}")),
                    Ok(js::JsVerdict {
                        pass,
                        score,
                        reason,
                    }) => {
                        let pass = match (pass, self.threshold) {
                            (Some(p), _) => p,
                            (None, Some(t)) => score >= t,
                            (None, None) => score > 0.0,
                        };
                        (
                            pass,
                            score,
                            reason.unwrap_or_else(|| format!("score {score}")),
                        )
                    }
                }
            }
            Check::Cites {
                entity_type,
                name,
                id,
            } => {
                let hit = o.citations.iter().any(|c| {
                    let Ok(cid) = c.parse::<Uuid>() else {
                        return false;
                    };
                    if id.is_some_and(|want| want != cid) {
                        return false;
                    }
                    if entity_type.is_none() && name.is_none() {
                        return true;
                    }
                    o.spans.get(&cid).is_some_and(|s| {
                        entity_type.as_ref().is_none_or(|t| &s.entity_type == t)
                            && name.as_ref().is_none_or(|n| s.name.as_ref() == Some(n))
                    })
                });
                let cited: Vec<String> = o
                    .citations
                    .iter()
                    .map(|c| {
                        c.parse::<Uuid>()
                            .ok()
                            .and_then(|id| o.spans.get(&id))
                            .map_or_else(
                                || c.clone(),
                                |s| match &s.name {
                                    Some(n) => format!("{} {n}", s.entity_type),
                                    None => s.entity_type.clone(),
                                },
                            )
                    })
                    .collect();
                b(hit, format!("cited {cited:?}"))
            }
            Check::ToolCalled { name, args } => {
                let hit = o.tool_calls.iter().any(|t| {
                    name.as_ref().is_none_or(|n| &t.name == n) && includes(&t.arguments, args)
                });
                let calls: Vec<String> = o
                    .tool_calls
                    .iter()
                    .map(|t| format!("{}({})", t.name, t.arguments))
                    .collect();
                b(hit, format!("calls {calls:?}"))
            }
            Check::Proposes { args } => {
                let hit = !o.proposals.is_empty()
                    && (args.is_empty()
                        || o.tool_calls.iter().any(|t| {
                            t.name == "propose_amendment" && t.ok && includes(&t.arguments, args)
                        }));
                b(hit, format!("{} proposal(s)", o.proposals.len()))
            }
            Check::NoWrite => {
                let writes = o
                    .tool_calls
                    .iter()
                    .filter(|t| t.name == "propose_amendment" && t.ok)
                    .count();
                b(
                    o.proposals.is_empty() && writes == 0,
                    format!(
                        "{} proposal(s), {writes} successful write call(s)",
                        o.proposals.len()
                    ),
                )
            }
            Check::Outcome(want) => b(&o.outcome == want, format!("outcome {}", o.outcome)),
            Check::Confidence { min, max } => {
                match o.answer.get("confidence").and_then(Value::as_f64) {
                    Some(c) => b(
                        (*min..=*max).contains(&c),
                        format!("confidence {c} in [{min}, {max}]"),
                    ),
                    None => b(false, "the answer has no confidence".into()),
                }
            }
            Check::Latency(max) => b(
                o.latency_ms <= *max,
                format!("{:.0} ms ≤ {max} ms", o.latency_ms),
            ),
            Check::Tokens(max) => match (o.tokens_in, o.tokens_out) {
                (None, None) => b(false, "the turn recorded no token counts".into()),
                (i, u) => {
                    let n = i.unwrap_or(0) + u.unwrap_or(0);
                    b(n <= *max, format!("{n} tokens ≤ {max}"))
                }
            },
            Check::NoCitationOutsideTurn => {
                let returned = o.tool_result_ids();
                let outside: Vec<&String> = o
                    .citations
                    .iter()
                    .filter(|c| c.parse::<Uuid>().map_or(true, |id| !returned.contains(&id)))
                    .collect();
                b(
                    outside.is_empty(),
                    format!("citations not returned by this turn's tools: {outside:?}"),
                )
            }
            Check::NoDataOfTenant(tenant) => {
                let mentioned = o.mentioned_ids();
                let mut leaks: Vec<String> = mentioned
                    .iter()
                    .filter(|id| {
                        o.spans.get(id).is_some_and(|s| &s.tenant_id == tenant)
                            || o.tenant_ids.get(tenant).is_some_and(|set| set.contains(id))
                    })
                    .map(Uuid::to_string)
                    .collect();
                // Rows a tool returned carry their tenant.
                for t in &o.tool_calls {
                    if names_tenant(&t.result, tenant) {
                        leaks.push(format!("a {} result names tenant {tenant}", t.name));
                    }
                }
                b(
                    leaks.is_empty(),
                    format!("data of tenant {tenant}: {leaks:?}"),
                )
            }
        }
    }
}

fn names_tenant(v: &Value, tenant: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| {
            (k == "tenant_id" && x.as_str() == Some(tenant)) || names_tenant(x, tenant)
        }),
        Value::Array(a) => a.iter().any(|x| names_tenant(x, tenant)),
        _ => false,
    }
}

/// One attempt's verdicts and whether they add up to a pass: with a case threshold, the
/// weighted score must reach it; without, every assertion must pass (promptfoo's rule).
pub fn score(verdicts: &[Verdict], threshold: Option<f64>) -> (bool, f64) {
    let total: f64 = verdicts.iter().map(|v| v.weight).sum();
    let got: f64 = verdicts.iter().map(|v| v.weight * v.score).sum();
    let s = if total > 0.0 { got / total } else { 1.0 };
    let pass = match threshold {
        Some(t) => s >= t,
        None => verdicts.iter().all(|v| v.pass),
    };
    (pass, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(yaml: &str) -> Assertion {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn bad(yaml: &str) -> String {
        serde_yaml_ng::from_str::<Assertion>(yaml)
            .unwrap_err()
            .to_string()
    }

    fn turn() -> Observed {
        let law = Uuid::now_v7();
        let contract = Uuid::now_v7();
        let mut spans = HashMap::new();
        spans.insert(
            law,
            SpanInfo {
                entity_type: "law.decision".into(),
                name: None,
                tenant_id: "demo".into(),
            },
        );
        spans.insert(
            contract,
            SpanInfo {
                entity_type: "contract".into(),
                name: Some("D1".into()),
                tenant_id: "demo".into(),
            },
        );
        Observed {
            output: "D1 was terminated: the deadline passed.".into(),
            answer: json!({"text": "D1 was terminated: the deadline passed.", "confidence": 0.9,
                           "citations": [law.to_string(), contract.to_string()]}),
            outcome: "answered".into(),
            tool_calls: vec![ToolSeen {
                name: "explain_decision".into(),
                arguments: json!({"contract": "D1"}),
                ok: true,
                result: json!({"decisions": [{"id": law}], "contract": {"id": contract, "tenant_id": "demo"}}),
            }],
            citations: vec![law.to_string(), contract.to_string()],
            latency_ms: 12.0,
            tokens_in: Some(900),
            tokens_out: Some(40),
            spans,
            ..Observed::default()
        }
    }

    async fn passes(yaml: &str, o: &Observed) -> bool {
        a(yaml).evaluate(o).await.pass
    }

    #[tokio::test]
    async fn string_assertions_follow_promptfoo() {
        let o = turn();
        assert!(passes("{type: contains, value: terminated}", &o).await);
        assert!(!passes("{type: contains, value: TERMINATED}", &o).await);
        assert!(passes("{type: icontains, value: TERMINATED}", &o).await);
        assert!(passes("{type: not-icontains, value: accepted}", &o).await);
        assert!(!passes("{type: not-contains, value: D1}", &o).await);
        assert!(passes("{type: contains-any, value: [nope, deadline]}", &o).await);
        assert!(!passes("{type: contains-all, value: [nope, deadline]}", &o).await);
        assert!(passes("{type: regex, value: 'D\\d was'}", &o).await);
        assert!(passes("{type: starts-with, value: D1}", &o).await);
        assert!(
            passes(
                "{type: equals, value: 'D1 was terminated: the deadline passed.'}",
                &o
            )
            .await
        );
        assert!(!passes("{type: is-json}", &o).await);
        let mut j = turn();
        j.output = r#"{"a": 1}"#.into();
        assert!(passes("{type: is-json}", &j).await);
        assert!(!passes("{type: is-json, value: {required: [b]}}", &j).await);
    }

    #[tokio::test]
    async fn agent_assertions_read_the_turn() {
        let o = turn();
        assert!(passes("{type: cites, value: law.decision}", &o).await);
        assert!(
            passes(
                "{type: cites, value: {entity_type: contract, name: D1}}",
                &o
            )
            .await
        );
        assert!(
            !passes(
                "{type: cites, value: {entity_type: contract, name: D2}}",
                &o
            )
            .await
        );
        assert!(
            passes(
                "{type: tool-called, value: explain_decision, args: {contract: d1}}",
                &o
            )
            .await
        );
        assert!(
            !passes(
                "{type: tool-called, value: explain_decision, args: {contract: D2}}",
                &o
            )
            .await
        );
        assert!(passes("{type: no-tool, value: query_ledger}", &o).await);
        assert!(!passes("{type: no-tool}", &o).await);
        assert!(passes("{type: no-write}", &o).await);
        assert!(!passes("{type: proposes}", &o).await);
        assert!(passes("{type: outcome, value: answered}", &o).await);
        assert!(passes("{type: confidence, min: 0.6}", &o).await);
        assert!(!passes("{type: confidence, value: [0, 0.5]}", &o).await);
        assert!(passes("{type: latency, threshold: 100}", &o).await);
        assert!(!passes("{type: tokens, threshold: 500}", &o).await);
        assert!(passes("{type: no-citation-outside-turn}", &o).await);
        assert!(passes("{type: no-data-of-tenant, value: other}", &o).await);
        assert!(!passes("{type: no-data-of-tenant, value: demo}", &o).await);
        let mut invented = turn();
        invented.citations.push(Uuid::now_v7().to_string());
        assert!(!passes("{type: no-citation-outside-turn}", &invented).await);
    }

    #[tokio::test]
    async fn javascript_sees_output_and_context() {
        let o = turn();
        assert!(passes("{type: javascript, value: \"output.includes('D1') && context.tool_calls.length === 1\"}", &o).await);
        assert!(
            !passes(
                "{type: javascript, value: \"context.answer.confidence < 0.5\"}",
                &o
            )
            .await
        );
        assert!(passes("{type: javascript, value: \"const n = output.length;\\nreturn {pass: n > 3, score: 1, reason: 'long'};\"}", &o).await);
        let v = a("{type: javascript, value: 'context.answer.confidence', threshold: 0.95}")
            .evaluate(&o)
            .await;
        assert!(!v.pass && (v.score - 0.9).abs() < 1e-9, "{v:?}");
        let v = a("{type: javascript, value: 'nope('}").evaluate(&o).await;
        assert!(!v.pass && v.reason.contains("javascript failed"), "{v:?}");
    }

    #[test]
    fn weights_and_thresholds_make_the_score() {
        let v = |pass: bool, weight: f64| Verdict {
            kind: "x".into(),
            pass,
            score: if pass { 1.0 } else { 0.0 },
            weight,
            reason: String::new(),
        };
        assert_eq!(score(&[v(true, 3.0), v(false, 1.0)], None), (false, 0.75));
        assert_eq!(
            score(&[v(true, 3.0), v(false, 1.0)], Some(0.7)),
            (true, 0.75)
        );
        assert!(!score(&[v(true, 1.0), v(false, 1.0)], Some(0.7)).0);
    }

    #[test]
    fn malformed_assertions_say_what_they_need() {
        assert!(bad("{type: contains}").contains("needs `value`"));
        assert!(bad("{type: outcome, value: won}").contains("unknown outcome"));
        assert!(bad("{type: confidence, min: 0.9, max: 0.1}").contains("min ≤ max"));
        assert!(bad("{type: latency}").contains("threshold"));
        assert!(bad("{type: contains, value: x, wieght: 2}").contains("wieght"));
        assert!(bad("{type: is-json, value: {type: 12}}").contains("not a JSON schema"));
    }
}
