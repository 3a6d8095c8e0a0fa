//! `splitproxy measure` against a real proxy over real sockets: honest and skewed splits,
//! exit codes, classes nobody expected, non-2xx and transport failures, pacing, HTTP/2
//! (prior knowledge and ALPN), mTLS, and the command line with `--json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use splitproxy::cmd::measure::{run, MeasureArgs, Report, NO_CLASS};
use splitproxy::cmd::pki::Ca;

async fn proxy_90_10() -> (Backend, Backend, Proxy) {
    proxy_90_10_with("").await
}

/// The 90/10 split of `web` over web-v1/web-v2, with extra Proxy spec lines.
async fn proxy_90_10_with(extra: &str) -> (Backend, Backend, Proxy) {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let yaml = proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], extra)
        + &split_doc("s", "web", &[("web-v1", 90), ("web-v2", 10)]);
    (v1, v2, Proxy::start(&yaml).await)
}

fn args(proxy: &Proxy, expect: &str) -> MeasureArgs {
    let mut a = MeasureArgs::new(&proxy.url("/"));
    a.host = Some("web".into());
    a.requests = 4000;
    a.connections = 8;
    a.expect = Some(expect.into());
    // a correct split is rejected once in a million runs at most
    a.alpha = 1e-6;
    a
}

/// The share the report gives `name` in its JSON, as (expected, observed).
fn shares(report: &Report, name: &str) -> (serde_json::Value, f64) {
    let json = report.to_json();
    let class = json["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no class {name} in {json}"))
        .clone();
    (
        class["expected_share"].clone(),
        class["observed_share"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_split_is_not_rejected() {
    let (v1, v2, proxy) = proxy_90_10().await;
    let report = run(&args(&proxy, "web-v1=90,web-v2=10"), false)
        .await
        .unwrap();
    assert_eq!(report.responses(), 4000);
    assert_eq!(report.requests, 4000);
    assert_eq!(report.ok, 4000);
    assert_eq!(v1.hits() + v2.hits(), 4000);
    assert_eq!(report.counts["web-v1"] + report.counts["web-v2"], 4000);
    assert_eq!(report.counts["web-v1"], v1.hits());
    assert!(!report.rejected, "{}", report.table());
    assert_eq!(report.exit_code(), 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let chi = report.chi_square.unwrap();
    assert_eq!(chi.degrees_of_freedom, 1);
    assert!(chi.p_value >= 1e-6);
    assert!(report.latency_ms[0] > 0.0 && report.latency_ms[0] <= report.latency_ms[2]);
    let (expected, observed) = shares(&report, "web-v1");
    assert_eq!(expected, 0.9);
    assert!((observed - 0.9).abs() < 0.05, "{observed}");
    let table = report.table();
    assert!(
        table.contains("consistent with the expected weights"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_split_is_rejected() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let report = run(&args(&proxy, "web-v1=50,web-v2=50"), false)
        .await
        .unwrap();
    assert!(report.rejected, "{}", report.table());
    assert_eq!(report.exit_code(), 1);
    assert!(report.table().contains("REJECTED"));
    assert_eq!(report.to_json()["rejected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_to_a_class_nobody_expected_gives_p_zero() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let mut a = args(&proxy, "web-v1=1");
    a.requests = 500;
    let report = run(&a, false).await.unwrap();
    assert!(report.counts["web-v2"] > 0);
    assert_eq!(report.chi_square.unwrap().p_value, 0.0);
    assert_eq!(report.exit_code(), 1);
    // listed with a configured share of 0
    assert_eq!(shares(&report, "web-v2").0, 0.0);
    assert!(report.to_json()["chi_square"]["statistic"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_expect_nothing_is_rejected() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let mut a = MeasureArgs::new(&proxy.url("/"));
    a.host = Some("web".into());
    a.requests = 300;
    a.connections = 3;
    let report = run(&a, false).await.unwrap();
    assert_eq!(report.responses(), 300);
    assert!(report.chi_square.is_none() && !report.rejected);
    assert_eq!(report.exit_code(), 0);
    let json = report.to_json();
    assert!(json["chi_square"].is_null());
    assert!(json["classes"][0]["expected_share"].is_null());
    assert!(json["classes"][0]["abs_error_pp"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_answers_count_in_their_class_and_as_errors() {
    let (v1, v2, proxy) = proxy_90_10().await;
    // no route for this host: the proxy's own 404, without the backend header
    let mut a = args(&proxy, "web-v1=90,web-v2=10");
    a.host = Some("nowhere".into());
    a.requests = 50;
    a.connections = 2;
    let report = run(&a, false).await.unwrap();
    assert_eq!(report.counts[NO_CLASS], 50);
    assert_eq!(report.errors["status 404"], 50);
    assert_eq!((report.ok, report.requests), (0, 50));
    assert_eq!(v1.hits() + v2.hits(), 0);
    // answers, but none successful: nothing was measured
    assert_eq!(report.exit_code(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_and_measure_nothing() {
    let refused = refused_port();
    let addr = refused.addr;
    let mut a = MeasureArgs::new(&format!("http://{addr}/"));
    a.requests = 20;
    a.connections = 2;
    a.expect = Some("v1=1".into());
    let report = run(&a, false).await.unwrap();
    assert_eq!(
        report.errors.get("connect"),
        Some(&20),
        "{:?}",
        report.errors
    );
    assert_eq!((report.requests, report.responses()), (20, 0));
    assert!(report.chi_square.is_none());
    assert_eq!(report.exit_code(), 2);
    assert!(report.table().contains("connect: 20"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_errors_not_panics() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let base = args(&proxy, "web-v1=90,web-v2=10");
    let mut cases: Vec<(&str, MeasureArgs)> = Vec::new();
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut a = base.clone();
        a.rate = Some(rate);
        cases.push(("rate", a));
    }
    let mut a = base.clone();
    a.alpha = 2.0;
    cases.push(("alpha", a));
    let mut a = base.clone();
    a.expect = Some("web-v1=1,web-v1=2".into());
    cases.push(("expect", a));
    let mut a = base.clone();
    a.url = "ftp://127.0.0.1/".into();
    cases.push(("url", a));
    let mut a = base.clone();
    a.header = "bad header".into();
    cases.push(("header", a));
    let mut a = base.clone();
    a.url = format!("https://{}/", proxy.addr);
    cases.push(("https without --cacert", a));
    let mut a = base.clone();
    a.url = format!("https://{}/", proxy.addr);
    a.insecure = true;
    a.cert = Some("/nonexistent.pem".into());
    cases.push(("cert without key", a));
    for (what, a) in cases {
        assert!(run(&a, false).await.is_err(), "{what} was accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_at_a_rate_sends_no_more_than_the_rate() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let mut a = args(&proxy, "web-v1=90,web-v2=10");
    a.duration = Some(Duration::from_millis(300));
    a.rate = Some(200.0);
    a.connections = 4;
    let report = run(&a, false).await.unwrap();
    // 4 connections at one request per 20 ms, ticks staggered from 0: at most 15 each
    assert!(
        report.requests >= 1 && report.requests <= 64,
        "{}",
        report.table()
    );
    assert!(report.elapsed >= Duration::from_millis(300));
    assert_eq!(report.errors.len(), 0, "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_measured_too() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let mut a = args(&proxy, "web-v1=90,web-v2=10");
    a.h2 = true;
    a.requests = 1000;
    let report = run(&a, false).await.unwrap();
    assert_eq!(report.responses(), 1000, "{:?}", report.errors);
    assert_eq!(report.ok, 1000);
    assert_eq!(report.exit_code(), 0, "{}", report.table());
}

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate,
/// all written to a temporary folder.
fn pki() -> (tempfile::TempDir, String) {
    let ca = Ca::new("measure test CA").unwrap();
    let server = ca
        .server(&["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let client = ca
        .client("client", "spiffe://cluster.local/ns/default/sa/client")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", &ca.cert_pem());
    write("server.pem", &server.cert_pem);
    write("server-key.pem", &server.key_pem);
    write("client.pem", &client.cert_pem);
    write("client-key.pem", &client.key_pem);
    let d = dir.path().display();
    let tls = format!("tls:\n  cert: {d}/server.pem\n  key: {d}/server-key.pem\n  clientCA: {d}/ca.pem\n  clientAuth: require");
    (dir, tls)
}

fn file(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_over_http1_and_alpn_h2_with_an_ip_server_name() {
    let (dir, tls) = pki();
    let (_v1, _v2, proxy) = proxy_90_10_with(&tls).await;
    for h2 in [false, true] {
        let mut a = args(&proxy, "web-v1=90,web-v2=10");
        // https://127.0.0.1:PORT/ and no --sni: verified against the certificate's IP name
        a.url = format!("https://{}/", proxy.addr);
        a.cacert = file(dir.path(), "ca.pem");
        a.cert = file(dir.path(), "client.pem");
        a.key = file(dir.path(), "client-key.pem");
        a.h2 = h2;
        a.requests = 400;
        a.connections = 4;
        let report = run(&a, false).await.unwrap();
        assert_eq!(report.ok, 400, "h2 {h2}: {}", report.table());
        assert_eq!(report.exit_code(), 0, "h2 {h2}: {}", report.table());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_counted_and_insecure_skips_verification() {
    let (dir, tls) = pki();
    let (_v1, _v2, proxy) = proxy_90_10_with(&tls).await;
    let mut a = args(&proxy, "web-v1=90,web-v2=10");
    a.url = format!("https://{}/", proxy.addr);
    a.sni = Some("localhost".into());
    a.cert = file(dir.path(), "client.pem");
    a.key = file(dir.path(), "client-key.pem");
    a.requests = 10;
    a.connections = 1;

    // the proxy's certificate is not signed by this CA
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("ca.pem"),
        Ca::new("another CA").unwrap().cert_pem(),
    )
    .unwrap();
    let mut wrong_ca = a.clone();
    wrong_ca.cacert = file(other.path(), "ca.pem");
    let report = run(&wrong_ca, false).await.unwrap();
    assert_eq!(report.errors.get("tls"), Some(&10), "{:?}", report.errors);
    assert_eq!(report.exit_code(), 2);

    // no client certificate where one is required: nothing answers
    let mut anonymous = a.clone();
    anonymous.insecure = true;
    anonymous.cert = None;
    anonymous.key = None;
    let report = run(&anonymous, false).await.unwrap();
    assert_eq!(report.ok, 0, "{}", report.table());
    assert_eq!(report.requests, 10);
    assert_eq!(report.exit_code(), 2);

    // --insecure: no CA at all, the handshake still succeeds
    let mut insecure = a.clone();
    insecure.insecure = true;
    let report = run(&insecure, false).await.unwrap();
    assert_eq!(report.ok, 10, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_prints_json_and_exits_by_the_verdict() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let url = proxy.url("/");
    let measure = |expect: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_splitproxy"))
                .args([
                    "measure", "--url", &url, "--host", "web", "-n", "2000", "-c", "4", "--alpha",
                    "1e-6", "--json", "--expect", expect,
                ])
                .output()
                .unwrap()
        })
    };
    let out = measure("web-v1=90,web-v2=10").await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rejected"], false);
    assert_eq!(json["requests"], 2000);
    assert_eq!(json["ok"], 2000);
    assert!(json["chi_square"]["p_value"].as_f64().unwrap() > 1e-6);
    for field in ["url", "errors", "duration_s", "rps", "classes", "alpha"] {
        assert!(!json[field].is_null(), "{field} missing in {json}");
    }
    for p in ["p50", "p90", "p99", "p999"] {
        assert!(json["latency_ms"][p].as_f64().is_some(), "{p} in {json}");
    }
    let out = measure("web-v1=50,web-v2=50").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    // nothing listening: nothing measured, exit 2
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args([
            "measure",
            "--url",
            "http://127.0.0.1:1/",
            "-n",
            "10",
            "-c",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
