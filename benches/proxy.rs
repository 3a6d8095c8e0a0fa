//! One proxied request through the real server path, over loopback: the proxy started
//! in-process (`app::Server`, one worker thread, the shipped request path: H1Guard,
//! hyper's server, routing, the HTTP/1.1 upstream client and its pool) in front of an
//! in-process hyper backend, a weighted split of two services. The client keeps one
//! connection open, so each iteration is a keep-alive request and its response, end to
//! end: a regression anywhere on the request path shows up here.
//!
//! `cargo bench --bench proxy` (the time includes the client, the backend and the
//! kernel's loopback; compare runs on the same machine, as ratios)

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Connections with a request in flight at once, in the throughput case.
const CONCURRENT: usize = 32;

/// A backend answering every request with a small body, as the end-to-end bench's do.
async fn backend(rt: &Runtime) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"v1\n")));
                    resp.headers_mut()
                        .insert("content-type", "text/plain".parse().expect("value"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// The timeouts are raised: the throughput case's connections are opened at the start and
/// wait through the other cases without a request, longer than `clientHeader`'s default
/// 10 s after which the proxy closes such a connection.
fn config(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: bench\nspec:\n  \
         listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  timeouts:\n    clientHeader: 10m\n    \
         idle: 10m\n  services:\n    v1: [\"{v1}\"]\n    \
         v2: [\"{v2}\"]\n---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n\
         metadata:\n  name: web\n  namespace: default\nspec:\n  service: my-website\n  \
         backends:\n  - service: v1\n    weight: 50\n  - service: v2\n    weight: 50\n"
    )
}

fn proxied_request(c: &mut Criterion) {
    // the client and the backends on this thread (they run while an iteration blocks on
    // its request), the proxy on its worker thread: two threads, as on the bench's CPUs
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    let (server, mut h1, mut h2, mut many) = rt.block_on(async {
        let (v1, v2) = (backend(&rt).await, backend(&rt).await);
        std::fs::write(&path, config(v1, v2)).expect("write config");
        let server = splitproxy::app::Server::start(path.clone())
            .await
            .expect("proxy starts");
        let tcp = TcpStream::connect(server.proxy_addr)
            .await
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let tcp = TcpStream::connect(server.proxy_addr)
            .await
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        let (h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let mut many = Vec::with_capacity(CONCURRENT);
        for _ in 0..CONCURRENT {
            let tcp = TcpStream::connect(server.proxy_addr)
                .await
                .expect("connect");
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            many.push(sender);
        }
        (server, h1, h2, many)
    });

    let mut group = c.benchmark_group("proxy");
    group.bench_function("http1_keepalive_get", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::get("/")
                    .header("host", "my-website")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                // the previous exchange's end reaches the connection task first
                h1.ready().await.expect("connection ready");
                let resp = h1.send_request(req).await.expect("response");
                assert!(resp.status().is_success(), "{}", resp.status());
                resp.into_body().collect().await.expect("body")
            })
        })
    });
    group.bench_function("h2c_get", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::get("http://my-website/")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                h2.ready().await.expect("connection ready");
                let resp = h2.send_request(req).await.expect("response");
                assert!(resp.status().is_success(), "{}", resp.status());
                resp.into_body().collect().await.expect("body")
            })
        })
    });
    // many requests in flight, as the end-to-end bench has: wake-ups are shared, and the
    // time is mostly the CPU each request costs (per request: divide by CONCURRENT)
    group.throughput(criterion::Throughput::Elements(CONCURRENT as u64));
    group.bench_function("http1_keepalive_x32", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sends = many.iter_mut().map(|sender| async move {
                    sender.ready().await.expect("connection ready");
                    let req = Request::get("/")
                        .header("host", "my-website")
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let resp = sender.send_request(req).await.expect("response");
                    assert!(resp.status().is_success(), "{}", resp.status());
                    resp.into_body().collect().await.expect("body")
                });
                futures_util::future::join_all(sends).await
            })
        })
    });
    group.finish();
    server.shutdown();
}

criterion_group!(benches, proxied_request);
criterion_main!(benches);
