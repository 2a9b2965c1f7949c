//! Which provider to use, read from configuration (`LOGLINE_PROVIDER`, `LOGLINE_MODEL`,
//! `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OLLAMA_URL`, …) through a lookup function, and the
//! factory that builds it.

use std::sync::Arc;
use std::time::Duration;

use super::local::LocalModel;
use super::offline::OfflineProvider;
use super::ollama::OllamaProvider;
use super::openai::OpenAiProvider;
use super::settings::{ApiKey, ProviderSettings, ToolMode};
use super::types::{Provider, ProviderError};

/// Which provider to use, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderConfig {
    Offline,
    OpenAi {
        base_url: String,
        api_key: Option<ApiKey>,
        model: String,
        settings: ProviderSettings,
    },
    Ollama {
        url: String,
        model: String,
        settings: ProviderSettings,
    },
    /// A GGUF model served by llama.cpp, which `serve` starts and supervises ([`super::local`]).
    Local(LocalModel),
}

/// The whole-call limit of `local` unless `LOGLINE_PROVIDER_TIMEOUT_SECS` says otherwise.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(900);

/// The official endpoint, used when `OPENAI_BASE_URL` is not set.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

impl ProviderConfig {
    /// Reads the configuration through `get` (the process environment, or a map in tests):
    /// - `LOGLINE_PROVIDER`: `offline` (default), `openai`, `ollama` or `local`;
    /// - `LOGLINE_MODEL`: the model name (required for `openai` and `ollama`);
    /// - `OPENAI_BASE_URL` (default the official API), `OPENAI_API_KEY` (required for the
    ///   official API, optional for local OpenAI-compatible servers);
    /// - `OLLAMA_URL` (required for `ollama`, e.g. `http://127.0.0.1:11434`);
    /// - for `local`: `LOGLINE_MODEL_PATH` (a GGUF file), `LOGLINE_MODEL_PYTHON`,
    ///   `LOGLINE_MODEL_THREADS` (see [`LocalModel::from_lookup`]);
    /// - `LOGLINE_PROVIDER_TIMEOUT_SECS` (the whole call: default 120, 900 for `local`),
    ///   `LOGLINE_PROVIDER_FIRST_TOKEN_SECS` (the first streamed chunk; default the whole
    ///   call), `LOGLINE_PROVIDER_IDLE_SECS` (between streamed chunks; default 60; `local`
    ///   streams every call so both apply),
    ///   `LOGLINE_PROVIDER_MAX_ATTEMPTS` (default 3) and `LOGLINE_MAX_TOKENS` (default 1024,
    ///   the longest reply asked of the model);
    /// - `LOGLINE_TOOL_MODE`: `native` (the API's tool calling; the default) or `grammar` (the
    ///   reply constrained to a call or the answer; the default of `local`, see
    ///   [`ToolMode::Grammar`]).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ProviderError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let kind = get("LOGLINE_PROVIDER").unwrap_or_else(|| "offline".into());
        let model = || {
            get("LOGLINE_MODEL").ok_or_else(|| {
                ProviderError::Config(format!(
                    "LOGLINE_PROVIDER={kind} needs LOGLINE_MODEL (the model name, e.g. gpt-4o-mini or llama3.1)"
                ))
            })
        };
        let mut settings = ProviderSettings::default();
        let local = kind == "local";
        if local {
            // A CPU model: minutes to read a prompt and write an answer, but never silent for
            // long once it has started (it streams every call).
            settings.timeout = LOCAL_TIMEOUT;
            settings.stream = true;
        }
        let seconds = |var: &str| -> Result<Option<Duration>, ProviderError> {
            get(var)
                .map(|v| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && *s <= 3600.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| {
                            ProviderError::Config(format!(
                                "{var} must be a number of seconds in (0, 3600], not `{v}`"
                            ))
                        })
                })
                .transpose()
        };
        if let Some(t) = seconds("LOGLINE_PROVIDER_TIMEOUT_SECS")? {
            settings.timeout = t;
        }
        settings.first_token_timeout =
            seconds("LOGLINE_PROVIDER_FIRST_TOKEN_SECS")?.unwrap_or(settings.timeout);
        if let Some(t) = seconds("LOGLINE_PROVIDER_IDLE_SECS")? {
            settings.idle_timeout = t;
        }
        if let Some(v) = get("LOGLINE_PROVIDER_MAX_ATTEMPTS") {
            settings.retry.max_attempts = v
                .parse()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or_else(|| {
                    ProviderError::Config(format!(
                        "LOGLINE_PROVIDER_MAX_ATTEMPTS must be an integer from 1 to 10, not `{v}`"
                    ))
                })?;
        }
        if let Some(v) = get("LOGLINE_MAX_TOKENS") {
            settings.max_tokens = v
                .parse()
                .ok()
                .filter(|n| (16..=131_072).contains(n))
                .ok_or_else(|| {
                    ProviderError::Config(format!(
                        "LOGLINE_MAX_TOKENS must be an integer from 16 to 131072, not `{v}`"
                    ))
                })?;
        }
        let tool_mode = get("LOGLINE_TOOL_MODE")
            .map(|v| {
                ToolMode::parse(&v).ok_or_else(|| {
                    ProviderError::Config(format!(
                        "LOGLINE_TOOL_MODE must be native or grammar, not `{v}`"
                    ))
                })
            })
            .transpose()?;
        settings.tool_mode = tool_mode.unwrap_or(if local {
            ToolMode::Grammar
        } else {
            ToolMode::Native
        });
        match kind.as_str() {
            "offline" => Ok(Self::Offline),
            "openai" => {
                let base_url =
                    get("OPENAI_BASE_URL").unwrap_or_else(|| OPENAI_DEFAULT_BASE_URL.into());
                check_url("OPENAI_BASE_URL", &base_url)?;
                let api_key = get("OPENAI_API_KEY").map(ApiKey::new).transpose()?;
                if api_key.is_none() && base_url.trim_end_matches('/') == OPENAI_DEFAULT_BASE_URL {
                    return Err(ProviderError::Config(
                        "LOGLINE_PROVIDER=openai with the official API needs OPENAI_API_KEY \
                         (or set OPENAI_BASE_URL to a local OpenAI-compatible server)"
                            .into(),
                    ));
                }
                Ok(Self::OpenAi {
                    base_url,
                    api_key,
                    model: model()?,
                    settings,
                })
            }
            "ollama" => {
                let url = get("OLLAMA_URL").ok_or_else(|| {
                    ProviderError::Config(
                        "LOGLINE_PROVIDER=ollama needs OLLAMA_URL (e.g. http://127.0.0.1:11434)"
                            .into(),
                    )
                })?;
                check_url("OLLAMA_URL", &url)?;
                Ok(Self::Ollama {
                    url,
                    model: model()?,
                    settings,
                })
            }
            "local" => Ok(Self::Local(LocalModel::from_lookup(get, settings)?)),
            other => Err(ProviderError::Config(format!(
                "LOGLINE_PROVIDER must be offline, openai, ollama or local, not `{other}`"
            ))),
        }
    }
}

fn check_url(var: &str, url: &str) -> Result<(), ProviderError> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(()),
        _ => Err(ProviderError::Config(format!(
            "{var} must be an http:// or https:// URL, not `{url}`"
        ))),
    }
}

/// Builds the configured provider; `Offline` is the embedded [`OfflineProvider`], which is not
/// a language model. `Local` needs its server running first: see
/// [`LocalServer`](super::local::LocalServer).
pub fn provider_from_config(config: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    match config {
        ProviderConfig::Offline => Ok(Arc::new(OfflineProvider::new())),
        ProviderConfig::OpenAi {
            base_url,
            api_key,
            model,
            settings,
        } => Ok(Arc::new(OpenAiProvider::new(
            base_url,
            api_key.clone(),
            model,
            settings.clone(),
        )?)),
        ProviderConfig::Ollama {
            url,
            model,
            settings,
        } => Ok(Arc::new(OllamaProvider::new(url, model, settings.clone())?)),
        ProviderConfig::Local(_) => Err(ProviderError::Config(
            "LOGLINE_PROVIDER=local: start the model server first (LocalServer::start)".into(),
        )),
    }
}
