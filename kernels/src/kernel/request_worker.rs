//! `request_worker`'s declaration: how often it runs queued requests, how many, and how long a
//! claim on one holds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};

/// The `request_worker` kernel (its runtime is `request_worker::RequestWorker`).
pub struct RequestWorkerKernel;

/// `request_worker`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    pub interval_ms: Setting<u64>,
    pub batch: Setting<u64>,
    pub lease_ms: Setting<u64>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            interval_ms: 500.into(),
            batch: 10.into(),
            lease_ms: 30_000.into(),
        }
    }
}

/// The worker's configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub interval: Duration,
    /// Most requests one pass runs.
    pub batch: usize,
    /// How long a claim holds (at least `run_code`'s `time_ms` + 2 s in effect).
    pub lease: Duration,
}

impl WorkerConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        RequestWorkerKernel::read(config).map_err(|e| e.to_string())
    }
}

/// The configuration seeded into the `request_worker` kernel span.
pub fn default_config() -> Value {
    super::default_config::<RequestWorkerKernel>()
}

impl Kernel for RequestWorkerKernel {
    const NAME: &'static str = "request_worker";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str =
        "verified; `serve` runs queued requests once each, oldest first, every interval_ms";
    type Settings = WorkerSettings;
    type Config = WorkerConfig;

    fn validate(s: WorkerSettings) -> Result<WorkerConfig, ConfigError> {
        let interval = s.interval_ms.from_to("interval_ms", 10, 86_400_000)?;
        let batch = s.batch.from_to("batch", 1, 1000)?;
        let lease = s.lease_ms.from_to("lease_ms", 1000, 86_400_000)?;
        Ok(WorkerConfig {
            interval: Duration::from_millis(interval),
            batch: usize::try_from(batch).unwrap_or(10),
            lease: Duration::from_millis(lease),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_config_is_valid_and_unknown_settings_are_refused() {
        let c = WorkerConfig::from_value(&default_config()).unwrap();
        assert_eq!(c.lease, Duration::from_secs(30));
        // The config seeded before this kernel had a body still reads.
        assert!(WorkerConfig::from_value(&json!({"interval_ms": 500, "batch": 10})).is_ok());
        assert!(WorkerConfig::from_value(&json!({"lease": 1})).is_err());
    }
}
