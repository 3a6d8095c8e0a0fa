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
/// `done` counts finished requests as they finish (for the progress bar).
pub(super) async fn run(
    target: Arc<Target>,
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
            drive(&target, &started, &done, budget, deadline, pace, offset).await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => total.merge(tally),
            // cannot happen short of a bug; keep the other connections' results
            Err(_) => total.error("internal"),
        }
    }
    total
}

/// Per-connection tallies, merged at the end (no shared counters on the hot path).
#[derive(Default)]
pub(super) struct Tally {
    pub(super) ok: u64,
    pub(super) counts: HashMap<String, u64>,
    pub(super) errors: HashMap<String, u64>,
    pub(super) latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
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
    }
}

/// One connection's loop: take a request from the budget, send it, classify the answer.
async fn drive(
    t: &Target,
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
                    tally.error(format!("status {}", status.as_u16()));
                }
                *tally.counts.entry(class).or_default() += 1;
            }
            Ok(Err(kind)) => {
                sender = None;
                tally.error(kind);
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
                tally.error("timeout");
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
}
