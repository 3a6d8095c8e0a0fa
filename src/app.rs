//! Wiring: run the load pipeline once, bind the listeners, start the workers, admin and the
//! reload task, and run the shutdown sequence (DESIGN.md section 3).
//!
//! Every proxy listener is served by a worker: a thread of its own with a current-thread
//! Tokio runtime, a `LocalSet` and its own upstream pool, so a connection's requests never
//! leave its thread. With more than one worker each has its own `SO_REUSEPORT` listener on
//! the proxy address and the kernel spreads connections. Admin, reload and shutdown stay
//! on the calling runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::accesslog::Sink;
use crate::config::{file_error, ConfigError};
use crate::live::{Live, Worker};
use crate::metrics::Metrics;
use crate::reload::{self, ConfigWatch, Reloader};
use crate::upstream::{Pool, Upstream};
use crate::{admin, load, server};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(Vec<ConfigError>),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the access log writer: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot start worker {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
}

/// A running proxy: its bound addresses and handles to reload and stop it.
pub struct Server {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    live: Arc<Live>,
    status: Arc<reload::Status>,
    reloads: mpsc::Sender<reload::Request>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
    access_log: Sink,
}

impl Server {
    /// Load the configuration at `path`, bind, and start serving with one worker.
    /// Configuration errors are returned, not logged.
    pub async fn start(path: PathBuf) -> Result<Server, StartError> {
        Self::start_with(path, 1).await
    }

    /// As `start`, with `workers` workers (at least one).
    pub async fn start_with(path: PathBuf, workers: usize) -> Result<Server, StartError> {
        let metrics = Metrics::new();
        let loaded = load::load(&path, 1, &metrics, None)
            .await
            .map_err(StartError::Config)?;
        let config = loaded.config.clone();
        let proxy = &config.proxy;
        let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
        let workers = workers.max(1);
        let first = reuseport_listener(proxy.listen, workers > 1)
            .map_err(bind_err("proxy", proxy.listen))?;
        let proxy_addr = first
            .local_addr()
            .map_err(bind_err("proxy", proxy.listen))?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            // the others on the port the first one got (it may have asked for port 0)
            listeners
                .push(reuseport_listener(proxy_addr, true).map_err(bind_err("proxy", proxy_addr))?);
        }
        let admin_listener = TcpListener::bind(proxy.admin)
            .await
            .map_err(bind_err("admin", proxy.admin))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(bind_err("admin", proxy.admin))?;

        metrics.reload(true);
        metrics.config_version.set(1);
        metrics.last_reload_seconds.set(crate::unix_now());
        // always started (it idles without entries): a reload may turn the log on
        let access_log =
            Sink::stdout(metrics.access_log_dropped.clone()).map_err(StartError::AccessLog)?;
        let live = Arc::new(Live::new(loaded.table, loaded.acceptor, metrics));
        tracing::info!(
            "serving {} split(s) on {proxy_addr} ({}), admin on {admin_addr}",
            config.splits.len(),
            if proxy.tls.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            }
        );

        if !config.httproutes.is_empty() {
            // a line of its own: scripts read the one above as it has always been
            tracing::info!("serving {} HTTPRoute(s)", config.httproutes.len());
        }
        let reloader = Reloader::new(path.clone(), live.clone(), config.fingerprint);
        let status = reloader.status();
        let draining = Arc::new(AtomicBool::new(false));
        let admin = admin::State {
            live: live.clone(),
            reloads: status.clone(),
            draining: draining.clone(),
            config_path: path,
        };
        tokio::spawn(admin::serve(admin_listener, Arc::new(admin)));
        let (reloads, requests) = mpsc::channel(4);
        tokio::spawn(ConfigWatch::new(reloader).run(requests));

        let (stop_accepting, accepting) = watch::channel(false);
        let mut serving = Vec::with_capacity(listeners.len());
        let cap = server::ConnectionCap::new(proxy.limits.connections);
        for (index, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let (live, accepting, cap) = (live.clone(), accepting.clone(), cap.clone());
            let access_log = access_log.clone();
            std::thread::Builder::new()
                .name(format!("splitproxy-worker-{index}"))
                .spawn(move || run_worker(listener, live, access_log, accepting, cap, tx))
                .map_err(|source| StartError::Worker { index, source })?;
            serving.push(rx);
        }
        let (stop, mut stop_rx) = watch::channel(false);
        let shutdown_live = live.clone();
        let done = tokio::spawn(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            // /readyz fails at once; the listener keeps accepting for `shutdown.delay`
            draining.store(true, Ordering::SeqCst);
            let delay = shutdown_live.routes.load().config.proxy.shutdown.delay;
            if !delay.is_zero() {
                tracing::info!(
                    "draining: still accepting for {}",
                    humantime::format_duration(delay)
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop_accepting.send(true);
            for worker in serving {
                let _ = worker.await;
            }
        });
        Ok(Server {
            proxy_addr,
            admin_addr,
            live,
            status,
            reloads,
            stop,
            done,
            access_log,
        })
    }

    /// The version of the live configuration (1 = the first one loaded).
    pub fn version(&self) -> u64 {
        self.live.routes.load().version
    }

    /// The errors of the last rejected reload; empty after a good one.
    pub fn last_reload_errors(&self) -> Vec<String> {
        self.status.last_errors()
    }

    /// Read the configuration again now (as SIGHUP does) and say what happened.
    pub async fn reload(&self) -> reload::Result {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            vec![file_error(
                &self.live.routes.load().config.path,
                "the reload task has stopped".into(),
            )]
        };
        self.reloads.send(tx).await.map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Begin the shutdown sequence (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Wait until the shutdown sequence has finished and the access log is written out
    /// (a few seconds at most: stdout may be stuck).
    pub async fn wait(self) {
        let _ = self.done.await;
        self.access_log.flush(Duration::from_secs(2)).await;
    }
}

/// The proxy listen socket. `reuse_port`: several sockets share the address, one per
/// worker (SO_REUSEPORT).
fn reuseport_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker thread: a current-thread runtime and a `LocalSet` serving one listener
/// until shutdown, with the worker's own upstream pool and its sweep.
fn run_worker(
    listener: std::net::TcpListener,
    live: Arc<Live>,
    access_log: Sink,
    accepting: watch::Receiver<bool>,
    cap: server::ConnectionCap,
    done: oneshot::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!("worker listener: {e}"),
        };
        let pool = Pool::new(
            crate::upstream::pool::MAX_IDLE_PER_ENDPOINT,
            crate::upstream::pool::IDLE_TIMEOUT,
        );
        let sweep = tokio::task::spawn_local(Pool::sweep(Rc::downgrade(&pool)));
        let worker = Rc::new(Worker {
            live,
            upstream: Upstream::new(pool),
            access_log: Rc::new(access_log),
        });
        server::serve(listener, worker, accepting, cap).await;
        sweep.abort();
    });
    let _ = done.send(());
}
