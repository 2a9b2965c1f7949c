//! Shared helpers of the server's integration tests.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod fake_llm;

use std::sync::Arc;
use std::time::Duration;

use ledger::Store;
use ledger::crypto::NodeKey;
use server::chat::{ProviderSettings, RetryPolicy};

/// A fresh embedded ledger in a temporary directory (kept alive by the returned guard).
pub async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::store::open(None, dir.path(), NodeKey::generate())
        .await
        .unwrap();
    (dir, store)
}

/// Provider settings for tests: short backoff, a 5 s call limit.
pub fn fast_settings() -> ProviderSettings {
    ProviderSettings {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(3),
        },
    }
}
