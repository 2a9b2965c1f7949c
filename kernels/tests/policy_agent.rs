//! The policy agent against both stores: JavaScript and law policies, the `run` and `emit_span`
//! actions, failures as `policy_error` spans, visibility, and the durable cursor across restarts,
//! crashed claims and racing processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use kernels::policy_agent::{self, PolicyAgent, PolicyAgentConfig, PolicyError};
use kernels::sandbox::Clock;
use kernels::stage0;
use ledger::store::{self, Store};
use ledger::{Appended, Draft, Filter, Principal};
use serde_json::{Value, json};
use testkit::{Backend, Fixture, postgres};
use uuid::Uuid;

testkit::both_stores!(
    threads = 4;
    a_javascript_policy_emits_one_span_per_matching_span_and_never_twice,
    a_run_action_runs_the_function_once_with_the_span_as_input,
    failures_become_policy_errors_and_the_cursor_moves_on,
    a_policy_that_does_not_compile_waits_for_a_new_seq_and_then_skips_nothing,
    a_law_policy_maps_its_then_actions_and_records_its_decision,
    a_policy_sees_only_what_its_owner_may_see_in_its_tenant,
    a_restarted_agent_continues_where_the_last_one_stopped,
    a_crashed_claim_is_retaken_after_its_lease_and_re_done_without_duplicates,
    the_kernel_span_configures_the_agent_and_a_refused_kernel_stops_it,
);

async fn ledger(backend: Backend) -> Fixture {
    let f = Fixture::new(backend).await;
    stage0::seed(f.store.as_ref()).await.unwrap();
    f
}

const TENANT: &str = "bakery";

fn user(who: &str) -> Principal {
    Principal::new(who, TENANT)
}

/// A clock tests can move.
fn movable(start: DateTime<Utc>) -> (Clock, Arc<Mutex<DateTime<Utc>>>) {
    let now = Arc::new(Mutex::new(start));
    let read = now.clone();
    (Arc::new(move || *read.lock().unwrap()), now)
}

async fn append(s: &dyn Store, p: &Principal, mut span: Value) -> Appended {
    for (k, v) in [
        ("who", json!(p.user_id)),
        ("did", json!("recorded")),
        ("this", json!("something")),
        ("when", json!("2026-11-20T10:00:00Z")),
        ("confirmed_by", json!(p.user_id)),
        ("if_ok", json!("go on")),
        ("if_doubt", json!("ask")),
        ("if_not", json!("stop")),
        ("status", json!("valid")),
        ("visibility", json!("tenant")),
    ] {
        span.as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert(v);
    }
    let draft = Draft::from_value(span, p, &[], Utc::now()).unwrap();
    store::append(s, p, vec![draft])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

async fn policy(s: &dyn Store, p: &Principal, content: Value) -> Uuid {
    append(
        s,
        p,
        json!({"entity_type": "policy", "name": "p", "status": "active", "content": content}),
    )
    .await
    .id
}

/// A new seq of a policy with other content.
async fn revise(s: &dyn Store, p: &Principal, id: Uuid, seq: i64, content: Value) {
    append(
        s,
        p,
        json!({"id": id, "seq": seq, "entity_type": "policy", "name": "p", "status": "active", "content": content}),
    )
    .await;
}

async fn order(s: &dyn Store, p: &Principal, total: u64) -> Uuid {
    append(
        s,
        p,
        json!({"entity_type": "order", "content": {"total": total}}),
    )
    .await
    .id
}

async fn views(s: &dyn Store, p: &Principal, entity_type: &str) -> Vec<Value> {
    let filter = Filter {
        entity_type: Some(entity_type.into()),
        limit: Some(1000),
        ..Filter::default()
    };
    s.query(p, &filter)
        .await
        .unwrap()
        .rows
        .iter()
        .map(|r| r.span.to_view().unwrap())
        .collect()
}

fn config() -> PolicyAgentConfig {
    PolicyAgentConfig::from_value(&policy_agent::default_config()).unwrap()
}

const FLAG_BIG: &str = r#"
function on(span) {
  if (span.entity_type !== "order" || span.content.total < 100) return [];
  return [{emit_span: {entity_type: "alert", who: "policy", did: "flagged", this: "order " + span.id,
                       confirmed_by: "policy", if_ok: "call", if_doubt: "wait", if_not: "ignore",
                       status: "open", content: {order: span.id, total: span.content.total}}}];
}"#;

async fn a_javascript_policy_emits_one_span_per_matching_span_and_never_twice(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    order(s, &ana, 500).await; // before the policy: not its business
    let pid = policy(
        s,
        &ana,
        json!({"language": "javascript", "source": FLAG_BIG}),
    )
    .await;
    let big = order(s, &ana, 150).await;
    order(s, &ana, 20).await;
    let agent = PolicyAgent::new(l.store.clone());
    let r = agent.pass().await.unwrap();
    assert_eq!((r.policies, r.evaluated, r.actions, r.errors), (1, 2, 1, 0));
    let alerts = views(s, &ana, "alert").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["content"]["order"], json!(big));
    assert_eq!(alerts[0]["owner_id"], json!("ana"));
    assert_eq!(alerts[0]["related_to"], json!([pid, big]));

    // Nothing new: a second pass evaluates nothing (its own cursor and alert are passed over).
    let r = agent.pass().await.unwrap();
    assert_eq!((r.evaluated, r.actions), (0, 0), "{r:?}");
    order(s, &ana, 900).await;
    let r = agent.pass().await.unwrap();
    assert_eq!((r.evaluated, r.actions), (1, 1), "{r:?}");
    assert_eq!(views(s, &ana, "alert").await.len(), 2);
    let cursors = views(s, &ana, "policy_cursor").await;
    assert!(
        cursors
            .iter()
            .all(|c| c["content"]["policy_id"] == json!(pid))
    );
}

async fn a_run_action_runs_the_function_once_with_the_span_as_input(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let f = append(
        s,
        &ana,
        json!({"entity_type": "function", "name": "double", "status": "active",
               "content": {"language": "javascript",
                           "source": "function main(input) { return {doubled: input.content.total * 2}; }"}}),
    )
    .await
    .id;
    // It would also run on executions, but not on those it caused itself (or it would loop).
    let source = format!(
        r#"function on(span) {{ return ["order", "execution"].includes(span.entity_type) ? [{{run: "{f}"}}] : []; }}"#
    );
    policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    order(s, &ana, 21).await;
    let agent = PolicyAgent::new(l.store.clone());
    let r = agent.pass().await.unwrap();
    assert_eq!((r.actions, r.errors), (1, 0), "{r:?}");
    // The execution the policy caused is passed over, not fed back to it (it still sees the
    // run's quota_counter versions, which ask for nothing).
    let r = agent.pass().await.unwrap();
    assert_eq!(r.actions, 0, "{r:?}");
    let executions = views(s, &ana, "execution").await;
    assert_eq!(executions.len(), 1, "{executions:#?}");
    assert_eq!(executions[0]["content"]["output"], json!({"doubled": 42}));
    assert_eq!(executions[0]["input"]["content"]["total"], json!(21));
    let markers = views(s, &ana, "policy_run").await;
    let done: Vec<&Value> = markers.iter().filter(|m| m["seq"] == json!(1)).collect();
    assert_eq!(done.len(), 1, "{markers:#?}");
    assert_eq!(done[0]["status"], json!("done"));
    assert_eq!(done[0]["content"]["execution"], executions[0]["id"]);
}

async fn failures_become_policy_errors_and_the_cursor_moves_on(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let source = r#"
function on(span) {
  if (span.entity_type !== "order") return [];
  const t = span.content.total;
  if (t === 1) throw new Error("no ones");
  if (t === 2) { while (true) {} }
  if (t === 3) return [{launch: "rockets"}];
  if (t === 4) return "yes";
  if (t === 5) return [{emit_span: {entity_type: "alert", tenant_id: "film"}}];
  return [{emit_span: {entity_type: "ok", content: {total: t}}}];
}"#;
    policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    for t in [1, 2, 3, 4, 5, 6] {
        order(s, &ana, t).await;
    }
    let mut c = config();
    c.limits.time = std::time::Duration::from_millis(300);
    let agent = PolicyAgent::new(l.store.clone());
    let r = agent.pass_with(&c).await.unwrap();
    assert_eq!((r.evaluated, r.errors, r.actions), (6, 5, 1), "{r:?}");
    let errors = views(s, &ana, "policy_error").await;
    let mut kinds: Vec<String> = errors
        .iter()
        .map(|e| e["content"]["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "bad_action",
            "bad_action",
            "bad_result",
            "thrown",
            "time_limit"
        ]
    );
    let thrown = errors
        .iter()
        .find(|e| e["content"]["kind"] == json!("thrown"))
        .unwrap();
    assert!(
        thrown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no ones"),
        "{thrown}"
    );
    assert_eq!(thrown["content"]["cursor"], json!("moved on"));
    // The foreign-tenant span of order 5 was refused before anything was written.
    assert!(views(s, &ana, "alert").await.is_empty());
    assert_eq!(views(s, &ana, "ok").await.len(), 1);
    // The cursor moved past them all: nothing is retried, nothing recorded twice.
    let r = agent.pass_with(&c).await.unwrap();
    assert_eq!((r.evaluated, r.errors), (0, 0), "{r:?}");
    assert_eq!(views(s, &ana, "policy_error").await.len(), 5);
}

async fn a_policy_that_does_not_compile_waits_for_a_new_seq_and_then_skips_nothing(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let pid = policy(
        s,
        &ana,
        json!({"language": "javascript", "source": "function on(span) { return [ }"}),
    )
    .await;
    order(s, &ana, 1).await;
    order(s, &ana, 2).await;
    let agent = PolicyAgent::new(l.store.clone());
    for _ in 0..3 {
        let r = agent.pass().await.unwrap();
        assert_eq!(r.actions, 0);
    }
    let errors = views(s, &ana, "policy_error").await;
    assert_eq!(errors.len(), 1, "one error per policy seq: {errors:#?}");
    assert_eq!(errors[0]["content"]["kind"], json!("compile"));
    assert_eq!(errors[0]["content"]["span"], Value::Null);

    // A seq without `on` is another policy-level error.
    revise(
        s,
        &ana,
        pid,
        1,
        json!({"language": "javascript", "source": "function main() {}"}),
    )
    .await;
    agent.pass().await.unwrap();
    let errors = views(s, &ana, "policy_error").await;
    assert!(
        errors
            .iter()
            .any(|e| e["content"]["kind"] == json!("no_on")),
        "{errors:#?}"
    );

    // Fixed: both orders (and nothing else) are processed.
    revise(
        s,
        &ana,
        pid,
        2,
        json!({"language": "javascript",
               "source": "function on(s) { return s.entity_type === 'order' ? [{emit_span: {entity_type: 'seen', content: {total: s.content.total}}}] : []; }"}),
    )
    .await;
    agent.pass().await.unwrap();
    let mut seen: Vec<u64> = views(s, &ana, "seen")
        .await
        .iter()
        .map(|v| v["content"]["total"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2]);
}

const BIG_ORDER_LAW: &str = "law big_order:1.0.0:
scope: order
clock: realtime

if ok: content.total < 1000
then: accept

if not: content.total >= 1000
then: notify(role=ops), tag(key=size, val=big), append_ledger
";

async fn a_law_policy_maps_its_then_actions_and_records_its_decision(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let pid = policy(
        s,
        &ana,
        json!({"language": "law", "source": BIG_ORDER_LAW, "actions": {
            "notify(role=ops)": [{"emit_span": {"entity_type": "page", "content": {"role": "ops"}}}],
            "tag": [{"emit_span": {"entity_type": "tagged"}}],
            "notify(role=nobody)": [{"emit_span": {"entity_type": "never"}}],
        }}),
    )
    .await;
    let small = order(s, &ana, 10).await;
    let big = order(s, &ana, 5000).await;
    append(
        s,
        &ana,
        json!({"entity_type": "note", "content": {"total": 9999}}),
    )
    .await;
    let r = PolicyAgent::new(l.store.clone()).pass().await.unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(views(s, &ana, "page").await.len(), 1);
    assert_eq!(views(s, &ana, "tagged").await.len(), 1);
    assert!(views(s, &ana, "never").await.is_empty());
    let decisions = views(s, &ana, "policy_decision").await;
    assert_eq!(
        decisions.len(),
        1,
        "only the big order asked for append_ledger"
    );
    let d = &decisions[0];
    assert_eq!(d["status"], json!("not"));
    assert_eq!(d["content"]["span"]["id"], json!(big));
    assert_eq!(d["content"]["policy"]["id"], json!(pid));
    assert_eq!(d["content"]["law"]["id"], json!("big_order"));
    assert_eq!(d["content"]["variables"]["content.total"], json!(5000));
    assert_eq!(
        d["content"]["actions"],
        json!(["notify(role=ops)", "tag(key=size,val=big)", "append_ledger"])
    );
    assert_ne!(d["content"]["span"]["id"], json!(small));
}

async fn a_policy_sees_only_what_its_owner_may_see_in_its_tenant(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let source = "function on(s) { return s.entity_type === 'order' ? [{emit_span: {entity_type: 'seen', content: {order: s.id}}}] : []; }";
    policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    let mine = order(s, &ana, 1).await;
    let shared = order(s, &user("joao"), 2).await;
    // joao's private order, and a public order of another tenant: not ana's to see / not hers.
    append(
        s,
        &user("joao"),
        json!({"entity_type": "order", "visibility": "private", "content": {"total": 3}}),
    )
    .await;
    append(
        s,
        &Principal::new("rui", "film"),
        json!({"entity_type": "order", "visibility": "public", "content": {"total": 4}}),
    )
    .await;
    let r = PolicyAgent::new(l.store.clone()).pass().await.unwrap();
    assert_eq!(r.errors, 0, "{r:?}");
    let mut seen: Vec<String> = views(s, &ana, "seen")
        .await
        .iter()
        .map(|v| v["content"]["order"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut want = vec![mine.to_string(), shared.to_string()];
    want.sort();
    assert_eq!(seen, want);
    // A private policy is not run: the agent finds policies as a tenant member.
    append(
        s,
        &ana,
        json!({"entity_type": "policy", "visibility": "private", "status": "active",
               "content": {"language": "javascript", "source": "function on() { throw new Error('ran'); }"}}),
    )
    .await;
    let r = PolicyAgent::new(l.store.clone()).pass().await.unwrap();
    assert_eq!((r.policies, r.errors), (1, 0), "{r:?}");
}

async fn a_restarted_agent_continues_where_the_last_one_stopped(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let source = "function on(s) { return s.entity_type === 'order' ? [{emit_span: {entity_type: 'seen', content: {total: s.content.total}}}] : []; }";
    policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    let mut c = config();
    c.batch = 3;
    for t in 0..5 {
        order(s, &ana, t).await;
    }
    // The first process takes one batch of three and stops.
    PolicyAgent::new(l.store.clone())
        .pass_with(&c)
        .await
        .unwrap();
    assert_eq!(views(s, &ana, "seen").await.len(), 3);
    for t in 5..8 {
        order(s, &ana, t).await;
    }
    // A new process (a restart) goes on from the cursor until nothing is left.
    let agent = PolicyAgent::new(l.store.clone());
    loop {
        let r = agent.pass_with(&c).await.unwrap();
        if r.evaluated + r.skipped == 0 {
            break;
        }
    }
    let mut seen: Vec<u64> = views(s, &ana, "seen")
        .await
        .iter()
        .map(|v| v["content"]["total"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
}

async fn a_crashed_claim_is_retaken_after_its_lease_and_re_done_without_duplicates(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    let source = "function on(s) { return s.entity_type === 'order' ? [{emit_span: {entity_type: 'seen', content: {total: s.content.total}}}] : []; }";
    let pid = policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    for t in 0..4 {
        order(s, &ana, t).await;
    }
    let start = Utc::now();
    let (clock, now) = movable(start);
    PolicyAgent::new(l.store.clone())
        .with_clock(clock.clone())
        .pass()
        .await
        .unwrap();
    assert_eq!(views(s, &ana, "seen").await.len(), 4);

    // Make it look as if a process claimed the batch again, did its work and died before
    // committing: the cursor goes back to the start with a live claim by a dead process.
    let cursor = views(s, &ana, "policy_cursor")
        .await
        .into_iter()
        .max_by_key(|c| c["seq"].as_i64().unwrap())
        .unwrap();
    let first = views(s, &ana, "policy_cursor")
        .await
        .into_iter()
        .find(|c| c["seq"] == json!(0))
        .unwrap();
    let until = ledger::span::format_time(start + TimeDelta::seconds(60));
    append(
        s,
        &ana,
        json!({"id": cursor["id"], "seq": cursor["seq"].as_i64().unwrap() + 1, "entity_type": "policy_cursor",
               "status": "claimed", "content": {"policy_id": pid, "after": first["content"]["after"],
               "claim": {"through": 1_000_000, "by": "a dead process", "until": until}}}),
    )
    .await;
    let agent = PolicyAgent::new(l.store.clone()).with_clock(clock);
    let r = agent.pass().await.unwrap();
    assert_eq!((r.busy, r.evaluated), (1, 0), "the claim is live: {r:?}");
    *now.lock().unwrap() = start + TimeDelta::seconds(61);
    let r = agent.pass().await.unwrap();
    assert_eq!((r.busy, r.evaluated, r.actions), (0, 4, 0), "{r:?}");
    assert_eq!(
        views(s, &ana, "seen").await.len(),
        4,
        "re-done, not repeated"
    );
}

async fn the_kernel_span_configures_the_agent_and_a_refused_kernel_stops_it(b: Backend) {
    let l = ledger(b).await;
    let s = l.store.as_ref();
    let ana = user("ana");
    policy(
        s,
        &ana,
        json!({"language": "javascript", "source": "function on(s) { if (s.entity_type === 'order') { while (true) {} } return []; }"}),
    )
    .await;
    order(s, &ana, 1).await;
    stage0::set_kernel(
        s,
        "policy_agent",
        "ops",
        &[("config.time_ms".into(), json!(200))],
    )
    .await
    .unwrap();
    let agent = PolicyAgent::new(l.store.clone());
    let started = std::time::Instant::now();
    let r = agent.pass().await.unwrap();
    assert_eq!(r.errors, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let errors = views(s, &ana, "policy_error").await;
    assert_eq!(errors[0]["content"]["kind"], json!("time_limit"));
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("200 ms")
    );

    // Off the allow-list: the agent does not run.
    let listed: Vec<Uuid> = ledger::store::NATIVE_KERNELS
        .iter()
        .filter(|(n, _)| *n != "policy_agent")
        .map(|(_, id)| *id)
        .collect();
    kernels::manifest::set(s, "ops", &[("allowed_boot_ids".into(), json!(listed))])
        .await
        .unwrap();
    let e = agent.pass().await.unwrap_err();
    assert!(matches!(e, PolicyError::KernelRefused(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_racing_on_postgres_run_each_function_once_per_span() {
    let l = postgres().await;
    stage0::seed(l.store.as_ref()).await.unwrap();
    let s = l.store.as_ref();
    let ana = user("ana");
    let f = append(
        s,
        &ana,
        json!({"entity_type": "function", "name": "echo", "status": "active",
               "content": {"language": "javascript", "source": "function main(i) { return i.content.total; }"}}),
    )
    .await
    .id;
    let source = format!(
        r#"function on(s) {{ return s.entity_type === "order" ? [{{run: "{f}"}}, {{emit_span: {{entity_type: "seen", content: {{total: s.content.total}}}}}}] : []; }}"#
    );
    policy(s, &ana, json!({"language": "javascript", "source": source})).await;
    for t in 0..30 {
        order(s, &ana, t).await;
    }
    let mut c = config();
    c.batch = 4;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        // Three agents (three claimants) on one pool: the database arbitrates between them as
        // it would between processes (tests/ has the multi-process version).
        let store = l.store.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let agent = PolicyAgent::new(store);
            let mut idle = 0;
            while idle < 3 {
                let r = agent.pass_with(&c).await.unwrap();
                if r.evaluated == 0 && r.busy == 0 {
                    idle += 1;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut outputs: Vec<u64> = views(s, &ana, "execution")
        .await
        .iter()
        .map(|e| e["content"]["output"].as_u64().unwrap())
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, (0..30).collect::<Vec<_>>());
    assert_eq!(views(s, &ana, "seen").await.len(), 30);
    assert!(views(s, &ana, "policy_error").await.is_empty());
}
