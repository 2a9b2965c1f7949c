//! The HTTP edge of the real `logline serve` on 127.0.0.1: slow and idle connections are
//! closed within their timeouts while a normal client keeps being served; oversized request
//! heads get 414/431 problem documents; `Content-Encoding: gzip` is decoded within the body
//! limit (a gzip bomb gets 413) and other encodings 415; JWT `nbf`/`iat` are checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use testkit::{Backend, Ledger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_logline");
const SECRET: &str = "http-edge-tests-secret-9c1d";
const PROBLEM_JSON: &str = "application/problem+json";

/// A running `logline serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `serve` with `args` (and the test secret when `auth`) and waits for its
    /// listening line.
    fn start(l: &Ledger, args: &[&str], auth: bool) -> Result<Self> {
        let mut cmd = l.logline(BIN);
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if auth {
            cmd.env("LOGLINE_JWT_SECRET", SECRET);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().context("serve exited before listening")??;
            if let Some(a) = line.trim().strip_prefix("logline listening on http://") {
                break a.to_string();
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            addr,
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Asserts a problem document with `status` and returns it.
async fn problem(resp: reqwest::Response, status: u16) -> Result<Value> {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    ensure!(
        ct.starts_with(PROBLEM_JSON),
        "content-type `{ct}` for {status}: {text}"
    );
    let v: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    ensure!(v["status"] == status, "status field: {v}");
    ensure!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("/problems/")),
        "type: {v}"
    );
    ensure!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    Ok(v)
}

fn span(did: &str) -> Value {
    json!({
        "who": "ana", "did": did, "this": "delivery 312",
        "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "send receipt",
        "if_doubt": "ask", "if_not": "open incident", "status": "valid"
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Waits until the server closes `tcp` (EOF or an error) and returns how long that took.
async fn closed_after(mut tcp: TcpStream, started: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Sends `request` on a fresh connection (ignoring a write cut short by the server) and reads
/// the response to EOF: its status, content type and body.
async fn raw(addr: &str, request: &[u8]) -> Result<(u16, String, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Ok((status, ct, body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_connections_are_closed_within_their_timeouts_while_others_are_served()
-> Result<()> {
    let l = Ledger::new(Backend::Sqlite).await;
    let head = Duration::from_secs(1);
    let idle = Duration::from_secs(2);
    let s = Server::start(&l, &["--header-timeout", "1", "--idle-timeout", "2"], false)?;
    let started = Instant::now();
    // Give every closure this much beyond its timeout (a loaded CI machine).
    let slack = Duration::from_secs(3);
    let mut waits = Vec::new();

    // Slowloris: headers one byte every 50 ms, never finished.
    for _ in 0..100 {
        let tcp = TcpStream::connect(&s.addr).await?;
        let (mut rd, mut wr) = tcp.into_split();
        tokio::spawn(async move {
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .chain([b'a'; 10_000].iter())
            {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        waits.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + head + slack;
            loop {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return ("slowloris", Some(started.elapsed())),
                    Ok(Ok(_)) => continue,
                    Err(_) => return ("slowloris", None),
                }
            }
        }));
    }
    // Connections that never send a byte (also what a half-open peer looks like).
    for _ in 0..100 {
        let tcp = TcpStream::connect(&s.addr).await?;
        waits.push(tokio::spawn(async move {
            ("silent", closed_after(tcp, started, idle + slack).await)
        }));
    }
    // Keep-alive connections that make one request, then go quiet.
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(&s.addr).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await?;
        ensure!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        let after = Instant::now();
        waits.push(tokio::spawn(async move {
            (
                "keep-alive",
                closed_after(tcp, after, idle + slack)
                    .await
                    .map(|_| after.elapsed() + (after - started)),
            )
        }));
    }

    // Meanwhile a normal client keeps getting answers, well within the timeouts.
    let mut answered = 0;
    while started.elapsed() < idle + Duration::from_secs(1) {
        let t = Instant::now();
        let r = s.http.get(s.url("/healthz")).send().await?;
        ensure!(r.status() == 200, "healthz: {}", r.status());
        ensure!(
            t.elapsed() < Duration::from_millis(500),
            "slow answer: {:?}",
            t.elapsed()
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(answered >= 20, "only {answered} answers");

    for w in waits {
        let (kind, closed) = w.await?;
        let Some(at) = closed else {
            bail!("a {kind} connection was still open after its timeout and {slack:?}");
        };
        let limit = match kind {
            "slowloris" => head,
            _ => idle,
        } + slack;
        ensure!(
            at <= limit + Duration::from_secs(1),
            "{kind} closed only after {at:?}"
        );
    }
    // A slowloris connection is not closed before its head timeout.
    let mut tcp = TcpStream::connect(&s.addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
    tokio::time::sleep(head / 2).await;
    tcp.write_all(b"Host: x\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await?;
    ensure!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "a head finished in time was refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_414_and_431_problem_documents() -> Result<()> {
    let l = Ledger::new(Backend::Sqlite).await;
    let s = Server::start(&l, &[], false)?;

    // A 1 MB query string (longer than HTTP clients will send: raw) and 10,000 parameters: 414.
    let q = "a".repeat(1024 * 1024);
    let (status, ct, body) = raw(
        &s.addr,
        format!("GET /api/spans?q={q} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await?;
    ensure!(status == 414 && ct == PROBLEM_JSON, "{status} {ct} {body}");
    let v: Value = serde_json::from_str(&body)?;
    ensure!(
        v["status"] == 414 && v["detail"].as_str().unwrap().contains("16384"),
        "{v}"
    );
    let params: String = (0..10_000).map(|i| format!("p{i}=1&")).collect();
    let (status, ct, _) = raw(
        &s.addr,
        format!("GET /api/spans?{params} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await?;
    ensure!(
        status == 414 && ct == PROBLEM_JSON,
        "10,000 parameters: {status} {ct}"
    );
    // And through an ordinary client, a 20 KB target.
    let q = "a".repeat(20 * 1024);
    problem(
        s.http
            .get(s.url(&format!("/api/spans?q={q}")))
            .send()
            .await?,
        414,
    )
    .await?;

    // 200 header fields, or one header of 100 KB: 431.
    let mut rb = s.http.get(s.url("/healthz"));
    for i in 0..200 {
        rb = rb.header(format!("x-h{i}"), "1");
    }
    let v = problem(rb.send().await?, 431).await?;
    ensure!(
        v["detail"].as_str().unwrap().contains("100 header fields"),
        "{v}"
    );
    let big = "b".repeat(100 * 1024);
    problem(
        s.http
            .get(s.url("/healthz"))
            .header("x-big", big)
            .send()
            .await?,
        431,
    )
    .await?;

    // Within the limits, served; and the server still answers after the refusals.
    let q = "a".repeat(8 * 1024);
    let r = s.http.get(s.url(&format!("/healthz?q={q}"))).send().await?;
    ensure!(r.status() == 200, "{}", r.status());
    Ok(())
}

async fn gzip_bodies_are_decoded_within_the_body_limit_and_other_encodings_refused(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = Server::start(&l, &["--body-limit", "1048576"], false)?;
    let post = |body: Vec<u8>, encoding: &str, ct: &str| {
        s.http
            .post(s.url("/api/spans"))
            .header("content-type", ct)
            .header("content-encoding", encoding)
            .body(body)
    };

    // A gzip JSON span and a gzip NDJSON batch are stored as sent.
    let one = span("gzipped delivery").to_string();
    let r = post(gzip(one.as_bytes()), "gzip", "application/json")
        .send()
        .await?;
    ensure!(
        r.status() == 201,
        "gzip JSON: {} {}",
        r.status(),
        r.text().await?
    );
    let id = r.json::<Value>().await?["id"].as_str().unwrap().to_string();
    let got: Value = s
        .http
        .get(s.url(&format!("/api/spans/{id}")))
        .send()
        .await?
        .json()
        .await?;
    ensure!(got.to_string().contains("gzipped delivery"), "{got}");
    let batch = format!("{}\n{}\n", span("batch a"), span("batch b"));
    let r = post(gzip(batch.as_bytes()), "gzip", "application/x-ndjson")
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "gzip NDJSON: {} {}",
        r.status(),
        r.text().await?
    );

    // A body that says gzip but is not: 400, nothing stored.
    let v = problem(
        post(one.clone().into_bytes(), "gzip", "application/json")
            .send()
            .await?,
        400,
    )
    .await?;
    ensure!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    // An encoding we do not decode: 415 naming it.
    let v = problem(
        post(one.clone().into_bytes(), "br", "application/json")
            .send()
            .await?,
        415,
    )
    .await?;
    ensure!(v["detail"].as_str().unwrap().contains("`br`"), "{v}");
    // A gzip bomb: 64 MB of spaces in ~64 KB; the decoded size meets the 1 MB limit first.
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    ensure!(bomb.len() < 1024 * 1024, "bomb is {} bytes", bomb.len());
    problem(post(bomb, "gzip", "application/json").send().await?, 413).await?;

    // Only the two good requests stored spans (the span plus the batch of two).
    let page: Value = s
        .http
        .get(s.url("/api/timeline?limit=100"))
        .send()
        .await?
        .json()
        .await?;
    let text = page.to_string();
    for did in ["gzipped delivery", "batch a", "batch b"] {
        ensure!(text.contains(did), "{did} missing: {text}");
    }
    Ok(())
}

async fn tokens_not_yet_valid_or_issued_in_the_future_get_401_naming_why(
    backend: Backend,
) -> Result<()> {
    let l = Ledger::new(backend).await;
    let s = Server::start(&l, &[], true)?;
    let now = chrono::Utc::now().timestamp();
    let token = |nbf: Option<i64>, iat: i64| {
        server::auth::issue(
            &server::auth::Secret::new(SECRET),
            &server::auth::Claims {
                sub: "ana".into(),
                tenant: "bakery".into(),
                roles: vec![],
                exp: now + 7200,
                iat,
                nbf,
            },
        )
    };
    let get = |t: String| s.http.get(s.url("/api/timeline")).bearer_auth(t).send();

    let r = get(token(Some(now - 10), now - 10)).await?;
    ensure!(r.status() == 200, "a valid token: {}", r.status());
    // Within the leeway of a clock a little ahead: accepted.
    let r = get(token(Some(now + 30), now + 30)).await?;
    ensure!(
        r.status() == 200,
        "nbf/iat within the leeway: {}",
        r.status()
    );
    let v = problem(get(token(Some(now + 3600), now)).await?, 401).await?;
    ensure!(
        v["detail"].as_str().unwrap().contains("not valid yet"),
        "{v}"
    );
    let v = problem(get(token(None, now + 3600)).await?, 401).await?;
    ensure!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("issued in the future"),
        "{v}"
    );
    Ok(())
}

testkit::both_stores!(
    threads = 2;
    gzip_bodies_are_decoded_within_the_body_limit_and_other_encodings_refused,
    tokens_not_yet_valid_or_issued_in_the_future_get_401_naming_why,
);
