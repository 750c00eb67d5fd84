//! Velocity: per-key event counts and amount sums in time buckets at four resolutions.
//!
//! A query costs at most one pass over the buckets of one level (≤ 192), whatever the key's
//! activity: a terminal with 10,000 events in the window costs what a card with 3 does.
//! The price is granularity: a query counts every bucket the window `(at − window, at]`
//! touches at the finest level that can hold it, so the start is rounded down to a bucket
//! boundary (it may reach back up to one bucket further than asked) and events later than
//! `at` in `at`'s own bucket count too. Scoring asks at the newest event, where there are
//! none, so in the trigger only the start is rounded.
//!
//! | level | bucket | kept for | windows it answers |
//! |-------|--------|----------|--------------------|
//! | 0     | 1 s    | 2 min    | ≤ 119 s            |
//! | 1     | 1 min  | 2 h      | ≤ 119 min          |
//! | 2     | 10 min | 25 h     | ≤ 24 h 50 min      |
//! | 3     | 1 h    | 8 days   | ≤ 7 days 23 h      |
//!
//! Buckets are kept relative to the newest event seen; a query reaching further back than a
//! level keeps is "not covered" (`None`) and the caller falls back to an exact index scan.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One resolution of the sketch.
#[derive(Clone, Copy, Debug)]
pub struct Level {
    /// Bucket width in microseconds.
    pub granularity_us: i64,
    /// Buckets kept, counting back from the newest event's bucket.
    pub buckets: i64,
}

const SECOND_US: i64 = 1_000_000;

/// The four levels, finest first (see the module table).
pub const LEVELS: [Level; 4] = [
    Level { granularity_us: SECOND_US, buckets: 120 },
    Level { granularity_us: 60 * SECOND_US, buckets: 120 },
    Level { granularity_us: 600 * SECOND_US, buckets: 150 },
    Level { granularity_us: 3600 * SECOND_US, buckets: 192 },
];

/// The longest window any level answers, in microseconds.
pub const MAX_SKETCH_WINDOW_US: i64 = 3600 * SECOND_US * (192 - 1);

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Bucket {
    idx: i64,
    count: u32,
    sum: f64,
}

/// Count and amount sum of the events in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Number of events.
    pub count: u64,
    /// Sum of their amounts.
    pub sum: f64,
}

/// Multi-resolution bucketed event counter for one key (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VelocitySketch {
    latest_us: Option<i64>,
    levels: [VecDeque<Bucket>; 4],
}

impl VelocitySketch {
    /// Timestamp of the newest event recorded, if any.
    pub fn latest_us(&self) -> Option<i64> {
        self.latest_us
    }

    /// Records one event at `t_us` carrying `amount` (use 0 for events without an amount).
    pub fn add(&mut self, t_us: i64, amount: f64) {
        let amount = if amount.is_finite() { amount } else { 0.0 };
        self.latest_us = Some(self.latest_us.map_or(t_us, |l| l.max(t_us)));
        for (level, buckets) in LEVELS.iter().zip(self.levels.iter_mut()) {
            add_to(buckets, t_us.div_euclid(level.granularity_us), 1, amount);
        }
        self.prune();
    }

    /// Adds another sketch's events, as if this one had seen them.
    pub fn merge(&mut self, other: &VelocitySketch) {
        let Some(other_latest) = other.latest_us else { return };
        self.latest_us = Some(self.latest_us.map_or(other_latest, |l| l.max(other_latest)));
        for (mine, theirs) in self.levels.iter_mut().zip(other.levels.iter()) {
            for b in theirs {
                add_to(mine, b.idx, b.count, b.sum);
            }
        }
        self.prune();
    }

    fn prune(&mut self) {
        let Some(latest) = self.latest_us else { return };
        for (level, buckets) in LEVELS.iter().zip(self.levels.iter_mut()) {
            let oldest_kept = latest.div_euclid(level.granularity_us) - level.buckets + 1;
            while buckets.front().is_some_and(|b| b.idx < oldest_kept) {
                buckets.pop_front();
            }
        }
    }

    /// Events in `(at − window, at]`, counted per bucket (see the module docs for the
    /// rounding). `None` when no level still holds the whole window (it reaches further back
    /// than the sketch keeps) or the window is not positive.
    pub fn query(&self, at_us: i64, window_us: i64) -> Option<Window> {
        if window_us <= 0 {
            return None;
        }
        let Some(latest) = self.latest_us else {
            return Some(Window::default());
        };
        let start_us = at_us.checked_sub(window_us)?;
        for (level, buckets) in LEVELS.iter().zip(self.levels.iter()) {
            if window_us > level.granularity_us * (level.buckets - 1) {
                continue;
            }
            let first = start_us.div_euclid(level.granularity_us);
            let last = at_us.div_euclid(level.granularity_us);
            let oldest_kept = latest.div_euclid(level.granularity_us) - level.buckets + 1;
            if first < oldest_kept {
                continue;
            }
            let mut w = Window::default();
            for b in buckets.iter().filter(|b| b.idx >= first && b.idx <= last) {
                w.count += b.count as u64;
                w.sum += b.sum;
            }
            return Some(w);
        }
        None
    }

    /// Total buckets held (a measure of the sketch's size).
    pub fn bucket_count(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }
}

fn add_to(buckets: &mut VecDeque<Bucket>, idx: i64, count: u32, sum: f64) {
    // Events arrive nearly in order: check the newest bucket before searching.
    match buckets.back_mut() {
        Some(b) if b.idx == idx => {
            b.count = b.count.saturating_add(count);
            b.sum += sum;
            return;
        }
        Some(b) if b.idx < idx => {
            buckets.push_back(Bucket { idx, count, sum });
            return;
        }
        None => {
            buckets.push_back(Bucket { idx, count, sum });
            return;
        }
        _ => {}
    }
    match buckets.binary_search_by_key(&idx, |b| b.idx) {
        Ok(i) => {
            buckets[i].count = buckets[i].count.saturating_add(count);
            buckets[i].sum += sum;
        }
        Err(i) => buckets.insert(i, Bucket { idx, count, sum }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = SECOND_US;
    const MIN: i64 = 60 * S;
    const H: i64 = 60 * MIN;

    /// Exact answer over raw events, for comparison.
    fn exact(events: &[(i64, f64)], at: i64, window: i64) -> Window {
        let mut w = Window::default();
        for &(t, a) in events {
            if t > at - window && t <= at {
                w.count += 1;
                w.sum += a;
            }
        }
        w
    }

    #[test]
    fn empty_sketch_counts_zero() {
        let s = VelocitySketch::default();
        assert_eq!(s.query(1_000 * S, H), Some(Window::default()));
        assert_eq!(s.query(1_000 * S, 0), None);
        assert_eq!(s.query(1_000 * S, -H), None);
    }

    /// What the sketch promises: every event in the buckets the window touches.
    fn rounded(events: &[(i64, f64)], at: i64, window: i64, gran: i64) -> Window {
        let lo = (at - window).div_euclid(gran) * gran;
        let hi = (at.div_euclid(gran) + 1) * gran;
        let mut w = Window::default();
        for &(t, a) in events {
            if t >= lo && t < hi {
                w.count += 1;
                w.sum += a;
            }
        }
        w
    }

    #[test]
    fn counts_exactly_the_buckets_the_window_touches() {
        let base = 1_700_000_000 * S + 123_456;
        let events: Vec<(i64, f64)> =
            (0..5000).map(|i| (base + i * 1_700_000 + (i % 11) * 1000, (i % 13) as f64)).collect();
        let mut s = VelocitySketch::default();
        for &(t, a) in &events {
            s.add(t, a);
        }
        let last = events.last().unwrap().0;
        for (at, window, gran) in [
            (last, MIN, S),
            (last - 7 * S, 90 * S, S),
            (last, 10 * MIN, MIN),
            (last - 3 * MIN, H, MIN),
            (last, 2 * H + 5 * MIN, 10 * MIN),
        ] {
            let got = s.query(at, window).unwrap();
            let want = rounded(&events, at, window, gran);
            assert_eq!(got.count, want.count, "at={at} window={window}");
            assert!((got.sum - want.sum).abs() < 1e-6);
        }
    }

    #[test]
    fn error_is_bounded_by_one_bucket() {
        let base = 1_700_000_123 * S + 456_789;
        let events: Vec<(i64, f64)> = (0..3000).map(|i| (base + i * 13 * S + (i % 7) * 100_000, 1.0)).collect();
        let mut s = VelocitySketch::default();
        for &(t, a) in &events {
            s.add(t, a);
        }
        let at = events.last().unwrap().0;
        for (window, gran) in [(30 * S, S), (MIN, S), (10 * MIN, MIN), (H, MIN), (24 * H, 10 * MIN)] {
            let got = s.query(at, window).unwrap().count;
            let lo = exact(&events, at, window).count;
            let hi = exact(&events, at, window + gran).count;
            assert!(got >= lo && got <= hi, "window {window}: {got} not in [{lo}, {hi}]");
        }
    }

    #[test]
    fn cost_does_not_depend_on_activity() {
        let mut hot = VelocitySketch::default();
        let base = 1_700_000_000 * S;
        for i in 0..100_000 {
            hot.add(base + i * 100_000, 1.0); // ten events a second for ~3 hours
        }
        // bounded by the sum of the levels' sizes, not by the 100k events
        assert!(hot.bucket_count() <= 120 + 120 + 150 + 192, "{}", hot.bucket_count());
        let at = base + 99_999 * 100_000;
        // exactly 600 events in (at - 1 min, at]; the rounded-down start may add ≤ 10 more
        let got = hot.query(at, MIN).unwrap().count;
        assert!((600..=610).contains(&got), "{got}");
    }

    #[test]
    fn not_covered_falls_back() {
        let mut s = VelocitySketch::default();
        let t = 1_700_000_000 * S;
        s.add(t, 5.0);
        s.add(t + 10 * 24 * H, 5.0);
        // a 1 h window 9 days before the newest event: no level keeps that far back
        assert_eq!(s.query(t + H, H), None);
        // the same window now is covered
        assert_eq!(s.query(t + 10 * 24 * H, H).unwrap().count, 1);
        // windows longer than the coarsest level can hold
        assert_eq!(s.query(t + 10 * 24 * H, 30 * 24 * H), None);
        // a window in the future of every event is zero and covered
        assert_eq!(s.query(t + 20 * 24 * H, H).unwrap().count, 0);
    }

    #[test]
    fn merge_equals_single_stream() {
        let base = 1_600_000_000 * S;
        let events: Vec<(i64, f64)> = (0..2000).map(|i| (base + ((i * 7919) % 20_000) * 3 * S, i as f64)).collect();
        let (mut a, mut b, mut all) = (VelocitySketch::default(), VelocitySketch::default(), VelocitySketch::default());
        for (i, &(t, x)) in events.iter().enumerate() {
            all.add(t, x);
            if i % 2 == 0 {
                a.add(t, x)
            } else {
                b.add(t, x)
            }
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        let at = all.latest_us().unwrap();
        for window in [MIN, 10 * MIN, H, 24 * H, 7 * 24 * H] {
            assert_eq!(ab.query(at, window), all.query(at, window), "window {window}");
            assert_eq!(ba.query(at, window), all.query(at, window));
        }
        assert_eq!(ab, ba);
    }

    #[test]
    fn out_of_order_and_extreme_times() {
        let mut s = VelocitySketch::default();
        let t = 1_700_000_000 * S;
        s.add(t, 1.0);
        s.add(t - 30 * S, 1.0); // late event
        assert_eq!(s.query(t, MIN).unwrap().count, 2);
        s.add(t - 30 * 24 * H, 1.0); // too late for every level: dropped, not counted
        assert_eq!(s.query(t, H).unwrap().count, 2);
        s.add(t, f64::NAN);
        assert_eq!(s.query(t, MIN).unwrap().sum, 2.0, "NaN amounts count as 0");
        // extreme instants neither panic nor overflow
        let mut e = VelocitySketch::default();
        e.add(i64::MIN, 1.0);
        assert_eq!(e.query(i64::MIN, H), None);
        e.add(i64::MAX, 1.0);
        assert_eq!(e.query(i64::MAX, MIN).unwrap().count, 1);
    }
}
