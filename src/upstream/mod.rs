//! Requests to backends. `Upstream` is one worker's client: its own pool of HTTP/1.1
//! connections (`pool`), plain and TLS-originating (`tls`) alike, keyed so the two never
//! mix, each exchange driven by the request's own task (`h1`). A response body gives its
//! connection back to the pool when it ends. A service with `protocol: h2` gets one
//! multiplexed HTTP/2 connection per endpoint instead (hyper's client).
//!
//! A send that never wrote its request (the connection could not be opened) hands the
//! request back in `SendError::unsent`: the caller may try it elsewhere. A request the
//! send consumed may have reached the backend; over HTTP/1.1 the head of a bodiless one
//! comes back in `SendError::written`, for a retry of a safe method.

pub mod body;
pub mod h1;
pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use self::body::{BodyError, ClientBody, NoBody, RequestBody};
use self::pool::H2Take;
pub use self::pool::{Pool, PoolKey};
pub use self::tls::{Tls, TlsClientError, TlsClientKey};

type H2Sender = hyper::client::conn::http2::SendRequest<RequestBody>;

/// How a backend is reached; settled when the routing table is built, so the request
/// path branches on a field, never on the configuration.
pub struct Transport {
    /// HTTPS (optionally mTLS) when set; plain TCP otherwise.
    pub tls: Option<Arc<Tls>>,
    /// HTTP/2 (`protocol: h2`): prior knowledge on plain TCP, ALPN `h2` with TLS.
    pub h2: bool,
}

impl Transport {
    /// The pool key part of this transport: 0 for plain, the TLS client's id otherwise
    /// (HTTP/1.1 and HTTP/2 connections live in separate maps, and a TLS client offers
    /// one ALPN protocol, so the id never mixes the two).
    #[inline]
    pub fn id(&self) -> u64 {
        self.tls.as_ref().map_or(0, |tls| tls.id)
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
    #[error("the backend's TLS did not agree to HTTP/2 (ALPN h2)")]
    NoH2,
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    #[error("HTTP exchange failed")]
    H1(#[source] h1::H1Error),
}

impl UpstreamError {
    /// The upstream could not be reached (as opposed to failing mid-request).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::Handshake(_)
            | UpstreamError::NoH2 => true,
            UpstreamError::Http(_) | UpstreamError::H1(_) => false,
        }
    }

    /// The client's request body failed (it is the cause of the exchange's failure, not
    /// the backend).
    pub fn body_error(&self) -> Option<&BodyError> {
        let e = match self {
            UpstreamError::H1(h1::H1Error::Body(b)) => return Some(b),
            UpstreamError::Http(e) => e,
            _ => return None,
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
    /// The head of a request without a body that went out (HTTP/1.1 keeps it; the
    /// backend may have seen it): what a retry of a safe method needs, at no cost.
    pub written: Option<http::request::Parts>,
}

/// One worker's upstream client.
pub struct Upstream {
    pool: Rc<Pool>,
}

impl Upstream {
    pub fn new(pool: Rc<Pool>) -> Self {
        Upstream { pool }
    }

    /// Send `req` (origin-form URI, `Host` set) to `addr` the way `transport` says (over
    /// HTTP/2 with `te: trailers` when `te_trailers`, the client having asked): on an
    /// idle pooled connection, or a new one. A request that a reused connection closed
    /// before it was written goes out again on the next one, or a new one, as hyper-util's
    /// client does.
    pub async fn send(
        &self,
        transport: &Transport,
        addr: SocketAddr,
        connect_timeout: Duration,
        added: &Added<'_>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Box<SendError>> {
        let key = PoolKey {
            addr,
            transport: transport.id(),
        };
        if transport.h2 {
            added.insert(req.headers_mut());
            return self
                .send_h2(transport, key, connect_timeout, added, req)
                .await;
        }
        loop {
            let (conn, reused) = match self.pool.take(key) {
                Some(conn) => (conn, true),
                // boxed, as below: a connect is rare, and by value its future would size
                // every request's future for it (README, fifth pass)
                None => match Box::pin(connect(transport, addr, connect_timeout)).await {
                    Ok(conn) => (conn, false),
                    Err(error) => {
                        return Err(Box::new(SendError {
                            error,
                            unsent: Some(req),
                            written: None,
                        }))
                    }
                },
            };
            match h1::send(conn, req, reused, added).await {
                Ok(resp) => {
                    return Ok(resp.map(|mut body| {
                        body.give_back_to((self.pool.clone(), key));
                        UpstreamBody(Inner::H1(body))
                    }))
                }
                // the keep-alive race: once more, on the next idle connection or a new one
                Err(failure) => match *failure {
                    h1::Failure {
                        stale: Some(again), ..
                    } => req = again,
                    h1::Failure { error, written, .. } => {
                        return Err(Box::new(SendError {
                            error: UpstreamError::H1(error),
                            unsent: None,
                            written,
                        }))
                    }
                },
            }
        }
    }

    /// The HTTP/2 send: on the endpoint's one connection, opened by the first request
    /// that needs it while the others wait for it. A request that a closed connection
    /// never sent goes out once more on the next one; after that it comes back unsent.
    async fn send_h2(
        &self,
        transport: &Transport,
        key: PoolKey,
        timeout: Duration,
        added: &Added<'_>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Box<SendError>> {
        h2_form(
            &mut req,
            transport.tls.is_some(),
            key.addr,
            added.te_trailers,
        );
        let mut retried = false;
        loop {
            let mut sender = match self.pool.h2_take(key) {
                H2Take::Open(sender) => sender,
                H2Take::Wait(notify) => {
                    // registered at creation: the opener's wake-up cannot be missed
                    notify.notified().await;
                    continue;
                }
                // boxed: hyper's HTTP/2 handshake future is most of a request's otherwise
                H2Take::Connect(opening) => {
                    match Box::pin(connect_h2(transport, key.addr, timeout)).await {
                        Ok(sender) => {
                            opening.opened(&sender);
                            sender
                        }
                        Err(error) => {
                            return Err(Box::new(SendError {
                                error,
                                unsent: Some(h1_form(req, added)),
                                written: None,
                            }))
                        }
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|inner| UpstreamBody(Inner::H2(inner)))),
                Err(mut e) => match e.take_message() {
                    // the connection closed under it: the next one (a new one) gets it
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                    }
                    unsent => {
                        return Err(Box::new(SendError {
                            unsent: unsent.map(|r| h1_form(r, added)),
                            error: e.into_error().into(),
                            written: None,
                        }))
                    }
                },
            }
        }
    }
}

/// Fields the proxy adds to a request that the client did not send (`x-forwarded-*`,
/// XFCC, a new `x-request-id`), kept out of its `HeaderMap`: an HTTP/1.1 head gets them
/// written after the client's fields, where inserting them would hash each name and grow
/// the map hyper sized for the client's fields (about 500 instructions a request); an
/// HTTP/2 request gets them inserted.
#[derive(Default)]
pub struct Added<'a> {
    /// The client's `TE` listed `trailers`: an HTTP/2 upstream gets `te: trailers`.
    pub te_trailers: bool,
    pub request_id: Option<&'a [u8; 36]>,
    pub fields: [Option<(&'static HeaderName, &'a HeaderValue)>; 4],
}

impl Added<'_> {
    /// The fields (and the request id) as `(name, value)` byte strings, for a head.
    pub fn each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for (name, value) in self.fields.iter().flatten() {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(id) = self.request_id {
            f(b"x-request-id", id);
        }
    }

    fn insert(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields.iter().flatten() {
            headers.insert(*name, (*value).clone());
        }
        if let Some(id) = self.request_id {
            let value = crate::accesslog::request_id_value(id);
            headers.insert(crate::accesslog::X_REQUEST_ID.clone(), value);
        }
    }

    fn remove(&self, headers: &mut HeaderMap) {
        for (name, _) in self.fields.iter().flatten() {
            headers.remove(*name);
        }
        if self.request_id.is_some() {
            headers.remove(&crate::accesslog::X_REQUEST_ID);
        }
    }
}

/// An HTTP/2 request's form: an absolute URI, so that `:scheme` and `:authority` are
/// the request's (from its `Host`, which an intermediary may keep, RFC 9113 section
/// 8.3.1), on the HTTP/2 connection; `te: trailers` when the client asked for trailers.
fn h2_form(req: &mut Request<RequestBody>, tls: bool, addr: SocketAddr, te_trailers: bool) {
    // an HTTP/1.1 upgrade has no HTTP/2 form (hyper would drop these with a warning)
    if req.headers_mut().remove(http::header::CONNECTION).is_some() {
        req.headers_mut().remove(http::header::UPGRADE);
    }
    if te_trailers {
        req.headers_mut()
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    // `:scheme` needs an authority beside it; a request without a usable Host (HTTP/1.0
    // allows that) names the endpoint
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(addr.to_string()).ok());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = authority;
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Back to the HTTP/1.1 form (origin-form URI; `Host` was kept; the added fields out of
/// the map again, an HTTP/1.1 head writes them) for a request that goes elsewhere after an
/// HTTP/2 try that never sent it.
fn h1_form(mut req: Request<RequestBody>, added: &Added<'_>) -> Request<RequestBody> {
    if added.te_trailers {
        req.headers_mut().remove(http::header::TE);
    }
    added.remove(req.headers_mut());
    if let Some(path) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
    req
}

/// A new connection: TCP, the TLS handshake when the transport says so; within
/// `timeout`. HTTP/1.1 needs no handshake of its own.
async fn connect(
    transport: &Transport,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<h1::Conn, UpstreamError> {
    within(timeout, async {
        Ok(h1::Conn::new(match dial(transport, addr).await? {
            Dialed::Plain(tcp) => h1::Io::Plain(tcp),
            Dialed::Tls(tls) => h1::Io::Tls(Box::new(tls)),
        }))
    })
    .await
}

/// A new HTTP/2 connection: TCP, the TLS handshake (which must choose `h2`) when the
/// transport says so, the HTTP/2 preface; all of it within `timeout`.
async fn connect_h2(
    transport: &Transport,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<H2Sender, UpstreamError> {
    within(timeout, async {
        match dial(transport, addr).await? {
            Dialed::Plain(tcp) => handshake_h2(TokioIo::new(tcp)).await,
            Dialed::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                handshake_h2(TokioIo::new(tls)).await
            }
            Dialed::Tls(_) => Err(UpstreamError::NoH2),
        }
    })
    .await
}

/// The stream an upstream handshake runs on. Unboxed: it lives only until the handshake
/// takes it, and a box would be one more allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Dialed {
    Plain(TcpStream),
    Tls(tokio_rustls::client::TlsStream<TcpStream>),
}

/// TCP to `addr`, then TLS when the transport says so.
async fn dial(transport: &Transport, addr: SocketAddr) -> Result<Dialed, UpstreamError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &transport.tls {
        None => Ok(Dialed::Plain(tcp)),
        Some(tls) => tls
            .connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .map(Dialed::Tls)
            .map_err(UpstreamError::Handshake),
    }
}

/// `connecting` within the connect timeout.
async fn within<T>(
    timeout: Duration,
    connecting: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(connected) => connected,
        Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
    }
}

/// HTTP/2 upstream pings (only while requests are open) and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

async fn handshake_h2<I>(io: I) -> Result<H2Sender, UpstreamError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    // every request to the endpoint rides this one connection: while requests are open,
    // pings find a backend that vanished without a close, and the connection is replaced
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(sender)
}

/// A backend's response body: read by the request's own task from an HTTP/1.1
/// connection (which goes back to the pool when the body ends), or a stream of the
/// endpoint's HTTP/2 connection.
pub struct UpstreamBody(Inner);

// unboxed: a box would be one more allocation per request, for every HTTP/1.1 one
#[allow(clippy::large_enum_variant)]
enum Inner {
    H1(h1::Body),
    H2(Incoming),
}

impl UpstreamBody {
    /// The head holds no hop-by-hop field (the HTTP/1.1 parser leaves them out).
    pub fn hop_by_hop_gone(&self) -> bool {
        match &self.0 {
            Inner::H1(body) => body.hop_by_hop_gone(),
            Inner::H2(_) => false,
        }
    }

    /// The connection of an HTTP/1.1 101 response and what was read past the response,
    /// for the tunnel; it never comes back to the pool.
    pub fn take_upgrade(&mut self) -> Option<(h1::Io, Bytes)> {
        match &mut self.0 {
            Inner::H1(body) => body.take_upgrade().map(h1::Conn::into_upgraded),
            Inner::H2(_) => None,
        }
    }
}

/// Why a backend's response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    H1(#[from] h1::H1Error),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, UpstreamBodyError>>> {
        match &mut self.get_mut().0 {
            Inner::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::H1(body) => body.is_end_stream(),
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Inner::H1(body) => body.size_hint(),
            Inner::H2(body) => body.size_hint(),
        }
    }
}
