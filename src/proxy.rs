//! One request, downstream to upstream and back.
//!
//! `handle`: route (one `ArcSwap` load, `RoutingTable::route`: host, split, access, pick,
//! endpoint) -> `Forward::send`: rewrite headers, the worker's upstream client under the
//! upstream timeout, a retry elsewhere when the request never reached a backend (or is a
//! safe one without a body), each try's outcome to its endpoint's health, response headers
//! -> `answer`: the proxy's own response for an error, and the metrics, once per request.
//! Bodies stream through in both directions; the request body is checked against
//! `limits.requestBodyBytes` on its way (`upstream::body`).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, Entry, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper_util::rt::TokioIo;

use crate::access::Principal;
use crate::accesslog::{self, LogBody, Pending};
use crate::config::AccessLog;
use crate::identity::Identity;
use crate::live::Worker;
use crate::metrics::BackendCounters;
use crate::response::{error_chain, Body, ProxyError};
use crate::routing::{Backend, Picked, RoutingTable, Split, Tried};
use crate::timer::LazyTimer;
use crate::upstream::h1::Io;
use crate::upstream::{
    Added, BodyError, ClientBody, RequestBody, SendError, Upstream, UpstreamBody,
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static X_SPLITPROXY_BACKEND: HeaderName = HeaderName::from_static("x-splitproxy-backend");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the request path needs to know about the downstream connection, made once per
/// connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP as a header value, for `x-forwarded-for`.
    pub peer_ip: HeaderValue,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub proto: HeaderValue,
    /// `x-forwarded-client-cert` for the verified client certificate, if any.
    pub xfcc: Option<HeaderValue>,
    /// The caller's (namespace, ServiceAccount), for `access: enforce`.
    pub principal: Option<Principal>,
    /// The caller's name for messages: SPIFFE ID, DNS name or CN; `(anonymous)` without one.
    pub caller: String,
    /// The caller's SPIFFE ID, for the access log.
    pub spiffe: Option<Arc<str>>,
    /// The upstream timeout's timer, shared by the connection's requests when they come one
    /// at a time (HTTP/1.1); None for HTTP/2, whose streams each take their own.
    pub upstream_timer: Option<SerialTimer>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        identity: Option<Identity>,
        xfcc: Option<HeaderValue>,
    ) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let principal = identity.as_ref().and_then(Principal::from_identity);
        let caller = identity
            .as_ref()
            .map_or_else(|| "(anonymous)".to_string(), |i| i.name().to_string());
        let spiffe = identity.and_then(|i| i.spiffe).map(Arc::from);
        ConnInfo {
            peer,
            peer_ip,
            proto,
            xfcc,
            principal,
            caller,
            spiffe,
            upstream_timer: None,
        }
    }

    /// For a connection whose requests come one at a time (HTTP/1.1): they share one
    /// upstream timer.
    pub fn serial(mut self) -> Self {
        self.upstream_timer = Some(SerialTimer::default());
        self
    }
}

/// The upstream timeout of a connection whose requests come one at a time. A timer
/// registered per request costs a wheel insertion and removal every time (about 900
/// instructions, a third of the proxy's own request code); this one is made once, and like
/// H1Guard's clock it moves forward lazily: a request's deadline is later than the one the
/// timer holds, so the timer is left alone, and when it fires before the request's deadline
/// it is set to it then (once per timeout period on a busy connection).
#[derive(Default)]
pub struct SerialTimer(std::cell::RefCell<Option<LazyTimer>>);

impl SerialTimer {
    /// `exchange`'s output, or None once `deadline` has passed.
    async fn bound<F: Future>(
        &self,
        deadline: Instant,
        mut exchange: Pin<&mut F>,
    ) -> Option<F::Output> {
        let deadline = tokio::time::Instant::from_std(deadline);
        poll_fn(|cx| {
            if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            // borrowed within this poll only, and nothing else polls it meanwhile
            let Ok(mut slot) = self.0.try_borrow_mut() else {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            let timer = slot.get_or_insert_with(|| LazyTimer::new(deadline));
            if timer.deadline() > deadline {
                // an earlier deadline than the timer's (a reload shortened the timeout)
                timer.reset(deadline);
            }
            while timer.poll(cx).is_ready() {
                if timer.deadline() >= deadline {
                    return Poll::Ready(None);
                }
                timer.reset(deadline);
            }
            Poll::Pending
        })
        .await
    }
}

/// Serve one request. Never fails: errors become the proxy's own responses. The timer
/// starts here, and `answer` counts every request once, whoever answered it. With the
/// access log on, an `Entry` follows the request (one branch when it is off).
pub async fn handle<B: ClientBody>(
    worker: &Worker,
    conn: &ConnInfo,
    mut req: Request<B>,
) -> Response<LogBody> {
    let started = Instant::now();
    // the table is held for the request's life: a retry picks again from the same one
    let table = worker.live.routes.load_full();
    // matches, access rules and the backend all see the normalised path
    let normalized = crate::path::normalize_uri(req.uri_mut());
    let mut log = (table.config.proxy.access_log == AccessLog::Json)
        .then(|| Pending::start(&req, conn, started, &worker.access_log));
    if let Err(e) = normalized {
        let error = Err(ProxyError::BadPath(e));
        return answer(table.unrouted(), error, started, conn, log);
    }
    let routed = match table.route(&req, conn.principal.as_ref(), &conn.caller) {
        Ok(r) => r,
        Err(refused) => {
            let error = Err(*refused.error);
            return answer(refused.counters, error, started, conn, log);
        }
    };
    if let Some(limit) = table.body_limit {
        // a declared length over the limit is refused before anything goes upstream
        if req.body().size_hint().lower() > limit {
            let error = Err(ProxyError::BodyTooLarge { limit });
            return answer(routed.split.unpicked(), error, started, conn, log);
        }
    }
    // the id the access log took, when it made a new one (a client's valid id is kept)
    let log_id = match log.as_ref().and_then(Pending::id) {
        Some(accesslog::RequestId::New(id)) => Some(*id),
        _ => None,
    };
    if let Some(log) = &mut log {
        log.routed(&routed.backend.counters.labels, routed.endpoint.addr);
    }
    let mut forward = Forward {
        table: &table,
        split: routed.split,
        slot: routed.slot,
        backend: routed.backend,
        endpoint: routed.endpoint,
        set_cookie: routed.set_cookie,
        tries: 1,
        received: log.as_ref().and_then(Pending::received),
        log_id,
        started,
    };
    let result = forward.send(&worker.upstream, conn, req).await;
    if let Some(log) = &mut log {
        let endpoint = match &result {
            Ok(_) => Some(forward.endpoint.addr),
            Err(error) => error.endpoint(),
        };
        log.upstream(endpoint, forward.tries);
    }
    answer(&forward.backend.counters, result, started, conn, log)
}

/// The response for a request's outcome, counted in `counters`, and with the access log
/// on, carrying the request's entry to the end of its body.
fn answer(
    counters: &BackendCounters,
    result: Result<Response<Body>, ProxyError>,
    started: Instant,
    conn: &ConnInfo,
    log: Option<Pending>,
) -> Response<LogBody> {
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if matches!(e, ProxyError::Connect { .. }) {
                counters.connect_failures.inc();
            } else if matches!(e, ProxyError::Timeout { .. }) {
                counters.timeouts.inc();
            }
            match e.endpoint() {
                Some(endpoint) => {
                    tracing::debug!(peer = %conn.peer, %endpoint, "{}", error_chain(&e))
                }
                None => tracing::debug!(peer = %conn.peer, "{e}"),
            }
            e.into_response()
        }
    };
    counters.record(resp.status(), started);
    match log {
        None => resp.map(LogBody::plain),
        Some(mut log) => {
            log.answered(resp.status(), &counters.labels);
            resp.map(|body| LogBody::logged(body, log))
        }
    }
}

/// A routed request on its way to the backend; a retry moves it to another endpoint or
/// member of the split (`slot`, `backend` and `endpoint` say where it is now).
struct Forward<'t> {
    table: &'t RoutingTable,
    split: &'t Split,
    slot: usize,
    backend: &'t Arc<Backend>,
    endpoint: Picked,
    set_cookie: Option<HeaderValue>,
    /// 1 + the retries so far (for the access log).
    tries: u32,
    /// Counts the request body bytes read from the client, when the access log wants them.
    received: Option<Arc<AtomicU64>>,
    /// The new request id the access log took, for `accesslog::request_id`.
    log_id: Option<[u8; 36]>,
    /// When the request arrived: the upstream timeout counts from here.
    started: Instant,
}

impl Forward<'_> {
    async fn send<B: ClientBody>(
        &mut self,
        upstream: &Upstream,
        conn: &ConnInfo,
        mut req: Request<B>,
    ) -> Result<Response<Body>, ProxyError> {
        let Prepared {
            upgrade: downstream_upgrade,
            te_trailers,
            request_id_seen,
            forwarded,
        } = prepare_request(&mut req, conn);
        let request_id = accesslog::request_id(req.headers_mut(), request_id_seen, self.log_id);
        // HTTP/1.1 hands a written head back (`SendError::written`); only HTTP/2 consumes
        // the request, and needs a copy made before
        let retry = self.table.retries > 0 && self.split.alternatives;
        let replay = Replay::of(&req, retry && self.backend.transport.h2);
        let received = self.received.take();
        let limit = self.table.body_limit;
        let req = req.map(|body| body.into_request_body(limit).counting(received));
        let timeout = self.table.timeouts.upstream;
        let deadline = self.started + timeout;
        // one deadline for the whole exchange, retries included (as Envoy's route timeout)
        let outcome = {
            let added = Added {
                te_trailers,
                request_id: request_id.as_ref(),
                fields: forwarded.fields(conn),
            };
            // pinned where it stands: the timeout then holds a pointer, not a moved copy
            let exchange = std::pin::pin!(self.exchange(upstream, req, replay, &added));
            match &conn.upstream_timer {
                Some(timer) => timer.bound(deadline, exchange).await,
                None => tokio::time::timeout(timeout, exchange).await.ok(),
            }
        };
        let mut resp = match outcome {
            Some(result) => result?,
            None => {
                return Err(ProxyError::Timeout {
                    service: self.backend.service.clone(),
                    endpoint: self.endpoint.addr,
                    after: timeout,
                })
            }
        };
        // the version is per hop (RFC 9110 section 6.2): the client's connection speaks
        // ours, whatever the backend's (an HTTP/1.0 backend's close-delimited body is
        // re-framed, the client's keep-alive kept); hyper answers an HTTP/1.0 client in
        // HTTP/1.0 and an HTTP/2 one in HTTP/2 whatever this says
        *resp.version_mut() = Version::HTTP_11;
        if let Some(cookie) = self.set_cookie.take() {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_side = resp.body_mut().take_upgrade();
            if let (Some(client_side), Some(upstream_side)) = (downstream_upgrade, upstream_side) {
                tokio::spawn(tunnel(client_side, upstream_side));
            }
        } else if !resp.body().hop_by_hop_gone() {
            strip_hop_by_hop(resp.headers_mut());
        }
        if self.table.expose_backend {
            resp.headers_mut()
                .insert(X_SPLITPROXY_BACKEND.clone(), self.backend.header.clone());
        }
        Ok(resp.map(Either::Left))
    }

    /// Send, and try again elsewhere while the request never reached a backend (or can be
    /// replayed) and attempts are left. Every try's outcome goes to its endpoint's health.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
        mut replay: Option<Replay>,
        added: &Added<'_>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let table = self.table;
        let mut attempts = table.retries;
        let mut tried = Tried::default();
        loop {
            let addr = self.endpoint.addr;
            let transport = &self.backend.transport;
            let sent = upstream
                .send(transport, addr, table.timeouts.connect, added, req)
                .await;
            let SendError {
                error,
                unsent,
                written,
            } = match sent {
                Ok(resp) => {
                    let od = &table.outlier;
                    let status = resp.status();
                    self.split
                        .answered(self.slot, self.endpoint, status, od, &table.health);
                    return Ok(resp);
                }
                Err(e) => *e,
            };
            let service = || self.backend.service.clone();
            if let Some(body) = error.body_error() {
                // the client's fault, not the endpoint's
                return Err(match body {
                    BodyError::TooLarge(limit) => ProxyError::BodyTooLarge { limit: *limit },
                    BodyError::Malformed(_) => ProxyError::MalformedBody {
                        service: service(),
                        endpoint: addr,
                        source: error,
                    },
                });
            }
            self.split
                .failed(self.slot, self.endpoint, &table.outlier, &table.health);
            if let Some(head) = written.filter(|_| attempts > 0) {
                replay = replay.or_else(|| Replay::written(head));
            }
            let again = unsent.or_else(|| replay.as_ref().map(Replay::request));
            let next = match again {
                Some(r) if attempts > 0 => self
                    .split
                    .retarget(self.slot, self.endpoint, &mut tried, table.health.now())
                    .map(|next| (r, next)),
                _ => None,
            };
            let Some((r, (slot, endpoint))) = next else {
                return Err(if error.is_connect() {
                    ProxyError::Connect {
                        service: service(),
                        endpoint: addr,
                        source: error,
                    }
                } else {
                    ProxyError::Upstream {
                        service: service(),
                        endpoint: addr,
                        source: error,
                    }
                });
            };
            tracing::debug!(service = %self.backend.service, endpoint = %addr, "trying again elsewhere: {}", error_chain(&error));
            self.backend.counters.retries.inc();
            self.tries += 1;
            attempts -= 1;
            self.slot = slot;
            self.backend = &self.split.members()[slot];
            self.endpoint = endpoint;
            req = r;
        }
    }
}

/// What it takes to send a request again that the backend may have seen: a GET, HEAD or
/// OPTIONS without a body (RFC 9110 section 9.2.2: safe, so a replay changes nothing).
/// Taken before the first send, only when the request qualifies and a retry is allowed
/// and possible: a clone of the method, URI and headers (reference counts for the most
/// part), the price of surviving a backend that dies with the request in flight.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// `retry`: a retry is allowed and has somewhere to go.
    fn of<B: http_body::Body>(req: &Request<B>, retry: bool) -> Option<Replay> {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        (retry && safe && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    /// From the head of a bodiless request that went out, when its method is safe.
    fn written(head: http::request::Parts) -> Option<Replay> {
        matches!(head.method, Method::GET | Method::HEAD | Method::OPTIONS).then(|| Replay {
            method: head.method,
            uri: head.uri,
            headers: head.headers,
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = Version::HTTP_11;
        req
    }
}

/// What `prepare_request` found that the send needs.
pub struct Prepared {
    /// The downstream side of an HTTP upgrade, when the request asks for one.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The client's `TE` listed `trailers`: an HTTP/2 upstream gets `te: trailers` (gRPC
    /// needs it); an HTTP/1.1 upstream gets no `TE`, as before (hop-by-hop).
    pub te_trailers: bool,
    /// The request has an `x-request-id` (for `accesslog::request_id`).
    pub request_id_seen: bool,
    /// The forwarding fields the request did not have, still to be added.
    pub forwarded: Forwarded,
}

/// Forwarding fields for a request that had none of that name, left out of its map for
/// the upstream send to add (`upstream::Added`). A client's own are replaced (or, for
/// `x-forwarded-for`, appended to) in the map.
#[derive(Default)]
pub struct Forwarded {
    /// `x-forwarded-for`: the peer IP.
    pub peer: bool,
    /// `x-forwarded-proto`.
    pub proto: bool,
    /// `x-forwarded-host`.
    pub host: Option<HeaderValue>,
    /// `x-forwarded-client-cert`: the connection's.
    pub xfcc: bool,
}

impl Forwarded {
    /// The fields, as `upstream::Added` takes them.
    pub fn fields<'a>(
        &'a self,
        conn: &'a ConnInfo,
    ) -> [Option<(&'static HeaderName, &'a HeaderValue)>; 4] {
        [
            self.peer.then_some((&X_FORWARDED_FOR, &conn.peer_ip)),
            self.proto.then_some((&X_FORWARDED_PROTO, &conn.proto)),
            self.host.as_ref().map(|h| (&X_FORWARDED_HOST, h)),
            conn.xfcc
                .as_ref()
                .filter(|_| self.xfcc)
                .map(|x| (&X_FORWARDED_CLIENT_CERT, x)),
        ]
    }

    /// Into `headers` (what an HTTP/2 send does).
    pub fn insert_into(&self, headers: &mut HeaderMap, conn: &ConnInfo) {
        for (name, value) in self.fields(conn).into_iter().flatten() {
            headers.insert(name, value.clone());
        }
    }
}

/// Rewrite a downstream request for the upstream: origin-form URI, hop-by-hop headers
/// removed, forwarding headers set, client identity replaced.
pub fn prepare_request<B>(req: &mut Request<B>, conn: &ConnInfo) -> Prepared {
    // one pass over the names finds what is rewritten or removed, and the Host field: a
    // hashed lookup per field asked for costs more than comparing the few names there are
    let (seen, host_field) = scan_request(req.headers());
    let upgrade = if req.version() == Version::HTTP_11 && seen & CONNECTION_BIT != 0 {
        upgrade_protocol(req.headers())
    } else {
        None
    };

    // The backend gets the Host the route was chosen by (`routing::request_host`): the
    // authority of an h2 request or of an absolute-form target wins over a `host` header
    // (RFC 9113 section 8.3.1, RFC 9112 section 3.2.2); else Host as the client sent it.
    let host = match req.uri().authority() {
        Some(authority) => match HeaderValue::from_str(authority.as_str()) {
            Ok(h) => {
                req.headers_mut().insert(header::HOST, h.clone());
                h
            }
            Err(_) => HeaderValue::from_static(""),
        },
        None => host_field
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("")),
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));

    // the usual HTTP/1.1 request is origin-form already: nothing to rebuild
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    // looked at only when the client sent TE at all
    let te_trailers = seen & TE_BIT != 0 && lists_trailers(headers);
    strip_seen(headers, seen);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // a field the client sent is rewritten in the map; one it did not is added by the send
    let mut forwarded = Forwarded::default();
    if seen & XFF_BIT != 0 {
        append_forwarded_for(headers, &conn.peer_ip);
    } else {
        forwarded.peer = true;
    }
    if seen & XFP_BIT != 0 {
        headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    } else {
        forwarded.proto = true;
    }
    if !host.is_empty() {
        if seen & XFH_BIT != 0 {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        } else {
            forwarded.host = Some(host);
        }
    }
    // A caller never chooses its own identity.
    match &conn.xfcc {
        Some(xfcc) if seen & XFCC_BIT != 0 => {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), xfcc.clone());
        }
        Some(_) => forwarded.xfcc = true,
        None if seen & XFCC_BIT != 0 => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
        None => {}
    }
    Prepared {
        upgrade: on_upgrade,
        te_trailers,
        request_id_seen: seen & REQUEST_ID_BIT != 0,
        forwarded,
    }
}

/// `Upgrade` value when `Connection` lists `upgrade` (a WebSocket handshake, say).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Headers the request path removes, found in one pass over the names (`scan`): most
/// messages carry none of them, and a pass of cheap name comparisons costs less than one
/// hashed lookup per name.
const CONNECTION_BIT: u16 = 1;
/// The hop-by-hop set of RFC 9110 section 7.6.1 besides `Connection`, and the proxy
/// credentials of the hop (`Proxy-Authorization`, `Proxy-Authenticate`), with bits 1..=7.
/// Removed from requests and from responses.
pub(crate) static HOP_BY_HOP: [&HeaderName; 7] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];
const XFCC_BIT: u16 = 1 << 8;
const REQUEST_ID_BIT: u16 = 1 << 9;
const XFF_BIT: u16 = 1 << 10;
const XFP_BIT: u16 = 1 << 11;
const XFH_BIT: u16 = 1 << 12;
/// `TE`'s bit: `HOP_BY_HOP[2]`.
const TE_BIT: u16 = 2 << 2;

/// Whether `TE` lists `trailers` (RFC 9110 section 10.1.4: `TE: trailers, deflate;q=0.5`).
fn lists_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let name = t.split(|b| *b == b';').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}
/// What `Connection` may never nominate away: the message's host and its framing.
static NEVER_NOMINATED: [&HeaderName; 3] = [
    &header::HOST,
    &header::CONTENT_LENGTH,
    &header::TRANSFER_ENCODING,
];

fn scan(headers: &HeaderMap) -> u16 {
    headers.keys().fold(0, |seen, name| seen | name_bit(name))
}

/// `scan` of a request, which also finds the first `Host` value (cloned only when the
/// request has no authority to take the Host from).
fn scan_request(headers: &HeaderMap) -> (u16, Option<&HeaderValue>) {
    let mut seen = 0;
    let mut host = None;
    for (name, value) in headers {
        if name == header::HOST {
            host.get_or_insert(value);
        } else {
            seen |= name_bit(name);
        }
    }
    (seen, host)
}

/// The bit of a name the request path rewrites or removes; 0 for the others.
#[inline]
fn name_bit(name: &HeaderName) -> u16 {
    if name == header::CONNECTION {
        CONNECTION_BIT
    } else if name == X_FORWARDED_CLIENT_CERT {
        XFCC_BIT
    } else if name == accesslog::X_REQUEST_ID {
        REQUEST_ID_BIT
    } else if name == X_FORWARDED_FOR {
        XFF_BIT
    } else if name == X_FORWARDED_PROTO {
        XFP_BIT
    } else if name == X_FORWARDED_HOST {
        XFH_BIT
    } else {
        HOP_BY_HOP
            .iter()
            .position(|h| *h == name)
            .map_or(0, |i| 2 << i)
    }
}

/// Remove hop-by-hop headers (RFC 9110 section 7.6.1): those named in `Connection`, then
/// the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_seen(headers, scan(headers));
}

fn strip_seen(headers: &mut HeaderMap, seen: u16) {
    if seen & CONNECTION_BIT != 0 {
        // `close` names no header and `keep-alive`/`upgrade` are in the fixed set: the
        // usual values need no allocation
        let mut named: Vec<HeaderName> = Vec::new();
        for t in headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        {
            let t = t.trim_ascii();
            if t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            match HeaderName::from_bytes(t) {
                Ok(name) if !NEVER_NOMINATED.contains(&&name) => named.push(name),
                _ => {}
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen & (2 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// `x-forwarded-for: <existing>, <peer>` (all existing lines folded into one).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    // one hashed lookup whether or not an earlier proxy set it
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(v) => {
            v.insert(peer_ip.clone());
        }
        Entry::Occupied(mut o) => {
            let mut value = BytesMut::new();
            for v in o.iter() {
                value.extend_from_slice(v.as_bytes());
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(peer_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(value.freeze()) {
                // replaces every earlier line
                o.insert(v);
            }
        }
    }
}

/// Copy bytes both ways between the upgraded client and upstream connections; what the
/// backend sent right behind its 101 goes first.
async fn tunnel(client: hyper::upgrade::OnUpgrade, (mut upstream, early): (Io, Bytes)) {
    use tokio::io::AsyncWriteExt;
    let mut client = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => return tracing::debug!("upgrade failed: {e}"),
    };
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            return tracing::debug!("upgraded connection ended: {e}");
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_tokens_any_case_and_fixed_names_are_removed() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Close"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-Secret ,, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(&X_FORWARDED_FOR));
        // nothing hop-by-hop: nothing changes
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn connection_never_nominates_the_host_or_the_framing_away() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, content-length, x-a, Transfer-Encoding"),
        );
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-a", HeaderValue::from_static("1"));
        // end to end (RFC 9110 section 6.6.2): it names the trailer fields
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h[header::HOST], "web");
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        assert!(h.contains_key(header::TRAILER));
    }

    #[test]
    fn the_authority_is_the_host_the_backend_gets() {
        let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 1)), true, None, None);
        let mut req = Request::get("https://web.default:8443/p?q")
            .version(Version::HTTP_2)
            .header(header::HOST, "evil")
            .body(())
            .unwrap();
        let prepared = prepare_request(&mut req, &conn);
        prepared.forwarded.insert_into(req.headers_mut(), &conn);
        assert_eq!(req.uri(), "/p?q");
        assert_eq!(req.headers()[header::HOST], "web.default:8443");
        assert_eq!(req.headers()[&X_FORWARDED_HOST], "web.default:8443");
        assert_eq!(req.headers().get_all(header::HOST).iter().count(), 1);
        // origin-form: Host as the client sent it
        let mut req = Request::get("/p")
            .header(header::HOST, "Web")
            .body(())
            .unwrap();
        prepare_request(&mut req, &conn);
        assert_eq!(req.headers()[header::HOST], "Web");
    }

    #[test]
    fn te_listing_trailers_is_noted_and_removed() {
        let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 1)), false, None, None);
        for (te, kept) in [
            ("trailers", true),
            ("gzip;q=0.5, Trailers", true),
            ("trailers;q=1", true),
            ("gzip", false),
            ("x-trailers", false),
        ] {
            let mut req = Request::get("/")
                .header(header::HOST, "web")
                .header(header::CONNECTION, "te")
                .header(header::TE, te)
                .body(())
                .unwrap();
            let prepared = prepare_request(&mut req, &conn);
            assert_eq!(prepared.te_trailers, kept, "TE: {te}");
            // the header itself is the upstream send's to set, for HTTP/2 only
            assert!(req.headers().get(header::TE).is_none());
            assert!(req.headers().get(header::CONNECTION).is_none());
        }
    }

    #[test]
    fn forwarding_fields_a_client_sent_are_rewritten_the_others_left_to_the_send() {
        let xfcc = HeaderValue::from_static("By=spiffe://x;URI=spiffe://y");
        let peer = SocketAddr::from(([10, 0, 0, 9], 1));
        let conn = ConnInfo::new(peer, true, None, Some(xfcc.clone()));
        let mut req = Request::get("/")
            .header(header::HOST, "web")
            .body(())
            .unwrap();
        let prepared = prepare_request(&mut req, &conn);
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &X_FORWARDED_CLIENT_CERT,
        ] {
            assert!(!req.headers().contains_key(name), "{name} in the map");
        }
        let fields: Vec<_> = prepared
            .forwarded
            .fields(&conn)
            .into_iter()
            .flatten()
            .map(|(n, v)| (n.as_str().to_string(), v.clone()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "x-forwarded-for".to_string(),
                    HeaderValue::from_static("10.0.0.9")
                ),
                (
                    "x-forwarded-proto".to_string(),
                    HeaderValue::from_static("https")
                ),
                (
                    "x-forwarded-host".to_string(),
                    HeaderValue::from_static("web")
                ),
                ("x-forwarded-client-cert".to_string(), xfcc.clone()),
            ]
        );
        // sent by the client: rewritten in place, nothing left to add
        let mut req = Request::get("/")
            .header(header::HOST, "web")
            .header(&X_FORWARDED_FOR, "1.1.1.1")
            .header(&X_FORWARDED_PROTO, "gopher")
            .header(&X_FORWARDED_HOST, "evil")
            .header(&X_FORWARDED_CLIENT_CERT, "By=forged")
            .body(())
            .unwrap();
        let prepared = prepare_request(&mut req, &conn);
        assert!(prepared.forwarded.fields(&conn).iter().all(Option::is_none));
        let h = req.headers();
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "web");
        assert_eq!(h[&X_FORWARDED_CLIENT_CERT], xfcc);
        // no client certificate: a forged XFCC is dropped, none added
        let conn = ConnInfo::new(peer, false, None, None);
        let mut req = Request::get("/")
            .header(header::HOST, "web")
            .header(&X_FORWARDED_CLIENT_CERT, "By=forged")
            .body(())
            .unwrap();
        let prepared = prepare_request(&mut req, &conn);
        assert!(!req.headers().contains_key(&X_FORWARDED_CLIENT_CERT));
        assert!(prepared.forwarded.fields(&conn)[3].is_none());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let ip = HeaderValue::from_static("10.0.0.9");
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }
}
