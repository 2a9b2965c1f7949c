//! The `policy_agent` kernel (DESIGN §5; seed 001, §12.4): runs every active `policy` span over
//! the spans that arrive after it, with a durable cursor per policy, and turns what a policy
//! asks for into actions, or into a `policy_error` span when it fails.
//!
//! # Policies
//!
//! A policy is a `policy` span with `status = "active"` and visibility `tenant` or `public` (the
//! agent finds policies in each tenant as a tenant member would; a private policy is invisible
//! to it). Only its newest seq counts. Its `content` says how it decides:
//!
//! - `{"language": "javascript", "source": "function on(span, ctx) { return [...] }"}` (or the
//!   body field `code`): `on` runs in the [`crate::sandbox`] with the kernel's limits, once per
//!   span, and returns an array of actions (or `null`). `ctx.query`, `ctx.now` and `ctx.log` work
//!   as in `run_code`, as the policy's owner; `ctx.append` is refused, because a policy acts
//!   through its actions, which the agent makes idempotent.
//! - `{"language": "law", "source": "law …", "actions": {"notify(role=ops)": [...], "tag": [...]}}`:
//!   the law ([`ledger::law`], `clock:` absent or `realtime`) is evaluated with the span's JSON
//!   view as its variables and `now` = the agent's clock; a `scope:` restricts it to spans of
//!   that `entity_type`. Each action of the winning block's `then:` is mapped through
//!   `content.actions`, keyed by the action's text (`notify(role=ops)`) or its name (`notify`),
//!   to policy actions; `append_ledger` also writes a `policy_decision` span recording the
//!   triage, the actions and the variables read.
//! - `content.from = "beginning"` makes a new policy read the tenant's history; by default it
//!   starts after its own first version.
//!
//! # Actions
//!
//! - `{"run": "<function id>", "input": …}` runs a `function` span through [`RunCode`] as the
//!   policy's owner, with the triggering span as input unless `input` is given (the seed's
//!   `{"run": "run_code", "span_id": "<function id>"}` is accepted too). A `policy_run` span with
//!   an idempotency key is appended before the run and a second seq after it naming the
//!   execution: whoever appends the first runs the function, so a function runs at most once per
//!   (policy, span, action) even when two processes race or one re-does a batch.
//! - `{"emit_span": {...}}` appends the span as the policy's owner in its tenant, with the
//!   policy's visibility, `when` = now, `related_to` = [policy, span] and the idempotency key
//!   `policy:<policy>:<span>:<seq>:<n>` unless it sets them.
//!
//! All of a span's actions are checked before any is applied: one bad action makes the span a
//! `policy_error` and nothing else. Exceptions, time and memory limits, a result that is not an
//! array of actions, and actions the ledger refuses are `policy_error` spans too (idempotent per
//! span and action), and the cursor moves on. A policy that cannot run at all (its source does
//! not compile, defines no `on`, its law does not parse, its span does not verify) gets one
//! `policy_error` per policy seq and its cursor stays put until a new seq fixes it.
//!
//! # What a policy sees
//!
//! The spans of its own tenant that its owner may see, in the store's ingest order, except
//! `policy_cursor` spans, its own span, what it wrote itself (idempotency key or trace id under
//! `policy:<its id>:`) and the executions of functions it ran. Public spans of other tenants are
//! not fed to it: within a tenant, appends are serialised by the chain lock, so ingest order is
//! commit order and a cursor on it can neither skip nor repeat a span; across tenants it is not.
//!
//! # The cursor, exactly once
//!
//! Each policy has one `policy_cursor` span (opened under the idempotency key
//! `policy_cursor:<policy id>`, as the owner) whose content holds `after`, the ingest position
//! of the last span done. A batch is taken like `run_code` takes a quota slot: the agent appends
//! the cursor's next seq with a `claim` (through which position, by whom, until when); the store
//! checks `seq` inside its writing transaction, so of several processes only one gets the batch.
//! The winner processes it and appends the next seq with `after` moved and no claim. A process
//! that dies leaves a claim that expires after `lease_ms`; the next taker re-does the batch, and
//! the idempotency keys make every effect land once. A batch stops early at half the lease and
//! commits what it did, so a slow policy never outlives its claim.
//!
//! A batch holding only spans the policy passes over is read past without a claim or a commit
//! (the position is kept in memory), so an idle policy writes nothing and its own cursor
//! versions never feed the next pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::error::AppendError;
use ledger::law::{self, Action, Clock as LawClock, Composition, Decision, Law};
use ledger::query::MAX_LIMIT;
use ledger::span::format_time;
use ledger::store::{self, SYSTEM_TENANT};
use ledger::verify::verify_span;
use ledger::{Appended, Draft, Filter, Order, Principal, Store, StoreError};
use serde_json::{Map, Value, json};
use thiserror::Error;
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::kernel::Kernel;
use crate::kernel::policy_agent::PolicyAgentKernel;
pub use crate::kernel::policy_agent::{PolicyAgentConfig, default_config};
use crate::run_code::{self, Outcome, RunCode};
use crate::sandbox::{Clock, Host, LedgerHost, Limits, RunError, Sandbox};
use crate::stage0::{self, State};

/// The `entity_type` of policies.
pub const POLICY: &str = "policy";
/// The `entity_type` of the per-policy cursors.
pub const CURSOR: &str = "policy_cursor";
/// The `entity_type` of failures.
pub const POLICY_ERROR: &str = "policy_error";
/// The `entity_type` a law policy's `append_ledger` writes.
pub const DECISION: &str = "policy_decision";
/// The `entity_type` of the marker written before a `run` action.
pub const RUN: &str = "policy_run";
/// The user the agent looks for policies as, in each tenant.
pub const AGENT_USER: &str = "policy_agent";
/// Most actions one span may produce.
pub const MAX_ACTIONS: usize = 100;

/// Thrown by the wrapper when the source defines no `on`; read back as a policy-level failure.
const NO_ON: &str = "policy defines no function on(span, ctx)";

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("policy_agent is not running: {0}")]
    KernelRefused(String),
    #[error("cannot record the {what} span: {reason}")]
    Record { what: &'static str, reason: String },
    #[error("the cursor of policy {policy} is unreadable: {reason}")]
    Cursor { policy: Uuid, reason: String },
    #[error(transparent)]
    Stage0(#[from] stage0::Stage0Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did, with timings for the benchmark.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Active policies found.
    pub policies: usize,
    /// Spans a policy was evaluated on.
    pub evaluated: usize,
    /// Spans passed over (bookkeeping, the policy's own output).
    pub skipped: usize,
    /// Actions applied (spans emitted, functions run, decisions recorded).
    pub actions: usize,
    /// `policy_error` spans written now.
    pub errors: usize,
    /// Batches another process held.
    pub busy: usize,
    /// Milliseconds each evaluation took (`on(span)` or the law), in order.
    pub eval_ms: Vec<f64>,
    /// Milliseconds each evaluated span took in all (evaluation and actions).
    pub span_ms: Vec<f64>,
}

impl PassReport {
    fn merge(&mut self, other: Self) {
        self.policies += other.policies;
        self.evaluated += other.evaluated;
        self.skipped += other.skipped;
        self.actions += other.actions;
        self.errors += other.errors;
        self.busy += other.busy;
        self.eval_ms.extend(other.eval_ms);
        self.span_ms.extend(other.span_ms);
    }
}

/// How a policy decides.
enum Program {
    Js(String),
    Law {
        law: Box<Law>,
        bindings: Vec<(Binding, Vec<Value>)>,
    },
}

/// A key of a law policy's `content.actions`.
#[derive(Debug, PartialEq, Eq)]
enum Binding {
    /// Any action of that name (`notify`).
    Name(String),
    /// Exactly that action (`notify(role=ops)`).
    Exact(Action),
}

impl Binding {
    fn matches(&self, a: &Action) -> bool {
        match self {
            Self::Name(n) => action_name(a) == n,
            Self::Exact(e) => e == a,
        }
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Hold { .. } => "hold",
        Action::Terminate { .. } => "terminate",
        Action::Notify { .. } => "notify",
        Action::Tag { .. } => "tag",
        Action::AppendLedger => "append_ledger",
        Action::Permit => "permit",
        Action::Deny => "deny",
    }
}

const ACTION_NAMES: [&str; 8] = [
    "accept",
    "hold",
    "terminate",
    "notify",
    "tag",
    "append_ledger",
    "permit",
    "deny",
];

/// A policy span, read and checked.
struct Policy {
    id: Uuid,
    seq: i64,
    curr_hash: String,
    name: String,
    owner: Principal,
    visibility: String,
    /// Where a new cursor starts.
    start_after: i64,
    /// How it decides, or why it cannot.
    program: Result<Program, Failure>,
}

impl Policy {
    fn cite(&self) -> Value {
        json!({"id": self.id, "seq": self.seq, "curr_hash": self.curr_hash, "name": self.name})
    }

    /// The prefix of every idempotency key and trace id this policy's work carries.
    fn mark(&self) -> String {
        format!("policy:{}:", self.id)
    }
}

/// Why a span (or a whole policy) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Failures that no span can avoid: the policy itself must change.
    fn is_policy_level(&self) -> bool {
        matches!(
            self.kind,
            "compile" | "no_on" | "law_parse" | "unverified" | "bad_policy"
        )
    }
}

/// One checked action, ready to apply.
enum Act {
    Run { function: Uuid, input: Value },
    Emit(Box<Draft>),
    Record(Box<Draft>),
}

/// The cursor's latest version.
struct Cursor {
    id: Uuid,
    seq: i64,
    after: i64,
    claim: Option<Claim>,
}

struct Claim {
    by: String,
    until: DateTime<Utc>,
}

/// The kernel. One per process; it remembers only which cursor span each policy has and how
/// far it has read past bookkeeping.
pub struct PolicyAgent {
    store: Arc<dyn Store>,
    clock: Clock,
    run_code: RunCode,
    /// Names this process in claims.
    instance: String,
    cursors: Mutex<HashMap<Uuid, Uuid>>,
    /// Per policy, a position up to which every span needs nothing: read past, never written.
    passed: Mutex<HashMap<Uuid, i64>>,
}

impl PolicyAgent {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            run_code: RunCode::new(store.clone()),
            store,
            clock: Arc::new(Utc::now),
            instance: format!("pid {} / {}", std::process::id(), Uuid::now_v7()),
            cursors: Mutex::new(HashMap::new()),
            passed: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the wall clock (leases, `now` in laws and `ctx.now()`, the spans' `when`).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.run_code = RunCode::new(self.store.clone()).with_clock(clock.clone());
        self.clock = clock;
        self
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// One pass: asks Stage-0 whether the agent may run (and with which configuration), then
    /// gives every active policy of every tenant one batch.
    #[tracing::instrument(skip_all, name = "policy_agent.pass")]
    pub async fn pass(&self) -> Result<PassReport, PolicyError> {
        let (_, kernel) =
            stage0::inspect_kernel(self.store.as_ref(), PolicyAgentKernel::NAME).await?;
        if kernel.state != State::Ready {
            return Err(PolicyError::KernelRefused(kernel.reason));
        }
        let config = PolicyAgentKernel::read(&kernel.config)
            .map_err(|e| PolicyError::KernelRefused(e.to_string()))?;
        self.pass_with(&config).await
    }

    /// [`Self::pass`] with a given configuration (no Stage-0 check).
    pub async fn pass_with(&self, config: &PolicyAgentConfig) -> Result<PassReport, PolicyError> {
        let mut report = PassReport::default();
        for tenant in self.store.tenants().await? {
            if tenant == SYSTEM_TENANT {
                continue;
            }
            for policy in self.load_policies(&tenant).await? {
                report.policies += 1;
                report.merge(self.run_policy(&policy, config).await?);
            }
        }
        Ok(report)
    }

    /// The newest version of every active policy of the tenant visible to its members.
    async fn load_policies(&self, tenant: &str) -> Result<Vec<Policy>, PolicyError> {
        let store = self.store.as_ref();
        let reader = Principal::new(AGENT_USER, tenant);
        let mut filter = Filter {
            entity_type: Some(POLICY.into()),
            tenant_id: Some(tenant.into()),
            limit: Some(MAX_LIMIT),
            ..Filter::default()
        };
        // id → (ingest id of seq 0, newest row)
        let mut by_id: BTreeMap<Uuid, (Option<i64>, ledger::query::Row, i64)> = BTreeMap::new();
        loop {
            let page = store.query(&reader, &filter).await?;
            for row in page.rows {
                let Some((id, seq)) = id_seq(&row.span.envelope) else {
                    continue;
                };
                let entry = by_id
                    .entry(id)
                    .or_insert_with(|| (None, row.clone(), i64::MIN));
                if seq == 0 {
                    entry.0 = Some(row.ingest_id);
                }
                if seq > entry.2 {
                    entry.2 = seq;
                    entry.1 = row;
                }
            }
            match page.next_cursor {
                Some(c) => filter.after = Some(c),
                None => break,
            }
        }
        let trusted = store::trusted_keys(store).await?;
        let mut out = Vec::new();
        for (id, (first, row, seq)) in by_id {
            let view = match row.span.to_view() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(policy = %id, error = %e, "unreadable policy span skipped");
                    continue;
                }
            };
            if view.get("status").and_then(Value::as_str) != Some("active") {
                continue;
            }
            let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or_default();
            let content = view.get("content").cloned().unwrap_or(Value::Null);
            let program = match verify_span(&row.span, &trusted) {
                Err(e) => Err(Failure::new(
                    "unverified",
                    format!("the policy span does not verify, so it is not run: {e}"),
                )),
                Ok(_) if view.get("redacted") == Some(&Value::Bool(true)) => Err(Failure::new(
                    "bad_policy",
                    "the policy is redacted: there is nothing to run",
                )),
                Ok(_) => program(&view, &content),
            };
            let start_after = if content.get("from").and_then(Value::as_str) == Some("beginning") {
                0
            } else {
                first.unwrap_or(row.ingest_id)
            };
            out.push(Policy {
                id,
                seq,
                curr_hash: row.span.curr_hash.clone(),
                name: view
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("policy {id}"), |n| format!("policy {n}")),
                owner: Principal::new(text("owner_id"), text("tenant_id")),
                visibility: text("visibility").to_string(),
                start_after,
                program,
            });
        }
        Ok(out)
    }

    /// One batch of one policy: claim, evaluate and act, commit.
    #[tracing::instrument(skip_all, fields(policy = %policy.id, seq = policy.seq))]
    async fn run_policy(
        &self,
        policy: &Policy,
        config: &PolicyAgentConfig,
    ) -> Result<PassReport, PolicyError> {
        let mut report = PassReport::default();
        let program = match &policy.program {
            Ok(p) => p,
            Err(f) => {
                report.errors += self.record_error(policy, None, None, f).await?;
                return Ok(report);
            }
        };
        let cursor = self.cursor(policy).await?;
        let now = self.now();
        if let Some(c) = &cursor.claim
            && c.until > now
            && c.by != self.instance
        {
            report.busy += 1;
            return Ok(report);
        }
        // Spans known to need nothing (bookkeeping) are passed over without writing, so an idle
        // policy costs reads only and its own cursor versions never feed another pass.
        let known = self
            .passed
            .lock()
            .ok()
            .and_then(|m| m.get(&policy.id).copied())
            .unwrap_or(i64::MIN);
        let filter = Filter {
            tenant_id: Some(policy.owner.tenant_id.clone()),
            after: Some(cursor.after.max(known)),
            order: Order::Asc,
            limit: Some(config.batch),
            ..Filter::default()
        };
        let rows = self.store.query(&policy.owner, &filter).await?.rows;
        let Some(through) = rows.last().map(|r| r.ingest_id) else {
            return Ok(report);
        };
        let mut work = Vec::with_capacity(rows.len());
        for row in rows {
            let item = match row.span.to_view() {
                Ok(view) if self.passes_over(policy, &view).await? => None,
                Ok(view) => Some(Ok(view)),
                Err(e) => Some(Err(e)),
            };
            work.push((row.ingest_id, id_seq(&row.span.envelope), item));
        }
        if work.iter().all(|(_, _, item)| item.is_none()) {
            report.skipped += work.len();
            if let Ok(mut m) = self.passed.lock() {
                m.insert(policy.id, through);
            }
            return Ok(report);
        }
        let lease = TimeDelta::from_std(config.lease).unwrap_or(TimeDelta::minutes(1));
        let claimed = self
            .advance(
                policy,
                &cursor,
                cursor.seq + 1,
                cursor.after,
                Some(json!({"through": through, "by": self.instance, "until": format_time(now + lease)})),
            )
            .await?;
        if !claimed {
            report.busy += 1;
            return Ok(report);
        }
        let started = Instant::now();
        let mut done = cursor.after;
        for (position, span_ref, item) in work {
            if started.elapsed() > config.lease / 2 {
                tracing::info!(
                    done,
                    "batch stopped at half the lease; the rest goes next pass"
                );
                break;
            }
            let view = match item {
                None => {
                    report.skipped += 1;
                    done = position;
                    continue;
                }
                Some(Ok(view)) => view,
                Some(Err(e)) => {
                    let f = Failure::new("unreadable_span", e);
                    report.errors += self.record_error(policy, span_ref, None, &f).await?;
                    done = position;
                    continue;
                }
            };
            let span_started = Instant::now();
            let eval_started = Instant::now();
            let evaluated = self.evaluate(policy, program, &view, &config.limits).await;
            let eval_ms = eval_started.elapsed().as_secs_f64() * 1000.0;
            let actions = match evaluated {
                Err(f) if f.is_policy_level() => {
                    report.errors += self.record_error(policy, None, None, &f).await?;
                    break;
                }
                Err(f) => Err(f),
                Ok(raw) => self.check_actions(policy, &view, raw),
            };
            match actions {
                Ok(acts) => {
                    let (applied, errors) = self.apply(policy, &view, acts).await?;
                    report.actions += applied;
                    report.errors += errors;
                }
                Err(f) => report.errors += self.record_error(policy, span_ref, None, &f).await?,
            }
            report.evaluated += 1;
            report.eval_ms.push(eval_ms);
            report
                .span_ms
                .push(span_started.elapsed().as_secs_f64() * 1000.0);
            done = position;
        }
        if !self
            .advance(policy, &cursor, cursor.seq + 2, done, None)
            .await?
        {
            tracing::warn!(
                "the claim lapsed before the batch was committed; another process re-does it (idempotently)"
            );
        }
        Ok(report)
    }

    /// Whether the policy passes over this span: bookkeeping, itself, or its own doing.
    async fn passes_over(&self, policy: &Policy, view: &Value) -> Result<bool, PolicyError> {
        let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or_default();
        let mark = policy.mark();
        if text("entity_type") == CURSOR
            || text("id") == policy.id.to_string()
            || text("idempotency_key").starts_with(&mark)
            || text("trace_id").starts_with(&mark)
        {
            return Ok(true);
        }
        if text("entity_type") != "execution" {
            return Ok(false);
        }
        // An execution of a function this policy ran: its `policy_run` marker names it.
        let Ok(execution) = Uuid::parse_str(text("id")) else {
            return Ok(false);
        };
        let filter = Filter {
            entity_type: Some(RUN.into()),
            related_to: Some(execution),
            limit: Some(10),
            ..Filter::default()
        };
        let page = self.store.query(&policy.owner, &filter).await?;
        Ok(page.rows.iter().any(|r| {
            r.span.to_view().is_ok_and(|v| {
                v.pointer("/content/policy/id").and_then(Value::as_str)
                    == Some(policy.id.to_string().as_str())
            })
        }))
    }

    /// Runs the policy on one span: the raw actions it asks for.
    async fn evaluate(
        &self,
        policy: &Policy,
        program: &Program,
        view: &Value,
        limits: &Limits,
    ) -> Result<Evaluated, Failure> {
        match program {
            Program::Js(source) => {
                let host = PolicyHost(
                    LedgerHost::new(self.store.clone(), policy.owner.clone(), Handle::current())
                        .with_clock(self.clock.clone()),
                );
                let out = Sandbox::run(source, view.clone(), Arc::new(host), limits.clone())
                    .await
                    .map_err(|e| js_failure(&e))?;
                match out.output {
                    Value::Null => Ok(Evaluated::default()),
                    Value::Array(actions) => Ok(Evaluated {
                        actions,
                        record: None,
                    }),
                    other => Err(Failure::new(
                        "bad_result",
                        format!(
                            "on(span) must return an array of actions (or null), not {}",
                            kind_of(&other)
                        ),
                    )),
                }
            }
            Program::Law { law, bindings } => {
                if let Some(scope) = &law.scope
                    && view.get("entity_type").and_then(Value::as_str) != Some(scope.as_str())
                {
                    return Ok(Evaluated::default());
                }
                let decision = law::evaluate(law, view, self.now());
                let mut out = Evaluated::default();
                for action in &decision.actions {
                    for (binding, acts) in bindings {
                        if binding.matches(action) {
                            out.actions.extend(acts.iter().cloned());
                        }
                    }
                }
                if decision.actions.contains(&Action::AppendLedger) {
                    out.record = Some(decision_span(policy, law, view, &decision));
                }
                Ok(out)
            }
        }
    }

    /// Checks every action of a span before any is applied.
    fn check_actions(
        &self,
        policy: &Policy,
        view: &Value,
        evaluated: Evaluated,
    ) -> Result<Vec<Act>, Failure> {
        let raw = evaluated.actions;
        if raw.len() > MAX_ACTIONS {
            return Err(Failure::new(
                "bad_action",
                format!(
                    "{} actions for one span, over the limit of {MAX_ACTIONS}",
                    raw.len()
                ),
            ));
        }
        let (sid, sseq) = view_id_seq(view);
        let now = self.now();
        let mut acts = raw
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let key = format!("{}{sid}:{sseq}:{i}", policy.mark());
                check_action(policy, view, i, a, &key, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(Value::Object(span)) = evaluated.record {
            let key = format!("{}{sid}:{sseq}:decision", policy.mark());
            let draft = emit_draft(policy, view, span, &key, now)
                .map_err(|m| Failure::new("bad_action", format!("the decision span: {m}")))?;
            acts.push(Act::Record(Box::new(draft)));
        }
        Ok(acts)
    }
}

fn check_action(
    policy: &Policy,
    view: &Value,
    i: usize,
    action: Value,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Act, Failure> {
    let bad = |m: String| Failure::new("bad_action", format!("action {i}: {m}"));
    let Value::Object(mut obj) = action else {
        return Err(bad(format!(
            "an action is an object such as {{\"run\": \"<function id>\"}} or {{\"emit_span\": {{…}}}}, not {}",
            kind_of(&action)
        )));
    };
    if let Some(span) = obj.remove("emit_span") {
        if !obj.is_empty() {
            let extra: Vec<&String> = obj.keys().collect();
            return Err(bad(format!("unknown fields {extra:?} next to emit_span")));
        }
        let Value::Object(span) = span else {
            return Err(bad("emit_span must be a span object".into()));
        };
        return emit_draft(policy, view, span, key, now)
            .map(|d| Act::Emit(Box::new(d)))
            .map_err(bad);
    }
    let Some(run) = obj.remove("run") else {
        return Err(bad(format!(
            "unknown action {:?}: use run or emit_span",
            obj.keys().collect::<Vec<_>>()
        )));
    };
    let span_id = obj.remove("span_id");
    let input = obj.remove("input");
    if !obj.is_empty() {
        let extra: Vec<&String> = obj.keys().collect();
        return Err(bad(format!("unknown fields {extra:?} next to run")));
    }
    let target = match (run.as_str(), span_id.as_ref().and_then(Value::as_str)) {
        (Some("run_code"), Some(id)) => id.to_string(),
        (Some(id), None) => id.to_string(),
        _ => {
            return Err(bad(
                "run takes a function span id (or \"run_code\" with span_id)".into(),
            ));
        }
    };
    let function = Uuid::parse_str(&target)
        .map_err(|_| bad(format!("`{target}` is not a function span id")))?;
    Ok(Act::Run {
        function,
        input: input.unwrap_or_else(|| view.clone()),
    })
}

impl PolicyAgent {
    /// Applies a span's checked actions; returns (applied, errors recorded).
    async fn apply(
        &self,
        policy: &Policy,
        view: &Value,
        acts: Vec<Act>,
    ) -> Result<(usize, usize), PolicyError> {
        let span_ref = Some(view_id_seq(view));
        let (mut applied, mut errors) = (0, 0);
        for (i, act) in acts.into_iter().enumerate() {
            let result = match act {
                Act::Emit(draft) | Act::Record(draft) => self.append(&policy.owner, *draft).await?,
                Act::Run { function, input } => {
                    self.run_function(policy, view, i, function, input).await?
                }
            };
            match result {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(reason) => {
                    let f = Failure::new("action_failed", format!("action {i}: {reason}"));
                    errors += self.record_error(policy, span_ref, Some(i), &f).await?;
                }
            }
        }
        Ok((applied, errors))
    }

    /// A `run` action: marker, run, marker's second seq. `Ok(false)` when someone already ran it.
    async fn run_function(
        &self,
        policy: &Policy,
        view: &Value,
        i: usize,
        function: Uuid,
        input: Value,
    ) -> Result<Result<bool, String>, PolicyError> {
        let (sid, sseq) = view_id_seq(view);
        let now = format_time(self.now());
        let marker = |seq_fields: Value| {
            let mut v = json!({
                "entity_type": RUN,
                "visibility": policy.visibility,
                "trace_id": format!("{}{sid}", policy.mark()),
                "when": now,
                "who": AGENT_USER,
                "did": "ran a function",
                "this": format!("function {function}"),
                "confirmed_by": policy.name,
                "if_ok": "keep the execution",
                "if_doubt": "look at the execution",
                "if_not": "look at the policy_error",
            });
            for (k, x) in seq_fields.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v
        };
        let content = json!({"policy": policy.cite(), "span": {"id": sid, "seq": sseq},
                             "function": function, "action": i});
        let first = marker(json!({
            "idempotency_key": format!("{}{sid}:{sseq}:{i}", policy.mark()),
            "related_to": [policy.id, sid, function],
            "status": "started",
            "content": content,
        }));
        let draft = Draft::from_value(first, &policy.owner, &[], self.now()).map_err(|e| {
            PolicyError::Record {
                what: RUN,
                reason: e.to_string(),
            }
        })?;
        let opened = match store::append(self.store.as_ref(), &policy.owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(a)) if a.duplicate => return Ok(Ok(false)),
            Some(Ok(a)) => a,
            Some(Err(e)) => return Ok(Err(format!("cannot record the run: {e}"))),
            None => return Err(no_result(RUN)),
        };
        let (status, execution, problem) =
            match self.run_code.run(&policy.owner, function, input).await {
                Ok(Outcome::Executed { execution, ok, .. }) => (
                    if ok { "done" } else { "failed" },
                    execution.get("id").cloned(),
                    None,
                ),
                Ok(Outcome::Blocked { violation }) => {
                    ("blocked", violation.get("id").cloned(), None)
                }
                Err(e @ run_code::RunCodeError::Store(_)) => {
                    return Err(PolicyError::Record {
                        what: RUN,
                        reason: e.to_string(),
                    });
                }
                Err(e) => ("refused", None, Some(e.to_string())),
            };
        let mut related = vec![json!(policy.id), json!(sid), json!(function)];
        related.extend(execution.clone());
        let mut content = content;
        content["execution"] = execution.unwrap_or(Value::Null);
        if let Some(p) = &problem {
            content["error"] = json!(p);
        }
        let second = marker(json!({
            "id": opened.id,
            "seq": opened.seq + 1,
            "related_to": related,
            "status": status,
            "content": content,
        }));
        let draft = Draft::from_value(second, &policy.owner, &[], self.now()).map_err(|e| {
            PolicyError::Record {
                what: RUN,
                reason: e.to_string(),
            }
        })?;
        if let Err(e) = self.append(&policy.owner, draft).await? {
            tracing::warn!(error = %e, "the run's outcome was not recorded on its marker");
        }
        Ok(match problem {
            Some(p) => Err(format!("run_code refused the run: {p}")),
            None => Ok(true),
        })
    }

    /// Appends one draft: `Ok(true)` new, `Ok(false)` a duplicate, `Err` refused by the ledger.
    async fn append(
        &self,
        owner: &Principal,
        draft: Draft,
    ) -> Result<Result<bool, String>, PolicyError> {
        match store::append(self.store.as_ref(), owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(a)) => Ok(Ok(!a.duplicate)),
            Some(Err(e)) => Ok(Err(e.to_string())),
            None => Err(no_result("emitted")),
        }
    }

    /// Appends a `policy_error` (idempotent); returns 1 if it is new.
    async fn record_error(
        &self,
        policy: &Policy,
        span: Option<(Uuid, i64)>,
        action: Option<usize>,
        f: &Failure,
    ) -> Result<usize, PolicyError> {
        let key = match (span, action) {
            (Some((id, seq)), Some(i)) => format!("{}{id}:{seq}:{i}:error", policy.mark()),
            (Some((id, seq)), None) => format!("{}{id}:{seq}:error", policy.mark()),
            (None, _) => format!("{}seq:{}:{}", policy.mark(), policy.seq, f.kind),
        };
        let mut related = vec![policy.id];
        related.extend(span.map(|(id, _)| id));
        tracing::debug!(kind = f.kind, message = %f.message, "policy_error");
        let v = json!({
            "entity_type": POLICY_ERROR,
            "visibility": policy.visibility,
            "idempotency_key": key,
            "trace_id": format!("{}{}", policy.mark(), span.map_or_else(|| "policy".to_string(), |(id, _)| id.to_string())),
            "related_to": related,
            "when": format_time(self.now()),
            "who": AGENT_USER,
            "did": "failed",
            "this": policy.name,
            "confirmed_by": AGENT_USER,
            "if_ok": "fix the policy with a new seq",
            "if_doubt": "look at the span and the policy",
            "if_not": "archive the policy",
            "status": "error",
            "error": {"kind": f.kind, "message": f.message},
            "content": {
                "policy": policy.cite(),
                "span": span.map(|(id, seq)| json!({"id": id, "seq": seq})),
                "action": action,
                "kind": f.kind,
                "message": f.message,
                "cursor": if f.is_policy_level() { "held until a new seq of the policy" } else { "moved on" },
            },
        });
        let draft = Draft::from_value(v, &policy.owner, &[], self.now()).map_err(|e| {
            PolicyError::Record {
                what: POLICY_ERROR,
                reason: e.to_string(),
            }
        })?;
        match self.append(&policy.owner, draft).await? {
            Ok(new) => Ok(usize::from(new)),
            Err(reason) => Err(PolicyError::Record {
                what: POLICY_ERROR,
                reason,
            }),
        }
    }

    /// The policy's cursor, opened on first use.
    async fn cursor(&self, policy: &Policy) -> Result<Cursor, PolicyError> {
        let known = self
            .cursors
            .lock()
            .ok()
            .and_then(|m| m.get(&policy.id).copied());
        let id = match known {
            Some(id) => id,
            None => {
                let v = json!({
                    "entity_type": CURSOR,
                    "visibility": policy.visibility,
                    "idempotency_key": format!("policy_cursor:{}", policy.id),
                    "related_to": [policy.id],
                    "when": format_time(self.now()),
                    "who": AGENT_USER,
                    "did": "opened the cursor",
                    "this": policy.name,
                    "confirmed_by": AGENT_USER,
                    "if_ok": "evaluate the spans after it",
                    "if_doubt": "wait for the claim to lapse",
                    "if_not": "re-do the claimed batch (idempotent)",
                    "status": "idle",
                    "content": {"policy_id": policy.id, "after": policy.start_after, "claim": null},
                });
                let draft = Draft::from_value(v, &policy.owner, &[], self.now()).map_err(|e| {
                    PolicyError::Record {
                        what: CURSOR,
                        reason: e.to_string(),
                    }
                })?;
                let a = self.append_appended(&policy.owner, draft, CURSOR).await?;
                if let Ok(mut m) = self.cursors.lock() {
                    m.insert(policy.id, a.id);
                }
                a.id
            }
        };
        let bad = |reason: String| PolicyError::Cursor {
            policy: policy.id,
            reason,
        };
        let span = self
            .store
            .get(&policy.owner, id, None)
            .await?
            .ok_or_else(|| bad(format!("cursor {id} is not visible to the policy's owner")))?;
        let view = span.to_view().map_err(StoreError::Corrupt)?;
        if view.get("entity_type").and_then(Value::as_str) != Some(CURSOR)
            || view.pointer("/content/policy_id").and_then(Value::as_str)
                != Some(policy.id.to_string().as_str())
        {
            return Err(bad(format!(
                "span {id} holds the cursor's key but is not this policy's cursor"
            )));
        }
        let after = view
            .pointer("/content/after")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("content.after is not a position".into()))?;
        let claim = view.pointer("/content/claim").and_then(|c| {
            Some(Claim {
                by: c.get("by")?.as_str()?.to_string(),
                until: DateTime::parse_from_rfc3339(c.get("until")?.as_str()?)
                    .ok()?
                    .with_timezone(&Utc),
            })
        });
        Ok(Cursor {
            id,
            seq: view.get("seq").and_then(Value::as_i64).unwrap_or(0),
            after,
            claim,
        })
    }

    /// Appends the cursor's `seq` with `after` and `claim`; `false` if another process got that
    /// seq first.
    async fn advance(
        &self,
        policy: &Policy,
        cursor: &Cursor,
        seq: i64,
        after: i64,
        claim: Option<Value>,
    ) -> Result<bool, PolicyError> {
        let claiming = claim.is_some();
        let v = json!({
            "id": cursor.id,
            "seq": seq,
            "entity_type": CURSOR,
            "visibility": policy.visibility,
            "related_to": [policy.id],
            "when": format_time(self.now()),
            "who": AGENT_USER,
            "did": if claiming { "claimed a batch" } else { "advanced" },
            "this": policy.name,
            "confirmed_by": AGENT_USER,
            "if_ok": "evaluate the spans after it",
            "if_doubt": "wait for the claim to lapse",
            "if_not": "re-do the claimed batch (idempotent)",
            "status": if claiming { "claimed" } else { "idle" },
            "content": {"policy_id": policy.id, "policy_seq": policy.seq, "after": after, "claim": claim},
        });
        let draft = Draft::from_value(v, &policy.owner, &[], self.now()).map_err(|e| {
            PolicyError::Record {
                what: CURSOR,
                reason: e.to_string(),
            }
        })?;
        match store::append(self.store.as_ref(), &policy.owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(_)) => Ok(true),
            Some(Err(AppendError::SeqConflict { latest, .. })) => {
                tracing::debug!(cursor = %cursor.id, tried = seq, latest, "lost a cursor race");
                Ok(false)
            }
            Some(Err(e)) => Err(PolicyError::Record {
                what: CURSOR,
                reason: e.to_string(),
            }),
            None => Err(no_result(CURSOR)),
        }
    }

    async fn append_appended(
        &self,
        owner: &Principal,
        draft: Draft,
        what: &'static str,
    ) -> Result<Appended, PolicyError> {
        match store::append(self.store.as_ref(), owner, vec![draft])
            .await?
            .into_iter()
            .next()
        {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(PolicyError::Record {
                what,
                reason: e.to_string(),
            }),
            None => Err(no_result(what)),
        }
    }
}

fn no_result(what: &'static str) -> PolicyError {
    PolicyError::Record {
        what,
        reason: "the store reported no result".into(),
    }
}

/// Reads a policy span's program.
fn program(view: &Value, content: &Value) -> Result<Program, Failure> {
    let language = content
        .get("language")
        .and_then(Value::as_str)
        .or_else(|| view.get("language").and_then(Value::as_str))
        .unwrap_or("javascript")
        .to_ascii_lowercase();
    let source = content
        .get("source")
        .and_then(Value::as_str)
        .or_else(|| view.get("code").and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            Failure::new(
                "bad_policy",
                "the policy has no source: put it in content.source (or code)",
            )
        })?;
    match language.as_str() {
        "javascript" | "js" => Ok(Program::Js(format!(
            "{source}\n;var main = function (input, ctx) {{ if (typeof on !== \"function\") {{ throw new Error({NO_ON:?}); }} return on(input, ctx); }};\n"
        ))),
        "law" => {
            let law = law::parse(source).map_err(|e| Failure::new("law_parse", e.to_string()))?;
            if let Some(LawClock::Midnight { .. }) = law.clock {
                return Err(Failure::new(
                    "bad_policy",
                    "a policy law runs on each span (clock: realtime); midnight laws belong to the Midnight Ruler",
                ));
            }
            let bindings = bindings(content.get("actions"))?;
            Ok(Program::Law {
                law: Box::new(law),
                bindings,
            })
        }
        other => Err(Failure::new(
            "bad_policy",
            format!("policies are written in javascript or law, not `{other}`"),
        )),
    }
}

/// Reads a law policy's `content.actions`: law action (text or name) → policy actions.
fn bindings(actions: Option<&Value>) -> Result<Vec<(Binding, Vec<Value>)>, Failure> {
    let bad = |m: String| Failure::new("bad_policy", format!("content.actions: {m}"));
    let map = match actions {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("must map law actions to lists of policy actions".into())),
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let binding = if ACTION_NAMES.contains(&key.as_str()) {
            Binding::Name(key.clone())
        } else {
            // The law parser reads the key, so `tag(key=a, val=b)` and `tag(key=a,val=b)` agree.
            let probe = format!("law binding:1.0.0:\nif ok: true\nthen: {key}\n");
            let action = law::parse(&probe)
                .ok()
                .and_then(|l| l.ok.and_then(|b| b.actions.into_iter().next()))
                .ok_or_else(|| bad(format!("`{key}` is not a law action")))?;
            Binding::Exact(action)
        };
        let Value::Array(list) = value else {
            return Err(bad(format!("`{key}` must map to a list of actions")));
        };
        out.push((binding, list.clone()));
    }
    Ok(out)
}

/// What one evaluation asks for.
#[derive(Default)]
struct Evaluated {
    /// Raw policy actions, unchecked.
    actions: Vec<Value>,
    /// A law policy's `policy_decision` span, when its block said `append_ledger`.
    record: Option<Value>,
}

/// A span a policy writes, with the defaults filled in: the policy's visibility, its
/// idempotency key and trace id, `related_to` [policy, span] and `when` = now.
fn emit_draft(
    policy: &Policy,
    view: &Value,
    mut span: Map<String, Value>,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Draft, String> {
    let (sid, _) = view_id_seq(view);
    span.entry("visibility")
        .or_insert_with(|| json!(policy.visibility));
    span.entry("idempotency_key").or_insert_with(|| json!(key));
    span.entry("trace_id")
        .or_insert_with(|| json!(format!("{}{sid}", policy.mark())));
    span.entry("related_to")
        .or_insert_with(|| json!([policy.id, sid]));
    if !span.contains_key("at") {
        span.entry("when")
            .or_insert_with(|| json!(format_time(now)));
    }
    Draft::from_value(Value::Object(span), &policy.owner, &[], now)
        .map_err(|e| format!("the span is refused: {e}"))
}

/// A `policy_decision` span.
fn decision_span(policy: &Policy, law: &Law, view: &Value, decision: &Decision) -> Value {
    let (sid, sseq) = view_id_seq(view);
    let content = json!({
        "policy": policy.cite(),
        "law": {"id": law.id, "version": law.version},
        "span": {"id": sid, "seq": sseq, "entity_type": view.get("entity_type")},
        "triage": decision.triage,
        "actions": decision.actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "composition": Composition::of(&decision.actions),
        "variables": decision.variables,
        "missing": decision.missing,
        "fail_closed": decision.fail_closed,
    });
    json!({
        "entity_type": DECISION,
        "who": AGENT_USER,
        "did": "decided",
        "this": format!("span {sid}"),
        "confirmed_by": format!("law {}:{}", law.id, law.version),
        "if_ok": "apply the actions",
        "if_doubt": "ask a person",
        "if_not": "apply the actions",
        "status": decision.triage.as_str(),
        "content": content,
    })
}

/// The JavaScript host of a policy: `run_code`'s, without `ctx.append`.
struct PolicyHost(LedgerHost);

impl Host for PolicyHost {
    fn query(&self, filter: Value) -> Result<Vec<Value>, String> {
        self.0.query(filter)
    }

    fn append(&self, _span: Value) -> Result<Value, String> {
        Err("a policy acts by returning actions ({\"emit_span\": …}); it cannot append".into())
    }

    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

fn js_failure(e: &RunError) -> Failure {
    match e {
        RunError::Compile(_) => Failure::new("compile", e.to_string()),
        RunError::NoMain => Failure::new("no_on", NO_ON),
        RunError::Thrown { message, .. } if message == NO_ON => Failure::new("no_on", NO_ON),
        other => Failure::new(run_code::error_kind(other), other.to_string()),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `(id, seq)` from a stored envelope.
fn id_seq(envelope: &str) -> Option<(Uuid, i64)> {
    let v: Value = serde_json::from_str(envelope).ok()?;
    Some((
        v.get("id")?.as_str()?.parse().ok()?,
        v.get("seq")?.as_i64()?,
    ))
}

fn view_id_seq(view: &Value) -> (Uuid, i64) {
    (
        view.get("id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default(),
        view.get("seq").and_then(Value::as_i64).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_read_action_texts_and_names_alike() {
        let b = bindings(Some(&json!({
            "notify(role=ops)": [{"run": "x"}],
            "tag(key=a, val=\"b c\")": [],
            "accept": [],
        })))
        .unwrap();
        assert!(
            b.iter()
                .any(|(k, _)| *k == Binding::Exact(Action::Notify { role: "ops".into() }))
        );
        assert!(b.iter().any(|(k, _)| k.matches(&Action::Tag {
            key: "a".into(),
            val: "b c".into()
        })));
        assert!(b.iter().any(|(k, _)| *k == Binding::Name("accept".into())));
        let e = bindings(Some(&json!({"explode": []}))).unwrap_err();
        assert_eq!(e.kind, "bad_policy");
    }
}
