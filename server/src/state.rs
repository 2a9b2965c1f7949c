//! What every handler shares ([`AppState`]): the store and its group-commit writer, auth, the
//! live-stream hub, metrics, the per-tenant rate limiter, the shutdown signal and the chat
//! agent; and the [`Caller`] extractor that authenticates and rate-limits each request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use ledger::Store;
use ledger::store::group::GroupCommit;
use tokio::sync::watch;

use crate::auth::{Auth, Caller};
use crate::chat::agent::Agent;
use crate::chat::provider_from_config;
use crate::chat::providers::{LocalServer, ProviderConfig, context};
use crate::config::{ChatSettings, Limits};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub writer: GroupCommit,
    pub auth: Arc<Auth>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<RateLimiter>,
    /// Flips to true when the server starts shutting down (streams send a last event).
    pub shutdown: watch::Receiver<bool>,
    /// The conversational agent (`POST /api/chat`).
    pub chat: Arc<Agent>,
    /// The model's context window as configured or reported (prompt_eval's trials use it).
    pub context_tokens: Option<usize>,
    /// The model server `LOGLINE_PROVIDER=local` started; it stops when the last clone goes.
    pub local_model: Option<Arc<LocalServer>>,
    trusted: Arc<tokio::sync::RwLock<Option<TrustedCache>>>,
}

/// The manifest's trusted keys as of a manifest generation seen by the hub.
struct TrustedCache {
    generation: u64,
    fetched: Instant,
    keys: Arc<Vec<String>>,
}

/// Re-read at least this often even if the hub saw no manifest change (belt and braces).
const TRUSTED_TTL: Duration = Duration::from_secs(30);

impl AppState {
    /// The state a server runs with: the group-commit writer, the live-stream hub, the rate
    /// limiter and the conversational agent on the provider `chat` names.
    pub async fn new(
        store: Arc<dyn Store>,
        auth: Auth,
        limits: &Limits,
        chat: &ChatSettings,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        ledger::store::ensure_manifest(store.as_ref()).await?;
        let writer = GroupCommit::start(store.clone());
        let (provider, local_model) = match &chat.provider {
            ProviderConfig::Local(model) => {
                let server = LocalServer::start(model)
                    .await
                    .map_err(|e| anyhow::anyhow!("chat provider: {e}"))?;
                let provider = server.provider()?;
                (provider, Some(Arc::new(server)))
            }
            other => (provider_from_config(other)?, None),
        };
        // The window the server reports beats a guess; LOGLINE_CONTEXT_TOKENS beats both.
        let context_tokens = match chat.context_tokens {
            Some(n) => Some(n),
            None => context::probe(&chat.provider, local_model.as_deref()).await,
        };
        let agent = Agent::new(
            store.clone(),
            Arc::new(writer.clone()),
            provider,
            context_tokens,
        )
        .await?
        .with_memory(Arc::new(crate::memory::Memory::with_settings(
            store.clone(),
            &chat.memory,
        )?));
        // The build's files are now candidates; the chat compiles only what prompt_eval has
        // activated (issue 11).
        let schema = agent.prompts.current().library().answer_schema().clone();
        agent
            .prompts
            .replace(crate::chat::candidates::load_active(store.as_ref(), &schema).await?);
        let chat = Arc::new(agent);
        Ok(Self {
            chat,
            context_tokens,
            local_model,
            writer,
            hub: Hub::start(store.clone()).await?,
            store,
            auth: Arc::new(auth),
            metrics: Arc::new(Metrics::default()),
            limiter: Arc::new(RateLimiter::new(limits.tenant_rps)),
            shutdown,
            trusted: Arc::default(),
        })
    }

    /// The keys client signatures may verify against. Cached so that an append does not cost
    /// a manifest read; a new manifest seq (seen by the hub, from any process) invalidates it.
    pub async fn trusted_keys(&self) -> Result<Arc<Vec<String>>, ledger::StoreError> {
        let generation = self.hub.manifest_generation();
        if let Some(c) = self.trusted.read().await.as_ref()
            && c.generation == generation
            && c.fetched.elapsed() < TRUSTED_TTL
        {
            return Ok(c.keys.clone());
        }
        let keys = Arc::new(ledger::store::trusted_keys(self.store.as_ref()).await?);
        *self.trusted.write().await = Some(TrustedCache {
            generation,
            fetched: Instant::now(),
            keys: keys.clone(),
        });
        Ok(keys)
    }
}

/// A token bucket per tenant.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rps: u32) -> Self {
        Self {
            rate: f64::from(rps.max(1)),
            burst: f64::from(rps.max(1)) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says how many seconds until one is available.
    pub fn check(&self, tenant: &str) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, at) = buckets
            .entry(tenant.to_string())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header_token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        // Browsers' EventSource cannot set headers: the stream also takes `?access_token=`.
        let query_token = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(str::to_string)
        });
        let caller = state
            .auth
            .authenticate(header_token.or(query_token.as_deref()))?;
        state
            .limiter
            .check(&caller.principal.tenant_id)
            .map_err(|retry_after| ApiError::RateLimited {
                tenant: caller.principal.tenant_id.clone(),
                retry_after,
            })?;
        tracing::Span::current().record("user", caller.principal.user_id.as_str());
        tracing::Span::current().record("tenant", caller.principal.tenant_id.as_str());
        Ok(caller)
    }
}
