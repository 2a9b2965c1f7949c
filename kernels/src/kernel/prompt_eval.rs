//! `prompt_eval`'s declaration: which suites a prompt candidate must pass, on which provider,
//! at which threshold, and how often `serve` looks for new candidates (issue 11). Its runtime
//! loop is `prompt_eval.rs`; what it runs each pass is injected by the binary (the suite runner
//! lives in `evals`, above the server).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ConfigError, Kernel, Setting};

/// The `prompt_eval` kernel.
pub struct PromptEvalKernel;

/// The suites compiled into the `logline` binary (`evals/suites/<name>.yaml`); a test in
/// `evals` checks that this list and the embedded suites agree.
pub const KNOWN_SUITES: [&str; 2] = ["happy", "stress"];

/// `prompt_eval`'s settings as its kernel span stores them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptEvalSettings {
    pub interval_ms: Setting<u64>,
    /// Suite names (see [`KNOWN_SUITES`]); a candidate must pass every one.
    pub suites: Setting<Vec<String>>,
    /// `offline` (the default): the embedded offline provider — the gate then checks that a
    /// prompt compiles, fits and drives the agent through the suites, deterministically and in
    /// seconds, whatever model the chat uses; `server`: the provider `serve` is configured with
    /// (a real check of the model's answers, minutes per suite on a CPU model, and a chat that
    /// waits for it).
    pub provider: Setting<String>,
    /// Pass rate every suite must reach; `null`: each suite's own `threshold`.
    pub threshold: Setting<Option<f64>>,
    /// Cases in flight at once.
    pub concurrency: Setting<u64>,
}

impl Default for PromptEvalSettings {
    fn default() -> Self {
        Self {
            interval_ms: 5000.into(),
            suites: vec!["happy".to_string()].into(),
            provider: "offline".to_string().into(),
            threshold: None.into(),
            concurrency: 4.into(),
        }
    }
}

/// Which provider a candidate is evaluated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalProvider {
    /// The provider the server's chat uses.
    Server,
    /// The embedded offline provider (deterministic, no model).
    Offline,
}

impl EvalProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Offline => "offline",
        }
    }
}

/// The configuration a pass runs with, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEvalConfig {
    pub interval: Duration,
    pub suites: Vec<String>,
    pub provider: EvalProvider,
    pub threshold: Option<f64>,
    pub concurrency: usize,
}

impl PromptEvalConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        PromptEvalKernel::read(config).map_err(|e| e.to_string())
    }

    /// The configuration as it is recorded with every activation decision.
    pub fn to_json(&self) -> Value {
        json!({
            "suites": self.suites,
            "provider": self.provider.as_str(),
            "threshold": self.threshold,
            "concurrency": self.concurrency,
        })
    }
}

impl Default for PromptEvalConfig {
    fn default() -> Self {
        // The default settings are valid (a unit test says so); this cannot fall through.
        PromptEvalKernel::validate(PromptEvalSettings::default()).unwrap_or(Self {
            interval: Duration::from_secs(5),
            suites: vec!["happy".into()],
            provider: EvalProvider::Offline,
            threshold: None,
            concurrency: 4,
        })
    }
}

impl Kernel for PromptEvalKernel {
    const NAME: &'static str = "prompt_eval";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str = "verified; `serve` runs the suites over new prompt block and variant versions (candidates) every interval_ms and activates only those that pass";
    type Settings = PromptEvalSettings;
    type Config = PromptEvalConfig;

    fn validate(s: PromptEvalSettings) -> Result<PromptEvalConfig, ConfigError> {
        let interval = s.interval_ms.from_to("interval_ms", 100, 86_400_000)?;
        let suites = match s.suites {
            Setting::Set(v)
                if !v.is_empty() && v.iter().all(|n| KNOWN_SUITES.contains(&n.as_str())) =>
            {
                let mut out: Vec<String> = Vec::new();
                for n in v {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                out
            }
            Setting::Set(v) => {
                return Err(ConfigError::Expected {
                    key: "suites",
                    expected: "a non-empty list of suite names (happy, stress)",
                    value: json!(v),
                });
            }
            Setting::Wrong(value) => {
                return Err(ConfigError::Expected {
                    key: "suites",
                    expected: "a non-empty list of suite names (happy, stress)",
                    value,
                });
            }
        };
        let provider = match &s.provider {
            Setting::Set(p) if p == "server" => Ok(EvalProvider::Server),
            Setting::Set(p) if p == "offline" => Ok(EvalProvider::Offline),
            Setting::Set(p) => Err(Value::String(p.clone())),
            Setting::Wrong(v) => Err(v.clone()),
        }
        .map_err(|value| ConfigError::Expected {
            key: "provider",
            expected: "`server` or `offline`",
            value,
        })?;
        let threshold = match s.threshold {
            Setting::Set(None) => None,
            Setting::Set(Some(t)) if (0.0..=1.0).contains(&t) => Some(t),
            Setting::Set(Some(t)) => {
                return Err(ConfigError::Expected {
                    key: "threshold",
                    expected: "null or a fraction from 0 to 1",
                    value: json!(t),
                });
            }
            Setting::Wrong(value) => {
                return Err(ConfigError::Expected {
                    key: "threshold",
                    expected: "null or a fraction from 0 to 1",
                    value,
                });
            }
        };
        let concurrency = s.concurrency.from_to("concurrency", 1, 64)?;
        Ok(PromptEvalConfig {
            interval: Duration::from_millis(interval),
            suites,
            provider,
            threshold,
            concurrency: usize::try_from(concurrency).unwrap_or(4),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_evaluates_the_happy_suite_on_the_offline_provider() {
        let c = PromptEvalConfig::from_value(&super::super::default_config::<PromptEvalKernel>())
            .unwrap();
        assert_eq!(c.suites, vec!["happy"]);
        assert_eq!(c.provider, EvalProvider::Offline);
        assert_eq!(c.threshold, None);
        assert_eq!(c, PromptEvalConfig::default());
    }

    #[test]
    fn unknown_suites_providers_and_thresholds_are_refused_by_name() {
        let e = PromptEvalConfig::from_value(&json!({"suites": ["happy", "nope"]})).unwrap_err();
        assert!(e.starts_with("`suites` must be a non-empty list"), "{e}");
        let e = PromptEvalConfig::from_value(&json!({"suites": []})).unwrap_err();
        assert!(e.starts_with("`suites`"), "{e}");
        let e = PromptEvalConfig::from_value(&json!({"provider": "openai"})).unwrap_err();
        assert_eq!(
            e,
            "`provider` must be `server` or `offline`, not \"openai\""
        );
        let e = PromptEvalConfig::from_value(&json!({"threshold": 1.5})).unwrap_err();
        assert!(e.starts_with("`threshold`"), "{e}");
        let c = PromptEvalConfig::from_value(
            &json!({"suites": ["stress", "happy", "stress"], "threshold": 0.75, "provider": "offline"}),
        )
        .unwrap();
        assert_eq!(c.suites, vec!["stress", "happy"]);
        assert_eq!(c.threshold, Some(0.75));
        assert_eq!(c.provider, EvalProvider::Offline);
    }
}
