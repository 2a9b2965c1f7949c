//! The demo tenant (`logline demo seed`, the chat tests and `logline bench chat`): Padaria
//! Lisboa, a bakery, and Luz Filmes, a film production company, with their contracts D1–D5,
//! three laws and a Midnight Ruler run at a past midnight that terminates D1. Everything is dated
//! around one anchor midnight stored in a marker span, so seeding again (even days later) finds
//! the same tenant and writes nothing new.

use chrono::{DateTime, TimeDelta, Utc};
use ledger::span::format_time;
use ledger::store;
use ledger::{Draft, Filter, InputError, Principal, Store, StoreError};
use serde_json::{Value, json};
use thiserror::Error;

use crate::contracts::{
    self, Approval, ContractError, Evidence, Guarantor, Party, ReputationGate, State, Terms,
    Witness,
};
use crate::midnight_ruler::{self, RulerError, RulerReport};

#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Ruler(#[from] RulerError),
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// A contract of the demo could not be created or witnessed (`creating D1`, …).
    #[error("{action} {name}")]
    Step {
        action: &'static str,
        name: String,
        #[source]
        source: ContractError,
    },
    #[error("date out of range")]
    DateOutOfRange,
    #[error("the demo marker span is missing after writing it")]
    MarkerMissing,
}

/// The demo's zone: Lisbon businesses, laws on Paris midnight as the seed's.
pub const DEMO_ZONE: &str = "Europe/Paris";
pub const ANA: &str = "ana@padaria-lisboa.pt";
pub const RUI: &str = "rui@padaria-lisboa.pt";
pub const MARTA: &str = "marta@luzfilmes.pt";
pub const JOAO: &str = "joao@luzfilmes.pt";
pub const PEDRO: &str = "pedro@luzfilmes.pt";
pub const CLARA: &str = "clara@cartorio-baixa.pt";

/// Article 10 of the seed, verbatim: deliverables decided at Paris midnight.
pub const MIDNIGHT_DEADLINE: &str = "law midnight_deadline:1.0.0:
scope: deliverable
clock: midnight Europe/Paris

if ok: accepted == true OR approvals.count >= quorum
then: accept, tag(key=status,val=accepted), append_ledger

if doubt: now >= deadline_at AND accepted == false AND evidence.missing == true
then: hold(hours=24), notify(role=ops), tag(key=status,val=under_review), append_ledger

if not: now >= deadline_at AND accepted == false
then: terminate(reason=deadline_passed), tag(key=status,val=terminated), append_ledger
";

const LOAN_RETURN: &str = "law loan_return:1.0.0:
scope: loan
clock: midnight Europe/Paris

if ok: accepted == true
then: accept, tag(key=status,val=returned), append_ledger

if doubt: now >= deadline_at AND guarantor.responded_at == null
then: hold(hours=24), notify(role=guarantor), tag(key=status,val=unguaranteed), append_ledger

if not: now >= deadline_at AND accepted == false
then: terminate(reason=not_returned), notify(role=guarantor), append_ledger
";

const AUTH_BREAK_GLASS: &str = "law auth_break_glass:1.0.0:
scope: emergency_override
clock: realtime

if ok: requester.role in [\"ops\", \"security\"] AND
approvers.count >= 2 AND ttl <= 24h
then: permit, tag(key=override_active,val=true),
append_ledger, notify(role=audit)

if doubt: requester.role in [\"ops\", \"security\"] AND approvers.count == 1
then: hold(hours=1), notify(role=security_lead), append_ledger

if not: true
then: deny, append_ledger, notify(role=security)
";

/// What `demo seed` created or found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub tenant: String,
    /// The past midnight the ruler was run at.
    pub ruled_at: DateTime<Utc>,
    pub laws: Vec<DemoLaw>,
    pub contracts: Vec<DemoContract>,
    pub ruler: RulerReport,
    /// The decision that terminated D1, if it did.
    pub d1_decision: Option<Value>,
    pub spans_written: i64,
}

/// One law of the demo as enacted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoLaw {
    /// `id:version`, e.g. `midnight_deadline:1.0.0`.
    pub label: String,
    pub span_id: String,
    pub seq: i64,
    /// Enacted by this seed (false: an earlier seed did).
    pub new: bool,
}

/// One contract of the demo and the state it is in after the ruler's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoContract {
    pub name: String,
    pub title: String,
    pub state: String,
    /// Created by this seed (false: an earlier seed did).
    pub new: bool,
}

fn person(who: &str, tenant: &str) -> Principal {
    Principal::new(who, tenant)
}

/// The demo's anchor midnight: read back from the marker span of an earlier seed, or three
/// Paris midnights before the latest one. Written first, so a second seed (even days later)
/// rebuilds exactly the same tenant.
async fn demo_anchor(
    store: &dyn Store,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, DemoError> {
    if let Some(t) = demo_anchor_read(store, tenant).await? {
        return Ok(t);
    }
    let p = person(ANA, tenant);
    let zone = midnight_ruler::resolve_zone(DEMO_ZONE);
    let last = midnight_ruler::midnight_at_or_before(zone, now);
    let date = zone
        .map_or_else(
            || last.date_naive(),
            |z| last.with_timezone(&z).date_naive(),
        )
        .checked_sub_days(chrono::Days::new(3))
        .ok_or(DemoError::DateOutOfRange)?;
    let anchor = midnight_ruler::midnight_on(zone, date);
    let draft = Draft::from_value(
        json!({
            "entity_type": "demo_seed",
            "visibility": "tenant",
            "idempotency_key": "demo:seed",
            "when": format_time(now),
            "who": ANA,
            "did": "seeded the demo tenant",
            "this": "Padaria Lisboa and Luz Filmes",
            "confirmed_by": "logline demo seed",
            "if_ok": "explore it: logline query --entity-type contract",
            "if_doubt": "run logline demo seed again (idempotent)",
            "if_not": "use a fresh --tenant",
            "status": "done",
            "content": {"ruled_at": format_time(anchor), "zone": DEMO_ZONE}
        }),
        &p,
        &[],
        now,
    )?;
    store::append(store, &p, vec![draft]).await?;
    // Another seed may have won the race: read back whichever anchor is stored.
    demo_anchor_read(store, tenant)
        .await?
        .ok_or(DemoError::MarkerMissing)
}

async fn demo_anchor_read(
    store: &dyn Store,
    tenant: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let p = person(ANA, tenant);
    let page = store
        .query(
            &p,
            &Filter {
                entity_type: Some("demo_seed".into()),
                tenant_id: Some(tenant.into()),
                limit: Some(1),
                ..Filter::default()
            },
        )
        .await?;
    Ok(page
        .rows
        .first()
        .and_then(|r| r.span.to_view().ok())
        .and_then(|v| {
            v.pointer("/content/ruled_at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        })
        .map(|t| t.with_timezone(&Utc)))
}

fn party(who: &str, role: &str, at: DateTime<Utc>) -> Party {
    Party {
        who: who.into(),
        role: role.into(),
        confirmed_at: Some(at),
    }
}

fn evidence(kind: &str, by: &str, at: DateTime<Utc>, note: &str) -> Evidence {
    Evidence {
        kind: kind.into(),
        by: Some(by.into()),
        at: Some(at),
        note: Some(note.into()),
    }
}

/// The five contracts, dated around the anchor midnight `m`.
fn demo_contracts(
    m: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<(Terms, DateTime<Utc>, &'static str)> {
    let d = TimeDelta::days;
    let h = TimeDelta::hours;
    let witness = Witness {
        who: CLARA.into(),
        confirmed_at: None,
    };
    let base = |name: &str, title: &str, created: DateTime<Utc>, deadline: DateTime<Utc>| Terms {
        name: name.into(),
        scope: "deliverable".into(),
        title: title.into(),
        parties: vec![
            party(ANA, "supplier", created),
            party(MARTA, "client", created + TimeDelta::minutes(12)),
        ],
        witness: witness.clone(),
        guarantor: None,
        asset_value: None,
        deadline_at: deadline,
        accepted: false,
        approvals: vec![],
        quorum: 2,
        evidence: vec![],
        evidence_required: vec![],
    };
    // D1: delivered, never accepted; the deadline passed two days before the anchor midnight.
    let c1 = m - d(6) + h(9);
    let mut d1 = base(
        "D1",
        "300 pastéis de nata and coffee for the Alfama night shoot",
        c1,
        m - d(2) + h(17),
    );
    d1.evidence = vec![evidence(
        "delivery_note",
        RUI,
        m - d(2) + h(14),
        "delivered to the set at Largo do Chafariz; Luz Filmes says half arrived cold",
    )];
    d1.evidence_required = vec!["delivery_note".into()];
    // D2: the wrap-party cake, accepted by the client.
    let c2 = m - d(5) + h(10);
    let mut d2 = base("D2", "wrap-party cake for 80 people", c2, m - d(1) + h(20));
    d2.accepted = true;
    d2.evidence = vec![evidence(
        "photo",
        RUI,
        m - d(1) + h(19),
        "cake on the catering table",
    )];
    // D3: the bakery's van lent to the film crew; the guarantor was asked and never answered.
    let c3 = m + d(1) + h(8);
    let mut d3 = base(
        "D3",
        "the bakery's delivery van lent to Luz Filmes for the Sintra location scout",
        c3,
        now + d(5),
    );
    d3.scope = "loan".into();
    d3.parties = vec![
        party(JOAO, "borrower", c3),
        party(ANA, "lender", c3 + TimeDelta::minutes(3)),
    ];
    d3.guarantor = Some(Guarantor {
        who: PEDRO.into(),
        for_party: Some(JOAO.into()),
        liability: "joint_and_several".into(),
        requested_at: Some(c3),
        responded_at: None,
        confirmed_at: None,
        declined: false,
    });
    d3.asset_value = Some(9_000.0);
    d3.quorum = 1;
    // D4: the advert Luz Filmes owes the bakery; due before the anchor, no evidence at all.
    let c4 = m - d(7) + h(15);
    let mut d4 = base(
        "D4",
        "30-second advert for the bakery's Instagram",
        c4,
        m - d(1) + h(12),
    );
    d4.parties = vec![
        party(MARTA, "supplier", c4),
        party(ANA, "client", c4 + TimeDelta::minutes(9)),
    ];
    // D5: menu photos, approved by two of the bakery's people (quorum 2), due in three days.
    let c5 = m + d(1) + h(11);
    let mut d5 = base(
        "D5",
        "product photos for the new spring menu",
        c5,
        now + d(3),
    );
    d5.parties = vec![
        party(MARTA, "supplier", c5),
        party(ANA, "client", c5 + TimeDelta::minutes(7)),
    ];
    d5.approvals = vec![
        Approval {
            who: ANA.into(),
            at: c5 + h(30),
        },
        Approval {
            who: RUI.into(),
            at: c5 + h(31),
        },
    ];
    vec![
        (d1, c1, ANA),
        (d2, c2, ANA),
        (d3, c3, ANA),
        (d4, c4, MARTA),
        (d5, c5, MARTA),
    ]
}

/// Seeds the demo tenant (idempotent) and returns what is there.
pub async fn seed_demo(
    store: &dyn Store,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<DemoReport, DemoError> {
    let start = store.last_ingest_id().await?;
    let m = demo_anchor(store, tenant, now).await?;
    let lawmaker = person(ANA, tenant);
    // Reputations go back weeks; the laws took effect the evening before the anchor midnight,
    // so the ruler's history starts with the midnight the demo rules by hand (a server started
    // later backfills from there, not from weeks before it).
    let enacted = m - TimeDelta::days(20);
    let laws_enacted = m - TimeDelta::hours(1);
    let mut laws = Vec::new();
    for (src, log) in [
        (MIDNIGHT_DEADLINE, "seed Article 10, verbatim"),
        (LOAN_RETURN, "loans: returned, unguaranteed or not returned"),
        (
            AUTH_BREAK_GLASS,
            "seed Appendix B (realtime: not a midnight law)",
        ),
    ] {
        let a = midnight_ruler::enact_law(store, &lawmaker, src, log, laws_enacted).await?;
        let label = ledger::law::parse(src)
            .map(|l| format!("{}:{}", l.id, l.version))
            .unwrap_or_default();
        laws.push(DemoLaw {
            label,
            span_id: a.id.to_string(),
            seq: a.seq,
            new: !a.duplicate,
        });
    }
    for (who, delta, why) in [
        (JOAO, 20, "three years of on-time location returns"),
        (PEDRO, 25, "line producer, vouched for crews before"),
        (RUI, 15, "regular deliveries"),
    ] {
        contracts::adjust_reputation(
            store,
            &lawmaker,
            who,
            delta,
            why,
            &format!("demo:reputation:{who}"),
            enacted,
        )
        .await?;
    }
    let mut created = Vec::new();
    for (terms, at, author) in demo_contracts(m, now) {
        let a = contracts::create(
            store,
            &person(author, tenant),
            &terms,
            &ReputationGate::default(),
            at,
        )
        .await
        .map_err(|source| DemoError::Step {
            action: "creating",
            name: terms.name.clone(),
            source,
        })?;
        contracts::confirm_witness(
            store,
            &person(CLARA, tenant),
            &terms.name,
            at + TimeDelta::minutes(17),
        )
        .await
        .map_err(|source| DemoError::Step {
            action: "witnessing",
            name: terms.name.clone(),
            source,
        })?;
        created.push((terms.name.clone(), terms.title.clone(), !a.duplicate));
    }
    let ruler = midnight_ruler::run_midnight(store, tenant, m, None).await?;
    let mut contracts_out = Vec::new();
    for (name, title, new) in created {
        let state = contracts::find(store, &lawmaker, &name)
            .await?
            .and_then(|c| c.latest().and_then(|v| v.state()))
            .map_or("?", State::as_str)
            .to_string();
        contracts_out.push(DemoContract {
            name,
            title,
            state,
            new,
        });
    }
    let d1_decision = contracts::load_views(store, &lawmaker, midnight_ruler::DECISION)
        .await?
        .into_iter()
        .find(|d| d.pointer("/content/contract/name").and_then(Value::as_str) == Some("D1"));
    Ok(DemoReport {
        tenant: tenant.to_string(),
        ruled_at: m,
        laws,
        contracts: contracts_out,
        ruler,
        d1_decision,
        spans_written: store.last_ingest_id().await? - start,
    })
}
