//! One conformance suite, run against both stores: every behaviour a user relies on must hold
//! the same way on the embedded SQLite file and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use ledger::store::{self, Store};
use ledger::verify::verify_tenant;
use ledger::{AppendError, Draft, Filter, Order, Principal, StoreError};
use serde_json::{Value, json};
use testkit::Fixture;
use uuid::Uuid;

fn ana() -> Principal {
    Principal::new("ana", "bakery")
}

fn line(extra: Value) -> Value {
    let mut v = json!({"who": "ana", "did": "confirmed delivery", "this": "delivery 312",
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask again", "if_not": "open incident", "status": "valid"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn draft(p: &Principal, v: Value) -> Draft {
    Draft::from_value(v, p, &[], Utc::now()).unwrap()
}

async fn add(
    s: &dyn Store,
    p: &Principal,
    values: Vec<Value>,
) -> Vec<Result<ledger::Appended, AppendError>> {
    let drafts = values.into_iter().map(|v| draft(p, v)).collect();
    store::append(s, p, drafts).await.unwrap()
}

async fn add_one(s: &dyn Store, p: &Principal, v: Value) -> ledger::Appended {
    add(s, p, vec![v]).await.remove(0).unwrap()
}

fn view(span: &ledger::StoredSpan) -> Value {
    span.to_view().unwrap()
}

async fn count(s: &dyn Store, p: &Principal, f: Filter) -> usize {
    s.query(
        p,
        &Filter {
            limit: Some(1000),
            ..f
        },
    )
    .await
    .unwrap()
    .rows
    .len()
}

async fn verify_ok(s: &dyn Store, tenant: &str) -> ledger::verify::TenantReport {
    let trusted = store::trusted_keys(s).await.unwrap();
    verify_tenant(s, tenant, &trusted).await.unwrap()
}

// ---------------------------------------------------------------------------------------------

async fn appended_spans_read_back_signed_and_hashed(f: Fixture) {
    let s = f.store.as_ref();
    let a = add_one(
        s,
        &ana(),
        line(json!({"entity_type": "delivery", "tags": ["x"]})),
    )
    .await;
    assert_eq!((a.seq, a.chain_pos, a.duplicate), (0, 0, false));
    let got = view(&s.get(&ana(), a.id, None).await.unwrap().unwrap());
    assert_eq!(got["who"], "ana");
    assert_eq!(got["this"], "delivery 312");
    assert_eq!(got["tags"], json!(["x"]));
    assert_eq!(got["curr_hash"], json!(a.curr_hash));
    assert_eq!(got["visibility"], "private");
    assert_eq!(got["at"], "2026-11-20T10:00:00.000000Z");
    let sig = got["signature"].as_str().unwrap();
    ledger::crypto::verify_hash_signature(s.node_key().public_key(), &a.curr_hash, sig).unwrap();
    assert_eq!(a.id.get_version_num(), 7, "ids are UUID v7");
}

async fn ghosts_are_kept_and_say_what_is_missing(f: Fixture) {
    let s = f.store.as_ref();
    let a = add_one(s, &ana(), json!({"who": "ana", "did": "left a note"})).await;
    assert_eq!(a.status, "ghost");
    let got = view(&s.get(&ana(), a.id, None).await.unwrap().unwrap());
    assert_eq!(got["status"], "ghost");
    assert_eq!(
        got["ghost_reason"],
        "missing: this, when, confirmed_by, if_ok, if_doubt, if_not, status"
    );
    assert_eq!(got["did"], "left a note");
}

async fn versions_grow_by_seq_and_the_latest_wins(f: Fixture) {
    let s = f.store.as_ref();
    let first = add_one(
        s,
        &ana(),
        line(json!({"entity_type": "contract", "content": {"deadline": "d1"}})),
    )
    .await;
    let second = add_one(
        s,
        &ana(),
        line(json!({"id": first.id, "content": {"deadline": "d2"}})),
    )
    .await;
    assert_eq!((second.id, second.seq), (first.id, 1));
    let third = add_one(
        s,
        &ana(),
        line(json!({"id": first.id, "seq": 2, "content": {"deadline": "d3"}})),
    )
    .await;
    assert_eq!(third.seq, 2);
    let latest = view(&s.get(&ana(), first.id, None).await.unwrap().unwrap());
    assert_eq!(latest["content"]["deadline"], "d3");
    let old = view(&s.get(&ana(), first.id, Some(0)).await.unwrap().unwrap());
    assert_eq!(old["content"]["deadline"], "d1");
    let all = s.versions(&ana(), first.id).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|v| view(v)["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    let stale = add(s, &ana(), vec![line(json!({"id": first.id, "seq": 1}))])
        .await
        .remove(0);
    assert_eq!(
        stale.unwrap_err(),
        AppendError::SeqConflict {
            id: first.id,
            latest: 2,
            next: 3,
            given: 1
        }
    );
    let bogus = Uuid::now_v7();
    let e = add(s, &ana(), vec![line(json!({"id": bogus, "seq": 4}))])
        .await
        .remove(0);
    assert_eq!(e.unwrap_err(), AppendError::NoSuchSpan(bogus));
    // Someone else in the tenant may not version a private span they do not own.
    let bob = Principal::new("bob", "bakery");
    let e = add(s, &bob, vec![line(json!({"id": first.id, "who": "bob"}))])
        .await
        .remove(0);
    assert_eq!(e.unwrap_err(), AppendError::NotOwner(first.id));
    // Another tenant cannot take over the id at all.
    let mallory = Principal::new("mallory", "rival");
    let e = add(
        s,
        &mallory,
        vec![line(json!({"id": first.id, "who": "mallory"}))],
    )
    .await
    .remove(0);
    assert_eq!(e.unwrap_err(), AppendError::NotVisible(first.id));
    assert!(verify_ok(s, "bakery").await.ok);
    assert!(verify_ok(s, "rival").await.ok);
}

async fn each_tenant_has_one_gapless_chain_that_verifies(f: Fixture) {
    let s = f.store.as_ref();
    let bob = Principal::new("bob", "bakery");
    let other = Principal::new("carla", "studio");
    for round in 0..3 {
        add(
            s,
            &ana(),
            (0..20)
                .map(|i| line(json!({"this": format!("d{round}-{i}")})))
                .collect(),
        )
        .await;
        add(s, &bob, vec![line(json!({"who": "bob"}))]).await;
        add(s, &other, vec![line(json!({"who": "carla"}))]).await;
    }
    let r = verify_ok(s, "bakery").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.spans, 63);
    assert_eq!(verify_ok(s, "studio").await.spans, 3);
    let tenants = s.tenants().await.unwrap();
    assert!(tenants.contains(&"bakery".to_string()) && tenants.contains(&"studio".to_string()));
    let rows = s.audit_page("bakery", 0, 1000).await.unwrap();
    let positions: Vec<i64> = rows.iter().map(|r| r.chain_pos).collect();
    assert_eq!(positions, (0..63).collect::<Vec<_>>());
}

async fn an_idempotency_key_never_takes_effect_twice(f: Fixture) {
    let s = f.store.as_ref();
    let a = add_one(s, &ana(), line(json!({"idempotency_key": "order-1"}))).await;
    let b = add_one(
        s,
        &ana(),
        line(json!({"idempotency_key": "order-1", "did": "something else"})),
    )
    .await;
    assert_eq!((b.id, b.chain_pos, b.duplicate), (a.id, a.chain_pos, true));
    // Within one batch as well.
    let r = add(
        s,
        &ana(),
        vec![
            line(json!({"idempotency_key": "order-2"})),
            line(json!({"idempotency_key": "order-2"})),
        ],
    )
    .await;
    assert_eq!(r[0].as_ref().unwrap().id, r[1].as_ref().unwrap().id);
    // And under concurrent retries.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let st = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let d = draft(&ana(), line(json!({"idempotency_key": "order-3"})));
            store::append(st.as_ref(), &ana(), vec![d])
                .await
                .unwrap()
                .remove(0)
                .unwrap()
                .id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry got the original id");
    assert_eq!(verify_ok(s, "bakery").await.spans, 3);
}

async fn visibility_decides_who_reads_what(f: Fixture) {
    let s = f.store.as_ref();
    let bob = Principal::new("bob", "bakery");
    let stranger = Principal::new("carla", "studio");
    let private = add_one(s, &ana(), line(json!({"this": "private"}))).await;
    let tenant = add_one(
        s,
        &ana(),
        line(json!({"this": "tenant", "visibility": "tenant"})),
    )
    .await;
    let public = add_one(
        s,
        &ana(),
        line(json!({"this": "public", "visibility": "public"})),
    )
    .await;

    for (who, expect) in [
        (&ana(), [true, true, true]),
        (&bob, [false, true, true]),
        (&stranger, [false, false, true]),
    ] {
        for (id, e) in [private.id, tenant.id, public.id].into_iter().zip(expect) {
            assert_eq!(
                s.get(who, id, None).await.unwrap().is_some(),
                e,
                "{} get {id}",
                who.user_id
            );
            assert_eq!(!s.versions(who, id).await.unwrap().is_empty(), e);
            assert_eq!(
                count(
                    s,
                    who,
                    Filter {
                        id: Some(id),
                        ..Filter::default()
                    }
                )
                .await
                    == 1,
                e
            );
        }
    }
    let bob_sees = count(
        s,
        &bob,
        Filter {
            tenant_id: Some("bakery".into()),
            ..Filter::default()
        },
    )
    .await;
    assert_eq!(bob_sees, 2);
    let e = Draft::from_value(
        line(json!({"tenant_id": "bakery"})),
        &stranger,
        &[],
        Utc::now(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("may not write into tenant `bakery`"),
        "{e}"
    );
}

async fn redaction_withholds_content_and_the_chain_still_verifies(f: Fixture) {
    let s = f.store.as_ref();
    let a = add_one(
        s,
        &ana(),
        line(json!({"content": {"secret": "allergy: peanuts"}, "visibility": "tenant"})),
    )
    .await;
    add_one(
        s,
        &ana(),
        line(json!({"id": a.id, "content": {"secret": "allergy: peanuts v2"}})),
    )
    .await;
    add_one(s, &ana(), line(json!({"this": "after"}))).await;

    let bob = Principal::new("bob", "bakery");
    assert!(matches!(
        s.redact(&bob, a.id, "no").await,
        Err(StoreError::NotOwner(_))
    ));
    let r = s.redact(&ana(), a.id, "GDPR erasure").await.unwrap();
    assert!(matches!(
        s.redact(&ana(), a.id, "again").await,
        Err(StoreError::AlreadyRedacted(_))
    ));

    for v in s.versions(&ana(), a.id).await.unwrap() {
        let v = view(&v);
        assert_eq!(v["content"], json!({"redacted": true}));
        assert_eq!(v["redacted_by"], json!(r.id));
        assert!(!v.to_string().contains("peanuts"));
        assert!(v.get("who").is_none());
    }
    let page = s.query(&ana(), &Filter::default()).await.unwrap();
    assert!(
        !page
            .rows
            .iter()
            .any(|r| r.span.to_view().unwrap().to_string().contains("peanuts"))
    );
    let red = view(&s.get(&ana(), r.id, None).await.unwrap().unwrap());
    assert_eq!(red["entity_type"], "redaction");
    assert_eq!(red["who"], "ana");
    assert_eq!(red["content"]["reason"], "GDPR erasure");
    assert_eq!(red["related_to"], json!([a.id]));
    let report = verify_ok(s, "bakery").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.spans, 4);
}

async fn filters_and_cursors_page_through_matching_spans(f: Fixture) {
    let s = f.store.as_ref();
    let target = Uuid::now_v7();
    let mut vals = Vec::new();
    for i in 0..25 {
        vals.push(line(json!({"entity_type": if i % 2 == 0 { "contract" } else { "note" },
            "when": format!("2026-11-{:02}T08:00:00Z", i + 1), "who": if i < 5 { "bob" } else { "ana" },
            "related_to": if i == 7 { json!([target]) } else { json!([]) }, "trace_id": format!("t{}", i % 3)})));
    }
    add(s, &ana(), vals).await;
    let p = ana();
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                entity_type: Some("contract".into()),
                ..Filter::default()
            }
        )
        .await,
        13
    );
    let since = chrono::DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")
        .unwrap()
        .to_utc();
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                entity_type: Some("contract".into()),
                since: Some(since),
                ..Filter::default()
            }
        )
        .await,
        3
    );
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                until: Some(since),
                tenant_id: Some("bakery".into()),
                ..Filter::default()
            }
        )
        .await,
        19
    );
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                who: Some("bob".into()),
                ..Filter::default()
            }
        )
        .await,
        5
    );
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                related_to: Some(target),
                ..Filter::default()
            }
        )
        .await,
        1
    );
    assert_eq!(
        count(
            s,
            &p,
            Filter {
                trace_id: Some("t0".into()),
                ..Filter::default()
            }
        )
        .await,
        9
    );

    let mut seen = Vec::new();
    let mut filter = Filter {
        tenant_id: Some("bakery".into()),
        limit: Some(10),
        ..Filter::default()
    };
    loop {
        let page = s.query(&p, &filter).await.unwrap();
        seen.extend(page.rows.iter().map(|r| r.ingest_id));
        // A span arriving mid-pagination does not disturb the pages already handed out.
        if seen.len() == 10 {
            add(s, &p, vec![line(json!({"this": "late"}))]).await;
        }
        match page.next_cursor {
            Some(c) => filter.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let desc = s
        .query(
            &p,
            &Filter {
                order: Order::Desc,
                limit: Some(1),
                ..Filter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view(&desc.rows[0].span)["this"], "late");
}

async fn the_manifest_is_a_signed_public_span_naming_the_node_key(f: Fixture) {
    let s = f.store.as_ref();
    let m = store::manifest(s).await.unwrap().unwrap();
    assert_eq!(m["entity_type"], "manifest");
    assert_eq!(m["visibility"], "public");
    assert_eq!(
        m["content"]["trusted_keys"],
        json!([s.node_key().public_key()])
    );
    let (_, created) = store::ensure_manifest(s).await.unwrap();
    assert!(!created, "ensure_manifest is idempotent");
    // Any tenant can read it.
    assert!(
        s.get(&Principal::new("x", "y"), store::MANIFEST_ID, None)
            .await
            .unwrap()
            .is_some()
    );
}

testkit::both_stores!(
    mod on_sqlite, on_postgres; open = testkit::Fixture::new;
    appended_spans_read_back_signed_and_hashed,
    ghosts_are_kept_and_say_what_is_missing,
    versions_grow_by_seq_and_the_latest_wins,
    each_tenant_has_one_gapless_chain_that_verifies,
    an_idempotency_key_never_takes_effect_twice,
    visibility_decides_who_reads_what,
    redaction_withholds_content_and_the_chain_still_verifies,
    filters_and_cursors_page_through_matching_spans,
    the_manifest_is_a_signed_public_span_naming_the_node_key,
);
