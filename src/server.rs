//! The proxy listener: accept, TLS handshake (when configured), then hyper-util's auto
//! server (HTTP/1.1 and HTTP/2, h2c prior knowledge on plain listeners) with every request
//! going to `proxy::handle`. Each connection is watched for graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Shared;
use crate::h1guard::H1Guard;
use crate::proxy::{self, ConnInfo};
use crate::tls;

/// Pause after an accept error (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept until `stop` turns true, then let open connections finish within
/// `shutdown.grace`: keep-alive connections are told to close (HTTP/1.1
/// `connection: close`, HTTP/2 GOAWAY).
pub async fn serve(
    listener: TcpListener,
    shared: &'static Shared,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // on this worker's thread: the upstream pool is per thread
    let sweeper = tokio::spawn(crate::upstream::sweep_idle());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let _open = ConnectionCount::new(&shared.metrics.active_connections);
                        let tls = shared.tls.load_full();
                        match tls {
                            Some(acceptor) => {
                                let timeout = shared.routes.load().timeouts.client_header;
                                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                    Ok(Ok(a)) => {
                                        let conn = Arc::new(ConnInfo::new(peer, true, a.identity, a.xfcc));
                                        serve_http(a.stream, a.h2, conn, shared, watcher).await;
                                    }
                                    Ok(Err(e)) => {
                                        let reason = tls::failure_reason(&e);
                                        shared.metrics.handshake_failed(reason);
                                        tracing::debug!(%peer, reason, "TLS handshake failed: {e}");
                                    }
                                    Err(_) => {
                                        shared.metrics.handshake_failed("timeout");
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                    }
                                }
                            }
                            None => serve_http(tcp, false, Arc::new(ConnInfo::new(peer, false, None, None)), shared, watcher).await,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // a change, or the sender gone: either way, stop
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    sweeper.abort();
    let grace = shared.routes.load().config.proxy.shutdown.grace;
    let open = graceful.count();
    tracing::info!(
        "stopped accepting; {open} connection(s) get up to {} to finish",
        humantime::format_duration(grace)
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace of {} expired; closing the remaining connections", humantime::format_duration(grace)),
    }
}

/// Serve HTTP on an accepted (and possibly TLS) stream; `h2` when ALPN chose HTTP/2.
/// Counts a downstream connection in `active_connections` for as long as it lives.
struct ConnectionCount<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> ConnectionCount<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        ConnectionCount(gauge)
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_http<I>(
    io: I,
    h2: bool,
    conn: Arc<ConnInfo>,
    shared: &'static Shared,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeouts = shared.routes.load().timeouts;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's clock also runs on idle keep-alive connections: H1Guard does both instead
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeouts.idle))
        .keep_alive_timeout(Duration::from_secs(20));
    let peer = conn.peer;
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(proxy::handle(shared, conn, req).await) }
    });
    let io = H1Guard::new(io, timeouts.client_header, timeouts.idle, h2);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, "connection ended: {}", proxy::error_chain(&*e));
    }
}
