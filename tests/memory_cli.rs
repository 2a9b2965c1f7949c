//! `logline memory` end to end on the real binary (embedded store): remember, list, export
//! with a signed trailer, forget — and `verify` still passes afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_logline");

fn run(dir: &std::path::Path, user: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["--as", user, "--tenant", "demo"])
        .args(args)
        .env_remove("LOGLINE_DATABASE_URL")
        .env_remove("LOGLINE_MEMORY_KEY")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn memory_commands_remember_list_export_and_forget_for_real() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), "ana", &["init"]).0);
    let (ok, out) = run(
        dir.path(),
        "ana",
        &["memory", "remember", "my locker is 17"],
    );
    assert!(ok, "{out}");
    let item: Value = serde_json::from_str(out.trim()).unwrap();
    let id = item["id"].as_str().unwrap().to_string();
    let (_, list) = run(dir.path(), "ana", &["memory", "list"]);
    assert!(list.contains("my locker is 17"), "{list}");
    let (_, other) = run(dir.path(), "bob", &["memory", "list"]);
    assert!(other.trim().is_empty(), "{other}");
    let (_, export) = run(dir.path(), "ana", &["memory", "export"]);
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines.len(), 2, "{export}");
    let trailer: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(trailer["trailer"]["count"], 1);
    assert!(!run(dir.path(), "bob", &["memory", "forget", &id]).0);
    let (ok, gone) = run(dir.path(), "ana", &["memory", "forget", &id]);
    assert!(ok && gone.contains(&id), "{gone}");
    assert!(
        run(dir.path(), "ana", &["memory", "list"])
            .1
            .trim()
            .is_empty()
    );
    let (ok, verify) = run(dir.path(), "ana", &["verify"]);
    assert!(ok, "{verify}");
}
