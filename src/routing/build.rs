//! Building a table from a validated configuration, off the request path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use rustc_hash::FxHashMap;

use crate::access::Policy;
use crate::config::{
    AccessMode, BackendTarget, Config, ConfigError, Protocol, Selection, StickyKey,
};
use crate::metrics::Metrics;
use crate::split::{Rendezvous, Schedule, WeightedPicker};
use crate::upstream::{Tls, TlsClientKey, Transport};

use super::{endpoints, gateway, Backend, Endpoints, Route, RoutingTable, Selector, Source, Split};

/// The metric label of a split or backend that a request did not reach.
pub const NONE_LABEL: &str = "(none)";

impl RoutingTable {
    /// Build the table for a validated configuration. TLS-originating clients whose
    /// settings and files are unchanged are taken from `previous`, so their pools survive
    /// the reload. Resolves DNS names (bounded by the connect timeout); a name that does
    /// not resolve yet leaves that endpoint empty.
    ///
    /// Fails only when an upstream TLS service's CA or client certificate is unusable.
    /// Nothing outside the returned table changes (metric series aside, created at 0).
    pub async fn build(
        config: Arc<Config>,
        version: u64,
        metrics: &Metrics,
        previous: Option<&RoutingTable>,
    ) -> Result<RoutingTable, Vec<ConfigError>> {
        let tls = tls_clients(&config, previous)?;
        let table = assemble(config, version, metrics, tls);
        let backends: Vec<&Arc<Backend>> = table
            .splits
            .iter()
            .flat_map(|s| s.backends.iter().chain(s.fallback.iter()))
            .collect();
        endpoints::resolve_all(&backends, table.timeouts.connect).await;
        Ok(table)
    }
}

/// One TLS client per service that originates TLS, by service name.
fn tls_clients(
    config: &Config,
    previous: Option<&RoutingTable>,
) -> Result<FxHashMap<String, Arc<Tls>>, Vec<ConfigError>> {
    let mut clients = FxHashMap::default();
    let mut errors = Vec::new();
    for (name, service) in &config.proxy.services {
        let Some(tls) = &service.tls else { continue };
        let previous_clients = previous.into_iter().flat_map(|t| t.tls_clients.iter());
        let h2 = service.protocol == Protocol::H2;
        let client = TlsClientKey::new(tls, h2).and_then(|key| {
            match previous_clients.into_iter().find(|t| t.key == key) {
                Some(reused) => Ok(reused.clone()),
                None => key.build().map(Arc::new),
            }
        });
        match client {
            Ok(client) => {
                clients.insert(name.clone(), client);
            }
            Err(e) => {
                let field = format!("spec.services.{name}.tls");
                errors.push(config.proxy.origin.error(field, e.to_string()));
            }
        }
    }
    if errors.is_empty() {
        Ok(clients)
    } else {
        Err(errors)
    }
}

/// A backend of an HTTPRoute rule that is not a `spec.services` entry: a cluster DNS
/// name, or a backendRef that resolves to nothing (no endpoints, `unresolved`).
fn other_backend(
    metrics: &Metrics,
    split: &str,
    service: String,
    weight: u64,
    endpoints: &[crate::config::Endpoint],
    unresolved: bool,
) -> Arc<Backend> {
    let counters = metrics.backend(split, &service);
    let baseline = counters.total();
    let health = metrics.health.service(&service);
    Arc::new(Backend {
        header: HeaderValue::from_str(&service)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name")),
        endpoints: Endpoints::new(endpoints, &health),
        health,
        service,
        weight,
        transport: Transport {
            tls: None,
            h2: false,
        },
        counters,
        baseline,
        unresolved,
    })
}

fn assemble(
    config: Arc<Config>,
    version: u64,
    metrics: &Metrics,
    tls: FxHashMap<String, Arc<Tls>>,
) -> RoutingTable {
    let proxy = &config.proxy;
    let backend_of = |split: &str, service: &str, weight: u64| {
        let counters = metrics.backend(split, service);
        let baseline = counters.total();
        let health = metrics.health.service(service);
        Arc::new(Backend {
            service: service.to_string(),
            weight,
            header: HeaderValue::from_str(service)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-name")),
            endpoints: Endpoints::new(&proxy.services[service].endpoints, &health),
            health,
            transport: Transport {
                tls: tls.get(service).cloned(),
                h2: proxy.services[service].protocol == Protocol::H2,
            },
            counters,
            baseline,
            unresolved: false,
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
        let picker = WeightedPicker::new(&weights);
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
        let names: Vec<&str> = s.backends.iter().map(|b| b.service.as_str()).collect();
        let selector = match &s.selection {
            _ if picker.total() == 0 => Selector::Fallback,
            Selection::Random => Selector::Random,
            // a positive total always has a schedule; the arm above took the other case
            Selection::Deterministic => {
                Schedule::new(&weights).map_or(Selector::Fallback, Selector::Deterministic)
            }
            Selection::Sticky(StickyKey::Header(h)) => {
                Selector::StickyHeader(h.clone(), Rendezvous::new(&names, &weights))
            }
            Selection::Sticky(StickyKey::Cookie(c)) => {
                Selector::StickyCookie(c.clone(), Rendezvous::new(&names, &weights))
            }
        };
        let members = match selector {
            Selector::Fallback => fallback.as_slice(),
            _ => &backends,
        };
        let pickable = members
            .iter()
            .filter(|b| b.weight > 0 || matches!(selector, Selector::Fallback))
            .count();
        let alternatives = pickable > 1
            || members
                .iter()
                .any(|b| !matches!(&b.endpoints, Endpoints::Fixed(list) if list.len() <= 1));
        splits.push(Arc::new(Split {
            config: config.clone(),
            source: Source::Split(index),
            selector,
            matches,
            picker,
            backends,
            fallback,
            alternatives,
            policy: (proxy.access == AccessMode::Enforce).then(|| Policy::compile(s, &config)),
            unpicked: metrics.backend(&label, NONE_LABEL),
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
    let mut routes: Vec<Route> = grouped
        .into_iter()
        .map(|s| Route {
            splits: s.into(),
            rules: Box::default(),
        })
        .collect();
    // HTTPRoutes: one split per rule, then every host key with its matches in order
    let mut rule_splits: Vec<Vec<Arc<Split>>> = Vec::with_capacity(config.httproutes.len());
    for (ri, r) in config.httproutes.iter().enumerate() {
        let mut of_route = Vec::with_capacity(r.rules.len());
        for (qi, rule) in r.rules.iter().enumerate() {
            let src = &rule.split;
            label.clear();
            let _ = write!(label, "{}/{}", src.namespace, src.name);
            let backends: Box<[Arc<Backend>]> = rule
                .backends
                .iter()
                .map(|b| {
                    let service = b.label();
                    match &b.target {
                        BackendTarget::Service(name) => backend_of(&label, name, b.weight),
                        BackendTarget::Dns(endpoint) => {
                            let endpoints = std::slice::from_ref(endpoint);
                            other_backend(metrics, &label, service, b.weight, endpoints, false)
                        }
                        BackendTarget::Unresolved => {
                            other_backend(metrics, &label, service, b.weight, &[], true)
                        }
                    }
                })
                .collect();
            let weights: Vec<u64> = backends.iter().map(|b| b.weight).collect();
            let picker = WeightedPicker::new(&weights);
            let selector = if picker.total() == 0 {
                Selector::Fallback
            } else {
                Selector::Random
            };
            let pickable = backends
                .iter()
                .filter(|b| b.weight > 0 && !b.unresolved)
                .count();
            let alternatives = pickable > 1
                || backends
                    .iter()
                    .any(|b| !matches!(&b.endpoints, Endpoints::Fixed(list) if list.len() <= 1));
            let split = Arc::new(Split {
                config: config.clone(),
                source: Source::Rule {
                    route: ri,
                    rule: qi,
                },
                selector,
                matches: Box::default(),
                picker,
                backends,
                fallback: None,
                alternatives,
                policy: (proxy.access == AccessMode::Enforce)
                    .then(|| Policy::compile(src, &config)),
                unpicked: metrics.backend(&label, NONE_LABEL),
            });
            splits.push(split.clone());
            of_route.push(split);
        }
        rule_splits.push(of_route);
    }
    let mut wildcards: FxHashMap<Box<str>, usize> = FxHashMap::default();
    let mut any_host = None;
    for (key, rules) in gateway::host_entries(&config, &rule_splits) {
        let idx = routes.len();
        routes.push(Route {
            splits: Box::default(),
            rules: rules.into(),
        });
        match key.strip_prefix("*.") {
            Some(suffix) => {
                wildcards.insert(suffix.into(), idx);
            }
            None if key.is_empty() => any_host = Some(idx),
            // validation refused a host that a TrafficSplit routes too
            None => {
                hosts.entry(key.into()).or_insert(idx);
            }
        }
    }
    RoutingTable {
        version,
        loaded_at: SystemTime::now(),
        timeouts: proxy.timeouts,
        expose_backend: proxy.expose_backend,
        retries: proxy.retries.attempts,
        outlier: proxy.outlier_detection,
        body_limit: proxy.limits.request_body_bytes,
        health: metrics.health.global(),
        hosts,
        wildcards,
        any_host,
        routes: routes.into(),
        splits: splits.into(),
        tls_clients: tls.into_values().collect(),
        unrouted: metrics.backend(NONE_LABEL, NONE_LABEL),
        config: config.clone(),
    }
}
