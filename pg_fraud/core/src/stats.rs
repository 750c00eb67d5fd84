//! Streaming statistics: O(1) per observation, mergeable, no history kept.
//!
//! Profiles are stored as several partial states (one per writing backend, see
//! `state.rs`) and combined on read, so every accumulator here must merge exactly as if it
//! had seen both streams.

use serde::{Deserialize, Serialize};

/// Amounts at or above this are treated as absurd: they are scored but never enter a
/// profile (squaring 1e300 would overflow the variance to infinity and poison it forever).
pub const MAX_PROFILE_AMOUNT: f64 = 1e15;

/// Running mean and variance (Welford 1962), mergeable with Chan et al.'s pairwise formula.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Welford {
    /// Number of observations.
    pub n: u64,
    /// Mean of the observations (0 when `n == 0`).
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Welford {
    /// Adds one observation; non-finite values are ignored and reported as `false`.
    pub fn push(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        true
    }

    /// Combines two accumulators as if one had seen both streams.
    pub fn merge(&mut self, other: &Welford) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let (na, nb) = (self.n as f64, other.n as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.n = n;
    }

    /// Sample variance (n − 1 denominator); `None` below two observations.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| (self.m2 / (self.n - 1) as f64).max(0.0))
    }

    /// Sample standard deviation; `None` below two observations.
    pub fn std_dev(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }

    /// How many standard deviations `x` lies from the mean, clipped to `±clip`.
    ///
    /// `None` when there are fewer than two observations (no spread to compare with) or `x`
    /// is not finite. With zero variance the answer is 0 for the one value ever seen and
    /// `±clip` for anything else: a departure from a perfectly constant history is as unusual
    /// as it gets.
    pub fn zscore(&self, x: f64, clip: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let sd = self.std_dev()?;
        // Welford leaves rounding noise around 1e-16·|mean| on constant input: treat a spread
        // that small as zero rather than dividing by it.
        let noise = 1e-12 * self.mean.abs().max(1.0);
        let diff = x - self.mean;
        if sd <= noise {
            return Some(if diff.abs() <= noise { 0.0 } else { clip.copysign(diff) });
        }
        Some((diff / sd).clamp(-clip, clip))
    }
}

/// Histogram of log10(amount) for robust (median/MAD) statistics in O(1) space.
///
/// Bins are a quarter of a decade wide from 0.01 to 10^9, plus an underflow and an overflow
/// bin; a median read from it is exact to within one bin (a factor of 10^0.25 ≈ 1.78).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    /// Sparse `(bin, count)` pairs sorted by bin.
    bins: Vec<(u8, u32)>,
}

impl LogHistogram {
    const LOW_DECADE: f64 = -2.0;
    const BINS_PER_DECADE: f64 = 4.0;
    /// Regular bins (11 decades x 4) plus underflow (index 0) and overflow (last index).
    const N_BINS: u8 = 46;
    const BIN_WIDTH: f64 = 1.0 / Self::BINS_PER_DECADE;

    fn bin_of(amount: f64) -> u8 {
        let pos = (amount.log10() - Self::LOW_DECADE) * Self::BINS_PER_DECADE;
        if pos.is_nan() || pos < 0.0 {
            0
        } else {
            (pos.floor() as i64 + 1).min(Self::N_BINS as i64 - 1) as u8
        }
    }

    fn bin_center(bin: u8) -> f64 {
        Self::LOW_DECADE + (bin as f64 - 0.5) * Self::BIN_WIDTH
    }

    /// Adds a positive finite amount; anything else is ignored and reported as `false`.
    pub fn push(&mut self, amount: f64) -> bool {
        if !(amount.is_finite() && amount > 0.0) {
            return false;
        }
        self.add_count(Self::bin_of(amount), 1);
        true
    }

    fn add_count(&mut self, bin: u8, count: u32) {
        match self.bins.binary_search_by_key(&bin, |&(b, _)| b) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(count),
            Err(i) => self.bins.insert(i, (bin, count)),
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &LogHistogram) {
        for &(bin, count) in &other.bins {
            self.add_count(bin, count);
        }
    }

    /// Number of amounts recorded.
    pub fn count(&self) -> u64 {
        self.bins.iter().map(|&(_, c)| c as u64).sum()
    }

    /// Median of log10(amount), interpolated inside its bin.
    pub fn median_log10(&self) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let half = total as f64 / 2.0;
        let mut seen = 0.0;
        for &(bin, count) in &self.bins {
            let c = count as f64;
            if seen + c >= half {
                let frac = ((half - seen) / c).clamp(0.0, 1.0);
                return Some(Self::bin_center(bin) - Self::BIN_WIDTH / 2.0 + frac * Self::BIN_WIDTH);
            }
            seen += c;
        }
        self.bins.last().map(|&(b, _)| Self::bin_center(b))
    }

    /// Median absolute deviation of log10(amount), never below half a bin (the resolution),
    /// so a history of identical amounts still gives a finite robust z-score.
    pub fn mad_log10(&self) -> Option<f64> {
        let median = self.median_log10()?;
        let mut deviations: Vec<(f64, u32)> =
            self.bins.iter().map(|&(b, c)| ((Self::bin_center(b) - median).abs(), c)).collect();
        deviations.sort_by(|a, b| a.0.total_cmp(&b.0));
        let half = self.count() as f64 / 2.0;
        let mut seen = 0.0;
        let mut mad = 0.0;
        for (d, c) in deviations {
            seen += c as f64;
            if seen >= half {
                mad = d;
                break;
            }
        }
        Some(mad.max(Self::BIN_WIDTH / 2.0))
    }

    /// Robust z-score of `amount` on the log scale: (log10 x − median) / (1.4826 · MAD),
    /// clipped to `±clip`. `None` without history or for a non-positive/non-finite amount.
    pub fn robust_z(&self, amount: f64, clip: f64) -> Option<f64> {
        if !(amount.is_finite() && amount > 0.0) {
            return None;
        }
        let median = self.median_log10()?;
        let mad = self.mad_log10()?;
        // 1.4826 makes the MAD a consistent estimator of the standard deviation for normal data.
        Some(((amount.log10() - median) / (1.4826 * mad)).clamp(-clip, clip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn welford_matches_two_pass() {
        let xs = [12.5, 3.0, 99.9, 45.0, 45.0, 0.01, 7.0];
        let mut w = Welford::default();
        xs.iter().for_each(|&x| assert!(w.push(x)));
        let (mean, var) = naive(&xs);
        assert!((w.mean - mean).abs() < 1e-12);
        assert!((w.variance().unwrap() - var).abs() < 1e-9);
    }

    #[test]
    fn welford_merge_equals_single_stream() {
        let xs: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 * 1.5).collect();
        let mut all = Welford::default();
        let (mut a, mut b) = (Welford::default(), Welford::default());
        for (i, &x) in xs.iter().enumerate() {
            all.push(x);
            if i % 3 == 0 {
                a.push(x)
            } else {
                b.push(x)
            };
        }
        let mut merged = b;
        merged.merge(&a);
        assert_eq!(merged.n, all.n);
        assert!((merged.mean - all.mean).abs() < 1e-9);
        assert!((merged.m2 - all.m2).abs() / all.m2 < 1e-12);
        let mut empty = Welford::default();
        empty.merge(&a);
        assert_eq!(empty, a);
        a.merge(&Welford::default());
        assert_eq!(empty, a);
    }

    #[test]
    fn welford_ignores_non_finite() {
        let mut w = Welford::default();
        assert!(!w.push(f64::NAN));
        assert!(!w.push(f64::INFINITY));
        assert!(!w.push(f64::NEG_INFINITY));
        assert_eq!(w.n, 0);
        assert_eq!(w.variance(), None);
    }

    #[test]
    fn zscore_edge_cases() {
        let mut w = Welford::default();
        assert_eq!(w.zscore(10.0, 10.0), None, "unknown entity");
        w.push(10.0);
        assert_eq!(w.zscore(10.0, 10.0), None, "n = 1 has no spread");
        w.push(10.0);
        w.push(10.0);
        assert_eq!(w.zscore(10.0, 10.0), Some(0.0), "zero variance, same value");
        assert_eq!(w.zscore(11.0, 10.0), Some(10.0), "zero variance, larger");
        assert_eq!(w.zscore(9.0, 10.0), Some(-10.0), "zero variance, smaller");
        assert_eq!(w.zscore(f64::NAN, 10.0), None);
        assert_eq!(w.zscore(f64::INFINITY, 10.0), None);
    }

    #[test]
    fn zscore_constant_history_with_rounding_noise() {
        let mut w = Welford::default();
        for _ in 0..1000 {
            w.push(0.1);
        }
        assert_eq!(w.zscore(0.1, 10.0), Some(0.0));
    }

    #[test]
    fn zscore_normal_case_and_clip() {
        let mut w = Welford::default();
        for x in [10.0, 20.0, 30.0] {
            w.push(x);
        }
        // mean 20, sd 10
        assert!((w.zscore(35.0, 10.0).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(w.zscore(1e9, 10.0), Some(10.0));
        assert_eq!(w.zscore(-1e9, 10.0), Some(-10.0));
    }

    #[test]
    fn huge_values_do_not_poison() {
        let mut w = Welford::default();
        w.push(1e300);
        w.push(-1e300);
        // The caller keeps absurd amounts out (MAX_PROFILE_AMOUNT); here we only check that
        // the arithmetic degrades to a non-panicking answer.
        let _ = w.zscore(0.0, 10.0);
        assert_eq!(w.n, 2);
    }

    #[test]
    fn log_histogram_median_and_robust_z() {
        let mut h = LogHistogram::default();
        for a in [20.0, 25.0, 30.0, 22.0, 28.0, 24.0, 26.0] {
            assert!(h.push(a));
        }
        let med = 10f64.powf(h.median_log10().unwrap());
        assert!(med > 15.0 && med < 35.0, "median {med}");
        let z_typical = h.robust_z(25.0, 10.0).unwrap();
        let z_spike = h.robust_z(5000.0, 10.0).unwrap();
        assert!(z_typical.abs() < 1.5, "{z_typical}");
        assert!(z_spike > 5.0, "{z_spike}");
        // A robust score is not dragged by one earlier outlier.
        h.push(1e6);
        assert!(h.robust_z(25.0, 10.0).unwrap().abs() < 1.5);
    }

    #[test]
    fn log_histogram_bad_input_and_extremes() {
        let mut h = LogHistogram::default();
        assert_eq!(h.robust_z(10.0, 10.0), None, "no history");
        assert!(!h.push(0.0));
        assert!(!h.push(-5.0));
        assert!(!h.push(f64::NAN));
        assert!(!h.push(f64::INFINITY));
        assert!(h.push(1e-9)); // underflow bin
        assert!(h.push(1e300)); // overflow bin
        assert_eq!(h.count(), 2);
        assert_eq!(h.robust_z(-1.0, 10.0), None);
        // identical amounts: MAD floors at half a bin, z stays finite and small for the same value
        let mut same = LogHistogram::default();
        for _ in 0..50 {
            same.push(9.99);
        }
        assert!(same.robust_z(9.99, 10.0).unwrap().abs() < 1.0);
        assert_eq!(same.robust_z(1e6, 10.0), Some(10.0));
    }

    #[test]
    fn log_histogram_merge() {
        let (mut a, mut b, mut all) = Default::default();
        for (i, x) in [1.0, 5.0, 50.0, 500.0, 0.5].iter().enumerate() {
            LogHistogram::push(&mut all, *x);
            if i % 2 == 0 {
                LogHistogram::push(&mut a, *x)
            } else {
                LogHistogram::push(&mut b, *x)
            };
        }
        let mut merged: LogHistogram = a;
        merged.merge(&b);
        assert_eq!(merged, all);
    }
}
