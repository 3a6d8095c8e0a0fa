//! Prometheus metrics. Families are registered once at start; the routing table holds
//! handles to each backend's series, fetched when the table is built, so the request path
//! only increments atomics (no label hashing, no lock). Series live in the families, not in
//! the table, so they survive reloads and never go backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::health;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

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
pub struct BackendOnly {
    pub split: String,
    pub backend: String,
}

/// Upper bounds (seconds) of the request duration buckets: 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of atomics: prometheus-client's own takes a lock per observation, and
/// the request path takes none.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One more than the bounds: the last is +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum in nanoseconds (an integer, so it can be an atomic add).
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    #[inline]
    pub fn observe(&self, seconds: f64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
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
    durations: Family<BackendOnly, LatencyHistogram>,
    connect_failures: Family<BackendOnly, Counter>,
    timeouts: Family<BackendOnly, Counter>,
    retries: Family<BackendOnly, Counter>,
    /// Endpoint health (outlier detection): per process, like the series, and surviving
    /// reloads for the same reason.
    pub health: health::Registry,
    /// Open downstream connections.
    pub active_connections: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    pub config_version: Gauge,
    pub last_reload_seconds: Gauge<f64, AtomicU64>,
    /// Access log lines lost: the writer's queue was full (stdout slower than the traffic)
    /// or stdout refused the write.
    pub access_log_dropped: Counter,
    /// split -> backend -> handles; series are never removed, so neither are these.
    handles: Mutex<FxHashMap<Box<str>, ByBackend>>,
}

/// Shared, so that a table build copies one pointer per backend, not eight: at 1 000 splits
/// the eight reference counts were cache misses that showed in the reload time.
type ByBackend = FxHashMap<Box<str>, Arc<BackendCounters>>;

/// One backend's series: requests by status class, duration, connect failures, timeouts
/// and retries. Handles to atomics; cloning one is cheap and made once per table build.
#[derive(Clone, Debug, Default)]
pub struct BackendCounters {
    /// The series' split and backend, for the access log (one reference count per line).
    pub labels: Arc<Labels>,
    by_class: [Counter; 5],
    duration_handle: LatencyHistogram,
    pub connect_failures: Counter,
    pub timeouts: Counter,
    /// Tries of a request moved elsewhere after this backend could not be reached.
    pub retries: Counter,
}

/// A series' split and backend names; `None` where the metric label is `(none)` (the
/// routing table's label for a split or backend that a request did not reach).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub split: Option<Box<str>>,
    pub backend: Option<Box<str>>,
}

impl Labels {
    fn new(split: &str, backend: &str) -> Labels {
        let named = |l: &str| (l != NONE_LABEL).then(|| l.into());
        Labels {
            split: named(split),
            backend: named(backend),
        }
    }
}

/// `routing`'s label for what a request did not reach.
const NONE_LABEL: &str = "(none)";

impl BackendCounters {
    /// Record one request's duration (seconds) next to its status.
    #[inline]
    pub fn observe_duration(&self, seconds: f64) {
        self.duration_handle.observe(seconds);
    }

    #[inline]
    pub fn observe(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
    }

    /// One answered request: its status class and its duration since `started`.
    #[inline]
    pub fn record(&self, status: http::StatusCode, started: std::time::Instant) {
        self.observe(status);
        self.observe_duration(started.elapsed().as_secs_f64());
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
        let durations = Family::<BackendOnly, LatencyHistogram>::default();
        registry.register(
            "request_duration_seconds",
            "Time from request received to upstream response head (or the proxy's own answer), by split and backend",
            durations.clone(),
        );
        let connect_failures = Family::<BackendOnly, Counter>::default();
        registry.register(
            "upstream_connect_failures",
            "Requests answered 502 because the upstream could not be reached",
            connect_failures.clone(),
        );
        let timeouts = Family::<BackendOnly, Counter>::default();
        registry.register(
            "upstream_timeouts",
            "Requests answered 504 because the upstream did not answer in time",
            timeouts.clone(),
        );
        let retries = Family::<BackendOnly, Counter>::default();
        registry.register(
            "upstream_retries",
            "Requests tried again on another endpoint or backend after this backend could not be reached",
            retries.clone(),
        );
        let ejections = Family::<health::ServiceLabel, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by backend service",
            ejections.clone(),
        );
        let ejected = Family::<health::ServiceLabel, Gauge>::default();
        registry.register(
            "outlier_ejected_endpoints",
            "Endpoints ejected now by outlier detection, by backend service",
            ejected.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "active_connections",
            "Open downstream connections",
            active_connections.clone(),
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
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer's queue was full or stdout failed",
            access_log_dropped.clone(),
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
            durations,
            connect_failures,
            timeouts,
            retries,
            health: health::Registry::new(ejections, ejected),
            active_connections,
            reloads,
            handshake_failures,
            config_version,
            last_reload_seconds,
            access_log_dropped,
            handles: Mutex::default(),
        }
    }

    /// Handles for one backend of one split; creates its series at 0 if they are new.
    /// Cached by name: a reload of 1 000 splits fetches each backend's handles with one
    /// map lookup instead of eight label-set hashes and allocations.
    pub fn backend(&self, split: &str, backend: &str) -> Arc<BackendCounters> {
        let mut cache = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(split).and_then(|b| b.get(backend)) {
            return c.clone();
        }
        let counters = Arc::new(self.create_backend(split, backend));
        cache
            .entry(split.into())
            .or_default()
            .insert(backend.into(), counters.clone());
        counters
    }

    fn create_backend(&self, split: &str, backend: &str) -> BackendCounters {
        let by_class = CLASSES.map(|code| {
            self.requests
                .get_or_create(&BackendLabels {
                    split: split.into(),
                    backend: backend.into(),
                    code: code.into(),
                })
                .clone()
        });
        let labels = BackendOnly {
            split: split.into(),
            backend: backend.into(),
        };
        BackendCounters {
            labels: Arc::new(Labels::new(split, backend)),
            by_class,
            duration_handle: self.durations.get_or_create(&labels).clone(),
            connect_failures: self.connect_failures.get_or_create(&labels).clone(),
            timeouts: self.timeouts.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
        }
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
        // ejections that have ended show as ended, even where no pick has looked yet
        self.health.sweep();
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
