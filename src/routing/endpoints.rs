//! A backend's upstream addresses, each with its health entry (outlier detection). IP
//! literals are fixed for the table's life; DNS names are resolved when the table is built
//! and then every `DNS_REFRESH`, by a task that ends when the table is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Endpoint;
use crate::health::{EndpointHealth, ServiceHealth};
use crate::split::with_rng;

use super::Backend;

/// How often DNS names in `spec.services` are resolved again (Envoy's default refresh).
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

pub enum Endpoints {
    Fixed(Box<[Ep]>),
    Resolved {
        names: Vec<Endpoint>,
        current: ArcSwap<Box<[Ep]>>,
    },
}

/// One endpoint: its address and its (per-process) health.
pub struct Ep {
    pub addr: SocketAddr,
    pub health: Arc<EndpointHealth>,
}

/// The endpoint a request went to: its place in the backend's list when it was picked, and
/// its address (a DNS refresh may have changed the list since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    pub addr: SocketAddr,
}

impl Endpoints {
    pub(super) fn new(list: &[Endpoint], health: &ServiceHealth) -> Endpoints {
        let fixed: Option<Box<[Ep]>> = list
            .iter()
            .map(|e| e.ip().map(|addr| ep(addr, health)))
            .collect();
        match fixed {
            Some(fixed) => Endpoints::Fixed(fixed),
            None => Endpoints::Resolved {
                names: list.to_vec(),
                current: ArcSwap::from_pointee(Box::default()),
            },
        }
    }

    /// One address, chosen at random when there are several.
    #[inline]
    pub fn pick(&self) -> Option<SocketAddr> {
        self.pick_index().map(|p| p.addr)
    }

    /// One endpoint, chosen at random when there are several.
    #[inline]
    pub fn pick_index(&self) -> Option<Picked> {
        self.with_list(|list| {
            choose(list.len()).map(|index| Picked {
                index,
                addr: list[index].addr,
            })
        })
    }

    /// Run `f` on the current list.
    #[inline]
    pub fn with_list<R>(&self, f: impl FnOnce(&[Ep]) -> R) -> R {
        match self {
            Endpoints::Fixed(list) => f(list),
            Endpoints::Resolved { current, .. } => f(&current.load()),
        }
    }

    /// Run `f` on the health of the endpoint `picked` names, if it is still in the list.
    #[inline]
    pub fn with_health<R>(
        &self,
        picked: Picked,
        f: impl FnOnce(&EndpointHealth) -> R,
    ) -> Option<R> {
        self.with_list(|list| {
            list.get(picked.index)
                .filter(|e| e.addr == picked.addr)
                .map(|e| f(&e.health))
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoints::Fixed(list) => join(list.iter().map(|e| e.addr)),
            Endpoints::Resolved { names, current } => {
                let resolved = current.load();
                format!(
                    "{} (resolved: {})",
                    join(names.iter()),
                    if resolved.is_empty() {
                        "none yet".to_string()
                    } else {
                        join(resolved.iter().map(|e| e.addr))
                    }
                )
            }
        }
    }

    /// Endpoint addresses as strings (for `/routes`).
    pub fn list(&self) -> Vec<String> {
        self.with_list(|list| list.iter().map(|e| e.addr.to_string()).collect())
    }
}

fn ep(addr: SocketAddr, health: &ServiceHealth) -> Ep {
    Ep {
        addr,
        health: health.endpoint(addr),
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// A random index below `n`, without a draw when there is one choice.
#[inline]
pub(super) fn choose(n: usize) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        n => Some(with_rng(|rng| rand::Rng::random_range(rng, 0..n))),
    }
}

/// Resolve every DNS-named backend of a new table (bounded by `limit` per name), then keep
/// them fresh.
pub(super) async fn resolve_all(backends: &[&Arc<Backend>], limit: Duration) {
    for backend in backends {
        if let Endpoints::Resolved { names, current } = &backend.endpoints {
            let list = resolve(names, limit).await.unwrap_or_default();
            current.store(Arc::new(with_health(&list, &backend.health)));
            tokio::spawn(refresh(Arc::downgrade(*backend), limit));
        }
    }
}

fn with_health(list: &[SocketAddr], health: &ServiceHealth) -> Box<[Ep]> {
    list.iter().map(|a| ep(*a, health)).collect()
}

/// Every address of every name (IP literals as they are); `None` when nothing resolved.
async fn resolve(names: &[Endpoint], limit: Duration) -> Option<Box<[SocketAddr]>> {
    let mut out = Vec::new();
    for e in names {
        if let Some(addr) = e.ip() {
            out.push(addr);
            continue;
        }
        match tokio::time::timeout(limit, tokio::net::lookup_host(e.to_string())).await {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(err)) => tracing::warn!("cannot resolve {e}: {err}"),
            Err(_) => tracing::warn!(
                "cannot resolve {e}: no answer within {}",
                humantime::format_duration(limit)
            ),
        }
    }
    out.sort();
    out.dedup();
    (!out.is_empty()).then(|| out.into())
}

/// Re-resolve a backend's names until its table is dropped. A failed resolution keeps the
/// previous addresses.
async fn refresh(backend: Weak<Backend>, limit: Duration) {
    loop {
        tokio::time::sleep(DNS_REFRESH).await;
        let Some(b) = backend.upgrade() else { return };
        if let Endpoints::Resolved { names, current } = &b.endpoints {
            if let Some(list) = resolve(names, limit).await {
                let changed = !current
                    .load()
                    .iter()
                    .map(|e| e.addr)
                    .eq(list.iter().copied());
                if changed {
                    tracing::info!("{}: endpoints now {}", b.service, join(list.iter()));
                    current.store(Arc::new(with_health(&list, &b.health)));
                }
            }
        }
    }
}
