//! Read filters shared by the CLI, the HTTP API and (later) the model's `query_ledger` tool.
//! Every field is a typed value that the stores bind as a parameter; nothing here is SQL.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::span::StoredSpan;

/// Most spans one page may return.
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub id: Option<Uuid>,
    pub entity_type: Option<String>,
    pub who: Option<String>,
    pub did: Option<String>,
    pub this: Option<String>,
    pub status: Option<String>,
    pub tenant_id: Option<String>,
    pub owner_id: Option<String>,
    /// Inclusive lower bound on `at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `at`.
    pub until: Option<DateTime<Utc>>,
    pub related_to: Option<Uuid>,
    pub trace_id: Option<String>,
    /// Opaque position from a previous page (`Page::next_cursor`).
    pub after: Option<i64>,
    pub order: Order,
    pub limit: Option<i64>,
}

impl Filter {
    pub fn effective_limit(&self) -> i64 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// One span of a page, with its position in the store's ingest order (the cursor unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub ingest_id: i64,
    pub span: StoredSpan,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Present when more spans may follow; pass it back as `Filter::after`.
    pub next_cursor: Option<i64>,
}
