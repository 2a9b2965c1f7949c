//! `run_code`'s declaration: the sandbox limits of one run, as its kernel span sets them.

use std::time::Duration;

use ledger::span::MAX_SPAN_BYTES;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, Kernel, Setting};
use crate::sandbox::Limits;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Room that output, logs and input may take together in an execution span: the rest of the
/// span (error text, bookkeeping) must still fit under the ledger's span size limit.
const PAYLOAD_BUDGET: u64 = (MAX_SPAN_BYTES as u64) * 3 / 4;

/// The `run_code` kernel (its runtime is `run_code::RunCode`).
pub struct RunCodeKernel;

/// `run_code`'s settings as its kernel span stores them, in milliseconds and bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunCodeSettings {
    pub time_ms: Setting<u64>,
    pub memory_bytes: Setting<u64>,
    pub stack_bytes: Setting<u64>,
    pub output_bytes: Setting<u64>,
    pub log_lines: Setting<u64>,
    pub log_bytes: Setting<u64>,
    /// Largest input, as JSON text.
    pub max_input_bytes: Setting<u64>,
}

impl Default for RunCodeSettings {
    fn default() -> Self {
        Self {
            time_ms: 5000.into(),
            memory_bytes: (16 * MIB).into(),
            stack_bytes: (512 * KIB).into(),
            output_bytes: (64 * KIB).into(),
            log_lines: 200.into(),
            log_bytes: (32 * KIB).into(),
            max_input_bytes: (64 * KIB).into(),
        }
    }
}

/// `run_code`'s kernel configuration, checked: what one run may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunCodeConfig {
    pub limits: Limits,
    /// Largest input, as JSON text.
    pub max_input_bytes: usize,
}

impl RunCodeConfig {
    /// Reads a kernel span's config ([`Kernel::read`]); the error is what Stage-0 would say.
    pub fn from_value(config: &Value) -> Result<Self, String> {
        RunCodeKernel::read(config).map_err(|e| e.to_string())
    }
}

/// The configuration seeded into the `run_code` kernel span.
pub fn default_config() -> Value {
    super::default_config::<RunCodeKernel>()
}

impl Kernel for RunCodeKernel {
    const NAME: &'static str = "run_code";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str =
        "verified; runs functions on demand (`logline run`, policies, requests)";
    type Settings = RunCodeSettings;
    type Config = RunCodeConfig;

    /// Out-of-range values are errors (Stage-0 refuses the kernel rather than guess), and the
    /// output, logs and input of a run must fit in its execution span together.
    fn validate(s: RunCodeSettings) -> Result<RunCodeConfig, ConfigError> {
        let time_ms = s.time_ms.between("time_ms", 1, 10 * 60 * 1000)?;
        let memory = s.memory_bytes.between("memory_bytes", MIB, 4096 * MIB)?;
        let stack = s.stack_bytes.between("stack_bytes", 64 * KIB, 64 * MIB)?;
        let output = s.output_bytes.between("output_bytes", 1, PAYLOAD_BUDGET)?;
        let log_lines = s.log_lines.between("log_lines", 0, 100_000)?;
        let log_bytes = s.log_bytes.between("log_bytes", 0, PAYLOAD_BUDGET)?;
        let input = s
            .max_input_bytes
            .between("max_input_bytes", 2, PAYLOAD_BUDGET)?;
        if output + log_bytes + input > PAYLOAD_BUDGET {
            return Err(ConfigError::Together(format!(
                "output_bytes + log_bytes + max_input_bytes is {}, over the {PAYLOAD_BUDGET} bytes an execution span can hold",
                output + log_bytes + input
            )));
        }
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(RunCodeConfig {
            limits: Limits {
                memory_bytes: size(memory),
                time: Duration::from_millis(time_ms),
                stack_bytes: size(stack),
                output_bytes: size(output),
                log_lines: size(log_lines),
                log_bytes: size(log_bytes),
            },
            max_input_bytes: size(input),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_config_is_valid_and_unknown_or_out_of_range_settings_are_refused() {
        let c = RunCodeConfig::from_value(&default_config()).unwrap();
        assert_eq!(c.limits.time, Duration::from_millis(5000));
        assert_eq!(c.max_input_bytes, 64 * 1024);
        let c = RunCodeConfig::from_value(&json!({"time_ms": 200})).unwrap();
        assert_eq!(c.limits.time.as_millis(), 200);
        let e = RunCodeConfig::from_value(&json!({"time": 200})).unwrap_err();
        assert!(e.starts_with("unknown setting `time`"), "{e}");
        let e = RunCodeConfig::from_value(&json!({"time_ms": 0})).unwrap_err();
        assert_eq!(e, "`time_ms` must be between 1 and 600000, not 0");
        let e = RunCodeConfig::from_value(&json!({"output_bytes": 190_000})).unwrap_err();
        assert!(e.contains("over the"), "{e}");
    }
}
