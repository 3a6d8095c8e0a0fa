//! A backend's upstream addresses. IP literals are fixed for the table's life; DNS names are
//! resolved when the table is built and then every `DNS_REFRESH`, by a task that ends when
//! the table is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Endpoint;
use crate::split::with_rng;

use super::Backend;

/// How often DNS names in `spec.services` are resolved again (Envoy's default refresh).
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

pub enum Endpoints {
    Fixed(Box<[SocketAddr]>),
    Resolved {
        names: Vec<Endpoint>,
        current: ArcSwap<Box<[SocketAddr]>>,
    },
}

impl Endpoints {
    pub(super) fn new(list: &[Endpoint]) -> Endpoints {
        let fixed: Option<Box<[SocketAddr]>> = list.iter().map(Endpoint::ip).collect();
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
        match self {
            Endpoints::Fixed(list) => choose(list),
            Endpoints::Resolved { current, .. } => choose(&current.load()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoints::Fixed(list) => join(list.iter()),
            Endpoints::Resolved { names, current } => {
                let resolved = current.load();
                format!(
                    "{} (resolved: {})",
                    join(names.iter()),
                    if resolved.is_empty() {
                        "none yet".to_string()
                    } else {
                        join(resolved.iter())
                    }
                )
            }
        }
    }

    /// Endpoint addresses as strings (for `/routes`).
    pub fn list(&self) -> Vec<String> {
        match self {
            Endpoints::Fixed(list) => list.iter().map(ToString::to_string).collect(),
            Endpoints::Resolved { current, .. } => {
                current.load().iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[inline]
fn choose(list: &[SocketAddr]) -> Option<SocketAddr> {
    match list.len() {
        0 => None,
        1 => Some(list[0]),
        n => list
            .get(with_rng(|rng| rand::Rng::random_range(rng, 0..n)))
            .copied(),
    }
}

/// Resolve every DNS-named backend of a new table (bounded by `limit` per name), then keep
/// them fresh.
pub(super) async fn resolve_all(backends: &[&Arc<Backend>], limit: Duration) {
    for backend in backends {
        if let Endpoints::Resolved { names, current } = &backend.endpoints {
            current.store(Arc::new(resolve(names, limit).await.unwrap_or_default()));
            tokio::spawn(refresh(Arc::downgrade(*backend), limit));
        }
    }
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
                if **current.load() != list {
                    tracing::info!("{}: endpoints now {}", b.service, join(list.iter()));
                    current.store(Arc::new(list));
                }
            }
        }
    }
}
