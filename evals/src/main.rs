//! The `ll-eval` binary (also reachable as `logline eval`).

fn main() -> std::process::ExitCode {
    evals::cli::main(std::env::args_os())
}
