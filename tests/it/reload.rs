//! Hot reload over real files and sockets: rename-writes, ConfigMap `..data` swaps,
//! invalid rewrites, keep-alive connections following new weights, zero failed requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use http::{Request, StatusCode};

fn config(v1: &Backend, v2: &Backend, w1: u64, w2: u64) -> String {
    proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
        + &split_doc("web-split", "web", &[("web-v1", w1), ("web-v2", w2)])
}

/// Send requests until one is answered by `backend`, within a bound; returns how long it took.
async fn until_backend(c: &TestClient, proxy: &Proxy, backend: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let a = get(c, &proxy.url("/"), "web").await;
        if a.backend() == backend {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no answer from {backend} within {limit:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_write_applies_new_weights_quickly() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let proxy = Proxy::start(&config(&v1, &v2, 100, 0)).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "v1");
    let mut figures = Vec::new();
    for (i, target) in ["v2", "v1", "v2"].iter().enumerate() {
        let (w1, w2) = if *target == "v2" { (0, 100) } else { (100, 0) };
        let start = Instant::now();
        proxy.rewrite(&config(&v1, &v2, w1, w2));
        until_backend(&c, &proxy, target, Duration::from_secs(5)).await;
        figures.push(start.elapsed());
        assert_eq!(proxy.version(), 2 + i as u64);
    }
    // reported, not asserted tightly: the bound only catches a reload that is not live at all
    eprintln!("reload: new split served {figures:?} after the rename");
    assert!(
        figures.iter().all(|d| *d < Duration::from_secs(2)),
        "{figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_flipped_five_times_under_load_lose_no_request() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let proxy = Arc::new(Proxy::start(&config(&v1, &v2, 90, 10)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (proxy, stop, ok, failed) = (proxy.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let req = Request::get(proxy.url("/"))
                    .header("host", "web")
                    .body(Default::default())
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for flip in 0..5u64 {
        let (w1, w2) = if flip % 2 == 0 { (10, 90) } else { (90, 10) };
        proxy.rewrite(&config(&v1, &v2, w1, w2));
        proxy.wait_version(2 + flip).await;
        // let traffic run on each version
        let before = ok.load(Ordering::SeqCst);
        while ok.load(Ordering::SeqCst) < before + 200 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} ok",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(proxy.version(), 6);
    assert!(ok.load(Ordering::SeqCst) >= 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rewrite_keeps_the_old_split() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let proxy = Proxy::start(&config(&v1, &v2, 100, 0)).await;
    let c = client();
    // negative weight: rejected; the old table keeps serving
    let bad = config(&v1, &v2, 0, 100).replace("weight: 100", "weight: -5");
    proxy.rewrite(&bad);
    // wait until the rejection is visible (counted), then check traffic
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        if metrics.contains("splitproxy_config_reloads_total{result=\"error\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rejection not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..50 {
        assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "v1");
    }
    assert_eq!(proxy.version(), 1);
    let (_, routes) = admin_get(&proxy, "/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["version"], 1);
    let errors = routes["lastReloadErrors"].as_array().unwrap();
    assert!(
        errors[0].as_str().unwrap().contains("document 2 (TrafficSplit web-split): spec.backends[1].weight: must not be negative, got -5"),
        "{errors:?}"
    );
    // YAML that does not parse at all: same
    proxy.rewrite("apiVersion: [unclosed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !admin_get(&proxy, "/metrics")
        .await
        .1
        .contains("splitproxy_config_reloads_total{result=\"error\"} 2")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "v1");
    // and a good file afterwards is applied
    proxy.rewrite(&config(&v1, &v2, 0, 100));
    until_backend(&c, &proxy, "v2", Duration::from_secs(5)).await;
    assert_eq!(proxy.version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_data_symlink_swap_is_picked_up() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    // the layout the kubelet writes: a timestamped folder, `..data` -> it, file -> `..data/file`
    let write_version = |name: &str, yaml: &str| {
        let real = mount.join(name);
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("config.yaml"), yaml).unwrap();
        let tmp = mount.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, mount.join("..data")).unwrap();
    };
    write_version("..2026_11_28_01", &config(&v1, &v2, 100, 0));
    std::os::unix::fs::symlink("..data/config.yaml", mount.join("config.yaml")).unwrap();
    let proxy = Proxy::start_at(dir, mount.clone()).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "v1");
    write_version("..2026_11_28_02", &config(&v1, &v2, 0, 100));
    std::fs::remove_dir_all(mount.join("..2026_11_28_01")).unwrap();
    until_backend(&c, &proxy, "v2", Duration::from_secs(5)).await;
    assert_eq!(proxy.version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_folder_follows_added_and_removed_files() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("conf");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("00-proxy.yaml"),
        proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], ""),
    )
    .unwrap();
    std::fs::write(
        folder.join("10-split.yaml"),
        split_doc("web-split", "web", &[("web-v1", 1)]),
    )
    .unwrap();
    std::fs::write(folder.join("notes.txt"), "not yaml: ignored").unwrap();
    let proxy = Proxy::start_at(dir, folder.clone()).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "v1");
    // a second split in a new file
    std::fs::write(
        folder.join("20-api.yml"),
        split_doc("api-split", "api", &[("web-v2", 1)]),
    )
    .unwrap();
    proxy.wait_version(2).await;
    assert_eq!(get(&c, &proxy.url("/"), "api").await.backend(), "v2");
    // removed again
    std::fs::remove_file(folder.join("20-api.yml")).unwrap();
    proxy.wait_version(3).await;
    assert_eq!(
        get(&c, &proxy.url("/"), "api").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_sees_new_weights() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let proxy = Proxy::start(&config(&v1, &v2, 100, 0)).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let mut ask = || {
        let req = Request::get("/")
            .header("host", "web")
            .body(empty())
            .unwrap();
        sender.send_request(req)
    };
    assert_eq!(ask().await.unwrap().headers()["x-backend"], "v1");
    proxy.rewrite(&config(&v1, &v2, 0, 100));
    proxy.wait_version(2).await;
    assert_eq!(ask().await.unwrap().headers()["x-backend"], "v2");
    assert!(
        !conn.is_finished(),
        "the same connection carried both requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_content_is_not_reloaded() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let yaml = config(&v1, &v2, 1, 1);
    let proxy = Proxy::start(&yaml).await;
    // the same bytes written again, and a manual reload (SIGHUP): nothing to apply
    proxy.rewrite(&yaml);
    let outcome = proxy.server.as_ref().unwrap().reload().await;
    assert_eq!(outcome, Ok(splitproxy::reload::Outcome::Unchanged));
    assert_eq!(proxy.version(), 1);
}

/// A listener whose accept queue is full: connects to it hang instead of being refused.
fn black_hole() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // a backlog of 0 holds one connection; every SYN after it is dropped
    let fillers = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (socket, fillers, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_configuration_changes_no_timeout() {
    let (_hole, _fillers, hole) = black_hole();
    // the upstream timeout is shorter than the connect timeout: a hanging connect is a 504
    let good = |connect: &str, extra_service: &str| {
        proxy_doc(
            &[("hole", hole)],
            &format!("timeouts:\n  connect: {connect}\n  upstream: 400ms"),
        ) + extra_service
            + &split_doc("s", "web", &[("hole", 1)])
    };
    let proxy = Proxy::start(&good("10s", "")).await;
    let c = client();
    assert_eq!(
        get(&c, &proxy.url("/"), "web").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );

    // a shorter connect timeout in a configuration whose table build fails (an upstream CA
    // that exists but is no certificate): nothing of it may take effect
    std::fs::write(
        proxy.dir.path().join("bad-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let tls_service =
        "    broken:\n      endpoints: [\"127.0.0.1:9\"]\n      tls:\n        ca: bad-ca.pem\n";
    proxy.rewrite(&good("50ms", tls_service));
    let server = proxy.server.as_ref().unwrap();
    let errors = server.reload().await;
    assert!(
        server
            .last_reload_errors()
            .iter()
            .any(|e| e.contains("spec.services.broken.tls")),
        "{errors:?} {:?}",
        server.last_reload_errors()
    );
    assert_eq!(proxy.version(), 1);
    // the 50ms connect timeout would answer 502 before the 400ms upstream timeout
    let a = get(&c, &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);

    // the same timeout in a valid configuration does take effect: 502
    proxy.rewrite(&good("50ms", ""));
    proxy.wait_version(2).await;
    let a = get(&c, &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
}
