//! The request path over real sockets: routing by host, weighted splits, the proxy's own
//! answers, timeouts, headers, streaming, upgrades and HTTP/2.

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn two_backends(w1: u64, w2: u64) -> (Backend, Backend, Proxy) {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let yaml = proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
        + &split_doc("web-split", "web", &[("web-v1", w1), ("web-v2", w2)]);
    let proxy = Proxy::start(&yaml).await;
    (v1, v2, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matches_every_kubernetes_form_port_and_case_ignored() {
    let (v1, _v2, proxy) = two_backends(1, 0).await;
    let c = client();
    for host in [
        "web",
        "web:8080",
        "WEB",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster",
        "Web.Default.Svc.Cluster.Local:443",
        "web.default.svc.cluster.local.",
    ] {
        let a = get(&c, &proxy.url("/"), host).await;
        assert_eq!(a.status, StatusCode::OK, "host {host}: {}", a.body);
        assert_eq!(a.body, "v1", "host {host}");
    }
    assert_eq!(v1.hits(), 8);
    for host in ["web.other", "webx", "web.default.svc.cluster.remote"] {
        let a = get(&c, &proxy.url("/"), host).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_passes_chi_square_over_20000_requests() {
    let (v1, v2, proxy) = two_backends(90, 10).await;
    let c = client();
    let url = proxy.url("/");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..2500 {
                let a = get(&c, &url, "web").await;
                assert_eq!(a.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let observed = [v1.hits(), v2.hits()];
    assert_eq!(observed[0] + observed[1], 20_000);
    assert_two_way_split(observed, [90.0, 10.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_receives_nothing() {
    let (a, b, z) = (
        Backend::spawn("a").await,
        Backend::spawn("b").await,
        Backend::spawn("z").await,
    );
    let yaml = proxy_doc(&[("a", a.addr), ("b", b.addr), ("z", z.addr)], "")
        + &split_doc("s", "root", &[("a", 1), ("z", 0), ("b", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for _ in 0..2000 {
        assert_eq!(
            get(&c, &proxy.url("/"), "root").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(z.hits(), 0);
    assert!(
        a.hits() > 800 && b.hits() > 800,
        "{} {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_weights_answer_503_or_go_to_the_root_service() {
    let (v1, v2, proxy) = two_backends(0, 0).await;
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        a.body.contains("default/web-split") && a.body.contains("weight"),
        "{}",
        a.body
    );
    assert_eq!(a.headers["server"], "splitproxy");
    assert_eq!(v1.hits() + v2.hits(), 0);

    // with the root service defined in spec.services, traffic goes there (as Linkerd does)
    let root = Backend::spawn("root").await;
    let yaml = proxy_doc(
        &[("web", root.addr), ("web-v1", v1.addr), ("web-v2", v2.addr)],
        "",
    ) + &split_doc("web-split", "web", &[("web-v1", 0), ("web-v2", 0)]);
    let proxy = Proxy::start(&yaml).await;
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_whose_root_is_also_a_backend_is_normal() {
    // Argo Rollouts writes splits like this one: root service `web` is also a backend.
    let (stable, canary) = (
        Backend::spawn("stable").await,
        Backend::spawn("canary").await,
    );
    let yaml = proxy_doc(&[("web", stable.addr), ("web-canary", canary.addr)], "")
        + &split_doc("rollout", "web", &[("web", 0), ("web-canary", 100)]);
    let proxy = Proxy::start(&yaml).await;
    for _ in 0..20 {
        assert_eq!(get(&client(), &proxy.url("/"), "web").await.body, "canary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_names_the_host() {
    let (_v1, _v2, proxy) = two_backends(1, 1).await;
    let a = get(&client(), &proxy.url("/"), "nope.example").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("nope.example"), "{}", a.body);
    assert_eq!(a.headers["server"], "splitproxy");
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_502_fast() {
    let refused = refused_port();
    let yaml = proxy_doc(&[("gone", refused.addr)], "") + &split_doc("s", "web", &[("gone", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let start = Instant::now();
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    // the body names the backend service, never its address or the error chain
    assert_eq!(a.body, "upstream gone is unreachable\n");
    assert!(
        !a.body.contains(&refused.addr.port().to_string()),
        "{}",
        a.body
    );
    assert_eq!(a.headers["server"], "splitproxy");
    // refused connections fail at once, long before the 2s connect timeout
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_is_504_at_the_configured_timeout() {
    let slow = Backend::spawn("slow").await;
    let yaml = proxy_doc(&[("slow", slow.addr)], "timeouts:\n  upstream: 300ms")
        + &split_doc("s", "web", &[("slow", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let start = Instant::now();
    let a = get(&client(), &proxy.url("/hang"), "web").await;
    let took = start.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert!(
        a.body.contains("slow") && a.body.contains("300ms"),
        "{}",
        a.body
    );
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_once_when_the_client_sent_none() {
    let (v1, _v2, proxy) = two_backends(1, 0).await;
    for _ in 0..2 {
        let req = Request::get(proxy.url("/"))
            .header("host", "web.default")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client(), req).await.status, StatusCode::OK);
        let h = v1.last_headers();
        for (name, value) in [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "web.default"),
        ] {
            let all: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(all, [value], "{name}: {h:?}");
        }
        assert!(!h.contains_key("x-forwarded-client-cert"), "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_removed_and_forwarding_headers_set() {
    let (v1, _v2, proxy) = two_backends(1, 0).await;
    let req = Request::get(proxy.url("/path?q=1"))
        .header("host", "Web.default:8080")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.7")
        .header(
            "x-forwarded-client-cert",
            "By=spoofed;URI=spiffe://evil/ns/x/sa/admin",
        )
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    let h = v1.last_headers();
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-forwarded-client-cert",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
    }
    assert_ne!(
        h.get("connection").map(|v| v.to_str().unwrap()),
        Some("keep-alive, x-hop")
    );
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(
        h["host"], "Web.default:8080",
        "Host must be kept as the client sent it"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "Web.default:8080");
    // the backend's own hop-by-hop header does not come back either
    assert!(
        !a.headers.contains_key("x-backend-private"),
        "{:?}",
        a.headers
    );
    assert_eq!(a.headers["x-splitproxy-backend"], "web-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_intact() {
    const N: u64 = 100 * 1024 * 1024;
    // the upstream timeout runs from the request's start: give a slow machine room for 100 MB
    let v1 = Backend::spawn("v1").await;
    let yaml = proxy_doc(&[("web-v1", v1.addr)], "timeouts:\n  upstream: 10m")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c: hyper_util::client::legacy::Client<_, PatternBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    // upload: the backend checksums what arrives
    let req = Request::post(proxy.url("/upload"))
        .header("host", "web")
        .body(PatternBody {
            remaining: N,
            offset: 0,
        })
        .unwrap();
    let resp = c.request(req).await.expect("upload");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("bytes={N} sum={}", pattern_sum(N))
    );
    // download: check every byte as it streams
    let req = Request::get(proxy.url(&format!("/download/{N}")))
        .header("host", "web")
        .body(PatternBody {
            remaining: 0,
            offset: 0,
        })
        .unwrap();
    let mut body = c.request(req).await.expect("download").into_body();
    let mut i = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("frame").data_ref() {
            for b in data.iter() {
                assert_eq!(*b, pattern_byte(i), "byte {i}");
                i += 1;
            }
        }
    }
    assert_eq!(i, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    let (_v1, _v2, proxy) = two_backends(1, 0).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    tcp.write_all(b"ping through the tunnel").await.unwrap();
    let mut echo = [0u8; 23];
    tcp.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served_and_split() {
    let (v1, v2, proxy) = two_backends(1, 1).await;
    // one HTTP/2 connection to the proxy; the root service travels in :authority
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..200 {
        let req = Request::get("http://web.default/").body(empty()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
    }
    assert_eq!(v1.hits() + v2.hits(), 200);
    assert!(
        v1.hits() > 50 && v2.hits() > 50,
        "{} {}",
        v1.hits(),
        v2.hits()
    );
    assert_eq!(
        v1.last_headers()["host"],
        "web.default",
        "Host comes from :authority"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_group_matches_select_a_split() {
    let (a, b, stable) = (
        Backend::spawn("api").await,
        Backend::spawn("android").await,
        Backend::spawn("stable").await,
    );
    let yaml = proxy_doc(
        &[
            ("web-api", a.addr),
            ("web-android", b.addr),
            ("web-stable", stable.addr),
        ],
        "",
    ) + r#"---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: ab-test
  namespace: default
spec:
  matches:
  - name: android
    headers:
      user-agent: ".*Android.*"
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: api
  namespace: default
spec:
  matches:
  - name: api
    pathRegex: "/api"
    methods: ["GET"]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: android-split
spec:
  service: web
  matches:
  - kind: HTTPRouteGroup
    name: ab-test
  backends:
  - service: web-android
    weight: 100
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: api-split
spec:
  service: web
  matches:
  - kind: HTTPRouteGroup
    name: api
  backends:
  - service: web-api
    weight: 100
"# + &split_doc("default-split", "web", &[("web-stable", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let req = |path: &str, ua: &str, method: &str| {
        Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", "web")
            .header("user-agent", ua)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send(&c, req("/", "Mozilla/5.0 (Linux; Android 14)", "GET"))
            .await
            .body,
        "android"
    );
    assert_eq!(send(&c, req("/api/users", "curl", "GET")).await.body, "api");
    assert_eq!(
        send(&c, req("/api/users", "curl", "POST")).await.body,
        "stable",
        "method not in the match"
    );
    assert_eq!(
        send(&c, req("/v2/api", "curl", "GET")).await.body,
        "stable",
        "path regex is anchored at the start"
    );
    assert_eq!(send(&c, req("/", "curl", "GET")).await.body, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let (_v1, _v2, proxy) = two_backends(3, 1).await;
    for _ in 0..40 {
        get(&client(), &proxy.url("/"), "web").await;
    }
    assert_eq!(admin_get(&proxy, "/healthz").await.0, StatusCode::OK);
    assert_eq!(admin_get(&proxy, "/readyz").await.0, StatusCode::OK);
    let (status, body) = admin_get(&proxy, "/routes").await;
    assert_eq!(status, StatusCode::OK);
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(routes["version"], 1);
    let backends = routes["splits"][0]["backends"].as_array().unwrap();
    assert_eq!(backends[0]["weight"], 3);
    let total: u64 = backends
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(metrics.contains("splitproxy_requests_total{split=\"default/web-split\",backend=\"web-v1\",code=\"2xx\"}"), "{metrics}");
    assert!(
        metrics.contains("splitproxy_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_are_counted() {
    let v1 = Backend::spawn("v1").await;
    // "zero" has every weight at 0 and no root service to fall back to: 503
    let yaml = proxy_doc(&[("web-v1", v1.addr)], "")
        + &split_doc("web-split", "web", &[("web-v1", 1)])
        + &split_doc("zero", "nothing", &[("web-v1", 0)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let series = |split: &str, backend: &str, code: &str| {
        format!(
            "splitproxy_requests_total{{split=\"{split}\",backend=\"{backend}\",code=\"{code}\"}}"
        )
    };
    let count = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {name}: {metrics}"))
    };
    let (_, before) = admin_get(&proxy, "/metrics").await;
    // every series exists from the load, at 0
    assert_eq!(count(&before, &series("(none)", "(none)", "4xx")), 0);
    assert_eq!(count(&before, &series("default/zero", "(none)", "5xx")), 0);

    for _ in 0..3 {
        assert_eq!(
            get(&c, &proxy.url("/"), "unknown").await.status,
            StatusCode::NOT_FOUND
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get(&c, &proxy.url("/"), "nothing").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(get(&c, &proxy.url("/"), "web").await.status, StatusCode::OK);
    let (_, after) = admin_get(&proxy, "/metrics").await;
    assert_eq!(count(&after, &series("(none)", "(none)", "4xx")), 3);
    assert_eq!(count(&after, &series("default/zero", "(none)", "5xx")), 2);
    assert_eq!(
        count(&after, &series("default/web-split", "web-v1", "2xx")),
        1
    );
    // their durations are observed too
    let durations =
        "splitproxy_request_duration_seconds_count{split=\"(none)\",backend=\"(none)\"}";
    assert_eq!(count(&after, durations), 3);
}

async fn read_all(tcp: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_and_idle_keep_alive_closes_after_idle() {
    let v1 = Backend::spawn("v1").await;
    let yaml = proxy_doc(
        &[("web-v1", v1.addr)],
        "timeouts:\n  clientHeader: 300ms\n  idle: 900ms",
    ) + &split_doc("s", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;

    // half a request head, then nothing
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let start = Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains("server: splitproxy") && answer.contains("connection: close"),
        "{answer}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(v1.hits(), 0);

    // a whole request, then an idle keep-alive connection: open past clientHeader, closed after idle
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_start = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("idle connection never closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes expected on an idle connection");
    let idle = idle_start.elapsed();
    // the idle clock starts when the proxy writes the response, a little before this read
    // returned: allow for that, while staying far above the 300 ms clientHeader timeout
    assert!(
        idle >= Duration::from_millis(600),
        "closed after {idle:?}, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_the_proxys_own_answers() {
    let (v1, _v2, proxy) = two_backends(1, 0).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost web\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("server: splitproxy") && answer.contains("bad request"),
        "{answer}"
    );

    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut req = String::from("GET / HTTP/1.1\r\nHost: web\r\n");
    for i in 0..200 {
        req.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let answer = read_all(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("server: splitproxy"), "{answer}");
    assert_eq!(v1.hits(), 0);
    // the proxy is still fine
    assert_eq!(
        get(&client(), &proxy.url("/"), "web").await.status,
        StatusCode::OK
    );
}

/// Upstream keep-alive, with 2 workers as the binary runs them (one pool each):
/// sequential requests share one pooled connection; concurrent ones use at most one each;
/// a connection the backend closes is not reused, and the request after it still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_closed_ones_never_reused() {
    let v1 = Backend::spawn("v1").await;
    let yaml = proxy_doc(&[("web-v1", v1.addr)], "") + &split_doc("s", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start_workers(&yaml, 2).await;
    // one client connection for certain (a pooling client may open a second one)
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut one, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..200 {
        assert_eq!(get_on(&mut one, "/").await, StatusCode::OK);
    }
    // one client connection -> one worker -> one upstream connection
    let sequential = v1.conns.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sequential, 1,
        "200 sequential requests opened {sequential} upstream connections"
    );

    // the backend closes after each /close answer: every next request still succeeds
    let before = v1.conns.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get_on(&mut one, "/close").await, StatusCode::OK);
        assert_eq!(get_on(&mut one, "/").await, StatusCode::OK);
    }
    let opened = v1.conns.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(
        opened, 20,
        "20 closed connections were replaced by {opened} new ones"
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (client(), proxy.url("/"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let a = get(&c, &url, "web").await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let concurrent = v1.conns.load(std::sync::atomic::Ordering::SeqCst) - sequential - opened;
    assert!(
        concurrent <= 8,
        "8 clients x 50 requests opened {concurrent} more upstream connections"
    );

    assert_eq!(v1.hits(), 200 + 400 + 40);
}

/// GET `path` (Host `web`) on one given client connection; the status, body read.
async fn get_on(
    one: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
) -> StatusCode {
    one.ready().await.expect("client connection open");
    let req = Request::get(path)
        .header("host", "web")
        .body(empty())
        .unwrap();
    let resp = one.send_request(req).await.expect("response");
    let status = resp.status();
    resp.into_body().collect().await.expect("body");
    status
}
