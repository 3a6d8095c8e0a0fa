//! Selection policies through the real proxy: deterministic windows are exact, sticky keys
//! map to the same backend on every replica, sticky cookies keep a client where it landed;
//! and the metrics that show it.

use std::collections::HashMap;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

fn split_with(annotations: &str, backends: &[(&str, u64)]) -> String {
    split_doc("web-split", "web", backends).replace(
        "  namespace: default\n",
        &format!("  namespace: default\n  annotations:\n{annotations}"),
    )
}

async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::spawn("a").await,
        Backend::spawn("b").await,
        Backend::spawn("c").await,
    )
}

fn services<'a>(
    a: &'a Backend,
    b: &'a Backend,
    c: &'a Backend,
) -> [(&'static str, std::net::SocketAddr); 3] {
    [("web-a", a.addr), ("web-b", b.addr), ("web-c", c.addr)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_windows_hold_each_weight_exactly() {
    let (a, b, c) = three().await;
    let yaml = proxy_doc(&services(&a, &b, &c), "")
        + &split_with(
            "    splitproxy.dev/selection: deterministic\n",
            &[("web-a", 50), ("web-b", 30), ("web-c", 20)],
        );
    let proxy = Proxy::start(&yaml).await;
    let client = client();
    // weights 50/30/20 reduce to 5/3/2: a window is 10 picks
    let mut order = Vec::new();
    for _ in 0..60 {
        order.push(
            get(&client, &proxy.url("/"), "web")
                .await
                .backend()
                .to_string(),
        );
    }
    for (start, window) in order.windows(10).enumerate() {
        let count = |n: &str| window.iter().filter(|x| *x == n).count();
        assert_eq!(
            (count("a"), count("b"), count("c")),
            (5, 3, 2),
            "window at {start}: {window:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_maps_a_key_to_the_same_backend_on_every_replica() {
    let (a, b, c) = three().await;
    let yaml = proxy_doc(&services(&a, &b, &c), "")
        + &split_with(
            "    splitproxy.dev/selection: sticky\n    splitproxy.dev/sticky-header: x-user\n",
            &[("web-a", 60), ("web-b", 30), ("web-c", 10)],
        );
    // two replicas started separately
    let (one, two) = (Proxy::start(&yaml).await, Proxy::start(&yaml).await);
    let client = client();
    let ask = |proxy: &Proxy, user: String| {
        let req = Request::get(proxy.url("/"))
            .header("host", "web")
            .header("x-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client, req)
    };
    let mut per_backend: HashMap<String, u32> = HashMap::new();
    for i in 0..600 {
        let user = format!("user-{i}");
        let first = ask(&one, user.clone()).await.backend().to_string();
        assert_eq!(
            ask(&two, user.clone()).await.backend(),
            first,
            "{user} moved between replicas"
        );
        assert_eq!(
            ask(&one, user.clone()).await.backend(),
            first,
            "{user} moved between requests"
        );
        *per_backend.entry(first).or_default() += 1;
    }
    // the keys spread by weight (600 keys: far outside 6 sigma if the weights were ignored)
    let a_share = per_backend["a"] as f64 / 600.0;
    assert!((0.45..0.75).contains(&a_share), "{per_backend:?}");
    assert!(
        per_backend.get("c").copied().unwrap_or(0) < per_backend["b"],
        "{per_backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_set_once_and_keeps_the_client_on_its_backend() {
    let (a, b, c) = three().await;
    let yaml = proxy_doc(&services(&a, &b, &c), "")
        + &split_with(
            "    splitproxy.dev/selection: sticky\n    splitproxy.dev/sticky-cookie: canary\n",
            &[("web-a", 1), ("web-b", 1), ("web-c", 1)],
        );
    let proxy = Proxy::start(&yaml).await;
    let client = client();
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let first = get(&client, &proxy.url("/"), "web").await;
        let cookie = first.headers["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.starts_with("canary=") && cookie.contains("Path=/"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        for _ in 0..5 {
            let req = Request::get(proxy.url("/"))
                .header("host", "web")
                .header("cookie", format!("theme=dark; {pair}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let again = send(&client, req).await;
            assert_eq!(again.backend(), first.backend(), "cookie {pair} moved");
            assert!(
                !again.headers.contains_key("set-cookie"),
                "cookie set again"
            );
        }
        *seen.entry(first.backend().to_string()).or_insert(0) += 1;
    }
    assert!(
        seen.len() >= 2,
        "new clients are spread at random: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_needs_a_key_annotation() {
    let (a, b, c) = three().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        proxy_doc(&services(&a, &b, &c), "")
            + &split_with("    splitproxy.dev/selection: sticky\n", &[("web-a", 1)]),
    )
    .unwrap();
    let errors = splitproxy::config::load(&path).unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .contains("sticky needs exactly one of"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_at_zero_survive_reloads_and_never_decrease() {
    let (a, b, c) = three().await;
    let config = |wa: u64, wb: u64| {
        proxy_doc(&services(&a, &b, &c), "")
            + &split_doc("web-split", "web", &[("web-a", wa), ("web-b", wb)])
    };
    let proxy = Proxy::start(&config(1, 1)).await;
    let series = |backend: &str| {
        format!("splitproxy_requests_total{{split=\"default/web-split\",backend=\"{backend}\",code=\"2xx\"}}")
    };
    let value = |metrics: &str, name: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    // every configured backend has its series before any traffic (Flagger needs them)
    let (_, m) = admin_get(&proxy, "/metrics").await;
    assert_eq!(value(&m, &series("web-a")), Some(0), "{m}");
    assert_eq!(value(&m, &series("web-b")), Some(0), "{m}");
    assert!(m.contains("splitproxy_request_duration_seconds_bucket{le=\"0.0005\",split=\"default/web-split\",backend=\"web-a\"}") || m.contains("splitproxy_request_duration_seconds_bucket{split=\"default/web-split\",backend=\"web-a\",le=\"0.0005\"}"), "{m}");
    assert!(m.contains("splitproxy_upstream_connect_failures_total{split=\"default/web-split\",backend=\"web-a\"} 0"), "{m}");
    assert!(m.contains("splitproxy_active_connections"), "{m}");

    let client = client();
    for _ in 0..100 {
        assert_eq!(
            get(&client, &proxy.url("/"), "web").await.status,
            StatusCode::OK
        );
    }
    let (_, before) = admin_get(&proxy, "/metrics").await;
    let (a_before, b_before) = (
        value(&before, &series("web-a")).unwrap(),
        value(&before, &series("web-b")).unwrap(),
    );
    assert_eq!(a_before + b_before, 100);
    assert!(before.contains("splitproxy_request_duration_seconds_count{split=\"default/web-split\",backend=\"web-a\"}"), "{before}");

    proxy.rewrite(&config(0, 1));
    proxy.wait_version(2).await;
    for _ in 0..10 {
        get(&client, &proxy.url("/"), "web").await;
    }
    let (_, after) = admin_get(&proxy, "/metrics").await;
    assert_eq!(
        value(&after, &series("web-a")),
        Some(a_before),
        "counter changed or reset: {after}"
    );
    assert_eq!(value(&after, &series("web-b")), Some(b_before + 10));
    assert_eq!(value(&after, "splitproxy_config_version"), Some(2));
    // /routes: shares since the reload only
    let (_, routes) = admin_get(&proxy, "/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let backends = &routes["splits"][0]["backends"];
    assert_eq!(backends[0]["requests"], 0);
    assert_eq!(backends[1]["requests"], 10);
    assert_eq!(backends[1]["observedShare"], 1.0);
    assert_eq!(routes["version"], 2);
}
