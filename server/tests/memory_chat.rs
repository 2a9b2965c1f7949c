//! Memory with real-model wire protocols: an item recalled into a turn's prompt block is
//! citable — and cited — by a model's answer (a scripted fake OpenAI server), but the same
//! citation is refused when memory is off; the OpenAI-compatible and Ollama embedders speak
//! `/v1/embeddings` and `/api/embed` (fake servers) and refuse vectors of the wrong size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use chrono::Utc;
use ledger::Principal;
use ledger::store::group::GroupCommit;
use ledger::store::memory::{EMBED_DIM, MemoryLayer};
use serde_json::json;
use server::chat::agent::{Agent, MemoryMode, Outcome, TurnRequest};
use server::chat::{ApiKey, OpenAiProvider, SpanWriter};
use server::memory::embed::{Embedder, OllamaEmbedder, OpenAiEmbedder};
use server::memory::{Consent, ForgetTarget, MemoryKind, RememberRequest};
use support::fast_settings;
use testkit::fake_llm::{FakeLlm, Reply, ollama, openai};
use testkit::{Backend, Fixture};

#[tokio::test]
async fn a_recalled_memory_is_cited_by_the_answer_and_refused_when_memory_is_off() {
    let Fixture { dir: _dir, store } = Fixture::new(Backend::Sqlite).await;
    let fake = FakeLlm::start().await;
    let provider = Arc::new(
        OpenAiProvider::new(
            &fake.openai_base(),
            Some(ApiKey::new("sk-test-memory-0000").unwrap()),
            "gpt-4o-mini",
            fast_settings(),
        )
        .unwrap(),
    );
    let writer: Arc<dyn SpanWriter> = Arc::new(GroupCommit::start(store.clone()));
    let agent = Agent::new(store.clone(), writer, provider, None)
        .await
        .unwrap();
    let ana = Principal::new("ana", "demo");
    let conversation = uuid::Uuid::now_v7();
    let item = agent
        .memory
        .remember(
            &ana,
            RememberRequest {
                text: "my favourite colour is teal".into(),
                kind: MemoryKind::Preference,
                layer: MemoryLayer::Temporary,
                session_id: Some(conversation.to_string()),
                supersedes: None,
                consent: Consent::Explicit,
                trace_id: None,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let answer = json!({
        "text": "Your favourite colour is teal.",
        "confidence": 0.9,
        "actions": [],
        "citations": [item.id.to_string()],
        "telemetry": {"tool_use_count": 0}
    })
    .to_string();
    let ask = |memory, conversation| TurnRequest {
        message: "what is my favourite colour?".into(),
        conversation_id: Some(conversation),
        variant: None,
        memory,
    };

    fake.push(Reply::json(openai::answer(&answer)));
    let r = agent
        .turn(&ana, &[], ask(MemoryMode::On, conversation), None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Answered, "{:?}", r.answer);
    assert_eq!(r.answer["citations"], json!([item.id.to_string()]));
    let sent = fake.received().pop().unwrap().body.to_string();
    assert!(
        sent.contains(&item.id.to_string()) && sent.contains("teal"),
        "{sent}"
    );
    assert!(
        sent.contains("\"remember\""),
        "memory tools are offered when memory is on"
    );

    // Off (a new conversation, so no history mentions it): the item is not in the prompt, so
    // citing it is an invented citation.
    fake.push(Reply::json(openai::answer(&answer)));
    fake.push(Reply::json(openai::answer(&answer)));
    let r = agent
        .turn(&ana, &[], ask(MemoryMode::Off, uuid::Uuid::now_v7()), None)
        .await
        .unwrap();
    assert_ne!(r.outcome, Outcome::Answered, "{:?}", r.answer);
    let sent = fake.received()[1].body.to_string();
    assert!(
        !sent.contains("teal") && !sent.contains("\"remember\""),
        "{sent}"
    );
}

/// A fact remembered through the `remember` tool in one conversation and recalled into an
/// answer in another: forgetting that one item leaves its text nowhere a reader (or the SQLite
/// file) could find it — not in the turns' records, model outputs or tool calls — and the
/// chain still verifies.
#[tokio::test]
async fn forgetting_an_item_also_redacts_the_turns_that_wrote_and_recalled_it() {
    let Fixture { dir, store } = Fixture::new(Backend::Sqlite).await;
    let fake = FakeLlm::start().await;
    let provider = Arc::new(
        OpenAiProvider::new(
            &fake.openai_base(),
            Some(ApiKey::new("sk-test-memory-0000").unwrap()),
            "gpt-4o-mini",
            fast_settings(),
        )
        .unwrap(),
    );
    let writer: Arc<dyn SpanWriter> = Arc::new(GroupCommit::start(store.clone()));
    let agent = Agent::new(store.clone(), writer, provider, None)
        .await
        .unwrap();
    let ana = Principal::new("ana", "demo");
    let secret = "locker code 7391-QZ";
    let ask = |message: &str| TurnRequest {
        message: message.into(),
        conversation_id: Some(uuid::Uuid::now_v7()),
        variant: None,
        memory: MemoryMode::On,
    };

    let args = json!({"text": format!("my {secret}"), "kind": "fact"}).to_string();
    fake.push(Reply::json(openai::tool_calls(&[(
        "c1", "remember", &args,
    )])));
    let noted = json!({"text": format!("Noted: your {secret}."), "confidence": 0.5,
        "actions": [], "citations": [], "telemetry": {"tool_use_count": 1}})
    .to_string();
    fake.push(Reply::json(openai::answer(&noted)));
    agent
        .turn(
            &ana,
            &[],
            ask(&format!("please remember that my {secret}")),
            None,
        )
        .await
        .unwrap();
    let items = agent.memory.list(&ana, None, Utc::now(), 50).await.unwrap();
    let item = items
        .iter()
        .find(|i| i.kind != MemoryKind::Turn && i.text.contains(secret))
        .unwrap_or_else(|| panic!("the remember tool kept the fact: {items:?}"));
    assert_eq!(fake.remaining(), 0, "turn 1 used every scripted reply");

    let recalled = json!({"text": format!("Your {secret}."), "confidence": 0.9,
        "actions": [], "citations": [item.id.to_string()], "telemetry": {"tool_use_count": 0}})
    .to_string();
    fake.push(Reply::json(openai::answer(&recalled)));
    let r = agent
        .turn(&ana, &[], ask("what is my locker code?"), None)
        .await
        .unwrap();
    assert_eq!(
        r.answer["citations"],
        json!([item.id.to_string()]),
        "{:?}",
        r.answer
    );

    let visible = |store: Arc<dyn ledger::Store>| async move {
        let page = store
            .query(
                &Principal::new("ana", "demo"),
                &ledger::query::Filter {
                    tenant_id: Some("demo".into()),
                    limit: Some(1000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        page.rows
            .iter()
            .map(|r| r.span.to_view().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = visible(store.clone()).await;
    let holding = before.iter().filter(|t| t.contains(secret)).count();
    assert!(holding >= 4, "the turns hold the text before: {holding}");

    let forgotten = agent
        .memory
        .forget(&ana, &ForgetTarget::Item { id: item.id }, Utc::now())
        .await
        .unwrap();
    assert_eq!(forgotten, vec![item.id]);
    for text in visible(store.clone()).await {
        assert!(
            !text.contains(secret),
            "still readable after forget: {text}"
        );
    }
    for file in ["ledger.sqlite3", "ledger.sqlite3-wal"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{file} still holds the text"
        );
    }
    let trusted = ledger::store::trusted_keys(store.as_ref()).await.unwrap();
    let report = ledger::verify::verify_tenant(store.as_ref(), "demo", &trusted)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn the_openai_and_ollama_embedders_speak_their_protocols_and_check_the_size() {
    let v = |x: f32| vec![x; EMBED_DIM];
    let fake = FakeLlm::with([
        Reply::json(openai::embeddings("e5-small", &[v(0.1), v(0.2)])),
        Reply::json(openai::embeddings("e5-small", &[vec![0.1; 8]])),
        Reply::json(ollama::embed("all-minilm", &[v(0.3)])),
    ])
    .await;
    let o = OpenAiEmbedder::new(&fake.openai_base(), "e5-small", Some("sk-embed".into())).unwrap();
    let got = o.embed(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!((got.len(), got[1][0]), (2, 0.2));
    let err = o.embed(&["a".into()]).await.unwrap_err();
    assert!(err.to_string().contains("384"), "{err}");
    let l = OllamaEmbedder::new(&fake.ollama_url(), "all-minilm").unwrap();
    assert_eq!(l.embed(&["c".into()]).await.unwrap()[0][0], 0.3);

    let r = fake.received();
    assert_eq!(r[0].path, "/v1/embeddings");
    assert_eq!(r[0].body["model"], "e5-small");
    assert_eq!(r[0].body["input"], json!(["a", "b"]));
    assert_eq!(r[0].body["dimensions"], EMBED_DIM);
    assert_eq!(r[0].header("authorization"), Some("Bearer sk-embed"));
    assert_eq!(r[2].path, "/api/embed");
    assert_eq!(r[2].body["input"], json!(["c"]));
}
