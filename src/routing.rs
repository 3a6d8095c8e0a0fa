//! The routing table: everything a request needs, resolved once per configuration load
//! and published as one immutable value (`ArcSwap<RoutingTable>` in `app::Shared`).
//!
//! A request does one hash lookup of its host (already lower-case keys, port stripped),
//! walks the route's splits (conditional ones first), draws one weighted pick and one
//! endpoint. No lock, no allocation, no string hashing beyond that lookup.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rustc_hash::FxHashMap;

use crate::access::Policy;
use crate::config::ConfigError;
use crate::config::{AccessMode, Config, Endpoint, HttpMatch, Selection, StickyKey, Timeouts};
use crate::metrics::{BackendCounters, Metrics};
use crate::split::{with_rng, Rendezvous, Schedule, WeightedPicker};
use crate::upstream::{TlsClient, Upstream};

/// How often DNS names in `spec.services` are resolved again (Envoy's default refresh).
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

pub struct RoutingTable {
    /// 1 for the first configuration loaded, +1 per successful reload.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub timeouts: Timeouts,
    pub expose_backend: bool,
    hosts: FxHashMap<Box<str>, usize>,
    routes: Box<[Route]>,
    splits: Box<[Arc<Split>]>,
}

/// Every split that shares one root service: conditional ones (`spec.matches`) in document
/// order, then at most one catch-all.
pub struct Route {
    splits: Box<[Arc<Split>]>,
}

pub struct Split {
    /// The configuration this split was built from, and its place in `config.splits`:
    /// names, hosts and selection are read from there, not copied (a reload of 1 000
    /// splits would otherwise spend most of its time allocating them).
    config: Arc<Config>,
    index: usize,
    selector: Selector,
    matches: Box<[HttpMatch]>,
    picker: WeightedPicker,
    pub backends: Box<[Arc<Backend>]>,
    /// Where an all-zero split sends traffic (the root service, when `spec.services` has it).
    pub fallback: Option<Arc<Backend>>,
    /// Who may call this split; `None` under `access: permissive`.
    pub policy: Option<Policy>,
}

pub struct Backend {
    pub service: String,
    pub weight: u64,
    /// `x-splitproxy-backend` value, made once.
    pub header: HeaderValue,
    pub endpoints: Endpoints,
    /// The TLS-originating client for an HTTPS upstream; `None`: plain HTTP.
    pub tls: Option<Arc<TlsClient>>,
    pub counters: BackendCounters,
    /// The backend's request count when this table was built: `/routes` shows the
    /// share observed since the last reload without a second counter per request.
    pub baseline: u64,
}

/// Upstream addresses of one backend. IP literals are fixed for the table's life; DNS
/// names are resolved when the table is built and then every `DNS_REFRESH`.
pub enum Endpoints {
    Fixed(Box<[Authority]>),
    Resolved {
        names: Vec<Endpoint>,
        current: ArcSwap<Box<[Authority]>>,
    },
}

// === impl RoutingTable ===

impl RoutingTable {
    /// Build the table for a validated configuration. Resolves DNS names (bounded by the
    /// connect timeout); a name that does not resolve yet leaves that endpoint empty.
    ///
    /// Fails only when an upstream TLS service's CA or client certificate is unusable.
    pub async fn build(
        config: Arc<Config>,
        version: u64,
        metrics: &Metrics,
        upstream: &Upstream,
    ) -> Result<RoutingTable, Vec<ConfigError>> {
        let mut tls_clients = HashMap::new();
        let mut errors = Vec::new();
        for (name, service) in &config.proxy.services {
            let Some(tls) = &service.tls else { continue };
            match upstream.tls_client(tls, &tls.server_name) {
                Ok(client) => {
                    tls_clients.insert(name.clone(), client);
                }
                Err(reason) => {
                    let origin = &config.proxy.origin;
                    errors.push(ConfigError {
                        file: origin.file.to_path_buf(),
                        document: Some(origin.document),
                        object: Some(("Proxy".into(), origin.name.clone())),
                        field: Some(format!("spec.services.{name}.tls")),
                        reason,
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let table = Self::assemble(config, version, metrics, &tls_clients);
        table.resolve_all(table.timeouts.connect).await;
        Ok(table)
    }

    fn assemble(
        config: Arc<Config>,
        version: u64,
        metrics: &Metrics,
        tls_clients: &HashMap<String, Arc<TlsClient>>,
    ) -> RoutingTable {
        let proxy = &config.proxy;
        let backend_of = |split: &str, service: &str, weight: u64| {
            let endpoints = &proxy.services[service].endpoints;
            let counters = metrics.backend(split, service);
            let baseline = counters.total();
            Arc::new(Backend {
                service: service.to_string(),
                weight,
                header: header_value(service),
                endpoints: Endpoints::new(endpoints),
                tls: tls_clients.get(service).cloned(),
                counters,
                baseline,
            })
        };
        let mut splits = Vec::with_capacity(config.splits.len());
        let mut label = String::new();
        for (index, s) in config.splits.iter().enumerate() {
            label.clear();
            let _ = write!(label, "{}/{}", s.namespace, s.name);
            let backends: Box<[Arc<Backend>]> = s
                .backends
                .iter()
                .map(|b| backend_of(&label, &b.service, b.weight))
                .collect();
            let weights: Vec<u64> = s.backends.iter().map(|b| b.weight).collect();
            let fallback = s
                .fallback
                .as_deref()
                .map(|root| backend_of(&label, root, 0));
            let matches = s
                .matches
                .iter()
                .filter_map(|g| {
                    config
                        .route_groups
                        .iter()
                        .find(|rg| &rg.name == g && rg.namespace == s.namespace)
                })
                .flat_map(|g| g.matches.iter().cloned())
                .collect();
            splits.push(Arc::new(Split {
                config: config.clone(),
                index,
                selector: Selector::new(&s.selection, s, &weights),
                matches,
                picker: WeightedPicker::new(&weights),
                backends,
                fallback,
                policy: (proxy.access == AccessMode::Enforce).then(|| Policy::compile(s, &config)),
            }));
        }
        // group by host: conditional splits first (document order), then the catch-all
        let forms = config.splits.iter().map(|s| s.hosts.len()).sum();
        let mut hosts: FxHashMap<Box<str>, usize> =
            FxHashMap::with_capacity_and_hasher(forms, Default::default());
        let mut grouped: Vec<Vec<Arc<Split>>> = Vec::new();
        let ordered = splits
            .iter()
            .filter(|s| !s.matches.is_empty())
            .chain(splits.iter().filter(|s| s.matches.is_empty()));
        for split in ordered {
            // a split's host forms all map to one route: find it by its first form
            let host_forms = &split.source().hosts;
            let idx = match hosts.get(host_forms[0].as_str()) {
                Some(&i) => i,
                None => {
                    grouped.push(Vec::new());
                    grouped.len() - 1
                }
            };
            grouped[idx].push(split.clone());
            for h in host_forms {
                hosts.entry(h.as_str().into()).or_insert(idx);
            }
        }
        let routes = grouped
            .into_iter()
            .map(|s| Route { splits: s.into() })
            .collect();
        RoutingTable {
            version,
            loaded_at: SystemTime::now(),
            timeouts: proxy.timeouts,
            expose_backend: proxy.expose_backend,
            hosts,
            routes,
            splits: splits.into(),
            config: config.clone(),
        }
    }

    async fn resolve_all(&self, limit: Duration) {
        let backends: Vec<&Arc<Backend>> = self
            .splits
            .iter()
            .flat_map(|s| s.backends.iter().chain(s.fallback.iter()))
            .collect();
        for backend in backends {
            if let Endpoints::Resolved { names, current } = &backend.endpoints {
                current.store(Arc::new(resolve(names, limit).await.unwrap_or_default()));
                let weak = Arc::downgrade(backend);
                tokio::spawn(refresh_dns(weak, limit));
            }
        }
    }

    /// The route for a request's host (`Host` or `:authority`): port ignored,
    /// case-insensitive, trailing dot ignored.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&Route> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.hosts.get(host).map(|&i| &self.routes[i]);
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
        self.hosts.get(lower).map(|&i| &self.routes[i])
    }

    pub fn splits(&self) -> &[Arc<Split>] {
        &self.splits
    }

    /// Human-readable table, as `validate` prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let p = &self.config.proxy;
        let tls = match &p.tls {
            Some(t) => format!("mTLS, clientAuth {}", t.client_auth.name()),
            None => "plain HTTP".into(),
        };
        let access = format!("{:?}", p.access).to_lowercase();
        let _ = writeln!(
            out,
            "listen {} ({tls}), admin {}, access {access}",
            p.listen, p.admin
        );
        for s in self.splits.iter() {
            let src = s.source();
            let _ = writeln!(
                out,
                "\nsplit {}/{} ({})",
                src.namespace,
                src.name,
                src.hosts.join(", ")
            );
            if !s.matches.is_empty() {
                let names: Vec<&str> = s.matches.iter().map(|m| m.name.as_str()).collect();
                let _ = writeln!(out, "  when request matches: {}", names.join(", "));
            }
            let total = s.picker.total();
            for b in s.backends.iter() {
                let share = if total == 0 {
                    0.0
                } else {
                    100.0 * b.weight as f64 / total as f64
                };
                let _ = writeln!(
                    out,
                    "  -> {:<24} weight {:<8} {:>6.2}%  {}",
                    b.service,
                    b.weight,
                    share,
                    b.endpoints.describe()
                );
            }
            if total == 0 {
                match &s.fallback {
                    Some(f) => {
                        let _ = writeln!(
                            out,
                            "  all weights are 0: traffic goes to the root service {} {}",
                            f.service,
                            f.endpoints.describe()
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "  all weights are 0 and spec.services has no {}: requests get 503",
                            src.service
                        );
                    }
                }
            }
        }
        if self.splits.is_empty() {
            let _ = writeln!(out, "\nno TrafficSplit: every request gets 404");
        }
        out
    }
}

/// How one split chooses, compiled from its `Selection`.
enum Selector {
    Random,
    Deterministic(Schedule),
    StickyHeader(HeaderName, Rendezvous),
    StickyCookie(String, Rendezvous),
}

impl Selector {
    fn new(
        selection: &Selection,
        split: &crate::config::TrafficSplit,
        weights: &[u64],
    ) -> Selector {
        let names: Vec<&str> = split.backends.iter().map(|b| b.service.as_str()).collect();
        match selection {
            Selection::Random => Selector::Random,
            // all weights 0: no schedule, the random picker yields the fallback
            Selection::Deterministic => {
                Schedule::new(weights).map_or(Selector::Random, Selector::Deterministic)
            }
            Selection::Sticky(StickyKey::Header(h)) => {
                Selector::StickyHeader(h.clone(), Rendezvous::new(&names, weights))
            }
            Selection::Sticky(StickyKey::Cookie(c)) => {
                Selector::StickyCookie(c.clone(), Rendezvous::new(&names, weights))
            }
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then_some(&v[1..])
        })
    })
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
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

// === impl Route ===

impl Route {
    /// The first split whose `spec.matches` accept the request, or the catch-all.
    #[inline]
    pub fn select(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&Arc<Split>> {
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

impl Split {
    /// The backend for one request, by the split's selection policy, or the fallback when
    /// every weight is 0. With a sticky cookie missing from the request, also the
    /// `set-cookie` value that keeps the client on the backend it got.
    #[inline]
    /// The `TrafficSplit` document as loaded: name, namespace, service, hosts, selection.
    pub fn source(&self) -> &crate::config::TrafficSplit {
        &self.config.splits[self.index]
    }

    pub fn pick(&self, headers: &HeaderMap) -> (Option<&Arc<Backend>>, Option<HeaderValue>) {
        let mut cookie = None;
        let index = match &self.selector {
            Selector::Random => self.picker.pick(),
            Selector::Deterministic(schedule) => Some(schedule.pick()),
            Selector::StickyHeader(name, hash) => match headers.get(name) {
                Some(key) => hash.pick(key.as_bytes()),
                None => self.picker.pick(),
            },
            Selector::StickyCookie(name, hash) => match cookie_value(headers, name) {
                Some(key) => hash.pick(key),
                None => {
                    // a fresh random key: rendezvous on a random key is a weighted random pick
                    let key = format!("{:016x}", with_rng(rand::Rng::random::<u64>));
                    let index = hash.pick(key.as_bytes());
                    if index.is_some() {
                        cookie = HeaderValue::try_from(format!("{name}={key}; Path=/")).ok();
                    }
                    index
                }
            },
        };
        match index {
            Some(i) => (Some(&self.backends[i]), cookie),
            None => (self.fallback.as_ref(), None),
        }
    }

    pub fn total_weight(&self) -> u64 {
        self.picker.total()
    }
}

// === impl Backend ===

impl Backend {
    /// Requests answered by this backend since the table was built.
    pub fn observed(&self) -> u64 {
        self.counters.total().saturating_sub(self.baseline)
    }

    /// One endpoint, chosen at random when there are several.
    #[inline]
    pub fn endpoint(&self) -> Option<Authority> {
        match &self.endpoints {
            Endpoints::Fixed(list) => choose(list).cloned(),
            Endpoints::Resolved { current, .. } => choose(&current.load()).cloned(),
        }
    }
}

#[inline]
fn choose<T>(list: &[T]) -> Option<&T> {
    match list.len() {
        0 => None,
        1 => list.first(),
        n => list.get(with_rng(|rng| rand::Rng::random_range(rng, 0..n))),
    }
}

// === impl Endpoints ===

impl Endpoints {
    fn new(list: &[Endpoint]) -> Endpoints {
        if list.iter().all(|e| e.ip().is_some()) {
            let fixed = list
                .iter()
                .filter_map(Endpoint::ip)
                .map(authority)
                .collect();
            Endpoints::Fixed(fixed)
        } else {
            Endpoints::Resolved {
                names: list.to_vec(),
                current: ArcSwap::from_pointee(Box::default()),
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoints::Fixed(list) => list
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            Endpoints::Resolved { names, current } => {
                let resolved = current.load();
                let addrs: Vec<&str> = resolved.iter().map(|a| a.as_str()).collect();
                format!(
                    "{} (resolved: {})",
                    names
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if addrs.is_empty() {
                        "none yet".to_string()
                    } else {
                        addrs.join(", ")
                    }
                )
            }
        }
    }

    /// Endpoint addresses as strings (for `/routes`).
    pub fn list(&self) -> Vec<String> {
        match self {
            Endpoints::Fixed(list) => list.iter().map(|a| a.to_string()).collect(),
            Endpoints::Resolved { current, .. } => {
                current.load().iter().map(|a| a.to_string()).collect()
            }
        }
    }
}

/// Strings the request path clones per request (endpoint authorities, backend header
/// values) are interned as `'static`: cloning one is then a pointer copy instead of an
/// atomic reference count that every core would write. The set only grows with distinct
/// names ever configured, so it stays small.
fn intern(s: &str) -> &'static str {
    static TABLE: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = table.get(s) {
        return existing;
    }
    let leaked: &'static str = Box::leak(s.into());
    table.insert(leaked);
    leaked
}

/// Interned by address too: formatting an address is most of a large reload's cost.
fn authority(addr: SocketAddr) -> Authority {
    static SEEN: OnceLock<Mutex<FxHashMap<SocketAddr, &'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = *seen
        .entry(addr)
        .or_insert_with(|| intern(&addr.to_string()));
    Authority::from_static(s)
}

fn header_value(service: &str) -> HeaderValue {
    match HeaderValue::from_str(service) {
        Ok(_) => HeaderValue::from_static(intern(service)),
        Err(_) => HeaderValue::from_static("invalid-name"),
    }
}

/// Every address of every name (IP literals as they are); `None` when nothing resolved.
async fn resolve(names: &[Endpoint], limit: Duration) -> Option<Box<[Authority]>> {
    let mut out = Vec::new();
    for e in names {
        match e {
            Endpoint::Ip(addr) => out.push(*addr),
            Endpoint::Dns { host, port } => {
                match tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                {
                    Ok(Ok(addrs)) => out.extend(addrs),
                    Ok(Err(err)) => tracing::warn!("cannot resolve {e}: {err}"),
                    Err(_) => tracing::warn!("cannot resolve {e}: no answer within {limit:?}"),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    let list: Box<[Authority]> = out.into_iter().map(authority).collect();
    (!list.is_empty()).then_some(list)
}

/// Re-resolve a backend's names until its table is dropped. A failed resolution keeps the
/// previous addresses.
async fn refresh_dns(backend: Weak<Backend>, limit: Duration) {
    loop {
        tokio::time::sleep(DNS_REFRESH).await;
        let Some(b) = backend.upgrade() else { return };
        if let Endpoints::Resolved { names, current } = &b.endpoints {
            if let Some(list) = resolve(names, limit).await {
                if **current.load() != list {
                    tracing::info!(
                        "{}: endpoints now {:?}",
                        b.service,
                        list.iter().map(|a| a.as_str()).collect::<Vec<_>>()
                    );
                    current.store(Arc::new(list));
                }
            }
        }
    }
}

/// One line per change between two configurations' splits, for the reload log.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let key = |s: &crate::config::TrafficSplit| format!("{}/{}", s.namespace, s.name);
    let weights = |s: &crate::config::TrafficSplit| {
        s.backends
            .iter()
            .map(|b| format!("{}={}", b.service, b.weight))
            .collect::<Vec<_>>()
            .join(",")
    };
    for n in &new.splits {
        match old.splits.iter().find(|o| key(o) == key(n)) {
            None => out.push(format!("split {} added ({})", key(n), weights(n))),
            Some(o) if weights(o) != weights(n) || o.service != n.service => out.push(format!(
                "split {}: {} -> {}",
                key(n),
                weights(o),
                weights(n)
            )),
            Some(_) => {}
        }
    }
    for o in &old.splits {
        if !new.splits.iter().any(|n| key(n) == key(o)) {
            out.push(format!("split {} removed", key(o)));
        }
    }
    if old.proxy.services != new.proxy.services {
        out.push("services changed".into());
    }
    out
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
    }
}
