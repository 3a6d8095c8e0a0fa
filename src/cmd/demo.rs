//! `splitproxy demo`: the zero-config showcase. Throw-away certificates, two built-in
//! backends, the real proxy at 90/10 over mTLS, traffic measured with `measure`, a live
//! weight change by rewriting the config file, and a table of configured vs observed
//! shares with chi-square p-values. Everything on 127.0.0.1, ports chosen by the kernel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::cmd::measure::{MeasureArgs, Report};
use crate::cmd::pki::Ca;
use crate::Server;

/// Requests per phase: enough for a tight estimate, few enough to finish in seconds.
const REQUESTS: u64 = 20_000;

/// One measured phase of the demo.
struct Phase {
    title: String,
    weights: (u64, u64),
    report: Report,
}

pub async fn run(progress: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    println!("splitproxy demo: two backends, one proxy over mTLS, weights 90/10, then 50/50 by a live config edit\n");

    // throw-away PKI
    let ca = Ca::new("splitproxy demo CA")?;
    let server = ca.server(&["localhost".into(), "127.0.0.1".into()])?;
    let client = ca.client(
        "demo-client",
        "spiffe://cluster.local/ns/default/sa/demo-client",
    )?;
    let write = |name: &str, text: &str, secret: bool| {
        crate::cmd::pki::write_file(&dir.path().join(name), text, secret)
    };
    write("ca.pem", &ca.cert_pem(), false)?;
    write("server.pem", &server.cert_pem, false)?;
    write("server-key.pem", &server.key_pem, true)?;
    write("client.pem", &client.cert_pem, false)?;
    write("client-key.pem", &client.key_pem, true)?;

    let v1 = spawn_backend("v1").await?;
    let v2 = spawn_backend("v2").await?;
    println!("  backend demo-v1 on {v1}, demo-v2 on {v2} (built in)");

    let config_path = dir.path().join("splitproxy.yaml");
    rewrite(&config_path, &config(v1, v2, 90, 10))?;
    let proxy = match Server::start(config_path.clone()).await {
        Ok(s) => s,
        Err(crate::StartError::Config(errors)) => {
            anyhow::bail!(
                "demo config rejected: {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "  proxy on https://{} (mTLS, client certificate required), admin on http://{}",
        proxy.proxy_addr, proxy.admin_addr
    );
    println!("  config: {}\n", config_path.display());

    let mut phases = Vec::new();
    let args = measure_args(proxy.proxy_addr, dir.path(), (90, 10));
    println!("phase 1: {REQUESTS} requests at 90/10");
    let report = crate::cmd::measure::run(&args, progress).await?;
    phases.push(Phase {
        title: "before the edit".into(),
        weights: (90, 10),
        report,
    });

    // the live weight change: rewrite the file as an editor or a ConfigMap update would
    println!("\nrewriting {} to 50/50 ...", config_path.display());
    let edit = Instant::now();
    rewrite(&config_path, &config(v1, v2, 50, 50))?;
    let deadline = edit + Duration::from_secs(10);
    while proxy.version() < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the proxy did not pick up the edit within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "  new weights live {:.1} ms after the rename, no restart, no connection dropped\n",
        edit.elapsed().as_secs_f64() * 1e3
    );

    println!("phase 2: {REQUESTS} requests at 50/50");
    let args = measure_args(proxy.proxy_addr, dir.path(), (50, 50));
    let report = crate::cmd::measure::run(&args, progress).await?;
    phases.push(Phase {
        title: "after the edit".into(),
        weights: (50, 50),
        report,
    });

    println!("\n{}", summary(&phases));
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    proxy.shutdown();
    proxy.wait().await;
    Ok(())
}

fn measure_args(addr: SocketAddr, dir: &Path, (w1, w2): (u64, u64)) -> MeasureArgs {
    let mut args = MeasureArgs::new(&format!("https://{addr}/"));
    args.host = Some("demo".into());
    args.sni = Some("localhost".into());
    args.cacert = Some(dir.join("ca.pem"));
    args.cert = Some(dir.join("client.pem"));
    args.key = Some(dir.join("client-key.pem"));
    args.requests = REQUESTS;
    args.connections = 16;
    args.expect = Some(format!("demo-v1={w1},demo-v2={w2}"));
    args
}

/// The closing table: configured vs observed per phase, with the chi-square verdict.
fn summary(phases: &[Phase]) -> String {
    let mut out = String::from("configured vs observed\n\n");
    out.push_str(&format!(
        "{:<16} {:<10} {:>12} {:>12} {:>10} {:>10}  {}\n",
        "phase", "backend", "configured", "observed", "requests", "p-value", "verdict"
    ));
    for phase in phases {
        let total = phase.weights.0 + phase.weights.1;
        let ok: u64 = phase.report.counts.values().sum();
        let p = phase
            .report
            .chi_square
            .map(|c| c.p_value)
            .unwrap_or(f64::NAN);
        for (i, (name, weight)) in [("demo-v1", phase.weights.0), ("demo-v2", phase.weights.1)]
            .into_iter()
            .enumerate()
        {
            let n = phase.report.counts.get(name).copied().unwrap_or(0);
            let observed = if ok == 0 {
                0.0
            } else {
                100.0 * n as f64 / ok as f64
            };
            let (title, pv, verdict) = if i == 0 {
                let verdict = if phase.report.rejected {
                    "differs from the weights"
                } else {
                    "consistent with the weights"
                };
                (phase.title.as_str(), format!("{p:.3}"), verdict)
            } else {
                ("", String::new(), "")
            };
            out.push_str(&format!(
                "{:<16} {:<10} {:>11.1}% {:>11.2}% {:>10} {:>10}  {}\n",
                title,
                name,
                100.0 * weight as f64 / total as f64,
                observed,
                n,
                pv,
                verdict
            ));
        }
    }
    out.push_str(
        "\np-value: chi-square goodness of fit of the observed counts to the configured weights;\n",
    );
    out.push_str("a weighted random split gives p uniformly spread over (0, 1); p < 0.001 would mean the split is off.\n");
    out
}

/// Replace the file the way editors do: write beside it, then rename over it.
fn rewrite(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn config(v1: SocketAddr, v2: SocketAddr, w1: u64, w2: u64) -> String {
    format!(
        r#"apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: demo
spec:
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  tls:
    cert: server.pem
    key: server-key.pem
    clientCA: ca.pem
    clientAuth: require
  exposeBackend: true
  services:
    demo-v1: ["{v1}"]
    demo-v2: ["{v2}"]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: demo
  namespace: default
spec:
  service: demo
  backends:
  - service: demo-v1
    weight: {w1}
  - service: demo-v2
    weight: {w2}
"#
    )
}

/// A tiny backend that answers `hello from NAME`.
async fn spawn_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r =
                        Response::new(Full::new(Bytes::from(format!("hello from {name}\n"))));
                    *r.status_mut() = StatusCode::OK;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
