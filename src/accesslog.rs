//! The access log (`spec.accessLog: json`) and the request id (`x-request-id`).
//!
//! ```text
//! proxy::handle   Pending::start: an Entry of cheap clones (method, URI, Host, id,
//!                 identity), no strings; then the endpoint and the tries
//!   proxy::answer status, split/backend labels (one Arc)
//!   LogBody       counts the response bytes; at the body's end (or drop) the entry goes
//!                 to Sink::send: try_send on a bounded channel, dropped and counted when full
//! writer thread   formats JSON lines into a BufWriter on stdout, flushes when the queue is
//!                 momentarily empty
//! ```
//!
//! The writer is an OS thread, not a task: a stdout pipe nobody reads blocks it in
//! `write`, and then only the queue fills (lines are dropped and counted in
//! `splitproxy_access_log_dropped_total`); requests, admin and reloads never wait for it.
//! With `accessLog: off` a request makes no entry: its cost is the branch on the flag.

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, Entry as HeaderEntry};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Labels;
use crate::proxy::ConnInfo;
use crate::response::Body;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Lines that may wait for the writer; beyond, they are dropped (and counted).
/// `SPLITPROXY_ACCESS_LOG_QUEUE` sets another length.
pub const QUEUE: usize = 4096;

/// The longest client `x-request-id` kept (bytes).
pub const MAX_REQUEST_ID: usize = 200;

// === request id ===

/// The id of one request: the client's valid `x-request-id`, or a new UUID v4.
#[derive(Debug, Clone)]
pub enum RequestId {
    Client(HeaderValue),
    New([u8; 36]),
}

impl RequestId {
    /// The client's first `x-request-id` when it is valid, else a new one.
    pub fn of(headers: &HeaderMap) -> RequestId {
        match headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => RequestId::Client(v.clone()),
            _ => RequestId::New(uuid_v4()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v.as_bytes(),
            RequestId::New(b) => b,
        }
    }
}

/// A client's request id is kept when it is 1..=200 bytes of visible ASCII (`!` to `~`)
/// without a comma: no space, control byte or list separator, so it reads the same in a
/// header, a log line and a shell.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.iter().all(|b| matches!(b, b'!'..=b'~') && *b != b',')
}

/// Settle a forwarded request's `x-request-id`: the client's first value when valid (any
/// further lines removed; `present` says the request has the header at all, from the one
/// pass over its names that `proxy::prepare_request` makes), else a new id, returned
/// rather than put in `headers`: the HTTP/1.1 upstream writes it straight into the head
/// (no value allocated), the HTTP/2 one inserts it. The new id is `chosen` (the one the
/// access log already took) or a fresh UUID.
pub fn request_id(
    headers: &mut HeaderMap,
    present: bool,
    chosen: Option<[u8; 36]>,
) -> Option<[u8; 36]> {
    let fresh = || Some(chosen.unwrap_or_else(uuid_v4));
    if !present {
        return fresh();
    }
    match headers.entry(&X_REQUEST_ID) {
        HeaderEntry::Occupied(mut o) => {
            if valid_request_id(o.get().as_bytes()) {
                if o.iter().nth(1).is_some() {
                    let first = o.get().clone();
                    o.insert(first);
                }
                None
            } else {
                o.remove();
                fresh()
            }
        }
        HeaderEntry::Vacant(_) => fresh(),
    }
}

/// The id `request_id` returned, as a header value (for HTTP/2 upstreams).
pub fn request_id_value(id: &[u8; 36]) -> HeaderValue {
    // 36 bytes of [0-9a-f-]: always a valid value
    HeaderValue::from_bytes(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A random (version 4) UUID in its 36-character text form, from the thread's fast
/// generator (`split::with_rng`).
pub fn uuid_v4() -> [u8; 36] {
    let mut bytes = crate::split::with_rng(rand::Rng::random::<u128>).to_be_bytes();
    // version 4 in the high nibble of byte 6, variant 10 in the top bits of byte 8
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // where each byte's two digits go in 8-4-4-4-12 (a byte at a time: this runs on every
    // request without an id, and a loop of variable u128 shifts cost ~900 instructions)
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [b'-'; 36];
    for (b, at) in bytes.iter().zip(AT) {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

// === entries ===

/// What the log line of one request needs, taken on the request task as reference-counted
/// clones and plain values; formatted on the writer thread.
#[derive(Debug)]
pub struct Entry {
    started: Instant,
    id: RequestId,
    method: Method,
    /// Normalised path and query (and, for HTTP/2 or absolute-form, the authority).
    uri: Uri,
    /// `Host`, when the URI has no authority.
    host: Option<HeaderValue>,
    identity: Option<Arc<str>>,
    /// Request body bytes read from the client, counted by the upstream request body;
    /// `None` for a request without a body.
    received: Option<Arc<AtomicU64>>,
    /// The series the request is counted in: its split and backend.
    labels: Option<Arc<Labels>>,
    endpoint: Option<SocketAddr>,
    status: u16,
    tries: u32,
    sent: u64,
    duration: Duration,
}

impl Entry {
    /// The request's side of its line.
    pub fn start<B: http_body::Body>(
        req: &Request<B>,
        conn: &ConnInfo,
        started: Instant,
    ) -> Box<Entry> {
        let uri = req.uri().clone();
        let host = match uri.authority() {
            Some(_) => None,
            None => req.headers().get(header::HOST).cloned(),
        };
        Box::new(Entry {
            started,
            id: RequestId::of(req.headers()),
            method: req.method().clone(),
            uri,
            host,
            identity: conn.spiffe.clone(),
            received: (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0))),
            labels: None,
            endpoint: None,
            status: 0,
            tries: 0,
            sent: 0,
            duration: Duration::ZERO,
        })
    }

    /// Where the request went: the last endpoint tried and the number of tries.
    pub fn upstream(&mut self, endpoint: Option<SocketAddr>, tries: u32) {
        self.endpoint = endpoint;
        self.tries = tries;
    }

    /// The answer's head: its status and the series (split, backend) it is counted in.
    pub fn answered(&mut self, status: http::StatusCode, labels: &Arc<Labels>) {
        self.status = status.as_u16();
        // usually the series `routed` took already: no second reference count
        if !self.labels.as_ref().is_some_and(|l| Arc::ptr_eq(l, labels)) {
            self.labels = Some(labels.clone());
        }
    }
}

/// What the writer thread is given: a line to write, or a request to say when everything
/// before it is written and flushed.
enum Job {
    Line(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

/// Where finished entries go: the bounded queue to the writer thread.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Job>,
    dropped: Counter,
}

impl Sink {
    /// Start the writer thread on stdout, with a queue of `SPLITPROXY_ACCESS_LOG_QUEUE`
    /// entries (default `QUEUE`).
    pub fn stdout(dropped: Counter) -> std::io::Result<Sink> {
        let queue = std::env::var("SPLITPROXY_ACCESS_LOG_QUEUE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(QUEUE);
        Self::start(std::io::stdout(), queue, dropped)
    }

    /// Start the writer thread on `out`, with a queue of `queue` entries.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        queue: usize,
        dropped: Counter,
    ) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("splitproxy-access-log".into())
            .spawn(move || write_lines(rx, out, counter))?;
        Ok(Sink { tx, dropped })
    }

    /// Queue a finished entry; never waits: a full queue drops the line and counts it.
    #[inline]
    pub fn send(&self, entry: Box<Entry>) {
        if self.tx.try_send(Job::Line(entry)).is_err() {
            self.dropped.inc();
        }
    }

    /// Wait until the lines queued so far are written and flushed, at most `limit` (stdout
    /// may be a pipe nobody reads): at shutdown, so that the last requests' lines are out.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Job::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(limit, flushed).await;
    }
}

/// An entry on its way to its sink, where it goes exactly once, when this is dropped: at
/// the end of the response body (`LogBody` holds it), when that body is dropped before its
/// end (a client gone mid-body), or when the request is abandoned before it is answered
/// (a client gone while the backend thinks: status 0, as Envoy writes it).
pub struct Pending {
    entry: Option<Box<Entry>>,
    sink: Rc<Sink>,
}

impl Pending {
    /// The request's side of its line, when it arrives (after path normalisation).
    pub fn start<B: http_body::Body>(
        req: &Request<B>,
        conn: &ConnInfo,
        started: Instant,
        sink: &Rc<Sink>,
    ) -> Pending {
        Pending {
            entry: Some(Entry::start(req, conn, started)),
            sink: sink.clone(),
        }
    }

    /// The request id the line carries.
    pub fn id(&self) -> Option<&RequestId> {
        self.entry.as_ref().map(|e| &e.id)
    }

    /// The counter of request body bytes, for the upstream request body to add to.
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        self.entry.as_ref().and_then(|e| e.received.clone())
    }

    /// Where the request is going: what the line says if the client leaves before the
    /// answer (the first try's backend series and endpoint).
    pub fn routed(&mut self, labels: &Arc<Labels>, endpoint: SocketAddr) {
        if let Some(e) = &mut self.entry {
            e.labels = Some(labels.clone());
            e.upstream(Some(endpoint), 1);
        }
    }

    /// Where the request went: the last endpoint tried and the number of tries.
    pub fn upstream(&mut self, endpoint: Option<SocketAddr>, tries: u32) {
        if let Some(e) = &mut self.entry {
            e.upstream(endpoint, tries);
        }
    }

    /// The answer's head: its status and the series (split, backend) it is counted in.
    pub fn answered(&mut self, status: http::StatusCode, labels: &Arc<Labels>) {
        if let Some(e) = &mut self.entry {
            e.answered(status, labels);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.duration = entry.started.elapsed();
            self.sink.send(entry);
        }
    }
}

/// The response body the client gets: the proxy's `Body`, and with the access log on, the
/// pending entry, sent when the body ends, fails or is dropped.
pub struct LogBody {
    inner: Body,
    log: Option<Pending>,
}

impl LogBody {
    /// A body that logs nothing.
    pub fn plain(inner: Body) -> LogBody {
        LogBody { inner, log: None }
    }

    /// A body whose end sends `log`'s entry.
    pub fn logged(inner: Body, log: Pending) -> LogBody {
        LogBody {
            inner,
            log: Some(log),
        }
    }
}

impl From<Body> for LogBody {
    fn from(inner: Body) -> Self {
        LogBody::plain(inner)
    }
}

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(pending) = &mut self.log {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(e)) = (frame.data_ref(), &mut pending.entry) {
                        e.sent += data.len() as u64;
                    }
                }
                // the end, or a failure: the line goes now (Pending's drop)
                Poll::Ready(_) => self.log = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === the writer ===

/// The writer thread: format every queued entry, flush when the queue is momentarily
/// empty, then pause briefly so that under load senders find the thread awake (a wake-up
/// of a parked thread would be a system call on the request path). Ends when every
/// sender is gone.
fn write_lines<W: Write>(mut rx: mpsc::Receiver<Job>, out: W, dropped: Counter) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut warned = false;
    while let Some(first) = rx.blocking_recv() {
        // one clock pair per batch: each line's wall time is derived from its Instant
        let (wall, mono) = (SystemTime::now(), Instant::now());
        let mut next = Some(first);
        let mut failed = false;
        let mut waiting = Vec::new();
        while let Some(job) = next {
            match job {
                Job::Line(entry) => {
                    line.clear();
                    format_line(&entry, wall, mono, &mut line);
                    drop(entry);
                    if out.write_all(&line).is_err() {
                        dropped.inc();
                        failed = true;
                    }
                }
                Job::Flush(done) => waiting.push(done),
            }
            next = rx.try_recv().ok();
        }
        failed |= out.flush().is_err();
        for done in waiting {
            let _ = done.send(());
        }
        if failed {
            if !warned {
                tracing::warn!("access log: cannot write to stdout; lines are dropped");
                warned = true;
            }
            // what the failed writes left buffered is given up, not retried line by line
            out = std::io::BufWriter::with_capacity(64 * 1024, out.into_parts().0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One JSON line (with its newline) for `e`; `wall`/`mono` are one reading of both clocks,
/// taken after the entry ended.
pub fn format_line(e: &Entry, wall: SystemTime, mono: Instant, out: &mut Vec<u8>) {
    let start = wall
        .checked_sub(mono.saturating_duration_since(e.started))
        .unwrap_or(wall);
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_millis(start, out);
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(out, e.id.as_bytes());
    out.extend_from_slice(b",\"method\":");
    json_str(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"path\":");
    let path = e.uri.path_and_query().map_or("/", |p| p.as_str());
    json_str(out, path.as_bytes());
    out.extend_from_slice(b",\"host\":");
    match (e.uri.authority(), &e.host) {
        (Some(a), _) => json_str(out, a.as_str().as_bytes()),
        (None, Some(h)) => json_str(out, h.as_bytes()),
        (None, None) => out.extend_from_slice(b"null"),
    }
    let labels = e.labels.as_deref();
    out.extend_from_slice(b",\"split\":");
    json_opt(out, labels.and_then(|l| l.split.as_deref()));
    out.extend_from_slice(b",\"backend\":");
    json_opt(out, labels.and_then(|l| l.backend.as_deref()));
    out.extend_from_slice(b",\"endpoint\":");
    match e.endpoint {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    let ms = e.duration.as_secs_f64() * 1e3;
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_received\":{},\"bytes_sent\":{},\"duration_ms\":{ms:.3},\"identity\":",
        e.status,
        e.received
            .as_ref()
            .map_or(0, |r| r.load(Ordering::Relaxed)),
        e.sent,
    );
    json_opt(out, e.identity.as_deref());
    let _ = writeln!(out, ",\"tries\":{}}}", e.tries);
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of `bytes`: quotes, backslashes and control bytes escaped; bytes that
/// are not UTF-8 (header values may carry obs-text) replaced by U+FFFD.
fn json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // nearly every field is printable ASCII with nothing to escape: one copy (the
    // byte-at-a-time path below cost ~3 000 instructions a line)
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    out.push(b'"');
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// `2026-12-02T03:09:56.123Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    );
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: u64, ms: u64) -> String {
        let mut out = Vec::new();
        rfc3339_millis(
            UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(time(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(time(951_868_800, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(time(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
        assert_eq!(time(4_102_444_799, 0), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn uuids_are_version_4_text() {
        let a = uuid_v4();
        let s = std::str::from_utf8(&a).unwrap();
        assert_eq!(s.len(), 36);
        for (i, c) in s.char_indices() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{s}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}");
            }
        }
        assert_eq!(&s[14..15], "4", "{s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_ne!(uuid_v4(), a);
    }

    #[test]
    fn request_id_validity() {
        assert!(valid_request_id(b"abc-123"));
        assert!(valid_request_id(&[b'a'; 200]));
        assert!(!valid_request_id(&[b'a'; 201]));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a,b"));
        assert!(!valid_request_id(b"a\x01"));
        assert!(!valid_request_id("é".as_bytes()));
    }

    #[test]
    fn request_id_keeps_replaces_and_creates() {
        let mut h = HeaderMap::new();
        let id = request_id(&mut h, false, None).expect("a new id");
        assert!(valid_request_id(&id));
        assert!(h.is_empty(), "returned, not inserted");

        let mut h = HeaderMap::new();
        h.append(&X_REQUEST_ID, HeaderValue::from_static("mine"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(request_id(&mut h, true, None), None);
        let all: Vec<_> = h.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(all, ["mine"]);

        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id"));
        let RequestId::New(chosen) = RequestId::of(&h) else {
            panic!("an invalid id is replaced")
        };
        assert_eq!(request_id(&mut h, true, Some(chosen)), Some(chosen));
        assert!(h.get(&X_REQUEST_ID).is_none(), "the bad one removed");
        assert_eq!(request_id_value(&chosen).as_bytes(), chosen);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, b"a\"b\\c\x01\n\xff");
        let s = String::from_utf8(out).unwrap();
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\u{1}\n\u{fffd}");
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let req = Request::post("/p?q=1")
            .header("host", "web:8080")
            .header("x-request-id", "id-1")
            .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 9)), false, None, None);
        let started = Instant::now();
        let mut e = Entry::start(&req, &conn, started);
        e.upstream(Some(SocketAddr::from(([10, 0, 0, 1], 80))), 2);
        let labels = Arc::new(Labels {
            split: Some("default/web".into()),
            backend: Some("web-v1".into()),
        });
        e.answered(http::StatusCode::CREATED, &labels);
        e.received.as_ref().unwrap().store(3, Ordering::Relaxed);
        e.sent = 5;
        e.duration = Duration::from_micros(1500);
        let mut out = Vec::new();
        format_line(&e, SystemTime::now(), Instant::now(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/p?q=1");
        assert_eq!(v["host"], "web:8080");
        assert_eq!(v["split"], "default/web");
        assert_eq!(v["backend"], "web-v1");
        assert_eq!(v["endpoint"], "10.0.0.1:80");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_received"], 3);
        assert_eq!(v["bytes_sent"], 5);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["identity"], serde_json::Value::Null);
        assert_eq!(v["tries"], 2);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    /// A stdout that holds its first write until released, and records what it got.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        got: Arc<std::sync::Mutex<Vec<u8>>>,
        held: bool,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.held {
                self.held = true;
                let _ = self.entered.send(());
                let _ = self.release.recv();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(path: &str) -> Box<Entry> {
        let req = Request::get(path)
            .header("host", "web")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 9)), false, None, None);
        Entry::start(&req, &conn, Instant::now())
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = Stuck {
            entered: entered_tx,
            release: release_rx,
            got: got.clone(),
            held: false,
        };
        let dropped = Counter::default();
        let sink = Sink::start(out, 4, dropped.clone()).unwrap();
        sink.send(entry("/0"));
        // the writer has taken /0 and is stuck writing it: the queue is empty
        entered.recv().unwrap();
        for i in 1..=4 {
            sink.send(entry(&format!("/{i}")));
        }
        assert_eq!(dropped.get(), 0);
        sink.send(entry("/5"));
        sink.send(entry("/6"));
        assert_eq!(dropped.get(), 2, "a full queue drops the line");
        release.send(()).unwrap();
        sink.flush(Duration::from_secs(10)).await;
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let paths: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(paths, ["/0", "/1", "/2", "/3", "/4"]);
    }
}
