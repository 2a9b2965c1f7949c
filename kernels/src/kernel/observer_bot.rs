//! `observer_bot`'s declaration: how often it looks for scheduled functions, and how many.

use std::time::Duration;

use ledger::query::MAX_LIMIT;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};

/// The `observer_bot` kernel (its runtime is `observer_bot::ObserverBot`).
pub struct ObserverBotKernel;

/// `observer_bot`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserverSettings {
    pub interval_ms: Setting<u64>,
    pub batch: Setting<u64>,
}

impl Default for ObserverSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000.into(),
            batch: 100.into(),
        }
    }
}

/// The bot's configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    pub interval: Duration,
    /// Most scheduled functions read per tenant per pass.
    pub batch: i64,
}

impl ObserverConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        ObserverBotKernel::read(config).map_err(|e| e.to_string())
    }
}

/// The configuration seeded into the `observer_bot` kernel span.
pub fn default_config() -> Value {
    super::default_config::<ObserverBotKernel>()
}

impl Kernel for ObserverBotKernel {
    const NAME: &'static str = "observer_bot";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str =
        "verified; `serve` turns scheduled functions into requests every interval_ms";
    type Settings = ObserverSettings;
    type Config = ObserverConfig;

    fn validate(s: ObserverSettings) -> Result<ObserverConfig, ConfigError> {
        let interval = s.interval_ms.from_to("interval_ms", 10, 86_400_000)?;
        let batch = s.batch.from_to("batch", 1, MAX_LIMIT.unsigned_abs())?;
        Ok(ObserverConfig {
            interval: Duration::from_millis(interval),
            batch: i64::try_from(batch).unwrap_or(MAX_LIMIT),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_config_is_valid_and_unknown_settings_are_refused() {
        let c = ObserverConfig::from_value(&default_config()).unwrap();
        assert_eq!((c.interval, c.batch), (Duration::from_secs(1), 100));
        assert!(ObserverConfig::from_value(&json!({"every": 1})).is_err());
    }
}
