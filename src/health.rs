//! Endpoint health for passive outlier detection (DESIGN.md section 3): per process, shared
//! by every worker, and outside the immutable routing table, which refers to it. Entries
//! are keyed by service and endpoint address, like metric series, so a reload keeps an
//! ejection and its count.
//!
//! Everything on the request path is a relaxed atomic: a pick loads `Global::ejected`
//! once and, while nothing in the process is ejected, looks no further; a response loads
//! its endpoint's failure count and stores only when it was not already 0. Ejections are
//! rare and are decided one at a time (`Global::decide`, a try-lock that never waits: a
//! failure that finds another decision under way simply does not eject this time).
//! An ejection ends lazily: whoever looks at the endpoint after its time has passed (a
//! pick, `/routes`, `/metrics`) puts it back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustc_hash::FxHashMap;

/// The longest ejection, however often an endpoint was ejected (Envoy's
/// `max_ejection_time` default); a longer `baseEjectionTime` is used as it is.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Time in service that takes one off an endpoint's ejection multiplier (Envoy's default
/// outlier `interval`).
pub const DECAY_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub backend: String,
}

/// Every service's endpoint health, created as tables are built; entries are never
/// removed, so an endpoint that leaves a configuration and comes back keeps its history.
pub struct Registry {
    global: Arc<Global>,
    services: Mutex<FxHashMap<Box<str>, Arc<ServiceHealth>>>,
    ejections: Family<ServiceLabel, Counter>,
    ejected: Family<ServiceLabel, Gauge>,
}

/// What every pick reads, and the clock ejections are measured on.
pub struct Global {
    /// Endpoints ejected now, in the whole process.
    ejected: AtomicU32,
    /// Held while one ejection is decided.
    deciding: AtomicBool,
    epoch: Instant,
}

/// One service's endpoints.
pub struct ServiceHealth {
    global: Arc<Global>,
    /// Endpoints of this service ejected now (a hint: 0 means none; a positive count is
    /// checked endpoint by endpoint, since it may include ejections that have just ended).
    ejected: AtomicU32,
    endpoints: Mutex<FxHashMap<SocketAddr, Arc<EndpointHealth>>>,
    ejections_total: Counter,
    ejected_gauge: Gauge,
}

/// One endpoint (service, address).
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Consecutive connect failures and resets before a response head.
    failures: AtomicU32,
    /// Consecutive 5xx response heads.
    fives: AtomicU32,
    /// Ejected until this time (nanoseconds on `Global`'s clock); 0: in service.
    until: AtomicU64,
    /// Times ejected.
    ejections: AtomicU32,
    /// The ejection multiplier: +1 per ejection, -1 per `DECAY_INTERVAL` in service.
    multiplier: AtomicU32,
    /// When the last ejection ended (nanoseconds on `Global`'s clock).
    returned: AtomicU64,
    /// Length of the current or last ejection, in nanoseconds.
    last_ejection: AtomicU64,
}

/// What `/routes` shows of one endpoint.
pub struct Snapshot {
    pub ejected: bool,
    /// Time left of the current ejection.
    pub remaining: Duration,
    pub ejections: u32,
    pub last_ejection: Duration,
    pub failures: u32,
    pub fives: u32,
}

impl Registry {
    pub fn new(
        ejections: Family<ServiceLabel, Counter>,
        ejected: Family<ServiceLabel, Gauge>,
    ) -> Self {
        Registry {
            global: Arc::new(Global {
                ejected: AtomicU32::new(0),
                deciding: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
            services: Mutex::default(),
            ejections,
            ejected,
        }
    }

    pub fn global(&self) -> Arc<Global> {
        self.global.clone()
    }

    /// The health of `service`'s endpoints; its series are created at 0 if new.
    pub fn service(&self, service: &str) -> Arc<ServiceHealth> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = services.get(service) {
            return s.clone();
        }
        let label = ServiceLabel {
            backend: service.to_string(),
        };
        let s = Arc::new(ServiceHealth {
            global: self.global.clone(),
            ejected: AtomicU32::new(0),
            endpoints: Mutex::default(),
            ejections_total: self.ejections.get_or_create(&label).clone(),
            ejected_gauge: self.ejected.get_or_create(&label).clone(),
        });
        services.insert(service.into(), s.clone());
        s
    }

    /// End every ejection whose time has passed, including those of endpoints no table
    /// refers to any more (so the gauge and `Global::ejected` come back to 0).
    pub fn sweep(&self) {
        let now = self.global.now();
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        for s in services.values() {
            if s.may_have_ejected() {
                let endpoints = s.endpoints.lock().unwrap_or_else(|e| e.into_inner());
                for e in endpoints.values() {
                    s.is_ejected(e, now);
                }
            }
        }
    }
}

impl Global {
    /// Whether any endpoint in the process may be ejected: the one load of a healthy pick.
    #[inline]
    pub fn any_ejected(&self) -> bool {
        self.ejected.load(Relaxed) != 0
    }

    /// Now, on the clock ejections use.
    #[inline]
    pub fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// The right to decide one ejection, or `None` while another is being decided.
    pub fn decide(&self) -> Option<Deciding<'_>> {
        self.deciding
            .compare_exchange(false, true, Acquire, Relaxed)
            .ok()
            .map(|_| Deciding(&self.deciding))
    }
}

/// Held while an ejection is decided; released when dropped.
pub struct Deciding<'a>(&'a AtomicBool);

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.0.store(false, Release);
    }
}

impl ServiceHealth {
    /// The entry of one endpoint of this service.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.entry(addr).or_default().clone()
    }

    /// False when none of this service's endpoints is ejected.
    #[inline]
    pub fn may_have_ejected(&self) -> bool {
        self.ejected.load(Relaxed) != 0
    }

    /// Whether `e` (an endpoint of this service) is ejected at `now`. An ejection whose
    /// time has passed ends here.
    #[inline]
    pub fn is_ejected(&self, e: &EndpointHealth, now: u64) -> bool {
        let until = e.until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        // one caller wins the return and does the bookkeeping
        if e.until.compare_exchange(until, 0, Relaxed, Relaxed).is_ok() {
            e.returned.store(until, Relaxed);
            self.ejected.fetch_sub(1, Relaxed);
            self.global.ejected.fetch_sub(1, Relaxed);
            self.ejected_gauge.dec();
        }
        false
    }

    /// Eject `e` from `now` for `base` times its multiplier: the number of times it has
    /// been ejected (this one included), less one for every `DECAY_INTERVAL` it has spent
    /// in service since its last return (as Envoy's multiplier decays each `interval` a
    /// host stays healthy), so a backend that was restarted once is not out for minutes
    /// at its next failure. At most `MAX_EJECTION_TIME` unless `base` is longer. Call with
    /// a `Deciding` held, after `is_ejected` said no. Returns the ejection's length.
    pub fn eject(&self, e: &EndpointHealth, now: u64, base: Duration) -> Duration {
        e.ejections.fetch_add(1, Relaxed);
        let served = now.saturating_sub(e.returned.load(Relaxed)) / nanos(DECAY_INTERVAL);
        let earned = u32::try_from(served).unwrap_or(u32::MAX);
        let n = e
            .multiplier
            .load(Relaxed)
            .saturating_sub(earned)
            .saturating_add(1);
        e.multiplier.store(n, Relaxed);
        let length = base.saturating_mul(n).min(MAX_EJECTION_TIME.max(base));
        let nanos = nanos(length).max(1);
        e.last_ejection.store(nanos, Relaxed);
        e.failures.store(0, Relaxed);
        e.fives.store(0, Relaxed);
        // counted before the ejection is visible, so a return never runs the counts below 0
        self.ejected.fetch_add(1, Relaxed);
        self.global.ejected.fetch_add(1, Relaxed);
        self.ejected_gauge.inc();
        self.ejections_total.inc();
        e.until.store(now.saturating_add(nanos), Relaxed);
        length
    }

    pub fn snapshot(&self, e: &EndpointHealth, now: u64) -> Snapshot {
        let ejected = self.is_ejected(e, now);
        let until = e.until.load(Relaxed);
        Snapshot {
            ejected,
            remaining: Duration::from_nanos(if ejected {
                until.saturating_sub(now)
            } else {
                0
            }),
            ejections: e.ejections.load(Relaxed),
            last_ejection: Duration::from_nanos(e.last_ejection.load(Relaxed)),
            failures: e.failures.load(Relaxed),
            fives: e.fives.load(Relaxed),
        }
    }
}

impl EndpointHealth {
    /// One more connect failure or reset before a response head; the consecutive count.
    #[inline]
    pub fn failed(&self) -> u32 {
        self.failures.fetch_add(1, Relaxed).saturating_add(1)
    }

    /// A response head arrived: the failure run ends. No store when there was none.
    #[inline]
    pub fn answered(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// A response head with status class 5xx (`true`) or not, when 5xx are counted; the
    /// consecutive 5xx count.
    #[inline]
    pub fn answered_5xx(&self, is_5xx: bool) -> u32 {
        if is_5xx {
            self.fives.fetch_add(1, Relaxed).saturating_add(1)
        } else {
            if self.fives.load(Relaxed) != 0 {
                self.fives.store(0, Relaxed);
            }
            0
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Family::default(), Family::default())
    }

    #[test]
    fn ejection_lasts_base_times_count_and_ends_lazily() {
        let r = registry();
        let s = r.service("web");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = s.endpoint(addr);
        assert!(
            Arc::ptr_eq(&e, &r.service("web").endpoint(addr)),
            "one entry per key"
        );
        let base = Duration::from_millis(100);
        let g = r.global();
        assert!(!g.any_ejected());
        assert_eq!(s.eject(&e, 1_000, base), base);
        assert!(g.any_ejected() && s.may_have_ejected());
        assert!(s.is_ejected(&e, 1_000 + nanos(base) - 1));
        assert!(
            !s.is_ejected(&e, 1_000 + nanos(base)),
            "returns at its time"
        );
        assert!(!g.any_ejected() && !s.may_have_ejected());
        assert_eq!(
            s.eject(&e, 0, base),
            2 * base,
            "second ejection: twice as long"
        );
        assert_eq!(s.snapshot(&e, 0).ejections, 2);
        // capped at 300 s
        for _ in 0..5000 {
            s.is_ejected(&e, u64::MAX);
            s.eject(&e, 0, base);
        }
        assert_eq!(s.snapshot(&e, 0).last_ejection, MAX_EJECTION_TIME);
    }

    #[test]
    fn the_multiplier_decays_while_the_endpoint_serves() {
        let r = registry();
        let s = r.service("web");
        let e = s.endpoint("127.0.0.1:2".parse().unwrap());
        let base = Duration::from_secs(1);
        let interval = nanos(DECAY_INTERVAL);
        assert_eq!(s.eject(&e, 0, base), base);
        assert!(!s.is_ejected(&e, nanos(base)));
        // failing again at once: twice as long
        assert_eq!(s.eject(&e, nanos(base), base), 2 * base);
        let back = 3 * nanos(base);
        assert!(!s.is_ejected(&e, back));
        // one interval in service takes one off: 2 - 1 + 1
        assert_eq!(s.eject(&e, back + interval, base), 2 * base);
        let back = back + interval + 2 * nanos(base);
        assert!(!s.is_ejected(&e, back));
        // long in service: back to the base time; the count of ejections stays
        assert_eq!(s.eject(&e, back + 10 * interval, base), base);
        assert_eq!(s.snapshot(&e, 0).ejections, 4);
    }

    #[test]
    fn one_decision_at_a_time() {
        let r = registry();
        let g = r.global();
        let d = g.decide();
        assert!(d.is_some());
        assert!(g.decide().is_none());
        drop(d);
        assert!(g.decide().is_some());
    }

    #[test]
    fn sweep_ends_ejections_of_endpoints_no_table_uses() {
        let r = registry();
        let s = r.service("web");
        let e = s.endpoint("127.0.0.1:1".parse().unwrap());
        // ejected until 1 ns after the registry's clock started: over by now
        s.eject(&e, 0, Duration::from_nanos(1));
        assert!(r.global().any_ejected());
        r.sweep();
        assert!(!r.global().any_ejected());
    }
}
