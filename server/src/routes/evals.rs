//! `GET /api/evals`: what the `/evals` page shows (issue 11) — recent `eval_run`s, pass rates
//! per variant and per case, and every prompt block and variant version with its state
//! (active, candidate, rejected…) and the decision behind it.
//!
//! Runs and cases are read with the caller's visibility, exactly as the timeline would show
//! them: the caller's own `ll-eval` runs (private), their tenant's, and the prompt_eval
//! kernel's runs, which are public. Prompt versions and their `prompt_activation` decisions
//! are public spans of the system tenant, so every caller sees them.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use ledger::query::{Filter, Order};
use ledger::{Principal, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::chat::candidates::Catalog;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/evals", get(evals))
}

/// How many recent runs to summarise.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EvalsParams {
    /// Most recent runs listed (1–200, default 50); pass rates cover the same runs.
    pub limit: Option<u32>,
}

/// The `/evals` page's data.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalsPage {
    /// Recent finished runs, newest first: `eval_run`, `suite`, `variant`, `provider`,
    /// `model`, `cases`, `passed`, `pass_rate`, `status`, `at`, `by` (`prompt_eval` or a user),
    /// `candidates` (what prompt_eval was trying).
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<Value>,
    /// Per variant over those runs: `variant`, `runs`, `cases`, `passed`, `pass_rate`.
    #[schema(value_type = Vec<Object>)]
    pub variants: Vec<Value>,
    /// Per suite, case and variant over those runs: `attempts`, `passed`, `pass_rate`.
    #[schema(value_type = Vec<Object>)]
    pub cases: Vec<Value>,
    /// Every prompt block and variant version: `kind`, `name`, `seq`, `state`, `decision`,
    /// `pass_rates`, `failing_cases`.
    #[schema(value_type = Vec<Object>)]
    pub candidates: Vec<Value>,
}

/// The newest version of each span of `entity_type` the principal may see, newest first.
async fn latest_of(
    store: &dyn Store,
    principal: &Principal,
    entity_type: &str,
    limit: i64,
) -> Result<Vec<Value>, ApiError> {
    let filter = Filter {
        entity_type: Some(entity_type.to_string()),
        order: Order::Desc,
        limit: Some(limit),
        ..Filter::default()
    };
    let page = store.query(principal, &filter).await?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for row in page.rows {
        let view = row
            .span
            .to_view()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
        let id = view.get("id").cloned().unwrap_or(Value::Null);
        if seen.insert(id.to_string()) {
            out.push(view);
        }
    }
    Ok(out)
}

fn rate(passed: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        passed as f64 / total as f64
    }
}

#[utoipa::path(
    get,
    path = "/api/evals",
    tag = "evals",
    security(("bearer" = []), ()),
    params(EvalsParams),
    responses(
        (status = 200, description = "Recent evaluation runs, pass rates per variant and case, prompt versions and their states.", body = EvalsPage),
        (status = 400, description = "`limit` is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired bearer token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's rate limit is exceeded; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn evals(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<EvalsPage>, ApiError> {
    let limit = match q.get("limit") {
        None => 50,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest("`limit` must be an integer from 1 to 200".into())
            })?,
    };
    let store = st.store.as_ref();
    let p = &caller.principal;
    // Each run has two versions (running, then finished): read enough rows for `limit` runs.
    let run_views = latest_of(store, p, "eval_run", i64::from(limit) * 2 + 2).await?;
    let mut runs = Vec::new();
    let mut run_ids = HashSet::new();
    let mut per_variant: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for v in run_views.iter().take(limit as usize) {
        let c = &v["content"];
        let cases = c["cases"].as_u64().unwrap_or(0);
        let passed = c["passed"].as_u64().unwrap_or(0);
        let status = v["status"].as_str().unwrap_or_default();
        let variant = c["variant"].as_str().unwrap_or_default().to_string();
        if let Some(id) = v["id"].as_str() {
            run_ids.insert(id.to_string());
        }
        if status == "passed" || status == "failed" {
            let e = per_variant.entry(variant.clone()).or_default();
            e.0 += 1;
            e.1 += cases;
            e.2 += passed;
        }
        runs.push(json!({
            "eval_run": v["id"],
            "suite": c["suite"],
            "variant": variant,
            "provider": c["provider"],
            "model": c["model"],
            "cases": c["cases"],
            "passed": c["passed"],
            "pass_rate": c["pass_rate"],
            "status": status,
            "at": v["at"],
            "by": v["who"],
            "candidates": c["candidates"],
        }));
    }
    let variants = per_variant
        .into_iter()
        .map(|(variant, (n, cases, passed))| {
            json!({"variant": variant, "runs": n, "cases": cases, "passed": passed, "pass_rate": rate(passed, cases)})
        })
        .collect();
    let case_views = latest_of(store, p, "eval_case", ledger::query::MAX_LIMIT).await?;
    let mut per_case: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    for v in &case_views {
        let in_runs = v["parent_id"]
            .as_str()
            .is_some_and(|id| run_ids.contains(id));
        if !in_runs {
            continue;
        }
        let c = &v["content"];
        let key = (
            c["suite"].as_str().unwrap_or_default().to_string(),
            c["case"].as_str().unwrap_or_default().to_string(),
            c["variant"].as_str().unwrap_or_default().to_string(),
        );
        let e = per_case.entry(key).or_default();
        e.0 += 1;
        if c["pass"] == Value::Bool(true) {
            e.1 += 1;
        }
    }
    let cases = per_case
        .into_iter()
        .map(|((suite, case, variant), (n, passed))| {
            json!({"suite": suite, "case": case, "variant": variant, "attempts": n, "passed": passed, "pass_rate": rate(passed, n)})
        })
        .collect();
    let candidates = Catalog::load(store)
        .await
        .map_err(ApiError::from)?
        .overview()
        .into_iter()
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
        .collect();
    Ok(Json(EvalsPage {
        runs,
        variants,
        cases,
        candidates,
    }))
}
