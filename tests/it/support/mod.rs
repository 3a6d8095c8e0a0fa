//! Test fixtures: real hyper backends on 127.0.0.1:0 that count and record what they get,
//! a real proxy started from YAML in a temporary folder, and small HTTP clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitproxy::Server;
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A backend that answers with its name in the body and in `x-backend`, counts requests
/// and remembers the last request's headers. Special paths: `/hang` never answers,
/// `/upload` reads the whole body and answers `bytes=N sum=S`, `/download/N` streams N
/// bytes, `/slow/MS` answers after MS milliseconds, `/ws` accepts an upgrade and echoes bytes,
/// `/close` answers and closes the connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicU64>,
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
}

impl Backend {
    pub async fn spawn(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let hits = Arc::new(AtomicU64::new(0));
        let last_headers = Arc::new(Mutex::new(None));
        let conns = Arc::new(AtomicU64::new(0));
        let (n, h, l, c) = (
            name.to_string(),
            hits.clone(),
            last_headers.clone(),
            conns.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (n, h, l) = (n.clone(), h.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, h, l) = (n.clone(), h.clone(), l.clone());
                        async move { Ok::<_, Infallible>(backend_answer(&n, &h, &l, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            hits,
            conns,
            last_headers,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.last_headers
            .lock()
            .unwrap()
            .clone()
            .expect("backend saw no request")
    }
}

async fn backend_answer(
    name: &str,
    hits: &AtomicU64,
    last: &Mutex<Option<HeaderMap>>,
    mut req: Request<Incoming>,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    *last.lock().unwrap() = Some(req.headers().clone());
    let path = req.uri().path().to_string();
    let mut resp = if path == "/hang" {
        std::future::pending::<()>().await;
        unreachable!()
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(name.to_string()))
    } else if path == "/upload" {
        let mut body = req.into_body();
        let (mut bytes, mut sum) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                sum = data
                    .iter()
                    .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(*b as u64));
            }
        }
        Response::new(full(format!("bytes={bytes} sum={sum}")))
    } else if let Some(n) = path.strip_prefix("/download/") {
        let n: u64 = n.parse().unwrap_or(0);
        Response::new(
            PatternBody {
                remaining: n,
                offset: 0,
            }
            .boxed(),
        )
    } else if path == "/close" {
        // answer, then close the connection (hyper honours its own `connection: close`)
        let mut r = Response::new(full(name.to_string()));
        r.headers_mut()
            .insert("connection", "close".parse().unwrap());
        r
    } else if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(full(String::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r
    } else {
        let mut r = Response::new(full(name.to_string()));
        // a hop-by-hop header the proxy must not pass back
        r.headers_mut()
            .insert("connection", "x-backend-private".parse().unwrap());
        r.headers_mut()
            .insert("x-backend-private", "1".parse().unwrap());
        r
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

fn full(s: String) -> BoxBody {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}

/// The byte at position `i` of a pattern stream.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// A body of `remaining` pattern bytes, made in 64 KiB chunks as they are polled.
pub struct PatternBody {
    pub remaining: u64,
    pub offset: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        let start = self.offset;
        let chunk: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.remaining -= n;
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// The `upload` checksum of `n` pattern bytes.
pub fn pattern_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |s, i| {
        s.wrapping_mul(31).wrapping_add(pattern_byte(i) as u64)
    })
}

/// A proxy started in-process from YAML written to a temporary folder.
pub struct Proxy {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    /// Write `yaml` as `config.yaml` in a new temporary folder and start a proxy on it.
    pub async fn start(yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Self::start_at(dir, path).await
    }

    /// As `start`, with `workers` worker threads (each its own current-thread runtime and
    /// upstream pool, as the binary runs them).
    pub async fn start_workers(yaml: &str, workers: usize) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Self::start_with(dir, path, workers).await
    }

    /// Start on an existing file or folder inside `dir`.
    pub async fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Proxy {
        Self::start_with(dir, path, 1).await
    }

    async fn start_with(dir: tempfile::TempDir, path: PathBuf, workers: usize) -> Proxy {
        let server = match Server::start_with(path.clone(), workers).await {
            Ok(s) => s,
            Err(splitproxy::StartError::Config(errors)) => {
                panic!(
                    "config rejected: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            }
            Err(e) => panic!("start failed: {e}"),
        };
        let (addr, admin) = (server.proxy_addr, server.admin_addr);
        Proxy {
            server: Some(server),
            dir,
            path,
            addr,
            admin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replace the config file the way editors do: write beside it, rename over it.
    pub fn rewrite(&self, yaml: &str) {
        rewrite(&self.path, yaml);
    }

    pub fn version(&self) -> u64 {
        self.server.as_ref().expect("running").version()
    }

    /// Wait (bounded) until the live configuration version reaches `version`.
    pub async fn wait_version(&self, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.version() < version {
            assert!(
                Instant::now() < deadline,
                "config version {version} not live after 10s (at {})",
                self.version()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Wait, `within` at most, until `ok` holds; fails the test naming `what` otherwise.
pub async fn eventually(what: &str, within: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn rewrite(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A `Proxy` document on 127.0.0.1:0 with the given services, plus extra spec lines.
pub fn proxy_doc(services: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut s = String::from(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: test\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  exposeBackend: true\n",
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("  services:\n");
    for (name, addr) in services {
        s.push_str(&format!("    {name}: [\"{addr}\"]\n"));
    }
    s
}

/// A v1alpha2 TrafficSplit document.
pub fn split_doc(name: &str, root: &str, backends: &[(&str, u64)]) -> String {
    let mut s = format!(
        "---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  service: {root}\n  backends:\n"
    );
    for (svc, w) in backends {
        s.push_str(&format!("  - service: {svc}\n    weight: {w}\n"));
    }
    s
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// GET `url` with `Host: host`.
pub async fn get(client: &TestClient, url: &str, host: &str) -> Answer {
    let req = Request::get(url)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET the admin endpoint `path`; returns status and body.
pub async fn admin_get(proxy: &Proxy, path: &str) -> (StatusCode, String) {
    let a = get(
        &client(),
        &format!("http://{}{}", proxy.admin, path),
        "localhost",
    )
    .await;
    (a.status, a.body)
}

/// Empty request body helper for hyper's connection-level clients.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// Chi-square critical value for p = 1e-6 with 1 degree of freedom: a correct split
/// exceeds it once in a million runs.
pub const CHI2_1DF_P1E6: f64 = 23.93;

/// Two backends' counts agree with their weights: chi-square with 1 degree of freedom
/// below the p = 1e-6 critical value.
pub fn assert_two_way_split(observed: [u64; 2], weights: [f64; 2]) {
    let r = splitproxy::cmd::stats::chi_square(&observed, &weights);
    assert!(
        r.statistic < CHI2_1DF_P1E6,
        "observed {observed:?} for weights {weights:?}: chi2 {} p {}",
        r.statistic,
        r.p_value
    );
}

/// A port that refuses connections for as long as this lives: bound and never listening,
/// so the kernel gives it to no other test. (A port merely found free can be handed to a
/// test running beside, and a request meant to be refused then reaches its server.)
pub struct RefusedPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

pub fn refused_port() -> RefusedPort {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    RefusedPort {
        _socket: socket,
        addr,
    }
}

/// Wait for a `splitproxy run` child to log that it serves, and return its proxy and
/// admin addresses. Its stderr is drained from then on (a full pipe would block it). A
/// child that exits first, or says nothing of the kind within 60 s, fails the test with
/// what it logged.
pub fn serving(child: &mut std::process::Child) -> (SocketAddr, SocketAddr) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // once the line is found nobody listens: keep draining all the same
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(" split(s) on ") => break line,
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "splitproxy did not say it serves ({e:?}); it logged:\n{}",
                seen.join("\n")
            ),
        }
    };
    let addr = |after: &str| -> SocketAddr {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split([' ', ',']).next().unwrap().parse().unwrap()
    };
    (addr(" on "), addr("admin on "))
}
