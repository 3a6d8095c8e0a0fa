//! The routing table: everything a request needs, resolved once per configuration load
//! and published as one immutable value (`ArcSwap<RoutingTable>` in `live::Live`).
//!
//! A request does one hash lookup of its host (already lower-case keys, port stripped),
//! walks the route's splits (conditional ones first), draws one weighted pick and one
//! endpoint: `RoutingTable::route` returns all of it as one `Routed`, or the `Refused`
//! answer with the series it is counted in. No lock, no allocation, no string hashing
//! beyond that lookup.

mod build;
pub mod describe;
pub mod endpoints;
pub mod gateway;
mod outlier;

use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request};
use rustc_hash::FxHashMap;

use crate::access::{Policy, Principal};
use crate::config::{Config, HttpMatch, HttpRoute, OutlierDetection, Timeouts, TrafficSplit};
use crate::health::{Global, ServiceHealth};
use crate::metrics::BackendCounters;
use crate::response::ProxyError;
use crate::split::{with_rng, Rendezvous, Schedule, WeightedPicker};
use crate::upstream::{Tls, Transport};

pub use self::describe::diff;
pub use self::endpoints::{Endpoints, Picked, DNS_REFRESH};
pub use self::gateway::RuleEntry;
pub use self::outlier::Tried;

pub struct RoutingTable {
    /// 1 for the first configuration loaded, +1 per successful reload.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub timeouts: Timeouts,
    pub expose_backend: bool,
    /// `retries.attempts`: extra tries of a request that never reached a backend.
    pub retries: u32,
    pub outlier: OutlierDetection,
    /// `limits.requestBodyBytes`; `None`: unlimited.
    pub body_limit: Option<u64>,
    /// Endpoint health: the one load a healthy pick makes.
    pub health: Arc<Global>,
    hosts: FxHashMap<Box<str>, usize>,
    /// HTTPRoute `*.` hostnames by their suffix (`example.com` for `*.example.com`): looked
    /// up, longest suffix first, only when `hosts` misses.
    wildcards: FxHashMap<Box<str>, usize>,
    /// The route of the HTTPRoutes without hostnames: every host nothing else routes.
    any_host: Option<usize>,
    routes: Box<[Route]>,
    splits: Box<[Arc<Split>]>,
    /// TLS-originating clients of this table, offered to the next build for reuse.
    tls_clients: Vec<Arc<Tls>>,
    /// Where requests that reach no split are counted (400 no host, 404 no route).
    unrouted: Arc<BackendCounters>,
}

/// Every split that shares one root service: conditional ones (`spec.matches`) in document
/// order, then at most one catch-all. Or, for a host of HTTPRoutes, their matches in
/// precedence order (`gateway`), each naming its rule's split: a host is routed by one
/// kind or the other, never both (validation).
pub struct Route {
    splits: Box<[Arc<Split>]>,
    rules: Box<[RuleEntry]>,
}

pub struct Split {
    /// The configuration this split was built from, and its place in `config.splits`:
    /// names, hosts and selection are read from there, not copied (a reload of 1 000
    /// splits would otherwise spend most of its time allocating them).
    config: Arc<Config>,
    source: Source,
    selector: Selector,
    matches: Box<[HttpMatch]>,
    picker: WeightedPicker,
    pub backends: Box<[Arc<Backend>]>,
    /// Where an all-zero split sends traffic (the root service, when `spec.services` has it).
    pub fallback: Option<Arc<Backend>>,
    /// Who may call this split; `None` under `access: permissive`.
    pub policy: Option<Policy>,
    /// Where the split's requests that reach no backend are counted (403, 503).
    unpicked: Arc<BackendCounters>,
    /// A failed request has somewhere else to go: more than one member that can be
    /// picked, or a member with more than one endpoint (or DNS names, which may resolve
    /// to several). Without, no retry is possible and no replay copy is taken.
    pub alternatives: bool,
}

/// Where a split's document is in `Split::config`.
#[derive(Clone, Copy)]
enum Source {
    /// `config.splits[i]`
    Split(usize),
    /// Rule `rule` of `config.httproutes[route]`.
    Rule { route: usize, rule: usize },
}

pub struct Backend {
    pub service: String,
    pub weight: u64,
    /// `x-splitproxy-backend` value, made once.
    pub header: HeaderValue,
    pub endpoints: Endpoints,
    /// The service's endpoint health, shared with every split that uses the service.
    pub health: Arc<ServiceHealth>,
    pub transport: Transport,
    pub counters: Arc<BackendCounters>,
    /// The backend's request count when this table was built: `/routes` shows the
    /// share observed since the last reload without a second counter per request.
    pub baseline: u64,
    /// An HTTPRoute backendRef that resolves to nothing: its picks are answered 500.
    pub unresolved: bool,
}

/// A routed request: the split, its picked backend (`slot` in `split.members()`) and
/// endpoint, and the cookie that keeps a sticky client where it landed.
pub struct Routed<'t> {
    pub split: &'t Split,
    pub slot: usize,
    pub backend: &'t Arc<Backend>,
    pub endpoint: Picked,
    pub set_cookie: Option<HeaderValue>,
}

/// A request the proxy answers itself, and the series that counts it.
pub struct Refused<'t> {
    /// Boxed: the happy path's `Result` stays small.
    pub error: Box<ProxyError>,
    pub counters: &'t BackendCounters,
}

// === impl RoutingTable ===

impl RoutingTable {
    /// Route one request: host -> route -> split (matches) -> access -> backend -> endpoint.
    /// `principal`/`caller`: the verified client, for `access: enforce` and its 403.
    #[inline]
    pub fn route<'t, B>(
        &'t self,
        req: &Request<B>,
        principal: Option<&Principal>,
        caller: &str,
    ) -> Result<Routed<'t>, Refused<'t>> {
        let refuse = |counters, error| Refused {
            error: Box::new(error),
            counters,
        };
        let Some(host) = request_host(req) else {
            return Err(refuse(&self.unrouted, ProxyError::NoHost));
        };
        let Some(route) = self.lookup(host) else {
            return Err(refuse(
                &self.unrouted,
                ProxyError::NoRoute(host.to_string()),
            ));
        };
        let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
        let Some(split) = route.select(method, path, req.uri().query(), headers) else {
            let error = ProxyError::NoMatch {
                host: host.to_string(),
                method: method.clone(),
                path: path.to_string(),
            };
            return Err(refuse(&self.unrouted, error));
        };
        if let Some(policy) = &split.policy {
            if !policy.allows(principal, method, path, headers) {
                let error = ProxyError::Forbidden {
                    identity: caller.to_string(),
                    service: split.source().service.clone(),
                };
                return Err(refuse(&split.unpicked, error));
            }
        }
        // while nothing in the process is ejected, this one load is all outlier detection costs
        let (slot, endpoint, set_cookie) = if self.health.any_ejected() {
            split.pick_live(headers, self.health.now())
        } else {
            let (slot, cookie) = split.pick_slot(headers);
            (
                slot,
                slot.and_then(|i| split.members()[i].endpoints.pick_index()),
                cookie,
            )
        };
        let Some(slot) = slot else {
            let src = split.source();
            let label = format!("{}/{}", src.namespace, src.name);
            let error = if split.gateway().is_some() && split.members().is_empty() {
                // the specification: a rule with nothing to send to answers 500
                ProxyError::NoRuleBackend(label)
            } else if split.members().is_empty() {
                ProxyError::NoBackend(label)
            } else {
                ProxyError::NoLiveBackend(label)
            };
            return Err(refuse(&split.unpicked, error));
        };
        let backend = &split.members()[slot];
        if backend.unresolved {
            let src = split.source();
            let error = ProxyError::UnresolvedBackendRef {
                rule: format!("{}/{}", src.namespace, src.name),
                backend: backend.service.clone(),
            };
            return Err(refuse(&backend.counters, error));
        }
        let Some(endpoint) = endpoint else {
            let error = ProxyError::NoEndpoint(backend.service.clone());
            return Err(refuse(&backend.counters, error));
        };
        Ok(Routed {
            split,
            slot,
            backend,
            endpoint,
            set_cookie,
        })
    }

    /// The route for a request's host (`Host` or `:authority`): port ignored,
    /// case-insensitive, trailing dot ignored.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&Route> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_lower(host);
        }
        // lower-case on the stack: host names are at most 253 bytes
        let mut buf = [0u8; 256];
        let bytes = host.as_bytes();
        if bytes.len() > buf.len() {
            return None;
        }
        for (d, s) in buf.iter_mut().zip(bytes) {
            *d = s.to_ascii_lowercase();
        }
        let lower = std::str::from_utf8(&buf[..bytes.len()]).ok()?;
        self.lookup_lower(lower)
    }

    /// `lookup` of a lower-case host without port or trailing dot: the exact name, else
    /// the longest `*.` wildcard of an HTTPRoute (one label or more in front of its
    /// suffix, never the bare suffix), else the HTTPRoutes without hostnames.
    #[inline]
    fn lookup_lower(&self, host: &str) -> Option<&Route> {
        if let Some(&i) = self.hosts.get(host) {
            return Some(&self.routes[i]);
        }
        if !self.wildcards.is_empty() {
            // left to right: the first suffix found is the longest
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                if dot == 0 {
                    break;
                }
                rest = &rest[dot + 1..];
                if let Some(&i) = self.wildcards.get(rest) {
                    return Some(&self.routes[i]);
                }
            }
        }
        self.any_host.map(|i| &self.routes[i])
    }

    pub fn splits(&self) -> &[Arc<Split>] {
        &self.splits
    }

    /// The series of the proxy's own answers that reach no split (no host, no route, and
    /// the connection-level ones: a refused head, 408, 431).
    pub fn unrouted(&self) -> &Arc<BackendCounters> {
        &self.unrouted
    }
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

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
#[inline]
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    // the digits after the last ':', scanned as bytes from the end: this runs on every
    // request, and `rsplit_once`'s char searcher counted more (README, "Where issue 13 stands")
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    match b.len().checked_sub(digits + 1) {
        Some(colon) if b[colon] == b':' => &host[..colon],
        _ => host,
    }
}

// === impl Route ===

impl Route {
    /// The first split whose `spec.matches` accept the request, or the catch-all; for
    /// HTTPRoutes, the rule of the first match in precedence order that accepts it.
    #[inline]
    pub fn select(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&Arc<Split>> {
        if !self.rules.is_empty() {
            return self
                .rules
                .iter()
                .find(|r| r.matcher.accepts(method, path, query, headers))
                .map(|r| &r.split);
        }
        self.splits.iter().find(|s| {
            s.matches.is_empty() || s.matches.iter().any(|m| m.accepts(method, path, headers))
        })
    }
}

impl HttpMatch {
    pub fn accepts(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        if let Some(re) = &self.path {
            if !re.is_match(path) {
                return false;
            }
        }
        self.headers.iter().all(|(name, re)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().map(|v| re.is_match(v)).unwrap_or(false))
        })
    }
}

// === impl Split ===

/// How one split chooses, compiled from its `Selection`.
enum Selector {
    /// Every weight is 0: the fallback (root service) or nothing.
    Fallback,
    Random,
    Deterministic(Schedule),
    StickyHeader(HeaderName, Rendezvous),
    StickyCookie(String, Rendezvous),
}

impl Split {
    /// The `TrafficSplit` document as loaded: name, namespace, service, hosts, selection.
    ///
    /// For an HTTPRoute rule, the rule as a split (`GatewayRule::split`): named
    /// `<route>/rules[<i>]`, its backends the backendRefs.
    pub fn source(&self) -> &TrafficSplit {
        match self.source {
            Source::Split(i) => &self.config.splits[i],
            Source::Rule { route, rule } => &self.config.httproutes[route].rules[rule].split,
        }
    }

    /// The HTTPRoute and the rule's place in it, when this split is an HTTPRoute rule.
    pub fn gateway(&self) -> Option<(&HttpRoute, usize)> {
        match self.source {
            Source::Split(_) => None,
            Source::Rule { route, rule } => Some((&self.config.httproutes[route], rule)),
        }
    }

    /// The backend for one request, by the split's selection policy, or the fallback when
    /// every weight is 0. With a sticky cookie missing from the request, also the
    /// `set-cookie` value that keeps the client on the backend it got.
    #[inline]
    pub fn pick(&self, headers: &HeaderMap) -> (Option<&Arc<Backend>>, Option<HeaderValue>) {
        let (slot, cookie) = self.pick_slot(headers);
        (slot.map(|i| &self.members()[i]), cookie)
    }

    /// As `pick`, as a place in `members()`.
    #[inline]
    pub fn pick_slot(&self, headers: &HeaderMap) -> (Option<usize>, Option<HeaderValue>) {
        self.select(headers, None::<fn(usize) -> bool>)
    }

    /// What a request can be sent to: the backends, or the fallback alone when every
    /// weight is 0 (empty without one).
    #[inline]
    pub fn members(&self) -> &[Arc<Backend>] {
        match self.selector {
            Selector::Fallback => self.fallback.as_slice(),
            _ => &self.backends,
        }
    }

    /// Where the split's requests that reach no backend are counted.
    pub fn unpicked(&self) -> &BackendCounters {
        &self.unpicked
    }

    /// The selection policy's choice of a member, among those `keep` accepts when given
    /// (a masked choice renormalises over them: `split::WeightedPicker::pick_where`).
    #[inline]
    fn select<K: FnMut(usize) -> bool>(
        &self,
        headers: &HeaderMap,
        mut keep: Option<K>,
    ) -> (Option<usize>, Option<HeaderValue>) {
        let mut cookie = None;
        let random = |keep: &mut Option<K>| match keep {
            None => self.picker.pick(),
            Some(k) => self.picker.pick_where(k),
        };
        // `Rendezvous::pick` is `pick_where` keeping everything: one call serves both
        let sticky = |hash: &Rendezvous, key: &[u8], keep: &mut Option<K>| {
            hash.pick_where(key, |i| keep.as_mut().is_none_or(|k| k(i)))
        };
        let index = match &self.selector {
            Selector::Fallback => {
                let kept = keep.as_mut().is_none_or(|k| k(0));
                (self.fallback.is_some() && kept).then_some(0)
            }
            Selector::Random => random(&mut keep),
            Selector::Deterministic(schedule) => match &mut keep {
                None => Some(schedule.pick()),
                Some(k) => schedule.pick_where(k),
            },
            Selector::StickyHeader(name, hash) => match headers.get(name) {
                Some(key) => sticky(hash, key.as_bytes(), &mut keep),
                None => random(&mut keep),
            },
            Selector::StickyCookie(name, hash) => match cookie_value(headers, name) {
                Some(key) => sticky(hash, key, &mut keep),
                None => {
                    // a fresh random key: rendezvous on a random key is a weighted random pick
                    let key = format!("{:016x}", with_rng(rand::Rng::random::<u64>));
                    let index = sticky(hash, key.as_bytes(), &mut keep);
                    if index.is_some() {
                        cookie = HeaderValue::try_from(format!("{name}={key}; Path=/")).ok();
                    }
                    index
                }
            },
        };
        (index, cookie)
    }

    pub fn total_weight(&self) -> u64 {
        self.picker.total()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then_some(&v[1..])
        })
    })
}

// === impl Backend ===

impl Backend {
    /// Requests answered by this backend since the table was built.
    pub fn observed(&self) -> u64 {
        self.counters.total().saturating_sub(self.baseline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a.b:8080"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.b:"), "a.b");
        assert_eq!(strip_port(":80"), "");
        assert_eq!(strip_port("a:b:80"), "a:b");
        assert_eq!(strip_port("a:x80"), "a:x80");
        assert_eq!(strip_port("80"), "80");
        assert_eq!(strip_port(""), "");
    }
}
