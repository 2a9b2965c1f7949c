//! End-to-end tests of `logline law check`: the real binary on law files, as an author would run
//! it. No store is involved, so these need neither SQLite nor PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_logline");

fn seed_law(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ledger/tests/laws")
        .join(name)
}

fn logline(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("LOGLINE_DATA_DIR", dir.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_prints_a_one_line_summary_of_a_valid_law_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let law = seed_law("midnight_deadline.law");
    let out = logline(&["law", "check", law.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok: law midnight_deadline:1.0.0, scope deliverable, clock midnight Europe/Paris, blocks ok doubt not\n",
            law.display()
        )
    );
    assert!(
        !dir.path().join("data").exists(),
        "checking a law must not touch the ledger"
    );
}

#[test]
fn check_points_at_the_error_with_file_line_column_and_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.law"),
        "law late:1.0.0:\nscope: deliverable\nif not: now >= deadline_at\nthen: terminate(reason=late), hodl\n",
    )
    .unwrap();
    let out = logline(&["law", "check", "bad.law"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "bad.law:4:31: expected an action such as accept or hold(hours=N), found \"hodl\"\n  then: terminate(reason=late), hodl\n                                ^\n"
    );
}

#[test]
fn check_reports_every_file_and_fails_if_any_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("v.law"),
        "law v:1.0:\nif ok: a\nthen: accept\n",
    )
    .unwrap();
    let good = seed_law("auth_break_glass.law");
    let out = logline(
        &["law", "check", good.to_str().unwrap(), "v.law"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("law auth_break_glass:1.0.0, scope emergency_override, clock realtime, blocks ok doubt not"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).starts_with(
            "v.law:1:7: expected a version MAJOR.MINOR.PATCH such as 1.0.0, found \"1.0\"\n"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_reads_standard_input_given_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["law", "check", "-"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read(seed_law("review_deadline.law"))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "<stdin>: ok: law review_deadline:1.0.0, scope (none), clock (none), blocks not\n"
    );
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = logline(&["law", "check", "nope.law"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read nope.law"));
}
