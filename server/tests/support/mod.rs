//! What the server's integration tests share beyond `testkit`: settings of the server's own
//! provider types (which `testkit` cannot name without depending on the server).

use std::time::Duration;

use server::chat::{ProviderSettings, RetryPolicy};

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
        ..ProviderSettings::default()
    }
}
