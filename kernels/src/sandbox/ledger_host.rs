//! The [`Host`] that lets a function read and write the ledger as its owner: queries run with
//! the owner's visibility and appends go through [`Draft::from_value`] with the owner as the
//! principal, so a function can do exactly what its owner could do over the API, and writing
//! into another tenant fails like any foreign write.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger::query::MAX_LIMIT;
use ledger::{Draft, Filter, Order, Principal, Store};
use serde_json::{Map, Value};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::Host;

/// The injectable source of "now" (DESIGN: one clock, fixed by tests and the Midnight Ruler).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Ledger access for one function run, as `owner`.
pub struct LedgerHost {
    store: Arc<dyn Store>,
    owner: Principal,
    runtime: Handle,
    clock: Clock,
}

impl LedgerHost {
    /// `runtime` drives the store's futures; the sandbox thread blocks on it (see the module
    /// documentation of [`super`] for why that cannot deadlock).
    pub fn new(store: Arc<dyn Store>, owner: Principal, runtime: Handle) -> Self {
        Self {
            store,
            owner,
            runtime,
            clock: Arc::new(Utc::now),
        }
    }

    /// Replaces the wall clock (`ctx.now()` and the default `when` of appended spans).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl Host for LedgerHost {
    fn query(&self, spec: Value) -> Result<Vec<Value>, String> {
        let filter = filter_from_spec(&spec)?;
        let page = self
            .runtime
            .block_on(self.store.query(&self.owner, &filter))
            .map_err(|e| e.to_string())?;
        page.rows.iter().map(|row| row.span.to_view()).collect()
    }

    fn append(&self, span: Value) -> Result<Value, String> {
        // No trusted client keys: a function cannot present someone's signature; its spans are
        // signed by the node like every other append.
        let draft =
            Draft::from_value(span, &self.owner, &[], self.now()).map_err(|e| e.to_string())?;
        let results = self
            .runtime
            .block_on(ledger::store::append(
                self.store.as_ref(),
                &self.owner,
                vec![draft],
            ))
            .map_err(|e| e.to_string())?;
        match results.into_iter().next() {
            Some(Ok(appended)) => serde_json::to_value(appended).map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the store reported no result for the span".into()),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

/// Fields a query spec may hold.
const SPEC_FIELDS: [&str; 11] = [
    "id",
    "entity_type",
    "who",
    "did",
    "this",
    "status",
    "since",
    "until",
    "related_to",
    "order",
    "limit",
];

/// Maps a function's query spec to a [`Filter`]: `entity_type`, `who`, `did`, `this`, `status`
/// (exact strings), `since` (inclusive) and `until` (exclusive) as RFC 3339, `id` and
/// `related_to` as UUIDs, `order` (`"asc"`/`"desc"`), `limit` (1–1000, default 100). Unknown
/// fields and wrong types are refused, so a typo does not silently widen the query. Who may see
/// what is not part of the spec: that is the owner's visibility.
pub fn filter_from_spec(spec: &Value) -> Result<Filter, String> {
    let empty = Map::new();
    let obj = match spec {
        Value::Null => &empty,
        Value::Object(o) => o,
        _ => return Err("the query spec must be an object".into()),
    };
    if let Some(unknown) = obj.keys().find(|k| !SPEC_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown query field `{unknown}` (known: {})",
            SPEC_FIELDS.join(", ")
        ));
    }
    let text = |field: &str| -> Result<Option<String>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("query field `{field}` must be a string")),
        }
    };
    let time = |field: &str| -> Result<Option<DateTime<Utc>>, String> {
        text(field)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.to_utc())
                    .map_err(|_| format!("query field `{field}` must be an RFC 3339 timestamp"))
            })
            .transpose()
    };
    let uuid = |field: &str| -> Result<_, String> {
        text(field)?
            .map(|s| {
                Uuid::parse_str(&s).map_err(|_| format!("query field `{field}` must be a UUID"))
            })
            .transpose()
    };
    let order = match text("order")?.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(_) => return Err("query field `order` must be \"asc\" or \"desc\"".into()),
    };
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    format!("query field `limit` must be an integer from 1 to {MAX_LIMIT}")
                })?,
        ),
    };
    Ok(Filter {
        id: uuid("id")?,
        entity_type: text("entity_type")?,
        who: text("who")?,
        did: text("did")?,
        this: text("this")?,
        status: text("status")?,
        since: time("since")?,
        until: time("until")?,
        related_to: uuid("related_to")?,
        order,
        limit,
        ..Filter::default()
    })
}
