//! The `logline` command line: it parses arguments, calls the library and prints; nothing
//! outside `cli/` imports from it. Every command opens the store chosen by `--database-url` /
//! `LOGLINE_DATABASE_URL` (PostgreSQL) or the embedded SQLite file under `--data-dir`, and acts
//! as the principal given by `--as` / `--tenant` (both read into [`Settings`]).
//!
//! One module per group of commands: [`ledger`] (init, add, query, get, verify, export,
//! redact), [`kernels`] (manifest, kernels, run), [`law`] (law check, law simulate),
//! [`governance`] (ruler, demo), [`variants`] (the prompt bandit), [`prompts`] (candidates),
//! [`proofs`] (checkpoint, proof) and [`bench`]; `serve` and `token` are here.

mod bench;
mod governance;
mod kernels;
mod law;
mod ledger;
mod memory;
mod progress;
mod prompts;
mod proofs;
mod variants;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ::ledger::Principal;
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use self::ledger::{AddFormat, QueryArgs};
use crate::auth;
use crate::config::{self, AuthSettings, Limits, ServeSettings, Settings, StoreSettings};

#[derive(Parser, Debug)]
#[command(
    name = "logline",
    version,
    about = "A governed, append-only ledger of signed spans"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Directory of the embedded ledger and the node key.
    #[arg(
        long,
        env = "LOGLINE_DATA_DIR",
        default_value = ".logline",
        global = true
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://…); without it the embedded SQLite file is used.
    #[arg(long, env = "LOGLINE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The user to act as.
    #[arg(
        long = "as",
        env = "LOGLINE_USER",
        default_value = "local",
        global = true
    )]
    pub user: String,
    /// The tenant to act in.
    #[arg(long, env = "LOGLINE_TENANT", default_value = "local", global = true)]
    pub tenant: String,
}

impl Global {
    /// The store and principal every command uses.
    pub fn settings(&self) -> Settings {
        Settings {
            store: StoreSettings {
                data_dir: self.data_dir.clone(),
                database_url: self.database_url.clone(),
            },
            principal: Principal::new(self.user.clone(), self.tenant.clone()),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the data directory, the node key and the signed manifest span.
    Init,
    /// Append spans: one JSON object per line from stdin or --file.
    Add {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = AddFormat::Text)]
        format: AddFormat,
        /// Accept entity types the node writes for itself (prompt_run, feedback, eval_run, …),
        /// e.g. to restore an export. The operator holds the node key anyway; HTTP callers
        /// never may.
        #[arg(long)]
        allow_reserved: bool,
    },
    /// List spans the caller may see.
    Query(QueryArgs),
    /// Show one span (latest version unless --seq), or all its versions.
    Get {
        id: Uuid,
        #[arg(long)]
        seq: Option<i64>,
        #[arg(long)]
        versions: bool,
    },
    /// Verify every chain (or one tenant's): exit 0, or name the first broken link.
    /// Each chain is also checked against the newest checkpoint this node remembers (under
    /// the data directory), or against `--checkpoint FILE`: truncation, rollback and forks.
    Verify {
        #[arg(long = "only-tenant")]
        only_tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = AddFormat::Text)]
        format: AddFormat,
        /// A signed checkpoint (from `checkpoint export` or the API) to verify its tenant against.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Signed checkpoints: `checkpoint export [--of-tenant T] [--out FILE]`.
    Checkpoint {
        #[command(subcommand)]
        what: proofs::CheckpointCommand,
    },
    /// Merkle proofs: `proof SPAN`, `proof consistency --from N`, `proof verify FILE` (offline).
    Proof(proofs::ProofArgs),
    /// Export what the caller may see as NDJSON with a signed trailer.
    Export {
        /// File to write, or `-` for stdout.
        #[arg(long)]
        out: String,
    },
    /// Memory: `memory list`, `memory forget ID|--last|--session S|--all`, `memory export`.
    Memory {
        #[command(subcommand)]
        what: memory::MemoryCommand,
    },
    /// Withhold a span's content from now on, recording who and why.
    Redact {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
    /// The manifest: `manifest show`, `manifest set KEY=VALUE…` (a new signed seq).
    Manifest {
        #[command(subcommand)]
        what: kernels::ManifestCommand,
    },
    /// Kernels: `kernels status` (Stage-0's verdict), `kernels set NAME KEY=VALUE…`.
    Kernels {
        #[command(subcommand)]
        what: kernels::KernelsCommand,
    },
    /// Run a `function` span now and print its execution span (exit 1 if it failed).
    Run(kernels::RunArgs),
    /// Prompt blocks and variants: `prompts status`, `prompts propose FILE` (a candidate that
    /// must pass the evaluation suites before the chat uses it).
    Prompts {
        #[command(subcommand)]
        what: prompts::PromptsCommand,
    },
    /// Serve the HTTP API (loopback only unless token auth is configured).
    Serve {
        #[arg(long, env = "LOGLINE_BIND", default_value = "127.0.0.1:8787")]
        bind: std::net::SocketAddr,
        /// Largest request body in bytes (413 beyond).
        #[arg(long, env = "LOGLINE_BODY_LIMIT", default_value_t = 16 * 1024 * 1024)]
        body_limit: usize,
        /// Requests per second per tenant (429 with Retry-After beyond; bursts of twice that).
        #[arg(long, env = "LOGLINE_RATE_LIMIT", default_value_t = 2000)]
        rate_limit: u32,
        /// Seconds a client may take from a request's first byte to the end of its headers.
        #[arg(long, env = "LOGLINE_HEADER_TIMEOUT", default_value_t = 10.0)]
        header_timeout: f64,
        /// Seconds a connection may stay idle (no request under way, nothing sent) before it
        /// is closed.
        #[arg(long, env = "LOGLINE_IDLE_TIMEOUT", default_value_t = 60.0)]
        idle_timeout: f64,
        /// Seconds of silence before TCP keepalive probes detect a vanished peer (0: off).
        #[arg(long, env = "LOGLINE_TCP_KEEPALIVE", default_value_t = 60.0)]
        tcp_keepalive: f64,
    },
    /// Access tokens for the HTTP API (needs LOGLINE_JWT_SECRET).
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Measure ingest or verify throughput and latency; prints JSON.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Law language tools: `law check FILE` parses a law and points at any error.
    Law {
        #[command(subcommand)]
        what: law::LawCommand,
    },
    /// The Midnight Ruler: `ruler run --at DATE|INSTANT [--tz ZONE]` runs one midnight by hand.
    Ruler {
        #[command(subcommand)]
        what: governance::RulerCommand,
    },
    /// The prompt bandit: `variants status`, `variants promote NAME`, `variants clear`,
    /// `variants readmit NAME`.
    Variants {
        #[command(subcommand)]
        what: variants::VariantsCommand,
    },
    /// Demo data: `demo seed` creates a small bakery and film-company tenant (idempotent).
    Demo {
        #[command(subcommand)]
        what: governance::DemoCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a signed token; the token is the last line of output.
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long)]
        tenant: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime: 30m, 1h, 7d, or seconds.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// What the binary that wires everything hands the command line (the server cannot depend on
/// the crates above it).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs the evaluation suites for the prompt_eval kernel (`evals`).
    pub trials: Option<Arc<dyn crate::chat::candidates::TrialRunner>>,
}

pub fn main() -> ExitCode {
    main_with(Hooks::default())
}

pub fn main_with(hooks: Hooks) -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(config::log_filter(config::env))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, hooks)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, hooks: Hooks) -> Result<ExitCode> {
    let s = &cli.global.settings();
    match cli.command {
        Command::Init => ledger::init(s).await,
        Command::Add {
            file,
            format,
            allow_reserved,
        } => ledger::add(s, file, format, allow_reserved).await,
        Command::Query(args) => ledger::query(s, args).await,
        Command::Get { id, seq, versions } => ledger::get(s, id, seq, versions).await,
        Command::Verify {
            only_tenant,
            format,
            checkpoint,
        } => ledger::verify(s, only_tenant, format, checkpoint).await,
        Command::Checkpoint { what } => proofs::checkpoint(s, what).await,
        Command::Proof(args) => proofs::proof(s, args).await,
        Command::Export { out } => ledger::export(s, &out).await,
        Command::Redact { id, reason } => ledger::redact(s, id, &reason).await,
        Command::Memory { what } => memory::run(s, what).await,
        Command::Manifest { what } => kernels::manifest(s, what).await,
        Command::Kernels { what } => kernels::kernels(s, what).await,
        Command::Run(args) => kernels::run(s, args).await,
        Command::Prompts { what } => prompts::run(s, what).await,
        Command::Bench { what } => bench::run(s, what).await,
        Command::Law { what } => law::run(s, what).await,
        Command::Ruler { what } => governance::ruler(s, what).await,
        Command::Demo { what } => governance::demo(s, what).await,
        Command::Variants { what } => variants::run(s, what).await,
        Command::Serve {
            bind,
            body_limit,
            rate_limit,
            header_timeout,
            idle_timeout,
            tcp_keepalive,
        } => {
            let edge =
                config::EdgeLimits::from_seconds(header_timeout, idle_timeout, tcp_keepalive)?;
            let store = s.store.open().await?;
            ::kernels::runner::boot_for_serve(store.clone()).await?;
            let limits = Limits {
                body_bytes: body_limit,
                tenant_rps: rate_limit,
                edge,
            };
            let settings =
                ServeSettings::from_lookup(bind, limits, s.principal.clone(), config::env)?;
            crate::serve::run(store, settings, hooks.trials.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            what:
                TokenCommand::Issue {
                    user,
                    tenant,
                    roles,
                    ttl,
                },
        } => {
            let secret = AuthSettings::from_lookup(config::env).signing_secret()?;
            let ttl = auth::parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            let now = Utc::now().timestamp();
            let claims = auth::Claims {
                sub: user,
                tenant,
                roles,
                exp: now + ttl,
                iat: now,
                nbf: None,
            };
            eprintln!(
                "token for {} in tenant {} (roles: {}), expires {}",
                claims.sub,
                claims.tenant,
                if claims.roles.is_empty() {
                    "none".to_string()
                } else {
                    claims.roles.join(", ")
                },
                DateTime::from_timestamp(claims.exp, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
            println!("{}", auth::issue(&secret, &claims));
            Ok(ExitCode::SUCCESS)
        }
    }
}
