//! End-to-end tests of the `logline` binary: every test runs the real executable as a user
//! would, against the embedded SQLite store (a temporary data dir) and against PostgreSQL (a
//! fresh database from `testkit::pg` plus a temporary data dir for the node key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::{Backend, Ledger, Run, finish};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_logline");
/// The manifest's well-known id.
const MANIFEST_ID: &str = "00000000-0000-7000-8000-6d616e696673";
/// The principal most tests act as.
const USER: &str = "ana";
const TENANT: &str = "bakery";

/// What these tests do with a ledger, through the binary.
trait Cli {
    fn command(&self, user: &str, tenant: &str, args: &[&str]) -> Command;
    /// Starts the binary without waiting for it.
    fn spawn_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Child;
    fn run_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Run;
    /// Runs as ana of tenant bakery.
    fn run(&self, args: &[&str], stdin: &str) -> Run;
    fn init(&self) -> Run;
    /// `add --format ndjson` as a given principal; returns the per-line results.
    fn add_as(&self, user: &str, tenant: &str, spans: &[Value]) -> (Run, Vec<Value>);
    /// Appends spans as ana@bakery, all of which must be accepted; returns their results.
    fn add_ok(&self, spans: &[Value]) -> Vec<Value>;
    /// `query --format ndjson` plus extra filters, as a principal.
    fn query_as(&self, user: &str, tenant: &str, filters: &[&str]) -> Vec<Value>;
    fn get_as(&self, user: &str, tenant: &str, id: &str) -> Run;
    /// `verify --format json`: (exit code success, report).
    fn verify_json(&self) -> (bool, Value);
    /// The span count of one tenant's chain according to `verify --format json`.
    fn chain_len(&self, tenant: &str) -> i64;
}

impl Cli for Ledger {
    fn command(&self, user: &str, tenant: &str, args: &[&str]) -> Command {
        self.logline_as(BIN, user, tenant, args)
    }

    fn spawn_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Child {
        testkit::spawn(self.command(user, tenant, args), stdin)
    }

    fn run_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Run {
        finish(self.spawn_as(user, tenant, args, stdin))
    }

    fn run(&self, args: &[&str], stdin: &str) -> Run {
        self.run_as(USER, TENANT, args, stdin)
    }

    fn init(&self) -> Run {
        let r = self.run(&["init"], "");
        r.ok();
        r
    }

    fn add_as(&self, user: &str, tenant: &str, spans: &[Value]) -> (Run, Vec<Value>) {
        let r = self.run_as(
            user,
            tenant,
            &["add", "--format", "ndjson"],
            &lines_of(spans),
        );
        let results = r.ndjson();
        (r, results)
    }

    fn add_ok(&self, spans: &[Value]) -> Vec<Value> {
        let (r, results) = self.add_as(USER, TENANT, spans);
        r.ok();
        assert_eq!(
            results.len(),
            spans.len(),
            "one result per line: {results:?}"
        );
        for res in &results {
            assert_eq!(res["ok"], json!(true), "line refused: {res}");
        }
        results
    }

    fn query_as(&self, user: &str, tenant: &str, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["query", "--format", "ndjson", "--limit", "1000"];
        args.extend_from_slice(filters);
        let r = self.run_as(user, tenant, &args, "");
        r.ok();
        r.ndjson()
    }

    fn get_as(&self, user: &str, tenant: &str, id: &str) -> Run {
        self.run_as(user, tenant, &["get", id], "")
    }

    fn verify_json(&self) -> (bool, Value) {
        let r = self.run(&["verify", "--format", "json"], "");
        let report: Value = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("verify --format json printed no JSON ({e}): {r:?}"));
        (r.success(), report)
    }

    fn chain_len(&self, tenant: &str) -> i64 {
        let (ok, report) = self.verify_json();
        assert!(ok, "verify failed: {report}");
        tenant_report(&report, tenant)["spans"].as_i64().unwrap()
    }
}

fn lines_of(spans: &[Value]) -> String {
    spans.iter().map(|s| format!("{s}\n")).collect()
}

fn tenant_report<'a>(report: &'a Value, tenant: &str) -> &'a Value {
    report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == json!(tenant))
        .unwrap_or_else(|| panic!("no report for tenant {tenant}: {report}"))
}

/// A complete span (all nine fields), with `extra` merged over it.
fn span(extra: Value) -> Value {
    let mut v = json!({
        "who": "ana", "did": "confirmed delivery", "this": "delivery 312",
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask", "if_not": "open incident", "status": "valid"
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn ids(spans: &[Value]) -> BTreeSet<String> {
    spans
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn id_of(result: &Value) -> String {
    result["id"].as_str().unwrap().to_string()
}

testkit::both_stores!(
    init_creates_a_private_node_key_and_a_manifest_and_never_exports_the_key,
    add_reads_stdin_and_files_and_reports_every_line,
    add_refuses_bad_lines_precisely_by_line_number_and_keeps_the_good_ones,
    a_span_missing_fields_is_stored_as_a_ghost_naming_them,
    query_filters_by_entity_type_and_date_in_every_format,
    get_returns_the_latest_version_a_given_seq_or_all_versions,
    the_same_idempotency_key_never_appends_twice,
    private_spans_are_seen_by_their_owner_tenant_spans_by_the_tenant_public_by_all,
    writing_into_another_tenant_is_refused_per_line,
    redact_withholds_content_everywhere_and_records_who_and_why,
    export_writes_visible_spans_with_a_trailer_whose_count_and_digest_match,
    verify_names_the_tenant_position_and_id_of_an_altered_span,
    verify_reports_the_position_of_a_span_deleted_from_the_middle,
    verify_names_a_tampered_status_column_that_query_reads_in_text_and_json,
    the_database_itself_refuses_updates_and_deletes_of_spans,
    client_signed_spans_need_a_trusted_key_and_a_matching_signature,
    concurrent_add_processes_keep_one_gapless_chain_and_one_span_per_key,
    concurrent_first_use_of_a_fresh_ledger_succeeds_for_every_process,
);

// 1. init ---------------------------------------------------------------------------------

async fn init_creates_a_private_node_key_and_a_manifest_and_never_exports_the_key(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let out = l.init();

    let meta = std::fs::metadata(l.key_path()).context("init made no node.key")?;
    {
        use std::os::unix::fs::PermissionsExt;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o600,
            "node.key has mode {:o}, not 0600",
            meta.permissions().mode() & 0o777
        );
    }
    let secret = std::fs::read_to_string(l.key_path())?.trim().to_string();
    ensure!(secret.len() == 64, "node.key is not 64 hex characters");
    ensure!(!out.all().contains(&secret), "init printed the secret key");

    let public = ledger::crypto::NodeKey::load(&l.key_path())?
        .public_key()
        .to_string();
    let manifest: Value = serde_json::from_str(l.get_as(USER, TENANT, MANIFEST_ID).ok())?;
    ensure!(manifest["entity_type"] == json!("manifest"), "{manifest}");
    ensure!(manifest["visibility"] == json!("public"), "{manifest}");
    ensure!(
        manifest["content"]["trusted_keys"]
            .as_array()
            .is_some_and(|k| k.contains(&json!(public))),
        "the manifest does not trust the node key {public}: {manifest}"
    );
    ensure!(manifest["public_key"] == json!(public), "{manifest}");

    // Running init again keeps the same key and the same single manifest (and kernel spans).
    let system = l.chain_len("system");
    l.init();
    ensure!(std::fs::read_to_string(l.key_path())?.trim() == secret);
    ensure!(
        l.chain_len("system") == system,
        "a second init appended again"
    );

    l.add_ok(&[span(json!({})), span(json!({"visibility": "public"}))]);
    let export = l.run(&["export", "--out", "-"], "");
    let text = export.ok();
    ensure!(
        text.lines().count() == 4,
        "manifest + 2 spans + trailer:\n{text}"
    );
    ensure!(
        !export.all().contains(&secret),
        "the export contains the secret key"
    );
    if backend == Backend::Sqlite {
        let mut db = std::fs::read(l.data_dir().join("ledger.sqlite3"))?;
        db.extend(std::fs::read(l.data_dir().join("ledger.sqlite3-wal")).unwrap_or_default());
        ensure!(
            !String::from_utf8_lossy(&db).contains(&secret),
            "the secret key is stored in the database"
        );
    }
    Ok(())
}

// 2. add ----------------------------------------------------------------------------------

async fn add_reads_stdin_and_files_and_reports_every_line(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();

    // stdin, text format
    let r = l.run(&["add"], &lines_of(&[span(json!({"did": "from stdin"}))]));
    let text = r.ok();
    ensure!(text.starts_with("line 1: ok "), "text output: {text}");

    // --file, ndjson format
    let file = l.data_dir().join("spans.ndjson");
    std::fs::write(
        &file,
        lines_of(&[
            span(json!({"did": "from file A"})),
            span(json!({"did": "from file B"})),
        ]),
    )?;
    let r = l.run(
        &[
            "add",
            "--file",
            file.to_str().unwrap(),
            "--format",
            "ndjson",
        ],
        "",
    );
    r.ok();
    let results = r.ndjson();
    ensure!(results.len() == 2, "one object per input line: {results:?}");
    for (i, res) in results.iter().enumerate() {
        ensure!(res["line"] == json!(i + 1), "{res}");
        ensure!(res["ok"] == json!(true), "{res}");
        ensure!(
            Uuid::parse_str(res["id"].as_str().unwrap_or("")).is_ok(),
            "{res}"
        );
        ensure!(res["seq"] == json!(0), "{res}");
        ensure!(
            res["chain_pos"] == json!(i + 1),
            "stdin span is chain_pos 0: {res}"
        );
        ensure!(
            res["curr_hash"]
                .as_str()
                .is_some_and(|h| h.starts_with("blake3:") && h.len() == 71),
            "{res}"
        );
    }

    let did: BTreeSet<String> = l
        .query_as(USER, TENANT, &["--of-tenant", TENANT])
        .iter()
        .map(|s| s["did"].as_str().unwrap().to_string())
        .collect();
    ensure!(
        did == BTreeSet::from([
            "from stdin".into(),
            "from file A".into(),
            "from file B".into()
        ]),
        "stored: {did:?}"
    );
    // get finds each span by the id add reported.
    for res in &results {
        let got: Value = serde_json::from_str(l.get_as(USER, TENANT, &id_of(res)).ok())?;
        ensure!(got["curr_hash"] == res["curr_hash"], "{got}");
    }
    Ok(())
}

async fn add_refuses_bad_lines_precisely_by_line_number_and_keeps_the_good_ones(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let oversized = json!({"who": "ana", "content": "x".repeat(300 * 1024)}).to_string();
    let input = [
        span(json!({"did": "good one"})).to_string(), // 1
        "this is not json".to_string(),               // 2
        "[1, 2, 3]".to_string(),                      // 3
        r#"{"who": 3}"#.to_string(),                  // 4
        oversized,                                    // 5
        String::new(),                                // 6: blank, skipped but counted
        span(json!({"did": "good two"})).to_string(), // 7
        "\"just a string\"".to_string(),              // 8
    ]
    .join("\n");
    let r = l.run(&["add", "--format", "ndjson"], &input);
    ensure!(r.code == Some(1), "exit code must be 1: {r:?}");
    let results = r.ndjson();
    let by_line: BTreeMap<i64, &Value> = results
        .iter()
        .map(|v| (v["line"].as_i64().unwrap(), v))
        .collect();
    ensure!(
        by_line.keys().copied().collect::<Vec<_>>() == vec![1, 2, 3, 4, 5, 7, 8],
        "line numbers: {results:?}"
    );
    let error = |line: i64| -> String {
        let v = by_line[&line];
        assert_eq!(v["ok"], json!(false), "line {line} should fail: {v}");
        v["error"].as_str().unwrap().to_string()
    };
    ensure!(by_line[&1]["ok"] == json!(true));
    ensure!(by_line[&7]["ok"] == json!(true));
    let e = error(2);
    ensure!(e.contains("not valid JSON"), "line 2: {e}");
    let e = error(3);
    ensure!(
        e.contains("must be a JSON object") && e.contains("array"),
        "line 3: {e}"
    );
    let e = error(4);
    ensure!(
        e.contains("`who`") && e.contains("must be a string"),
        "line 4: {e}"
    );
    let e = error(5);
    ensure!(
        e.contains("262144") && e.contains("limit"),
        "line 5 must name the 256 KiB limit: {e}"
    );
    let e = error(8);
    ensure!(
        e.contains("must be a JSON object") && e.contains("string"),
        "line 8: {e}"
    );
    ensure!(
        r.stderr.contains("5 of 7 lines failed"),
        "summary: {}",
        r.stderr
    );

    // The same in text format names the line numbers too.
    let r = l.run(&["add"], &input);
    ensure!(r.code == Some(1));
    ensure!(
        r.stdout
            .contains("line 4: error: field `who` must be a string"),
        "{}",
        r.stdout
    );

    let stored = l.query_as(USER, TENANT, &["--of-tenant", TENANT]);
    let did: Vec<&str> = stored.iter().map(|s| s["did"].as_str().unwrap()).collect();
    ensure!(
        did == ["good one", "good two", "good one", "good two"],
        "only the good lines are stored, from both runs: {did:?}"
    );
    ensure!(l.chain_len(TENANT) == 4);
    Ok(())
}

// 3. ghosts -------------------------------------------------------------------------------

async fn a_span_missing_fields_is_stored_as_a_ghost_naming_them(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let mut partial = span(json!({"did": "half a thought"}));
    let obj = partial.as_object_mut().unwrap();
    obj.remove("who");
    obj.remove("when");
    obj.remove("if_doubt");
    let results = l.add_ok(&[partial, span(json!({"did": "whole"}))]);
    ensure!(results[0]["status"] == json!("ghost"), "{}", results[0]);
    ensure!(results[1]["status"] == json!("valid"), "{}", results[1]);

    let ghost: Value = serde_json::from_str(l.get_as(USER, TENANT, &id_of(&results[0])).ok())?;
    ensure!(ghost["status"] == json!("ghost"), "{ghost}");
    let reason = ghost["ghost_reason"].as_str().context("no ghost_reason")?;
    let named: BTreeSet<&str> = reason
        .trim_start_matches("missing:")
        .split(',')
        .map(str::trim)
        .collect();
    ensure!(
        named == BTreeSet::from(["who", "when", "if_doubt"]),
        "ghost_reason must name exactly the missing fields: {reason}"
    );
    ensure!(
        ghost["did"] == json!("half a thought"),
        "content is kept: {ghost}"
    );

    let whole: Value = serde_json::from_str(l.get_as(USER, TENANT, &id_of(&results[1])).ok())?;
    ensure!(whole.get("ghost_reason").is_none(), "{whole}");

    let ghosts = l.query_as(USER, TENANT, &["--status", "ghost"]);
    ensure!(ids(&ghosts) == BTreeSet::from([id_of(&results[0])]));
    Ok(())
}

// 4. query --------------------------------------------------------------------------------

async fn query_filters_by_entity_type_and_date_in_every_format(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let r = l.add_ok(&[
        span(json!({"entity_type": "delivery", "when": "2026-10-15T09:00:00Z", "did": "october delivery"})),
        span(json!({"entity_type": "delivery", "when": "2026-11-20T10:00:00Z", "did": "late november delivery", "who": "bruna"})),
        span(json!({"entity_type": "delivery", "when": "2026-11-01T00:00:00Z", "did": "first of november delivery"})),
        span(json!({"entity_type": "invoice", "when": "2026-11-20T10:00:00Z", "did": "invoiced"})),
        span(json!({"entity_type": "delivery", "when": "2026-10-31T23:59:59Z", "did": "halloween delivery"})),
    ]);
    let want = BTreeSet::from([id_of(&r[1]), id_of(&r[2])]);
    let filter = [
        "query",
        "--entity-type",
        "delivery",
        "--since",
        "2026-11-01",
    ];

    let mut args = filter.to_vec();
    args.extend(["--format", "json"]);
    let json_out: Value = serde_json::from_str(l.run(&args, "").ok())?;
    let arr = json_out
        .as_array()
        .context("--format json prints an array")?;
    ensure!(ids(arr) == want, "json: {json_out}");

    let mut args = filter.to_vec();
    args.extend(["--format", "ndjson"]);
    let nd = l.run(&args, "").ndjson();
    ensure!(nd.len() == 2 && ids(&nd) == want, "ndjson: {nd:?}");
    for s in &nd {
        ensure!(s["entity_type"] == json!("delivery"));
        ensure!(s["at"].as_str().unwrap() >= "2026-11-01", "{s}");
    }

    let mut args = filter.to_vec();
    args.extend(["--format", "table"]);
    let table = l.run(&args, "").ok().to_string();
    for header in ["who", "did", "this"] {
        ensure!(
            table.contains(header),
            "table lacks column {header}:\n{table}"
        );
    }
    for shown in [
        "late november delivery",
        "first of november delivery",
        "bruna",
        "delivery 312",
    ] {
        ensure!(table.contains(shown), "table lacks {shown}:\n{table}");
    }
    for hidden in ["october delivery", "halloween delivery", "invoiced"] {
        ensure!(
            !table.contains(hidden),
            "table shows excluded {hidden}:\n{table}"
        );
    }
    // The table is the default format.
    ensure!(l.run(&filter, "").ok().contains("late november delivery"));

    // --until is exclusive and combines with --since.
    let only_first = l.query_as(
        USER,
        TENANT,
        &[
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-02",
            "--entity-type",
            "delivery",
        ],
    );
    ensure!(
        ids(&only_first) == BTreeSet::from([id_of(&r[2])]),
        "{only_first:?}"
    );
    Ok(())
}

// 5. versions -----------------------------------------------------------------------------

async fn get_returns_the_latest_version_a_given_seq_or_all_versions(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let id = Uuid::now_v7().to_string();
    let first = l.add_ok(&[span(json!({"id": id, "did": "version zero"}))]);
    ensure!(
        first[0]["id"] == json!(id) && first[0]["seq"] == json!(0),
        "{}",
        first[0]
    );
    let second = l.add_ok(&[span(json!({"id": id, "did": "version one"}))]);
    ensure!(second[0]["id"] == json!(id), "{}", second[0]);
    ensure!(
        second[0]["seq"] == json!(1),
        "seq is auto-assigned: {}",
        second[0]
    );

    let latest: Value = serde_json::from_str(l.run(&["get", &id], "").ok())?;
    ensure!(
        latest["seq"] == json!(1) && latest["did"] == json!("version one"),
        "{latest}"
    );
    let zero: Value = serde_json::from_str(l.run(&["get", &id, "--seq", "0"], "").ok())?;
    ensure!(
        zero["seq"] == json!(0) && zero["did"] == json!("version zero"),
        "{zero}"
    );
    let all: Value = serde_json::from_str(l.run(&["get", &id, "--versions"], "").ok())?;
    let all = all.as_array().context("--versions prints an array")?;
    let seqs: Vec<&Value> = all.iter().map(|v| &v["seq"]).collect();
    ensure!(
        seqs == [&json!(0), &json!(1)],
        "versions oldest first: {all:?}"
    );
    ensure!(all[0]["did"] == json!("version zero") && all[1]["did"] == json!("version one"));

    // A seq that does not exist is not found.
    let r = l.run(&["get", &id, "--seq", "7"], "");
    ensure!(!r.success() && r.stderr.contains("not found"), "{r:?}");

    // A wrong explicit seq is refused with the seq that would be right.
    let (r, res) = l.add_as(
        USER,
        TENANT,
        &[span(json!({"id": id, "seq": 5, "did": "skip ahead"}))],
    );
    ensure!(r.code == Some(1), "{r:?}");
    let e = res[0]["error"].as_str().context("no error")?;
    ensure!(
        res[0]["ok"] == json!(false) && e.contains(&id) && e.contains("seq 2") && e.contains('5'),
        "error must name the span, the expected seq 2 and the given 5: {e}"
    );
    // An explicit right seq is accepted.
    let third = l.add_ok(&[span(json!({"id": id, "seq": 2, "did": "version two"}))]);
    ensure!(third[0]["seq"] == json!(2));

    // Two versions of a new id in one batch are sequenced in input order.
    let other = Uuid::now_v7().to_string();
    let batch = l.add_ok(&[
        span(json!({"id": other, "did": "batch zero"})),
        span(json!({"id": other, "did": "batch one"})),
    ]);
    ensure!(
        batch[0]["seq"] == json!(0) && batch[1]["seq"] == json!(1),
        "{batch:?}"
    );
    let latest: Value = serde_json::from_str(l.run(&["get", &other], "").ok())?;
    ensure!(latest["did"] == json!("batch one"), "{latest}");
    ensure!(l.chain_len(TENANT) == 5);
    Ok(())
}

// 6. idempotency --------------------------------------------------------------------------

async fn the_same_idempotency_key_never_appends_twice(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let a = l.add_ok(&[span(
        json!({"idempotency_key": "order-77", "did": "first try"}),
    )]);
    ensure!(a[0]["duplicate"] == json!(false));
    let b = l.add_ok(&[span(json!({"idempotency_key": "order-77", "did": "retry"}))]);
    ensure!(
        b[0]["id"] == a[0]["id"],
        "the retry gets the original id: {} vs {}",
        b[0],
        a[0]
    );
    ensure!(b[0]["chain_pos"] == a[0]["chain_pos"] && b[0]["curr_hash"] == a[0]["curr_hash"]);
    ensure!(b[0]["duplicate"] == json!(true), "{}", b[0]);
    // Twice more in one batch, next to a new key.
    let c = l.add_ok(&[
        span(json!({"idempotency_key": "order-77", "did": "retry again"})),
        span(json!({"idempotency_key": "order-78"})),
        span(json!({"idempotency_key": "order-78"})),
    ]);
    ensure!(c[0]["id"] == a[0]["id"], "{c:?}");
    ensure!(
        c[1]["id"] == c[2]["id"],
        "the same new key twice in one batch: {c:?}"
    );
    ensure!(
        c[1]["duplicate"] == json!(false) && c[2]["duplicate"] == json!(true),
        "{c:?}"
    );

    ensure!(l.chain_len(TENANT) == 2, "one span per key");
    let stored = l.query_as(USER, TENANT, &["--of-tenant", TENANT]);
    ensure!(stored.len() == 2, "{stored:?}");
    let first: Value = serde_json::from_str(l.get_as(USER, TENANT, &id_of(&a[0])).ok())?;
    ensure!(
        first["did"] == json!("first try"),
        "the original is kept: {first}"
    );

    // Keys are per tenant: another tenant's identical key is its own span.
    let (r, other) = l.add_as(
        "otto",
        "other",
        &[span(json!({"idempotency_key": "order-77"}))],
    );
    r.ok();
    ensure!(other[0]["id"] != a[0]["id"] && other[0]["duplicate"] == json!(false));
    Ok(())
}

// 7. visibility ---------------------------------------------------------------------------

async fn private_spans_are_seen_by_their_owner_tenant_spans_by_the_tenant_public_by_all(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let r = l.add_ok(&[
        span(json!({"did": "private note", "trace_id": "vis"})),
        span(json!({"did": "team note", "visibility": "tenant", "trace_id": "vis"})),
        span(json!({"did": "press release", "visibility": "public", "trace_id": "vis"})),
    ]);
    let (private, team, public) = (id_of(&r[0]), id_of(&r[1]), id_of(&r[2]));
    let seen = |user: &str, tenant: &str| ids(&l.query_as(user, tenant, &["--trace-id", "vis"]));

    // The owner sees all three.
    ensure!(seen(USER, TENANT) == BTreeSet::from([private.clone(), team.clone(), public.clone()]));
    for id in [&private, &team, &public] {
        l.get_as(USER, TENANT, id).ok();
    }

    // Another member of the tenant: not the private one.
    let g = l.get_as("bob", TENANT, &private);
    ensure!(!g.success(), "bob must not get ana's private span: {g:?}");
    ensure!(!g.all().contains("private note"), "{g:?}");
    ensure!(g.stderr.contains("not found"), "{g:?}");
    l.get_as("bob", TENANT, &team).ok();
    l.get_as("bob", TENANT, &public).ok();
    ensure!(seen("bob", TENANT) == BTreeSet::from([team.clone(), public.clone()]));
    let versions = l.run_as("bob", TENANT, &["get", &private, "--versions"], "");
    ensure!(
        !versions.success() && !versions.all().contains("private note"),
        "{versions:?}"
    );

    // Another tenant: only the public one, even for a user of the same name.
    for user in ["carol", USER] {
        ensure!(!l.get_as(user, "other", &private).success());
        ensure!(!l.get_as(user, "other", &team).success());
        l.get_as(user, "other", &public).ok();
        ensure!(
            seen(user, "other") == BTreeSet::from([public.clone()]),
            "{user}@other"
        );
    }

    // Others' exports follow the same rule.
    let export = l.run_as("bob", TENANT, &["export", "--out", "-"], "");
    let text = export.ok();
    ensure!(
        !text.contains("private note") && text.contains("team note"),
        "{text}"
    );
    let export = l.run_as("carol", "other", &["export", "--out", "-"], "");
    let text = export.ok();
    ensure!(!text.contains("private note") && !text.contains("team note"));
    ensure!(text.contains("press release"));
    Ok(())
}

async fn writing_into_another_tenant_is_refused_per_line(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let (r, res) = l.add_as(
        USER,
        "mine",
        &[
            span(json!({"did": "at home"})),
            span(json!({"did": "trespass", "tenant_id": "other"})),
            span(json!({"did": "explicitly home", "tenant_id": "mine"})),
            span(json!({"did": "impersonation", "owner_id": "bob"})),
        ],
    );
    ensure!(r.code == Some(1), "{r:?}");
    ensure!(
        res[0]["ok"] == json!(true) && res[2]["ok"] == json!(true),
        "{res:?}"
    );
    ensure!(res[1]["ok"] == json!(false), "{res:?}");
    let e = res[1]["error"].as_str().unwrap();
    ensure!(
        e.contains("`mine`") && e.contains("`other`"),
        "names both tenants: {e}"
    );
    ensure!(res[3]["ok"] == json!(false), "{res:?}");
    ensure!(
        res[3]["error"].as_str().unwrap().contains("bob"),
        "{}",
        res[3]
    );

    let (ok, report) = l.verify_json();
    ensure!(ok, "{report}");
    ensure!(
        !report["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tenant_id"] == json!("other")),
        "tenant other must have no chain: {report}"
    );
    ensure!(tenant_report(&report, "mine")["spans"] == json!(2));
    ensure!(
        l.query_as("otto", "other", &["--of-tenant", "other"])
            .is_empty()
    );
    Ok(())
}

// 8. redaction ----------------------------------------------------------------------------

async fn redact_withholds_content_everywhere_and_records_who_and_why(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let secret_word = "xylophonist";
    let id = Uuid::now_v7().to_string();
    let r = l.add_ok(&[
        span(json!({"did": "before", "visibility": "tenant"})),
        span(json!({"id": id, "visibility": "tenant", "did": format!("hired the {secret_word}"),
                    "content": {"note": format!("home address of the {secret_word}")}})),
        span(json!({"id": id, "visibility": "tenant", "content": {"note": format!("{secret_word} v2")}})),
        span(json!({"did": "after", "visibility": "tenant"})),
    ]);
    ensure!(r[2]["seq"] == json!(1));

    // Only the owner may redact.
    let refused = l.run_as("bob", TENANT, &["redact", &id, "--reason", "mine now"], "");
    ensure!(!refused.success(), "bob redacted ana's span: {refused:?}");

    let out = l.run(&["redact", &id, "--reason", "GDPR erasure"], "");
    out.ok();
    let again = l.run(&["redact", &id, "--reason", "twice"], "");
    ensure!(
        !again.success() && again.stderr.contains("already redacted"),
        "{again:?}"
    );

    let redacted = json!({"redacted": true});
    for user in [USER, "bob"] {
        let got = l.get_as(user, TENANT, &id);
        ensure!(
            !got.all().contains(secret_word),
            "get shows the original: {got:?}"
        );
        let got: Value = serde_json::from_str(got.ok())?;
        ensure!(got["content"] == redacted, "{got}");
        ensure!(got["id"] == json!(id) && got["seq"] == json!(1), "{got}");
        let versions = l.run_as(user, TENANT, &["get", &id, "--versions"], "");
        ensure!(!versions.all().contains(secret_word), "{versions:?}");
        for v in serde_json::from_str::<Value>(versions.ok())?
            .as_array()
            .unwrap()
        {
            ensure!(v["content"] == redacted, "every version is withheld: {v}");
        }
        let zero = l.run_as(user, TENANT, &["get", &id, "--seq", "0"], "");
        ensure!(!zero.all().contains(secret_word), "{zero:?}");
    }
    for format in ["ndjson", "json", "table"] {
        let q = l.run(&["query", "--format", format], "");
        ensure!(
            !q.ok().contains(secret_word),
            "query --format {format}:\n{}",
            q.stdout
        );
    }
    let q = l.query_as(USER, TENANT, &["--of-tenant", TENANT]);
    let withheld: Vec<&Value> = q.iter().filter(|s| s["id"] == json!(id)).collect();
    ensure!(withheld.len() == 2 && withheld.iter().all(|s| s["content"] == redacted));
    let export = l.run(&["export", "--out", "-"], "");
    ensure!(
        !export.ok().contains(secret_word),
        "export:\n{}",
        export.stdout
    );
    ensure!(export.stdout.contains("\"redacted\":true"));

    // The redaction span: who, why and what.
    let reds = l.query_as(USER, TENANT, &["--entity-type", "redaction"]);
    ensure!(reds.len() == 1, "{reds:?}");
    let red = &reds[0];
    ensure!(red["who"] == json!(USER), "{red}");
    ensure!(red["owner_id"] == json!(USER), "{red}");
    ensure!(red["content"]["reason"] == json!("GDPR erasure"), "{red}");
    ensure!(red["related_to"] == json!([id]), "{red}");
    ensure!(
        out.stdout.contains(red["id"].as_str().unwrap()),
        "redact names its span"
    );
    // Others of the tenant can see why the tenant-visible span was withheld.
    ensure!(
        l.query_as("bob", TENANT, &["--entity-type", "redaction"])
            .len()
            == 1
    );

    let (ok, report) = l.verify_json();
    ensure!(ok, "verify must still pass after a redaction: {report}");
    ensure!(tenant_report(&report, TENANT)["spans"] == json!(5));
    l.run(&["verify"], "").ok();
    Ok(())
}

// 9. export -------------------------------------------------------------------------------

async fn export_writes_visible_spans_with_a_trailer_whose_count_and_digest_match(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    l.add_ok(&[
        span(json!({"did": "one"})),
        span(json!({"did": "two", "visibility": "tenant"})),
        span(json!({"did": "three", "when": "2025-01-01T00:00:00Z"})),
    ]);
    let (r, _) = l.add_as("bob", TENANT, &[span(json!({"did": "bob's own secret"}))]);
    r.ok();
    let public = ledger::crypto::NodeKey::load(&l.key_path())?
        .public_key()
        .to_string();

    let path = l.data_dir().join("export.ndjson");
    l.run(&["export", "--out", path.to_str().unwrap()], "").ok();
    let file = std::fs::read_to_string(&path)?;
    let (spans, trailer) = check_export(&file, &public)?;
    ensure!(spans.len() == 4, "manifest + ana's 3 spans: {spans:?}");
    ensure!(
        !file.contains("bob's own secret"),
        "export shows what ana cannot see"
    );
    let did: BTreeSet<&str> = spans.iter().filter_map(|s| s["did"].as_str()).collect();
    ensure!(did.is_superset(&BTreeSet::from(["one", "two", "three"])));
    ensure!(trailer["tenant_id"] == json!(TENANT), "{trailer}");

    // `--out -` writes the same spans to stdout.
    let stdout = l.run(&["export", "--out", "-"], "");
    let (spans2, trailer2) = check_export(stdout.ok(), &public)?;
    ensure!(spans2 == spans && trailer2["digest"] == trailer["digest"]);

    // A changed export no longer matches its trailer.
    let tampered = file.replacen("\"did\":\"one\"", "\"did\":\"won\"", 1);
    ensure!(tampered != file && check_export(&tampered, &public).is_err());

    // bob's export has his span and not ana's private ones.
    let bob = l.run_as("bob", TENANT, &["export", "--out", "-"], "");
    let (bob_spans, _) = check_export(bob.ok(), &public)?;
    let did: BTreeSet<&str> = bob_spans.iter().filter_map(|s| s["did"].as_str()).collect();
    ensure!(
        did.contains("bob's own secret") && did.contains("two"),
        "{did:?}"
    );
    ensure!(!did.contains("one") && !did.contains("three"), "{did:?}");
    Ok(())
}

/// Checks an export's trailer against its lines; returns the spans and the trailer.
fn check_export(text: &str, public_key: &str) -> Result<(Vec<Value>, Value)> {
    let lines: Vec<&str> = text.lines().collect();
    let (last, body) = lines.split_last().context("empty export")?;
    let trailer: Value = serde_json::from_str(last)?;
    let trailer = trailer
        .get("trailer")
        .context("last line is not a trailer")?
        .clone();
    let mut h = blake3::Hasher::new();
    for line in body {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    let digest = format!("blake3:{}", h.finalize().to_hex());
    if trailer["count"] != json!(body.len()) {
        bail!(
            "trailer count {} but {} lines",
            trailer["count"],
            body.len()
        );
    }
    if trailer["digest"] != json!(digest) {
        bail!(
            "trailer digest {} but the lines hash to {digest}",
            trailer["digest"]
        );
    }
    ensure!(trailer["public_key"] == json!(public_key), "{trailer}");
    ledger::crypto::verify_hash_signature(
        public_key,
        &digest,
        trailer["signature"].as_str().context("no signature")?,
    )
    .map_err(anyhow::Error::msg)?;
    let spans = body
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<Vec<Value>, _>>()?;
    ensure!(spans.iter().all(|s| s.get("trailer").is_none()));
    Ok((spans, trailer))
}

// 10. tamper evidence ---------------------------------------------------------------------

/// Runs SQL behind the ledger's back: on the SQLite file, or as superuser on the PostgreSQL
/// database (optionally with triggers disabled through `session_replication_role`).
async fn raw_sql(
    l: &Ledger,
    disable_triggers: bool,
    sqlite: &[&'static str],
    pg: &'static str,
) -> Result<u64> {
    match &l.url {
        None => {
            let path = l.data_dir().join("ledger.sqlite3");
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            let mut affected = 0;
            for stmt in sqlite {
                affected = sqlx::query(*stmt).execute(&mut conn).await?.rows_affected();
            }
            conn.close().await?;
            Ok(affected)
        }
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            if disable_triggers {
                sqlx::query("SET session_replication_role = replica")
                    .execute(&mut conn)
                    .await?;
            }
            let affected = sqlx::query(pg).execute(&mut conn).await;
            conn.close().await?;
            Ok(affected?.rows_affected())
        }
    }
}

/// Five delivery spans in tenant bakery (chain_pos 0..4); returns their ids.
fn five_spans(l: &Ledger) -> Vec<String> {
    let spans: Vec<Value> = (0..5)
        .map(|i| span(json!({"entity_type": "delivery", "did": format!("delivery {i}")})))
        .collect();
    l.add_ok(&spans).iter().map(id_of).collect()
}

async fn verify_names_the_tenant_position_and_id_of_an_altered_span(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let ids = five_spans(&l);
    l.run(&["verify"], "").ok();

    let changed = raw_sql(
        &l,
        true,
        &[
            "DROP TRIGGER spans_no_update",
            "UPDATE spans SET envelope = replace(envelope, 'delivery', 'DELIVERY') \
             WHERE tenant_id = 'bakery' AND chain_pos = 2",
        ],
        "UPDATE ledger.spans SET envelope = replace(envelope, 'delivery', 'DELIVERY') \
         WHERE tenant_id = 'bakery' AND chain_pos = 2",
    )
    .await?;
    ensure!(changed == 1, "the tampering changed {changed} rows");

    let text = l.run(&["verify"], "");
    ensure!(!text.success(), "verify passed a tampered chain: {text:?}");
    let line = text
        .stdout
        .lines()
        .find(|line| line.contains("bakery"))
        .context("verify does not name tenant bakery")?;
    ensure!(line.contains("chain_pos 2"), "{line}");
    ensure!(line.contains(&ids[2]), "must name span {}: {line}", ids[2]);
    ensure!(text.stdout.contains("tenant system: ok"), "{}", text.stdout);

    let (ok, report) = l.verify_json();
    ensure!(!ok);
    let t = tenant_report(&report, TENANT);
    ensure!(t["ok"] == json!(false), "{t}");
    ensure!(t["first_break"]["chain_pos"] == json!(2), "{t}");
    ensure!(t["first_break"]["span_id"] == json!(ids[2]), "{t}");
    ensure!(report["ok"] == json!(false));

    let only = l.run(&["verify", "--only-tenant", "system"], "");
    only.ok();
    Ok(())
}

async fn verify_reports_the_position_of_a_span_deleted_from_the_middle(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let ids = five_spans(&l);
    let deleted = raw_sql(
        &l,
        true,
        &[
            "DROP TRIGGER spans_no_delete",
            "DELETE FROM spans WHERE tenant_id = 'bakery' AND chain_pos = 2",
        ],
        "DELETE FROM ledger.spans WHERE tenant_id = 'bakery' AND chain_pos = 2",
    )
    .await?;
    ensure!(deleted == 1);

    let text = l.run(&["verify"], "");
    ensure!(
        !text.success(),
        "verify passed a chain with a hole: {text:?}"
    );
    let line = text
        .stdout
        .lines()
        .find(|line| line.contains("bakery"))
        .context("verify does not name tenant bakery")?;
    ensure!(line.contains("chain_pos 2"), "{line}");
    ensure!(
        ["missing", "deleted", "gap"]
            .iter()
            .any(|w| line.contains(w)),
        "must say the span is missing: {line}"
    );
    ensure!(
        !line.contains(&format!("(span {})", ids[2])),
        "the deleted span cannot be the one at fault: {line}"
    );

    let (ok, report) = l.verify_json();
    ensure!(!ok);
    let t = tenant_report(&report, TENANT);
    ensure!(t["first_break"]["chain_pos"] == json!(2), "{t}");
    ensure!(
        t["spans"] == json!(4),
        "the four remaining spans are verified, past the hole: {t}"
    );
    ensure!(t["first_break"]["kind"] == json!("missing_spans"), "{t}");
    Ok(())
}

/// The example of issue 14: the `status` column is what `query --status` filters on, so
/// changing it must fail verify, naming the tenant, position, span, column and both values.
async fn verify_names_a_tampered_status_column_that_query_reads_in_text_and_json(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let ids = five_spans(&l);
    let changed = raw_sql(
        &l,
        true,
        &[
            "DROP TRIGGER spans_no_update",
            "UPDATE spans SET status = 'void' WHERE tenant_id = 'bakery' AND chain_pos = 3",
        ],
        "UPDATE ledger.spans SET status = 'void' WHERE tenant_id = 'bakery' AND chain_pos = 3",
    )
    .await?;
    ensure!(changed == 1);

    let text = l.run(&["verify"], "");
    ensure!(!text.success(), "verify passed a tampered status: {text:?}");
    let line = text
        .stdout
        .lines()
        .find(|line| line.starts_with("  - ") && line.contains("spans.status"))
        .context("verify does not list the problem")?;
    ensure!(
        line.contains("chain_pos 3") && line.contains(&ids[3]),
        "{line}"
    );
    ensure!(
        line.contains("\"void\"") && line.contains("\"valid\""),
        "{line}"
    );

    let (ok, report) = l.verify_json();
    ensure!(!ok);
    let t = tenant_report(&report, TENANT);
    let p = &t["problems"][0];
    ensure!(p["kind"] == json!("column_mismatch"), "{t}");
    ensure!(
        p["table"] == json!("spans") && p["column"] == json!("status"),
        "{t}"
    );
    ensure!(
        p["chain_pos"] == json!(3) && p["span_id"] == json!(ids[3]),
        "{t}"
    );
    ensure!(
        p["stored"] == json!("void") && p["signed"] == json!("valid"),
        "{t}"
    );
    Ok(())
}

async fn the_database_itself_refuses_updates_and_deletes_of_spans(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    five_spans(&l);
    let update = raw_sql(
        &l,
        false,
        &["UPDATE spans SET status = 'forged' WHERE tenant_id = 'bakery' AND chain_pos = 2"],
        "UPDATE ledger.spans SET status = 'forged' WHERE tenant_id = 'bakery' AND chain_pos = 2",
    )
    .await;
    let e = update
        .err()
        .context("the database accepted an UPDATE of a span")?;
    ensure!(format!("{e:#}").contains("append-only"), "{e:#}");

    let delete = raw_sql(
        &l,
        false,
        &["DELETE FROM spans WHERE tenant_id = 'bakery' AND chain_pos = 2"],
        "DELETE FROM ledger.spans WHERE tenant_id = 'bakery' AND chain_pos = 2",
    )
    .await;
    let e = delete
        .err()
        .context("the database accepted a DELETE of a span")?;
    ensure!(format!("{e:#}").contains("append-only"), "{e:#}");

    if backend == Backend::Postgres {
        let truncate = raw_sql(&l, false, &[], "TRUNCATE ledger.spans CASCADE").await;
        ensure!(truncate.is_err(), "the database accepted TRUNCATE");
    }
    let (ok, report) = l.verify_json();
    ensure!(
        ok && tenant_report(&report, TENANT)["spans"] == json!(5),
        "{report}"
    );
    ensure!(l.query_as(USER, TENANT, &["--status", "forged"]).is_empty());
    Ok(())
}

// 11. concurrency -------------------------------------------------------------------------

/// The idempotency key of line `i` of a big writer: every tenth line is one of the shared keys.
fn big_writer_key(p: usize, i: usize) -> String {
    if i.is_multiple_of(10) {
        format!("shared-{}", i / 10)
    } else {
        format!("big{p}-{i}")
    }
}

async fn concurrent_add_processes_keep_one_gapless_chain_and_one_span_per_key(
    backend: Backend,
) -> Result<()> {
    // Big writers: one `add` each of 300 lines (one transaction each), started together.
    const BIG: usize = 4;
    const PER_BIG: usize = 300;
    // Small writers run at the same time: many short transactions that interleave with the
    // others, each starting with a shared key.
    const SMALL: usize = 4;
    const CALLS: usize = 10;
    const PER_CALL: usize = 10;
    let l = Ledger::new(backend).await;
    l.init();

    let mut big_children = Vec::new();
    for p in 0..BIG {
        let spans: Vec<Value> = (0..PER_BIG)
            .map(|i| {
                span(json!({"did": format!("big {p} span {i}"), "idempotency_key": big_writer_key(p, i)}))
            })
            .collect();
        let path = l.data_dir().join(format!("big{p}.ndjson"));
        std::fs::write(&path, lines_of(&spans))?;
        big_children.push(path);
    }
    let big_children: Vec<Child> = big_children
        .iter()
        .map(|f| {
            l.spawn_as(
                USER,
                TENANT,
                &["add", "--file", f.to_str().unwrap(), "--format", "ndjson"],
                "",
            )
        })
        .collect();
    // (key, result) of every line the small writers sent.
    let small: Vec<Vec<(String, Value)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..SMALL)
            .map(|w| {
                let l = &l;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for c in 0..CALLS {
                        let keys: Vec<String> = (0..PER_CALL)
                            .map(|i| {
                                if i == 0 {
                                    format!("shared-{c}")
                                } else {
                                    format!("small{w}-{c}-{i}")
                                }
                            })
                            .collect();
                        let spans: Vec<Value> = keys
                            .iter()
                            .map(|k| {
                                span(json!({"did": format!("small {w}"), "idempotency_key": k}))
                            })
                            .collect();
                        let results = l.add_ok(&spans);
                        out.extend(keys.into_iter().zip(results));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let big: Vec<Run> = big_children.into_iter().map(finish).collect();

    let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (p, run) in big.iter().enumerate() {
        run.ok();
        let results = run.ndjson();
        ensure!(
            results.len() == PER_BIG,
            "writer {p}: {} results",
            results.len()
        );
        for (i, res) in results.into_iter().enumerate() {
            ensure!(res["ok"] == json!(true), "writer {p} line {}: {res}", i + 1);
            by_key.entry(big_writer_key(p, i)).or_default().push(res);
        }
    }
    for (key, res) in small.into_iter().flatten() {
        by_key.entry(key).or_default().push(res);
    }
    let unique = by_key.len();
    ensure!(
        unique == BIG * (PER_BIG - PER_BIG / 10) + PER_BIG / 10 + SMALL * CALLS * (PER_CALL - 1)
    );
    for (key, results) in &by_key {
        let distinct = ids(results);
        ensure!(
            distinct.len() == 1,
            "{key} produced {} spans: {results:?}",
            distinct.len()
        );
        let originals = results
            .iter()
            .filter(|r| r["duplicate"] == json!(false))
            .count();
        ensure!(
            originals == 1,
            "{key}: {originals} writers claim to have written it"
        );
    }
    // Shared keys really were sent by several writers.
    ensure!(by_key["shared-0"].len() == BIG + SMALL);

    // Every span, through export (which pages past query's limit of 1000). The node's own
    // `checkpoint` spans (one per 1000 spans) share the chain.
    let export = l.run(&["export", "--out", "-"], "");
    let public = ledger::crypto::NodeKey::load(&l.key_path())?
        .public_key()
        .to_string();
    let (all, _) = check_export(export.ok(), &public)?;
    let chain: Vec<&Value> = all
        .iter()
        .filter(|s| s["tenant_id"] == json!(TENANT))
        .collect();
    let checkpoints = chain
        .iter()
        .filter(|s| s["entity_type"] == json!("checkpoint"))
        .count();
    ensure!(
        checkpoints >= 1,
        "no checkpoint span in a chain of {}",
        chain.len()
    );
    let (ok, report) = l.verify_json();
    ensure!(ok, "verify after concurrent appends: {report}");
    ensure!(
        tenant_report(&report, TENANT)["spans"] == json!(unique + checkpoints),
        "{report}"
    );
    let stored: Vec<&&Value> = chain
        .iter()
        .filter(|s| s["entity_type"] != json!("checkpoint"))
        .collect();
    ensure!(
        stored.len() == unique,
        "export has {} of {unique}",
        stored.len()
    );
    let mut positions: Vec<i64> = chain
        .iter()
        .map(|s| s["chain_pos"].as_i64().unwrap())
        .collect();
    positions.sort_unstable();
    let total = (unique + checkpoints) as i64;
    ensure!(
        positions == (0..total).collect::<Vec<_>>(),
        "chain positions are not exactly 0..{total} (gap or duplicate)"
    );
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &stored {
        *per_key
            .entry(s["idempotency_key"].as_str().unwrap())
            .or_default() += 1;
    }
    ensure!(
        per_key.len() == unique && per_key.values().all(|n| *n == 1),
        "a key has two spans"
    );
    for (key, results) in &by_key {
        let span = stored
            .iter()
            .find(|s| s["idempotency_key"] == json!(key))
            .unwrap();
        ensure!(
            span["id"] == results[0]["id"],
            "{key}: stored id differs from the reported one"
        );
    }
    Ok(())
}

/// Several processes starting at once on a ledger nobody has initialised yet (no node key,
/// no manifest, and for the embedded store not even a database file): each must succeed.
async fn concurrent_first_use_of_a_fresh_ledger_succeeds_for_every_process(
    backend: Backend,
) -> Result<()> {
    const PROCESSES: usize = 32;
    let l = Ledger::new(backend).await;
    // `add` reads all of stdin before it opens the store: holding every stdin open until all
    // processes exist, then closing them together, lines their first use up.
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            l.command(USER, TENANT, &["add", "--format", "ndjson"])
                .spawn()
                .unwrap()
        })
        .collect();
    let inputs: Vec<_> = children
        .iter_mut()
        .map(|c| c.stdin.take().unwrap())
        .collect();
    for (i, mut stdin) in inputs.into_iter().enumerate() {
        let line = lines_of(&[span(json!({"did": format!("first use {i}")}))]);
        stdin.write_all(line.as_bytes())?;
    }
    let runs: Vec<Run> = children.into_iter().map(finish).collect();
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.success())
        .map(|r| r.stderr.trim().to_string())
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {PROCESSES} processes failed on first use:\n{}",
        failed.len(),
        failed
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (ok, report) = l.verify_json();
    ensure!(ok, "{report}");
    ensure!(
        tenant_report(&report, TENANT)["spans"] == json!(PROCESSES),
        "{report}"
    );
    ensure!(
        tenant_report(&report, "system")["spans"] == json!(1),
        "one manifest: {report}"
    );
    Ok(())
}

// 12. client signatures -------------------------------------------------------------------

fn signed(value: &Value, key: &ledger::crypto::NodeKey) -> Value {
    let digest = ledger::crypto::digest(ledger::crypto::canonical(value).as_bytes());
    let mut out = value.clone();
    out["signature"] = json!(key.sign_hash(&digest));
    out["public_key"] = json!(key.public_key());
    out
}

async fn client_signed_spans_need_a_trusted_key_and_a_matching_signature(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.init();
    let stranger = ledger::crypto::NodeKey::generate();
    let node = ledger::crypto::NodeKey::load(&l.key_path())?;

    let by_stranger = signed(&span(json!({"did": "signed by a stranger"})), &stranger);
    let by_node = signed(&span(json!({"did": "signed by the node key"})), &node);
    let mut tampered = signed(&span(json!({"did": "signed then changed"})), &node);
    tampered["did"] = json!("changed after signing");
    let mut half = by_node.clone();
    half.as_object_mut().unwrap().remove("public_key");

    let (r, res) = l.add_as(USER, TENANT, &[by_stranger, by_node, tampered, half]);
    ensure!(r.code == Some(1), "{r:?}");
    ensure!(res.len() == 4, "{res:?}");

    ensure!(
        res[0]["ok"] == json!(false),
        "an untrusted key was accepted: {}",
        res[0]
    );
    let e = res[0]["error"].as_str().unwrap();
    ensure!(
        e.contains(stranger.public_key()) && e.contains("not a trusted key"),
        "{e}"
    );

    ensure!(
        res[1]["ok"] == json!(true),
        "the node's own key was refused: {}",
        res[1]
    );
    let got: Value = serde_json::from_str(l.get_as(USER, TENANT, &id_of(&res[1])).ok())?;
    ensure!(
        got["client_public_key"] == json!(node.public_key()),
        "{got}"
    );
    ensure!(got["did"] == json!("signed by the node key"));

    ensure!(
        res[2]["ok"] == json!(false),
        "a tampered span was accepted: {}",
        res[2]
    );
    let e = res[2]["error"].as_str().unwrap();
    ensure!(e.contains("signature does not verify"), "{e}");

    ensure!(res[3]["ok"] == json!(false), "{}", res[3]);
    ensure!(
        res[3]["error"].as_str().unwrap().contains("together"),
        "{}",
        res[3]
    );

    ensure!(l.chain_len(TENANT) == 1);
    l.run(&["verify"], "").ok();
    Ok(())
}
