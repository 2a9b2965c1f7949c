//! prompt_bandit: which prompt variant a new conversation gets (issue 11, DESIGN §7).
//!
//! Each variant is a Beta-Bernoulli arm. Every recorded chat turn (`prompt_run`) of a variant is
//! one sample with a reward `r` in `[0, 1]`, and the variant's posterior is
//! `Beta(1 + Σr, 1 + Σ(1 − r))` (fractional rewards update it as their expected Bernoulli
//! outcome would). **The reward of a run** is, first match wins:
//!
//! 1. **feedback** (`feedback` span of the user who asked, given within `feedback_window_secs`
//!    of the run; a later vote replaces an earlier one): `up` = 1, `down` = 0, a number as given;
//! 2. **an eval case** (`eval_case` naming the run in `content.prompt_run`): 1 if it passed,
//!    else 0;
//! 3. **derived from the run**: `base − 0.25·repaired − 0.25·slow`, clamped to `[0, 1]`, where
//!    `base` is 1 for `answered`, 0.5 for `escalated` (confidence below 0.6), 0.2 for
//!    `unsupported` (no evidence behind a ledger answer) and 0 for `insufficient_evidence`
//!    ("Insufficient evidence."); `repaired` is 1 when the answer needed the schema repair
//!    round; `slow = min(1, max(0, latency_ms − target) / target)` with `latency_target_ms`.
//!
//! A `provider_error` run is no sample (the provider failed, not the prompt). A run is a
//! **failure** when its reward is below 0.5.
//!
//! **The choice** ([`choose`], a pure function of the candidates, the rules and a seed):
//! a promoted variant (`prompt_variant_promotion`, written by `logline variants promote`) is
//! always chosen. Otherwise, among the eligible variants not dropped by the guardrail, while
//! any has fewer than `warmup_samples` samples the conversation goes uniformly to those still
//! warming up; after that, by Thompson sampling: one draw from each posterior, the highest
//! wins. Every eligible variant keeps at least `floor` probability: a first uniform draw `u`
//! below `K·floor` picks a variant uniformly (exploration), otherwise the posterior draws decide.
//! So variant `i` is chosen with probability `floor + (1 − K·floor)·P(i is best)`, which is what
//! the `prompt_variant_selection` span records beside the seed, `u` and the draws; [`replay`]
//! recomputes any recorded choice from the span alone.
//!
//! **The guardrail**: a variant with at least `guardrail_min_samples` samples since its last
//! guardrail event whose failure share exceeds `guardrail_failure_rate` is dropped, and a
//! `prompt_variant_guardrail` span says so; `logline variants readmit NAME` brings it back with
//! fresh counts.
//!
//! **Cost**: [`Bandit`] keeps the posteriors in memory and folds new spans in incrementally
//! from the ledger's ingest order ([`Store::tail`]), never rescanning; `P(best)` is computed
//! once per change of the posteriors (by quadrature) and cached, so a turn's choice is a lock,
//! a cache hit and `K` Beta draws.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use ledger::span::format_time;
use ledger::store::{self, SYSTEM_TENANT, system_principal};
use ledger::{Draft, Store, StoreError};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;
use uuid::Uuid;

pub use crate::kernel::prompt_bandit::BanditConfig;

/// The span of one choice.
pub const SELECTION: &str = "prompt_variant_selection";
/// The span that pins (or, with `variant: null`, unpins) the bandit's choice.
pub const PROMOTION: &str = "prompt_variant_promotion";
/// The span of a guardrail drop or readmission.
pub const GUARDRAIL: &str = "prompt_variant_guardrail";
/// A user's rating of a chat turn.
pub const FEEDBACK: &str = "feedback";
/// Grid cells of the quadrature that computes `P(best)`.
const GRID: usize = 1024;
/// Spans read per tail page.
const TAIL_PAGE: i64 = 2000;

// ---------------------------------------------------------------------------------------------
// The seeded generator.

/// SplitMix64 (Steele, Lea and Flood, 2014): every output a pure function of the seed. It is
/// written here, not taken from a crate, so a recorded seed replays the same way whatever
/// dependency versions change.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` (the top 53 bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, one of the pair).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang (2000); a shape below 1 is boosted by `U^(1/a)`.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.uniform();
            if u < 1.0 - 0.0331 * x * x * x * x || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// Beta(a, b) as `X / (X + Y)` of two gammas.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y > 0.0 { x / (x + y) } else { 0.5 }
    }
}

// ---------------------------------------------------------------------------------------------
// Rewards.

/// How a turn ended, as its `prompt_run` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Answered,
    Escalated,
    Unsupported,
    InsufficientEvidence,
    ProviderError,
}

impl RunOutcome {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "answered" => Self::Answered,
            "escalated" => Self::Escalated,
            "unsupported" => Self::Unsupported,
            "insufficient_evidence" => Self::InsufficientEvidence,
            "provider_error" => Self::ProviderError,
            _ => return None,
        })
    }
}

/// What the derived reward looks at in a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunFacts {
    pub outcome: RunOutcome,
    pub repaired: bool,
    pub latency_ms: u64,
}

/// The reward of a run without feedback or an eval case (the module doc's rule 3); `None` for
/// a run that is no sample.
pub fn derived_reward(f: &RunFacts, latency_target_ms: u64) -> Option<f64> {
    let base = match f.outcome {
        RunOutcome::Answered => 1.0,
        RunOutcome::Escalated => 0.5,
        RunOutcome::Unsupported => 0.2,
        RunOutcome::InsufficientEvidence => 0.0,
        RunOutcome::ProviderError => return None,
    };
    let target = latency_target_ms.max(1) as f64;
    let slow = ((f.latency_ms as f64 - target) / target).clamp(0.0, 1.0);
    let repaired = if f.repaired { 1.0 } else { 0.0 };
    Some((base - 0.25 * repaired - 0.25 * slow).clamp(0.0, 1.0))
}

/// A feedback score: `"up"`, `"down"` or a number in `[0, 1]`.
pub fn feedback_score(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) if s == "up" => Some(1.0),
        Value::String(s) if s == "down" => Some(0.0),
        Value::Number(n) => n.as_f64().filter(|x| (0.0..=1.0).contains(x)),
        _ => None,
    }
}

/// A reward below this is a failure (for the guardrail).
pub const FAILURE_BELOW: f64 = 0.5;

// ---------------------------------------------------------------------------------------------
// What has been learned.

/// Where a run's current reward comes from (a better source replaces a worse one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Derived,
    Eval,
    Feedback,
}

#[derive(Clone, Debug)]
struct RunEntry {
    variant: String,
    at: DateTime<Utc>,
    tenant: String,
    owner: String,
    reward: f64,
    source: Source,
    /// The variant's guardrail epoch the run was counted in.
    epoch: u32,
}

/// One variant's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmStats {
    pub samples: u64,
    pub reward_sum: f64,
    pub failures: u64,
    /// Since the last guardrail event (what the guardrail judges).
    pub recent_samples: u64,
    pub recent_failures: u64,
    pub dropped: bool,
    /// Guardrail events seen (drops and readmissions).
    pub epoch: u32,
}

impl ArmStats {
    pub fn alpha(&self) -> f64 {
        1.0 + self.reward_sum
    }

    pub fn beta(&self) -> f64 {
        1.0 + self.samples as f64 - self.reward_sum
    }

    pub fn mean_reward(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.reward_sum / self.samples as f64)
    }

    fn add(&mut self, reward: f64, counted_recently: bool) {
        self.samples += 1;
        self.reward_sum += reward;
        let failed = u64::from(reward < FAILURE_BELOW);
        self.failures += failed;
        if counted_recently {
            self.recent_samples += 1;
            self.recent_failures += failed;
        }
    }

    fn replace(&mut self, old: f64, new: f64, counted_recently: bool) {
        self.reward_sum += new - old;
        let (was, is) = (
            u64::from(old < FAILURE_BELOW),
            u64::from(new < FAILURE_BELOW),
        );
        self.failures = self.failures + is - was;
        if counted_recently {
            self.recent_failures = self.recent_failures + is - was;
        }
    }
}

/// A guardrail drop that is due.
#[derive(Clone, Debug, PartialEq)]
pub struct Drop {
    pub variant: String,
    pub samples: u64,
    pub failures: u64,
    /// The epoch it ends (its span's idempotency key).
    pub epoch: u32,
}

/// The bandit's knowledge, fed span by span (pure: no store, no clock).
#[derive(Clone, Debug, Default)]
pub struct Learner {
    runs: HashMap<Uuid, RunEntry>,
    arms: BTreeMap<String, ArmStats>,
    promoted: Option<String>,
    /// Bumped whenever a posterior, a drop or the promotion changes.
    generation: u64,
}

impl Learner {
    pub fn arms(&self) -> &BTreeMap<String, ArmStats> {
        &self.arms
    }

    pub fn arm(&self, name: &str) -> ArmStats {
        self.arms.get(name).cloned().unwrap_or_default()
    }

    pub fn promoted(&self) -> Option<&str> {
        self.promoted.as_deref()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A recorded turn; its derived reward counts now (feedback or an eval case may replace it).
    #[expect(clippy::too_many_arguments, reason = "the fields of one prompt_run")]
    pub fn observe_run(
        &mut self,
        id: Uuid,
        variant: &str,
        at: DateTime<Utc>,
        tenant: &str,
        owner: &str,
        facts: &RunFacts,
        cfg: &BanditConfig,
    ) {
        if self.runs.contains_key(&id) {
            return;
        }
        let Some(reward) = derived_reward(facts, cfg.latency_target_ms) else {
            return;
        };
        let arm = self.arms.entry(variant.to_string()).or_default();
        arm.add(reward, true);
        self.runs.insert(
            id,
            RunEntry {
                variant: variant.to_string(),
                at,
                tenant: tenant.to_string(),
                owner: owner.to_string(),
                reward,
                source: Source::Derived,
                epoch: arm.epoch,
            },
        );
        self.generation += 1;
    }

    /// An eval case's verdict on a run (replaces a derived reward only).
    pub fn observe_eval(&mut self, run: Uuid, pass: bool) {
        self.set_reward(run, if pass { 1.0 } else { 0.0 }, Source::Eval);
    }

    /// A user's feedback on a run: it counts only from the run's own asker (tenant and user)
    /// and within the window. Returns whether it counted.
    pub fn observe_feedback(
        &mut self,
        run: Uuid,
        tenant: &str,
        owner: &str,
        at: DateTime<Utc>,
        score: f64,
        cfg: &BanditConfig,
    ) -> bool {
        let Some(e) = self.runs.get(&run) else {
            return false;
        };
        let late = (at - e.at).to_std().is_ok_and(|d| d > cfg.feedback_window);
        if e.tenant != tenant || e.owner != owner || late || !(0.0..=1.0).contains(&score) {
            return false;
        }
        self.set_reward(run, score, Source::Feedback);
        true
    }

    fn set_reward(&mut self, run: Uuid, reward: f64, source: Source) {
        let Some(e) = self.runs.get_mut(&run) else {
            return;
        };
        if source < e.source {
            return;
        }
        let arm = self.arms.entry(e.variant.clone()).or_default();
        arm.replace(e.reward, reward, e.epoch == arm.epoch);
        e.reward = reward;
        e.source = source;
        self.generation += 1;
    }

    /// Pins the choice to a variant, or (`None`) lets the bandit choose again.
    pub fn observe_promotion(&mut self, variant: Option<String>) {
        self.promoted = variant;
        self.generation += 1;
    }

    /// A guardrail event: `dropped` or readmitted; either starts a new count.
    pub fn observe_guardrail(&mut self, variant: &str, dropped: bool) {
        let arm = self.arms.entry(variant.to_string()).or_default();
        arm.dropped = dropped;
        arm.epoch += 1;
        arm.recent_samples = 0;
        arm.recent_failures = 0;
        self.generation += 1;
    }

    /// Variants the guardrail drops now.
    pub fn guardrail_due(&self, cfg: &BanditConfig) -> Vec<Drop> {
        self.arms
            .iter()
            .filter(|(_, a)| {
                !a.dropped
                    && a.recent_samples >= cfg.guardrail_min_samples
                    && a.recent_failures as f64 / a.recent_samples as f64
                        > cfg.guardrail_failure_rate
            })
            .map(|(name, a)| Drop {
                variant: name.clone(),
                samples: a.recent_samples,
                failures: a.recent_failures,
                epoch: a.epoch,
            })
            .collect()
    }

    /// Forgets runs whose reward can no longer change (older than the feedback window).
    pub fn prune(&mut self, now: DateTime<Utc>, cfg: &BanditConfig) {
        let Ok(window) = chrono::TimeDelta::from_std(cfg.feedback_window) else {
            return;
        };
        self.runs.retain(|_, e| e.at + window >= now);
    }

    /// The candidates for a choice among `eligible`: each with its posterior and state.
    pub fn candidates(&self, eligible: &[String]) -> Vec<Candidate> {
        eligible
            .iter()
            .map(|name| {
                let a = self.arm(name);
                Candidate {
                    name: name.clone(),
                    alpha: a.alpha(),
                    beta: a.beta(),
                    samples: a.samples,
                    dropped: a.dropped,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The choice.

/// A variant as a choice sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub name: String,
    pub alpha: f64,
    pub beta: f64,
    pub samples: u64,
    pub dropped: bool,
}

/// The settings a choice depends on (recorded with it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rules {
    pub warmup_samples: u64,
    pub floor: f64,
    pub promoted: Option<String>,
}

/// How a choice was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A promotion pins the variant.
    Promoted,
    /// Some variant has fewer than `warmup_samples` samples.
    Warmup,
    /// `u < K·floor`: the floor's uniform exploration.
    Explore,
    /// The highest posterior draw.
    Thompson,
    /// No variant is eligible (the caller falls back to `default`).
    NoneEligible,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promoted => "promoted",
            Self::Warmup => "warmup",
            Self::Explore => "explore",
            Self::Thompson => "thompson",
            Self::NoneEligible => "none_eligible",
        }
    }
}

/// One choice, everything needed to replay it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub chosen: Option<String>,
    pub mode: Mode,
    /// Per candidate, the probability this choice gave it.
    pub probabilities: Vec<f64>,
    /// The seed (hex), the first uniform draw and, for a Thompson choice, each candidate's
    /// posterior draw (0 for those not drawn).
    pub seed: u64,
    pub draw: f64,
    pub draws: Vec<f64>,
}

/// Each candidate's probability of having the highest mean under the posteriors, by midpoint
/// quadrature of `∫ f_i(x) Π_{j≠i} F_j(x) dx` over the range where the posteriors have mass.
#[expect(
    clippy::needless_range_loop,
    reason = "one grid index walks every density and cumulative sum in step"
)]
pub fn p_best(params: &[(f64, f64)]) -> Vec<f64> {
    let k = params.len();
    match k {
        0 => return Vec::new(),
        1 => return vec![1.0],
        _ => {}
    }
    // Every posterior's mass lies within 9 standard deviations of its mean.
    let (mut lo, mut hi) = (1.0f64, 0.0f64);
    for &(a, b) in params {
        let m = a / (a + b);
        let sd = (a * b / ((a + b) * (a + b) * (a + b + 1.0))).sqrt();
        lo = lo.min(m - 9.0 * sd);
        hi = hi.max(m + 9.0 * sd);
    }
    let (lo, hi) = (lo.max(0.0), hi.min(1.0));
    let step = (hi - lo) / GRID as f64;
    // Densities on the cell midpoints, normalised on the grid; log form avoids overflow.
    let mut dens = vec![vec![0.0; GRID]; k];
    for (i, &(a, b)) in params.iter().enumerate() {
        let logs: Vec<f64> = (0..GRID)
            .map(|g| {
                let x = lo + (g as f64 + 0.5) * step;
                (a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln()
            })
            .collect();
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for (g, l) in logs.iter().enumerate() {
            let d = (l - max).exp();
            dens[i][g] = d;
            total += d;
        }
        if total > 0.0 {
            for d in &mut dens[i] {
                *d /= total;
            }
        }
    }
    // F_j at a midpoint: the cells below plus half its own.
    let mut cdf_below = vec![0.0; k];
    let mut out = vec![0.0; k];
    for g in 0..GRID {
        let mids: Vec<f64> = (0..k).map(|j| cdf_below[j] + 0.5 * dens[j][g]).collect();
        for i in 0..k {
            let mut p = dens[i][g];
            for (j, m) in mids.iter().enumerate() {
                if j != i {
                    p *= m;
                }
            }
            out[i] += p;
        }
        for j in 0..k {
            cdf_below[j] += dens[j][g];
        }
    }
    let total: f64 = out.iter().sum();
    if total > 0.0 {
        for p in &mut out {
            *p /= total;
        }
    } else {
        out = vec![1.0 / k as f64; k];
    }
    out
}

/// Chooses a variant: a pure function of the candidates, the rules, the seed and `best`
/// (`P(best)` per candidate as [`p_best`] computes it over the eligible ones, passed in so a
/// caller can cache it; `None` computes it).
pub fn choose(candidates: &[Candidate], rules: &Rules, seed: u64, best: Option<&[f64]>) -> Choice {
    let mut rng = Rng::new(seed);
    let draw = rng.uniform();
    let n = candidates.len();
    let mut choice = Choice {
        chosen: None,
        mode: Mode::NoneEligible,
        probabilities: vec![0.0; n],
        seed,
        draw,
        draws: vec![0.0; n],
    };
    if let Some(p) = &rules.promoted
        && let Some(i) = candidates.iter().position(|c| &c.name == p)
    {
        choice.probabilities[i] = 1.0;
        choice.chosen = Some(p.clone());
        choice.mode = Mode::Promoted;
        return choice;
    }
    let eligible: Vec<usize> = (0..n).filter(|&i| !candidates[i].dropped).collect();
    let k = eligible.len();
    if k == 0 {
        return choice;
    }
    let floor = rules.floor.min(1.0 / k as f64);
    let warming: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&i| candidates[i].samples < rules.warmup_samples)
        .collect();
    // q: the policy before the floor; the floor mixes in uniform exploration.
    let mut q = vec![0.0; n];
    if warming.is_empty() {
        let computed;
        let b = match best {
            Some(b) if b.len() == k => b,
            _ => {
                let params: Vec<(f64, f64)> = eligible
                    .iter()
                    .map(|&i| (candidates[i].alpha, candidates[i].beta))
                    .collect();
                computed = p_best(&params);
                &computed
            }
        };
        for (slot, &i) in eligible.iter().enumerate() {
            q[i] = b[slot];
        }
    } else {
        for &i in &warming {
            q[i] = 1.0 / warming.len() as f64;
        }
    }
    for &i in &eligible {
        choice.probabilities[i] = floor + (1.0 - k as f64 * floor) * q[i];
    }
    let explore = k as f64 * floor;
    let pick = if draw < explore {
        choice.mode = Mode::Explore;
        // Uniform among the eligible: u / floor is uniform on [0, K).
        eligible[((draw / floor) as usize).min(k - 1)]
    } else if !warming.is_empty() {
        choice.mode = Mode::Warmup;
        let u = (draw - explore) / (1.0 - explore);
        warming[((u * warming.len() as f64) as usize).min(warming.len() - 1)]
    } else {
        choice.mode = Mode::Thompson;
        let mut top = eligible[0];
        let mut top_theta = f64::NEG_INFINITY;
        for &i in &eligible {
            let theta = rng.beta(candidates[i].alpha, candidates[i].beta);
            choice.draws[i] = theta;
            if theta > top_theta {
                top = i;
                top_theta = theta;
            }
        }
        top
    };
    choice.chosen = Some(candidates[pick].name.clone());
    choice
}

/// The `content` of a `prompt_variant_selection` span.
pub fn selection_content(
    conversation_id: Uuid,
    candidates: &[Candidate],
    rules: &Rules,
    choice: &Choice,
) -> Value {
    let cands: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name,
                "alpha": c.alpha,
                "beta": c.beta,
                "samples": c.samples,
                "dropped": c.dropped,
                "probability": choice.probabilities[i],
                "draw": choice.draws[i],
            })
        })
        .collect();
    json!({
        "conversation_id": conversation_id,
        "chosen": choice.chosen,
        "mode": choice.mode,
        "seed": format!("{:016x}", choice.seed),
        "draw": choice.draw,
        "candidates": cands,
        "rules": rules,
        "method": "Beta-Bernoulli Thompson sampling with a probability floor (kernels/src/prompt_bandit.rs)",
    })
}

#[derive(Debug, Error, PartialEq)]
pub enum ReplayError {
    #[error("the selection does not read: {0}")]
    Unreadable(String),
    #[error("replayed `{replayed:?}` where the span says `{recorded:?}`")]
    Differs {
        recorded: Option<String>,
        replayed: Option<String>,
    },
}

/// Replays a recorded choice from its span's `content`: the same candidates, rules and seed
/// must give the same variant, draw and probabilities. Returns the variant.
pub fn replay(content: &Value) -> Result<Option<String>, ReplayError> {
    let bad = |what: &str| ReplayError::Unreadable(what.to_string());
    let seed = content
        .get("seed")
        .and_then(Value::as_str)
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| bad("no hex `seed`"))?;
    let rules = content.get("rules").ok_or_else(|| bad("no `rules`"))?;
    let rules = Rules {
        warmup_samples: rules
            .get("warmup_samples")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no `rules.warmup_samples`"))?,
        floor: rules
            .get("floor")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no `rules.floor`"))?,
        promoted: rules
            .get("promoted")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let mut candidates = Vec::new();
    let mut recorded_p = Vec::new();
    for c in content
        .get("candidates")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `candidates`"))?
    {
        let f = |k: &str| c.get(k).and_then(Value::as_f64);
        candidates.push(Candidate {
            name: c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a candidate without `name`"))?
                .to_string(),
            alpha: f("alpha").ok_or_else(|| bad("a candidate without `alpha`"))?,
            beta: f("beta").ok_or_else(|| bad("a candidate without `beta`"))?,
            samples: c
                .get("samples")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("a candidate without `samples`"))?,
            dropped: c.get("dropped").and_then(Value::as_bool).unwrap_or(false),
        });
        recorded_p.push(f("probability").unwrap_or(f64::NAN));
    }
    let recorded = content
        .get("chosen")
        .and_then(Value::as_str)
        .map(str::to_string);
    let again = choose(&candidates, &rules, seed, None);
    let same_p = again
        .probabilities
        .iter()
        .zip(&recorded_p)
        .all(|(a, b)| (a - b).abs() < 1e-9);
    let same_draw = content
        .get("draw")
        .and_then(Value::as_f64)
        .is_some_and(|d| d == again.draw);
    if again.chosen != recorded || !same_p || !same_draw {
        return Err(ReplayError::Differs {
            recorded,
            replayed: again.chosen,
        });
    }
    Ok(again.chosen)
}

// ---------------------------------------------------------------------------------------------
// The runtime.

/// One variant as `logline variants status` and `GET /api/variants` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VariantStatus {
    pub name: String,
    /// Offered to new conversations (eligible and not dropped).
    pub eligible: bool,
    pub samples: u64,
    pub mean_reward: Option<f64>,
    pub alpha: f64,
    pub beta: f64,
    /// The chance a new conversation gets it now.
    pub probability: f64,
    pub dropped: bool,
    /// Failures over samples since the last guardrail event.
    pub recent_failures: u64,
    pub recent_samples: u64,
}

/// The bandit's state as of its last refresh.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub variants: Vec<VariantStatus>,
    pub promoted: Option<String>,
}

/// What one refresh read and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub spans_read: usize,
    pub runs: usize,
    pub feedback: usize,
    pub dropped: Vec<String>,
}

struct Cache {
    generation: u64,
    names: Vec<String>,
    best: Vec<f64>,
}

struct Inner {
    learner: Learner,
    /// The last ingest id folded in.
    cursor: i64,
    cache: Option<Cache>,
    refreshed_at: Option<Instant>,
    pruned_at: Option<Instant>,
}

/// The node's bandit: posteriors folded in from the ledger incrementally, choices from memory.
pub struct Bandit {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// One refresh at a time (a refresh writes guardrail spans).
    refreshing: tokio::sync::Mutex<()>,
}

impl Bandit {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            inner: Mutex::new(Inner {
                learner: Learner::default(),
                cursor: 0,
                cache: None,
                refreshed_at: None,
                pruned_at: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counts that are still counts.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the posteriors are older than the config allows (or were never read).
    pub fn stale(&self, cfg: &BanditConfig) -> bool {
        self.lock()
            .refreshed_at
            .is_none_or(|t| t.elapsed() >= cfg.interval)
    }

    /// Whether a refresh is running now.
    pub fn refreshing(&self) -> bool {
        self.refreshing.try_lock().is_err()
    }

    /// Folds in every span appended since the last refresh, writes the guardrail's due drops
    /// (and folds them in), and forgets runs past the feedback window.
    pub async fn refresh(&self, cfg: &BanditConfig) -> Result<Refreshed, StoreError> {
        let _one = self.refreshing.lock().await;
        let mut report = Refreshed::default();
        self.catch_up(cfg, &mut report).await?;
        let due = self.lock().learner.guardrail_due(cfg);
        if !due.is_empty() {
            let drafts = due
                .iter()
                .map(|d| guardrail_draft(d, cfg))
                .collect::<Result<Vec<_>, _>>()?;
            for r in store::append(self.store.as_ref(), &system_principal(), drafts).await? {
                r?;
            }
            report.dropped = due.into_iter().map(|d| d.variant).collect();
            self.catch_up(cfg, &mut report).await?;
        }
        let mut inner = self.lock();
        // Forgetting settled runs walks them all: once a minute is enough.
        if inner
            .pruned_at
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
        {
            inner.learner.prune(Utc::now(), cfg);
            inner.pruned_at = Some(Instant::now());
        }
        inner.refreshed_at = Some(Instant::now());
        Ok(report)
    }

    async fn catch_up(&self, cfg: &BanditConfig, report: &mut Refreshed) -> Result<(), StoreError> {
        loop {
            let cursor = self.lock().cursor;
            let rows = self.store.tail(cursor, TAIL_PAGE).await?;
            let Some(last) = rows.last().map(|r| r.ingest_id) else {
                return Ok(());
            };
            // Parsing is the costly part; the lock a turn's choice waits on is held only to apply.
            let events: Vec<Event> = rows.iter().filter_map(parse).collect();
            let mut inner = self.lock();
            for e in &events {
                apply(&mut inner.learner, e, cfg, report);
            }
            report.spans_read += rows.len();
            inner.cursor = last;
            if (rows.len() as i64) < TAIL_PAGE {
                return Ok(());
            }
        }
    }

    /// A choice among `eligible` for a new conversation (no I/O).
    pub fn choose(
        &self,
        eligible: &[String],
        cfg: &BanditConfig,
        seed: u64,
    ) -> (Vec<Candidate>, Rules, Choice) {
        let mut inner = self.lock();
        let candidates = inner.learner.candidates(eligible);
        let rules = Rules {
            warmup_samples: cfg.warmup_samples,
            floor: cfg.floor,
            promoted: inner.learner.promoted().map(str::to_string),
        };
        let best = best_cached(&mut inner, &candidates);
        let choice = choose(&candidates, &rules, seed, Some(&best));
        (candidates, rules, choice)
    }

    /// Every eligible variant and every variant with samples, with the probability a new
    /// conversation would get each now.
    pub fn status(&self, eligible: &[String], cfg: &BanditConfig) -> Status {
        let mut inner = self.lock();
        let mut names: Vec<String> = eligible.to_vec();
        for n in inner.learner.arms().keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let offered: Vec<Candidate> = inner.learner.candidates(eligible);
        let rules = Rules {
            warmup_samples: cfg.warmup_samples,
            floor: cfg.floor,
            promoted: inner.learner.promoted().map(str::to_string),
        };
        let best = best_cached(&mut inner, &offered);
        let probs = choose(&offered, &rules, 0, Some(&best)).probabilities;
        let variants = names
            .iter()
            .map(|name| {
                let a = inner.learner.arm(name);
                let at = eligible.iter().position(|e| e == name);
                VariantStatus {
                    name: name.clone(),
                    eligible: at.is_some() && !a.dropped,
                    samples: a.samples,
                    mean_reward: a.mean_reward(),
                    alpha: a.alpha(),
                    beta: a.beta(),
                    probability: at.map_or(0.0, |i| probs[i]),
                    dropped: a.dropped,
                    recent_failures: a.recent_failures,
                    recent_samples: a.recent_samples,
                }
            })
            .collect();
        Status {
            variants,
            promoted: inner.learner.promoted().map(str::to_string),
        }
    }

    /// The learner as of the last refresh (for tests and the status table).
    pub fn learner(&self) -> Learner {
        self.lock().learner.clone()
    }
}

/// `P(best)` over the candidates not dropped, recomputed only when the posteriors or the
/// candidate set changed since the last call.
fn best_cached(inner: &mut Inner, candidates: &[Candidate]) -> Vec<f64> {
    let generation = inner.learner.generation();
    let names: Vec<String> = candidates
        .iter()
        .filter(|c| !c.dropped)
        .map(|c| c.name.clone())
        .collect();
    if let Some(c) = &inner.cache
        && c.generation == generation
        && c.names == names
    {
        return c.best.clone();
    }
    let params: Vec<(f64, f64)> = candidates
        .iter()
        .filter(|c| !c.dropped)
        .map(|c| (c.alpha, c.beta))
        .collect();
    let best = p_best(&params);
    inner.cache = Some(Cache {
        generation,
        names,
        best: best.clone(),
    });
    best
}

/// What one span tells the bandit (parsed outside the lock, applied under it).
#[derive(Clone, Debug, PartialEq)]
enum Event {
    Run {
        id: Uuid,
        variant: String,
        at: DateTime<Utc>,
        tenant: String,
        owner: String,
        facts: RunFacts,
    },
    Eval {
        run: Uuid,
        pass: bool,
    },
    Feedback {
        run: Uuid,
        tenant: String,
        owner: String,
        at: DateTime<Utc>,
        score: f64,
    },
    Promotion(Option<String>),
    Guardrail {
        variant: String,
        dropped: bool,
    },
}

/// Reads one span as an event: prompt runs, eval cases, feedback, and the system tenant's
/// promotions and guardrail events (only the node writes there, so only those count).
fn parse(row: &ledger::query::TailRow) -> Option<Event> {
    // The envelope says what it is; only the few kinds read here are parsed further.
    let env = serde_json::from_str::<Value>(&row.span.envelope).ok()?;
    let kind = env.get("entity_type").and_then(Value::as_str).unwrap_or("");
    let system = row.tenant_id == SYSTEM_TENANT;
    match kind {
        "prompt_run" | "eval_case" | FEEDBACK => {}
        PROMOTION | GUARDRAIL if system => {}
        _ => return None,
    }
    let view = row.span.to_view().ok()?;
    let content = view.get("content").cloned().unwrap_or(Value::Null);
    let at = view
        .get("at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.to_utc());
    let str_of = |k: &str| content.get(k).and_then(Value::as_str);
    let uuid_of = |k: &str| str_of(k).and_then(|s| s.parse::<Uuid>().ok());
    Some(match kind {
        "prompt_run" => Event::Run {
            id: view
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Uuid>().ok())?,
            variant: str_of("variant")?.to_string(),
            at: at?,
            tenant: row.tenant_id.clone(),
            owner: row.owner_id.clone(),
            facts: RunFacts {
                outcome: str_of("outcome").and_then(RunOutcome::parse)?,
                repaired: content.get("repaired").and_then(Value::as_bool) == Some(true),
                latency_ms: content
                    .get("latency_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            },
        },
        "eval_case" => Event::Eval {
            run: uuid_of("prompt_run")?,
            pass: content.get("pass").and_then(Value::as_bool)?,
        },
        FEEDBACK => Event::Feedback {
            run: uuid_of("run_id")?,
            tenant: row.tenant_id.clone(),
            owner: row.owner_id.clone(),
            at: at?,
            score: content.get("score").and_then(feedback_score)?,
        },
        PROMOTION => Event::Promotion(str_of("variant").map(str::to_string)),
        _ => Event::Guardrail {
            variant: str_of("variant")?.to_string(),
            dropped: str_of("action") == Some("dropped"),
        },
    })
}

/// Applies one event to the learner.
fn apply(l: &mut Learner, e: &Event, cfg: &BanditConfig, report: &mut Refreshed) {
    match e {
        Event::Run {
            id,
            variant,
            at,
            tenant,
            owner,
            facts,
        } => {
            l.observe_run(*id, variant, *at, tenant, owner, facts, cfg);
            report.runs += 1;
        }
        Event::Eval { run, pass } => l.observe_eval(*run, *pass),
        Event::Feedback {
            run,
            tenant,
            owner,
            at,
            score,
        } => {
            if l.observe_feedback(*run, tenant, owner, *at, *score, cfg) {
                report.feedback += 1;
            }
        }
        Event::Promotion(v) => l.observe_promotion(v.clone()),
        Event::Guardrail { variant, dropped } => l.observe_guardrail(variant, *dropped),
    }
}

/// The span saying the guardrail dropped a variant (system tenant, signed by the node; one per
/// variant and epoch, however many processes notice it).
fn guardrail_draft(d: &Drop, cfg: &BanditConfig) -> Result<Draft, StoreError> {
    let rate = d.failures as f64 / d.samples.max(1) as f64;
    let now = Utc::now();
    Ok(Draft::from_value(
        json!({
            "entity_type": GUARDRAIL,
            "visibility": "tenant",
            "idempotency_key": format!("prompt_bandit:guardrail:{}:{}", d.variant, d.epoch),
            "name": d.variant,
            "when": format_time(now),
            "who": "kernel:prompt_bandit",
            "did": "dropped a prompt variant",
            "this": format!("variant {}", d.variant),
            "confirmed_by": "the guardrail of the prompt_bandit kernel",
            "if_ok": "new conversations no longer get this variant",
            "if_doubt": "an operator may readmit it (logline variants readmit)",
            "if_not": "keep offering it",
            "status": "dropped",
            "content": {
                "variant": d.variant,
                "action": "dropped",
                "samples": d.samples,
                "failures": d.failures,
                "failure_rate": rate,
                "limit": cfg.guardrail_failure_rate,
                "min_samples": cfg.guardrail_min_samples,
            },
        }),
        &system_principal(),
        &[],
        now,
    )?)
}

/// The span that promotes `variant` (or, `None`, clears the promotion): explicit, signed by the
/// node in the system tenant, never written by the bandit itself.
pub fn promotion_draft(
    variant: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Draft, StoreError> {
    Ok(Draft::from_value(
        json!({
            "entity_type": PROMOTION,
            "visibility": "tenant",
            "name": variant,
            "when": format_time(now),
            "who": by,
            "did": if variant.is_some() { "promoted a prompt variant" } else { "cleared the prompt variant promotion" },
            "this": variant.map_or("no variant".to_string(), |v| format!("variant {v}")),
            "confirmed_by": by,
            "if_ok": "every new conversation gets this variant",
            "if_doubt": "clear it (logline variants clear)",
            "if_not": "the bandit chooses",
            "status": if variant.is_some() { "promoted" } else { "cleared" },
            "content": {"variant": variant},
        }),
        &system_principal(),
        &[],
        now,
    )?)
}

/// The span that readmits a dropped variant with fresh guardrail counts.
pub fn readmission_draft(variant: &str, by: &str, now: DateTime<Utc>) -> Result<Draft, StoreError> {
    Ok(Draft::from_value(
        json!({
            "entity_type": GUARDRAIL,
            "visibility": "tenant",
            "name": variant,
            "when": format_time(now),
            "who": by,
            "did": "readmitted a prompt variant",
            "this": format!("variant {variant}"),
            "confirmed_by": by,
            "if_ok": "new conversations may get it again; the guardrail counts afresh",
            "if_doubt": "the guardrail drops it again",
            "if_not": "it stays dropped",
            "status": "readmitted",
            "content": {"variant": variant, "action": "readmitted"},
        }),
        &system_principal(),
        &[],
        now,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, a: f64, b: f64, samples: u64) -> Candidate {
        Candidate {
            name: name.into(),
            alpha: a,
            beta: b,
            samples,
            dropped: false,
        }
    }

    #[test]
    fn the_generator_is_a_pure_function_of_its_seed_and_beta_draws_have_the_right_mean() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(42);
        let n = 20_000;
        let mean = (0..n).map(|_| r.beta(8.0, 2.0)).sum::<f64>() / n as f64;
        assert!((mean - 0.8).abs() < 0.01, "{mean}");
        let mean = (0..n).map(|_| r.beta(0.5, 0.5)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn p_best_matches_monte_carlo_and_sums_to_one() {
        let params = [(30.0, 10.0), (20.0, 20.0), (5.0, 3.0)];
        let p = p_best(&params);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut r = Rng::new(1);
        let mut wins = [0u32; 3];
        let n = 40_000;
        for _ in 0..n {
            let t: Vec<f64> = params.iter().map(|&(a, b)| r.beta(a, b)).collect();
            let best = (0..3).fold(0, |m, i| if t[i] > t[m] { i } else { m });
            wins[best] += 1;
        }
        for i in 0..3 {
            let mc = f64::from(wins[i]) / f64::from(n);
            assert!((p[i] - mc).abs() < 0.01, "{i}: {} vs {mc}", p[i]);
        }
        // Equal posteriors: equal chances.
        let p = p_best(&[(3.0, 4.0), (3.0, 4.0)]);
        assert!((p[0] - 0.5).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn derived_rewards_follow_the_documented_formula() {
        let f = |outcome, repaired, latency_ms| {
            derived_reward(
                &RunFacts {
                    outcome,
                    repaired,
                    latency_ms,
                },
                1000,
            )
        };
        assert_eq!(f(RunOutcome::Answered, false, 10), Some(1.0));
        assert_eq!(f(RunOutcome::Answered, true, 10), Some(0.75));
        assert_eq!(f(RunOutcome::Answered, false, 1500), Some(0.875));
        assert_eq!(f(RunOutcome::Answered, true, 9000), Some(0.5));
        assert_eq!(f(RunOutcome::Escalated, false, 0), Some(0.5));
        assert_eq!(f(RunOutcome::Unsupported, false, 0), Some(0.2));
        assert_eq!(f(RunOutcome::InsufficientEvidence, true, 5000), Some(0.0));
        assert_eq!(f(RunOutcome::ProviderError, false, 0), None);
        assert_eq!(feedback_score(&json!("up")), Some(1.0));
        assert_eq!(feedback_score(&json!(0.3)), Some(0.3));
        assert_eq!(feedback_score(&json!(1.5)), None);
        assert_eq!(feedback_score(&json!("meh")), None);
    }

    #[test]
    fn feedback_replaces_the_derived_reward_only_from_the_asker_within_the_window() {
        let cfg = BanditConfig::default();
        let mut l = Learner::default();
        let run = Uuid::now_v7();
        let t0 = Utc::now();
        let facts = RunFacts {
            outcome: RunOutcome::Answered,
            repaired: false,
            latency_ms: 10,
        };
        l.observe_run(run, "brief", t0, "t", "ana", &facts, &cfg);
        assert_eq!(l.arm("brief").reward_sum, 1.0);
        assert!(
            !l.observe_feedback(run, "t", "eve", t0, 0.0, &cfg),
            "another user"
        );
        assert!(
            !l.observe_feedback(run, "u", "ana", t0, 0.0, &cfg),
            "another tenant"
        );
        let late = t0 + chrono::TimeDelta::days(8);
        assert!(
            !l.observe_feedback(run, "t", "ana", late, 0.0, &cfg),
            "too late"
        );
        assert!(l.observe_feedback(run, "t", "ana", t0, 0.0, &cfg));
        let a = l.arm("brief");
        assert_eq!((a.samples, a.reward_sum, a.failures), (1, 0.0, 1));
        // A second vote supersedes the first; an eval verdict does not override feedback.
        assert!(l.observe_feedback(run, "t", "ana", t0, 1.0, &cfg));
        l.observe_eval(run, false);
        let a = l.arm("brief");
        assert_eq!((a.samples, a.reward_sum, a.failures), (1, 1.0, 0));
        assert_eq!((a.alpha(), a.beta()), (2.0, 1.0));
    }

    #[test]
    fn a_promotion_wins_warmup_is_uniform_and_dropped_variants_get_nothing() {
        let rules = Rules {
            warmup_samples: 5,
            floor: 0.05,
            promoted: None,
        };
        let cands = vec![cand("a", 9.0, 1.0, 10), cand("b", 1.0, 1.0, 0)];
        let c = choose(&cands, &rules, 3, None);
        assert!((c.probabilities[0] - 0.05).abs() < 1e-12, "{c:?}");
        assert!((c.probabilities[1] - 0.95).abs() < 1e-12, "{c:?}");
        let promoted = Rules {
            promoted: Some("a".into()),
            ..rules.clone()
        };
        for seed in 0..50 {
            let c = choose(&cands, &promoted, seed, None);
            assert_eq!((c.chosen.as_deref(), c.mode), (Some("a"), Mode::Promoted));
        }
        let mut dropped = cands.clone();
        dropped[1].dropped = true;
        for seed in 0..50 {
            assert_eq!(
                choose(&dropped, &rules, seed, None).chosen.as_deref(),
                Some("a")
            );
        }
        dropped[0].dropped = true;
        assert_eq!(choose(&dropped, &rules, 1, None).mode, Mode::NoneEligible);
    }

    #[test]
    fn a_recorded_selection_replays_and_a_tampered_one_does_not() {
        let rules = Rules {
            warmup_samples: 2,
            floor: 0.1,
            promoted: None,
        };
        let cands = vec![cand("default", 12.0, 4.0, 14), cand("brief", 6.0, 8.0, 12)];
        for seed in [1u64, 99, 0xdead_beef, u64::MAX] {
            let c = choose(&cands, &rules, seed, None);
            let content = selection_content(Uuid::now_v7(), &cands, &rules, &c);
            // Through JSON text, as the ledger stores it.
            let content: Value = serde_json::from_str(&content.to_string()).unwrap();
            assert_eq!(replay(&content).unwrap(), c.chosen);
            let mut forged = content.clone();
            let other = if c.chosen.as_deref() == Some("brief") {
                "default"
            } else {
                "brief"
            };
            forged["chosen"] = json!(other);
            assert!(matches!(replay(&forged), Err(ReplayError::Differs { .. })));
        }
    }
}
