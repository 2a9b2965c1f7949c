//! Composing the actions of several decisions that touch one resource (DESIGN §6).
//!
//! Every part is a join in a small lattice, so composing is commutative, associative and
//! idempotent (the property tests check it): the same set of decisions gives the same result in
//! whatever order laws ran, and running one twice changes nothing.
//!
//! - State: `terminate > accept > hold`; holds take the longest duration; terminations keep
//!   every reason given.
//! - Access: `deny > permit` — one law denying is enough, the conservative choice.
//! - Tags and notifications: set unions. Two values for one tag key are both kept; choosing
//!   between them is not a composition rule the design gives.
//! - `append_ledger`: a flag, so the audit span is written exactly once however many decisions
//!   asked for it.
//!
//! The fields of [`Composition`] are in the seed's execution order: state transition, access,
//! tags, notifications, and `append_ledger` last.

use std::collections::BTreeSet;

use serde::Serialize;

use super::ast::Action;

/// What to do to one resource, all decisions taken together.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Composition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    pub tags: BTreeSet<Tag>,
    pub notify: BTreeSet<String>,
    pub append_ledger: bool,
}

/// The winning state transition. Variants are in rising precedence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StateChange {
    Hold { hours: u32 },
    Accept,
    Terminate { reasons: BTreeSet<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Permit,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Tag {
    pub key: String,
    pub val: String,
}

impl Composition {
    /// The composition of one action list.
    pub fn of(actions: &[Action]) -> Self {
        let mut c = Self::default();
        for action in actions {
            c.add(action);
        }
        c
    }

    /// Folds one more action in.
    pub fn add(&mut self, action: &Action) {
        match action {
            Action::Accept => self.join_state(StateChange::Accept),
            Action::Hold { hours } => self.join_state(StateChange::Hold { hours: *hours }),
            Action::Terminate { reason } => self.join_state(StateChange::Terminate {
                reasons: BTreeSet::from([reason.clone()]),
            }),
            Action::Notify { role } => {
                self.notify.insert(role.clone());
            }
            Action::Tag { key, val } => {
                self.tags.insert(Tag {
                    key: key.clone(),
                    val: val.clone(),
                });
            }
            Action::AppendLedger => self.append_ledger = true,
            Action::Permit => self.access = self.access.max(Some(Access::Permit)),
            Action::Deny => self.access = Some(Access::Deny),
        }
    }

    /// The composition of `self` and `other`.
    pub fn join(mut self, other: Self) -> Self {
        if let Some(state) = other.state {
            self.join_state(state);
        }
        self.access = self.access.max(other.access);
        self.tags.extend(other.tags);
        self.notify.extend(other.notify);
        self.append_ledger |= other.append_ledger;
        self
    }

    fn join_state(&mut self, new: StateChange) {
        use StateChange::*;
        self.state = Some(match (self.state.take(), new) {
            (None, s) => s,
            (Some(Terminate { mut reasons }), Terminate { reasons: more }) => {
                reasons.extend(more);
                Terminate { reasons }
            }
            (Some(t @ Terminate { .. }), _) | (_, t @ Terminate { .. }) => t,
            (Some(Accept), _) | (_, Accept) => Accept,
            (Some(Hold { hours: a }), Hold { hours: b }) => Hold { hours: a.max(b) },
        });
    }
}

/// Composes the action lists of several decisions on one resource.
pub fn compose<'a>(decisions: impl IntoIterator<Item = &'a [Action]>) -> Composition {
    decisions
        .into_iter()
        .fold(Composition::default(), |c, actions| {
            c.join(Composition::of(actions))
        })
}
