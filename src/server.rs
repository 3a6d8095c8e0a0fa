//! The proxy listener of one worker: accept, then `serve_conn` per connection: the TLS
//! handshake (when configured), then hyper-util's auto server (HTTP/1.1 and HTTP/2, h2c
//! prior knowledge on plain listeners) with every request going to `proxy::handle`. Each
//! connection is watched for graceful shutdown.
//!
//! A worker is one thread: its connection tasks are spawned on its `LocalSet`, so what
//! they share (`Worker`, the connection's `ConnInfo`) is an `Rc`, never an atomic count.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Timeouts;
use crate::h1guard::H1Guard;
use crate::live::Worker;
use crate::proxy::{self, ConnInfo};
use crate::response::error_chain;
use crate::tls;

/// Pause after an accept error (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept until `stop` turns true, then let open connections finish within
/// `shutdown.grace`: keep-alive connections are told to close (HTTP/1.1
/// `connection: close`, HTTP/2 GOAWAY). Runs inside the worker's `LocalSet`.
pub async fn serve(listener: TcpListener, worker: Rc<Worker>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::task::spawn_local(serve_conn(tcp, peer, worker.clone(), graceful.watcher()));
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
    let grace = worker.live.routes.load().config.proxy.shutdown.grace;
    let open = graceful.count();
    let grace_text = humantime::format_duration(grace);
    tracing::info!("stopped accepting; {open} connection(s) get up to {grace_text} to finish");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace of {grace_text} expired; closing the remaining connections"),
    }
}

/// One downstream connection, from the accepted socket to its end.
async fn serve_conn(tcp: TcpStream, peer: SocketAddr, worker: Rc<Worker>, watcher: Watcher) {
    let live = worker.live.clone();
    let _open = ConnectionCount::new(&live.metrics.active_connections);
    let timeouts = live.routes.load().timeouts;
    let Some(acceptor) = live.tls.load_full() else {
        let conn = ConnInfo::new(peer, false, None, None);
        return serve_http(tcp, false, conn, timeouts, worker, watcher).await;
    };
    let accepted = match tokio::time::timeout(timeouts.client_header, acceptor.accept(tcp)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            live.metrics.handshake_failed(reason);
            tracing::debug!(%peer, reason, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            live.metrics.handshake_failed("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    drop(acceptor);
    let conn = ConnInfo::new(peer, true, accepted.identity, accepted.xfcc);
    serve_http(
        accepted.stream,
        accepted.h2,
        conn,
        timeouts,
        worker,
        watcher,
    )
    .await;
}

/// Serve HTTP on an accepted (and possibly TLS) stream; `h2` when ALPN chose HTTP/2.
async fn serve_http<I>(
    io: I,
    h2: bool,
    conn: ConnInfo,
    timeouts: Timeouts,
    worker: Rc<Worker>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(LocalExec);
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
    let conn = Rc::new(conn);
    let service = service_fn(move |req| {
        let (worker, conn) = (worker.clone(), conn.clone());
        async move { Ok::<_, Infallible>(proxy::handle(&worker, &conn, req).await) }
    });
    let io = H1Guard::new(io, timeouts.client_header, timeouts.idle, h2);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, "connection ended: {}", error_chain(&*e));
    }
}

/// hyper's executor for a worker: HTTP/2 stream tasks stay on the worker's thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Counts a downstream connection in `active_connections` for as long as it lives.
struct ConnectionCount<'a>(&'a Gauge);

impl<'a> ConnectionCount<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        ConnectionCount(gauge)
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
