//! The Midnight Ruler (seed 001, Article 10; DESIGN §6): at 00:00 in each law's IANA zone it
//! decides every open contract in the law's scope, writes one `law.decision` span per
//! (law span, law seq, contract, scheduled instant), and applies the composed actions by
//! appending the contract's next version.
//!
//! # Which midnight, exactly
//!
//! The scheduled instant of a local date is 00:00 of that date in the zone, converted to UTC
//! with the zone's rules for that day (chrono-tz, tz database compiled in), so it moves with
//! daylight saving time: in Europe/Paris, 2026-03-29 00:00 is 2026-03-28T23:00Z and 2026-03-30
//! 00:00 is 2026-03-29T22:00Z. Where a zone skips midnight (clocks jump from 00:00 to 01:00, as
//! America/Santiago does in September) the instant is the **first valid local time after it**
//! (the jump itself, 01:00 local); where midnight happens twice (a fall-back at 01:00 to 00:00)
//! it is the **first** of the two. A law whose zone is not in the tz database is still run, at
//! UTC midnights, and every decision fails closed to `doubt` with
//! `fail_closed = {"reason": "unknown_time_zone", "zone": …}`.
//!
//! # What a midnight sees
//!
//! Everything is read **as of** the scheduled instant, so a midnight decided late (backfill, a
//! re-run, another process) decides exactly as it would have on time:
//! - the law version in force is the law span's newest seq whose `at` is at or before the
//!   instant, and it must have `status = "active"` and `clock: midnight …`;
//! - each contract is read as its newest version whose `at` is strictly before the instant (the
//!   ruler writes its own versions *at* the instant, so they never feed back into it);
//! - `now` in the law is the scheduled instant, never the wall clock.
//!
//! A contract is decided when that version is open (`active` or `held`) and in the law's scope
//! (`content.scope` equal to the law's `scope:`; a contract whose scope cannot be read is in
//! every scope, so poison data gets a `doubt`, not silence). A contract whose witness let the
//! hour pass is voided instead (see [`crate::contracts`]).
//!
//! # Decisions and actions
//!
//! The `law.decision` span (visibility `tenant`, `status` = the triage, `at` = the instant,
//! `related_to` = [contract, law span], `trace_id` = `ruler:<law span>:<seq>:<instant>`) holds
//! the law's id, version, span id, seq and `curr_hash`, the contract version it read (id, seq,
//! hash), the variables seen and those missing, the triage, the block's actions, their
//! composition and the fail-closed reason if any. Its idempotency key is
//! `law.decision:<law span>:<seq>:<contract>:<instant>`, enforced by a unique constraint in both
//! stores: two processes ruling the same midnight write one decision.
//!
//! Laws whose midnights fall on the same instant are decided together, and the actions of all
//! their decisions on one contract are composed (terminate > accept > hold, longest hold, tag and
//! notify unions; [`ledger::law::compose`]) into **one** new contract version at the instant:
//! `terminate` → `terminated` with the reasons, `accept` → `accepted`, `hold(hours=N)` → `held`
//! with `hold_until`, tags merged into `content.tags`, and `content.last_decision` naming the
//! decisions. A final contract (accepted, terminated, void) is not changed again. Terminating a
//! contract with a guarantor who said yes charges both (joint liability). The decisions and the
//! contract's new version are appended in the same transaction; the version has its own
//! idempotency key and carries `seq = latest + 1`, so a concurrent change to the contract makes
//! it retry on the newer version instead of overwriting it. `notify` roles are recorded in the
//! decision and in `last_decision.notify`; the ledger is the notification.
//!
//! # Backfill
//!
//! [`catch_up`] keeps one `ruler_checkpoint` span per (tenant, law span) whose newest seq names
//! the last midnight done. After downtime it runs each missed midnight in order (all laws due at
//! an instant together), checkpointing after each, at most [`MAX_BACKFILL`] per law per call. A
//! law never checkpointed starts at the first midnight at or after its first version.
//! [`run_midnight`] (a hand run) neither reads nor moves checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use ledger::law::{self, Action, Composition, Law, StateChange, Triage};
use ledger::span::format_time;
use ledger::store::{self, SYSTEM_TENANT};
use ledger::{AppendError, Draft, Filter, InputError, Principal, Store, StoreError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use thiserror::Error;
use uuid::Uuid;

use crate::contracts::{self, Contract, ContractVersion, State};

/// The `entity_type` of decisions.
pub const DECISION: &str = "law.decision";
/// The `entity_type` of laws.
pub const LAW: &str = "law";
/// The `entity_type` of the per-law backfill checkpoints.
pub const CHECKPOINT: &str = "ruler_checkpoint";
/// The user the ruler acts as, in each tenant.
pub const RULER_USER: &str = "midnight_ruler";
/// Most midnights one [`catch_up`] call backfills per law (the next call goes on).
pub const MAX_BACKFILL: usize = 400;
/// Contracts per append transaction.
const CHUNK: usize = 1000;
/// Attempts to append a contract's new version when others keep changing it.
const STATE_ATTEMPTS: usize = 4;

#[derive(Debug, Error)]
pub enum RulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ruler built an invalid span: {0}")]
    Input(#[from] InputError),
    #[error("no law named or identified `{0}` is visible")]
    LawNotFound(String),
    #[error("law `{0}` does not parse: {1}")]
    LawUnparsable(String, String),
    #[error("a ruler task failed: {0}")]
    Task(String),
}

/// The principal the ruler acts as in `tenant`.
pub fn ruler_principal(tenant: &str) -> Principal {
    Principal::new(RULER_USER, tenant)
}

// ---- zones and midnights ---------------------------------------------------------------------

/// The zone named, if the tz database knows it.
pub fn resolve_zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// 00:00 of `date` in `zone` as a UTC instant (UTC itself when the zone is unknown). A skipped
/// midnight gives the first valid local minute after it; a repeated one, the earlier.
pub fn midnight_on(zone: Option<Tz>, date: NaiveDate) -> DateTime<Utc> {
    let naive = date.and_time(chrono::NaiveTime::MIN);
    let Some(tz) = zone else {
        return naive.and_utc();
    };
    // Gaps are whole minutes in every zone of the tz database; no gap lasts a day.
    for minutes in 0..=24 * 60 {
        let local = naive + TimeDelta::minutes(minutes);
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    naive.and_utc()
}

/// The local date of `t` in `zone`.
fn local_date(zone: Option<Tz>, t: DateTime<Utc>) -> NaiveDate {
    match zone {
        Some(tz) => t.with_timezone(&tz).date_naive(),
        None => t.date_naive(),
    }
}

/// The latest midnight at or before `t`.
pub fn midnight_at_or_before(zone: Option<Tz>, t: DateTime<Utc>) -> DateTime<Utc> {
    let mut d = local_date(zone, t);
    loop {
        let m = midnight_on(zone, d);
        if m <= t {
            return m;
        }
        match d.pred_opt() {
            Some(p) => d = p,
            None => return m,
        }
    }
}

/// The first midnight strictly after `t`.
pub fn next_midnight_after(zone: Option<Tz>, t: DateTime<Utc>) -> DateTime<Utc> {
    let mut d = local_date(zone, t);
    loop {
        let m = midnight_on(zone, d);
        if m > t {
            return m;
        }
        match d.succ_opt() {
            Some(n) => d = n,
            None => return m,
        }
    }
}

// ---- laws ------------------------------------------------------------------------------------

/// One version of a law span. The law text is the span's `content` (a string) or
/// `content.source`.
#[derive(Debug, Clone)]
pub struct LawVersion {
    pub span_id: Uuid,
    pub seq: i64,
    pub curr_hash: String,
    pub at: DateTime<Utc>,
    pub status: String,
    pub name: Option<String>,
    pub law: Result<Law, String>,
}

impl LawVersion {
    fn from_view(v: &Value) -> Option<Self> {
        let span_id = v.get("id")?.as_str()?.parse().ok()?;
        let seq = v.get("seq")?.as_i64()?;
        let at = DateTime::parse_from_rfc3339(v.get("at")?.as_str()?)
            .ok()?
            .with_timezone(&Utc);
        let law = match law_source(v.get("content").unwrap_or(&Value::Null)) {
            Some(src) => law::parse(src).map_err(|e| e.to_string()),
            None => Err("the span has no law text (content or content.source)".to_string()),
        };
        Some(Self {
            span_id,
            seq,
            curr_hash: v.get("curr_hash")?.as_str()?.to_string(),
            at,
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name: v.get("name").and_then(Value::as_str).map(str::to_string),
            law,
        })
    }

    /// The zone of a parsed, active `clock: midnight` law.
    pub fn midnight_zone(&self) -> Option<&str> {
        match &self.law {
            Ok(Law {
                clock: Some(law::Clock::Midnight { tz }),
                ..
            }) if self.status == "active" => Some(tz),
            _ => None,
        }
    }

    /// `midnight_deadline:1.0.0`, or the span name when the text does not parse.
    pub fn label(&self) -> String {
        match &self.law {
            Ok(l) => format!("{}:{}", l.id, l.version),
            Err(_) => self
                .name
                .clone()
                .unwrap_or_else(|| self.span_id.to_string()),
        }
    }
}

/// The law text of a law span's content.
pub fn law_source(content: &Value) -> Option<&str> {
    match content {
        Value::String(s) => Some(s),
        Value::Object(m) => m.get("source").and_then(Value::as_str),
        _ => None,
    }
}

/// A law span and all its versions, oldest first.
#[derive(Debug, Clone)]
pub struct LawSpan {
    pub id: Uuid,
    pub versions: Vec<LawVersion>,
}

impl LawSpan {
    pub fn latest(&self) -> Option<&LawVersion> {
        self.versions.last()
    }

    /// The version in force at `t` (newest seq with `at <= t`), if it is an active midnight law.
    pub fn in_force(&self, t: DateTime<Utc>) -> Option<&LawVersion> {
        self.versions
            .iter()
            .filter(|v| v.at <= t)
            .max_by_key(|v| v.seq)
            .filter(|v| v.midnight_zone().is_some())
    }

    /// Whether `reference` names this law: its span id, its span name or its law id.
    pub fn is_named(&self, reference: &str) -> bool {
        self.id.to_string() == reference
            || self.latest().is_some_and(|v| {
                v.name.as_deref() == Some(reference)
                    || v.law.as_ref().is_ok_and(|l| l.id == reference)
            })
    }
}

/// Every law span of the tenant visible to the principal.
pub async fn load_laws(
    store: &dyn Store,
    principal: &Principal,
) -> Result<Vec<LawSpan>, StoreError> {
    let views = contracts::load_views(store, principal, LAW).await?;
    let mut by_id: BTreeMap<Uuid, Vec<LawVersion>> = BTreeMap::new();
    for v in &views {
        if let Some(lv) = LawVersion::from_view(v) {
            by_id.entry(lv.span_id).or_default().push(lv);
        }
    }
    Ok(by_id
        .into_iter()
        .map(|(id, mut versions)| {
            versions.sort_by_key(|v| v.seq);
            LawSpan { id, versions }
        })
        .collect())
}

/// Enacts a law: appends a `law` span (visibility `tenant`, `status = "active"`, `name` = the
/// law's id) whose content is `{source, law_id, version, scope, clock, change_log}` (the
/// registration fields of seed Article 26; the hash is the span's own). A law whose id already
/// has a span gets that span's next seq: one span per law, one seq per version. Idempotent on
/// (law id, version). Text that does not parse is refused.
pub async fn enact_law(
    store: &dyn Store,
    principal: &Principal,
    source: &str,
    change_log: &str,
    at: DateTime<Utc>,
) -> Result<ledger::Appended, RulerError> {
    let parsed =
        law::parse(source).map_err(|e| RulerError::LawUnparsable("(new)".into(), e.to_string()))?;
    let existing = load_laws(store, principal)
        .await?
        .into_iter()
        .find(|s| s.is_named(&parsed.id))
        .map(|s| s.id);
    let mut v = json!({
        "entity_type": LAW,
        "name": parsed.id,
        "visibility": "tenant",
        "idempotency_key": format!("law:{}:{}", parsed.id, parsed.version),
        "when": format_time(at),
        "who": principal.user_id,
        "did": "enacted law",
        "this": format!("law {}:{}", parsed.id, parsed.version),
        "confirmed_by": principal.user_id,
        "if_ok": "the Midnight Ruler applies it from the next midnight",
        "if_doubt": "decisions under it fail closed to doubt",
        "if_not": "archive it with a new seq (status archived)",
        "status": "active",
        "content": {
            "source": source,
            "law_id": parsed.id,
            "version": parsed.version,
            "scope": parsed.scope,
            "clock": parsed.clock.as_ref().map(ToString::to_string),
            "change_log": change_log,
        }
    });
    if let (Some(id), Some(obj)) = (existing, v.as_object_mut()) {
        obj.insert("id".into(), json!(id));
    }
    let draft = Draft::from_value(v, principal, &[], at)?;
    match store::append(store, principal, vec![draft]).await?.pop() {
        Some(Ok(a)) => Ok(a),
        Some(Err(e)) => Err(RulerError::Store(StoreError::Append(e))),
        None => Err(RulerError::Store(StoreError::Corrupt(
            "the store returned no result for an append".into(),
        ))),
    }
}

// ---- reports ---------------------------------------------------------------------------------

/// Decisions by triage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub doubt: usize,
    pub not: usize,
}

impl Counts {
    fn add(&mut self, t: Triage) {
        match t {
            Triage::Ok => self.ok += 1,
            Triage::Doubt => self.doubt += 1,
            Triage::Not => self.not += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.ok + self.doubt + self.not
    }
}

/// One law at one midnight.
#[derive(Debug, Clone, Serialize)]
pub struct LawRun {
    pub law_span_id: Uuid,
    pub law: String,
    pub law_seq: i64,
    pub law_hash: String,
    pub zone: String,
    pub zone_known: bool,
    pub scheduled_at: DateTime<Utc>,
    /// Every decision of this law at this instant, new or found from an earlier run.
    pub decided: Counts,
    /// Decisions written by this run (0 on a re-run).
    pub new_decisions: usize,
    /// Decisions that failed closed (included in `decided.doubt`).
    pub fail_closed: usize,
}

/// What one run did in one tenant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RulerReport {
    pub tenant: String,
    pub laws: Vec<LawRun>,
    /// Contracts moved to a new state or given new tags.
    pub contracts_changed: usize,
    /// Contracts voided because their witness let the hour pass.
    pub voided: usize,
    /// Spans this run wrote (decisions, contract versions, charges, checkpoints).
    pub spans_written: usize,
}

impl RulerReport {
    /// All decisions of all laws.
    pub fn decided(&self) -> Counts {
        let mut c = Counts::default();
        for l in &self.laws {
            c.ok += l.decided.ok;
            c.doubt += l.decided.doubt;
            c.not += l.decided.not;
        }
        c
    }

    fn merge(&mut self, other: RulerReport) {
        self.laws.extend(other.laws);
        self.contracts_changed += other.contracts_changed;
        self.voided += other.voided;
        self.spans_written += other.spans_written;
    }
}

// ---- running a midnight ----------------------------------------------------------------------

/// Which midnight a hand run means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// 00:00 of this local date, in each law's zone.
    Date(NaiveDate),
    /// The latest local midnight at or before this instant, in each law's zone.
    AtOrBefore(DateTime<Utc>),
}

impl When {
    fn instant(self, zone: Option<Tz>) -> DateTime<Utc> {
        match self {
            Self::Date(d) => midnight_on(zone, d),
            Self::AtOrBefore(t) => midnight_at_or_before(zone, t),
        }
    }
}

/// A law version chosen for an instant, with its zone resolved (owned: deciding runs on a
/// blocking thread while the previous batch is being appended).
struct Ruled {
    version: LawVersion,
    law: Law,
    zone_name: String,
    zone: Option<Tz>,
}

fn zone_of<'a>(latest: &'a LawVersion, tz_override: Option<&'a str>) -> Option<&'a str> {
    tz_override.or_else(|| latest.midnight_zone())
}

/// Runs the latest midnight at or before `at` by hand, in `tenant`, for every active midnight
/// law (`tz_override` replaces each law's zone). Idempotent: a second run finds its decisions
/// and writes nothing. Does not move the backfill checkpoints.
pub async fn run_midnight(
    store: &dyn Store,
    tenant: &str,
    at: DateTime<Utc>,
    tz_override: Option<&str>,
) -> Result<RulerReport, RulerError> {
    run_when(store, tenant, When::AtOrBefore(at), tz_override).await
}

/// [`run_midnight`] for an explicit instant or local date.
pub async fn run_when(
    store: &dyn Store,
    tenant: &str,
    when: When,
    tz_override: Option<&str>,
) -> Result<RulerReport, RulerError> {
    let principal = ruler_principal(tenant);
    let laws = load_laws(store, &principal).await?;
    let mut groups: BTreeMap<DateTime<Utc>, Vec<Ruled>> = BTreeMap::new();
    for span in &laws {
        let Some(latest) = span.latest() else {
            continue;
        };
        let Some(zone_name) = zone_of(latest, tz_override) else {
            continue;
        };
        let zone = resolve_zone(zone_name);
        let instant = when.instant(zone);
        if let Some(r) = ruled(span, instant, zone_name, zone) {
            groups.entry(instant).or_default().push(r);
        }
    }
    let mut report = RulerReport {
        tenant: tenant.to_string(),
        ..RulerReport::default()
    };
    if groups.is_empty() {
        return Ok(report);
    }
    let loading = std::time::Instant::now();
    let mut contracts = Arc::new(contracts::load_all(store, &principal).await?);
    tracing::info!(
        tenant,
        contracts = contracts.len(),
        ms = loading.elapsed().as_millis() as u64,
        "ruler loaded contracts"
    );
    let mut first = true;
    for (instant, group) in groups {
        if !first && report.spans_written > 0 {
            contracts = Arc::new(contracts::load_all(store, &principal).await?);
        }
        first = false;
        let r = run_instant(
            store,
            &principal,
            instant,
            Arc::new(group),
            contracts.clone(),
        )
        .await?;
        report.merge(r);
    }
    Ok(report)
}

fn ruled(
    span: &LawSpan,
    instant: DateTime<Utc>,
    zone_name: &str,
    zone: Option<Tz>,
) -> Option<Ruled> {
    let version = span.in_force(instant)?.clone();
    let law = version.law.as_ref().ok()?.clone();
    Some(Ruled {
        version,
        law,
        zone_name: zone_name.to_string(),
        zone,
    })
}

/// A decision found from an earlier run.
struct Prior {
    id: Uuid,
    triage: Triage,
    actions: Vec<Action>,
    fail_closed: bool,
}

/// `ruler:<law span>:<seq>:<instant>`: every decision of one law version at one midnight.
pub fn trace_id(law_span: Uuid, law_seq: i64, instant: DateTime<Utc>) -> String {
    format!("ruler:{law_span}:{law_seq}:{}", format_time(instant))
}

/// The idempotency key of one decision.
pub fn decision_key(
    law_span: Uuid,
    law_seq: i64,
    contract: Uuid,
    instant: DateTime<Utc>,
) -> String {
    format!(
        "law.decision:{law_span}:{law_seq}:{contract}:{}",
        format_time(instant)
    )
}

async fn prior_decisions(
    store: &dyn Store,
    principal: &Principal,
    trace: &str,
) -> Result<HashMap<Uuid, Prior>, StoreError> {
    let mut filter = Filter {
        entity_type: Some(DECISION.into()),
        tenant_id: Some(principal.tenant_id.clone()),
        trace_id: Some(trace.to_string()),
        limit: Some(ledger::query::MAX_LIMIT),
        ..Filter::default()
    };
    let mut out = HashMap::new();
    loop {
        let page = store.query(principal, &filter).await?;
        for row in &page.rows {
            let Ok(v) = row.span.to_view() else { continue };
            let Some(contract) = v
                .pointer("/content/contract/id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let triage = match v.pointer("/content/triage").and_then(Value::as_str) {
                Some("ok") => Triage::Ok,
                Some("not") => Triage::Not,
                _ => Triage::Doubt,
            };
            let actions = v
                .pointer("/content/actions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(action_from_json).collect())
                .unwrap_or_default();
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            let fail_closed = v.pointer("/content/fail_closed").is_some();
            out.insert(
                contract,
                Prior {
                    id,
                    triage,
                    actions,
                    fail_closed,
                },
            );
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => return Ok(out),
        }
    }
}

/// Reads back an action as a decision span stores it (`{"action": "hold", "hours": 24}`).
pub fn action_from_json(v: &Value) -> Option<Action> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(match v.get("action")?.as_str()? {
        "accept" => Action::Accept,
        "hold" => Action::Hold {
            hours: u32::try_from(v.get("hours")?.as_u64()?).ok()?,
        },
        "terminate" => Action::Terminate {
            reason: s("reason")?,
        },
        "notify" => Action::Notify { role: s("role")? },
        "tag" => Action::Tag {
            key: s("key")?,
            val: s("val")?,
        },
        "append_ledger" => Action::AppendLedger,
        "permit" => Action::Permit,
        "deny" => Action::Deny,
        _ => return None,
    })
}

/// Whether a contract version is in a law's scope. Unreadable scope: in every scope.
fn in_scope(law: &Law, v: &ContractVersion) -> bool {
    match (&law.scope, v.content.get("scope").and_then(Value::as_str)) {
        (None, _) | (_, None) => true,
        (Some(want), Some(have)) => want == have,
    }
}

/// One evaluated (or found) decision of one law on one contract.
struct Outcome {
    law: usize,
    triage: Triage,
    actions: Vec<Action>,
    fail_closed: bool,
    /// Set when this run must write it.
    draft: Option<(Uuid, Draft)>,
    /// The id of the decision span (new or prior).
    id: Uuid,
}

/// What to write for one contract at one instant.
struct Work {
    decisions: Vec<Outcome>,
    state: Option<Draft>,
    extra: Vec<Draft>,
    void: Option<Draft>,
}

/// Decides one contract under every law of the group.
fn decide_contract(
    principal: &Principal,
    instant: DateTime<Utc>,
    laws: &[Ruled],
    priors: &[HashMap<Uuid, Prior>],
    contract: &Contract,
) -> Result<Option<Work>, RulerError> {
    let Some(v) = contract.before(instant) else {
        return Ok(None);
    };
    let Some(latest) = contract.latest() else {
        return Ok(None);
    };
    if v.state().is_some_and(|s| !s.is_open()) {
        return Ok(None);
    }
    if contracts::witness_lapsed(&v.content, instant) == Some(true) {
        if latest.state().is_some_and(|s| !s.is_open()) {
            return Ok(None);
        }
        return Ok(Some(Work {
            decisions: Vec::new(),
            state: None,
            extra: Vec::new(),
            void: Some(contracts::void_draft(principal, latest, instant)?),
        }));
    }
    let mut decisions = Vec::new();
    let mut vars: Option<Value> = None;
    for (i, r) in laws.iter().enumerate() {
        if !in_scope(&r.law, v) {
            continue;
        }
        if let Some(p) = priors.get(i).and_then(|m| m.get(&contract.id)) {
            decisions.push(Outcome {
                law: i,
                triage: p.triage,
                actions: p.actions.clone(),
                fail_closed: p.fail_closed,
                draft: None,
                id: p.id,
            });
            continue;
        }
        let vars = vars.get_or_insert_with(|| contracts::variables(v));
        let (id, draft, triage, actions, fail_closed) =
            decision_draft(principal, instant, r, v, vars)?;
        decisions.push(Outcome {
            law: i,
            triage,
            actions,
            fail_closed,
            draft: Some((id, draft)),
            id,
        });
    }
    if decisions.is_empty() {
        return Ok(None);
    }
    let (state, extra) = state_drafts(principal, instant, laws, &decisions, v, latest)?;
    Ok(Some(Work {
        decisions,
        state,
        extra,
        void: None,
    }))
}

type Decided = (Uuid, Draft, Triage, Vec<Action>, bool);

fn decision_draft(
    principal: &Principal,
    instant: DateTime<Utc>,
    r: &Ruled,
    v: &ContractVersion,
    vars: &Value,
) -> Result<Decided, RulerError> {
    let (triage, actions, fail_closed, variables, missing) = match r.zone {
        Some(_) => {
            let d = law::evaluate(&r.law, vars, instant);
            let fc = d
                .fail_closed
                .as_ref()
                .map(|f| serde_json::to_value(f).unwrap_or(Value::Null));
            (
                d.triage,
                d.actions,
                fc,
                serde_json::to_value(&d.variables).unwrap_or(Value::Null),
                serde_json::to_value(&d.missing).unwrap_or(Value::Null),
            )
        }
        None => (
            Triage::Doubt,
            Vec::new(),
            Some(json!({"reason": "unknown_time_zone", "zone": r.zone_name})),
            json!({}),
            json!([]),
        ),
    };
    let composition = Composition::of(&actions);
    let id = Uuid::now_v7();
    let lv = &r.version;
    let did = if actions.is_empty() {
        format!("ruled {triage}")
    } else {
        let list: Vec<String> = actions.iter().map(ToString::to_string).collect();
        format!("ruled {triage}: {}", list.join(", "))
    };
    let mut content = json!({
        "law": {
            "id": r.law.id, "version": r.law.version, "span_id": lv.span_id,
            "seq": lv.seq, "curr_hash": lv.curr_hash
        },
        "contract": {"id": v.id, "seq": v.seq, "name": v.name, "curr_hash": v.curr_hash},
        "scheduled_at": format_time(instant),
        "zone": r.zone_name,
        "triage": triage,
        "actions": actions,
        "composition": composition,
        "variables": variables,
        "missing": missing,
    });
    if let (Some(fc), Some(c)) = (&fail_closed, content.as_object_mut()) {
        c.insert("fail_closed".into(), fc.clone());
    }
    let draft = Draft::from_value(
        json!({
            "id": id,
            "entity_type": DECISION,
            "name": v.name,
            "visibility": "tenant",
            "idempotency_key": decision_key(lv.span_id, lv.seq, v.id, instant),
            "trace_id": trace_id(lv.span_id, lv.seq, instant),
            "related_to": [v.id, lv.span_id],
            "when": format_time(instant),
            "who": principal.user_id,
            "did": did,
            "this": format!("contract {}", v.label()),
            "confirmed_by": format!("law {} (span {} seq {} {})", lv.label(), lv.span_id, lv.seq, lv.curr_hash),
            "if_ok": "the contract is accepted",
            "if_doubt": "the contract is held and the parties asked for evidence",
            "if_not": "the contract is terminated",
            "status": triage.as_str(),
            "content": content,
        }),
        principal,
        &[],
        instant,
    )?;
    Ok((id, draft, triage, actions, fail_closed.is_some()))
}

/// The contract's new version for the composed actions (and joint-liability charges), if the
/// composition changes anything and the contract is still open.
fn state_drafts(
    principal: &Principal,
    instant: DateTime<Utc>,
    laws: &[Ruled],
    decisions: &[Outcome],
    seen: &ContractVersion,
    latest: &ContractVersion,
) -> Result<(Option<Draft>, Vec<Draft>), RulerError> {
    let comp = law::compose(decisions.iter().map(|d| d.actions.as_slice()));
    if comp.state.is_none() && comp.tags.is_empty() && comp.notify.is_empty() {
        return Ok((None, Vec::new()));
    }
    if latest.state().is_some_and(|s| !s.is_open()) {
        return Ok((None, Vec::new()));
    }
    let keys: BTreeSet<String> = decisions
        .iter()
        .map(|d| {
            let lv = &laws[d.law].version;
            decision_key(lv.span_id, lv.seq, seen.id, instant)
        })
        .collect();
    let joined: Vec<&str> = keys.iter().map(String::as_str).collect();
    let digest = ledger::crypto::digest(joined.join("\n").as_bytes());
    let key = format!(
        "contract.ruling:{}:{}:{}",
        seen.id,
        format_time(instant),
        digest.get(7..23).unwrap_or(&digest)
    );
    let ids: Vec<Uuid> = decisions.iter().map(|d| d.id).collect();
    let law_refs: Vec<Value> = decisions
        .iter()
        .map(|d| {
            let lv = &laws[d.law].version;
            json!({"span_id": lv.span_id, "seq": lv.seq, "law": lv.label()})
        })
        .collect();
    let state = build_state(principal, instant, latest, &comp, &key, &ids, &law_refs)?;
    let extra = match (&comp.state, &state) {
        (Some(StateChange::Terminate { reasons }), Some(_)) => {
            let reason = reasons.iter().cloned().collect::<Vec<_>>().join(", ");
            contracts::joint_liability_drafts(principal, latest, &reason, instant, &ids)?
        }
        _ => Vec::new(),
    };
    Ok((state, extra))
}

fn build_state(
    principal: &Principal,
    instant: DateTime<Utc>,
    latest: &ContractVersion,
    comp: &Composition,
    key: &str,
    decision_ids: &[Uuid],
    law_refs: &[Value],
) -> Result<Option<Draft>, RulerError> {
    if latest
        .content
        .pointer("/last_decision/key")
        .and_then(Value::as_str)
        == Some(key)
    {
        return Ok(None);
    }
    let mut c = match &latest.content {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert("unreadable_content".into(), other.clone());
            m
        }
    };
    let (state, did) = match &comp.state {
        Some(StateChange::Terminate { reasons }) => {
            let r = reasons.iter().cloned().collect::<Vec<_>>().join(", ");
            c.insert("state_reason".into(), json!(r));
            (Some(State::Terminated), format!("terminated contract: {r}"))
        }
        Some(StateChange::Accept) => {
            c.insert("state_reason".into(), json!("accepted by law"));
            (Some(State::Accepted), "accepted contract".to_string())
        }
        Some(StateChange::Hold { hours }) => {
            let until = instant + TimeDelta::hours(i64::from(*hours));
            c.insert("hold_until".into(), json!(format_time(until)));
            c.insert("state_reason".into(), json!(format!("held for {hours} h")));
            (Some(State::Held), format!("held contract for {hours} h"))
        }
        None => (None, "tagged contract".to_string()),
    };
    if let Some(s) = state {
        c.insert("state".into(), json!(s.as_str()));
    }
    if !comp.tags.is_empty() {
        let mut tags = match c.get("tags") {
            Some(Value::Object(t)) => t.clone(),
            _ => Map::new(),
        };
        let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in &comp.tags {
            by_key.entry(&t.key).or_default().push(&t.val);
        }
        for (k, vals) in by_key {
            // Two laws tagging one key differently keep both values (composition is a union).
            let v = match vals.as_slice() {
                [one] => json!(one),
                many => json!(many),
            };
            tags.insert(k.to_string(), v);
        }
        c.insert("tags".into(), Value::Object(tags));
    }
    c.insert(
        "last_decision".into(),
        json!({
            "key": key,
            "scheduled_at": format_time(instant),
            "decisions": decision_ids,
            "laws": law_refs,
            "composition": comp,
            "notify": comp.notify,
        }),
    );
    let mut related = decision_ids.to_vec();
    related.extend(
        law_refs
            .iter()
            .filter_map(|l| l.get("span_id").and_then(Value::as_str))
            .filter_map(|s| s.parse::<Uuid>().ok()),
    );
    let confirmed_by = match decision_ids {
        [one] => format!("law.decision {one}"),
        _ => format!("{} law.decision spans", decision_ids.len()),
    };
    Ok(Some(contracts::next_version(
        principal,
        latest,
        Value::Object(c),
        contracts::Change {
            did: &did,
            confirmed_by: &confirmed_by,
            idempotency_key: key.to_string(),
            related_to: related,
            at: instant,
        },
    )?))
}

/// What deciding one chunk of contracts produced, ready to append.
struct Batch {
    drafts: Vec<Draft>,
    /// What each draft is.
    slots: Vec<Slot>,
    /// Copies of the contract versions, in case a contract changed under us (seq conflict).
    spare: Vec<Draft>,
    /// Per law: decisions by triage, and how many failed closed.
    counts: Vec<(Counts, usize)>,
}

fn decide_chunk(
    principal: &Principal,
    instant: DateTime<Utc>,
    laws: &[Ruled],
    priors: &[HashMap<Uuid, Prior>],
    all: &[Contract],
    range: std::ops::Range<usize>,
) -> Result<Batch, RulerError> {
    let mut b = Batch {
        drafts: Vec::new(),
        slots: Vec::new(),
        spare: Vec::new(),
        counts: vec![(Counts::default(), 0); laws.len()],
    };
    for j in range {
        let Some(contract) = all.get(j) else { break };
        let Some(work) = decide_contract(principal, instant, laws, priors, contract)? else {
            continue;
        };
        for d in work.decisions {
            let (counts, failed) = &mut b.counts[d.law];
            counts.add(d.triage);
            if d.fail_closed {
                *failed += 1;
            }
            if let Some((_, draft)) = d.draft {
                b.drafts.push(draft);
                b.slots.push(Slot::Decision(d.law));
            }
        }
        if let Some(s) = work.state {
            b.spare.push(s.clone());
            b.drafts.push(s);
            b.slots.push(Slot::State(j, b.spare.len() - 1));
        }
        if let Some(v) = work.void {
            b.drafts.push(v);
            b.slots.push(Slot::Void);
        }
        for e in work.extra {
            b.drafts.push(e);
            b.slots.push(Slot::Other);
        }
    }
    Ok(b)
}

/// Decides one instant for a group of laws over the given contracts and writes the result.
/// Chunk by chunk: the next chunk is decided on a blocking thread while this one is appended.
async fn run_instant(
    store: &dyn Store,
    principal: &Principal,
    instant: DateTime<Utc>,
    laws: Arc<Vec<Ruled>>,
    all: Arc<Vec<Contract>>,
) -> Result<RulerReport, RulerError> {
    let started = std::time::Instant::now();
    let mut priors = Vec::with_capacity(laws.len());
    for r in laws.iter() {
        let trace = trace_id(r.version.span_id, r.version.seq, instant);
        priors.push(prior_decisions(store, principal, &trace).await?);
    }
    let priors = Arc::new(priors);
    tracing::info!(
        tenant = %principal.tenant_id,
        priors = priors.iter().map(HashMap::len).sum::<usize>(),
        ms = started.elapsed().as_millis() as u64,
        "ruler read earlier decisions"
    );
    let mut runs: Vec<LawRun> = laws
        .iter()
        .map(|r| LawRun {
            law_span_id: r.version.span_id,
            law: r.version.label(),
            law_seq: r.version.seq,
            law_hash: r.version.curr_hash.clone(),
            zone: r.zone_name.clone(),
            zone_known: r.zone.is_some(),
            scheduled_at: instant,
            decided: Counts::default(),
            new_decisions: 0,
            fail_closed: 0,
        })
        .collect();
    let mut report = RulerReport {
        tenant: principal.tenant_id.clone(),
        ..RulerReport::default()
    };
    let chunks = all.len().div_ceil(CHUNK);
    let spawn = |k: usize| {
        let (p, laws, priors, all) = (principal.clone(), laws.clone(), priors.clone(), all.clone());
        tokio::task::spawn_blocking(move || {
            let range = k * CHUNK..((k + 1) * CHUNK).min(all.len());
            decide_chunk(&p, instant, &laws, &priors, &all, range)
        })
    };
    let mut appending = TimeDelta::zero();
    let mut waiting = TimeDelta::zero();
    let mut next = (chunks > 0).then(|| spawn(0));
    for k in 0..chunks {
        let Some(handle) = next.take() else { break };
        let t0 = Utc::now();
        let batch = handle
            .await
            .map_err(|e| RulerError::Task(e.to_string()))??;
        waiting += Utc::now() - t0;
        if k + 1 < chunks {
            next = Some(spawn(k + 1));
        }
        for (run, (counts, failed)) in runs.iter_mut().zip(&batch.counts) {
            run.decided.ok += counts.ok;
            run.decided.doubt += counts.doubt;
            run.decided.not += counts.not;
            run.fail_closed += failed;
        }
        if batch.drafts.is_empty() {
            continue;
        }
        let t1 = Utc::now();
        let results = store::append(store, principal, batch.drafts).await?;
        appending += Utc::now() - t1;
        let mut retry = Vec::new();
        for (slot, result) in batch.slots.iter().zip(&results) {
            match (slot, result) {
                (_, Ok(a)) if a.duplicate => {}
                (Slot::Decision(i), Ok(_)) => {
                    runs[*i].new_decisions += 1;
                    report.spans_written += 1;
                }
                (Slot::State(..), Ok(_)) => {
                    report.contracts_changed += 1;
                    report.spans_written += 1;
                }
                (Slot::Void, Ok(_)) => {
                    report.voided += 1;
                    report.spans_written += 1;
                }
                (Slot::Other, Ok(_)) => report.spans_written += 1,
                (Slot::State(j, s), Err(AppendError::SeqConflict { .. })) => {
                    if let (Some(c), Some(d)) = (all.get(*j), batch.spare.get(*s)) {
                        retry.push((c, d.clone()));
                    }
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, tenant = %principal.tenant_id, "the ruler could not append a span");
                }
            }
        }
        for (contract, draft) in retry {
            if retry_state(store, principal, contract, draft).await? {
                report.contracts_changed += 1;
                report.spans_written += 1;
            }
        }
    }
    tracing::info!(
        tenant = %principal.tenant_id,
        waiting_for_decisions_ms = waiting.num_milliseconds(),
        appending_ms = appending.num_milliseconds(),
        spans = report.spans_written,
        "ruler ruled one midnight"
    );
    report.laws = runs;
    Ok(report)
}

enum Slot {
    Decision(usize),
    /// Contract index in the chunk, index of its spare copy.
    State(usize, usize),
    Void,
    Other,
}

/// Re-applies a contract ruling on the newest version after someone else changed it.
async fn retry_state(
    store: &dyn Store,
    principal: &Principal,
    contract: &Contract,
    failed: Draft,
) -> Result<bool, RulerError> {
    let Some(key) = failed.idempotency_key.clone() else {
        return Ok(false);
    };
    let ruling = failed.body.get("content").cloned().unwrap_or(Value::Null);
    for _ in 0..STATE_ATTEMPTS {
        let Some(latest) = store
            .get(principal, contract.id, None)
            .await?
            .and_then(|s| s.to_view().ok())
            .and_then(ContractVersion::from_view)
        else {
            return Ok(false);
        };
        if latest.state().is_some_and(|s| !s.is_open()) {
            return Ok(false);
        }
        // Carry the ruling's fields onto the newer content.
        let mut c = match &latest.content {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for k in [
            "state",
            "state_reason",
            "hold_until",
            "tags",
            "last_decision",
        ] {
            if let Some(v) = ruling.get(k) {
                c.insert(k.into(), v.clone());
            }
        }
        let did = failed
            .body
            .get("did")
            .and_then(Value::as_str)
            .unwrap_or("ruled contract")
            .to_string();
        let confirmed_by = failed
            .body
            .get("confirmed_by")
            .and_then(Value::as_str)
            .unwrap_or(RULER_USER)
            .to_string();
        let draft = contracts::next_version(
            principal,
            &latest,
            Value::Object(c),
            contracts::Change {
                did: &did,
                confirmed_by: &confirmed_by,
                idempotency_key: key.clone(),
                related_to: failed.related_to.clone(),
                at: failed.at,
            },
        )?;
        match store::append(store, principal, vec![draft]).await?.pop() {
            Some(Ok(a)) => return Ok(!a.duplicate),
            Some(Err(AppendError::SeqConflict { .. })) => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, contract = %contract.id, "ruling not applied");
                return Ok(false);
            }
            None => return Ok(false),
        }
    }
    Ok(false)
}

// ---- backfill --------------------------------------------------------------------------------

/// The checkpoint span id of one law span in one tenant (deterministic, so every process finds
/// the same one).
pub fn checkpoint_id(tenant: &str, law_span: Uuid) -> Uuid {
    let digest = ledger::crypto::digest(format!("{CHECKPOINT}\0{tenant}\0{law_span}").as_bytes());
    let bytes = ledger::crypto::digest_bytes(&digest).unwrap_or([0; 32]);
    let mut first = [0u8; 16];
    first.copy_from_slice(&bytes[..16]);
    uuid::Builder::from_custom_bytes(first).into_uuid()
}

/// The last midnight a law's checkpoint records.
pub async fn last_checkpoint(
    store: &dyn Store,
    principal: &Principal,
    law_span: Uuid,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let id = checkpoint_id(&principal.tenant_id, law_span);
    Ok(store
        .get(principal, id, None)
        .await?
        .and_then(|s| s.to_view().ok())
        .and_then(|v| {
            v.pointer("/content/last_midnight")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        })
        .map(|t| t.with_timezone(&Utc)))
}

fn checkpoint_draft(
    principal: &Principal,
    span: &LawSpan,
    zone: &str,
    instant: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Draft, InputError> {
    let label = span.latest().map(LawVersion::label).unwrap_or_default();
    Draft::from_value(
        json!({
            "id": checkpoint_id(&principal.tenant_id, span.id),
            "entity_type": CHECKPOINT,
            "visibility": "tenant",
            "idempotency_key": format!("{CHECKPOINT}:{}:{}", span.id, format_time(instant)),
            "related_to": [span.id],
            "when": format_time(now),
            "who": principal.user_id,
            "did": "ruled midnight",
            "this": format!("law {label}"),
            "confirmed_by": RULER_USER,
            "if_ok": "continue from the next midnight",
            "if_doubt": "re-run this midnight (idempotent)",
            "if_not": "re-run this midnight (idempotent)",
            "status": "done",
            "content": {"law_span_id": span.id, "law": label, "zone": zone, "last_midnight": format_time(instant)}
        }),
        principal,
        &[],
        now,
    )
}

/// The kernel loop's step: in every tenant, runs each midnight that every active midnight law
/// has missed up to `now`, oldest first, and checkpoints each. Safe to run from several
/// processes at once (decisions, rulings and checkpoints are idempotent).
pub async fn catch_up(
    store: &dyn Store,
    now: DateTime<Utc>,
) -> Result<Vec<RulerReport>, RulerError> {
    let mut out = Vec::new();
    for tenant in store.tenants().await? {
        if tenant == SYSTEM_TENANT {
            continue;
        }
        out.push(catch_up_tenant(store, &tenant, now).await?);
    }
    Ok(out)
}

/// [`catch_up`] for one tenant.
pub async fn catch_up_tenant(
    store: &dyn Store,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<RulerReport, RulerError> {
    let principal = ruler_principal(tenant);
    let laws = load_laws(store, &principal).await?;
    let mut due: BTreeMap<DateTime<Utc>, Vec<(usize, String)>> = BTreeMap::new();
    for (i, span) in laws.iter().enumerate() {
        let (Some(first), Some(latest)) = (span.versions.first(), span.latest()) else {
            continue;
        };
        let Some(zone_name) = latest.midnight_zone() else {
            continue;
        };
        let zone = resolve_zone(zone_name);
        let mut m = match last_checkpoint(store, &principal, span.id).await? {
            Some(last) => next_midnight_after(zone, last),
            None => {
                let m = midnight_at_or_before(zone, first.at);
                if m < first.at {
                    next_midnight_after(zone, first.at)
                } else {
                    m
                }
            }
        };
        let mut n = 0;
        while m <= now && n < MAX_BACKFILL {
            due.entry(m).or_default().push((i, zone_name.to_string()));
            m = next_midnight_after(zone, m);
            n += 1;
        }
    }
    let mut report = RulerReport {
        tenant: tenant.to_string(),
        ..RulerReport::default()
    };
    if due.is_empty() {
        return Ok(report);
    }
    let mut contracts = Arc::new(contracts::load_all(store, &principal).await?);
    let mut stale = false;
    for (instant, entries) in &due {
        let group: Vec<Ruled> = entries
            .iter()
            .filter_map(|(i, zone_name)| {
                ruled(&laws[*i], *instant, zone_name, resolve_zone(zone_name))
            })
            .collect();
        if !group.is_empty() {
            if stale {
                contracts = Arc::new(contracts::load_all(store, &principal).await?);
            }
            let r = run_instant(
                store,
                &principal,
                *instant,
                Arc::new(group),
                contracts.clone(),
            )
            .await?;
            stale = r.spans_written > 0;
            report.merge(r);
        }
        let checkpoints = entries
            .iter()
            .map(|(i, zone_name)| checkpoint_draft(&principal, &laws[*i], zone_name, *instant, now))
            .collect::<Result<Vec<_>, _>>()?;
        for r in store::append(store, &principal, checkpoints).await? {
            match r {
                Ok(a) if !a.duplicate => report.spans_written += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, tenant, "checkpoint not written"),
            }
        }
    }
    Ok(report)
}

// ---- simulation ------------------------------------------------------------------------------

/// One contract whose triage would change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub contract: String,
    pub contract_id: Uuid,
    pub before: Triage,
    pub after: Triage,
}

/// What a law would decide with some variables overridden.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    pub law: String,
    pub law_span_id: Uuid,
    pub law_seq: i64,
    pub zone: String,
    pub scheduled_at: DateTime<Utc>,
    /// Contracts the law would decide.
    pub considered: usize,
    pub before: Counts,
    pub after: Counts,
    pub changed: Vec<Change>,
}

/// Dry-runs the law named `law_ref` (span id, span name or law id) at the midnight `when` (by
/// default the next one after `now`), with each `(path, value)` of `overrides` set in every
/// contract's variables, and reports whose triage would change. Reads only; writes nothing.
pub async fn simulate(
    store: &dyn Store,
    tenant: &str,
    law_ref: &str,
    overrides: &[(String, Value)],
    when: Option<When>,
    tz_override: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Simulation, RulerError> {
    let principal = ruler_principal(tenant);
    let laws = load_laws(store, &principal).await?;
    let span = laws
        .iter()
        .find(|s| s.is_named(law_ref))
        .ok_or_else(|| RulerError::LawNotFound(law_ref.to_string()))?;
    let latest = span
        .latest()
        .ok_or_else(|| RulerError::LawNotFound(law_ref.to_string()))?;
    let law = latest
        .law
        .as_ref()
        .map_err(|e| RulerError::LawUnparsable(law_ref.to_string(), e.clone()))?;
    let zone_name = tz_override
        .map(str::to_string)
        .or_else(|| match &law.clock {
            Some(law::Clock::Midnight { tz }) => Some(tz.clone()),
            _ => None,
        })
        .unwrap_or_else(|| law::Clock::DEFAULT_TZ.to_string());
    let zone = resolve_zone(&zone_name);
    let instant = match when {
        Some(w) => w.instant(zone),
        None => next_midnight_after(zone, now),
    };
    let contracts = contracts::load_all(store, &principal).await?;
    let mut sim = Simulation {
        law: latest.label(),
        law_span_id: span.id,
        law_seq: latest.seq,
        zone: zone_name.clone(),
        scheduled_at: instant,
        considered: 0,
        before: Counts::default(),
        after: Counts::default(),
        changed: Vec::new(),
    };
    for c in &contracts {
        let Some(v) = c.before(instant) else { continue };
        if v.state().is_some_and(|s| !s.is_open())
            || contracts::witness_lapsed(&v.content, instant) == Some(true)
            || !in_scope(law, v)
        {
            continue;
        }
        sim.considered += 1;
        let vars = contracts::variables(v);
        let mut changed_vars = vars.clone();
        for (path, value) in overrides {
            set_path(&mut changed_vars, path, value.clone());
        }
        let (before, after) = if zone.is_some() {
            (
                law::evaluate(law, &vars, instant).triage,
                law::evaluate(law, &changed_vars, instant).triage,
            )
        } else {
            (Triage::Doubt, Triage::Doubt)
        };
        sim.before.add(before);
        sim.after.add(after);
        if before != after {
            sim.changed.push(Change {
                contract: v.label(),
                contract_id: v.id,
                before,
                after,
            });
        }
    }
    Ok(sim)
}

/// Sets a dotted path in a JSON object, creating objects on the way (a non-object on the way
/// is replaced: an override wins).
pub fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut cur = target;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            obj.insert((*part).to_string(), value);
            return;
        }
        cur = obj
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn paris_midnights_follow_daylight_saving_time() {
        let paris = resolve_zone("Europe/Paris");
        assert_eq!(
            midnight_on(paris, date("2026-03-29")),
            utc("2026-03-28T23:00:00Z")
        );
        assert_eq!(
            midnight_on(paris, date("2026-03-30")),
            utc("2026-03-29T22:00:00Z")
        );
        assert_eq!(
            midnight_on(paris, date("2026-10-25")),
            utc("2026-10-24T22:00:00Z")
        );
        assert_eq!(
            midnight_on(paris, date("2026-10-26")),
            utc("2026-10-25T23:00:00Z")
        );
        // The day clocks go forward has 23 hours between its midnights.
        assert_eq!(
            next_midnight_after(paris, utc("2026-03-28T23:00:00Z")),
            utc("2026-03-29T22:00:00Z")
        );
        assert_eq!(
            midnight_at_or_before(paris, utc("2026-03-29T21:59:59Z")),
            utc("2026-03-28T23:00:00Z")
        );
    }

    #[test]
    fn a_skipped_midnight_is_the_first_valid_instant_after_it() {
        // Chile moves clocks from 00:00 to 01:00 on the first Sunday of September 2024.
        let santiago = resolve_zone("America/Santiago");
        assert_eq!(
            midnight_on(santiago, date("2024-09-08")),
            utc("2024-09-08T04:00:00Z")
        );
        assert_eq!(
            midnight_on(santiago, date("2024-09-09")),
            utc("2024-09-09T03:00:00Z")
        );
    }

    #[test]
    fn a_repeated_midnight_is_the_first_of_the_two() {
        // Cuba falls back from 01:00 to 00:00 on 2024-11-03: 00:00-00:59 happens twice.
        let havana = resolve_zone("America/Havana");
        assert_eq!(
            midnight_on(havana, date("2024-11-03")),
            utc("2024-11-03T04:00:00Z")
        );
    }

    #[test]
    fn an_unknown_zone_means_utc_midnights() {
        assert!(resolve_zone("Mars/Olympus_Mons").is_none());
        assert_eq!(
            midnight_on(None, date("2026-01-05")),
            utc("2026-01-05T00:00:00Z")
        );
    }

    #[test]
    fn stored_actions_read_back() {
        for a in [
            Action::Accept,
            Action::Hold { hours: 24 },
            Action::Terminate {
                reason: "deadline_passed".into(),
            },
            Action::Notify { role: "ops".into() },
            Action::Tag {
                key: "status".into(),
                val: "x".into(),
            },
            Action::AppendLedger,
            Action::Permit,
            Action::Deny,
        ] {
            let v = serde_json::to_value(&a).unwrap();
            assert_eq!(action_from_json(&v), Some(a));
        }
    }

    #[test]
    fn overrides_set_nested_paths() {
        let mut v = json!({"quorum": 2, "a": 1});
        set_path(&mut v, "quorum", json!(3));
        set_path(&mut v, "a.b", json!(true));
        assert_eq!(v, json!({"quorum": 3, "a": {"b": true}}));
    }
}

// ---- reading a midnight from text ------------------------------------------------------------

/// A `--at` / `at` value that is neither a local date nor an RFC 3339 instant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{0}` is neither a date (YYYY-MM-DD) nor an RFC 3339 instant")]
pub struct WhenError(pub String);

/// `2026-03-07` is a local date; anything else must be an RFC 3339 instant. How a person (the
/// CLI) or the model (the `simulate_law` tool) names the midnight to run or simulate.
pub fn parse_when(s: &str) -> Result<When, WhenError> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(When::Date(d));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| When::AtOrBefore(t.with_timezone(&Utc)))
        .map_err(|_| WhenError(s.to_string()))
}

#[cfg(test)]
mod when_tests {
    use super::*;

    #[test]
    fn a_date_is_a_local_midnight_and_an_instant_the_one_before_it() {
        assert_eq!(
            parse_when("2026-03-07"),
            Ok(When::Date(NaiveDate::from_ymd_opt(2026, 3, 7).unwrap()))
        );
        assert!(matches!(
            parse_when("2026-03-07T12:00:00+01:00"),
            Ok(When::AtOrBefore(_))
        ));
        assert_eq!(
            parse_when("tomorrow").unwrap_err().to_string(),
            "`tomorrow` is neither a date (YYYY-MM-DD) nor an RFC 3339 instant"
        );
    }
}
