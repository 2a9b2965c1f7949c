//! The typed syntax tree of a law, and its canonical text.
//!
//! The tree holds no source positions, so two texts that mean the same law give equal trees and
//! `parse(law.to_string()) == law` (the property tests hold the printer to that). It serializes
//! with serde so a `law` or `law.decision` span can carry it.

use std::fmt;

use serde::{Serialize, Serializer};

/// One law: `law <id>:<version>:`, an optional `scope:` and `clock:`, and up to three triage
/// blocks. The blocks are separate fields, not a list, so "at most one of each" is a type fact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Law {
    pub id: String,
    pub version: Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<Block>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doubt: Option<Block>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not: Option<Block>,
}

impl Law {
    /// The block for one triage outcome, if the law has it.
    pub fn block(&self, triage: Triage) -> Option<&Block> {
        match triage {
            Triage::Ok => self.ok.as_ref(),
            Triage::Doubt => self.doubt.as_ref(),
            Triage::Not => self.not.as_ref(),
        }
    }

    /// The blocks present, in evaluation order ok → doubt → not.
    pub fn blocks(&self) -> impl Iterator<Item = (Triage, &Block)> {
        Triage::ALL
            .into_iter()
            .filter_map(|t| self.block(t).map(|b| (t, b)))
    }
}

/// A semantic version; laws are cited by (id, version), so it is validated, not free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// When the law runs. The zone is checked for shape only here; the Midnight Ruler resolves it
/// and fails closed to `doubt` when the zone is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Clock {
    /// At 00:00 local time in an IANA zone (`clock: midnight` alone means Europe/Paris).
    Midnight { tz: String },
    /// Whenever asked (an authorization check, a policy on each span).
    Realtime,
}

impl Clock {
    /// The zone `clock: midnight` uses when none is named (DESIGN §6).
    pub const DEFAULT_TZ: &'static str = "Europe/Paris";
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Midnight { tz } => write!(f, "midnight {tz}"),
            Self::Realtime => f.write_str("realtime"),
        }
    }
}

/// The three outcomes of the triadic decision model (seed, Article 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Triage {
    Ok,
    Doubt,
    Not,
}

impl Triage {
    /// Evaluation order: the first block whose condition holds wins.
    pub const ALL: [Triage; 3] = [Triage::Ok, Triage::Doubt, Triage::Not];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Doubt => "doubt",
            Self::Not => "not",
        }
    }
}

impl fmt::Display for Triage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `if <triage>: <condition>` followed by `then: <actions>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    pub condition: Expr,
    pub actions: Vec<Action>,
}

/// A condition. `And`/`Or` are n-ary (a chain `a AND b AND c` is one node), which keeps long
/// chains from nesting deeply and so from exhausting the stack when printed, evaluated or dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// Two or more alternatives.
    Or(Vec<Expr>),
    /// Two or more conjuncts.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        op: CompareOp,
        left: Term,
        right: Term,
    },
    /// `item in [a, b]`, or `item in some.path` naming a JSON array.
    In {
        item: Term,
        set: Term,
    },
    /// A bare value used as a condition (`if not: true`, `deadline_passed AND no_response`);
    /// it must evaluate to a boolean.
    Test(Term),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A value: a literal, a variable, a list, or `+`/`-` arithmetic (`created_at + 24h`,
/// `now - deadline_at`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    Literal(Literal),
    Path(Path),
    List(Vec<Term>),
    /// `first op t1 op t2 …`, left to right; never built with an empty `rest`.
    Arith {
        first: Box<Term>,
        rest: Vec<(ArithOp, Term)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArithOp {
    Add,
    Sub,
}

impl ArithOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "+",
            Self::Sub => "-",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    Null,
    Bool(bool),
    /// Always finite: the lexer refuses anything else.
    Number(f64),
    String(String),
    Duration(Duration),
}

/// A dotted variable name such as `contract.guarantor.confirmed_at`. Segments after the first
/// may be array indexes (`approvals.0.by`); `.count` on an array is its length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path(pub Vec<String>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl Serialize for Path {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A whole number of seconds, written `24h`, `5m`, `3d`, `1h30m`, `2w`, `10s`. Bounded so it
/// always fits `chrono::TimeDelta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    seconds: i64,
}

impl Duration {
    /// The largest magnitude accepted: what `chrono::TimeDelta` can hold, in whole seconds.
    pub const MAX_SECONDS: i64 = i64::MAX / 1000;

    /// `None` beyond ±[`Self::MAX_SECONDS`].
    pub fn from_seconds(seconds: i64) -> Option<Self> {
        (seconds.checked_abs()? <= Self::MAX_SECONDS).then_some(Self { seconds })
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }

    pub fn to_time_delta(self) -> chrono::TimeDelta {
        // In range by construction; the fallback is unreachable but keeps this total.
        chrono::TimeDelta::try_seconds(self.seconds).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl fmt::Display for Duration {
    /// Largest units first (`90061` seconds is `1d1h1m1s`), `0s` for zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seconds == 0 {
            return f.write_str("0s");
        }
        if self.seconds < 0 {
            f.write_str("-")?;
        }
        let mut left = self.seconds.unsigned_abs();
        for (unit, size) in [("d", 86_400u64), ("h", 3_600), ("m", 60), ("s", 1)] {
            if left >= size {
                write!(f, "{}{unit}", left / size)?;
                left %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a block does when it wins. Text arguments are free text (identifiers or quoted strings
/// in the source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Accept,
    Hold { hours: u32 },
    Terminate { reason: String },
    Notify { role: String },
    Tag { key: String, val: String },
    AppendLedger,
    Permit,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept => f.write_str("accept"),
            Self::Hold { hours } => write!(f, "hold(hours={hours})"),
            Self::Terminate { reason } => write!(f, "terminate(reason={})", TextArg(reason)),
            Self::Notify { role } => write!(f, "notify(role={})", TextArg(role)),
            Self::Tag { key, val } => write!(f, "tag(key={},val={})", TextArg(key), TextArg(val)),
            Self::AppendLedger => f.write_str("append_ledger"),
            Self::Permit => f.write_str("permit"),
            Self::Deny => f.write_str("deny"),
        }
    }
}

/// Prints an action argument bare when it reads back as the same word, quoted otherwise.
struct TextArg<'a>(&'a str);

impl fmt::Display for TextArg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_identifier(self.0) {
            f.write_str(self.0)
        } else {
            write_quoted(f, self.0)
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what the lexer reads as one word.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Law {
    /// The canonical text: header, then one blank line before each block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "law {}:{}:", self.id, self.version)?;
        if let Some(scope) = &self.scope {
            writeln!(f, "scope: {scope}")?;
        }
        if let Some(clock) = &self.clock {
            writeln!(f, "clock: {clock}")?;
        }
        for (triage, block) in self.blocks() {
            writeln!(f)?;
            writeln!(f, "if {triage}: {}", block.condition)?;
            f.write_str("then: ")?;
            for (i, action) in block.actions.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{action}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    /// Parenthesizes exactly where the tree's shape would otherwise be lost: an `Or` inside an
    /// `Or` or `And`, an `And` inside an `And`, either under `NOT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn child(f: &mut fmt::Formatter<'_>, e: &Expr, paren: bool) -> fmt::Result {
            if paren {
                write!(f, "({e})")
            } else {
                write!(f, "{e}")
            }
        }
        match self {
            Self::Or(items) => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" OR ")?;
                    }
                    child(f, e, matches!(e, Self::Or(_)))?;
                }
                Ok(())
            }
            Self::And(items) => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" AND ")?;
                    }
                    child(f, e, matches!(e, Self::Or(_) | Self::And(_)))?;
                }
                Ok(())
            }
            Self::Not(e) => {
                f.write_str("NOT ")?;
                child(f, e, matches!(**e, Self::Or(_) | Self::And(_)))
            }
            Self::Compare { op, left, right } => write!(f, "{left} {} {right}", op.as_str()),
            Self::In { item, set } => write!(f, "{item} in {set}"),
            Self::Test(t) => write!(f, "{t}"),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(l) => write!(f, "{l}"),
            Self::Path(p) => write!(f, "{p}"),
            Self::List(items) => {
                f.write_str("[")?;
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str("]")
            }
            Self::Arith { first, rest } => {
                // Arithmetic is one flat chain, so a nested chain needs its parentheses back.
                let operand = |f: &mut fmt::Formatter<'_>, t: &Term| match t {
                    Self::Arith { .. } => write!(f, "({t})"),
                    _ => write!(f, "{t}"),
                };
                operand(f, first)?;
                for (op, t) in rest {
                    write!(f, " {} ", op.as_str())?;
                    operand(f, t)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            // Rust prints the shortest text that reads back as the same f64, never an exponent.
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write_quoted(f, s),
            Self::Duration(d) => write!(f, "{d}"),
        }
    }
}
