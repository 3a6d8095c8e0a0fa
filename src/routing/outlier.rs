//! What the table does with endpoint health (outlier detection, DESIGN.md section 3):
//! picks that leave ejected endpoints and backends out, the next place to try after a
//! failure (retries), and the ejection decision with its `maxEjectedPercent` caps.
//!
//! None of this runs while every endpoint is healthy: `RoutingTable::route` takes the
//! plain pick when `Global::any_ejected` is false, and a retry or an ejection follows a
//! failure.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::OutlierDetection;
use crate::health::Global;

use super::endpoints::{choose, Picked};
use super::{Backend, Selector, Split};

/// What one request has tried so far: kept only once a try has failed.
#[derive(Debug, Default)]
pub struct Tried {
    endpoints: Vec<SocketAddr>,
    /// Places in `Split::members()`.
    backends: Vec<usize>,
}

impl Backend {
    /// Every endpoint of this backend is ejected: it is out of its splits.
    pub fn is_out(&self, now: u64) -> bool {
        self.health.may_have_ejected()
            && self.endpoints.with_list(|list| {
                !list.is_empty() && list.iter().all(|e| self.health.is_ejected(&e.health, now))
            })
    }

    /// A random endpoint that is neither ejected nor in `tried`.
    fn pick_untried(&self, now: u64, tried: &[SocketAddr]) -> Option<Picked> {
        if tried.is_empty() && !self.health.may_have_ejected() {
            return self.endpoints.pick_index();
        }
        self.endpoints.with_list(|list| {
            let usable = |e: &&super::endpoints::Ep| {
                !tried.contains(&e.addr) && !self.health.is_ejected(&e.health, now)
            };
            let n = list.iter().filter(usable).count();
            let k = choose(n)?;
            list.iter()
                .enumerate()
                .filter(|(_, e)| usable(e))
                .nth(k)
                .map(|(index, e)| Picked {
                    index,
                    addr: e.addr,
                })
        })
    }
}

impl Split {
    /// The pick while some endpoint in the process is ejected: members whose endpoints are
    /// all ejected are left out (the weights renormalise over the rest), and so are
    /// ejected endpoints. `None` as the member: nothing is left.
    pub(super) fn pick_live(
        &self,
        headers: &HeaderMap,
        now: u64,
    ) -> (Option<usize>, Option<Picked>, Option<HeaderValue>) {
        let members = self.members();
        let (slot, cookie) = if members.iter().any(|b| b.health.may_have_ejected()) {
            self.select(headers, Some(|i: usize| !members[i].is_out(now)))
        } else {
            self.pick_slot(headers)
        };
        let endpoint = slot.and_then(|i| {
            let backend = &members[i];
            // an endpoint ejected since the member was chosen: any endpoint, not none
            backend
                .pick_untried(now, &[])
                .or_else(|| backend.endpoints.pick_index())
        });
        (slot, endpoint, cookie)
    }

    /// Where to try a request again after it failed on `picked` of member `slot`: another
    /// endpoint of the same backend, else another backend chosen by the weights with the
    /// ones already tried (and those out) left out. `None`: nothing is left to try.
    pub fn retarget(
        &self,
        slot: usize,
        picked: Picked,
        tried: &mut Tried,
        now: u64,
    ) -> Option<(usize, Picked)> {
        let members = self.members();
        tried.endpoints.push(picked.addr);
        if let Some(p) = members.get(slot)?.pick_untried(now, &tried.endpoints) {
            return Some((slot, p));
        }
        tried.backends.push(slot);
        if matches!(self.selector, Selector::Fallback) {
            // the fallback is the only member
            return None;
        }
        loop {
            let next = self
                .picker
                .pick_where(|i| !tried.backends.contains(&i) && !members[i].is_out(now))?;
            match members[next].pick_untried(now, &tried.endpoints) {
                Some(p) => return Some((next, p)),
                None => tried.backends.push(next),
            }
        }
    }

    /// A connect failure or a reset before a response head on `picked` of member `slot`.
    pub fn failed(&self, slot: usize, picked: Picked, od: &OutlierDetection, global: &Global) {
        let Some(backend) = self.members().get(slot) else {
            return;
        };
        let Some(n) = backend.endpoints.with_health(picked, |h| h.failed()) else {
            return;
        };
        if od.consecutive_failures > 0 && n >= od.consecutive_failures {
            self.eject(backend, picked, od, global, "consecutive failures");
        }
    }

    /// A response head from `picked` of member `slot`. Without a failure run to end and
    /// with 5xx not counted, this is one relaxed load.
    #[inline]
    pub fn answered(
        &self,
        slot: usize,
        picked: Picked,
        status: StatusCode,
        od: &OutlierDetection,
        global: &Global,
    ) {
        let Some(backend) = self.members().get(slot) else {
            return;
        };
        let fives = backend.endpoints.with_health(picked, |h| {
            h.answered();
            if od.consecutive_5xx > 0 {
                h.answered_5xx(status.is_server_error())
            } else {
                0
            }
        });
        if od.consecutive_5xx > 0 && fives.is_some_and(|n| n >= od.consecutive_5xx) {
            self.eject(backend, picked, od, global, "consecutive 5xx");
        }
    }

    /// Eject `picked` of `backend` unless that would eject more than `maxEjectedPercent`
    /// of the backend's endpoints or, when it is the backend's last endpoint in service,
    /// of this split's members; at least one may always be ejected (as in Envoy). A
    /// service in several splits is held to the split whose request tripped the ejection.
    fn eject(
        &self,
        backend: &Backend,
        picked: Picked,
        od: &OutlierDetection,
        global: &Global,
        why: &'static str,
    ) {
        let Some(_deciding) = global.decide() else {
            // another ejection is being decided; this endpoint's next failure tries again
            return;
        };
        let now = global.now();
        let health = &backend.health;
        let length = backend.endpoints.with_list(|list| {
            let e = list.get(picked.index).filter(|e| e.addr == picked.addr)?;
            if health.is_ejected(&e.health, now) {
                return None;
            }
            let ejected = list
                .iter()
                .filter(|e| health.is_ejected(&e.health, now))
                .count();
            if ejected + 1 > cap(list.len(), od.max_ejected_percent) {
                return None;
            }
            if ejected + 1 == list.len() {
                // the backend would drop out of the split
                let members = self.members();
                let weighed =
                    |b: &&Arc<Backend>| b.weight > 0 || matches!(self.selector, Selector::Fallback);
                let candidates = members.iter().filter(weighed).count();
                let out = members
                    .iter()
                    .filter(weighed)
                    .filter(|b| !std::ptr::eq(&***b, backend) && b.is_out(now))
                    .count();
                if out + 1 > cap(candidates, od.max_ejected_percent) {
                    return None;
                }
            }
            Some(health.eject(&e.health, now, od.base_ejection_time))
        });
        if let Some(length) = length {
            // an event, not a request: at most one per endpoint and ejection time
            tracing::info!(
                service = %backend.service,
                endpoint = %picked.addr,
                "ejected for {} ({why})",
                humantime::format_duration(length)
            );
        }
    }
}

/// How many of `n` may be ejected at `percent`: at least one.
fn cap(n: usize, percent: u32) -> usize {
    (n * percent as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::cap;

    #[test]
    fn at_least_one_may_be_ejected() {
        assert_eq!(cap(1, 50), 1);
        assert_eq!(cap(2, 50), 1);
        assert_eq!(cap(3, 50), 1);
        assert_eq!(cap(4, 50), 2);
        assert_eq!(cap(10, 0), 1);
        assert_eq!(cap(3, 100), 3);
    }
}
