//! Tool calls through the output grammar (`LOGLINE_TOOL_MODE=grammar`).
//!
//! Servers that compile a JSON schema into an output grammar (llama.cpp's `response_format`,
//! Ollama's `format`, vLLM's guided decoding) do not always constrain tool calls themselves:
//! llama.cpp with Qwen2.5's chat template renders the tools into the prompt but ignores
//! `tool_choice: required`, and the model answers in prose or invents a result. In grammar mode
//! the tools are still offered (the chat template shows them to the model in the format it was
//! trained on), and the reply is constrained to one JSON object that is either a call,
//! `{"name": <a tool>, "arguments": {…}}`, or — unless a call is required — the final answer.
//! [`super::text_tools`] reads a call back from that object. The grammar also ends the reply
//! at the first complete object, so a small model cannot ramble until `max_tokens`.

use serde_json::{Map, Value, json};

use super::settings::ToolMode;
use super::types::{CompletionRequest, ToolChoice, ToolSpec};

/// The schema a provider constrains the reply of `req` to: in grammar mode, on a round that
/// offers tools, a call or (unless a call is required) the answer; otherwise the request's own
/// `response_schema` (an answer round), if any.
pub fn constraint(req: &CompletionRequest, mode: ToolMode) -> Option<Value> {
    if req.tools.is_empty() || mode != ToolMode::Grammar {
        return req.response_schema.clone();
    }
    let answer = (req.tool_choice != ToolChoice::Required)
        .then_some(req.answer_schema.as_ref())
        .flatten();
    Some(reply_schema(&req.tools, answer))
}

/// The schema of a reply in grammar mode: one of the offered tools' calls, or `answer` when it
/// is given (a round where a call is required passes `None`).
///
/// `$defs` of the tool parameter schemas and of the answer schema are hoisted to the root (each
/// under its own prefix) and their `$ref`s rewritten, because a grammar compiler resolves
/// `#/$defs/…` against the root of the schema it is given.
pub fn reply_schema(tools: &[ToolSpec], answer: Option<&Value>) -> Value {
    let mut defs = Map::new();
    let mut choices = Vec::with_capacity(tools.len() + 1);
    for t in tools {
        let arguments = hoist(&t.parameters, &format!("{}__", t.name), &mut defs);
        choices.push(json!({
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": arguments,
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        }));
    }
    if let Some(answer) = answer {
        choices.push(hoist(answer, "answer__", &mut defs));
    }
    let mut root = Map::new();
    if choices.len() == 1 {
        if let Some(Value::Object(only)) = choices.pop() {
            root = only;
        }
    } else {
        root.insert("anyOf".into(), Value::Array(choices));
    }
    if !defs.is_empty() {
        root.insert("$defs".into(), Value::Object(defs));
    }
    Value::Object(root)
}

/// `schema` without its `$defs`/`definitions` (moved into `defs` as `prefix` + name) and with
/// every local `$ref` pointing at the moved definition.
fn hoist(schema: &Value, prefix: &str, defs: &mut Map<String, Value>) -> Value {
    let mut out = schema.clone();
    if let Value::Object(o) = &mut out {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(local)) = o.remove(key) {
                for (name, def) in local {
                    let mut def = def;
                    rewrite_refs(&mut def, prefix);
                    defs.insert(format!("{prefix}{name}"), def);
                }
            }
        }
        // A schema-level `$schema`/`$id` means nothing inside another schema.
        o.remove("$schema");
        o.remove("$id");
    }
    rewrite_refs(&mut out, prefix);
    out
}

fn rewrite_refs(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                for from in ["#/$defs/", "#/definitions/"] {
                    if let Some(name) = r.strip_prefix(from) {
                        *r = format!("#/$defs/{prefix}{name}");
                        break;
                    }
                }
            }
            for child in o.values_mut() {
                rewrite_refs(child, prefix);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| rewrite_refs(c, prefix)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters,
        }
    }

    #[test]
    fn a_required_call_allows_only_calls_and_refs_point_at_the_hoisted_defs() {
        let q = tool(
            "query",
            json!({"type": "object", "properties": {"f": {"$ref": "#/$defs/F"}},
                   "$defs": {"F": {"type": "string"}}}),
        );
        let s = reply_schema(&[q], None);
        assert_eq!(s["properties"]["name"]["const"], "query");
        assert_eq!(
            s["properties"]["arguments"]["properties"]["f"]["$ref"],
            "#/$defs/query__F"
        );
        assert_eq!(s["$defs"]["query__F"]["type"], "string");
        assert!(s["properties"]["arguments"].get("$defs").is_none());
    }

    #[test]
    fn an_optional_call_allows_the_answer_too() {
        let answer = json!({"type": "object", "required": ["text"],
                            "properties": {"text": {"type": "string"}}});
        let s = reply_schema(
            &[tool("a", json!({"type": "object"})), tool("b", json!({}))],
            Some(&answer),
        );
        let any = s["anyOf"].as_array().expect("anyOf");
        assert_eq!(any.len(), 3);
        assert_eq!(any[2], answer);
        // Every choice is checked by a real validator: a call and an answer pass, a call to a
        // tool that was not offered does not.
        let v = jsonschema::validator_for(&s).expect("valid schema");
        assert!(v.is_valid(&json!({"name": "a", "arguments": {}})));
        assert!(v.is_valid(&json!({"text": "hi"})));
        assert!(!v.is_valid(&json!({"name": "c", "arguments": {}})));
    }
}
