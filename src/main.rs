//! Command line: `run`, `validate`, `certs init`. Logging setup, the Tokio runtime with
//! `--workers` threads, signals, and exit codes live here; everything else is the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use splitproxy::cmd::measure::MeasureArgs;
use splitproxy::{cmd::pki, config, load, Server, StartError};

#[derive(Parser)]
#[command(
    name = "splitproxy",
    version,
    about = "A small, exact traffic-splitting L7 proxy: mTLS, SMI TrafficSplit routing, hot reload"
)]
struct Cli {
    /// Log format on stderr: human (default on a terminal) or json.
    #[arg(long, global = true, env = "SPLITPROXY_LOG_FORMAT", value_parser = ["human", "json"])]
    log_format: Option<String>,
    /// Log filter, e.g. info, debug, splitproxy=debug (RUST_LOG syntax).
    /// (default: info; warn for `demo`, whose output is its table)
    #[arg(long, global = true, env = "SPLITPROXY_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: reload on file change and SIGHUP; drain and exit on SIGTERM/SIGINT.
    Run(RunArgs),
    /// Load and validate exactly as `run` would; print the routing table, or every error.
    Validate {
        /// A YAML file, or a folder of *.yaml/*.yml files.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Zero-config showcase: certificates, two backends, the proxy at 90/10 over mTLS,
    /// traffic, a live weight change, and the accuracy table.
    Demo,
    /// Drive load at a running proxy and compare the observed split with the expected one
    /// (exit 1 when `--expect` is rejected at `--alpha`).
    Measure(MeasureCli),
}

#[derive(Args)]
struct RunArgs {
    /// A YAML file, or a folder of *.yaml/*.yml files.
    #[arg(long, short)]
    config: PathBuf,
    /// Worker threads (default: the number of cores).
    #[arg(long, env = "SPLITPROXY_WORKERS")]
    workers: Option<usize>,
}

/// Command-line arguments of `splitproxy measure`. The defaults are MeasureArgs's, so the
/// command line and callers in code (the demo) cannot drift apart.
#[derive(Args)]
struct MeasureCli {
    /// The proxy URL, e.g. https://127.0.0.1:8443/ or http://127.0.0.1:8080/path
    #[arg(long)]
    url: String,
    /// Requests to send (ignored with --duration).
    #[arg(short = 'n', long, default_value_t = MeasureArgs::DEFAULT_REQUESTS)]
    requests: u64,
    /// Concurrent keep-alive connections.
    #[arg(short = 'c', long, default_value_t = MeasureArgs::DEFAULT_CONNECTIONS)]
    connections: usize,
    /// Send for this long instead of a number of requests (e.g. 30s).
    #[arg(long, value_parser = splitproxy::cmd::measure::parse_duration)]
    duration: Option<Duration>,
    /// Total requests per second (open loop, spread over the connections).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 (ALPN h2 over https, prior knowledge over http).
    #[arg(long)]
    h2: bool,
    /// Host header / :authority (default: from the URL); the proxy routes on it.
    #[arg(long)]
    host: Option<String>,
    /// TLS server name (default: the URL's host; an IP address is sent as an IP name).
    #[arg(long)]
    sni: Option<String>,
    /// CA (PEM) that signs the proxy's certificate.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Do not verify the proxy's certificate (handshake signatures are still checked).
    #[arg(long)]
    insecure: bool,
    /// Response header that names the backend.
    #[arg(long, default_value = MeasureArgs::DEFAULT_HEADER)]
    header: String,
    /// Expected weights, e.g. v1=90,v2=10 (relative; need not sum to 100).
    #[arg(long)]
    expect: Option<String>,
    /// Significance: --expect is rejected when the chi-square p-value is below this.
    #[arg(long, default_value_t = MeasureArgs::DEFAULT_ALPHA)]
    alpha: f64,
    /// Per-request timeout (connecting included).
    #[arg(long, value_parser = parse_shown_duration,
          default_value_t = ShownDuration(MeasureArgs::DEFAULT_TIMEOUT))]
    timeout: ShownDuration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

impl From<MeasureCli> for MeasureArgs {
    fn from(cli: MeasureCli) -> Self {
        MeasureArgs {
            url: cli.url,
            requests: cli.requests,
            connections: cli.connections,
            duration: cli.duration,
            rate: cli.rate,
            h2: cli.h2,
            host: cli.host,
            sni: cli.sni,
            cacert: cli.cacert,
            cert: cli.cert,
            key: cli.key,
            insecure: cli.insecure,
            header: cli.header,
            expect: cli.expect,
            alpha: cli.alpha,
            timeout: cli.timeout.0,
            json: cli.json,
        }
    }
}

/// A duration flag with a default: clap shows a default through `Display`, which
/// `Duration` lacks; humantime writes 10 s as `10s`, which parses back the same.
#[derive(Clone, Copy)]
struct ShownDuration(Duration);

impl std::fmt::Display for ShownDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

fn parse_shown_duration(s: &str) -> Result<ShownDuration, String> {
    splitproxy::cmd::measure::parse_duration(s).map(ShownDuration)
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA, a server certificate and client certificates (SPIFFE IDs).
    Init {
        /// Folder to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Server certificate names: DNS names or IP addresses (repeatable).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
        /// Client certificate NAME=SPIFFE-ID (repeatable); NAME alone gets
        /// spiffe://cluster.local/ns/default/sa/NAME. Default: one client named `client`.
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info,notify=warn"
    };
    init_logging(
        cli.log_format.as_deref(),
        cli.log.as_deref().unwrap_or(default_log),
    );
    match cli.command {
        Command::Run(args) => run(args),
        Command::Validate { config } => validate(config),
        Command::Certs(CertsCommand::Init {
            dir,
            sans,
            clients,
            force,
        }) => certs_init(&dir, &sans, &clients, force),
        Command::Demo => demo(),
        Command::Measure(args) => measure(args.into()),
    }
}

fn init_logging(format: Option<&str>, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // human-readable unless JSON is asked for (--log-format json / SPLITPROXY_LOG_FORMAT)
    let json = format == Some("json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A Tokio runtime: `Some(1)` is the current-thread scheduler, whose wake-ups between the
/// downstream and upstream connection tasks need no cross-thread machinery.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == Some(1) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

fn run(args: RunArgs) -> ExitCode {
    let workers = args
        .workers
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // the calling thread's runtime serves admin, reload and signals, and with one worker
    // the proxy listener too; more workers get threads of their own (Server::start_with)
    let rt = match runtime(Some(1)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::start_with(args.config, workers).await {
            Ok(s) => s,
            Err(StartError::Config(errors)) => {
                print_errors(&errors);
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = wait_for_signals(&server).await {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        server.wait().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGHUP reloads; SIGTERM or SIGINT starts the drain (a second one exits at once).
async fn wait_for_signals(server: &Server) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = server.reload().await; }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: /readyz now fails");
    server.shutdown();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for open requests");
        std::process::exit(0);
    });
    Ok(())
}

fn print_errors(errors: &[config::ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s); configuration rejected", errors.len());
}

fn validate(path: PathBuf) -> ExitCode {
    let rt = match runtime(Some(1)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // the pipeline `run` starts from: nothing is checked here that `run` would not check
    let metrics = splitproxy::metrics::Metrics::new();
    match rt.block_on(load::load(&path, 1, &metrics, None)) {
        Ok(loaded) => {
            println!("configuration OK: {}", path.display());
            print!("{}", loaded.table.describe());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

fn demo() -> ExitCode {
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(splitproxy::cmd::demo::run(std::io::stderr().is_terminal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit codes: 0 the split is as expected (or nothing was expected), 1 `--expect` rejected,
/// 2 nothing could be measured.
fn measure(args: MeasureArgs) -> ExitCode {
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let progress = !args.json && std::io::stderr().is_terminal();
    match rt.block_on(splitproxy::cmd::measure::run(&args, progress)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn certs_init(dir: &std::path::Path, sans: &[String], clients: &[String], force: bool) -> ExitCode {
    let clients: Vec<(String, String)> = if clients.is_empty() {
        vec![("client".into(), pki::default_spiffe("client"))]
    } else {
        clients
            .iter()
            .map(|c| match c.split_once('=') {
                Some((name, uri)) => (name.to_string(), uri.to_string()),
                None => (c.clone(), pki::default_spiffe(c)),
            })
            .collect()
    };
    match pki::init(dir, force, sans, &clients) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
