//! Exponential time decay shared by the decayed accumulators.

use serde::{Deserialize, Serialize};

const DAY_US: f64 = 86_400_000_000.0;

/// Weight left after `age_us` microseconds with the given half-life: `0.5^(age / half_life)`.
pub fn decay_factor(age_us: i64, half_life_days: f64) -> f64 {
    if age_us <= 0 {
        return 1.0;
    }
    (-(age_us as f64 / DAY_US) / half_life_days * std::f64::consts::LN_2).exp()
}

/// A count that fades with a half-life, valued at a reference time; mergeable in any order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecayedCount {
    value: f64,
    t_ref_us: i64,
}

impl DecayedCount {
    /// Adds `amount` at `t_us`.
    pub fn add(&mut self, amount: f64, t_us: i64, half_life_days: f64) {
        if self.value == 0.0 || t_us > self.t_ref_us {
            self.value *= decay_factor(t_us - self.t_ref_us, half_life_days);
            self.t_ref_us = t_us;
            self.value += amount;
        } else {
            self.value += amount * decay_factor(self.t_ref_us - t_us, half_life_days);
        }
    }

    /// Combines two counts with the same half-life.
    pub fn merge(&mut self, other: &DecayedCount, half_life_days: f64) {
        if other.value != 0.0 {
            self.add(other.value, other.t_ref_us, half_life_days);
        }
    }

    /// The count as of `t_us` (no growth for instants before the reference time).
    pub fn value_at(&self, t_us: i64, half_life_days: f64) -> f64 {
        self.value * decay_factor(t_us - self.t_ref_us, half_life_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life() {
        let hl = 30.0;
        assert_eq!(decay_factor(0, hl), 1.0);
        assert_eq!(decay_factor(-5, hl), 1.0);
        assert!((decay_factor((30.0 * DAY_US) as i64, hl) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn decayed_count_merges_in_any_order() {
        let hl = 10.0;
        let day = DAY_US as i64;
        let mut a = DecayedCount::default();
        a.add(1.0, 0, hl);
        a.add(1.0, 10 * day, hl);
        let mut b = DecayedCount::default();
        b.add(2.0, 5 * day, hl);
        let mut ab = a;
        ab.merge(&b, hl);
        let mut ba = b;
        ba.merge(&a, hl);
        let t = 20 * day;
        let expected = 0.5f64.powf(2.0) + 0.5 + 2.0 * 0.5f64.powf(1.5);
        assert!((ab.value_at(t, hl) - expected).abs() < 1e-9);
        assert!((ba.value_at(t, hl) - expected).abs() < 1e-9);
    }
}
