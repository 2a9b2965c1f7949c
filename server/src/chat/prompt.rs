//! build_prompt: the system prompt of a turn, compiled from the variant's blocks (higher
//! priority first, each rendered with tera), hashed, counted in tokens, and the conversation
//! fitted to the model's context budget by dropping the oldest turns (never a block).
//!
//! The compiled text and its hash live together in [`CompiledPrompt`], the only type a
//! provider accepts as a system prompt: what is sent is, by construction, what is recorded.
//! The hash covers the stable prefix (every block before the `turn` layer, which holds the
//! caller, the time and memory), so it names the template version and a server can reuse its
//! cached prefix across turns and users.

use chrono::{DateTime, SecondsFormat, Utc};
use ledger::Principal;
use serde::Serialize;
use serde_json::{Value, json};
use tiktoken_rs::CoreBPE;
use uuid::Uuid;

use super::blocks::{ActivePrompts, Layer, PromptBlock, PromptError};
use super::providers::{
    ChatMessage, CompiledPrompt, CompletionRequest, Role, ToolChoice, ToolSpec,
};

/// Which block version went into a prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockRef {
    pub id: Uuid,
    pub seq: i64,
    pub name: String,
    pub layer: Layer,
    pub priority: i32,
    pub version: u32,
}

/// The model's context window and what to keep free for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub context_tokens: usize,
    pub reserved_for_output: usize,
}

/// Context assumed when neither `LOGLINE_CONTEXT_TOKENS`, the model's server
/// ([`providers::context`](super::providers::context)) nor tiktoken's table knows: room for the
/// default prompt (~1,500 tokens), a long conversation and tool results, and the answer. Small
/// local servers that allocate less report it, so this guess is only for servers that do not.
pub const DEFAULT_CONTEXT_TOKENS: usize = 16_384;

impl Budget {
    /// The model's known context size (or [`DEFAULT_CONTEXT_TOKENS`]), unless `override_tokens`
    /// (`LOGLINE_CONTEXT_TOKENS`, else what the server reported) says otherwise; a quarter of it, at most 4096, is kept for
    /// the answer.
    pub fn for_model(model: &str, override_tokens: Option<usize>) -> Self {
        let context_tokens = override_tokens
            .or_else(|| tiktoken_rs::model::get_context_size(model))
            .unwrap_or(DEFAULT_CONTEXT_TOKENS);
        Self {
            context_tokens,
            reserved_for_output: (context_tokens / 4).min(4096),
        }
    }

    /// Tokens the prompt itself may take.
    pub fn input_tokens(&self) -> usize {
        self.context_tokens.saturating_sub(self.reserved_for_output)
    }
}

/// Token counts of a built prompt (tiktoken; an estimate for non-OpenAI models).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenCounts {
    /// `o200k_base` or `cl100k_base`.
    pub encoding: &'static str,
    pub system: usize,
    pub tools: usize,
    pub messages: usize,
    /// Everything sent, per-message overheads included.
    pub total: usize,
    /// What the prompt was allowed ([`Budget::input_tokens`]).
    pub budget: usize,
}

/// What goes into one build.
#[derive(Clone, Debug)]
pub struct PromptInput<'a> {
    /// Variant name (`default` unless the request asks for another).
    pub variant: &'a str,
    pub principal: &'a Principal,
    pub now: DateTime<Utc>,
    /// Tools offered this turn (counted in the budget; blocks see them as `tools`).
    pub tools: &'a [ToolSpec],
    /// Retrieved memory items (empty until memory exists).
    pub memory: &'a [String],
    /// Blocks added for this build only, with the seq of their span (e.g. the circuit
    /// breaker's temporary "Synthesize now. No more tool calls." block). They are ordered by
    /// priority with the variant's blocks and recorded in [`BuiltPrompt::blocks`] like them.
    pub extra_blocks: &'a [(PromptBlock, i64)],
    /// The conversation, oldest first, ending with the current turn (its user message and any
    /// assistant/tool messages of this turn so far). No system messages.
    pub history: Vec<ChatMessage>,
    pub model: &'a str,
    pub budget: Budget,
}

/// A compiled prompt and the conversation that fits with it.
#[derive(Clone, Debug)]
pub struct BuiltPrompt {
    pub variant: String,
    pub system: CompiledPrompt,
    /// Blocks in the order they were compiled (priority, highest first).
    pub blocks: Vec<BlockRef>,
    /// The conversation to send after the system prompt (oldest turns trimmed as needed).
    pub messages: Vec<ChatMessage>,
    /// How many messages were dropped from the start of the history.
    pub trimmed: usize,
    pub tokens: TokenCounts,
}

impl BuiltPrompt {
    /// The provider request: this compiled prompt, these messages.
    pub fn request(
        &self,
        tools: Vec<ToolSpec>,
        response_schema: Option<Value>,
    ) -> CompletionRequest {
        CompletionRequest {
            system: self.system.clone(),
            messages: self.messages.clone(),
            tools,
            response_schema,
            answer_schema: None,
            tool_choice: ToolChoice::Auto,
        }
    }
}

/// Per-message framing tokens (role, separators) as OpenAI counts them for chat models.
const TOKENS_PER_MESSAGE: usize = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: usize = 3;

/// The tokenizer for a model: o200k for the models tiktoken maps to it, cl100k otherwise (an
/// estimate for models with their own tokenizer).
pub fn encoding_for(model: &str) -> (&'static str, &'static CoreBPE) {
    use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
    match get_tokenizer(model) {
        Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => {
            ("o200k_base", tiktoken_rs::o200k_base_singleton())
        }
        _ => ("cl100k_base", tiktoken_rs::cl100k_base_singleton()),
    }
}

/// Loads both tokenizers (a few hundred ms the first time) so the first chat turn does not pay.
fn bpe_for(model: &str) -> &'static CoreBPE {
    encoding_for(model).1
}

pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

/// Texts shorter than this are tokenized every time (cheaper than hashing and locking).
const CACHE_MIN_BYTES: usize = 32;
/// Entries kept before the cache starts over.
const CACHE_MAX_ENTRIES: usize = 16_384;

/// Token counts of texts already seen, by (tokenizer, BLAKE3 of the text). Tokenizing is most
/// of a turn's CPU time, and most of what is counted repeats: the blocks, the tool schemas,
/// the earlier turns of a conversation.
static COUNTS: std::sync::LazyLock<std::sync::Mutex<CountCache>> =
    std::sync::LazyLock::new(Default::default);

type CountCache = std::collections::HashMap<(usize, [u8; 32]), usize>;

fn count(bpe: &CoreBPE, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    if text.len() < CACHE_MIN_BYTES {
        return bpe.encode_ordinary(text).len();
    }
    let key = (
        std::ptr::from_ref(bpe) as usize,
        *blake3::hash(text.as_bytes()).as_bytes(),
    );
    if let Some(n) = COUNTS.lock().ok().and_then(|m| m.get(&key).copied()) {
        return n;
    }
    let n = bpe.encode_ordinary(text).len();
    if let Ok(mut m) = COUNTS.lock() {
        if m.len() >= CACHE_MAX_ENTRIES {
            m.clear();
        }
        m.insert(key, n);
    }
    n
}

/// Tokens one message costs, framing included.
pub fn message_tokens(bpe: &CoreBPE, m: &ChatMessage) -> usize {
    let mut n = TOKENS_PER_MESSAGE + count(bpe, &m.content);
    for c in &m.tool_calls {
        n += count(bpe, &c.id) + count(bpe, &c.name) + count(bpe, &c.arguments.to_string()) + 3;
    }
    if let Some(id) = &m.tool_call_id {
        n += count(bpe, id);
    }
    n
}

/// Splits the history into turns: each starts at a user message (anything before the first
/// user message belongs to the first turn). Tool results stay with the assistant message that
/// called them, so trimming whole turns never orphans a tool message.
fn turns(history: &[ChatMessage]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, m) in history.iter().enumerate() {
        if m.role == Role::User && i > start {
            out.push(start..i);
            start = i;
        }
    }
    if start < history.len() {
        out.push(start..history.len());
    }
    out
}

/// Compiles the variant's blocks and fits the conversation into the budget.
pub fn build_prompt(
    prompts: &ActivePrompts,
    input: PromptInput<'_>,
) -> Result<BuiltPrompt, PromptError> {
    let library = prompts.library();
    let variant = prompts.variant(input.variant)?;
    if let Some(i) = input.history.iter().position(|m| m.role == Role::System) {
        return Err(PromptError::SystemInHistory(i));
    }

    let mut blocks = Vec::with_capacity(variant.blocks.len());
    for name in &variant.blocks {
        let block = library.block(name).ok_or_else(|| {
            PromptError::UnknownVariant(format!("{} (block {name})", variant.name))
        })?;
        let seq = prompts
            .seq(block.id)
            .ok_or_else(|| PromptError::Unpublished(block.name.clone()))?;
        blocks.push((block, seq));
    }
    for (block, seq) in input.extra_blocks {
        if blocks
            .iter()
            .any(|(b, _)| b.id == block.id || b.name == block.name)
        {
            return Err(PromptError::Render {
                block: block.name.clone(),
                detail: "an extra block repeats a block of the variant".into(),
            });
        }
        blocks.push((block, *seq));
    }
    // Higher priority first; ties broken by layer then name so the order is always the same.
    blocks.sort_by(|(a, _), (b, _)| {
        b.priority
            .cmp(&a.priority)
            .then(a.layer.cmp(&b.layer))
            .then(a.name.cmp(&b.name))
    });

    let tools: Vec<Value> = input
        .tools
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters.to_string(),
            })
        })
        .collect();
    let mut context = tera::Context::new();
    context.insert("user", &json!({"id": input.principal.user_id}));
    context.insert("tenant", &json!({"id": input.principal.tenant_id}));
    context.insert("now", &input.now.to_rfc3339_opts(SecondsFormat::Secs, true));
    context.insert("tools", &tools);
    context.insert("output_schema", &library.answer_schema().to_string());
    context.insert("memory", input.memory);
    context.insert("variant", &variant.name);

    let mut parts = Vec::with_capacity(blocks.len());
    // Blocks before the first `turn` block are the stable prefix (turn blocks sort last).
    let stable_parts = blocks
        .iter()
        .position(|(b, _)| b.layer == Layer::Turn)
        .unwrap_or(blocks.len());
    for (block, _) in &blocks {
        // Library blocks were compiled once at load; an extra block is rendered from its text.
        let rendered = if library.block(&block.name).is_some_and(|b| b.id == block.id) {
            library.tera.render(&block.name, &context)
        } else {
            library.tera.render_str(&block.template, &context, false)
        };
        let text = rendered.map_err(|e| PromptError::Render {
            block: block.name.clone(),
            detail: render_error(&e),
        })?;
        parts.push(text.trim().to_string());
    }
    // Counted block by block (each count is cached; a block that does not mention the time or
    // the user renders the same every turn) plus one token per "\n\n" joint: BPE merges across
    // a joint can only make the whole shorter, so the sum never under-counts by more than that.
    let part_tokens: usize = parts
        .iter()
        .map(|p| count(bpe_for(input.model), p))
        .sum::<usize>()
        + parts.len().saturating_sub(1);
    let stable_len = parts[..stable_parts].join("\n\n").len();
    let system = CompiledPrompt::with_stable_prefix(parts.join("\n\n"), stable_len);

    let (encoding, bpe) = encoding_for(input.model);
    let system_tokens = part_tokens;
    let tools_tokens: usize = input
        .tools
        .iter()
        .map(|t| {
            count(bpe, &t.name) + count(bpe, &t.description) + count(bpe, &t.parameters.to_string())
        })
        .sum();
    let fixed = TOKENS_PER_MESSAGE + system_tokens + tools_tokens + REPLY_PRIMING;
    let budget = input.budget.input_tokens();

    let history = input.history;
    let costs: Vec<usize> = history.iter().map(|m| message_tokens(bpe, m)).collect();
    let ranges = turns(&history);
    // Keep turns from the newest backwards while they fit; the current turn must fit.
    let mut used = fixed;
    let mut keep_from = history.len();
    for (i, range) in ranges.iter().enumerate().rev() {
        let cost: usize = costs[range.clone()].iter().sum();
        let is_current = i + 1 == ranges.len();
        if used + cost > budget {
            if is_current {
                return Err(PromptError::OverBudget {
                    needed: used + cost,
                    budget,
                });
            }
            break;
        }
        used += cost;
        keep_from = range.start;
    }
    if ranges.is_empty() && used > budget {
        return Err(PromptError::OverBudget {
            needed: used,
            budget,
        });
    }
    let messages: Vec<ChatMessage> = history.into_iter().skip(keep_from).collect();
    let message_tokens_total: usize = costs[keep_from..].iter().sum();
    if keep_from > 0 {
        tracing::info!(
            trimmed = keep_from,
            budget,
            "conversation trimmed to fit the context budget"
        );
    }

    Ok(BuiltPrompt {
        variant: variant.name.clone(),
        blocks: blocks
            .iter()
            .map(|(b, seq)| BlockRef {
                id: b.id,
                seq: *seq,
                name: b.name.clone(),
                layer: b.layer,
                priority: b.priority,
                version: b.version,
            })
            .collect(),
        system,
        trimmed: keep_from,
        tokens: TokenCounts {
            encoding,
            system: system_tokens,
            tools: tools_tokens,
            messages: message_tokens_total,
            total: used,
            budget,
        },
        messages,
    })
}

fn render_error(e: &tera::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiled_prompt_hashes_exactly_its_text() {
        let p = CompiledPrompt::new("hello");
        assert_eq!(
            p.hash(),
            format!("blake3:{}", blake3::hash(b"hello").to_hex())
        );
        assert_ne!(CompiledPrompt::new("hello ").hash(), p.hash());
    }

    #[test]
    fn turns_start_at_user_messages_and_keep_tool_results_with_their_call() {
        let h = vec![
            ChatMessage::assistant("hi"),
            ChatMessage::user("q1"),
            ChatMessage::assistant_tool_calls("", vec![]),
            ChatMessage::tool_result("c1", "r"),
            ChatMessage::assistant("a1"),
            ChatMessage::user("q2"),
        ];
        assert_eq!(turns(&h), vec![0..1, 1..5, 5..6]);
        assert!(turns(&[]).is_empty());
    }

    #[test]
    fn models_get_their_tokenizer() {
        assert_eq!(encoding_for("gpt-4o-mini").0, "o200k_base");
        assert_eq!(encoding_for("gpt-4").0, "cl100k_base");
        assert_eq!(encoding_for("llama3.1").0, "cl100k_base");
    }
}
