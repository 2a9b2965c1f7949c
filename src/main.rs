//! The `logline` binary: a thin shell over `server::cli`, so end-to-end tests in `tests/` can
//! drive the exact program users run. `logline eval …` is `ll-eval …`: the `evals` crate sits
//! above the server, so the server's command line cannot reach it, but this shell can; for the
//! same reason it hands `serve` the suite runner its prompt_eval kernel evaluates with.

use std::ffi::OsString;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "eval") {
        let args =
            std::iter::once(OsString::from("logline eval")).chain(std::env::args_os().skip(2));
        return evals::cli::main(args);
    }
    // `serve`'s prompt_eval kernel evaluates prompt candidates with the suites of `evals`.
    server::cli::main_with(server::cli::Hooks {
        trials: Some(std::sync::Arc::new(evals::gate::SuiteTrials)),
    })
}
