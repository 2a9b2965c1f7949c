//! The real `ll-eval` binary: exit 0 when a suite passes, 100 when cases fail, 1 when it cannot
//! run (a bad fixture with its file:line:col, a provider that is down); the run recorded as
//! `eval_run` / `eval_case` spans private to the recorder; `--output` files; variants side by
//! side, `--repeat`, `--filter`; and `--url` against a server on 127.0.0.1.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a fixture that cannot be built fails its test"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use ledger::{Filter, Principal, Store};
use serde_json::Value;
use server::config::StoreSettings;
use testkit::{Backend, Ledger, both_stores};

const BIN: &str = env!("CARGO_BIN_EXE_ll-eval");

const PASSING: &str = "suite: tiny
tenant: demo
user: ana@padaria-lisboa.pt
cases:
  - name: why-d1
    question: why was D1 terminated?
    assert:
      - type: tool-called
        value: explain_decision
        args: {contract: D1}
      - type: cites
        value: law.decision
      - type: icontains
        value: deadline
      - type: no-citation-outside-turn
  - name: guarantor
    question: show me contracts where the guarantor didn't respond in 24h
    assert:
      - type: contains
        value: D3
";

const FAILING: &str = "suite: failing
tenant: demo
user: ana@padaria-lisboa.pt
threshold: 1.0
cases:
  - name: passes
    question: why was D1 terminated?
    assert:
      - type: icontains
        value: deadline
  - name: fails
    question: why was D1 terminated?
    assert:
      - type: contains
        value: this text is not in the answer
      - type: outcome
        value: answered
";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn ll_eval(ledger: &Ledger, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(ledger.data_dir())
        .env_remove("LOGLINE_PROVIDER")
        .env_remove("LOGLINE_DATABASE_URL")
        .env_remove("LOGLINE_JWT_SECRET")
        .env_remove("LOGLINE_TOKEN");
    if let Some(url) = &ledger.url {
        c.arg("--database-url").arg(url);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn open(ledger: &Ledger) -> Arc<dyn Store> {
    StoreSettings {
        data_dir: ledger.data_dir().to_path_buf(),
        database_url: ledger.url.clone(),
    }
    .open()
    .await
    .unwrap()
}

/// The latest version of each span of this type that `who` may see.
async fn views(store: &dyn Store, who: &Principal, entity_type: &str) -> Vec<Value> {
    let all: Vec<Value> = store
        .query(
            who,
            &Filter {
                entity_type: Some(entity_type.into()),
                limit: Some(1000),
                ..Filter::default()
            },
        )
        .await
        .unwrap()
        .rows
        .iter()
        .map(|r| r.span.to_view().unwrap())
        .collect();
    let mut latest: std::collections::BTreeMap<String, Value> = Default::default();
    for v in all {
        let id = v["id"].as_str().unwrap().to_string();
        if latest
            .get(&id)
            .is_none_or(|l| l["seq"].as_i64() < v["seq"].as_i64())
        {
            latest.insert(id, v);
        }
    }
    latest.into_values().collect()
}

async fn a_passing_suite_exits_0_and_is_recorded_as_private_spans(backend: Backend) {
    let ledger = Ledger::new(backend).await;
    let suite = write(ledger.data_dir(), "tiny.yaml", PASSING);
    let out = ll_eval(&ledger, &[&suite]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("why-d1") && stdout.contains("2/2 cases passed"),
        "{stdout}"
    );

    let store = open(&ledger).await;
    let ana = Principal::new("ana@padaria-lisboa.pt", "demo");
    let runs = views(store.as_ref(), &ana, "eval_run").await;
    assert_eq!(runs.len(), 1, "one run, latest seq: {runs:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "passed");
    assert_eq!(run["visibility"], "private");
    assert_eq!(run["seq"], 1, "started, then finished");
    let c = &run["content"];
    assert!(c["file_hash"].as_str().unwrap().starts_with("blake3:"));
    assert_eq!(c["variant"], "default");
    assert_eq!(c["provider"], "offline");
    assert_eq!(c["passed"], 2);
    assert!(!c["compiled_hashes"].as_array().unwrap().is_empty());
    let cases = views(store.as_ref(), &ana, "eval_case").await;
    assert_eq!(cases.len(), 2);
    for case in &cases {
        assert_eq!(case["status"], "passed");
        assert_eq!(case["parent_id"], run["id"]);
        assert_eq!(case["visibility"], "private");
        let run_id = case["content"]["prompt_run"].as_str().unwrap();
        assert_eq!(case["related_to"][0], run_id);
        assert!(
            case["content"]["assertions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["pass"] == true)
        );
        assert!(case["signature"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // Another member of the tenant does not see them.
    let rui = Principal::new("rui@padaria-lisboa.pt", "demo");
    assert!(views(store.as_ref(), &rui, "eval_case").await.is_empty());
}

async fn failing_cases_exit_100_and_are_written_to_jsonl_and_junit(backend: Backend) {
    let ledger = Ledger::new(backend).await;
    let dir = ledger.data_dir().to_path_buf();
    let suite = write(&dir, "failing.yaml", FAILING);
    let jsonl = dir.join("results.jsonl");
    let junit = dir.join("junit.xml");
    let out = ll_eval(
        &ledger,
        &[
            &suite,
            "--output",
            jsonl.to_str().unwrap(),
            "--output",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1/2 cases passed") && stdout.contains("FAIL"),
        "{stdout}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let failed = lines.iter().find(|l| l["case"] == "fails").unwrap();
    assert_eq!(failed["pass"], false);
    assert_eq!(failed["assertions"][0]["pass"], false);
    assert_eq!(failed["assertions"][1]["pass"], true);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"failing.default\" tests=\"2\" failures=\"1\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"0/1 attempts passed\">contains:"),
        "{xml}"
    );
}

both_stores!(
    a_passing_suite_exits_0_and_is_recorded_as_private_spans,
    failing_cases_exit_100_and_are_written_to_jsonl_and_junit,
);

#[tokio::test]
async fn a_bad_fixture_exits_1_with_file_line_and_reason() {
    let ledger = Ledger::new(Backend::Sqlite).await;
    let suite = write(
        ledger.data_dir(),
        "bad.yaml",
        "suite: bad\ntenant: demo\nuser: ana\ncases:\n  - name: a\n    question: q\n    assert:\n      - type: icontain\n        value: x\n",
    );
    let out = ll_eval(&ledger, &[&suite]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:8:"), "{err}");
    assert!(err.contains("unknown assertion type `icontain`"), "{err}");
    let out = ll_eval(&ledger, &[&format!("{}.missing", suite)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn a_provider_that_is_down_exits_1() {
    let ledger = Ledger::new(Backend::Sqlite).await;
    let suite = write(ledger.data_dir(), "tiny.yaml", PASSING);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut c = Command::new(BIN);
    let out = c
        .args([
            &suite,
            "--no-progress",
            "--provider",
            "openai",
            "--model",
            "m",
            "--base-url",
            &base,
        ])
        .arg("--data-dir")
        .arg(ledger.data_dir())
        .env("LOGLINE_PROVIDER_MAX_ATTEMPTS", "1")
        .env_remove("LOGLINE_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not run") && err.contains("provider"),
        "{err}"
    );
    // The run says why it stopped.
    let store = open(&ledger).await;
    let ana = Principal::new("ana@padaria-lisboa.pt", "demo");
    let runs = views(store.as_ref(), &ana, "eval_run").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "error");
    assert!(
        runs[0]["content"]["error"]
            .as_str()
            .unwrap()
            .contains("provider")
    );
}

const VARIANTS: &str = "suite: variants
tenant: demo
user: ana@padaria-lisboa.pt
cases:
  - name: why-d1
    question: why was D1 terminated?
    assert:
      - {type: cites, value: law.decision}
  - name: d2
    question: what happened to D2?
    assert:
      - {type: icontains, value: accepted}
  - name: other-tenant
    user: someone@other.example
    tenant: other
    question: why was D1 terminated?
    assert:
      - {type: no-data-of-tenant, value: demo}
";

#[tokio::test]
async fn variants_run_side_by_side_repeated_and_filtered() {
    let ledger = Ledger::new(Backend::Sqlite).await;
    let dir = ledger.data_dir().to_path_buf();
    let suite = write(&dir, "variants.yaml", VARIANTS);
    let jsonl = dir.join("r.jsonl");
    let out = ll_eval(
        &ledger,
        &[
            &suite,
            "--variant",
            "default,brief",
            "--repeat",
            "2",
            "--concurrency",
            "3",
            "--filter",
            "^(why|d2)",
            "--output",
            jsonl.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("variant default") && stdout.contains("variant brief"),
        "{stdout}"
    );
    assert!(stdout.contains("✔ 2/2"), "{stdout}");
    assert!(!stdout.contains("other-tenant"), "filtered out: {stdout}");
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 2 cases × 2 variants × 2 attempts.
    assert_eq!(lines.len(), 8);
    let hashes = |v: &str| -> std::collections::BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l["variant"] == v)
            .map(|l| l["compiled_hash"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        hashes("default").is_disjoint(&hashes("brief")),
        "the variants compile different prompts"
    );
    let store = open(&ledger).await;
    let ana = Principal::new("ana@padaria-lisboa.pt", "demo");
    let runs = views(store.as_ref(), &ana, "eval_run").await;
    assert_eq!(runs.len(), 2, "one eval_run per variant");
    assert_eq!(views(store.as_ref(), &ana, "eval_case").await.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_running_server_cases_are_asked_as_their_users() {
    use server::config::{AuthSettings, ChatSettings, Limits};
    let ledger = Ledger::new(Backend::Sqlite).await;
    let dir = ledger.data_dir().to_path_buf();
    let store = open(&ledger).await;
    for t in ["demo", "other"] {
        kernels::demo::seed_demo(store.as_ref(), t, chrono::Utc::now())
            .await
            .unwrap();
    }
    let secret = "an eval test secret of enough length";
    let auth = AuthSettings {
        jwt_secret: Some(server::auth::Secret::new(secret)),
        jwt_public_key: None,
    }
    .auth(Principal::new("local", "local"))
    .unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let limits = Limits::default();
    let chat = ChatSettings {
        provider: server::chat::ProviderConfig::Offline,
        context_tokens: None,
        memory: Default::default(),
    };
    let state = server::state::AppState::new(store.clone(), auth, &limits, &chat, rx)
        .await
        .unwrap();
    // As `serve` does before it listens: the shipped prompts pass the gate, or nothing answers.
    let gate = server::chat::candidates::Gate {
        store: state.store.clone(),
        live: state.chat.prompts.clone(),
        provider: state.chat.provider.clone(),
        context_tokens: None,
        runner: Arc::new(evals::gate::SuiteTrials),
    };
    let report = gate.pass(&Default::default()).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let app = server::serve::router(state, &limits);
    let listener = server::serve::listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::edge::serve(
        listener,
        app,
        limits.edge,
        std::future::pending(),
    ));
    let suite = write(&dir, "variants.yaml", VARIANTS);
    let jsonl = dir.join("r.jsonl");
    let run = |with_secret: bool, token: Option<String>| {
        let mut c = Command::new(BIN);
        c.args([
            &suite,
            "--no-progress",
            "--url",
            &url,
            "--output",
            jsonl.to_str().unwrap(),
        ])
        .env_remove("LOGLINE_JWT_SECRET")
        .env_remove("LOGLINE_TOKEN");
        if with_secret {
            c.env("LOGLINE_JWT_SECRET", secret);
        }
        if let Some(t) = token {
            c.args(["--token", &t]);
        }
        c
    };
    let out = tokio::task::spawn_blocking({
        let mut c = run(true, None);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let why = lines.iter().find(|l| l["case"] == "why-d1").unwrap();
    assert_eq!(why["tools"][0]["name"], "explain_decision");
    assert_eq!(
        why["tools"][0]["arguments"]["contract"], "D1",
        "arguments seen over SSE"
    );
    assert!(
        why["tokens_in"].as_u64().is_some(),
        "read back from the prompt_run"
    );
    // Recorded on the server, as the suite's user.
    let ana = Principal::new("ana@padaria-lisboa.pt", "demo");
    // (The gate's own cases are public too; count Ana's.)
    let mine = views(store.as_ref(), &ana, "eval_case").await;
    assert_eq!(
        mine.iter()
            .filter(|v| v["owner_id"] == "ana@padaria-lisboa.pt")
            .count(),
        3
    );

    // With only Ana's token, the other tenant's case cannot be asked: skipped, not failed.
    let now = chrono::Utc::now().timestamp();
    let token = server::auth::issue(
        &server::auth::Secret::new(secret),
        &server::auth::Claims {
            sub: "ana@padaria-lisboa.pt".into(),
            tenant: "demo".into(),
            roles: vec![],
            exp: now + 600,
            iat: now,
            nbf: None,
        },
    );
    let out = tokio::task::spawn_blocking({
        let mut c = run(false, Some(token));
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped"));

    // A server that is not there: exit 1.
    let out = Command::new(BIN)
        .args([&suite, "--no-progress", "--url", "http://127.0.0.1:9"])
        .env("LOGLINE_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
