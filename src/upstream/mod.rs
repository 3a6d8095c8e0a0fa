//! Requests to backends. `Upstream` is one worker's client: its own pool of HTTP/1.1
//! connections (`pool`), plain and TLS-originating (`tls`) alike, keyed so the two never
//! mix. A response body gives its connection back to the pool when it ends.
//!
//! A send that never wrote its request (the connection could not be opened, or a pooled
//! one was found closed first) hands the request back in `SendError::unsent`: the caller
//! may try it elsewhere. A request the send consumed may have reached the backend.

pub mod body;
pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use self::body::{BodyError, RequestBody};
pub use self::pool::{Pool, PoolKey};
pub use self::tls::{Tls, TlsClientError, TlsClientKey};

/// How a backend is reached; settled when the routing table is built.
pub enum Transport {
    /// Plain HTTP/1.1.
    Plain,
    /// HTTPS (optionally mTLS).
    Tls(Arc<Tls>),
}

impl Transport {
    /// The pool key part of this transport: 0 for plain, the TLS client's id otherwise.
    #[inline]
    pub fn id(&self) -> u64 {
        match self {
            Transport::Plain => 0,
            Transport::Tls(tls) => tls.id,
        }
    }
}

/// Why an upstream request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out after {}", humantime::format_duration(*.0))]
    ConnectTimeout(Duration),
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    #[error("HTTP/1.1 exchange failed")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// The upstream could not be reached (as opposed to failing mid-request).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::Handshake(_) => true,
            UpstreamError::Http(_) => false,
        }
    }

    /// The client's request body failed (it is the cause of the exchange's failure, not
    /// the backend).
    pub fn body_error(&self) -> Option<&BodyError> {
        let UpstreamError::Http(e) = self else {
            return None;
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(b) = s.downcast_ref::<BodyError>() {
                return Some(b);
            }
            source = s.source();
        }
        None
    }
}

/// A send that got no response head, with the request when it was never written.
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

/// One worker's upstream client.
pub struct Upstream {
    pool: Rc<Pool>,
}

impl Upstream {
    pub fn new(pool: Rc<Pool>) -> Self {
        Upstream { pool }
    }

    /// Send `req` (origin-form URI, `Host` set) to `addr` the way `transport` says: on an
    /// idle pooled connection, or a new one. A request that a reused connection closed
    /// before it was written goes out again on the next one, or a new one, as hyper-util's
    /// client does.
    pub async fn send(
        &self,
        transport: &Transport,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let key = PoolKey {
            addr,
            transport: transport.id(),
        };
        while let Some(mut sender) = self.pool.take(key) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender, key)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(SendError {
                            error: e.into_error().into(),
                            unsent: None,
                        })
                    }
                },
            }
        }
        let mut sender = match connect(transport, addr, connect_timeout).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                })
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, sender, key)),
            Err(mut e) => Err(SendError {
                unsent: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    fn pooled(
        &self,
        resp: Response<Incoming>,
        sender: SendRequest<RequestBody>,
        key: PoolKey,
    ) -> Response<UpstreamBody> {
        // a 101 hands the connection to the tunnel; it never comes back
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (self.pool.clone(), key, sender));
        resp.map(|inner| UpstreamBody { inner, back })
    }
}

/// A new connection: TCP, the TLS handshake when the transport says so, HTTP/1.1; all of
/// it within `timeout`.
async fn connect(
    transport: &Transport,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, UpstreamError> {
    let connecting = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match transport {
            Transport::Plain => handshake(TokioIo::new(tcp)).await,
            Transport::Tls(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(UpstreamError::Handshake)?;
                handshake(TokioIo::new(stream)).await
            }
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(connected) => connected,
        Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<RequestBody>, UpstreamError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
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

/// A backend's response body. When it ends, the connection it came on goes back to the
/// pool; dropped before its end, the connection closes (HTTP/1.1 cannot skip the rest).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Rc<Pool>, PoolKey, SendRequest<RequestBody>)>,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some((pool, key, sender)) = self.back.take() {
            pool.put(key, sender);
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
