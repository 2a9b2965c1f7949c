//! Stage-0 and the kernels live here (issue 4: manifest verification at boot, observer_bot,
//! request_worker, run_code, policy_agent, provider_exec, midnight_ruler; issue 11: prompt_eval). It re-exports the
//! ledger so the dependency direction `server → kernels → ledger` holds; `sandbox` is the
//! JavaScript engine sandbox that `run_code` runs user functions in. Each kernel is declared in
//! `kernel` (name, version, typed config) and runs from the module named after it; Stage-0
//! knows the kernels only through `kernel::NATIVE`.
#![forbid(unsafe_code)]

pub use ledger;

pub mod contracts;
pub mod demo;
pub mod kernel;
pub mod manifest;
pub mod midnight_ruler;
pub mod observer_bot;
pub mod policy_agent;
pub mod prompt_bandit;
pub mod prompt_eval;
pub mod request_worker;
pub mod run_code;
pub mod runner;
pub mod sandbox;
pub mod stage0;
