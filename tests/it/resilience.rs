//! A gateway that survives its backends and its clients: retries of requests that never
//! reached a backend (and of safe ones without a body), passive outlier detection, and
//! the request body checks (413 over the limit, 400 for a malformed body found upstream).

use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

// === fixtures ===

/// Answer 200 with the backend's name.
const OK: u8 = 0;
/// Read the whole request, then close the connection without an answer (a reset before
/// a response head, from the proxy's side).
const DROP: u8 = 1;
/// Answer 500.
const FAIL_500: u8 = 2;

/// A backend whose behaviour can be switched while it runs (`OK`, `DROP`, `FAIL_500`).
/// Counts connections, requests that reached it, and requests it answered 200.
struct Flaky {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    conns: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
}

impl Flaky {
    async fn spawn(name: &'static str, mode: u8) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let f = Flaky {
            addr,
            mode: Arc::new(AtomicU8::new(mode)),
            conns: Arc::default(),
            hits: Arc::default(),
            served: Arc::default(),
        };
        let (mode, conns, hits, served) = (
            f.mode.clone(),
            f.conns.clone(),
            f.hits.clone(),
            f.served.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, SeqCst);
                let (mode, hits, served) = (mode.clone(), hits.clone(), served.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (mode, hits, served) = (mode.clone(), hits.clone(), served.clone());
                        async move {
                            hits.fetch_add(1, SeqCst);
                            let m = mode.load(SeqCst);
                            let _ = req.into_body().collect().await;
                            let mut r = Response::new(Full::new(Bytes::from(name)));
                            r.headers_mut().insert("x-backend", name.parse().unwrap());
                            match m {
                                // a service error: hyper closes the connection, no answer
                                DROP => Err("dropped"),
                                FAIL_500 => {
                                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                    Ok(r)
                                }
                                _ => {
                                    served.fetch_add(1, SeqCst);
                                    Ok(r)
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        f
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, SeqCst);
    }
    fn hits(&self) -> u64 {
        self.hits.load(SeqCst)
    }
    fn served(&self) -> u64 {
        self.served.load(SeqCst)
    }
    fn conns(&self) -> u64 {
        self.conns.load(SeqCst)
    }
}

/// A backend that reads request bodies and records each one: bytes read and whether the
/// body ended cleanly. `started` counts requests whose head arrived.
struct BodyBackend {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
    bodies: Arc<Mutex<Vec<(u64, bool)>>>,
}

impl BodyBackend {
    async fn spawn() -> BodyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = BodyBackend {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            started: Arc::default(),
            bodies: Arc::default(),
        };
        let (conns, started, bodies) = (b.conns.clone(), b.started.clone(), b.bodies.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, SeqCst);
                let (started, bodies) = (started.clone(), bodies.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (started, bodies) = (started.clone(), bodies.clone());
                        async move {
                            started.fetch_add(1, SeqCst);
                            let mut body = req.into_body();
                            let (mut n, mut clean) = (0u64, true);
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                                    Err(_) => {
                                        clean = false;
                                        break;
                                    }
                                }
                            }
                            bodies.lock().unwrap().push((n, clean));
                            let text = format!("bytes={n}");
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        b
    }

    fn bodies(&self) -> Vec<(u64, bool)> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A `Proxy` document whose services may have several endpoints, plus extra spec lines.
fn proxy_doc_n(services: &[(&str, &[SocketAddr])], extra: &str) -> String {
    let mut s = String::from(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: test\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n",
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("  services:\n");
    for (name, addrs) in services {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!("    {name}: [{}]\n", list.join(", ")));
    }
    s
}

/// `/routes` as JSON.
async fn routes(proxy: &Proxy) -> Value {
    let (status, body) = admin_get(proxy, "/routes").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str(&body).expect("/routes is JSON")
}

/// The `/routes` entry of backend `service` in the first split.
fn backend<'a>(routes: &'a Value, service: &str) -> &'a Value {
    routes["splits"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["service"] == service)
        .unwrap_or_else(|| panic!("no backend {service} in {routes}"))
}

/// The `/routes` health entry of `endpoint` of backend `service` in the first split.
fn endpoint_health<'a>(routes: &'a Value, service: &str, endpoint: SocketAddr) -> &'a Value {
    backend(routes, service)["health"]
        .as_array()
        .expect("health")
        .iter()
        .find(|e| e["endpoint"] == endpoint.to_string())
        .unwrap_or_else(|| panic!("no endpoint {endpoint} in {routes}"))
}

/// The value of the series `name{labels}` in `/metrics` (0 when absent).
async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let (_, text) = admin_get(proxy, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Wait (bounded) until `/routes` satisfies `ok`; returns that `/routes`.
async fn wait_routes(proxy: &Proxy, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = routes(proxy).await;
        if ok(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20s: {r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const SPLIT: &str = "split=\"default/web-split\"";

// === retries ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_of_a_50_50_split_is_retried_on_the_live_one() {
    let live = Backend::spawn("v1").await;
    let dead = refused_port();
    // no ejection: every request that picks the dead backend is retried
    let yaml = proxy_doc_n(
        &[("web-v1", &[live.addr]), ("web-v2", &[dead.addr])],
        "outlierDetection:\n  consecutiveFailures: 0",
    ) + &split_doc("web-split", "web", &[("web-v1", 50), ("web-v2", 50)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for _ in 0..200 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "v1"));
    }
    // a body that never left the proxy goes along: a POST is retried too
    for i in 0..20u64 {
        let body = vec![7u8; 100 + i as usize];
        let req = Request::post(proxy.url("/upload"))
            .header("host", "web")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            a.body.starts_with(&format!("bytes={} ", 100 + i)),
            "{}",
            a.body
        );
    }
    assert_eq!(live.hits(), 220);
    let retries = metric(
        &proxy,
        &format!("splitproxy_upstream_retries_total{{{SPLIT},backend=\"web-v2\"}}"),
    )
    .await;
    // each of the 220 picks chose web-v2 with probability 1/2: none at all is 2^-220
    assert!(retries >= 1.0, "retries {retries}");
    let r = routes(&proxy).await;
    assert_eq!(backend(&r, "web-v2")["retries"], retries as u64);
    assert_eq!(r["retries"]["attempts"], 1);
    let failures = metric(
        &proxy,
        &format!("splitproxy_upstream_connect_failures_total{{{SPLIT},backend=\"web-v2\"}}"),
    )
    .await;
    assert_eq!(failures, 0.0, "no request was answered 502");

    // with retries off, the same split answers 502 for the dead half
    let yaml = proxy_doc_n(
        &[("web-v1", &[live.addr]), ("web-v2", &[dead.addr])],
        "retries:\n  attempts: 0\noutlierDetection:\n  consecutiveFailures: 0",
    ) + &split_doc("web-split", "web", &[("web-v1", 50), ("web-v2", 50)]);
    let proxy = Proxy::start(&yaml).await;
    let mut bad = 0;
    for _ in 0..40 {
        let a = get(&c, &proxy.url("/"), "web").await;
        if a.status == StatusCode::BAD_GATEWAY {
            assert_eq!(a.body, "upstream web-v2 is unreachable\n");
            bad += 1;
        }
    }
    assert!(bad > 0, "none of 40 picked web-v2 (p = 2^-40)");
}

/// Env var that makes `child_backend_process` serve a backend.
const CHILD_VAR: &str = "SPLITPROXY_TEST_CHILD_BACKEND";
const CHILD_PREFIX: &str = "child backend on ";

/// Not a test: the backend process `backend_killed_under_four_clients_fails_no_get` runs
/// (this binary, re-executed with `CHILD_VAR` set) and SIGKILLs. Without the variable it
/// does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a backend process for backend_killed_under_four_clients_fails_no_get"]
async fn child_backend_process() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let b = Backend::spawn("child").await;
    println!("{CHILD_PREFIX}{}", b.addr);
    std::future::pending::<()>().await;
}

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `child_backend_process` in a child process; its address.
fn spawn_child_backend() -> (Child, SocketAddr) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "resilience::child_backend_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_VAR, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("re-execute the test binary");
    let stdout = child.stdout.take().unwrap();
    let child = Child(child);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("child stdout");
        if let Some(addr) = line.strip_prefix(CHILD_PREFIX) {
            return (child, addr.trim().parse().unwrap());
        }
    }
    panic!("the child backend exited without its address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_under_four_clients_fails_no_get() {
    let live = Backend::spawn("v1").await;
    let (mut child, child_addr) = tokio::task::spawn_blocking(spawn_child_backend)
        .await
        .unwrap();
    let yaml = proxy_doc(&[("web-v1", live.addr), ("web-v2", child_addr)], "")
        + &split_doc("web-split", "web", &[("web-v1", 50), ("web-v2", 50)]);
    let proxy = Proxy::start(&yaml).await;
    let (from_child, killed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let failed = Arc::new(Mutex::new(Vec::new()));
    let c = client();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (c, url) = (c.clone(), proxy.url("/"));
        let (from_child, killed, failed) = (from_child.clone(), killed.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut after_kill = 0;
            // until 150 requests of this client were sent after the kill
            while after_kill < 150 {
                let was_killed = killed.load(SeqCst);
                let req = Request::get(&url)
                    .header("host", "web")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let child = resp
                            .headers()
                            .get("x-backend")
                            .is_some_and(|b| b == "child");
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        if status != StatusCode::OK || body.is_err() {
                            failed.lock().unwrap().push(format!("{status} {body:?}"));
                        } else if child {
                            from_child.fetch_add(1, SeqCst);
                        }
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
                if was_killed {
                    after_kill += 1;
                }
            }
        }));
    }
    // the child takes its share of the traffic first
    let deadline = Instant::now() + Duration::from_secs(30);
    while from_child.load(SeqCst) < 100 {
        assert!(
            Instant::now() < deadline,
            "the child backend got no traffic"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.0.kill().expect("SIGKILL the child backend");
    let _ = child.0.wait();
    killed.store(true, SeqCst);
    for t in clients {
        t.await.unwrap();
    }
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // the dead backend was left: retried away from, then ejected
    let retries = metric(
        &proxy,
        &format!("splitproxy_upstream_retries_total{{{SPLIT},backend=\"web-v2\"}}"),
    )
    .await;
    assert!(retries >= 1.0, "retries {retries}");
    let r = routes(&proxy).await;
    assert_eq!(backend(&r, "web-v2")["ejected"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_whose_body_reached_a_dying_backend_is_not_replayed() {
    let live = Backend::spawn("v1").await;
    // reads each request whole, then closes the connection without an answer
    let dying = Flaky::spawn("dying", DROP).await;
    let yaml = proxy_doc_n(
        &[("web-v1", &[live.addr]), ("web-dying", &[dying.addr])],
        "outlierDetection:\n  consecutiveFailures: 0",
    ) + &split_doc("web-split", "web", &[("web-v1", 50), ("web-dying", 50)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..40 {
        let req = Request::post(proxy.url("/upload"))
            .header("host", "web")
            .body(Full::new(Bytes::from_static(b"an order, once")))
            .unwrap();
        let a = send(&c, req).await;
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => {
                assert_eq!(a.body, "upstream web-dying failed\n");
                bad += 1;
            }
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    assert!(bad > 0, "none of 40 POSTs picked web-dying (p = 2^-40)");
    // each POST reached exactly one backend, once
    assert_eq!(dying.hits(), bad);
    assert_eq!(live.hits(), ok);

    // a GET is safe to replay: the same failure is retried on the live backend
    let (dying_before, live_before) = (dying.hits(), live.hits());
    for _ in 0..40 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "v1"));
    }
    assert_eq!(live.hits() - live_before, 40);
    assert!(
        dying.hits() > dying_before,
        "none of 40 GETs picked web-dying (p = 2^-40)"
    );
}

/// 60/30/10 with the 10 dead: the live two still split 2:1 (chi-square, p > 1e-6).
async fn live_backends_keep_their_weights(outlier: &str) {
    let (v1, v2, dead) = (
        Backend::spawn("v1").await,
        Backend::spawn("v2").await,
        refused_port(),
    );
    let yaml = proxy_doc_n(
        &[
            ("web-v1", &[v1.addr]),
            ("web-v2", &[v2.addr]),
            ("web-v3", &[dead.addr]),
        ],
        outlier,
    ) + &split_doc(
        "web-split",
        "web",
        &[("web-v1", 60), ("web-v2", 30), ("web-v3", 10)],
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), proxy.url("/"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                let a = get(&c, &url, "web").await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let observed = [v1.hits(), v2.hits()];
    assert_eq!(observed[0] + observed[1], 3000);
    assert_two_way_split(observed, [60.0, 30.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_keep_the_split_among_live_backends() {
    // no ejection: every pick of the dead backend is retried by the weights of the others
    live_backends_keep_their_weights("outlierDetection:\n  consecutiveFailures: 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_keeps_the_split_among_live_backends() {
    // the default outlier detection: the dead backend is ejected, the weights renormalise
    live_backends_keep_their_weights("").await;
}

// === outlier detection ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_is_ejected_after_consecutive_failures_and_shown() {
    let good = Backend::spawn("good").await;
    let flaky = Flaky::spawn("flaky", DROP).await;
    let yaml = proxy_doc_n(
        &[("web-v1", &[good.addr, flaky.addr])],
        "outlierDetection:\n  consecutiveFailures: 3",
    ) + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let ejections = "splitproxy_outlier_ejections_total{backend=\"web-v1\"}";
    let c = client();
    for sent in 0.. {
        assert!(sent < 2000, "flaky got {} requests", flaky.hits());
        let r = routes(&proxy).await;
        if endpoint_health(&r, "web-v1", flaky.addr)["ejections"] == 1 {
            break;
        }
        let h = &endpoint_health(&r, "web-v1", flaky.addr)["consecutiveFailures"];
        assert_eq!(h, flaky.hits(), "{r}");
        assert_eq!(metric(&proxy, ejections).await, 0.0);
        // a GET that fails on flaky is retried on good: the client never sees it
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "good"));
    }
    assert_eq!(flaky.hits(), 3, "ejected at the third consecutive failure");
    let r = routes(&proxy).await;
    let h = endpoint_health(&r, "web-v1", flaky.addr);
    assert_eq!(h["ejected"], true, "{r}");
    assert_eq!(h["lastEjectionSeconds"], 30.0);
    assert!(h["ejectedUntil"].is_string(), "{h}");
    assert_eq!(endpoint_health(&r, "web-v1", good.addr)["ejected"], false);
    assert_eq!(
        backend(&r, "web-v1")["ejected"],
        false,
        "one endpoint is left"
    );
    assert_eq!(r["outlierDetection"]["consecutiveFailures"], 3);
    assert_eq!(metric(&proxy, ejections).await, 1.0);
    assert_eq!(
        metric(
            &proxy,
            "splitproxy_outlier_ejected_endpoints{backend=\"web-v1\"}"
        )
        .await,
        1.0
    );
    // left out of the picks while ejected
    for _ in 0..100 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "good"));
    }
    assert_eq!(flaky.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_endpoint_returns_after_its_time_and_a_repeat_lasts_twice_as_long() {
    let good = Backend::spawn("good").await;
    let flaky = Flaky::spawn("flaky", DROP).await;
    let yaml = proxy_doc_n(
        &[("web-v1", &[good.addr, flaky.addr])],
        "outlierDetection:\n  consecutiveFailures: 2\n  baseEjectionTime: 200ms",
    ) + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let flaky_health = |r: &Value| endpoint_health(r, "web-v1", flaky.addr).clone();
    for round in 1..=2u64 {
        // fail until this round's ejection
        let before = flaky.hits();
        let mut sent = 0;
        while flaky_health(&routes(&proxy).await)["ejections"] != round {
            sent += 1;
            assert!(sent < 2000, "round {round}: no ejection");
            let a = get(&c, &proxy.url("/"), "web").await;
            assert_eq!(a.status, StatusCode::OK);
        }
        assert_eq!(flaky.hits() - before, 2, "round {round}");
        let h = flaky_health(&routes(&proxy).await);
        // base x the number of times ejected
        assert_eq!(h["lastEjectionSeconds"], 0.2 * round as f64, "{h}");
        if h["ejected"] == true {
            assert!(h["ejectedForSeconds"].as_f64().unwrap() <= 0.2 * round as f64);
        }
        // and back after that time
        wait_routes(&proxy, "the ejection ends", |r| {
            flaky_health(r)["ejected"] == false
        })
        .await;
    }
    // healthy again: it serves its share
    flaky.set(OK);
    let mut sent = 0;
    while flaky.served() == 0 {
        sent += 1;
        assert!(sent < 2000, "flaky never got traffic back");
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let h = flaky_health(&routes(&proxy).await);
    assert_eq!(
        (h["ejected"].clone(), h["ejections"].clone()),
        (false.into(), 2.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_caps_endpoints_and_backends() {
    // one backend, both endpoints failing: at 50 %, one of the two may be ejected
    let (a, b) = (Flaky::spawn("a", DROP).await, Flaky::spawn("b", DROP).await);
    let yaml = proxy_doc_n(
        &[("web-v1", &[a.addr, b.addr])],
        "outlierDetection:\n  consecutiveFailures: 1",
    ) + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/"), "web").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    }
    let r = routes(&proxy).await;
    let ejected = [a.addr, b.addr]
        .iter()
        .filter(|e| endpoint_health(&r, "web-v1", **e)["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{r}");
    assert_eq!(backend(&r, "web-v1")["ejected"], false, "{r}");

    // two backends of one endpoint each, both failing: at 50 %, one backend drops out
    let (a, b) = (Flaky::spawn("a", DROP).await, Flaky::spawn("b", DROP).await);
    let split = split_doc("web-split", "web", &[("web-a", 1), ("web-b", 1)]);
    let services: &[(&str, &[SocketAddr])] = &[("web-a", &[a.addr]), ("web-b", &[b.addr])];
    let yaml = proxy_doc_n(services, "outlierDetection:\n  consecutiveFailures: 1") + &split;
    let proxy = Proxy::start(&yaml).await;
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/"), "web").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "never 503: {}", r.body);
    }
    let r = routes(&proxy).await;
    let out = ["web-a", "web-b"]
        .iter()
        .filter(|s| backend(&r, s)["ejected"] == true)
        .count();
    assert_eq!(out, 1, "{r}");

    // at 100 %, both may go, and then nothing is left
    let yaml = proxy_doc_n(
        services,
        "outlierDetection:\n  consecutiveFailures: 1\n  maxEjectedPercent: 100",
    ) + &split;
    let proxy = Proxy::start(&yaml).await;
    let mut last = StatusCode::OK;
    for _ in 0..20 {
        last = get(&c, &proxy.url("/"), "web").await.status;
    }
    assert_eq!(last, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_with_nothing_left_answers_503_at_once() {
    let only = Flaky::spawn("only", DROP).await;
    let yaml = proxy_doc_n(
        &[("web-v1", &[only.addr])],
        "outlierDetection:\n  consecutiveFailures: 1",
    ) + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let a = get(&c, &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert_eq!((only.hits(), only.conns()), (1, 1));
    // ejected: the only endpoint of the only backend; a split of one may lose it
    for _ in 0..10 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            a.body,
            "traffic split default/web-split has no live backend: every endpoint is ejected\n"
        );
        assert_eq!(a.headers["server"], "splitproxy");
    }
    // at once: no connection was tried
    assert_eq!((only.hits(), only.conns()), (1, 1));
    let unpicked = metric(
        &proxy,
        &format!("splitproxy_requests_total{{{SPLIT},backend=\"(none)\",code=\"5xx\"}}"),
    )
    .await;
    assert_eq!(unpicked, 10.0);
    assert_eq!(backend(&routes(&proxy).await, "web-v1")["ejected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_ejects_only_when_consecutive5xx_is_set() {
    let good = Backend::spawn("good").await;
    let five = Flaky::spawn("five", FAIL_500).await;
    let services: &[(&str, &[SocketAddr])] = &[("web-v1", &[good.addr, five.addr])];
    let split = split_doc("web-split", "web", &[("web-v1", 1)]);
    // off by default: 500s pass through, nothing is ejected
    let proxy = Proxy::start(&(proxy_doc_n(services, "") + &split)).await;
    let c = client();
    let mut errors = 0;
    for _ in 0..60 {
        let a = get(&c, &proxy.url("/"), "web").await;
        if a.status == StatusCode::INTERNAL_SERVER_ERROR {
            errors += 1;
        }
    }
    assert!(
        errors > 0,
        "none of 60 picked the failing endpoint (p = 2^-60)"
    );
    assert_eq!(errors, five.hits(), "a 5xx is an answer, never retried");
    let h = endpoint_health(&routes(&proxy).await, "web-v1", five.addr).clone();
    assert_eq!(
        (h["ejected"].clone(), h["ejections"].clone()),
        (false.into(), 0.into())
    );

    // consecutive5xx: 3 ejects it at the third 500 in a row
    let five = Flaky::spawn("five", FAIL_500).await;
    let services: &[(&str, &[SocketAddr])] = &[("web-v1", &[good.addr, five.addr])];
    let yaml = proxy_doc_n(services, "outlierDetection:\n  consecutive5xx: 3") + &split;
    let proxy = Proxy::start(&yaml).await;
    let mut sent = 0;
    while five.hits() < 3 {
        sent += 1;
        assert!(sent < 2000);
        get(&c, &proxy.url("/"), "web").await;
    }
    let h = endpoint_health(&routes(&proxy).await, "web-v1", five.addr).clone();
    assert_eq!(
        (h["ejected"].clone(), h["ejections"].clone()),
        (true.into(), 1.into())
    );
    for _ in 0..50 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "good"));
    }
    assert_eq!(five.hits(), 3);
}

// === the request body ===

/// One HTTP/1.1 response from `tcp`: status, head, body (by Content-Length or chunked).
async fn read_response(tcp: &mut TcpStream) -> (u16, String, String) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before a response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head[9..12].parse().expect("status");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        while buf.len() < head_end + length {
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        (status, head, body)
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a response within 20s")
}

async fn body_proxy(limit: &str) -> (BodyBackend, Proxy) {
    let b = BodyBackend::spawn().await;
    let yaml = proxy_doc_n(&[("web-v1", &[b.addr])], limit)
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    (b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_gets_413_before_anything_goes_upstream() {
    let (b, proxy) = body_proxy("limits:\n  requestBodyBytes: 1KiB").await;
    let c = client();
    let post = |n: usize| {
        Request::post(proxy.url("/upload"))
            .header("host", "web")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let a = send(&c, post(1025)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.body, "request body larger than the limit of 1024 bytes\n");
    assert_eq!(a.headers["server"], "splitproxy");
    assert_eq!(
        (b.conns.load(SeqCst), b.started.load(SeqCst)),
        (0, 0),
        "the backend saw nothing"
    );
    let a = send(&client(), post(1024)).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "bytes=1024"));
    let counted = metric(
        &proxy,
        &format!("splitproxy_requests_total{{{SPLIT},backend=\"(none)\",code=\"4xx\"}}"),
    )
    .await;
    assert_eq!(counted, 1.0, "the 413 is counted in its split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_cut_and_gets_413() {
    let (b, proxy) = body_proxy("limits:\n  requestBodyBytes: 1KiB").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let chunk = format!("200\r\n{}\r\n", "y".repeat(512));
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (status, head, body) = read_response(&mut tcp).await;
    assert_eq!(status, 413, "{head}{body}");
    assert_eq!(body, "request body larger than the limit of 1024 bytes\n");
    // upstream saw a body that failed, never more than the limit
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.bodies().is_empty() {
        assert!(Instant::now() < deadline, "the backend recorded no body");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bodies = b.bodies();
    assert_eq!(bodies.len(), 1);
    let (n, clean) = bodies[0];
    assert!(!clean && n <= 1024, "{bodies:?}");

    // a chunked body within the limit goes through
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut tcp).await;
    assert_eq!((status, body.as_str()), (200, "bytes=1024"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_after_the_head_went_upstream_gets_400_and_the_connection_is_dropped() {
    let (b, proxy) = body_proxy("").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // the head (and the first chunk) went upstream
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.started.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tcp.write_all(b"zz\r\nbad\r\n0\r\n\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut tcp).await;
    assert_eq!(status, 400, "{head}{body}");
    assert_eq!(body, "bad request: malformed request body\n");
    assert!(
        head.to_ascii_lowercase().contains("server: splitproxy"),
        "{head}"
    );
    while b.bodies().is_empty() {
        assert!(Instant::now() < deadline, "the backend recorded no body");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bodies = b.bodies();
    assert!(
        bodies.len() == 1 && !bodies[0].1 && bodies[0].0 <= 5,
        "upstream saw the body fail: {bodies:?}"
    );
    // the endpoint is not blamed for the client's body
    let h = endpoint_health(&routes(&proxy).await, "web-v1", b.addr).clone();
    assert_eq!(h["consecutiveFailures"], 0, "{h}");
    // that upstream connection was discarded: the next request opens a new one
    assert_eq!(b.conns.load(SeqCst), 1);
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "bytes=0"));
    assert_eq!(b.conns.load(SeqCst), 2);
}

// === TLS origination on the workers' pools ===

/// An HTTPS backend (server name `backend.internal`, signed by `ca`) that counts the
/// connections it accepts and answers `secure`.
async fn counting_tls_backend(ca: &splitproxy::cmd::pki::Ca) -> (SocketAddr, Arc<AtomicU64>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let server = ca.server(&["backend.internal".into()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(splitproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicU64::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"secure"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_connections_are_pooled_and_a_refused_endpoint_is_retried() {
    let ca = splitproxy::cmd::pki::Ca::new("upstream CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let (addr, conns) = counting_tls_backend(&ca).await;
    let refused = refused_port();
    let dead = refused.addr;
    let yaml = format!(
        "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: t\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  outlierDetection:\n    consecutiveFailures: 0\n  services:\n    secure:\n      endpoints: [\"{dead}\", \"{addr}\"]\n      tls:\n        ca: ca.pem\n        serverName: backend.internal\n"
    ) + &split_doc("web-split", "web", &[("secure", 1)]);
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let proxy = Proxy::start_at(dir, path).await;
    let c = client();
    for _ in 0..30 {
        let a = get(&c, &proxy.url("/"), "web").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "secure"));
    }
    // sequential requests: one connection (and one handshake), reused from the pool
    assert_eq!(conns.load(SeqCst), 1);
    let r = routes(&proxy).await;
    // each of the 30 picks chose the refused endpoint with probability 1/2
    assert!(
        backend(&r, "secure")["retries"].as_u64().unwrap() > 0,
        "{r}"
    );
}
