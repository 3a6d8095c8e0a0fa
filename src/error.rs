//! Errors on the request path and the one place they become responses.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::proxy::Body;

/// Why the proxy answered a request itself instead of relaying a backend's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no host (no Host header or :authority)")]
    NoHost,
    #[error("no route for host {0:?}")]
    NoRoute(String),
    #[error("no TrafficSplit for host {host:?} matches {method} {path}")]
    NoMatch {
        host: String,
        method: http::Method,
        path: String,
    },
    #[error("traffic split {0} has no backend with a weight above 0")]
    NoBackend(String),
    #[error("service {0} has no resolved endpoint")]
    NoEndpoint(String),
    #[error("upstream {service} ({endpoint}) is unreachable: {reason}")]
    Connect {
        service: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {service} ({endpoint}) failed: {reason}")]
    Upstream {
        service: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {service} ({endpoint}) did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        service: String,
        endpoint: String,
        after: Duration,
    },
    #[error("{identity} may not call {service}")]
    Forbidden { identity: String, service: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHost => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) | ProxyError::NoMatch { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoEndpoint(_)
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        local_response(self.status(), format!("{self}\n"))
    }
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
        assert_eq!(s(ProxyError::NoRoute("x".into())), 404);
        assert_eq!(s(ProxyError::NoBackend("x".into())), 503);
        assert_eq!(s(ProxyError::NoEndpoint("x".into())), 502);
        let (service, endpoint) = ("s".to_string(), "e".to_string());
        assert_eq!(
            s(ProxyError::Connect {
                service: service.clone(),
                endpoint: endpoint.clone(),
                reason: "r".into()
            }),
            502
        );
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
