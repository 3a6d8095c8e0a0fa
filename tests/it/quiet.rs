//! Reload hygiene with the real binary: its own log file kept in the watched configuration
//! folder, next to another file an application keeps appending to. Neither is the
//! configuration, so the proxy reads nothing and logs nothing for them; its warnings (plain
//! HTTP, a skipped document) are logged once, and a real change still reloads.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The child process, killed if the test fails before it is stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(v1: &Backend, v2: &Backend, w1: u64, w2: u64) -> String {
    // plain HTTP (a warning) and a document of another kind (skipped with a warning)
    proxy_doc(&[("web-v1", v1.addr), ("web-v2", v2.addr)], "")
        + &split_doc("web-split", "web", &[("web-v1", w1), ("web-v2", w2)])
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
}

/// Poll `log` until a line contains `what`; returns that line.
async fn wait_for_line(log: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(what)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

async fn metric(admin: SocketAddr, line: &str) -> bool {
    let a = get(&client(), &format!("http://{admin}/metrics"), "x").await;
    a.body.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_in_the_watched_folder_keeps_a_quiet_proxy_quiet() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), config(&v1, &v2, 1, 0)).unwrap();
    let log = dir.path().join("splitproxy.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args([
            "run",
            "--config",
            dir.path().to_str().unwrap(),
            "--workers",
            "1",
        ])
        // every read of the configuration logged, so that a read would show
        .args(["--log", "info,splitproxy::reload=debug"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let line = wait_for_line(&log, " split(s) on ").await;
    let addr = |after: &str| -> SocketAddr {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split([' ', ',']).next().unwrap().parse().unwrap()
    };
    let (proxy, admin) = (addr(" on "), addr("admin on "));
    let url = format!("http://{proxy}/");

    // an application logging into the same folder, a line per request it serves; an
    // editor's swap file and a notes file beside it
    let c = client();
    let mut app_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("app.log"))
        .unwrap();
    for i in 0..400 {
        assert_eq!(get(&c, &url, "web").await.backend(), "v1");
        writeln!(app_log, "request {i} served").unwrap();
        app_log.flush().unwrap();
        if i % 100 == 0 {
            std::fs::write(dir.path().join(".proxy.yaml.swp"), format!("{i}")).unwrap();
            std::fs::write(dir.path().join("notes.txt"), format!("{i}")).unwrap();
        }
    }

    // a real change, renamed in from outside the folder: one event, one read
    let staging = tempfile::tempdir().unwrap();
    let next = staging.path().join("proxy.yaml");
    std::fs::write(&next, config(&v1, &v2, 0, 1)).unwrap();
    std::fs::rename(&next, dir.path().join("proxy.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metric(admin, "splitproxy_config_version 2").await {
        assert!(Instant::now() < deadline, "the change was not applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get(&c, &url, "web").await.backend(), "v2");

    // exactly one reload in all: the start-up load and this change
    assert!(metric(admin, "splitproxy_config_reloads_total{result=\"ok\"} 2").await);
    assert!(metric(admin, "splitproxy_config_reloads_total{result=\"error\"} 0").await);
    assert!(!metric(admin, "splitproxy_config_version 3").await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(count(&text, "reading the configuration"), 1, "{text}");
    assert_eq!(count(&text, "configuration unchanged"), 0, "{text}");
    assert_eq!(count(&text, "configuration version 2 live"), 1, "{text}");
    // the warnings of the start-up configuration, once; the change did not repeat them
    assert_eq!(
        count(&text, "no spec.tls block: serving plain HTTP"),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "skipped: kind \"Deployment\""), 1, "{text}");

    // SIGTERM: a clean exit
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.0.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_file_that_appears_later_is_a_change_of_the_configuration() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let proxy = Proxy::start(&config(&v1, &v2, 1, 0)).await;
    // a rewrite that names an upstream CA not written yet: rejected
    let ca = proxy.dir.path().join("upstream-ca.pem");
    let tls_service = "    secure:\n      endpoints: [\"127.0.0.1:9\"]\n      tls:\n        ca: upstream-ca.pem\n";
    let next =
        config(&v1, &v2, 0, 1).replace("  services:\n", &format!("  services:\n{tls_service}"));
    proxy.rewrite(&next);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_get(&proxy, "/metrics")
        .await
        .1
        .contains("splitproxy_config_reloads_total{result=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "the rewrite was not rejected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(proxy.version(), 1);
    // the file it names arrives: that is the fix, and it is read without another edit
    let pem = splitproxy::cmd::pki::Ca::new("upstream")
        .unwrap()
        .cert_pem();
    rewrite(&ca, &pem);
    proxy.wait_version(2).await;
    assert_eq!(get(&client(), &proxy.url("/"), "web").await.backend(), "v2");
}
