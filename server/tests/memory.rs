//! Memory (issue 13) against both stores: scope is enforced before ranking (another user's or
//! tenant's items are never recalled, listed or forgotten), expired and superseded items are
//! not recalled, and forgetting leaves nothing recoverable — no index row, no embedding, no
//! ciphertext in the SQLite file — while the chain still verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use ledger::crypto::NodeKey;
use ledger::store::memory::{MemoryLayer, Reach};
use ledger::{Principal, Store};
use server::memory::{Consent, ForgetTarget, Memory, MemoryKind, RememberRequest};
use sqlx::Row;
use testkit::Backend;

/// A store of its own, with the means to read its tables behind the application's back.
struct Env {
    backend: Backend,
    store: Arc<dyn Store>,
    memory: Memory,
    dir: tempfile::TempDir,
    pg_url: Option<String>,
}

async fn open(backend: Backend) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pg_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(testkit::pg::fresh_database().await),
    };
    let store = ledger::store::open(pg_url.as_deref(), dir.path(), NodeKey::generate())
        .await
        .unwrap();
    ledger::store::ensure_manifest(store.as_ref())
        .await
        .unwrap();
    Env {
        backend,
        memory: Memory::new(store.clone()),
        store,
        dir,
        pg_url,
    }
}

impl Env {
    /// Rows in the memory index (all tenants), read as the database owner.
    async fn index_rows(&self, id: Option<uuid::Uuid>) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&format!(
                    "sqlite:{}",
                    self.dir.path().join("ledger.sqlite3").display()
                ))
                .await
                .unwrap();
                let n: i64 = match id {
                    None => sqlx::query_scalar("SELECT count(*) FROM memory_items"),
                    Some(_) => sqlx::query_scalar("SELECT count(*) FROM memory_items WHERE id = ?"),
                }
                .bind(id.map(|u| u.to_string()))
                .fetch_one(&pool)
                .await
                .unwrap();
                pool.close().await;
                n
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(self.pg_url.as_deref().unwrap())
                    .await
                    .unwrap();
                let row = sqlx::query(
                    "SELECT count(*) FROM ledger.memory_items WHERE $1::uuid IS NULL OR id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
                pool.close().await;
                row.get::<i64, _>(0)
            }
        }
    }

    /// Keyed terms the store counts for recall (all tenants), read as the database owner.
    async fn term_rows(&self) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&format!(
                    "sqlite:{}",
                    self.dir.path().join("ledger.sqlite3").display()
                ))
                .await
                .unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_fts_vocab")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(self.pg_url.as_deref().unwrap())
                    .await
                    .unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.memory_terms")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n
            }
        }
    }

    async fn verify(&self, tenant: &str) {
        let trusted = ledger::store::trusted_keys(self.store.as_ref())
            .await
            .unwrap();
        let report = ledger::verify::verify_tenant(self.store.as_ref(), tenant, &trusted)
            .await
            .unwrap();
        assert!(report.ok, "{report:?}");
    }
}

fn ana() -> Principal {
    Principal::new("ana", "demo")
}
fn bob() -> Principal {
    Principal::new("bob", "demo")
}
fn carol() -> Principal {
    Principal::new("ana", "other")
}

fn fact(text: &str, layer: MemoryLayer, session: Option<&str>) -> RememberRequest {
    RememberRequest {
        text: text.into(),
        kind: MemoryKind::Fact,
        layer,
        session_id: session.map(str::to_string),
        supersedes: None,
        consent: Consent::Explicit,
        trace_id: None,
    }
}

async fn another_user_or_tenant_never_recalls_lists_or_forgets_an_item(env: Env) {
    let now = Utc::now();
    let m = &env.memory;
    let secret = m
        .remember(
            &ana(),
            fact("my bank PIN is 4242", MemoryLayer::Temporary, None),
            now,
        )
        .await
        .unwrap();
    m.remember(
        &ana(),
        fact("my dog is called Rex", MemoryLayer::Session, Some("s1")),
        now,
    )
    .await
    .unwrap();
    // The owner recalls it…
    let mine = m
        .recall(
            &ana(),
            Reach::All,
            Some("s1"),
            "what is my bank PIN",
            5,
            now,
        )
        .await
        .unwrap();
    assert_eq!(mine[0].item.id, secret.id);
    assert_eq!(mine[0].item.text, "my bank PIN is 4242");
    // …nobody else does, whatever they ask, in any reach (same user id in another tenant too).
    for who in [bob(), carol()] {
        for reach in [Reach::All, Reach::Session, Reach::Own] {
            for q in ["what is my bank PIN", "ana bank PIN 4242", "dog Rex", ""] {
                let got = m.recall(&who, reach, Some("s1"), q, 50, now).await.unwrap();
                assert!(got.is_empty(), "{who:?} {reach:?} {q:?}: {got:?}");
            }
        }
        assert!(m.list(&who, None, now, 100).await.unwrap().is_empty());
        assert!(m.list(&who, Some("s1"), now, 100).await.unwrap().is_empty());
        let err = m
            .forget(&who, &ForgetTarget::Item { id: secret.id }, now)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert_eq!(
            m.forget(&who, &ForgetTarget::All, now).await.unwrap(),
            Vec::<uuid::Uuid>::new()
        );
    }
    assert_eq!(m.list(&ana(), None, now, 100).await.unwrap().len(), 2);
    // The span is the owner's, private, and holds ciphertext only.
    let span = env
        .store
        .get(&ana(), secret.id, None)
        .await
        .unwrap()
        .unwrap();
    let view = span.to_view().unwrap();
    assert_eq!(view["entity_type"], "memory");
    assert_eq!(view["visibility"], "private");
    assert!(!view.to_string().contains("4242"), "{view}");
    assert!(
        env.store
            .get(&bob(), secret.id, None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn session_only_reach_sees_only_this_sessions_items(env: Env) {
    let now = Utc::now();
    let m = &env.memory;
    let here = m
        .remember(
            &ana(),
            fact(
                "the project is called Falcon",
                MemoryLayer::Session,
                Some("s1"),
            ),
            now,
        )
        .await
        .unwrap();
    m.remember(
        &ana(),
        fact(
            "the project is called Heron",
            MemoryLayer::Session,
            Some("s2"),
        ),
        now,
    )
    .await
    .unwrap();
    m.remember(
        &ana(),
        fact("the project budget is 12k", MemoryLayer::Temporary, None),
        now,
    )
    .await
    .unwrap();
    let got = m
        .recall(&ana(), Reach::Session, Some("s1"), "project", 10, now)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.item.id).collect::<Vec<_>>(),
        vec![here.id]
    );
    let all = m
        .recall(&ana(), Reach::All, Some("s1"), "project", 10, now)
        .await
        .unwrap();
    let texts: Vec<&str> = all.iter().map(|r| r.item.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(!texts.contains(&"the project is called Heron"));
}

async fn expired_and_superseded_items_are_never_recalled(env: Env) {
    let now = Utc::now();
    let m = &env.memory;
    let old = now - TimeDelta::hours(25);
    m.remember(
        &ana(),
        fact("the door code is 1234", MemoryLayer::Session, Some("s1")),
        old,
    )
    .await
    .unwrap();
    let got = m
        .recall(&ana(), Reach::All, Some("s1"), "door code", 10, now)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert!(m.list(&ana(), None, now, 10).await.unwrap().is_empty());

    let rex = m
        .remember(
            &ana(),
            fact("my dog's name is Rex", MemoryLayer::Temporary, None),
            now,
        )
        .await
        .unwrap();
    let max = m
        .remember(
            &ana(),
            fact("My dog's name is Max", MemoryLayer::Temporary, None),
            now,
        )
        .await
        .unwrap();
    assert_eq!(max.supersedes, Some(rex.id));
    let got = m
        .recall(&ana(), Reach::All, None, "what is my dog's name", 10, now)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.item.id).collect::<Vec<_>>(),
        vec![max.id]
    );
    // Nothing was deleted: the older item is still the owner's to see and forget.
    assert_eq!(m.list(&ana(), None, now, 10).await.unwrap().len(), 2);
}

async fn a_forgotten_item_leaves_nothing_recoverable_and_the_chain_verifies(env: Env) {
    let now = Utc::now();
    let m = &env.memory;
    let keep = m
        .remember(
            &ana(),
            fact(
                "I prefer answers in Portuguese",
                MemoryLayer::Temporary,
                None,
            ),
            now,
        )
        .await
        .unwrap();
    let gone = m
        .remember(
            &ana(),
            fact(
                "my passport number is X1234567",
                MemoryLayer::Temporary,
                None,
            ),
            now,
        )
        .await
        .unwrap();
    let view = env
        .store
        .get(&ana(), gone.id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    let ciphertext = view["content"]["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(env.index_rows(Some(gone.id)).await, 1);

    let forgotten = m
        .forget(&ana(), &ForgetTarget::Item { id: gone.id }, now)
        .await
        .unwrap();
    assert_eq!(forgotten, vec![gone.id]);
    let got = m
        .recall(&ana(), Reach::All, None, "passport number", 10, now)
        .await
        .unwrap();
    assert!(got.iter().all(|r| r.item.id != gone.id), "{got:?}");
    let list = m.list(&ana(), None, now, 10).await.unwrap();
    assert_eq!(list.iter().map(|i| i.id).collect::<Vec<_>>(), vec![keep.id]);
    assert_eq!(env.index_rows(Some(gone.id)).await, 0);
    assert_eq!(env.index_rows(None).await, 1);
    let after = env
        .store
        .get(&ana(), gone.id, None)
        .await
        .unwrap()
        .unwrap()
        .to_view()
        .unwrap();
    assert_eq!(after["redacted"], true, "{after}");
    if env.backend == Backend::Sqlite {
        for file in ["ledger.sqlite3", "ledger.sqlite3-wal"] {
            let bytes = std::fs::read(env.dir.path().join(file)).unwrap_or_default();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains(&ciphertext),
                "{file} still holds the ciphertext"
            );
            assert!(!hay.contains("X1234567"), "{file} holds the plaintext");
        }
    }
    env.verify("demo").await;

    // forget session / all / last
    m.remember(
        &ana(),
        fact("we talked about invoices", MemoryLayer::Session, Some("s9")),
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        m.forget(
            &ana(),
            &ForgetTarget::Session {
                session_id: "s9".into()
            },
            now
        )
        .await
        .unwrap()
        .len(),
        1
    );
    let last = m
        .remember(
            &ana(),
            fact("my cat is Tom", MemoryLayer::Temporary, None),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        m.forget(&ana(), &ForgetTarget::Last { session_id: None }, now)
            .await
            .unwrap(),
        vec![last.id]
    );
    assert_eq!(
        m.forget(&ana(), &ForgetTarget::All, now).await.unwrap(),
        vec![keep.id]
    );
    assert_eq!(env.index_rows(None).await, 0);
    env.verify("demo").await;
}

/// The sweeper redacts items past their `ttl_at` in every tenant, on each owner's behalf, and
/// nothing else: the index rows go, the chains still verify, a second sweep finds nothing.
async fn the_sweeper_redacts_expired_items_of_every_tenant_and_nothing_else(env: Env) {
    let m = &env.memory;
    let now = Utc::now();
    let day_ago = now - TimeDelta::hours(25);
    let old = m
        .remember(
            &ana(),
            fact("old session note", MemoryLayer::Session, Some("s1")),
            day_ago,
        )
        .await
        .unwrap();
    let other = m
        .remember(
            &carol(),
            fact("other tenant note", MemoryLayer::Session, Some("s2")),
            day_ago,
        )
        .await
        .unwrap();
    let fresh = m
        .remember(
            &ana(),
            fact("fresh session note", MemoryLayer::Session, Some("s1")),
            now,
        )
        .await
        .unwrap();
    let kept = m
        .remember(
            &bob(),
            fact("a month-long note", MemoryLayer::Temporary, None),
            day_ago,
        )
        .await
        .unwrap();
    assert_eq!(env.index_rows(None).await, 4);

    assert_eq!(m.sweep_expired(now, 100).await.unwrap(), 2);
    for (who, id) in [(ana(), old.id), (carol(), other.id)] {
        let view = env
            .store
            .get(&who, id, None)
            .await
            .unwrap()
            .unwrap()
            .to_view()
            .unwrap();
        assert_eq!(view["redacted"], true, "{view}");
        assert_eq!(env.index_rows(Some(id)).await, 0);
    }
    assert_eq!(env.index_rows(Some(fresh.id)).await, 1);
    assert_eq!(env.index_rows(Some(kept.id)).await, 1);
    assert_eq!(m.sweep_expired(now, 100).await.unwrap(), 0);
    env.verify("demo").await;
    env.verify("other").await;
}

/// Recall keeps per-process state (the embedded store's vector cache, the term counts): a new
/// item is recalled by the very next query, a forgotten one never again, another user's never,
/// and forgetting the last item holding a term leaves no count of it behind.
async fn recall_follows_new_and_forgotten_items_at_once(env: Env) {
    let now = Utc::now();
    let m = &env.memory;
    let recall = |p: Principal, q: &'static str| async move {
        m.recall(&p, Reach::All, Some("s1"), q, 5, now)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.item.id)
            .collect::<Vec<_>>()
    };
    let bobs = m
        .remember(
            &bob(),
            fact(
                "the boiler room key is in the safe",
                MemoryLayer::Temporary,
                None,
            ),
            now,
        )
        .await
        .unwrap();
    let anas = m
        .remember(
            &ana(),
            fact(
                "the boiler room key hangs by the door",
                MemoryLayer::Temporary,
                None,
            ),
            now,
        )
        .await
        .unwrap();
    assert_eq!(recall(bob(), "boiler room key").await, [bobs.id]);
    assert_eq!(recall(ana(), "boiler room key").await, [anas.id]);
    let newer = m
        .remember(
            &ana(),
            fact(
                "boiler pressure stays near 1.5 bar",
                MemoryLayer::Temporary,
                None,
            ),
            now,
        )
        .await
        .unwrap();
    assert_eq!(recall(ana(), "boiler pressure").await[0], newer.id);
    m.forget(&ana(), &ForgetTarget::Item { id: newer.id }, now)
        .await
        .unwrap();
    assert_eq!(recall(ana(), "boiler pressure").await, [anas.id]);
    m.forget(&ana(), &ForgetTarget::All, now).await.unwrap();
    assert!(recall(ana(), "boiler room key").await.is_empty());
    assert_eq!(recall(bob(), "boiler room key").await, [bobs.id]);
    assert!(env.term_rows().await > 0);
    m.forget(&bob(), &ForgetTarget::All, now).await.unwrap();
    assert_eq!(env.term_rows().await, 0);
    env.verify("demo").await;
}

testkit::both_stores!(
    mod on_sqlite, on_postgres; open = super::open;
    recall_follows_new_and_forgotten_items_at_once,
    the_sweeper_redacts_expired_items_of_every_tenant_and_nothing_else,
    another_user_or_tenant_never_recalls_lists_or_forgets_an_item,
    session_only_reach_sees_only_this_sessions_items,
    expired_and_superseded_items_are_never_recalled,
    a_forgotten_item_leaves_nothing_recoverable_and_the_chain_verifies,
);
