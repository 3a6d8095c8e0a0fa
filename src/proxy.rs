//! One request, downstream to upstream and back.
//!
//! `handle` (outer) never fails: it turns a `ProxyError` into the proxy's own response.
//! `forward` (inner): route (one `ArcSwap` load, host lookup, split match, weighted pick,
//! endpoint) -> rewrite headers -> pooled upstream request under the upstream timeout ->
//! response headers. Bodies stream through untouched in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, Entry, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access::Principal;
use crate::app::Shared;
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::upstream::UpstreamBody;

/// Response body: a backend's streamed body, or a small one the proxy made.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

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
        ConnInfo {
            peer,
            peer_ip,
            proto,
            xfcc,
            principal,
            caller,
        }
    }
}

/// Serve one request. Never fails: errors become the proxy's own responses.
pub async fn handle(
    shared: &'static Shared,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    match forward(shared, &conn, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, "{e}");
            e.into_response()
        }
    }
}

async fn forward(
    shared: &'static Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    // Route while the table guard is held; keep only owned handles across the await.
    let (backend, endpoint, set_cookie, upstream_timeout, expose) = {
        let table = shared.routes.load();
        let host = request_host(&req).ok_or(ProxyError::NoHost)?;
        let route = table
            .lookup(host)
            .ok_or_else(|| ProxyError::NoRoute(host.to_string()))?;
        let split = route
            .select(req.method(), req.uri().path(), req.headers())
            .ok_or_else(|| ProxyError::NoMatch {
                host: host.to_string(),
                method: req.method().clone(),
                path: req.uri().path().to_string(),
            })?;
        if let Some(policy) = &split.policy {
            if !policy.allows(
                conn.principal.as_ref(),
                req.method(),
                req.uri().path(),
                req.headers(),
            ) {
                return Err(ProxyError::Forbidden {
                    identity: conn.caller.clone(),
                    service: split.source().service.clone(),
                });
            }
        }
        let (backend, set_cookie) = split.pick(req.headers());
        let backend = backend.ok_or_else(|| {
            let src = split.source();
            ProxyError::NoBackend(format!("{}/{}", src.namespace, src.name))
        })?;
        let endpoint = backend.endpoint();
        (
            backend.clone(),
            endpoint,
            set_cookie,
            table.timeouts.upstream,
            table.expose_backend,
        )
    };
    let started = Instant::now();
    let Some(endpoint) = endpoint else {
        backend.counters.record(StatusCode::BAD_GATEWAY, started);
        return Err(ProxyError::NoEndpoint(backend.service.clone()));
    };

    // hyper-util's TLS client wants an absolute URI; the plain pool sends origin-form
    let absolute = backend.tls.is_some().then(|| endpoint.clone());
    let downstream_upgrade = prepare_request(&mut req, conn, absolute);
    // pinned where it stands: the timeout then holds a pointer, not a moved copy
    let sent = std::pin::pin!(async {
        match &backend.tls {
            Some(client) => Ok(client.request(req).await?.map(UpstreamBody::new)),
            None => shared.upstream.send(&endpoint, req).await,
        }
    });
    let result = tokio::time::timeout(upstream_timeout, sent).await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let (service, endpoint, reason) = (
                backend.service.clone(),
                endpoint.to_string(),
                error_chain(&e),
            );
            let err = if e.is_connect() {
                backend.counters.connect_failures.inc();
                ProxyError::Connect {
                    service,
                    endpoint,
                    reason,
                }
            } else {
                ProxyError::Upstream {
                    service,
                    endpoint,
                    reason,
                }
            };
            backend.counters.record(err.status(), started);
            return Err(err);
        }
        Err(_) => {
            let err = ProxyError::Timeout {
                service: backend.service.clone(),
                endpoint: endpoint.to_string(),
                after: upstream_timeout,
            };
            backend.counters.timeouts.inc();
            backend.counters.record(err.status(), started);
            return Err(err);
        }
    };
    backend.counters.record(resp.status(), started);
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = downstream_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    if expose {
        resp.headers_mut()
            .insert(X_SPLITPROXY_BACKEND.clone(), backend.header.clone());
    }
    Ok(resp.map(Either::Left))
}

/// The host the client addressed: `:authority` (h2, absolute-form) or `Host`.
#[inline]
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

/// Rewrite a downstream request for the upstream: origin-form URI (absolute `https` on
/// `tls_endpoint` when given), hop-by-hop headers removed, forwarding headers set, client
/// identity replaced. Returns the downstream side of an HTTP upgrade, when the request
/// asks for one.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    conn: &ConnInfo,
    tls_endpoint: Option<Authority>,
) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = if req.version() == Version::HTTP_11 {
        upgrade_protocol(req.headers())
    } else {
        None
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));

    // Host as the client sent it; h2 carries it in :authority only.
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.clone(),
        None => match req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            Some(h) => {
                req.headers_mut().insert(header::HOST, h.clone());
                h
            }
            None => HeaderValue::from_static(""),
        },
    };

    match tls_endpoint {
        Some(endpoint) => {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTPS);
            parts.authority = Some(endpoint);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        }
        // the usual HTTP/1.1 request is origin-form already: nothing to rebuild
        None if req.uri().scheme().is_none() && req.uri().authority().is_none() => {}
        None => {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    let seen = scan(headers);
    strip_seen(headers, seen);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    append_forwarded_for(headers, &conn.peer_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    if !host.is_empty() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    // A caller never chooses its own identity.
    match &conn.xfcc {
        Some(xfcc) => {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), xfcc.clone());
        }
        None if seen & XFCC_BIT != 0 => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
        None => {}
    }
    on_upgrade
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
/// The hop-by-hop set of RFC 9110 section 7.6.1 besides `Connection`, with bits 1..=6.
static HOP_BY_HOP: [&HeaderName; 6] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];
const XFCC_BIT: u16 = 1 << 7;

fn scan(headers: &HeaderMap) -> u16 {
    let mut seen = 0;
    for name in headers.keys() {
        if name == header::CONNECTION {
            seen |= CONNECTION_BIT;
        } else if name == X_FORWARDED_CLIENT_CERT {
            seen |= XFCC_BIT;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            seen |= 2 << i;
        }
    }
    seen
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
            if let Ok(name) = HeaderName::from_bytes(t) {
                named.push(name);
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

/// Copy bytes both ways between the upgraded client and upstream connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!("upgraded connection ended: {e}");
            }
        }
        Err(e) => tracing::debug!("upgrade failed: {e}"),
    }
}

/// An error with its causes, `a: b: c`, for messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
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
