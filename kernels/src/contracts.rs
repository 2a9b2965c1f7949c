//! Contracts (seed 001, Articles 6–8; DESIGN §6): the span shape, the social rules that make a
//! contract valid (witness, guarantor, anti-coercion, reputation), and despacho.
//!
//! # The contract span
//!
//! A contract is a span with `entity_type = "contract"`, `visibility = "tenant"` (every member of
//! the tenant, and so the Midnight Ruler, can read it; a private contract is governed by no one),
//! a stable `name` such as `"D1"` (unique per tenant: creation is idempotent on it), and the
//! span `status` mirroring `content.state`. Its `content`:
//!
//! ```json
//! {
//!   "name": "D1",                         // the span name, repeated
//!   "scope": "deliverable",              // which laws govern it (a law's `scope:`)
//!   "title": "200 pastéis de nata for the Friday shoot",
//!   "parties": [{"who": "ana@padaria", "role": "supplier", "confirmed_at": "…"},
//!               {"who": "marta@luz", "role": "client", "confirmed_at": "…"}],
//!   "witness": {"who": "clara@cartorio", "confirmed_at": "…" | null},
//!   "guarantor": {"who": "pedro@luz", "for": "marta@luz", "liability": "joint_and_several",
//!                 "requested_at": "…", "responded_at": null, "confirmed_at": null,
//!                 "declined": false},                       // optional
//!   "asset_value": 1200,                  // optional; raises the guarantor's reputation bar
//!   "created_at": "…",
//!   "deadline_at": "…",
//!   "accepted": false,
//!   "approvals": [{"who": "…", "at": "…"}],
//!   "quorum": 2,
//!   "evidence": [{"kind": "delivery_note", "by": "…", "at": "…", "note": "…"}],
//!   "evidence_required": ["delivery_note"],                  // optional
//!   "state": "active",                    // active | accepted | held | terminated | void
//!   "state_reason": null,
//!   "hold_until": null,
//!   "tags": {"status": "under_review"},
//!   "last_decision": {"key": "…", "scheduled_at": "…", "decisions": ["<law.decision id>"]}
//! }
//! ```
//!
//! Times are RFC 3339 strings. Laws read these fields by name (`deadline_at`, `accepted`,
//! `approvals.count`, `quorum`, `guarantor.responded_at`); the Midnight Ruler adds
//! `evidence.missing` (see [`variables`]).
//!
//! **Changes are new versions, never updates.** Confirming, responding, voiding and every ruling
//! append the next `seq` of the same span id with the whole content carried forward; the
//! history of a contract is its list of versions. Each such append carries an idempotency key,
//! so retrying any of these operations never has a second effect.
//!
//! # The rules
//!
//! - **Witness** (Article 6): the named witness must confirm within [`WITNESS_WINDOW`] (1 h) of
//!   creation, or the contract is **void**. A late confirmation voids it; a contract nobody
//!   confirmed is voided by the Midnight Ruler the first midnight after its hour ran out. The
//!   witness may not be a party.
//! - **Guarantor** (Article 7): a different person from every party (no self-guarantee);
//!   liability `joint_and_several` unless stated: when the guaranteed party defaults (the
//!   contract is terminated by a law), both are charged and both lose reputation
//!   ([`JOINT_LIABILITY_PENALTY`]).
//! - **Anti-coercion**: the guarantor's confirmation and the guaranteed party's must be **more
//!   than** [`ANTI_COERCION_GAP`] (5 min) apart, so nobody signs for a friend standing at their
//!   shoulder. A contract that breaks it is rejected, at creation or at the guarantor's answer.
//! - **Reputation gate**: the guarantor's reputation must reach the bar for the asset's value
//!   ([`ReputationGate`]); reputation is [`DEFAULT_REPUTATION`] plus the deltas of the person's
//!   `reputation_event` spans, kept in 0–100 (append-only, so concurrent changes never race).
//!
//! # Despacho (Article 8)
//!
//! A witnessed hand-off of responsibility for something found in a given condition: a
//! `despacho` span from the reporter to the responsible party, with evidence and a witness
//! distinct from both. The delay between observing and reporting is evidence in itself
//! ([`Credibility`]: ≤ 30 s credible, ≤ 5 min questionable, beyond that suspicious). The
//! responsible party must answer within 1 h: silence is acceptance, a rejection opens the doubt
//! phase ([`DespachoOutcome`]).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use ledger::query::MAX_LIMIT;
use ledger::span::format_time;
use ledger::store;
use ledger::{AppendError, Appended, Draft, Filter, Principal, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use thiserror::Error;
use uuid::Uuid;

/// The `entity_type` of contracts.
pub const ENTITY_TYPE: &str = "contract";
/// The `entity_type` of reputation changes.
pub const REPUTATION_EVENT: &str = "reputation_event";
/// The `entity_type` of joint-liability charges.
pub const CHARGE: &str = "charge";
/// The `entity_type` of hand-offs.
pub const DESPACHO: &str = "despacho";
/// The `entity_type` of the responsible party's answer to a despacho.
pub const DESPACHO_RESPONSE: &str = "despacho_response";

/// How long the witness has to confirm a new contract.
pub const WITNESS_WINDOW: TimeDelta = TimeDelta::hours(1);
/// Confirmations of the guarantor and the guaranteed party must be further apart than this.
pub const ANTI_COERCION_GAP: TimeDelta = TimeDelta::minutes(5);
/// How long the responsible party has to answer a despacho before silence counts as acceptance.
pub const DESPACHO_ANSWER_WINDOW: TimeDelta = TimeDelta::hours(1);
/// Reputation of someone with no `reputation_event` yet.
pub const DEFAULT_REPUTATION: i64 = 50;
/// What a default costs the guaranteed party and the guarantor, each.
pub const JOINT_LIABILITY_PENALTY: i64 = -20;

/// Where a contract stands. `Active` and `Held` are open (the Midnight Ruler still decides
/// them); the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Active,
    Accepted,
    Held,
    Terminated,
    Void,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Accepted => "accepted",
            Self::Held => "held",
            Self::Terminated => "terminated",
            Self::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "accepted" => Self::Accepted,
            "held" => Self::Held,
            "terminated" => Self::Terminated,
            "void" => Self::Void,
            _ => return None,
        })
    }

    /// Still to be decided: laws apply to it.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Active | Self::Held)
    }
}

/// One party to a contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Party {
    pub who: String,
    /// `supplier`, `client`, `borrower`, `lender`, …
    pub role: String,
    #[serde(default)]
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Witness {
    pub who: String,
    #[serde(default)]
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guarantor {
    pub who: String,
    /// The party guaranteed; by default the `borrower`, else the first party.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_party: Option<String>,
    #[serde(default = "joint_and_several")]
    pub liability: String,
    /// When the guarantor was asked.
    #[serde(default)]
    pub requested_at: Option<DateTime<Utc>>,
    /// When the guarantor answered, yes or no.
    #[serde(default)]
    pub responded_at: Option<DateTime<Utc>>,
    /// When the guarantor said yes.
    #[serde(default)]
    pub confirmed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub declined: bool,
}

fn joint_and_several() -> String {
    "joint_and_several".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub who: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn one() -> u32 {
    1
}

/// What a new contract says. Typed: validated at the edge, written as the content above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    pub name: String,
    pub scope: String,
    pub title: String,
    pub parties: Vec<Party>,
    pub witness: Witness,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantor: Option<Guarantor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_value: Option<f64>,
    pub deadline_at: DateTime<Utc>,
    #[serde(default)]
    pub accepted: bool,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default = "one")]
    pub quorum: u32,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence_required: Vec<String>,
}

/// The reputation a guarantor needs, by the value at stake.
#[derive(Debug, Clone, PartialEq)]
pub struct ReputationGate {
    /// `(value below which, required reputation)`, ascending; above the last bound, `top`.
    pub tiers: Vec<(f64, i64)>,
    pub top: i64,
}

impl Default for ReputationGate {
    /// Below 1,000: 40; below 10,000: 60; above: 80.
    fn default() -> Self {
        Self {
            tiers: vec![(1_000.0, 40), (10_000.0, 60)],
            top: 80,
        }
    }
}

impl ReputationGate {
    pub fn required(&self, asset_value: Option<f64>) -> i64 {
        let value = asset_value.unwrap_or(0.0);
        self.tiers
            .iter()
            .find(|(bound, _)| value < *bound)
            .map_or(self.top, |(_, r)| *r)
    }
}

#[derive(Debug, Error)]
pub enum ContractError {
    #[error("the contract needs {0}")]
    Incomplete(&'static str),
    #[error("the guarantor {0} is a party to the contract: a guarantor must be a different person")]
    SelfGuarantee(String),
    #[error("the witness {0} is a party to the contract: a witness must be independent")]
    PartialWitness(String),
    #[error(
        "anti-coercion: the confirmations of {party} and of the guarantor {guarantor} are {gap_seconds} s apart; they must be more than 5 minutes apart"
    )]
    Coercion {
        party: String,
        guarantor: String,
        gap_seconds: i64,
    },
    #[error(
        "reputation gate: the guarantor {who} has reputation {score}, below the {required} required for this asset"
    )]
    Reputation {
        who: String,
        score: i64,
        required: i64,
    },
    #[error("no contract named or identified `{0}` is visible")]
    NotFound(String),
    #[error("{who} is not the {role} of contract {contract}")]
    NotYourRole {
        who: String,
        role: &'static str,
        contract: String,
    },
    #[error("contract {contract} is {state}: it can no longer change")]
    Closed { contract: String, state: String },
    #[error("contract {0} has no guarantor")]
    NoGuarantor(String),
    #[error("contract {0} is unreadable: {1}")]
    Unreadable(String, String),
    #[error("despacho: {0}")]
    Despacho(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rejected by the ledger: {0}")]
    Input(#[from] ledger::InputError),
    #[error("rejected by the ledger: {0}")]
    Append(#[from] AppendError),
}

/// People compare equal whatever their spacing or case.
pub fn same_person(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The party a guarantor vouches for: named by `for`, else the borrower, else the first party.
pub fn guaranteed_party<'a>(terms: &'a Terms, g: &Guarantor) -> Option<&'a Party> {
    match &g.for_party {
        Some(who) => terms.parties.iter().find(|p| same_person(&p.who, who)),
        None => terms
            .parties
            .iter()
            .find(|p| p.role == "borrower")
            .or_else(|| terms.parties.first()),
    }
}

/// The anti-coercion rule on two confirmation instants.
pub fn confirmations_far_enough(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() > ANTI_COERCION_GAP
}

/// Checks the rules that need no ledger: completeness, distinct people, anti-coercion.
pub fn check_shape(terms: &Terms) -> Result<(), ContractError> {
    if terms.name.trim().is_empty() {
        return Err(ContractError::Incomplete("a name"));
    }
    if terms.scope.trim().is_empty() {
        return Err(ContractError::Incomplete("a scope"));
    }
    if terms.parties.is_empty() {
        return Err(ContractError::Incomplete("at least one party"));
    }
    if terms.witness.who.trim().is_empty() {
        return Err(ContractError::Incomplete("a witness"));
    }
    if terms
        .parties
        .iter()
        .any(|p| same_person(&p.who, &terms.witness.who))
    {
        return Err(ContractError::PartialWitness(terms.witness.who.clone()));
    }
    if let Some(g) = &terms.guarantor {
        if terms.parties.iter().any(|p| same_person(&p.who, &g.who)) {
            return Err(ContractError::SelfGuarantee(g.who.clone()));
        }
        let party = guaranteed_party(terms, g).ok_or(ContractError::Incomplete(
            "the guaranteed party among its parties",
        ))?;
        if let (Some(a), Some(b)) = (party.confirmed_at, g.confirmed_at)
            && !confirmations_far_enough(a, b)
        {
            return Err(ContractError::Coercion {
                party: party.who.clone(),
                guarantor: g.who.clone(),
                gap_seconds: (a - b).num_seconds().abs(),
            });
        }
    }
    Ok(())
}

/// Every rule checked at creation: [`check_shape`] and the reputation gate, given the
/// guarantor's reputation.
pub fn check_terms(
    terms: &Terms,
    guarantor_reputation: Option<i64>,
    gate: &ReputationGate,
) -> Result<(), ContractError> {
    check_shape(terms)?;
    if let Some(g) = &terms.guarantor {
        let score = guarantor_reputation.unwrap_or(DEFAULT_REPUTATION);
        let required = gate.required(terms.asset_value);
        if score < required {
            return Err(ContractError::Reputation {
                who: g.who.clone(),
                score,
                required,
            });
        }
    }
    Ok(())
}

/// One version of a contract as read from the ledger. `content` is whatever was stored: the
/// readers below never assume it is well formed.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractVersion {
    pub id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub curr_hash: String,
    pub name: Option<String>,
    /// The span `status`.
    pub status: String,
    pub content: Value,
    /// The rest of the view (all but `content`), to carry fields forward into the next version.
    pub view: Value,
}

impl ContractVersion {
    /// `None` for a view without a usable id, seq or time (not a span this code wrote).
    pub fn from_view(mut view: Value) -> Option<Self> {
        let content = view
            .as_object_mut()
            .and_then(|m| m.remove("content"))
            .unwrap_or(Value::Null);
        let id = view.get("id")?.as_str()?.parse().ok()?;
        let seq = view.get("seq")?.as_i64()?;
        let at = parse_time(view.get("at")?)?;
        Some(Self {
            id,
            seq,
            at,
            curr_hash: text(&view, "curr_hash").unwrap_or_default().to_string(),
            name: text(&view, "name").map(str::to_string),
            status: text(&view, "status").unwrap_or_default().to_string(),
            content,
            view,
        })
    }

    /// The state, from the content or else the span status; `None` when neither reads.
    pub fn state(&self) -> Option<State> {
        self.content
            .get("state")
            .and_then(Value::as_str)
            .and_then(State::parse)
            .or_else(|| State::parse(&self.status))
    }

    /// The name to show: the span name, else the id.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// The terms, if the content is well formed.
    pub fn terms(&self) -> Result<Terms, ContractError> {
        let mut content = self.content.clone();
        if let Some(c) = content.as_object_mut()
            && !c.contains_key("name")
        {
            c.insert("name".into(), json!(self.label()));
        }
        serde_json::from_value(content)
            .map_err(|e| ContractError::Unreadable(self.label(), e.to_string()))
    }
}

/// A contract: all its versions, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub id: Uuid,
    pub versions: Vec<ContractVersion>,
}

impl Contract {
    /// The newest version. A `Contract` always has one.
    pub fn latest(&self) -> Option<&ContractVersion> {
        self.versions.last()
    }

    /// The newest version recorded (by its `at`) strictly before `t`: what the ledger said
    /// the contract was just before that instant.
    pub fn before(&self, t: DateTime<Utc>) -> Option<&ContractVersion> {
        self.versions
            .iter()
            .filter(|v| v.at < t)
            .max_by_key(|v| v.seq)
    }

    pub fn label(&self) -> String {
        self.latest()
            .map_or_else(|| self.id.to_string(), ContractVersion::label)
    }
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Reads every span of one `entity_type` in the principal's tenant, page by page, as views.
/// Rows that cannot be read are skipped (and logged): one corrupt row must not stop a run.
pub async fn load_views(
    store: &dyn Store,
    principal: &Principal,
    entity_type: &str,
) -> Result<Vec<Value>, StoreError> {
    let mut filter = Filter {
        entity_type: Some(entity_type.to_string()),
        tenant_id: Some(principal.tenant_id.clone()),
        limit: Some(MAX_LIMIT),
        ..Filter::default()
    };
    let mut out = Vec::new();
    let mut page = store.query(principal, &filter).await?;
    loop {
        let parse = |rows: &[ledger::query::Row], out: &mut Vec<Value>| {
            for row in rows {
                match row.span.to_view() {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        tracing::warn!(ingest_id = row.ingest_id, error = %e, "unreadable span skipped")
                    }
                }
            }
        };
        let Some(cursor) = page.next_cursor else {
            parse(&page.rows, &mut out);
            return Ok(out);
        };
        // The next page is fetched while this one is parsed.
        filter.after = Some(cursor);
        let rows = std::mem::take(&mut page.rows);
        let (next, ()) = tokio::join!(store.query(principal, &filter), async {
            parse(&rows, &mut out)
        });
        page = next?;
    }
}

/// Every contract of the principal's tenant that the principal may see, with all versions,
/// ordered by name then id.
pub async fn load_all(
    store: &dyn Store,
    principal: &Principal,
) -> Result<Vec<Contract>, StoreError> {
    let views = load_views(store, principal, ENTITY_TYPE).await?;
    Ok(group_versions(views))
}

/// Groups contract views into contracts (versions sorted by seq; contracts by name, then id).
pub fn group_versions(views: Vec<Value>) -> Vec<Contract> {
    let mut by_id: BTreeMap<Uuid, Vec<ContractVersion>> = BTreeMap::new();
    for v in views {
        if let Some(cv) = ContractVersion::from_view(v) {
            by_id.entry(cv.id).or_default().push(cv);
        }
    }
    let mut out: Vec<Contract> = by_id
        .into_iter()
        .map(|(id, mut versions)| {
            versions.sort_by_key(|v| v.seq);
            Contract { id, versions }
        })
        .collect();
    out.sort_by(|a, b| a.label().cmp(&b.label()).then(a.id.cmp(&b.id)));
    out
}

/// A contract by id or by name.
pub async fn find(
    store: &dyn Store,
    principal: &Principal,
    reference: &str,
) -> Result<Option<Contract>, StoreError> {
    if let Ok(id) = reference.parse::<Uuid>() {
        let versions: Vec<ContractVersion> = store
            .versions(principal, id)
            .await?
            .iter()
            .filter_map(|s| s.to_view().ok())
            .filter(|v| text(v, "entity_type") == Some(ENTITY_TYPE))
            .filter_map(ContractVersion::from_view)
            .collect();
        return Ok((!versions.is_empty()).then_some(Contract { id, versions }));
    }
    Ok(load_all(store, principal)
        .await?
        .into_iter()
        .find(|c| c.latest().and_then(|v| v.name.as_deref()) == Some(reference)))
}

async fn find_required(
    store: &dyn Store,
    principal: &Principal,
    reference: &str,
) -> Result<(Contract, ContractVersion), ContractError> {
    let contract = find(store, principal, reference)
        .await?
        .ok_or_else(|| ContractError::NotFound(reference.to_string()))?;
    let latest = contract
        .latest()
        .cloned()
        .ok_or_else(|| ContractError::NotFound(reference.to_string()))?;
    Ok((contract, latest))
}

/// A person's reputation: [`DEFAULT_REPUTATION`] plus the deltas of their `reputation_event`
/// spans in the tenant, kept within 0–100.
pub async fn reputation(
    store: &dyn Store,
    principal: &Principal,
    who: &str,
) -> Result<i64, StoreError> {
    let mut filter = Filter {
        entity_type: Some(REPUTATION_EVENT.to_string()),
        tenant_id: Some(principal.tenant_id.clone()),
        this: Some(person_key(who)),
        limit: Some(MAX_LIMIT),
        ..Filter::default()
    };
    let mut score = DEFAULT_REPUTATION;
    loop {
        let page = store.query(principal, &filter).await?;
        for row in &page.rows {
            if let Ok(v) = row.span.to_view() {
                score += v
                    .pointer("/content/delta")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
            }
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    Ok(score.clamp(0, 100))
}

/// How a person is written in `reputation_event.this`: trimmed, lower case.
pub fn person_key(who: &str) -> String {
    who.trim().to_ascii_lowercase()
}

/// A `reputation_event` draft (append it, alone or in a batch). `key` makes it idempotent.
pub fn reputation_draft(
    principal: &Principal,
    who: &str,
    delta: i64,
    reason: &str,
    key: &str,
    at: DateTime<Utc>,
    related: &[Uuid],
) -> Result<Draft, ledger::InputError> {
    Draft::from_value(
        json!({
            "entity_type": REPUTATION_EVENT,
            "visibility": "tenant",
            "idempotency_key": key,
            "related_to": related,
            "when": format_time(at),
            "who": principal.user_id,
            "did": if delta < 0 { "lowered reputation" } else { "raised reputation" },
            "this": person_key(who),
            "confirmed_by": principal.user_id,
            "if_ok": "count it in the person's reputation",
            "if_doubt": "count it and let the person contest it",
            "if_not": "count it and let the person contest it",
            "status": "applied",
            "content": {"who": who, "delta": delta, "reason": reason}
        }),
        principal,
        &[],
        at,
    )
}

/// Records a reputation change (idempotent on `key`).
pub async fn adjust_reputation(
    store: &dyn Store,
    principal: &Principal,
    who: &str,
    delta: i64,
    reason: &str,
    key: &str,
    at: DateTime<Utc>,
) -> Result<Appended, ContractError> {
    let d = reputation_draft(principal, who, delta, reason, key, at, &[])?;
    append_one(store, principal, d).await
}

async fn append_one(
    store: &dyn Store,
    principal: &Principal,
    draft: Draft,
) -> Result<Appended, ContractError> {
    match store::append(store, principal, vec![draft])
        .await?
        .into_iter()
        .next()
    {
        Some(Ok(a)) => Ok(a),
        Some(Err(e)) => Err(e.into()),
        None => Err(ContractError::Store(StoreError::Corrupt(
            "the store returned no result for an append".into(),
        ))),
    }
}

/// Creates a contract after checking every rule (the guarantor's reputation is read from the
/// ledger). Idempotent on the name: creating "D1" again returns the first D1 (`duplicate`).
/// Nothing is written when a rule fails.
pub async fn create(
    store: &dyn Store,
    principal: &Principal,
    terms: &Terms,
    gate: &ReputationGate,
    now: DateTime<Utc>,
) -> Result<Appended, ContractError> {
    check_shape(terms)?;
    let rep = match &terms.guarantor {
        Some(g) => Some(reputation(store, principal, &g.who).await?),
        None => None,
    };
    check_terms(terms, rep, gate)?;
    let mut content = match serde_json::to_value(terms) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(ContractError::Incomplete(
                "terms that serialise to an object",
            ));
        }
    };
    content.insert("created_at".into(), json!(format_time(now)));
    content.insert("state".into(), json!(State::Active.as_str()));
    content.insert("state_reason".into(), Value::Null);
    content.insert("hold_until".into(), Value::Null);
    content.insert("tags".into(), json!({}));
    let draft = Draft::from_value(
        json!({
            "entity_type": ENTITY_TYPE,
            "name": terms.name,
            "visibility": "tenant",
            "idempotency_key": format!("contract:{}", terms.name),
            "when": format_time(now),
            "who": principal.user_id,
            "did": "proposed contract",
            "this": terms.title,
            "confirmed_by": terms.witness.who,
            "if_ok": "accept it when its obligations are met",
            "if_doubt": "hold it and ask for evidence",
            "if_not": "terminate it",
            "status": State::Active.as_str(),
            "content": content
        }),
        principal,
        &[],
        now,
    )?;
    append_one(store, principal, draft).await
}

/// What a contract version change says, besides the new content.
pub struct Change<'a> {
    pub did: &'a str,
    pub confirmed_by: &'a str,
    pub idempotency_key: String,
    pub related_to: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

/// The next version of `latest` with `content`: same id, `seq + 1` (so a concurrent change
/// makes this one fail with a seq conflict instead of silently overwriting it), the span
/// fields carried forward, the status mirroring `content.state`.
pub fn next_version(
    principal: &Principal,
    latest: &ContractVersion,
    content: Value,
    change: Change<'_>,
) -> Result<Draft, ledger::InputError> {
    let status = content
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or(&latest.status)
        .to_string();
    let keep = |k: &str| latest.view.get(k).cloned().unwrap_or(Value::Null);
    let visibility = match text(&latest.view, "visibility") {
        Some(v @ ("tenant" | "public" | "private")) => v.to_string(),
        _ => "tenant".to_string(),
    };
    let mut v = json!({
        "id": latest.id,
        "seq": latest.seq + 1,
        "entity_type": ENTITY_TYPE,
        "name": keep("name"),
        "visibility": visibility,
        "idempotency_key": change.idempotency_key,
        "related_to": change.related_to,
        "when": format_time(change.at),
        "who": principal.user_id,
        "did": change.did,
        "this": keep("this"),
        "confirmed_by": change.confirmed_by,
        "if_ok": keep("if_ok"),
        "if_doubt": keep("if_doubt"),
        "if_not": keep("if_not"),
        "status": status,
        "content": content,
    });
    // Carried-forward fields that were absent or of another type stay absent rather than
    // making the draft invalid: a poison version must not block the next one.
    if let Some(obj) = v.as_object_mut() {
        for k in ["name", "this", "if_ok", "if_doubt", "if_not"] {
            if !obj.get(k).is_some_and(Value::is_string) {
                obj.remove(k);
            }
        }
    }
    Draft::from_value(v, principal, &[], change.at)
}

/// The content of `v` as an object to edit (a poison content becomes an empty object that
/// keeps the old value under `unreadable_content`).
fn content_object(v: &ContractVersion) -> Map<String, Value> {
    match &v.content {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert("unreadable_content".into(), other.clone());
            m
        }
    }
}

/// The content of `v` moved to `state` for `reason`.
pub fn with_state(v: &ContractVersion, state: State, reason: &str) -> Value {
    let mut c = content_object(v);
    c.insert("state".into(), json!(state.as_str()));
    c.insert("state_reason".into(), json!(reason));
    Value::Object(c)
}

/// Whether the witness rule has voided the contract as of `now`: created more than an hour
/// before, and the witness did not confirm within that hour. `None` when the content does not
/// say (no readable `created_at`): then the contract is not voided on a guess.
pub fn witness_lapsed(content: &Value, now: DateTime<Utc>) -> Option<bool> {
    let created = parse_time(content.get("created_at")?)?;
    let deadline = created + WITNESS_WINDOW;
    let confirmed = content
        .get("witness")
        .and_then(|w| w.get("confirmed_at"))
        .and_then(parse_time);
    Some(match confirmed {
        Some(t) => t > deadline,
        None => now > deadline,
    })
}

/// Records the witness's confirmation. Must be the named witness; within the hour the
/// contract is confirmed, after it the contract is void (and this says so). Idempotent.
pub async fn confirm_witness(
    store: &dyn Store,
    principal: &Principal,
    reference: &str,
    at: DateTime<Utc>,
) -> Result<State, ContractError> {
    let (_, latest) = find_required(store, principal, reference).await?;
    let terms = latest.terms()?;
    if !same_person(&terms.witness.who, &principal.user_id) {
        return Err(ContractError::NotYourRole {
            who: principal.user_id.clone(),
            role: "witness",
            contract: latest.label(),
        });
    }
    let state = latest.state().unwrap_or(State::Active);
    if terms.witness.confirmed_at.is_some() || !state.is_open() {
        return Ok(state);
    }
    let mut content = content_object(&latest);
    let (state, did) = if witness_lapsed(&latest.content, at) == Some(true)
        || content
            .get("created_at")
            .and_then(parse_time)
            .is_some_and(|c| at > c + WITNESS_WINDOW)
    {
        content.insert("state".into(), json!(State::Void.as_str()));
        content.insert(
            "state_reason".into(),
            json!("the witness confirmed after the 1 h window"),
        );
        (State::Void, "voided contract: witness too late")
    } else {
        (state, "witnessed contract")
    };
    if let Some(w) = content.get_mut("witness").and_then(Value::as_object_mut) {
        w.insert("confirmed_at".into(), json!(format_time(at)));
    }
    let draft = next_version(
        principal,
        &latest,
        Value::Object(content),
        Change {
            did,
            confirmed_by: &principal.user_id,
            idempotency_key: format!("contract.witness:{}", latest.id),
            related_to: vec![],
            at,
        },
    )?;
    append_one(store, principal, draft).await?;
    Ok(state)
}

/// Voids a contract whose witness did not confirm in time (idempotent per contract).
pub fn void_draft(
    principal: &Principal,
    latest: &ContractVersion,
    at: DateTime<Utc>,
) -> Result<Draft, ledger::InputError> {
    next_version(
        principal,
        latest,
        with_state(
            latest,
            State::Void,
            "no witness confirmation within 1 h of creation",
        ),
        Change {
            did: "voided contract: not witnessed in time",
            confirmed_by: "witness rule (1 h)",
            idempotency_key: format!("contract.void:{}", latest.id),
            related_to: vec![],
            at,
        },
    )
}

/// The guarantor's answer. Yes is checked against the anti-coercion rule (more than 5 minutes
/// from the guaranteed party's confirmation): a yes too soon is rejected and nothing is
/// written. Idempotent: a second answer is ignored.
pub async fn respond_as_guarantor(
    store: &dyn Store,
    principal: &Principal,
    reference: &str,
    accept: bool,
    at: DateTime<Utc>,
) -> Result<Appended, ContractError> {
    let (_, latest) = find_required(store, principal, reference).await?;
    let terms = latest.terms()?;
    let g = terms
        .guarantor
        .clone()
        .ok_or_else(|| ContractError::NoGuarantor(latest.label()))?;
    if !same_person(&g.who, &principal.user_id) {
        return Err(ContractError::NotYourRole {
            who: principal.user_id.clone(),
            role: "guarantor",
            contract: latest.label(),
        });
    }
    if let Some(state) = latest.state().filter(|s| !s.is_open()) {
        return Err(ContractError::Closed {
            contract: latest.label(),
            state: state.as_str().into(),
        });
    }
    let mut answered = terms.clone();
    if let Some(ag) = answered.guarantor.as_mut() {
        ag.responded_at = Some(at);
        ag.confirmed_at = accept.then_some(at);
        ag.declined = !accept;
    }
    check_shape(&answered)?;
    let mut content = content_object(&latest);
    if let Some(gv) = answered
        .guarantor
        .as_ref()
        .and_then(|g| serde_json::to_value(g).ok())
    {
        content.insert("guarantor".into(), gv);
    }
    let draft = next_version(
        principal,
        &latest,
        Value::Object(content),
        Change {
            did: if accept {
                "guaranteed contract"
            } else {
                "declined to guarantee contract"
            },
            confirmed_by: &principal.user_id,
            idempotency_key: format!("contract.guarantor:{}", latest.id),
            related_to: vec![],
            at,
        },
    )?;
    append_one(store, principal, draft).await
}

/// Who is charged when the guaranteed party defaults on `v` (terminated by a law): the party
/// and a guarantor who said yes, if the liability is joint and several. Empty otherwise.
pub fn jointly_liable(v: &ContractVersion) -> Vec<String> {
    let Ok(terms) = v.terms() else {
        return Vec::new();
    };
    let Some(g) = &terms.guarantor else {
        return Vec::new();
    };
    if g.confirmed_at.is_none() || g.declined || g.liability != "joint_and_several" {
        return Vec::new();
    }
    match guaranteed_party(&terms, g) {
        Some(p) => vec![p.who.clone(), g.who.clone()],
        None => Vec::new(),
    }
}

/// The drafts that enforce joint liability for a default on `v`: a `charge` span and a
/// reputation loss for each liable person, idempotent per contract and person.
pub fn joint_liability_drafts(
    principal: &Principal,
    v: &ContractVersion,
    reason: &str,
    at: DateTime<Utc>,
    related: &[Uuid],
) -> Result<Vec<Draft>, ledger::InputError> {
    let liable = jointly_liable(v);
    let mut out = Vec::new();
    let mut rel = vec![v.id];
    rel.extend_from_slice(related);
    for who in &liable {
        let role = if liable.first() == Some(who) {
            "guaranteed party"
        } else {
            "guarantor"
        };
        out.push(Draft::from_value(
            json!({
                "entity_type": CHARGE,
                "visibility": "tenant",
                "idempotency_key": format!("charge:{}:{}", v.id, person_key(who)),
                "related_to": rel,
                "when": format_time(at),
                "who": principal.user_id,
                "did": "charged for default",
                "this": person_key(who),
                "confirmed_by": "joint and several liability",
                "if_ok": "settle the charge",
                "if_doubt": "hold the charge for the arbiter",
                "if_not": "escalate to dispute resolution",
                "status": "open",
                "content": {
                    "who": who, "as": role, "contract": v.id, "contract_name": v.name,
                    "liability": "joint_and_several", "reason": reason,
                    "asset_value": v.content.get("asset_value").cloned().unwrap_or(Value::Null)
                }
            }),
            principal,
            &[],
            at,
        )?);
        out.push(reputation_draft(
            principal,
            who,
            JOINT_LIABILITY_PENALTY,
            &format!("default on contract {}: {reason}", v.label()),
            &format!("reputation.default:{}:{}", v.id, person_key(who)),
            at,
            &rel,
        )?);
    }
    Ok(out)
}

/// How believable a despacho is, from the delay between observing and reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credibility {
    /// Reported within 30 s.
    Credible,
    /// Within 5 min.
    Questionable,
    /// Later than that.
    Suspicious,
}

impl Credibility {
    pub fn of_delay(delay: TimeDelta) -> Self {
        if delay <= TimeDelta::seconds(30) {
            Self::Credible
        } else if delay <= TimeDelta::minutes(5) {
            Self::Questionable
        } else {
            Self::Suspicious
        }
    }
}

/// A hand-off of responsibility (Article 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Despacho {
    /// What is handed over, and in what condition ("vase found broken in room 3").
    pub subject: String,
    /// The responsible party being told.
    pub to: String,
    pub observed_at: DateTime<Utc>,
    pub witness: Witness,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

/// Records a despacho from the principal to `d.to`, reported now. The witness must be
/// someone else than both and must have confirmed.
pub async fn despacho(
    store: &dyn Store,
    principal: &Principal,
    d: &Despacho,
    now: DateTime<Utc>,
) -> Result<Appended, ContractError> {
    if same_person(&d.witness.who, &principal.user_id) || same_person(&d.witness.who, &d.to) {
        return Err(ContractError::Despacho(
            "the witness must be someone other than the reporter and the responsible party".into(),
        ));
    }
    if d.witness.confirmed_at.is_none() {
        return Err(ContractError::Despacho(
            "the witness has not confirmed".into(),
        ));
    }
    if d.observed_at > now {
        return Err(ContractError::Despacho(
            "observed_at is in the future".into(),
        ));
    }
    let delay = now - d.observed_at;
    let credibility = Credibility::of_delay(delay);
    let mut content = serde_json::to_value(d).unwrap_or_else(|_| json!({}));
    if let Some(c) = content.as_object_mut() {
        c.insert("from".into(), json!(principal.user_id));
        c.insert("reported_at".into(), json!(format_time(now)));
        c.insert("report_delay_s".into(), json!(delay.num_seconds()));
        c.insert("credibility".into(), json!(credibility));
        c.insert(
            "answer_by".into(),
            json!(format_time(now + DESPACHO_ANSWER_WINDOW)),
        );
    }
    let draft = Draft::from_value(
        json!({
            "entity_type": DESPACHO,
            "visibility": "tenant",
            "when": format_time(now),
            "who": principal.user_id,
            "did": "handed over responsibility",
            "this": d.subject,
            "confirmed_by": d.witness.who,
            "if_ok": "the responsible party takes it over",
            "if_doubt": "question the parties and the witness",
            "if_not": "the reporter keeps the responsibility",
            "status": "reported",
            "content": content
        }),
        principal,
        &[],
        now,
    )?;
    append_one(store, principal, draft).await
}

/// The responsible party's answer to a despacho (idempotent: the first answer counts).
pub async fn answer_despacho(
    store: &dyn Store,
    principal: &Principal,
    despacho_id: Uuid,
    accept: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Appended, ContractError> {
    let view = store
        .get(principal, despacho_id, None)
        .await?
        .and_then(|s| s.to_view().ok())
        .filter(|v| text(v, "entity_type") == Some(DESPACHO))
        .ok_or_else(|| ContractError::NotFound(despacho_id.to_string()))?;
    let to = view
        .pointer("/content/to")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !same_person(to, &principal.user_id) {
        return Err(ContractError::NotYourRole {
            who: principal.user_id.clone(),
            role: "responsible party",
            contract: despacho_id.to_string(),
        });
    }
    let draft = Draft::from_value(
        json!({
            "entity_type": DESPACHO_RESPONSE,
            "visibility": "tenant",
            "idempotency_key": format!("despacho.answer:{despacho_id}"),
            "related_to": [despacho_id],
            "when": format_time(now),
            "who": principal.user_id,
            "did": if accept { "accepted responsibility" } else { "rejected responsibility" },
            "this": text(&view, "this").unwrap_or("despacho"),
            "confirmed_by": principal.user_id,
            "if_ok": "responsibility moves",
            "if_doubt": "question the parties and the witness",
            "if_not": "the reporter keeps the responsibility",
            "status": if accept { "accepted" } else { "rejected" },
            "content": {"accept": accept, "reason": reason}
        }),
        principal,
        &[],
        now,
    )?;
    append_one(store, principal, draft).await
}

/// Where a despacho stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DespachoOutcome {
    /// Answered yes within the hour.
    Accepted,
    /// No answer within the hour: silence is acceptance.
    AcceptedBySilence,
    /// Answered no: the doubt phase (questions to the parties and the witness) starts.
    Rejected,
    /// Within the hour, no answer yet.
    Pending,
}

/// The rule of Article 8 on one despacho: reported at `reported_at`, answered (yes/no, when)
/// or not, looked at `now`. An answer after the hour is too late: silence already accepted.
pub fn despacho_outcome(
    reported_at: DateTime<Utc>,
    answer: Option<(bool, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> DespachoOutcome {
    let deadline = reported_at + DESPACHO_ANSWER_WINDOW;
    match answer {
        Some((true, at)) if at <= deadline => DespachoOutcome::Accepted,
        Some((false, at)) if at <= deadline => DespachoOutcome::Rejected,
        _ if now > deadline => DespachoOutcome::AcceptedBySilence,
        _ => DespachoOutcome::Pending,
    }
}

/// Reads a despacho and its answer from the ledger and applies [`despacho_outcome`].
pub async fn despacho_status(
    store: &dyn Store,
    principal: &Principal,
    despacho_id: Uuid,
    now: DateTime<Utc>,
) -> Result<DespachoOutcome, ContractError> {
    let view = store
        .get(principal, despacho_id, None)
        .await?
        .and_then(|s| s.to_view().ok())
        .ok_or_else(|| ContractError::NotFound(despacho_id.to_string()))?;
    let reported = view
        .pointer("/content/reported_at")
        .and_then(parse_time)
        .ok_or_else(|| {
            ContractError::Unreadable(despacho_id.to_string(), "no reported_at".into())
        })?;
    let page = store
        .query(
            principal,
            &Filter {
                entity_type: Some(DESPACHO_RESPONSE.into()),
                related_to: Some(despacho_id),
                limit: Some(10),
                ..Filter::default()
            },
        )
        .await?;
    let answer = page
        .rows
        .iter()
        .filter_map(|r| r.span.to_view().ok())
        .filter_map(|v| {
            Some((
                v.pointer("/content/accept")?.as_bool()?,
                parse_time(v.get("at")?)?,
            ))
        })
        .min_by_key(|(_, at)| *at);
    Ok(despacho_outcome(reported, answer, now))
}

/// The variables a law sees for one contract version: its content, plus
/// - `evidence` as `{items, count, missing}`: `missing` is true when a kind listed in
///   `evidence_required` has no item, or, without that list, when there is no evidence at all
///   (the seed's `evidence.missing`); left as stored when `evidence` is not a list, so a law
///   reading it fails closed;
/// - `contract`: `{id, seq, name, state}` of the version.
///
/// A content that is not an object gives no variables but `contract`: every law that reads a
/// field fails closed to doubt.
pub fn variables(v: &ContractVersion) -> Value {
    let mut vars = match &v.content {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Some(Value::Array(items)) = vars.get("evidence") {
        let kinds: Vec<&str> = items
            .iter()
            .filter_map(|e| e.get("kind").and_then(Value::as_str))
            .collect();
        let missing = match vars.get("evidence_required") {
            Some(Value::Array(req)) => req
                .iter()
                .any(|r| r.as_str().is_none_or(|k| !kinds.contains(&k))),
            _ => items.is_empty(),
        };
        let ev = json!({"items": items, "count": items.len(), "missing": missing});
        vars.insert("evidence".into(), ev);
    }
    vars.entry("contract").or_insert_with(
        || json!({"id": v.id, "seq": v.seq, "name": v.name, "state": v.state().map(State::as_str)}),
    );
    Value::Object(vars)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_reputation_bar_rises_with_the_value_at_stake() {
        let g = ReputationGate::default();
        assert_eq!(g.required(None), 40);
        assert_eq!(g.required(Some(999.0)), 40);
        assert_eq!(g.required(Some(1_000.0)), 60);
        assert_eq!(g.required(Some(50_000.0)), 80);
    }

    #[test]
    fn five_minutes_exactly_is_not_far_enough() {
        let a = t("2026-03-01T10:00:00Z");
        assert!(!confirmations_far_enough(a, a + TimeDelta::minutes(5)));
        assert!(confirmations_far_enough(
            a,
            a + TimeDelta::minutes(5) + TimeDelta::seconds(1)
        ));
    }

    #[test]
    fn the_witness_hour_voids_silence_and_late_confirmations() {
        let c = json!({"created_at": "2026-03-01T10:00:00Z", "witness": {"who": "w", "confirmed_at": null}});
        assert_eq!(witness_lapsed(&c, t("2026-03-01T10:59:00Z")), Some(false));
        assert_eq!(witness_lapsed(&c, t("2026-03-01T11:00:01Z")), Some(true));
        let late = json!({"created_at": "2026-03-01T10:00:00Z", "witness": {"confirmed_at": "2026-03-01T11:30:00Z"}});
        assert_eq!(witness_lapsed(&late, t("2026-03-02T00:00:00Z")), Some(true));
        assert_eq!(
            witness_lapsed(&json!("poison"), t("2026-03-02T00:00:00Z")),
            None
        );
    }

    #[test]
    fn despacho_silence_is_acceptance_and_a_no_opens_doubt() {
        let r = t("2026-03-01T10:00:00Z");
        let h = TimeDelta::hours(1);
        assert_eq!(
            despacho_outcome(r, None, r + TimeDelta::minutes(10)),
            DespachoOutcome::Pending
        );
        assert_eq!(
            despacho_outcome(r, None, r + h + TimeDelta::seconds(1)),
            DespachoOutcome::AcceptedBySilence
        );
        assert_eq!(
            despacho_outcome(r, Some((false, r + TimeDelta::minutes(20))), r + h * 2),
            DespachoOutcome::Rejected
        );
        assert_eq!(
            despacho_outcome(r, Some((true, r + TimeDelta::minutes(1))), r + h * 2),
            DespachoOutcome::Accepted
        );
        assert_eq!(
            despacho_outcome(r, Some((false, r + h * 2)), r + h * 3),
            DespachoOutcome::AcceptedBySilence
        );
        assert_eq!(
            Credibility::of_delay(TimeDelta::seconds(30)),
            Credibility::Credible
        );
        assert_eq!(
            Credibility::of_delay(TimeDelta::minutes(5)),
            Credibility::Questionable
        );
        assert_eq!(
            Credibility::of_delay(TimeDelta::minutes(6)),
            Credibility::Suspicious
        );
    }

    #[test]
    fn evidence_missing_follows_the_required_kinds() {
        let mk = |content: Value| ContractVersion {
            id: Uuid::nil(),
            seq: 0,
            at: t("2026-03-01T00:00:00Z"),
            curr_hash: String::new(),
            name: Some("D9".into()),
            status: "active".into(),
            content,
            view: Value::Null,
        };
        let v = variables(&mk(json!({"evidence": []})));
        assert_eq!(v["evidence"]["missing"], json!(true));
        let v = variables(&mk(
            json!({"evidence": [{"kind": "photo"}], "evidence_required": ["photo", "note"]}),
        ));
        assert_eq!(v["evidence"]["missing"], json!(true));
        let v = variables(&mk(
            json!({"evidence": [{"kind": "photo"}], "evidence_required": ["photo"]}),
        ));
        assert_eq!(v["evidence"]["missing"], json!(false));
        assert_eq!(v["evidence"]["count"], json!(1));
        let v = variables(&mk(json!({"evidence": "lots"})));
        assert_eq!(v["evidence"], json!("lots"));
        let v = variables(&mk(json!(17)));
        assert_eq!(v["contract"]["name"], json!("D9"));
    }
}
