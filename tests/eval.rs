//! `logline eval` is `ll-eval`: the same suites, exit codes and records through the main binary,
//! and the ledger still verifies after a run.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_logline");

#[test]
fn logline_eval_runs_a_suite_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("s.yaml");
    std::fs::write(
        &suite,
        "suite: s\ntenant: demo\nuser: ana@padaria-lisboa.pt\ncases:\n  - name: why-d1\n    question: why was D1 terminated?\n    assert:\n      - {type: cites, value: law.decision}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("LOGLINE_PROVIDER")
            .env_remove("LOGLINE_DATABASE_URL")
            .output()
            .unwrap()
    };
    let s = suite.to_str().unwrap();
    let out = run(&["eval", s, "--no-progress"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1/1 cases passed"));
    let out = run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    std::fs::write(&suite, "suite: s\ntenant: demo\nuser: ana\ncases: 3\n").unwrap();
    let out = run(&["eval", s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s.yaml:4:"), "{err}");
}
