//! The filter spec of the model's `query_ledger` tool: JSON arguments validated into a typed
//! [`QuerySpec`] that one compiler (`store/spec_sql.rs`, shared by both stores) turns into
//! parameterized SQL.
//!
//! The model is untrusted input. This module's half of the security argument: nothing it sends
//! survives as text that could become SQL. Fields come from a closed list or a path grammar
//! (`content.<key>…`, keys `[A-Za-z0-9_]{1,64}`), operators from a closed list, values become
//! typed [`Scalar`]s, and sizes are bounded ([`MAX_CONDITIONS`], [`MAX_IN_VALUES`],
//! [`MAX_PATH_KEYS`]). The compiler's half (every value bound as a parameter, the caller's
//! visibility, redaction guards) is stated in its module doc; the stores run the query
//! read-only under a row limit ([`MAX_SPEC_ROWS`]) and a time limit ([`SPEC_TIMEOUT`]).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use crate::query::Order;
use crate::span::{StoredSpan, format_time};

/// Most spans (or groups) one call may return: enough to answer, small enough for a prompt.
pub const MAX_SPEC_ROWS: i64 = 200;
pub const DEFAULT_SPEC_ROWS: i64 = 50;
/// Most `where` conditions: bounds the size (and cost) of the generated SQL.
pub const MAX_CONDITIONS: usize = 12;
/// Most values an `in` condition may list.
pub const MAX_IN_VALUES: usize = 50;
/// Most keys below `content` / `metadata` in a path.
pub const MAX_PATH_KEYS: usize = 6;
/// Longest key in a path.
pub const MAX_KEY_LEN: usize = 64;
/// How long one query may run before the store gives up on it.
pub const SPEC_TIMEOUT: Duration = Duration::from_secs(2);

const TOP_KEYS: [&str; 14] = [
    "entity_type",
    "status",
    "who",
    "did",
    "this",
    "name",
    "since",
    "until",
    "where",
    "latest_only",
    "order",
    "limit",
    "count",
    "group_by",
];
const CONDITION_KEYS: [&str; 3] = ["path", "op", "value"];
const OPERATORS: [&str; 10] = [
    "eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "exists", "missing",
];
const COLUMNS: [&str; 8] = [
    "entity_type",
    "status",
    "who",
    "did",
    "this",
    "name",
    "owner_id",
    "at",
];

/// What a condition looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// Envelope columns: always present, never redacted.
    EntityType,
    Status,
    OwnerId,
    /// The span's `at` (its `when`), a timestamp.
    At,
    /// Body columns (indexed copies of body fields): gone when the span is redacted.
    Who,
    Did,
    This,
    /// A path of object keys from the root of the span body, e.g. `["content", "state"]` or
    /// `["name"]`. Every key matches `[A-Za-z0-9_]{1,64}`.
    Body(Vec<String>),
}

impl Field {
    /// Fields whose values are always strings: comparing them with anything else is a mistake
    /// the model should hear about rather than an empty answer.
    fn text_only(&self) -> bool {
        match self {
            Self::EntityType
            | Self::Status
            | Self::OwnerId
            | Self::Who
            | Self::Did
            | Self::This => true,
            Self::Body(keys) => keys.len() == 1 && keys[0] == "name",
            Self::At => false,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EntityType => f.write_str("entity_type"),
            Self::Status => f.write_str("status"),
            Self::OwnerId => f.write_str("owner_id"),
            Self::At => f.write_str("at"),
            Self::Who => f.write_str("who"),
            Self::Did => f.write_str("did"),
            Self::This => f.write_str("this"),
            Self::Body(keys) => f.write_str(&keys.join(".")),
        }
    }
}

/// A value to compare with.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// Compared as text (byte order on both stores), and only with JSON strings.
    Text(String),
    /// Compared numerically, and only with JSON numbers.
    Number(f64),
    Bool(bool),
    /// A resolved instant, for the `at` column.
    Time(DateTime<Utc>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    /// The SQL operator: one of six fixed strings, never input.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Self::Eq => " = ",
            Self::Ne => " <> ",
            Self::Lt => " < ",
            Self::Lte => " <= ",
            Self::Gt => " > ",
            Self::Gte => " >= ",
        }
    }
}

/// What a condition asks of its field.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `ne` also matches spans where the field is missing: it is exactly "not `eq`".
    Cmp(CmpOp, Scalar),
    /// Equal to one of the values (never empty).
    In(Vec<Scalar>),
    /// Case-insensitive substring of a string value.
    Contains(String),
    /// Present and not JSON null.
    Exists,
    /// Absent or JSON null.
    Missing,
}

/// One validated condition. On body fields it never matches a redacted span, whatever the test.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub field: Field,
    pub test: Test,
}

/// What the query returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Rows,
    Count,
    Groups(Field),
}

/// A validated `query_ledger` call. Only [`QuerySpec::from_json`] makes one, so every path in
/// it has passed the grammar.
#[derive(Clone, Debug, PartialEq)]
pub struct QuerySpec {
    conditions: Vec<Condition>,
    latest_only: bool,
    order: Order,
    limit: i64,
    output: Output,
    timeout: Duration,
}

/// What a `query_ledger` call found.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecResult {
    /// Matching spans in the requested order; `truncated` when more matched than the limit.
    Rows {
        spans: Vec<StoredSpan>,
        truncated: bool,
    },
    /// How many spans matched.
    Count(i64),
    /// Group key (null when missing) and count, biggest first (ties by key), at most `limit`.
    Groups(Vec<(Value, i64)>),
}

/// Why the arguments were refused. Every message starts with where the problem is
/// (`limit`, `where[1].op`, …) so the model can fix that part and retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("arguments: must be a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("{at}: unknown key `{key}`; allowed: {allowed}")]
    UnknownKey {
        at: String,
        key: String,
        allowed: String,
    },
    #[error("{at}: unknown operator `{op}`; allowed: {allowed}")]
    UnknownOperator {
        at: String,
        op: String,
        allowed: String,
    },
    #[error("{at}: {problem}")]
    Invalid { at: String, problem: String },
}

impl SpecError {
    /// Where the problem is: `arguments`, `limit`, `where[2].path`, …
    pub fn at(&self) -> &str {
        match self {
            Self::NotObject(_) => "arguments",
            Self::UnknownKey { at, .. }
            | Self::UnknownOperator { at, .. }
            | Self::Invalid { at, .. } => at,
        }
    }
}

fn invalid(at: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        at: at.into(),
        problem: problem.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shows a value in an error message without letting a huge one flood the model's context.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

const TIME_HINT: &str = "an RFC 3339 timestamp (e.g. 2026-11-01T00:00:00Z) or a relative time: \
                         now, now-24h, now+3d (units s, m, h, d, w)";

/// `now`, `now-24h`, `now+3d`: `None` when `s` is not relative-time shaped at all, an error
/// when it is but cannot be resolved.
fn relative_time(s: &str, now: DateTime<Utc>) -> Option<Result<DateTime<Utc>, String>> {
    let rest = s.strip_prefix("now")?;
    if rest.is_empty() {
        return Some(Ok(now));
    }
    let (sign, rest) = match rest.as_bytes().first() {
        Some(b'+') => (1i64, &rest[1..]),
        Some(b'-') => (-1i64, &rest[1..]),
        _ => return None,
    };
    Some(resolve_offset(sign, rest, now))
}

fn resolve_offset(sign: i64, rest: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = format!("now{}{rest}", if sign < 0 { '-' } else { '+' });
    let bad = || format!("`{text}` is not {TIME_HINT}");
    let unit = rest.chars().last().ok_or_else(bad)?;
    let digits = &rest[..rest.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let secs_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(bad()),
    };
    let delta = n
        .checked_mul(secs_per)
        .and_then(|s| s.checked_mul(sign))
        .and_then(TimeDelta::try_seconds)
        .ok_or_else(bad)?;
    now.checked_add_signed(delta)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(|| format!("`{text}` falls outside the years 0000-9999"))
}

/// A timestamp argument: RFC 3339 or relative to `now`.
fn parse_time(v: &Value, at: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, SpecError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(at, format!("must be {TIME_HINT}, got {}", type_name(v))))?;
    if let Some(r) = relative_time(s, now) {
        return r.map_err(|e| invalid(at, e));
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.to_utc())
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(|| invalid(at, format!("must be {TIME_HINT}, got {}", shown(v))))
}

fn valid_key(k: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The path grammar: one of [`COLUMNS`], or `content.<key>(.<key>)*` / `metadata.<key>…` with
/// at most [`MAX_PATH_KEYS`] keys below the root.
fn parse_field(v: &Value, at: &str) -> Result<Field, SpecError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(at, format!("must be a string, got {}", type_name(v))))?;
    let field = match s {
        "entity_type" => Some(Field::EntityType),
        "status" => Some(Field::Status),
        "owner_id" => Some(Field::OwnerId),
        "at" => Some(Field::At),
        "who" => Some(Field::Who),
        "did" => Some(Field::Did),
        "this" => Some(Field::This),
        "name" => Some(Field::Body(vec!["name".to_string()])),
        _ => None,
    };
    if let Some(f) = field {
        return Ok(f);
    }
    let grammar = format!(
        "use content.<key>(.<key>)* or metadata.<key>(.<key>)* (keys of letters, digits and _, \
         at most {MAX_KEY_LEN} characters, at most {MAX_PATH_KEYS} keys), or one of {}",
        COLUMNS.join(", ")
    );
    let mut parts = s.split('.');
    let root = parts.next().unwrap_or_default();
    if root != "content" && root != "metadata" {
        return Err(invalid(
            at,
            format!("{} is not a field; {grammar}", shown(v)),
        ));
    }
    let keys: Vec<&str> = parts.collect();
    if keys.is_empty() {
        return Err(invalid(
            at,
            format!("`{root}` needs at least one key below it; {grammar}"),
        ));
    }
    if keys.len() > MAX_PATH_KEYS {
        return Err(invalid(
            at,
            format!("{} is {} keys deep; {grammar}", shown(v), keys.len()),
        ));
    }
    if let Some(bad) = keys.iter().find(|k| !valid_key(k)) {
        return Err(invalid(
            at,
            format!(
                "key {} in {} is not allowed; {grammar}",
                shown(&Value::String((*bad).to_string())),
                shown(v)
            ),
        ));
    }
    Ok(Field::Body(
        std::iter::once(root)
            .chain(keys)
            .map(str::to_string)
            .collect(),
    ))
}

/// One comparison value, typed for its field. Relative times in strings are resolved so they
/// compare as text with the times the ledger writes.
fn parse_scalar(
    v: &Value,
    field: &Field,
    at: &str,
    now: DateTime<Utc>,
) -> Result<Scalar, SpecError> {
    if *field == Field::At {
        return parse_time(v, at, now).map(Scalar::Time);
    }
    let scalar = match v {
        Value::String(s) => match relative_time(s, now) {
            Some(t) => Scalar::Text(format_time(t.map_err(|e| invalid(at, e))?)),
            None => Scalar::Text(s.clone()),
        },
        Value::Number(n) => Scalar::Number(
            n.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| invalid(at, format!("{n} is out of range")))?,
        ),
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Null => {
            return Err(invalid(
                at,
                "null never compares equal; use op `missing` (or `exists`) to test for absent \
                 or null values",
            ));
        }
        other => {
            return Err(invalid(
                at,
                format!(
                    "must be a string, number or boolean, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    if field.text_only() && !matches!(scalar, Scalar::Text(_)) {
        return Err(invalid(
            at,
            format!("`{field}` holds text: give a string, got {}", type_name(v)),
        ));
    }
    Ok(scalar)
}

fn parse_condition(v: &Value, i: usize, now: DateTime<Utc>) -> Result<Condition, SpecError> {
    let at = format!("where[{i}]");
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            &at,
            format!(
                "must be an object {{\"path\", \"op\", \"value\"}}, got {}",
                type_name(v)
            ),
        )
    })?;
    check_keys(obj, &at, &CONDITION_KEYS)?;
    let path = obj
        .get("path")
        .ok_or_else(|| invalid(format!("{at}.path"), "is required"))?;
    let field = parse_field(path, &format!("{at}.path"))?;
    let op_at = format!("{at}.op");
    let op = match obj.get("op") {
        None => return Err(invalid(op_at, "is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(invalid(
                op_at,
                format!("must be a string, got {}", type_name(other)),
            ));
        }
    };
    let value_at = format!("{at}.value");
    let value = obj.get("value").filter(|v| !v.is_null());
    let need = |what: &str| {
        value.ok_or_else(|| invalid(&value_at, format!("is required for `{op}` ({what})")))
    };
    let test = match op {
        "eq" | "ne" | "lt" | "lte" | "gt" | "gte" => {
            let cmp = match op {
                "eq" => CmpOp::Eq,
                "ne" => CmpOp::Ne,
                "lt" => CmpOp::Lt,
                "lte" => CmpOp::Lte,
                "gt" => CmpOp::Gt,
                _ => CmpOp::Gte,
            };
            let scalar =
                parse_scalar(need("a string, number or boolean")?, &field, &value_at, now)?;
            if matches!(scalar, Scalar::Bool(_)) && !matches!(cmp, CmpOp::Eq | CmpOp::Ne) {
                return Err(invalid(
                    value_at,
                    format!("a boolean can only be compared with eq or ne, not `{op}`"),
                ));
            }
            Test::Cmp(cmp, scalar)
        }
        "in" => {
            let list = need("an array of values")?;
            let items = list.as_array().ok_or_else(|| {
                invalid(
                    &value_at,
                    format!("`in` takes an array, got {}", type_name(list)),
                )
            })?;
            if items.is_empty() || items.len() > MAX_IN_VALUES {
                return Err(invalid(
                    value_at,
                    format!(
                        "`in` takes 1 to {MAX_IN_VALUES} values, got {}",
                        items.len()
                    ),
                ));
            }
            Test::In(
                items
                    .iter()
                    .enumerate()
                    .map(|(j, item)| parse_scalar(item, &field, &format!("{value_at}[{j}]"), now))
                    .collect::<Result<_, _>>()?,
            )
        }
        "contains" => {
            if field == Field::At {
                return Err(invalid(
                    op_at,
                    "`contains` does not apply to `at`; compare it with lt/gte or since/until",
                ));
            }
            match need("a string")? {
                Value::String(s) if !s.is_empty() => Test::Contains(s.clone()),
                other => {
                    return Err(invalid(
                        value_at,
                        format!("`contains` takes a non-empty string, got {}", shown(other)),
                    ));
                }
            }
        }
        "exists" | "missing" => {
            if let Some(v) = value {
                return Err(invalid(
                    value_at,
                    format!("`{op}` takes no value, got {}", shown(v)),
                ));
            }
            if op == "exists" {
                Test::Exists
            } else {
                Test::Missing
            }
        }
        other => {
            return Err(SpecError::UnknownOperator {
                at: op_at,
                op: other.to_string(),
                allowed: OPERATORS.join(", "),
            });
        }
    };
    Ok(Condition { field, test })
}

fn check_keys(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), SpecError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(SpecError::UnknownKey {
            at: at.to_string(),
            key: key.chars().take(80).collect(),
            allowed: allowed.join(", "),
        }),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, SpecError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(
            key,
            format!("must be true or false, got {}", shown(other)),
        )),
    }
}

impl QuerySpec {
    /// Parses and validates the tool's JSON arguments. `now` resolves relative times.
    pub fn from_json(args: &Value, now: DateTime<Utc>) -> Result<Self, SpecError> {
        let obj = args
            .as_object()
            .ok_or_else(|| SpecError::NotObject(type_name(args)))?;
        check_keys(obj, "arguments", &TOP_KEYS)?;
        let mut conditions = Vec::new();

        for (key, field) in [
            ("entity_type", Field::EntityType),
            ("status", Field::Status),
            ("who", Field::Who),
            ("did", Field::Did),
            ("this", Field::This),
            ("name", Field::Body(vec!["name".to_string()])),
        ] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => conditions.push(Condition {
                    field,
                    test: Test::Cmp(CmpOp::Eq, Scalar::Text(s.clone())),
                }),
                Some(other) => {
                    return Err(invalid(
                        key,
                        format!("must be a string (an exact match), got {}", shown(other)),
                    ));
                }
            }
        }
        for (key, op) in [("since", CmpOp::Gte), ("until", CmpOp::Lt)] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                conditions.push(Condition {
                    field: Field::At,
                    test: Test::Cmp(op, Scalar::Time(parse_time(v, key, now)?)),
                });
            }
        }

        match obj.get("where") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_CONDITIONS {
                    return Err(invalid(
                        "where",
                        format!("at most {MAX_CONDITIONS} conditions, got {}", items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    conditions.push(parse_condition(item, i, now)?);
                }
            }
            Some(other) => {
                return Err(invalid(
                    "where",
                    format!(
                        "must be an array of {{\"path\", \"op\", \"value\"}} objects, got {}",
                        type_name(other)
                    ),
                ));
            }
        }

        let latest_only = opt_bool(obj, "latest_only", true)?;
        let order = match obj.get("order") {
            None | Some(Value::Null) => Order::Desc,
            Some(Value::String(s)) if s == "desc" => Order::Desc,
            Some(Value::String(s)) if s == "asc" => Order::Asc,
            Some(other) => {
                return Err(invalid(
                    "order",
                    format!("must be \"asc\" or \"desc\", got {}", shown(other)),
                ));
            }
        };
        let limit = match obj.get("limit") {
            None | Some(Value::Null) => DEFAULT_SPEC_ROWS,
            Some(v) => v
                .as_i64()
                .filter(|n| (1..=MAX_SPEC_ROWS).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "limit",
                        format!(
                            "must be an integer from 1 to {MAX_SPEC_ROWS}, got {}",
                            shown(v)
                        ),
                    )
                })?,
        };
        let count = opt_bool(obj, "count", false)?;
        let group_by = match obj.get("group_by") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let f = parse_field(v, "group_by")?;
                if f == Field::At {
                    return Err(invalid(
                        "group_by",
                        "`at` is a timestamp and cannot be grouped; use since/until ranges",
                    ));
                }
                Some(f)
            }
        };
        let output = match (count, group_by) {
            (true, Some(_)) => {
                return Err(invalid(
                    "group_by",
                    "cannot be combined with count: true (groups already carry counts)",
                ));
            }
            (true, None) => Output::Count,
            (false, Some(f)) => Output::Groups(f),
            (false, None) => Output::Rows,
        };

        Ok(Self {
            conditions,
            latest_only,
            order,
            limit,
            output,
            timeout: SPEC_TIMEOUT,
        })
    }

    /// The JSON Schema of the arguments (offered to the model as the tool's `parameters`).
    /// Descriptions are terse on purpose: the schema is sent with every model round, and the
    /// structure (enums, patterns, bounds) already says most of it.
    pub fn json_schema() -> Value {
        let exact = json!({"type": "string"});
        let time = |what: &str| json!({"type": "string", "description": format!("{what}; RFC 3339 or now-24h")});
        // Key lengths and depth are checked by the parser; the pattern only shapes the path.
        let path_pattern = format!(
            "^((content|metadata)(\\.[A-Za-z0-9_]+)+|{})$",
            COLUMNS.join("|")
        );
        let scalar = json!({"type": ["string", "number", "boolean"]});
        // The path pattern is written once and referenced twice.
        let path = json!({"$ref": "#/$defs/path"});
        json!({
            "type": "object",
            "additionalProperties": false,
            "$defs": {"path": {"type": "string", "pattern": path_pattern}},
            "properties": {
                "entity_type": exact,
                "status": exact,
                "who": exact,
                "did": exact,
                "this": exact,
                "name": exact,
                "since": time("from"),
                "until": time("before"),
                "where": {
                    "type": "array",
                    "maxItems": MAX_CONDITIONS,
                    "items": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["path", "op"],
                        "properties": {
                            "path": path,
                            "op": {
                                "type": "string",
                                "enum": OPERATORS,
                                "description": "in: array value; exists, missing: no value"
                            },
                            "value": {
                                "type": ["string", "number", "boolean", "array"],
                                "items": scalar,
                                "maxItems": MAX_IN_VALUES
                            }
                        }
                    }
                },
                "latest_only": {"type": "boolean", "description": "default true"},
                "order": {"type": "string", "enum": ["desc", "asc"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SPEC_ROWS},
                "count": {"type": "boolean"},
                "group_by": {
                    "allOf": [path],
                    "description": "count per value; not with count"
                }
            }
        })
    }

    /// Sets the time limit (administrative callers and tests; the model cannot set it).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Every condition, including the exact matches and since/until, all of which must hold.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    pub fn latest_only(&self) -> bool {
        self.latest_only
    }

    pub fn order(&self) -> Order {
        self.order
    }

    /// Most spans (or groups) returned, in 1..=[`MAX_SPEC_ROWS`].
    pub fn limit(&self) -> i64 {
        self.limit
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn parse(v: Value) -> Result<QuerySpec, SpecError> {
        QuerySpec::from_json(&v, now())
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    fn body(keys: &[&str]) -> Field {
        Field::Body(keys.iter().map(|k| (*k).to_string()).collect())
    }

    #[test]
    fn an_empty_object_asks_for_the_latest_fifty_newest_first() {
        let s = parse(json!({})).unwrap();
        assert!(s.conditions().is_empty());
        assert!(s.latest_only());
        assert_eq!(s.order(), Order::Desc);
        assert_eq!(s.limit(), DEFAULT_SPEC_ROWS);
        assert_eq!(s.output(), &Output::Rows);
        assert_eq!(s.timeout(), SPEC_TIMEOUT);
    }

    #[test]
    fn the_documented_example_parses_into_typed_conditions() {
        let s = parse(json!({
            "entity_type": "contract", "status": "active", "name": "D1",
            "since": "now-7d", "until": "now",
            "where": [
                {"path": "content.guarantor.responded_at", "op": "missing"},
                {"path": "content.guarantor.requested_at", "op": "lt", "value": "now-24h"},
                {"path": "content.state", "op": "in", "value": ["open", "held"]},
                {"path": "content.amount", "op": "gte", "value": 10.5},
                {"path": "metadata.flag", "op": "eq", "value": true}
            ],
            "latest_only": false, "order": "asc", "limit": 200
        }))
        .unwrap();
        let c = s.conditions();
        assert_eq!(c.len(), 10);
        assert_eq!(
            c[0],
            Condition {
                field: Field::EntityType,
                test: Test::Cmp(CmpOp::Eq, Scalar::Text("contract".into()))
            }
        );
        assert_eq!(c[2].field, body(&["name"]));
        let week_ago = DateTime::parse_from_rfc3339("2026-11-13T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(c[3].test, Test::Cmp(CmpOp::Gte, Scalar::Time(week_ago)));
        assert_eq!(c[4].test, Test::Cmp(CmpOp::Lt, Scalar::Time(now())));
        assert_eq!(c[5].field, body(&["content", "guarantor", "responded_at"]));
        assert_eq!(c[5].test, Test::Missing);
        assert_eq!(
            c[6].test,
            Test::Cmp(
                CmpOp::Lt,
                Scalar::Text("2026-11-19T12:00:00.000000Z".into())
            )
        );
        assert_eq!(
            c[7].test,
            Test::In(vec![
                Scalar::Text("open".into()),
                Scalar::Text("held".into())
            ])
        );
        assert_eq!(c[8].test, Test::Cmp(CmpOp::Gte, Scalar::Number(10.5)));
        assert_eq!(c[9].test, Test::Cmp(CmpOp::Eq, Scalar::Bool(true)));
        assert!(!s.latest_only());
        assert_eq!(s.order(), Order::Asc);
        assert_eq!(s.limit(), 200);
    }

    #[test]
    fn relative_times_take_every_unit_and_both_signs() {
        for (text, want) in [
            ("now", "2026-11-20T12:00:00Z"),
            ("now-30s", "2026-11-20T11:59:30Z"),
            ("now-15m", "2026-11-20T11:45:00Z"),
            ("now+2h", "2026-11-20T14:00:00Z"),
            ("now-1d", "2026-11-19T12:00:00Z"),
            ("now+1w", "2026-11-27T12:00:00Z"),
        ] {
            let s = parse(json!({"since": text})).unwrap();
            let want = DateTime::parse_from_rfc3339(want).unwrap().to_utc();
            assert_eq!(
                s.conditions()[0].test,
                Test::Cmp(CmpOp::Gte, Scalar::Time(want)),
                "{text}"
            );
        }
        let s = parse(json!({"until": "2026-11-01T01:00:00+01:00"})).unwrap();
        let want = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            s.conditions()[0].test,
            Test::Cmp(CmpOp::Lt, Scalar::Time(want))
        );
    }

    #[test]
    fn strings_that_only_look_like_now_stay_literal() {
        let s =
            parse(json!({"where": [{"path": "content.place", "op": "eq", "value": "nowhere"}]}))
                .unwrap();
        assert_eq!(
            s.conditions()[0].test,
            Test::Cmp(CmpOp::Eq, Scalar::Text("nowhere".into()))
        );
    }

    #[test]
    fn count_and_group_by_choose_the_output() {
        assert_eq!(
            parse(json!({"count": true})).unwrap().output(),
            &Output::Count
        );
        assert_eq!(
            parse(json!({"group_by": "content.state"}))
                .unwrap()
                .output(),
            &Output::Groups(body(&["content", "state"]))
        );
        assert_eq!(
            parse(json!({"group_by": "who"})).unwrap().output(),
            &Output::Groups(Field::Who)
        );
    }

    #[test]
    fn nulls_for_optional_arguments_mean_absent() {
        let s = parse(
            json!({"status": null, "since": null, "where": null, "limit": null,
                             "order": null, "latest_only": null, "count": null, "group_by": null}),
        )
        .unwrap();
        assert_eq!(s, parse(json!({})).unwrap());
    }

    #[test]
    fn every_refusal_names_where_the_problem_is() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!([1]),
                "arguments",
                "arguments: must be a JSON object, got an array",
            ),
            (
                json!({"sql": "DROP"}),
                "arguments",
                "unknown key `sql`; allowed: entity_type, status",
            ),
            (
                json!({"status": 3}),
                "status",
                "status: must be a string (an exact match), got 3",
            ),
            (
                json!({"since": "yesterday"}),
                "since",
                "since: must be an RFC 3339 timestamp",
            ),
            (
                json!({"since": "now-3y"}),
                "since",
                "since: `now-3y` is not",
            ),
            (
                json!({"until": "now-99999999999d"}),
                "until",
                "until: `now-99999999999d` is not",
            ),
            (
                json!({"until": "now+999999999w"}),
                "until",
                "falls outside the years 0000-9999",
            ),
            (
                json!({"since": 5}),
                "since",
                "since: must be an RFC 3339 timestamp",
            ),
            (json!({"where": {}}), "where", "where: must be an array"),
            (
                json!({"where": [1]}),
                "where[0]",
                "where[0]: must be an object",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "eq", "value": 1, "x": 1}]}),
                "where[0]",
                "where[0]: unknown key `x`; allowed: path, op, value",
            ),
            (
                json!({"where": [{"op": "exists"}]}),
                "where[0].path",
                "where[0].path: is required",
            ),
            (
                json!({"where": [{"path": "content.a"}]}),
                "where[0].op",
                "where[0].op: is required",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "exists"}, {"path": "content.a", "op": "like", "value": "x"}]}),
                "where[1].op",
                "where[1].op: unknown operator `like`; allowed: eq, ne, lt, lte, gt, gte, in, contains, exists, missing",
            ),
            (
                json!({"where": [{"path": "content.a", "op": 1}]}),
                "where[0].op",
                "where[0].op: must be a string",
            ),
            (
                json!({"where": [{"path": "body", "op": "exists"}]}),
                "where[0].path",
                "where[0].path: \"body\" is not a field; use content.<key>",
            ),
            (
                json!({"where": [{"path": "content", "op": "exists"}]}),
                "where[0].path",
                "where[0].path: `content` needs at least one key",
            ),
            (
                json!({"where": [{"path": "content.a.b.c.d.e.f.g", "op": "exists"}]}),
                "where[0].path",
                "is 7 keys deep",
            ),
            (
                json!({"where": [{"path": "content.a'--", "op": "exists"}]}),
                "where[0].path",
                "where[0].path: key \"a'--\" in \"content.a'--\" is not allowed",
            ),
            (
                json!({"where": [{"path": "content..a", "op": "exists"}]}),
                "where[0].path",
                "key \"\"",
            ),
            (
                json!({"where": [{"path": format!("content.{}", "k".repeat(65)), "op": "exists"}]}),
                "where[0].path",
                "is not allowed",
            ),
            (
                json!({"where": [{"path": 7, "op": "exists"}]}),
                "where[0].path",
                "must be a string, got a number",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "eq"}]}),
                "where[0].value",
                "where[0].value: is required for `eq`",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "eq", "value": {"x": 1}}]}),
                "where[0].value",
                "where[0].value: must be a string, number or boolean, got an object",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "lt", "value": true}]}),
                "where[0].value",
                "a boolean can only be compared with eq or ne, not `lt`",
            ),
            (
                json!({"where": [{"path": "status", "op": "eq", "value": 5}]}),
                "where[0].value",
                "`status` holds text: give a string, got a number",
            ),
            (
                json!({"where": [{"path": "at", "op": "gt", "value": "soon"}]}),
                "where[0].value",
                "where[0].value: must be an RFC 3339 timestamp",
            ),
            (
                json!({"where": [{"path": "at", "op": "contains", "value": "2026"}]}),
                "where[0].op",
                "`contains` does not apply to `at`",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "in", "value": "x"}]}),
                "where[0].value",
                "`in` takes an array, got a string",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "in", "value": []}]}),
                "where[0].value",
                "`in` takes 1 to 50 values, got 0",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "in", "value": (0..51).collect::<Vec<_>>()}]}),
                "where[0].value",
                "got 51",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "in", "value": ["a", [1]]}]}),
                "where[0].value[1]",
                "where[0].value[1]: must be a string, number or boolean, got an array",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "contains", "value": 3}]}),
                "where[0].value",
                "`contains` takes a non-empty string, got 3",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "contains", "value": ""}]}),
                "where[0].value",
                "non-empty string",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "exists", "value": 1}]}),
                "where[0].value",
                "`exists` takes no value",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "eq", "value": null}]}),
                "where[0].value",
                "is required for `eq`",
            ),
            (
                json!({"where": [{"path": "content.a", "op": "eq", "value": "now-1y"}]}),
                "where[0].value",
                "`now-1y` is not",
            ),
            (
                json!({"where": vec![json!({"path": "content.a", "op": "exists"}); 13]}),
                "where",
                "where: at most 12 conditions, got 13",
            ),
            (
                json!({"latest_only": "yes"}),
                "latest_only",
                "latest_only: must be true or false",
            ),
            (
                json!({"order": "newest"}),
                "order",
                "order: must be \"asc\" or \"desc\", got \"newest\"",
            ),
            (
                json!({"limit": 0}),
                "limit",
                "limit: must be an integer from 1 to 200, got 0",
            ),
            (json!({"limit": 201}), "limit", "got 201"),
            (json!({"limit": 2.5}), "limit", "got 2.5"),
            (json!({"limit": "10"}), "limit", "got \"10\""),
            (json!({"count": 1}), "count", "count: must be true or false"),
            (
                json!({"group_by": "at"}),
                "group_by",
                "group_by: `at` is a timestamp",
            ),
            (
                json!({"group_by": "content"}),
                "group_by",
                "group_by: `content` needs at least one key",
            ),
            (
                json!({"group_by": "status", "count": true}),
                "group_by",
                "cannot be combined with count",
            ),
        ];
        for (args, at, message) in cases {
            let e = parse(args.clone()).unwrap_err();
            assert_eq!(e.at(), at, "{args}: {e}");
            assert!(
                e.to_string().contains(message),
                "{args}: `{e}` does not contain `{message}`"
            );
        }
    }

    #[test]
    fn huge_values_are_shortened_in_messages() {
        let e = err(json!({"order": "x".repeat(10_000)}));
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn injection_shaped_values_are_kept_verbatim_as_data() {
        let evil = "x' OR 1=1 --";
        let s = parse(json!({"status": evil, "where": [{"path": "content.a", "op": "contains", "value": "%_\\"}]}))
            .unwrap();
        assert_eq!(
            s.conditions()[0].test,
            Test::Cmp(CmpOp::Eq, Scalar::Text(evil.into()))
        );
        assert_eq!(s.conditions()[1].test, Test::Contains("%_\\".into()));
    }

    fn arbitrary_args() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = prop_oneof![
            prop::sample::select(vec![
                "content.a",
                "content.a.b",
                "metadata.x",
                "status",
                "at",
                "name",
                "now",
                "now-1d",
                "now+99999999999w",
                "eq",
                "ne",
                "lt",
                "in",
                "contains",
                "exists",
                "missing",
                "like",
                "asc",
                "desc",
                "content.",
                "content.a'--",
                "2026-11-01T00:00:00Z",
            ])
            .prop_map(String::from),
            ".{0,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            text.clone().prop_map(Value::String),
        ];
        let key = prop_oneof![
            4 => prop::sample::select(TOP_KEYS.iter().chain(CONDITION_KEYS.iter()).copied().collect::<Vec<_>>())
                .prop_map(String::from),
            1 => text,
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// What `cargo fuzz` would check, run in CI: any JSON either parses into conditions whose
        /// body paths satisfy the grammar, or is refused with a located error; it never panics.
        #[test]
        fn any_json_is_parsed_or_refused_without_panicking(args in arbitrary_args()) {
            match QuerySpec::from_json(&args, now()) {
                Ok(spec) => {
                    for c in spec.conditions() {
                        if let Field::Body(keys) = &c.field {
                            proptest::prop_assert!(keys.iter().all(|k| valid_key(k)));
                            proptest::prop_assert!(keys.len() <= MAX_PATH_KEYS + 1);
                        }
                    }
                    proptest::prop_assert!((1..=MAX_SPEC_ROWS).contains(&spec.limit()));
                }
                Err(e) => proptest::prop_assert!(!e.at().is_empty()),
            }
        }
    }

    #[test]
    fn the_schema_offers_exactly_what_the_parser_accepts() {
        let schema = QuerySpec::json_schema();
        assert_eq!(schema["additionalProperties"], json!(false));
        let props: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(props, TOP_KEYS);
        let item = &schema["properties"]["where"]["items"];
        assert_eq!(item["additionalProperties"], json!(false));
        let keys: Vec<&str> = item["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, CONDITION_KEYS);
        assert_eq!(item["properties"]["op"]["enum"], json!(OPERATORS));
        assert_eq!(
            schema["properties"]["limit"]["maximum"],
            json!(MAX_SPEC_ROWS)
        );
    }
}
