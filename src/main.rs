//! The `logline` binary: a thin shell over `server::cli`, so end-to-end tests in `tests/` can
//! drive the exact program users run.

fn main() -> std::process::ExitCode {
    server::cli::main()
}
