//! The one compiler from a validated [`QuerySpec`] (the model's `query_ledger` call) to
//! parameterized SQL, shared by both stores; each store supplies only a [`Dialect`]: how it reads
//! JSON, spells booleans, finds substrings, tests list membership and binds values.
//!
//! The model is untrusted input, and this is where its query becomes SQL, so the argument for
//! why that is safe lives here:
//!
//! - Nothing the model sends becomes SQL text. Every fragment pushed below, or by a `Dialect`,
//!   is a fixed string chosen by the spec's typed fields (closed field and operator lists, see
//!   `spec.rs`); every value, every JSON key and every JSON path is a bound parameter. The
//!   SQLite paths are bound `$."key"…` strings built only from keys the spec grammar validated
//!   (`[A-Za-z0-9_]{1,64}`, so the quoting cannot be escaped).
//! - Visibility: every query restricts `s` with [`Dialect::push_visible`] for the caller, and
//!   `latest_only` picks the newest version among the versions the caller may see (`s2`, under
//!   the same predicate), as `get` does. On PostgreSQL row level security does this for every
//!   table and the predicate is `true`; on SQLite it is the same predicate `query` applies.
//! - Redaction: a condition on a body field (`who`, `did`, `this`, `name`, `content.…`,
//!   `metadata.…`) never matches a redacted span, group keys of body fields are null for one,
//!   and a version appended after the redaction never hands out its body ([`rows`]).
//! - Cost: at most [`MAX_CONDITIONS`](crate::spec::MAX_CONDITIONS) conditions and one bound
//!   list per type for `in`; the stores run the statement read-only, under the spec's row
//!   limit (`limit + 1` rows are fetched to tell truncation) and its time limit ([`bounded`]).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Database, QueryBuilder};

use super::redaction_columns;
use crate::error::StoreError;
use crate::query::Order;
use crate::span::{Principal, StoredSpan};
use crate::spec::{CmpOp, Condition, Field, Output, QuerySpec, Scalar, SpecResult, Test};

/// Extra time the stores allow around the database's own limit before abandoning the call
/// outright (waiting for a connection counts against it too).
const SPEC_GRACE: Duration = Duration::from_millis(500);

/// The values of an `in` condition of one type, bound as one parameter so the statement has a
/// fixed number of placeholders.
pub(crate) enum List {
    Texts(Vec<String>),
    Numbers(Vec<f64>),
    Times(Vec<DateTime<Utc>>),
}

/// What differs between the stores' SQL. Implementations push only fixed fragments and binds.
pub(crate) trait Dialect: Database {
    /// Prefix of the ledger's tables (`ledger.` on PostgreSQL).
    const SCHEMA: &'static str;
    const TRUE: &'static str;
    const FALSE: &'static str;
    /// A text NULL.
    const NULL_TEXT: &'static str;
    /// Follows a text operand so `lt`/`gt` compare bytes on both stores.
    const BYTE_ORDER: &'static str;
    /// The function giving the 1-based position of a substring, 0 when absent.
    const POSITION: &'static str;
    /// `s.at` as a JSON string.
    const AT_AS_JSON: &'static str;

    /// Restricts the spans aliased `alias` to those `principal` may see.
    fn push_visible(qb: &mut QueryBuilder<Self>, alias: &'static str, principal: &Principal);
    /// Whatever joins the `push_json_*` methods need (added only when the spec reads the body).
    fn push_body_join(qb: &mut QueryBuilder<Self>);
    /// The JSON string at `keys` in the body as text, NULL unless it is a string.
    fn push_json_text(qb: &mut QueryBuilder<Self>, keys: &[String]);
    /// The JSON number at `keys`, NULL unless it is a number.
    fn push_json_number(qb: &mut QueryBuilder<Self>, keys: &[String]);
    /// `'true'`/`'false'` for a JSON boolean at `keys`, NULL when absent and something else (or
    /// NULL) for other types.
    fn push_json_bool(qb: &mut QueryBuilder<Self>, keys: &[String]);
    /// Whether a value other than JSON null is at `keys` (never NULL, so `NOT` of it is safe).
    fn push_json_present(qb: &mut QueryBuilder<Self>, keys: &[String]);
    /// The value at `keys` as JSON text, NULL when missing or null.
    fn push_json_group_key(qb: &mut QueryBuilder<Self>, keys: &[String]);
    /// The (non-NULL) text column `col` as a JSON string.
    fn push_json_quote(qb: &mut QueryBuilder<Self>, col: &'static str);
    /// ` = ANY(…)` / ` IN (…)`: membership in one bound list.
    fn push_in(qb: &mut QueryBuilder<Self>, list: List);
    fn bind_text(qb: &mut QueryBuilder<Self>, v: String);
    fn bind_int(qb: &mut QueryBuilder<Self>, v: i64);
    /// A number, compared numerically.
    fn bind_number(qb: &mut QueryBuilder<Self>, v: f64);
    /// An instant, comparable with `s.at`.
    fn bind_time(qb: &mut QueryBuilder<Self>, v: DateTime<Utc>);
}

/// A compiled spec: the statement, and by its variant how its rows read.
pub(crate) enum Compiled<D: Database> {
    /// `ingest_id, envelope, body, curr_hash, signature` and the redaction columns: up to `limit + 1` rows
    /// (the extra one tells truncation); hand them to [`rows`].
    Rows(QueryBuilder<D>),
    /// One `count(*)`.
    Count(QueryBuilder<D>),
    /// `(key as JSON text or NULL, count)`; hand them to [`groups`].
    Groups(QueryBuilder<D>),
}

/// Compiles `spec` for `principal`.
pub(crate) fn compile<D: Dialect>(spec: &QuerySpec, principal: &Principal) -> Compiled<D> {
    match spec.output() {
        Output::Rows => {
            let mut qb = QueryBuilder::new(concat!(
                "SELECT s.ingest_id, s.envelope, b.body, s.curr_hash, s.signature",
                redaction_columns!()
            ));
            push_from(&mut qb, spec, principal, true);
            qb.push(match spec.order() {
                Order::Asc => " ORDER BY s.at ASC, s.id ASC, s.seq ASC LIMIT ",
                Order::Desc => " ORDER BY s.at DESC, s.id DESC, s.seq DESC LIMIT ",
            });
            D::bind_int(&mut qb, spec.limit() + 1);
            Compiled::Rows(qb)
        }
        Output::Count => {
            let mut qb = QueryBuilder::new("SELECT count(*)");
            push_from(&mut qb, spec, principal, false);
            Compiled::Count(qb)
        }
        Output::Groups(field) => {
            let mut qb = QueryBuilder::new("SELECT g.k, g.n FROM (SELECT ");
            push_group_key(&mut qb, field);
            qb.push(" AS k, count(*) AS n");
            push_from(&mut qb, spec, principal, false);
            qb.push(" GROUP BY 1) g ORDER BY g.n DESC, (g.k IS NULL), g.k")
                .push(D::BYTE_ORDER)
                .push(" LIMIT ");
            D::bind_int(&mut qb, spec.limit());
            Compiled::Groups(qb)
        }
    }
}

/// The rows of [`Compiled::Rows`] as the result: bodies of redacted spans withheld (a version
/// appended after its span was redacted still has a body row), cut to the limit.
pub(crate) fn rows(spec: &QuerySpec, spans: Vec<StoredSpan>) -> SpecResult {
    let mut spans: Vec<StoredSpan> = spans
        .into_iter()
        .map(|mut span| {
            if span.redacted_by.is_some() {
                span.body = None;
            }
            span
        })
        .collect();
    let truncated = spans.len() as i64 > spec.limit();
    spans.truncate(spec.limit() as usize);
    SpecResult::Rows { spans, truncated }
}

/// The rows of [`Compiled::Groups`] as the result.
pub(crate) fn groups(rows: Vec<(Option<String>, i64)>) -> Result<SpecResult, StoreError> {
    let mut groups = Vec::with_capacity(rows.len());
    for (key, n) in rows {
        let key = match key {
            None => Value::Null,
            Some(k) => serde_json::from_str(&k)
                .map_err(|e| StoreError::Corrupt(format!("group key `{k}`: {e}")))?,
        };
        groups.push((key, n));
    }
    Ok(SpecResult::Groups(groups))
}

/// Runs `run` under the spec's time limit (plus a grace for the database's own limit to fire
/// first); running out of time is [`timed_out`].
pub(crate) async fn bounded(
    spec: &QuerySpec,
    run: impl Future<Output = Result<SpecResult, StoreError>>,
) -> Result<SpecResult, StoreError> {
    tokio::time::timeout(spec.timeout() + SPEC_GRACE, run)
        .await
        .unwrap_or_else(|_| Err(timed_out(spec.timeout())))
}

/// The error of a query that ran out of time: `Io` of kind `TimedOut`, so callers can tell it
/// from a broken store and tell the model to narrow its query.
pub(crate) fn timed_out(limit: Duration) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "query_ledger ran out of time ({} ms): narrow it with entity_type, since/until or \
             exact matches, or lower the limit",
            limit.as_millis()
        ),
    ))
}

/// The visible spans joined with their bodies and redactions, filtered by the spec; with
/// `proofs`, also the redaction spans that the rows' redaction claims name.
fn push_from<D: Dialect>(
    qb: &mut QueryBuilder<D>,
    spec: &QuerySpec,
    principal: &Principal,
    proofs: bool,
) {
    let t = D::SCHEMA;
    qb.push(" FROM ").push(t).push("spans s LEFT JOIN ").push(t);
    qb.push("span_bodies b ON b.id = s.id AND b.seq = s.seq LEFT JOIN ")
        .push(t);
    qb.push("redactions r ON r.target_id = s.id");
    if proofs {
        qb.push(" LEFT JOIN ")
            .push(t)
            .push("spans rs ON rs.id = r.redaction_id AND rs.seq = 0");
    }
    let reads_body = |f: &Field| matches!(f, Field::Body(_));
    if spec.conditions().iter().any(|c| reads_body(&c.field))
        || matches!(spec.output(), Output::Groups(f) if reads_body(f))
    {
        D::push_body_join(qb);
    }
    qb.push(" WHERE ");
    D::push_visible(qb, "s", principal);
    if spec.latest_only() {
        qb.push(" AND NOT EXISTS (SELECT 1 FROM ").push(t);
        qb.push("spans s2 WHERE s2.id = s.id AND s2.seq > s.seq AND ");
        D::push_visible(qb, "s2", principal);
        qb.push(")");
    }
    for c in spec.conditions() {
        push_condition(qb, c);
    }
}

/// The text column behind a field, if it is one.
fn column(field: &Field) -> Option<&'static str> {
    match field {
        Field::EntityType => Some("s.entity_type"),
        Field::Status => Some("s.status"),
        Field::OwnerId => Some("s.owner_id"),
        Field::Who => Some("b.who"),
        Field::Did => Some("b.did"),
        Field::This => Some("b.this"),
        Field::At | Field::Body(_) => None,
    }
}

/// Body fields vanish with redaction: conditions on them must never match a redacted span.
fn guarded(field: &Field) -> bool {
    matches!(
        field,
        Field::Who | Field::Did | Field::This | Field::Body(_)
    )
}

fn push_condition<D: Dialect>(qb: &mut QueryBuilder<D>, c: &Condition) {
    qb.push(" AND ");
    let guarded = guarded(&c.field);
    if guarded {
        qb.push("(b.body IS NOT NULL AND r.redaction_id IS NULL AND ");
    }
    match &c.test {
        Test::Cmp(CmpOp::Ne, v) => {
            qb.push("NOT COALESCE(");
            push_cmp(qb, &c.field, CmpOp::Eq, v);
            qb.push(", ").push(D::FALSE).push(")");
        }
        Test::Cmp(op, v) => push_cmp(qb, &c.field, *op, v),
        Test::In(vs) => push_in(qb, &c.field, vs),
        Test::Contains(needle) => {
            // A position function, not LIKE: the needle has no wildcards to escape.
            qb.push("COALESCE(").push(D::POSITION).push("(lower(");
            match &c.field {
                Field::Body(keys) => D::push_json_text(qb, keys),
                f => {
                    qb.push(column(f).unwrap_or(D::NULL_TEXT));
                }
            }
            qb.push("), lower(");
            D::bind_text(qb, needle.clone());
            qb.push(")) > 0, ").push(D::FALSE).push(")");
        }
        Test::Exists => push_present(qb, &c.field),
        Test::Missing => {
            qb.push("NOT ");
            push_present(qb, &c.field);
        }
    }
    if guarded {
        qb.push(")");
    }
}

/// A comparison (possibly NULL when the field is absent or of another type). Text compares
/// bytewise on both stores ([`Dialect::BYTE_ORDER`]).
fn push_cmp<D: Dialect>(qb: &mut QueryBuilder<D>, field: &Field, op: CmpOp, value: &Scalar) {
    match (field, value) {
        (Field::At, Scalar::Time(t)) => {
            qb.push("(s.at").push(op.sql());
            D::bind_time(qb, *t);
        }
        (Field::Body(keys), Scalar::Text(v)) => {
            qb.push("(");
            D::push_json_text(qb, keys);
            qb.push(D::BYTE_ORDER).push(op.sql());
            D::bind_text(qb, v.clone());
        }
        (Field::Body(keys), Scalar::Number(n)) => {
            qb.push("(");
            D::push_json_number(qb, keys);
            qb.push(op.sql());
            D::bind_number(qb, *n);
        }
        (Field::Body(keys), Scalar::Bool(b)) => {
            qb.push("(");
            D::push_json_bool(qb, keys);
            qb.push(op.sql());
            D::bind_text(qb, b.to_string());
        }
        (f, Scalar::Text(v)) => match column(f) {
            Some(col) => {
                qb.push("(").push(col).push(D::BYTE_ORDER).push(op.sql());
                D::bind_text(qb, v.clone());
            }
            None => {
                qb.push(D::FALSE);
                return;
            }
        },
        // Combinations validation rules out (numbers on text columns, …) match nothing.
        _ => {
            qb.push(D::FALSE);
            return;
        }
    }
    qb.push(")");
}

fn push_in<D: Dialect>(qb: &mut QueryBuilder<D>, field: &Field, values: &[Scalar]) {
    let mut texts = Vec::new();
    let mut numbers = Vec::new();
    let mut bools = Vec::new();
    let mut times = Vec::new();
    for v in values {
        match v {
            Scalar::Text(s) => texts.push(s.clone()),
            Scalar::Number(n) => numbers.push(*n),
            Scalar::Bool(b) => bools.push(b.to_string()),
            Scalar::Time(t) => times.push(*t),
        }
    }
    qb.push("(").push(D::FALSE);
    match field {
        Field::At => {
            if !times.is_empty() {
                qb.push(" OR s.at");
                D::push_in(qb, List::Times(times));
            }
        }
        Field::Body(keys) => {
            if !texts.is_empty() {
                qb.push(" OR ");
                D::push_json_text(qb, keys);
                D::push_in(qb, List::Texts(texts));
            }
            if !numbers.is_empty() {
                qb.push(" OR ");
                D::push_json_number(qb, keys);
                D::push_in(qb, List::Numbers(numbers));
            }
            if !bools.is_empty() {
                qb.push(" OR ");
                D::push_json_bool(qb, keys);
                D::push_in(qb, List::Texts(bools));
            }
        }
        f => {
            if let (Some(col), false) = (column(f), texts.is_empty()) {
                qb.push(" OR ").push(col);
                D::push_in(qb, List::Texts(texts));
            }
        }
    }
    qb.push(")");
}

/// Whether the field is present (never NULL, so `NOT` of it is safe).
fn push_present<D: Dialect>(qb: &mut QueryBuilder<D>, field: &Field) {
    match field {
        Field::Body(keys) => D::push_json_present(qb, keys),
        f => match column(f) {
            Some(col) => {
                qb.push("(").push(col).push(" IS NOT NULL)");
            }
            None => {
                qb.push(D::TRUE);
            }
        },
    }
}

/// The group key as JSON text (NULL when missing, null or redacted).
fn push_group_key<D: Dialect>(qb: &mut QueryBuilder<D>, field: &Field) {
    match field {
        Field::Body(keys) => {
            qb.push("(CASE WHEN r.redaction_id IS NULL THEN ");
            D::push_json_group_key(qb, keys);
            qb.push(" END)");
        }
        Field::At => {
            qb.push(D::AT_AS_JSON);
        }
        f => match column(f) {
            Some(col) => {
                qb.push("(CASE WHEN ").push(col).push(" IS NOT NULL");
                if guarded(f) {
                    qb.push(" AND r.redaction_id IS NULL");
                }
                qb.push(" THEN ");
                D::push_json_quote(qb, col);
                qb.push(" END)");
            }
            None => {
                qb.push(D::NULL_TEXT);
            }
        },
    }
}
