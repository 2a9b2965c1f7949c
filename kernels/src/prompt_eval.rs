//! `prompt_eval`'s runtime loop: every `interval_ms` of its verified kernel span, one pass of
//! the prompt gate over new prompt candidates (issue 11).
//!
//! What a pass does — find candidates, compile them, run the suites, record a signed
//! `prompt_activation` — needs the prompt library (in `server`) and the suite runner (in
//! `evals`, above the server), so it is injected as a [`PromptGate`] by the binary that wires
//! everything. This module owns only what makes it a kernel: Stage-0 is asked before every
//! pass (a refused or unlisted `prompt_eval` evaluates nothing, so nothing new goes live), and
//! the pass runs with the newest kernel seq's typed config.

use std::sync::Arc;

use async_trait::async_trait;
use ledger::Store;

use crate::kernel::prompt_eval::PromptEvalConfig;
use crate::runner::every;
use crate::stage0::{self, State};

/// One pass of the gate over the candidates it finds; returns a one-line summary (empty when
/// there was nothing to do) or why the pass failed.
#[async_trait]
pub trait PromptGate: Send + Sync {
    async fn pass(&self, config: &PromptEvalConfig) -> Result<String, String>;
}

/// Why a single pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("Stage-0 does not let prompt_eval run: {0}")]
    Refused(String),
    #[error(transparent)]
    Stage0(#[from] stage0::Stage0Error),
    #[error("{0}")]
    Failed(String),
}

/// Runs one pass now, if Stage-0 verifies the kernel (what `serve` does once before it
/// listens, so a fresh install starts with its shipped prompts evaluated).
pub async fn run_once(store: &dyn Store, gate: &dyn PromptGate) -> Result<String, PassError> {
    let (_, k) = stage0::inspect_kernel(store, "prompt_eval").await?;
    if k.state != State::Ready {
        return Err(PassError::Refused(k.reason));
    }
    let config = PromptEvalConfig::from_value(&k.config).map_err(PassError::Refused)?;
    gate.pass(&config).await.map_err(PassError::Failed)
}

/// Spawns the kernel's loop (see [`every`]).
pub fn start(store: Arc<dyn Store>, gate: Arc<dyn PromptGate>) {
    tokio::spawn(every(store, "prompt_eval", move |config| {
        let gate = gate.clone();
        async move {
            let config = PromptEvalConfig::from_value(&config)?;
            gate.pass(&config).await
        }
    }));
}
