//! The one random source used for training.
//!
//! A named, portable generator (xoshiro256++) rather than `StdRng`: `StdRng` may change
//! algorithm between `rand` releases, and a model retrained with the same seed must come out
//! bit-identical on every machine and build.

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub(crate) struct TrainRng(Xoshiro256PlusPlus);

impl TrainRng {
    pub(crate) fn new(seed: u64) -> Self {
        TrainRng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`, from the top 53 bits so every value is exactly representable.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-and-reject, which has no modulo bias.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// `k` distinct indices from `0..n` (`k <= n`), in random order: a partial Fisher–Yates
    /// over a scratch vector when `k` is a large share of `n`, Floyd-style rejection otherwise,
    /// so drawing 256 rows from a million costs O(256), not O(10^6).
    pub(crate) fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        debug_assert!(k <= n);
        if k.saturating_mul(4) >= n {
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + self.below(n - i);
                all.swap(i, j);
            }
            all.truncate(k);
            all
        } else {
            let mut seen = std::collections::HashSet::with_capacity(k * 2);
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let i = self.below(n);
                if seen.insert(i) {
                    out.push(i);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_indices_are_distinct_and_in_range() {
        let mut rng = TrainRng::new(7);
        for (n, k) in [(10, 10), (10, 3), (1000, 5), (1, 1), (5, 0)] {
            let mut s = rng.sample_indices(n, k);
            assert_eq!(s.len(), k);
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), k);
            assert!(s.iter().all(|&i| i < n));
        }
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        let mut rng = TrainRng::new(1);
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(3) < 3);
        }
    }
}
