//! The live-stream hub: one task reads newly stored spans once and fans them out to every
//! subscriber, which filters them by its own visibility. Subscribers that fall behind lose
//! events from a bounded channel (memory stays flat) and catch up from the store instead.
//!
//! New spans are found by tailing the store by `ingest_id`, woken by local appends, by
//! PostgreSQL `NOTIFY` (appends from other processes) and by a periodic tick. On PostgreSQL,
//! transactions of different tenants may commit out of `ingest_id` order, so the hub re-reads a
//! trailing window and remembers which ids it has already published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ledger::Store;
use serde_json::Value;
use tokio::sync::{Notify, broadcast};

/// Events buffered per subscriber before it is told it lagged.
const CHANNEL: usize = 4096;
/// Ids re-read behind the newest one on PostgreSQL (see module docs).
const PG_WINDOW: i64 = 2048;
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct HubEvent {
    pub ingest_id: i64,
    pub tenant_id: String,
    pub owner_id: String,
    pub visibility: ledger::Visibility,
    pub view: Value,
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<HubEvent>>,
    wake: Arc<Notify>,
}

impl Hub {
    /// Starts the hub from the store's current end (older spans come from backfill).
    pub async fn start(store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let (tx, _) = broadcast::channel(CHANNEL);
        let wake = Arc::new(Notify::new());
        let start = latest_ingest_id(store.as_ref()).await?;
        store.watch_appends(wake.clone());
        let hub = Self { tx, wake };
        tokio::spawn(run(store, hub.clone(), start));
        Ok(hub)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.tx.subscribe()
    }

    /// Called after local appends so subscribers hear of them without waiting for a tick.
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

async fn latest_ingest_id(store: &dyn Store) -> anyhow::Result<i64> {
    let mut last = 0;
    // Walk forward in large steps; only done once at start-up.
    loop {
        let rows = store.tail(last, 10_000).await?;
        match rows.last() {
            Some(r) => last = r.ingest_id,
            None => return Ok(last),
        }
    }
}

async fn run(store: Arc<dyn Store>, hub: Hub, mut newest: i64) {
    let window = if store.backend() == "postgres" {
        PG_WINDOW
    } else {
        0
    };
    let mut published: BTreeSet<i64> = BTreeSet::new();
    // Spans already committed when the hub starts are history, not news: remember the ones
    // inside the re-read window so the first pass does not publish them.
    if window > 0
        && let Ok(rows) = store.tail((newest - window).max(0), window).await
    {
        published.extend(rows.iter().map(|r| r.ingest_id).filter(|i| *i <= newest));
    }
    loop {
        tokio::select! {
            _ = hub.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let mut from = (newest - window).max(0);
        loop {
            let rows = match store.tail(from, 1000).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stream hub cannot read new spans");
                    break;
                }
            };
            let n = rows.len();
            for row in rows {
                from = row.ingest_id;
                if row.ingest_id <= newest - window || !published.insert(row.ingest_id) {
                    continue;
                }
                newest = newest.max(row.ingest_id);
                let Ok(view) = row.span.to_view() else {
                    continue;
                };
                let Some(visibility) = ledger::Visibility::parse(&row.visibility) else {
                    continue;
                };
                // No receivers is fine: nobody is listening right now.
                let _ = hub.tx.send(Arc::new(HubEvent {
                    ingest_id: row.ingest_id,
                    tenant_id: row.tenant_id,
                    owner_id: row.owner_id,
                    visibility,
                    view,
                }));
            }
            if n < 1000 {
                break;
            }
        }
        let floor = newest - window;
        published = published.split_off(&floor);
    }
}
