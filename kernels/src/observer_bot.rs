//! The `observer_bot` kernel (DESIGN §5; seed 001, §12.2): turns scheduled functions into
//! `request` spans, which the `request_worker` kernel executes.
//!
//! A function is scheduled when the newest seq of its `function` span has `status =
//! "scheduled"` and `content.schedule = {"every_seconds": N, "input": …}` (N ≥ 1; `input` is
//! optional). Time is cut into slots of N seconds aligned on the Unix epoch, and each pass
//! appends the request of the current slot, as the function's owner, with the function's
//! visibility and the idempotency key `request:<function id>:<slot start>`: however many
//! processes observe, and however often, each (function, slot) gets exactly one request, and the
//! store's unique key is what decides it. Slots missed while no process ran are not made up
//! (a schedule is "every N seconds from now on", not a backlog to replay).
//!
//! Like the other kernels it finds functions as a member of each tenant, so a scheduled
//! function must be visible to the tenant (`tenant` or `public`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger::span::format_time;
use ledger::store::{self, SYSTEM_TENANT};
use ledger::{Draft, Filter, Principal, Store, StoreError};
use serde_json::{Value, json};
use thiserror::Error;
use uuid::Uuid;

pub use crate::kernel::observer_bot::{ObserverConfig, default_config};
use crate::sandbox::Clock;

/// The `entity_type` of requests.
pub const REQUEST: &str = "request";
/// The user the bot looks for functions as, in each tenant.
pub const OBSERVER_USER: &str = "observer_bot";

#[derive(Debug, Error)]
pub enum ObserverError {
    #[error("cannot record the request: {0}")]
    Record(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserverReport {
    /// Scheduled functions seen.
    pub scheduled: usize,
    /// Requests appended now (the others already existed for their slot).
    pub requested: usize,
    /// Functions whose `content.schedule` could not be read.
    pub invalid: usize,
}

/// A function's schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub every_seconds: i64,
    pub input: Value,
}

impl Schedule {
    /// Reads `content.schedule`.
    pub fn from_content(content: &Value) -> Result<Self, String> {
        let s = content
            .get("schedule")
            .ok_or("a scheduled function needs content.schedule = {\"every_seconds\": N}")?;
        let every = s
            .get("every_seconds")
            .and_then(Value::as_i64)
            .filter(|n| *n >= 1)
            .ok_or("content.schedule.every_seconds must be an integer of at least 1")?;
        Ok(Self {
            every_seconds: every,
            input: s.get("input").cloned().unwrap_or(Value::Null),
        })
    }

    /// The start of the slot holding `now`.
    pub fn slot_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let start = now.timestamp().div_euclid(self.every_seconds) * self.every_seconds;
        DateTime::from_timestamp(start, 0).unwrap_or(now)
    }
}

/// The kernel; it keeps no state between passes.
pub struct ObserverBot {
    store: Arc<dyn Store>,
    clock: Clock,
}

impl ObserverBot {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::new(Utc::now),
        }
    }

    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// One pass over every tenant: the current slot's request for each scheduled function.
    #[tracing::instrument(skip_all, name = "observer_bot.pass")]
    pub async fn pass_with(
        &self,
        config: &ObserverConfig,
    ) -> Result<ObserverReport, ObserverError> {
        let mut report = ObserverReport::default();
        let now = (self.clock)();
        for tenant in self.store.tenants().await? {
            if tenant == SYSTEM_TENANT {
                continue;
            }
            for f in self.scheduled(&tenant, config.batch).await? {
                report.scheduled += 1;
                let content = f.get("content").cloned().unwrap_or(Value::Null);
                let schedule = match Schedule::from_content(&content) {
                    Ok(s) => s,
                    Err(e) => {
                        report.invalid += 1;
                        tracing::warn!(function = ?f.get("id"), error = %e, "schedule not read");
                        continue;
                    }
                };
                if self.request(&f, &schedule, now).await? {
                    report.requested += 1;
                }
            }
        }
        Ok(report)
    }

    /// The newest version of each function of the tenant whose status is `scheduled`.
    async fn scheduled(&self, tenant: &str, limit: i64) -> Result<Vec<Value>, ObserverError> {
        let reader = Principal::new(OBSERVER_USER, tenant);
        let filter = Filter {
            entity_type: Some("function".into()),
            status: Some("scheduled".into()),
            tenant_id: Some(tenant.into()),
            limit: Some(limit),
            ..Filter::default()
        };
        let mut out: Vec<Value> = Vec::new();
        for row in self.store.query(&reader, &filter).await?.rows {
            let Some(id) = row
                .span
                .to_view()
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
                .and_then(|s| s.parse::<Uuid>().ok())
            else {
                continue;
            };
            if out.iter().any(|v| v.get("id") == Some(&json!(id))) {
                continue;
            }
            // A later seq may have unscheduled it: only the newest counts.
            if let Some(latest) = self.store.get(&reader, id, None).await?
                && let Ok(view) = latest.to_view()
                && view.get("status").and_then(Value::as_str) == Some("scheduled")
            {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Appends the slot's request; `true` if it is new.
    async fn request(
        &self,
        f: &Value,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<bool, ObserverError> {
        let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or_default();
        let owner = Principal::new(text("owner_id"), text("tenant_id"));
        let slot_at = schedule.slot_at(now);
        let id = text("id");
        let name = f.get("name").and_then(Value::as_str).unwrap_or(id);
        let v = json!({
            "entity_type": REQUEST,
            "visibility": text("visibility"),
            "idempotency_key": format!("request:{id}:{}", format_time(slot_at)),
            "parent_id": id,
            "related_to": [id],
            "when": format_time(slot_at),
            "who": OBSERVER_USER,
            "did": "scheduled a run",
            "this": format!("function {name}"),
            "confirmed_by": format!("schedule every {} s", schedule.every_seconds),
            "if_ok": "run it once",
            "if_doubt": "retry after the claim's lease",
            "if_not": "record the failure on the request",
            "status": "queued",
            "content": {
                "function": id,
                "function_seq": f.get("seq"),
                "scheduled_at": format_time(slot_at),
                "every_seconds": schedule.every_seconds,
                "input": schedule.input,
            },
        });
        let draft = Draft::from_value(v, &owner, &[], now)
            .map_err(|e| ObserverError::Record(e.to_string()))?;
        match store::append(self.store.as_ref(), &owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(a)) => Ok(!a.duplicate),
            Some(Err(e)) => Err(ObserverError::Record(e.to_string())),
            None => Err(ObserverError::Record("the store reported no result".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_on_the_epoch() {
        let s = Schedule::from_content(&json!({"schedule": {"every_seconds": 60}})).unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-20T10:00:59.900Z")
            .unwrap()
            .to_utc();
        assert_eq!(format_time(s.slot_at(t)), "2026-11-20T10:00:00.000000Z");
        assert!(Schedule::from_content(&json!({"schedule": {"every_seconds": 0}})).is_err());
        assert!(Schedule::from_content(&json!({})).is_err());
    }
}
