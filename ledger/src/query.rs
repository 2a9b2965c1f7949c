//! Read filters shared by the CLI, the HTTP API and (later) the model's `query_ledger` tool.
//! Every field is a typed value that the stores bind as a parameter; nothing here is SQL.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
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

    /// The same predicate the stores run in SQL, applied to a span's view (for live streams,
    /// which filter spans already fetched). Visibility is not part of it: check that first.
    pub fn matches(&self, view: &Value) -> bool {
        let text = |k: &str, want: &Option<String>| match want {
            None => true,
            Some(w) => view.get(k).and_then(Value::as_str) == Some(w.as_str()),
        };
        let at = view
            .get("at")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.to_utc());
        self.id.is_none_or(|id| {
            view.get("id").and_then(Value::as_str) == Some(id.to_string().as_str())
        }) && text("entity_type", &self.entity_type)
            && text("who", &self.who)
            && text("did", &self.did)
            && text("this", &self.this)
            && text("status", &self.status)
            && text("tenant_id", &self.tenant_id)
            && text("owner_id", &self.owner_id)
            && text("trace_id", &self.trace_id)
            && self.since.is_none_or(|s| at.is_some_and(|a| a >= s))
            && self.until.is_none_or(|u| at.is_some_and(|a| a < u))
            && self.related_to.is_none_or(|r| {
                view.get("related_to")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(r.to_string().as_str())))
            })
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

/// A `since`/`until` bound that is neither a date nor an RFC 3339 instant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither a date (YYYY-MM-DD) nor an RFC 3339 instant")]
pub struct InstantError(pub String);

/// Accepts `2026-11-01` (midnight UTC) or a full RFC 3339 instant: the bounds of a [`Filter`]
/// as the CLI and the HTTP API take them.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, InstantError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| InstantError(s.to_string()))
}

/// A newly stored span as the live-stream hub reads it (administrative: unfiltered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRow {
    pub ingest_id: i64,
    pub tenant_id: String,
    pub owner_id: String,
    pub visibility: String,
    pub span: StoredSpan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_instants_parse_to_utc() {
        assert_eq!(
            parse_instant("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-11-01T12:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T11:00:00+00:00"
        );
        assert!(parse_instant("yesterday").is_err());
    }
}
