//! Deciding a law against one set of variables.
//!
//! # Triage order and failing closed
//!
//! Blocks are tried in the order ok → doubt → not; the first whose condition is **true** wins
//! and its actions are the decision's. Conditions use three-valued (Kleene) logic: a comparison
//! over missing or ill-typed data is *unknown*, `false AND unknown` is false, `true OR unknown`
//! is true, `NOT unknown` is unknown, and anything else touching unknown stays unknown. So a
//! missing field that cannot change the answer does not block it.
//!
//! The decision fails closed to `doubt`, **with no actions**, when
//! - a block's condition is unknown: a later block cannot be "the first that holds" when an
//!   earlier one might have held (`FailClosed::Undecidable`, naming the block and the first
//!   error met in it); or
//! - no block's condition is true (`FailClosed::NoBlockHeld`).
//!
//! No actions, because the law's `if doubt:` actions were written for its doubt condition, which
//! did not hold; the caller records the decision (with `fail_closed` saying why) and people or
//! policies take it from there. A law whose own `if doubt:` condition holds is an ordinary doubt,
//! with that block's actions.
//!
//! # Values and types
//!
//! - `now` (alone) is always the injected instant, never a variable of that name, so the
//!   Midnight Ruler decides with `now = scheduled_at`.
//! - Other paths are looked up in the variables object; `.count` on an array is its length and a
//!   digit segment indexes an array. A path that is not there is *missing* (unknown), which is
//!   not the same as a JSON `null`.
//! - Strings become timestamps (RFC 3339) or durations (law syntax, `"12h"`) when compared with
//!   or added to one; two strings are ordered only if both are timestamps. A string that does
//!   not parse is an error, hence unknown.
//! - `==`/`!=` between different types is unknown, except with `null`, which equals only `null`
//!   (so `x == null` can test for an explicit null). `<`, `<=`, `>`, `>=` take two numbers, two
//!   times or two durations.
//! - `+`/`-`: numbers; durations; time ± duration → time; time − time → duration.
//! - A bare value as a condition must be `true` or `false`.
//!
//! Every variable read is reported with the value seen (`variables`), every absent one in
//! `missing`, so a `law.decision` span shows what the decision rested on.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::ast::{Action, ArithOp, CompareOp, Expr, Law, Literal, Path, Term, Triage};
use super::lexer::duration_from_text;

/// The outcome of one evaluation, ready to be written as a `law.decision` span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub triage: Triage,
    /// The winning block's actions, as written; empty when failing closed.
    pub actions: Vec<Action>,
    /// Why the decision is a fail-closed `doubt`; `None` when a block's condition held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_closed: Option<FailClosed>,
    /// Each variable path read, with the JSON value seen (`now` as RFC 3339).
    pub variables: BTreeMap<String, Value>,
    /// Paths read that were not there.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub missing: BTreeSet<String>,
}

/// Why an evaluation fell back to `doubt`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum FailClosed {
    /// Every block's condition was false (or the law has no block that held).
    NoBlockHeld,
    /// This block's condition could not be decided.
    Undecidable { block: Triage, error: EvalError },
}

impl fmt::Display for FailClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBlockHeld => f.write_str("no block's condition held"),
            Self::Undecidable { block, error } => {
                write!(
                    f,
                    "the `if {block}:` condition could not be decided: {error}"
                )
            }
        }
    }
}

/// Why a condition is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EvalError {
    #[error("`{path}` is missing")]
    Missing { path: String },
    #[error("`{term}` is a {found}, not true or false")]
    NotABoolean { term: String, found: &'static str },
    #[error("cannot compare a {left} with a {right} using {op}")]
    Incomparable {
        op: &'static str,
        left: &'static str,
        right: &'static str,
    },
    #[error("cannot compute a {left} {op} a {right}")]
    BadArithmetic {
        op: &'static str,
        left: &'static str,
        right: &'static str,
    },
    #[error("{value:?} is not an RFC 3339 timestamp")]
    NotATimestamp { value: String },
    #[error("{value:?} is not a duration such as 24h")]
    NotADuration { value: String },
    #[error("{value} is not representable as a number")]
    NotANumber { value: String },
    #[error("`in` needs a list, found a {found}")]
    NotAList { found: &'static str },
    #[error("arithmetic overflowed")]
    Overflow,
}

/// Decides `law` for one set of `variables` (a JSON object: the contract span's fields and any
/// context) at the instant `now`. Never fails: whatever goes wrong is a fail-closed `doubt`.
pub fn evaluate(law: &Law, variables: &Value, now: DateTime<Utc>) -> Decision {
    let mut cx = Context {
        vars: variables,
        now,
        seen: BTreeMap::new(),
        missing: BTreeSet::new(),
    };
    let mut outcome = Err(FailClosed::NoBlockHeld);
    for (triage, block) in law.blocks() {
        match cx.truth(&block.condition) {
            Truth::True => {
                outcome = Ok((triage, block.actions.clone()));
                break;
            }
            Truth::False => {}
            Truth::Unknown(error) => {
                outcome = Err(FailClosed::Undecidable {
                    block: triage,
                    error,
                });
                break;
            }
        }
    }
    let (triage, actions, fail_closed) = match outcome {
        Ok((triage, actions)) => (triage, actions, None),
        Err(why) => (Triage::Doubt, Vec::new(), Some(why)),
    };
    Decision {
        triage,
        actions,
        fail_closed,
        variables: cx.seen,
        missing: cx.missing,
    }
}

/// Kleene truth values; `Unknown` keeps the first error that made it so.
#[derive(Debug, Clone, PartialEq)]
enum Truth {
    True,
    False,
    Unknown(EvalError),
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

impl From<Result<bool, EvalError>> for Truth {
    fn from(r: Result<bool, EvalError>) -> Self {
        r.map_or_else(Self::Unknown, Self::from)
    }
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Time(DateTime<Utc>),
    Duration(TimeDelta),
    List(Vec<Val>),
    Object,
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Number(_) => "number",
            Self::Str(_) => "string",
            Self::Time(_) => "timestamp",
            Self::Duration(_) => "duration",
            Self::List(_) => "list",
            Self::Object => "object",
        }
    }

    fn from_json(v: &Value) -> Result<Self, EvalError> {
        Ok(match v {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(n.as_f64().ok_or_else(|| EvalError::NotANumber {
                value: n.to_string(),
            })?),
            Value::String(s) => Self::Str(s.clone()),
            Value::Array(items) => Self::List(
                items
                    .iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(_) => Self::Object,
        })
    }
}

struct Context<'a> {
    vars: &'a Value,
    now: DateTime<Utc>,
    seen: BTreeMap<String, Value>,
    missing: BTreeSet<String>,
}

impl Context<'_> {
    /// Evaluates every part (no short-circuit), so the variables reported do not depend on
    /// the order of the operands.
    fn truth(&mut self, e: &Expr) -> Truth {
        match e {
            Expr::Or(items) => {
                let all: Vec<Truth> = items.iter().map(|e| self.truth(e)).collect();
                if all.contains(&Truth::True) {
                    return Truth::True;
                }
                first_unknown(all).unwrap_or(Truth::False)
            }
            Expr::And(items) => {
                let all: Vec<Truth> = items.iter().map(|e| self.truth(e)).collect();
                if all.contains(&Truth::False) {
                    return Truth::False;
                }
                first_unknown(all).unwrap_or(Truth::True)
            }
            Expr::Not(e) => match self.truth(e) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                unknown => unknown,
            },
            Expr::Compare { op, left, right } => {
                let l = self.term(left);
                let r = self.term(right);
                match (l, r) {
                    (Ok(l), Ok(r)) => compare(*op, &l, &r).into(),
                    (Err(e), _) | (_, Err(e)) => Truth::Unknown(e),
                }
            }
            Expr::In { item, set } => {
                let item = self.term(item);
                let set = self.term(set);
                match (item, set) {
                    (Ok(item), Ok(Val::List(members))) => {
                        let all: Vec<Truth> =
                            members.iter().map(|m| equal(&item, m).into()).collect();
                        if all.contains(&Truth::True) {
                            return Truth::True;
                        }
                        first_unknown(all).unwrap_or(Truth::False)
                    }
                    (Ok(_), Ok(other)) => Truth::Unknown(EvalError::NotAList {
                        found: other.type_name(),
                    }),
                    (Err(e), _) | (_, Err(e)) => Truth::Unknown(e),
                }
            }
            Expr::Test(t) => match self.term(t) {
                Ok(Val::Bool(b)) => b.into(),
                Ok(other) => Truth::Unknown(EvalError::NotABoolean {
                    term: t.to_string(),
                    found: other.type_name(),
                }),
                Err(e) => Truth::Unknown(e),
            },
        }
    }

    fn term(&mut self, t: &Term) -> Result<Val, EvalError> {
        match t {
            Term::Literal(l) => Ok(match l {
                Literal::Null => Val::Null,
                Literal::Bool(b) => Val::Bool(*b),
                Literal::Number(n) => Val::Number(*n),
                Literal::String(s) => Val::Str(s.clone()),
                Literal::Duration(d) => Val::Duration(d.to_time_delta()),
            }),
            Term::Path(p) => self.lookup(p),
            Term::List(items) => {
                let all: Vec<_> = items.iter().map(|t| self.term(t)).collect();
                all.into_iter().collect::<Result<_, _>>().map(Val::List)
            }
            Term::Arith { first, rest } => {
                let mut acc = self.term(first);
                for (op, t) in rest {
                    let r = self.term(t);
                    acc = match (acc, r) {
                        (Ok(a), Ok(b)) => arith(*op, a, b),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    };
                }
                acc
            }
        }
    }

    fn lookup(&mut self, p: &Path) -> Result<Val, EvalError> {
        let name = p.to_string();
        if p.0.len() == 1 && p.0[0] == "now" {
            let text = self.now.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            self.seen.insert(name, Value::String(text));
            return Ok(Val::Time(self.now));
        }
        let mut cur = self.vars;
        let last = p.0.len().saturating_sub(1);
        for (i, seg) in p.0.iter().enumerate() {
            let next = match cur {
                Value::Object(fields) => fields.get(seg),
                Value::Array(items) if seg == "count" && i == last => {
                    let count = Value::from(items.len());
                    self.seen.insert(name, count);
                    return Ok(Val::Number(items.len() as f64));
                }
                Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(v) => cur = v,
                None => {
                    self.missing.insert(name.clone());
                    return Err(EvalError::Missing { path: name });
                }
            }
        }
        self.seen.insert(name, cur.clone());
        Val::from_json(cur)
    }
}

fn first_unknown(all: Vec<Truth>) -> Option<Truth> {
    all.into_iter().find(|t| matches!(t, Truth::Unknown(_)))
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, EvalError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| EvalError::NotATimestamp {
            value: s.to_string(),
        })
}

fn parse_duration(s: &str) -> Result<TimeDelta, EvalError> {
    duration_from_text(s)
        .map(|d| d.to_time_delta())
        .map_err(|_| EvalError::NotADuration {
            value: s.to_string(),
        })
}

fn equal(l: &Val, r: &Val) -> Result<bool, EvalError> {
    use Val::*;
    Ok(match (l, r) {
        (Null, Null) => true,
        (Null, _) | (_, Null) => false,
        (Bool(a), Bool(b)) => a == b,
        (Number(a), Number(b)) => a == b,
        (Str(a), Str(b)) => a == b,
        (Time(a), Time(b)) => a == b,
        (Duration(a), Duration(b)) => a == b,
        (Time(t), Str(s)) | (Str(s), Time(t)) => parse_time(s)? == *t,
        (Duration(d), Str(s)) | (Str(s), Duration(d)) => parse_duration(s)? == *d,
        (List(a), List(b)) => {
            if a.len() != b.len() {
                return Ok(false);
            }
            for (x, y) in a.iter().zip(b) {
                if !equal(x, y)? {
                    return Ok(false);
                }
            }
            true
        }
        _ => {
            return Err(EvalError::Incomparable {
                op: "==",
                left: l.type_name(),
                right: r.type_name(),
            });
        }
    })
}

fn order(op: CompareOp, l: &Val, r: &Val) -> Result<Ordering, EvalError> {
    use Val::*;
    let incomparable = || EvalError::Incomparable {
        op: op.as_str(),
        left: l.type_name(),
        right: r.type_name(),
    };
    match (l, r) {
        (Number(a), Number(b)) => a.partial_cmp(b).ok_or_else(incomparable),
        (Time(a), Time(b)) => Ok(a.cmp(b)),
        (Duration(a), Duration(b)) => Ok(a.cmp(b)),
        (Time(a), Str(s)) => Ok(a.cmp(&parse_time(s)?)),
        (Str(s), Time(b)) => Ok(parse_time(s)?.cmp(b)),
        (Duration(a), Str(s)) => Ok(a.cmp(&parse_duration(s)?)),
        (Str(s), Duration(b)) => Ok(parse_duration(s)?.cmp(b)),
        (Str(a), Str(b)) => Ok(parse_time(a)?.cmp(&parse_time(b)?)),
        _ => Err(incomparable()),
    }
}

fn compare(op: CompareOp, l: &Val, r: &Val) -> Result<bool, EvalError> {
    Ok(match op {
        CompareOp::Eq => equal(l, r)?,
        CompareOp::Ne => !equal(l, r)?,
        CompareOp::Lt => order(op, l, r)?.is_lt(),
        CompareOp::Le => order(op, l, r)?.is_le(),
        CompareOp::Gt => order(op, l, r)?.is_gt(),
        CompareOp::Ge => order(op, l, r)?.is_ge(),
    })
}

fn arith(op: ArithOp, a: Val, b: Val) -> Result<Val, EvalError> {
    use Val::*;
    // A string next to a time, a duration or another string is read as a timestamp.
    let timeish = |v: &Val| matches!(v, Time(_) | Duration(_) | Str(_));
    let (a, b) = match (a, b) {
        (Str(s), other) if timeish(&other) => (Time(parse_time(&s)?), other),
        pair => pair,
    };
    let (a, b) = match (a, b) {
        (other, Str(s)) if timeish(&other) => (other, Time(parse_time(&s)?)),
        pair => pair,
    };
    let add = op == ArithOp::Add;
    let result = match (&a, &b) {
        (Number(x), Number(y)) => {
            let n = if add { x + y } else { x - y };
            return if n.is_finite() {
                Ok(Number(n))
            } else {
                Err(EvalError::Overflow)
            };
        }
        (Duration(x), Duration(y)) => if add {
            x.checked_add(y)
        } else {
            x.checked_sub(y)
        }
        .map(Duration),
        (Time(t), Duration(d)) => if add {
            t.checked_add_signed(*d)
        } else {
            t.checked_sub_signed(*d)
        }
        .map(Time),
        (Duration(d), Time(t)) if add => t.checked_add_signed(*d).map(Time),
        (Time(x), Time(y)) if !add => Some(Duration(x.signed_duration_since(*y))),
        _ => {
            return Err(EvalError::BadArithmetic {
                op: op.as_str(),
                left: a.type_name(),
                right: b.type_name(),
            });
        }
    };
    result.ok_or(EvalError::Overflow)
}
