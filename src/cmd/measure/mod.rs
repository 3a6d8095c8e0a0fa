//! `splitproxy measure`: drive load at a running proxy and judge the split it honours.
//!
//! C connections (HTTP/1.1 keep-alive, or HTTP/2 with ALPN or prior knowledge), each a task
//! sending one request at a time until N requests have started or the duration is over,
//! optionally paced to a total rate. Every response is classified by a response header
//! (the proxy's `x-splitproxy-backend` by default); the counts are compared with
//! `--expect` by a chi-square goodness-of-fit test. Exit codes: 0 consistent (or nothing
//! expected), 1 rejected at `--alpha`, 2 nothing measured (no 2xx response) or an error.
//!
//! Nothing the network sends can make this command panic: every failure becomes a counted
//! error kind, and the connection it happened on is replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;

mod client;
mod load;
mod report;

pub use report::{parse_expect, Report};

/// The class of a response that lacks the classifying header.
pub const NO_CLASS: &str = "(none)";

/// The arguments of `splitproxy measure`. The command line (in main.rs) fills them, taking
/// its defaults from the `DEFAULT_*` constants here, as [`MeasureArgs::new`] does for
/// callers in code (the demo).
#[derive(Debug, Clone)]
pub struct MeasureArgs {
    /// The proxy URL, e.g. https://127.0.0.1:8443/ or http://127.0.0.1:8080/path
    pub url: String,
    /// Requests to send (ignored with --duration).
    pub requests: u64,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Send for this long instead of a number of requests (e.g. 30s).
    pub duration: Option<Duration>,
    /// Total requests per second (open loop, spread over the connections).
    pub rate: Option<f64>,
    /// HTTP/2 (ALPN h2 over https, prior knowledge over http).
    pub h2: bool,
    /// Host header / :authority (default: from the URL); the proxy routes on it.
    pub host: Option<String>,
    /// TLS server name (default: the URL's host; an IP address is sent as an IP name).
    pub sni: Option<String>,
    /// CA (PEM) that signs the proxy's certificate.
    pub cacert: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// Do not verify the proxy's certificate (handshake signatures are still checked).
    pub insecure: bool,
    /// Response header that names the backend.
    pub header: String,
    /// Expected weights, e.g. v1=90,v2=10 (relative; need not sum to 100).
    pub expect: Option<String>,
    /// Significance: --expect is rejected when the chi-square p-value is below this.
    pub alpha: f64,
    /// Per-request timeout (connecting included).
    pub timeout: Duration,
    /// Print one JSON object instead of the table.
    pub json: bool,
}

/// A duration as the configuration writes it (500ms, 10s, 2m), for `--duration` and
/// `--timeout`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::values::parse_duration(s)
}

impl MeasureArgs {
    pub const DEFAULT_REQUESTS: u64 = 10_000;
    pub const DEFAULT_CONNECTIONS: usize = 16;
    pub const DEFAULT_HEADER: &'static str = "x-splitproxy-backend";
    pub const DEFAULT_ALPHA: f64 = 0.001;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults, the command line's too, for `url`.
    pub fn new(url: &str) -> Self {
        MeasureArgs {
            url: url.to_string(),
            requests: Self::DEFAULT_REQUESTS,
            connections: Self::DEFAULT_CONNECTIONS,
            duration: None,
            rate: None,
            h2: false,
            host: None,
            sni: None,
            cacert: None,
            cert: None,
            key: None,
            insecure: false,
            header: Self::DEFAULT_HEADER.into(),
            expect: None,
            alpha: Self::DEFAULT_ALPHA,
            timeout: Self::DEFAULT_TIMEOUT,
            json: false,
        }
    }
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
    let pace = load::pace(args.rate, connections)?;
    let target = Arc::new(client::target(args).await?);

    let budget = if args.duration.is_some() {
        u64::MAX
    } else {
        args.requests
    };
    let done = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let started = SystemTime::now();
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

    let mut total = load::run(target, begin, connections, budget, deadline, pace, done).await;
    let elapsed = begin.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let latency_ms = load::percentiles(&mut total.latencies_us);
    let counts: BTreeMap<String, u64> = total.counts.into_iter().collect();
    let responses: u64 = counts.values().sum();
    let transport_errors: u64 = total
        .errors
        .iter()
        .filter(|(k, _)| !k.starts_with("status "))
        .map(|(_, v)| v)
        .sum();
    let chi = match &expected {
        Some(exp) if responses > 0 => Some(report::test_split(exp, &counts)),
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
        started: Some(started),
        failures: total.failures,
        failures_dropped: total.failures_dropped,
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
