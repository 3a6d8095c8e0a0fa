//! `splitproxy measure`: drive load at a running proxy and judge the split it honours.
//!
//! C connections (HTTP/1.1 keep-alive, or HTTP/2 with ALPN or prior knowledge), each a task
//! sending one request at a time until N requests have started or the duration is over,
//! optionally paced to a total rate. Every response is classified by a response header
//! (the proxy's `x-splitproxy-backend` by default); the counts are compared with
//! `--expect` by a chi-square goodness-of-fit test. Exit codes: 0 consistent (or nothing
//! expected), 1 rejected at `--alpha`, 2 nothing measured (no 2xx response) or an error.
//!
//! Nothing the network sends can make this module panic: every failure becomes a counted
//! error kind, and the connection it happened on is replaced.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::net::TcpStream;

use crate::cmd::stats::{chi_square, ChiSquare};

/// The class of a response that lacks the classifying header.
pub const NO_CLASS: &str = "(none)";

/// Pacing bounds: tokio's interval rejects a zero period and overflows on a huge one.
const MIN_PACE: Duration = Duration::from_micros(1);
const MAX_PACE: Duration = Duration::from_secs(24 * 3600);

/// Longest pause between reconnection attempts to a failing target in `--duration` mode.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Command-line arguments of `splitproxy measure`.
#[derive(clap::Args, Debug, Clone)]
pub struct MeasureArgs {
    /// The proxy URL, e.g. https://127.0.0.1:8443/ or http://127.0.0.1:8080/path
    #[arg(long)]
    pub url: String,
    /// Requests to send (ignored with --duration).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub requests: u64,
    /// Concurrent keep-alive connections.
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
    /// TLS server name (default: the URL's host; an IP address is sent as an IP name).
    #[arg(long)]
    pub sni: Option<String>,
    /// CA (PEM) that signs the proxy's certificate.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not verify the proxy's certificate (handshake signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Response header that names the backend.
    #[arg(long, default_value = "x-splitproxy-backend")]
    pub header: String,
    /// Expected weights, e.g. v1=90,v2=10 (relative; need not sum to 100).
    #[arg(long)]
    pub expect: Option<String>,
    /// Significance: --expect is rejected when the chi-square p-value is below this.
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f64,
    /// Per-request timeout (connecting included).
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
    /// Requests attempted: every response plus every transport failure.
    pub requests: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses (any status) by class: the header's value, `(none)` without it.
    pub counts: BTreeMap<String, u64>,
    /// Failures by kind: `status 503` (also counted in `counts`), and the transport
    /// failures `connect`, `tls`, `alpn`, `timeout`, `io`, `http`.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latency of the responses: p50, p90, p99, p99.9 in milliseconds.
    pub latency_ms: [f64; 4],
    /// Expected relative weights by class, from `--expect`, in the order given.
    pub expected: Option<Vec<(String, f64)>>,
    /// The goodness-of-fit test, when something was expected and something answered.
    pub chi_square: Option<ChiSquare>,
    pub alpha: f64,
    /// `chi_square.p_value < alpha`; never true without `--expect`.
    pub rejected: bool,
}

impl Report {
    /// Responses received, whatever their status.
    pub fn responses(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Responses per second over the whole run.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.responses() as f64 / secs
        } else {
            0.0
        }
    }

    /// The process exit code for this report: 2 when no request succeeded (nothing was
    /// measured, so no verdict), else 1 when `--expect` was rejected, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.ok == 0 {
            2
        } else if self.rejected {
            1
        } else {
            0
        }
    }

    /// Classes in display order, expected ones first (in `--expect` order), then any
    /// others seen: (name, expected share in 0..=1, responses).
    fn classes(&self) -> Vec<(String, Option<f64>, u64)> {
        let mut out = Vec::new();
        if let Some(expected) = &self.expected {
            let total: f64 = expected.iter().map(|(_, w)| w).sum();
            for (name, w) in expected {
                let share = if total > 0.0 { w / total } else { 0.0 };
                out.push((
                    name.clone(),
                    Some(share),
                    self.counts.get(name).copied().unwrap_or(0),
                ));
            }
        }
        for (name, n) in &self.counts {
            if !out.iter().any(|(c, _, _)| c == name) {
                // seen but not expected: configured share 0 (when anything was expected)
                out.push((name.clone(), self.expected.as_ref().map(|_| 0.0), *n));
            }
        }
        out
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let total = self.responses();
        let mut out = format!(
            "{} responses ({} 2xx) to {} requests in {:.2} s ({:.0} req/s) from {}\n\n",
            total,
            self.ok,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.url
        );
        out.push_str(&format!(
            "{:<24} {:>11} {:>10} {:>11} {:>10}\n",
            "backend", "configured", "requests", "observed", "error"
        ));
        for (name, share, n) in self.classes() {
            let observed = percent(n, total);
            // signed, so the direction of a skew is visible; JSON carries the absolute value
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
        match &self.chi_square {
            Some(c) => out.push_str(&format!(
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
            )),
            None if self.expected.is_some() => {
                out.push_str("\nno responses, so no verdict on the expected weights\n")
            }
            None => out.push_str("\nnothing expected (--expect), so no verdict\n"),
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

    /// The machine-readable report (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let total = self.responses();
        let classes: Vec<_> = self
            .classes()
            .into_iter()
            .map(|(name, share, n)| {
                let observed = percent(n, total) / 100.0;
                json!({
                    "name": name,
                    "expected_share": share,
                    "observed": n,
                    "observed_share": observed,
                    "abs_error_pp": share.map(|s| (100.0 * (observed - s)).abs()),
                })
            })
            .collect();
        let [p50, p90, p99, p999] = self.latency_ms;
        json!({
            "url": self.url,
            "requests": self.requests,
            "responses": total,
            "ok": self.ok,
            "errors": self.errors,
            "duration_s": self.elapsed.as_secs_f64(),
            "rps": self.rps(),
            "classes": classes,
            "chi_square": self.chi_square.map(|c| json!({
                "statistic": finite_or_null(c.statistic),
                "dof": c.degrees_of_freedom,
                "p_value": c.p_value,
            })),
            "alpha": self.alpha,
            "rejected": self.rejected,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p999": p999},
        })
    }
}

/// `100 * n / total`, 0 for an empty total.
fn percent(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

/// JSON has no infinity (the statistic is infinite when a weight-0 class saw traffic);
/// serde_json would silently write `null` anyway, this makes it explicit.
fn finite_or_null(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `v1=90,v2=10` -> [("v1", 90.0), ("v2", 10.0)]. Names must be distinct and non-empty,
/// weights non-negative, at least one positive.
pub fn parse_expect(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .with_context(|| format!("--expect: {part:?} is not NAME=WEIGHT"))?;
        let name = name.trim();
        if name.is_empty() {
            bail!("--expect: {part:?} has no name");
        }
        let weight: f64 = weight
            .trim()
            .parse()
            .with_context(|| format!("--expect: weight of {name:?} is not a number"))?;
        if !(weight >= 0.0 && weight.is_finite()) {
            bail!("--expect: weight of {name:?} must be a non-negative number");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--expect: {name:?} is given twice");
        }
        out.push((name.to_string(), weight));
    }
    if out.iter().all(|(_, w)| *w == 0.0) {
        bail!("--expect needs at least one positive weight, e.g. v1=90,v2=10");
    }
    Ok(out)
}

/// Where and how to connect, worked out once and shared by the connection tasks.
struct Target {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    h2: bool,
    /// `Host` for HTTP/1.1.
    host: HeaderValue,
    /// Absolute URI for HTTP/2, which carries the authority as `:authority`.
    uri_h2: Uri,
    /// Origin-form request target for HTTP/1.1.
    path: Uri,
    header: HeaderName,
    timeout: Duration,
}

/// Per-connection tallies, merged at the end (no shared counters on the hot path).
#[derive(Default)]
struct Tally {
    ok: u64,
    counts: HashMap<String, u64>,
    errors: HashMap<String, u64>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// Run one measurement. `progress` draws a bar on stderr (the caller decides: a terminal,
/// and not `--json`). `Err` only for unusable arguments (bad URL, unreadable PEM, ...);
/// failures on the network are counted in the report.
pub async fn run(args: &MeasureArgs, progress: bool) -> anyhow::Result<Report> {
    let expected = args.expect.as_deref().map(parse_expect).transpose()?;
    if !(0.0..=1.0).contains(&args.alpha) {
        bail!("--alpha must be between 0 and 1, got {}", args.alpha);
    }
    let connections = args.connections.max(1);
    let pace = match args.rate {
        None => None,
        // each connection sends at rate/C; bounded so tokio's interval neither panics on a
        // zero period nor overflows on an enormous one
        Some(r) if r.is_finite() && r > 0.0 => Some(
            Duration::try_from_secs_f64(connections as f64 / r)
                .unwrap_or(MAX_PACE)
                .clamp(MIN_PACE, MAX_PACE),
        ),
        Some(r) => bail!("--rate must be a positive number of requests per second, got {r}"),
    };
    let target = Arc::new(target(args).await?);

    let budget = if args.duration.is_some() {
        u64::MAX
    } else {
        args.requests
    };
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    // a duration too long for `Instant` means "until interrupted", not a panic
    let deadline = args.duration.and_then(|d| begin.checked_add(d));

    let bar = progress.then(|| progress_bar(args, budget));
    let ticker = bar.clone().map(|bar| {
        let done = done.clone();
        let timed = args.duration.is_some();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = done.load(Ordering::Relaxed);
                if timed {
                    bar.set_position(begin.elapsed().as_secs());
                    bar.set_message(format!("{n} requests"));
                } else {
                    bar.set_position(n);
                }
            }
        })
    });

    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (target, started, done) = (target.clone(), started.clone(), done.clone());
        // stagger the paced connections over one period so the load is smooth, not bursts
        let offset = pace.map(|p| p.mul_f64(i as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            drive(&target, &started, &done, budget, deadline, pace, offset).await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => total.merge(tally),
            // cannot happen short of a bug; keep the other connections' results
            Err(_) => total.error("internal"),
        }
    }
    let elapsed = begin.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let latency_ms = percentiles(&mut total.latencies_us);
    let counts: BTreeMap<String, u64> = total.counts.into_iter().collect();
    let responses: u64 = counts.values().sum();
    let transport_errors: u64 = total
        .errors
        .iter()
        .filter(|(k, _)| !k.starts_with("status "))
        .map(|(_, v)| v)
        .sum();
    let chi = match &expected {
        Some(exp) if responses > 0 => Some(test_split(exp, &counts)),
        _ => None,
    };
    Ok(Report {
        url: args.url.clone(),
        requests: responses + transport_errors,
        ok: total.ok,
        counts,
        errors: total.errors.into_iter().collect(),
        elapsed,
        latency_ms,
        expected,
        chi_square: chi,
        alpha: args.alpha,
        rejected: chi.is_some_and(|c| c.p_value < args.alpha),
    })
}

/// Chi-square of the observed classes against the expected weights. Classes nobody
/// expected get weight 0, so any traffic to them gives p = 0.
fn test_split(expected: &[(String, f64)], counts: &BTreeMap<String, u64>) -> ChiSquare {
    let mut observed: Vec<u64> = expected
        .iter()
        .map(|(n, _)| counts.get(n).copied().unwrap_or(0))
        .collect();
    let mut weights: Vec<f64> = expected.iter().map(|(_, w)| *w).collect();
    for (name, n) in counts {
        if !expected.iter().any(|(e, _)| e == name) {
            observed.push(*n);
            weights.push(0.0);
        }
    }
    chi_square(&observed, &weights)
}

/// p50, p90, p99, p99.9 (nearest rank) in milliseconds; zeros when nothing answered.
fn percentiles(latencies_us: &mut [u32]) -> [f64; 4] {
    latencies_us.sort_unstable();
    [0.5, 0.9, 0.99, 0.999].map(|q: f64| {
        let n = latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        f64::from(latencies_us[rank - 1]) / 1000.0
    })
}

fn progress_bar(args: &MeasureArgs, budget: u64) -> indicatif::ProgressBar {
    let (bar, template) = match args.duration {
        Some(d) => (
            indicatif::ProgressBar::new(d.as_secs().max(1)),
            "{bar:40} {pos}/{len} s {msg}",
        ),
        None => (indicatif::ProgressBar::new(budget), "{bar:40} {pos}/{len}"),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
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
    let authority = uri.authority().context("--url has no host")?;
    // `[::1]` in a URL, `::1` for the resolver and for an IP server name
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    // the URL's authority without any user:password@
    let url_authority = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, a)| a);
    let host_header = args.host.as_deref().unwrap_or(url_authority);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    // parsing the absolute URI also validates --host for the Host header
    let uri_h2: Uri = format!(
        "{}://{host_header}{path}",
        if https { "https" } else { "http" }
    )
    .parse()
    .with_context(|| format!("--host {host_header:?} is not a valid host[:port]"))?;
    let host_value = HeaderValue::from_str(host_header)
        .with_context(|| format!("--host {host_header:?} is not a valid header value"))?;
    let path: Uri = path.parse().context("--url: bad path")?;
    let tls = if https {
        let sni = args.sni.clone().unwrap_or(host);
        // an IP address becomes an IP server name (no SNI extension is sent for it)
        let name = ServerName::try_from(sni.clone())
            .with_context(|| format!("invalid TLS server name {sni:?}"))?;
        let config = Arc::new(client_config(args)?);
        Some((tokio_rustls::TlsConnector::from(config), name))
    } else {
        None
    };
    let header = HeaderName::from_bytes(args.header.as_bytes())
        .with_context(|| format!("--header: {:?} is not a header name", args.header))?;
    Ok(Target {
        addr,
        tls,
        h2: args.h2,
        host: host_value,
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
        let ca = args.cacert.as_ref().context(
            "https needs --cacert FILE (the CA of the proxy's certificate) or --insecure",
        )?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)
                .with_context(|| format!("bad CA certificate in {}", ca.display()))?;
        }
        if roots.is_empty() {
            bail!("--cacert {}: no certificate in it", ca.display());
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read {}", cert.display()))?;
            if chain.is_empty() {
                bail!("--cert {}: no certificate in it", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a private key from {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--cert and --key do not make a usable client identity")?
        }
        (None, None) => builder.with_no_client_auth(),
        // clap enforces the pair on the command line; library callers get told too
        _ => bail!("--cert and --key go together"),
    };
    config.alpn_protocols = if args.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// `--insecure`: accept any server certificate, but still check the handshake signatures,
/// so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
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

/// A new connection: TCP, TLS when https, then the HTTP handshake.
async fn connect(t: &Target) -> Result<Sender, &'static str> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|_| "connect")?;
    // requests are small and one at a time: Nagle would only add latency
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|_| "tls")?;
            // without this, a server that ignores ALPN h2 would fail later as garbage
            if t.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err("alpn");
            }
            handshake(t.h2, TokioIo::new(tls)).await
        }
        None => handshake(t.h2, TokioIo::new(tcp)).await,
    }
}

async fn handshake<I>(h2: bool, io: I) -> Result<Sender, &'static str>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // the connection futures end by themselves when the sender is dropped or the peer
    // closes; their errors surface on the sender, so they need no handling here
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| error_kind(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| error_kind(&e))?;
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
    offset: Option<Duration>,
) -> Tally {
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    let mut ticks = pace.map(|p| {
        let first = tokio::time::Instant::now() + offset.unwrap_or_default();
        let mut i = tokio::time::interval_at(first, p);
        // open loop: a late tick is made up for, not skipped
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut failures = 0u32;
    loop {
        if past_deadline() || started.fetch_add(1, Ordering::Relaxed) >= budget {
            return tally;
        }
        if let Some(i) = ticks.as_mut() {
            i.tick().await;
            if past_deadline() {
                return tally;
            }
        }
        let begin = Instant::now();
        let outcome = tokio::time::timeout(t.timeout, one_request(t, &mut sender)).await;
        match outcome {
            Ok(Ok((status, class))) => {
                failures = 0;
                let us = begin.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                if status.is_success() {
                    tally.ok += 1;
                } else {
                    tally.error(format!("status {}", status.as_u16()));
                }
                *tally.counts.entry(class).or_default() += 1;
            }
            Ok(Err(kind)) => {
                sender = None;
                tally.error(kind);
                // with --duration nothing else bounds the loop: without a pause a dead
                // target would be hammered for the whole run (with -n, failing fast is
                // what a CI job wants)
                if let Some(d) = deadline {
                    if matches!(kind, "connect" | "tls" | "alpn") {
                        failures = failures.saturating_add(1);
                        let pause = Duration::from_millis(1 << failures.min(7)).min(MAX_BACKOFF);
                        tokio::time::sleep(pause.min(d.saturating_duration_since(Instant::now())))
                            .await;
                    }
                }
            }
            Err(_) => {
                sender = None;
                tally.error("timeout");
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request on the connection (made or remade first if needed): status and class.
async fn one_request(
    t: &Target,
    sender: &mut Option<Sender>,
) -> Result<(http::StatusCode, String), &'static str> {
    // a connection the server closed (keep-alive timeout, GOAWAY) is replaced before the
    // request, not counted as a failure
    let usable = match sender {
        Some(Sender::H1(s)) => s.ready().await.is_ok(),
        Some(Sender::H2(s)) => s.ready().await.is_ok(),
        None => false,
    };
    let s = match sender {
        Some(s) if usable => s,
        _ => sender.insert(connect(t).await?),
    };
    let resp = match s {
        Sender::H1(s) => {
            let mut req = Request::new(Empty::new());
            *req.uri_mut() = t.path.clone();
            req.headers_mut().insert(http::header::HOST, t.host.clone());
            s.send_request(req).await
        }
        Sender::H2(s) => {
            let mut req = Request::new(Empty::new());
            *req.uri_mut() = t.uri_h2.clone();
            s.send_request(req).await
        }
    }
    .map_err(|e| error_kind(&e))?;
    let status = resp.status();
    let class = match resp.headers().get(&t.header) {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => NO_CLASS.to_string(),
    };
    // read the body to its end, so the connection can carry the next request, without
    // keeping it: a huge body must not become a huge allocation
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| error_kind(&e))?;
    }
    Ok((status, class))
}

/// The error kind of a failed exchange: `timeout`, `io` (the connection broke), or
/// `http` (the peer spoke the protocol wrongly).
fn error_kind(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        return "timeout";
    }
    if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        return "io";
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return "io";
        }
        source = s.source();
    }
    "http"
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
        assert!(parse_expect("v1=NaN").is_err());
        assert!(parse_expect("=3").is_err());
        assert!(parse_expect("v1=1,v1=2").is_err());
        assert!(parse_expect("").is_err());
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 2);
        // responses, but none successful: still nothing measured
        r.counts.insert(NO_CLASS.into(), 10);
        assert_eq!(r.exit_code(), 2);
        r.ok = 10;
        assert_eq!(r.exit_code(), 0);
        r.rejected = true;
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn unexpected_classes_get_weight_zero() {
        let exp = parse_expect("a=1,b=1").unwrap();
        let counts: BTreeMap<String, u64> = [("a".into(), 50), ("b".into(), 50)].into();
        assert_eq!(test_split(&exp, &counts).p_value, 1.0);
        let mut counts = counts;
        counts.insert("c".into(), 1);
        assert_eq!(test_split(&exp, &counts).p_value, 0.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentiles(&mut []), [0.0; 4]);
        let mut l: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        assert_eq!(percentiles(&mut l), [500.0, 900.0, 990.0, 999.0]);
    }

    #[test]
    fn table_and_json_show_every_class() {
        let r = Report {
            url: "http://x/".into(),
            requests: 101,
            ok: 99,
            counts: [("v1".into(), 90), ("v2".into(), 9), (NO_CLASS.into(), 1)].into(),
            errors: [("status 503".into(), 1), ("connect".into(), 1)].into(),
            elapsed: Duration::from_secs(1),
            expected: Some(parse_expect("v1=90,v2=10").unwrap()),
            chi_square: Some(ChiSquare {
                statistic: f64::INFINITY,
                degrees_of_freedom: 1,
                p_value: 0.0,
            }),
            alpha: 0.001,
            rejected: true,
            ..Report::default()
        };
        let table = r.table();
        assert!(
            table.contains("REJECTED") && table.contains("(none)"),
            "{table}"
        );
        assert!(table.contains("connect: 1, status 503: 1"), "{table}");
        let j = r.to_json();
        assert_eq!(j["requests"], 101);
        assert_eq!(j["ok"], 99);
        assert_eq!(j["classes"][0]["name"], "v1");
        assert_eq!(j["classes"][0]["expected_share"], 0.9);
        assert_eq!(j["classes"][2]["name"], NO_CLASS);
        assert_eq!(j["classes"][2]["expected_share"], 0.0);
        assert!(j["chi_square"]["statistic"].is_null());
        assert_eq!(j["errors"]["status 503"], 1);
        assert_eq!(j["rejected"], true);
    }
}
