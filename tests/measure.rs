//! `splitproxy measure` against a real proxy: honest and skewed splits, exit codes, JSON,
//! HTTP/2.

mod support;

use splitproxy::measure::{run, MeasureArgs};
use support::*;

async fn proxy_90_10() -> (Backend, Backend, Proxy) {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let yaml = proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_split_is_not_rejected() {
    let (v1, v2, proxy) = proxy_90_10().await;
    let report = run(&args(&proxy, "web-v1=90,web-v2=10"), false)
        .await
        .unwrap();
    assert_eq!(report.responses(), 4000);
    assert_eq!(v1.hits() + v2.hits(), 4000);
    assert_eq!(report.counts["web-v1"], v1.hits());
    assert!(!report.rejected, "{}", report.table());
    assert_eq!(report.exit_code(), 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.latency_ms[0] > 0.0 && report.latency_ms[0] <= report.latency_ms[2]);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_measured_too() {
    let (_v1, _v2, proxy) = proxy_90_10().await;
    let mut a = args(&proxy, "web-v1=90,web-v2=10");
    a.h2 = true;
    a.requests = 1000;
    let report = run(&a, false).await.unwrap();
    assert_eq!(report.responses(), 1000, "{:?}", report.errors);
    assert_eq!(report.exit_code(), 0, "{}", report.table());
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
    assert_eq!(json["responses"], 2000);
    assert!(json["chi_square"]["p_value"].as_f64().unwrap() > 1e-6);
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
