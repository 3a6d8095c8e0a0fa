//! Hostile input and client limits (DESIGN.md section 3 "Hostile input", section 2
//! `limits`): every form written on a raw socket, plain and over mTLS, answered by the
//! proxy itself and never seen by the backend; hop-by-hop headers both ways; HTTP/2
//! authority, preface, header and stream limits, rapid reset and CONTINUATION floods;
//! the connection cap; slowloris.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use splitproxy::cmd::pki::Ca;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::support::*;

// === the backend ===

/// A backend that counts requests, request bodies read whole, and requests in flight,
/// keeps the last request, holds `/hold` until released, and answers with hop-by-hop
/// headers the proxy must not pass back (`Proxy-Authenticate`, a `Connection` option).
struct Probe {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    bodies: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    last: Arc<Mutex<Option<(HeaderMap, Bytes)>>>,
    release: watch::Sender<bool>,
}

#[derive(Clone)]
struct ProbeState {
    hits: Arc<AtomicU64>,
    bodies: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    last: Arc<Mutex<Option<(HeaderMap, Bytes)>>>,
    release: watch::Receiver<bool>,
}

struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe {
    async fn spawn() -> Probe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = watch::channel(false);
        let state = ProbeState {
            hits: Arc::default(),
            bodies: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            last: Arc::default(),
            release: released,
        };
        let probe = Probe {
            addr,
            hits: state.hits.clone(),
            bodies: state.bodies.clone(),
            in_flight: state.in_flight.clone(),
            max_in_flight: state.max_in_flight.clone(),
            last: state.last.clone(),
            release,
        };
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(state, req).await) }
                    });
                    // takes big heads: the proxy's limits are under test, not hyper's
                    let _ = hyper::server::conn::http1::Builder::new()
                        .max_headers(2000)
                        .max_buf_size(2 << 20)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        probe
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> u64 {
        self.bodies.load(Ordering::SeqCst)
    }

    fn last(&self) -> (HeaderMap, Bytes) {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the probe saw no request")
    }
}

async fn answer(
    mut state: ProbeState,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(state.in_flight.clone());
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => {
            state.bodies.fetch_add(1, Ordering::SeqCst);
            b.to_bytes()
        }
        Err(_) => Bytes::new(),
    };
    *state.last.lock().unwrap() = Some((parts.headers.clone(), body));
    if parts.uri.path() == "/hold" {
        let _ = state.release.wait_for(|r| *r).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"probe")));
    let h = resp.headers_mut();
    h.insert("x-backend", "probe".parse().unwrap());
    h.insert("proxy-authenticate", "Basic realm=\"p\"".parse().unwrap());
    h.insert("connection", "x-probe-hop".parse().unwrap());
    h.insert("x-probe-hop", "1".parse().unwrap());
    resp
}

// === the proxies and their clients ===

/// One probe behind a plain proxy and an mTLS one (`clientAuth: require`), both routing
/// host `web` to it, with `extra` spec lines.
struct Rig {
    probe: Probe,
    plain: Proxy,
    mtls: Proxy,
    /// Client configurations with the client certificate: ALPN http/1.1 and h2.
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    _pki: tempfile::TempDir,
}

impl Rig {
    async fn start(extra: &str) -> Rig {
        let probe = Probe::spawn().await;
        let ca = Ca::new("hostile test CA").unwrap();
        let pki = tempfile::tempdir().unwrap();
        let d = pki.path();
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
        let split = split_doc("web-split", "web", &[("web-v1", 1)]);
        let plain = Proxy::start(&(proxy_doc(&[("web-v1", probe.addr)], extra) + &split)).await;
        let tls = format!(
            "tls:\n  cert: {0}/server.pem\n  key: {0}/server-key.pem\n  clientCA: {0}/ca.pem\n  clientAuth: require\n{extra}",
            d.display()
        );
        let mtls = Proxy::start(&(proxy_doc(&[("web-v1", probe.addr)], &tls) + &split)).await;
        let client = ca
            .client("client", "spiffe://cluster.local/ns/default/sa/client")
            .unwrap();
        let config = |alpn: &[u8]| {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
                .unwrap();
            let mut c = rustls::ClientConfig::builder_with_provider(splitproxy::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
                )
                .unwrap();
            c.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(c)
        };
        Rig {
            probe,
            plain,
            mtls,
            h1: config(b"http/1.1"),
            h2: config(b"h2"),
            _pki: pki,
        }
    }

    /// A raw connection to the plain proxy or, `tls`, the mTLS one with ALPN http/1.1.
    async fn connect(&self, tls: bool) -> Box<dyn Io> {
        if tls {
            Box::new(tls_connect(self.mtls.addr, &self.h1).await)
        } else {
            Box::new(TcpStream::connect(self.plain.addr).await.unwrap())
        }
    }

    /// Write `bytes` on a new connection and read everything the proxy answers.
    async fn exchange(&self, tls: bool, bytes: &[u8]) -> String {
        talk(self.connect(tls).await, bytes).await
    }

    fn proxy(&self, tls: bool) -> &Proxy {
        if tls {
            &self.mtls
        } else {
            &self.plain
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn tls_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("mTLS handshake")
}

/// Write `bytes`, then read until the proxy closes (bounded). The proxy may answer and
/// stop reading before all is written: write errors are not the test's business.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, bytes: &[u8]) -> String {
    let _ = io.write_all(bytes).await;
    let _ = io.flush().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy did not close: {out:?}");
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of each response in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A counter of the proxy's `/metrics`.
async fn metric(proxy: &Proxy, series: &str) -> u64 {
    let (_, body) = admin_get(proxy, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn unrouted(class: &str) -> String {
    format!("splitproxy_requests_total{{split=\"(none)\",backend=\"(none)\",code=\"{class}\"}}")
}

// === HTTP/1.1 heads ===

/// Every hostile head of DESIGN.md section 3 and issue 11, with the status it must get.
fn hostile_heads() -> Vec<(&'static str, Vec<u8>, u16)> {
    let b = |s: &str| s.as_bytes().to_vec();
    let mut ten_thousand = String::from("GET / HTTP/1.1\r\nHost: web\r\n");
    for i in 0..10_000 {
        ten_thousand.push_str(&format!("x-h-{i}: {i}\r\n"));
    }
    ten_thousand.push_str("\r\n");
    vec![
        ("Content-Length with Transfer-Encoding", b("POST /s HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n"), 400),
        ("Transfer-Encoding with Content-Length", b("POST /s HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"), 400),
        ("conflicting Content-Length", b("POST /s HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400),
        ("duplicate Host", b("GET / HTTP/1.1\r\nHost: web\r\nHost: evil\r\n\r\n"), 400),
        ("no Host on HTTP/1.1", b("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"), 400),
        ("obs-fold", b("GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n 2\r\n\r\n"), 400),
        ("bare LF line ends", b("GET / HTTP/1.1\nHost: web\n\n"), 400),
        ("a bare LF after a field", b("GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\n\r\n"), 400),
        ("whitespace before a colon", b("GET / HTTP/1.1\r\nHost : web\r\n\r\n"), 400),
        ("invalid header name", b("GET / HTTP/1.1\r\nHost: web\r\nX(A): 1\r\n\r\n"), 400),
        ("control character in a value", b("GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\x012\r\n\r\n"), 400),
        ("Transfer-Encoding on HTTP/1.0", b("POST /s HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("malformed request line", b("GET /a b HTTP/1.1\r\nHost: web\r\n\r\n"), 400),
        ("gzip, chunked", b("POST /s HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 501),
        ("identity", b("POST /s HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: identity\r\n\r\n"), 501),
        ("a 64 KiB header line", format!("GET / HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)).into_bytes(), 431),
        ("10 000 headers", ten_thousand.into_bytes(), 431),
    ]
}

async fn hostile_heads_over(tls: bool) {
    let rig = Rig::start("").await;
    let proxy = rig.proxy(tls);
    let (before_4xx, before_5xx) = (
        metric(proxy, &unrouted("4xx")).await,
        metric(proxy, &unrouted("5xx")).await,
    );
    let forms = hostile_heads();
    for (name, bytes, status) in &forms {
        let answer = rig.exchange(tls, bytes).await;
        assert_eq!(statuses(&answer), [*status], "{name}: {answer}");
        for part in [
            "\r\nserver: splitproxy\r\n",
            "\r\ncontent-type: text/plain",
            "\r\nconnection: close\r\n",
        ] {
            assert!(answer.contains(part), "{name}: {part:?} missing: {answer}");
        }
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            !body.trim().is_empty() && !body.contains("127.0.0.1"),
            "{name}: {answer}"
        );
    }
    assert_eq!(rig.probe.hits(), 0, "a hostile head reached the backend");
    // counted like the proxy's other own answers
    let fours = forms.iter().filter(|f| f.2 < 500).count() as u64;
    let fives = forms.len() as u64 - fours;
    assert_eq!(metric(proxy, &unrouted("4xx")).await - before_4xx, fours);
    assert_eq!(metric(proxy, &unrouted("5xx")).await - before_5xx, fives);
    // and the proxy serves on
    let answer = rig
        .exchange(
            tls,
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_are_answered_by_the_proxy_and_never_forwarded() {
    hostile_heads_over(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_over_mtls_are_answered_by_the_proxy_and_never_forwarded() {
    hostile_heads_over(true).await;
}

/// A good request and a smuggling one in one write: the first is served, the second
/// answered in its turn, and the backend sees one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_head_pipelined_after_a_good_one_is_answered_in_order() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        let before = rig.probe.hits();
        let answer = rig
            .exchange(
                tls,
                b"GET /first HTTP/1.1\r\nHost: web\r\n\r\nPOST /s HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await;
        assert_eq!(statuses(&answer), [200, 400], "{answer}");
        assert_eq!(rig.probe.hits() - before, 1);
    }
}

/// Identical repeated Content-Length values are one length (as hyper and HAProxy take
/// them); the usual forms pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_requests_still_pass() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        let answer = rig
            .exchange(
                tls,
                b"\r\nPOST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc\
                  POST /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nxyz\r\n2 ;e\r\n12\r\n0\r\nX-T: 1\r\n\r\n\
                  GET /c HTTP/1.0\r\nHost: web\r\n\r\n",
            )
            .await;
        assert_eq!(statuses(&answer), [200, 200, 200], "{answer}");
        let (_, body) = rig.probe.last();
        assert!(body.is_empty());
    }
    assert_eq!(rig.probe.bodies(), 6);
}

/// Limits above hyper's own defaults (100 fields, a ~400 KiB buffer) are the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_hypers_defaults_are_honoured() {
    let rig = Rig::start("limits:\n  requestHeaders: 1000\n  requestHeaderBytes: 1MiB").await;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n");
    for i in 0..500 {
        head.push_str(&format!("x-h-{i}: {i}\r\n"));
    }
    head.push_str(&format!("x-big: {}\r\n\r\n", "a".repeat(600 * 1024)));
    for tls in [false, true] {
        let answer = rig.exchange(tls, head.as_bytes()).await;
        assert_eq!(
            statuses(&answer),
            [200],
            "{}",
            &answer[..answer.len().min(300)]
        );
        assert_eq!(rig.probe.last().0["x-h-499"], "499");
    }
    // and over them, still the proxy's answer
    let over = head.replace("x-big: ", &format!("x-bigger: {}", "b".repeat(500 * 1024)));
    let answer = rig.exchange(false, over.as_bytes()).await;
    assert_eq!(statuses(&answer), [431], "{answer}");
    assert_eq!(rig.probe.hits(), 2);
}

// === HTTP/1.1 bodies ===

/// Bad chunked framing, after a first good chunk: the head has gone upstream by then.
fn bad_chunked_bodies() -> Vec<(&'static str, &'static str)> {
    vec![
        ("zz", "zz\r\nhello\r\n0\r\n\r\n"),
        ("-5", "-5\r\nhello\r\n0\r\n\r\n"),
        ("5 5", "5 5\r\nhello\r\n0\r\n\r\n"),
        ("a trailing space", "5 \r\nhello\r\n0\r\n\r\n"),
        (
            "an overflowing size",
            "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("a bare LF after a size", "5\nhello\r\n0\r\n\r\n"),
        ("a bare LF after a chunk", "5\r\nhello\n0\r\n\r\n"),
    ]
}

async fn bad_chunked_body(rig: &Rig, tls: bool, chunks: &str) -> String {
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n{chunks}"
    );
    rig.exchange(tls, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_never_give_the_backend_a_whole_body() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        for (name, chunks) in bad_chunked_bodies() {
            let answer = bad_chunked_body(&rig, tls, chunks).await;
            let status = statuses(&answer);
            assert!(
                matches!(status[..], [400] | [502]),
                "{name} (tls {tls}): {answer}"
            );
            assert!(answer.contains("server: splitproxy"), "{name}: {answer}");
        }
    }
    assert_eq!(
        rig.probe.bodies(),
        0,
        "a broken body reached the backend whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_get_400() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        for (name, chunks) in bad_chunked_bodies() {
            let answer = bad_chunked_body(&rig, tls, chunks).await;
            assert_eq!(statuses(&answer), [400], "{name} (tls {tls}): {answer}");
        }
    }
    assert_eq!(rig.probe.bodies(), 0);
}

// === hop-by-hop headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_connection_spares_host_and_framing() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        let answer = rig
            .exchange(
                tls,
                b"POST /h HTTP/1.1\r\nHost: web\r\nConnection: Host, Content-Length, Transfer-Encoding, x-drop\r\n\
                  x-drop: 1\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
                  Keep-Alive: timeout=5\r\nTE: trailers\r\nx-kept: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            )
            .await;
        assert_eq!(statuses(&answer), [200], "{answer}");
        let (h, body) = rig.probe.last();
        assert_eq!(h["host"], "web", "{h:?}");
        assert_eq!(h["content-length"], "5", "{h:?}");
        assert_eq!(body, "hello");
        assert_eq!(h["x-kept"], "1");
        for gone in [
            "x-drop",
            "proxy-authorization",
            "proxy-connection",
            "keep-alive",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
        }
        // the backend's hop-by-hop headers do not come back
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        for gone in ["proxy-authenticate", "x-probe-hop"] {
            assert!(!head.contains(gone), "{gone} reached the client: {answer}");
        }
        assert!(head.contains("\r\nx-backend: probe"), "{answer}");
    }
}

/// An absolute-form target names the host (RFC 9112 section 3.2.2): it decides the route
/// and is the Host the backend gets, whatever the Host header says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_the_host_the_backend_gets() {
    let rig = Rig::start("").await;
    for tls in [false, true] {
        let answer = rig
            .exchange(
                tls,
                b"GET http://web/abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            )
            .await;
        assert_eq!(statuses(&answer), [200], "{answer}");
        assert_eq!(rig.probe.last().0["host"], "web");
        let answer = rig
            .exchange(
                tls,
                b"GET http://evil.example/abs HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            )
            .await;
        assert_eq!(statuses(&answer), [404], "{answer}");
    }
    assert_eq!(rig.probe.hits(), 2);
}

// === HTTP/2 ===

/// An h2 client (the h2 crate, which sends the fields it is given) on one connection to
/// the mTLS proxy with ALPN h2.
async fn h2_client(rig: &Rig) -> h2::client::SendRequest<Bytes> {
    let tls = tls_connect(rig.mtls.addr, &rig.h2).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Send `req` (no body) and wait for the response head.
async fn h2_send(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> Result<Response<h2::RecvStream>, h2::Error> {
    let mut ready = send.clone().ready().await?;
    let (resp, _) = ready.send_request(req, true)?;
    *send = ready;
    resp.await
}

async fn h2_body(resp: Response<h2::RecvStream>) -> String {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_decides_the_route_and_the_host_the_backend_gets() {
    let rig = Rig::start("").await;
    let mut send = h2_client(&rig).await;
    let req = Request::get("https://web/a")
        .header("host", "evil.example")
        .body(())
        .unwrap();
    let resp = h2_send(&mut send, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (h, _) = rig.probe.last();
    assert_eq!(h["host"], "web", "{h:?}");
    assert_eq!(h.get_all("host").iter().count(), 1);
    // the other way round: the route follows :authority, not host
    let req = Request::get("https://evil.example/a")
        .header("host", "web")
        .body(())
        .unwrap();
    let resp = h2_send(&mut send, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(rig.probe.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_preface_after_alpn_h2_closes_the_connection() {
    let rig = Rig::start("").await;
    let tls = tls_connect(rig.mtls.addr, &rig.h2).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let answer = talk(tls, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    // closed (after the server's own SETTINGS, perhaps a GOAWAY), never an HTTP/1.1 answer
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    assert_eq!(rig.probe.hits(), 0);
    // a good h2 client is served
    let mut send = h2_client(&rig).await;
    let resp = h2_send(&mut send, Request::get("https://web/").body(()).unwrap()).await;
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_limits() {
    let rig = Rig::start("limits:\n  requestHeaders: 50").await;
    let mut send = h2_client(&rig).await;
    // more fields than requestHeaders, well within requestHeaderBytes: the proxy's own 431
    let mut req = Request::get("https://web/").body(()).unwrap();
    for i in 0..60 {
        req.headers_mut().append("x-h", http::HeaderValue::from(i));
    }
    let resp = h2_send(&mut send, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.headers()["server"], "splitproxy");
    assert!(h2_body(resp).await.contains("too many fields"));
    // a header list over requestHeaderBytes (h2's SETTINGS_MAX_HEADER_LIST_SIZE): 431
    let req = Request::get("https://web/")
        .header("x-big", "a".repeat(40 * 1024))
        .body(())
        .unwrap();
    let resp = h2_send(&mut send, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(rig.probe.hits(), 0);
    // 10 000 fields are over four times that list size: h2 ends that connection
    let mut flood = h2_client(&rig).await;
    let mut req = Request::get("https://web/").body(()).unwrap();
    for i in 0..10_000 {
        req.headers_mut().append("x-h", http::HeaderValue::from(i));
    }
    match h2_send(&mut flood, req).await {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(
            e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{e:?}"
        ),
    }
    assert_eq!(rig.probe.hits(), 0);
    // the first connection is still fine
    let resp = h2_send(&mut send, Request::get("https://web/").body(()).unwrap()).await;
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
}

// === raw HTTP/2 frames ===

mod frames {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 1;
    pub const ACK: u8 = 1;
    pub const END_HEADERS: u8 = 4;
    pub const REFUSED_STREAM: u32 = 7;
    pub const CANCEL: u32 = 8;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK integer with an `n`-bit prefix under `first`.
    fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A literal field without indexing, new name, no Huffman.
    pub fn field(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0);
        integer(out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        integer(out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }

    /// A GET request's header block.
    pub fn get(authority: &str, path: &str) -> Vec<u8> {
        let mut b = Vec::new();
        // :method GET, :scheme https (static table 2 and 7)
        b.extend_from_slice(&[0x82, 0x87]);
        field(&mut b, ":path", path);
        field(&mut b, ":authority", authority);
        b
    }

    pub struct Frame {
        pub ty: u8,
        pub flags: u8,
        pub payload: Vec<u8>,
    }

    pub async fn read<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Option<Frame> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.ok()?;
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            ty: head[3],
            flags: head[4],
            payload,
        })
    }
}

/// A raw h2 connection over mTLS: preface and empty SETTINGS sent, the server's SETTINGS
/// acknowledged (its limits apply from then on).
async fn h2_raw(rig: &Rig) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_connect(rig.mtls.addr, &rig.h2).await;
    tls.write_all(frames::PREFACE).await.unwrap();
    tls.write_all(&frames::frame(frames::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    loop {
        let f = frames::read(&mut tls).await.expect("server SETTINGS");
        if f.ty == frames::SETTINGS && f.flags & frames::ACK == 0 {
            break;
        }
    }
    tls.write_all(&frames::frame(frames::SETTINGS, frames::ACK, 0, &[]))
        .await
        .unwrap();
    tls
}

/// Read frames until the connection ends (bounded); returns the GOAWAY error code, if one
/// came.
async fn until_closed<S: AsyncRead + Unpin>(io: &mut S) -> Option<u32> {
    let mut goaway = None;
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(f) = frames::read(io).await {
            if f.ty == frames::GOAWAY && f.payload.len() >= 8 {
                goaway = Some(u32::from_be_bytes([
                    f.payload[4],
                    f.payload[5],
                    f.payload[6],
                    f.payload[7],
                ]));
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the attacker's connection stayed open");
    goaway
}

/// Another client's GETs over mTLS h2, all 200 while `done` stays false; how many.
fn steady_client(rig: &Rig, done: watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    let (addr, config) = (rig.mtls.addr, rig.h2.clone());
    tokio::spawn(async move {
        let tls = tls_connect(addr, &config).await;
        let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut served = 0;
        while !*done.borrow() || served < 20 {
            let resp = h2_send(
                &mut send,
                Request::get("https://web/steady").body(()).unwrap(),
            )
            .await
            .expect("the steady client's request failed");
            assert_eq!(resp.status(), StatusCode::OK);
            served += 1;
        }
        served
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_costs_the_attackers_connection_only() {
    let rig = Rig::start("").await;
    let (stop, done) = watch::channel(false);
    let steady = steady_client(&rig, done);
    let mut tls = h2_raw(&rig).await;
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        burst.extend(frames::frame(
            frames::HEADERS,
            frames::END_HEADERS | frames::END_STREAM,
            stream,
            &frames::get("web", "/reset"),
        ));
        burst.extend(frames::frame(
            frames::RST_STREAM,
            0,
            stream,
            &frames::CANCEL.to_be_bytes(),
        ));
    }
    let _ = tls.write_all(&burst).await;
    let goaway = until_closed(&mut tls).await;
    assert_eq!(goaway, Some(0xb), "expected GOAWAY ENHANCE_YOUR_CALM");
    let _ = stop.send(true);
    let served = steady.await.expect("steady client");
    assert!(served >= 20);
    let reset_hits = rig.probe.hits() - served;
    assert!(
        reset_hits < 1000,
        "{reset_hits} of 1000 reset streams reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_costs_the_attackers_connection_only() {
    let rig = Rig::start("").await;
    let (stop, done) = watch::channel(false);
    let steady = steady_client(&rig, done);
    let mut tls = h2_raw(&rig).await;
    let mut flood = frames::frame(frames::HEADERS, 0, 1, &frames::get("web", "/flood"));
    let mut block = Vec::new();
    frames::field(&mut block, "x-flood", "x");
    for _ in 0..10_000 {
        flood.extend(frames::frame(frames::CONTINUATION, 0, 1, &block));
    }
    let _ = tls.write_all(&flood).await;
    let goaway = until_closed(&mut tls).await;
    assert!(goaway.is_some(), "no GOAWAY before the close");
    let _ = stop.send(true);
    let served = steady.await.expect("steady client");
    assert_eq!(rig.probe.hits(), served, "the flood reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_over_the_cap_are_refused_and_never_reach_the_backend() {
    let rig = Rig::start("limits:\n  h2MaxConcurrentStreams: 4").await;
    let mut tls = h2_raw(&rig).await;
    // a client that ignores the advertised limit: 10 streams at once, each held
    for i in 0..10u32 {
        tls.write_all(&frames::frame(
            frames::HEADERS,
            frames::END_HEADERS | frames::END_STREAM,
            2 * i + 1,
            &frames::get("web", "/hold"),
        ))
        .await
        .unwrap();
    }
    let mut refused = 0;
    while refused < 6 {
        let f = tokio::time::timeout(Duration::from_secs(20), frames::read(&mut tls))
            .await
            .expect("no RST_STREAM for the streams over the cap")
            .expect("connection closed");
        if f.ty == frames::RST_STREAM {
            assert_eq!(f.payload, frames::REFUSED_STREAM.to_be_bytes());
            refused += 1;
        }
    }
    // the 4 accepted ones reach the backend; then they are answered
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rig.probe.in_flight.load(Ordering::SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the accepted streams never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = rig.probe.release.send(true);
    let mut answered = 0;
    while answered < 4 {
        let f = tokio::time::timeout(Duration::from_secs(20), frames::read(&mut tls))
            .await
            .expect("no answer for the accepted streams")
            .expect("connection closed");
        if f.ty == frames::DATA && f.flags & frames::END_STREAM != 0 {
            answered += 1;
        }
    }
    assert_eq!(rig.probe.max_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(rig.probe.hits(), 4);
}

// === the connection cap and slowloris ===

/// One HTTP/1.1 request on a raw keep-alive connection; the status.
async fn get_keep_alive(tcp: &mut TcpStream) -> u16 {
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // the probe's answer is small: its whole head and "probe" body
    while !head.ends_with(b"probe") {
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed");
        head.extend_from_slice(&buf[..n]);
    }
    statuses(&String::from_utf8_lossy(&head))[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_in_the_accept_queue_until_one_closes() {
    let probe = Probe::spawn().await;
    let yaml = proxy_doc(&[("web-v1", probe.addr)], "limits:\n  connections: 2")
        + &split_doc("s", "web", &[("web-v1", 1)]);
    // the cap holds across workers
    let proxy = Proxy::start_workers(&yaml, 2).await;
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get_keep_alive(&mut first).await, 200);
    assert_eq!(get_keep_alive(&mut second).await, 200);
    // the third connects (the kernel's queue) and sends, but is not served
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        assert_eq!(get_keep_alive(&mut first).await, 200);
        let waited = tokio::time::timeout(Duration::from_millis(100), third.read(&mut buf)).await;
        assert!(waited.is_err(), "a connection over the cap was served");
    }
    assert_eq!(metric(&proxy, "splitproxy_active_connections").await, 2);
    assert_eq!(probe.hits(), 7);
    // one closes: the third is accepted and served
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(20), third.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&buf[..n])), [200]);
    assert_eq!(get_keep_alive(&mut second).await, 200);
}

/// Raise this process's open-file limit to what 1 000 connections need on both ends.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE is {}: 1 000 slowloris connections need {want}",
        lim.rlim_cur
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_do_not_stop_normal_clients() {
    raise_nofile(4096);
    let probe = Probe::spawn().await;
    let yaml = proxy_doc(&[("web-v1", probe.addr)], "") + &split_doc("s", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let mut slow = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // all of them held open by the proxy, each with a partial head
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&proxy, "splitproxy_active_connections").await < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never held them all"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = client();
    for _ in 0..50 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // over a new connection each time, too
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(get_keep_alive(&mut tcp).await, 200);
    }
    assert_eq!(probe.hits(), 70, "a slowloris head reached the backend");
    drop(slow);
}
