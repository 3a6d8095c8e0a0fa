//! HTTP/2 upstreams (`protocol: h2`) and gRPC through the proxy: real tonic servers
//! (messages written by hand with prost, no protoc), a tonic client over an mTLS HTTP/2
//! connection to the proxy, one multiplexed upstream connection per endpoint and worker,
//! trailers both ways, `TE: trailers`, and the errors of a backend that will not speak h2.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use splitproxy::cmd::pki::{Ca, Issued};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::codec::ProstCodec;
use tonic::{Code, Status};

use crate::support::{assert_two_way_split, Proxy};

// ---- the gRPC service: echo.Echo/Unary and echo.Echo/Stream ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Stream: how many replies.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub server: String,
}

/// Unary: the message back with the server's name; `missing` is NOT_FOUND.
struct Unary(Arc<str>);

impl tower_service::Service<tonic::Request<EchoRequest>> for Unary {
    type Response = tonic::Response<EchoReply>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let req = req.into_inner();
        std::future::ready(if req.message == "missing" {
            Err(Status::not_found("no such echo: missing"))
        } else {
            Ok(tonic::Response::new(EchoReply {
                message: req.message,
                server: self.0.to_string(),
            }))
        })
    }
}

type ReplyStream = tokio_stream::Iter<std::vec::IntoIter<Result<EchoReply, Status>>>;

/// Server streaming: `count` replies `message i`; `missing` ends them with NOT_FOUND.
struct Streaming(Arc<str>);

impl tower_service::Service<tonic::Request<EchoRequest>> for Streaming {
    type Response = tonic::Response<ReplyStream>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    // tonic's stream items are `Result<_, Status>`, large as `Status` is
    #[allow(clippy::result_large_err)]
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let req = req.into_inner();
        let mut items: Vec<Result<EchoReply, Status>> = (0..req.count)
            .map(|i| {
                Ok(EchoReply {
                    message: format!("{} {i}", req.message),
                    server: self.0.to_string(),
                })
            })
            .collect();
        if req.message == "missing" {
            items.push(Err(Status::not_found("the stream ran out of echoes")));
        }
        std::future::ready(Ok(tonic::Response::new(tokio_stream::iter(items))))
    }
}

async fn route_grpc(name: Arc<str>, req: Request<Incoming>) -> Response<tonic::body::Body> {
    match req.uri().path() {
        "/echo.Echo/Unary" => {
            tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                .unary(Unary(name), req)
                .await
        }
        "/echo.Echo/Stream" => {
            tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                .server_streaming(Streaming(name), req)
                .await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

// ---- backends ----

/// An HTTP/2-only backend (prior knowledge, or TLS offering `alpn`): gRPC on `/echo.Echo/*`,
/// anything else answered by `plain_h2` (trailers, headers seen). Counts TCP connections.
struct H2Backend {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    body: Bytes,
}

impl H2Backend {
    async fn spawn(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> H2Backend {
        Self::spawn_with(name, tls, false).await
    }

    /// `one_shot`: each connection is shut down (GOAWAY, then closed) after its first
    /// request, the way a backend that restarts or limits requests per connection does.
    async fn spawn_with(
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        one_shot: bool,
    ) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s, name) = (conns.clone(), seen.clone(), Arc::<str>::from(name));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                // HTTP/2 writes a message in several frames: no Nagle delay between them
                let _ = tcp.set_nodelay(true);
                let (s, name, acceptor) = (s.clone(), name.clone(), acceptor.clone());
                let served = Arc::new(tokio::sync::Notify::new());
                let done = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, name) = (s.clone(), name.clone());
                        done.notify_one();
                        async move {
                            let resp = if req.uri().path().starts_with("/echo.Echo/") {
                                route_grpc(name, req).await
                            } else {
                                plain_h2(&name, &s, req).await
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let io: Box<dyn Io> = match acceptor {
                        None => Box::new(tcp),
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                    };
                    let conn = h2.serve_connection(TokioIo::new(io), svc);
                    let mut conn = std::pin::pin!(conn);
                    if one_shot {
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            _ = served.notified() => conn.as_mut().graceful_shutdown(),
                        }
                    }
                    let _ = conn.await;
                });
            }
        });
        H2Backend { addr, conns, seen }
    }

    fn conns(&self) -> u64 {
        self.conns.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request seen")
    }
}

/// Reads the whole request (trailers included), answers `name` with the trailers
/// `x-checksum: <request body length>` and `grpc-status: 0`; `/download/N` streams N
/// pattern bytes.
async fn plain_h2(
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    req: Request<Incoming>,
) -> Response<tonic::body::Body> {
    if let Some(n) = req.uri().path().strip_prefix("/download/") {
        let n: u64 = n.parse().unwrap_or(0);
        let body = crate::support::PatternBody {
            remaining: n,
            offset: 0,
        };
        return Response::new(tonic::body::Body::new(body));
    }
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let len = body.len();
    seen.lock().unwrap().push(Seen {
        headers: parts.headers,
        trailers,
        body,
    });
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from(len));
    t.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
        Ok(Frame::data(Bytes::from(name.to_string()))),
        Ok(Frame::trailers(t)),
    ];
    let mut resp = Response::new(tonic::body::Body::new(StreamBody::new(tokio_stream::iter(
        frames,
    ))));
    // announced, as HTTP/1.1 needs them to be (hyper sends only announced trailer fields)
    resp.headers_mut().insert(
        "trailer",
        HeaderValue::from_static("x-checksum, grpc-status"),
    );
    resp
}

// ---- PKI, proxy and client ----

struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
    server: Issued,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("grpc test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).unwrap();
        Pki { ca, dir, server }
    }

    /// A backend's TLS settings: the same server certificate, ALPN `alpn`.
    fn backend_tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(splitproxy::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(self.server.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(self.server.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The proxy's `tls:` block (mTLS required) and `services:` lines, as spec lines.
    fn proxy_yaml(&self, services: &str, split: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: grpc\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  exposeBackend: true\n  tls:\n    cert: {d}/server.pem\n    key: {d}/server-key.pem\n    clientCA: {d}/ca.pem\n    clientAuth: require\n  services:\n{services}{split}"
        )
    }

    /// An HTTP/2 client connection to the proxy over mTLS.
    async fn connect<B>(&self, addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: http_body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let client = self
            .ca
            .client("caller", "spiffe://cluster.local/ns/default/sa/caller")
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(splitproxy::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }
}

fn split_yaml(root: &str, backends: &[(&str, u64)]) -> String {
    crate::support::split_doc(root, root, backends)
}

/// tonic's client over one hyper HTTP/2 connection (tonic's own transport is not built).
#[derive(Clone)]
struct Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

type Client = tonic::client::Grpc<Channel>;

async fn grpc_client(pki: &Pki, proxy: &Proxy, authority: &str) -> Client {
    let channel = Channel(pki.connect(proxy.addr).await);
    let origin: http::Uri = format!("https://{authority}").parse().unwrap();
    tonic::client::Grpc::with_origin(channel, origin)
}

async fn unary(client: &mut Client, message: &str) -> Result<tonic::Response<EchoReply>, Status> {
    client.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: message.into(),
        count: 0,
    });
    let path = http::uri::PathAndQuery::from_static("/echo.Echo/Unary");
    client
        .unary(req, path, ProstCodec::<EchoRequest, EchoReply>::default())
        .await
}

/// Server streaming: the replies, then the status the trailers carried.
async fn stream(client: &mut Client, message: &str, count: u32) -> (Vec<EchoReply>, Status) {
    client.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: message.into(),
        count,
    });
    let path = http::uri::PathAndQuery::from_static("/echo.Echo/Stream");
    let resp = client
        .server_streaming(req, path, ProstCodec::<EchoRequest, EchoReply>::default())
        .await
        .expect("stream response head");
    let mut stream = resp.into_inner();
    let mut replies = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(r)) => replies.push(r),
            Ok(None) => {
                // the OK status came in trailers
                let trailers = stream.trailers().await.unwrap().expect("trailers");
                assert_eq!(trailers.get("grpc-status").unwrap(), "0");
                return (replies, Status::ok(""));
            }
            Err(status) => return (replies, status),
        }
    }
}

// ---- tests ----

#[tokio::test]
async fn grpc_through_the_proxy_over_mtls_split_by_weight() {
    let pki = Pki::new();
    // one backend over plain h2 (prior knowledge), the other over TLS with ALPN h2
    let a = H2Backend::spawn("echo-a", None).await;
    let b = H2Backend::spawn("echo-b", Some(pki.backend_tls(&[b"h2"]))).await;
    let d = pki.dir.path().display();
    let services = format!(
        "    echo-a:\n      endpoints: [\"{}\"]\n      protocol: h2\n    echo-b:\n      endpoints: [\"{}\"]\n      protocol: h2\n      tls:\n        ca: {d}/ca.pem\n        serverName: localhost\n",
        a.addr, b.addr
    );
    let yaml = pki.proxy_yaml(
        &services,
        &split_yaml("echo", &[("echo-a", 3), ("echo-b", 1)]),
    );
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let mut client = grpc_client(&pki, &proxy, "echo").await;

    let n = 400;
    let mut counts = [0u64; 2];
    for i in 0..n {
        let resp = unary(&mut client, &format!("hello {i}")).await.unwrap();
        let reply = resp.get_ref();
        assert_eq!(reply.message, format!("hello {i}"));
        match reply.server.as_str() {
            "echo-a" => counts[0] += 1,
            "echo-b" => counts[1] += 1,
            other => panic!("reply from {other}"),
        }
    }
    assert_two_way_split(counts, [3.0, 1.0]);
    // one upstream connection per endpoint (one worker) carried all the calls
    assert_eq!((a.conns(), b.conns()), (1, 1));

    // a non-OK status with its message, through the proxy
    let status = unary(&mut client, "missing").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such echo: missing");

    // server streaming: every reply, then grpc-status in the trailers
    for _ in 0..4 {
        let (replies, status) = stream(&mut client, "tick", 25).await;
        assert_eq!(status.code(), Code::Ok, "{status:?}");
        assert_eq!(replies.len(), 25);
        assert!(replies
            .iter()
            .enumerate()
            .all(|(i, r)| r.message == format!("tick {i}")));
        // all from one backend
        assert!(replies.iter().all(|r| r.server == replies[0].server));
    }
    // a stream that ends in NOT_FOUND: the status is in the trailers, after the replies
    let (replies, status) = stream(&mut client, "missing", 3).await;
    assert_eq!(replies.len(), 3);
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "the stream ran out of echoes");
}

#[tokio::test]
async fn concurrent_requests_share_one_multiplexed_upstream_connection() {
    let pki = Pki::new();
    let backend = H2Backend::spawn("echo", None).await;
    let services = format!(
        "    echo-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n",
        backend.addr
    );
    let yaml = pki.proxy_yaml(&services, &split_yaml("echo", &[("echo-v1", 1)]));
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let client = Channel(pki.connect(proxy.addr).await);
    for round in 0..3 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..32 {
            let mut c =
                tonic::client::Grpc::with_origin(client.clone(), "https://echo".parse().unwrap());
            calls.spawn(async move {
                unary(&mut c, &format!("{round}-{i}"))
                    .await
                    .map(|r| r.into_inner().message)
            });
        }
        let mut got = Vec::new();
        while let Some(done) = calls.join_next().await {
            got.push(done.unwrap().unwrap());
        }
        assert_eq!(got.len(), 32);
    }
    assert_eq!(
        backend.conns(),
        1,
        "96 requests, 32 at a time, on one connection"
    );
}

#[tokio::test]
async fn a_refused_h2_connect_is_a_connect_failure_and_is_retried() {
    let pki = Pki::new();
    let backend = H2Backend::spawn("echo", None).await;
    // the first endpoint's port is bound but not listening (held, so nothing else can take
    // it): connections are refused, and retried on the second
    let dead = tokio::net::TcpSocket::new_v4().unwrap();
    dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let services = format!(
        "    echo-v1:\n      endpoints: [\"{dead_addr}\", \"{}\"]\n      protocol: h2\n",
        backend.addr
    );
    let yaml = pki.proxy_yaml(&services, &split_yaml("echo", &[("echo-v1", 1)]));
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let mut client = grpc_client(&pki, &proxy, "echo").await;
    for i in 0..20 {
        let reply = unary(&mut client, &format!("{i}")).await.unwrap();
        assert_eq!(reply.get_ref().message, format!("{i}"));
    }
    assert_eq!(backend.conns(), 1);
    drop(dead);
}

#[tokio::test]
async fn an_upstream_h2_connection_the_backend_shuts_down_is_replaced() {
    let pki = Pki::new();
    let backend = H2Backend::spawn_with("echo", None, true).await;
    let services = format!(
        "    echo-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n",
        backend.addr
    );
    let yaml = pki.proxy_yaml(&services, &split_yaml("echo", &[("echo-v1", 1)]));
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let mut client = grpc_client(&pki, &proxy, "echo").await;
    for i in 0..20 {
        let reply = unary(&mut client, &format!("{i}")).await.unwrap();
        assert_eq!(reply.get_ref().message, format!("{i}"));
    }
    assert_eq!(
        backend.conns(),
        20,
        "one connection per request, each replaced"
    );
}

#[tokio::test]
async fn a_backend_whose_tls_will_not_speak_h2_gets_a_clear_502() {
    let pki = Pki::new();
    // TLS that offers only http/1.1: the handshake agrees on no h2
    let backend = H2Backend::spawn("echo", Some(pki.backend_tls(&[b"http/1.1"]))).await;
    let d = pki.dir.path().display();
    let services = format!(
        "    echo-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n      tls:\n        ca: {d}/ca.pem\n        serverName: localhost\n",
        backend.addr
    );
    let yaml = pki.proxy_yaml(&services, &split_yaml("echo", &[("echo-v1", 1)]));
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let mut sender = pki.connect(proxy.addr).await;
    let req = Request::get("https://echo/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["server"], "splitproxy");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("echo-v1"), "{body}");
    assert!(!body.contains("127.0.0.1"), "no internal address: {body}");
}

/// A request body with trailers, for an HTTP/2 client.
fn body_with_trailers(
    data: &'static str,
    trailers: &[(&'static str, &'static str)],
) -> TrailerBody {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, HeaderValue::from_static(v));
    }
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(data.as_bytes()))),
        Ok(Frame::trailers(t)),
    ];
    StreamBody::new(tokio_stream::iter(frames))
}

type TrailerBody =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

#[tokio::test]
async fn trailers_pass_both_ways_and_te_trailers_reaches_an_h2_backend() {
    let pki = Pki::new();
    let backend = H2Backend::spawn("plain-h2", None).await;
    let services = format!(
        "    web-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n",
        backend.addr
    );
    let yaml = pki.proxy_yaml(&services, &split_yaml("web", &[("web-v1", 1)]));
    let proxy = Proxy::start_workers(&yaml, 1).await;

    // HTTP/2 client: request trailers reach the backend, response trailers the client
    let mut sender = pki.connect::<TrailerBody>(proxy.addr).await;
    let req = Request::post("https://web/t")
        .header("te", "trailers")
        .body(body_with_trailers("hello", &[("x-request-sum", "5")]))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-checksum"], "5");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "plain-h2");
    let seen = backend.last();
    assert_eq!(seen.body, "hello");
    assert_eq!(
        seen.trailers.expect("request trailers")["x-request-sum"],
        "5"
    );
    assert_eq!(seen.headers["te"], "trailers");
    // the proxy's new request id reaches an HTTP/2 backend too, once
    let ids: Vec<_> = seen.headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0].len(), 36, "a UUID: {:?}", ids[0]);
    // and the forwarding fields, once each (an HTTP/1.1 head writes them, HTTP/2 inserts)
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        let n = seen.headers.get_all(name).iter().count();
        assert_eq!(n, 1, "{name}: {:?}", seen.headers);
    }

    // without TE the backend gets none
    let req = Request::get("https://web/t")
        .body(body_with_trailers("", &[]))
        .unwrap();
    sender.send_request(req).await.unwrap();
    assert!(backend.last().headers.get("te").is_none());
}

#[tokio::test]
async fn large_bodies_stream_both_ways_over_an_h2_upstream_and_an_upgrade_is_not_forwarded() {
    let backend = H2Backend::spawn("plain-h2", None).await;
    let yaml = format!(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: t\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  services:\n    web-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n{}",
        backend.addr,
        split_yaml("web", &[("web-v1", 1)])
    );
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let client = crate::support::client();
    // past every default HTTP/2 flow-control window, both ways
    let n = 3_000_000u64;
    let upload: Vec<u8> = (0..n).map(crate::support::pattern_byte).collect();
    let req = Request::post(proxy.url("/up"))
        .header("host", "web")
        .body(Full::new(Bytes::from(upload.clone())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert!(backend.last().body == upload, "the upload arrived whole");
    let expected: Vec<u8> = (0..n).map(crate::support::pattern_byte).collect();
    let resp = client
        .request(
            Request::get(proxy.url(&format!("/download/{n}")))
                .header("host", "web")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body == expected, "{} bytes", body.len());
    // a WebSocket handshake to an HTTP/2 backend: a plain request there, no upgrade
    let req = Request::get(proxy.url("/ws"))
        .header("host", "web")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = backend.last();
    assert!(seen.headers.get("upgrade").is_none() && seen.headers.get("connection").is_none());
}

#[tokio::test]
async fn an_http11_client_gets_chunked_trailers_when_it_sent_te_trailers() {
    let backend = H2Backend::spawn("plain-h2", None).await;
    let yaml = format!(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: t\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  services:\n    web-v1:\n      endpoints: [\"{}\"]\n      protocol: h2\n{}",
        backend.addr,
        split_yaml("web", &[("web-v1", 1)])
    );
    let proxy = Proxy::start_workers(&yaml, 1).await;
    let mut tcp = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    // request trailers from an HTTP/1.1 chunked body reach the h2 backend too
    tcp.get_mut()
        .write_all(b"POST /t HTTP/1.1\r\nHost: web\r\nTE: trailers\r\nConnection: TE\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-request-sum: 3\r\n\r\n")
        .await
        .unwrap();
    let (head, body, trailers) = read_chunked(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"plain-h2");
    assert!(trailers.contains("x-checksum: 3\r\n"), "{trailers:?}");
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    let seen = backend.last();
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.body, "abc");
    assert_eq!(
        seen.trailers.expect("request trailers")["x-request-sum"],
        "3"
    );

    // TE with other codings: only `trailers` goes on (HTTP/2 allows no other)
    tcp.get_mut()
        .write_all(
            b"GET /t HTTP/1.1\r\nHost: web\r\nTE: gzip;q=0.5, Trailers\r\nConnection: te\r\n\r\n",
        )
        .await
        .unwrap();
    let (_, _, trailers) = read_chunked(&mut tcp).await;
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    let seen = backend.last();
    assert_eq!(
        seen.headers.get_all("te").iter().collect::<Vec<_>>(),
        ["trailers"]
    );

    // without TE: trailers the same response comes without them, on the same connection
    for te in ["", "TE: gzip\r\n"] {
        let req = format!("GET /t HTTP/1.1\r\nHost: web\r\n{te}\r\n");
        tcp.get_mut().write_all(req.as_bytes()).await.unwrap();
        let (_, body, trailers) = read_chunked(&mut tcp).await;
        assert_eq!(body, b"plain-h2");
        assert_eq!(trailers, "");
        assert!(backend.last().headers.get("te").is_none(), "{te}");
    }
}

/// A chunked HTTP/1.1 response: head, body, trailer section (without the final CRLF).
async fn read_chunked(tcp: &mut BufReader<TcpStream>) -> (String, Vec<u8>, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        tcp.read_line(&mut line).await.unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{head}"
    );
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        tcp.read_line(&mut size).await.unwrap();
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        if size == 0 {
            break;
        }
        let mut chunk = vec![0; size + 2];
        tcp.read_exact(&mut chunk).await.unwrap();
        body.extend_from_slice(&chunk[..size]);
    }
    let mut trailers = String::new();
    loop {
        let mut line = String::new();
        tcp.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        trailers.push_str(&line.to_ascii_lowercase());
    }
    (head, body, trailers)
}

#[test]
fn protocol_is_http1_or_h2_and_anything_else_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let doc = |protocol: &str| {
        format!(
            "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: t\nspec:\n  services:\n    grpc-echo:\n      endpoints: [\"127.0.0.1:50051\"]\n{protocol}    web: [\"127.0.0.1:8080\"]\n"
        )
    };
    let load = |yaml: String| {
        std::fs::write(&path, yaml).unwrap();
        splitproxy::config::load(&path)
    };
    let cfg = load(doc("      protocol: h2\n")).unwrap();
    let proto = |cfg: &splitproxy::config::Config, s: &str| cfg.proxy.services[s].protocol;
    assert_eq!(proto(&cfg, "grpc-echo"), splitproxy::config::Protocol::H2);
    assert_eq!(proto(&cfg, "web"), splitproxy::config::Protocol::Http1);
    let cfg = load(doc("      protocol: http1\n")).unwrap();
    assert_eq!(
        proto(&cfg, "grpc-echo"),
        splitproxy::config::Protocol::Http1
    );
    let cfg = load(doc("")).unwrap();
    assert_eq!(
        proto(&cfg, "grpc-echo"),
        splitproxy::config::Protocol::Http1
    );
    let errors: Vec<String> = load(doc("      protocol: h3\n"))
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.services.grpc-echo.protocol: must be http1 or h2, got \"h3\""),
        "{errors:?}"
    );
}
