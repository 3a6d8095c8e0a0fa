//! Prometheus metrics. Families are registered once at start; the routing table holds
//! handles to each backend's series, fetched when the table is built, so the request path
//! only increments atomics (no label hashing, no lock). Series live in the families, not in
//! the table, so they survive reloads and never go backwards.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub split: String,
    pub backend: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Status classes counted per backend: 1xx .. 5xx.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: Family<BackendLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    pub config_version: Gauge,
    pub last_reload_seconds: Gauge<f64, AtomicU64>,
}

/// One backend's request counters, by status class.
#[derive(Clone, Debug, Default)]
pub struct BackendCounters {
    by_class: [Counter; 5],
}

impl BackendCounters {
    #[inline]
    pub fn observe(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
    }

    pub fn total(&self) -> u64 {
        self.by_class.iter().map(Counter::get).sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("splitproxy");
        let requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by split, backend and status class",
            requests.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration loads, by result (ok, error)",
            reloads.clone(),
        );
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes on the proxy listener, by reason",
            handshake_failures.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version of the live configuration (1 = first load)",
            config_version.clone(),
        );
        let last_reload_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            last_reload_seconds.clone(),
        );
        // every result series exists from the start
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        Metrics {
            registry,
            requests,
            reloads,
            handshake_failures,
            config_version,
            last_reload_seconds,
        }
    }

    /// Handles for one backend of one split; creates its series at 0 if they are new.
    pub fn backend(&self, split: &str, backend: &str) -> BackendCounters {
        let by_class = CLASSES.map(|code| {
            self.requests
                .get_or_create(&BackendLabels {
                    split: split.into(),
                    backend: backend.into(),
                    code: code.into(),
                })
                .clone()
        });
        BackendCounters { by_class }
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
