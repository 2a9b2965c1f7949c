//! OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp server, LM Studio, Ollama's
//! `/v1`…) through async-openai: its types build the request and read the answer, JSON or
//! streamed (SSE), while the HTTP exchange runs through our tower service
//! (`http::execute_with_retry`) for deadlines, retries and typed errors.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionToolChoiceOption, ChatCompletionTools, CreateChatCompletionRequest,
    CreateChatCompletionResponse, FunctionCall, FunctionObject, ResponseFormat,
    ResponseFormatJsonSchema, ToolChoiceOptions,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::http::{self, Answer, CallBudget, Pace};
use super::settings::{ApiKey, ProviderSettings, ToolMode};
use super::tool_grammar;
use super::types::{
    ChatMessage, Completion, CompletionRequest, Provider, ProviderError, Role, ToolCall, ToolChoice,
};

/// A provider speaking the OpenAI chat completions API.
pub struct OpenAiProvider {
    model: String,
    shown_url: String,
    config: OpenAIConfig,
    key: Option<ApiKey>,
    http: reqwest::Client,
    settings: ProviderSettings,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.shown_url)
            .field("model", &self.model)
            .field("key", &self.key)
            .finish()
    }
}

impl OpenAiProvider {
    /// `base_url` ends before `/chat/completions` (e.g. `https://api.openai.com/v1`).
    pub fn new(
        base_url: &str,
        api_key: Option<ApiKey>,
        model: &str,
        settings: ProviderSettings,
    ) -> Result<Self, ProviderError> {
        if model.trim().is_empty() {
            return Err(ProviderError::Config("the model name is empty".into()));
        }
        let base = base_url.trim_end_matches('/');
        match reqwest::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(ProviderError::Config(format!(
                    "OpenAI base URL must be http(s)://…, not `{base_url}`"
                )));
            }
        }
        // Every field set explicitly: `OpenAIConfig::new()` would otherwise read OPENAI_* from
        // the environment on its own (and send an admin key to a local server).
        let config = OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key(api_key.as_ref().map_or("", ApiKey::expose))
            .with_org_id("")
            .with_project_id("");
        Ok(Self {
            model: model.to_string(),
            shown_url: http::display_url(base),
            config,
            key: api_key,
            http: http::client(&settings)?,
            settings,
        })
    }

    fn secret(&self) -> Option<&str> {
        self.key.as_ref().map(ApiKey::expose)
    }

    fn request(&self, req: &CompletionRequest, stream: bool) -> CreateChatCompletionRequest {
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        messages.push(ChatCompletionRequestMessage::System(
            ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(
                    req.system.text().to_string(),
                ),
                name: None,
            },
        ));
        for m in &req.messages {
            messages.push(match m.role {
                // Refused by `CompletionRequest::check` before we get here.
                Role::System | Role::User => {
                    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                        content: ChatCompletionRequestUserMessageContent::Text(m.content.clone()),
                        name: None,
                    })
                }
                Role::Assistant => {
                    let calls: Vec<ChatCompletionMessageToolCalls> = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            ChatCompletionMessageToolCalls::Function(
                                ChatCompletionMessageToolCall {
                                    id: c.id.clone(),
                                    function: FunctionCall {
                                        name: c.name.clone(),
                                        arguments: arguments_text(&c.arguments),
                                    },
                                },
                            )
                        })
                        .collect();
                    ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                        content: (!m.content.is_empty() || calls.is_empty()).then(|| {
                            ChatCompletionRequestAssistantMessageContent::Text(m.content.clone())
                        }),
                        tool_calls: (!calls.is_empty()).then_some(calls),
                        ..Default::default()
                    })
                }
                Role::Tool => {
                    ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                        content: ChatCompletionRequestToolMessageContent::Text(m.content.clone()),
                        tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
                    })
                }
            });
        }
        let tools: Vec<ChatCompletionTools> = req
            .tools
            .iter()
            .map(|t| {
                ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: t.name.clone(),
                        description: Some(t.description.clone()),
                        parameters: Some(t.parameters.clone()),
                        strict: None,
                    },
                })
            })
            .collect();
        // `required` only means something when tools are offered; `auto` is the default and is
        // not sent (some OpenAI-compatible servers reject fields they do not know).
        let grammar = !tools.is_empty() && self.settings.tool_mode == ToolMode::Grammar;
        let tool_choice =
            (!tools.is_empty() && !grammar && req.tool_choice == ToolChoice::Required).then_some(
                ChatCompletionToolChoiceOption::Mode(ToolChoiceOptions::Required),
            );
        // Grammar mode: the reply is one JSON object, a call (the only choice when a call is
        // required) or the answer.
        let reply_schema = tool_grammar::constraint(req, self.settings.tool_mode);
        let mut request = CreateChatCompletionRequest {
            messages,
            model: self.model.clone(),
            tool_choice,
            tools: (!tools.is_empty()).then_some(tools),
            response_format: reply_schema.map(|schema| ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    description: None,
                    name: if grammar { "reply" } else { "answer" }.into(),
                    schema,
                    // Strict mode needs every property required; ours has optional ones.
                    strict: None,
                },
            }),
            stream: Some(stream),
            stream_options: stream.then_some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            }),
            ..Default::default()
        };
        #[expect(
            deprecated,
            reason = "`max_tokens` is the name llama.cpp, vLLM, LM Studio and Ollama's /v1 read; \
                      `max_completion_tokens` is only OpenAI's newer alias"
        )]
        {
            request.max_tokens = Some(self.settings.max_tokens);
        }
        request
    }

    async fn run(
        &self,
        req: &CompletionRequest,
        deltas: Option<mpsc::Sender<String>>,
        budget: CallBudget,
    ) -> Result<Answer, ProviderError> {
        let service = RetryingService {
            client: self.http.clone(),
            settings: self.settings.clone(),
            budget: budget.clone(),
            key: self.key.clone(),
        };
        let client = async_openai::Client::build(self.http.clone(), self.config.clone())
            .with_http_service(service);
        match deltas {
            None if !self.settings.stream => {
                let response = client
                    .chat()
                    .create(self.request(req, false))
                    .await
                    .map_err(|e| self.error(e, &budget))?;
                read_response(response)
            }
            tx => {
                let mut stream = client
                    .chat()
                    .create_stream(self.request(req, true))
                    .await
                    .map_err(|e| self.error(e, &budget))?;
                let mut acc = StreamAssembly::default();
                let mut pace = Pace::new(&self.settings);
                while let Some(chunk) = pace.next(&mut stream, &budget).await? {
                    let chunk = chunk.map_err(|e| self.error(e, &budget))?;
                    if let (Some(text), Some(tx)) = (acc.add(&chunk), &tx) {
                        // A closed receiver means nobody listens any more; the answer is still
                        // completed and recorded.
                        let _ = tx.send(text).await;
                    }
                }
                acc.finish()
            }
        }
    }

    fn error(&self, e: OpenAIError, budget: &CallBudget) -> ProviderError {
        let secret = self.secret();
        match e {
            OpenAIError::Boxed(inner) => match inner.downcast::<ProviderError>() {
                Ok(p) => *p,
                Err(other) => ProviderError::BadResponse(http::redact(&other.to_string(), secret)),
            },
            OpenAIError::Reqwest(e) => budget.transport_error(e, &self.shown_url),
            OpenAIError::ApiError(api) => ProviderError::Http {
                status: api.status_code.as_u16(),
                body: http::redact(&api.api_error.to_string(), secret),
                attempts: budget.attempts(),
            },
            OpenAIError::JSONDeserialize(err, content) => ProviderError::BadResponse(format!(
                "{err}; body: {}",
                http::excerpt(content.as_bytes(), secret)
            )),
            OpenAIError::StreamError(s) => {
                ProviderError::BadResponse(http::redact(&format!("stream: {s}"), secret))
            }
            OpenAIError::InvalidArgument(m) => ProviderError::InvalidRequest(m),
            other => ProviderError::BadResponse(http::redact(&other.to_string(), secret)),
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.shown_url)
    }

    #[tracing::instrument(skip_all, fields(provider = "openai", model = %self.model, streamed = deltas.is_some()))]
    async fn complete(
        &self,
        req: &CompletionRequest,
        deltas: Option<mpsc::Sender<String>>,
    ) -> Result<Completion, ProviderError> {
        http::complete(req, &self.settings, self.secret(), |budget| {
            self.run(req, deltas, budget)
        })
        .await
    }
}

/// Tool arguments as the wire wants them: JSON text (a string kept verbatim from a model that
/// produced invalid JSON goes back as it was).
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses tool arguments; invalid JSON is kept as a string (see [`ToolCall`]).
fn parse_arguments(text: &str) -> Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn read_response(response: CreateChatCompletionResponse) -> Result<Answer, ProviderError> {
    let raw = serde_json::to_value(&response).unwrap_or(Value::Null);
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::BadResponse("the response has no choices".into()))?;
    let msg = choice.message;
    let tool_calls = msg
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| match c {
            ChatCompletionMessageToolCalls::Function(f) => ToolCall {
                id: f.id,
                name: f.function.name,
                arguments: parse_arguments(&f.function.arguments),
            },
            ChatCompletionMessageToolCalls::Custom(c) => ToolCall {
                id: c.id,
                name: c.custom_tool.name,
                arguments: Value::String(c.custom_tool.input),
            },
        })
        .collect();
    let content = msg.content.or(msg.refusal).unwrap_or_default();
    let usage = response.usage;
    Ok(Answer {
        message: ChatMessage::assistant_tool_calls(content, tool_calls),
        tokens_in: usage.as_ref().map(|u| u.prompt_tokens),
        tokens_out: usage.as_ref().map(|u| u.completion_tokens),
        raw,
    })
}

/// A tool call being streamed: its id and name arrive first, its arguments in fragments.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Folds streamed chunks into the message a non-streamed call would have returned.
#[derive(Default)]
struct StreamAssembly {
    chunks: usize,
    id: String,
    model: String,
    content: String,
    refusal: String,
    calls: BTreeMap<u32, PartialCall>,
    finish_reason: Option<Value>,
    usage: Option<Value>,
    tokens: Option<(u32, u32)>,
}

impl StreamAssembly {
    /// Takes one chunk; returns the text delta to forward, if any.
    fn add(
        &mut self,
        chunk: &async_openai::types::chat::CreateChatCompletionStreamResponse,
    ) -> Option<String> {
        self.chunks += 1;
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.model.clone_from(&chunk.model);
        }
        if let Some(u) = &chunk.usage {
            self.tokens = Some((u.prompt_tokens, u.completion_tokens));
            self.usage = serde_json::to_value(u).ok();
        }
        let choice = chunk.choices.iter().find(|c| c.index == 0)?;
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = serde_json::to_value(reason).ok();
        }
        let delta = &choice.delta;
        if let Some(r) = &delta.refusal {
            self.refusal.push_str(r);
        }
        for tc in delta.tool_calls.iter().flatten() {
            let call = self.calls.entry(tc.index).or_default();
            if let Some(id) = tc.id.as_deref().filter(|s| !s.is_empty()) {
                call.id = id.to_string();
            }
            if let Some(f) = &tc.function {
                if let Some(name) = f.name.as_deref().filter(|s| !s.is_empty()) {
                    // Most servers send the name once; some repeat it in every chunk.
                    if call.name != name {
                        call.name.push_str(name);
                    }
                }
                if let Some(args) = &f.arguments {
                    call.arguments.push_str(args);
                }
            }
        }
        match &delta.content {
            Some(text) if !text.is_empty() => {
                self.content.push_str(text);
                Some(text.clone())
            }
            _ => None,
        }
    }

    fn finish(self) -> Result<Answer, ProviderError> {
        if self.chunks == 0 {
            return Err(ProviderError::BadResponse(
                "the stream ended before any chunk arrived".into(),
            ));
        }
        let mut calls = Vec::with_capacity(self.calls.len());
        for (index, c) in self.calls {
            if c.name.is_empty() {
                return Err(ProviderError::BadResponse(format!(
                    "streamed tool call {index} has no function name"
                )));
            }
            let id = if c.id.is_empty() {
                format!("call_{index}")
            } else {
                c.id
            };
            calls.push(ToolCall {
                id,
                name: c.name,
                arguments: parse_arguments(&c.arguments),
            });
        }
        let content = if self.content.is_empty() {
            self.refusal.clone()
        } else {
            self.content
        };
        let message = ChatMessage::assistant_tool_calls(content, calls);
        let raw = json!({
            "id": self.id,
            "object": "chat.completion",
            "model": self.model,
            "streamed": true,
            "chunks": self.chunks,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": message.content,
                    "tool_calls": message.tool_calls.iter().map(|c| json!({
                        "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": arguments_text(&c.arguments)}
                    })).collect::<Vec<_>>(),
                },
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage,
        });
        let (tokens_in, tokens_out) = self.tokens.unzip();
        Ok(Answer {
            message,
            tokens_in,
            tokens_out,
            raw,
        })
    }
}

/// The tower service async-openai sends its requests through: deadlines, retries and typed
/// errors (boxed into `OpenAIError::Boxed` and unboxed again in [`OpenAiProvider::error`]).
#[derive(Clone)]
struct RetryingService {
    client: reqwest::Client,
    settings: ProviderSettings,
    budget: CallBudget,
    key: Option<ApiKey>,
}

impl tower::Service<HttpRequestFactory> for RetryingService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let no_key = this.key.is_none();
            let build = || {
                let factory = factory.clone();
                async move {
                    let mut request = factory.build().await.map_err(|e| {
                        ProviderError::InvalidRequest(format!("cannot build the request: {e}"))
                    })?;
                    if no_key {
                        // No key configured: send no `Authorization: Bearer ` at all.
                        request.headers_mut().remove(reqwest::header::AUTHORIZATION);
                    }
                    Ok(request)
                }
            };
            http::execute_with_retry(
                &this.client,
                &this.settings.retry,
                &this.budget,
                this.key.as_ref().map(ApiKey::expose),
                build,
            )
            .await
            .map_err(|e| OpenAIError::Boxed(Box::new(e)))
        })
    }
}
