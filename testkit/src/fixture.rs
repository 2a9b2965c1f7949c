//! A store opened in-process in a temporary data dir, for library tests.

use std::sync::Arc;

use ledger::crypto::NodeKey;
use ledger::store::{self, Store};

use crate::{Backend, pg};

/// A store and the temporary data dir (node key, SQLite file) it lives in; the dir is deleted
/// when the fixture drops, so keep the fixture alive as long as the store.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A store with its manifest, as a node has after `init`.
    pub async fn new(backend: Backend) -> Self {
        let f = Self::empty(backend).await;
        store::ensure_manifest(f.store.as_ref()).await.unwrap();
        f
    }

    /// A store with nothing in it, not even the manifest.
    pub async fn empty(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(pg::fresh_database().await),
        };
        let store = store::open(url.as_deref(), dir.path(), NodeKey::generate())
            .await
            .unwrap();
        Self { store, dir }
    }
}

/// [`Fixture::new`] on the embedded store.
pub async fn sqlite() -> Fixture {
    Fixture::new(Backend::Sqlite).await
}

/// [`Fixture::new`] on a fresh PostgreSQL database.
pub async fn postgres() -> Fixture {
    Fixture::new(Backend::Postgres).await
}
