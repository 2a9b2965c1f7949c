//! Tool calls written in the message text. Small and local models often do not use the API's
//! `tool_calls` field: their chat template makes them write the call as text, which a server
//! without the matching parser passes through as content. Three open formats are read:
//!
//! - Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (one or more);
//! - a fenced block (```` ```json ````, or no language) holding `{"name": …, "arguments": …}`;
//! - Llama 3 style bare JSON, the whole reply: `{"name": …, "parameters": {…}}` (an optional
//!   `<|python_tag|>` before it), or a JSON array of such objects.
//!
//! Only names of tools offered in the request count, and only objects whose keys are those of
//! a call, so an answer object (`text`, `confidence`, …) is never mistaken for one. Arguments
//! may be an object or a JSON string holding one (as the OpenAI wire format sends them).

use serde_json::{Map, Value};

use super::types::ToolCall;

/// The calls found in `content` and the text left around them, or `None` when it holds none.
pub fn extract(content: &str, offered: &[&str]) -> Option<(Vec<ToolCall>, String)> {
    if offered.is_empty() || content.trim().is_empty() {
        return None;
    }
    tagged(content, offered)
        .or_else(|| fenced(content, offered))
        .or_else(|| bare(content, offered))
}

fn new_id() -> String {
    format!("call_{}", uuid::Uuid::now_v7().simple())
}

/// One JSON value as calls: an object that is a call, or an array of them (all or nothing).
fn calls_in(v: &Value, offered: &[&str]) -> Option<Vec<ToolCall>> {
    match v {
        Value::Object(o) => call(o, offered).map(|c| vec![c]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_object().and_then(|o| call(o, offered)))
            .collect(),
        _ => None,
    }
}

fn call(o: &Map<String, Value>, offered: &[&str]) -> Option<ToolCall> {
    if !o.keys().all(|k| {
        matches!(
            k.as_str(),
            "name" | "arguments" | "parameters" | "id" | "type"
        )
    }) {
        return None;
    }
    let name = o.get("name")?.as_str()?.trim();
    if !offered.contains(&name) {
        return None;
    }
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(v) => v.clone(),
    };
    Some(ToolCall {
        id: new_id(),
        name: name.to_string(),
        arguments,
    })
}

/// `<tool_call>…</tool_call>` blocks (an unclosed last one runs to the end of the text).
fn tagged(content: &str, offered: &[&str]) -> Option<(Vec<ToolCall>, String)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    if !content.contains(OPEN) {
        return None;
    }
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut tail = content;
    while let Some(start) = tail.find(OPEN) {
        rest.push_str(&tail[..start]);
        let body_start = start + OPEN.len();
        let (body, next) = match tail[body_start..].find(CLOSE) {
            Some(end) => (
                &tail[body_start..body_start + end],
                &tail[body_start + end + CLOSE.len()..],
            ),
            None => (&tail[body_start..], ""),
        };
        let value: Value = serde_json::from_str(body.trim()).ok()?;
        calls.extend(calls_in(&value, offered)?);
        tail = next;
    }
    rest.push_str(tail);
    Some((calls, rest.trim().to_string()))
}

/// Fenced code blocks whose whole body is a call (or an array of calls).
fn fenced(content: &str, offered: &[&str]) -> Option<(Vec<ToolCall>, String)> {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut tail = content;
    while let Some(start) = tail.find("```") {
        let after = &tail[start + 3..];
        let Some(end) = after.find("```") else { break };
        let block = &after[..end];
        // The info string: up to the first newline (`json`, `tool_call`, nothing…).
        let body = match block.find('\n') {
            Some(nl) if !block[..nl].trim_start().starts_with(['{', '[']) => &block[nl + 1..],
            _ => block,
        };
        match serde_json::from_str::<Value>(body.trim())
            .ok()
            .and_then(|v| calls_in(&v, offered))
        {
            Some(found) => {
                rest.push_str(&tail[..start]);
                calls.extend(found);
            }
            None => rest.push_str(&tail[..start + 3 + end + 3]),
        }
        tail = &after[end + 3..];
    }
    if calls.is_empty() {
        return None;
    }
    rest.push_str(tail);
    Some((calls, rest.trim().to_string()))
}

/// The whole reply is a call (or an array of calls), as Llama 3 writes them.
fn bare(content: &str, offered: &[&str]) -> Option<(Vec<ToolCall>, String)> {
    let text = content.trim();
    let text = text.strip_prefix("<|python_tag|>").unwrap_or(text).trim();
    let value: Value = serde_json::from_str(text).ok()?;
    Some((calls_in(&value, offered)?, String::new()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OFFERED: &[&str] = &["query_ledger", "get_span", "explain_decision"];

    fn names_args(content: &str) -> Option<(Vec<(String, Value)>, String)> {
        extract(content, OFFERED).map(|(calls, rest)| {
            (
                calls.into_iter().map(|c| (c.name, c.arguments)).collect(),
                rest,
            )
        })
    }

    #[test]
    fn hermes_tool_call_tags_are_calls() {
        let (calls, rest) = names_args(
            "Let me check.\n<tool_call>\n{\"name\": \"explain_decision\", \"arguments\": {\"contract\": \"D1\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_span\", \"arguments\": \"{\\\"id\\\": \\\"x\\\"}\"}</tool_call>",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![
                ("explain_decision".into(), json!({"contract": "D1"})),
                ("get_span".into(), json!({"id": "x"})),
            ]
        );
        assert_eq!(rest, "Let me check.");
        // An unclosed last tag (the model stopped at its end token) still counts.
        let (calls, _) =
            names_args("<tool_call>{\"name\": \"query_ledger\", \"arguments\": {}}").unwrap();
        assert_eq!(calls, vec![("query_ledger".into(), json!({}))]);
    }

    #[test]
    fn fenced_json_blocks_with_name_and_arguments_are_calls() {
        let (calls, rest) = names_args(
            "I will query the ledger:\n```json\n{\"name\": \"query_ledger\", \"arguments\": {\"entity_type\": \"contract\", \"status\": \"held\"}}\n```",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![(
                "query_ledger".into(),
                json!({"entity_type": "contract", "status": "held"})
            )]
        );
        assert_eq!(rest, "I will query the ledger:");
        let (calls, _) =
            names_args("```\n[{\"name\": \"get_span\", \"arguments\": {\"id\": \"a\"}}]\n```")
                .unwrap();
        assert_eq!(calls, vec![("get_span".into(), json!({"id": "a"}))]);
    }

    #[test]
    fn llama_style_bare_json_with_parameters_is_a_call() {
        let (calls, rest) = names_args(
            "<|python_tag|>{\"name\": \"explain_decision\", \"parameters\": {\"contract\": \"D4\"}}",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![("explain_decision".into(), json!({"contract": "D4"}))]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn answers_unknown_tools_and_prose_are_not_calls() {
        // The answer object itself, fenced or bare.
        let answer = r#"{"text": "D1 was terminated.", "confidence": 0.9, "actions": [], "citations": [], "telemetry": {"tool_use_count": 1}}"#;
        assert!(names_args(answer).is_none());
        assert!(names_args(&format!("```json\n{answer}\n```")).is_none());
        // A tool that was not offered.
        assert!(names_args(r#"{"name": "drop_table", "arguments": {}}"#).is_none());
        assert!(
            names_args(r#"<tool_call>{"name": "drop_table", "arguments": {}}</tool_call>"#)
                .is_none()
        );
        // Extra keys: not a call.
        assert!(names_args(r#"{"name": "get_span", "arguments": {}, "text": "hi"}"#).is_none());
        assert!(names_args("D1 was terminated at midnight.").is_none());
        assert!(names_args("```rust\nfn main() {}\n```").is_none());
        // Nothing offered: nothing parsed.
        assert!(extract(r#"{"name": "get_span", "arguments": {}}"#, &[]).is_none());
    }

    #[test]
    fn call_ids_are_unique() {
        let (calls, _) = extract(
            r#"[{"name": "get_span", "arguments": {}}, {"name": "get_span", "arguments": {}}]"#,
            OFFERED,
        )
        .unwrap();
        assert_ne!(calls[0].id, calls[1].id);
    }
}
