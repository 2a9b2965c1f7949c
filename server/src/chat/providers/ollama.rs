//! Ollama's native chat API (`POST /api/chat`, JSON or NDJSON streaming, tool calling) with
//! ollama-rs's wire types. The HTTP exchange is ours (`http::execute_with_retry`):
//! ollama-rs's own client reduces every non-success status to a string and prints stream
//! errors to stderr, and we need status codes, `Retry-After` and typed errors.

use std::collections::HashMap;

use async_trait::async_trait;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::{ChatMessage as OllamaMessage, ChatMessageResponse, MessageRole};
use ollama_rs::generation::parameters::FormatType;
use ollama_rs::generation::tools::{
    ToolCall as OllamaToolCall, ToolCallFunction, ToolFunctionInfo, ToolInfo, ToolType,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::http::{self, Answer, CallBudget, Pace};
use super::settings::ProviderSettings;
use super::tool_grammar;
use super::types::{
    ChatMessage, Completion, CompletionRequest, Provider, ProviderError, Role, ToolCall,
};

/// Longest NDJSON line accepted from a stream (a runaway server cannot exhaust memory).
const MAX_LINE: usize = 4 * 1024 * 1024;

/// A provider speaking Ollama's `/api/chat`.
#[derive(Debug)]
pub struct OllamaProvider {
    model: String,
    chat_url: reqwest::Url,
    shown_url: String,
    http: reqwest::Client,
    settings: ProviderSettings,
}

impl OllamaProvider {
    /// `url` is the server root, e.g. `http://127.0.0.1:11434`.
    pub fn new(url: &str, model: &str, settings: ProviderSettings) -> Result<Self, ProviderError> {
        if model.trim().is_empty() {
            return Err(ProviderError::Config("the model name is empty".into()));
        }
        let base = reqwest::Url::parse(&format!("{}/", url.trim_end_matches('/')))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ProviderError::Config(format!("OLLAMA_URL must be http(s)://…, not `{url}`"))
            })?;
        let chat_url = base
            .join("api/chat")
            .map_err(|e| ProviderError::Config(format!("OLLAMA_URL `{url}`: {e}")))?;
        Ok(Self {
            model: model.to_string(),
            shown_url: http::display_url(base.as_str()),
            chat_url,
            http: http::client(&settings)?,
            settings,
        })
    }

    /// The request body: ollama-rs's `ChatMessageRequest`, plus what it cannot express
    /// (`stream`, `options.num_predict`, and `tool_name` on tool results, which Ollama uses to
    /// pair them with calls). Ollama has no `tool_choice`: a required tool call is asked for by
    /// the prompt alone.
    fn body(&self, req: &CompletionRequest, stream: bool) -> Result<Value, ProviderError> {
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut messages = vec![OllamaMessage::system(req.system.text().to_string())];
        let mut tool_names: Vec<Option<String>> = vec![None];
        for m in &req.messages {
            for c in &m.tool_calls {
                names.insert(&c.id, &c.name);
            }
            let mut msg = match m.role {
                // Refused by `CompletionRequest::check` before we get here.
                Role::System | Role::User => OllamaMessage::user(m.content.clone()),
                Role::Assistant => OllamaMessage::assistant(m.content.clone()),
                Role::Tool => OllamaMessage::tool(m.content.clone()),
            };
            msg.tool_calls = m
                .tool_calls
                .iter()
                .map(|c| OllamaToolCall {
                    function: ToolCallFunction {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect();
            tool_names.push(
                m.tool_call_id
                    .as_deref()
                    .and_then(|id| names.get(id))
                    .map(|n| n.to_string()),
            );
            messages.push(msg);
        }
        let tools = req
            .tools
            .iter()
            .map(|t| {
                Ok(ToolInfo {
                    tool_type: ToolType::Function,
                    function: ToolFunctionInfo {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters: serde_json::from_value(t.parameters.clone()).map_err(|e| {
                            ProviderError::InvalidRequest(format!(
                                "tool `{}` parameters are not a JSON schema: {e}",
                                t.name
                            ))
                        })?,
                    },
                })
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        let mut request = ChatMessageRequest::new(self.model.clone(), messages).tools(tools);
        // Grammar mode: the reply is one JSON object, a call or the answer (Ollama has no
        // `tool_choice`, so a required call is the only choice the grammar leaves).
        let reply_schema = tool_grammar::constraint(req, self.settings.tool_mode);
        if let Some(schema) = &reply_schema {
            let format: FormatType = serde_json::from_value(schema.clone()).map_err(|e| {
                ProviderError::InvalidRequest(format!("response schema is not usable: {e}"))
            })?;
            request = request.format(format);
        }
        let mut body = serde_json::to_value(&request).map_err(|e| {
            ProviderError::InvalidRequest(format!("cannot encode the request: {e}"))
        })?;
        body["stream"] = json!(stream);
        // The reply's length cap (`LOGLINE_MAX_TOKENS`): Ollama reads it from the options.
        if !body.get("options").is_some_and(Value::is_object) {
            body["options"] = json!({});
        }
        body["options"]["num_predict"] = json!(self.settings.max_tokens);
        if let Some(list) = body.get_mut("messages").and_then(Value::as_array_mut) {
            for (msg, name) in list.iter_mut().zip(tool_names) {
                if let (Some(obj), Some(name)) = (msg.as_object_mut(), name) {
                    obj.insert("tool_name".into(), json!(name));
                }
            }
        }
        Ok(body)
    }

    async fn run(
        &self,
        req: &CompletionRequest,
        deltas: Option<mpsc::Sender<String>>,
        budget: CallBudget,
    ) -> Result<Answer, ProviderError> {
        let body = self.body(req, deltas.is_some() || self.settings.stream)?;
        let bytes = serde_json::to_vec(&body).map_err(|e| {
            ProviderError::InvalidRequest(format!("cannot encode the request: {e}"))
        })?;
        let build = || {
            let request = self
                .http
                .post(self.chat_url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone())
                .build()
                .map_err(|e| {
                    ProviderError::InvalidRequest(format!("cannot build the request: {e}"))
                });
            async move { request }
        };
        let streamed = deltas.is_some() || self.settings.stream;
        let mut pace = Pace::new(&self.settings);
        let send = http::execute_with_retry(&self.http, &self.settings.retry, &budget, None, build);
        let response = if streamed {
            pace.before_first(send, &budget).await?
        } else {
            send.await?
        };
        let read_err = |e: reqwest::Error| budget.transport_error(e, &self.shown_url);
        match deltas {
            None if !streamed => {
                let bytes = response.bytes().await.map_err(read_err)?;
                let raw: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ProviderError::BadResponse(format!(
                        "{e}; body: {}",
                        http::excerpt(&bytes, None)
                    ))
                })?;
                if let Some(err) = raw.get("error").and_then(Value::as_str) {
                    return Err(ProviderError::BadResponse(format!("Ollama error: {err}")));
                }
                let parsed: ChatMessageResponse =
                    serde_json::from_value(raw.clone()).map_err(|e| {
                        ProviderError::BadResponse(format!(
                            "{e}; body: {}",
                            http::excerpt(&bytes, None)
                        ))
                    })?;
                let mut acc = Assembly::default();
                acc.add(parsed);
                acc.finish(raw)
            }
            tx => {
                let mut stream = response.bytes_stream();
                let mut buffer: Vec<u8> = Vec::new();
                let mut acc = Assembly::default();
                let mut last = Value::Null;
                let mut lines = 0usize;
                let mut handle =
                    |line: &[u8], acc: &mut Assembly| -> Result<Option<String>, ProviderError> {
                        let text = std::str::from_utf8(line)
                            .map_err(|e| {
                                ProviderError::BadResponse(format!("stream line is not UTF-8: {e}"))
                            })?
                            .trim();
                        if text.is_empty() {
                            return Ok(None);
                        }
                        lines += 1;
                        let value: Value = serde_json::from_str(text).map_err(|e| {
                            ProviderError::BadResponse(format!(
                                "stream line {lines}: {e}: {}",
                                http::excerpt(text.as_bytes(), None)
                            ))
                        })?;
                        if let Some(err) = value.get("error").and_then(Value::as_str) {
                            return Err(ProviderError::BadResponse(format!(
                                "Ollama error mid-stream: {err}"
                            )));
                        }
                        let chunk: ChatMessageResponse = serde_json::from_value(value.clone())
                            .map_err(|e| {
                                ProviderError::BadResponse(format!("stream line {lines}: {e}"))
                            })?;
                        last = value;
                        Ok(acc.add(chunk))
                    };
                while let Some(piece) = pace.next(&mut stream, &budget).await? {
                    let piece = piece.map_err(read_err)?;
                    buffer.extend_from_slice(&piece);
                    while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=pos).collect();
                        if let (Some(text), Some(tx)) = (handle(&line, &mut acc)?, &tx) {
                            let _ = tx.send(text).await;
                        }
                        if acc.done {
                            break;
                        }
                    }
                    if acc.done {
                        break;
                    }
                    if buffer.len() > MAX_LINE {
                        return Err(ProviderError::BadResponse(format!(
                            "a stream line exceeds {MAX_LINE} bytes"
                        )));
                    }
                }
                if !acc.done && !buffer.is_empty() {
                    let rest = std::mem::take(&mut buffer);
                    if let (Some(text), Some(tx)) = (handle(&rest, &mut acc)?, &tx) {
                        let _ = tx.send(text).await;
                    }
                }
                if !acc.done {
                    return Err(ProviderError::BadResponse(
                        "the stream ended before the final (`done: true`) line".into(),
                    ));
                }
                let mut answer = acc.finish(last)?;
                if let Some(obj) = answer.raw.as_object_mut() {
                    obj.insert(
                        "message".into(),
                        json!({
                            "role": "assistant",
                            "content": answer.message.content,
                            "tool_calls": answer.message.tool_calls.iter().map(|c| json!({
                                "function": {"name": c.name, "arguments": c.arguments}
                            })).collect::<Vec<_>>(),
                        }),
                    );
                    obj.insert("streamed".into(), json!(true));
                    obj.insert("chunks".into(), json!(lines));
                }
                Ok(answer)
            }
        }
    }
}

/// Folds Ollama chunks (or the single non-streamed answer) into one message.
#[derive(Default)]
struct Assembly {
    content: String,
    calls: Vec<ToolCall>,
    done: bool,
    tokens: Option<(u32, u32)>,
}

impl Assembly {
    fn add(&mut self, chunk: ChatMessageResponse) -> Option<String> {
        if chunk.message.role != MessageRole::Assistant && !chunk.message.content.is_empty() {
            tracing::debug!(role = ?chunk.message.role, "unexpected role in an Ollama answer");
        }
        for c in chunk.message.tool_calls {
            self.calls.push(ToolCall {
                // Ollama does not number its tool calls; ours must be unique within a turn.
                id: format!("call_{}", uuid::Uuid::now_v7().simple()),
                name: c.function.name,
                arguments: c.function.arguments,
            });
        }
        if let Some(f) = chunk.final_data {
            self.tokens = Some((
                u32::try_from(f.prompt_eval_count).unwrap_or(u32::MAX),
                u32::try_from(f.eval_count).unwrap_or(u32::MAX),
            ));
        }
        self.done |= chunk.done;
        let text = chunk.message.content;
        if text.is_empty() {
            return None;
        }
        self.content.push_str(&text);
        Some(text)
    }

    /// The message, with `raw` (the response, or the stream's last line) as its raw answer.
    fn finish(self, raw: Value) -> Result<Answer, ProviderError> {
        if let Some(c) = self.calls.iter().find(|c| c.name.is_empty()) {
            return Err(ProviderError::BadResponse(format!(
                "tool call {} has no function name",
                c.id
            )));
        }
        let (tokens_in, tokens_out) = self.tokens.unzip();
        Ok(Answer {
            message: ChatMessage::assistant_tool_calls(self.content, self.calls),
            tokens_in,
            tokens_out,
            raw,
        })
    }
}

#[async_trait]
impl Provider for OllamaProvider {
    fn kind(&self) -> &str {
        "ollama"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.shown_url)
    }

    #[tracing::instrument(skip_all, fields(provider = "ollama", model = %self.model, streamed = deltas.is_some()))]
    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        // Ollama takes no key: nothing to scrub from its answers.
        http::complete(req, &self.settings, None, |budget| {
            self.run(req, deltas, budget)
        })
        .await
    }
}
