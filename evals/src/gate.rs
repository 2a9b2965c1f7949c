//! The suites as prompt_eval's [`TrialRunner`] (issue 11): the `logline` binary hands this to
//! `serve`, whose `prompt_eval` kernel calls it with each candidate's trial prompt set.
//!
//! The turns of a trial run in a **scratch ledger** (a temporary SQLite file seeded with the
//! suites' demo tenants and setup spans, removed afterwards), so evaluating a prompt never
//! writes demo contracts or planted instructions into the served ledger. The `eval_run` and
//! `eval_case` spans go to the served ledger, recorded by the node in the system tenant,
//! `public` (they quote only that synthetic data), with the candidates under trial in each
//! `eval_run`; an `eval_case`'s `prompt_run` names a turn of the scratch ledger, and the case
//! keeps the question, the answer and every assertion's verdict.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use ledger::store::group::GroupCommit;
use ledger::store::system_principal;
use ledger::{Draft, Principal, Store};
use serde_json::{Value, json};
use server::chat::LivePrompts;
use server::chat::agent::Agent;
use server::chat::candidates::{FailingCase, Trial, TrialRun, TrialRunner};
use server::config::StoreSettings;
use uuid::Uuid;

use crate::assertion::SpanInfo;
use crate::fixture::Suite;
use crate::runner::{self, Options};
use crate::target::{Asked, Asker, InProcess, Target, TargetError};

/// The suites compiled into the binary, by name (`kernels`' `KNOWN_SUITES` lists the same).
pub const EMBEDDED_SUITES: &[(&str, &str, &str)] = &[
    (
        "happy",
        "evals/suites/happy.yaml",
        include_str!("../suites/happy.yaml"),
    ),
    (
        "stress",
        "evals/suites/stress.yaml",
        include_str!("../suites/stress.yaml"),
    ),
];

/// The embedded suite of that name.
pub fn embedded_suite(name: &str) -> Result<Suite, String> {
    let (_, path, text) = EMBEDDED_SUITES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| format!("no embedded suite named `{name}`"))?;
    Suite::parse(std::path::Path::new(path), text).map_err(|e| e.to_string())
}

/// prompt_eval's runner: embedded suites, a scratch ledger per trial.
#[derive(Clone, Copy, Debug, Default)]
pub struct SuiteTrials;

/// Asks in the scratch ledger, records in the served one.
struct Scratch {
    inner: InProcess,
    ledger: Arc<dyn Store>,
}

#[async_trait]
impl Target for Scratch {
    fn describe(&self) -> String {
        "prompt_eval (scratch ledger)".into()
    }

    async fn ask(
        &self,
        who: &Asker,
        conversation: Option<Uuid>,
        message: &str,
        variant: &str,
    ) -> Result<Asked, TargetError> {
        self.inner.ask(who, conversation, message, variant).await
    }

    async fn spans(&self, who: &Asker, ids: &[Uuid]) -> std::collections::HashMap<Uuid, SpanInfo> {
        self.inner.spans(who, ids).await
    }

    async fn tenant_ids(&self, tenant: &str) -> Option<std::collections::HashSet<Uuid>> {
        self.inner.tenant_ids(tenant).await
    }

    async fn record(
        &self,
        recorder: &Principal,
        spans: Vec<Value>,
    ) -> Result<Vec<Uuid>, TargetError> {
        let now = Utc::now();
        let drafts = spans
            .into_iter()
            .map(|s| Draft::from_value(s, recorder, &[], now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TargetError::Record(e.to_string()))?;
        ledger::store::append(self.ledger.as_ref(), recorder, drafts)
            .await
            .map_err(|e| TargetError::Record(e.to_string()))?
            .into_iter()
            .map(|r| {
                r.map(|a| a.id)
                    .map_err(|e| TargetError::Record(e.to_string()))
            })
            .collect()
    }
}

#[async_trait]
impl TrialRunner for SuiteTrials {
    async fn run(&self, trial: Trial) -> Result<Vec<TrialRun>, String> {
        // The suite runner's future is not `Send` (its job stream borrows the cases through
        // closures the compiler cannot prove Send for every lifetime), so it is driven on a
        // blocking thread of the same runtime; what crosses threads (the trial, the result) is.
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(run_trial(trial)))
            .await
            .map_err(|e| format!("the trial stopped: {e}"))?
    }
}

async fn run_trial(trial: Trial) -> Result<Vec<TrialRun>, String> {
    {
        let mut suites = Vec::new();
        for name in &trial.suites {
            suites.push(embedded_suite(name)?);
        }
        let dir = tempfile::tempdir().map_err(|e| format!("scratch ledger: {e}"))?;
        let scratch = StoreSettings {
            data_dir: dir.path().to_path_buf(),
            database_url: None,
        }
        .open()
        .await
        .map_err(|e| format!("scratch ledger: {e}"))?;
        let mut tenants: Vec<String> = Vec::new();
        for t in suites.iter().flat_map(|s| s.seed.iter()) {
            if !tenants.contains(t) {
                tenants.push(t.clone());
            }
        }
        // Setup spans (planted instructions…) go where the turns run; the runner, which would
        // record them through the target (the served ledger), gets none.
        let mut setup = Vec::new();
        for suite in &mut suites {
            let path = suite.path.display().to_string();
            for s in std::mem::take(&mut suite.setup) {
                let who = Principal::new(
                    s.user.clone().unwrap_or_else(|| suite.user.clone()),
                    s.tenant.clone().unwrap_or_else(|| suite.tenant.clone()),
                );
                let draft = Draft::from_value(Value::Object(s.span), &who, &[], Utc::now())
                    .map_err(|e| format!("{path}: setup span: {e}"))?;
                setup.push((who, draft));
            }
        }
        prepare(scratch.clone(), tenants, setup).await?;
        let writer = GroupCommit::start(scratch.clone());
        let provider = (
            trial.provider.kind().to_string(),
            trial.provider.model().to_string(),
        );
        let agent = Agent::with_prompts(
            scratch.clone(),
            Arc::new(writer.clone()),
            trial.provider.clone(),
            Arc::new(LivePrompts::new(trial.prompts)),
            trial.context_tokens,
        )
        .await
        .map_err(|e| format!("trial agent: {e:#}"))?;
        let target: Arc<dyn Target> = Arc::new(Scratch {
            inner: InProcess::from_agent(scratch, writer, agent),
            ledger: trial.ledger.clone(),
        });
        let opts = Options {
            variants: trial.variants.clone(),
            repeat: 1,
            case_threshold: 1.0,
            concurrency: trial.concurrency.max(1),
            filter: None,
            progress: false,
            recorder: Some(system_principal()),
            target: target.describe(),
            provider: Some(provider),
            visibility: "public",
            candidates: Some(json!(trial.candidates)),
        };
        let mut out = Vec::new();
        for suite in &suites {
            let run = runner::run_suite(target.clone(), suite, &opts)
                .await
                .map_err(|e| format!("suite {}: {e}", suite.name))?;
            for v in &run.variants {
                out.push(TrialRun {
                    eval_run: v.eval_run,
                    suite: run.suite.clone(),
                    variant: v.variant.clone(),
                    cases: v.counted,
                    passed: v.passed,
                    pass_rate: if v.counted > 0 {
                        v.passed as f64 / v.counted as f64
                    } else {
                        0.0
                    },
                    suite_threshold: run.threshold,
                    failing: v
                        .cases
                        .iter()
                        .filter(|c| !c.pass && !c.skipped)
                        .map(|c| FailingCase {
                            suite: run.suite.clone(),
                            variant: v.variant.clone(),
                            case: c.case.clone(),
                            line: c.line,
                            reasons: c.failures.clone(),
                        })
                        .collect(),
                    compiled_hashes: v.compiled_hashes.clone(),
                    provider: v.provider.clone(),
                    model: v.model.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// Seeds the scratch ledger: the demo data in each tenant, then the setup spans. A boxed
/// `Send` future of its own, so the demo seeding's borrows stay inside it.
fn prepare(
    scratch: Arc<dyn Store>,
    tenants: Vec<String>,
    setup: Vec<(Principal, Draft)>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
    Box::pin(async move {
        for tenant in &tenants {
            kernels::demo::seed_demo(scratch.as_ref(), tenant, Utc::now())
                .await
                .map_err(|e| format!("seeding the scratch ledger: {e}"))?;
        }
        for (who, draft) in setup {
            for r in ledger::store::append(scratch.as_ref(), &who, vec![draft])
                .await
                .map_err(|e| format!("setup span: {e}"))?
            {
                r.map_err(|e| format!("setup span: {e}"))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_suites_parse_and_match_the_kernels_list() {
        let names: Vec<&str> = EMBEDDED_SUITES.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(
            names,
            kernels::kernel::prompt_eval::KNOWN_SUITES.to_vec(),
            "the prompt_eval kernel validates suite names against this list"
        );
        for (name, path, _) in EMBEDDED_SUITES {
            let s = embedded_suite(name).unwrap();
            assert_eq!(&s.name, name);
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(path),
            )
            .unwrap();
            assert_eq!(
                Suite::parse(std::path::Path::new(path), &on_disk)
                    .unwrap()
                    .file_hash,
                s.file_hash
            );
        }
    }
}
