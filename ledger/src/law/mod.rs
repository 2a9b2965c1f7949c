//! The LogLine law language (seed 001, Articles 9–10; DESIGN §6): a law is text such as
//!
//! ```text
//! law midnight_deadline:1.0.0:
//! scope: deliverable
//! clock: midnight Europe/Paris
//!
//! if ok: accepted == true OR approvals.count >= quorum
//! then: accept, tag(key=status,val=accepted), append_ledger
//!
//! if not: now >= deadline_at AND accepted == false
//! then: terminate(reason=deadline_passed), append_ledger
//! ```
//!
//! [`parse`] turns it into a [`Law`] (errors carry line and column), [`evaluate`] decides it
//! for one contract at one instant (failing closed to `doubt`), and [`compose`] merges the
//! actions of several decisions on one resource. All three are pure: no clock, no I/O, so the
//! Midnight Ruler, simulations and tests get the same answers.

mod ast;
mod compose;
mod error;
mod eval;
mod lexer;
mod parser;

pub use ast::{
    Action, ArithOp, Block, Clock, CompareOp, Duration, Expr, Law, Literal, Path, Term, Triage,
    Version,
};
pub use compose::{Access, Composition, StateChange, Tag, compose};
pub use error::{ParseError, Position};
pub use eval::{Decision, EvalError, FailClosed, evaluate};
pub use parser::{MAX_DEPTH, parse};

impl std::str::FromStr for Law {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}
