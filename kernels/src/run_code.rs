//! The `run_code` kernel: runs a `function` span's JavaScript in the sandbox, as the function's
//! owner in its tenant, and records every run as an `execution` span (DESIGN §5).
//!
//! Before each run it asks Stage-0 about itself ([`stage0::inspect_kernel`]), so a refused
//! `run_code` span stops runs at once and a new `seq` of its config (limits) applies to the next
//! run without a restart. The function span's own seal is checked too: code whose span does not
//! verify is not run.
//!
//! ## The daily quota, race-free
//!
//! `throttle.per_tenant_daily_exec_limit` bounds how many runs a tenant may start per UTC day,
//! however many processes share the database. The count lives in the ledger as a per-tenant,
//! per-day `quota_counter` span whose `seq` *is* the number of runs claimed that day:
//!
//! 1. The day's counter is found or opened by appending its seq 0 under the idempotency key
//!    `run_code:quota:<day>`; the store's unique (tenant, key) constraint makes every process
//!    land on the same span.
//! 2. A run is claimed by appending seq `n + 1` where `n` is the latest seq, only if `n` is below
//!    the limit. The store checks `seq` against the span's latest version inside its writing
//!    transaction, under the tenant's chain lock (a row lock on PostgreSQL, `BEGIN IMMEDIATE` on
//!    SQLite), so of several processes that read the same `n`, exactly one gets `n + 1`; the
//!    others get a `SeqConflict` naming the new latest seq and decide again from there.
//!
//! So counting and deciding are one step that the database arbitrates, with no lock held while
//! code runs and a constant cost per run (unlike probing one idempotency key per slot, which
//! costs up to `limit` round trips late in the day). Each claim names the execution it is for,
//! so the counter is also an audit trail. A process that dies between claim and run spends the
//! slot: the quota fails closed, and the claim without an execution shows it.
//! A run over the limit is not started; a `policy_violation` span records it instead.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ledger::error::AppendError;
use ledger::span::{MAX_SPAN_BYTES, format_time};
use ledger::store;
use ledger::verify::verify_span;
use ledger::{Appended, Draft, Principal, Store, StoreError};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::kernel::Kernel;
use crate::kernel::run_code::RunCodeKernel;
pub use crate::kernel::run_code::{RunCodeConfig, default_config};
use crate::sandbox::{Clock, LedgerHost, RunError, RunOutput, Sandbox};
use crate::stage0::{self, State};

/// Error messages and stacks kept in an execution span.
const ERROR_TEXT_BYTES: usize = 4 * 1024;

/// How many times a claim may lose the race before giving up. Every lost race means another
/// run was claimed, so this only matters for very high limits under heavy contention.
const CLAIM_ATTEMPTS: u32 = 10_000;

#[derive(Debug, Error)]
pub enum RunCodeError {
    #[error("run_code is not running: {0}")]
    KernelRefused(String),
    #[error("function {0} not found (or not visible to the caller)")]
    NotFound(Uuid),
    #[error("span {id} is a `{entity_type}` span, not a function")]
    NotAFunction { id: Uuid, entity_type: String },
    #[error("function {id} belongs to tenant `{function}`; the caller acts in tenant `{caller}`")]
    ForeignTenant {
        id: Uuid,
        function: String,
        caller: String,
    },
    #[error("function {id} is written in `{language}`; run_code runs javascript")]
    Language { id: Uuid, language: String },
    #[error("function {0} has no source: put the JavaScript in content.source (or code)")]
    NoSource(Uuid),
    #[error("function {id} does not verify, so it is not run: {reason}")]
    Unverified { id: Uuid, reason: String },
    #[error("function {0} is redacted: there is no code to run")]
    Redacted(Uuid),
    #[error("input is {size} bytes as JSON, over run_code's limit of {limit}")]
    InputTooLarge { size: usize, limit: usize },
    #[error("the daily quota cannot be decided: {0}")]
    Quota(String),
    #[error("cannot record the {what} span: {reason}")]
    Record { what: &'static str, reason: String },
    #[error(transparent)]
    Stage0(#[from] stage0::Stage0Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one request to run a function led to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It ran: the `execution` span (status `ok` or `error`) and, for a slow run, the
    /// `status_patch` span that marks it.
    Executed {
        execution: Value,
        ok: bool,
        slow: Option<Value>,
    },
    /// The tenant's daily quota was used up: nothing ran, a `policy_violation` span says so.
    Blocked { violation: Value },
}

/// A function span, read and checked.
struct Function {
    id: Uuid,
    seq: i64,
    curr_hash: String,
    owner: Principal,
    visibility: String,
    name: String,
    source: String,
}

/// Whether a claim got a slot, and the counter it was decided on.
enum Claim {
    Granted { used: i64, counter: Uuid },
    Exhausted { used: i64, counter: Uuid },
}

/// The kernel: one per process is enough (it holds no state between runs).
pub struct RunCode {
    store: Arc<dyn Store>,
    clock: Clock,
}

impl RunCode {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::new(Utc::now),
        }
    }

    /// Replaces the wall clock (the quota day, `ctx.now()`, the spans' `when`).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs function `function_id` with `input`, on behalf of `caller` (who must be able to see
    /// the function and act in its tenant). The function runs as its owner.
    #[tracing::instrument(skip_all, fields(function = %function_id))]
    pub async fn run(
        &self,
        caller: &Principal,
        function_id: Uuid,
        input: Value,
    ) -> Result<Outcome, RunCodeError> {
        let store = self.store.as_ref();
        let (manifest, kernel) = stage0::inspect_kernel(store, RunCodeKernel::NAME).await?;
        if kernel.state != State::Ready {
            return Err(RunCodeError::KernelRefused(kernel.reason));
        }
        let manifest = manifest.map_err(RunCodeError::KernelRefused)?;
        let config = RunCodeKernel::read(&kernel.config)
            .map_err(|e| RunCodeError::KernelRefused(e.to_string()))?;
        let function = self.load_function(caller, function_id).await?;
        let input_size = serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len());
        if input_size > config.max_input_bytes {
            return Err(RunCodeError::InputTooLarge {
                size: input_size,
                limit: config.max_input_bytes,
            });
        }

        let now = (self.clock)();
        let day = now.date_naive().format("%Y-%m-%d").to_string();
        let limit = manifest.daily_exec_limit;
        let execution_id = Uuid::now_v7();
        let (used, counter) = match self.claim(&function, &day, limit, execution_id).await? {
            Claim::Granted { used, counter } => (used, counter),
            Claim::Exhausted { used, counter } => {
                let violation = self
                    .record_violation(&function, &day, limit, used, counter)
                    .await?;
                return Ok(Outcome::Blocked { violation });
            }
        };

        let host = LedgerHost::new(
            self.store.clone(),
            function.owner.clone(),
            Handle::current(),
        )
        .with_clock(self.clock.clone());
        let started = Instant::now();
        let result = Sandbox::run(
            &function.source,
            input.clone(),
            Arc::new(host),
            config.limits.clone(),
        )
        .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ok = result.is_ok();
        let quota = json!({"day": day, "used": used, "limit": limit, "counter": counter});
        let execution = self
            .record_execution(
                &function,
                execution_id,
                now,
                &input,
                &result,
                duration_ms,
                &config,
                quota,
            )
            .await?;
        let slow = if duration_ms > manifest.slow_ms {
            Some(
                self.record_slow(&function, execution_id, duration_ms, manifest.slow_ms)
                    .await?,
            )
        } else {
            None
        };
        Ok(Outcome::Executed {
            execution,
            ok,
            slow,
        })
    }

    async fn load_function(&self, caller: &Principal, id: Uuid) -> Result<Function, RunCodeError> {
        let store = self.store.as_ref();
        let span = store
            .get(caller, id, None)
            .await?
            .ok_or(RunCodeError::NotFound(id))?;
        let trusted = store::trusted_keys(store).await?;
        verify_span(&span, &trusted).map_err(|e| RunCodeError::Unverified {
            id,
            reason: e.to_string(),
        })?;
        let view = span.to_view().map_err(StoreError::Corrupt)?;
        let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or_default();
        if text("entity_type") != "function" {
            return Err(RunCodeError::NotAFunction {
                id,
                entity_type: text("entity_type").to_string(),
            });
        }
        if text("tenant_id") != caller.tenant_id {
            return Err(RunCodeError::ForeignTenant {
                id,
                function: text("tenant_id").to_string(),
                caller: caller.tenant_id.clone(),
            });
        }
        if view.get("redacted") == Some(&Value::Bool(true)) {
            return Err(RunCodeError::Redacted(id));
        }
        let content = view.get("content").cloned().unwrap_or(Value::Null);
        let language = content
            .get("language")
            .and_then(Value::as_str)
            .or_else(|| view.get("language").and_then(Value::as_str))
            .unwrap_or("javascript");
        if !matches!(language.to_ascii_lowercase().as_str(), "javascript" | "js") {
            return Err(RunCodeError::Language {
                id,
                language: language.to_string(),
            });
        }
        let source = content
            .get("source")
            .and_then(Value::as_str)
            .or_else(|| view.get("code").and_then(Value::as_str))
            .filter(|s| !s.trim().is_empty())
            .ok_or(RunCodeError::NoSource(id))?;
        let name = view
            .get("name")
            .and_then(Value::as_str)
            .or_else(|| content.get("name").and_then(Value::as_str))
            .map_or_else(|| format!("function {id}"), |n| format!("function {n}"));
        Ok(Function {
            id,
            seq: view.get("seq").and_then(Value::as_i64).unwrap_or(0),
            curr_hash: span.curr_hash.clone(),
            owner: Principal::new(text("owner_id"), text("tenant_id")),
            visibility: text("visibility").to_string(),
            name,
            source: source.to_string(),
        })
    }

    /// Claims one of today's runs for the function's tenant; see the module documentation.
    async fn claim(
        &self,
        function: &Function,
        day: &str,
        limit: u64,
        execution_id: Uuid,
    ) -> Result<Claim, RunCodeError> {
        let owner = &function.owner;
        let now = format_time((self.clock)());
        let base = |seq_fields: Value| {
            let mut v = json!({
                "entity_type": "quota_counter",
                "visibility": "tenant",
                "when": now,
                "who": "run_code",
                "this": format!("executions of tenant {} on {day}", owner.tenant_id),
                "confirmed_by": "run_code quota",
                "if_ok": "run the function",
                "if_doubt": "do not run it",
                "if_not": "record a policy_violation instead",
            });
            for (k, x) in seq_fields.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v
        };
        let rule = "throttle.per_tenant_daily_exec_limit";
        let opened = self
            .append_one(
                owner,
                base(json!({
                    "idempotency_key": format!("run_code:quota:{day}"),
                    "did": "opened the daily execution quota",
                    "status": "open",
                    "content": {"rule": rule, "day": day, "used": 0},
                })),
            )
            .await
            .map_err(|e| RunCodeError::Quota(format!("cannot open the day's counter: {e}")))?;
        let counter = opened.id;
        let span = self.store.get(owner, counter, None).await?.ok_or_else(|| {
            RunCodeError::Quota(format!(
                "the day's counter {counter} is not visible to the function's owner"
            ))
        })?;
        let view = span.to_view().map_err(StoreError::Corrupt)?;
        if view.get("entity_type").and_then(Value::as_str) != Some("quota_counter")
            || view.get("visibility").and_then(Value::as_str) != Some("tenant")
        {
            return Err(RunCodeError::Quota(format!(
                "the key run_code:quota:{day} belongs to span {counter}, which is not a tenant-visible quota_counter"
            )));
        }
        let mut used = view.get("seq").and_then(Value::as_i64).unwrap_or(0);
        for _ in 0..CLAIM_ATTEMPTS {
            if u64::try_from(used).unwrap_or(u64::MAX) >= limit {
                return Ok(Claim::Exhausted { used, counter });
            }
            let draft = base(json!({
                "id": counter,
                "seq": used + 1,
                "related_to": [function.id, execution_id],
                "did": "claimed an execution",
                "status": "claimed",
                "content": {"rule": rule, "day": day, "used": used + 1, "limit": limit,
                            "execution_id": execution_id, "function_id": function.id},
            }));
            match self.try_append(owner, draft).await? {
                Ok(a) => {
                    return Ok(Claim::Granted {
                        used: a.seq,
                        counter,
                    });
                }
                Err(AppendError::SeqConflict { latest, .. }) => {
                    tracing::debug!(%counter, tried = used + 1, latest, "lost a quota race");
                    used = latest;
                }
                Err(e) => {
                    return Err(RunCodeError::Quota(format!(
                        "cannot claim a run on counter {counter}: {e}"
                    )));
                }
            }
        }
        Err(RunCodeError::Quota(format!(
            "lost the race for a run {CLAIM_ATTEMPTS} times in a row"
        )))
    }

    async fn try_append(
        &self,
        owner: &Principal,
        span: Value,
    ) -> Result<Result<Appended, AppendError>, RunCodeError> {
        let draft = Draft::from_value(span, owner, &[], (self.clock)()).map_err(|e| {
            RunCodeError::Record {
                what: "quota_counter",
                reason: e.to_string(),
            }
        })?;
        let result = store::append(self.store.as_ref(), owner, vec![draft]).await?;
        result
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("the store reported no result".into()).into())
    }

    /// Appends one span as `owner`; the error is a sentence.
    async fn append_one(&self, owner: &Principal, span: Value) -> Result<Appended, String> {
        let draft =
            Draft::from_value(span, owner, &[], (self.clock)()).map_err(|e| e.to_string())?;
        match store::append(self.store.as_ref(), owner, vec![draft])
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
        {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the store reported no result".into()),
        }
    }

    /// Appends a span as the function's owner and reads it back as the owner sees it.
    async fn record(
        &self,
        what: &'static str,
        owner: &Principal,
        span: Value,
    ) -> Result<Value, RunCodeError> {
        let a = self
            .append_one(owner, span)
            .await
            .map_err(|reason| RunCodeError::Record { what, reason })?;
        let stored = self
            .store
            .get(owner, a.id, Some(a.seq))
            .await?
            .ok_or_else(|| RunCodeError::Record {
                what,
                reason: "it vanished after the append".into(),
            })?;
        stored.to_view().map_err(|e| StoreError::Corrupt(e).into())
    }

    async fn record_violation(
        &self,
        function: &Function,
        day: &str,
        limit: u64,
        used: i64,
        counter: Uuid,
    ) -> Result<Value, RunCodeError> {
        self.record(
            "policy_violation",
            &function.owner,
            json!({
                "entity_type": "policy_violation",
                "visibility": function.visibility,
                "related_to": [function.id, counter],
                "when": format_time((self.clock)()),
                "who": "run_code",
                "did": "blocked an execution",
                "this": function.name,
                "confirmed_by": "run_code quota",
                "if_ok": "run it tomorrow or after the limit is raised",
                "if_doubt": "keep blocking",
                "if_not": "keep blocking",
                "status": "blocked",
                "content": {
                    "rule": "throttle.per_tenant_daily_exec_limit",
                    "limit": limit,
                    "used": used,
                    "day": day,
                    "tenant_id": function.owner.tenant_id,
                    "function": {"id": function.id, "seq": function.seq},
                    "counter": counter,
                    "message": format!(
                        "tenant {} has used {used} of its {limit} executions for {day} (UTC); the run was not started",
                        function.owner.tenant_id
                    ),
                },
            }),
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    async fn record_execution(
        &self,
        function: &Function,
        id: Uuid,
        at: chrono::DateTime<Utc>,
        input: &Value,
        result: &Result<RunOutput, RunError>,
        duration_ms: u64,
        config: &RunCodeConfig,
        quota: Value,
    ) -> Result<Value, RunCodeError> {
        let mut content = json!({
            "status": if result.is_ok() { "ok" } else { "error" },
            "duration_ms": duration_ms,
            "function": {"id": function.id, "seq": function.seq, "curr_hash": function.curr_hash},
            "limits": {
                "time_ms": u64::try_from(config.limits.time.as_millis()).unwrap_or(u64::MAX),
                "memory_bytes": config.limits.memory_bytes,
            },
            "quota": quota,
        });
        match result {
            Ok(out) => {
                content["output"] = out.output.clone();
                content["logs"] = json!(out.logs);
                content["logs_truncated"] = json!(out.logs_truncated);
            }
            Err(e) => {
                let mut error = json!({"kind": error_kind(e), "message": clip(&e.to_string())});
                if let RunError::Thrown {
                    stack: Some(stack), ..
                } = e
                {
                    error["stack"] = json!(clip(stack));
                }
                content["error"] = error;
                content["logs"] = json!([]);
            }
        }
        let span = |content: Value| {
            json!({
                "id": id,
                "entity_type": "execution",
                "visibility": function.visibility,
                "parent_id": function.id,
                "related_to": [function.id],
                "when": format_time(at),
                "who": "run_code",
                "did": "ran",
                "this": function.name,
                "confirmed_by": "run_code sandbox",
                "if_ok": "keep the output",
                "if_doubt": "keep the error for the owner",
                "if_not": "keep the error for the owner",
                "status": content["status"].clone(),
                "input": input,
                "duration_ms": duration_ms,
                "content": content,
            })
        };
        let mut full = span(content.clone());
        if serde_json::to_vec(&full).map_or(usize::MAX, |v| v.len()) > MAX_SPAN_BYTES {
            // The run happened: record that it did even if its payload cannot be kept.
            content["output"] = Value::Null;
            content["logs"] = json!([]);
            content["withheld"] = json!(
                "output and logs withheld: the execution span would exceed the ledger's span size limit"
            );
            full = span(content);
        }
        self.record("execution", &function.owner, full).await
    }

    async fn record_slow(
        &self,
        function: &Function,
        execution: Uuid,
        duration_ms: u64,
        slow_ms: u64,
    ) -> Result<Value, RunCodeError> {
        self.record(
            "status_patch",
            &function.owner,
            json!({
                "entity_type": "status_patch",
                "visibility": function.visibility,
                "parent_id": execution,
                "related_to": [execution, function.id],
                "when": format_time((self.clock)()),
                "who": "run_code",
                "did": "marked slow",
                "this": format!("execution {execution}"),
                "confirmed_by": "policy.slow_ms",
                "if_ok": "look at the function's cost",
                "if_doubt": "keep the mark",
                "if_not": "keep the mark",
                "status": "slow",
                "content": {"target": execution, "field": "status", "value": "slow",
                            "duration_ms": duration_ms, "slow_ms": slow_ms},
            }),
        )
        .await
    }
}

/// A stable, machine-readable name for each way a run can fail.
pub fn error_kind(e: &RunError) -> &'static str {
    match e {
        RunError::TimeLimit { .. } => "time_limit",
        RunError::MemoryLimit { .. } => "memory_limit",
        RunError::StackLimit { .. } => "stack_limit",
        RunError::OutputTooLarge { .. } => "output_too_large",
        RunError::NotSerializable(_) => "not_serializable",
        RunError::Compile(_) => "compile",
        RunError::NoMain => "no_main",
        RunError::NeverSettled => "never_settled",
        RunError::Thrown { .. } => "thrown",
        RunError::InvalidLimits(_) => "invalid_limits",
        RunError::Engine(_) => "engine",
    }
}

/// Keeps the first few KiB of a text, on a character boundary.
fn clip(text: &str) -> String {
    if text.len() <= ERROR_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = ERROR_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_texts_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(5000);
        let c = clip(&long);
        assert!(
            c.len() < 4200 && c.ends_with("(10000 bytes in all)"),
            "{}",
            c.len()
        );
        assert_eq!(clip("short"), "short");
    }
}
