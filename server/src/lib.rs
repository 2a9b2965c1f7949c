//! The `logline` program: the CLI, and `logline serve`, the HTTP API over the ledger.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bench;
pub mod bench_chat;
pub mod bench_http;
pub mod chat;
pub mod cli;
pub mod cli_governance;
pub mod cli_kernels;
pub mod cli_law;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod serve;
