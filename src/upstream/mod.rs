//! Requests to backends. `Upstream` is one worker's client: it chooses, per backend's
//! `Transport`, between the worker's own plain HTTP/1.1 pool (`pool`) and the backend's
//! shared TLS-originating client (`tls`). A response body gives its connection back to the
//! pool when it ends.

pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use self::pool::Pool;
pub use self::tls::{Tls, TlsClient, TlsClientError, TlsClientKey};

/// How a backend is reached; settled when the routing table is built.
pub enum Transport {
    /// Plain HTTP/1.1 through the worker's pool.
    Plain,
    /// HTTPS (optionally mTLS) through a pooled client shared by the workers.
    Tls(Arc<Tls>),
}

/// Why an upstream request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out after {}", humantime::format_duration(*.0))]
    ConnectTimeout(Duration),
    #[error("HTTP/1.1 exchange failed")]
    Http(#[from] hyper::Error),
    #[error("HTTPS exchange failed")]
    Tls(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The upstream could not be reached (as opposed to failing mid-request).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) => true,
            UpstreamError::Http(_) => false,
            UpstreamError::Tls(e) => e.is_connect(),
        }
    }
}

/// One worker's upstream client.
pub struct Upstream {
    pool: Rc<Pool>,
}

impl Upstream {
    pub fn new(pool: Rc<Pool>) -> Self {
        Upstream { pool }
    }

    /// Send `req` (origin-form URI, `Host` set) to `addr` the way `transport` says.
    pub async fn send(
        &self,
        transport: &Transport,
        addr: SocketAddr,
        connect_timeout: Duration,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match transport {
            Transport::Plain => self.send_plain(addr, connect_timeout, req).await,
            Transport::Tls(tls) => {
                let resp = tls.client.request(absolute(req, addr)).await?;
                Ok(resp.map(|inner| UpstreamBody { inner, back: None }))
            }
        }
    }

    /// On an idle pooled connection, or a new one. A request that a reused connection
    /// closed before it was written goes out again on a new connection, as hyper-util's
    /// client does.
    async fn send_plain(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        while let Some(mut sender) = self.pool.take(addr) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender, addr)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(addr, connect_timeout).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.pooled(resp, sender, addr))
    }

    fn pooled(
        &self,
        resp: Response<Incoming>,
        sender: SendRequest<Incoming>,
        addr: SocketAddr,
    ) -> Response<UpstreamBody> {
        // a 101 hands the connection to the tunnel; it never comes back
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (self.pool.clone(), addr, sender));
        resp.map(|inner| UpstreamBody { inner, back })
    }
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<Incoming>, UpstreamError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(timeout)),
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await?;
    // on the runtime's scheduler, not the LocalSet: the LocalSet variant measured worse on
    // plain HTTP/1.1 (README, Performance, "Structure round")
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// hyper-util's client wants an absolute URI: `https://addr/path?query`.
fn absolute(mut req: Request<Incoming>, addr: SocketAddr) -> Request<Incoming> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    // formatting an address cannot produce an invalid authority; the fallback is never used
    parts.authority = Authority::try_from(addr.to_string()).ok();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    req
}

/// A backend's response body. When it ends, the connection it came on goes back to the
/// pool; dropped before its end, the connection closes (HTTP/1.1 cannot skip the rest).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Rc<Pool>, SocketAddr, SendRequest<Incoming>)>,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.back.take() {
            pool.put(addr, sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
