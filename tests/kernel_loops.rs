//! The kernels `logline serve` runs on its own, through the real binary on both stores: the
//! policy agent acting on spans as they arrive (and pausing and resuming with kernel seqs, no
//! restart), the Midnight Ruler backfilling the midnights a ledger missed, and scheduled
//! functions and requests executed exactly once by three servers on one PostgreSQL while one of
//! them is killed mid-run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use testkit::{Backend, Ledger, finish};

const BIN: &str = env!("CARGO_BIN_EXE_logline");
const USER: &str = "ana";
const TENANT: &str = "bakery";

testkit::both_stores!(
    serve_runs_active_policies_and_pauses_and_resumes_with_kernel_seqs,
    serve_backfills_the_midnights_the_ledger_missed,
);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An initialised ledger on `backend`.
async fn ledger(backend: Backend) -> Ledger {
    let l = Ledger::new(backend).await;
    l.run(&["init"], "");
    l
}

/// What these tests do with a ledger, through the binary (as ana).
trait Loops {
    fn command(&self, tenant: &str, args: &[&str]) -> Command;
    /// Runs a command to completion; panics unless it succeeds. Returns stdout.
    fn run_in(&self, tenant: &str, args: &[&str], stdin: &str) -> String;
    fn run(&self, args: &[&str], stdin: &str) -> String;
    /// Appends one complete, tenant-visible span; returns its id.
    fn add(&self, span: Value) -> String;
    /// Appends complete, tenant-visible spans in one call; returns their ids.
    fn add_many(&self, spans: Vec<Value>) -> Vec<String>;
    fn query_in(&self, tenant: &str, entity_type: &str) -> Vec<Value>;
    fn query(&self, entity_type: &str) -> Vec<Value>;
    fn serve(&self) -> Server;
}

impl Loops for Ledger {
    fn command(&self, tenant: &str, args: &[&str]) -> Command {
        self.logline_as(BIN, USER, tenant, args)
    }

    fn run_in(&self, tenant: &str, args: &[&str], stdin: &str) -> String {
        let run = finish(testkit::spawn(self.command(tenant, args), stdin));
        run.ok().to_string()
    }

    fn run(&self, args: &[&str], stdin: &str) -> String {
        self.run_in(TENANT, args, stdin)
    }

    fn add(&self, span: Value) -> String {
        self.add_many(vec![span]).remove(0)
    }

    fn add_many(&self, spans: Vec<Value>) -> Vec<String> {
        let mut lines = String::new();
        for span in spans {
            lines.push_str(&complete(span).to_string());
            lines.push('\n');
        }
        self.run(&["add", "--format", "ndjson"], &lines)
            .lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                r["id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn query_in(&self, tenant: &str, entity_type: &str) -> Vec<Value> {
        self.run_in(
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
        )
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }

    fn query(&self, entity_type: &str) -> Vec<Value> {
        self.query_in(TENANT, entity_type)
    }

    fn serve(&self) -> Server {
        let mut child = self
            .command(TENANT, &["serve", "--bind", "127.0.0.1:0"])
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        assert!(
            line.as_deref()
                .is_ok_and(|l| l.starts_with("logline listening on")),
            "{line:?}"
        );
        Server(child)
    }
}

/// The nine fields and tenant visibility, where the span leaves them out.
fn complete(mut span: Value) -> Value {
    for (k, v) in [
        ("who", json!(USER)),
        ("did", json!("recorded")),
        ("this", json!("something")),
        ("when", json!("2026-11-20T10:00:00Z")),
        ("confirmed_by", json!(USER)),
        ("if_ok", json!("go on")),
        ("if_doubt", json!("ask")),
        ("if_not", json!("stop")),
        ("status", json!("valid")),
        ("visibility", json!("tenant")),
    ] {
        span.as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert(v);
    }
    span
}

/// Polls `check` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        ensure!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok(())
}

const FLAG_BIG: &str = "function on(s) { return s.entity_type === 'order' && s.content.total >= 100 ? [{emit_span: {entity_type: 'alert', content: {order: s.id}}}] : []; }";

async fn serve_runs_active_policies_and_pauses_and_resumes_with_kernel_seqs(
    backend: Backend,
) -> Result<()> {
    let l = ledger(backend).await;
    l.run(
        &["kernels", "set", "policy_agent", "config.interval_ms=100"],
        "",
    );
    l.add(
        json!({"entity_type": "policy", "name": "flag big orders", "status": "active",
                 "content": {"language": "javascript", "source": FLAG_BIG}}),
    );
    let _server = l.serve();
    let big = l.add(json!({"entity_type": "order", "content": {"total": 250}}));
    l.add(json!({"entity_type": "order", "content": {"total": 5}}));
    eventually(
        Duration::from_secs(20),
        "the policy flags the big order",
        || async { !l.query("alert").is_empty() },
    )
    .await?;
    let alerts = l.query("alert");
    ensure!(alerts.len() == 1, "{alerts:?}");
    ensure!(alerts[0]["content"]["order"] == json!(big), "{alerts:?}");

    // A kernel seq this build cannot run pauses the agent at once, without a restart ...
    l.run(&["kernels", "set", "policy_agent", "version=2.0.0"], "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = l.add(json!({"entity_type": "order", "content": {"total": 999}}));
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(l.query("alert").len() == 1, "paused: no new alert");
    // ... and the next good seq resumes it where it stopped: the order is not skipped.
    l.run(&["kernels", "set", "policy_agent", "version=1.0.1"], "");
    eventually(
        Duration::from_secs(20),
        "the resumed policy flags the order",
        || async { l.query("alert").len() == 2 },
    )
    .await?;
    ensure!(
        l.query("alert")
            .iter()
            .any(|a| a["content"]["order"] == json!(later))
    );
    ensure!(l.query("policy_error").is_empty());
    Ok(())
}

async fn serve_backfills_the_midnights_the_ledger_missed(backend: Backend) -> Result<()> {
    let l = ledger(backend).await;
    // The demo rules one midnight three nights ago by hand and leaves the later ones undone.
    l.run_in("demo", &["demo", "seed"], "");
    let state = |name: &str| {
        l.query_in("demo", "contract")
            .into_iter()
            .filter(|c| c["name"] == json!(name))
            .max_by_key(|c| c["seq"].as_i64().unwrap_or(0))
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    ensure!(state("D5") == "active");
    ensure!(l.query_in("demo", "ruler_checkpoint").is_empty());
    let _server = l.serve();
    // D5 reached its quorum two days ago: the first midnight after that accepts it.
    eventually(
        Duration::from_secs(30),
        "the server rules the missed midnights",
        || async { state("D5") == "accepted" },
    )
    .await?;
    let checkpoints = l.query_in("demo", "ruler_checkpoint");
    let mut midnights: Vec<String> = checkpoints
        .iter()
        .filter(|c| {
            c["content"]["law"]
                .as_str()
                .unwrap_or_default()
                .starts_with("midnight_deadline")
        })
        .map(|c| c["content"]["last_midnight"].as_str().unwrap().to_string())
        .collect();
    // From the anchor midnight (the laws took effect the evening before) to today.
    ensure!(midnights.len() >= 3, "{midnights:?}");
    let in_order = midnights.clone();
    midnights.sort();
    ensure!(midnights == in_order, "checkpointed in order: {in_order:?}");
    // Every decision is written once, whoever rules: a second server adds none.
    let before = l.query_in("demo", "law.decision").len();
    drop(_server);
    let _again = l.serve();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(l.query_in("demo", "law.decision").len() == before);
    Ok(())
}

/// The newest version of each span, by id.
fn latest_by_id(spans: Vec<Value>) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::<String, Value>::new();
    for s in spans {
        let id = s["id"].as_str().unwrap().to_string();
        if out
            .get(&id)
            .is_none_or(|o| o["seq"].as_i64() < s["seq"].as_i64())
        {
            out.insert(id, s);
        }
    }
    out
}

/// Busy for 400 ms, so a run is in progress most of the time.
const SLOW_ECHO: &str = "function main(i) { const end = Date.now() + 400; while (Date.now() < end) {} return {request: i.request}; }";

#[tokio::test]
async fn three_servers_execute_every_request_exactly_once_though_one_is_killed_mid_run()
-> Result<()> {
    let l = ledger(Backend::Postgres).await;
    for (kernel, setting) in [
        ("request_worker", "config.interval_ms=50"),
        ("request_worker", "config.batch=1"),
        ("request_worker", "config.lease_ms=1000"),
        ("run_code", "config.time_ms=1000"),
        ("observer_bot", "config.interval_ms=100"),
    ] {
        l.run(&["kernels", "set", kernel, setting], "");
    }
    // A function scheduled every second, and 24 requests queued by hand.
    let function = l.add(json!({"entity_type": "function", "name": "slow echo", "status": "scheduled",
        "content": {"language": "javascript", "source": SLOW_ECHO, "schedule": {"every_seconds": 1}}}));
    let queued: Vec<Value> = (0..24)
        .map(|n| json!({"entity_type": "request", "status": "queued", "parent_id": function,
                        "related_to": [function], "content": {"function": function, "input": {"n": n}}}))
        .collect();
    l.add_many(queued);

    let mut servers: Vec<Server> = (0..3).map(|_| l.serve()).collect();
    let victim = servers[1].0.id();
    let mark = format!("pid {victim} /");
    // Kill the second server while it holds a claim, that is, while it runs a function.
    let deadline = Instant::now() + Duration::from_secs(30);
    let killed_on = loop {
        let holding = latest_by_id(l.query("request")).into_values().find(|r| {
            r["status"] == json!("claimed")
                && r["content"]["claim"]["by"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(&mark))
        });
        if let Some(r) = holding {
            servers[1].0.kill()?; // SIGKILL
            break r["id"].as_str().unwrap().to_string();
        }
        ensure!(Instant::now() < deadline, "the victim never held a claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Stop the schedule, then let the survivors drain the queue.
    l.add(
        json!({"id": function, "seq": 1, "entity_type": "function", "name": "slow echo",
                 "status": "active", "content": {"language": "javascript", "source": SLOW_ECHO}}),
    );
    eventually(
        Duration::from_secs(90),
        "every request finishes",
        || async {
            latest_by_id(l.query("request"))
                .values()
                .all(|r| r["status"] == json!("done"))
        },
    )
    .await?;
    drop(servers);

    let requests = latest_by_id(l.query("request"));
    let scheduled = requests
        .values()
        .filter(|r| r["who"] == json!("request_worker") && r["content"]["scheduled_at"].is_string())
        .count();
    ensure!(
        requests.len() > 24 && scheduled >= 1,
        "{} requests",
        requests.len()
    );
    let executions = l.query("execution");
    let mut ran: Vec<String> = executions
        .iter()
        .map(|e| {
            e["input"]["request"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ran.sort();
    let mut want: Vec<String> = requests.keys().cloned().collect();
    want.sort();
    ensure!(
        ran == want,
        "one execution per request: {} executions for {} requests",
        ran.len(),
        want.len()
    );
    // The victim's request was taken over after its lease: retried, or its run found.
    let taken = &requests[&killed_on];
    ensure!(
        taken["content"]["claim"]["attempt"].as_i64() >= Some(2),
        "{taken}"
    );
    // One request per (function, slot), however many observers.
    let slots: Vec<&str> = requests
        .values()
        .filter_map(|r| r["content"]["scheduled_at"].as_str())
        .collect();
    let mut distinct = slots.clone();
    distinct.sort_unstable();
    distinct.dedup();
    ensure!(distinct.len() == slots.len(), "{slots:?}");
    Ok(())
}
