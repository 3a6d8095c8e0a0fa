//! Building a table from a validated configuration, off the request path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use rustc_hash::FxHashMap;

use crate::access::Policy;
use crate::config::{AccessMode, Config, ConfigError, Protocol, Selection, StickyKey};
use crate::metrics::Metrics;
use crate::split::{Rendezvous, Schedule, WeightedPicker};
use crate::upstream::{Tls, TlsClientKey, Transport};

use super::{endpoints, Backend, Endpoints, Route, RoutingTable, Selector, Split};

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
            index,
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
    let routes = grouped
        .into_iter()
        .map(|s| Route { splits: s.into() })
        .collect();
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
        routes,
        splits: splits.into(),
        tls_clients: tls.into_values().collect(),
        unrouted: metrics.backend(NONE_LABEL, NONE_LABEL),
        config: config.clone(),
    }
}
