//! `prompt_bandit`'s declaration: the warm-up, the probability floor, the late-feedback window,
//! the guardrail and the reward's latency target (the runtime is `prompt_bandit::Bandit`; the
//! reward and the choice are documented there and in `prompts/README.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};

/// The `prompt_bandit` kernel.
pub struct PromptBanditKernel;

/// `prompt_bandit`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptBanditSettings {
    /// How stale the posteriors may be: the chat refreshes them from the ledger (in the
    /// background) at most this often.
    pub interval_ms: Setting<u64>,
    /// Rewarded runs each eligible variant gets before Thompson sampling starts: until then new
    /// conversations go uniformly to the variants still below it.
    pub warmup_samples: Setting<u64>,
    /// The least probability any eligible variant is given (a worse variant keeps being
    /// measured); at most `1 / variants`, which is uniform.
    pub floor: Setting<f64>,
    /// Feedback counts for the bandit only when given within this many seconds of the run.
    pub feedback_window_secs: Setting<u64>,
    /// Rewarded runs a variant needs before the guardrail may drop it.
    pub guardrail_min_samples: Setting<u64>,
    /// A variant whose share of failed runs (reward below 0.5) exceeds this is dropped.
    pub guardrail_failure_rate: Setting<f64>,
    /// A run slower than this loses reward (see the formula in `prompt_bandit`).
    pub latency_target_ms: Setting<u64>,
    /// Joint posterior draws that estimate each variant's chance of being best.
    pub draws: Setting<u64>,
}

impl Default for PromptBanditSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000.into(),
            warmup_samples: 20.into(),
            floor: 0.05.into(),
            feedback_window_secs: Setting::Set(7 * 24 * 3600),
            guardrail_min_samples: 30.into(),
            guardrail_failure_rate: 0.6.into(),
            latency_target_ms: 8000.into(),
            draws: 4000.into(),
        }
    }
}

/// The bandit's configuration, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct BanditConfig {
    pub interval: Duration,
    pub warmup_samples: u64,
    pub floor: f64,
    pub feedback_window: Duration,
    pub guardrail_min_samples: u64,
    pub guardrail_failure_rate: f64,
    pub latency_target_ms: u64,
    pub draws: u32,
}

impl Default for BanditConfig {
    fn default() -> Self {
        // The defaults are valid by construction (a unit test holds them to it).
        PromptBanditKernel::validate(PromptBanditSettings::default()).unwrap_or(Self {
            interval: Duration::from_secs(1),
            warmup_samples: 20,
            floor: 0.05,
            feedback_window: Duration::from_secs(7 * 24 * 3600),
            guardrail_min_samples: 30,
            guardrail_failure_rate: 0.6,
            latency_target_ms: 8000,
            draws: 4000,
        })
    }
}

impl BanditConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        PromptBanditKernel::read(config).map_err(|e| e.to_string())
    }
}

/// The configuration seeded into the `prompt_bandit` kernel span.
pub fn default_config() -> Value {
    super::default_config::<PromptBanditKernel>()
}

impl Kernel for PromptBanditKernel {
    const NAME: &'static str = "prompt_bandit";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str = "verified; the chat picks the prompt variant of each new conversation by Thompson sampling (posteriors refreshed every interval_ms)";
    type Settings = PromptBanditSettings;
    type Config = BanditConfig;

    fn validate(s: PromptBanditSettings) -> Result<BanditConfig, ConfigError> {
        let interval = s.interval_ms.between("interval_ms", 10, 24 * 3600 * 1000)?;
        let warmup_samples = s.warmup_samples.between("warmup_samples", 0, 1_000_000)?;
        let floor = s.floor.within("floor", 0.0, 0.5)?;
        let window = s
            .feedback_window_secs
            .between("feedback_window_secs", 0, 365 * 24 * 3600)?;
        let guardrail_min_samples =
            s.guardrail_min_samples
                .between("guardrail_min_samples", 1, 1_000_000)?;
        let guardrail_failure_rate =
            s.guardrail_failure_rate
                .within("guardrail_failure_rate", 0.0, 1.0)?;
        let latency_target_ms = s
            .latency_target_ms
            .between("latency_target_ms", 1, 3_600_000)?;
        let draws = s.draws.between("draws", 100, 100_000)?;
        Ok(BanditConfig {
            interval: Duration::from_millis(interval),
            warmup_samples,
            floor,
            feedback_window: Duration::from_secs(window),
            guardrail_min_samples,
            guardrail_failure_rate,
            latency_target_ms,
            draws: u32::try_from(draws).unwrap_or(100_000),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_config_is_valid_and_bad_settings_are_refused_by_name() {
        let c = BanditConfig::from_value(&default_config()).unwrap();
        assert_eq!(c, BanditConfig::default());
        assert_eq!((c.warmup_samples, c.floor, c.draws), (20, 0.05, 4000));
        let e = BanditConfig::from_value(&json!({"floor": 0.7})).unwrap_err();
        assert_eq!(e, "`floor` must be a number from 0 to 0.5, not 0.7");
        let e = BanditConfig::from_value(&json!({"floor": "x"})).unwrap_err();
        assert_eq!(e, "`floor` must be a number from 0 to 0.5, not \"x\"");
        let e = BanditConfig::from_value(&json!({"draws": 5})).unwrap_err();
        assert_eq!(e, "`draws` must be between 100 and 100000, not 5");
        assert!(BanditConfig::from_value(&json!({"epsilon": 0.1})).is_err());
    }
}
