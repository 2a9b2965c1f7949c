//! The shipped suites on the offline provider: `happy` passes every case; `stress` passes its
//! threshold, and the only cases it may fail are those marked `needs-a-model` (questions a
//! rule-based provider cannot read).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use evals::fixture::Suite;
use serde_json::Value;

#[test]
fn the_shipped_suites_pass_on_the_offline_provider() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.jsonl");
    let happy = root.join("suites/happy.yaml");
    let stress = root.join("suites/stress.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ll-eval"))
        .arg(&happy)
        .arg(&stress)
        .args(["--no-progress", "--concurrency", "4", "--data-dir"])
        .arg(dir.path())
        .arg("--output")
        .arg(&out_file)
        .env_remove("LOGLINE_PROVIDER")
        .env_remove("LOGLINE_DATABASE_URL")
        .output()
        .unwrap();
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let lines: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed = |suite: &str| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l["suite"] == suite && l["pass"] == false)
            .map(|l| l["case"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(failed("happy").is_empty(), "{shown}");
    let needs_a_model: BTreeSet<String> = Suite::load(&stress)
        .unwrap()
        .cases
        .iter()
        .filter(|c| {
            c.description
                .as_deref()
                .is_some_and(|d| d.contains("needs-a-model"))
        })
        .map(|c| c.name.clone())
        .collect();
    assert!(failed("stress").is_subset(&needs_a_model), "{shown}");
}
