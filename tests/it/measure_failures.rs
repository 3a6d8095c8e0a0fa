//! `splitproxy measure --json` lists each failure with its send time, so a soak can line
//! failures up with what it did to the proxy (a backend killed, a certificate rotated).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;
use splitproxy::cmd::measure::{run, MeasureArgs};

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_their_kind_and_send_time() {
    let v1 = Backend::spawn("v1").await;
    let yaml = proxy_doc(&[("web-v1", v1.addr)], "") + &split_doc("s", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let before = unix_ms(SystemTime::now());

    // good requests first: nothing is listed for them
    let mut a = MeasureArgs::new(&proxy.url("/"));
    a.host = Some("web".into());
    a.requests = 40;
    a.connections = 2;
    let good = run(&a, false).await.unwrap();
    assert_eq!(good.ok, 40);
    let json = good.to_json();
    assert_eq!(json["failures"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["failures_dropped"], 0);

    // no route for this host: every request is a counted failure with its time
    a.host = Some("nowhere".into());
    let bad = run(&a, false).await.unwrap();
    let after = unix_ms(SystemTime::now());
    assert_eq!(bad.errors["status 404"], 40);
    let json = bad.to_json();
    let started = json["started_unix_ms"].as_u64().unwrap();
    assert!(
        (before..=after).contains(&started),
        "{started} not in {before}..={after}"
    );
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 40, "{json}");
    let elapsed_ms = (bad.elapsed.as_millis() + 1) as u64;
    let mut last = 0;
    for f in failures {
        assert_eq!(f["kind"], "status 404", "{f}");
        let t = f["t_ms"].as_u64().unwrap();
        assert!(
            t >= last && t <= elapsed_ms,
            "{t} after {last}, run {elapsed_ms} ms"
        );
        last = t;
    }
    assert_eq!(v1.hits(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_are_listed_too() {
    let refused = refused_port();
    let addr = refused.addr;
    let mut a = MeasureArgs::new(&format!("http://{addr}/"));
    a.requests = 12;
    a.connections = 3;
    let report = run(&a, false).await.unwrap();
    assert_eq!(report.errors.get("connect"), Some(&12));
    assert_eq!(report.failures.len(), 12);
    assert!(report.failures.iter().all(|(_, k)| k == "connect"));
    assert!(report.failures.windows(2).all(|w| w[0].0 <= w[1].0));
}
