//! The LogLine ledger: spans, their canonical hashing and signing, per-tenant chains, and the
//! stores that keep them (PostgreSQL with row level security, or an embedded SQLite file).
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod crypto;
pub mod error;
pub mod law;
pub mod merkle;
pub mod plan;
pub mod proof;
pub mod query;
pub mod span;
pub mod spec;
pub mod store;
pub mod strict;
pub mod verify;

pub use error::{AppendError, InputError, StoreError};
pub use query::{Filter, Order, Page};
pub use span::{Appended, Draft, Principal, StoredSpan, Visibility};
pub use spec::{QuerySpec, SpecError, SpecResult};
pub use store::Store;
