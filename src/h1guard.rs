//! HTTP/1.1 connection guard: the client-side timeouts hyper does not offer, and the
//! proxy's own bodies for hyper's automatic error responses.
//!
//! hyper 1.x has one `header_read_timeout` that also runs while a keep-alive connection
//! is idle, and it closes without a response. This wrapper around the downstream IO tracks
//! where the connection is between requests, from the bytes that pass:
//!
//! ```text
//! Fresh --bytes--> Head --"\r\n\r\n"--> Busy --write--> Idle --bytes--> Head ...
//!   |                |                                   |
//!   clientHeader:    clientHeader: 408, closed           idle: closed quietly
//!   closed quietly
//! ```
//!
//! A write while a head is incomplete can only be hyper's automatic 400/414/431: it is
//! replaced by the same status with a plain-text body and `server: splitproxy`. HTTP/2
//! (prior knowledge, or ALPN `h2`) and upgraded connections pass through untouched.
//! Deadlines are checked only when hyper waits for client bytes, and the timer is moved
//! forward lazily, so a keep-alive request costs no timer re-registration.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
    /// HTTP/2 or an upgraded connection: not HTTP/1.1 any more.
    Passthrough,
}

pub struct H1Guard<I> {
    io: I,
    phase: Phase,
    /// Start of the current phase, or the last activity seen in `Idle`.
    since: Instant,
    /// Written since `since` was last moved: activity that keeps an idle deadline away.
    wrote: bool,
    /// Position in the `\r\n\r\n` that ends a head.
    crlf: u8,
    timer: Pin<Box<Sleep>>,
    head_timeout: Duration,
    idle_timeout: Duration,
    /// A response of ours being written, and how much of it is out.
    own: Option<(Vec<u8>, usize)>,
    /// After our 408: end the connection once it is written.
    close_after_own: bool,
}

impl<I> H1Guard<I> {
    pub fn new(io: I, head_timeout: Duration, idle_timeout: Duration, http2: bool) -> Self {
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
            crlf: 0,
            timer: Box::pin(tokio::time::sleep_until(now + head_timeout)),
            head_timeout,
            idle_timeout,
            own: None,
            close_after_own: false,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Fresh | Phase::Head => Some(self.since + self.head_timeout),
            Phase::Idle => Some(self.since + self.idle_timeout),
            Phase::Busy | Phase::Passthrough => None,
        }
    }

    fn on_read(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.phase {
            Phase::Passthrough | Phase::Busy => return,
            // the HTTP/2 connection preface (h2c prior knowledge) starts with "PRI"
            Phase::Fresh if data.starts_with(b"PRI") => {
                self.phase = Phase::Passthrough;
                return;
            }
            Phase::Fresh | Phase::Idle => {
                self.phase = Phase::Head;
                self.since = Instant::now();
                self.crlf = 0;
            }
            Phase::Head => {}
        }
        if self.head_ends_in(data) {
            self.phase = Phase::Busy;
        }
    }

    /// Whether `data` completes the `\r\n\r\n` that ends a head, with `crlf` carrying a
    /// partial match across reads. A SIMD search does the bulk: a head is read once more
    /// here after the kernel's copy, so a byte-at-a-time walk would cost more than hyper's
    /// own parse.
    fn head_ends_in(&mut self, data: &[u8]) -> bool {
        let mut rest = data;
        // finish (or drop) a match that the previous read left open
        while self.crlf != 0 {
            let Some((&b, tail)) = rest.split_first() else {
                return false;
            };
            self.crlf = step(self.crlf, b);
            if self.crlf == 4 {
                return true;
            }
            rest = tail;
        }
        if memchr::memmem::find(rest, b"\r\n\r\n").is_some() {
            return true;
        }
        self.crlf = [&b"\r\n\r"[..], b"\r\n", b"\r"]
            .iter()
            .position(|end| rest.ends_with(end))
            .map_or(0, |i| 3 - i as u8);
        false
    }

    /// Returns true when the write starts a response: the idle clock starts then.
    fn on_write(&mut self, first: &[u8]) -> bool {
        match self.phase {
            Phase::Passthrough => false,
            _ if first.starts_with(b"HTTP/1.1 101") || first.starts_with(b"HTTP/1.0 101") => {
                self.phase = Phase::Passthrough;
                false
            }
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

    /// Make sure the timer will wake this connection's task by the current deadline.
    /// hyper may have polled for the next request head before it wrote the response, so
    /// the idle clock must be armed from the write side too.
    fn arm(&mut self, cx: &mut Context<'_>) {
        if let Some(deadline) = self.deadline() {
            if self.timer.deadline() > deadline || self.timer.is_elapsed() {
                self.timer.as_mut().reset(deadline);
            }
            // registers the waker; the expiry itself is handled in poll_read
            let _ = self.timer.as_mut().poll(cx);
        }
    }
}

/// One byte of the `\r\n\r\n` matcher: how much of it ends at `b`.
fn step(crlf: u8, b: u8) -> u8 {
    match (crlf, b) {
        (1, b'\n') | (3, b'\n') => crlf + 1,
        (0, b'\r') | (2, b'\r') => crlf + 1,
        (_, b'\r') => 1,
        _ => 0,
    }
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

/// The proxy's version of an automatic hyper error response (`HTTP/1.1 4xx ...`).
fn own_response(hyper_head: &[u8]) -> Vec<u8> {
    let code = hyper_head.get(9..12).unwrap_or(b"400");
    let (status, text) = match code {
        b"431" => (
            "431 Request Header Fields Too Large",
            "request header fields too large",
        ),
        b"414" => ("414 URI Too Long", "request URI too long"),
        _ => ("400 Bad Request", "bad request: malformed HTTP/1.1 request"),
    };
    response(status, text)
}

fn response(status: &str, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nserver: splitproxy\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}\n",
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

    /// A deadline passed while hyper waits for client bytes.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Head {
            tracing::debug!(
                "request head not complete within {:?}: 408",
                self.head_timeout
            );
            self.own = Some((
                response("408 Request Timeout", "request head not received in time"),
                0,
            ));
            self.close_after_own = true;
            return self.poll_closing(cx);
        }
        // an idle keep-alive connection, or one that never sent a byte: close quietly (EOF)
        self.phase = Phase::Passthrough;
        Poll::Ready(Ok(()))
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
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(mut deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                loop {
                    if Instant::now() >= deadline {
                        if this.phase == Phase::Idle && this.wrote {
                            // still writing a response: that is activity, not idleness
                            this.since = Instant::now();
                            this.wrote = false;
                            deadline = this.since + this.idle_timeout;
                            continue;
                        }
                        return this.expire(cx);
                    }
                    // the timer only ever needs to be moved earlier here; a later deadline
                    // is checked when the earlier one fires
                    if this.timer.deadline() > deadline || this.timer.is_elapsed() {
                        this.timer.as_mut().reset(deadline);
                    }
                    match this.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => continue,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H1Guard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.own.is_none()
            && matches!(this.phase, Phase::Fresh | Phase::Head | Phase::Busy)
            && is_hyper_error(buf)
        {
            this.own = Some((own_response(buf), 0));
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
        if this.own.is_none()
            && !(matches!(this.phase, Phase::Fresh | Phase::Head | Phase::Busy)
                && is_hyper_error(first))
        {
            if this.on_write(first) {
                this.arm(cx);
            }
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // rare: an error response during a head; fall back to the single-buffer path
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast scan agrees with the byte-at-a-time matcher for every way of splitting
    /// these inputs into two or three reads.
    #[test]
    fn head_end_scan_matches_the_byte_matcher_at_every_split() {
        let inputs: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /u HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
            b"GET / HTTP/1.1\r\nX: \r\r\n\r\r\n\n",
            b"GET / HTTP/1.1\r\nX: a\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\r\r\n\r\r\n\r\n",
        ];
        let naive = |parts: &[&[u8]]| {
            let mut crlf = 0;
            parts.iter().flat_map(|p| p.iter()).any(|&b| {
                crlf = step(crlf, b);
                crlf == 4
            })
        };
        let fast = |parts: &[&[u8]]| {
            let mut g = H1Guard::new((), Duration::from_secs(1), Duration::from_secs(1), false);
            g.phase = Phase::Head;
            parts.iter().any(|p| g.head_ends_in(p))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            for input in inputs {
                for i in 0..=input.len() {
                    for j in i..=input.len() {
                        let parts = [&input[..i], &input[i..j], &input[j..]];
                        assert_eq!(fast(&parts), naive(&parts), "{input:?} split at {i}, {j}");
                    }
                }
            }
        });
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut g = H1Guard::new((), Duration::from_secs(1), Duration::from_secs(1), false);
            g.on_read(b"GET / HTTP/1.1\r\nHost: a\r");
            assert_eq!(g.phase, Phase::Head);
            g.on_read(b"\n\r");
            assert_eq!(g.phase, Phase::Head);
            g.on_read(b"\n");
            assert_eq!(g.phase, Phase::Busy);
            g.on_write(b"HTTP/1.1 200 OK\r\n");
            assert_eq!(g.phase, Phase::Idle);
            g.on_read(b"GET /next HTTP/1.1\r\n\r\n");
            assert_eq!(g.phase, Phase::Busy);
            g.on_write(b"HTTP/1.1 101 Switching Protocols\r\n");
            assert_eq!(g.phase, Phase::Passthrough);
            let mut h2 = H1Guard::new((), Duration::from_secs(1), Duration::from_secs(1), false);
            h2.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            assert_eq!(h2.phase, Phase::Passthrough);
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
        let r = String::from_utf8(own_response(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        ))
        .unwrap();
        assert!(
            r.starts_with("HTTP/1.1 431 ")
                && r.contains("server: splitproxy")
                && r.ends_with("too large\n"),
            "{r}"
        );
    }
}
