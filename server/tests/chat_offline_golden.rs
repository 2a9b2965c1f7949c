//! Golden answers of the offline provider: the real agent on the demo tenant (SQLite, seeded at
//! a fixed past instant so every date is the same on every run) answers a broad list of
//! questions — every intent and its cue words, the D1–D5 story, amendments proposed, applied
//! and cancelled, simulations, unknown contracts, other languages, help, empty results, a user
//! of another tenant and a conversation — and each question's tool calls and whole answer are
//! compared with `offline_golden.txt`. Span ids are random, so they are written as the span
//! they name (`<contract D1>`). `LOGLINE_BLESS=1` rewrites the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kernels::contracts;
use ledger::store::group::GroupCommit;
use ledger::{Principal, Store};
use server::chat::agent::{Agent, ChatEvent, MemoryMode, TurnRequest};
use server::chat::proposals::{self, Actor};
use server::chat::{ProviderConfig, SpanWriter, provider_from_config};
use testkit::{Backend, Fixture};
use uuid::Uuid;

const TENANT: &str = "demo";
const ANA: &str = "ana@padaria-lisboa.pt";
/// Not a party to any contract: may read them, may not amend them.
const RUI: &str = "rui@padaria-lisboa.pt";
const EVE: &str = "eve@elsewhere.example";
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/offline_golden.txt");

/// Questions asked by Ana unless a `who:` prefix says otherwise; `{D1}` is D1's span id,
/// `{LAW}` midnight_deadline's, `{DEC}` the decision that terminated D1.
const QUESTIONS: &[&str] = &[
    // Explaining decisions.
    "why was D1 terminated?",
    "Why did D1 get terminated",
    "what happened to D2?",
    "Explain the decision on d4.",
    "why is D3 held?",
    "what is the status of D5?",
    "tell me about D3",
    "Why was “D1” terminated?",
    "why were D1 and D4 terminated?",
    "why was D1's contract held",
    "explain 0195A1B2-0000-7000-8000-000000000003",
    "explain {D1}",
    "why was D9 terminated?",
    "why were D1 and D9 terminated?",
    "why were D1, D2, D3, D4, D5 and D6 terminated?",
    // Showing a span.
    "show span {D1}",
    "get {LAW}",
    "show span {DEC}",
    "display span 00000000-0000-7000-8000-000000000000",
    "show span 0195A1B2-0000-7000-8000-000000000001",
    "why was {D1} terminated?",
    // Silent guarantors.
    "Which contracts have a guarantor who hasn't responded in 24h?",
    "contracts where the guarantor hasn't answered",
    "Which contracts have a guarantor who didn't respond within 24h?",
    "guarantors that haven't responded in 48 hours",
    "Show contracts whose guarantor did not reply in 2 days",
    "which guarantors are silent for a week",
    // Contracts by state.
    "Which contracts are terminated?",
    "how many contracts are open?",
    "list held contracts",
    "show me the contracts on hold",
    "which contracts were accepted",
    "List void contracts",
    "how many contracts are void?",
    "count the accepted contracts",
    "which contracts are terminated or held?",
    // What-if simulations.
    "What if the quorum were 3?",
    "if the quorum was 3 which contracts would change? what if",
    "simulate midnight_deadline with quorum=1",
    "what if loan_return's quorum were two?",
    "what if the grace hours were 6 under law late_delivery",
    "what if midnight_deadline's accepted were true?",
    "what if it rained?",
    // Amendments.
    "extend D4's deadline by 3 days",
    "Push the deadline of D4 by 12 hours.",
    "postpone D2 by two days",
    "please extend the deadline for D4 by a week",
    "set D4's deadline to 2030-01-31",
    "move D4's deadline to 2030-01-31T18:00:00Z",
    "bring D4's deadline forward by 1 day",
    "extend the deadlines of D2 and D4 by 1 day",
    "extend D1's deadline",
    "extend the deadline by 2 days",
    "postpone D9 by two days",
    "rui: extend D1's deadline by a week",
    "!apply: extend D1's deadline by 3 days",
    "why was D1 terminated?",
    "extend D1's deadline by 3 days",
    "!cancel: extend D5's deadline by 2 days",
    "what happened to D5?",
    // Help, other languages, nothing understood.
    "hello",
    "hello there",
    "help",
    "Write me a poem about croissants",
    "Porque é que o D1 foi terminado?",
    "Quels contrats sont ouverts ?",
    "D1 の状態は?",
    // Another tenant's user.
    "eve: why was D1 terminated?",
    "eve: which contracts are open?",
    "eve: show span {D1}",
    "eve: Which contracts have a guarantor who hasn't responded in 24h?",
    "eve: What if the quorum were 3?",
    // A conversation: each turn reads only its own question.
    "+what happened to D2?",
    "+and D4?",
    "+why was D4 terminated?",
    "+thanks",
];

struct Golden {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    writer: Arc<dyn SpanWriter>,
    agent: Agent,
    vars: Vec<(&'static str, Uuid)>,
    labels: HashMap<Uuid, String>,
    conversation: Option<Uuid>,
}

impl Golden {
    async fn new() -> Self {
        let Fixture { dir, store } = Fixture::empty(Backend::Sqlite).await;
        let at: DateTime<Utc> = "2025-03-10T12:00:00Z".parse().unwrap();
        let report = kernels::demo::seed_demo(store.as_ref(), TENANT, at)
            .await
            .unwrap();
        // A second midnight: D4, held for 24 hours, is decided again.
        let next = report.ruled_at + chrono::TimeDelta::days(1);
        kernels::midnight_ruler::run_midnight(store.as_ref(), TENANT, next, None)
            .await
            .unwrap();
        let writer: Arc<dyn SpanWriter> = Arc::new(GroupCommit::start(store.clone()));
        let provider = provider_from_config(&ProviderConfig::Offline).unwrap();
        let agent = Agent::new(store.clone(), writer.clone(), provider, None)
            .await
            .unwrap();
        let d1 = contracts::find(store.as_ref(), &ana(), "D1")
            .await
            .unwrap()
            .unwrap()
            .id;
        let law = report.laws[0].span_id.parse().unwrap();
        let dec = report.d1_decision.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        Golden {
            _dir: dir,
            store,
            writer,
            agent,
            vars: vec![("{D1}", d1), ("{LAW}", law), ("{DEC}", dec)],
            labels: HashMap::new(),
            conversation: None,
        }
    }

    /// One question: who asks, what they ask, the calls and the answer, written out.
    async fn ask(&mut self, line: &str, out: &mut String) {
        let (line, conversation) = match line.strip_prefix('+') {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let (action, line) = match line.split_once(": ") {
            Some((a @ ("!apply" | "!cancel"), q)) => (Some(a), q),
            _ => (None, line),
        };
        let (who, question) = match line.split_once(": ") {
            Some(("rui", q)) => (Principal::new(RUI, TENANT), q),
            Some(("eve", q)) => (Principal::new(EVE, "elsewhere"), q),
            _ => (ana(), line),
        };
        let message = self.vars.iter().fold(question.to_string(), |q, (k, v)| {
            q.replace(k, &v.to_string())
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let req = TurnRequest {
            message,
            conversation_id: if conversation {
                self.conversation
            } else {
                None
            },
            // Named, so the prompt_bandit's choice does not vary the prompt under test.
            variant: Some("default".into()),
            memory: if conversation {
                MemoryMode::On
            } else {
                MemoryMode::Off
            },
        };
        let r = self.agent.turn(&who, &[], req, Some(tx)).await.unwrap();
        if conversation {
            self.conversation = Some(r.conversation_id);
        }
        writeln!(out, "## {} {question}", who.user_id).unwrap();
        while let Some(event) = rx.recv().await {
            match event {
                ChatEvent::ToolCall {
                    name, arguments, ..
                } => writeln!(out, "call {name} {arguments}").unwrap(),
                ChatEvent::ToolResult { ok, name, .. } => {
                    writeln!(out, "  {name} {}", if ok { "ok" } else { "error" }).unwrap();
                }
                ChatEvent::Breaker { .. } => writeln!(out, "breaker").unwrap(),
                ChatEvent::Repair { errors } => writeln!(out, "repair {errors:?}").unwrap(),
                ChatEvent::Delta { .. } => {}
            }
        }
        writeln!(out, "outcome {}", r.outcome.as_str()).unwrap();
        let mut answer = r.answer.clone();
        let text = answer
            .as_object_mut()
            .and_then(|a| a.remove("text"))
            .unwrap_or_default();
        for l in text.as_str().unwrap_or_default().lines() {
            writeln!(out, "> {l}").unwrap();
        }
        writeln!(out, "{answer}").unwrap();
        if let Some(action) = action {
            let actor = Actor {
                store: self.store.as_ref(),
                writer: self.writer.as_ref(),
                principal: &who,
                roles: &[],
            };
            let id = r.proposals[0];
            let done = match action {
                "!apply" => proposals::apply(actor, id).await.unwrap(),
                _ => proposals::cancel(actor, id).await.unwrap(),
            };
            writeln!(out, "{action} -> {}", done.status).unwrap();
        }
        out.push('\n');
    }

    /// `out` with every span id replaced by the span it names (`<contract D1>`, `<law.decision
    /// D4 #2>` for a second span of the same name), or left as written when the demo user
    /// cannot read it.
    async fn normalise(&mut self, out: &str) -> String {
        let mut result = String::new();
        let mut rest = out;
        while let Some((i, id)) = find_uuid(rest) {
            result.push_str(&rest[..i]);
            let label = self.label(id).await;
            result.push_str(label.as_deref().unwrap_or(&rest[i..i + 36]));
            rest = &rest[i + 36..];
        }
        result.push_str(rest);
        result
    }

    async fn label(&mut self, id: Uuid) -> Option<String> {
        if let Some(l) = self.labels.get(&id) {
            return Some(l.clone());
        }
        let view = self.store.get(&ana(), id, None).await.unwrap()?;
        let v = view.to_view().unwrap();
        let name = v["name"].as_str().unwrap_or("?");
        let base = format!("<{} {name}", v["entity_type"].as_str().unwrap_or("?"));
        let same = self
            .labels
            .values()
            .filter(|l| l.starts_with(&base))
            .count();
        let label = match same {
            0 => format!("{base}>"),
            n => format!("{base} #{}>", n + 1),
        };
        self.labels.insert(id, label.clone());
        Some(label)
    }
}

fn ana() -> Principal {
    Principal::new(ANA, TENANT)
}

/// The first UUID in `s` (any case) and where it starts.
fn find_uuid(s: &str) -> Option<(usize, Uuid)> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(35)).find_map(|i| {
        let w = &b[i..i + 36];
        let shaped = w.iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        shaped
            .then(|| std::str::from_utf8(w).ok()?.parse().ok())
            .flatten()
            .map(|id| (i, id))
    })
}

#[tokio::test]
async fn offline_answers_match_the_golden_file() {
    let mut g = Golden::new().await;
    let mut out = String::new();
    for q in QUESTIONS {
        g.ask(q, &mut out).await;
    }
    let out = g.normalise(&out).await;
    if std::env::var_os("LOGLINE_BLESS").is_some() {
        std::fs::write(GOLDEN, &out).unwrap();
        return;
    }
    let want = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    if want != out {
        let got: Vec<&str> = out.lines().collect();
        let exp: Vec<&str> = want.lines().collect();
        let at = (0..got.len().max(exp.len()))
            .find(|i| got.get(*i) != exp.get(*i))
            .unwrap_or(0);
        let show = |ls: &[&str]| ls[at.min(ls.len())..(at + 8).min(ls.len())].join("\n");
        panic!(
            "offline answers differ from {GOLDEN} at line {} (LOGLINE_BLESS=1 rewrites it)\n\
             --- expected\n{}\n--- got\n{}",
            at + 1,
            show(&exp),
            show(&got),
        );
    }
}
