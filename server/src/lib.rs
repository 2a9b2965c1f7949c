//! The `logline` program: the HTTP API over the ledger (`serve`, `routes/`, `state`), the
//! conversational agent (`chat/`), their settings (`config`), and the command line (`cli/`),
//! which only parses arguments and prints: nothing in the library imports from it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod edge;
pub mod error;
pub mod export;
pub mod hub;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod serve;
pub mod state;
