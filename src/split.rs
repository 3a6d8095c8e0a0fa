//! Weighted random choice. Pure and lock-free: a picker is built once per reload from the
//! weights, and `pick` does one draw from a per-thread generator plus a binary search over
//! cumulative weights (O(log n); no table that grows with the sum of the weights).

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    /// One fast generator per thread, seeded from the OS: no shared state between
    /// threads, so picks cost the same on one core or many.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Run `f` with this thread's generator.
#[inline]
pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// Chooses an index with probability proportional to its weight. Weight 0 is never chosen.
#[derive(Debug, Clone)]
pub struct WeightedPicker {
    /// `cumulative[i]` = sum of weights `0..=i`.
    cumulative: Box<[u64]>,
    /// Set when exactly one weight is positive: no draw needed.
    only: Option<usize>,
}

impl WeightedPicker {
    pub fn new(weights: &[u64]) -> Self {
        let mut sum = 0u64;
        let cumulative: Box<[u64]> = weights
            .iter()
            .map(|w| {
                sum = sum.saturating_add(*w);
                sum
            })
            .collect();
        let mut positive = weights.iter().enumerate().filter(|(_, w)| **w > 0);
        let only = match (positive.next(), positive.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        WeightedPicker { cumulative, only }
    }

    /// Sum of the weights; 0 means nothing can be picked.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// An index drawn by weight, or `None` when every weight is 0.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if let Some(i) = self.only {
            return Some(i);
        }
        let total = self.total();
        if total == 0 {
            return None;
        }
        let r = with_rng(|rng| rng.random_range(0..total));
        Some(self.index_of(r))
    }

    /// An index drawn by weight among those `keep` accepts (asked once each), or `None`
    /// when they weigh nothing: the draw renormalises over what is kept. One pass of
    /// weighted reservoir sampling (each kept index replaces the choice with probability
    /// weight / running total), so nothing is allocated; used only while something is
    /// ejected or being retried, never by a healthy pick.
    pub fn pick_where(&self, mut keep: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut total = 0u64;
        let mut chosen = None;
        let mut previous = 0u64;
        for (i, &c) in self.cumulative.iter().enumerate() {
            let w = c - previous;
            previous = c;
            if w == 0 || !keep(i) {
                continue;
            }
            total += w;
            if with_rng(|rng| rng.random_range(0..total)) < w {
                chosen = Some(i);
            }
        }
        chosen
    }

    /// The index whose share of `[0, total)` contains `r`: the first cumulative sum above it.
    #[inline]
    fn index_of(&self, r: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_of_respects_boundaries() {
        let p = WeightedPicker::new(&[3, 0, 2]);
        let picks: Vec<usize> = (0..5).map(|r| p.index_of(r)).collect();
        assert_eq!(picks, [0, 0, 0, 2, 2]); // weight 0 owns no value
    }

    #[test]
    fn degenerate_pickers() {
        assert_eq!(WeightedPicker::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedPicker::new(&[]).pick(), None);
        assert_eq!(WeightedPicker::new(&[0, 7, 0]).pick(), Some(1));
    }

    #[test]
    fn pick_where_renormalises_over_what_is_kept() {
        let p = WeightedPicker::new(&[60, 30, 10]);
        assert_eq!(p.pick_where(|_| false), None);
        assert_eq!(p.pick_where(|i| i == 2), Some(2));
        let mut n = [0u32; 3];
        for _ in 0..30_000 {
            n[p.pick_where(|i| i != 2).unwrap()] += 1;
        }
        assert_eq!(n[2], 0);
        // 2:1 between the kept two (expected 20 000 / 10 000; the bound is 10 sigma)
        assert!((n[0] as i64 - 20_000).abs() < 820, "{n:?}");
    }

    #[test]
    fn zero_weight_never_picked() {
        let p = WeightedPicker::new(&[1, 0, 1]);
        for _ in 0..10_000 {
            assert_ne!(p.pick(), Some(1));
        }
    }
}

/// Exact interleaved order for `deterministic` selection: a cyclic schedule in which
/// backend `i` appears exactly `weights[i] / g` times (g = gcd of the weights), spread out
/// by smooth weighted round robin (nginx's algorithm). Every window of `len()` consecutive
/// picks therefore holds each backend exactly its share.
#[derive(Debug)]
pub struct Schedule {
    order: Box<[u32]>,
    /// Shared by all threads: one atomic add per pick (the price of exactness per process).
    next: std::sync::atomic::AtomicUsize,
}

/// Longest schedule accepted; longer ones are a validation error.
pub const MAX_SCHEDULE: u64 = 1 << 20;

impl Schedule {
    /// `None` when every weight is 0 or the schedule would exceed `MAX_SCHEDULE`.
    pub fn new(weights: &[u64]) -> Option<Schedule> {
        let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        if g == 0 {
            return None;
        }
        let reduced: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
        let total: i64 = reduced.iter().sum();
        if total as u64 > MAX_SCHEDULE {
            return None;
        }
        let mut current = vec![0i64; reduced.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..reduced.len() {
                current[i] += reduced[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        Some(Schedule {
            order: order.into(),
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    #[inline]
    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.order[n % self.order.len()] as usize
    }

    /// The next entry that `keep` accepts, or `None` after a whole cycle of refusals.
    /// Refused entries are skipped, so over a cycle every kept entry is still taken
    /// exactly once: the kept backends keep their exact shares among themselves.
    pub fn pick_where(&self, mut keep: impl FnMut(usize) -> bool) -> Option<usize> {
        (0..self.order.len())
            .map(|_| self.pick())
            .find(|&i| keep(i))
    }
}

/// The length of the deterministic schedule for `weights` (sum after dividing by the gcd).
pub fn schedule_len(weights: &[u64]) -> u64 {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        0
    } else {
        weights.iter().map(|w| w / g).sum()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `sticky` selection: weighted rendezvous hashing. Each backend scores a key as
/// `weight / -ln(u)`, u uniform in (0, 1) from a hash of (key, backend name); the highest
/// score wins. So the choice is a pure function of the key, names and weights (the same on
/// every replica and after restarts: the hash is fixed, not seeded per process), a random
/// key lands on backend i with probability weight_i / sum, and raising one backend's weight
/// only moves keys to it, never away from it.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Per-backend hash of its name, mixed with the key's hash.
    seeds: Box<[u64]>,
    weights: Box<[f64]>,
}

impl Rendezvous {
    pub fn new(names: &[&str], weights: &[u64]) -> Rendezvous {
        Rendezvous {
            seeds: names.iter().map(|n| stable_hash(n.as_bytes())).collect(),
            weights: weights.iter().map(|w| *w as f64).collect(),
        }
    }

    /// The backend index for `key`; `None` when every weight is 0.
    #[inline]
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        self.pick_where(key, |_| true)
    }

    /// As `pick`, among the backends `keep` accepts: a key whose backend is refused moves
    /// to its next-best one, and no other key moves.
    #[inline]
    pub fn pick_where(&self, key: &[u8], mut keep: impl FnMut(usize) -> bool) -> Option<usize> {
        let k = stable_hash(key);
        let mut best = None;
        let mut best_score = 0.0;
        for (i, (&seed, &w)) in self.seeds.iter().zip(self.weights.iter()).enumerate() {
            if w <= 0.0 || !keep(i) {
                continue;
            }
            // 53 random bits -> u in (0, 1), never 0 or 1
            let u = ((splitmix64(k ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = w / -u.ln();
            if best.is_none() || score > best_score {
                best = Some(i);
                best_score = score;
            }
        }
        best
    }
}

/// FNV-1a 64 then a splitmix64 finaliser: fixed forever, so keys map the same way on
/// every replica, build and restart (std's hashers make no such promise).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    splitmix64(h)
}

#[inline]
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn schedule_pick_where_keeps_exact_shares_among_the_kept() {
        let s = Schedule::new(&[6, 3, 1]).unwrap();
        let mut n = [0u32; 3];
        for _ in 0..90 {
            n[s.pick_where(|i| i != 2).unwrap()] += 1;
        }
        assert_eq!(n, [60, 30, 0]);
        assert_eq!(s.pick_where(|_| false), None);
    }

    #[test]
    fn schedule_windows_are_exact() {
        let s = Schedule::new(&[900, 100, 0]).unwrap();
        assert_eq!(s.len(), 10);
        let picks: Vec<usize> = (0..100).map(|_| s.pick()).collect();
        for w in picks.windows(10) {
            assert_eq!(w.iter().filter(|i| **i == 0).count(), 9);
            assert_eq!(w.iter().filter(|i| **i == 1).count(), 1);
        }
        // interleaved, not clumped: 3/2 -> no three of a kind in a row
        let s = Schedule::new(&[3, 2]).unwrap();
        let picks: Vec<usize> = (0..5).map(|_| s.pick()).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0]);
        assert!(Schedule::new(&[0, 0]).is_none());
        assert!(Schedule::new(&[MAX_SCHEDULE, 1]).is_none());
    }

    #[test]
    fn stable_hash_is_pinned() {
        // if these change, sticky keys move to other backends on upgrade: never change them
        assert_eq!(stable_hash(b""), 0xc3817c016ba4ff30);
        assert_eq!(stable_hash(b"user-42"), 0xe28ba372823de243);
        let r = Rendezvous::new(&["web-v1", "web-v2"], &[50, 50]);
        let picks: Vec<usize> = (0..16)
            .map(|i| r.pick(format!("k{i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);
    }

    #[test]
    fn rendezvous_is_monotone_over_a_canary_ramp() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let mut previous: Option<Vec<usize>> = None;
        for canary in (0..=100).step_by(5) {
            let r = Rendezvous::new(&["stable", "canary"], &[100 - canary, canary]);
            let now: Vec<usize> = keys
                .iter()
                .map(|k| r.pick(k.as_bytes()).unwrap_or(0))
                .collect();
            if let Some(prev) = &previous {
                for (p, n) in prev.iter().zip(&now) {
                    assert!(
                        !(*p == 1 && *n == 0),
                        "a canary key went back to stable at weight {canary}"
                    );
                }
            }
            let on_canary = now.iter().filter(|i| **i == 1).count() as f64 / keys.len() as f64;
            // 10 000 keys: the share is within a few points of the weight (6 sigma ~ 3 points)
            assert!(
                (on_canary - canary as f64 / 100.0).abs() < 0.04,
                "weight {canary}: share {on_canary}"
            );
            previous = Some(now);
        }
    }
}

/// Properties of the three selectors over generated weights. The statistical ones draw
/// enough that the rarest backend expects over 100 picks (chi-square's approximation
/// holds) and fail only below p = 1e-6.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::cmd::stats::chi_square;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const DRAWS: usize = 40_000;

    /// 2-6 backends, each 0 or 1..=50, at least one positive: the rarest positive share
    /// is at least 1/300, 133 expected picks of 40 000.
    fn stat_weights() -> impl Strategy<Value = Vec<u64>> {
        vec(prop_oneof![1 => Just(0u64), 3 => 1u64..=50], 2..=6)
            .prop_filter("a positive weight", |w| w.iter().any(|x| *x > 0))
    }

    /// Zeros, small weights and weights near the validated maximum (2^53).
    fn any_weights() -> impl Strategy<Value = Vec<u64>> {
        vec(
            prop_oneof![Just(0u64), 1u64..=1000, (1u64 << 40)..=(1u64 << 53)],
            1..=8,
        )
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn p_value(counts: &[u64], weights: &[u64]) -> f64 {
        let w: Vec<f64> = weights.iter().map(|w| *w as f64).collect();
        chi_square(counts, &w).p_value
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn random_picks_converge_to_the_weights(weights in stat_weights()) {
            let picker = WeightedPicker::new(&weights);
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..DRAWS {
                counts[picker.pick().expect("a positive weight")] += 1;
            }
            // a pick of a weight-0 backend makes p = 0
            let p = p_value(&counts, &weights);
            prop_assert!(p > 1e-6, "weights {:?} counts {:?} p {}", weights, counts, p);
        }

        #[test]
        fn sticky_keys_spread_by_the_weights(weights in stat_weights(), salt in any::<u64>()) {
            let names = names(weights.len());
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hash = Rendezvous::new(&refs, &weights);
            let mut counts = vec![0u64; weights.len()];
            for i in 0..DRAWS {
                let key = format!("{salt:016x}-{i}");
                counts[hash.pick(key.as_bytes()).expect("a positive weight")] += 1;
            }
            let p = p_value(&counts, &weights);
            prop_assert!(p > 1e-6, "weights {:?} counts {:?} p {}", weights, counts, p);
        }

        #[test]
        fn weight_zero_is_never_picked(weights in any_weights(), keys in vec(any::<u64>(), 256)) {
            let positive = weights.iter().any(|w| *w > 0);
            let allowed = |i: usize| weights[i] > 0;

            let picker = WeightedPicker::new(&weights);
            for _ in 0..1_000 {
                match picker.pick() {
                    Some(i) => prop_assert!(allowed(i), "random picked {} of {:?}", i, weights),
                    None => prop_assert!(!positive),
                }
            }

            let schedule = Schedule::new(&weights);
            prop_assert_eq!(
                schedule.is_some(),
                positive && schedule_len(&weights) <= MAX_SCHEDULE,
                "{:?}", weights
            );
            if let Some(s) = schedule {
                for _ in 0..s.len() {
                    let i = s.pick();
                    prop_assert!(allowed(i), "deterministic picked {} of {:?}", i, weights);
                }
            }

            let names = names(weights.len());
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hash = Rendezvous::new(&refs, &weights);
            for key in &keys {
                match hash.pick(&key.to_le_bytes()) {
                    Some(i) => prop_assert!(allowed(i), "sticky picked {} of {:?}", i, weights),
                    None => prop_assert!(!positive),
                }
            }
        }

        #[test]
        fn every_schedule_window_holds_each_weight_exactly(
            base in vec(0u64..=12, 1..=6),
            scale in 1u64..=1000,
        ) {
            // a common factor: the schedule is as short as the reduced weights
            let weights: Vec<u64> = base.iter().map(|w| w * scale).collect();
            let Some(s) = Schedule::new(&weights) else {
                prop_assert!(weights.iter().all(|w| *w == 0));
                return Ok(());
            };
            let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
            let len = s.len();
            prop_assert_eq!(len as u64, schedule_len(&weights));
            prop_assert_eq!(len as u64, weights.iter().map(|w| w / g).sum::<u64>());
            let picks: Vec<usize> = (0..3 * len).map(|_| s.pick()).collect();
            for window in picks.windows(len) {
                for (i, w) in weights.iter().enumerate() {
                    let n = window.iter().filter(|p| **p == i).count() as u64;
                    prop_assert_eq!(n, w / g, "backend {} of {:?}: {:?}", i, weights, window);
                }
            }
        }

        #[test]
        fn raising_a_weight_only_moves_keys_to_it(
            weights in vec(0u64..=100, 2..=5),
            which in any::<prop::sample::Index>(),
            raise in 1u64..=100,
            salt in any::<u64>(),
        ) {
            let j = which.index(weights.len());
            let mut raised = weights.clone();
            raised[j] += raise;
            let names = names(weights.len());
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let (before, after) = (Rendezvous::new(&refs, &weights), Rendezvous::new(&refs, &raised));
            for i in 0..2_000 {
                let key = format!("{salt:x}/{i}");
                let (b, a) = (before.pick(key.as_bytes()), after.pick(key.as_bytes()));
                if a != b {
                    prop_assert_eq!(a, Some(j), "key {} moved from {:?}: {:?} -> {:?}", key, b, weights, raised);
                }
            }
        }
    }
}
