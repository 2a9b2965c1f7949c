//! End-to-end tests of `logline serve`: every test starts the real binary on 127.0.0.1 (port 0,
//! read back from its `logline listening on …` line) and talks to it over real HTTP, against
//! the embedded SQLite store (a temporary data dir) and against PostgreSQL (a fresh database
//! from `testkit::pg` plus a temporary data dir for the node key). The server process is
//! killed when its `Server` guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use testkit::{Backend, Ledger};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_logline");
/// The HS256 secret of servers started with auth.
const SECRET: &str = "http-tests-shared-secret-7f3a";
/// The manifest's well-known id.
const MANIFEST_ID: &str = "00000000-0000-7000-8000-6d616e696673";
const PROBLEM_JSON: &str = "application/problem+json";
/// How long a server may take to print its listening line.
const STARTUP: Duration = Duration::from_secs(30);
/// How long to wait for an expected stream event.
const EVENT_WAIT: Duration = Duration::from_secs(3);
/// How long a stream must stay silent to count as "nothing more came".
const QUIET: Duration = Duration::from_millis(800);

/// How to start a server.
#[derive(Clone, Debug)]
struct Opts {
    /// Set LOGLINE_JWT_SECRET (bearer tokens required).
    auth: bool,
    bind: String,
    body_limit: Option<usize>,
    rate_limit: Option<u32>,
    /// Extra environment (e.g. the chat provider's configuration).
    env: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            auth: false,
            bind: "127.0.0.1:0".into(),
            body_limit: None,
            rate_limit: None,
            env: Vec::new(),
        }
    }
}

impl Opts {
    fn auth() -> Self {
        Self {
            auth: true,
            ..Self::default()
        }
    }
}

/// What these tests do with a ledger: serve it, issue tokens for it.
trait Http {
    /// The binary on this ledger's store with `args`, stdout and stderr piped.
    fn command(&self, args: &[&str]) -> Command;
    /// Starts `logline serve` and waits for its listening line.
    async fn serve(&self, opts: Opts) -> Result<Server>;
    /// `logline token issue` with the test secret; the token is the last line of stdout.
    fn token(&self, user: &str, tenant: &str, ttl: &str) -> String;
    fn token_signed_with(&self, secret: &str, user: &str, tenant: &str, ttl: &str) -> String;
    fn token_with(&self, secret: &str, user: &str, tenant: &str, role: &str, ttl: &str) -> String;
}

impl Http for Ledger {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.logline(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn serve(&self, opts: Opts) -> Result<Server> {
        let mut args = vec!["serve".to_string(), "--bind".into(), opts.bind.clone()];
        if let Some(n) = opts.body_limit {
            args.extend(["--body-limit".into(), n.to_string()]);
        }
        if let Some(n) = opts.rate_limit {
            args.extend(["--rate-limit".into(), n.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.command(&args);
        if opts.auth {
            cmd.env("LOGLINE_JWT_SECRET", SECRET);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let spawned = Spawned::start(cmd)?;
        // A server that never says it listens is killed when `spawned` drops.
        let (addr, spawned) = tokio::task::spawn_blocking(move || {
            spawned.wait_listening(STARTUP).map(|a| (a, spawned))
        })
        .await??;
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in the listening address `{addr}`"))?;
        Ok(Server {
            proc: spawned,
            addr,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    fn token(&self, user: &str, tenant: &str, ttl: &str) -> String {
        self.token_signed_with(SECRET, user, tenant, ttl)
    }

    fn token_signed_with(&self, secret: &str, user: &str, tenant: &str, ttl: &str) -> String {
        self.token_with(secret, user, tenant, "member", ttl)
    }

    fn token_with(&self, secret: &str, user: &str, tenant: &str, role: &str, ttl: &str) -> String {
        let out = self
            .command(&[
                "token", "issue", "--user", user, "--tenant", tenant, "--role", role, "--ttl", ttl,
            ])
            .env("LOGLINE_JWT_SECRET", secret)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "token issue failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout.lines().last().unwrap_or("").trim().to_string();
        assert_eq!(
            token.split('.').count(),
            3,
            "the last stdout line of `token issue` is not a JWT: {stdout:?}"
        );
        token
    }
}

/// A running binary whose stdout lines arrive on a channel and whose stderr is collected.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Spawned {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.spawn().context("cannot start logline")?;
        let stdout = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Nobody may listen any more; keep draining so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The address of the `logline listening on http://ADDR` line.
    fn wait_listening(&self, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("logline listening on http://") {
                        return Ok(addr.to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "no listening line within {within:?}; stderr:\n{}",
                        self.stderr()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to collect the last message.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "logline serve exited before listening; stderr:\n{}",
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Waits for the process to exit on its own.
    async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running `logline serve`; killed on drop.
struct Server {
    proc: Spawned,
    /// The address as printed.
    addr: String,
    base: String,
    client: reqwest::Client,
}

/// A response read to the end.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts the status and returns the JSON body.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }

    /// Asserts an RFC 9457 problem document with this status; returns it.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert!(
            self.content_type().starts_with(PROBLEM_JSON),
            "a {status} is not application/problem+json but `{}`: {}",
            self.content_type(),
            self.text
        );
        let p = self.json();
        for field in ["type", "title", "detail"] {
            assert!(
                p[field].as_str().is_some_and(|s| !s.is_empty()),
                "problem without a `{field}`: {p}"
            );
        }
        assert_eq!(p["status"], json!(status), "problem status field: {p}");
        p
    }

    /// The NDJSON body's lines.
    fn ndjson(&self) -> Vec<Value> {
        self.text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

async fn read(rb: RequestBuilder) -> Result<Resp> {
    let resp = rb
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .context("request failed")?;
    Ok(Resp {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await?,
    })
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn get(&self, token: Option<&str>, path: &str) -> Result<Resp> {
        read(self.request(Method::GET, path, token)).await
    }

    /// `POST /api/spans` with one JSON span.
    async fn post(&self, token: Option<&str>, span: &Value) -> Result<Resp> {
        read(
            self.request(Method::POST, "/api/spans", token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(span.to_string()),
        )
        .await
    }

    async fn post_with_key(&self, token: Option<&str>, span: &Value, key: &str) -> Result<Resp> {
        read(
            self.request(Method::POST, "/api/spans", token)
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key)
                .body(span.to_string()),
        )
        .await
    }

    async fn post_raw(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: String,
    ) -> Result<Resp> {
        read(
            self.request(Method::POST, "/api/spans", token)
                .header(header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await
    }

    /// Posts a span that must be created; returns its id.
    async fn create(&self, token: Option<&str>, span: &Value) -> Result<String> {
        let r = self.post(token, span).await?;
        ensure!(r.status == StatusCode::CREATED, "not created: {r:?}");
        Ok(r.json()["id"].as_str().context("no id")?.to_string())
    }

    /// `POST /api/spans` as NDJSON: every line must be accepted; returns the ids in order.
    async fn create_many(&self, token: Option<&str>, spans: &[Value]) -> Result<Vec<String>> {
        let r = self
            .post_raw(token, "application/x-ndjson", lines_of(spans))
            .await?;
        ensure!(r.status == StatusCode::OK, "NDJSON refused: {r:?}");
        let results = r.ndjson();
        ensure!(
            results.len() == spans.len(),
            "one result per line: {results:?}"
        );
        results
            .iter()
            .map(|res| {
                ensure!(res["ok"] == json!(true), "line refused: {res}");
                Ok(res["id"].as_str().context("no id")?.to_string())
            })
            .collect()
    }

    /// `GET /api/timeline?…`, which must succeed: (span ids, next_cursor).
    async fn timeline(
        &self,
        token: Option<&str>,
        query: &str,
    ) -> Result<(Vec<String>, Option<String>)> {
        let r = self.get(token, &format!("/api/timeline?{query}")).await?;
        ensure!(r.status == StatusCode::OK, "timeline?{query} failed: {r:?}");
        let page = r.json();
        let ids = page["spans"]
            .as_array()
            .with_context(|| format!("no spans array: {page}"))?
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let next = match &page["next_cursor"] {
            Value::Null => None,
            Value::String(c) => Some(c.clone()),
            other => bail!("next_cursor is neither null nor a string: {other}"),
        };
        Ok((ids, next))
    }

    /// Opens `GET /api/timeline/stream?{query}`, which must answer 200 with an event stream.
    async fn stream(
        &self,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Events> {
        let mut rb = self.request(Method::GET, &format!("/api/timeline/stream?{query}"), token);
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = rb.send().await.context("stream request failed")?;
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != StatusCode::OK {
            bail!(
                "stream answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        ensure!(
            ct.starts_with("text/event-stream"),
            "stream content type `{ct}`"
        );
        Ok(Events {
            body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buf: Vec::new(),
            ended: false,
        })
    }

    async fn metrics(&self) -> Result<String> {
        let r = self.get(None, "/metrics").await?;
        ensure!(r.status == StatusCode::OK, "/metrics: {r:?}");
        ensure!(
            r.content_type().starts_with("text/plain"),
            "/metrics content type {}",
            r.content_type()
        );
        Ok(r.text)
    }

    /// Waits out the stream hub's first pass over the store (one 250 ms tick), so that streams
    /// opened next carry only new spans on PostgreSQL too. Tests of other stream behaviour
    /// call this; `a_fresh_stream_sends_only_spans_appended_after_it_opened` deliberately
    /// does not, and fails while the hub replays its start-up window to early subscribers.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

impl Event {
    /// The id of the span an `event: span` carries.
    fn span_id(&self) -> String {
        assert_eq!(self.event, "span", "not a span event: {self:?}");
        let v: Value = serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("span event data is not JSON ({e}): {}", self.data));
        v["id"].as_str().unwrap().to_string()
    }

    /// The SSE `id:` as a number (the ingest id).
    fn event_id(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("event without a numeric id: {self:?}"))
    }
}

/// A minimal SSE reader over a response body.
struct Events {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: Vec<u8>,
    ended: bool,
}

impl Events {
    /// The next event (comments such as heartbeats are skipped), or None when nothing arrives
    /// within `within` or the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(ev) = self.parse_one() {
                if let Some(ev) = ev {
                    return Some(ev);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None | Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(chunk))) => {
                    self.buf.extend(chunk.iter().filter(|b| **b != b'\r'));
                }
            }
        }
    }

    /// Takes one complete block off the buffer: Some(Some(event)), Some(None) for a block
    /// without data (a comment), None when no complete block is buffered.
    fn parse_one(&mut self) -> Option<Option<Event>> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let mut ev = Event {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut has_data = false;
        for line in text.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = value.to_string(),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        Some(has_data.then_some(ev))
    }

    /// Exactly `n` events, each within EVENT_WAIT of the previous one.
    async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(EVENT_WAIT).await {
                Some(ev) => out.push(ev),
                None => panic!(
                    "expected {n} events, got {} before silence or the end: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts that nothing more arrives for a while.
    async fn assert_quiet(&mut self, what: &str) {
        if let Some(ev) = self.next(QUIET).await {
            panic!("{what}: an unexpected event arrived: {ev:?}");
        }
    }
}

fn lines_of(spans: &[Value]) -> String {
    spans.iter().map(|s| format!("{s}\n")).collect()
}

/// A complete span (all nine fields), with `extra` merged over it.
fn span(extra: Value) -> Value {
    let mut v = json!({
        "who": "ana", "did": "confirmed delivery", "this": "delivery 312",
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask", "if_not": "open incident", "status": "valid"
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

fn span_ids(events: &[Event]) -> Vec<String> {
    events.iter().map(Event::span_id).collect()
}

/// The value of one Prometheus sample line (`name{labels} value`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

testkit::both_stores!(
    threads = 2;
    ingest_answers_201_for_a_span_per_line_results_for_ndjson_and_refuses_bad_input_precisely,
    the_same_idempotency_key_returns_the_original_span_with_200_and_duplicate_true,
    every_error_is_a_problem_document_with_type_title_status_and_detail,
    with_a_jwt_secret_requests_need_a_valid_unexpired_token_and_may_write_only_their_tenant,
    a_401_names_the_bearer_scheme_in_www_authenticate,
    other_tenants_never_see_private_or_tenant_spans_on_any_read_path_or_the_stream,
    timeline_pages_by_cursor_without_gaps_or_duplicates_in_both_orders_and_filters,
    a_stream_resumed_with_last_event_id_sends_exactly_the_missed_spans_then_live_ones,
    a_fresh_stream_sends_only_spans_appended_after_it_opened,
    sigterm_sends_streams_a_shutdown_event_finishes_in_flight_requests_and_exits_0,
    a_tenant_over_its_rate_limit_gets_429_with_retry_after_and_other_tenants_do_not,
    an_unauthenticated_server_refuses_a_non_loopback_address_and_an_authenticated_one_binds_it,
    readyz_metrics_manifest_and_verify_report_the_served_ledger,
    a_closed_stream_stops_counting_as_a_stream_client,
    checkpoints_and_proofs_are_served_per_tenant_and_check_offline,
    strict_input_refuses_duplicate_keys_inexact_numbers_long_indexed_fields_and_reserved_types_per_line,
    an_ndjson_batch_killed_mid_request_and_retried_with_its_key_is_stored_exactly_once,
);

// 1. ingest -------------------------------------------------------------------------------

async fn ingest_answers_201_for_a_span_per_line_results_for_ndjson_and_refuses_bad_input_precisely(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;

    // One JSON span: 201, Location, id; GET at the Location returns it with its hash.
    let r = s.post(None, &span(json!({"did": "baked bread"}))).await?;
    let created = r.expect(201);
    let id = created["id"].as_str().context("no id")?.to_string();
    ensure!(Uuid::parse_str(&id).is_ok(), "id is not a UUID: {created}");
    let loc = r
        .header("location")
        .context("201 without Location")?
        .to_string();
    ensure!(
        loc == format!("/api/spans/{id}"),
        "Location `{loc}` for {id}"
    );
    ensure!(created["seq"] == json!(0), "{created}");
    ensure!(created["duplicate"] == json!(false), "{created}");
    ensure!(created["status"] == json!("valid"), "{created}");
    ensure!(created["chain_pos"].as_i64().is_some(), "{created}");
    let hash = created["curr_hash"].as_str().unwrap_or("");
    ensure!(hash.starts_with("blake3:") && hash.len() == 71, "{created}");
    let got = s.get(None, &loc).await?.expect(200);
    ensure!(got["id"] == json!(id), "{got}");
    ensure!(
        got["curr_hash"] == created["curr_hash"],
        "GET {got} vs POST {created}"
    );
    ensure!(got["did"] == json!("baked bread"), "{got}");
    ensure!(
        got["tenant_id"] == json!("local") && got["owner_id"] == json!("local"),
        "{got}"
    );

    // A span missing fields is stored as a ghost, not refused.
    let ghost = s
        .post(None, &json!({"did": "only a verb"}))
        .await?
        .expect(201);
    ensure!(ghost["status"] == json!("ghost"), "{ghost}");

    // NDJSON: one result per non-blank line, numbered as in the body; good lines stored.
    let body = format!(
        "{}\n\n{}\nthis line is not json\n{}\n",
        span(json!({"did": "line one"})),
        json!({"did": 42}),
        span(json!({"did": "line five"})),
    );
    let r = s.post_raw(None, "application/x-ndjson", body).await?;
    ensure!(r.status == StatusCode::OK, "{r:?}");
    ensure!(
        r.content_type().starts_with("application/x-ndjson"),
        "content type {}",
        r.content_type()
    );
    let results = r.ndjson();
    let lines: Vec<i64> = results
        .iter()
        .map(|x| x["line"].as_i64().unwrap_or(-1))
        .collect();
    ensure!(lines == [1, 3, 4, 5], "line numbers {lines:?}: {results:?}");
    let oks: Vec<bool> = results.iter().map(|x| x["ok"] == json!(true)).collect();
    ensure!(oks == [true, false, false, true], "{results:?}");
    ensure!(
        results[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("`did`")),
        "line 3's error does not name the field: {}",
        results[1]
    );
    ensure!(
        results[2]["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("json")),
        "line 4's error does not say it is not JSON: {}",
        results[2]
    );
    for (res, did) in [(&results[0], "line one"), (&results[3], "line five")] {
        let id = res["id"].as_str().context("no id")?;
        let got = s.get(None, &format!("/api/spans/{id}")).await?.expect(200);
        ensure!(
            got["did"] == json!(did) && got["curr_hash"] == res["curr_hash"],
            "{got}"
        );
    }
    let (all, _) = s.timeline(None, "tenant=local&limit=1000").await?;
    ensure!(
        all.len() == 4,
        "bread, ghost and two NDJSON lines, nothing else: {all:?}"
    );

    // A wrong field type: 422 naming the field.
    for (bad, field) in [
        (span(json!({"did": 42})), "did"),
        (span(json!({"seq": "first"})), "seq"),
        (span(json!({"visibility": "secret"})), "visibility"),
        (span(json!({"related_to": "not-a-list"})), "related_to"),
    ] {
        let p = s.post(None, &bad).await?.problem(422);
        ensure!(
            p["detail"].as_str().unwrap().contains(field),
            "the 422 for a bad `{field}` does not name it: {p}"
        );
    }
    // Not JSON, or JSON that is not an object: 422.
    let p = s
        .post_raw(None, "application/json", "{\"did\": ".into())
        .await?
        .problem(422);
    ensure!(
        p["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("json"),
        "{p}"
    );
    let p = s
        .post_raw(None, "application/json", "[1, 2]".into())
        .await?
        .problem(422);
    ensure!(p["detail"].as_str().unwrap().contains("object"), "{p}");
    // An unsupported content type: 415.
    let p = s
        .post_raw(None, "text/plain", span(json!({})).to_string())
        .await?
        .problem(415);
    ensure!(p["detail"].as_str().unwrap().contains("text/plain"), "{p}");
    // None of the refused bodies was stored.
    let (after, _) = s.timeline(None, "tenant=local&limit=1000").await?;
    ensure!(after == all, "refused input was stored: {after:?}");
    Ok(())
}

async fn strict_input_refuses_duplicate_keys_inexact_numbers_long_indexed_fields_and_reserved_types_per_line(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;
    let good = span(json!({"did": "kept"}));
    // Incompressible, as PostgreSQL compresses index entries: 3,200 bytes.
    let long: String = (0..100)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    // (body, words the 422 must contain)
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            r#"{"who":"ana","did":"x","who":"x"}"#.into(),
            vec!["duplicate key `who`".into(), "`/who`".into()],
        ),
        (
            r#"{"did":"x","content":{"items":[{"a":1,"a":2}]}}"#.into(),
            vec!["duplicate key `a`".into(), "`/content/items/0/a`".into()],
        ),
        (
            r#"{"did":"x","content":{"n":18446744073709551617}}"#.into(),
            vec!["18446744073709551617".into(), "`/content/n`".into()],
        ),
        (
            r#"{"did":"x","n":1e-400}"#.into(),
            vec!["1e-400".into(), "`/n`".into()],
        ),
        (
            r#"{"did":"x","n":3.141592653589793238}"#.into(),
            vec!["`/n`".into()],
        ),
        (
            r#"{"did":"x","n":1e400}"#.into(),
            vec!["`/n`".into(), "out of range".into()],
        ),
        (
            json!({"feedback": 1, "entity_type": "feedback"}).to_string(),
            vec!["`feedback`".into(), "POST /api/chat/feedback".into()],
        ),
    ]
    .into_iter()
    .chain(
        ["who", "entity_type", "trace_id", "idempotency_key"].map(|f| {
            let mut v = json!({"did": "x"});
            v[f] = json!(long);
            (
                v.to_string(),
                vec![format!("`{f}`"), "3200 bytes".into(), "1024".into()],
            )
        }),
    )
    .collect();
    for (body, words) in &cases {
        let p = s
            .post_raw(None, "application/json", body.clone())
            .await?
            .problem(422);
        let detail = p["detail"].as_str().unwrap_or("");
        for w in words {
            ensure!(
                detail.contains(w.as_str()),
                "422 for {body:.80} lacks `{w}`: {p}"
            );
        }
    }
    // An Idempotency-Key over the limit is refused the same way (not a 500 on PostgreSQL).
    let p = s
        .request(Method::POST, "/api/spans", None)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", &long[..2000])
        .body(good.to_string());
    let p = read(p).await?.problem(422);
    ensure!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("idempotency_key"),
        "{p}"
    );
    // Numbers that read back exactly pass and read back as the same values.
    let id = s
        .create(
            None,
            &serde_json::from_str(r#"{"did":"numbers","content":{"a":1.0,"b":0.1,"c":1e3,"d":-0,"e":9007199254740992}}"#)?,
        )
        .await?;
    let got = s.get(None, &format!("/api/spans/{id}")).await?.expect(200);
    ensure!(
        got["content"]
            == json!({"a": 1, "b": 0.1, "c": 1000, "d": 0, "e": 9_007_199_254_740_992_u64}),
        "{got}"
    );

    // NDJSON: every bad line gets its own error; the good lines around them are stored.
    let mut body = format!("{good}\n");
    for (bad, _) in &cases {
        body.push_str(bad);
        body.push('\n');
    }
    body.push_str(&format!("{}\n", span(json!({"did": "kept too"}))));
    let r = s
        .post_raw(None, "application/x-ndjson", body.clone())
        .await?;
    ensure!(r.status == StatusCode::OK, "{r:?}");
    let results = r.ndjson();
    ensure!(results.len() == cases.len() + 2, "{results:?}");
    ensure!(
        results[0]["ok"] == json!(true) && results[cases.len() + 1]["ok"] == json!(true),
        "{results:?}"
    );
    for (res, (_, words)) in results[1..=cases.len()].iter().zip(&cases) {
        let e = res["error"].as_str().unwrap_or("");
        ensure!(
            res["ok"] == json!(false) && e.contains(words[0].as_str()),
            "{res}"
        );
    }

    // `logline add --file`: the same per-line results, a failing exit status, good lines stored.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("in.ndjson");
    std::fs::write(&file, &body)?;
    let out = l
        .command(&["add", "--format", "ndjson", "--file"])
        .arg(&file)
        .output()?;
    ensure!(!out.status.success(), "add with bad lines exited 0");
    let lines = testkit::ndjson(&String::from_utf8_lossy(&out.stdout));
    ensure!(lines.len() == cases.len() + 2, "{lines:?}");
    let oks: Vec<bool> = lines.iter().map(|x| x["ok"] == json!(true)).collect();
    let expected: Vec<bool> = std::iter::once(true)
        .chain(cases.iter().map(|_| false))
        .chain(std::iter::once(true))
        .collect();
    ensure!(oks == expected, "{lines:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{} of {} lines failed",
            cases.len(),
            cases.len() + 2
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The text format names the line and the problem.
    let out = l.command(&["add", "--file"]).arg(&file).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("line 2: error: duplicate key `who`"),
        "{text}"
    );

    // Stored: the numbers span, then the two good lines of NDJSON and of each `add`; nothing
    // else.
    let (all, _) = s.timeline(None, "tenant=local&limit=1000").await?;
    ensure!(all.len() == 7, "only the good lines are stored: {all:?}");
    Ok(())
}

/// SIGKILLs the server while it ingests an NDJSON batch sent with an `Idempotency-Key`, starts
/// it again on the same store and retries the batch with the same key: every line must end up
/// stored exactly once, whatever the kill interrupted (before, during or after the commit).
async fn an_ndjson_batch_killed_mid_request_and_retried_with_its_key_is_stored_exactly_once(
    backend: Backend,
) -> Result<()> {
    const LINES: usize = 3000;
    let l = Ledger::new(backend).await;
    let mut dropped = 0;
    // Kill at different moments: while the body is being sent, while it is parsed and
    // committed, and after the commit when the answer may not have reached the client.
    for (trial, delay_ms) in [5u64, 150, 600, 1500].into_iter().enumerate() {
        let kind = format!("kill_trial_{trial}");
        let body: String = (0..LINES)
            .map(|i| {
                format!(
                    "{}\n",
                    span(json!({"entity_type": kind, "did": format!("line {i}")}))
                )
            })
            .collect();
        let key = format!("batch-{trial}");
        let mut s = l.serve(Opts::default()).await?;
        let request = s
            .request(Method::POST, "/api/spans", None)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header("Idempotency-Key", &key)
            .body(body.clone())
            .timeout(Duration::from_secs(60))
            .send();
        let sent = tokio::spawn(request);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        s.proc.child.kill()?; // SIGKILL
        s.proc.child.wait()?;
        // The first attempt's answer (if any) is not trusted: a retry decides.
        let answered = matches!(sent.await, Ok(Ok(ref r)) if r.status() == StatusCode::OK);
        drop(s);

        let s = l.serve(Opts::default()).await?;
        let before = count_of(&s, &kind).await?;
        eprintln!(
            "trial {trial}: killed after {delay_ms} ms; first attempt answered: {answered}; \
             stored before the retry: {before} of {LINES}"
        );
        dropped += usize::from(!answered);
        let r = s
            .request(Method::POST, "/api/spans", None)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header("Idempotency-Key", &key);
        let r = read(r.body(body.clone())).await?;
        ensure!(r.status == StatusCode::OK, "retry: {r:?}");
        let results = r.ndjson();
        ensure!(
            results.len() == LINES,
            "trial {trial}: {} results",
            results.len()
        );
        let ids: BTreeSet<&str> = results
            .iter()
            .map(|x| x["id"].as_str().unwrap_or(""))
            .collect();
        ensure!(
            results.iter().all(|x| x["ok"] == json!(true)) && ids.len() == LINES,
            "trial {trial}: not every line stored once: {:?}",
            results.iter().find(|x| x["ok"] != json!(true))
        );
        let stored = count_of(&s, &kind).await?;
        ensure!(
            stored == LINES,
            "trial {trial} (kill after {delay_ms} ms): {stored} stored, {LINES} sent"
        );
        // A second retry stores nothing more.
        let again = read(
            s.request(Method::POST, "/api/spans", None)
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .header("Idempotency-Key", &key)
                .body(body.clone()),
        )
        .await?;
        ensure!(
            again.ndjson().iter().all(|x| x["duplicate"] == json!(true)),
            "trial {trial}: a second retry appended"
        );
    }
    ensure!(
        dropped > 0,
        "no kill interrupted a request: the test proved nothing"
    );
    Ok(())
}

/// How many distinct spans of `entity_type` the timeline holds (every page).
async fn count_of(s: &Server, entity_type: &str) -> Result<usize> {
    let mut stored = BTreeSet::new();
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("entity_type={entity_type}&limit=1000");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (page, next) = s.timeline(None, &q).await?;
        total += page.len();
        stored.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ensure!(total == stored.len(), "the timeline repeated a span");
    Ok(total)
}

async fn the_same_idempotency_key_returns_the_original_span_with_200_and_duplicate_true(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;

    let first = s
        .post_with_key(None, &span(json!({"did": "charged card"})), "order-77")
        .await?;
    let a = first.expect(201);
    ensure!(a["duplicate"] == json!(false), "{a}");
    let second = s
        .post_with_key(None, &span(json!({"did": "charged card"})), "order-77")
        .await?;
    let b = second.expect(200);
    ensure!(
        b["id"] == a["id"] && b["curr_hash"] == a["curr_hash"],
        "{a} vs {b}"
    );
    ensure!(b["duplicate"] == json!(true), "{b}");
    ensure!(
        second.header("location") == first.header("location"),
        "the retry's Location differs"
    );
    // Even a different body under the same key has no second effect.
    let third = s
        .post_with_key(None, &span(json!({"did": "charged twice"})), "order-77")
        .await?;
    let c = third.expect(200);
    ensure!(c["id"] == a["id"] && c["duplicate"] == json!(true), "{c}");
    let id = a["id"].as_str().unwrap();
    let versions = s
        .get(None, &format!("/api/spans/{id}/versions"))
        .await?
        .expect(200);
    ensure!(
        versions["versions"].as_array().map(Vec::len) == Some(1),
        "{versions}"
    );
    let (all, _) = s.timeline(None, "tenant=local").await?;
    ensure!(all == [id.to_string()], "one span for three posts: {all:?}");

    // NDJSON under a key: the retry of the whole body reports the same ids, all duplicates.
    let body = lines_of(&[span(json!({"did": "n1"})), span(json!({"did": "n2"}))]);
    let send = || {
        read(
            s.request(Method::POST, "/api/spans", None)
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .header("Idempotency-Key", "batch-9")
                .body(body.clone()),
        )
    };
    let r1 = send().await?.ndjson();
    let r2 = send().await?.ndjson();
    ensure!(r1.len() == 2 && r2.len() == 2, "{r1:?} {r2:?}");
    for (x, y) in r1.iter().zip(&r2) {
        ensure!(
            x["ok"] == json!(true) && x["duplicate"] == json!(false),
            "{x}"
        );
        ensure!(
            y["id"] == x["id"] && y["duplicate"] == json!(true),
            "{x} vs {y}"
        );
    }
    let (all, _) = s.timeline(None, "tenant=local").await?;
    ensure!(all.len() == 3, "{all:?}");
    Ok(())
}

// 2. errors -------------------------------------------------------------------------------

async fn every_error_is_a_problem_document_with_type_title_status_and_detail(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l
        .serve(Opts {
            body_limit: Some(4096),
            ..Opts::default()
        })
        .await?;
    let id = s.create(None, &span(json!({}))).await?;

    // Unknown routes.
    for path in ["/api/nope", "/nothing/here", "/api/spans/x/y/z"] {
        let p = s.get(None, path).await?.problem(404);
        ensure!(
            p["type"].as_str().unwrap().contains("not-found"),
            "{path}: {p}"
        );
    }
    // Wrong methods.
    for (method, path) in [
        (Method::DELETE, "/api/spans".to_string()),
        (Method::PUT, "/api/timeline".into()),
        (Method::POST, format!("/api/spans/{id}")),
        (Method::POST, "/healthz".into()),
    ] {
        let r = read(s.request(method.clone(), &path, None)).await?;
        r.problem(405);
        ensure!(
            r.header("allow").is_some(),
            "{method} {path}: a 405 without Allow"
        );
    }
    // Bad ids and parameters.
    let missing = Uuid::now_v7();
    for (path, status) in [
        ("/api/spans/not-a-uuid".to_string(), 400),
        ("/api/spans/not-a-uuid/versions".into(), 400),
        (format!("/api/spans/{id}?seq=-1"), 400),
        (format!("/api/spans/{id}?seq=one"), 400),
        (format!("/api/spans/{missing}"), 404),
        (format!("/api/spans/{missing}/versions"), 404),
        (format!("/api/spans/{id}?seq=5"), 404),
        ("/api/timeline?limit=0".into(), 400),
        ("/api/timeline?limit=1001".into(), 400),
        ("/api/timeline?limit=ten".into(), 400),
        ("/api/timeline?cursor=garbage".into(), 400),
        ("/api/timeline?cursor=djE6YTpub3BlCg".into(), 400),
        ("/api/timeline?order=sideways".into(), 400),
        ("/api/timeline?since=last-tuesday".into(), 400),
        ("/api/timeline?related_to=nope".into(), 400),
        ("/manifest/no-such-manifest".into(), 404),
    ] {
        let r = s.get(None, &path).await?;
        ensure!(r.status.as_u16() == status, "GET {path}: {r:?}");
        r.problem(status);
    }
    let p = s.get(None, "/api/timeline?limit=0").await?.problem(400);
    ensure!(p["detail"].as_str().unwrap().contains("limit"), "{p}");
    // A cursor is bound to its order.
    let _ = s.create(None, &span(json!({}))).await?;
    let (_, cursor) = s.timeline(None, "limit=1").await?;
    let cursor = cursor.context("two spans and a manifest but no next_cursor at limit=1")?;
    s.get(
        None,
        &format!("/api/timeline?limit=1&order=desc&cursor={cursor}"),
    )
    .await?
    .problem(400);
    // A bad Last-Event-ID.
    let r = read(
        s.request(Method::GET, "/api/timeline/stream", None)
            .header("Last-Event-ID", "yesterday"),
    )
    .await?;
    r.problem(400);

    // Bodies over --body-limit: 413, whatever the content type; just under it is fine.
    let big = span(json!({"content": {"text": "x".repeat(8 * 1024)}}));
    s.post(None, &big).await?.problem(413);
    s.post_raw(None, "application/x-ndjson", lines_of(&[big.clone(), big]))
        .await?
        .problem(413);
    let fits = span(json!({"content": {"text": "y".repeat(3 * 1024)}}));
    ensure!(fits.to_string().len() < 4096);
    s.post(None, &fits).await?.expect(201);
    Ok(())
}

// 3. auth ---------------------------------------------------------------------------------

async fn with_a_jwt_secret_requests_need_a_valid_unexpired_token_and_may_write_only_their_tenant(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;

    // `token issue` needs the secret, and says so.
    let out = l
        .command(&["token", "issue", "--user", "ana", "--tenant", "alpha"])
        .output()?;
    ensure!(
        !out.status.success(),
        "token issue without a secret succeeded"
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("LOGLINE_JWT_SECRET"),
        "the refusal does not name LOGLINE_JWT_SECRET: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = l.serve(Opts::auth()).await?;
    let ana = l.token("ana", "alpha", "1h");
    let some_id = Uuid::now_v7();

    // Without a token: 401 on every /api route; health, readiness and metrics stay open.
    for path in [
        "/api/timeline".to_string(),
        format!("/api/spans/{some_id}"),
        format!("/api/spans/{some_id}/versions"),
        "/api/timeline/stream".into(),
        "/api/verify".into(),
    ] {
        s.get(None, &path).await?.problem(401);
    }
    s.post(None, &span(json!({}))).await?.problem(401);
    for open in ["/healthz", "/readyz", "/metrics", "/manifest/current"] {
        let r = s.get(None, open).await?;
        ensure!(r.status == StatusCode::OK, "{open} without a token: {r:?}");
    }

    // Garbage, wrongly signed and expired tokens: 401.
    let forged = l.token_signed_with("another-secret", "ana", "alpha", "1h");
    let expired = l.token("ana", "alpha", "0");
    for (what, bad) in [
        ("garbage", "garbage"),
        ("three garbage parts", "a.b.c"),
        ("signed with another secret", forged.as_str()),
        ("expired", expired.as_str()),
    ] {
        let r = s.get(Some(bad), "/api/timeline").await?;
        let p = r.problem(401);
        if what == "expired" {
            ensure!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
        }
        s.post(Some(bad), &span(json!({}))).await?.problem(401);
    }
    let r = read(
        s.request(Method::GET, "/api/timeline", None)
            .header("Authorization", format!("Basic {ana}")),
    )
    .await?;
    r.problem(401);
    // The stream's query token is checked just as strictly.
    s.get(None, "/api/timeline/stream?access_token=garbage")
        .await?
        .problem(401);
    s.get(
        None,
        &format!("/api/timeline/stream?access_token={expired}"),
    )
    .await?
    .problem(401);

    // Writing into another tenant or as another owner: 403; per line in NDJSON.
    let p = s
        .post(Some(&ana), &span(json!({"tenant_id": "beta"})))
        .await?
        .problem(403);
    ensure!(p["detail"].as_str().unwrap().contains("beta"), "{p}");
    s.post(Some(&ana), &span(json!({"owner_id": "bob"})))
        .await?
        .problem(403);
    let r = s
        .post_raw(
            Some(&ana),
            "application/x-ndjson",
            lines_of(&[
                span(json!({"tenant_id": "beta"})),
                span(json!({"did": "mine"})),
            ]),
        )
        .await?;
    let results = r.ndjson();
    ensure!(results.len() == 2, "{results:?}");
    ensure!(
        results[0]["ok"] == json!(false) && results[0]["line"] == json!(1),
        "{results:?}"
    );
    ensure!(results[1]["ok"] == json!(true), "{results:?}");

    // A valid token works, and acts as its subject in its tenant.
    let r = s
        .post(Some(&ana), &span(json!({"did": "signed in"})))
        .await?;
    let created = r.expect(201);
    let id = created["id"].as_str().unwrap();
    let got = s
        .get(Some(&ana), &format!("/api/spans/{id}"))
        .await?
        .expect(200);
    ensure!(
        got["tenant_id"] == json!("alpha") && got["owner_id"] == json!("ana"),
        "{got}"
    );
    let (ids, _) = s.timeline(Some(&ana), "tenant=alpha").await?;
    ensure!(ids.len() == 2 && ids.contains(&id.to_string()), "{ids:?}");
    s.settle().await;
    let mut stream = s.stream(None, &format!("access_token={ana}"), None).await?;
    let id2 = s
        .create(Some(&ana), &span(json!({"did": "seen live"})))
        .await?;
    ensure!(
        span_ids(&stream.take(1).await) == [id2],
        "the query-token stream"
    );
    // Nothing in beta was written.
    let bob = l.token("bob", "beta", "1h");
    let (beta, _) = s.timeline(Some(&bob), "tenant=beta").await?;
    ensure!(beta.is_empty(), "tenant beta has spans: {beta:?}");
    Ok(())
}

async fn a_401_names_the_bearer_scheme_in_www_authenticate(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::auth()).await?;
    for token in [None, Some("garbage")] {
        let r = s.get(token, "/api/timeline").await?;
        r.problem(401);
        // RFC 9110 §11.6.1: a 401 MUST carry WWW-Authenticate; RFC 6750 names `Bearer`.
        let challenge = r.header("www-authenticate").unwrap_or("");
        ensure!(
            challenge.starts_with("Bearer"),
            "a 401 (token {token:?}) without `WWW-Authenticate: Bearer …`: {:?}",
            r.headers
        );
    }
    Ok(())
}

// 4. tenant isolation ---------------------------------------------------------------------

async fn other_tenants_never_see_private_or_tenant_spans_on_any_read_path_or_the_stream(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token("ana", "alpha", "1h"); // tenant A
    let alf = l.token("alf", "alpha", "1h"); // another user of tenant A
    let bob = l.token("bob", "beta", "1h"); // tenant B

    // Everyone subscribes first; bob through the EventSource-style query token.
    s.settle().await;
    let mut ana_live = s.stream(Some(&ana), "", None).await?;
    let mut alf_live = s.stream(Some(&alf), "", None).await?;
    let mut bob_live = s.stream(None, &format!("access_token={bob}"), None).await?;

    let private = s
        .create(
            Some(&ana),
            &span(json!({"did": "private note", "visibility": "private"})),
        )
        .await?;
    let tenant = s
        .create(
            Some(&ana),
            &span(json!({"did": "team note", "visibility": "tenant"})),
        )
        .await?;
    let public = s
        .create(
            Some(&ana),
            &span(json!({"did": "press release", "visibility": "public"})),
        )
        .await?;
    // A second version of the private span: still private.
    s.post(
        Some(&ana),
        &span(json!({"id": private, "seq": 1, "did": "private note v2", "visibility": "private"})),
    )
    .await?
    .expect(201);

    // Streams: ana sees all four appends, alf the tenant and public ones, bob only the public.
    let ana_got = span_ids(&ana_live.take(4).await);
    ensure!(
        ana_got
            == [
                private.clone(),
                tenant.clone(),
                public.clone(),
                private.clone()
            ],
        "ana's stream: {ana_got:?}"
    );
    let alf_got = span_ids(&alf_live.take(2).await);
    ensure!(
        alf_got == [tenant.clone(), public.clone()],
        "alf's stream: {alf_got:?}"
    );
    let bob_got = span_ids(&bob_live.take(1).await);
    ensure!(bob_got == [public.clone()], "bob's stream: {bob_got:?}");
    alf_live
        .assert_quiet("alf's stream after the tenant and public spans")
        .await;
    bob_live
        .assert_quiet("bob's stream after the public span")
        .await;

    // Reads: (who, span, visible?).
    for (who, token, id, visible) in [
        ("ana", &ana, &private, true),
        ("ana", &ana, &tenant, true),
        ("alf", &alf, &private, false),
        ("alf", &alf, &tenant, true),
        ("alf", &alf, &public, true),
        ("bob", &bob, &private, false),
        ("bob", &bob, &tenant, false),
        ("bob", &bob, &public, true),
    ] {
        for path in [
            format!("/api/spans/{id}"),
            format!("/api/spans/{id}?seq=0"),
            format!("/api/spans/{id}/versions"),
        ] {
            let r = s.get(Some(token), &path).await?;
            if visible {
                ensure!(r.status == StatusCode::OK, "{who} GET {path}: {r:?}");
            } else {
                r.problem(404);
                ensure!(
                    !r.text.contains("private note") && !r.text.contains("team note"),
                    "{who} GET {path} leaks: {}",
                    r.text
                );
            }
        }
    }
    let expect_timeline = [
        ("ana", &ana, vec![&private, &tenant, &public]),
        ("alf", &alf, vec![&tenant, &public]),
        ("bob", &bob, vec![&public]),
    ];
    for (who, token, want) in expect_timeline {
        let want: BTreeSet<String> = want.into_iter().cloned().collect();
        for query in [
            "limit=1000",
            "tenant=alpha",
            "tenant=alpha&order=desc",
            "who=ana",
            "did=private%20note%20v2",
        ] {
            let (ids, _) = s.timeline(Some(token), query).await?;
            // Public spans of the system tenant (the manifest, the published prompt blocks)
            // are everyone's to see.
            let mut got = BTreeSet::new();
            for id in set(&ids) {
                if id == MANIFEST_ID || want.contains(&id) {
                    got.insert(id);
                    continue;
                }
                let v = s
                    .get(Some(token), &format!("/api/spans/{id}"))
                    .await?
                    .expect(200);
                if !(v["tenant_id"] == "system" && v["visibility"] == "public") {
                    got.insert(id);
                }
            }
            got.remove(MANIFEST_ID);
            let want_here: BTreeSet<String> = if query.starts_with("did=") {
                want.iter().filter(|i| **i == private).cloned().collect()
            } else {
                want.clone()
            };
            ensure!(
                got == want_here,
                "{who}'s timeline?{query}: {got:?}, want {want_here:?}"
            );
        }
    }
    // Verify reports the caller's own tenant only.
    let v = s.get(Some(&bob), "/api/verify").await?.expect(200);
    ensure!(
        v["tenant_id"] == json!("beta") && v["spans"] == json!(0),
        "bob's verify: {v}"
    );
    let v = s.get(Some(&alf), "/api/verify").await?.expect(200);
    ensure!(
        v["tenant_id"] == json!("alpha") && v["spans"] == json!(4) && v["ok"] == json!(true),
        "alf's verify: {v}"
    );
    Ok(())
}

// 5. pagination ---------------------------------------------------------------------------

async fn timeline_pages_by_cursor_without_gaps_or_duplicates_in_both_orders_and_filters(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;
    let steps: Vec<Value> = (0..25)
        .map(|i| {
            span(json!({"entity_type": "step", "did": format!("step {i}"),
                        "when": format!("2026-01-01T00:{i:02}:00Z")}))
        })
        .collect();
    let mut ids = s.create_many(None, &steps).await?;
    let invoices: Vec<Value> = (0..3)
        .map(|i| span(json!({"entity_type": "invoice", "did": format!("invoice {i}"), "when": "2026-01-01T00:30:00Z"})))
        .collect();
    let invoice_ids = s.create_many(None, &invoices).await?;
    let late = |n: u32| {
        span(
            json!({"entity_type": "step", "did": format!("late {n}"), "when": "2025-06-01T00:00:00Z"}),
        )
    };

    // Ascending, 10 per page, with a span appended after the first page.
    let (p1, c1) = s.timeline(None, "entity_type=step&limit=10").await?;
    let c1 = c1.context("page 1 has no next_cursor")?;
    let mid = s.create(None, &late(1)).await?;
    let (p2, c2) = s
        .timeline(None, &format!("entity_type=step&limit=10&cursor={c1}"))
        .await?;
    let c2 = c2.context("page 2 has no next_cursor")?;
    let (p3, c3) = s
        .timeline(None, &format!("entity_type=step&limit=10&cursor={c2}"))
        .await?;
    ensure!(
        p1.len() == 10 && p2.len() == 10,
        "page sizes {} {}",
        p1.len(),
        p2.len()
    );
    ensure!(c3.is_none(), "the last page has a next_cursor");
    let asc: Vec<String> = [p1, p2, p3].concat();
    ids.push(mid.clone());
    ensure!(asc == ids, "ascending pages:\n{asc:?}\nwant\n{ids:?}");

    // Descending: the newest first; a span appended mid-way is newer than the cursor.
    let (d1, c1) = s
        .timeline(None, "entity_type=step&limit=10&order=desc")
        .await?;
    let _newer = s.create(None, &late(2)).await?;
    let c1 = c1.context("desc page 1 has no next_cursor")?;
    let (d2, c2) = s
        .timeline(
            None,
            &format!("entity_type=step&limit=10&order=desc&cursor={c1}"),
        )
        .await?;
    let c2 = c2.context("desc page 2 has no next_cursor")?;
    let (d3, c3) = s
        .timeline(
            None,
            &format!("entity_type=step&limit=10&order=desc&cursor={c2}"),
        )
        .await?;
    ensure!(c3.is_none(), "the last desc page has a next_cursor");
    let desc: Vec<String> = [d1, d2, d3].concat();
    let want: Vec<String> = ids.iter().rev().cloned().collect();
    ensure!(desc == want, "descending pages:\n{desc:?}\nwant\n{want:?}");

    // Filters.
    let (inv, _) = s.timeline(None, "entity_type=invoice").await?;
    ensure!(inv == invoice_ids, "entity_type=invoice: {inv:?}");
    let (since, _) = s
        .timeline(None, "entity_type=step&since=2026-01-01T00:20:00Z")
        .await?;
    ensure!(since == ids[20..25], "since (inclusive) 00:20: {since:?}");
    let (window, _) = s
        .timeline(
            None,
            "entity_type=step&since=2026-01-01T00:10:00Z&until=2026-01-01T00:15:00Z",
        )
        .await?;
    ensure!(window == ids[10..15], "since 00:10 until 00:15: {window:?}");
    let (day, _) = s
        .timeline(None, "since=2026-01-01&until=2026-01-02&limit=1000")
        .await?;
    ensure!(
        day.len() == 28,
        "the day 2026-01-01 holds 25 steps and 3 invoices: {day:?}"
    );
    let (one, _) = s.timeline(None, "did=step%207").await?;
    ensure!(one == [ids[7].clone()], "did=step 7: {one:?}");
    Ok(())
}

// 6. stream resume ------------------------------------------------------------------------

async fn a_stream_resumed_with_last_event_id_sends_exactly_the_missed_spans_then_live_ones(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;

    s.settle().await;
    let mut live = s.stream(None, "", None).await?;
    let mut first = Vec::new();
    for i in 0..3 {
        first.push(
            s.create(None, &span(json!({"did": format!("before {i}")})))
                .await?,
        );
    }
    let got = live.take(3).await;
    ensure!(span_ids(&got) == first, "live events {got:?}");
    let ev_ids: Vec<i64> = got.iter().map(Event::event_id).collect();
    ensure!(
        ev_ids.windows(2).all(|w| w[0] < w[1]),
        "event ids not increasing: {ev_ids:?}"
    );
    let last = got.last().unwrap().id.clone().unwrap();
    drop(live);

    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            s.create(None, &span(json!({"did": format!("missed {i}")})))
                .await?,
        );
    }
    // Give the hub time to publish the missed spans to nobody.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut resumed = s.stream(None, "", Some(&last)).await?;
    let back = resumed.take(3).await;
    ensure!(
        span_ids(&back) == missed,
        "after resuming at {last}: {back:?}"
    );
    let mut after = Vec::new();
    for i in 0..2 {
        after.push(
            s.create(None, &span(json!({"did": format!("after {i}")})))
                .await?,
        );
    }
    let fresh = resumed.take(2).await;
    ensure!(
        span_ids(&fresh) == after,
        "live events after resuming: {fresh:?}"
    );
    resumed.assert_quiet("the resumed stream").await;
    let all: Vec<i64> = got
        .iter()
        .chain(&back)
        .chain(&fresh)
        .map(Event::event_id)
        .collect();
    ensure!(
        all.windows(2).all(|w| w[0] < w[1]),
        "event ids repeat or go back: {all:?}"
    );

    // The query form (`?last_event_id=`) resumes the same way.
    let mut by_query = s
        .stream(None, &format!("last_event_id={last}"), None)
        .await?;
    let again = by_query.take(5).await;
    let want: Vec<String> = missed.iter().chain(&after).cloned().collect();
    ensure!(
        span_ids(&again) == want,
        "resuming with ?last_event_id: {again:?}"
    );
    by_query.assert_quiet("the query-resumed stream").await;
    Ok(())
}

async fn a_fresh_stream_sends_only_spans_appended_after_it_opened(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    // Spans written during an earlier life of the server.
    {
        let s = l.serve(Opts::default()).await?;
        s.create_many(
            None,
            &[span(json!({"visibility": "public"})), span(json!({}))],
        )
        .await?;
    }
    let s = l.serve(Opts::default()).await?;
    let mut live = s.stream(None, "", None).await?;
    // Let the hub make its first pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let id = s
        .create(None, &span(json!({"did": "after opening"})))
        .await?;
    let got = live.take(1).await;
    ensure!(
        span_ids(&got) == [id.clone()],
        "a stream opened without Last-Event-ID replayed old spans: first event {:?}",
        got[0].data
    );
    live.assert_quiet("the fresh stream").await;
    Ok(())
}

// 7. graceful shutdown --------------------------------------------------------------------

async fn sigterm_sends_streams_a_shutdown_event_finishes_in_flight_requests_and_exits_0(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let mut s = l.serve(Opts::default()).await?;
    s.settle().await;
    let mut live = s.stream(None, "", None).await?;
    let first = s
        .create(None, &span(json!({"did": "before shutdown"})))
        .await?;
    ensure!(span_ids(&live.take(1).await) == [first]);

    // An in-flight request: its body arrives in two halves, SIGTERM falls between them.
    let body = span(json!({"did": "in flight during shutdown"})).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
    });
    let request = s
        .request(Method::POST, "/api/spans", None)
        .header(header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(chunks));
    let in_flight = tokio::spawn(read(request));
    tx.send(head.as_bytes().to_vec()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    s.terminate();
    let ev = live.next(EVENT_WAIT).await;
    let ev = ev.context("no event after SIGTERM")?;
    ensure!(
        ev.event == "shutdown",
        "expected `event: shutdown`, got {ev:?}"
    );
    ensure!(
        serde_json::from_str::<Value>(&ev.data).is_ok(),
        "shutdown data is not JSON: {}",
        ev.data
    );
    ensure!(
        live.next(EVENT_WAIT).await.is_none(),
        "the stream continued after shutdown"
    );

    // The server stops accepting new connections…
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = reqwest::Client::builder().no_proxy().build()?;
    let refused = fresh
        .get(s.url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    ensure!(
        refused.is_err(),
        "a new connection was served during shutdown: {refused:?}"
    );
    // …but the rest of the in-flight body, arriving well after that, is still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        s.proc.child.try_wait()?.is_none(),
        "the server exited with a request in flight"
    );
    tx.send(tail.as_bytes().to_vec()).await?;
    drop(tx);
    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .context("the in-flight request never finished")???;
    let created = r.expect(201);
    let id = created["id"].as_str().unwrap().to_string();

    let status = s
        .proc
        .wait_exit(Duration::from_secs(5))
        .await
        .with_context(|| {
            format!(
                "still running 5 s after SIGTERM; stderr:\n{}",
                s.proc.stderr()
            )
        })?;
    ensure!(
        status.code() == Some(0),
        "exit {status:?} after SIGTERM; stderr:\n{}",
        s.proc.stderr()
    );
    ensure!(signalled.elapsed() < Duration::from_secs(5));
    drop(s);

    // The acknowledged span survived.
    let s = l.serve(Opts::default()).await?;
    let got = s.get(None, &format!("/api/spans/{id}")).await?.expect(200);
    ensure!(got["did"] == json!("in flight during shutdown"), "{got}");
    Ok(())
}

// 8. rate limit ---------------------------------------------------------------------------

async fn a_tenant_over_its_rate_limit_gets_429_with_retry_after_and_other_tenants_do_not(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l
        .serve(Opts {
            rate_limit: Some(5),
            ..Opts::auth()
        })
        .await?;
    let ana = l.token("ana", "alpha", "1h");
    let bob = l.token("bob", "beta", "1h");

    let burst = (0..30).map(|_| s.get(Some(&ana), "/api/timeline?limit=1"));
    let results = futures::future::join_all(burst).await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for r in results {
        let r = r?;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            other => bail!("unexpected {other}: {}", r.text),
        }
    }
    // Burst of twice the rate (10), plus what refills while the burst runs.
    ensure!(
        (10..=20).contains(&ok),
        "{ok} of 30 got through a limit of 5/s (burst 10)"
    );
    ensure!(
        limited.len() >= 10,
        "only {} of 30 were limited",
        limited.len()
    );
    let mut wait = 0;
    for r in &limited {
        let p = r.problem(429);
        ensure!(p["type"].as_str().unwrap().contains("rate-limited"), "{p}");
        let retry: u64 = r
            .header("retry-after")
            .context("a 429 without Retry-After")?
            .parse()
            .context("Retry-After is not a number of seconds")?;
        ensure!((1..=2).contains(&retry), "Retry-After {retry}");
        wait = wait.max(retry);
    }
    // Another tenant, and the health check, are unaffected.
    let (_, _) = s.timeline(Some(&bob), "limit=1").await?;
    ensure!(s.get(None, "/healthz").await?.status == StatusCode::OK);
    // After Retry-After, the tenant may go on.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (_, _) = s.timeline(Some(&ana), "limit=1").await?;
    Ok(())
}

// 9. binding ------------------------------------------------------------------------------

async fn an_unauthenticated_server_refuses_a_non_loopback_address_and_an_authenticated_one_binds_it(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let mut p = Spawned::start(l.command(&["serve", "--bind", bind]))?;
        let status = p.wait_exit(Duration::from_secs(10)).await;
        let status =
            status.with_context(|| format!("serve --bind {bind} without auth kept running"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stderr = p.stderr();
        ensure!(
            !status.success(),
            "serve --bind {bind} without auth exited 0"
        );
        ensure!(
            stderr.contains("refusing") && stderr.contains("LOGLINE_JWT_SECRET"),
            "the refusal to bind {bind} does not say why: {stderr}"
        );
        let printed: Vec<String> = p.lines.try_iter().collect();
        ensure!(
            !printed.iter().any(|x| x.contains("listening")),
            "it printed a listening line: {printed:?}"
        );
    }
    let s = l
        .serve(Opts {
            bind: "0.0.0.0:0".into(),
            ..Opts::auth()
        })
        .await?;
    ensure!(s.addr.starts_with("0.0.0.0:"), "listening on {}", s.addr);
    ensure!(s.get(None, "/healthz").await?.status == StatusCode::OK);
    s.get(None, "/api/timeline").await?.problem(401);
    Ok(())
}

// 10. readiness, metrics, manifest, verify ------------------------------------------------

async fn readyz_metrics_manifest_and_verify_report_the_served_ledger(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;

    let h = s.get(None, "/healthz").await?.expect(200);
    ensure!(h["status"] == json!("ok"), "{h}");
    let r = s.get(None, "/readyz").await?.expect(200);
    ensure!(r["store"] == json!(l.store_name()), "{r}");

    // 2 single spans (201), 3 NDJSON lines (200), 1 idempotent retry (200, not appended).
    let a = s.create(None, &span(json!({"did": "one"}))).await?;
    s.post_with_key(None, &span(json!({"did": "two"})), "k2")
        .await?
        .expect(201);
    s.post_with_key(None, &span(json!({"did": "two"})), "k2")
        .await?
        .expect(200);
    s.create_many(None, &[span(json!({})), span(json!({})), span(json!({}))])
        .await?;
    s.get(None, &format!("/api/spans/{a}")).await?.expect(200);
    s.get(None, "/api/nothing-here").await?.problem(404);
    let _live = s.stream(None, "", None).await?;

    let m = s.metrics().await?;
    let posts = |status: u16| {
        sample(
            &m,
            &format!(
                "logline_http_requests_total{{route=\"/api/spans\",method=\"POST\",status=\"{status}\"}}"
            ),
        )
    };
    ensure!(
        posts(201) == Some(2.0),
        "POST 201 count {:?}:\n{m}",
        posts(201)
    );
    ensure!(
        posts(200) == Some(2.0),
        "POST 200 count {:?}:\n{m}",
        posts(200)
    );
    ensure!(
        sample(
            &m,
            "logline_http_requests_total{route=\"/api/spans/{id}\",method=\"GET\",status=\"200\"}"
        ) == Some(1.0),
        "GET by id is not counted under its route template:\n{m}"
    );
    ensure!(
        !m.contains(&a),
        "a concrete span id became a metric label:\n{m}"
    );
    ensure!(
        !m.contains("nothing-here"),
        "an unknown path became a metric label:\n{m}"
    );
    ensure!(
        sample(&m, "logline_spans_appended_total") == Some(5.0),
        "spans appended:\n{m}"
    );
    ensure!(
        sample(&m, "logline_stream_clients") == Some(1.0),
        "stream clients:\n{m}"
    );
    ensure!(
        m.contains("logline_http_request_duration_seconds_bucket{route=\"/api/spans\""),
        "no latency histogram:\n{m}"
    );

    // The manifest, by `current` and by its own name.
    let man = s.get(None, "/manifest/current").await?.expect(200);
    ensure!(man["id"] == json!(MANIFEST_ID), "{man}");
    ensure!(man["entity_type"] == json!("manifest"), "{man}");
    ensure!(man["visibility"] == json!("public"), "{man}");
    ensure!(
        man["curr_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("blake3:")),
        "{man}"
    );
    if let Some(name) = man["name"].as_str() {
        let by_name = s.get(None, &format!("/manifest/{name}")).await?.expect(200);
        ensure!(by_name == man, "{by_name} vs {man}");
    }
    let via_api = s
        .get(None, &format!("/api/spans/{MANIFEST_ID}"))
        .await?
        .expect(200);
    ensure!(via_api["curr_hash"] == man["curr_hash"], "{via_api}");

    // Verify: the caller's tenant, all five spans, ok.
    let v = s.get(None, "/api/verify").await?.expect(200);
    ensure!(v["ok"] == json!(true), "{v}");
    ensure!(v["tenant_id"] == json!("local"), "{v}");
    ensure!(v["spans"] == json!(5), "{v}");
    Ok(())
}

async fn a_closed_stream_stops_counting_as_a_stream_client(backend: Backend) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::default()).await?;
    // A stream with a filter nothing matches: the server never has a reason to write to it.
    let live = s.stream(None, "entity_type=never-written", None).await?;
    let m = s.metrics().await?;
    ensure!(sample(&m, "logline_stream_clients") == Some(1.0), "{m}");
    drop(live);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = s.metrics().await?;
        if sample(&m, "logline_stream_clients") == Some(0.0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "3 s after the client hung up, logline_stream_clients is still {:?}",
                sample(&m, "logline_stream_clients")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// chat -------------------------------------------------------------------------------------

testkit::both_stores!(
    threads = 2;
    the_offline_agent_answers_the_demo_questions_with_citations_and_confirm_applies_an_amendment,
    chat_streams_tool_calls_and_the_answer_as_server_sent_events,
    chat_refuses_bad_input_and_other_tenants_and_non_reviewers_precisely,
    a_failing_provider_is_a_problem_document_and_the_turn_is_still_recorded,
    chat_answers_503_while_stage0_refuses_the_provider_exec_kernel,
    feedback_rates_the_askers_own_run_and_refuses_other_runs_and_bad_scores_precisely,
    the_bandit_gives_each_new_conversation_a_sticky_variant_and_a_promotion_pins_it,
    a_failing_prompt_candidate_never_reaches_a_chat_and_a_passing_one_is_activated_by_a_signed_span,
);

const ANA: &str = "ana@padaria-lisboa.pt";

trait SeedDemo {
    /// `logline --tenant demo demo seed`.
    fn seed_demo(&self);
}

impl SeedDemo for Ledger {
    fn seed_demo(&self) {
        let out = self
            .command(&["--tenant", "demo", "demo", "seed"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "demo seed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Server {
    async fn chat(&self, token: Option<&str>, body: Value) -> Result<Resp> {
        read(
            self.request(Method::POST, "/api/chat", token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn post_json(&self, token: Option<&str>, path: &str, body: Value) -> Result<Resp> {
        read(
            self.request(Method::POST, path, token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn span_view(&self, token: Option<&str>, id: &str) -> Result<Value> {
        Ok(self
            .get(token, &format!("/api/spans/{id}"))
            .await?
            .expect(200))
    }
}

fn citations(answer: &Value) -> Vec<String> {
    answer["answer"]["citations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn the_offline_agent_answers_the_demo_questions_with_citations_and_confirm_applies_an_amendment(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");

    // 1. Why was D1 terminated? Cites the decision and the law it applied.
    let r = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    ensure!(r["outcome"] == "answered", "{r}");
    let text = r["answer"]["text"].as_str().unwrap_or_default();
    ensure!(
        text.contains("D1") && text.contains("midnight_deadline"),
        "{text}"
    );
    let cited = citations(&r);
    let mut kinds = BTreeSet::new();
    for id in &cited {
        kinds.insert(
            s.span_view(Some(&ana), id).await?["entity_type"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    ensure!(
        kinds.contains("law.decision") && kinds.contains("law"),
        "cited kinds {kinds:?}"
    );
    ensure!(
        r["answer"]["telemetry"]["tool_use_count"].as_u64() >= Some(1),
        "{r}"
    );
    let run = s
        .span_view(Some(&ana), r["run_id"].as_str().unwrap())
        .await?;
    ensure!(run["entity_type"] == "prompt_run", "{run}");
    ensure!(run["content"]["provider"] == "offline", "{run}");
    ensure!(
        run["content"]["compiled_hash"]
            .as_str()
            .is_some_and(|h| h.len() >= 64),
        "{run}"
    );

    // 2. Guarantors who did not answer: a parameterized query, and D3 in the answer.
    let r = s
        .chat(
            Some(&ana),
            json!({"message": "show me contracts where the guarantor didn't respond in 24h"}),
        )
        .await?
        .expect(200);
    ensure!(r["tool_results"][0]["name"] == "query_ledger", "{r}");
    let rows = r["tool_results"][0]["result"]["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        rows.len() == 1 && rows[0]["name"] == "D3",
        "exactly D3 has a silent guarantor: {rows:?}"
    );
    ensure!(
        citations(&r) == vec![rows[0]["id"].as_str().unwrap().to_string()],
        "{r}"
    );

    // 3. Extend D1's deadline: a pending proposal; confirm applies it once.
    let r = s
        .chat(
            Some(&ana),
            json!({"message": "extend the deadline for D1 by 3 days"}),
        )
        .await?
        .expect(200);
    let proposal = r["proposals"][0]
        .as_str()
        .context("a proposal")?
        .to_string();
    ensure!(
        r["answer"]["actions"][0]["type"] == "propose_amendment",
        "{r}"
    );
    let p = s.span_view(Some(&ana), &proposal).await?;
    ensure!(p["status"] == "pending", "{p}");
    let contract_id = p["content"]["contract"]["id"].as_str().unwrap().to_string();
    let before = s.span_view(Some(&ana), &contract_id).await?;
    let c = s
        .post_json(
            Some(&ana),
            "/api/chat/confirm",
            json!({"proposal_id": proposal}),
        )
        .await?
        .expect(200);
    ensure!(c["status"] == "applied", "{c}");
    let after = s.span_view(Some(&ana), &contract_id).await?;
    ensure!(
        after["seq"].as_i64() == before["seq"].as_i64().map(|s| s + 1),
        "{after}"
    );
    let old =
        chrono::DateTime::parse_from_rfc3339(before["content"]["deadline_at"].as_str().unwrap())?;
    let new =
        chrono::DateTime::parse_from_rfc3339(after["content"]["deadline_at"].as_str().unwrap())?;
    ensure!(new - old == chrono::TimeDelta::days(3), "{old} -> {new}");
    let amendment = s
        .span_view(Some(&ana), c["amendment_id"].as_str().unwrap())
        .await?;
    ensure!(
        amendment["entity_type"] == "contract_amendment",
        "{amendment}"
    );
    s.post_json(
        Some(&ana),
        "/api/chat/confirm",
        json!({"proposal_id": proposal}),
    )
    .await?
    .problem(409);

    // 4. Not a supported question: the offline provider says what it is.
    let r = s
        .chat(
            Some(&ana),
            json!({"message": "write me a poem about bread"}),
        )
        .await?
        .expect(200);
    let text = r["answer"]["text"].as_str().unwrap_or_default();
    ensure!(
        text.contains("not a language model") && text.contains("LOGLINE_PROVIDER"),
        "{text}"
    );

    // 5. A conversation continues: the second turn sees the first.
    let first = s
        .chat(Some(&ana), json!({"message": "what happened to D2?"}))
        .await?
        .expect(200);
    let conv = first["conversation_id"].as_str().unwrap();
    let second = s
        .chat(
            Some(&ana),
            json!({"message": "what happened to D4?", "conversation_id": conv}),
        )
        .await?
        .expect(200);
    ensure!(second["conversation_id"] == conv, "{second}");
    Ok(())
}

async fn chat_streams_tool_calls_and_the_answer_as_server_sent_events(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");
    let resp = s
        .request(Method::POST, "/api/chat", Some(&ana))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .body(json!({"message": "why was D1 terminated?"}).to_string())
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let mut events = Events {
        body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
        buf: Vec::new(),
        ended: false,
    };
    let mut names = Vec::new();
    let mut answer = None;
    while let Some(ev) = events.next(Duration::from_secs(20)).await {
        names.push(ev.event.clone());
        if ev.event == "answer" {
            answer = Some(serde_json::from_str::<Value>(&ev.data)?);
            break;
        }
    }
    let answer = answer.with_context(|| format!("no answer event: {names:?}"))?;
    let pos = |n: &str| names.iter().position(|x| x == n);
    ensure!(
        pos("tool_call") < pos("tool_result")
            && pos("tool_result") < pos("answer")
            && pos("tool_call").is_some(),
        "event order {names:?}"
    );
    ensure!(
        names.iter().any(|n| n == "delta"),
        "the answer text streams: {names:?}"
    );
    ensure!(
        answer["outcome"] == "answered" && !citations(&answer).is_empty(),
        "{answer}"
    );
    Ok(())
}

async fn chat_refuses_bad_input_and_other_tenants_and_non_reviewers_precisely(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");
    let eve = l.token("eve@elsewhere.example", "elsewhere", "1h");

    s.chat(None, json!({"message": "hi"})).await?.problem(401);
    s.chat(Some(&ana), json!({"message": "   "}))
        .await?
        .problem(400);
    s.chat(Some(&ana), json!({"message": "x".repeat(8001)}))
        .await?
        .problem(400);
    s.chat(Some(&ana), json!({"message": "hi", "variant": "nope"}))
        .await?
        .problem(400);
    s.chat(Some(&ana), json!({"text": "hi"}))
        .await?
        .problem(400);
    s.chat(Some(&ana), json!({"message": 7}))
        .await?
        .problem(400);
    let r = read(
        s.request(Method::POST, "/api/chat", Some(&ana))
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-LogLine-Memory", "forever")
            .body(json!({"message": "hi"}).to_string()),
    )
    .await?;
    ensure!(
        r.problem(400)["detail"]
            .as_str()
            .unwrap_or("")
            .contains("X-LogLine-Memory")
    );
    s.post_json(
        Some(&ana),
        "/api/chat/confirm",
        json!({"proposal_id": Uuid::now_v7()}),
    )
    .await?
    .problem(404);

    // Another tenant asks about D1: nothing of the demo tenant comes back.
    let d1 = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let demo_ids = citations(&d1);
    let r = s
        .chat(Some(&eve), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let body = r.to_string();
    for id in &demo_ids {
        ensure!(
            !body.contains(id.as_str()),
            "the other tenant saw {id}: {body}"
        );
    }
    ensure!(
        !body.contains("pastéis") && !body.contains("Alfama"),
        "{body}"
    );
    ensure!(citations(&r).is_empty(), "{r}");
    // Eve cannot confirm Ana's proposals either.
    let p = s
        .chat(
            Some(&ana),
            json!({"message": "extend the deadline for D4 by 2 days"}),
        )
        .await?
        .expect(200);
    let proposal = p["proposals"][0].as_str().context("a proposal")?;
    s.post_json(
        Some(&eve),
        "/api/chat/confirm",
        json!({"proposal_id": proposal}),
    )
    .await?
    .problem(404);
    // A member of the tenant who is not a party may not apply it.
    let rui = l.token("someone@padaria-lisboa.pt", "demo", "1h");
    s.post_json(
        Some(&rui),
        "/api/chat/confirm",
        json!({"proposal_id": proposal}),
    )
    .await?
    .problem(403);

    // Reviews need the reviewer role.
    s.get(Some(&ana), "/api/reviews").await?.problem(403);
    let reviewer = l.token_with(SECRET, "clara@cartorio-baixa.pt", "demo", "reviewer", "1h");
    let list = s.get(Some(&reviewer), "/api/reviews").await?.expect(200);
    ensure!(list["reviews"].is_array(), "{list}");
    s.post_json(
        Some(&reviewer),
        &format!("/api/reviews/{}", Uuid::now_v7()),
        json!({"decision": "approve"}),
    )
    .await?
    .problem(404);
    Ok(())
}

async fn a_failing_provider_is_a_problem_document_and_the_turn_is_still_recorded(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    // The prompts are evaluated on the offline provider (the configured one is down, so the
    // gate could activate nothing and every turn would be refused before the provider call).
    let out = l
        .command(&["kernels", "set", "prompt_eval", "config.provider=offline"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing listens on port 9 of loopback.
    let s = l
        .serve(Opts {
            env: vec![
                ("LOGLINE_PROVIDER".into(), "openai".into()),
                ("OPENAI_BASE_URL".into(), "http://127.0.0.1:9/v1".into()),
                ("OPENAI_API_KEY".into(), "sk-never-in-a-span-123456".into()),
                ("LOGLINE_MODEL".into(), "gpt-4o-mini".into()),
            ],
            ..Opts::default()
        })
        .await?;
    let r = s
        .chat(None, json!({"message": "why was D1 terminated?"}))
        .await?;
    let p = r.problem(503);
    ensure!(
        p["detail"].as_str().unwrap_or("").contains("unreachable"),
        "{p}"
    );
    let run = s
        .span_view(None, p["run_id"].as_str().context("run_id")?)
        .await?;
    ensure!(run["status"] == "provider_error", "{run}");
    let spans = s
        .get(None, "/api/timeline?limit=1000")
        .await?
        .expect(200)
        .to_string();
    ensure!(
        !spans.contains("sk-never-in-a-span"),
        "the key reached the ledger"
    );
    Ok(())
}

async fn chat_answers_503_while_stage0_refuses_the_provider_exec_kernel(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    // Allow-list every native kernel but provider_exec (…0005).
    let listed: Vec<String> = [1, 2, 3, 4, 6, 7, 8]
        .iter()
        .map(|n| format!("00000000-0000-4000-8000-00000000000{n}"))
        .collect();
    let out = l
        .command(&[
            "manifest",
            "set",
            &format!("allowed_boot_ids={}", json!(listed)),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = l.serve(Opts::default()).await?;
    let p = s
        .chat(None, json!({"message": "why was D1 terminated?"}))
        .await?
        .problem(503);
    ensure!(
        p["detail"].as_str().unwrap_or("").contains("switched off"),
        "{p}"
    );
    Ok(())
}

/// Appends one span with `logline add --allow-reserved` as `user` of `tenant` (the operator's
/// way to write an entity type the node reserves); returns its id.
fn add_as_operator(l: &Ledger, user: &str, tenant: &str, span: &Value) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("span.ndjson");
    std::fs::write(&file, format!("{span}\n"))?;
    let out = l
        .command(&[
            "--as",
            user,
            "--tenant",
            tenant,
            "add",
            "--allow-reserved",
            "--format",
            "ndjson",
            "--file",
        ])
        .arg(&file)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim())?;
    Ok(result["id"].as_str().context("no id")?.to_string())
}

impl Server {
    async fn feedback(&self, token: Option<&str>, body: Value) -> Result<Resp> {
        self.post_json(token, "/api/chat/feedback", body).await
    }

    /// The caller's spans of one type, newest first.
    async fn spans_of(&self, token: Option<&str>, entity_type: &str) -> Result<Vec<Value>> {
        let page = self
            .get(
                token,
                &format!("/api/timeline?entity_type={entity_type}&limit=1000&order=desc"),
            )
            .await?
            .expect(200);
        Ok(page["spans"].as_array().cloned().unwrap_or_default())
    }
}

async fn feedback_rates_the_askers_own_run_and_refuses_other_runs_and_bad_scores_precisely(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");
    let rui = l.token("rui@padaria-lisboa.pt", "demo", "1h");
    let eve = l.token("eve@elsewhere.example", "elsewhere", "1h");

    let turn = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let run = turn["run_id"]
        .as_str()
        .context("the answer names its run")?;
    let run_view = s.span_view(Some(&ana), run).await?;
    ensure!(run_view["entity_type"] == "prompt_run", "{run_view}");

    // A thumbs up: a private feedback span by Ana, related to the run.
    let up = s
        .feedback(Some(&ana), json!({"run_id": run, "score": "up"}))
        .await?
        .expect(200);
    ensure!(up["seq"] == 0 && up["score"] == "up", "{up}");
    ensure!(up["variant"] == run_view["content"]["variant"], "{up}");
    let id = up["id"].as_str().context("feedback id")?;
    let fb = s.span_view(Some(&ana), id).await?;
    ensure!(
        fb["entity_type"] == "feedback"
            && fb["visibility"] == "private"
            && fb["owner_id"] == ANA
            && fb["tenant_id"] == "demo"
            && fb["related_to"] == json!([run])
            && fb["content"]["run_id"] == run,
        "{fb}"
    );
    // Changing the vote supersedes it: the same span, the next seq.
    let down = s
        .feedback(
            Some(&ana),
            json!({"run_id": run, "score": 0.2, "comment": "the reason was vague"}),
        )
        .await?
        .expect(200);
    ensure!(down["id"] == up["id"] && down["seq"] == 1, "{down}");
    let fb = s.span_view(Some(&ana), id).await?;
    ensure!(
        fb["content"]["score"] == json!(0.2) && fb["content"]["comment"] == "the reason was vague",
        "{fb}"
    );
    // Nobody else sees it.
    s.get(Some(&rui), &format!("/api/spans/{id}"))
        .await?
        .problem(404);

    // Six first votes on a new run sent at once (two tabs, a double click) are one vote span
    // with six versions, not six votes for the bandit to count.
    let turn = s
        .chat(Some(&ana), json!({"message": "what is the status of D2?"}))
        .await?
        .expect(200);
    let run2 = turn["run_id"].as_str().context("run id")?.to_string();
    let burst = (0..6).map(|i| {
        s.feedback(
            Some(&ana),
            json!({"run_id": run2, "score": if i % 2 == 0 { "up" } else { "down" }}),
        )
    });
    let mut seqs = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for r in futures::future::join_all(burst).await {
        let v = r?.expect(200);
        ids.insert(v["id"].as_str().context("id")?.to_string());
        seqs.push(v["seq"].as_i64().context("seq")?);
    }
    seqs.sort_unstable();
    ensure!(
        ids.len() == 1 && seqs == vec![0, 1, 2, 3, 4, 5],
        "{ids:?} {seqs:?}"
    );
    let votes: std::collections::BTreeSet<String> = s
        .spans_of(Some(&ana), "feedback")
        .await?
        .into_iter()
        .filter(|v| v["related_to"] == json!([run2]))
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    ensure!(votes == ids, "one vote span on the run: {votes:?}");

    // Bad scores and bodies.
    for bad in [
        json!("sideways"),
        json!(1.5),
        json!(-0.1),
        json!(null),
        json!(true),
    ] {
        s.feedback(Some(&ana), json!({"run_id": run, "score": bad}))
            .await?
            .problem(400);
    }
    s.feedback(Some(&ana), json!({"run_id": run}))
        .await?
        .problem(400);
    s.feedback(Some(&ana), json!({"run_id": "not-a-uuid", "score": "up"}))
        .await?
        .problem(400);
    s.feedback(
        Some(&ana),
        json!({"run_id": run, "score": "up", "comment": "x".repeat(2001)}),
    )
    .await?
    .problem(400);
    s.feedback(None, json!({"run_id": run, "score": "up"}))
        .await?
        .problem(401);

    // No such run; another tenant's run; another user's run: not found, and nothing recorded.
    s.feedback(Some(&ana), json!({"run_id": Uuid::now_v7(), "score": "up"}))
        .await?
        .problem(404);
    let p = s
        .feedback(Some(&eve), json!({"run_id": run, "score": "down"}))
        .await?
        .problem(404);
    ensure!(
        p["detail"].as_str().unwrap_or("").contains("of yours"),
        "{p}"
    );
    s.feedback(Some(&rui), json!({"run_id": run, "score": "down"}))
        .await?
        .problem(404);
    ensure!(s.spans_of(Some(&eve), "feedback").await?.is_empty());
    ensure!(s.spans_of(Some(&rui), "feedback").await?.is_empty());
    // A run another user made visible to the tenant is still not Ana's to rate; a span that is
    // no run is no run.
    // (A run is the node's own record: a user cannot post one, so the operator writes it.)
    let forged = span(json!({"entity_type": "prompt_run", "visibility": "tenant",
                             "content": {"variant": "default", "outcome": "answered"}}));
    let p = s.post(Some(&rui), &forged).await?.problem(422);
    ensure!(
        p["detail"].as_str().unwrap_or("").contains("`prompt_run`")
            && p["detail"]
                .as_str()
                .unwrap_or("")
                .contains("POST /api/chat"),
        "{p}"
    );
    let shared = add_as_operator(&l, "rui@padaria-lisboa.pt", "demo", &forged)?;
    let p = s
        .feedback(Some(&ana), json!({"run_id": shared, "score": "up"}))
        .await?
        .problem(403);
    ensure!(
        p["detail"].as_str().unwrap_or("").contains("another user"),
        "{p}"
    );
    let note = s
        .create(
            Some(&ana),
            &span(json!({"entity_type": "note", "visibility": "tenant"})),
        )
        .await?;
    s.feedback(Some(&ana), json!({"run_id": note, "score": "up"}))
        .await?
        .problem(422);
    // Ana's two votes on the first run are the two versions of one span.
    let votes: Vec<Value> = s
        .spans_of(Some(&ana), "feedback")
        .await?
        .into_iter()
        .filter(|v| v["related_to"] == json!([run]))
        .collect();
    let ids: BTreeSet<&str> = votes.iter().filter_map(|v| v["id"].as_str()).collect();
    ensure!(ids.len() == 1 && votes.len() == 2, "{votes:?}");
    Ok(())
}

async fn the_bandit_gives_each_new_conversation_a_sticky_variant_and_a_promotion_pins_it(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");

    // A new conversation that names no variant: the bandit chooses and records why.
    let first = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let conversation = first["conversation_id"].as_str().context("conversation")?;
    let run = s
        .span_view(Some(&ana), first["run_id"].as_str().context("run")?)
        .await?;
    let variant = run["content"]["variant"]
        .as_str()
        .context("variant")?
        .to_string();
    let selections = s.spans_of(Some(&ana), "prompt_variant_selection").await?;
    ensure!(selections.len() == 1, "{selections:?}");
    let sel = &selections[0];
    ensure!(
        sel["content"]["chosen"] == json!(variant)
            && sel["content"]["conversation_id"] == conversation
            && sel["parent_id"] == first["run_id"]
            && sel["visibility"] == "private",
        "{sel}"
    );
    let probabilities: f64 = sel["content"]["candidates"]
        .as_array()
        .context("candidates")?
        .iter()
        .filter_map(|c| c["probability"].as_f64())
        .sum();
    ensure!((probabilities - 1.0).abs() < 1e-9, "{sel}");
    ensure!(
        sel["content"]["seed"]
            .as_str()
            .is_some_and(|x| x.len() == 16),
        "{sel}"
    );

    // The conversation keeps it, with no new choice.
    for _ in 0..2 {
        let next = s
            .chat(
                Some(&ana),
                json!({"message": "and D2?", "conversation_id": conversation}),
            )
            .await?
            .expect(200);
        let run = s
            .span_view(Some(&ana), next["run_id"].as_str().context("run")?)
            .await?;
        ensure!(run["content"]["variant"] == json!(variant), "{run}");
    }
    ensure!(
        s.spans_of(Some(&ana), "prompt_variant_selection")
            .await?
            .len()
            == 1
    );
    // A named variant wins and is no bandit choice.
    let named = s
        .chat(
            Some(&ana),
            json!({"message": "why was D1 terminated?", "variant": "brief"}),
        )
        .await?
        .expect(200);
    let run = s
        .span_view(Some(&ana), named["run_id"].as_str().context("run")?)
        .await?;
    ensure!(run["content"]["variant"] == "brief", "{run}");
    ensure!(
        s.spans_of(Some(&ana), "prompt_variant_selection")
            .await?
            .len()
            == 1
    );

    // GET /api/variants: every variant, the turns so far counted, probabilities summing to 1.
    s.get(None, "/api/variants").await?.problem(401);
    let v = s.get(Some(&ana), "/api/variants").await?.expect(200);
    ensure!(v["promoted"].is_null(), "{v}");
    let rows = v["variants"].as_array().context("variants")?;
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    ensure!(names == ["brief", "compact", "default"], "{v}");
    for r in rows {
        for k in [
            "eligible",
            "samples",
            "mean_reward",
            "alpha",
            "beta",
            "probability",
            "dropped",
        ] {
            ensure!(r.get(k).is_some(), "no `{k}` in {r}");
        }
    }
    let samples: u64 = rows.iter().filter_map(|r| r["samples"].as_u64()).sum();
    ensure!(samples == 4, "four turns were rewarded: {v}");
    let total: f64 = rows.iter().filter_map(|r| r["probability"].as_f64()).sum();
    ensure!((total - 1.0).abs() < 1e-9, "{v}");

    // An explicit, signed promotion pins every new conversation; the table says so.
    let out = l.command(&["variants", "promote", "compact"]).output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = l.command(&["variants", "promote", "nope"]).output()?;
    ensure!(!out.status.success());
    let v = s.get(Some(&ana), "/api/variants").await?.expect(200);
    ensure!(v["promoted"] == "compact", "{v}");
    for _ in 0..3 {
        let r = s
            .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
            .await?
            .expect(200);
        let run = s
            .span_view(Some(&ana), r["run_id"].as_str().context("run")?)
            .await?;
        ensure!(run["content"]["variant"] == "compact", "{run}");
    }
    let sel = &s.spans_of(Some(&ana), "prompt_variant_selection").await?[0];
    ensure!(sel["content"]["mode"] == "promoted", "{sel}");
    let out = l.command(&["variants", "status"]).output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        table.contains("promoted: compact") && table.contains("Beta(") && table.contains("brief"),
        "{table}"
    );
    Ok(())
}

// prompt candidates (issue 11) ---------------------------------------------------------------

/// The seq of block `name` a turn's `prompt_run` compiled.
async fn compiled_seq(s: &Server, token: &str, run_id: &str, name: &str) -> Result<i64> {
    let run = s.span_view(Some(token), run_id).await?;
    run["content"]["blocks"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == name))
        .and_then(|b| b["seq"].as_i64())
        .with_context(|| format!("no block {name} in {run}"))
}

/// `logline prompts status --json`, polled until `name` seq `seq` has left the candidate state.
async fn decided(l: &Ledger, kind: &str, name: &str, seq: i64) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = l.command(&["prompts", "status", "--json"]).output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Value = serde_json::from_slice(&out.stdout)?;
        let v = all
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|v| v["kind"] == kind && v["name"] == name && v["seq"] == seq)
            })
            .cloned();
        if let Some(v) = v
            && v["state"] != "candidate"
        {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "{kind} {name} seq {seq} was never decided"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn propose(l: &Ledger, dir: &std::path::Path, file: &str, text: &str) -> Result<Value> {
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    let out = l
        .command(&["prompts", "propose", path.to_str().unwrap_or_default()])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn a_failing_prompt_candidate_never_reaches_a_chat_and_a_passing_one_is_activated_by_a_signed_span(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    l.seed_demo();
    let out = l
        .command(&["kernels", "set", "prompt_eval", "config.interval_ms=200"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token(ANA, "demo", "1h");
    // The shipped prompts went through the gate before the server listened.
    let v = decided(&l, "block", "turn", 0).await?;
    ensure!(v["state"] == "active", "{v}");
    let first = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let run = first["run_id"].as_str().unwrap_or_default().to_string();
    ensure!(compiled_seq(&s, &ana, &run, "turn").await? == 0);

    // A turn block that cannot render: every case of the suite fails, so it is rejected.
    let turn = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/blocks/turn.tera"),
    )?;
    let dir = tempfile::tempdir()?;
    let broken = format!("{turn}\n{{{{ no_such_variable }}}}\n");
    let p = propose(&l, dir.path(), "turn.tera", &broken)?;
    ensure!(p["seq"] == 1 && p["appended"] == true, "{p}");
    let v = decided(&l, "block", "turn", 1).await?;
    ensure!(v["state"] == "rejected", "{v}");
    let failing = v["failing_cases"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(failing > 0, "the rejection lists the failing cases: {v}");
    let rejection = s
        .span_view(Some(&ana), v["decision"].as_str().unwrap_or_default())
        .await?;
    ensure!(
        rejection["entity_type"] == "prompt_activation" && rejection["status"] == "rejected",
        "{rejection}"
    );
    ensure!(
        rejection["content"]["eval_runs"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{rejection}"
    );
    // The chat still compiles the previous active version.
    let again = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    ensure!(again["outcome"] == "answered", "{again}");
    let run = again["run_id"].as_str().unwrap_or_default().to_string();
    ensure!(
        compiled_seq(&s, &ana, &run, "turn").await? == 0,
        "a rejected candidate reached a chat"
    );

    // A new variant that never passes is refused by name, with the reason.
    let bad_turn = "---\nid: 01a25000-0000-7000-8000-00000000b10c\nlayer: turn\npriority: 10\nversion: 1\ndescription: Cannot render.\n---\n{{ no_such_variable }}\n";
    propose(&l, dir.path(), "turn_broken.tera", bad_turn)?;
    propose(
        &l,
        dir.path(),
        "broken.json",
        &json!({"name": "broken", "description": "never passes", "blocks": ["doctrine", "product", "app_contracts", "task_answer", "turn_broken"], "tool_choice": "required"}).to_string(),
    )?;
    let v = decided(&l, "variant", "broken", 0).await?;
    ensure!(v["state"] == "rejected", "{v}");
    // The decision is in the ledger; the server picks the new variant up on its next refresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resp = loop {
        let r = s
            .chat(
                Some(&ana),
                json!({"message": "why was D1 terminated?", "variant": "broken"}),
            )
            .await?;
        if r.status.as_u16() == 400
            && r.text.contains("no prompt variant named")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        break r;
    };
    let p = resp.problem(503);
    ensure!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("failed its evaluation"),
        "{p}"
    );

    // A harmless change passes and goes live, through a span the node signed.
    let better = format!("{turn}\nAnswer in the language of the question.\n");
    let p = propose(&l, dir.path(), "turn.tera", &better)?;
    ensure!(p["seq"] == 2, "{p}");
    let v = decided(&l, "block", "turn", 2).await?;
    ensure!(v["state"] == "active", "{v}");
    let activation = s
        .span_view(Some(&ana), v["decision"].as_str().unwrap_or_default())
        .await?;
    ensure!(activation["status"] == "active", "{activation}");
    ensure!(activation["content"]["target"]["seq"] == 2, "{activation}");
    let rates = activation["content"]["pass_rates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        !rates.is_empty() && rates.iter().all(|r| r["pass_rate"] == 1.0),
        "{activation}"
    );
    let manifest = s.get(None, "/manifest/current").await?.expect(200);
    let keys = manifest["content"]["trusted_keys"].clone();
    ensure!(
        keys.as_array()
            .is_some_and(|k| k.contains(&activation["public_key"])),
        "the activation is signed by the node: {activation} {manifest}"
    );
    let out = l.command(&["verify"]).output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = s
        .chat(Some(&ana), json!({"message": "why was D1 terminated?"}))
        .await?
        .expect(200);
    let run = after["run_id"].as_str().unwrap_or_default().to_string();
    ensure!(compiled_seq(&s, &ana, &run, "turn").await? == 2);

    // /api/evals: the gate's runs are public, a person's run is theirs alone.
    let mine = json!({
        "entity_type": "eval_run", "visibility": "private", "who": ANA, "did": "ran a suite",
        "this": "suite mine", "when": "2026-01-01T00:00:00Z", "confirmed_by": "ll-eval",
        "if_ok": "-", "if_doubt": "-", "if_not": "-", "status": "passed",
        "content": {"suite": "mine", "variant": "default", "cases": 1, "passed": 1, "pass_rate": 1.0},
    });
    s.post_json(Some(&ana), "/api/spans", mine)
        .await?
        .expect(201);
    let eve = l.token("eve@luzfilmes.pt", "other", "1h");
    let suites = |page: &Value| -> Vec<String> {
        page["runs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["suite"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let for_ana = s.get(Some(&ana), "/api/evals").await?.expect(200);
    let for_eve = s.get(Some(&eve), "/api/evals").await?.expect(200);
    ensure!(suites(&for_ana).contains(&"mine".to_string()), "{for_ana}");
    ensure!(!suites(&for_eve).contains(&"mine".to_string()), "{for_eve}");
    ensure!(
        suites(&for_eve).contains(&"happy".to_string()),
        "the gate's runs are public: {for_eve}"
    );
    let turn_versions: Vec<&Value> = for_eve["candidates"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["name"] == "turn").collect())
        .unwrap_or_default();
    ensure!(turn_versions.len() == 3, "{for_eve}");
    ensure!(
        for_ana["variants"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v["variant"] == "default")),
        "{for_ana}"
    );
    s.get(Some(&ana), "/api/evals?limit=0").await?.problem(400);
    Ok(())
}

// 5. checkpoints and proofs ---------------------------------------------------------------

/// Runs `logline proof verify` on a proof document; returns whether it passed and its output.
fn proof_verifies(l: &Ledger, doc: &Value, name: &str) -> Result<(bool, String)> {
    let path = l.data_dir().join(name);
    std::fs::write(&path, doc.to_string())?;
    let out = l
        .command(&["proof", "verify", path.to_str().context("path")?])
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

async fn checkpoints_and_proofs_are_served_per_tenant_and_check_offline(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = l.serve(Opts::auth()).await?;
    let ana = l.token("ana", "alpha", "1h");
    let bob = l.token("bob", "beta", "1h");
    s.get(None, "/api/checkpoints/latest").await?.problem(401);
    // A tenant without spans has no tree yet.
    s.get(Some(&bob), "/api/checkpoints/latest")
        .await?
        .problem(404);

    let mut spans: Vec<Value> = (0..20)
        .map(|i| span(json!({"this": format!("delivery {i}"), "visibility": "tenant"})))
        .collect();
    spans[7]["visibility"] = json!("private");
    let ids = s.create_many(Some(&ana), &spans).await?;

    let cp = s
        .get(Some(&ana), "/api/checkpoints/latest")
        .await?
        .expect(200);
    ensure!(cp["size"] == json!(20), "{cp}");
    let origin = cp["origin"].as_str().context("origin")?;
    ensure!(
        origin.starts_with("logline/") && origin.ends_with("/alpha"),
        "{cp}"
    );
    let note = cp["note"].as_str().context("note")?;
    ensure!(
        note.starts_with(&format!(
            "{origin}\n20\n{}\n\n\u{2014} {origin} ",
            cp["root"].as_str().unwrap_or("")
        )),
        "not a C2SP signed note: {note:?}"
    );
    // The node remembers it outside the database.
    let files: Vec<_> = std::fs::read_dir(l.data_dir().join("checkpoints"))?.collect();
    ensure!(
        !files.is_empty(),
        "no checkpoint file in the data directory"
    );

    // An inclusion proof for each of a few spans verifies offline; a tampered one does not.
    for i in [0usize, 7, 19] {
        let doc = s
            .get(Some(&ana), &format!("/api/spans/{}/proof", ids[i]))
            .await?
            .expect(200);
        ensure!(
            doc["type"] == json!("inclusion")
                && doc["leaf_index"] == json!(i)
                && doc["tree_size"] == json!(20)
                && doc["checkpoint"] == cp["note"],
            "{doc}"
        );
        let (ok, out) = proof_verifies(&l, &doc, "proof.json")?;
        ensure!(ok && out.starts_with("ok:"), "proof of {i}: {out}");
        let mut bad = doc.clone();
        bad["leaf_index"] = json!((i + 1) % 20);
        let (ok, out) = proof_verifies(&l, &bad, "bad.json")?;
        ensure!(
            !ok && out.starts_with("FAILED"),
            "a moved leaf verified: {out}"
        );
    }
    // Visibility is the span's: another tenant gets 404 for a tenant span, another member for
    // a private one.
    s.get(Some(&bob), &format!("/api/spans/{}/proof", ids[0]))
        .await?
        .problem(404);
    let carla = l.token("carla", "alpha", "1h");
    s.get(Some(&carla), &format!("/api/spans/{}/proof", ids[7]))
        .await?
        .problem(404);
    s.get(Some(&carla), &format!("/api/spans/{}/proof", ids[8]))
        .await?
        .expect(200);

    // Consistency from an older size to the latest, and to an older checkpoint.
    s.create(Some(&ana), &span(json!({"visibility": "tenant"})))
        .await?;
    for query in ["from=5", "from=20", "from=3&to=12", "from=0"] {
        let doc = s
            .get(Some(&ana), &format!("/api/checkpoints/consistency?{query}"))
            .await?
            .expect(200);
        ensure!(doc["type"] == json!("consistency"), "{doc}");
        let (ok, out) = proof_verifies(&l, &doc, "consistency.json")?;
        ensure!(ok, "consistency {query}: {out}");
    }
    let doc = s
        .get(Some(&ana), "/api/checkpoints/consistency?from=20")
        .await?
        .expect(200);
    ensure!(
        doc["new_size"] == json!(21) && doc["old_root"] == cp["root"],
        "{doc}"
    );
    s.get(Some(&ana), "/api/checkpoints/consistency")
        .await?
        .problem(400);
    s.get(Some(&ana), "/api/checkpoints/consistency?from=abc")
        .await?
        .problem(400);
    s.get(Some(&ana), "/api/checkpoints/consistency?from=99")
        .await?
        .problem(422);
    s.get(Some(&ana), "/api/checkpoints/consistency?from=5&to=4")
        .await?
        .problem(422);
    Ok(())
}
