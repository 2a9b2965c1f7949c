//! Stage-0 and the kernels live here (issue 4: manifest verification at boot, observer_bot,
//! request_worker, run_code, policy_agent, provider_exec, midnight_ruler). For now the crate
//! only re-exports the ledger so the dependency direction `server → kernels → ledger` holds.
#![forbid(unsafe_code)]

pub use ledger;
