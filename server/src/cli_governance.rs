//! Governance from the command line: `logline ruler run` (one midnight by hand), `logline law
//! simulate` (a dry run with overridden variables), `logline demo seed` (a small believable
//! tenant) and `logline bench ruler`. The work is done by `kernels::midnight_ruler` and
//! `kernels::contracts`; this module parses arguments and prints.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use clap::{Args, Subcommand, ValueEnum};
use kernels::contracts::{
    self, Approval, Evidence, Guarantor, Party, ReputationGate, State, Terms, Witness,
};
use kernels::midnight_ruler::{self, RulerReport, When};
use ledger::crypto::NodeKey;
use ledger::span::format_time;
use ledger::store::{self, Store};
use ledger::{Draft, Filter, Principal};
use serde_json::{Value, json};

use crate::cli::{Global, open};

#[derive(Subcommand, Debug)]
pub enum RulerCommand {
    /// Run one midnight by hand: every active `clock: midnight` law of the tenant decides every
    /// open contract in its scope, as of that midnight (idempotent: a second run writes nothing).
    Run {
        /// A local date (YYYY-MM-DD: that date's 00:00 in each law's zone) or an RFC 3339
        /// instant (the latest local midnight at or before it).
        #[arg(long)]
        at: String,
        /// Use this IANA zone instead of each law's (an unknown zone fails closed to doubt).
        #[arg(long)]
        tz: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The law: its span id, span name or law id (`midnight_deadline`).
    pub law: String,
    /// Override a variable in every contract, e.g. `quorum=3` (value read as JSON, else text).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// The midnight to simulate: a local date or an RFC 3339 instant (default: the next one).
    #[arg(long)]
    pub at: Option<String>,
    /// Use this IANA zone instead of the law's.
    #[arg(long)]
    pub tz: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum DemoCommand {
    /// Create (idempotently) a small tenant: a bakery and a film production company, their
    /// contracts D1–D5, laws, and D1 terminated at a past midnight by `midnight_deadline`.
    Seed,
}

#[derive(Args, Debug)]
pub struct BenchRulerArgs {
    /// Contracts to seed and decide.
    #[arg(long, default_value_t = 100_000)]
    pub contracts: usize,
}

/// `2026-03-07` is a local date; anything else must be an RFC 3339 instant.
pub fn parse_when(s: &str) -> Result<When> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(When::Date(d));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| When::AtOrBefore(t.with_timezone(&Utc)))
        .map_err(|_| anyhow!("`{s}` is neither a date (YYYY-MM-DD) nor an RFC 3339 instant"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

pub async fn ruler(g: &Global, what: RulerCommand) -> Result<ExitCode> {
    match what {
        RulerCommand::Run { at, tz, format } => {
            let when = parse_when(&at)?;
            let store = open(g).await?;
            let report =
                midnight_ruler::run_when(store.as_ref(), &g.tenant, when, tz.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                Format::Text => print_report(&mut out, &report)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(out: &mut impl Write, r: &RulerReport) -> Result<()> {
    if r.laws.is_empty() {
        writeln!(
            out,
            "no active `clock: midnight` law in force at that midnight in tenant {}",
            r.tenant
        )?;
        return Ok(());
    }
    for l in &r.laws {
        writeln!(
            out,
            "law {} (span {} seq {}), zone {}{}",
            l.law,
            l.law_span_id,
            l.law_seq,
            l.zone,
            if l.zone_known {
                ""
            } else {
                " (unknown: UTC midnight, every decision fails closed to doubt)"
            }
        )?;
        writeln!(out, "scheduled_at: {}", rfc3339(l.scheduled_at))?;
        writeln!(
            out,
            "decided: {} (ok {}, doubt {}, not {}); new decisions {}, failed closed {}",
            l.decided.total(),
            l.decided.ok,
            l.decided.doubt,
            l.decided.not,
            l.new_decisions,
            l.fail_closed
        )?;
    }
    writeln!(
        out,
        "contracts changed {}, voided {}, spans written {}",
        r.contracts_changed, r.voided, r.spans_written
    )?;
    Ok(())
}

fn parse_override(s: &str) -> Result<(String, Value)> {
    let (path, raw) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("`--set {s}`: expected PATH=VALUE, e.g. quorum=3"))?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        bail!("`--set {s}`: the path must be a dotted name such as quorum or user.settings.x");
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((path.to_string(), value))
}

pub async fn simulate(g: &Global, a: SimulateArgs) -> Result<ExitCode> {
    let overrides = a
        .set
        .iter()
        .map(|s| parse_override(s))
        .collect::<Result<Vec<_>>>()?;
    let when = a.at.as_deref().map(parse_when).transpose()?;
    let store = open(g).await?;
    let sim = midnight_ruler::simulate(
        store.as_ref(),
        &g.tenant,
        &a.law,
        &overrides,
        when,
        a.tz.as_deref(),
        Utc::now(),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if a.format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&sim)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let set: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        out,
        "law {} (span {} seq {}) at {} ({}), with {}",
        sim.law,
        sim.law_span_id,
        sim.law_seq,
        rfc3339(sim.scheduled_at),
        sim.zone,
        if set.is_empty() {
            "no overrides".to_string()
        } else {
            set.join(", ")
        }
    )?;
    writeln!(
        out,
        "{} contracts considered; before: ok {}, doubt {}, not {}; after: ok {}, doubt {}, not {}",
        sim.considered,
        sim.before.ok,
        sim.before.doubt,
        sim.before.not,
        sim.after.ok,
        sim.after.doubt,
        sim.after.not
    )?;
    if sim.changed.is_empty() {
        writeln!(out, "no contract's triage would change")?;
    } else {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        table.set_header(["contract", "before", "after"]);
        for c in &sim.changed {
            table.add_row([c.contract.as_str(), c.before.as_str(), c.after.as_str()]);
        }
        writeln!(out, "{table}")?;
        writeln!(
            out,
            "{} contract{} would change",
            sim.changed.len(),
            if sim.changed.len() == 1 { "" } else { "s" }
        )?;
    }
    writeln!(out, "(simulation: nothing was written)")?;
    Ok(ExitCode::SUCCESS)
}

// ---- demo ------------------------------------------------------------------------------------

/// The demo's zone: Lisbon businesses, laws on Paris midnight as the seed's.
const DEMO_ZONE: &str = "Europe/Paris";
const ANA: &str = "ana@padaria-lisboa.pt";
const RUI: &str = "rui@padaria-lisboa.pt";
const MARTA: &str = "marta@luzfilmes.pt";
const JOAO: &str = "joao@luzfilmes.pt";
const PEDRO: &str = "pedro@luzfilmes.pt";
const CLARA: &str = "clara@cartorio-baixa.pt";

const MIDNIGHT_DEADLINE: &str = "law midnight_deadline:1.0.0:
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
    /// `(law label, span id, seq, new?)`.
    pub laws: Vec<(String, String, i64, bool)>,
    /// `(name, title, state, new?)`.
    pub contracts: Vec<(String, String, String, bool)>,
    pub ruler: RulerReport,
    /// The decision that terminated D1, if it did.
    pub d1_decision: Option<Value>,
    pub spans_written: i64,
}

fn person(who: &str, tenant: &str) -> Principal {
    Principal::new(who, tenant)
}

/// The demo's anchor midnight: read back from the marker span of an earlier seed, or three
/// Paris midnights before the latest one. Written first, so a second seed (even days later)
/// rebuilds exactly the same tenant.
async fn demo_anchor(store: &dyn Store, tenant: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
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
        .ok_or_else(|| anyhow!("date out of range"))?;
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
        .ok_or_else(|| anyhow!("the demo marker span is missing after writing it"))
}

async fn demo_anchor_read(store: &dyn Store, tenant: &str) -> Result<Option<DateTime<Utc>>> {
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
pub async fn seed_demo(store: &dyn Store, tenant: &str, now: DateTime<Utc>) -> Result<DemoReport> {
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
        laws.push((label, a.id.to_string(), a.seq, !a.duplicate));
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
        .with_context(|| format!("creating {}", terms.name))?;
        contracts::confirm_witness(
            store,
            &person(CLARA, tenant),
            &terms.name,
            at + TimeDelta::minutes(17),
        )
        .await
        .with_context(|| format!("witnessing {}", terms.name))?;
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
        contracts_out.push((name, title, state, new));
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

pub async fn demo(g: &Global, what: DemoCommand) -> Result<ExitCode> {
    match what {
        DemoCommand::Seed => {
            let store = open(g).await?;
            let r = seed_demo(store.as_ref(), &g.tenant, Utc::now()).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "tenant {}: Padaria Lisboa (bakery: {ANA}, {RUI}) and Luz Filmes (production company: {MARTA}, {JOAO}, {PEDRO}); witness {CLARA}",
                r.tenant
            )?;
            for (label, id, seq, new) in &r.laws {
                writeln!(
                    out,
                    "law {label}: span {id} seq {seq}{}",
                    if *new { "" } else { " (already there)" }
                )?;
            }
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header(["contract", "title", "state", ""]);
            for (name, title, state, new) in &r.contracts {
                table.add_row([
                    name.as_str(),
                    title.as_str(),
                    state.as_str(),
                    if *new { "created" } else { "already there" },
                ]);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "D3's guarantor {PEDRO} was asked and never answered.")?;
            writeln!(
                out,
                "Midnight Ruler run at {} (00:00 {DEMO_ZONE}):",
                rfc3339(r.ruled_at)
            )?;
            print_report(&mut out, &r.ruler)?;
            if let Some(d) = &r.d1_decision {
                writeln!(
                    out,
                    "D1: {} by law.decision {} citing law {} span {} seq {} {}",
                    d.pointer("/content/triage")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d["id"].as_str().unwrap_or("?"),
                    d.pointer("/content/law/id")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d.pointer("/content/law/span_id")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    d.pointer("/content/law/seq")
                        .and_then(Value::as_i64)
                        .unwrap_or(-1),
                    d.pointer("/content/law/curr_hash")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                )?;
            }
            writeln!(out, "spans written: {}", r.spans_written)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---- bench -----------------------------------------------------------------------------------

/// `logline bench ruler`: seeds `contracts` contracts in a fresh tenant (PostgreSQL when a URL
/// is given, else the embedded store in a temporary directory), runs one midnight over them,
/// then runs it again (idempotent), and prints one JSON line.
pub async fn bench_ruler(g: &Global, a: BenchRulerArgs) -> Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let store: Arc<dyn Store> =
        store::open(g.database_url.as_deref(), tmp.path(), NodeKey::generate()).await?;
    store::ensure_manifest(store.as_ref()).await?;
    let tenant = format!("bench-ruler-{}", uuid::Uuid::now_v7().simple());
    let s = store.as_ref();
    let lawmaker = Principal::new("lawmaker", &tenant);
    let midnight = DateTime::parse_from_rfc3339("2026-03-06T23:00:00Z")?.with_timezone(&Utc);
    midnight_ruler::enact_law(
        s,
        &lawmaker,
        MIDNIGHT_DEADLINE,
        "bench",
        midnight - TimeDelta::days(30),
    )
    .await?;
    let seeded = Instant::now();
    let p = Principal::new("bench", &tenant);
    let bar = crate::cli::progress(a.contracts as u64, "seeding contracts");
    let mut i = 0;
    while i < a.contracts {
        let n = (a.contracts - i).min(5_000);
        let drafts = (i..i + n)
            .map(|k| bench_contract(&p, k, midnight))
            .collect::<Result<Vec<_>>>()?;
        for r in store::append(s, &p, drafts).await? {
            r.map_err(|e| anyhow!("seeding: {e}"))?;
        }
        i += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let seed_seconds = seeded.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = midnight_ruler::run_midnight(s, &tenant, midnight, None).await?;
    let seconds = started.elapsed().as_secs_f64();
    let again = Instant::now();
    let rerun = midnight_ruler::run_midnight(s, &tenant, midnight, None).await?;
    let rerun_seconds = again.elapsed().as_secs_f64();
    let decided = report.decided();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "bench": "ruler",
            "store": s.backend(),
            "contracts": a.contracts,
            "decided": decided.total(),
            "ok": decided.ok,
            "doubt": decided.doubt,
            "not": decided.not,
            "contracts_changed": report.contracts_changed,
            "spans_written": report.spans_written,
            "seconds": round(seconds),
            "decisions_per_s": round(decided.total() as f64 / seconds.max(1e-9)),
            "seed_seconds": round(seed_seconds),
            "rerun_seconds": round(rerun_seconds),
            "rerun_spans_written": rerun.spans_written,
            "target": "100000 contracts in <= 30 s on PostgreSQL",
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// One of four kinds in turn: accepted (ok), due without evidence (doubt), delivered but never
/// accepted (not), not yet due (doubt: no block holds).
fn bench_contract(p: &Principal, k: usize, midnight: DateTime<Utc>) -> Result<Draft> {
    let created = midnight - TimeDelta::days(10);
    let deadline = if k % 4 == 3 {
        midnight + TimeDelta::days(5)
    } else {
        midnight - TimeDelta::days(2)
    };
    let evidence = if k % 4 == 1 {
        json!([])
    } else {
        json!([{"kind": "delivery_note", "by": "courier"}])
    };
    Ok(Draft::from_value(
        json!({
            "entity_type": contracts::ENTITY_TYPE,
            "name": format!("B{k}"),
            "visibility": "tenant",
            "when": format_time(created),
            "who": p.user_id,
            "did": "proposed contract",
            "this": format!("bench deliverable {k}"),
            "confirmed_by": "witness",
            "if_ok": "accept", "if_doubt": "hold", "if_not": "terminate",
            "status": "active",
            "content": {
                "name": format!("B{k}"), "scope": "deliverable", "title": format!("bench deliverable {k}"),
                "parties": [{"who": "supplier", "role": "supplier"}, {"who": "client", "role": "client"}],
                "witness": {"who": "witness", "confirmed_at": format_time(created + TimeDelta::minutes(10))},
                "created_at": format_time(created),
                "deadline_at": format_time(deadline),
                "accepted": k.is_multiple_of(4),
                "approvals": [], "quorum": 2,
                "evidence": evidence,
                "state": "active", "tags": {}
            }
        }),
        p,
        &[],
        created,
    )?)
}
