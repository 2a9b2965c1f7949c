//! The JavaScript sandbox that `run_code` runs user functions in (DESIGN §5).
//!
//! A function's source defines `main(input, ctx)`, plain or `async`. It runs in an embedded
//! QuickJS-ng engine (through `rquickjs`) with a fresh runtime per run, so nothing survives from
//! one run to the next. The engine enforces a memory limit, a stack limit and, through its
//! interrupt handler, a wall-time limit that also stops endless loops inside awaited promise
//! chains. The global object holds only the ECMAScript built-ins: no `require`, `process`,
//! `fetch`, module loader, filesystem or network. The only way out is the `ctx` object, whose
//! calls go to a [`Host`] chosen by the caller ([`LedgerHost`] reads and writes the ledger as the
//! function's owner).
//!
//! ## Threads and blocking
//!
//! A QuickJS runtime is single-threaded and host calls are synchronous from JavaScript's point
//! of view, so each run gets its own OS thread (sized for the stack limit) and
//! [`Sandbox::run`] awaits its result. A host that needs async work (the ledger store) calls
//! `Handle::block_on` on that thread. This cannot deadlock: the sandbox thread is not a Tokio
//! worker, so blocking it never starves the runtime that drives the store's futures, and the
//! caller of [`Sandbox::run`] only awaits, it never blocks a worker. A host call in progress is
//! not interrupted; the time limit is enforced again as soon as it returns.

mod engine;
mod ledger_host;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;

pub use ledger_host::{Clock, LedgerHost, filter_from_spec};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// What a function may call outside the engine. Every method runs on the sandbox thread and may
/// block; an `Err` is thrown inside JavaScript as an `Error` with that message.
pub trait Host: Send + Sync {
    /// Spans matching a filter spec (see [`filter_from_spec`]), as the function's owner sees them.
    fn query(&self, filter: Value) -> Result<Vec<Value>, String>;
    /// Appends one span as the function's owner, in the owner's tenant; returns what the ledger
    /// says about it (id, seq, …).
    fn append(&self, span: Value) -> Result<Value, String>;
    /// The injected clock's "now" (`ctx.now()`), so tests and the Midnight Ruler can fix time.
    fn now(&self) -> DateTime<Utc>;
}

/// Bounds on one run. Each violation is its own [`RunError`] variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Heap the engine may allocate, built-ins included.
    pub memory_bytes: usize,
    /// Wall time from loading the source to serialising the result, host calls included.
    pub time: Duration,
    /// Native stack the interpreter may use (bounds recursion depth).
    pub stack_bytes: usize,
    /// Size of `main`'s return value as JSON text.
    pub output_bytes: usize,
    /// `ctx.log` lines kept; later lines are dropped and `logs_truncated` is set.
    pub log_lines: usize,
    /// Total bytes of `ctx.log` lines kept.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 * MIB,
            time: Duration::from_secs(1),
            stack_bytes: 512 * KIB,
            output_bytes: 64 * KIB,
            log_lines: 200,
            log_bytes: 64 * KIB,
        }
    }
}

/// What a successful run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutput {
    /// `main`'s return value (the resolved value for an `async main`); `null` for `undefined`.
    pub output: Value,
    /// `ctx.log` lines, each argument a string or its JSON, separated by spaces.
    pub logs: Vec<String>,
    /// Whether `ctx.log` lines were dropped for exceeding [`Limits::log_lines`]/`log_bytes`.
    pub logs_truncated: bool,
    pub duration: Duration,
}

/// Why a run failed. The messages are written for the function's author.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunError {
    #[error("time limit of {} ms exceeded", limit.as_millis())]
    TimeLimit { limit: Duration },
    #[error("memory limit of {} exceeded", Bytes(*limit_bytes))]
    MemoryLimit { limit_bytes: usize },
    #[error("stack limit of {} exceeded (recursion too deep)", Bytes(*limit_bytes))]
    StackLimit { limit_bytes: usize },
    #[error("output is {} as JSON, over the limit of {}", Bytes(*size), Bytes(*limit_bytes))]
    OutputTooLarge { size: usize, limit_bytes: usize },
    #[error("output is not JSON-serialisable: {0}")]
    NotSerializable(String),
    #[error("source does not compile: {0}")]
    Compile(String),
    #[error("source does not define a function `main(input, ctx)`")]
    NoMain,
    #[error("main returned a promise that never settled")]
    NeverSettled,
    #[error("uncaught exception: {message}")]
    Thrown {
        message: String,
        stack: Option<String>,
    },
    #[error("invalid sandbox limits: {0}")]
    InvalidLimits(&'static str),
    #[error("sandbox failure: {0}")]
    Engine(String),
}

/// A byte count in the unit its author most likely wrote it in.
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= MIB && n.is_multiple_of(MIB) {
            write!(f, "{} MiB", n / MIB)
        } else if n >= KIB && n.is_multiple_of(KIB) {
            write!(f, "{} KiB", n / KIB)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// Runs user functions; see the module documentation.
pub struct Sandbox;

impl Sandbox {
    /// Runs `main(input, ctx)` from `source` under `limits` on a thread of its own.
    pub async fn run(
        source: &str,
        input: Value,
        host: Arc<dyn Host>,
        limits: Limits,
    ) -> Result<RunOutput, RunError> {
        limits.check()?;
        let source = source.to_owned();
        // Room for the interpreter's own limit plus the Rust frames around it.
        let stack = limits.stack_bytes.saturating_add(2 * MIB);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("js-sandbox".into())
            .stack_size(stack)
            .spawn(move || {
                let result = engine::run(&source, &input, host, &limits);
                // The caller may have stopped waiting; the result is then simply dropped.
                let _ = tx.send(result);
            })
            .map_err(|e| RunError::Engine(format!("cannot start the sandbox thread: {e}")))?;
        let result = rx
            .await
            .map_err(|_| RunError::Engine("the sandbox thread stopped without a result".into()))?;
        match &result {
            Ok(out) => tracing::debug!(duration_ms = out.duration.as_millis(), "sandbox run"),
            Err(e) => tracing::debug!(error = %e, "sandbox run failed"),
        }
        result
    }
}

impl Limits {
    fn check(&self) -> Result<(), RunError> {
        if self.memory_bytes == 0 {
            // QuickJS reads 0 as "unlimited".
            return Err(RunError::InvalidLimits(
                "memory_bytes must be greater than zero",
            ));
        }
        if self.time.is_zero() {
            return Err(RunError::InvalidLimits("time must be greater than zero"));
        }
        if self.stack_bytes == 0 {
            return Err(RunError::InvalidLimits(
                "stack_bytes must be greater than zero",
            ));
        }
        if self.stack_bytes > 64 * MIB {
            return Err(RunError::InvalidLimits(
                "stack_bytes must be at most 64 MiB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_messages_name_the_limit_in_its_unit() {
        assert_eq!(
            RunError::TimeLimit {
                limit: Duration::from_millis(1000)
            }
            .to_string(),
            "time limit of 1000 ms exceeded"
        );
        assert_eq!(
            RunError::MemoryLimit {
                limit_bytes: 16 * MIB
            }
            .to_string(),
            "memory limit of 16 MiB exceeded"
        );
        assert_eq!(
            RunError::OutputTooLarge {
                size: 70_001,
                limit_bytes: 64 * KIB
            }
            .to_string(),
            "output is 70001 bytes as JSON, over the limit of 64 KiB"
        );
    }
}
