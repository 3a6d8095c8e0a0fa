//! The real binary: start, serve, SIGTERM drain (in-flight requests finish, `/readyz`
//! fails at once, the listener closes after `shutdown.delay`), exit 0.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;

/// Start `splitproxy run` on `yaml`; returns the child and the proxy and admin addresses
/// read from its start-up log line.
fn spawn(dir: &std::path::Path, yaml: &str) -> (Child, SocketAddr, SocketAddr) {
    spawn_with(dir, yaml, "1")
}

fn spawn_with(dir: &std::path::Path, yaml: &str, workers: &str) -> (Child, SocketAddr, SocketAddr) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--workers",
            workers,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, admin) = serving(&mut child);
    (child, addr, admin)
}

fn signal(child: &Child, sig: &str) {
    // the shell's builtin kill: present wherever sh is, unlike /usr/bin/kill
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {}", child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let v1 = Backend::spawn("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(
        &[("web-v1", v1.addr)],
        "shutdown:\n  delay: 400ms\n  grace: 5s",
    ) + &split_doc("s", "web", &[("web-v1", 1)]);
    let (mut child, addr, admin) = spawn(dir.path(), &yaml);
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{admin}/readyz"), "x").await.status,
        StatusCode::OK
    );

    // a slow request in flight when SIGTERM arrives
    let slow = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &format!("http://{addr}/slow/800"), "web").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while v1.hits() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signal(&child, "TERM");
    let start = Instant::now();
    // /readyz fails at once, while the listener still accepts during shutdown.delay
    loop {
        let r = get(&client(), &format!("http://{admin}/readyz"), "x").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "readyz still OK"
        );
    }
    let during_delay = get(&client(), &format!("http://{addr}/"), "web").await;
    assert_eq!(during_delay.status, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "took too long to check the delay window"
    );

    let answer = slow.await.unwrap();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "v1")
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // the listener is closed
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// HTTP/2 streams run in their connection's task (server/h2.rs): the streams in flight
/// when SIGTERM arrives are still driven to their answers after the GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_http2_streams_in_flight() {
    use http_body_util::BodyExt;
    let v1 = Backend::spawn("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(
        &[("web-v1", v1.addr)],
        "shutdown:\n  delay: 0s\n  grace: 5s",
    ) + &split_doc("s", "web", &[("web-v1", 1)]);
    let (mut child, addr, _) = spawn(dir.path(), &yaml);
    let client = crate::versions::h2_prior_knowledge(addr).await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let req = http::Request::get("http://web/slow/600")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let resp = client.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();
    eventually(
        "the streams reach the backend",
        Duration::from_secs(5),
        || v1.hits() >= 3,
    )
    .await;
    signal(&child, "TERM");
    for stream in slow {
        let (status, body) = stream.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_bad_config_at_start_exits_1() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let yaml = |w1, w2| {
        proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
            + &split_doc("s", "web", &[("web-v1", w1), ("web-v2", w2)])
    };
    let (mut child, addr, _admin) = spawn(dir.path(), &yaml(1, 0));
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{addr}/"), "web").await.backend(),
        "v1"
    );
    // written in place (no rename), then SIGHUP, as an operator script would
    std::fs::write(dir.path().join("config.yaml"), yaml(0, 1)).unwrap();
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&c, &format!("http://{addr}/"), "web").await.backend() != "v2" {
        assert!(Instant::now() < deadline, "SIGHUP reload not applied");
    }
    signal(&child, "INT");
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("config.yaml"),
        yaml(1, 0).replace("weight: 1", "weight: -1"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args([
            "run",
            "--config",
            bad.path().join("config.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be negative, got -1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_port_serve_and_drain() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let yaml = proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
        + &split_doc("s", "web", &[("web-v1", 1), ("web-v2", 1)]);
    let (mut child, addr, admin) = spawn_with(dir.path(), &yaml, "3");
    // many fresh connections: the kernel spreads them over the workers' listeners
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let c = client();
                assert_eq!(
                    get(&c, &format!("http://{addr}/"), "web").await.status,
                    StatusCode::OK
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(v1.hits() + v2.hits(), 200);
    // a reload reaches every worker: all traffic to v2 now
    std::fs::write(
        dir.path().join("config.yaml"),
        yaml.replace(
            "weight: 1\n  - service: web-v2",
            "weight: 0\n  - service: web-v2",
        ),
    )
    .unwrap();
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let version = || async {
        let body = get(&client(), &format!("http://{admin}/routes"), "x")
            .await
            .body;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
            .as_u64()
            .unwrap()
    };
    while version().await < 2 {
        assert!(Instant::now() < deadline, "reload not applied");
    }
    let before = v1.hits();
    for _ in 0..40 {
        assert_eq!(
            get(&client(), &format!("http://{addr}/"), "web")
                .await
                .backend(),
            "v2"
        );
    }
    assert_eq!(v1.hits(), before);
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
