//! `provider_exec`'s declaration. Its runtime is in the server (every model call of a chat
//! turn goes through it and is recorded as a `provider_execution` span); Stage-0 only needs
//! its name, version and config to verify its span.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ConfigError, Kernel};

/// The `provider_exec` kernel.
pub struct ProviderExecKernel;

/// `provider_exec`'s config as its kernel span stores it. Nothing reads it yet (a provider
/// call's timeout comes from the server's environment, `LOGLINE_PROVIDER_TIMEOUT_SECS`), so
/// any config is accepted, as it always has been; the seed records the intended `timeout_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderExecSettings(pub Value);

impl Default for ProviderExecSettings {
    fn default() -> Self {
        Self(json!({"timeout_ms": 60000}))
    }
}

impl Kernel for ProviderExecKernel {
    const NAME: &'static str = "provider_exec";
    const VERSION: &'static str = "1.0.0";
    const READY: &'static str = "verified; every model call of a chat turn goes through it and is recorded as a provider_execution span";
    type Settings = ProviderExecSettings;
    type Config = ProviderExecSettings;

    fn validate(settings: ProviderExecSettings) -> Result<ProviderExecSettings, ConfigError> {
        Ok(settings)
    }

    fn read(config: &Value) -> Result<ProviderExecSettings, ConfigError> {
        Ok(ProviderExecSettings(config.clone()))
    }
}
