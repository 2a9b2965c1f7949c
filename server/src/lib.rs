//! The `logline` program: CLI commands now; the HTTP API, chat and web UI serving follow.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
