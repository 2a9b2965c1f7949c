//! Running a suite: every selected case × variant × attempt as one job, `concurrency` at a
//! time; each attempt asked (its earlier turns first, in one conversation), judged, and
//! recorded as an `eval_case` span under the variant's `eval_run` span. A case passes when at
//! least `case_threshold` of its attempts pass; a variant passes the suite when at least the
//! suite's `threshold` of its cases pass.
//!
//! The spans (see `evals/README.md`) are private to whoever runs the suite, in their tenant:
//! a run quotes questions and answers of the users it asked as, which is theirs to see.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger::Principal;
use ledger::span::format_time;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::assertion::{self, Check, Observed, Verdict};
use crate::fixture::{Case, Suite};
use crate::target::{Asker, Target, TargetError};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub variants: Vec<String>,
    pub repeat: usize,
    /// Fraction of a case's attempts that must pass.
    pub case_threshold: f64,
    pub concurrency: usize,
    pub filter: Option<regex::Regex>,
    pub progress: bool,
    /// Who records the run (`None`: the suite's user and tenant).
    pub recorder: Option<Principal>,
    /// What the run talks to, for the record (`in-process (sqlite)`, a URL).
    pub target: String,
    /// The configured provider and model, when known before the first turn.
    pub provider: Option<(String, String)>,
    /// `private` (a person's run: it quotes the answers of the users it asked as) or `public`
    /// (prompt_eval's runs over a scratch ledger of demo data, which gate what the chat uses).
    pub visibility: &'static str,
    /// Recorded in the `eval_run` content as `candidates` (what prompt_eval is trying).
    pub candidates: Option<Value>,
}

/// One attempt of one case under one variant.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub suite: String,
    pub case: String,
    pub line: usize,
    pub variant: String,
    pub attempt: usize,
    pub pass: bool,
    /// Not asked (the target cannot ask as the case's user); counts neither way.
    pub skipped: Option<String>,
    pub score: f64,
    pub assertions: Vec<Verdict>,
    pub observed: Observed,
    /// The `eval_case` span.
    pub eval_case: Option<Uuid>,
    pub eval_run: Uuid,
}

/// One case under one variant, over its attempts.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub line: usize,
    pub variant: String,
    pub attempts: usize,
    pub passed: usize,
    pub pass: bool,
    pub skipped: bool,
    pub mean_latency_ms: f64,
    /// The first failing attempt's failed assertions.
    pub failures: Vec<String>,
}

/// One variant's run of a suite.
#[derive(Clone, Debug, Serialize)]
pub struct VariantRun {
    pub variant: String,
    pub eval_run: Uuid,
    pub cases: Vec<CaseResult>,
    pub passed: usize,
    pub counted: usize,
    pub pass: bool,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub compiled_hashes: Vec<String>,
}

/// A suite's run, all variants.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteRun {
    pub suite: String,
    pub path: String,
    pub threshold: f64,
    pub variants: Vec<VariantRun>,
    pub attempts: Vec<Attempt>,
    pub seconds: f64,
}

impl SuiteRun {
    pub fn pass(&self) -> bool {
        self.variants.iter().all(|v| v.pass)
    }
}

/// The git revision of the working directory, if there is one.
fn git_revision() -> Option<String> {
    if let Ok(v) = std::env::var("LOGLINE_GIT_REV")
        && !v.trim().is_empty()
    {
        return Some(v.trim().to_string());
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn nine(span: &mut Value, did: &str, this: String, status: &str, who: &str) {
    span["when"] = json!(format_time(Utc::now()));
    span["who"] = json!(who);
    span["did"] = json!(did);
    span["this"] = json!(this);
    span["confirmed_by"] = json!("ll-eval");
    span["status"] = json!(status);
}

fn excerpt(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Runs one suite against `target`.
pub async fn run_suite(
    target: Arc<dyn Target>,
    suite: &Suite,
    opts: &Options,
) -> Result<SuiteRun, TargetError> {
    let recorder = opts
        .recorder
        .clone()
        .unwrap_or_else(|| Principal::new(suite.user.clone(), suite.tenant.clone()));
    let cases: Vec<&Case> = suite
        .cases
        .iter()
        .filter(|c| opts.filter.as_ref().is_none_or(|f| f.is_match(&c.name)))
        .collect();
    let git = git_revision();
    for s in &suite.setup {
        let who = Principal::new(
            s.user.clone().unwrap_or_else(|| suite.user.clone()),
            s.tenant.clone().unwrap_or_else(|| suite.tenant.clone()),
        );
        target
            .record(&who, vec![Value::Object(s.span.clone())])
            .await?;
    }
    let started = Instant::now();
    let mut run_ids = HashMap::new();
    for variant in &opts.variants {
        let id = Uuid::now_v7();
        let mut span = json!({
            "id": id,
            "entity_type": "eval_run",
            "visibility": opts.visibility,
            "trace_id": id.to_string(),
            "name": suite.name,
            "if_ok": "the suite passed its threshold",
            "if_doubt": "repeat the run",
            "if_not": "the suite failed",
            "content": {
                "suite": suite.name,
                "file": suite.path.display().to_string(),
                "file_hash": suite.file_hash,
                "variant": variant,
                "target": opts.target,
                "provider": opts.provider.as_ref().map(|p| &p.0),
                "model": opts.provider.as_ref().map(|p| &p.1),
                "git_revision": git,
                "cases": cases.len(),
                "repeat": opts.repeat,
                "threshold": suite.threshold,
                "case_threshold": opts.case_threshold,
                "filter": opts.filter.as_ref().map(regex::Regex::as_str),
                "candidates": opts.candidates,
            },
        });
        nine(
            &mut span,
            "started an evaluation run",
            format!("suite {} variant {variant}", suite.name),
            "running",
            &recorder.user_id,
        );
        target.record(&recorder, vec![span]).await?;
        run_ids.insert(variant.clone(), id);
    }

    let mut jobs = Vec::new();
    for variant in &opts.variants {
        for case in &cases {
            for attempt in 1..=opts.repeat.max(1) {
                jobs.push((variant.clone(), *case, attempt));
            }
        }
    }
    let bar = if opts.progress {
        ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(suite.name.clone());
    let mut stream = futures::stream::iter(jobs.into_iter().map(|(variant, case, attempt)| {
        let target = target.clone();
        let recorder = recorder.clone();
        let run_id = run_ids.get(&variant).copied().unwrap_or_default();
        async move {
            run_attempt(
                target.as_ref(),
                suite,
                case,
                &variant,
                attempt,
                Recording {
                    run_id,
                    recorder: &recorder,
                    visibility: opts.visibility,
                },
            )
            .await
        }
    }))
    .buffer_unordered(opts.concurrency.max(1));
    let mut attempts = Vec::new();
    let (mut ok, mut bad) = (0, 0);
    while let Some(r) = stream.next().await {
        let a = match r {
            Ok(a) => a,
            Err(e) => {
                drop(stream);
                bar.finish_and_clear();
                abort(
                    target.as_ref(),
                    suite,
                    &run_ids,
                    &recorder,
                    &e,
                    opts.visibility,
                )
                .await;
                return Err(e);
            }
        };
        if a.skipped.is_none() {
            if a.pass {
                ok += 1;
            } else {
                bad += 1;
            }
        }
        bar.set_message(format!("✔ {ok} ✘ {bad}"));
        bar.inc(1);
        attempts.push(a);
    }
    drop(stream);
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let mut variants = Vec::new();
    for variant in &opts.variants {
        let run_id = run_ids.get(variant).copied().unwrap_or_default();
        let mut results = Vec::new();
        for case in &cases {
            let mine: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| &a.variant == variant && a.case == case.name)
                .collect();
            let asked: Vec<&&Attempt> = mine.iter().filter(|a| a.skipped.is_none()).collect();
            let passed = asked.iter().filter(|a| a.pass).count();
            let skipped = asked.is_empty();
            let pass =
                !skipped && (passed as f64) >= opts.case_threshold * asked.len() as f64 - 1e-9;
            let failures = asked
                .iter()
                .find(|a| !a.pass)
                .map(|a| {
                    a.assertions
                        .iter()
                        .filter(|v| !v.pass)
                        .map(|v| format!("{}: {}", v.kind, v.reason))
                        .collect()
                })
                .or_else(|| {
                    mine.first()
                        .and_then(|a| a.skipped.clone())
                        .map(|s| vec![s])
                })
                .unwrap_or_default();
            let mean_latency_ms = if asked.is_empty() {
                0.0
            } else {
                asked.iter().map(|a| a.observed.latency_ms).sum::<f64>() / asked.len() as f64
            };
            results.push(CaseResult {
                case: case.name.clone(),
                line: case.line,
                variant: variant.clone(),
                attempts: asked.len(),
                passed,
                pass,
                skipped,
                mean_latency_ms,
                failures,
            });
        }
        let counted = results.iter().filter(|c| !c.skipped).count();
        let passed = results.iter().filter(|c| c.pass).count();
        let pass = counted > 0 && passed as f64 >= suite.threshold * counted as f64 - 1e-9;
        let mine = attempts.iter().filter(|a| &a.variant == variant);
        let hashes: BTreeSet<String> = mine
            .clone()
            .filter_map(|a| a.observed.compiled_hash.clone())
            .collect();
        let first = mine.clone().find(|a| a.observed.run_id.is_some());
        let (provider, model) = target_provider(first, opts);
        let mut span = json!({
            "id": run_id,
            "entity_type": "eval_run",
            "visibility": opts.visibility,
            "trace_id": run_id.to_string(),
            "name": suite.name,
            "if_ok": "the suite passed its threshold",
            "if_doubt": "repeat the run",
            "if_not": "the suite failed",
            "duration_ms": (seconds * 1000.0) as u64,
            "related_to": mine.clone().filter_map(|a| a.eval_case).take(2000).collect::<Vec<_>>(),
            "content": {
                "suite": suite.name,
                "file": suite.path.display().to_string(),
                "file_hash": suite.file_hash,
                "variant": variant,
                "target": opts.target,
                "provider": provider,
                "model": model,
                "compiled_hashes": hashes,
                "git_revision": git,
                "repeat": opts.repeat,
                "threshold": suite.threshold,
                "case_threshold": opts.case_threshold,
                "filter": opts.filter.as_ref().map(regex::Regex::as_str),
                "cases": counted,
                "passed": passed,
                "failed": counted - passed,
                "skipped": results.len() - counted,
                "pass_rate": if counted > 0 { passed as f64 / counted as f64 } else { 0.0 },
                "failing": results.iter().filter(|c| !c.pass && !c.skipped).map(|c| &c.case).collect::<Vec<_>>(),
                "seconds": seconds,
                "candidates": opts.candidates,
            },
        });
        nine(
            &mut span,
            "finished an evaluation run",
            format!("suite {} variant {variant}", suite.name),
            if pass { "passed" } else { "failed" },
            &recorder.user_id,
        );
        target.record(&recorder, vec![span]).await?;
        variants.push(VariantRun {
            variant: variant.clone(),
            eval_run: run_id,
            cases: results,
            passed,
            counted,
            pass,
            provider,
            model,
            compiled_hashes: hashes.into_iter().collect(),
        });
    }
    attempts.sort_by(|a, b| (a.line, &a.variant, a.attempt).cmp(&(b.line, &b.variant, b.attempt)));
    Ok(SuiteRun {
        suite: suite.name.clone(),
        path: suite.path.display().to_string(),
        threshold: suite.threshold,
        variants,
        attempts,
        seconds,
    })
}

/// Best effort: each variant's `eval_run` gets a last seq saying why the run stopped (the
/// error that stopped it is what the caller reports; a failure to record this is not).
async fn abort(
    target: &dyn Target,
    suite: &Suite,
    run_ids: &HashMap<String, Uuid>,
    recorder: &Principal,
    error: &TargetError,
    visibility: &'static str,
) {
    for (variant, id) in run_ids {
        let mut span = json!({
            "id": id,
            "entity_type": "eval_run",
            "visibility": visibility,
            "trace_id": id.to_string(),
            "name": suite.name,
            "if_ok": "the suite passed its threshold",
            "if_doubt": "repeat the run",
            "if_not": "the suite failed",
            "error": {"message": error.to_string()},
            "content": {
                "suite": suite.name,
                "file": suite.path.display().to_string(),
                "file_hash": suite.file_hash,
                "variant": variant,
                "error": error.to_string(),
            },
        });
        nine(
            &mut span,
            "could not finish an evaluation run",
            format!("suite {} variant {variant}", suite.name),
            "error",
            &recorder.user_id,
        );
        if let Err(e) = target.record(recorder, vec![span]).await {
            tracing::warn!(error = %e, "cannot record that the eval run stopped");
        }
    }
}

fn target_provider(first: Option<&Attempt>, opts: &Options) -> (Option<String>, Option<String>) {
    let seen = first.and_then(|a| {
        Some((
            a.observed.provider.clone()?,
            a.observed.model.clone().unwrap_or_default(),
        ))
    });
    match seen.or_else(|| opts.provider.clone()) {
        Some((p, m)) => (Some(p), Some(m)),
        None => (None, None),
    }
}

/// Where an attempt's `eval_case` goes: under which run, by whom, how visible.
#[derive(Clone, Copy)]
struct Recording<'a> {
    run_id: Uuid,
    recorder: &'a Principal,
    visibility: &'static str,
}

/// Asks, judges and records one attempt.
async fn run_attempt(
    target: &dyn Target,
    suite: &Suite,
    case: &Case,
    variant: &str,
    attempt: usize,
    record: Recording<'_>,
) -> Result<Attempt, TargetError> {
    let Recording {
        run_id,
        recorder,
        visibility,
    } = record;
    let who = Asker {
        user: case.user(suite).to_string(),
        tenant: case.tenant(suite).to_string(),
        roles: case.roles(suite).to_vec(),
    };
    let mut base = Attempt {
        suite: suite.name.clone(),
        case: case.name.clone(),
        line: case.line,
        variant: variant.to_string(),
        attempt,
        pass: false,
        skipped: None,
        score: 0.0,
        assertions: Vec::new(),
        observed: Observed::default(),
        eval_case: None,
        eval_run: run_id,
    };
    let mut conversation = None;
    let mut asked = None;
    for message in case.turns.iter().chain(std::iter::once(&case.question)) {
        match target.ask(&who, conversation, message, variant).await {
            Ok(a) => {
                conversation = a.conversation_id;
                asked = Some(a);
            }
            Err(TargetError::CannotAsk { user, tenant, why }) => {
                base.skipped = Some(format!("not asked as {user} in {tenant}: {why}"));
                return Ok(base);
            }
            Err(e) => return Err(e),
        }
    }
    let Some(asked) = asked else {
        return Ok(base);
    };
    let mut o = asked.observed;
    o.provider = asked.provider;
    o.model = asked.model;
    let cited: Vec<Uuid> = o.citations.iter().filter_map(|c| c.parse().ok()).collect();
    o.spans = target.spans(&who, &cited).await;
    for a in &case.assert {
        if let Check::NoDataOfTenant(t) = &a.check
            && !o.tenant_ids.contains_key(t)
            && let Some(ids) = target.tenant_ids(t).await
        {
            o.tenant_ids.insert(t.clone(), ids);
        }
    }
    let mut verdicts = Vec::with_capacity(case.assert.len());
    for a in &case.assert {
        verdicts.push(a.evaluate(&o).await);
    }
    let (pass, score) = assertion::score(&verdicts, case.threshold);
    let mut span = json!({
        "entity_type": "eval_case",
        "visibility": visibility,
        "parent_id": run_id,
        "trace_id": run_id.to_string(),
        "related_to": o.run_id.into_iter().collect::<Vec<_>>(),
        "name": case.name,
        "if_ok": "the case counts as passed",
        "if_doubt": "repeat the case",
        "if_not": "the case counts as failed",
        "duration_ms": o.latency_ms as u64,
        "content": {
            "suite": suite.name,
            "case": case.name,
            "line": case.line,
            "variant": variant,
            "attempt": attempt,
            "question": case.question,
            "turns": case.turns.len(),
            "asked_as": {"user": who.user, "tenant": who.tenant},
            "pass": pass,
            "score": score,
            "threshold": case.threshold,
            "assertions": verdicts,
            "outcome": o.outcome,
            "output": excerpt(&o.output, 2000),
            "citations": o.citations,
            "tools": o.tool_calls.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "latency_ms": o.latency_ms,
            "tokens_in": o.tokens_in,
            "tokens_out": o.tokens_out,
            "prompt_run": o.run_id,
            "compiled_hash": o.compiled_hash,
        },
    });
    nine(
        &mut span,
        "evaluated a case",
        format!(
            "case {} of suite {} (variant {variant}, attempt {attempt})",
            case.name, suite.name
        ),
        if pass { "passed" } else { "failed" },
        &recorder.user_id,
    );
    let id = target
        .record(recorder, vec![span])
        .await?
        .into_iter()
        .next();
    base.pass = pass;
    base.score = score;
    base.assertions = verdicts;
    base.observed = o;
    base.eval_case = id;
    Ok(base)
}
