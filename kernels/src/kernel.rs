//! What a native kernel is, as Stage-0 sees it: a name, a version, and the configuration its
//! kernel span stores (DESIGN §5).
//!
//! Each kernel declares itself by implementing [`Kernel`] in a submodule here. Its settings are
//! a serde type read with [`settings`]: a missing or `null` setting takes its default, an
//! unknown one is refused. [`Kernel::validate`] then checks them, in a fixed order and naming
//! the setting at fault, and turns them into the typed configuration the kernel runs with.
//! [`NATIVE`] lists the kernels in boot order. Stage-0 checks kernel spans through that list
//! alone, and the runtimes read their verified config through the same [`Kernel::read`].
//!
//! The declarations live here, apart from the runtimes (`run_code.rs`, …), because several
//! runtimes ask Stage-0 before they run: were `run_code`'s declaration in `run_code.rs`, Stage-0
//! would import the module that imports it.

pub mod midnight_ruler;
pub mod observer_bot;
pub mod policy_agent;
pub mod prompt_bandit;
pub mod prompt_eval;
pub mod provider_exec;
pub mod request_worker;
pub mod run_code;

use ledger::store::NATIVE_KERNELS;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

/// The native kernels, in boot order (the order of `kernels status` and of the boot events).
pub const NATIVE: [&dyn Native; 8] = [
    &run_code::RunCodeKernel,
    &observer_bot::ObserverBotKernel,
    &request_worker::RequestWorkerKernel,
    &policy_agent::PolicyAgentKernel,
    &provider_exec::ProviderExecKernel,
    &midnight_ruler::MidnightRulerKernel,
    &prompt_eval::PromptEvalKernel,
    &prompt_bandit::PromptBanditKernel,
];

/// The native kernel of that name.
pub fn native(name: &str) -> Option<&'static dyn Native> {
    NATIVE.iter().copied().find(|k| k.name() == name)
}

/// The native kernels' names, in boot order, comma-separated (for messages).
pub fn native_names() -> String {
    NATIVE.map(|k| k.name()).join(", ")
}

/// Why a kernel's config is refused. The texts are what `logline kernels status` and
/// `logline kernels set` print after "invalid config:" and "kernel `config`:".
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ConfigError {
    #[error("config must be an object")]
    NotAnObject,
    #[error("unknown setting `{key}` (known: {known})")]
    Unknown { key: String, known: String },
    #[error("`{key}` must be a non-negative integer")]
    NotAnInteger { key: &'static str },
    #[error("`{key}` must be between {min} and {max}, not {value}")]
    OutOfRange {
        key: &'static str,
        min: u64,
        max: u64,
        value: u64,
    },
    /// A wrong type or value, worded as one range (the older kernels' wording).
    #[error("`{key}` must be an integer from {min} to {max}")]
    NotFromTo {
        key: &'static str,
        min: u64,
        max: u64,
    },
    #[error("`{key}` must be {expected}, not {value}")]
    Expected {
        key: &'static str,
        expected: &'static str,
        value: Value,
    },
    #[error("`{key}` must be a number from {min} to {max}, not {value}")]
    NotANumberWithin {
        key: &'static str,
        min: f64,
        max: f64,
        value: Value,
    },
    /// Settings each valid alone that do not fit together.
    #[error("{0}")]
    Together(String),
    #[error("the config does not read: {0}")]
    Unreadable(String),
}

/// A native kernel: its identity, its settings and how they become its configuration.
pub trait Kernel: Sync + 'static {
    /// The `content.name` of its kernel span.
    const NAME: &'static str;
    /// The version this build implements; a span asking for another major version is refused.
    const VERSION: &'static str;
    /// What "ready" means for it (how it runs), for `kernels status`.
    const READY: &'static str;
    /// Whether this build has a body for it. Kernels without one are verified and reported as
    /// such, never pretended to run.
    const RUNTIME: bool = true;

    /// The span's `config` as written; its `Default` is what the span is seeded with.
    type Settings: Serialize + DeserializeOwned + Default;
    /// What the kernel runs with.
    type Config;

    /// Checks the settings and types them; the first setting at fault is named.
    fn validate(settings: Self::Settings) -> Result<Self::Config, ConfigError>;

    /// Reads a kernel span's `config` (Stage-0's check and the runtime's read alike).
    fn read(config: &Value) -> Result<Self::Config, ConfigError> {
        Self::validate(settings(config)?)
    }
}

/// A [`Kernel`] as Stage-0 handles it: one list of them, whatever their config types.
pub trait Native: Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> &'static str;
    fn ready(&self) -> &'static str;
    fn runtime(&self) -> bool;
    /// The `config` its span is seeded with.
    fn default_config(&self) -> Value;
    /// Whether a span's `config` would run (see [`Kernel::read`]).
    fn check_config(&self, config: &Value) -> Result<(), ConfigError>;

    /// Its well-known span id (the manifest may bind the name to another id).
    fn id(&self) -> Uuid {
        NATIVE_KERNELS
            .iter()
            .find(|(n, _)| *n == self.name())
            .map(|(_, id)| *id)
            .unwrap_or_default()
    }
}

impl<K: Kernel> Native for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn version(&self) -> &'static str {
        K::VERSION
    }

    fn ready(&self) -> &'static str {
        K::READY
    }

    fn runtime(&self) -> bool {
        K::RUNTIME
    }

    fn default_config(&self) -> Value {
        default_config::<K>()
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigError> {
        K::read(config).map(|_| ())
    }
}

/// The `config` a kernel's span is seeded with: its default settings as JSON, keys in the
/// order the settings declare them.
pub fn default_config<K: Kernel>() -> Value {
    // Settings are plain fields, so this cannot fail; were it to, `null` reads as the defaults.
    serde_json::to_value(K::Settings::default()).unwrap_or_default()
}

/// Reads a kernel span's `config` as settings `S`: absent or `null` is `{}`, a `null` setting
/// takes its default, and a setting `S` does not declare is refused, naming those it does.
pub fn settings<S: Serialize + DeserializeOwned + Default>(
    config: &Value,
) -> Result<S, ConfigError> {
    let mut given = match config {
        Value::Null => Map::new(),
        Value::Object(o) => o.clone(),
        _ => return Err(ConfigError::NotAnObject),
    };
    let known: Vec<String> = match serde_json::to_value(S::default()) {
        Ok(Value::Object(defaults)) => defaults.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if let Some(key) = given.keys().find(|k| !known.contains(k)) {
        return Err(ConfigError::Unknown {
            key: key.clone(),
            known: known.join(", "),
        });
    }
    given.retain(|_, v| !v.is_null());
    serde_json::from_value(Value::Object(given)).map_err(|e| ConfigError::Unreadable(e.to_string()))
}

/// One setting as a kernel span wrote it: the value when it has the expected type, else the
/// JSON found. Reading never fails on a type, so [`Kernel::validate`] checks the settings in
/// its own order and names the one at fault (serde's type errors name no field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting<T> {
    Set(T),
    Wrong(Value),
}

impl<T> From<T> for Setting<T> {
    fn from(value: T) -> Self {
        Self::Set(value)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(match T::deserialize(&value) {
            Ok(v) => Self::Set(v),
            Err(_) => Self::Wrong(value),
        })
    }
}

impl<T: Serialize> Serialize for Setting<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Set(v) => v.serialize(serializer),
            Self::Wrong(v) => v.serialize(serializer),
        }
    }
}

impl Setting<u64> {
    /// The value if it lies in `min..=max`; "must be a non-negative integer" or "must be
    /// between min and max, not v" otherwise.
    pub fn between(&self, key: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self {
            Self::Set(v) if (min..=max).contains(v) => Ok(*v),
            Self::Set(v) => Err(ConfigError::OutOfRange {
                key,
                min,
                max,
                value: *v,
            }),
            Self::Wrong(_) => Err(ConfigError::NotAnInteger { key }),
        }
    }

    /// The value if it lies in `min..=max`; "must be an integer from min to max" otherwise.
    pub fn from_to(&self, key: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self {
            Self::Set(v) if (min..=max).contains(v) => Ok(*v),
            _ => Err(ConfigError::NotFromTo { key, min, max }),
        }
    }
}

impl Setting<f64> {
    /// The value if it is a finite number in `min..=max`; "must be a number from min to max,
    /// not v" otherwise.
    pub fn within(&self, key: &'static str, min: f64, max: f64) -> Result<f64, ConfigError> {
        match self {
            Self::Set(v) if v.is_finite() && (min..=max).contains(v) => Ok(*v),
            Self::Set(v) => Err(ConfigError::NotANumberWithin {
                key,
                min,
                max,
                value: serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
            }),
            Self::Wrong(value) => Err(ConfigError::NotANumberWithin {
                key,
                min,
                max,
                value: value.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_native_kernel_has_a_well_known_id_and_a_valid_default_config() {
        assert_eq!(NATIVE.len(), NATIVE_KERNELS.len());
        for (k, (name, id)) in NATIVE.iter().zip(NATIVE_KERNELS) {
            assert_eq!(k.name(), name, "boot order is the ledger's order");
            assert_eq!(k.id(), id);
            k.check_config(&k.default_config()).unwrap();
            k.check_config(&Value::Null).unwrap();
        }
        assert_eq!(
            native("run_code").unwrap().id().to_string(),
            "00000000-0000-4000-8000-000000000001"
        );
    }

    #[test]
    fn settings_refuse_non_objects_and_unknown_keys_and_read_null_as_the_default() {
        let e = run_code::RunCodeKernel::read(&json!([])).unwrap_err();
        assert_eq!(e, ConfigError::NotAnObject);
        let e = run_code::RunCodeKernel::read(&json!({"time_ms": 1, "nope": 2})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown setting `nope` (known: time_ms, memory_bytes, stack_bytes, output_bytes, log_lines, log_bytes, max_input_bytes)"
        );
        let c = run_code::RunCodeKernel::read(&json!({"time_ms": null})).unwrap();
        assert_eq!(c.limits.time.as_millis(), 5000);
    }

    #[test]
    fn settings_are_checked_in_declared_order_whatever_the_order_written() {
        let e =
            run_code::RunCodeKernel::read(&json!({"memory_bytes": "x", "time_ms": 0})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`time_ms` must be between 1 and 600000, not 0"
        );
        let e = observer_bot::ObserverBotKernel::read(&json!({"interval_ms": "5"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`interval_ms` must be an integer from 10 to 86400000"
        );
    }
}
