//! Time-of-day features against the entity's own rhythm.

use serde::{Deserialize, Serialize};

/// Microseconds in an hour / a day.
pub const HOUR_US: i64 = 3_600_000_000;
/// Microseconds in a day.
pub const DAY_US: i64 = 24 * HOUR_US;

/// Hour of day (0–23, UTC) of a Unix timestamp in microseconds; correct before 1970 too.
pub fn hour_of_day(t_us: i64) -> u8 {
    (t_us.rem_euclid(DAY_US) / HOUR_US) as u8
}

/// How often an entity transacts in each hour of the day.
///
/// Unusualness compares an hour with the entity's own busiest hour rather than a fixed
/// "2–5 AM is risky" rule: night-shift workers and other time zones are normal for themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourHistogram {
    counts: [u32; 24],
}

impl HourHistogram {
    /// Records one event at `t_us`.
    pub fn push(&mut self, t_us: i64) {
        let h = hour_of_day(t_us) as usize;
        self.counts[h] = self.counts[h].saturating_add(1);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &HourHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// Events recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// Per-hour counts, hour 0 first.
    pub fn counts(&self) -> &[u32; 24] {
        &self.counts
    }

    /// Unusualness of `hour` in [0, 1]: 0 for the entity's busiest hour, 1 for an hour it has
    /// never been active in, nor next to. `None` below `min_events` (not enough rhythm yet).
    ///
    /// Counts are smoothed over neighbouring hours (weights ¼, ½, ¼, circular) so that 22:00
    /// for someone always active at 21:00 is only mildly unusual.
    pub fn unusualness(&self, hour: u8, min_events: u64) -> Option<f64> {
        if self.total() < min_events.max(1) {
            return None;
        }
        let smooth = |h: usize| {
            let c = |i: usize| self.counts[i % 24] as f64;
            0.25 * c(h + 23) + 0.5 * c(h) + 0.25 * c(h + 1)
        };
        let peak = (0..24).map(smooth).fold(0.0, f64::max);
        let here = smooth(hour as usize % 24);
        Some((1.0 - here / peak).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours() {
        assert_eq!(hour_of_day(0), 0);
        assert_eq!(hour_of_day(HOUR_US * 13 + 59 * 60_000_000), 13);
        assert_eq!(hour_of_day(-1), 23, "one microsecond before the epoch");
        assert_eq!(hour_of_day(i64::MAX), hour_of_day(i64::MAX % DAY_US));
        assert_eq!(hour_of_day(i64::MIN) as i64, i64::MIN.rem_euclid(DAY_US) / HOUR_US);
    }

    #[test]
    fn unusualness_follows_the_entity() {
        let mut h = HourHistogram::default();
        assert_eq!(h.unusualness(3, 10), None);
        // a night-shift worker: always active at 03:00
        for d in 0..30 {
            h.push(d * DAY_US + 3 * HOUR_US);
        }
        assert_eq!(h.unusualness(3, 10), Some(0.0));
        assert_eq!(h.unusualness(4, 10), Some(0.5), "a neighbouring hour is half as usual");
        assert_eq!(h.unusualness(15, 10), Some(1.0));
        assert_eq!(h.unusualness(3, 31), None, "below min_events");
    }

    #[test]
    fn merge_adds() {
        let mut a = HourHistogram::default();
        let mut b = HourHistogram::default();
        a.push(0);
        b.push(HOUR_US);
        b.push(HOUR_US);
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.counts()[1], 2);
    }
}
