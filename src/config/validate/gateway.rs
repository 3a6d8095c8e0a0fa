//! Gateway API `HTTPRoute` documents (`gateway.networking.k8s.io` v1 and v1beta1):
//! hostnames, matches and backendRefs as the specification writes them, each rule also
//! given the shape of a split (`GatewayRule::split`) for the rest of the proxy. What
//! splitproxy does not implement (filters, timeouts, retry, session persistence) is an
//! error naming its path, never dropped.

use std::collections::HashMap;

use regex::Regex;
use serde_yaml::Value;

use super::Validator;
use crate::config::model::{
    BackendTarget, GatewayBackend, GatewayMatch, GatewayRule, HttpRoute, PathMatch, ValueMatch,
};
use crate::config::{
    raw, Endpoint, Origin, Proxy, Selection, SplitBackend, TrafficSplit, ANNOTATION_PREFIX,
    DEFAULT_NAMESPACE,
};

/// The methods `HTTPRouteMatch.method` may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The largest weight the specification allows.
const MAX_WEIGHT: i64 = 1_000_000;

impl Validator {
    pub(super) fn http_route(
        &mut self,
        mut origin: Origin,
        version: &str,
        doc: raw::HttpRouteDoc,
        proxy: Option<&Proxy>,
    ) -> Option<HttpRoute> {
        let before = self.errors.len();
        let meta = doc.metadata;
        let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
            origin.name = "(unnamed)".into();
            self.errors.push(origin.error("metadata.name", "required"));
            return None;
        };
        origin.name = name.clone();
        let namespace = meta
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let created = meta.creation_timestamp.as_deref().and_then(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|_| {
                    self.errors.push(origin.error(
                        "metadata.creationTimestamp",
                        format!(
                            "expected an RFC 3339 time such as 2024-01-02T03:04:05Z, got {t:?}"
                        ),
                    ))
                })
                .ok()
        });
        for key in meta.annotations.keys() {
            // the TrafficSplit annotations (selection, stickiness, service account) are
            // not read on an HTTPRoute: refused rather than ignored
            if key.starts_with(ANNOTATION_PREFIX) {
                self.errors.push(origin.error(
                    format!("metadata.annotations.{key}"),
                    "not supported by splitproxy on an HTTPRoute (splitproxy.dev/ annotations apply to TrafficSplits)",
                ));
            }
        }
        let spec = doc.spec;
        let mut hostnames: Vec<String> = Vec::with_capacity(spec.hostnames.len());
        for (i, h) in spec.hostnames.iter().enumerate() {
            match hostname(h) {
                Ok(h) if hostnames.contains(&h) => {}
                Ok(h) => hostnames.push(h),
                Err(e) => self
                    .errors
                    .push(origin.error(format!("spec.hostnames[{i}]"), e)),
            }
        }
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, rule) in spec.rules.into_iter().enumerate() {
            if let Some(r) = self.gateway_rule(
                &origin,
                &format!("spec.rules[{i}]"),
                rule,
                &namespace,
                proxy,
            ) {
                rules.push(r);
            }
        }
        if self.errors.len() != before {
            return None;
        }
        let api_version = format!("gateway.networking.k8s.io/{version}");
        for (i, rule) in rules.iter_mut().enumerate() {
            rule.split = TrafficSplit {
                origin: origin.clone(),
                api_version: api_version.clone(),
                name: format!("{name}/rules[{i}]"),
                namespace: namespace.clone(),
                service: name.clone(),
                hosts: hostnames.clone(),
                backends: rule
                    .backends
                    .iter()
                    .map(|b| SplitBackend {
                        service: b.label(),
                        weight: b.weight,
                    })
                    .collect(),
                matches: Vec::new(),
                selection: Selection::Random,
                service_account: name.clone(),
                fallback: None,
            };
        }
        Some(HttpRoute {
            origin,
            api_version,
            name,
            namespace,
            hostnames,
            created,
            rules,
        })
    }

    fn gateway_rule(
        &mut self,
        origin: &Origin,
        field: &str,
        rule: raw::HttpRouteRule,
        namespace: &str,
        proxy: Option<&Proxy>,
    ) -> Option<GatewayRule> {
        let before = self.errors.len();
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            self.errors.push(unsupported_filter(
                origin,
                &format!("{field}.filters[{j}]"),
                f,
            ));
        }
        for (what, present) in [
            ("timeouts", rule.timeouts.is_some()),
            ("retry", rule.retry.is_some()),
            ("sessionPersistence", rule.session_persistence.is_some()),
        ] {
            if present {
                self.errors
                    .push(origin.error(format!("{field}.{what}"), "not supported by splitproxy"));
            }
        }
        let mut matches = Vec::new();
        match rule.matches {
            // no matches (or an empty list): every request, as `PathPrefix /`
            None => matches.push(catch_all()),
            Some(list) if list.is_empty() => matches.push(catch_all()),
            Some(list) => {
                for (j, m) in list.into_iter().enumerate() {
                    if let Some(m) = self.gateway_match(origin, &format!("{field}.matches[{j}]"), m)
                    {
                        matches.push(m);
                    }
                }
            }
        }
        let mut backends = Vec::with_capacity(rule.backend_refs.len());
        for (k, b) in rule.backend_refs.into_iter().enumerate() {
            let bfield = format!("{field}.backendRefs[{k}]");
            if let Some(b) = self.backend_ref(origin, &bfield, b, namespace, proxy) {
                backends.push(b);
            }
        }
        (self.errors.len() == before).then(|| GatewayRule {
            matches,
            backends,
            // filled in by the caller once the route is known to be valid
            split: placeholder_split(origin),
        })
    }

    fn gateway_match(
        &mut self,
        origin: &Origin,
        field: &str,
        m: raw::HttpRouteMatch,
    ) -> Option<GatewayMatch> {
        let before = self.errors.len();
        let path = match m.path {
            None => PathMatch::Prefix(String::new()),
            Some(p) => {
                let value = p.value.unwrap_or_else(|| "/".to_string());
                let pfield = format!("{field}.path");
                match p.kind.as_deref().unwrap_or("PathPrefix") {
                    "PathPrefix" => match check_path(&value) {
                        Ok(()) => PathMatch::Prefix(value.trim_end_matches('/').to_string()),
                        Err(e) => {
                            self.errors.push(origin.error(format!("{pfield}.value"), e));
                            PathMatch::Prefix(String::new())
                        }
                    },
                    "Exact" => match check_path(&value) {
                        Ok(()) => PathMatch::Exact(value),
                        Err(e) => {
                            self.errors.push(origin.error(format!("{pfield}.value"), e));
                            PathMatch::Prefix(String::new())
                        }
                    },
                    "RegularExpression" => match anchored(&value) {
                        Ok(re) => PathMatch::Regex(re),
                        Err(e) => {
                            self.errors.push(origin.error(format!("{pfield}.value"), e));
                            PathMatch::Prefix(String::new())
                        }
                    },
                    other => {
                        self.errors.push(origin.error(
                            format!("{pfield}.type"),
                            format!("unknown path match type {other:?} (known: PathPrefix, Exact, RegularExpression)"),
                        ));
                        PathMatch::Prefix(String::new())
                    }
                }
            }
        };
        let mut headers: Vec<(http::HeaderName, ValueMatch)> = Vec::with_capacity(m.headers.len());
        for (k, h) in m.headers.into_iter().enumerate() {
            let hfield = format!("{field}.headers[{k}]");
            let Ok(name) = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            else {
                self.errors.push(origin.error(
                    format!("{hfield}.name"),
                    format!("not a valid header name: {:?}", h.name),
                ));
                continue;
            };
            let Some(value) = self.value_match(origin, &hfield, h.kind.as_deref(), h.value) else {
                continue;
            };
            if headers.iter().any(|(n, _)| *n == name) {
                // the specification: only the first entry of an equivalent name counts
                self.warnings.push(format!(
                    "{}",
                    origin.error(
                        format!("{hfield}.name"),
                        format!("header {name} is matched by an earlier entry; this one is ignored, as the Gateway API specification says"),
                    )
                ));
                continue;
            }
            headers.push((name, value));
        }
        let mut query: Vec<(String, ValueMatch)> = Vec::with_capacity(m.query_params.len());
        for (k, q) in m.query_params.into_iter().enumerate() {
            let qfield = format!("{field}.queryParams[{k}]");
            if q.name.is_empty() {
                self.errors
                    .push(origin.error(format!("{qfield}.name"), "must not be empty"));
                continue;
            }
            let Some(value) = self.value_match(origin, &qfield, q.kind.as_deref(), q.value) else {
                continue;
            };
            if query.iter().any(|(n, _)| *n == q.name) {
                self.warnings.push(format!(
                    "{}",
                    origin.error(
                        format!("{qfield}.name"),
                        format!("query parameter {} is matched by an earlier entry; this one is ignored, as the Gateway API specification says", q.name),
                    )
                ));
                continue;
            }
            query.push((q.name, value));
        }
        let method = match m.method {
            None => None,
            Some(method) if METHODS.contains(&method.as_str()) => {
                http::Method::from_bytes(method.as_bytes()).ok()
            }
            Some(method) => {
                self.errors.push(origin.error(
                    format!("{field}.method"),
                    format!("unknown method {method:?} (known: {})", METHODS.join(", ")),
                ));
                None
            }
        };
        (self.errors.len() == before).then_some(GatewayMatch {
            path,
            headers,
            query,
            method,
        })
    }

    fn value_match(
        &mut self,
        origin: &Origin,
        field: &str,
        kind: Option<&str>,
        value: String,
    ) -> Option<ValueMatch> {
        match kind.unwrap_or("Exact") {
            "Exact" => Some(ValueMatch::Exact(value)),
            "RegularExpression" => match anchored(&value) {
                Ok(re) => Some(ValueMatch::Regex(re)),
                Err(e) => {
                    self.errors.push(origin.error(format!("{field}.value"), e));
                    None
                }
            },
            other => {
                self.errors.push(origin.error(
                    format!("{field}.type"),
                    format!("unknown match type {other:?} (known: Exact, RegularExpression)"),
                ));
                None
            }
        }
    }

    fn backend_ref(
        &mut self,
        origin: &Origin,
        field: &str,
        b: raw::HttpBackendRef,
        namespace: &str,
        proxy: Option<&Proxy>,
    ) -> Option<GatewayBackend> {
        let before = self.errors.len();
        for (j, f) in b.filters.iter().flatten().enumerate() {
            self.errors.push(unsupported_filter(
                origin,
                &format!("{field}.filters[{j}]"),
                f,
            ));
        }
        match b.group.as_deref() {
            None | Some("") | Some("core") => {}
            Some(other) => self.errors.push(origin.error(
                format!("{field}.group"),
                format!(
                    "not supported by splitproxy (group {other:?}: only core Services, group \"\")"
                ),
            )),
        }
        match b.kind.as_deref() {
            None | Some("Service") => {}
            Some(other) => self.errors.push(origin.error(
                format!("{field}.kind"),
                format!("not supported by splitproxy (kind {other:?}: only Service)"),
            )),
        }
        if b.name.is_empty() {
            self.errors
                .push(origin.error(format!("{field}.name"), "must name a Service"));
        }
        let port = match b.port {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    self.errors.push(origin.error(
                        format!("{field}.port"),
                        format!("must be a port number from 1 to 65535, got {p}"),
                    ));
                    None
                }
            },
        };
        let weight = match &b.weight {
            None => 1,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(w) if (0..=MAX_WEIGHT).contains(&w) => w as u64,
                Some(w) if w < 0 => {
                    self.errors.push(origin.error(
                        format!("{field}.weight"),
                        format!("must not be negative, got {w}"),
                    ));
                    0
                }
                _ => {
                    self.errors.push(origin.error(
                        format!("{field}.weight"),
                        format!("must be a whole number from 0 to {MAX_WEIGHT}, got {n}"),
                    ));
                    0
                }
            },
            Some(other) => {
                let shown = serde_yaml::to_string(other).unwrap_or_default();
                self.errors.push(origin.error(
                    format!("{field}.weight"),
                    format!(
                        "must be a whole number from 0 to {MAX_WEIGHT}, got {}",
                        shown.trim()
                    ),
                ));
                0
            }
        };
        if self.errors.len() != before {
            return None;
        }
        let namespace = b
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| namespace.to_string());
        let target = match (proxy, port) {
            (Some(p), _) if p.services.contains_key(&b.name) => {
                BackendTarget::Service(b.name.clone())
            }
            (_, Some(port)) => BackendTarget::Dns(Endpoint::Dns {
                host: format!(
                    "{}.{namespace}.svc.cluster.local",
                    b.name.to_ascii_lowercase()
                ),
                port,
            }),
            (_, None) => {
                self.warnings.push(format!(
                    "{}",
                    origin.error(
                        field,
                        format!(
                            "backendRef {:?} resolves to nothing (not in spec.services of the Proxy document, and no port for its cluster DNS name): its share of the rule is answered 500",
                            b.name
                        ),
                    )
                ));
                BackendTarget::Unresolved
            }
        };
        Some(GatewayBackend {
            name: b.name,
            namespace,
            port,
            weight,
            target,
        })
    }

    /// TrafficSplits and HTTPRoutes share one host table: a host that both route would
    /// make the choice between them arbitrary.
    pub(super) fn check_host_clash(&mut self, splits: &[TrafficSplit], routes: &[HttpRoute]) {
        let mut split_hosts: HashMap<&str, &TrafficSplit> = HashMap::new();
        for s in splits {
            for h in &s.hosts {
                split_hosts.entry(h.as_str()).or_insert(s);
            }
        }
        for r in routes {
            for (i, h) in r.hostnames.iter().enumerate() {
                if let Some(s) = split_hosts.get(h.as_str()) {
                    self.errors.push(r.origin.error(
                        format!("spec.hostnames[{i}]"),
                        format!(
                            "host {h:?} is also routed by TrafficSplit {}/{} ({}): a host is routed by TrafficSplits or by HTTPRoutes, not both",
                            s.namespace, s.name, s.origin
                        ),
                    ));
                }
            }
        }
    }
}

fn catch_all() -> GatewayMatch {
    GatewayMatch {
        path: PathMatch::Prefix(String::new()),
        headers: Vec::new(),
        query: Vec::new(),
        method: None,
    }
}

fn placeholder_split(origin: &Origin) -> TrafficSplit {
    TrafficSplit {
        origin: origin.clone(),
        api_version: String::new(),
        name: String::new(),
        namespace: String::new(),
        service: String::new(),
        hosts: Vec::new(),
        backends: Vec::new(),
        matches: Vec::new(),
        selection: Selection::Random,
        service_account: String::new(),
        fallback: None,
    }
}

fn unsupported_filter(origin: &Origin, field: &str, filter: &Value) -> crate::config::ConfigError {
    let kind = filter
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("without a type");
    origin.error(field, format!("not supported by splitproxy (type {kind})"))
}

/// A regular expression that must match the whole value.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regular expression: {e}"))
}

/// An `Exact` or `PathPrefix` value: an absolute path without the forms a normalised
/// request path never has (they could never match).
fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!(
            "must be an absolute path starting with /, got {value:?}"
        ));
    }
    let lower = value.to_ascii_lowercase();
    let bad = value.contains("//")
        || value.contains('?')
        || value.contains('#')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || value.split('/').any(|seg| seg == "." || seg == "..");
    if bad {
        return Err(format!(
            "{value:?} can never match a request path: no //, no . or .. segment, no ?, # or encoded / or \\"
        ));
    }
    Ok(())
}

/// A `spec.hostnames` entry, lower-case, trailing dot removed: a DNS name, or `*.` and
/// one. The specification allows no IP address and no bare `*`.
fn hostname(h: &str) -> Result<String, String> {
    let lower = h.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || lower.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "expected a host name such as foo.example.com or *.example.com, got {h:?}"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "an IP address is not a host name (Gateway API): {h:?}"
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Foo.Example.com."), Ok("foo.example.com".into()));
        assert_eq!(hostname("*.example.com"), Ok("*.example.com".into()));
        for bad in ["*", "*.", "a..b", "-a.b", "a_b.c", "10.0.0.1", "a.*.b", ""] {
            assert!(hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("/foo/bar").is_ok());
        assert!(check_path("/").is_ok());
        for bad in ["foo", "/a//b", "/a/../b", "/a/./b", "/a%2Fb", "/a?b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
