//! Running a native kernel on an interval inside a long-lived process (`logline serve`).
//!
//! Before every step the loop asks Stage-0 about the kernel ([`stage0::inspect_kernel`]): a
//! kernel that is refused (taken off the allow-list, tampered with, badly configured) stops
//! within one step and starts again when a new seq fixes it, and the verified `config` of the
//! newest kernel seq is what the step runs with, `interval_ms` included. So tuning or stopping a
//! kernel is appending a span, never a restart.
//!
//! [`boot_for_serve`] is the Stage-0 boot of such a process: it records the boot, starts the
//! loops of the kernels that run on their own and keeps re-checking the manifest.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ledger::Store;
use serde_json::Value;

use crate::midnight_ruler;
use crate::observer_bot::{ObserverBot, ObserverConfig};
use crate::policy_agent::{PolicyAgent, PolicyAgentConfig};
use crate::request_worker::{RequestWorker, WorkerConfig};
use crate::stage0::{self, BootReport, Stage0Error, State};

/// How long a kernel that may not run waits before asking Stage-0 again.
pub const RECHECK: Duration = Duration::from_secs(3);

/// The pause after a step: the config's `interval_ms`, else `default`.
pub fn interval(config: &Value, default: Duration) -> Duration {
    config
        .get("interval_ms")
        .and_then(Value::as_u64)
        .map_or(default, Duration::from_millis)
}

/// Runs `step` with the kernel's verified config, then sleeps its `interval_ms`, for ever.
/// A failed step is logged and the loop goes on (every step of every kernel is idempotent).
pub async fn every<F, Fut>(store: Arc<dyn Store>, name: &'static str, mut step: F)
where
    F: FnMut(Value) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut last: Option<(State, String)> = None;
    loop {
        let wait = match stage0::inspect_kernel(store.as_ref(), name).await {
            Ok((_, k)) if k.state == State::Ready => {
                if last.as_ref().is_none_or(|(s, _)| *s != State::Ready) {
                    tracing::info!(kernel = name, seq = ?k.seq, "kernel loop running");
                }
                last = Some((k.state, k.reason.clone()));
                let wait = interval(&k.config, RECHECK);
                match step(k.config).await {
                    Ok(summary) if summary.is_empty() => {}
                    Ok(summary) => tracing::debug!(kernel = name, %summary, "kernel step"),
                    Err(e) => tracing::warn!(kernel = name, error = %e, "kernel step failed"),
                }
                wait
            }
            Ok((_, k)) => {
                let now = (k.state, k.reason.clone());
                if last.as_ref() != Some(&now) {
                    tracing::info!(kernel = name, reason = %k.reason, "kernel loop paused");
                }
                last = Some(now);
                RECHECK
            }
            Err(e) => {
                tracing::warn!(kernel = name, error = %e, "kernel loop cannot ask Stage-0");
                RECHECK
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// How often a running server re-reads the manifest and kernel spans (about eight small
/// reads), so a new seq takes effect within this long without a restart.
const MANIFEST_RECHECK: Duration = Duration::from_secs(3);

/// Stage-0 for `logline serve`: seeds missing kernel spans, verifies them, records refusals and
/// one `boot_event` for this boot, logs what started, and keeps re-checking in the background
/// so a new manifest or kernel seq is noticed (and a new refusal recorded) without a restart.
/// It then starts the loops of the kernels that run on their own (`policy_agent`,
/// `observer_bot`, `request_worker`, `midnight_ruler`); each asks Stage-0 before every step, so
/// each runs only while verified and allow-listed, at the `interval_ms` of its newest kernel seq.
pub async fn boot_for_serve(store: Arc<dyn Store>) -> Result<(), Stage0Error> {
    stage0::seed(store.as_ref()).await?;
    let report = stage0::inspect(store.as_ref()).await?;
    stage0::record_refusals(store.as_ref(), &report).await?;
    let process = format!("logline serve (pid {})", std::process::id());
    stage0::record_boot(store.as_ref(), &report, &process).await?;
    log_report(&report);
    start_kernel_loops(&store);
    tokio::spawn(async move {
        let mut last = report.fingerprint();
        loop {
            tokio::time::sleep(MANIFEST_RECHECK).await;
            let report = match stage0::inspect(store.as_ref()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stage0: re-check failed");
                    continue;
                }
            };
            let now = report.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            if let Err(e) = stage0::record_refusals(store.as_ref(), &report).await {
                tracing::warn!(error = %e, "stage0: cannot record refusals");
            }
            log_report(&report);
        }
    });
    Ok(())
}

/// Spawns the interval loops of `policy_agent`, `observer_bot`, `request_worker` and
/// `midnight_ruler` (see [`every`]).
pub fn start_kernel_loops(store: &Arc<dyn Store>) {
    let agent = Arc::new(PolicyAgent::new(store.clone()));
    tokio::spawn(every(store.clone(), "policy_agent", move |config| {
        let agent = agent.clone();
        async move {
            let config = PolicyAgentConfig::from_value(&config)?;
            let r = agent.pass_with(&config).await.map_err(|e| e.to_string())?;
            Ok(if r.evaluated + r.errors + r.actions == 0 {
                String::new()
            } else {
                format!(
                    "{} spans evaluated, {} actions, {} policy_error",
                    r.evaluated, r.actions, r.errors
                )
            })
        }
    }));
    let observer = Arc::new(ObserverBot::new(store.clone()));
    tokio::spawn(every(store.clone(), "observer_bot", move |config| {
        let observer = observer.clone();
        async move {
            let config = ObserverConfig::from_value(&config)?;
            let r = observer
                .pass_with(&config)
                .await
                .map_err(|e| e.to_string())?;
            Ok(if r.requested == 0 {
                String::new()
            } else {
                format!("{} requests", r.requested)
            })
        }
    }));
    let worker = Arc::new(RequestWorker::new(store.clone()));
    tokio::spawn(every(store.clone(), "request_worker", move |config| {
        let worker = worker.clone();
        async move {
            let config = WorkerConfig::from_value(&config)?;
            let r = worker.pass_with(&config).await.map_err(|e| e.to_string())?;
            Ok(if r.claimed == 0 {
                String::new()
            } else {
                format!(
                    "{} claimed, {} executed, {} recovered",
                    r.claimed, r.executed, r.recovered
                )
            })
        }
    }));
    let ruler_store = store.clone();
    tokio::spawn(every(store.clone(), "midnight_ruler", move |_| {
        let store = ruler_store.clone();
        async move {
            let reports = midnight_ruler::catch_up(store.as_ref(), chrono::Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            let written: usize = reports.iter().map(|r| r.spans_written).sum();
            let decided: usize = reports.iter().map(|r| r.decided().total()).sum();
            if decided > 0 || written > 0 {
                tracing::info!(
                    decided,
                    spans_written = written,
                    "midnight_ruler: caught up"
                );
            }
            Ok(String::new())
        }
    }));
}

/// Logs what Stage-0 decided for each kernel (and a manifest that does not verify).
pub fn log_report(report: &BootReport) {
    if let Err(e) = &report.manifest {
        tracing::error!(error = %e, "stage0: the manifest does not verify; no kernel runs");
    }
    for k in &report.kernels {
        match k.state {
            State::Ready => {
                tracing::info!(kernel = %k.name, id = %k.id, seq = ?k.seq, "stage0: started")
            }
            State::NoRuntime => tracing::info!(
                kernel = %k.name, id = %k.id, seq = ?k.seq,
                "stage0: verified, not started (no runtime in this build yet)"
            ),
            State::Refused(why) => tracing::warn!(
                kernel = %k.name, id = %k.id, seq = ?k.seq, refusal = why.as_str(),
                reason = %k.reason, "stage0: refused"
            ),
        }
    }
}
