//! The model providers (DESIGN.md §7): the interface the chat loop codes against and the
//! messages it exchanges ([`types`]), how an HTTP provider behaves on the wire ([`settings`]),
//! the configuration that picks a provider and the factory that builds it ([`factory`]), and
//! the OpenAI-compatible and Ollama implementations ([`openai`], [`ollama`]), which share one
//! transport and call wrapper (`http`); and the embedded offline provider ([`offline`]), which
//! is not a language model but recognises the supported questions and answers from typed tool
//! results.
//!
//! Imports point one way: the implementations and the factory use the types, never the reverse.

pub mod context;
pub mod factory;
mod http;
pub mod local;
pub mod offline;
pub mod ollama;
pub mod openai;
pub mod settings;
pub mod text_tools;
pub mod tool_grammar;
pub mod types;

pub use factory::{OPENAI_DEFAULT_BASE_URL, ProviderConfig, provider_from_config};
pub use local::{LocalModel, LocalServer};
pub use ollama::OllamaProvider;
pub use openai::OpenAiProvider;
pub use settings::{ApiKey, ProviderSettings, RetryPolicy, ToolMode};
pub use types::{
    ChatMessage, CompiledPrompt, Completion, CompletionRequest, Provider, ProviderError, Role,
    ToolCall, ToolChoice, ToolSpec,
};
