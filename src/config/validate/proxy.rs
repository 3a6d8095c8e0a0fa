//! The `Proxy` document: listeners, TLS, access mode, timeouts, shutdown and the backend
//! services with their endpoints and upstream TLS.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::Validator;
use crate::config::{
    raw, values, AccessLog, AccessMode, ClientAuth, Endpoint, Limits, Origin, OutlierDetection,
    Protocol, Proxy, Retries, Service, ShutdownSettings, Timeouts, TlsSettings, UpstreamTls,
    DEFAULT_ADMIN, DEFAULT_LISTEN, DEFAULT_TRUST_DOMAIN,
};

impl Validator {
    pub(super) fn proxy(&mut self, origin: Origin, doc: raw::ProxyDoc) -> Option<Proxy> {
        let before = self.errors.len();
        let spec = doc.spec;
        let dir = origin
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut addr = |field: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            values::parse_listen(&text)
                .map_err(|e| self.errors.push(origin.error(field, e)))
                .ok()
        };
        let listen = addr("spec.listen", spec.listen, DEFAULT_LISTEN);
        let admin = addr("spec.admin", spec.admin, DEFAULT_ADMIN);

        let tls = spec.tls.and_then(|t| {
            let cert = self.named_file(&origin, "spec.tls.cert", &dir, &t.cert);
            let key = self.named_file(&origin, "spec.tls.key", &dir, &t.key);
            let client_ca = match &t.client_ca {
                Some(p) => Some(self.named_file(&origin, "spec.tls.clientCA", &dir, p)?),
                None => None,
            };
            // omitted: require when a CA is given, else none; a CA given with `none` must
            // exist (and is watched) but verifies nothing
            let client_auth = match (t.client_auth.as_deref(), client_ca) {
                (None | Some("require"), Some(ca)) => ClientAuth::Require(ca),
                (Some("optional"), Some(ca)) => ClientAuth::Optional(ca),
                (None | Some("none"), _) => ClientAuth::None,
                (Some("require" | "optional"), None) => {
                    self.errors.push(origin.error(
                        "spec.tls.clientCA",
                        "required when clientAuth is require or optional (the CA that signs client certificates)",
                    ));
                    return None;
                }
                (Some(other), _) => {
                    self.errors.push(origin.error(
                        "spec.tls.clientAuth",
                        format!("must be one of require, optional, none; got {other:?}"),
                    ));
                    return None;
                }
            };
            Some(TlsSettings { cert: cert?, key: key?, client_auth })
        });
        if tls.is_none() && self.errors.len() == before {
            self.warnings.push(format!("{origin} (Proxy {}): no spec.tls block: serving plain HTTP without TLS or client authentication", origin.name));
        }

        let access = match spec.access.as_deref() {
            None | Some("permissive") => AccessMode::Permissive,
            Some("enforce") => AccessMode::Enforce,
            Some(other) => {
                self.errors.push(origin.error(
                    "spec.access",
                    format!("must be permissive or enforce, got {other:?}"),
                ));
                AccessMode::Permissive
            }
        };

        let mut duration =
            |field: &str, value: Option<String>, default: Duration, positive: bool| match value {
                None => default,
                Some(text) => match values::parse_duration(&text) {
                    Ok(d) if positive && d.is_zero() => {
                        self.errors.push(
                            origin.error(field, format!("must be greater than 0, got {text:?}")),
                        );
                        default
                    }
                    Ok(d) => d,
                    Err(e) => {
                        self.errors.push(origin.error(field, e));
                        default
                    }
                },
            };
        let t = spec.timeouts.unwrap_or_default();
        let d = Timeouts::default();
        let timeouts = Timeouts {
            connect: duration("spec.timeouts.connect", t.connect, d.connect, true),
            upstream: duration("spec.timeouts.upstream", t.upstream, d.upstream, true),
            client_header: duration(
                "spec.timeouts.clientHeader",
                t.client_header,
                d.client_header,
                true,
            ),
            idle: duration("spec.timeouts.idle", t.idle, d.idle, true),
        };
        let s = spec.shutdown.unwrap_or_default();
        let d = ShutdownSettings::default();
        let shutdown = ShutdownSettings {
            delay: duration("spec.shutdown.delay", s.delay, d.delay, false),
            grace: duration("spec.shutdown.grace", s.grace, d.grace, false),
        };

        let outlier = spec.outlier_detection.unwrap_or_default();
        let d = OutlierDetection::default();
        let base_ejection_time = duration(
            "spec.outlierDetection.baseEjectionTime",
            outlier.base_ejection_time,
            d.base_ejection_time,
            true,
        );

        // counts: at most `max`, as a u32/usize the rest of the proxy uses
        let mut count =
            |field: &str, value: Option<u64>, default: u64, min: u64, max: u64| match value {
                None => default,
                Some(n) if n < min || n > max => {
                    self.errors.push(
                        origin.error(field, format!("must be between {min} and {max}, got {n}")),
                    );
                    default
                }
                Some(n) => n,
            };
        let r = spec.retries.unwrap_or_default();
        let retries = Retries {
            attempts: count(
                "spec.retries.attempts",
                r.attempts,
                Retries::default().attempts.into(),
                0,
                10,
            ) as u32,
        };
        let outlier_detection = OutlierDetection {
            consecutive_failures: count(
                "spec.outlierDetection.consecutiveFailures",
                outlier.consecutive_failures,
                d.consecutive_failures.into(),
                0,
                u32::MAX.into(),
            ) as u32,
            consecutive_5xx: count(
                "spec.outlierDetection.consecutive5xx",
                outlier.consecutive_5xx,
                d.consecutive_5xx.into(),
                0,
                u32::MAX.into(),
            ) as u32,
            base_ejection_time,
            max_ejected_percent: count(
                "spec.outlierDetection.maxEjectedPercent",
                outlier.max_ejected_percent,
                d.max_ejected_percent.into(),
                0,
                100,
            ) as u32,
        };
        let l = spec.limits.unwrap_or_default();
        let d = Limits::default();
        let request_headers = count(
            "spec.limits.requestHeaders",
            l.request_headers,
            d.request_headers as u64,
            1,
            100_000,
        ) as usize;
        let connections = count("spec.limits.connections", l.connections, 0, 0, 1 << 30) as usize;
        let h2_max_concurrent_streams = count(
            "spec.limits.h2MaxConcurrentStreams",
            l.h2_max_concurrent_streams,
            d.h2_max_concurrent_streams.into(),
            1,
            u32::MAX.into(),
        ) as u32;
        let mut size =
            |field: &str, value: Option<serde_yaml::Value>, default: u64, min: u64| match value
                .map(|v| values::parse_size(&v))
            {
                None => default,
                Some(Ok(n)) if n < min => {
                    self.errors.push(
                        origin.error(field, format!("must be at least {min} bytes, got {n}")),
                    );
                    default
                }
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    self.errors.push(origin.error(field, e));
                    default
                }
            };
        let limits = Limits {
            // a head needs a request line and a Host: less than 1 KiB is a mistake
            request_header_bytes: size(
                "spec.limits.requestHeaderBytes",
                l.request_header_bytes,
                d.request_header_bytes as u64,
                1024,
            )
            .min(1 << 30) as usize,
            request_headers,
            request_body_bytes: Some(size(
                "spec.limits.requestBodyBytes",
                l.request_body_bytes,
                0,
                0,
            ))
            .filter(|n| *n > 0),
            connections: Some(connections).filter(|n| *n > 0),
            h2_max_concurrent_streams,
        };
        let trust_domain = match spec.trust_domain {
            None => DEFAULT_TRUST_DOMAIN.to_string(),
            Some(t) if valid_trust_domain(&t) => t.to_ascii_lowercase(),
            Some(t) => {
                self.errors.push(origin.error(
                    "spec.trustDomain",
                    format!("must be a SPIFFE trust domain such as cluster.local (letters, digits, '.', '-', '_'), got {t:?}"),
                ));
                String::new()
            }
        };

        let access_log = match spec.access_log {
            None => AccessLog::Off,
            Some(serde_yaml::Value::String(s)) if s == "off" => AccessLog::Off,
            Some(serde_yaml::Value::String(s)) if s == "json" => AccessLog::Json,
            // what YAML 1.1 tools write for `off`
            Some(serde_yaml::Value::Bool(false)) => AccessLog::Off,
            Some(other) => {
                let got = match &other {
                    serde_yaml::Value::String(s) => format!("{s:?}"),
                    v => serde_yaml::to_string(v)
                        .unwrap_or_default()
                        .trim_end()
                        .to_string(),
                };
                self.errors.push(origin.error(
                    "spec.accessLog",
                    format!("must be off or json (false also means off), got {got}"),
                ));
                AccessLog::Off
            }
        };

        let mut services = BTreeMap::new();
        for (name, value) in spec.services {
            let field = format!("spec.services.{name}");
            // a plain list of endpoints, or a mapping with endpoints and upstream TLS
            let (endpoints, tls_raw, protocol_raw, list_field) = if value.is_sequence() {
                match serde_path_to_error::deserialize::<_, Vec<String>>(value) {
                    Ok(list) => (list, None, None, field.clone()),
                    Err(e) => {
                        self.errors.push(origin.error(
                            format!("{field}{}", seq_path(e.path())),
                            e.into_inner().to_string(),
                        ));
                        continue;
                    }
                }
            } else if value.is_mapping() {
                match serde_path_to_error::deserialize::<_, raw::Service>(value) {
                    Ok(svc) => (
                        svc.endpoints,
                        svc.tls,
                        svc.protocol,
                        format!("{field}.endpoints"),
                    ),
                    Err(e) => {
                        self.errors.push(
                            origin
                                .error(format!("{field}.{}", e.path()), e.into_inner().to_string()),
                        );
                        continue;
                    }
                }
            } else {
                self.errors.push(origin.error(
                    &field,
                    "expected a list of host:port endpoints, or a mapping with endpoints, protocol and tls",
                ));
                continue;
            };
            // parsed first because the TLS server name defaults to the first endpoint's
            // host; their errors are reported after the TLS block's, in field order
            let parsed: Vec<Result<Endpoint, String>> = endpoints
                .iter()
                .map(|e| values::parse_endpoint(e))
                .collect();
            let first_host = parsed
                .first()
                .and_then(|e| e.as_ref().ok())
                .map(Endpoint::host);
            let tls = tls_raw.and_then(|t| {
                let mut file = |f: &str, p: &str| {
                    self.named_file(&origin, format!("{field}.tls.{f}"), &dir, p)
                };
                let ca = file("ca", &t.ca)?;
                let client = match (t.cert, t.key) {
                    (Some(c), Some(k)) => Some((file("cert", &c)?, file("key", &k)?)),
                    (None, None) => None,
                    _ => {
                        self.errors.push(origin.error(
                            format!("{field}.tls"),
                            "cert and key go together (client certificate for mTLS origination)",
                        ));
                        return None;
                    }
                };
                Some(UpstreamTls {
                    ca,
                    // neither: no valid first endpoint, which is an error below
                    server_name: t.server_name.or(first_host)?,
                    client,
                })
            });
            let protocol = match protocol_raw.as_deref() {
                None | Some("http1") => Protocol::Http1,
                Some("h2") => Protocol::H2,
                Some(other) => {
                    self.errors.push(origin.error(
                        format!("{field}.protocol"),
                        format!("must be http1 or h2, got {other:?}"),
                    ));
                    Protocol::Http1
                }
            };
            if endpoints.is_empty() {
                self.errors
                    .push(origin.error(&field, "must list at least one endpoint (host:port)"));
                continue;
            }
            let mut valid = Vec::with_capacity(parsed.len());
            for (i, e) in parsed.into_iter().enumerate() {
                match e {
                    Ok(e) => valid.push(e),
                    Err(e) => self
                        .errors
                        .push(origin.error(format!("{list_field}[{i}]"), e)),
                }
            }
            services.insert(
                name,
                Service {
                    endpoints: valid,
                    tls,
                    protocol,
                },
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(Proxy {
            origin,
            listen: listen?,
            admin: admin?,
            tls,
            access,
            timeouts,
            shutdown,
            expose_backend: spec.expose_backend.unwrap_or(false),
            trust_domain,
            limits,
            retries,
            outlier_detection,
            access_log,
            services,
        })
    }
}

/// A SPIFFE trust domain name: lower-case letters, digits, `.`, `-` and `_` (upper case is
/// accepted and folded), not empty.
fn valid_trust_domain(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `[3]` for a sequence path `3`, as our field paths write list indexes.
fn seq_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        format!("[{p}]")
    }
}
