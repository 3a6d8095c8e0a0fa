//! What the client gets back: the response body type, the reasons the proxy answers a
//! request itself, and the one place those become responses. A body names the route and
//! the backend service, never an address or an error chain (those go to the log).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::upstream::{UpstreamBody, UpstreamError};

/// Response body: a backend's streamed body, or a small one the proxy made.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// Why the proxy answered a request itself instead of relaying a backend's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no host (no Host header or :authority)")]
    NoHost,
    /// Refused by path normalisation, before routing.
    #[error("{0}")]
    BadPath(crate::path::PathError),
    #[error("no route for host {0:?}")]
    NoRoute(String),
    #[error("no route for host {host:?} matches {method} {path}")]
    NoMatch {
        host: String,
        method: http::Method,
        path: String,
    },
    #[error("traffic split {0} has no backend with a weight above 0")]
    NoBackend(String),
    #[error("traffic split {0} has no live backend: every endpoint is ejected")]
    NoLiveBackend(String),
    #[error("service {0} has no resolved endpoint")]
    NoEndpoint(String),
    #[error("upstream {service} is unreachable")]
    Connect {
        service: String,
        endpoint: SocketAddr,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {service} failed")]
    Upstream {
        service: String,
        endpoint: SocketAddr,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {service} did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        service: String,
        endpoint: SocketAddr,
        after: Duration,
    },
    #[error("{identity} may not call {service}")]
    Forbidden { identity: String, service: String },
    /// The client's body failed after the request went upstream (a bad chunk size, say).
    #[error("bad request: malformed request body")]
    MalformedBody {
        service: String,
        endpoint: SocketAddr,
        #[source]
        source: UpstreamError,
    },
    #[error("request body larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// An HTTPRoute rule (`<namespace>/<route>/rules[<i>]`) whose backendRefs all have
    /// weight 0 or resolve to nothing, or that has none.
    #[error("HTTPRoute rule {0} has no backendRef to send to")]
    NoRuleBackend(String),
    /// The pick of an HTTPRoute rule fell on a backendRef that resolves to nothing.
    #[error("HTTPRoute rule {rule}: backendRef {backend} cannot be resolved")]
    UnresolvedBackendRef { rule: String, backend: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHost | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) | ProxyError::NoMatch { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) | ProxyError::NoLiveBackend(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::NoEndpoint(_)
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::MalformedBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRuleBackend(_) | ProxyError::UnresolvedBackendRef { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The endpoint the request went to, when it got that far (for the log).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::Connect { endpoint, .. }
            | ProxyError::Upstream { endpoint, .. }
            | ProxyError::MalformedBody { endpoint, .. }
            | ProxyError::Timeout { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        local_response(self.status(), format!("{self}\n"))
    }
}

/// `error: cause: cause ...`, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and hyper-util repeat their inner error in their own message
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A response the proxy makes itself: short plain-text body, `server: splitproxy`.
pub fn local_response(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("splitproxy"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let s = |e: ProxyError| e.status().as_u16();
        assert_eq!(s(ProxyError::NoHost), 400);
        assert_eq!(
            s(ProxyError::BadPath(crate::path::PathError::AboveRoot)),
            400
        );
        assert_eq!(s(ProxyError::NoRoute("x".into())), 404);
        assert_eq!(s(ProxyError::NoBackend("x".into())), 503);
        assert_eq!(s(ProxyError::NoLiveBackend("x".into())), 503);
        assert_eq!(s(ProxyError::BodyTooLarge { limit: 1 }), 413);
        assert_eq!(s(ProxyError::NoEndpoint("x".into())), 502);
        let (service, endpoint) = ("s".to_string(), SocketAddr::from(([127, 0, 0, 1], 9)));
        let refused = || UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        let connect = ProxyError::Connect {
            service: service.clone(),
            endpoint,
            source: refused(),
        };
        // the body names the service, never the address or the cause
        assert_eq!(connect.to_string(), "upstream s is unreachable");
        assert_eq!(s(connect), 502);
        assert_eq!(
            s(ProxyError::Timeout {
                service,
                endpoint,
                after: Duration::from_secs(1)
            }),
            504
        );
        assert_eq!(
            s(ProxyError::Forbidden {
                identity: "i".into(),
                service: "s".into()
            }),
            403
        );
    }
}
