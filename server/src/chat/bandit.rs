//! The chat's side of the prompt_bandit kernel (issue 11): which variants may be chosen,
//! Stage-0's verdict on the kernel, and the choice for a new conversation, recorded as a
//! `prompt_variant_selection` span with the turn. The bandit itself (reward, posteriors,
//! choice, replay) is `kernels::prompt_bandit`.
//!
//! The choice costs no I/O on the turn: the posteriors live in memory and are refreshed from
//! the ledger in the background when older than the kernel's `interval_ms`. While Stage-0
//! refuses the kernel (unlisted, tampered, bad config), conversations get `default`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kernels::prompt_bandit::{self, Bandit, BanditConfig, SELECTION, Status};
use kernels::stage0;
use ledger::span::format_time;
use ledger::{Draft, InputError, Principal, Store, StoreError};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use super::blocks::PromptLibrary;

/// How long Stage-0's verdict on the kernel is trusted before it is asked again.
const GATE_TTL: Duration = Duration::from_secs(5);

/// The variants the bandit may choose among: every variant of the prompt library, by name.
/// (When variants need an evaluation before they go live, this is the one place that says
/// which are.)
pub fn eligible_variants(library: &PromptLibrary) -> Vec<String> {
    let mut names: Vec<String> = library.variants().map(|v| v.name.clone()).collect();
    names.sort();
    names
}

/// The variants prompt_eval has activated: the ones the bandit may choose for a chat.
pub fn active_variants(prompts: &super::blocks::ActivePrompts) -> Vec<String> {
    eligible_variants(prompts.library())
        .into_iter()
        .filter(|name| prompts.variant(name).is_ok())
        .collect()
}

/// A variant the bandit chose, and the `content` of the span that records the choice.
#[derive(Clone, Debug)]
pub struct Picked {
    pub variant: String,
    pub selection: Value,
}

/// Stage-0's verdict on the kernel: the verified config, or why it is refused.
type Verdict = Result<BanditConfig, String>;

/// The node's bandit as the chat and the API use it.
pub struct Picker {
    store: Arc<dyn Store>,
    bandit: Arc<Bandit>,
    /// The last verdict and when it was reached.
    gate: std::sync::Mutex<Option<(Instant, Verdict)>>,
    /// One re-check at a time.
    checking: tokio::sync::Mutex<()>,
}

impl Picker {
    /// A picker whose posteriors start loading from the ledger at once (in the background).
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let picker = Arc::new(Self {
            bandit: Arc::new(Bandit::new(store.clone())),
            store,
            gate: std::sync::Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
        });
        let warm = picker.clone();
        tokio::spawn(async move {
            if let Ok(Ok(cfg)) = warm.config().await
                && let Err(e) = warm.bandit.refresh(&cfg).await
            {
                tracing::warn!(error = %e, "prompt_bandit: the first refresh failed");
            }
        });
        picker
    }

    fn cached(&self) -> Option<(Instant, Verdict)> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks Stage-0 now and caches the answer.
    async fn check(&self) -> Result<Verdict, StoreError> {
        let _one = self.checking.lock().await;
        let verdict = match stage0::inspect_kernel(self.store.as_ref(), "prompt_bandit").await {
            Ok((_, k)) if k.state == stage0::State::Ready => BanditConfig::from_value(&k.config),
            Ok((_, k)) => Err(k.reason),
            Err(stage0::Stage0Error::Store(e)) => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), verdict.clone()));
        Ok(verdict)
    }

    /// The kernel's verified config, or why Stage-0 refuses it: asked once, then re-asked in
    /// the background whenever the answer is older than [`GATE_TTL`] (so a new kernel or
    /// manifest seq takes effect within about that long, and a turn never waits for Stage-0
    /// after the first).
    pub async fn config(self: &Arc<Self>) -> Result<Verdict, StoreError> {
        match self.cached() {
            Some((at, verdict)) => {
                if at.elapsed() >= GATE_TTL && self.checking.try_lock().is_ok() {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.check().await {
                            tracing::warn!(error = %e, "prompt_bandit: cannot ask Stage-0");
                        }
                    });
                }
                Ok(verdict)
            }
            None => self.check().await,
        }
    }

    /// Chooses the variant of a new conversation among `eligible`, or `None` while the kernel
    /// is refused or nothing is eligible. Starts a background refresh when the posteriors are
    /// stale; never waits for one.
    pub async fn pick(
        self: &Arc<Self>,
        eligible: &[String],
        conversation_id: Uuid,
    ) -> Result<Option<Picked>, StoreError> {
        let cfg = match self.config().await? {
            Ok(cfg) => cfg,
            Err(why) => {
                tracing::debug!(reason = %why, "prompt_bandit refused by Stage-0; using default");
                return Ok(None);
            }
        };
        Ok(self.pick_with(eligible, conversation_id, &cfg))
    }

    /// [`Picker::pick`] with a config in hand (no Stage-0 check): the per-turn work alone.
    pub fn pick_with(
        &self,
        eligible: &[String],
        conversation_id: Uuid,
        cfg: &BanditConfig,
    ) -> Option<Picked> {
        if self.bandit.stale(cfg) && !self.bandit.refreshing() {
            let bandit = self.bandit.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                if let Err(e) = bandit.refresh(&cfg).await {
                    tracing::warn!(error = %e, "prompt_bandit: refresh failed");
                }
            });
        }
        // A fresh v7 id's low half is 62 random bits: the seed, recorded with the choice.
        let seed = Uuid::now_v7().as_u64_pair().1;
        let (candidates, rules, choice) = self.bandit.choose(eligible, cfg, seed);
        let variant = choice.chosen.clone()?;
        Some(Picked {
            variant,
            selection: prompt_bandit::selection_content(
                conversation_id,
                &candidates,
                &rules,
                &choice,
            ),
        })
    }

    /// The bandit's state after folding in everything recorded so far (the kernel's default
    /// config while Stage-0 refuses it; `refused` says why).
    pub async fn status(
        &self,
        eligible: &[String],
    ) -> Result<(Status, Option<String>), StoreError> {
        let (cfg, refused) = match self.check().await? {
            Ok(cfg) => (cfg, None),
            Err(why) => (BanditConfig::default(), Some(why)),
        };
        self.bandit.refresh(&cfg).await?;
        let mut status = self.bandit.status(eligible, &cfg);
        if refused.is_some() {
            // Nothing is chosen by the bandit while it is refused: `default` gets every turn.
            for v in &mut status.variants {
                v.probability = if v.name == "default" { 1.0 } else { 0.0 };
            }
        }
        Ok((status, refused))
    }
}

/// The `prompt_variant_selection` span of a conversation's first turn: private to the asker,
/// in the turn's trace, beside its `prompt_run`.
pub fn selection_draft(
    principal: &Principal,
    run_id: Uuid,
    trace_id: &str,
    conversation_id: Uuid,
    selection: &Value,
    at: DateTime<Utc>,
) -> Result<Draft, InputError> {
    let chosen = selection
        .get("chosen")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mode = selection.get("mode").and_then(Value::as_str).unwrap_or("");
    Draft::from_value(
        json!({
            "entity_type": SELECTION,
            "visibility": "private",
            "trace_id": trace_id,
            "parent_id": run_id,
            "related_to": [run_id],
            "name": chosen,
            "when": format_time(at),
            "who": "kernel:prompt_bandit",
            "did": "chose a prompt variant",
            "this": format!("conversation {conversation_id}"),
            "confirmed_by": "a seeded draw (replayable: kernels::prompt_bandit::replay)",
            "if_ok": "the conversation keeps this variant",
            "if_doubt": "the floor keeps every variant measured",
            "if_not": "the default variant",
            "status": mode,
            "content": selection,
        }),
        principal,
        &[],
        at,
    )
}
