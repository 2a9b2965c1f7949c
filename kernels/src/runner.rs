//! Running a native kernel on an interval inside a long-lived process (`logline serve`).
//!
//! Before every step the loop asks Stage-0 about the kernel ([`stage0::inspect_kernel`]): a
//! kernel that is refused (taken off the allow-list, tampered with, badly configured) stops
//! within one step and starts again when a new seq fixes it, and the verified `config` of the
//! newest kernel seq is what the step runs with, `interval_ms` included. So tuning or stopping a
//! kernel is appending a span, never a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ledger::Store;
use serde_json::Value;

use crate::stage0::{self, State};

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
