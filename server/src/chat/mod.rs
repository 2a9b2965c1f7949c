//! The conversational agent's foundation (issue 5; DESIGN.md §7): prompt blocks and variants
//! embedded from `prompts/` and published as `prompt_block` / `prompt_variant` candidates
//! ([`blocks`]) that only an evaluation activates ([`candidates`]); build_prompt,
//! which compiles them into a hashed system prompt and fits the conversation into the model's
//! context ([`prompt`]); the provider interface with OpenAI-compatible and Ollama
//! implementations ([`providers`]); and provider_exec, which records every model call as a
//! `provider_execution` span ([`record`]).

pub mod agent;
pub mod bandit;
pub mod blocks;
pub mod candidates;
pub mod feedback;
pub mod grounding;
pub mod memory_turn;
pub mod prompt;
pub mod proposals;
pub mod providers;
pub mod record;
pub mod tools;

pub use blocks::{
    ActivePrompts, Layer, LivePrompts, PromptBlock, PromptError, PromptLibrary, Published, Variant,
};
pub use prompt::{Budget, BuiltPrompt, PromptInput, TokenCounts, build_prompt};
pub use providers::{
    ApiKey, ChatMessage, CompiledPrompt, Completion, CompletionRequest, OllamaProvider,
    OpenAiProvider, Provider, ProviderConfig, ProviderError, ProviderSettings, RetryPolicy, Role,
    ToolCall, ToolChoice, ToolMode, ToolSpec, provider_from_config,
};
pub use record::{ExecContext, Executed, SpanWriter, provider_exec};
