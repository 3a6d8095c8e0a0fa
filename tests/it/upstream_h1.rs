//! The HTTP/1.1 upstream codec (src/upstream/h1.rs) at its edges, through the real proxy:
//! raw TCP backends write exact bytes (so the proxy sees exactly the framing under test)
//! and raw clients read exact bytes back. Each test says what the client gets and, where it
//! matters, what the backend got and on how many connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{admin_get, proxy_doc, split_doc, Proxy};

/// How long a client waits for the proxy's next bytes before the test fails (a deadline,
/// never an ordering device).
const DEADLINE: Duration = Duration::from_secs(10);

/// One side of a raw HTTP/1.1 connection: what was read and not yet consumed.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// A client fails the test when the proxy says nothing for `DEADLINE`; a backend waits
    /// as long as the test runs.
    deadline: bool,
}

/// A message head: the start line and the fields as sent (names lower-cased).
#[derive(Debug)]
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn status(&self) -> u16 {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.line))
    }

    /// The request target.
    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
}

#[derive(Debug)]
struct Message {
    head: Head,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// How a message's body is delimited when it has neither length nor chunking.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A request: no body.
    Request,
    /// A response: to the close.
    Response,
    /// A response to HEAD: no body whatever the head says.
    HeadResponse,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        Wire {
            tcp,
            buf: Vec::new(),
            deadline: true,
        }
    }

    fn backend(tcp: TcpStream) -> Wire {
        let _ = tcp.set_nodelay(true);
        Wire {
            tcp,
            buf: Vec::new(),
            deadline: false,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let write = self.tcp.write_all(bytes);
        tokio::time::timeout(DEADLINE, write)
            .await
            .expect("the proxy took the bytes within the deadline")
            .expect("write");
    }

    /// Write `bytes` in pieces of 1, 2, 3, 1, 2, 3... bytes, each its own write, letting
    /// the other side run in between.
    async fn write_tiny(&mut self, bytes: &[u8]) {
        let mut at = 0;
        let mut size = 1;
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            if self.tcp.write_all(&bytes[at..end]).await.is_err() {
                return;
            }
            let _ = self.tcp.flush().await;
            tokio::task::yield_now().await;
            at = end;
            size = size % 3 + 1;
        }
    }

    /// Read more into the buffer: the count read, 0 at the end (a reset counts as one).
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        let read = if self.deadline {
            tokio::time::timeout(DEADLINE, self.tcp.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "nothing from the proxy within {DEADLINE:?}; had {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                })
        } else {
            self.tcp.read(&mut chunk).await
        };
        let n = read.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// A CRLF-ended line without its CRLF; `None` at the end before one.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Everything until the peer closes.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Header lines up to the empty one.
    async fn fields(&mut self) -> Option<Vec<(String, String)>> {
        let mut fields = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Some(fields);
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    /// A head; `None` when the peer closed before a whole one.
    async fn head(&mut self) -> Option<Head> {
        let line = self.line().await?;
        let headers = self.fields().await?;
        Some(Head { line, headers })
    }

    /// One chunk-size line (extensions ignored): the size.
    async fn chunk_size(&mut self) -> Option<usize> {
        let line = self.line().await?;
        let digits = line.split(';').next().unwrap_or("").trim();
        Some(
            usize::from_str_radix(digits, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}")),
        )
    }

    /// A body as `head` frames it; `None` when the peer closed before its end.
    async fn body(&mut self, head: &Head, kind: Kind) -> Option<(Vec<u8>, Vec<(String, String)>)> {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let bodiless = match kind {
            Kind::Request => false,
            Kind::Response => matches!(head.status(), 101 | 204 | 304),
            Kind::HeadResponse => true,
        };
        if bodiless {
            return Some((Vec::new(), Vec::new()));
        }
        if chunked {
            let mut body = Vec::new();
            loop {
                let size = self.chunk_size().await?;
                if size == 0 {
                    let trailers = self.fields().await?;
                    return Some((body, trailers));
                }
                body.extend(self.take(size).await?);
                assert_eq!(self.take(2).await?, b"\r\n", "chunk data ends with CRLF");
            }
        }
        if let Some(n) = head.header("content-length") {
            let n = n.parse().expect("a content-length");
            return Some((self.take(n).await?, Vec::new()));
        }
        match kind {
            Kind::Response => Some((self.rest().await, Vec::new())),
            _ => Some((Vec::new(), Vec::new())),
        }
    }

    /// A request (backend side); `None` once the proxy closed the connection.
    async fn request(&mut self) -> Option<Message> {
        let head = self.head().await?;
        let (body, trailers) = self.body(&head, Kind::Request).await?;
        Some(Message {
            head,
            body,
            trailers,
        })
    }

    /// A whole response (client side); the test fails when it is cut.
    async fn response(&mut self, to_head: bool) -> Message {
        let head = self.head().await.expect("a response head");
        let kind = if to_head {
            Kind::HeadResponse
        } else {
            Kind::Response
        };
        let (body, trailers) = self
            .body(&head, kind)
            .await
            .unwrap_or_else(|| panic!("the response to {head:?} was cut"));
        Message {
            head,
            body,
            trailers,
        }
    }

    /// GET `path` with `Host: web`, and the response.
    async fn get(&mut self, path: &str) -> Message {
        self.write(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
            .await;
        self.response(false).await
    }
}

/// A raw backend: `serve` gets each accepted connection.
struct RawBackend {
    addr: SocketAddr,
    /// Connections accepted.
    conns: Arc<AtomicU64>,
    /// Request heads read, on all connections.
    heads: Arc<AtomicU64>,
    /// Events a test's `serve` counts (`Accepted::mark`).
    marks: Arc<AtomicU64>,
}

/// An accepted backend connection.
struct Accepted {
    /// Its number among the backend's connections, from 0.
    n: u64,
    wire: Wire,
    heads: Arc<AtomicU64>,
    marks: Arc<AtomicU64>,
}

impl Accepted {
    /// The next request, counted; `None` once the proxy closed.
    async fn request(&mut self) -> Option<Message> {
        let req = self.wire.request().await?;
        self.heads.fetch_add(1, Ordering::SeqCst);
        Some(req)
    }

    fn mark(&self) {
        self.marks.fetch_add(1, Ordering::SeqCst);
    }
}

impl RawBackend {
    async fn spawn<F, Fut>(serve: F) -> RawBackend
    where
        F: Fn(Accepted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let heads = Arc::new(AtomicU64::new(0));
        let marks = Arc::new(AtomicU64::new(0));
        let (c, h, m) = (conns.clone(), heads.clone(), marks.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(Accepted {
                    n,
                    wire: Wire::backend(tcp),
                    heads: h.clone(),
                    marks: m.clone(),
                }));
            }
        });
        RawBackend {
            addr,
            conns,
            heads,
            marks,
        }
    }

    fn conns(&self) -> u64 {
        self.conns.load(Ordering::SeqCst)
    }

    fn heads(&self) -> u64 {
        self.heads.load(Ordering::SeqCst)
    }

    fn marks(&self) -> u64 {
        self.marks.load(Ordering::SeqCst)
    }
}

/// A proxy whose split `web` sends everything to backend `web-v1`, at `endpoints`;
/// `extra` are spec lines. Outlier detection is off: no test here wants an ejection.
async fn proxy(endpoints: &[SocketAddr], extra: &str) -> Proxy {
    let extra = format!("outlierDetection:\n  consecutiveFailures: 0\n{extra}");
    let mut yaml = proxy_doc(&[("web-v1", endpoints[0])], &extra);
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    yaml = yaml.replace(
        &format!("[\"{}\"]", endpoints[0]),
        &format!("[{}]", list.join(", ")),
    );
    yaml += &split_doc("web", "web", &[("web-v1", 1)]);
    Proxy::start(&yaml).await
}

/// `splitproxy_upstream_retries_total` of backend web-v1; the series must exist (it is
/// made with the table), so a renamed one cannot pass for zero retries.
async fn retries(proxy: &Proxy) -> f64 {
    let (_, text) = admin_get(proxy, "/metrics").await;
    let series = "splitproxy_upstream_retries_total{split=\"default/web\",backend=\"web-v1\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series:?} in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Wait, `DEADLINE` at most, until `ok` holds.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    crate::support::eventually(what, DEADLINE, ok).await
}

fn assert_proxy_error(resp: &Message, status: u16, backend: SocketAddr) {
    assert_eq!(resp.head.status(), status, "{:?}", resp.head);
    assert_eq!(
        resp.head.header("server"),
        Some("splitproxy"),
        "{:?}",
        resp.head
    );
    let body = String::from_utf8_lossy(&resp.body);
    assert!(!body.is_empty(), "a short plain-text body");
    assert!(
        !body.contains(&backend.to_string()) && !body.contains("127.0.0.1"),
        "no internal address in {body:?}"
    );
}

// === 1. chunked framing in pieces ===

/// The chunked response of test 1: extensions, both cases of hex, a trailer.
const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nContent-Type: text/plain\r\n\r\n\
5;ext=1\r\nhello\r\n\
A\r\n0123456789\r\n\
a;name=\"quoted;value\"\r\nabcdefghij\r\n\
1F;x;y=2\r\nABCDEFGHIJKLMNOPQRSTUVWXYZabcde\r\n\
1f\r\nfghijklmnopqrstuvwxyz!@#$%^&*()\r\n\
0;last=yes\r\nx-checksum: abc123\r\n\r\n";
const CHUNKED_BODY: &[u8] =
    b"hello0123456789abcdefghijABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!@#$%^&*()";

#[tokio::test]
async fn a_chunked_response_in_tiny_writes_arrives_whole_with_its_trailer_when_asked() {
    let backend = RawBackend::spawn(|mut c| async move {
        while c.request().await.is_some() {
            c.wire.write_tiny(CHUNKED).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    for te in [true, false] {
        let mut client = Wire::connect(proxy.addr).await;
        for i in 0..2 {
            let te_line = if te { "TE: trailers\r\n" } else { "" };
            client
                .write(format!("GET /{i} HTTP/1.1\r\nHost: web\r\n{te_line}\r\n").as_bytes())
                .await;
            let resp = client.response(false).await;
            assert_eq!(resp.head.status(), 200, "{:?}", resp.head);
            assert_eq!(resp.head.header("transfer-encoding"), Some("chunked"));
            assert_eq!(resp.head.header("content-length"), None);
            assert_eq!(
                String::from_utf8_lossy(&resp.body),
                String::from_utf8_lossy(CHUNKED_BODY),
                "te {te}, request {i}"
            );
            if te {
                assert_eq!(
                    resp.trailers,
                    [("x-checksum".to_string(), "abc123".to_string())],
                    "a client that sent TE: trailers gets the trailer"
                );
            } else {
                assert!(resp.trailers.is_empty(), "{:?}", resp.trailers);
            }
        }
    }
    // four requests from two clients, on the one upstream connection
    assert_eq!(backend.heads(), 4);
    assert_eq!(backend.conns(), 1);
}

// === 2. interim responses ===

#[tokio::test]
async fn interim_100_and_103_responses_are_dropped_before_the_final_one() {
    const INTERIM: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    const FINAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let backend = RawBackend::spawn(|mut c| async move {
        let mut separate = true;
        while c.request().await.is_some() {
            if separate {
                // each response its own write, the 103 in pieces
                c.wire.write(&INTERIM[..25]).await;
                c.wire.write_tiny(&INTERIM[25..]).await;
                c.wire.write(FINAL).await;
            } else {
                c.wire.write(&[INTERIM, FINAL].concat()).await;
            }
            separate = !separate;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..4 {
        let resp = client.get("/").await;
        assert_eq!(
            resp.head.line, "HTTP/1.1 200 OK",
            "the first response is the final one"
        );
        assert_eq!(resp.body, b"hello");
        assert_eq!(
            resp.head.header("link"),
            None,
            "the 103's fields stay with it"
        );
    }
    assert_eq!((backend.heads(), backend.conns()), (4, 1));
}

// === 3. the keep-alive race ===

#[tokio::test(flavor = "current_thread")]
async fn a_pooled_connection_the_backend_closed_after_answering_is_never_used() {
    // answer with keep-alive, then close at once. The backend's task closes in the same
    // poll as its write, and this runtime's client runs only after it: the close is on
    // the proxy's socket before the next request reaches the proxy, so the pool's check
    // sees it and the request goes out on a new connection (GET and POST alike).
    let serve = |mut c: Accepted| async move {
        if let Some(req) = c.request().await {
            let body = format!("{} {}", req.head.target(), req.body.len());
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.wire.write(resp.as_bytes()).await;
        }
    };
    let (a, b) = (
        RawBackend::spawn(serve).await,
        RawBackend::spawn(serve).await,
    );
    let proxy = proxy(&[a.addr, b.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for i in 0..6 {
        let resp = client.get(&format!("/get{i}")).await;
        assert_eq!(resp.head.status(), 200);
        assert_eq!(resp.body, format!("/get{i} 0").as_bytes());
        client
            .write(
                format!("POST /post{i} HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\n\r\ndata")
                    .as_bytes(),
            )
            .await;
        let resp = client.response(false).await;
        assert_eq!(
            resp.head.status(),
            200,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.body, format!("/post{i} 4").as_bytes());
    }
    // each request once, each on its own connection
    assert_eq!(a.heads() + b.heads(), 12);
    assert_eq!((a.conns(), b.conns()), (a.heads(), b.heads()));
    assert_eq!(retries(&proxy).await, 0.0);
}

/// A backend that answers the first request of a connection with keep-alive and closes
/// the connection as the next request arrives, without reading it (an idle timeout
/// firing as the request comes: the keep-alive race, made deterministic). The reset
/// reaches the proxy only after it wrote the request.
async fn racing_backend(name: &'static str) -> RawBackend {
    RawBackend::spawn(move |mut c| async move {
        if let Some(req) = c.request().await {
            let body = format!("{name} {}", req.head.target());
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.wire.write(resp.as_bytes()).await;
            // the next request is there: closed unread (a reset)
            let _ = c.wire.tcp.readable().await;
            c.mark();
        }
    })
    .await
}

#[tokio::test]
async fn a_get_on_a_connection_the_backend_closes_as_it_arrives_goes_again_and_is_no_retry() {
    let (a, b) = (racing_backend("a").await, racing_backend("b").await);
    let proxy = proxy(&[a.addr, b.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    let n = 12;
    for i in 0..n {
        let resp = client.get(&format!("/{i}")).await;
        assert_eq!(
            resp.head.status(),
            200,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        assert!(
            body == format!("a /{i}") || body == format!("b /{i}"),
            "{body}"
        );
    }
    // every request read once, on a connection of its own; the ones closed unread went
    // again on a new connection to the same endpoint (a stale pooled connection is no
    // failed try: a retry would have gone to the other endpoint, and been counted)
    assert_eq!(a.heads() + b.heads(), n);
    assert_eq!((a.conns(), b.conns()), (a.heads(), b.heads()));
    // all but the first request to each endpoint met the race
    assert!(
        a.marks() + b.marks() >= n - 2,
        "{} races",
        a.marks() + b.marks()
    );
    assert_eq!(retries(&proxy).await, 0.0);
}

#[tokio::test]
async fn a_post_on_a_connection_the_backend_closes_as_it_arrives_gets_502_and_is_not_replayed() {
    let (a, b) = (racing_backend("a").await, racing_backend("b").await);
    let proxy = proxy(&[a.addr, b.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    // until both endpoints have a pooled connection (each pick is 1/2: 200 GETs all to
    // one endpoint is 2^-199)
    for i in 0.. {
        assert!(i < 200, "one endpoint was never picked");
        let resp = client.get("/").await;
        assert_eq!(resp.head.status(), 200);
        if a.conns() > 0 && b.conns() > 0 {
            break;
        }
    }
    let (heads, races) = (a.heads() + b.heads(), a.marks() + b.marks());
    client
        .write(b"POST /post HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\n\r\ndata")
        .await;
    let resp = client.response(false).await;
    // the body may have reached the backend: never sent again (as nginx, for a method
    // that is not idempotent), whichever endpoint it went to
    assert_proxy_error(&resp, 502, a.addr);
    assert_eq!(
        a.heads() + b.heads(),
        heads,
        "the POST was read by no backend"
    );
    eventually("the POST met the race", || {
        a.marks() + b.marks() == races + 1
    })
    .await;
    assert_eq!(retries(&proxy).await, 0.0);
    // the client's connection still serves
    let resp = client.get("/after").await;
    assert_eq!(resp.head.status(), 200);
}

// === 4. an early answer ===

#[tokio::test]
async fn an_early_413_to_a_4_mib_post_reaches_the_client() {
    let backend = RawBackend::spawn(|mut c| async move {
        if c.wire.head().await.is_some() {
            c.heads.fetch_add(1, Ordering::SeqCst);
            c.wire
                .write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large")
                .await;
            let _ = c.wire.tcp.shutdown().await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let size = 4 * 1024 * 1024;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let head = format!("POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\n\r\n");
    // the body goes out beside the read: nobody may take all of it
    let sender = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        write
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let resp = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if got.len() >= end + 4 + length {
                    break (head, got[end + 4..end + 4 + length].to_vec());
                }
            }
            let n = read.read(&mut buf).await.unwrap_or(0);
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response within the deadline");
    assert!(resp.0.starts_with("HTTP/1.1 413 "), "{}", resp.0);
    assert_eq!(resp.1, b"too large");
    assert_eq!(backend.heads(), 1);
    sender.abort();
}

// === 5. framing conflicts from the backend ===

#[tokio::test]
async fn content_length_beside_chunked_is_dropped_and_the_body_decoded() {
    let backend = RawBackend::spawn(|mut c| async move {
        while c.request().await.is_some() {
            c.wire
                .write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                .await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..3 {
        let resp = client.get("/").await;
        assert_eq!(resp.head.status(), 200);
        assert_eq!(resp.head.header("content-length"), None, "{:?}", resp.head);
        assert_eq!(resp.head.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.body, b"hello world");
    }
    // nothing left over on the client's connection: the next bytes are the next response
    assert!(client.buf.is_empty());
    assert_eq!(backend.heads(), 3);
}

#[tokio::test]
async fn two_different_content_lengths_from_the_backend_get_502_and_a_new_connection() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            if req.head.target() == "/conflict" {
                c.wire
                    .write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                    )
                    .await;
            } else {
                // the same length twice is one length
                c.wire
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    let resp = client.get("/same").await;
    assert_eq!(
        (resp.head.status(), resp.body.as_slice()),
        (200, &b"ok"[..])
    );
    let resp = client.get("/conflict").await;
    assert_proxy_error(&resp, 502, backend.addr);
    let resp = client.get("/same").await;
    assert_eq!(
        (resp.head.status(), resp.body.as_slice()),
        (200, &b"ok"[..])
    );
    // the connection that sent the conflict was closed, not pooled
    assert_eq!(backend.conns(), 2);
}

#[tokio::test]
async fn a_body_shorter_than_its_length_cuts_the_clients_response_never_hangs() {
    let backend = RawBackend::spawn(|mut c| async move {
        if c.request().await.is_some() {
            c.wire
                .write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly forty bytes of the hundred promised")
                .await;
            let _ = c.wire.tcp.shutdown().await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    // the proxy closes the client's connection before the promised end (bounded: `fill`
    // fails the test at the deadline). hyper's server writes the head with the first
    // body bytes and drops both when the body fails before they were flushed: the client
    // may get nothing at all
    let got = client.rest().await;
    if got.is_empty() {
        return;
    }
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head, if anything");
    let text = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let head = Head {
        line: lines.next().unwrap_or_default().to_string(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
    };
    assert_eq!(head.status(), 200);
    let rest = &got[end + 4..];
    match head.header("content-length") {
        Some(n) => {
            assert_eq!(n, "100");
            assert!(rest.len() < 100, "{} bytes", rest.len());
            assert!(b"only forty bytes of the hundred promised".starts_with(rest));
        }
        None => {
            assert_eq!(head.header("transfer-encoding"), Some("chunked"));
            assert!(
                !rest.ends_with(b"0\r\n\r\n"),
                "a cut body never ends cleanly"
            );
        }
    }
}

#[tokio::test]
async fn an_http10_response_without_length_is_rechunked_and_the_client_keeps_its_connection() {
    let backend = RawBackend::spawn(|mut c| async move {
        if let Some(req) = c.request().await {
            let body = format!("close-delimited body for {}", req.head.target());
            c.wire
                .write_tiny(
                    format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").as_bytes(),
                )
                .await;
            let _ = c.wire.tcp.shutdown().await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for i in 0..3 {
        let resp = client.get(&format!("/{i}")).await;
        assert_eq!(resp.head.line, "HTTP/1.1 200 OK");
        assert_eq!(resp.head.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.head.header("connection"), None);
        assert_eq!(
            resp.body,
            format!("close-delimited body for /{i}").as_bytes()
        );
    }
    assert_eq!(
        backend.conns(),
        3,
        "a close-delimited response ends its connection"
    );
}

// === 6. both bodies streaming at once ===

#[tokio::test]
async fn request_and_response_bodies_stream_in_lockstep() {
    use hyper_util::rt::TokioIo;
    // a hyper backend whose response body is the request body, frame by frame
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let proxy = proxy(&[addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let mut head = None;
    for round in 0..5 {
        let data = format!("round {round} of five");
        client
            .write(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await;
        if head.is_none() {
            let h = client.head().await.expect("the response head");
            assert_eq!(h.status(), 200);
            assert_eq!(h.header("transfer-encoding"), Some("chunked"));
            head = Some(h);
        }
        // this round's echo, however it is chunked, before the next round is sent
        let mut echoed = Vec::new();
        while echoed.len() < data.len() {
            let size = client.chunk_size().await.expect("a chunk");
            assert!(size > 0, "the response ended early");
            echoed.extend(client.take(size).await.expect("chunk data"));
            assert_eq!(client.take(2).await.expect("CRLF"), b"\r\n");
        }
        assert_eq!(echoed, data.as_bytes(), "round {round}");
    }
    client.write(b"0\r\n\r\n").await;
    assert_eq!(client.chunk_size().await, Some(0));
    assert_eq!(client.fields().await, Some(Vec::new()));
    // the exchange ended cleanly: the connection serves again
    client
        .write(b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nend")
        .await;
    let resp = client.response(false).await;
    assert_eq!(resp.body, b"end");
}

// === 7. response head limits ===

#[tokio::test]
async fn a_response_head_of_100_fields_passes_101_get_502_and_a_64_kib_value_passes() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
            match req.head.target() {
                "/big" => head.push_str(&format!("x-big: {}\r\n", "v".repeat(64 * 1024))),
                target => {
                    // `/N`: N fields in all, Content-Length included
                    let n: usize = target[1..].parse().unwrap();
                    for i in 1..n {
                        head.push_str(&format!("x-field-{i}: {i}\r\n"));
                    }
                }
            }
            head.push_str("\r\nok");
            c.wire.write(head.as_bytes()).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    let resp = client.get("/100").await;
    assert_eq!(
        (resp.head.status(), resp.body.as_slice()),
        (200, &b"ok"[..])
    );
    let fields = resp
        .head
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-field-"))
        .count();
    assert_eq!(fields, 99);
    assert_eq!(resp.head.header("x-field-99"), Some("99"));
    let resp = client.get("/101").await;
    assert_proxy_error(&resp, 502, backend.addr);
    let resp = client.get("/big").await;
    assert_eq!(
        (resp.head.status(), resp.body.as_slice()),
        (200, &b"ok"[..])
    );
    assert_eq!(resp.head.header("x-big").map(str::len), Some(64 * 1024));
    // the connection of the 101 fields was dropped; the others were kept
    assert_eq!(backend.conns(), 2);
    assert_eq!(backend.heads(), 3);
}

// === 8. upgrades ===

#[tokio::test]
async fn bytes_behind_a_101_in_the_same_write_reach_the_client_first() {
    let backend = RawBackend::spawn(|mut c| async move {
        let Some(req) = c.request().await else { return };
        assert_eq!(req.head.header("upgrade"), Some("websocket"));
        c.wire
            .write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nEARLY BYTES")
            .await;
        // then an echo, of what was read past the request too
        let mut pending = std::mem::take(&mut c.wire.buf);
        loop {
            if !pending.is_empty() {
                c.wire.write(&pending).await;
            }
            if c.wire.fill().await == 0 {
                return;
            }
            pending = std::mem::take(&mut c.wire.buf);
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
    let head = client.head().await.expect("a 101");
    assert_eq!(head.status(), 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(client.take(11).await.as_deref(), Some(&b"EARLY BYTES"[..]));
    client.write(b"ping").await;
    assert_eq!(client.take(4).await.as_deref(), Some(&b"ping"[..]));
    assert!(client.buf.is_empty());
}

// === 9. HEAD ===

#[tokio::test]
async fn a_head_response_with_a_length_and_no_body_leaves_the_connection_reusable() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            if req.head.line.starts_with("HEAD ") {
                c.wire
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n")
                    .await;
            } else {
                c.wire.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
            }
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..2 {
        client
            .write(b"HEAD /file HTTP/1.1\r\nHost: web\r\n\r\n")
            .await;
        let resp = client.response(true).await;
        assert_eq!(resp.head.status(), 200);
        assert_eq!(
            resp.head.header("content-length"),
            Some("1000"),
            "{:?}",
            resp.head
        );
        let resp = client.get("/file").await;
        assert_eq!(resp.body, b"hello");
    }
    assert!(client.buf.is_empty(), "no body bytes after a HEAD response");
    assert_eq!((backend.heads(), backend.conns()), (4, 1));
}

// === 10. garbage ===

#[tokio::test]
async fn a_garbage_response_gets_502_and_its_connection_is_closed_not_pooled() {
    let backend = RawBackend::spawn(|mut c| async move {
        while c.request().await.is_some() {
            if c.n == 0 {
                c.wire.write(b"HELLO\r\n\r\n").await;
            } else {
                c.wire
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
        if c.n == 0 {
            // the proxy closed it (this backend never does)
            c.mark();
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    let resp = client.get("/").await;
    assert_proxy_error(&resp, 502, backend.addr);
    eventually("the proxy closes the garbage connection", || {
        backend.marks() == 1
    })
    .await;
    for _ in 0..2 {
        let resp = client.get("/").await;
        assert_eq!(
            (resp.head.status(), resp.body.as_slice()),
            (200, &b"ok"[..])
        );
    }
    assert_eq!(backend.conns(), 2);
    assert_eq!(
        backend.heads(),
        3,
        "the garbage connection carried one request"
    );
}

// === beyond the list: what a connection carries after a response ===

#[tokio::test]
async fn bytes_past_a_responses_length_reach_nobody_and_its_connection_is_dropped() {
    let backend = RawBackend::spawn(|mut c| async move {
        while c.request().await.is_some() {
            // a response the backend got wrong: more than its length, in one write
            c.wire
                .write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
                .await;
        }
        c.mark();
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..3 {
        let resp = client.get("/").await;
        assert_eq!(
            (resp.head.status(), resp.body.as_slice()),
            (200, &b"ok"[..])
        );
    }
    // never a stray response for the next request: each went on a new connection, and
    // the proxy closed the ones left with bytes
    assert_eq!((backend.heads(), backend.conns()), (3, 3));
    eventually("the proxy closes the connections", || backend.marks() >= 2).await;
}

#[tokio::test]
async fn a_response_saying_connection_close_ends_its_connection_even_if_the_backend_keeps_it() {
    let backend = RawBackend::spawn(|mut c| async move {
        while c.request().await.is_some() {
            c.wire
                .write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
        // the proxy closed it
        c.mark();
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for i in 0..3 {
        let resp = client.get("/").await;
        assert_eq!(resp.body, b"ok");
        assert_eq!(resp.head.header("connection"), None, "hop-by-hop");
        eventually("the proxy closes the connection", || {
            backend.marks() == i + 1
        })
        .await;
    }
    assert_eq!((backend.heads(), backend.conns()), (3, 3));
}

#[tokio::test]
async fn responses_204_and_304_with_a_length_have_no_body_and_keep_the_connection() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            let resp: &[u8] = match req.head.target() {
                "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                "/304" => {
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\nETag: \"v1\"\r\n\r\n"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            };
            c.wire.write(resp).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for path in ["/204", "/304", "/", "/304", "/"] {
        let resp = client.get(path).await;
        match path {
            "/204" => assert_eq!(resp.head.status(), 204),
            "/304" => {
                assert_eq!(resp.head.status(), 304);
                assert_eq!(resp.head.header("etag"), Some("\"v1\""));
            }
            _ => assert_eq!(resp.body, b"hello"),
        }
        assert!(resp.body.is_empty() || path == "/", "{path}");
    }
    assert!(client.buf.is_empty());
    assert_eq!((backend.heads(), backend.conns()), (5, 1));
}

#[tokio::test]
async fn a_chunked_request_reaches_the_backend_with_its_declared_trailer_only() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            let report = format!(
                "te={} body={} trailers={:?}",
                req.head.header("transfer-encoding").unwrap_or("-"),
                String::from_utf8_lossy(&req.body),
                req.trailers
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{report}",
                report.len()
            );
            c.wire.write(resp.as_bytes()).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\nx-undeclared: 1\r\n\r\n")
        .await;
    let resp = client.response(false).await;
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "te=chunked body=abcde trailers=[(\"x-sum\", \"5\")]"
    );
    // and without trailers, the chunked body ends cleanly: the connection serves again
    client
        .write(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
        .await;
    let resp = client.response(false).await;
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "te=chunked body=z trailers=[]"
    );
    assert_eq!(backend.conns(), 1);
}

#[tokio::test]
async fn a_large_response_streaming_beside_a_large_upload_does_not_stall_a_client_that_writes_first(
) {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    // a hyper backend that answers at once with a large body and reads the request body
    // on its own: the two directions are independent
    const SIZE: u64 = 16 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let counted = read.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let counted = counted.clone();
                        async move {
                            tokio::spawn(async move {
                                let mut body = req.into_body();
                                while let Some(Ok(frame)) = body.frame().await {
                                    if let Some(d) = frame.data_ref() {
                                        counted.fetch_add(d.len() as u64, Ordering::SeqCst);
                                    }
                                }
                            });
                            let body = crate::support::PatternBody {
                                remaining: SIZE,
                                offset: 0,
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let proxy = proxy(&[addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    // the whole upload first, as simple clients do, then the response
    client
        .write(
            format!("POST /both HTTP/1.1\r\nHost: web\r\nContent-Length: {SIZE}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let chunk = vec![b'u'; 256 * 1024];
    for _ in 0..SIZE / chunk.len() as u64 {
        client.write(&chunk).await;
    }
    let resp = client.response(false).await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body.len() as u64, SIZE);
    eventually("the backend read the whole upload", || {
        read.load(Ordering::SeqCst) == SIZE
    })
    .await;
}

#[tokio::test]
async fn a_head_cut_short_gets_502_and_a_bad_chunk_cuts_the_body_never_a_hang() {
    let backend = RawBackend::spawn(|mut c| async move {
        let Some(req) = c.request().await else { return };
        match req.head.target() {
            "/cut-head" => c.wire.write(b"HTTP/1.1 200 OK\r\nContent-Le").await,
            "/bad-chunk" => {
                c.wire
                    .write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n")
                    .await
            }
            _ => {
                c.wire
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
            }
        }
        // one request a connection, then closed (the cut head, the bad chunk)
        let _ = c.wire.tcp.shutdown().await;
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    let resp = client.get("/cut-head").await;
    assert_proxy_error(&resp, 502, backend.addr);
    let resp = client.get("/fine").await;
    assert_eq!(resp.body, b"ok");
    // the head went out with the first chunk or not at all; the end never comes
    client
        .write(b"GET /bad-chunk HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    let got = client.rest().await;
    assert!(
        !got.windows(5).any(|w| w == b"0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !got.windows(4).any(|w| w == b"more"),
        "nothing past the bad chunk"
    );
}

#[tokio::test]
async fn an_expect_100_continue_upload_goes_through_with_the_backends_100_dropped() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(head) = c.wire.head().await {
            c.heads.fetch_add(1, Ordering::SeqCst);
            assert_eq!(head.header("expect"), Some("100-continue"));
            c.wire.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let Some((body, _)) = c.wire.body(&head, Kind::Request).await else {
                return;
            };
            let resp = format!(
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            c.wire.write(&[resp.as_bytes(), &body].concat()).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..2 {
        // as curl does for a large upload: the head, then the body once told to go on
        client
            .write(b"PUT /file HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
            .await;
        let interim = client.head().await.expect("the proxy's own 100 Continue");
        assert_eq!(interim.status(), 100);
        client.write(b"hello world").await;
        let resp = client.response(false).await;
        assert_eq!(
            resp.head.status(),
            201,
            "one 100 only, then the final response"
        );
        assert_eq!(resp.body, b"hello world");
    }
    assert_eq!((backend.heads(), backend.conns()), (2, 1));
}

// === the proxy's own HTTP/1.1 server against hyper's ===

/// What the backend answers to `/case/N` (a HEAD gets the head alone); cases marked
/// `true` close the connection after (a body to the close, an HTTP/1.0 backend).
const CASES: &[(&[u8], &[u8], bool)] = &[
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n\r\n", b"hello", false),
    (b"HTTP/1.1 204 No Content\r\nX-B: 1\r\n\r\n", b"", false),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", b"", false),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n", b"3\r\nabc\r\n0\r\nx-sum: 9\r\nx-other: 1\r\n\r\n", false),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"streamed to the close", true),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"", false),
    (b"HTTP/1.1 599 Whatever\r\nContent-Length: 2\r\n\r\n", b"ok", false),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n", b"", false),
    (b"HTTP/1.1 500 Internal Server Error\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\n\r\nerr", b"", false),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", b"hi", true),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"4\r\nwxyz\r\n0\r\n\r\n", false),
];

/// The body of the large case (`/case/big`): larger than a read, written in pieces.
const BIG: usize = 300_000;

async fn case_backend() -> RawBackend {
    RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            let head_only = req.head.line.starts_with("HEAD ");
            let target = req.head.target().to_string();
            if target == "/case/big" {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                c.wire.write(head.as_bytes()).await;
                if !head_only {
                    for piece in vec![b'x'; BIG].chunks(70_000) {
                        c.wire.write(piece).await;
                    }
                }
                continue;
            }
            let n: usize = target
                .strip_prefix("/case/")
                .and_then(|n| n.parse().ok())
                .expect("a case number");
            let (head, body, close) = CASES[n];
            c.wire.write(head).await;
            if !head_only {
                c.wire.write(body).await;
            }
            if close {
                return;
            }
        }
    })
    .await
}

/// `bytes` with every `date: ...` value (29 characters) masked: the two servers may
/// answer in different seconds.
fn masked(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\r\ndate: ") {
        let end = (at + 8 + 29).min(rest.len());
        out.push_str(&rest[..at + 8]);
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every byte a client reads, to the proxy's close, for `requests` sent at once.
async fn exchange_raw(proxy: SocketAddr, requests: &[u8]) -> Vec<u8> {
    let mut client = Wire::connect(proxy).await;
    client.write(requests).await;
    client.rest().await
}

/// A request head; with `via_hyper`, padded past the fields the proxy's own server
/// parses (32), which hands the connection to hyper's server: nothing else differs.
fn case_request(method: &str, target: &str, extra: &str, via_hyper: bool) -> String {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: web\r\n{extra}");
    if via_hyper {
        for i in 0..33 {
            req += &format!("x-pad-{i}: 1\r\n");
        }
    }
    req + "\r\n"
}

/// The proxy's HTTP/1.1 server (bodiless requests) answers byte for byte as hyper's
/// (everything else) does: status lines, framing for HEAD, 204, 304, bodies to the close
/// and unknown lengths, joined and added `connection` values, trailers only when declared
/// and asked for, a date only when the backend gave none; alone and behind a pipelined
/// request on a kept-alive connection.
#[tokio::test]
async fn the_proxys_http1_server_answers_as_hypers_does() {
    let backend = case_backend().await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut targets: Vec<String> = (0..CASES.len()).map(|n| format!("/case/{n}")).collect();
    targets.push("/case/big".to_string());
    for target in &targets {
        for method in ["GET", "HEAD"] {
            for te in ["", "TE: trailers\r\n"] {
                let last = format!("{te}Connection: close\r\n");
                let mut answers = Vec::new();
                for via_hyper in [false, true] {
                    // alone, closing
                    let alone = case_request(method, target, &last, via_hyper);
                    // kept alive, then a second request that closes
                    let mut two = case_request(method, target, te, via_hyper);
                    two += &case_request("GET", "/case/0", &last, via_hyper);
                    let a = exchange_raw(proxy.addr, alone.as_bytes()).await;
                    let b = exchange_raw(proxy.addr, two.as_bytes()).await;
                    answers.push((masked(&a), masked(&b)));
                }
                let (ours, hypers) = (&answers[0], &answers[1]);
                assert!(
                    ours.0.starts_with("HTTP/1.1 "),
                    "{method} {target}: {:?}",
                    ours.0
                );
                assert_eq!(ours.0, hypers.0, "{method} {target} {te:?}, alone");
                assert_eq!(ours.1, hypers.1, "{method} {target} {te:?}, kept alive");
            }
        }
    }
}

/// The proxy's HTTP/1.1 server puts a request's fields into the cleared map of the
/// response before it: not one field of that response reaches the next request.
#[tokio::test]
async fn a_kept_alive_connection_sends_only_the_requests_own_fields() {
    let backend = RawBackend::spawn(|mut c| async move {
        while let Some(req) = c.request().await {
            let answer: &[u8] = if req.head.target() == "/first" {
                b"HTTP/1.1 200 OK\r\nX-Leak: yes\r\nContent-Type: text/x-leak\r\nContent-Length: 5\r\n\r\nfirst"
            } else if req.head.header("x-leak").is_some()
                || req.head.header("content-type").is_some()
            {
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nleaked"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean"
            };
            c.wire.write(answer).await;
        }
    })
    .await;
    let proxy = proxy(&[backend.addr], "").await;
    let mut client = Wire::connect(proxy.addr).await;
    for _ in 0..3 {
        let first = client.get("/first").await;
        assert_eq!(first.body, b"first");
        assert_eq!(first.head.header("x-leak"), Some("yes"));
        let next = client.get("/next").await;
        assert_eq!(String::from_utf8_lossy(&next.body), "clean");
    }
    assert_eq!(backend.heads(), 6);
}
