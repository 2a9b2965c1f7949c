//! The connection edge: what a client may cost before a request reaches the router.
//!
//! hyper answers an oversized request head itself (a bare 431 or 414 with no body) and, by
//! default, never closes a connection that sends nothing. So every accepted socket is wrapped
//! in a [`Guarded`] stream that reads the request head as it arrives and
//!
//! - closes a connection whose head is not complete within `head_timeout` of its first byte
//!   (slowloris), or that sits idle — no request under way and no byte moving — for
//!   `idle_timeout` (including a client that stops reading a response);
//! - refuses a request target longer than `max_uri_bytes` (414), a head larger than
//!   `max_head_bytes` or with more than `max_headers` fields (431) with a problem document of
//!   its own, before hyper's larger limits are reached.
//!
//! While a request is being served (its head read, its response not started) nothing here
//! times out: a long chat turn is not idle. Half-open peers during that time are found by TCP
//! keepalive, set on accept. Only HTTP/1.1 is served: the head reader speaks nothing else.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::config::EdgeLimits;
use crate::error::PROBLEM_JSON;

/// How long a refused client gets to stop sending before the socket closes: closing with
/// unread input makes the kernel send a reset, which can destroy the refusal before the
/// client has read it.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own head limits refuse first; hyper's buffer only has to hold what they allow. Its
    // header timer is off: it would also close idle keep-alive connections at the head
    // timeout, and the edge times both itself.
    http.header_read_timeout(None)
        .max_buf_size((limits.max_head_bytes + 64 * 1024).max(64 * 1024))
        .max_headers(limits.max_headers + 8)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tune(&tcp, &limits);
        let io = TokioIo::new(Guarded::new(tcp, limits.clone()));
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// TCP_NODELAY (stream events and small responses go out at once instead of waiting behind
/// Nagle's algorithm for the peer's delayed ACK) and keepalive probes.
fn tune(tcp: &TcpStream, limits: &EdgeLimits) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Some(idle) = limits.tcp_keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10).min(idle));
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// Where a connection is in its request/response cycle, as far as the edge can tell.
#[derive(Debug)]
enum Phase {
    /// No request under way: a new connection, or one whose last response has started.
    Idle,
    /// A request head is arriving.
    Head(HeadReader),
    /// A request is being served: its head is complete and its response has not started.
    Busy,
    /// Refusing the request: writing our response, then discarding input until [`LINGER`].
    Refusing {
        out: Vec<u8>,
        written: usize,
        until: Instant,
        discarded: usize,
    },
}

/// Counts a request head's bytes, lines and target length as they arrive.
#[derive(Debug)]
struct HeadReader {
    started: Instant,
    bytes: usize,
    /// Complete lines so far (the request line, then one per header field).
    lines: usize,
    /// Bytes of the current line, CR excluded.
    line_len: usize,
    /// Spaces seen on the request line: the target lies after the first and before the second.
    spaces: u8,
    target_len: usize,
    /// The start of the current line, lowercased: enough to read the body's framing.
    line: Vec<u8>,
    /// The body that follows the head, as its headers frame it.
    body: Body,
}

/// How much request body follows a head, so the next request's head is found after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// This many bytes (`Content-Length`, or none).
    Left(u64),
    /// Chunked or otherwise unknown: the rest of the connection is not inspected.
    Unknown,
}

/// How much of a header line is kept to read `Content-Length` / `Transfer-Encoding`.
const FRAMING_LINE: usize = 48;

/// What one byte of a head means.
enum Step {
    More,
    Done,
    Refuse(u16, String),
}

impl HeadReader {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            bytes: 0,
            lines: 0,
            line_len: 0,
            spaces: 0,
            target_len: 0,
            line: Vec::new(),
            body: Body::Left(0),
        }
    }

    /// Reads the body's framing from a complete header line.
    fn header_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = String::from_utf8_lossy(value);
        match name.trim_ascii() {
            b"content-length" if self.body != Body::Unknown => {
                self.body = value.trim().parse().map_or(Body::Unknown, Body::Left);
            }
            b"transfer-encoding" => self.body = Body::Unknown,
            _ => {}
        }
    }

    fn push(&mut self, b: u8, limits: &EdgeLimits) -> Step {
        self.bytes += 1;
        if self.bytes > limits.max_head_bytes {
            return Step::Refuse(
                431,
                format!(
                    "the request head (request line and headers) is larger than {} bytes",
                    limits.max_head_bytes
                ),
            );
        }
        match b {
            b'\n' if self.line_len == 0 && self.lines == 0 => {
                // An empty line before the request line is tolerated (RFC 9112 §2.2).
            }
            b'\n' if self.line_len == 0 => return Step::Done,
            b'\n' => {
                if self.lines > 0 {
                    self.header_line();
                }
                self.line.clear();
                self.lines += 1;
                self.line_len = 0;
                if self.lines > limits.max_headers + 1 {
                    return Step::Refuse(
                        431,
                        format!(
                            "the request has more than {} header fields",
                            limits.max_headers
                        ),
                    );
                }
            }
            b'\r' => {}
            _ => {
                self.line_len += 1;
                if self.lines > 0 && self.line.len() < FRAMING_LINE {
                    self.line.push(b.to_ascii_lowercase());
                }
                if self.lines == 0 {
                    if b == b' ' {
                        self.spaces = self.spaces.saturating_add(1);
                    } else if self.spaces == 1 {
                        self.target_len += 1;
                        if self.target_len > limits.max_uri_bytes {
                            return Step::Refuse(
                                414,
                                format!(
                                    "the request target (path and query) is longer than {} bytes",
                                    limits.max_uri_bytes
                                ),
                            );
                        }
                    }
                }
            }
        }
        Step::More
    }
}

/// A socket that enforces [`EdgeLimits`] on the bytes hyper reads and writes.
pub struct Guarded<S> {
    inner: S,
    limits: Arc<EdgeLimits>,
    phase: Phase,
    /// Request body bytes still to come before another head can start.
    body: Body,
    /// The last time a byte moved either way.
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: Arc<EdgeLimits>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            phase: Phase::Idle,
            body: Body::Left(0),
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
        }
    }

    /// When reading gives up, if the phase has a deadline.
    fn read_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle => Some(self.last_activity + self.limits.idle_timeout),
            Phase::Head(h) => Some(h.started + self.limits.head_timeout),
            Phase::Busy => None,
            Phase::Refusing { until, .. } => Some(*until),
        }
    }

    /// Whether `deadline` has passed; if not, the task is woken when it does.
    fn expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// Feeds newly read bytes to the head reader (past any request body they continue);
    /// returns whether the head they belong to is refused.
    fn inspect(&mut self, mut bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        self.last_activity = Instant::now();
        loop {
            if !matches!(self.phase, Phase::Head(_)) {
                // Body bytes of the request under way (or of one answered before it was read).
                match &mut self.body {
                    Body::Unknown => return false,
                    Body::Left(left) => {
                        let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                        *left -= n as u64;
                        bytes = &bytes[n..];
                    }
                }
                // Bytes beyond the body while a request is still served (pipelining) are left
                // to hyper's own limits.
                if bytes.is_empty() || !matches!(self.phase, Phase::Idle) {
                    return false;
                }
                self.phase = Phase::Head(HeadReader::new());
            }
            let Phase::Head(head) = &mut self.phase else {
                return false;
            };
            let mut end = None;
            for (i, &b) in bytes.iter().enumerate() {
                match head.push(b, &self.limits) {
                    Step::More => {}
                    Step::Done => {
                        end = Some((i + 1, head.body));
                        break;
                    }
                    Step::Refuse(status, detail) => {
                        tracing::info!(status, %detail, "request head refused");
                        self.phase = Phase::Refusing {
                            out: refusal(status, &detail),
                            written: 0,
                            until: Instant::now() + LINGER,
                            discarded: 0,
                        };
                        return true;
                    }
                }
            }
            let Some((end, body)) = end else {
                return false;
            };
            self.body = body;
            self.phase = Phase::Busy;
            bytes = &bytes[end..];
            if bytes.is_empty() {
                return false;
            }
        }
    }
}

/// A complete HTTP/1.1 response carrying a problem document; the connection closes after it.
fn refusal(status: u16, detail: &str) -> Vec<u8> {
    let code =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let title = code.canonical_reason().unwrap_or("Bad Request");
    let slug = match status {
        414 => "uri-too-long",
        431 => "header-fields-too-large",
        _ => "bad-request",
    };
    let body = serde_json::json!({
        "type": format!("/problems/{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
    .to_string();
    format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the refusal, shuts our side, then discards input until the client closes or
    /// [`LINGER`] passes. Never yields bytes to hyper.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Refusing {
                out,
                written,
                until,
                discarded,
            } = &mut self.phase
            else {
                return Poll::Ready(Ok(()));
            };
            let until = *until;
            if *written < out.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &out[*written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        *written += n;
                        if *written == out.len() {
                            // Our side is done: the client sees the response, then EOF.
                            let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else if *discarded < LINGER_BYTES {
                let mut scratch = [0u8; 8192];
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "request head refused",
                        )));
                    }
                    Poll::Ready(Ok(())) => {
                        *discarded += buf.filled().len();
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.expired(until, cx)
                || matches!(&self.phase, Phase::Refusing { discarded, .. } if *discarded >= LINGER_BYTES)
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "request head refused",
                )));
            }
            return Poll::Pending;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Refusing { .. }) {
            ready!(this.poll_refuse(cx))?;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                if this.inspect(&new) {
                    // Hyper must not answer the refused head itself: it sees none of it.
                    buf.set_filled(before);
                    return match this.poll_refuse(cx) {
                        Poll::Ready(r) => Poll::Ready(r.and(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "request head refused",
                        )))),
                        Poll::Pending => Poll::Pending,
                    };
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.read_deadline() {
                Some(deadline) if this.expired(deadline, cx) => {
                    Poll::Ready(Err(timed_out(match this.phase {
                        Phase::Head(_) => "request head not complete in time",
                        _ => "idle connection",
                    })))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_activity = Instant::now();
                    // A response has started (an interim `100 Continue` leaves the request
                    // under way): the connection is idle again unless the client sends more.
                    if matches!(this.phase, Phase::Busy) && !buf.starts_with(b"HTTP/1.1 100 ") {
                        this.phase = Phase::Idle;
                        // hyper reads again only when woken: have it poll `poll_read` now, which
                        // arms the idle timer.
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // A client that stops reading is idle, too.
                let deadline = this.last_activity + this.limits.idle_timeout;
                if this.expired(deadline, cx) {
                    Poll::Ready(Err(timed_out("client stopped reading")))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Through `poll_write`, so the phase sees the response start.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(head: &[u8], limits: &EdgeLimits) -> Option<(u16, String)> {
        let mut r = HeadReader::new();
        for &b in head {
            match r.push(b, limits) {
                Step::More => {}
                Step::Done => return None,
                Step::Refuse(s, d) => return Some((s, d)),
            }
        }
        Some((0, "incomplete".into()))
    }

    #[test]
    fn the_head_reader_finds_the_end_and_refuses_what_is_too_long_or_too_many() {
        let limits = EdgeLimits {
            max_uri_bytes: 10,
            max_head_bytes: 200,
            max_headers: 2,
            ..EdgeLimits::default()
        };
        assert_eq!(
            feed(b"\r\nGET /012345678 HTTP/1.1\r\nHost: x\r\n\r\n", &limits),
            None
        );
        assert_eq!(feed(b"GET /012345678 HTTP/1.1\nHost: x\n\n", &limits), None);
        assert_eq!(
            feed(b"GET /0123456789a HTTP/1.1\r\n", &limits).unwrap().0,
            414
        );
        assert_eq!(
            feed(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", &limits)
                .unwrap()
                .0,
            431
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "y".repeat(200));
        assert_eq!(feed(long.as_bytes(), &limits).unwrap().0, 431);
        assert_eq!(
            feed(b"GET / HTTP/1.1\r\nHost: x\r\n", &limits).unwrap().0,
            0
        );
    }

    #[tokio::test]
    async fn the_next_head_is_looked_for_after_the_body_its_headers_announce() {
        let limits = Arc::new(EdgeLimits {
            max_head_bytes: 64,
            ..EdgeLimits::default()
        });
        let mut g = Guarded::new((), limits);
        // A head, 70 bytes of body (larger than a head may be), then the next head.
        let body = "x".repeat(70);
        let req = format!("POST / HTTP/1.1\r\nContent-Length: 70\r\n\r\n{body}GET / HTTP/1.1\r\n");
        assert!(!g.inspect(req.as_bytes()));
        assert!(matches!(g.phase, Phase::Busy), "{:?}", g.phase);
        g.phase = Phase::Idle; // the response started
        assert!(!g.inspect(b"GET / HTTP/1.1\r\n"));
        assert!(matches!(g.phase, Phase::Head(_)));
        // Chunked: the rest of the connection is not inspected.
        let mut g = Guarded::new((), Arc::new(EdgeLimits::default()));
        assert!(!g.inspect(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        g.phase = Phase::Idle;
        assert!(!g.inspect(&[b'z'; 100_000]));
        assert!(matches!(g.phase, Phase::Idle));
    }

    #[test]
    fn a_refusal_is_a_complete_problem_response() {
        let r = String::from_utf8(refusal(431, "too big")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        assert_eq!(v["detail"], "too big");
    }
}
