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
use std::time::{Duration, Instant};

use anyhow::bail;

mod client;
mod load;
mod report;

pub use report::{parse_expect, Report};

/// The class of a response that lacks the classifying header.
pub const NO_CLASS: &str = "(none)";

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

    let mut total = load::run(target, connections, budget, deadline, pace, done).await;
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
