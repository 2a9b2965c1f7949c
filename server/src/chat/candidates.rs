//! The prompt lifecycle (issue 11): every new version of a prompt block or variant enters the
//! ledger as a *candidate*; only a version that passed the evaluation suites is *active*, and
//! the chat compiles active versions only.
//!
//! - A version is a `prompt_block` / `prompt_variant` span seq (published at start from the
//!   files of the build, or proposed at run time with `logline prompts propose`).
//! - A decision is a `prompt_activation` span signed by the node (system tenant, public),
//!   naming the version (kind, id, seq, digest), the `eval_run`s it was judged on, their pass
//!   rates and, when rejected, the failing cases. `status` is `active` or `rejected`; one
//!   decision per version, ever (its idempotency key).
//! - The active version of a block or variant is the one its newest `active` decision names;
//!   a rejected candidate leaves the previous active version in place, and a variant with no
//!   active version is refused by the chat with the reason ([`PromptError::NotActive`]).
//!
//! [`Gate`] is one pass of the `prompt_eval` kernel: it finds the undecided latest versions,
//! compiles each into a trial set (the active set with the candidate put in), has the
//! injected [`TrialRunner`] (the `evals` suites, wired in by the `logline` binary) run the
//! configured suites over it, records the decision and refreshes the chat's [`LivePrompts`].
//! A new variant is tried together with the blocks it needs that have never been active; a
//! new block version is tried under every active variant that uses it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use kernels::kernel::prompt_eval::{EvalProvider, PromptEvalConfig};
use ledger::query::{Filter, Order};
use ledger::store::{self, SYSTEM_TENANT, system_principal};
use ledger::{Draft, Store, StoreError};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::blocks::{ActivePrompts, Layer, LivePrompts, PromptBlock, PromptError, Variant};
use super::providers::Provider;

/// Which kind of prompt span a version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Block,
    Variant,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Variant => "variant",
        }
    }
}

/// One version's state, as `/api/evals` and `logline prompts status` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// The version the chat compiles.
    Active,
    /// Was active; a newer version replaced it.
    Retired,
    /// Awaiting evaluation.
    Candidate,
    /// Evaluated and refused.
    Rejected,
    /// Never decided, and a newer version came after it.
    Superseded,
}

/// A decision on one version.
#[derive(Clone, Debug)]
pub struct Decision {
    pub span: Uuid,
    pub activated: bool,
    pub at: String,
    /// Position in the system tenant's ledger (newest decision wins).
    pub order: i64,
    pub content: Value,
}

/// One version of a block or variant as the ledger holds it.
#[derive(Clone, Debug)]
pub struct Version<T> {
    pub seq: i64,
    pub at: String,
    pub digest: String,
    /// `None` when the version is redacted or unreadable (it cannot be compiled).
    pub item: Option<T>,
    pub decision: Option<Decision>,
}

/// Every version of one block or variant.
#[derive(Clone, Debug)]
pub struct Versions<T> {
    pub id: Uuid,
    pub name: String,
    pub versions: BTreeMap<i64, Version<T>>,
}

impl<T> Versions<T> {
    /// The seq of the newest `active` decision.
    pub fn active_seq(&self) -> Option<i64> {
        self.versions
            .values()
            .filter_map(|v| {
                v.decision
                    .as_ref()
                    .filter(|d| d.activated)
                    .map(|d| (d.order, v.seq))
            })
            .max()
            .map(|(_, seq)| seq)
    }

    /// The newest version, when nothing has decided it yet and it is newer than the active one.
    pub fn pending(&self) -> Option<&Version<T>> {
        let latest = self.versions.values().next_back()?;
        let newer = self.active_seq().is_none_or(|a| latest.seq > a);
        (latest.decision.is_none() && newer).then_some(latest)
    }

    pub fn state(&self, seq: i64) -> VersionState {
        let active = self.active_seq();
        let latest = self.versions.keys().next_back().copied();
        match self.versions.get(&seq).and_then(|v| v.decision.as_ref()) {
            _ if active == Some(seq) => VersionState::Active,
            Some(d) if d.activated => VersionState::Retired,
            Some(_) => VersionState::Rejected,
            None if latest == Some(seq) && active.is_none_or(|a| seq > a) => {
                VersionState::Candidate
            }
            None => VersionState::Superseded,
        }
    }
}

/// The prompt spans of the ledger: every block and variant version and every decision.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub blocks: BTreeMap<Uuid, Versions<PromptBlock>>,
    pub variants: BTreeMap<Uuid, Versions<Variant>>,
}

/// Every span of one entity type in the system tenant, oldest first, with its position.
async fn all_of(store: &dyn Store, entity_type: &str) -> Result<Vec<(i64, Value)>, StoreError> {
    let mut out = Vec::new();
    let mut filter = Filter {
        entity_type: Some(entity_type.to_string()),
        tenant_id: Some(SYSTEM_TENANT.to_string()),
        order: Order::Asc,
        limit: Some(ledger::query::MAX_LIMIT),
        ..Filter::default()
    };
    loop {
        let page = store.query(&system_principal(), &filter).await?;
        for row in page.rows {
            let view = row.span.to_view().map_err(StoreError::Corrupt)?;
            out.push((row.ingest_id, view));
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => return Ok(out),
        }
    }
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn block_of(view: &Value, id: Uuid) -> Option<PromptBlock> {
    let c = view.get("content")?;
    Some(PromptBlock {
        id,
        name: view.get("name")?.as_str()?.to_string(),
        layer: Layer::parse(c.get("layer")?.as_str()?)?,
        priority: i32::try_from(c.get("priority")?.as_i64()?).ok()?,
        version: u32::try_from(c.get("version")?.as_u64()?).ok()?,
        description: text(view, "description"),
        template: c.get("template")?.as_str()?.to_string(),
        source: c.get("source")?.as_str()?.to_string(),
        digest: c.get("digest")?.as_str()?.to_string(),
    })
}

fn variant_of(view: &Value) -> Option<Variant> {
    let c = view.get("content")?;
    Some(Variant {
        name: view.get("name")?.as_str()?.to_string(),
        description: text(view, "description"),
        blocks: serde_json::from_value(c.get("blocks")?.clone()).ok()?,
        tool_choice: serde_json::from_value(c.get("tool_choice")?.clone()).ok()?,
    })
}

impl Catalog {
    /// Reads every prompt version and decision from the ledger.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut cat = Self::default();
        let put = |view: &Value, kind: Kind, cat: &mut Self| -> Option<()> {
            let id: Uuid = view.get("id")?.as_str()?.parse().ok()?;
            let seq = view.get("seq")?.as_i64()?;
            let name = text(view, "name");
            let at = text(view, "at");
            let digest = view
                .pointer("/content/digest")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match kind {
                Kind::Block => {
                    let e = cat.blocks.entry(id).or_insert_with(|| Versions {
                        id,
                        name: name.clone(),
                        versions: BTreeMap::new(),
                    });
                    if !name.is_empty() {
                        e.name = name;
                    }
                    e.versions.insert(
                        seq,
                        Version {
                            seq,
                            at,
                            digest,
                            item: block_of(view, id),
                            decision: None,
                        },
                    );
                }
                Kind::Variant => {
                    let e = cat.variants.entry(id).or_insert_with(|| Versions {
                        id,
                        name: name.clone(),
                        versions: BTreeMap::new(),
                    });
                    if !name.is_empty() {
                        e.name = name;
                    }
                    e.versions.insert(
                        seq,
                        Version {
                            seq,
                            at,
                            digest,
                            item: variant_of(view),
                            decision: None,
                        },
                    );
                }
            }
            Some(())
        };
        for (_, view) in all_of(store, "prompt_block").await? {
            put(&view, Kind::Block, &mut cat);
        }
        for (_, view) in all_of(store, "prompt_variant").await? {
            put(&view, Kind::Variant, &mut cat);
        }
        for (order, view) in all_of(store, "prompt_activation").await? {
            let Some(target) = view.pointer("/content/target") else {
                continue;
            };
            let id = target
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Uuid>().ok());
            let seq = target.get("seq").and_then(Value::as_i64);
            let (Some(id), Some(seq)) = (id, seq) else {
                continue;
            };
            let decision = Decision {
                span: view
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default(),
                activated: view.get("status").and_then(Value::as_str) == Some("active"),
                at: text(&view, "at"),
                order,
                content: view.get("content").cloned().unwrap_or(Value::Null),
            };
            let slot = match target.get("kind").and_then(Value::as_str) {
                Some("block") => cat
                    .blocks
                    .get_mut(&id)
                    .and_then(|v| v.versions.get_mut(&seq))
                    .map(|v| &mut v.decision),
                Some("variant") => cat
                    .variants
                    .get_mut(&id)
                    .and_then(|v| v.versions.get_mut(&seq))
                    .map(|v| &mut v.decision),
                _ => None,
            };
            // The first decision on a version is the one that counts (there is one per
            // version by idempotency key; a later one could only be forged, and is ignored).
            if let Some(slot) = slot
                && slot.is_none()
            {
                *slot = Some(decision);
            }
        }
        Ok(cat)
    }

    /// The active seq of every block and variant that has one.
    pub fn active(&self) -> Selection {
        Selection {
            blocks: self
                .blocks
                .values()
                .filter_map(|v| Some((v.id, v.active_seq()?)))
                .collect(),
            variants: self
                .variants
                .values()
                .filter_map(|v| Some((v.id, v.active_seq()?)))
                .collect(),
        }
    }

    fn block_by_name(&self, name: &str) -> Option<&Versions<PromptBlock>> {
        self.blocks.values().find(|v| v.name == name)
    }

    /// Why a variant outside `sel` cannot be used.
    fn why_not(&self, v: &Versions<Variant>) -> String {
        let Some((seq, latest)) = v.versions.iter().next_back() else {
            return "it has no version".into();
        };
        match &latest.decision {
            Some(d) if !d.activated => {
                let failing = d
                    .content
                    .get("failing_cases")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.get("case").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                format!(
                    "version {seq} failed its evaluation (prompt_activation {}; failing: {}) and no earlier version was ever active",
                    d.span,
                    if failing.is_empty() {
                        "see the decision"
                    } else {
                        &failing
                    }
                )
            }
            _ => format!(
                "version {seq} is a candidate awaiting evaluation by the prompt_eval kernel; retry in a few seconds"
            ),
        }
    }

    /// Compiles a selection of versions into a prompt set; variants outside it (or naming a
    /// block outside it) are listed as unavailable with the reason.
    pub fn build(&self, sel: &Selection, schema: &Value) -> Result<ActivePrompts, PromptError> {
        let mut blocks = Vec::new();
        let mut seqs = HashMap::new();
        for (id, seq) in &sel.blocks {
            let Some(b) = self
                .blocks
                .get(id)
                .and_then(|v| v.versions.get(seq))
                .and_then(|v| v.item.clone())
            else {
                continue;
            };
            seqs.insert(*id, *seq);
            blocks.push(b);
        }
        let names: Vec<String> = blocks.iter().map(|b| b.name.clone()).collect();
        let mut variants = Vec::new();
        let mut variant_seqs = HashMap::new();
        let mut unavailable = BTreeMap::new();
        for v in self.variants.values() {
            let chosen = sel
                .variants
                .get(&v.id)
                .and_then(|seq| v.versions.get(seq))
                .and_then(|ver| Some((ver.seq, ver.item.clone()?)));
            match chosen {
                Some((seq, variant)) => {
                    if let Some(missing) = variant.blocks.iter().find(|b| !names.contains(b)) {
                        unavailable.insert(
                            v.name.clone(),
                            format!("its block `{missing}` has no active version"),
                        );
                        continue;
                    }
                    variant_seqs.insert(variant.name.clone(), seq);
                    variants.push((format!("prompt_variant {} seq {seq}", v.id), variant));
                }
                None => {
                    unavailable.insert(v.name.clone(), self.why_not(v));
                }
            }
        }
        blocks.sort_by_key(|b| std::cmp::Reverse(b.priority));
        let library =
            super::blocks::PromptLibrary::from_parts(blocks, variants, schema.clone(), false)?;
        Ok(ActivePrompts::new(library, seqs, variant_seqs, unavailable))
    }
}

/// One version as `logline prompts status` and `GET /api/evals` show it.
#[derive(Clone, Debug, Serialize)]
pub struct VersionView {
    pub kind: Kind,
    pub name: String,
    pub id: Uuid,
    pub seq: i64,
    pub state: VersionState,
    pub at: String,
    pub digest: String,
    /// The `prompt_activation` span that decided it, if any.
    pub decision: Option<Uuid>,
    pub decided_at: Option<String>,
    /// The decision's runs: suite, variant, pass rate, threshold, eval_run.
    pub pass_rates: Value,
    pub failing_cases: Value,
    pub problem: Value,
}

impl Catalog {
    /// Every version, variants first, newest version of each name first.
    pub fn overview(&self) -> Vec<VersionView> {
        fn views<T>(kind: Kind, all: &Versions<T>, out: &mut Vec<VersionView>) {
            for v in all.versions.values().rev() {
                let d = v.decision.as_ref();
                let field = |k: &str| {
                    d.and_then(|d| d.content.get(k).cloned())
                        .unwrap_or(Value::Null)
                };
                out.push(VersionView {
                    kind,
                    name: all.name.clone(),
                    id: all.id,
                    seq: v.seq,
                    state: all.state(v.seq),
                    at: v.at.clone(),
                    digest: v.digest.clone(),
                    decision: d.map(|d| d.span),
                    decided_at: d.map(|d| d.at.clone()),
                    pass_rates: field("pass_rates"),
                    failing_cases: field("failing_cases"),
                    problem: field("problem"),
                });
            }
        }
        let mut out = Vec::new();
        let mut variants: Vec<&Versions<Variant>> = self.variants.values().collect();
        variants.sort_by(|a, b| a.name.cmp(&b.name));
        for v in variants {
            views(Kind::Variant, v, &mut out);
        }
        let mut blocks: Vec<&Versions<PromptBlock>> = self.blocks.values().collect();
        blocks.sort_by(|a, b| a.name.cmp(&b.name));
        for b in blocks {
            views(Kind::Block, b, &mut out);
        }
        out
    }
}

/// Which version of each block and variant a prompt set is compiled from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub blocks: HashMap<Uuid, i64>,
    pub variants: HashMap<Uuid, i64>,
}

/// The set the chat compiles: active versions only.
pub async fn load_active(store: &dyn Store, schema: &Value) -> Result<ActivePrompts, PromptError> {
    let cat = Catalog::load(store).await?;
    cat.build(&cat.active(), schema)
}

/// A version awaiting a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub kind: Kind,
    pub id: Uuid,
    pub seq: i64,
    pub name: String,
    pub digest: String,
}

/// A candidate case that failed, for the record.
#[derive(Clone, Debug, Serialize)]
pub struct FailingCase {
    pub suite: String,
    pub variant: String,
    pub case: String,
    pub line: usize,
    pub reasons: Vec<String>,
}

/// One suite × variant run of a trial, as the runner recorded it (an `eval_run` span).
#[derive(Clone, Debug, Serialize)]
pub struct TrialRun {
    pub eval_run: Uuid,
    pub suite: String,
    pub variant: String,
    pub cases: usize,
    pub passed: usize,
    pub pass_rate: f64,
    /// The suite's own threshold (used unless the kernel's config sets one).
    pub suite_threshold: f64,
    pub failing: Vec<FailingCase>,
    pub compiled_hashes: Vec<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// What to evaluate: a trial prompt set, the variants to run and the suites.
pub struct Trial {
    pub prompts: ActivePrompts,
    pub variants: Vec<String>,
    pub suites: Vec<String>,
    pub provider: Arc<dyn Provider>,
    pub context_tokens: Option<usize>,
    pub concurrency: usize,
    /// Where the `eval_run` / `eval_case` spans go (the served ledger).
    pub ledger: Arc<dyn Store>,
    /// The candidates under trial, recorded with each `eval_run`.
    pub candidates: Vec<Candidate>,
}

/// Runs suites over a trial (the `evals` crate implements it; the binary injects it).
#[async_trait]
pub trait TrialRunner: Send + Sync {
    async fn run(&self, trial: Trial) -> Result<Vec<TrialRun>, String>;
}

/// One pass of `prompt_eval` over the ledger's candidates.
pub struct Gate {
    pub store: Arc<dyn Store>,
    pub live: Arc<LivePrompts>,
    /// The chat's provider (`provider: server`).
    pub provider: Arc<dyn Provider>,
    pub context_tokens: Option<usize>,
    pub runner: Arc<dyn TrialRunner>,
}

/// What one pass decided.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassReport {
    pub activated: Vec<Candidate>,
    pub rejected: Vec<Candidate>,
    /// Candidates no active variant uses (nothing to evaluate them with yet).
    pub waiting: Vec<Candidate>,
}

impl PassReport {
    pub fn summary(&self) -> String {
        let names = |c: &[Candidate]| {
            c.iter()
                .map(|c| format!("{} {} seq {}", c.kind.as_str(), c.name, c.seq))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.activated.is_empty() {
            parts.push(format!("activated {}", names(&self.activated)));
        }
        if !self.rejected.is_empty() {
            parts.push(format!("rejected {}", names(&self.rejected)));
        }
        parts.join("; ")
    }
}

fn candidate<T>(kind: Kind, v: &Versions<T>, ver: &Version<T>) -> Candidate {
    Candidate {
        kind,
        id: v.id,
        seq: ver.seq,
        name: v.name.clone(),
        digest: ver.digest.clone(),
    }
}

impl Gate {
    fn schema(&self) -> Value {
        self.live.current().library().answer_schema().clone()
    }

    /// Finds candidates, evaluates and decides each, then refreshes the chat's prompt set.
    pub async fn pass(&self, config: &PromptEvalConfig) -> Result<PassReport, PromptError> {
        let schema = self.schema();
        let mut report = PassReport::default();
        let mut done: Vec<(Uuid, i64)> = Vec::new();
        // Variants first (with the blocks they need that were never active), then blocks
        // under the active variants that use them. Re-read after each decision.
        loop {
            let cat = Catalog::load(self.store.as_ref()).await?;
            let active = cat.active();
            let next = cat.variants.values().find_map(|v| {
                let ver = v.pending()?;
                (!done.contains(&(v.id, ver.seq))).then_some((v, ver))
            });
            let Some((v, ver)) = next else { break };
            done.push((v.id, ver.seq));
            let mut unit = vec![candidate(Kind::Variant, v, ver)];
            let mut trial = active.clone();
            trial.variants.insert(v.id, ver.seq);
            let mut problem = None;
            match &ver.item {
                None => problem = Some("the version is redacted or unreadable".to_string()),
                Some(variant) => {
                    for name in &variant.blocks {
                        match cat.block_by_name(name) {
                            None => {
                                problem = Some(format!(
                                    "it names block `{name}`, which the ledger does not hold"
                                ));
                            }
                            Some(b) if active.blocks.contains_key(&b.id) => {}
                            Some(b) => match b.pending() {
                                Some(bv) => {
                                    trial.blocks.insert(b.id, bv.seq);
                                    unit.push(candidate(Kind::Block, b, bv));
                                }
                                None => {
                                    problem = Some(format!(
                                        "its block `{name}` has no active version and no candidate"
                                    ));
                                }
                            },
                        }
                    }
                }
            }
            let variants = vec![v.name.clone()];
            self.decide(
                &cat,
                config,
                &schema,
                unit,
                trial,
                variants,
                problem,
                &mut report,
            )
            .await?;
        }
        loop {
            let cat = Catalog::load(self.store.as_ref()).await?;
            let active = cat.active();
            let next = cat.blocks.values().find_map(|b| {
                let ver = b.pending()?;
                (!done.contains(&(b.id, ver.seq))).then_some((b, ver))
            });
            let Some((b, ver)) = next else { break };
            done.push((b.id, ver.seq));
            let current = cat.build(&active, &schema)?;
            let users: Vec<String> = current
                .library()
                .variants()
                .filter(|v| v.blocks.contains(&b.name))
                .map(|v| v.name.clone())
                .collect();
            if users.is_empty() {
                report.waiting.push(candidate(Kind::Block, b, ver));
                continue;
            }
            let mut trial = active.clone();
            trial.blocks.insert(b.id, ver.seq);
            let problem = ver
                .item
                .is_none()
                .then(|| "the version is redacted or unreadable".to_string());
            let unit = vec![candidate(Kind::Block, b, ver)];
            self.decide(
                &cat,
                config,
                &schema,
                unit,
                trial,
                users,
                problem,
                &mut report,
            )
            .await?;
        }
        self.refresh(&schema).await?;
        Ok(report)
    }

    /// Reloads the active set into the chat.
    pub async fn refresh(&self, schema: &Value) -> Result<(), PromptError> {
        let active = load_active(self.store.as_ref(), schema).await?;
        self.live.replace(active);
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the pieces of one decision"
    )]
    async fn decide(
        &self,
        cat: &Catalog,
        config: &PromptEvalConfig,
        schema: &Value,
        unit: Vec<Candidate>,
        trial: Selection,
        variants: Vec<String>,
        mut problem: Option<String>,
        report: &mut PassReport,
    ) -> Result<(), PromptError> {
        let mut runs = Vec::new();
        if problem.is_none() {
            match cat.build(&trial, schema) {
                Err(e) => problem = Some(format!("it does not compile: {e}")),
                Ok(prompts) => {
                    let provider = match config.provider {
                        EvalProvider::Server => self.provider.clone(),
                        EvalProvider::Offline => {
                            Arc::new(super::providers::offline::OfflineProvider::new())
                        }
                    };
                    let t = Trial {
                        prompts,
                        variants: variants.clone(),
                        suites: config.suites.clone(),
                        provider,
                        context_tokens: self.context_tokens,
                        concurrency: config.concurrency,
                        ledger: self.store.clone(),
                        candidates: unit.clone(),
                    };
                    match self.runner.run(t).await {
                        Ok(r) => runs = r,
                        // The suites could not run (provider down…): decide nothing now; the
                        // next pass tries again.
                        Err(e) => {
                            tracing::warn!(error = %e, "prompt_eval: the suites could not run; will retry");
                            return Ok(());
                        }
                    }
                }
            }
        }
        let passes = |r: &TrialRun| {
            let t = config.threshold.unwrap_or(r.suite_threshold);
            r.cases > 0 && r.pass_rate >= t - 1e-9
        };
        let activated = problem.is_none() && !runs.is_empty() && runs.iter().all(passes);
        let failing: Vec<&FailingCase> = runs.iter().flat_map(|r| r.failing.iter()).collect();
        let pass_rates: Vec<Value> = runs
            .iter()
            .map(|r| {
                json!({
                    "eval_run": r.eval_run,
                    "suite": r.suite,
                    "variant": r.variant,
                    "cases": r.cases,
                    "passed": r.passed,
                    "pass_rate": r.pass_rate,
                    "threshold": config.threshold.unwrap_or(r.suite_threshold),
                    "pass": passes(r),
                    "compiled_hashes": r.compiled_hashes,
                    "provider": r.provider,
                    "model": r.model,
                })
            })
            .collect();
        let mut drafts = Vec::new();
        for c in &unit {
            let previous = match c.kind {
                Kind::Block => cat.blocks.get(&c.id).and_then(Versions::active_seq),
                Kind::Variant => cat.variants.get(&c.id).and_then(Versions::active_seq),
            };
            drafts.push(activation_draft(
                c,
                activated,
                previous,
                &unit,
                &pass_rates,
                &failing,
                problem.as_deref(),
                config,
            )?);
        }
        let results = store::append(self.store.as_ref(), &system_principal(), drafts).await?;
        for r in results {
            if let Err(e) = r {
                return Err(PromptError::Publish {
                    id: unit.first().map(|c| c.id).unwrap_or_default(),
                    detail: format!("recording the decision: {e}"),
                });
            }
        }
        for c in unit {
            tracing::info!(
                kind = c.kind.as_str(), name = %c.name, seq = c.seq, activated,
                "prompt_eval: decided"
            );
            if activated {
                report.activated.push(c);
            } else {
                report.rejected.push(c);
            }
        }
        Ok(())
    }
}

#[expect(clippy::too_many_arguments, reason = "the fields of one span")]
fn activation_draft(
    c: &Candidate,
    activated: bool,
    previous: Option<i64>,
    unit: &[Candidate],
    pass_rates: &[Value],
    failing: &[&FailingCase],
    problem: Option<&str>,
    config: &PromptEvalConfig,
) -> Result<Draft, PromptError> {
    let node = system_principal();
    let now = Utc::now();
    let eval_runs: Vec<&Value> = pass_rates
        .iter()
        .filter_map(|r| r.get("eval_run"))
        .collect();
    let mut related: Vec<Value> = vec![json!(c.id)];
    related.extend(eval_runs.iter().map(|v| (*v).clone()));
    Draft::from_value(
        json!({
            "entity_type": "prompt_activation",
            "visibility": "public",
            "parent_id": c.id,
            "related_to": related,
            "idempotency_key": format!("prompt_activation:{}:{}", c.id, c.seq),
            "name": format!("{} {} seq {}", c.kind.as_str(), c.name, c.seq),
            "when": ledger::span::format_time(now),
            "who": "prompt_eval",
            "did": if activated { "activated a prompt version" } else { "rejected a prompt version" },
            "this": format!("prompt {} {} seq {}", c.kind.as_str(), c.name, c.seq),
            "confirmed_by": "node key",
            "if_ok": "the chat compiles this version",
            "if_doubt": "keep the previous active version",
            "if_not": "keep the previous active version",
            "status": if activated { "active" } else { "rejected" },
            "content": {
                "target": {"kind": c.kind, "id": c.id, "seq": c.seq, "name": c.name, "digest": c.digest},
                "decision": if activated { "activated" } else { "rejected" },
                "previous_active_seq": previous,
                "evaluated_with": unit.iter().filter(|u| u.id != c.id).collect::<Vec<_>>(),
                "eval_runs": eval_runs,
                "pass_rates": pass_rates,
                "failing_cases": failing,
                "problem": problem,
                "config": config.to_json(),
            },
        }),
        &node,
        &[],
        now,
    )
    .map_err(|e| PromptError::Publish {
        id: c.id,
        detail: e.to_string(),
    })
}

/// A proposal read from a file: a block (`*.tera`) or a variant (`*.json`).
#[derive(Clone, Debug)]
pub enum Proposal {
    Block(PromptBlock),
    Variant(Variant),
}

impl Proposal {
    /// Parses a proposed file (the name decides: `<name>.tera` is a block, `<name>.json` a
    /// variant).
    pub fn parse(path: &str, text: &str) -> Result<Self, PromptError> {
        if path.ends_with(".tera") {
            Ok(Self::Block(PromptBlock::parse(path, text)?))
        } else if path.ends_with(".json") {
            Ok(Self::Variant(Variant::parse(path, text)?))
        } else {
            Err(PromptError::Block {
                path: path.to_string(),
                detail: "a proposal is a block (<name>.tera) or a variant (<name>.json)".into(),
            })
        }
    }
}

/// Appends a proposal as a candidate version after checking that it compiles with the
/// active set (a block replacing its active version; a variant over the active blocks, or
/// the candidate blocks it names). Returns what was appended (`appended: false` when the
/// latest version is already identical).
pub async fn propose(
    store: &dyn Store,
    proposal: &Proposal,
    schema: &Value,
) -> Result<super::blocks::Published, PromptError> {
    let cat = Catalog::load(store).await?;
    let mut blocks: Vec<PromptBlock> = Vec::new();
    for v in cat.blocks.values() {
        let seq = v
            .active_seq()
            .or_else(|| v.versions.keys().next_back().copied());
        if let Some(b) = seq
            .and_then(|s| v.versions.get(&s))
            .and_then(|v| v.item.clone())
        {
            blocks.push(b);
        }
    }
    let mut variants = Vec::new();
    match proposal {
        Proposal::Block(b) => {
            if let Some(other) = cat
                .blocks
                .values()
                .find(|v| v.name == b.name && v.id != b.id)
            {
                return Err(PromptError::Block {
                    path: b.source.clone(),
                    detail: format!("block `{}` already exists with id {}", b.name, other.id),
                });
            }
            blocks.retain(|x| x.id != b.id);
            blocks.push(b.clone());
        }
        Proposal::Variant(v) => variants.push((v.name.clone(), v.clone())),
    }
    super::blocks::PromptLibrary::from_parts(blocks, variants, schema.clone(), false)?;
    match proposal {
        Proposal::Block(b) => super::blocks::propose_block(store, b).await,
        Proposal::Variant(v) => super::blocks::propose_variant(store, v).await,
    }
}

#[async_trait]
impl kernels::prompt_eval::PromptGate for Gate {
    async fn pass(&self, config: &PromptEvalConfig) -> Result<String, String> {
        Gate::pass(self, config)
            .await
            .map(|r| r.summary())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(seq: i64, decision: Option<(bool, i64)>) -> Version<()> {
        Version {
            seq,
            at: String::new(),
            digest: format!("d{seq}"),
            item: Some(()),
            decision: decision.map(|(activated, order)| Decision {
                span: Uuid::nil(),
                activated,
                at: String::new(),
                order,
                content: Value::Null,
            }),
        }
    }

    fn versions(vs: Vec<Version<()>>) -> Versions<()> {
        Versions {
            id: Uuid::nil(),
            name: "b".into(),
            versions: vs.into_iter().map(|v| (v.seq, v)).collect(),
        }
    }

    #[test]
    fn a_rejected_candidate_leaves_the_previous_active_version_in_place() {
        let v = versions(vec![
            version(0, Some((true, 1))),
            version(1, Some((false, 2))),
        ]);
        assert_eq!(v.active_seq(), Some(0));
        assert!(v.pending().is_none(), "a decided version is not pending");
        assert_eq!(v.state(0), VersionState::Active);
        assert_eq!(v.state(1), VersionState::Rejected);
    }

    #[test]
    fn only_the_newest_undecided_version_is_a_candidate() {
        let v = versions(vec![
            version(0, Some((true, 1))),
            version(1, None),
            version(2, None),
        ]);
        assert_eq!(v.pending().map(|p| p.seq), Some(2));
        assert_eq!(v.state(1), VersionState::Superseded);
        assert_eq!(v.state(2), VersionState::Candidate);
        let never = versions(vec![version(0, None)]);
        assert_eq!(never.active_seq(), None);
        assert_eq!(never.pending().map(|p| p.seq), Some(0));
    }

    #[test]
    fn the_newest_activation_wins_and_the_older_one_is_retired() {
        let v = versions(vec![
            version(0, Some((true, 1))),
            version(1, Some((true, 5))),
        ]);
        assert_eq!(v.active_seq(), Some(1));
        assert_eq!(v.state(0), VersionState::Retired);
        assert_eq!(v.state(1), VersionState::Active);
    }
}
