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
    /// Load the configuration at `path`, bind, and start serving. Configuration errors are
    /// returned, not logged.
    pub async fn start(path: PathBuf) -> Result<Server, StartError> {
        let cfg = reload::load_config(path.clone())
            .await
            .map_err(StartError::Config)?;
        let acceptor = match &cfg.proxy.tls {
            Some(t) => Some(Arc::new(
                tls::Acceptor::new(t).map_err(|e| StartError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(cfg.proxy.listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "proxy",
                addr: cfg.proxy.listen,
                source,
            })?;
        let admin_listener =
            TcpListener::bind(cfg.proxy.admin)
                .await
                .map_err(|source| StartError::Bind {
                    what: "admin",
                    addr: cfg.proxy.admin,
                    source,
                })?;
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "proxy",
            addr: cfg.proxy.listen,
            source,
        })?;
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
        let serving = tokio::spawn(server::serve(listener, shared, accepting_rx));
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
            let _ = serving.await;
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
