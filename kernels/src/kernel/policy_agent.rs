//! `policy_agent`'s declaration: how often it runs the policies, how much each takes at once,
//! and the sandbox limits of one evaluation.

use std::time::Duration;

use ledger::query::MAX_LIMIT;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};
use crate::sandbox::Limits;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The `policy_agent` kernel (its runtime is `policy_agent::PolicyAgent`).
pub struct PolicyAgentKernel;

/// `policy_agent`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyAgentSettings {
    pub interval_ms: Setting<u64>,
    pub batch: Setting<u64>,
    pub time_ms: Setting<u64>,
    pub memory_bytes: Setting<u64>,
    pub lease_ms: Setting<u64>,
}

impl Default for PolicyAgentSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000.into(),
            batch: 500.into(),
            time_ms: 3000.into(),
            memory_bytes: (16 * MIB).into(),
            lease_ms: 60_000.into(),
        }
    }
}

/// The agent's configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyAgentConfig {
    /// Pause between two passes over the policies.
    pub interval: Duration,
    /// Most spans one policy takes per claim.
    pub batch: i64,
    /// Sandbox limits for one `on(span)` call.
    pub limits: Limits,
    /// How long a claim on a batch holds before another process may take it over.
    pub lease: Duration,
}

impl PolicyAgentConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        PolicyAgentKernel::read(config).map_err(|e| e.to_string())
    }
}

/// The configuration seeded into the `policy_agent` kernel span.
pub fn default_config() -> Value {
    super::default_config::<PolicyAgentKernel>()
}

impl Kernel for PolicyAgentKernel {
    const NAME: &'static str = "policy_agent";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str = "verified; `serve` runs the active policies every interval_ms";
    type Settings = PolicyAgentSettings;
    type Config = PolicyAgentConfig;

    /// Out-of-range values are errors (Stage-0 then refuses the kernel), and a claim must
    /// outlive one evaluation.
    fn validate(s: PolicyAgentSettings) -> Result<PolicyAgentConfig, ConfigError> {
        let interval = s.interval_ms.between("interval_ms", 10, 24 * 3600 * 1000)?;
        let batch = s.batch.between("batch", 1, MAX_LIMIT.unsigned_abs())?;
        let time_ms = s.time_ms.between("time_ms", 1, 60_000)?;
        let memory = s.memory_bytes.between("memory_bytes", MIB, 1024 * MIB)?;
        let lease = s.lease_ms.between("lease_ms", 1000, 24 * 3600 * 1000)?;
        if lease < 2 * time_ms {
            return Err(ConfigError::Together(format!(
                "`lease_ms` ({lease}) must be at least twice `time_ms` ({time_ms}), so a claim outlives one evaluation"
            )));
        }
        Ok(PolicyAgentConfig {
            interval: Duration::from_millis(interval),
            batch: i64::try_from(batch).unwrap_or(MAX_LIMIT),
            limits: Limits {
                memory_bytes: usize::try_from(memory).unwrap_or(usize::MAX),
                time: Duration::from_millis(time_ms),
                stack_bytes: usize::try_from(512 * KIB).unwrap_or(usize::MAX),
                output_bytes: usize::try_from(256 * KIB).unwrap_or(usize::MAX),
                log_lines: 0,
                log_bytes: 0,
            },
            lease: Duration::from_millis(lease),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_config_is_valid_and_bad_settings_are_refused() {
        let c = PolicyAgentConfig::from_value(&default_config()).unwrap();
        assert_eq!(c.limits.time, Duration::from_millis(3000));
        assert_eq!(c.batch, 500);
        // The config seeded before this kernel had a body still reads.
        let old = json!({"interval_ms": 1000, "batch": 500, "time_ms": 3000});
        assert_eq!(PolicyAgentConfig::from_value(&old).unwrap(), c);
        let e = PolicyAgentConfig::from_value(&json!({"speed": 1})).unwrap_err();
        assert!(e.starts_with("unknown setting `speed`"), "{e}");
        let e = PolicyAgentConfig::from_value(&json!({"lease_ms": 1000})).unwrap_err();
        assert!(e.contains("at least twice"), "{e}");
    }
}
