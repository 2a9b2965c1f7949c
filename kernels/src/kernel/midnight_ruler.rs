//! `midnight_ruler`'s declaration: how often `serve` catches up on midnights, and the zone
//! that `clock: midnight` without one names.

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};
use crate::midnight_ruler::resolve_zone;

/// The `midnight_ruler` kernel (its runtime is `midnight_ruler::catch_up`).
pub struct MidnightRulerKernel;

/// `midnight_ruler`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulerSettings {
    pub interval_ms: Setting<u64>,
    /// An IANA zone (the tz database must know it).
    pub default_tz: Setting<String>,
}

impl Default for RulerSettings {
    fn default() -> Self {
        Self {
            interval_ms: 60_000.into(),
            default_tz: "Europe/Paris".to_string().into(),
        }
    }
}

/// The ruler's configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulerConfig {
    pub interval: Duration,
    pub default_tz: Tz,
}

impl Kernel for MidnightRulerKernel {
    const NAME: &'static str = "midnight_ruler";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str =
        "verified; `serve` rules each midnight and backfills missed ones every interval_ms";
    type Settings = RulerSettings;
    type Config = RulerConfig;

    fn validate(s: RulerSettings) -> Result<RulerConfig, ConfigError> {
        let interval = s.interval_ms.from_to("interval_ms", 1000, 86_400_000)?;
        let default_tz = match &s.default_tz {
            Setting::Set(name) => resolve_zone(name).ok_or_else(|| Value::String(name.clone())),
            Setting::Wrong(other) => Err(other.clone()),
        }
        .map_err(|value| ConfigError::Expected {
            key: "default_tz",
            expected: "an IANA zone such as Europe/Paris",
            value,
        })?;
        Ok(RulerConfig {
            interval: Duration::from_millis(interval),
            default_tz,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_zone_must_be_one_the_tz_database_knows() {
        let c = MidnightRulerKernel::read(&json!({"default_tz": "America/Santiago"})).unwrap();
        assert_eq!(c.default_tz, Tz::America__Santiago);
        let e = MidnightRulerKernel::read(&json!({"default_tz": "Mars/Olympus_Mons"}));
        assert_eq!(
            e.unwrap_err().to_string(),
            "`default_tz` must be an IANA zone such as Europe/Paris, not \"Mars/Olympus_Mons\""
        );
        let e = MidnightRulerKernel::read(&json!({"interval_ms": 999})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`interval_ms` must be an integer from 1000 to 86400000"
        );
    }
}
