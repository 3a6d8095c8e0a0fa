//! Wiring: load the first configuration, bind the listeners, start the proxy, admin and
//! reload tasks, and run the shutdown sequence (DESIGN.md section 3).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::upstream::Upstream;
use crate::{admin, reload, server, tls};

/// State shared by every task for the life of the process. Leaked once at start
/// (`&'static`) so that requests borrow it without touching a reference count.
pub struct Shared {
    pub config_path: PathBuf,
    /// The live routing table: the one `ArcSwap` on the request path.
    pub routes: ArcSwap<RoutingTable>,
    /// The TLS acceptor for new connections; `None` serves plain HTTP.
    pub tls: ArcSwapOption<tls::Acceptor>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// Fingerprint of the last configuration read, valid or not: unchanged files are not
    /// loaded twice.
    pub last_fingerprint: AtomicU64,
    /// The errors of the last failed reload (cleared by a good one), for `/routes`.
    pub last_errors: ArcSwapOption<Vec<String>>,
    /// Set on SIGTERM: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// Asks the reload task to read the configuration now (SIGHUP).
    pub reload_now: Notify,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(Vec<ConfigError>),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy: its bound addresses and a handle to stop it.
pub struct Server {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: &'static Shared,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Load the configuration at `path`, bind, and start serving on the calling runtime.
    /// Configuration errors are returned, not logged.
    pub async fn start(path: PathBuf) -> Result<Server, StartError> {
        Self::start_with(path, 1).await
    }

    /// As `start`, with `workers` accept loops. More than one: each worker is a thread with
    /// its own current-thread Tokio runtime and its own `SO_REUSEPORT` listener on the
    /// proxy address, so the kernel spreads connections and a connection's requests never
    /// leave its thread. Admin, reload and shutdown stay on the calling runtime.
    pub async fn start_with(path: PathBuf, workers: usize) -> Result<Server, StartError> {
        let cfg = reload::load_config(path.clone())
            .await
            .map_err(StartError::Config)?;
        let acceptor = match &cfg.proxy.tls {
            Some(t) => Some(Arc::new(
                tls::Acceptor::new(t).map_err(|e| StartError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let listen = cfg.proxy.listen;
        let bind_err = move |source| StartError::Bind {
            what: "proxy",
            addr: listen,
            source,
        };
        let mut listeners =
            vec![reuseport_listener(cfg.proxy.listen, workers > 1).map_err(bind_err)?];
        let bound = listeners[0].local_addr().map_err(bind_err)?;
        for _ in 1..workers {
            // the others on the port the first one got (it may have asked for port 0)
            listeners.push(reuseport_listener(bound, true).map_err(bind_err)?);
        }
        let admin_listener =
            TcpListener::bind(cfg.proxy.admin)
                .await
                .map_err(|source| StartError::Bind {
                    what: "admin",
                    addr: cfg.proxy.admin,
                    source,
                })?;
        let proxy_addr = bound;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "admin",
                addr: cfg.proxy.admin,
                source,
            })?;

        let metrics = Metrics::new();
        let fingerprint = cfg.fingerprint;
        let connect = cfg.proxy.timeouts.connect;
        let config = Arc::new(cfg);
        let upstream = Upstream::new(connect);
        let table = RoutingTable::build(config.clone(), 1, &metrics, &upstream)
            .await
            .map_err(StartError::Config)?;
        metrics.reload(true);
        metrics.config_version.set(1);
        metrics.last_reload_seconds.set(crate::unix_now());
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            config_path: path,
            routes: ArcSwap::from_pointee(table),
            tls: ArcSwapOption::new(acceptor),
            upstream,
            metrics,
            last_fingerprint: AtomicU64::new(fingerprint),
            last_errors: ArcSwapOption::empty(),
            draining: AtomicBool::new(false),
            reload_now: Notify::new(),
        }));
        tracing::info!(
            "serving {} split(s) on {proxy_addr} ({}), admin on {admin_addr}",
            config.splits.len(),
            if config.proxy.tls.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            }
        );

        let (stop, mut stop_rx) = watch::channel(false);
        let (stop_accepting, accepting_rx) = watch::channel(false);
        tokio::spawn(admin::serve(admin_listener, shared));
        tokio::spawn(reload::ConfigWatch::new(shared).run());
        let mut serving = Vec::with_capacity(listeners.len());
        if listeners.len() == 1 {
            let one = listeners.pop().expect("one listener, checked above");
            let listener = TcpListener::from_std(one).map_err(bind_err)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                server::serve(listener, shared, accepting_rx).await;
                let _ = tx.send(());
            });
            serving.push(rx);
        } else {
            for (i, listener) in listeners.into_iter().enumerate() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let accepting = accepting_rx.clone();
                std::thread::Builder::new()
                    .name(format!("splitproxy-worker-{i}"))
                    .spawn(move || run_worker(listener, shared, accepting, tx))
                    .map_err(bind_err)?;
                serving.push(rx);
            }
        }
        let done = tokio::spawn(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            // /readyz fails at once; the listener keeps accepting for `shutdown.delay`
            shared.draining.store(true, Ordering::SeqCst);
            let delay = shared.routes.load().config.proxy.shutdown.delay;
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
            shared,
            stop,
            done,
        })
    }

    /// Begin the shutdown sequence (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Read the configuration again now (as SIGHUP does).
    pub fn reload(&self) {
        self.shared.reload_now.notify_one();
    }

    /// Wait until the shutdown sequence has finished.
    pub async fn wait(self) {
        let _ = self.done.await;
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

/// One worker thread: a current-thread runtime serving one listener until shutdown.
fn run_worker(
    listener: std::net::TcpListener,
    shared: &'static Shared,
    accepting: watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<()>,
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
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => server::serve(listener, shared, accepting).await,
            Err(e) => tracing::error!("worker listener: {e}"),
        }
    });
    let _ = done.send(());
}
