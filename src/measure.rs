//! `splitproxy measure`: drive load at a running proxy and judge the split it honours.
//!
//! C connections (HTTP/1.1 keep-alive, or HTTP/2 with ALPN or prior knowledge), each a task
//! sending one request at a time until N requests have started or the duration is over,
//! optionally paced to a total rate. Every response is classified by a response header
//! (the proxy's `x-splitproxy-backend` by default); the counts are compared with
//! `--expect` by a chi-square goodness-of-fit test. Exit codes: 0 consistent (or nothing
//! expected), 1 rejected at `--alpha`, 2 nothing measured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::net::TcpStream;

use crate::stats::{chi_square, ChiSquare};

/// Command-line arguments of `splitproxy measure`.
#[derive(clap::Args, Debug, Clone)]
pub struct MeasureArgs {
    /// The proxy URL, e.g. https://127.0.0.1:8443/ or http://127.0.0.1:8080/path
    #[arg(long)]
    pub url: String,
    /// Requests to send (ignored with --duration).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub requests: u64,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Send for this long instead of a number of requests (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Total requests per second (open loop, spread over the connections).
    #[arg(long)]
    pub rate: Option<f64>,
    /// HTTP/2 (ALPN h2 over https, prior knowledge over http).
    #[arg(long)]
    pub h2: bool,
    /// Host header / :authority (default: from the URL); the proxy routes on it.
    #[arg(long)]
    pub host: Option<String>,
    /// TLS server name (default: the URL's host).
    #[arg(long)]
    pub sni: Option<String>,
    /// CA (PEM) that signs the proxy's certificate.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for mTLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not verify the proxy's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Response header that names the backend.
    #[arg(long, default_value = "x-splitproxy-backend")]
    pub header: String,
    /// Expected weights, e.g. v1=90,v2=10 (relative).
    #[arg(long)]
    pub expect: Option<String>,
    /// Significance: --expect is rejected when the chi-square p-value is below this.
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f64,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::values::parse_duration(s)
}

impl MeasureArgs {
    /// Defaults as on the command line, for callers in code (the demo).
    pub fn new(url: &str) -> Self {
        MeasureArgs {
            url: url.to_string(),
            requests: 10_000,
            connections: 16,
            duration: None,
            rate: None,
            h2: false,
            host: None,
            sni: None,
            cacert: None,
            cert: None,
            key: None,
            insecure: false,
            header: "x-splitproxy-backend".into(),
            expect: None,
            alpha: 0.001,
            timeout: Duration::from_secs(10),
            json: false,
        }
    }
}

/// What one measurement found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub url: String,
    /// Responses by class (header value; `(none)` without the header).
    pub counts: BTreeMap<String, u64>,
    /// Failures by kind: `status 503`, `connect`, `tls`, `timeout`, `http`.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// p50, p90, p99, p99.9 in milliseconds.
    pub latency_ms: [f64; 4],
    /// Expected relative weights by class, from `--expect`.
    pub expected: Option<Vec<(String, f64)>>,
    pub chi_square: Option<ChiSquare>,
    pub alpha: f64,
    pub rejected: bool,
}

impl Report {
    pub fn responses(&self) -> u64 {
        self.counts.values().sum()
    }

    /// 0: consistent or nothing expected; 1: `--expect` rejected; 2: nothing measured.
    pub fn exit_code(&self) -> u8 {
        if self.responses() == 0 {
            2
        } else if self.rejected {
            1
        } else {
            0
        }
    }

    /// Classes in display order: expected ones first, then any others seen.
    fn classes(&self) -> Vec<(String, Option<f64>, u64)> {
        let mut out = Vec::new();
        if let Some(expected) = &self.expected {
            let total: f64 = expected.iter().map(|(_, w)| w).sum();
            for (name, w) in expected {
                out.push((
                    name.clone(),
                    Some(w / total),
                    self.counts.get(name).copied().unwrap_or(0),
                ));
            }
        }
        for (name, n) in &self.counts {
            if !out.iter().any(|(c, _, _)| c == name) {
                out.push((name.clone(), self.expected.as_ref().map(|_| 0.0), *n));
            }
        }
        out
    }

    pub fn table(&self) -> String {
        let total = self.responses();
        let secs = self.elapsed.as_secs_f64();
        let mut out = format!(
            "{} responses in {:.2} s ({:.0} req/s) from {}\n\n",
            total,
            secs,
            if secs > 0.0 { total as f64 / secs } else { 0.0 },
            self.url
        );
        out.push_str(&format!(
            "{:<24} {:>11} {:>10} {:>11} {:>10}\n",
            "backend", "configured", "requests", "observed", "error"
        ));
        for (name, share, n) in self.classes() {
            let observed = if total == 0 {
                0.0
            } else {
                100.0 * n as f64 / total as f64
            };
            let (configured, error) = match share {
                Some(s) => (
                    format!("{:.2}%", 100.0 * s),
                    format!("{:+.2} pp", observed - 100.0 * s),
                ),
                None => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{name:<24} {configured:>11} {n:>10} {observed:>10.2}% {error:>10}\n"
            ));
        }
        if let Some(c) = &self.chi_square {
            out.push_str(&format!(
                "\nchi-square {:.3}, {} degree(s) of freedom, p-value {:.4}: {} at alpha {}\n",
                c.statistic,
                c.degrees_of_freedom,
                c.p_value,
                if self.rejected {
                    "REJECTED, the split differs from the expected weights"
                } else {
                    "consistent with the expected weights"
                },
                self.alpha
            ));
        }
        let [p50, p90, p99, p999] = self.latency_ms;
        out.push_str(&format!(
            "latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}\n"
        ));
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let total = self.responses();
        let classes: Vec<_> = self
            .classes()
            .into_iter()
            .map(|(name, share, n)| {
                let observed = if total == 0 {
                    0.0
                } else {
                    n as f64 / total as f64
                };
                json!({
                    "name": name,
                    "expected_share": share,
                    "observed": n,
                    "observed_share": observed,
                    "abs_error_pp": share.map(|s| (100.0 * (observed - s)).abs()),
                })
            })
            .collect();
        let secs = self.elapsed.as_secs_f64();
        json!({
            "url": self.url,
            "requests": total + self.errors.iter().filter(|(k, _)| !k.starts_with("status")).map(|(_, v)| v).sum::<u64>(),
            "responses": total,
            "ok": total - self.errors.iter().filter(|(k, _)| k.starts_with("status")).map(|(_, v)| v).sum::<u64>(),
            "errors": self.errors,
            "duration_s": secs,
            "rps": if secs > 0.0 { total as f64 / secs } else { 0.0 },
            "classes": classes,
            "chi_square": self.chi_square.map(|c| json!({"statistic": c.statistic, "dof": c.degrees_of_freedom, "p_value": c.p_value})),
            "alpha": self.alpha,
            "rejected": self.rejected,
            "latency_ms": {"p50": self.latency_ms[0], "p90": self.latency_ms[1], "p99": self.latency_ms[2], "p999": self.latency_ms[3]},
        })
    }
}

/// `v1=90,v2=10` -> [("v1", 90.0), ("v2", 10.0)].
pub fn parse_expect(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .with_context(|| format!("--expect: {part:?} is not NAME=WEIGHT"))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .with_context(|| format!("--expect: weight of {name:?} is not a number"))?;
        if !(weight >= 0.0 && weight.is_finite()) {
            bail!("--expect: weight of {name:?} must be a non-negative number");
        }
        out.push((name.trim().to_string(), weight));
    }
    if out.is_empty() || out.iter().all(|(_, w)| *w == 0.0) {
        bail!("--expect needs at least one positive weight, e.g. v1=90,v2=10");
    }
    Ok(out)
}

/// Where and how to connect, worked out once.
struct Target {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    h2: bool,
    authority: String,
    uri_h2: Uri,
    path: String,
    header: http::HeaderName,
    timeout: Duration,
}

/// Per-connection tallies, merged at the end.
#[derive(Default)]
struct Tally {
    counts: HashMap<String, u64>,
    errors: HashMap<String, u64>,
    latencies_us: Vec<u32>,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

pub async fn run(args: &MeasureArgs, progress: bool) -> anyhow::Result<Report> {
    let expected = args.expect.as_deref().map(parse_expect).transpose()?;
    let target = Arc::new(target(args).await?);
    let connections = args.connections.max(1);
    let budget = if args.duration.is_some() {
        u64::MAX
    } else {
        args.requests
    };
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let deadline = args.duration.map(|d| begin + d);
    let pace = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections as f64 / r));

    let bar = progress.then(|| {
        let bar = match args.duration {
            Some(d) => indicatif::ProgressBar::new(d.as_secs().max(1)),
            None => indicatif::ProgressBar::new(budget),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let done = done.clone();
        let timed = args.duration.is_some();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if timed {
                    bar.set_position(begin.elapsed().as_secs());
                    bar.set_message(format!("{} responses", done.load(Ordering::Relaxed)));
                } else {
                    bar.set_position(done.load(Ordering::Relaxed));
                }
            }
        })
    });

    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (target, started, done) = (target.clone(), started.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            drive(&target, &started, &done, budget, deadline, pace).await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        let tally = t.await.unwrap_or_default();
        for (k, v) in tally.counts {
            *total.counts.entry(k).or_default() += v;
        }
        for (k, v) in tally.errors {
            *total.errors.entry(k).or_default() += v;
        }
        total.latencies_us.extend(tally.latencies_us);
    }
    let elapsed = begin.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    total.latencies_us.sort_unstable();
    let pct = |q: f64| -> f64 {
        let l = &total.latencies_us;
        if l.is_empty() {
            return 0.0;
        }
        let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
        l[i] as f64 / 1000.0
    };
    let counts: BTreeMap<String, u64> = total.counts.into_iter().collect();
    let (chi, rejected) = match &expected {
        Some(exp) => {
            let mut names: Vec<&str> = exp.iter().map(|(n, _)| n.as_str()).collect();
            let mut weights: Vec<f64> = exp.iter().map(|(_, w)| *w).collect();
            // classes nobody expected get weight 0: any traffic there rejects the split
            for name in counts.keys() {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                    weights.push(0.0);
                }
            }
            let observed: Vec<u64> = names
                .iter()
                .map(|n| counts.get(*n).copied().unwrap_or(0))
                .collect();
            let c = chi_square(&observed, &weights);
            let any = observed.iter().sum::<u64>() > 0;
            (any.then_some(c), any && c.p_value < args.alpha)
        }
        None => (None, false),
    };
    Ok(Report {
        url: args.url.clone(),
        counts,
        errors: total.errors.into_iter().collect(),
        elapsed,
        latency_ms: [pct(0.5), pct(0.9), pct(0.99), pct(0.999)],
        expected,
        chi_square: chi,
        alpha: args.alpha,
        rejected,
    })
}

async fn target(args: &MeasureArgs) -> anyhow::Result<Target> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url: not a URL: {:?}", args.url))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("--url must start with http:// or https://"),
    };
    let host = uri
        .host()
        .context("--url has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let authority = args
        .host
        .clone()
        .unwrap_or_else(|| uri.authority().map(|a| a.to_string()).unwrap_or_default());
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let uri_h2: Uri = format!(
        "{}://{authority}{path}",
        if https { "https" } else { "http" }
    )
    .parse()
    .with_context(|| format!("--host {authority:?} does not make a valid URL"))?;
    let tls = if https {
        let sni = args.sni.clone().unwrap_or(host);
        let name = ServerName::try_from(sni.clone())
            .with_context(|| format!("invalid TLS server name {sni:?}"))?;
        Some((
            tokio_rustls::TlsConnector::from(Arc::new(client_config(args)?)),
            name,
        ))
    } else {
        None
    };
    let header = http::HeaderName::from_bytes(args.header.to_ascii_lowercase().as_bytes())
        .context("--header: not a header name")?;
    Ok(Target {
        addr,
        tls,
        h2: args.h2,
        authority,
        uri_h2,
        path,
        header,
        timeout: args.timeout,
    })
}

fn client_config(args: &MeasureArgs) -> anyhow::Result<ClientConfig> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        let ca = args.cacert.as_ref().context(
            "https needs --cacert FILE (the CA of the proxy's certificate) or --insecure",
        )?;
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if args.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// `--insecure`: accept any server certificate, but still check the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn connect(t: &Target) -> Result<Sender, &'static str> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|_| "tls")?;
            handshake(t.h2, TokioIo::new(tls)).await
        }
        None => handshake(t.h2, TokioIo::new(tcp)).await,
    }
}

async fn handshake<I>(h2: bool, io: I) -> Result<Sender, &'static str>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| "http")?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|_| "http")?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// One connection's loop: take a request from the budget, send it, classify the answer.
async fn drive(
    t: &Target,
    started: &AtomicU64,
    done: &AtomicU64,
    budget: u64,
    deadline: Option<Instant>,
    pace: Option<Duration>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    let mut ticks = pace.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d)
            || started.fetch_add(1, Ordering::Relaxed) >= budget
        {
            return tally;
        }
        if let Some(i) = ticks.as_mut() {
            i.tick().await;
        }
        let begin = Instant::now();
        let outcome = tokio::time::timeout(t.timeout, one_request(t, &mut sender)).await;
        match outcome {
            Ok(Ok((status, class))) => {
                tally
                    .latencies_us
                    .push(begin.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if !status.is_success() {
                    *tally
                        .errors
                        .entry(format!("status {}", status.as_u16()))
                        .or_default() += 1;
                }
                *tally.counts.entry(class).or_default() += 1;
            }
            Ok(Err(kind)) => {
                sender = None;
                *tally.errors.entry(kind.to_string()).or_default() += 1;
            }
            Err(_) => {
                sender = None;
                *tally.errors.entry("timeout".into()).or_default() += 1;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn one_request(
    t: &Target,
    sender: &mut Option<Sender>,
) -> Result<(http::StatusCode, String), &'static str> {
    // a connection the server closed is replaced before the request, not counted as a failure
    let usable = match sender {
        Some(Sender::H1(s)) => s.ready().await.is_ok(),
        Some(Sender::H2(s)) => s.ready().await.is_ok(),
        None => false,
    };
    if !usable {
        *sender = Some(connect(t).await?);
    }
    let resp = match sender {
        Some(Sender::H1(s)) => {
            let req = Request::get(t.path.as_str())
                .header(http::header::HOST, t.authority.as_str())
                .body(Empty::new());
            s.send_request(req.map_err(|_| "http")?)
                .await
                .map_err(|_| "http")?
        }
        Some(Sender::H2(s)) => {
            let req = Request::get(t.uri_h2.clone()).body(Empty::new());
            s.send_request(req.map_err(|_| "http")?)
                .await
                .map_err(|_| "http")?
        }
        None => return Err("connect"),
    };
    let status = resp.status();
    let class = resp
        .headers()
        .get(&t.header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| "(none)".into());
    // read the whole body so the connection can carry the next request
    resp.into_body().collect().await.map_err(|_| "http")?;
    Ok((status, class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse() {
        assert_eq!(
            parse_expect("v1=90, v2=10").unwrap(),
            [("v1".to_string(), 90.0), ("v2".to_string(), 10.0)]
        );
        assert!(parse_expect("v1").is_err());
        assert!(parse_expect("v1=x").is_err());
        assert!(parse_expect("v1=0").is_err());
        assert!(parse_expect("v1=-1,v2=3").is_err());
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 2);
        r.counts.insert("v1".into(), 10);
        assert_eq!(r.exit_code(), 0);
        r.rejected = true;
        assert_eq!(r.exit_code(), 1);
    }
}
