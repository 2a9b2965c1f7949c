//! The JavaScript sandbox `run_code` uses: outputs, limits, isolation, host calls, and the
//! ledger host against a real SQLite store.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "fakes and fixtures outside #[test] functions panic on failure by design"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use kernels::sandbox::{Host, LedgerHost, Limits, RunError, RunOutput, Sandbox, filter_from_spec};
use ledger::store::{self, Store};
use ledger::{Filter, Principal};
use serde_json::{Value, json};
use testkit::sqlite;

/// A scripted host that records what the function asked for.
#[derive(Default)]
struct FakeHost {
    queries: Mutex<Vec<Value>>,
    appends: Mutex<Vec<Value>>,
}

impl Host for FakeHost {
    fn query(&self, filter: Value) -> Result<Vec<Value>, String> {
        self.queries.lock().unwrap().push(filter.clone());
        if filter.get("entity_type") == Some(&json!("forbidden")) {
            return Err("not allowed to read forbidden spans".into());
        }
        Ok(vec![
            json!({"id": "a", "did": "baked"}),
            json!({"id": "b", "did": "sold"}),
        ])
    }

    fn append(&self, span: Value) -> Result<Value, String> {
        let mut appends = self.appends.lock().unwrap();
        if span.get("tenant_id").is_some() {
            return Err("caller of tenant `bakery` may not write into tenant `other`".into());
        }
        appends.push(span);
        Ok(json!({"id": format!("span-{}", appends.len()), "seq": 0}))
    }

    fn now(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 23, 59, 30).unwrap()
    }
}

async fn run(source: &str, input: Value) -> Result<RunOutput, RunError> {
    Sandbox::run(
        source,
        input,
        Arc::new(FakeHost::default()),
        Limits::default(),
    )
    .await
}

async fn run_with(source: &str, limits: Limits) -> Result<RunOutput, RunError> {
    Sandbox::run(source, json!({}), Arc::new(FakeHost::default()), limits).await
}

#[tokio::test]
async fn main_returns_its_output_and_logs() {
    let out = run(
        r#"function main(input, ctx) {
            ctx.log("adding", input.a, "and", input.b, {note: [1, 2]});
            return {sum: input.a + input.b, words: ["ok"], nothing: null};
        }"#,
        json!({"a": 2, "b": 40}),
    )
    .await
    .unwrap();
    assert_eq!(
        out.output,
        json!({"sum": 42, "words": ["ok"], "nothing": null})
    );
    assert_eq!(out.logs, vec![r#"adding 2 and 40 {"note":[1,2]}"#]);
    assert!(!out.logs_truncated);
    assert!(out.duration < Duration::from_secs(5));
}

#[tokio::test]
async fn undefined_output_becomes_null() {
    let out = run("function main() {}", json!(null)).await.unwrap();
    assert_eq!(out.output, Value::Null);
}

#[tokio::test]
async fn an_async_main_is_awaited_through_its_promise_chain() {
    let out = run(
        r#"async function main(input, ctx) {
            const step = (n) => new Promise((resolve) => resolve(n + 1));
            let n = input.start;
            for (let i = 0; i < 5; i++) n = await step(n);
            const spans = await Promise.resolve(ctx.query({entity_type: "bake"}));
            ctx.log("done");
            return {n, spans: spans.length};
        }"#,
        json!({"start": 10}),
    )
    .await
    .unwrap();
    assert_eq!(out.output, json!({"n": 15, "spans": 2}));
    assert_eq!(out.logs, vec!["done"]);
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_time_limit() {
    let limits = Limits {
        time: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = Instant::now();
    let err = run_with("function main() { while (true) {} }", limits)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    println!("endless loop with a 200 ms limit stopped after {elapsed:?}");
    assert_eq!(err.to_string(), "time limit of 200 ms exceeded");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
}

#[tokio::test]
async fn the_default_time_limit_is_one_second() {
    let started = Instant::now();
    let err = run("function main() { for (;;) {} }", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "time limit of 1000 ms exceeded");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_endless_loop_inside_an_awaited_promise_chain_is_stopped() {
    let limits = Limits {
        time: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = Instant::now();
    let err = run_with(
        r#"async function main() {
            await null;
            await Promise.resolve(1).then(() => { while (true) {} });
            return "unreachable";
        }"#,
        limits,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::TimeLimit { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn the_time_limit_cannot_be_caught_by_the_function() {
    let limits = Limits {
        time: Duration::from_millis(100),
        ..Limits::default()
    };
    let err = run_with(
        r#"function main() {
            for (;;) { try { while (true) {} } catch (e) { /* keep going */ } }
        }"#,
        limits.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::TimeLimit { .. }), "{err}");

    // Nor by scheduling more work once main has "returned".
    let err = run_with(
        r#"function main() {
            const spin = () => { Promise.resolve().then(spin); };
            spin();
            return "returned";
        }"#,
        limits,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::TimeLimit { .. }), "{err}");
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_memory_limit() {
    // A generous time limit keeps memory the binding constraint on a loaded CI machine.
    let err = run_with(
        r#"function main() {
            const hoard = [];
            while (true) hoard.push(new Array(10000).fill("x".repeat(10) + hoard.length));
        }"#,
        Limits {
            time: Duration::from_secs(30),
            ..Limits::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "memory limit of 16 MiB exceeded");

    let limits = Limits {
        memory_bytes: 8 * 1024 * 1024,
        time: Duration::from_secs(30),
        ..Limits::default()
    };
    for bomb in [
        r#"async function main() { await null; const m = new Map(); for (let i = 0; ; i++) m.set(i, {i}); }"#,
        r#"function main() { return new ArrayBuffer(64 * 1024 * 1024).byteLength; }"#,
        r#"function main() { let s = "x"; while (true) s = (s + s).split("").join(""); }"#,
    ] {
        let err = run_with(bomb, limits.clone()).await.unwrap_err();
        assert_eq!(err.to_string(), "memory limit of 8 MiB exceeded", "{bomb}");
    }
}

#[tokio::test]
async fn a_function_that_recovers_from_running_out_of_memory_may_still_return() {
    let out = run(
        r#"function main() {
            try { const hoard = []; while (true) hoard.push(new Array(10000).fill(1)); }
            catch (e) { return "recovered from " + e.message; }
        }"#,
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(out.output, "recovered from out of memory");
}

#[tokio::test]
async fn a_thrown_null_is_read_as_running_out_of_memory() {
    // QuickJS throws `null` when it cannot allocate the out-of-memory error itself, so an
    // uncaught `null` cannot be told apart from a heap that ran out.
    let err = run("function main() { throw null; }", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::MemoryLimit { .. }), "{err}");
}

#[tokio::test]
async fn deep_recursion_hits_the_stack_limit() {
    let err = run(
        "function main() { const f = (n) => f(n + 1) + 1; return f(0); }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::StackLimit { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "stack limit of 512 KiB exceeded (recursion too deep)"
    );
}

#[tokio::test]
async fn forbidden_globals_are_undefined_and_import_fails() {
    let out = run(
        r#"async function main() {
            const kinds = {};
            for (const name of ["require", "fetch", "process", "module", "exports", "Deno",
                                "Bun", "std", "os", "XMLHttpRequest", "WebSocket", "console",
                                "setTimeout", "print"]) {
                kinds[name] = eval("typeof " + name);
            }
            let imported;
            try { await import("fs"); imported = "loaded"; } catch (e) { imported = String(e); }
            let staticImport;
            try { (0, eval)('import fs from "fs"'); staticImport = "loaded"; }
            catch (e) { staticImport = e.name; }
            return {kinds, imported, staticImport, ctxKeys: Object.keys(arguments[1]).sort()};
        }"#,
        json!({}),
    )
    .await
    .unwrap();
    for (name, kind) in out.output["kinds"].as_object().unwrap() {
        assert_eq!(kind, "undefined", "`{name}` is reachable from the sandbox");
    }
    let imported = out.output["imported"].as_str().unwrap();
    assert!(imported.contains("fs"), "import('fs') gave {imported}");
    assert_ne!(imported, "loaded");
    assert_eq!(out.output["staticImport"], "SyntaxError");
    assert_eq!(
        out.output["ctxKeys"],
        json!(["append", "log", "now", "query"])
    );
}

#[tokio::test]
async fn a_thrown_error_is_reported_with_message_and_stack() {
    let err = run(
        "function check(x) { if (!x.ok) throw new Error('delivery 312 is missing'); }\n\
         function main(input) { check(input); }",
        json!({"ok": false}),
    )
    .await
    .unwrap_err();
    match &err {
        RunError::Thrown { message, stack } => {
            assert_eq!(message, "delivery 312 is missing");
            assert!(
                stack.as_deref().unwrap_or("").contains("check"),
                "{stack:?}"
            );
        }
        other => panic!("expected Thrown, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "uncaught exception: delivery 312 is missing"
    );

    let err = run("async function main() { throw 'plain text'; }", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "uncaught exception: plain text");

    let err = run(
        "function main(input) { return input.missing.field; }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "uncaught exception: TypeError: cannot read property 'field' of undefined"
    );
}

#[tokio::test]
async fn a_missing_main_or_bad_syntax_is_reported_as_such() {
    let err = run("const main = 3;", json!({})).await.unwrap_err();
    assert_eq!(err, RunError::NoMain);
    let err = run("function main() {\n  return 1 +;\n}", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "source does not compile: unexpected token in expression: ';' at function.js:2:13"
    );
    let err = run(
        "function main() { return new Promise(() => {}); }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(err, RunError::NeverSettled);
}

#[tokio::test]
async fn output_must_be_json_and_within_the_limit() {
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::default()
    };
    let err = run_with("function main() { return 'x'.repeat(2000); }", limits)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::OutputTooLarge {
                size: 2002,
                limit_bytes: 1000
            }
        ),
        "{err}"
    );
    let err = run("function main() { return {big: 10n}; }", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::NotSerializable(_)), "{err}");
    let err = run(
        "function main() { const a = {}; a.self = a; return a; }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::NotSerializable(_)), "{err}");
}

#[tokio::test]
async fn log_lines_are_bounded() {
    let limits = Limits {
        log_lines: 3,
        ..Limits::default()
    };
    let out = run_with(
        "function main(_, ctx) { for (let i = 0; i < 10; i++) ctx.log('line', i); return 1; }",
        limits,
    )
    .await
    .unwrap();
    assert_eq!(out.logs, vec!["line 0", "line 1", "line 2"]);
    assert!(out.logs_truncated);
}

#[tokio::test]
async fn ctx_query_and_append_go_through_the_host() {
    let host = Arc::new(FakeHost::default());
    let out = Sandbox::run(
        r#"function main(input, ctx) {
            const spans = ctx.query({entity_type: "bake", limit: 5});
            const receipt = ctx.append({did: "counted", this: spans.length + " spans"});
            let refused;
            try { ctx.append({tenant_id: "other"}); } catch (e) { refused = e.message; }
            let denied;
            try { ctx.query({entity_type: "forbidden"}); } catch (e) {
                denied = (e instanceof Error) + ": " + e.message;
            }
            return {ids: spans.map((s) => s.id), receipt, refused, denied, now: ctx.now()};
        }"#,
        json!({}),
        host.clone(),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        out.output,
        json!({
            "ids": ["a", "b"],
            "receipt": {"id": "span-1", "seq": 0},
            "refused": "ctx.append: caller of tenant `bakery` may not write into tenant `other`",
            "denied": "true: ctx.query: not allowed to read forbidden spans",
            "now": "2026-11-20T23:59:30.000000Z",
        })
    );
    assert_eq!(
        *host.queries.lock().unwrap(),
        vec![
            json!({"entity_type": "bake", "limit": 5}),
            json!({"entity_type": "forbidden"})
        ]
    );
    assert_eq!(
        *host.appends.lock().unwrap(),
        vec![json!({"did": "counted", "this": "2 spans"})]
    );
}

#[tokio::test]
async fn an_uncaught_host_error_fails_the_run() {
    let err = run(
        "function main(_, ctx) { ctx.query({entity_type: 'forbidden'}); }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "uncaught exception: ctx.query: not allowed to read forbidden spans"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_do_not_share_state() {
    let runs = (0..8).map(|i| {
        tokio::spawn(async move {
            run(
                "var seen = globalThis.seen || 0; function main(input) { globalThis.seen = seen + 1; return [input, globalThis.seen]; }",
                json!(i),
            )
            .await
        })
    });
    for (i, handle) in runs.enumerate() {
        let out = handle.await.unwrap().unwrap();
        assert_eq!(out.output, json!([i, 1]));
    }
}

#[test]
fn query_specs_map_to_filters_and_refuse_what_they_do_not_know() {
    let f = filter_from_spec(&json!({
        "entity_type": "contract", "who": "ana", "status": "active",
        "since": "2026-11-01T00:00:00Z", "limit": 1000, "order": "desc"
    }))
    .unwrap();
    assert_eq!(f.entity_type.as_deref(), Some("contract"));
    assert_eq!(f.who.as_deref(), Some("ana"));
    assert_eq!(f.limit, Some(1000));
    assert_eq!(f.order, ledger::Order::Desc);
    assert_eq!(
        f.since,
        Some(Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(filter_from_spec(&Value::Null).unwrap(), Filter::default());
    let e = filter_from_spec(&json!({"limit": 1001})).unwrap_err();
    assert_eq!(e, "query field `limit` must be an integer from 1 to 1000");
    let e = filter_from_spec(&json!({"tenant_id": "other"})).unwrap_err();
    assert!(e.starts_with("unknown query field `tenant_id`"), "{e}");
    let e = filter_from_spec(&json!({"until": "yesterday"})).unwrap_err();
    assert_eq!(e, "query field `until` must be an RFC 3339 timestamp");
}

// ---- LedgerHost against a real SQLite store -------------------------------------------------

fn span(who: &str, did: &str, visibility: &str) -> Value {
    json!({"entity_type": "delivery", "who": who, "did": did, "this": "delivery 312",
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask again", "if_not": "open incident", "status": "valid",
        "visibility": visibility})
}

async fn seed(store: &dyn Store, p: &Principal, v: Value) {
    let draft = ledger::Draft::from_value(v, p, &[], Utc::now()).unwrap();
    let r = store::append(store, p, vec![draft]).await.unwrap();
    r.into_iter().next().unwrap().unwrap();
}

const LEDGER_FUNCTION: &str = r#"
function main(input, ctx) {
    const before = ctx.query({entity_type: "delivery"}).map((s) => s.did).sort();
    const receipt = ctx.append({
        entity_type: "delivery", who: "ana", did: "counted deliveries", this: "delivery report",
        when: ctx.now(), confirmed_by: "run_code", if_ok: "file it", if_doubt: "recount",
        if_not: "flag", status: "valid", content: {seen: before.length}
    });
    let foreign;
    try {
        ctx.append({tenant_id: "studio", who: "ana", did: "wrote elsewhere", this: "x"});
        foreign = "written";
    } catch (e) { foreign = e.message; }
    return {before, receipt, foreign};
}
"#;

async fn ledger_host_appends_as_the_owner_and_is_refused_a_foreign_tenant() {
    let ledger = sqlite().await;
    let ana = Principal::new("ana", "bakery");
    let bruno = Principal::new("bruno", "bakery");
    let carla = Principal::new("carla", "studio");
    seed(
        ledger.store.as_ref(),
        &ana,
        span("ana", "baked bread", "private"),
    )
    .await;
    seed(
        ledger.store.as_ref(),
        &bruno,
        span("bruno", "shared oven", "tenant"),
    )
    .await;
    seed(
        ledger.store.as_ref(),
        &bruno,
        span("bruno", "hid a note", "private"),
    )
    .await;
    seed(
        ledger.store.as_ref(),
        &carla,
        span("carla", "filmed", "tenant"),
    )
    .await;

    let fixed = Utc.with_ymd_and_hms(2026, 11, 21, 8, 0, 0).unwrap();
    let host = LedgerHost::new(
        ledger.store.clone(),
        ana.clone(),
        tokio::runtime::Handle::current(),
    )
    .with_clock(Arc::new(move || fixed));
    let out = Sandbox::run(
        LEDGER_FUNCTION,
        json!({}),
        Arc::new(host),
        Limits::default(),
    )
    .await
    .unwrap();

    // Ana sees her own private span and the tenant-wide one, not Bruno's private span or the
    // other tenant's.
    assert_eq!(out.output["before"], json!(["baked bread", "shared oven"]));
    assert_eq!(
        out.output["foreign"],
        "ctx.append: caller of tenant `bakery` may not write into tenant `studio`"
    );
    let id: uuid::Uuid = out.output["receipt"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(out.output["receipt"]["seq"], 0);

    let stored = ledger
        .store
        .get(&ana, id, None)
        .await
        .unwrap()
        .expect("the appended span is visible to its owner");
    let view = stored.to_view().unwrap();
    assert_eq!(view["tenant_id"], "bakery");
    assert_eq!(view["owner_id"], "ana");
    assert_eq!(view["at"], "2026-11-21T08:00:00.000000Z");
    assert_eq!(view["content"], json!({"seen": 2}));
    // Private by default: Bruno, in the same tenant, cannot read it.
    assert!(ledger.store.get(&bruno, id, None).await.unwrap().is_none());
    // Nothing reached the other tenant.
    let studio = ledger
        .store
        .query(&carla, &Filter::default())
        .await
        .unwrap();
    assert!(
        studio
            .rows
            .iter()
            .all(|r| r.span.to_view().unwrap()["did"] != "wrote elsewhere")
    );
}

#[tokio::test]
async fn ledger_host_appends_as_the_owner_on_a_current_thread_runtime() {
    ledger_host_appends_as_the_owner_and_is_refused_a_foreign_tenant().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_host_appends_as_the_owner_on_a_multi_thread_runtime() {
    ledger_host_appends_as_the_owner_and_is_refused_a_foreign_tenant().await;
}
