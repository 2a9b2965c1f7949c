//! End-to-end tests of the manifest, Stage-0 and `run_code` through the real `logline` binary,
//! against the embedded SQLite store (a temporary data dir) and PostgreSQL (a fresh database
//! from `testkit::pg` plus a temporary data dir for the node key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::{Backend, Ledger, Run, finish};

const BIN: &str = env!("CARGO_BIN_EXE_logline");
const MANIFEST_ID: &str = "00000000-0000-7000-8000-6d616e696673";
const RUN_CODE: &str = "00000000-0000-4000-8000-000000000001";
const OBSERVER_BOT: &str = "00000000-0000-4000-8000-000000000002";
const POLICY_AGENT: &str = "00000000-0000-4000-8000-000000000004";
/// The kernels this build runs: all seven.
const RUNNING: [&str; 8] = [
    "run_code",
    "observer_bot",
    "request_worker",
    "policy_agent",
    "provider_exec",
    "midnight_ruler",
    "prompt_eval",
    "prompt_bandit",
];
const USER: &str = "ana";
const TENANT: &str = "bakery";

/// An initialised ledger on `backend`.
async fn ledger(backend: Backend) -> Ledger {
    let l = Ledger::new(backend).await;
    l.run(&["init"]).ok();
    l
}

/// What these tests do with a ledger, through the binary.
trait Kernels {
    fn command(&self, user: &str, tenant: &str, args: &[&str]) -> Command;
    fn spawn_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Child;
    fn run_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Run;
    fn run(&self, args: &[&str]) -> Run;
    /// `kernels status --format json`: (exit success, report).
    fn status(&self) -> (bool, Value);
    fn kernel(&self, report: &Value, id: &str) -> Value;
    /// Spans of one entity type as a principal sees them.
    fn query_as(&self, user: &str, tenant: &str, entity_type: &str) -> Vec<Value>;
    /// The system tenant's boot events (kernel and boot_event spans are visible to it only).
    fn boot_events(&self) -> Vec<Value>;
    /// Appends a tenant-visible `function` span as `user`@bakery; returns its id.
    fn function(&self, user: &str, source: &str) -> String;
    /// Appends a tenant-visible `function` span as `user`@`tenant`; returns its id.
    fn function_in(&self, user: &str, tenant: &str, source: &str) -> String;
    /// Runs SQL behind the ledger's back: on the SQLite file (statements in order), or as
    /// superuser on the PostgreSQL database with triggers disabled.
    async fn raw_sql(&self, sqlite: &[String], pg: &str) -> Result<u64>;
}

impl Kernels for Ledger {
    fn command(&self, user: &str, tenant: &str, args: &[&str]) -> Command {
        self.logline_as(BIN, user, tenant, args)
    }

    fn spawn_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Child {
        testkit::spawn(self.command(user, tenant, args), stdin)
    }

    fn run_as(&self, user: &str, tenant: &str, args: &[&str], stdin: &str) -> Run {
        finish(self.spawn_as(user, tenant, args, stdin))
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_as(USER, TENANT, args, "")
    }

    fn status(&self) -> (bool, Value) {
        let r = self.run(&["kernels", "status", "--format", "json"]);
        (r.code == Some(0), r.json())
    }

    fn kernel(&self, report: &Value, id: &str) -> Value {
        report["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == json!(id))
            .unwrap_or_else(|| panic!("no kernel {id} in {report}"))
            .clone()
    }

    fn query_as(&self, user: &str, tenant: &str, entity_type: &str) -> Vec<Value> {
        let r = self.run_as(
            user,
            tenant,
            &[
                "query",
                "--entity-type",
                entity_type,
                "--format",
                "ndjson",
                "--limit",
                "1000",
            ],
            "",
        );
        r.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn boot_events(&self) -> Vec<Value> {
        self.query_as("node", "system", "boot_event")
    }

    fn function(&self, user: &str, source: &str) -> String {
        self.function_in(user, TENANT, source)
    }

    fn function_in(&self, user: &str, tenant: &str, source: &str) -> String {
        let span = json!({
            "entity_type": "function", "name": "f", "visibility": "tenant",
            "who": user, "did": "defined a function", "this": "f", "when": "2026-11-20T10:00:00Z",
            "confirmed_by": user, "if_ok": "run it", "if_doubt": "ask", "if_not": "stop",
            "status": "active", "content": {"language": "javascript", "source": source}
        });
        let r = self.run_as(
            user,
            tenant,
            &["add", "--format", "ndjson"],
            &format!("{span}\n"),
        );
        let result: Value = serde_json::from_str(r.ok().trim()).unwrap();
        result["id"].as_str().unwrap().to_string()
    }

    async fn raw_sql(&self, sqlite: &[String], pg: &str) -> Result<u64> {
        match &self.url {
            None => {
                let path = self.data_dir().join("ledger.sqlite3");
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await?;
                let mut affected = 0;
                for stmt in sqlite {
                    affected = sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
                        .execute(&mut conn)
                        .await?
                        .rows_affected();
                }
                conn.close().await?;
                Ok(affected)
            }
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query("SET session_replication_role = replica")
                    .execute(&mut conn)
                    .await?;
                let affected = sqlx::query(sqlx::AssertSqlSafe(pg.to_string()))
                    .execute(&mut conn)
                    .await;
                conn.close().await?;
                Ok(affected?.rows_affected())
            }
        }
    }
}

testkit::both_stores!(
    manifest_set_appends_a_new_signed_seq_and_show_prints_it,
    init_seeds_every_native_kernel_span_and_stage0_verifies_them,
    a_tampered_kernel_span_is_refused_with_a_boot_event_naming_why,
    an_unlisted_kernel_does_not_start_and_the_refusal_is_recorded,
    logline_run_returns_the_function_output_in_an_execution_span,
    an_endless_loop_yields_an_error_execution_span_within_the_time_limit,
    with_a_limit_of_two_the_third_run_of_the_day_writes_a_policy_violation_and_does_not_run,
    three_processes_racing_with_a_limit_of_two_leave_exactly_two_executions,
    serve_boots_verified_kernels_and_notices_a_new_manifest_seq_without_a_restart,
);

// manifest ----------------------------------------------------------------------------------

async fn manifest_set_appends_a_new_signed_seq_and_show_prints_it(backend: Backend) -> Result<()> {
    let l = ledger(backend).await;
    let first = l.run(&["manifest", "show"]).json();
    ensure!(
        first["id"] == json!(MANIFEST_ID) && first["seq"] == json!(0),
        "{first}"
    );
    let c = &first["content"];
    ensure!(
        c["throttle"]["per_tenant_daily_exec_limit"] == json!(1000),
        "{c}"
    );
    ensure!(c["policy"]["slow_ms"].as_u64().is_some(), "{c}");
    ensure!(c["kernels"]["run_code"] == json!(RUN_CODE), "{c}");
    ensure!(
        c["allowed_boot_ids"].as_array().map(Vec::len) == Some(RUNNING.len()),
        "{c}"
    );
    ensure!(c["trusted_keys"].as_array().map(Vec::len) == Some(1), "{c}");

    let set = l.run(&[
        "manifest",
        "set",
        "throttle.per_tenant_daily_exec_limit=100",
        "features.chat=true",
        "features.motto=bake it",
    ]);
    ensure!(
        set.ok().trim() == "1",
        "manifest set must print the new seq: {set:?}"
    );
    let shown = l.run(&["manifest", "show"]).json();
    ensure!(shown["seq"] == json!(1), "{shown}");
    let c = &shown["content"];
    ensure!(
        c["throttle"]["per_tenant_daily_exec_limit"] == json!(100),
        "{c}"
    );
    ensure!(
        c["features"] == json!({"chat": true, "motto": "bake it"}),
        "{c}"
    );
    ensure!(
        c["kernels"] == first["content"]["kernels"],
        "other keys are kept: {c}"
    );

    // Both versions are signed by the node key and the chain verifies.
    let versions = l.run(&["get", MANIFEST_ID, "--versions"]).json();
    let versions = versions.as_array().context("versions")?;
    ensure!(versions.len() == 2, "{versions:?}");
    ensure!(versions[1]["public_key"] == versions[0]["public_key"]);
    ensure!(versions[1]["visibility"] == json!("public"));
    ensure!(
        versions[1]["who"] == json!(USER),
        "the operator is recorded"
    );
    l.run(&["verify"]).ok();

    // Wrong types, unknown settings and malformed assignments are refused, and change nothing.
    for (args, says) in [
        (
            "throttle.per_tenant_daily_exec_limit=lots",
            "must be a non-negative integer",
        ),
        ("trottle.limit=1", "is not a manifest setting"),
        ("allowed_boot_ids=[\"nope\"]", "UUID"),
        ("just-a-word", "is not KEY=VALUE"),
    ] {
        let r = l.run(&["manifest", "set", args]);
        ensure!(r.code == Some(1), "{args} was accepted: {r:?}");
        ensure!(r.stderr.contains(says), "{args}: {}", r.stderr);
    }
    ensure!(l.run(&["manifest", "show"]).json()["seq"] == json!(1));
    Ok(())
}

// Stage-0 -----------------------------------------------------------------------------------

async fn init_seeds_every_native_kernel_span_and_stage0_verifies_them(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    let (ok, report) = l.status();
    ensure!(ok, "{report}");
    let kernels = report["kernels"].as_array().context("kernels")?;
    let names: Vec<&str> = kernels.iter().filter_map(|k| k["name"].as_str()).collect();
    ensure!(
        names
            == [
                "run_code",
                "observer_bot",
                "request_worker",
                "policy_agent",
                "provider_exec",
                "midnight_ruler",
                "prompt_eval",
                "prompt_bandit"
            ],
        "{names:?}"
    );
    for k in kernels {
        ensure!(
            k["seq"] == json!(0) && k["version"] == json!("1.0.0"),
            "{k}"
        );
        let want = if RUNNING.iter().any(|n| k["name"] == json!(n)) {
            "ready"
        } else {
            "verified, no runtime yet"
        };
        ensure!(k["state"] == json!(want), "{k}");
    }
    ensure!(l.kernel(&report, RUN_CODE)["config"]["time_ms"] == json!(5000));
    ensure!(
        l.boot_events().is_empty(),
        "nothing was refused, nothing recorded"
    );

    // The table names every kernel, its state and why.
    let table = l.run(&["kernels", "status"]);
    let text = table.ok();
    for word in [
        "name",
        "seq",
        "version",
        "state",
        "reason",
        "midnight_ruler",
    ] {
        ensure!(text.contains(word), "{text}");
    }
    ensure!(!text.contains("no runtime"), "{text}");

    // Other tenants do not see node-level kernel spans.
    ensure!(l.query_as(USER, TENANT, "kernel").is_empty());
    ensure!(l.query_as("node", "system", "kernel").len() == RUNNING.len());
    Ok(())
}

async fn a_tampered_kernel_span_is_refused_with_a_boot_event_naming_why(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    let replace = r#"replace(body, '"interval_ms":1000', '"interval_ms":1')"#;
    let changed = l
        .raw_sql(
            &[
                "DROP TRIGGER bodies_no_update".to_string(),
                format!("UPDATE span_bodies SET body = {replace} WHERE id = '{OBSERVER_BOT}'"),
            ],
            &format!("UPDATE ledger.span_bodies SET body = {replace} WHERE id = '{OBSERVER_BOT}'"),
        )
        .await?;
    ensure!(changed == 1, "the tampering changed {changed} rows");

    let (ok, report) = l.status();
    ensure!(
        !ok,
        "an allow-listed kernel was refused: status must exit 1"
    );
    let observer = l.kernel(&report, OBSERVER_BOT);
    ensure!(observer["state"] == json!("refused"), "{observer}");
    ensure!(observer["refusal"] == json!("tampered"), "{observer}");
    ensure!(
        observer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("body does not match body_digest")),
        "{observer}"
    );
    ensure!(
        l.kernel(&report, RUN_CODE)["state"] == json!("ready"),
        "{report}"
    );

    let events = l.boot_events();
    ensure!(events.len() == 1, "one refusal, one boot_event: {events:?}");
    let e = &events[0];
    ensure!(
        e["did"] == json!("refused to boot") && e["status"] == json!("refused"),
        "{e}"
    );
    ensure!(e["content"]["kernel"] == json!("observer_bot"), "{e}");
    ensure!(e["content"]["refusal"] == json!("tampered"), "{e}");
    ensure!(e["related_to"][0] == json!(OBSERVER_BOT), "{e}");
    ensure!(
        e["content"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("body does not match")),
        "{e}"
    );

    // Asking again records nothing new; building a new seq on the tampered span is refused.
    l.status();
    ensure!(l.boot_events().len() == 1);
    let r = l.run(&["kernels", "set", "observer_bot", "config.interval_ms=5"]);
    ensure!(r.code == Some(1), "{r:?}");
    ensure!(r.stderr.contains("refusing to build on"), "{}", r.stderr);
    Ok(())
}

async fn an_unlisted_kernel_does_not_start_and_the_refusal_is_recorded(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    let listed: Vec<String> = ["1", "2", "3", "5", "6", "7", "8"]
        .iter()
        .map(|n| format!("00000000-0000-4000-8000-00000000000{n}"))
        .collect();
    let assignment = format!("allowed_boot_ids={}", json!(listed));
    l.run(&["manifest", "set", &assignment]).ok();

    let (ok, report) = l.status();
    ensure!(
        ok,
        "an unlisted kernel is not a failure of the listed ones: {report}"
    );
    let policy = l.kernel(&report, POLICY_AGENT);
    ensure!(policy["state"] == json!("refused"), "{policy}");
    ensure!(policy["refusal"] == json!("not_allow_listed"), "{policy}");
    ensure!(policy["allow_listed"] == json!(false), "{policy}");
    let events = l.boot_events();
    ensure!(events.len() == 1, "{events:?}");
    ensure!(events[0]["content"]["refusal"] == json!("not_allow_listed"));
    ensure!(events[0]["content"]["kernel"] == json!("policy_agent"));
    ensure!(events[0]["content"]["manifest_seq"] == json!(1));

    // Taking run_code off the list stops `logline run` before any code runs.
    l.run(&["manifest", "set", "allowed_boot_ids=[]"]).ok();
    let f = l.function(USER, "function main() { return 1; }");
    let r = l.run(&["run", &f]);
    ensure!(r.code == Some(1), "{r:?}");
    ensure!(
        r.stderr
            .contains("run_code is not running: not allow-listed"),
        "{}",
        r.stderr
    );
    ensure!(l.query_as(USER, TENANT, "execution").is_empty());
    Ok(())
}

// run_code ----------------------------------------------------------------------------------

async fn logline_run_returns_the_function_output_in_an_execution_span(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    let f = l.function(
        USER,
        r#"function main(input, ctx) {
            ctx.log("baking", input.loaves);
            const note = ctx.append({entity_type: "note", who: "ana", did: "counted", this: "loaves",
                when: ctx.now(), confirmed_by: "run_code", if_ok: "-", if_doubt: "-", if_not: "-",
                status: "valid", content: {loaves: input.loaves}});
            return {loaves: input.loaves * 2, note: note.id};
        }"#,
    );
    let r = l.run(&["run", &f, "--input", r#"{"loaves": 21}"#]);
    let exec = r.json();
    r.ok();
    ensure!(exec["entity_type"] == json!("execution"), "{exec}");
    ensure!(exec["status"] == json!("ok"), "{exec}");
    ensure!(exec["content"]["status"] == json!("ok"), "{exec}");
    ensure!(exec["content"]["output"]["loaves"] == json!(42), "{exec}");
    ensure!(exec["content"]["logs"] == json!(["baking 21"]), "{exec}");
    ensure!(exec["content"]["duration_ms"].as_u64().is_some(), "{exec}");
    ensure!(exec["input"] == json!({"loaves": 21}), "{exec}");
    ensure!(exec["related_to"] == json!([f]), "{exec}");
    ensure!(exec["owner_id"] == json!(USER) && exec["tenant_id"] == json!(TENANT));
    ensure!(exec["content"]["function"]["id"] == json!(f), "{exec}");

    // The function wrote as its owner, in its tenant.
    let notes = l.query_as(USER, TENANT, "note");
    ensure!(
        notes.len() == 1 && notes[0]["owner_id"] == json!(USER),
        "{notes:?}"
    );
    ensure!(notes[0]["id"] == exec["content"]["output"]["note"]);

    // A tenant member runs the owner's function as the owner; another tenant cannot run it.
    let by_bruno = l.run_as(
        "bruno",
        TENANT,
        &["run", &f, "--input", r#"{"loaves": 1}"#],
        "",
    );
    ensure!(by_bruno.json()["owner_id"] == json!(USER), "{by_bruno:?}");
    let stranger = l.run_as("carla", "studio", &["run", &f], "");
    ensure!(stranger.code == Some(1), "{stranger:?}");
    ensure!(stranger.stderr.contains("not found"), "{}", stranger.stderr);

    ensure!(l.query_as(USER, TENANT, "execution").len() == 2);
    l.run(&["verify"]).ok();
    Ok(())
}

async fn an_endless_loop_yields_an_error_execution_span_within_the_time_limit(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    // Tuning a kernel is a new seq of its span; slow runs are flagged past policy.slow_ms.
    ensure!(
        l.run(&["kernels", "set", "run_code", "config.time_ms=300"])
            .ok()
            .trim()
            == "1"
    );
    l.run(&["manifest", "set", "policy.slow_ms=100"]).ok();
    let f = l.function(USER, "function main() { while (true) {} }");

    let started = Instant::now();
    let r = l.run(&["run", &f]);
    let elapsed = started.elapsed();
    ensure!(
        r.code == Some(1),
        "an endless loop must fail the run: {r:?}"
    );
    ensure!(
        r.stderr.contains("time limit of 300 ms exceeded"),
        "{}",
        r.stderr
    );
    ensure!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let exec = r.json();
    ensure!(exec["status"] == json!("error"), "{exec}");
    ensure!(
        exec["content"]["error"]["kind"] == json!("time_limit"),
        "{exec}"
    );
    let ms = exec["duration_ms"].as_u64().context("duration_ms")?;
    ensure!((300..2000).contains(&ms), "duration {ms} ms");

    let patches = l.query_as(USER, TENANT, "status_patch");
    ensure!(patches.len() == 1, "{patches:?}");
    ensure!(patches[0]["related_to"][0] == exec["id"], "{}", patches[0]);
    ensure!(patches[0]["content"]["value"] == json!("slow"));
    ensure!(patches[0]["content"]["slow_ms"] == json!(100));

    // A quick function is not flagged.
    let quick = l.function(USER, "function main() { return 'ok'; }");
    l.run(&["run", &quick]).ok();
    ensure!(l.query_as(USER, TENANT, "status_patch").len() == 1);
    Ok(())
}

/// A function that leaves a `ran` span each time it actually runs.
const MARKER: &str = r#"function main(input, ctx) {
    ctx.append({entity_type: "ran", visibility: "tenant", who: "f", did: "ran", this: "marker",
        when: ctx.now(), confirmed_by: "f", if_ok: "-", if_doubt: "-", if_not: "-", status: "valid"});
    return input;
}"#;

async fn with_a_limit_of_two_the_third_run_of_the_day_writes_a_policy_violation_and_does_not_run(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    l.run(&["manifest", "set", "throttle.per_tenant_daily_exec_limit=2"])
        .ok();
    let f = l.function(USER, MARKER);
    l.run(&["run", &f, "--input", "1"]).ok();
    l.run(&["run", &f, "--input", "2"]).ok();
    let third = l.run(&["run", &f, "--input", "3"]);
    ensure!(third.code == Some(1), "{third:?}");
    ensure!(third.stderr.contains("blocked"), "{}", third.stderr);
    ensure!(third.stderr.contains("used 2 of its 2"), "{}", third.stderr);
    let violation = third.json();
    ensure!(
        violation["entity_type"] == json!("policy_violation"),
        "{violation}"
    );
    ensure!(
        violation["content"]["rule"] == json!("throttle.per_tenant_daily_exec_limit"),
        "{violation}"
    );
    ensure!(violation["related_to"][0] == json!(f), "{violation}");

    ensure!(l.query_as(USER, TENANT, "execution").len() == 2);
    ensure!(
        l.query_as(USER, TENANT, "ran").len() == 2,
        "the third run ran"
    );
    ensure!(l.query_as(USER, TENANT, "policy_violation").len() == 1);

    // The quota is the tenant's, not the user's; another tenant has its own.
    let bruno = l.run_as("bruno", TENANT, &["run", &f], "");
    ensure!(
        bruno.code == Some(1) && bruno.stderr.contains("blocked"),
        "{bruno:?}"
    );
    let studio = l.function_in("carla", "studio", MARKER);
    l.run_as("carla", "studio", &["run", &studio], "").ok();

    // Raising the limit is a new manifest seq, effective on the next run.
    l.run(&["manifest", "set", "throttle.per_tenant_daily_exec_limit=3"])
        .ok();
    l.run(&["run", &f]).ok();
    ensure!(l.query_as(USER, TENANT, "execution").len() == 3);
    Ok(())
}

async fn three_processes_racing_with_a_limit_of_two_leave_exactly_two_executions(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    l.run(&["manifest", "set", "throttle.per_tenant_daily_exec_limit=2"])
        .ok();
    let f = l.function(USER, MARKER);
    // Three users of one tenant (one quota), three processes started together.
    let children: Vec<Child> = ["ana", "bruno", "joao"]
        .iter()
        .map(|u| l.spawn_as(u, TENANT, &["run", &f], ""))
        .collect();
    let runs: Vec<Run> = children.into_iter().map(finish).collect();
    let ok = runs.iter().filter(|r| r.code == Some(0)).count();
    let blocked = runs
        .iter()
        .filter(|r| r.code == Some(1) && r.stderr.contains("blocked"))
        .count();
    ensure!((ok, blocked) == (2, 1), "{runs:#?}");

    let executions = l.query_as(USER, TENANT, "execution");
    ensure!(executions.len() == 2, "{executions:?}");
    ensure!(l.query_as(USER, TENANT, "ran").len() == 2);
    ensure!(l.query_as(USER, TENANT, "policy_violation").len() == 1);

    // The day's counter went 0 → 1 → 2, each claim naming one of the two executions.
    let counter = executions[0]["content"]["quota"]["counter"]
        .as_str()
        .context("counter")?;
    let versions = l.run(&["get", counter, "--versions"]).json();
    let versions = versions.as_array().context("versions")?;
    ensure!(versions.len() == 3, "{versions:?}");
    let mut claimed: Vec<&Value> = versions[1..]
        .iter()
        .map(|v| &v["content"]["execution_id"])
        .collect();
    let mut ran: Vec<&Value> = executions.iter().map(|e| &e["id"]).collect();
    claimed.sort_by_key(|v| v.to_string());
    ran.sort_by_key(|v| v.to_string());
    ensure!(claimed == ran, "claims {claimed:?} vs executions {ran:?}");
    l.run(&["verify"]).ok();
    Ok(())
}

// serve -------------------------------------------------------------------------------------

async fn serve_boots_verified_kernels_and_notices_a_new_manifest_seq_without_a_restart(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    let mut child = l.spawn_as(USER, TENANT, &["serve", "--bind", "127.0.0.1:0"], "");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(30));
    let result = async {
        ensure!(
            listening
                .as_deref()
                .is_ok_and(|s| s.starts_with("logline listening on")),
            "{listening:?}"
        );
        let booted: Vec<Value> = l
            .boot_events()
            .into_iter()
            .filter(|e| e["did"] == json!("booted"))
            .collect();
        ensure!(booted.len() == 1, "{booted:?}");
        let started = &booted[0]["content"]["started"];
        let names: Vec<&str> = started
            .as_array()
            .map(|a| a.iter().filter_map(|k| k["name"].as_str()).collect())
            .unwrap_or_default();
        ensure!(names == RUNNING, "{started}");
        ensure!(
            booted[0]["content"]["verified_no_runtime"]
                .as_array()
                .map(Vec::len)
                == Some(0),
            "{}",
            booted[0]
        );

        // Take policy_agent off the list while the server runs: it notices and records why.
        let listed: Vec<String> = ["1", "2", "3", "5", "6", "7", "8"]
            .iter()
            .map(|n| format!("00000000-0000-4000-8000-00000000000{n}"))
            .collect();
        let assignment = format!("allowed_boot_ids={}", json!(listed));
        l.run(&["manifest", "set", &assignment]).ok();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let refused = l
                .boot_events()
                .into_iter()
                .any(|e| e["content"]["refusal"] == json!("not_allow_listed"));
            if refused {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not notice the new manifest seq"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
