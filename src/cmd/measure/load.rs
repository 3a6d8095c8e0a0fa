//! The load loop: C connection tasks sharing one request budget, each sending one
//! request at a time, optionally paced to a total rate, each keeping its own tallies
//! (merged at the end), and the latency percentiles of the merged tallies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::client::{one_request, Sender, Target};

/// Pacing bounds: tokio's interval rejects a zero period and overflows on a huge one.
const MIN_PACE: Duration = Duration::from_micros(1);
const MAX_PACE: Duration = Duration::from_secs(24 * 3600);

/// Longest pause between reconnection attempts to a failing target in `--duration` mode.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Failures kept with their send time (for the JSON timeline), per connection and in the
/// end the earliest of all; further ones are only counted, so a long run against a dead
/// target stays small.
pub(super) const MAX_FAILURES: usize = 10_000;

/// The pause between two requests of one connection for a total `rate` over
/// `connections`; `None` unpaced.
pub(super) fn pace(rate: Option<f64>, connections: usize) -> anyhow::Result<Option<Duration>> {
    Ok(match rate {
        None => None,
        // each connection sends at rate/C; bounded so tokio's interval neither panics on a
        // zero period nor overflows on an enormous one
        Some(r) if r.is_finite() && r > 0.0 => Some(
            Duration::try_from_secs_f64(connections as f64 / r)
                .unwrap_or(MAX_PACE)
                .clamp(MIN_PACE, MAX_PACE),
        ),
        Some(r) => bail!("--rate must be a positive number of requests per second, got {r}"),
    })
}

/// Drive `connections` tasks until `budget` requests have started or `deadline` passed;
/// `done` counts finished requests as they finish (for the progress bar); failure times
/// are offsets from `begin`.
pub(super) async fn run(
    target: Arc<Target>,
    begin: Instant,
    connections: usize,
    budget: u64,
    deadline: Option<Instant>,
    pace: Option<Duration>,
    done: Arc<AtomicU64>,
) -> Tally {
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (target, started, done) = (target.clone(), started.clone(), done.clone());
        // stagger the paced connections over one period so the load is smooth, not bursts
        let offset = pace.map(|p| p.mul_f64(i as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            drive(
                &target, begin, &started, &done, budget, deadline, pace, offset,
            )
            .await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => total.merge(tally),
            // cannot happen short of a bug; keep the other connections' results
            Err(_) => total.error("internal", Duration::ZERO),
        }
    }
    total.keep_first_failures();
    total
}

/// Per-connection tallies, merged at the end (no shared counters on the hot path).
#[derive(Default)]
pub(super) struct Tally {
    pub(super) ok: u64,
    pub(super) counts: HashMap<String, u64>,
    pub(super) errors: HashMap<String, u64>,
    pub(super) latencies_us: Vec<u32>,
    /// The first failures: (ms from the start of the run to the request's send, kind).
    pub(super) failures: Vec<(u32, String)>,
    /// Failures past [`MAX_FAILURES`], counted in `errors` but not kept here.
    pub(super) failures_dropped: u64,
}

impl Tally {
    /// A failed request, `at` = when it was sent, from the start of the run.
    fn error(&mut self, kind: impl Into<String>, at: Duration) {
        let kind = kind.into();
        if self.failures.len() < MAX_FAILURES {
            let ms = u32::try_from(at.as_millis()).unwrap_or(u32::MAX);
            self.failures.push((ms, kind.clone()));
        } else {
            self.failures_dropped += 1;
        }
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
        self.failures.extend(other.failures);
        self.failures_dropped += other.failures_dropped;
    }

    /// The merged failures in time order, the earliest [`MAX_FAILURES`] of them.
    fn keep_first_failures(&mut self) {
        self.failures.sort_by_key(|(t, _)| *t);
        let extra = self.failures.len().saturating_sub(MAX_FAILURES);
        self.failures.truncate(MAX_FAILURES);
        self.failures_dropped += extra as u64;
    }
}

/// One connection's loop: take a request from the budget, send it, classify the answer.
#[allow(clippy::too_many_arguments)]
async fn drive(
    t: &Target,
    run_begin: Instant,
    started: &AtomicU64,
    done: &AtomicU64,
    budget: u64,
    deadline: Option<Instant>,
    pace: Option<Duration>,
    offset: Option<Duration>,
) -> Tally {
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    let mut ticks = pace.map(|p| {
        let first = tokio::time::Instant::now() + offset.unwrap_or_default();
        let mut i = tokio::time::interval_at(first, p);
        // open loop: a late tick is made up for, not skipped
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut failures = 0u32;
    loop {
        if past_deadline() || started.fetch_add(1, Ordering::Relaxed) >= budget {
            return tally;
        }
        if let Some(i) = ticks.as_mut() {
            i.tick().await;
            if past_deadline() {
                return tally;
            }
        }
        let begin = Instant::now();
        let outcome = tokio::time::timeout(t.timeout, one_request(t, &mut sender)).await;
        match outcome {
            Ok(Ok((status, class))) => {
                failures = 0;
                let us = begin.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                if status.is_success() {
                    tally.ok += 1;
                } else {
                    tally.error(
                        format!("status {}", status.as_u16()),
                        begin.saturating_duration_since(run_begin),
                    );
                }
                *tally.counts.entry(class).or_default() += 1;
            }
            Ok(Err(kind)) => {
                sender = None;
                tally.error(kind, begin.saturating_duration_since(run_begin));
                // with --duration nothing else bounds the loop: without a pause a dead
                // target would be hammered for the whole run (with -n, failing fast is
                // what a CI job wants)
                if let Some(d) = deadline {
                    if matches!(kind, "connect" | "tls" | "alpn") {
                        failures = failures.saturating_add(1);
                        let pause = Duration::from_millis(1 << failures.min(7)).min(MAX_BACKOFF);
                        tokio::time::sleep(pause.min(d.saturating_duration_since(Instant::now())))
                            .await;
                    }
                }
            }
            Err(_) => {
                sender = None;
                tally.error("timeout", begin.saturating_duration_since(run_begin));
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// p50, p90, p99, p99.9 (nearest rank) in milliseconds; zeros when nothing answered.
pub(super) fn percentiles(latencies_us: &mut [u32]) -> [f64; 4] {
    latencies_us.sort_unstable();
    [0.5, 0.9, 0.99, 0.999].map(|q: f64| {
        let n = latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        f64::from(latencies_us[rank - 1]) / 1000.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentiles(&mut []), [0.0; 4]);
        let mut l: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        assert_eq!(percentiles(&mut l), [500.0, 900.0, 990.0, 999.0]);
    }

    #[test]
    fn the_earliest_failures_are_kept_and_the_rest_counted() {
        // one connection past its cap: counted, not kept
        let mut a = Tally::default();
        for i in 0..MAX_FAILURES as u64 + 2 {
            a.error("io", Duration::from_millis(1000 + i));
        }
        assert_eq!((a.failures.len(), a.failures_dropped), (MAX_FAILURES, 2));
        // another connection's earlier failures displace a's latest ones
        let mut b = Tally::default();
        for i in 0..3 {
            b.error("status 502", Duration::from_millis(i));
        }
        let mut total = Tally::default();
        total.merge(a);
        total.merge(b);
        total.keep_first_failures();
        assert_eq!(total.failures.len(), MAX_FAILURES);
        assert_eq!(total.failures_dropped, 5);
        assert_eq!(total.failures[0], (0, "status 502".to_string()));
        assert!(total.failures.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(
            total.errors["io"] + total.errors["status 502"],
            MAX_FAILURES as u64 + 5
        );
    }
}
