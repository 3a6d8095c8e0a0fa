//! HTTP/1.1 connection guard: the request stream checked before hyper parses it, the
//! client-side timeouts hyper does not offer, and the proxy's own answers in place of
//! hyper's automatic error responses.
//!
//! Every byte a client sends on an HTTP/1 connection passes through `H1Guard::poll_read`
//! and its `scan::Scanner`, which follows heads and body framing strictly (hyper's parser
//! is lenient). What it finds:
//!
//! - a bad head (CL with TE, a bare LF, obs-fold, too large, ...): hyper gets the bytes up
//!   to where that head starts, then a NUL byte (which no HTTP parser accepts) and an end
//!   of head. hyper so never sees that head and answers its automatic 400 in turn, after
//!   any earlier pipelined response; that 400 is replaced by ours (400, 431 or 501).
//! - a bad body (a chunk size like `5 5`): hyper gets the valid part, then the read fails
//!   (`InvalidData`), so the request body errors on its way upstream.
//! - a protocol-switch request (`Upgrade`, `CONNECT`): what follows is held back until the
//!   response is written; a switch makes the connection pass through, anything else
//!   resumes the scan.
//!
//! hyper 1.x has one `header_read_timeout` that also runs while a keep-alive connection
//! is idle, and it closes without a response. The guard tracks where the connection is
//! between requests, from the scanner and the writes:
//!
//! ```text
//! Fresh --bytes--> Head --head end--> Busy --write--> Idle --bytes--> Head ...
//!   |                |                                 |
//!   clientHeader:    clientHeader: 408, closed         idle: closed quietly
//!   closed quietly
//! ```
//!
//! HTTP/2 (prior knowledge, or ALPN `h2`) and switched connections pass through untouched.
//! Deadlines are checked only when hyper waits for client bytes, and the timer is moved
//! forward lazily, so a keep-alive request costs no timer re-registration.

mod scan;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::{Limits, Timeouts};
use crate::metrics::BackendCounters;
use crate::timer::LazyTimer;

pub use scan::{BodyError, HeadError, Scanner, Verdict};

/// The HTTP/2 connection preface (h2c prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What hyper gets in place of a refused head: a NUL, which no HTTP parser accepts
/// anywhere in a head, then an end of head, without which hyper waits for more instead of
/// parsing again.
const POISON: &[u8] = b"\0\r\n\r\n";

/// After refusing a request, how long and how much of what the client still sends is
/// read away before the close: closing with unread bytes makes the kernel reset the
/// connection, which can destroy the answer before the client reads it (nginx's
/// lingering close).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected, nothing read yet.
    Fresh,
    /// Part of a request head has arrived.
    Head,
    /// A whole head has arrived; the request is being served.
    Busy,
    /// A response has been (or is being) written; waiting for the next request.
    Idle,
    /// HTTP/2 or a switched connection: not HTTP/1.1 any more.
    Passthrough,
}

/// What the scanner stopped the connection for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// A bad head, cut short for hyper: our answer replaces hyper's 400.
    Head(HeadError),
    /// A bad body: every further read fails.
    Body(BodyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    No,
    /// To do at shutdown.
    Due,
    /// Our side is shut; reading away until EOF, the deadline or `left` bytes.
    Draining {
        until: Instant,
        left: usize,
    },
}

/// A protocol-switch request waiting for its response.
struct Switch {
    connect: bool,
    /// Behind another unanswered request: the first response written may not be its own,
    /// so the connection is never switched (and a body that looks like a 101 cannot
    /// turn the scan off).
    pipelined: bool,
    /// hyper's read, parked until the response is written.
    waker: Option<Waker>,
}

pub struct H1Guard<I> {
    io: I,
    phase: Phase,
    /// Start of the current phase, or the last activity seen in `Idle`.
    since: Instant,
    /// Written since `since` was last moved: activity that keeps an idle deadline away.
    wrote: bool,
    timer: LazyTimer,
    head_timeout: Duration,
    idle_timeout: Duration,
    scanner: Scanner,
    /// Bytes of the HTTP/2 preface matched so far while the first bytes still match it.
    preface: Option<usize>,
    switch: Option<Switch>,
    /// Bytes read after a protocol-switch request, handed on once its response decided.
    held: Vec<u8>,
    held_at: usize,
    stop: Stop,
    /// A response of ours being written, and how much of it is out.
    own: Option<(Vec<u8>, usize)>,
    /// After our 408: end the connection once it is written.
    close_after_own: bool,
    /// A refused request: read the rest away at shutdown (`LINGER_TIME`).
    linger: Linger,
    /// The series the proxy's own answers that reach no split are counted in.
    unrouted: Arc<BackendCounters>,
}

impl<I> H1Guard<I> {
    /// `http2`: ALPN chose HTTP/2, nothing to guard.
    pub fn new(
        io: I,
        timeouts: &Timeouts,
        limits: &Limits,
        http2: bool,
        unrouted: Arc<BackendCounters>,
    ) -> Self {
        let now = Instant::now();
        H1Guard {
            io,
            phase: if http2 {
                Phase::Passthrough
            } else {
                Phase::Fresh
            },
            since: now,
            wrote: false,
            timer: LazyTimer::new(now + timeouts.client_header),
            head_timeout: timeouts.client_header,
            idle_timeout: timeouts.idle,
            scanner: Scanner::new(limits),
            preface: (!http2).then_some(0),
            switch: None,
            held: Vec::new(),
            held_at: 0,
            stop: Stop::No,
            own: None,
            close_after_own: false,
            linger: Linger::No,
            unrouted,
        }
    }

    /// `first`: bytes already read from `io` (to tell HTTP/1 from the HTTP/2 preface),
    /// handed on and scanned before anything read after them.
    pub fn already_read(mut self, first: Vec<u8>) -> Self {
        self.held = first;
        self.held_at = 0;
        self
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Fresh | Phase::Head => Some(self.since + self.head_timeout),
            Phase::Idle => Some(self.since + self.idle_timeout),
            Phase::Busy | Phase::Passthrough => None,
        }
    }

    /// Check the bytes just read into `buf[before..]`; what hyper may not see is taken
    /// out of `buf` again. Ready(Ok) when `buf` has bytes for hyper.
    fn inspect(
        &mut self,
        buf: &mut ReadBuf<'_>,
        before: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let data = &buf.filled()[before..];
        let requests = self.scanner.requests();
        let mut verdict = Verdict::Pass;
        if let Some(matched) = self.preface {
            let n = data.len().min(H2_PREFACE.len() - matched);
            if data[..n] == H2_PREFACE[matched..matched + n] {
                if matched + n == H2_PREFACE.len() {
                    self.preface = None;
                    self.phase = Phase::Passthrough;
                } else {
                    self.preface = Some(matched + n);
                }
                return Poll::Ready(Ok(()));
            }
            self.preface = None;
            // what matched is the start of an HTTP/1 request, already handed on
            if let Verdict::Reject { error, .. } = self.scanner.feed(&H2_PREFACE[..matched]) {
                verdict = Verdict::Reject { at: 0, error };
            }
        }
        if verdict == Verdict::Pass {
            verdict = self.scanner.feed(data);
        }
        let keep = match verdict {
            Verdict::Pass => data.len(),
            Verdict::Switch { at, connect } => {
                let mut held = data[at..].to_vec();
                held.extend_from_slice(&self.held[self.held_at..]);
                self.held = held;
                self.held_at = 0;
                let pipelined = self.phase == Phase::Busy || self.scanner.requests() - requests > 1;
                self.switch = Some(Switch {
                    connect,
                    pipelined,
                    waker: None,
                });
                at
            }
            Verdict::Reject { at, error } => {
                tracing::debug!("request head refused: {}", error.reason());
                self.stop = Stop::Head(error);
                buf.set_filled(before + at);
                // the refused head has at least one byte in this read: room for the NUL
                self.held = POISON.to_vec();
                self.held_at = 0;
                self.serve_held(buf);
                self.track(requests);
                return Poll::Ready(Ok(()));
            }
            Verdict::BadBody { at, error } => {
                tracing::debug!("request body refused: {}", error.reason());
                self.stop = Stop::Body(error);
                self.linger = Linger::Due;
                at
            }
        };
        buf.set_filled(before + keep);
        self.track(requests);
        if keep > 0 {
            return Poll::Ready(Ok(()));
        }
        match (&mut self.switch, self.stop) {
            (_, Stop::Body(error)) => Poll::Ready(Err(body_error(error))),
            (Some(switch), _) => {
                switch.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            // unreachable: an empty keep is a switch or a body error
            (None, _) => Poll::Ready(Ok(())),
        }
    }

    /// Hand on what `held` still has, as much as `buf` takes.
    fn serve_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.held.len() - self.held_at);
        buf.put_slice(&self.held[self.held_at..self.held_at + n]);
        self.held_at += n;
        if self.held_at == self.held.len() {
            self.held = Vec::new();
            self.held_at = 0;
        }
    }

    /// Move the phase on after a scan that started with `requests` complete heads.
    fn track(&mut self, requests: u64) {
        match self.phase {
            Phase::Fresh | Phase::Idle | Phase::Head => {
                if self.scanner.requests() > requests {
                    self.phase = Phase::Busy;
                } else if self.scanner.in_head() && self.phase != Phase::Head {
                    self.phase = Phase::Head;
                    self.since = Instant::now();
                }
            }
            Phase::Busy | Phase::Passthrough => {}
        }
    }

    /// Returns true when the write starts a response: the idle clock starts then.
    fn on_write(&mut self, first: &[u8]) -> bool {
        if let Some(switch) = &self.switch {
            // the response to the switch request decides (1xx before it do not)
            if let Some(code) = status_code(first).filter(|c| *c == 101 || *c >= 200) {
                let switched = !switch.pipelined
                    && (code == 101 || (switch.connect && (200..300).contains(&code)));
                if switched {
                    self.phase = Phase::Passthrough;
                } else {
                    self.scanner.resume();
                }
                if let Some(waker) = self.switch.take().and_then(|s| s.waker) {
                    waker.wake();
                }
            }
        }
        match self.phase {
            Phase::Passthrough => false,
            Phase::Idle => {
                self.wrote = true;
                false
            }
            _ => {
                self.phase = Phase::Idle;
                self.since = Instant::now();
                self.wrote = false;
                true
            }
        }
    }

    /// Whether hyper's write is its automatic answer to a head it could not parse (or
    /// one we cut short), to be replaced by ours.
    fn replaces(&self, head: &[u8]) -> bool {
        self.own.is_none()
            && (matches!(self.stop, Stop::Head(_))
                || matches!(self.phase, Phase::Fresh | Phase::Head | Phase::Busy))
            && is_hyper_error(head)
    }

    /// Our answer in place of hyper's automatic one, counted like the proxy's others.
    fn own_answer(&mut self, hyper_head: &[u8]) {
        let (status, text) = match self.stop {
            Stop::Head(error) => (error.status(), error.reason()),
            _ => match hyper_head.get(9..12) {
                Some(b"431") => (431, "request header fields too large"),
                Some(b"414") => (414, "request URI too long"),
                _ => (400, "bad request: malformed HTTP/1.1 request"),
            },
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        self.count(status);
        self.own = Some((response(status, text), 0));
        self.linger = Linger::Due;
    }

    fn count(&self, status: StatusCode) {
        let began = if self.phase == Phase::Head {
            self.since.into_std()
        } else {
            std::time::Instant::now()
        };
        self.unrouted.record(status, began);
    }

    /// Make sure the timer will wake this connection's task by the current deadline.
    /// hyper may have polled for the next request head before it wrote the response, so
    /// the idle clock must be armed from the write side too.
    fn arm(&mut self, cx: &mut Context<'_>) {
        if let Some(deadline) = self.deadline() {
            if self.timer.deadline() > deadline || self.timer.is_elapsed() {
                self.timer.reset(deadline);
            }
            // registers the waker; the expiry itself is handled in poll_read
            let _ = self.timer.poll(cx);
        }
    }
}

fn body_error(error: BodyError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.reason())
}

/// The status of a response head `HTTP/1.x NNN ...`.
fn status_code(head: &[u8]) -> Option<u16> {
    if !(head.starts_with(b"HTTP/1.1 ") || head.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let digits = head.get(9..12)?;
    digits.iter().try_fold(0u16, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + (d - b'0') as u16)
    })
}

/// hyper's automatic answer to a request it could not parse: `HTTP/1.1 400|414|431`, then
/// exactly `connection: close` and `content-length: 0` (a relayed response never starts
/// so: hop-by-hop headers from upstream are removed before hyper writes).
fn is_hyper_error(head: &[u8]) -> bool {
    let Some(code) = head.get(9..12) else {
        return false;
    };
    if !head.starts_with(b"HTTP/1.1 ") || !matches!(code, b"400" | b"414" | b"431") {
        return false;
    }
    match head.windows(2).position(|w| w == b"\r\n") {
        Some(eol) => head[eol + 2..].starts_with(b"connection: close\r\ncontent-length: 0\r\n"),
        None => false,
    }
}

/// A whole response of ours: `status`, a one-line plain-text body, then close.
fn response(status: StatusCode, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nserver: splitproxy\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len() + 1
    )
    .into_bytes()
}

impl<I: AsyncRead + AsyncWrite + Unpin> H1Guard<I> {
    /// Write out `own`; Ready(Ok) once all of it is out.
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.own {
            if *done == bytes.len() {
                self.own = None;
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// hyper waits for client bytes: Pending, unless a deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut deadline) = self.deadline() else {
            return Poll::Pending;
        };
        if self.timer.deadline() <= deadline && self.timer.waits(cx) {
            // it wakes this task by the deadline, which is checked then: no clock read
            return Poll::Pending;
        }
        loop {
            if Instant::now() >= deadline {
                if self.phase == Phase::Idle && self.wrote {
                    // still writing a response: that is activity, not idleness
                    self.since = Instant::now();
                    self.wrote = false;
                    deadline = self.since + self.idle_timeout;
                    continue;
                }
                return self.expire(cx);
            }
            // the timer only ever needs to be moved earlier here; a later deadline
            // is checked when the earlier one fires
            if self.timer.deadline() > deadline || self.timer.is_elapsed() {
                self.timer.reset(deadline);
            }
            match self.timer.poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// A deadline passed while hyper waits for client bytes.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Head {
            tracing::debug!(
                "request head not complete within {:?}: 408",
                self.head_timeout
            );
            self.count(StatusCode::REQUEST_TIMEOUT);
            self.own = Some((
                response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request head not received in time",
                ),
                0,
            ));
            self.close_after_own = true;
            return self.poll_closing(cx);
        }
        // an idle keep-alive connection, or one that never sent a byte: close quietly (EOF)
        self.phase = Phase::Passthrough;
        Poll::Ready(Ok(()))
    }

    /// Shut our side, then read away what the client still sends (see `LINGER_TIME`).
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.linger {
                Linger::No => return Poll::Ready(Ok(())),
                Linger::Due => {
                    std::task::ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
                    self.linger = Linger::Draining {
                        until: Instant::now() + LINGER_TIME,
                        left: LINGER_BYTES,
                    };
                }
                Linger::Draining { until, left } => {
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            let left = left.saturating_sub(rb.filled().len());
                            self.linger = if left == 0 {
                                Linger::No
                            } else {
                                Linger::Draining { until, left }
                            };
                        }
                        // EOF, or an error: nothing more will come
                        Poll::Ready(_) => self.linger = Linger::No,
                        Poll::Pending => {
                            if Instant::now() >= until {
                                self.linger = Linger::No;
                                continue;
                            }
                            self.timer.reset(until);
                            if self.timer.poll(cx).is_ready() {
                                self.linger = Linger::No;
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }

    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_own(cx) {
            Poll::Ready(_) => {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close_after_own {
            return this.poll_closing(cx);
        }
        match this.stop {
            // the rest of the poison, then EOF: hyper answers the head cut short, and closes
            Stop::Head(_) => {
                if this.held_at < this.held.len() {
                    this.serve_held(buf);
                }
                return Poll::Ready(Ok(()));
            }
            Stop::Body(error) => return Poll::Ready(Err(body_error(error))),
            Stop::No => {}
        }
        if let Some(switch) = &mut this.switch {
            // what follows a protocol-switch request waits for its response
            switch.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if this.held_at < this.held.len() {
            this.serve_held(buf);
        } else {
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_deadline(cx),
            }
        }
        if buf.filled().len() == before || this.phase == Phase::Passthrough {
            // EOF, or not HTTP/1 any more
            return Poll::Ready(Ok(()));
        }
        this.inspect(buf, before, cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H1Guard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaces(buf) {
            this.own_answer(buf);
        }
        if this.own.is_some() {
            // hyper's bytes are swallowed once ours are out
            return match this.poll_own(cx) {
                Poll::Ready(Ok(())) => {
                    this.phase = Phase::Passthrough;
                    Poll::Ready(Ok(buf.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        if this.on_write(buf) {
            this.arm(cx);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map(|b| &b[..])
            .unwrap_or(&[]);
        if this.own.is_none() && !this.replaces(first) {
            if this.on_write(first) {
                this.arm(cx);
            }
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // rare: an error response of ours; fall back to the single-buffer path
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger == Linger::No {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        }
        this.poll_linger(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn guard(io: DuplexStream) -> H1Guard<DuplexStream> {
        let timeouts = Timeouts {
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            ..Timeouts::default()
        };
        H1Guard::new(
            io,
            &timeouts,
            &Limits::default(),
            false,
            Arc::new(BackendCounters::default()),
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// What the guard hands on for `input`, read until it stops handing bytes on.
    async fn handed_on(g: &mut H1Guard<DuplexStream>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(50), g.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn a_bad_head_is_cut_short_and_hypers_400_replaced() {
        rt().block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = guard(server);
            let ok = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
            let bad = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
            client
                .write_all(format!("{ok}{bad}").as_bytes())
                .await
                .unwrap();
            let got = handed_on(&mut g).await;
            // the good request, then the NUL that stops hyper's parse of the bad one
            assert_eq!(got, format!("{ok}\0\r\n\r\n").as_bytes());
            g.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
                .await
                .unwrap();
            drop(g);
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\nserver: splitproxy\r\n")
                    && answer.ends_with("both Content-Length and Transfer-Encoding\n"),
                "{answer}"
            );
        });
    }

    #[test]
    fn a_bad_chunk_fails_the_read_after_the_valid_part() {
        rt().block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = guard(server);
            let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
            client
                .write_all(format!("{head}5 5\r\nhello\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = g.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], format!("{head}5 ").as_bytes());
            let e = g.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn bytes_after_an_upgrade_wait_for_the_response() {
        rt().block_on(async {
            for (status, switched) in [("101 Switching Protocols", true), ("200 OK", false)] {
                let (mut client, server) = tokio::io::duplex(1 << 16);
                let mut g = guard(server);
                let head = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
                client
                    .write_all(&[head.as_bytes(), b"\x81\x02h\n"].concat())
                    .await
                    .unwrap();
                assert_eq!(handed_on(&mut g).await, head.as_bytes());
                g.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let rest = handed_on(&mut g).await;
                if switched {
                    // passed through as they came
                    assert_eq!(rest, b"\x81\x02h\n");
                } else {
                    // scanned as the next request: not HTTP, cut short
                    assert_eq!(rest, POISON);
                }
            }
        });
    }

    #[test]
    fn the_h2_preface_passes_and_its_look_alikes_are_scanned() {
        rt().block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = guard(server);
            // split inside the preface
            client.write_all(&H2_PREFACE[..2]).await.unwrap();
            assert_eq!(handed_on(&mut g).await, &H2_PREFACE[..2]);
            client.write_all(&H2_PREFACE[2..]).await.unwrap();
            client.write_all(b"\x00\x00\x00garbage").await.unwrap();
            assert_eq!(
                handed_on(&mut g).await,
                b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00garbage"
            );
            assert_eq!(g.phase, Phase::Passthrough);

            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = guard(server);
            client.write_all(b"PR").await.unwrap();
            handed_on(&mut g).await;
            client
                .write_all(b"I /x HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(handed_on(&mut g).await, b"I /x HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(g.phase, Phase::Busy);
        });
    }

    #[test]
    fn phases_follow_heads_and_writes() {
        rt().block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = guard(server);
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r")
                .await
                .unwrap();
            handed_on(&mut g).await;
            assert_eq!(g.phase, Phase::Head);
            client.write_all(b"\n\r\n").await.unwrap();
            handed_on(&mut g).await;
            assert_eq!(g.phase, Phase::Busy);
            g.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            assert_eq!(g.phase, Phase::Idle);
            // a body that looks like a switch does not switch anything
            g.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(g.phase, Phase::Idle);
            client
                .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            handed_on(&mut g).await;
            assert_eq!(g.phase, Phase::Busy);
        });
    }

    #[test]
    fn hyper_errors_get_our_body() {
        assert!(is_hyper_error(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n"));
        assert!(!is_hyper_error(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n"
        ));
        assert!(!is_hyper_error(
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n"
        ));
        let r = String::from_utf8(response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
        ))
        .unwrap();
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n")
                && r.contains("server: splitproxy")
                && r.ends_with("too large\n"),
            "{r}"
        );
        assert_eq!(status_code(b"HTTP/1.1 101 Switching"), Some(101));
        assert_eq!(status_code(b"HTTP/1.0 204 "), Some(204));
        assert_eq!(status_code(b"HTTP/1.1 1x1"), None);
        assert_eq!(status_code(b"hello"), None);
    }
}
