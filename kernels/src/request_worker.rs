//! The `request_worker` kernel (DESIGN §5; seed 001, §12.3): executes `request` spans through
//! [`RunCode`], oldest first, exactly once across processes.
//!
//! # A request's life, as seqs of its span
//!
//! `queued` (seq 0, from [`crate::observer_bot`] or anyone: `content.function` names the
//! `function` span, `content.input` its input) → `claimed` (`content.claim = {by, until,
//! attempt}`) → `done`, `failed`, `blocked` (quota) or `refused` (`run_code` would not run it),
//! with `content.execution` naming the `execution` span. Every step is the span's next seq,
//! appended as the request's owner, and the store accepts a given seq once: of several
//! processes claiming seq 1, one wins and runs the function; the others get a `SeqConflict` and
//! move to the next request. No lock is held while code runs.
//!
//! # A claimer that dies
//!
//! A claim holds until `until` (`lease_ms`, and never less than `run_code`'s `time_ms` plus two
//! seconds, so a live run always finishes inside its lease). After that, any worker may claim
//! the request again (attempt + 1). Before running it, that worker looks for an `execution` of
//! the function since the lapsed claim whose input names this request (every run gets
//! `{"request": id, "scheduled_at": …, "input": content.input}` as its input, and `run_code`
//! records the input): if the dead process did run it, the request is completed with that
//! execution instead of running again. So a process killed at any point leads to exactly one
//! execution: killed before its run's execution span was written, the run is redone; after, it
//! is found.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::error::AppendError;
use ledger::query::MAX_LIMIT;
use ledger::span::format_time;
use ledger::store::{self, SYSTEM_TENANT};
use ledger::{Draft, Filter, Principal, Store, StoreError};
use serde_json::{Value, json};
use thiserror::Error;
use uuid::Uuid;

use crate::kernel::Kernel;
pub use crate::kernel::request_worker::{WorkerConfig, default_config};
use crate::kernel::run_code::RunCodeKernel;
use crate::observer_bot::REQUEST;
use crate::run_code::{Outcome, RunCode, RunCodeError};
use crate::sandbox::Clock;
use crate::stage0;

/// The user the worker looks for requests as, in each tenant.
pub const WORKER_USER: &str = "request_worker";

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("cannot record the request's {what} seq: {reason}")]
    Record { what: &'static str, reason: String },
    #[error(transparent)]
    Stage0(#[from] stage0::Stage0Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Requests this process claimed.
    pub claimed: usize,
    /// Functions it ran.
    pub executed: usize,
    /// Lapsed claims whose execution was found, not re-run.
    pub recovered: usize,
    /// Claims lost to another process.
    pub lost: usize,
}

/// A request's newest version.
struct Pending {
    id: Uuid,
    seq: i64,
    owner: Principal,
    view: Value,
    /// The lapsed claim's time and attempt, when this is a retry.
    lapsed: Option<(DateTime<Utc>, i64)>,
}

/// The kernel. One per process; it remembers, per tenant, the position before which every
/// request is finished, so a pass does not re-read history.
pub struct RequestWorker {
    store: Arc<dyn Store>,
    clock: Clock,
    run_code: RunCode,
    instance: String,
    low_water: Mutex<HashMap<String, i64>>,
}

impl RequestWorker {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            run_code: RunCode::new(store.clone()),
            store,
            clock: Arc::new(Utc::now),
            instance: format!("pid {} / {}", std::process::id(), Uuid::now_v7()),
            low_water: Mutex::new(HashMap::new()),
        }
    }

    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.run_code = RunCode::new(self.store.clone()).with_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// The name this process signs its claims with.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// One pass: claims and runs up to `batch` requests, oldest first, tenant by tenant.
    #[tracing::instrument(skip_all, name = "request_worker.pass")]
    pub async fn pass_with(&self, config: &WorkerConfig) -> Result<WorkerReport, WorkerError> {
        let (_, run_code) =
            stage0::inspect_kernel(self.store.as_ref(), RunCodeKernel::NAME).await?;
        let run_time = RunCodeKernel::read(&run_code.config)
            .map(|c| c.limits.time)
            .unwrap_or(Duration::from_secs(5));
        let lease = config.lease.max(run_time + Duration::from_secs(2));
        let mut report = WorkerReport::default();
        for tenant in self.store.tenants().await? {
            if tenant == SYSTEM_TENANT {
                continue;
            }
            for p in self.pending(&tenant).await? {
                if report.claimed >= config.batch {
                    return Ok(report);
                }
                self.work(p, lease, &mut report).await?;
            }
        }
        Ok(report)
    }

    /// The tenant's claimable requests (queued, or claimed with a lapsed lease), oldest first.
    async fn pending(&self, tenant: &str) -> Result<Vec<Pending>, WorkerError> {
        let reader = Principal::new(WORKER_USER, tenant);
        let from = self
            .low_water
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).copied());
        let mut filter = Filter {
            entity_type: Some(REQUEST.into()),
            status: Some("queued".into()),
            tenant_id: Some(tenant.into()),
            after: from,
            limit: Some(MAX_LIMIT),
            ..Filter::default()
        };
        let now = (self.clock)();
        let mut out = Vec::new();
        let mut all_finished_through = from;
        let mut unfinished = false;
        loop {
            let page = self.store.query(&reader, &filter).await?;
            for row in &page.rows {
                let Some(id) = row
                    .span
                    .to_view()
                    .ok()
                    .and_then(|v| v.get("id")?.as_str()?.parse::<Uuid>().ok())
                else {
                    continue;
                };
                let Some(view) = self
                    .store
                    .get(&reader, id, None)
                    .await?
                    .and_then(|s| s.to_view().ok())
                else {
                    continue;
                };
                let status = view.get("status").and_then(Value::as_str).unwrap_or("");
                if matches!(status, "done" | "failed" | "blocked" | "refused") {
                    if !unfinished {
                        all_finished_through = Some(row.ingest_id);
                    }
                    continue;
                }
                // Whatever is not finished stops the low-water mark, claimable or not.
                unfinished = true;
                let lapsed = if status == "claimed" {
                    match lapsed_claim(&view, now) {
                        Some(l) => Some(l),
                        None => continue, // held by a live claim
                    }
                } else {
                    None
                };
                let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or_default();
                out.push(Pending {
                    id,
                    seq: view.get("seq").and_then(Value::as_i64).unwrap_or(0),
                    owner: Principal::new(text("owner_id"), text("tenant_id")),
                    lapsed,
                    view,
                });
            }
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        if let (Some(w), Ok(mut m)) = (all_finished_through, self.low_water.lock()) {
            m.insert(tenant.to_string(), w);
        }
        Ok(out)
    }
}

/// The time and attempt of a claim whose lease has passed; `None` while it holds.
fn lapsed_claim(view: &Value, now: DateTime<Utc>) -> Option<(DateTime<Utc>, i64)> {
    let time = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.to_utc())
    };
    let claim = view.pointer("/content/claim");
    let until = time(claim.and_then(|c| c.get("until")));
    if until.is_some_and(|u| u > now) {
        return None;
    }
    let at = time(view.get("at")).unwrap_or(now);
    let attempt = claim
        .and_then(|c| c.get("attempt"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    Some((at, attempt))
}

impl RequestWorker {
    /// Claims one request and runs it.
    async fn work(
        &self,
        p: Pending,
        lease: Duration,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let now = (self.clock)();
        let attempt = p.lapsed.map_or(1, |(_, a)| a + 1);
        let until = now + TimeDelta::from_std(lease).unwrap_or(TimeDelta::seconds(30));
        let claim = json!({"by": self.instance, "until": format_time(until), "attempt": attempt});
        let mut content = p.view.get("content").cloned().unwrap_or(Value::Null);
        if !content.is_object() {
            content = json!({});
        }
        content["claim"] = claim;
        if !self.next_seq(&p, p.seq + 1, "claimed", &content).await? {
            report.lost += 1;
            return Ok(());
        }
        report.claimed += 1;
        let function = content
            .get("function")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok());
        let Some(function) = function else {
            content["error"] = json!("content.function does not name a function span");
            self.next_seq(&p, p.seq + 2, "refused", &content).await?;
            return Ok(());
        };
        if let Some((since, _)) = p.lapsed
            && let Some(execution) = self.earlier_execution(&p, function, since).await?
        {
            let ok = execution.get("status").and_then(Value::as_str) == Some("ok");
            content["execution"] = execution.get("id").cloned().unwrap_or(Value::Null);
            content["recovered"] = json!(true);
            self.next_seq(&p, p.seq + 2, if ok { "done" } else { "failed" }, &content)
                .await?;
            report.recovered += 1;
            return Ok(());
        }
        let input = json!({
            "request": p.id,
            "scheduled_at": content.get("scheduled_at").cloned().unwrap_or(Value::Null),
            "input": content.get("input").cloned().unwrap_or(Value::Null),
        });
        let status = match self.run_code.run(&p.owner, function, input).await {
            Ok(Outcome::Executed { execution, ok, .. }) => {
                report.executed += 1;
                content["execution"] = execution.get("id").cloned().unwrap_or(Value::Null);
                if ok { "done" } else { "failed" }
            }
            Ok(Outcome::Blocked { violation }) => {
                content["policy_violation"] = violation.get("id").cloned().unwrap_or(Value::Null);
                "blocked"
            }
            Err(RunCodeError::Store(e)) => return Err(e.into()),
            Err(e) => {
                content["error"] = json!(e.to_string());
                "refused"
            }
        };
        if !self.next_seq(&p, p.seq + 2, status, &content).await? {
            tracing::warn!(request = %p.id, "the claim lapsed before the outcome was recorded");
        }
        Ok(())
    }

    /// An execution of `function` since `since` whose input names this request.
    async fn earlier_execution(
        &self,
        p: &Pending,
        function: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Option<Value>, WorkerError> {
        let mut filter = Filter {
            entity_type: Some("execution".into()),
            related_to: Some(function),
            since: Some(since - TimeDelta::seconds(1)),
            limit: Some(MAX_LIMIT),
            ..Filter::default()
        };
        let want = json!(p.id);
        loop {
            let page = self.store.query(&p.owner, &filter).await?;
            for row in &page.rows {
                if let Ok(v) = row.span.to_view()
                    && v.pointer("/input/request") == Some(&want)
                {
                    return Ok(Some(v));
                }
            }
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => return Ok(None),
            }
        }
    }

    /// Appends the request's `seq` with `status` and `content`; `false` if another process got
    /// that seq first.
    async fn next_seq(
        &self,
        p: &Pending,
        seq: i64,
        status: &'static str,
        content: &Value,
    ) -> Result<bool, WorkerError> {
        let mut v = p.view.clone();
        let Some(obj) = v.as_object_mut() else {
            return Err(WorkerError::Record {
                what: status,
                reason: "the request is not an object".into(),
            });
        };
        // Keep the request's own fields; drop what the ledger computes.
        for k in [
            "seq",
            "chain_pos",
            "prev_hash",
            "curr_hash",
            "body_digest",
            "recorded_at",
            "signature",
            "public_key",
            "signed_by",
            "idempotency_key",
            "at",
            "client_digest",
            "client_signature",
            "client_public_key",
            "declared_status",
            "ghost_reason",
        ] {
            obj.remove(k);
        }
        obj.insert("seq".into(), json!(seq));
        obj.insert("status".into(), json!(status));
        obj.insert("when".into(), json!(format_time((self.clock)())));
        obj.insert("who".into(), json!(WORKER_USER));
        obj.insert("content".into(), content.clone());
        let draft = Draft::from_value(v, &p.owner, &[], (self.clock)()).map_err(|e| {
            WorkerError::Record {
                what: status,
                reason: e.to_string(),
            }
        })?;
        match store::append(self.store.as_ref(), &p.owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(_)) => Ok(true),
            Some(Err(AppendError::SeqConflict { .. })) => Ok(false),
            Some(Err(e)) => Err(WorkerError::Record {
                what: status,
                reason: e.to_string(),
            }),
            None => Err(WorkerError::Record {
                what: status,
                reason: "the store reported no result".into(),
            }),
        }
    }
}
