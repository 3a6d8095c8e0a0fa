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
    fn zero_weight_never_picked() {
        let p = WeightedPicker::new(&[1, 0, 1]);
        for _ in 0..10_000 {
            assert_ne!(p.pick(), Some(1));
        }
    }
}
