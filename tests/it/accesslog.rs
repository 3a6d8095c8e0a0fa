//! The access log and the request id, through the real binary: `accessLog: json` lines on
//! stdout (every field, the proxy's own answers too, HTTP/2, mTLS identity), lines dropped
//! and counted when stdout is not read while requests keep being served, `x-request-id` on
//! every forwarded request, `traceparent`/`tracestate` untouched, `off` silent, a reload
//! that turns the log on, and validation of the field.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use splitproxy::cmd::pki::{Ca, Issued};

/// `splitproxy run` on a config file, stdout piped; killed on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stdout: Option<ChildStdout>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(path: &std::path::Path) -> Running {
    run_with(path, &[])
}

fn run_with(path: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args(["run", "--config", path.to_str().unwrap(), "--workers", "1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = serving(&mut child);
    let stdout = child.stdout.take();
    Running {
        addr,
        admin,
        child,
        stdout,
    }
}

/// stdout's lines, as they come, on a channel.
fn lines(r: &mut Running) -> std::sync::mpsc::Receiver<String> {
    let out = r.stdout.take().expect("stdout taken once");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next `n` lines as JSON (bounded wait: a missing line fails the test).
fn take(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("access log line {} of {n} not written", i + 1));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .collect()
}

fn by_path(lines: Vec<Value>) -> HashMap<String, Value> {
    lines
        .into_iter()
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect()
}

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn req(
    method: &str,
    path: &str,
    host: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// RFC 3339 UTC with milliseconds, as `time` must be: `2026-12-02T03:09:56.123Z`.
fn assert_time_format(t: &str) {
    let b = t.as_bytes();
    assert_eq!(b.len(), 24, "{t}");
    for (i, c) in b.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*c, b'-', "{t}"),
            10 => assert_eq!(*c, b'T', "{t}"),
            13 | 16 => assert_eq!(*c, b':', "{t}"),
            19 => assert_eq!(*c, b'.', "{t}"),
            23 => assert_eq!(*c, b'Z', "{t}"),
            _ => assert!(c.is_ascii_digit(), "{t}"),
        }
    }
}

/// The same form for a wall time, to compare with `time` (the strings order like the times).
fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::new();
    splitproxy::accesslog::rfc3339_millis(t, &mut out);
    String::from_utf8(out).unwrap()
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            14 => *c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b'),
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_proxied_requests_and_the_proxys_own_answers() {
    let web = Backend::spawn("web-v1").await;
    let refused = refused_port();
    let dead = refused.addr;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(
        &[("web-v1", web.addr), ("dead-v1", dead)],
        "accessLog: json\nlimits:\n  requestBodyBytes: 100",
    ) + &split_doc("web-split", "web", &[("web-v1", 1)])
        + &split_doc("dead-split", "dead", &[("dead-v1", 1)]);
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let rx = lines(&mut proxy);
    let before = rfc3339(SystemTime::now() - Duration::from_millis(1));
    let c = client();
    let url = |p: &str| format!("http://{}{p}", proxy.addr);

    let ok = send(
        &c,
        req(
            "GET",
            &url("/get?x=1"),
            "web",
            b"",
            &[("x-request-id", "client-id-1")],
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let body = [7u8; 50];
    let post = send(&c, req("POST", &url("/upload"), "Web:8080", &body, &[])).await;
    assert_eq!(post.status, StatusCode::OK);
    let not_found = send(&c, req("GET", &url("/nowhere"), "unknown", b"", &[])).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let bad = send(&c, req("GET", &url("/a/../../etc"), "web", b"", &[])).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let too_large = send(
        &c,
        req("POST", &url("/upload?big"), "web", &[1u8; 500], &[]),
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    let unreachable = send(&c, req("GET", &url("/down"), "dead", b"", &[])).await;
    assert_eq!(unreachable.status, StatusCode::BAD_GATEWAY);
    // HTTP/2 (prior knowledge): the host is the :authority
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = Request::get("http://web/h2").body(empty()).unwrap();
    let resp = h2.send_request(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h2_body = resp.into_body().collect().await.unwrap().to_bytes();

    let got = by_path(take(&rx, 7));
    let after = rfc3339(SystemTime::now());
    for v in got.values() {
        let keys: HashSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let expected: HashSet<&str> = [
            "time",
            "request_id",
            "method",
            "path",
            "host",
            "split",
            "backend",
            "endpoint",
            "status",
            "bytes_received",
            "bytes_sent",
            "duration_ms",
            "identity",
            "tries",
        ]
        .into();
        assert_eq!(keys, expected, "{v}");
        let t = v["time"].as_str().unwrap();
        assert_time_format(t);
        assert!(
            before.as_str() <= t && t <= after.as_str(),
            "{t} not in {before}..{after}"
        );
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0, "{v}");
        assert_eq!(
            v["identity"],
            Value::Null,
            "plain HTTP has no identity: {v}"
        );
    }
    let web_addr = web.addr.to_string();

    let v = &got["/get?x=1"];
    assert_eq!(v["request_id"], "client-id-1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "web");
    assert_eq!(v["split"], "default/web-split");
    assert_eq!(v["backend"], "web-v1");
    assert_eq!(v["endpoint"], web_addr.as_str());
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_received"], 0);
    assert_eq!(v["bytes_sent"], ok.body.len());
    assert_eq!(v["tries"], 1);

    let v = &got["/upload"];
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], "Web:8080");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_received"], 50);
    assert_eq!(v["bytes_sent"], post.body.len());
    assert!(is_uuid_v4(v["request_id"].as_str().unwrap()), "{v}");

    let v = &got["/nowhere"];
    assert_eq!(v["status"], 404);
    assert_eq!(v["host"], "unknown");
    assert_eq!(
        (&v["split"], &v["backend"], &v["endpoint"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(v["tries"], 0);
    assert_eq!(v["bytes_sent"], not_found.body.len());
    assert!(is_uuid_v4(v["request_id"].as_str().unwrap()), "{v}");

    // refused before routing: the path as the client sent it
    let v = &got["/a/../../etc"];
    assert_eq!(v["status"], 400);
    assert_eq!((&v["split"], &v["tries"]), (&Value::Null, &Value::from(0)));

    let v = &got["/upload?big"];
    assert_eq!(v["status"], 413);
    assert_eq!(v["split"], "default/web-split");
    assert_eq!(
        v["bytes_received"], 0,
        "refused before the body was read: {v}"
    );
    assert_eq!(v["tries"], 0);

    let v = &got["/down"];
    assert_eq!(v["status"], 502);
    assert_eq!(v["split"], "default/dead-split");
    assert_eq!(v["backend"], "dead-v1");
    assert_eq!(v["endpoint"], dead.to_string().as_str());
    assert_eq!(v["tries"], 1);
    assert_eq!(v["bytes_sent"], unreachable.body.len());

    let v = &got["/h2"];
    assert_eq!(v["host"], "web");
    assert_eq!(v["status"], 200);
    assert_eq!(v["backend"], "web-v1");
    assert_eq!(v["bytes_sent"], h2_body.len());
    assert_eq!(
        web.hits(),
        3,
        "GET, POST and the h2 request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_backend_and_match_the_log() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", web.addr)], "accessLog: json")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let rx = lines(&mut proxy);
    let c = client();
    let url = format!("http://{}/", proxy.addr);
    let seen = |web: &Backend| -> Vec<String> {
        web.last_headers()
            .get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };

    // a valid one is kept; trace context passes unchanged
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let id = "Req_1.2:3~x/y=z";
    let a = send(
        &c,
        req(
            "GET",
            &url,
            "web",
            b"",
            &[
                ("x-request-id", id),
                ("traceparent", traceparent),
                ("tracestate", tracestate),
            ],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(seen(&web), [id]);
    let h = web.last_headers();
    assert_eq!(h["traceparent"], traceparent);
    assert_eq!(h["tracestate"], tracestate);
    // not echoed to the client (as Envoy and nginx)
    assert!(!a.headers.contains_key("x-request-id"));
    assert_eq!(take(&rx, 1)[0]["request_id"], id);

    // invalid ones are replaced by a new id, the one the log shows
    let long = "a".repeat(201);
    for bad in ["a,b", "with space", long.as_str()] {
        send(&c, req("GET", &url, "web", b"", &[("x-request-id", bad)])).await;
        let got = seen(&web);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(is_uuid_v4(&got[0]), "{bad:?} became {got:?}");
        assert_eq!(take(&rx, 1)[0]["request_id"], got[0].as_str());
    }
    // two lines: the first (valid) is kept, alone
    send(
        &c,
        req(
            "GET",
            &url,
            "web",
            b"",
            &[("x-request-id", "first"), ("x-request-id", "second")],
        ),
    )
    .await;
    assert_eq!(seen(&web), ["first"]);
    take(&rx, 1);

    // absent: created, unique across 1 000 requests, and the log's id is the backend's
    let mut ids = HashSet::new();
    for _ in 0..1000 {
        let a = send(&c, req("GET", &url, "web", b"", &[])).await;
        assert_eq!(a.status, StatusCode::OK);
        let got = seen(&web);
        assert_eq!(got.len(), 1);
        assert!(is_uuid_v4(&got[0]), "{got:?}");
        assert_eq!(take(&rx, 1)[0]["request_id"], got[0].as_str());
        ids.insert(got[0].clone());
    }
    assert_eq!(ids.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_prints_nothing_and_a_reload_turns_the_log_on() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let off = |value: &str| {
        proxy_doc(&[("web-v1", web.addr)], &format!("accessLog: {value}"))
            + &split_doc("web-split", "web", &[("web-v1", 1)])
    };
    let path = write_config(dir.path(), &off("off"));
    let mut proxy = run(&path);
    let rx = lines(&mut proxy);
    let c = client();
    let url = |p: &str| format!("http://{}{p}", proxy.addr);
    for p in ["/off-1", "/off-2"] {
        let a = send(&c, req("GET", &url(p), "web", b"", &[])).await;
        assert_eq!(a.status, StatusCode::OK);
        // the request id is there with the log off too
        assert!(is_uuid_v4(
            web.last_headers()["x-request-id"].to_str().unwrap()
        ));
    }
    let a = send(&c, req("GET", &url("/off-404"), "nowhere", b"", &[])).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // YAML's `false` is off as well: a reload to it changes nothing
    rewrite(&path, &off("false"));
    wait_metric(proxy.admin, "splitproxy_config_version 2").await;
    send(&c, req("GET", &url("/off-3"), "web", b"", &[])).await;

    rewrite(&path, &off("json"));
    wait_metric(proxy.admin, "splitproxy_config_version 3").await;
    let a = send(&c, req("GET", &url("/on"), "web", b"", &[])).await;
    assert_eq!(a.status, StatusCode::OK);
    // the first line is the first request after the reload: nothing was written before
    let first = take(&rx, 1);
    assert_eq!(first[0]["path"], "/on");
}

async fn wait_metric(admin: SocketAddr, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&client(), &format!("http://{admin}/metrics"), "x").await;
        if a.body.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no metric line {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn metric_value(admin: SocketAddr, name: &str) -> Option<f64> {
    let a = get(&client(), &format!("http://{admin}/metrics"), "x").await;
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_drops_lines_and_counts_them_while_requests_are_served() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", web.addr)], "accessLog: json")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    // stdout stays piped and unread: the pipe fills, then the writer's queue (shortened
    // from 4 096 so that a few hundred requests fill it)
    let queue = 64;
    let proxy = run_with(
        &write_config(dir.path(), &yaml),
        &[("SPLITPROXY_ACCESS_LOG_QUEUE", &queue.to_string())],
    );
    assert!(proxy.stdout.is_some());
    let dropped = "splitproxy_access_log_dropped_total";
    assert_eq!(metric_value(proxy.admin, dropped).await, Some(0.0));
    let c = client();
    // 2 KB paths: a 64 KiB pipe holds about 30 lines, the queue 64 more
    let path = format!("/{}", "p".repeat(2000));
    let url = format!("http://{}{path}", proxy.addr);
    let total = 600;
    let mut sent = 0;
    let mut failures = 0;
    while sent < total {
        let batch: Vec<_> = (0..32.min(total - sent))
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    match c.request(req("GET", &url, "web", b"", &[])).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            r.into_body().collect().await.is_ok()
                        }
                        _ => false,
                    }
                })
            })
            .collect();
        sent += batch.len();
        for t in batch {
            if !t.await.unwrap() {
                failures += 1;
            }
        }
    }
    assert_eq!(
        failures, 0,
        "every request is answered while the log is stuck"
    );
    assert_eq!(web.hits(), total as u64);
    let n = metric_value(proxy.admin, dropped)
        .await
        .expect("counter present");
    // what was not dropped waits in the pipe, the writer's buffer and the queue
    let kept = total as f64 - n;
    assert!(
        n > 0.0 && kept >= queue as f64,
        "{dropped} = {n} of {total}"
    );
}

// === mTLS ===

/// A CA, a server certificate for localhost and a client certificate with `spiffe`.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server(&["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).unwrap();
        Pki { ca, dir }
    }

    fn tls_block(&self) -> String {
        let d = self.dir.path().display();
        format!("tls:\n  cert: {d}/server.pem\n  key: {d}/server-key.pem\n  clientCA: {d}/ca.pem\n  clientAuth: require")
    }
}

/// One GET over a fresh mTLS connection (h2 or HTTP/1.1); the status.
async fn mtls_get(
    addr: SocketAddr,
    pki: &Pki,
    client: &Issued,
    h2: bool,
    path: &str,
) -> StatusCode {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap())
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
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = Request::get(format!("https://web{path}"))
        .header("host", "web")
        .body(empty())
        .unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_spiffe_id_is_in_the_log_over_mtls() {
    let web = Backend::spawn("web-v1").await;
    let pki = Pki::new();
    let spiffe = "spiffe://cluster.local/ns/shop/sa/frontend";
    let client = pki.ca.client("frontend", spiffe).unwrap();
    let yaml = proxy_doc(
        &[("web-v1", web.addr)],
        &format!("accessLog: json\n{}", pki.tls_block()),
    ) + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let rx = lines(&mut proxy);
    assert_eq!(
        mtls_get(proxy.addr, &pki, &client, false, "/h1").await,
        StatusCode::OK
    );
    assert_eq!(
        mtls_get(proxy.addr, &pki, &client, true, "/h2").await,
        StatusCode::OK
    );
    let got = by_path(take(&rx, 2));
    for p in ["/h1", "/h2"] {
        let v = &got[p];
        assert_eq!(v["identity"], spiffe, "{v}");
        assert_eq!(v["host"], "web", "{v}");
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["backend"], "web-v1", "{v}");
    }
}

#[test]
fn access_log_accepts_off_json_and_false_and_names_the_field_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let doc = |value: &str| {
        proxy_doc(
            &[("web-v1", "127.0.0.1:9".parse().unwrap())],
            &format!("accessLog: {value}"),
        ) + &split_doc("web-split", "web", &[("web-v1", 1)])
    };
    for (value, want) in [
        ("off", splitproxy::config::AccessLog::Off),
        ("false", splitproxy::config::AccessLog::Off),
        ("json", splitproxy::config::AccessLog::Json),
    ] {
        let path = write_config(dir.path(), &doc(value));
        let cfg = splitproxy::config::load(&path).unwrap_or_else(|e| panic!("{value}: {e:?}"));
        assert_eq!(cfg.proxy.access_log, want, "{value}");
    }
    let path = write_config(
        dir.path(),
        &proxy_doc(&[("web-v1", "127.0.0.1:9".parse().unwrap())], ""),
    );
    assert_eq!(
        splitproxy::config::load(&path).unwrap().proxy.access_log,
        splitproxy::config::AccessLog::Off,
        "off by default"
    );
    for (value, shown) in [
        ("true", "true"),
        ("JSON", "\"JSON\""),
        ("text", "\"text\""),
        ("1", "1"),
    ] {
        let path = write_config(dir.path(), &doc(value));
        let errors = splitproxy::config::load(&path).expect_err(value);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].contains("spec.accessLog: must be off or json")
                && text[0].ends_with(&format!("got {shown}")),
            "{text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_is_logged_once_with_the_bytes_sent() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", web.addr)], "accessLog: json")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let rx = lines(&mut proxy);
    let total: u64 = 64 << 20;
    {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let r = Request::get(format!("/download/{total}"))
            .header("host", "web")
            .body(empty())
            .unwrap();
        let mut resp = s.send_request(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // one frame, then the client goes away
        resp.body_mut().frame().await.unwrap().unwrap();
        conn.abort();
    }
    let v = take(&rx, 1).remove(0);
    assert_eq!(v["path"], format!("/download/{total}"));
    assert_eq!(v["status"], 200);
    let sent = v["bytes_sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < total, "{sent} of {total}");
    // exactly once: the next line is the next request's
    send(
        &client(),
        req(
            "GET",
            &format!("http://{}/next", proxy.addr),
            "web",
            b"",
            &[],
        ),
    )
    .await;
    assert_eq!(take(&rx, 1)[0]["path"], "/next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_out_every_line_before_the_exit() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", web.addr)], "accessLog: json")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let c = client();
    for i in 0..20 {
        let url = format!("http://{}/r{i}", proxy.addr);
        assert_eq!(
            send(&c, req("GET", &url, "web", b"", &[])).await.status,
            StatusCode::OK
        );
    }
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", proxy.child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = proxy.stdout.take().unwrap();
    let text = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { out }, &mut s).unwrap();
        s
    })
    .await
    .unwrap();
    assert!(proxy.child.wait().unwrap().success());
    let paths: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("/r{i}")).collect();
    assert_eq!(paths, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_before_its_answer_is_logged_with_status_0() {
    let web = Backend::spawn("web-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", web.addr)], "accessLog: json")
        + &split_doc("web-split", "web", &[("web-v1", 1)]);
    let mut proxy = run(&write_config(dir.path(), &yaml));
    let rx = lines(&mut proxy);
    {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let r = Request::get("/hang")
            .header("host", "web")
            .body(empty())
            .unwrap();
        let pending = tokio::spawn(async move { s.send_request(r).await });
        // the backend holds it (it never answers /hang): then the client leaves
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while web.hits() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "request never reached the backend"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        pending.abort();
        conn.abort();
    }
    let v = take(&rx, 1).remove(0);
    assert_eq!(v["path"], "/hang");
    assert_eq!(v["status"], 0, "no response was sent: {v}");
    assert_eq!(
        (&v["split"], &v["backend"]),
        (&Value::from("default/web-split"), &Value::from("web-v1"))
    );
    assert_eq!(v["endpoint"], web.addr.to_string().as_str());
    assert_eq!(v["tries"], 1);
    assert_eq!(v["bytes_sent"], 0);
}
