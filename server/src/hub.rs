//! The live-stream hub: one task reads newly stored spans once and fans them out to every
//! subscriber, which filters them by its own visibility. Subscribers that fall behind lose
//! events from a bounded channel (memory stays flat) and catch up from the store instead.
//!
//! New spans are found by tailing the store by `ingest_id`, woken by local appends, by
//! PostgreSQL `NOTIFY` (appends from other processes) and by a periodic tick. On PostgreSQL,
//! transactions may commit out of `ingest_id` order, so ids skipped over are remembered as gaps
//! and looked up by id until they appear (or expire), instead of re-reading a trailing window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ledger::Store;
use serde_json::Value;
use tokio::sync::{Notify, broadcast};

/// Events buffered per subscriber before it is told it lagged.
const CHANNEL: usize = 4096;
static MANIFEST_ID_TEXT: LazyLock<String> =
    LazyLock::new(|| ledger::store::MANIFEST_ID.to_string());

/// Rows read per tail query.
const PAGE: i64 = 1000;
/// Skipped ids remembered at most, and for how long (see [`Gaps`]).
const MAX_GAPS: usize = 10_000;
const GAP_TTL: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct HubEvent {
    pub ingest_id: i64,
    pub tenant_id: String,
    pub owner_id: String,
    pub visibility: ledger::Visibility,
    pub view: Value,
    /// The view as JSON text, serialised once for every subscriber.
    pub data: String,
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<HubEvent>>,
    wake: Arc<Notify>,
    /// The highest ingest id published so far; fresh subscribers start after it.
    published: Arc<AtomicI64>,
    /// Bumped whenever a manifest version goes by, so caches of it know to re-read.
    manifest: Arc<AtomicU64>,
}

impl Hub {
    /// Starts the hub from the store's current end (older spans come from backfill).
    pub async fn start(store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let (tx, _) = broadcast::channel(CHANNEL);
        let wake = Arc::new(Notify::new());
        let start = store.last_ingest_id().await?;
        store.watch_appends(wake.clone());
        let hub = Self {
            tx,
            wake,
            published: Arc::new(AtomicI64::new(start)),
            manifest: Arc::default(),
        };
        tokio::spawn(run(store, hub.clone(), start));
        Ok(hub)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.tx.subscribe()
    }

    pub fn manifest_generation(&self) -> u64 {
        self.manifest.load(Ordering::Acquire)
    }

    pub fn published_through(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// Called after local appends so subscribers hear of them without waiting for a tick.
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// Ids skipped over (not yet committed when higher ones were seen) and when they were first
/// missed. A gap that never fills (a rolled-back transaction consumed the id) is forgotten after
/// `GAP_TTL`; a span committing later than that reaches clients through `Last-Event-ID` resume.
struct Gaps {
    open: BTreeMap<i64, Instant>,
}

impl Gaps {
    fn note(&mut self, from: i64, to: i64, now: Instant) {
        // Bounded: a huge jump (ids consumed by a failed bulk insert) keeps only the newest.
        for id in (from.max(to - MAX_GAPS as i64)..to).rev() {
            self.open.entry(id).or_insert(now);
        }
        while self.open.len() > MAX_GAPS {
            self.open.pop_first();
        }
    }

    fn expire(&mut self, now: Instant) {
        self.open.retain(|_, at| now.duration_since(*at) < GAP_TTL);
    }

    fn ids(&self) -> Vec<i64> {
        self.open.keys().copied().collect()
    }
}

async fn run(store: Arc<dyn Store>, hub: Hub, mut newest: i64) {
    let mut gaps = Gaps {
        open: BTreeMap::new(),
    };
    loop {
        tokio::select! {
            _ = hub.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = Instant::now();
        gaps.expire(now);
        // Late commits first: they are older than anything the new page brings.
        if !gaps.open.is_empty() {
            match store.tail_ids(&gaps.ids()).await {
                Ok(rows) => {
                    for row in rows {
                        gaps.open.remove(&row.ingest_id);
                        publish(&hub, row);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stream hub cannot read late spans"),
            }
        }
        loop {
            let rows = match store.tail(newest, PAGE).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stream hub cannot read new spans");
                    break;
                }
            };
            let n = rows.len();
            for row in rows {
                if row.ingest_id > newest + 1 {
                    gaps.note(newest + 1, row.ingest_id, now);
                }
                newest = newest.max(row.ingest_id);
                publish(&hub, row);
            }
            if n < PAGE as usize {
                break;
            }
        }
    }
}

fn publish(hub: &Hub, row: ledger::query::TailRow) {
    let Ok(view) = row.span.to_view() else {
        return;
    };
    let Some(visibility) = ledger::Visibility::parse(&row.visibility) else {
        return;
    };
    if view.get("id").and_then(Value::as_str) == Some(MANIFEST_ID_TEXT.as_str()) {
        hub.manifest.fetch_add(1, Ordering::AcqRel);
    }
    let data = view.to_string();
    // No receivers is fine: nobody is listening right now.
    let _ = hub.tx.send(Arc::new(HubEvent {
        ingest_id: row.ingest_id,
        tenant_id: row.tenant_id,
        owner_id: row.owner_id,
        visibility,
        view,
        data,
    }));
    hub.published.fetch_max(row.ingest_id, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_ids_are_remembered_bounded_and_forgotten_after_the_ttl() {
        let t0 = Instant::now();
        let mut gaps = Gaps {
            open: BTreeMap::new(),
        };
        gaps.note(5, 8, t0);
        assert_eq!(gaps.ids(), vec![5, 6, 7]);
        gaps.note(1, 1 + 3 * MAX_GAPS as i64, t0);
        assert_eq!(gaps.open.len(), MAX_GAPS);
        assert_eq!(
            gaps.open.last_key_value().map(|(k, _)| *k),
            Some(3 * MAX_GAPS as i64)
        );
        gaps.expire(t0 + GAP_TTL);
        assert!(gaps.open.is_empty());
    }
}
