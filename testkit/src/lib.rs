//! Test support shared by every crate of the workspace, so no test file carries its own copy:
//!
//! - [`pg`]: per-test PostgreSQL databases cloned from a migrated template;
//! - [`both_stores!`]: one behaviour as one test per store;
//! - [`Fixture`]: a store opened in-process (library tests);
//! - [`Ledger`] and [`Run`]: a data dir and database for the real binary (end-to-end tests);
//! - [`fake_llm`]: fake model servers speaking the OpenAI and Ollama wire protocols.
//!
//! Test support panics on failure by design: a fixture that cannot be built fails its test.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a fixture that cannot be built fails its test"
)]

mod binary;
pub mod fake_llm;
mod fixture;
pub mod pg;

use std::future::Future;

pub use binary::{Ledger, Run, finish, ndjson, spawn};
pub use fixture::{Fixture, postgres, sqlite};

/// The two stores every behaviour is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file in the data dir.
    Sqlite,
    /// A fresh PostgreSQL database of the test's own (see [`pg`]).
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`, as the binary reports its store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Runs a test body on a fresh Tokio runtime, as `#[tokio::test]` does: the current-thread
/// runtime for `worker_threads == 0`, else a multi-thread one with that many workers.
/// [`both_stores!`] expands to this so the test may return whatever the body returns.
pub fn block_on<F: Future>(worker_threads: usize, body: F) -> F::Output {
    let mut builder = if worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(worker_threads);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("Failed building the Runtime")
        .block_on(body)
}

/// Runs each behaviour as one test per store.
///
/// `both_stores!(a, b)` turns `async fn a(backend: Backend) -> T` into the tests `a::sqlite`
/// and `a::postgres` (`T` is `()` or a `Result`), each on a current-thread runtime;
/// `both_stores!(threads = 4; a, b)` gives each a multi-thread runtime with 4 workers.
///
/// `both_stores!(mod on_sqlite, on_postgres; open = testkit::Fixture::new; a, b)` names the
/// tests `on_sqlite::a` and `on_postgres::a` instead and passes each behaviour what
/// `open(backend).await` returns (a path that resolves from inside those modules).
#[macro_export]
macro_rules! both_stores {
    (mod $sqlite:ident, $postgres:ident; open = $open:path; $($name:ident),* $(,)?) => {
        mod $sqlite {
            $(
                #[test]
                fn $name() -> impl ::std::process::Termination {
                    $crate::block_on(0, async {
                        super::$name($open($crate::Backend::Sqlite).await).await
                    })
                }
            )*
        }
        mod $postgres {
            $(
                #[test]
                fn $name() -> impl ::std::process::Termination {
                    $crate::block_on(0, async {
                        super::$name($open($crate::Backend::Postgres).await).await
                    })
                }
            )*
        }
    };
    (threads = $threads:literal; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> impl ::std::process::Termination {
                $crate::block_on($threads, super::$name($crate::Backend::Sqlite))
            }
            #[test]
            fn postgres() -> impl ::std::process::Termination {
                $crate::block_on($threads, super::$name($crate::Backend::Postgres))
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {
        $crate::both_stores!(threads = 0; $($name),*);
    };
}
