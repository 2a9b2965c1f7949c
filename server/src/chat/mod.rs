//! The conversational agent's foundation (issue 5; DESIGN.md §7): prompt blocks and variants
//! embedded from `prompts/` and published as `prompt_block` spans ([`blocks`]); build_prompt,
//! which compiles them into a hashed system prompt and fits the conversation into the model's
//! context ([`prompt`]); the provider interface with OpenAI-compatible and Ollama
//! implementations ([`provider`], [`openai`], [`ollama`]); and provider_exec, which records
//! every model call as a `provider_execution` span ([`record`]).

pub mod agent;
pub mod blocks;
mod http;
pub mod offline;
pub mod ollama;
pub mod openai;
pub mod prompt;
pub mod proposals;
pub mod provider;
pub mod record;
pub mod tools;

pub use blocks::{
    ActivePrompts, Layer, PromptBlock, PromptError, PromptLibrary, Published, Variant,
};
pub use prompt::{Budget, BuiltPrompt, CompiledPrompt, PromptInput, TokenCounts, build_prompt};
pub use provider::{
    ApiKey, ChatMessage, Completion, CompletionRequest, Provider, ProviderConfig, ProviderError,
    ProviderSettings, RetryPolicy, Role, ToolCall, ToolSpec, provider_from_config,
    provider_from_env,
};
pub use record::{ExecContext, Executed, SpanWriter, provider_exec};
