//! The program's settings, read once into typed values. Flags and their `LOGLINE_*` fallbacks
//! (data directory, database URL, principal, bind address, limits) are parsed by `cli` and
//! handed over as [`Settings`] and [`ServeSettings`]; the variables only the environment sets
//! (the JWT secret or public key, the chat provider, the context window, the log filter) are
//! read here, through one lookup function so tests can pass their own. Nothing else in the
//! crate reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ledger::checkpoint::CheckpointPolicy;
use ledger::crypto::NodeKey;
use ledger::store::{self, Store};
use ledger::{Principal, StoreError};
use thiserror::Error;

use crate::auth::{Auth, Secret};
use crate::chat::{ProviderConfig, ProviderError};

/// The log filter (`tracing` directives such as `info,server=debug`; default `warn`).
pub const LOG_ENV: &str = "LOGLINE_LOG";
/// The HS256 secret tokens are signed and checked with.
pub const JWT_SECRET_ENV: &str = "LOGLINE_JWT_SECRET";
/// An Ed25519 public key (`ed25519:<hex>`) tokens may be checked with instead.
pub const JWT_PUBLIC_KEY_ENV: &str = "LOGLINE_JWT_PUBLIC_KEY";
/// Spans between two `checkpoint` spans in each tenant chain (0: none; a signed checkpoint
/// file is written after every commit regardless). Default 1000.
pub const CHECKPOINT_EVERY_ENV: &str = "LOGLINE_CHECKPOINT_EVERY";
/// The model's context window in tokens, when the provider does not say.
pub const CONTEXT_TOKENS_ENV: &str = "LOGLINE_CONTEXT_TOKENS";

/// The process environment as a lookup function (what the `from_lookup` constructors take).
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read or create the node key at {}", path.display())]
    NodeKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the ledger store")]
    Open(#[source] StoreError),
    #[error("cannot write the manifest")]
    Manifest(#[source] StoreError),
    #[error("LOGLINE_JWT_PUBLIC_KEY: {0}")]
    PublicKey(String),
    #[error(
        "LOGLINE_JWT_SECRET is not set: tokens are signed with it (set the same value for `logline serve`)"
    )]
    NoJwtSecret,
    #[error(
        "refusing to listen on {0} without authentication: set LOGLINE_JWT_SECRET (or \
         LOGLINE_JWT_PUBLIC_KEY) to require tokens, or bind a loopback address such as 127.0.0.1"
    )]
    Unauthenticated(SocketAddr),
    #[error("chat provider: {0}")]
    Provider(ProviderError),
    #[error("memory: {0}")]
    Memory(String),
    #[error("LOGLINE_CHECKPOINT_EVERY must be a number of spans (0 for none), not `{0}`")]
    CheckpointEvery(String),
    #[error("{0} must be a positive number of seconds, not `{1}`")]
    Timeout(&'static str, f64),
}

/// Where the ledger is: PostgreSQL when a URL is given, else the embedded SQLite file under
/// `data_dir` (which also holds the node key in both cases).
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
}

impl StoreSettings {
    /// The node key's file.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("node.key")
    }

    /// The embedded store's file (used when no database URL is set).
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite3")
    }

    /// Opens the node key (creating it on first use) and the store, and makes sure the signed
    /// manifest span exists.
    pub async fn open(&self) -> Result<Arc<dyn Store>, ConfigError> {
        let path = self.key_path();
        let (key, _) = NodeKey::load_or_create(&path)
            .map_err(|source| ConfigError::NodeKey { path, source })?;
        let every = match env(CHECKPOINT_EVERY_ENV) {
            None => ledger::checkpoint::DEFAULT_EVERY,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| ConfigError::CheckpointEvery(v))?,
        };
        let policy = CheckpointPolicy {
            every,
            dir: Some(store::checkpoint_dir(&self.data_dir)),
            tree: true,
        };
        let store = store::open_with(self.database_url.as_deref(), &self.data_dir, key, policy)
            .await
            .map_err(ConfigError::Open)?;
        store::ensure_manifest(store.as_ref())
            .await
            .map_err(ConfigError::Manifest)?;
        Ok(store)
    }
}

/// What every command needs: the store and the principal it acts as.
#[derive(Clone, Debug)]
pub struct Settings {
    pub store: StoreSettings,
    pub principal: Principal,
}

/// Tunables of a running server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, bytes (after `Content-Encoding` is undone).
    pub body_bytes: usize,
    /// Requests per second each tenant may make (burst: twice that).
    pub tenant_rps: u32,
    /// The connection edge: timeouts and request-head limits.
    pub edge: EdgeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 16 * 1024 * 1024,
            tenant_rps: 2000,
            edge: EdgeLimits::default(),
        }
    }
}

/// What one connection may cost before the server closes it (see `serve::edge`). Slow or
/// silent clients hold a socket and a task each; these bound them without touching requests
/// that are being served.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    /// Time from a request's first byte to the end of its head (request line and headers):
    /// a client sending headers byte by byte is closed after this.
    pub head_timeout: Duration,
    /// Time a connection may sit with no request under way and no byte moving (a new
    /// connection that sends nothing, a keep-alive connection between requests, a client
    /// that stops reading a response) before it is closed.
    pub idle_timeout: Duration,
    /// TCP keepalive probes start after this much silence, so a peer that vanished (half-open
    /// socket) is detected even while its request is being served. `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Longest request target (path and query), bytes: 414 beyond.
    pub max_uri_bytes: usize,
    /// Largest request head (request line and all headers), bytes: 431 beyond.
    pub max_head_bytes: usize,
    /// Most header fields in one request: 431 beyond.
    pub max_headers: usize,
}

impl EdgeLimits {
    /// The defaults with the three timeouts `serve` takes in seconds (`--header-timeout`,
    /// `--idle-timeout`, `--tcp-keepalive`; a keepalive of 0 turns probes off).
    pub fn from_seconds(header: f64, idle: f64, keepalive: f64) -> Result<Self, ConfigError> {
        let secs = |name, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or(ConfigError::Timeout(name, v))
        };
        Ok(Self {
            head_timeout: secs("LOGLINE_HEADER_TIMEOUT", header)?,
            idle_timeout: secs("LOGLINE_IDLE_TIMEOUT", idle)?,
            tcp_keepalive: if keepalive == 0.0 {
                None
            } else {
                Some(secs("LOGLINE_TCP_KEEPALIVE", keepalive)?)
            },
            ..Self::default()
        })
    }
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(60)),
            max_uri_bytes: 16 * 1024,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// The token settings: `LOGLINE_JWT_SECRET` and `LOGLINE_JWT_PUBLIC_KEY` (empty counts as unset).
#[derive(Clone, Default)]
pub struct AuthSettings {
    pub jwt_secret: Option<Secret>,
    pub jwt_public_key: Option<String>,
}

impl AuthSettings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| lookup(k).filter(|s| !s.is_empty());
        Self {
            jwt_secret: get(JWT_SECRET_ENV).map(Secret::new),
            jwt_public_key: get(JWT_PUBLIC_KEY_ENV),
        }
    }

    /// Token auth when a secret or a public key is set; otherwise the single `local` user.
    pub fn auth(self, local: Principal) -> Result<Auth, ConfigError> {
        if self.jwt_secret.is_none() && self.jwt_public_key.is_none() {
            return Ok(Auth::Local(local));
        }
        let eddsa = self
            .jwt_public_key
            .map(|k| ledger::crypto::parse_public_key(&k).map_err(ConfigError::PublicKey))
            .transpose()?;
        Ok(Auth::Jwt {
            hs256: self.jwt_secret,
            eddsa,
        })
    }

    /// The secret `logline token issue` signs with.
    pub fn signing_secret(self) -> Result<Secret, ConfigError> {
        self.jwt_secret.ok_or(ConfigError::NoJwtSecret)
    }
}

/// The conversational agent's settings: which provider, and the context window to budget for.
#[derive(Clone, Debug)]
pub struct ChatSettings {
    pub provider: ProviderConfig,
    pub context_tokens: Option<usize>,
    /// Memory's key-encryption key and embedder (`LOGLINE_MEMORY_KEY`, `LOGLINE_EMBED_*`).
    pub memory: crate::memory::MemorySettings,
}

impl ChatSettings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let provider = ProviderConfig::from_lookup(&lookup).map_err(ConfigError::Provider)?;
        Ok(Self {
            provider,
            context_tokens: context_tokens(&lookup),
            memory: crate::memory::MemorySettings::from_lookup(&lookup)
                .map_err(ConfigError::Memory)?,
        })
    }
}

/// `LOGLINE_CONTEXT_TOKENS`, when it is a number.
pub fn context_tokens(lookup: impl Fn(&str) -> Option<String>) -> Option<usize> {
    lookup(CONTEXT_TOKENS_ENV).and_then(|v| v.parse().ok())
}

/// The `tracing` filter from `LOGLINE_LOG` (default `warn`).
pub fn log_filter(lookup: impl Fn(&str) -> Option<String>) -> tracing_subscriber::EnvFilter {
    lookup(LOG_ENV)
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"))
}

/// Everything `logline serve` runs with.
#[derive(Clone)]
pub struct ServeSettings {
    pub bind: SocketAddr,
    pub limits: Limits,
    pub auth: Auth,
    pub chat: ChatSettings,
}

impl ServeSettings {
    /// Reads the token and chat settings and refuses to expose an unauthenticated server
    /// beyond this machine; `local` is who requests act as without tokens.
    pub fn from_lookup(
        bind: SocketAddr,
        limits: Limits,
        local: Principal,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let auth = AuthSettings::from_lookup(&lookup).auth(local)?;
        check_bind(&bind, &auth)?;
        Ok(Self {
            bind,
            limits,
            auth,
            chat: ChatSettings::from_lookup(&lookup)?,
        })
    }
}

/// Refuses to expose an unauthenticated server beyond this machine.
pub fn check_bind(addr: &SocketAddr, auth: &Auth) -> Result<(), ConfigError> {
    if !auth.is_enabled() && !addr.ip().is_loopback() {
        return Err(ConfigError::Unauthenticated(*addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn without_a_secret_or_key_every_request_is_the_local_user() {
        let auth = AuthSettings::from_lookup(lookup(&[(JWT_SECRET_ENV, "")]))
            .auth(Principal::new("ana", "t"))
            .unwrap();
        assert!(!auth.is_enabled());
        assert!(matches!(
            check_bind(&"0.0.0.0:1".parse().unwrap(), &auth),
            Err(ConfigError::Unauthenticated(_))
        ));
        assert!(check_bind(&"127.0.0.1:1".parse().unwrap(), &auth).is_ok());
    }

    #[test]
    fn a_secret_turns_tokens_on_and_a_bad_key_is_named() {
        let auth = AuthSettings::from_lookup(lookup(&[(JWT_SECRET_ENV, "s3cret")]))
            .auth(Principal::new("ana", "t"))
            .unwrap();
        assert!(auth.is_enabled());
        let e = AuthSettings::from_lookup(lookup(&[(JWT_PUBLIC_KEY_ENV, "nope")]))
            .auth(Principal::new("ana", "t"))
            .unwrap_err();
        assert!(e.to_string().starts_with("LOGLINE_JWT_PUBLIC_KEY: "));
    }

    #[test]
    fn edge_timeouts_must_be_positive_seconds_and_a_zero_keepalive_turns_probes_off() {
        let e = EdgeLimits::from_seconds(0.5, 30.0, 0.0).unwrap();
        assert_eq!(e.head_timeout, Duration::from_millis(500));
        assert_eq!(e.idle_timeout, Duration::from_secs(30));
        assert_eq!(e.tcp_keepalive, None);
        for (h, i, k) in [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, f64::NAN)] {
            assert!(matches!(
                EdgeLimits::from_seconds(h, i, k),
                Err(ConfigError::Timeout(..))
            ));
        }
    }

    #[test]
    fn the_context_window_is_read_when_it_is_a_number() {
        assert_eq!(
            context_tokens(lookup(&[(CONTEXT_TOKENS_ENV, "8192")])),
            Some(8192)
        );
        assert_eq!(
            context_tokens(lookup(&[(CONTEXT_TOKENS_ENV, "lots")])),
            None
        );
    }
}
