//! The model's context window as its server reports it, so that prompts are budgeted against
//! the real window rather than a guess: llama.cpp's `/props` (`n_ctx`), the `/v1/models`
//! entries of OpenAI-compatible servers (llama.cpp `meta.n_ctx`, vLLM `max_model_len`, LM Studio
//! and others `context_length`), Ollama's `/api/show` (`num_ctx` when the model sets it, else
//! the model's `*.context_length`). Any failure means "unknown": the caller falls back to
//! tiktoken's table or the documented default.

use std::time::Duration;

use serde_json::{Value, json};

use super::factory::{OPENAI_DEFAULT_BASE_URL, ProviderConfig};
use super::local::LocalServer;

/// A probe must not hold up the server's start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The context window in tokens, when the server says.
pub async fn probe(config: &ProviderConfig, local: Option<&LocalServer>) -> Option<usize> {
    let found = match config {
        ProviderConfig::Offline => None,
        ProviderConfig::Local(model) => match local {
            Some(server) => openai_compatible(server.base_url(), None, &model.name()).await,
            None => Some(model.context_tokens),
        },
        ProviderConfig::OpenAi {
            base_url,
            api_key,
            model,
            ..
        } => {
            // The official API does not say; tiktoken's table knows its models.
            if base_url.trim_end_matches('/') == OPENAI_DEFAULT_BASE_URL {
                None
            } else {
                openai_compatible(base_url, api_key.as_ref().map(|k| k.expose()), model).await
            }
        }
        ProviderConfig::Ollama { url, model, .. } => ollama(url, model).await,
    };
    if let Some(n) = found {
        tracing::info!(
            context_tokens = n,
            "context window reported by the model server"
        );
    }
    found
}

async fn get_json(url: &str, key: Option<&str>) -> Option<Value> {
    let client = super::http::client(&Default::default()).ok()?;
    let mut req = client.get(url).timeout(PROBE_TIMEOUT);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

fn positive(v: &Value) -> Option<usize> {
    v.as_u64()
        .filter(|n| *n > 0)
        .and_then(|n| usize::try_from(n).ok())
}

async fn openai_compatible(base_url: &str, key: Option<&str>, model: &str) -> Option<usize> {
    let base = base_url.trim_end_matches('/');
    let root = base.strip_suffix("/v1").unwrap_or(base);
    if let Some(props) = get_json(&format!("{root}/props"), key).await
        && let Some(n) = from_props(&props)
    {
        return Some(n);
    }
    let models = get_json(&format!("{base}/models"), key).await?;
    from_models(&models, model)
}

/// llama.cpp's `/props`: the window of each slot.
fn from_props(props: &Value) -> Option<usize> {
    positive(&props["default_generation_settings"]["n_ctx"]).or_else(|| positive(&props["n_ctx"]))
}

/// `/v1/models`: the entry for `model` (or the only one), in whichever field its server uses.
fn from_models(models: &Value, model: &str) -> Option<usize> {
    let data = models["data"].as_array()?;
    let entry = data
        .iter()
        .find(|m| m["id"].as_str() == Some(model))
        .or_else(|| (data.len() == 1).then(|| &data[0]))?;
    [
        &entry["meta"]["n_ctx"],
        &entry["max_model_len"],
        &entry["context_length"],
        &entry["max_context_length"],
        &entry["context_window"],
    ]
    .into_iter()
    .find_map(positive)
}

async fn ollama(url: &str, model: &str) -> Option<usize> {
    let client = super::http::client(&Default::default()).ok()?;
    let resp = client
        .post(format!("{}/api/show", url.trim_end_matches('/')))
        .json(&json!({ "model": model }))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    from_ollama_show(&resp.json().await.ok()?)
}

/// Ollama's `/api/show`: `num_ctx` among the model's parameters, else the model's own length.
fn from_ollama_show(show: &Value) -> Option<usize> {
    let num_ctx = show["parameters"].as_str().and_then(|p| {
        p.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("num_ctx")).then(|| it.next()?.parse().ok())?
        })
    });
    num_ctx.or_else(|| {
        show["model_info"]
            .as_object()?
            .iter()
            .find(|(k, _)| k.ends_with(".context_length"))
            .and_then(|(_, v)| positive(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_s_field_is_read() {
        let llama = json!({"default_generation_settings": {"n_ctx": 8192}});
        assert_eq!(from_props(&llama), Some(8192));
        let models = json!({"data": [{"id": "m", "meta": {"n_ctx": 4096, "n_ctx_train": 32768}}]});
        assert_eq!(from_models(&models, "other"), Some(4096), "the only entry");
        let vllm =
            json!({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 32768}]});
        assert_eq!(from_models(&vllm, "b"), Some(32768));
        assert_eq!(from_models(&vllm, "c"), None, "several entries, none named");
        let show = json!({"parameters": "stop \"<|im_end|>\"\nnum_ctx 16384", "model_info": {"qwen2.context_length": 32768}});
        assert_eq!(from_ollama_show(&show), Some(16384));
        let show = json!({"model_info": {"general.architecture": "llama", "llama.context_length": 131072}});
        assert_eq!(from_ollama_show(&show), Some(131072));
        assert_eq!(
            from_props(&json!({"default_generation_settings": {"n_ctx": 0}})),
            None
        );
    }
}
