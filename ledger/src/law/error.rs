//! Parse errors. Each carries the 1-based line and column it points at, so `logline law check`
//! can print `FILE:LINE:COL: message` and underline the offending character.

use std::fmt;

use serde::Serialize;
use thiserror::Error;

/// A place in the law's source text: 1-based line, 1-based column counted in characters (not
/// bytes), so editors and the CLI caret agree on non-ASCII text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a law's text was refused. The `Display` form starts with `LINE:COL: `.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParseError {
    /// The general case: the parser wanted one thing and saw another.
    #[error("{at}: expected {expected}, found {found}")]
    Unexpected {
        at: Position,
        expected: String,
        found: String,
    },
    #[error("{at}: unexpected character {ch:?}")]
    UnexpectedChar { at: Position, ch: char },
    #[error("{at}: unterminated string (strings end on the line they start)")]
    UnterminatedString { at: Position },
    #[error("{at}: unknown escape \\{ch} in a string (use \\\\, \\\", \\', \\n, \\t or \\r)")]
    InvalidEscape { at: Position, ch: char },
    #[error("{at}: invalid number {text:?}: {reason}")]
    InvalidNumber {
        at: Position,
        text: String,
        reason: String,
    },
    #[error("{at}: invalid duration {text:?}: {reason}")]
    InvalidDuration {
        at: Position,
        text: String,
        reason: String,
    },
    #[error("{at}: expected a version MAJOR.MINOR.PATCH such as 1.0.0, found {text:?}")]
    InvalidVersion { at: Position, text: String },
    #[error(
        "{at}: expected a clock such as `midnight Europe/Paris`, `midnight` or `realtime`, found {text:?}"
    )]
    InvalidClock { at: Position, text: String },
    #[error("{at}: `{what}` appears twice (first at {first})")]
    Duplicate {
        at: Position,
        what: String,
        first: Position,
    },
    #[error("{at}: {action}(...) needs the argument `{argument}`")]
    MissingArgument {
        at: Position,
        action: String,
        argument: String,
    },
    #[error("{at}: a law needs at least one block: `if ok:`, `if doubt:` or `if not:`")]
    NoBlocks { at: Position },
    #[error("{at}: nested more than {limit} levels deep")]
    TooDeep { at: Position, limit: u32 },
}

impl ParseError {
    /// Where the error points.
    pub fn position(&self) -> Position {
        match self {
            Self::Unexpected { at, .. }
            | Self::UnexpectedChar { at, .. }
            | Self::UnterminatedString { at }
            | Self::InvalidEscape { at, .. }
            | Self::InvalidNumber { at, .. }
            | Self::InvalidDuration { at, .. }
            | Self::InvalidVersion { at, .. }
            | Self::InvalidClock { at, .. }
            | Self::Duplicate { at, .. }
            | Self::MissingArgument { at, .. }
            | Self::NoBlocks { at }
            | Self::TooDeep { at, .. } => *at,
        }
    }
}
