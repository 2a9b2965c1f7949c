//! Prompt blocks, variants and the answer schema: the files of `prompts/`, embedded in the
//! binary at build time (no runtime file dependency) and published into the ledger as
//! `prompt_block` and `prompt_variant` spans of the system tenant, so every compiled prompt can
//! name the exact block versions (id + seq) it was made of. A published version is a
//! candidate; which versions the chat compiles is decided in [`super::candidates`].
//!
//! A block file is a tera template after a front matter:
//!
//! ```text
//! ---
//! id: 01a2025c-8814-7e91-9ffd-d7bd28004618
//! layer: doctrine
//! priority: 120
//! version: 1
//! description: One line saying what the block is for.
//! ---
//! The template…
//! ```
//!
//! Publishing appends a new `seq` of the block's (or variant's) span only when it changed
//! (compared by BLAKE3 digest with the latest version in the ledger); an unchanged file appends
//! nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use ledger::store::{self, SYSTEM_TENANT, system_principal};
use ledger::{AppendError, Draft, InputError, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::providers::types::ToolChoice;

/// The block files compiled into the binary, by path relative to the repository root. A test
/// checks that this list and `prompts/blocks/` agree.
pub const EMBEDDED_BLOCKS: &[(&str, &str)] = &[
    (
        "prompts/blocks/doctrine.tera",
        include_str!("../../../prompts/blocks/doctrine.tera"),
    ),
    (
        "prompts/blocks/product.tera",
        include_str!("../../../prompts/blocks/product.tera"),
    ),
    (
        "prompts/blocks/app_contracts.tera",
        include_str!("../../../prompts/blocks/app_contracts.tera"),
    ),
    (
        "prompts/blocks/task_answer.tera",
        include_str!("../../../prompts/blocks/task_answer.tera"),
    ),
    (
        "prompts/blocks/task_answer_brief.tera",
        include_str!("../../../prompts/blocks/task_answer_brief.tera"),
    ),
    (
        "prompts/blocks/turn.tera",
        include_str!("../../../prompts/blocks/turn.tera"),
    ),
    (
        "prompts/blocks/doctrine_compact.tera",
        include_str!("../../../prompts/blocks/doctrine_compact.tera"),
    ),
    (
        "prompts/blocks/task_compact.tera",
        include_str!("../../../prompts/blocks/task_compact.tera"),
    ),
];

/// The variant files compiled into the binary.
pub const EMBEDDED_VARIANTS: &[(&str, &str)] = &[
    (
        "prompts/variants/default.json",
        include_str!("../../../prompts/variants/default.json"),
    ),
    (
        "prompts/variants/brief.json",
        include_str!("../../../prompts/variants/brief.json"),
    ),
    (
        "prompts/variants/compact.json",
        include_str!("../../../prompts/variants/compact.json"),
    ),
];

/// The JSON schema every answer must follow.
pub const EMBEDDED_ANSWER_SCHEMA: &str = include_str!("../../../prompts/answer.schema.json");

/// The variant used when a request names none.
pub const DEFAULT_VARIANT: &str = "default";

/// Why the prompt files or their publication are unusable.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {detail}")]
    Block { path: String, detail: String },
    #[error("{path}: {detail}")]
    Variant { path: String, detail: String },
    #[error("answer schema: {0}")]
    Schema(String),
    #[error("no prompt variant named `{0}`")]
    UnknownVariant(String),
    #[error("block `{0}` has not been published to the ledger")]
    Unpublished(String),
    /// The variant exists but no version of it is active (never evaluated yet, or every
    /// version failed its evaluation): the chat refuses it rather than compile an unevaluated
    /// prompt.
    #[error("prompt variant `{variant}` is not active: {why}")]
    NotActive { variant: String, why: String },
    #[error("rendering block `{block}`: {detail}")]
    Render { block: String, detail: String },
    #[error(
        "the conversation contains a system message (index {0}); system text comes only from prompt blocks"
    )]
    SystemInHistory(usize),
    #[error(
        "the prompt needs {needed} tokens (blocks, tools and the current turn) but the budget is {budget}; \
         shorten the message, or if the model's window is larger than assumed, set LOGLINE_CONTEXT_TOKENS \
         (the budget is the window less a quarter, at most 4,096, kept for the answer)"
    )]
    OverBudget { needed: usize, budget: usize },
    #[error("publishing prompt blocks: {0}")]
    Store(#[from] StoreError),
    #[error("publishing prompt block {id}: {detail}")]
    Publish { id: Uuid, detail: String },
}

/// The layer of a block decides its priority band: doctrine always comes first, then product,
/// app and task; `turn` (the caller, the time, memory: what changes every turn) comes last, so
/// everything before it is a prefix a server can cache and `compiled_hash` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Doctrine,
    Product,
    App,
    Task,
    Turn,
}

impl Layer {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "doctrine" => Some(Self::Doctrine),
            "product" => Some(Self::Product),
            "app" => Some(Self::App),
            "task" => Some(Self::Task),
            "turn" => Some(Self::Turn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Doctrine => "doctrine",
            Self::Product => "product",
            Self::App => "app",
            Self::Task => "task",
            Self::Turn => "turn",
        }
    }

    /// The usual priority of the layer (doctrine 120, product 100, app 90, task 70, turn 10).
    pub fn default_priority(self) -> i32 {
        match self {
            Self::Doctrine => 120,
            Self::Product => 100,
            Self::App => 90,
            Self::Task => 70,
            Self::Turn => 10,
        }
    }

    /// Priorities a block of this layer may take, so that layers never interleave.
    pub fn band(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Self::Doctrine => 120..=999,
            Self::Product => 100..=119,
            Self::App => 90..=99,
            Self::Task => 70..=89,
            Self::Turn => 0..=69,
        }
    }
}

/// One parsed block file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptBlock {
    pub id: Uuid,
    /// The file stem (`doctrine` for `prompts/blocks/doctrine.tera`): variants name blocks by it.
    pub name: String,
    pub layer: Layer,
    pub priority: i32,
    pub version: u32,
    pub description: String,
    /// The tera template (the file after its front matter).
    pub template: String,
    /// Where the block came from, relative to the repository root.
    pub source: String,
    /// `blake3:<hex>` of the whole file: a changed file is a new version in the ledger.
    pub digest: String,
}

impl PromptBlock {
    /// Parses a block file (`path` names it in errors and gives its name).
    pub fn parse(path: &str, text: &str) -> Result<Self, PromptError> {
        let err = |detail: String| PromptError::Block {
            path: path.to_string(),
            detail,
        };
        let name = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".tera"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| err("a block file must be named <name>.tera".into()))?
            .to_string();
        let text_lf = text.replace("\r\n", "\n");
        let rest = text_lf
            .strip_prefix("---\n")
            .ok_or_else(|| err("must start with a `---` front matter line".into()))?;
        let (front, template) = rest
            .split_once("\n---\n")
            .ok_or_else(|| err("the front matter is not closed by a `---` line".into()))?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for (n, line) in front.lines().enumerate() {
            let line_no = n + 2;
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| err(format!("line {line_no}: expected `key: value`")))?;
            let k = k.trim();
            if !["id", "layer", "priority", "version", "description"].contains(&k) {
                return Err(err(format!(
                    "line {line_no}: unknown front matter key `{k}`"
                )));
            }
            if fields.insert(k, v.trim()).is_some() {
                return Err(err(format!("line {line_no}: `{k}` is given twice")));
            }
        }
        let field = |k: &str| {
            fields
                .get(k)
                .copied()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| err(format!("front matter needs `{k}`")))
        };
        let id =
            Uuid::parse_str(field("id")?).map_err(|e| err(format!("`id` is not a UUID: {e}")))?;
        let layer = Layer::parse(field("layer")?).ok_or_else(|| {
            err("`layer` must be one of doctrine, product, app, task, turn".into())
        })?;
        let priority: i32 = field("priority")?
            .parse()
            .map_err(|_| err("`priority` must be an integer".into()))?;
        if !layer.band().contains(&priority) {
            return Err(err(format!(
                "priority {priority} is outside the {} band {:?} (usually {})",
                layer.as_str(),
                layer.band(),
                layer.default_priority()
            )));
        }
        let version: u32 = field("version")?
            .parse()
            .map_err(|_| err("`version` must be a non-negative integer".into()))?;
        let template = template.trim().to_string();
        if template.is_empty() {
            return Err(err("the template is empty".into()));
        }
        Ok(Self {
            id,
            name,
            layer,
            priority,
            version,
            description: field("description")?.to_string(),
            template,
            source: path.to_string(),
            digest: format!("blake3:{}", blake3::hash(text_lf.as_bytes()).to_hex()),
        })
    }
}

/// Refuses a block outside the `turn` layer whose text depends on the caller, the time or
/// memory: it would sit in the cached prefix and make `compiled_hash` change every turn. Each
/// block is rendered for two different turns (same tools) and must come out the same.
fn check_stable(tera: &tera::Tera, blocks: &[PromptBlock]) -> Result<(), PromptError> {
    let turn = |user: &str, tenant: &str, now: &str, memory: &[&str]| {
        let mut c = tera::Context::new();
        c.insert("user", &json!({ "id": user }));
        c.insert("tenant", &json!({ "id": tenant }));
        c.insert("now", now);
        c.insert("memory", memory);
        c.insert(
            "tools",
            &json!([{"name": "t", "description": "d", "parameters": "{}"}]),
        );
        c.insert("output_schema", "{}");
        c.insert("variant", "v");
        c
    };
    let a = turn("user-a", "tenant-a", "2000-01-01T00:00:00Z", &[]);
    let b = turn(
        "user-b",
        "tenant-b",
        "2001-02-03T04:05:06Z",
        &["remembered"],
    );
    for block in blocks.iter().filter(|b| b.layer != Layer::Turn) {
        let render = |c: &tera::Context| {
            tera.render(&block.name, c).map_err(|e| PromptError::Block {
                path: block.source.clone(),
                detail: format!("template: {}", error_chain(&e)),
            })
        };
        if render(&a)? != render(&b)? {
            return Err(PromptError::Block {
                path: block.source.clone(),
                detail:
                    "only a `turn` block may use user, tenant, now or memory (they change every \
                         turn and would break the cached prefix)"
                        .into(),
            });
        }
    }
    Ok(())
}

/// A named set of blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub description: String,
    /// Block names (file stems); their order here does not matter, priority decides.
    pub blocks: Vec<String>,
    /// The first round of a question about the ledger: `required` makes the model call a tool
    /// before it may answer (small models otherwise answer from nothing); `auto` (the default)
    /// leaves it to the model.
    #[serde(default)]
    pub tool_choice: ToolChoice,
}

impl Variant {
    /// Parses a variant file (`path` names it in errors; its stem must be the variant's name).
    pub fn parse(path: &str, text: &str) -> Result<Self, PromptError> {
        let err = |detail: String| PromptError::Variant {
            path: path.to_string(),
            detail,
        };
        let v: Variant =
            serde_json::from_str(text).map_err(|e| err(format!("not a variant: {e}")))?;
        let stem = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"));
        if stem != Some(v.name.as_str()) {
            return Err(err(format!(
                "`name` must match the file name, not `{}`",
                v.name
            )));
        }
        Ok(v)
    }

    /// The span id of the variant's `prompt_variant` spans: derived from its name (a UUID v8
    /// over BLAKE3), so every node and every proposal of `brief` lands on the same span.
    pub fn span_id(name: &str) -> Uuid {
        let hash = blake3::hash(format!("logline:prompt_variant:{name}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// `blake3:<hex>` of the variant as JSON: a changed variant is a new version in the ledger.
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex())
    }
}

/// The parsed prompt files: blocks (templates checked), variants, the answer schema.
#[derive(Clone)]
pub struct PromptLibrary {
    blocks: Vec<PromptBlock>,
    variants: BTreeMap<String, Variant>,
    answer_schema: Value,
    pub(crate) tera: tera::Tera,
}

impl std::fmt::Debug for PromptLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptLibrary")
            .field(
                "blocks",
                &self.blocks.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("variants", &self.variants.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PromptLibrary {
    /// The files compiled into this binary.
    pub fn embedded() -> Result<Self, PromptError> {
        Self::from_sources(EMBEDDED_BLOCKS, EMBEDDED_VARIANTS, EMBEDDED_ANSWER_SCHEMA)
    }

    /// Parses and checks a set of files: unique ids and names, templates that compile,
    /// variants naming existing blocks and holding a doctrine block, a schema that is an object.
    pub fn from_sources(
        blocks: &[(&str, &str)],
        variants: &[(&str, &str)],
        answer_schema: &str,
    ) -> Result<Self, PromptError> {
        let mut parsed = Vec::with_capacity(blocks.len());
        for (path, text) in blocks {
            parsed.push(PromptBlock::parse(path, text)?);
        }
        let mut parsed_variants = Vec::with_capacity(variants.len());
        for (path, text) in variants {
            parsed_variants.push((path.to_string(), Variant::parse(path, text)?));
        }
        let answer_schema: Value = serde_json::from_str(answer_schema)
            .map_err(|e| PromptError::Schema(format!("not JSON: {e}")))?;
        Self::from_parts(parsed, parsed_variants, answer_schema, true)
    }

    /// Checks parsed blocks and variants (each variant with the path or span it came from, for
    /// errors) and compiles the templates. `require_default`: a `default` variant must exist
    /// (the files of a build; the active set of a ledger may not have one yet).
    pub fn from_parts(
        blocks: Vec<PromptBlock>,
        variants: Vec<(String, Variant)>,
        answer_schema: Value,
        require_default: bool,
    ) -> Result<Self, PromptError> {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut tera = tera::Tera::new();
        // Prompts are not HTML: nothing is escaped.
        tera.autoescape_on(Vec::<&str>::new());
        for block in &blocks {
            let path = &block.source;
            let dup = |what: &str| PromptError::Block {
                path: path.to_string(),
                detail: format!("another block has the same {what}"),
            };
            if !ids.insert(block.id) {
                return Err(dup("id"));
            }
            if !names.insert(block.name.clone()) {
                return Err(dup("name"));
            }
            tera.add_raw_template(&block.name, &block.template)
                .map_err(|e| PromptError::Block {
                    path: path.to_string(),
                    detail: format!("template: {}", error_chain(&e)),
                })?;
        }
        check_stable(&tera, &blocks)?;
        let by_name: HashMap<&str, &PromptBlock> =
            blocks.iter().map(|b| (b.name.as_str(), b)).collect();
        let mut variant_map = BTreeMap::new();
        for (path, v) in variants {
            let err = |detail: String| PromptError::Variant {
                path: path.clone(),
                detail,
            };
            let mut seen = HashSet::new();
            for b in &v.blocks {
                if !by_name.contains_key(b.as_str()) {
                    return Err(err(format!("names block `{b}`, which does not exist")));
                }
                if !seen.insert(b) {
                    return Err(err(format!("names block `{b}` twice")));
                }
            }
            if !v.blocks.iter().any(|b| {
                by_name
                    .get(b.as_str())
                    .is_some_and(|b| b.layer == Layer::Doctrine)
            }) {
                return Err(err("must include a doctrine block".into()));
            }
            if variant_map.insert(v.name.clone(), v).is_some() {
                return Err(err("another variant has the same name".into()));
            }
        }
        if require_default && !variant_map.contains_key(DEFAULT_VARIANT) {
            return Err(PromptError::Variant {
                path: "prompts/variants".into(),
                detail: format!("there must be a `{DEFAULT_VARIANT}` variant"),
            });
        }
        if !answer_schema.is_object() {
            return Err(PromptError::Schema("must be a JSON object".into()));
        }
        Ok(Self {
            blocks,
            variants: variant_map,
            answer_schema,
            tera,
        })
    }

    pub fn blocks(&self) -> &[PromptBlock] {
        &self.blocks
    }

    pub fn block(&self, name: &str) -> Option<&PromptBlock> {
        self.blocks.iter().find(|b| b.name == name)
    }

    pub fn variants(&self) -> impl Iterator<Item = &Variant> {
        self.variants.values()
    }

    pub fn variant(&self, name: &str) -> Result<&Variant, PromptError> {
        self.variants
            .get(name)
            .ok_or_else(|| PromptError::UnknownVariant(name.to_string()))
    }

    /// The answer schema (`prompts/answer.schema.json`).
    pub fn answer_schema(&self) -> &Value {
        &self.answer_schema
    }

    /// Appends a `prompt_block` span for every block and a `prompt_variant` span for every
    /// variant that is new or changed since its latest version in the ledger. A new version
    /// is a *candidate*: nothing compiles it until `prompt_eval` activates it (see
    /// [`super::candidates`]). Returns this build's files with the seq of each, which is what
    /// an evaluation of the build compiles (`ll-eval` in process, the agent's tests).
    pub async fn publish(
        self,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> Result<(ActivePrompts, Vec<Published>), PromptError> {
        let mut report = Vec::with_capacity(self.blocks.len() + self.variants.len());
        let mut seqs = HashMap::new();
        for block in &self.blocks {
            let p = publish_version(store, block.id, &block.name, &block.digest, |seq| {
                block_draft(block, seq, now)
            })
            .await?;
            seqs.insert(block.id, p.seq);
            report.push(p);
        }
        let mut variant_seqs = HashMap::new();
        for v in self.variants.values() {
            let id = Variant::span_id(&v.name);
            let digest = v.digest();
            let p = publish_version(store, id, &v.name, &digest, |seq| {
                variant_draft(v, seq, now)
            })
            .await?;
            variant_seqs.insert(v.name.clone(), p.seq);
            report.push(p);
        }
        Ok((
            ActivePrompts::new(self, seqs, variant_seqs, BTreeMap::new()),
            report,
        ))
    }
}

/// What publishing did for one block or variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    pub id: Uuid,
    pub name: String,
    pub seq: i64,
    /// True when a new span (a new seq) was appended now.
    pub appended: bool,
}

/// A set of block and variant versions a prompt can be compiled from: every block has the
/// seq of its span in the ledger, which is what a compiled prompt records. The chat's set
/// holds only *active* versions ([`super::candidates::load_active`]); an evaluation's set is
/// the active one with the candidate put in.
#[derive(Clone, Debug)]
pub struct ActivePrompts {
    library: PromptLibrary,
    seqs: HashMap<Uuid, i64>,
    variant_seqs: HashMap<String, i64>,
    /// Variants that exist in the ledger but have no usable active version, and why.
    unavailable: BTreeMap<String, String>,
}

impl ActivePrompts {
    pub fn new(
        library: PromptLibrary,
        seqs: HashMap<Uuid, i64>,
        variant_seqs: HashMap<String, i64>,
        unavailable: BTreeMap<String, String>,
    ) -> Self {
        Self {
            library,
            seqs,
            variant_seqs,
            unavailable,
        }
    }

    pub fn library(&self) -> &PromptLibrary {
        &self.library
    }

    /// The ledger seq of a block.
    pub fn seq(&self, id: Uuid) -> Option<i64> {
        self.seqs.get(&id).copied()
    }

    /// The ledger seq of a variant's `prompt_variant` span.
    pub fn variant_seq(&self, name: &str) -> Option<i64> {
        self.variant_seqs.get(name).copied()
    }

    /// A variant this set can compile, or why not: unknown, or known but not active.
    pub fn variant(&self, name: &str) -> Result<&Variant, PromptError> {
        match self.library.variant(name) {
            Ok(v) => Ok(v),
            Err(e) => match self.unavailable.get(name) {
                Some(why) => Err(PromptError::NotActive {
                    variant: name.to_string(),
                    why: why.clone(),
                }),
                None => Err(e),
            },
        }
    }

    /// Variants known but not usable, and why.
    pub fn unavailable(&self) -> &BTreeMap<String, String> {
        &self.unavailable
    }
}

/// The set the chat compiles from, replaced whole when `prompt_eval` activates something: a
/// turn takes the current set once ([`LivePrompts::current`]) and compiles every round of
/// the turn from it.
#[derive(Debug)]
pub struct LivePrompts(std::sync::RwLock<std::sync::Arc<ActivePrompts>>);

impl LivePrompts {
    pub fn new(prompts: ActivePrompts) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(prompts)))
    }

    pub fn current(&self) -> std::sync::Arc<ActivePrompts> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, prompts: ActivePrompts) {
        let new = std::sync::Arc::new(prompts);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The span a block version is recorded as (system tenant, public: every tenant's
/// `prompt_run` may cite it). It enters as a candidate: `prompt_activation` decides.
pub fn block_draft(block: &PromptBlock, seq: i64, now: DateTime<Utc>) -> Result<Draft, InputError> {
    let principal = system_principal();
    Draft::from_value(
        json!({
            "id": block.id,
            "seq": seq,
            "entity_type": "prompt_block",
            "visibility": "public",
            // Two nodes publishing the same change at once produce one span, not two.
            "idempotency_key": format!("prompt_block:{}:{seq}:{}", block.id, block.digest),
            "when": ledger::span::format_time(now),
            "who": principal.user_id,
            "did": if seq == 0 { "published prompt block" } else { "published a new version of prompt block" },
            "this": format!("prompt block {} v{}", block.name, block.version),
            "confirmed_by": "node key",
            "if_ok": "activate it once prompt_eval's suites pass",
            "if_doubt": "keep compiling the previous active version",
            "if_not": "keep compiling the previous active version",
            "status": "candidate",
            "name": block.name,
            "description": block.description,
            "content": {
                "layer": block.layer.as_str(),
                "priority": block.priority,
                "version": block.version,
                "template": block.template,
                "digest": block.digest,
                "source": block.source,
            }
        }),
        &principal,
        &[],
        now,
    )
}

/// The digest recorded in the latest version of a block's span, if it exists.
async fn latest(store: &dyn Store, id: Uuid) -> Result<Option<(i64, Option<String>)>, PromptError> {
    let Some(span) = store.get(&system_principal(), id, None).await? else {
        return Ok(None);
    };
    let view = span.to_view().map_err(StoreError::Corrupt)?;
    if view.get("tenant_id").and_then(Value::as_str) != Some(SYSTEM_TENANT) {
        return Err(PromptError::Publish {
            id,
            detail: "the id belongs to another tenant's span".into(),
        });
    }
    let seq = view.get("seq").and_then(Value::as_i64).unwrap_or(0);
    // A redacted version has no digest: it counts as changed and is published again.
    let digest = view
        .pointer("/content/digest")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Some((seq, digest)))
}

async fn publish_version<F>(
    store: &dyn Store,
    id: Uuid,
    name: &str,
    digest: &str,
    draft: F,
) -> Result<Published, PromptError>
where
    F: Fn(i64) -> Result<Draft, InputError>,
{
    // A concurrent publisher may take the next seq between our read and our append: re-read
    // and try again a few times.
    for _ in 0..3 {
        let next = match latest(store, id).await? {
            Some((seq, Some(d))) if d == digest => {
                return Ok(Published {
                    id,
                    name: name.to_string(),
                    seq,
                    appended: false,
                });
            }
            Some((seq, _)) => seq + 1,
            None => 0,
        };
        let draft = draft(next).map_err(|e| PromptError::Publish {
            id,
            detail: e.to_string(),
        })?;
        let result = store::append(store, &system_principal(), vec![draft])
            .await?
            .into_iter()
            .next();
        match result {
            Some(Ok(a)) => {
                if !a.duplicate {
                    tracing::info!(prompt = %name, %id, seq = a.seq, "prompt candidate published");
                }
                return Ok(Published {
                    id,
                    name: name.to_string(),
                    seq: a.seq,
                    appended: !a.duplicate,
                });
            }
            Some(Err(AppendError::SeqConflict { .. })) => continue,
            Some(Err(e)) => {
                return Err(PromptError::Publish {
                    id,
                    detail: e.to_string(),
                });
            }
            None => {
                return Err(PromptError::Publish {
                    id,
                    detail: "the store returned no result".into(),
                });
            }
        }
    }
    Err(PromptError::Publish {
        id,
        detail: "other publishers kept changing it; try again".into(),
    })
}

/// Appends `block` as the next version of its span unless the latest version has the same
/// digest (then nothing is appended). Returns the seq either way.
pub async fn propose_block(
    store: &dyn Store,
    block: &PromptBlock,
) -> Result<Published, PromptError> {
    let now = Utc::now();
    publish_version(store, block.id, &block.name, &block.digest, |seq| {
        block_draft(block, seq, now)
    })
    .await
}

/// Appends `variant` as the next version of its span unless unchanged (see [`propose_block`]).
pub async fn propose_variant(
    store: &dyn Store,
    variant: &Variant,
) -> Result<Published, PromptError> {
    let now = Utc::now();
    publish_version(
        store,
        Variant::span_id(&variant.name),
        &variant.name,
        &variant.digest(),
        |seq| variant_draft(variant, seq, now),
    )
    .await
}

/// The span a variant version is recorded as (system tenant, public, a candidate like a
/// block version).
pub fn variant_draft(v: &Variant, seq: i64, now: DateTime<Utc>) -> Result<Draft, InputError> {
    let principal = system_principal();
    let id = Variant::span_id(&v.name);
    let digest = v.digest();
    Draft::from_value(
        json!({
            "id": id,
            "seq": seq,
            "entity_type": "prompt_variant",
            "visibility": "public",
            "idempotency_key": format!("prompt_variant:{id}:{seq}:{digest}"),
            "when": ledger::span::format_time(now),
            "who": principal.user_id,
            "did": if seq == 0 { "published prompt variant" } else { "published a new version of prompt variant" },
            "this": format!("prompt variant {}", v.name),
            "confirmed_by": "node key",
            "if_ok": "activate it once prompt_eval's suites pass",
            "if_doubt": "keep the previous active version",
            "if_not": "keep the previous active version",
            "status": "candidate",
            "name": v.name,
            "description": v.description,
            "content": {
                "blocks": v.blocks,
                "tool_choice": v.tool_choice,
                "digest": digest,
            }
        }),
        &principal,
        &[],
        now,
    )
}
