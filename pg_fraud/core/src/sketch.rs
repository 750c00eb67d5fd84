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
//!
//! Most keys are sparse (a card pays a few times a day), so a key starts with a plain list of
//! its events (time, amount) and answers exactly; only when it holds more than
//! [`RAW_MAX`] events within the longest horizon does it switch to buckets. That keeps the
//! millions of quiet keys small and exact, and the few busy ones bounded.

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

/// Events a key keeps exactly before it switches to buckets.
pub const RAW_MAX: usize = 64;

/// How far back the exact event list reaches (the coarsest level's span).
const RAW_HORIZON_US: i64 = 3600 * SECOND_US * 192;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Bucket {
    idx: i64,
    count: u32,
    sum: f64,
    /// Running totals from the level's oldest bucket through this one, so a window is two
    /// lookups and a subtraction instead of a pass over its buckets. Not serialized: rebuilt
    /// after decoding and after the oldest bucket is pruned (keeping the totals small, and
    /// the subtraction exact to well below a cent).
    #[serde(skip)]
    cum_count: u64,
    #[serde(skip)]
    cum_sum: f64,
}

// The running totals are derived data: two buckets are equal when their events are.
impl PartialEq for Bucket {
    fn eq(&self, o: &Bucket) -> bool {
        self.idx == o.idx && self.count == o.count && self.sum == o.sum
    }
}

impl Bucket {
    fn new(idx: i64, count: u32, sum: f64) -> Bucket {
        Bucket { idx, count, sum, cum_count: 0, cum_sum: 0.0 }
    }
}

/// Recomputes the running totals from position `from` on.
fn rebuild_cum(buckets: &mut VecDeque<Bucket>, from: usize) {
    let (mut c, mut s) = match from.checked_sub(1).and_then(|i| buckets.get(i)) {
        Some(b) => (b.cum_count, b.cum_sum),
        None => (0, 0.0),
    };
    for b in buckets.range_mut(from..) {
        c += b.count as u64;
        s += b.sum;
        b.cum_count = c;
        b.cum_sum = s;
    }
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
    /// Exact events, sorted by time, while the key is sparse.
    raw: Vec<(i64, f64)>,
    /// Buckets, once the key is dense.
    levels: Option<Box<[VecDeque<Bucket>; 4]>>,
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
        match self.levels.as_deref_mut() {
            Some(levels) => {
                for (level, buckets) in LEVELS.iter().zip(levels.iter_mut()) {
                    add_to(buckets, t_us.div_euclid(level.granularity_us), 1, amount);
                }
            }
            None => {
                let at = match self.raw.last() {
                    Some(&(last, _)) if last > t_us => self.raw.partition_point(|e| e.0 <= t_us),
                    _ => self.raw.len(),
                };
                self.raw.insert(at, (t_us, amount));
            }
        }
        self.prune();
    }

    /// Adds another sketch's events, as if this one had seen them.
    pub fn merge(&mut self, other: &VelocitySketch) {
        let Some(other_latest) = other.latest_us else { return };
        self.latest_us = Some(self.latest_us.map_or(other_latest, |l| l.max(other_latest)));
        if other.levels.is_some() {
            self.densify();
        }
        match self.levels.as_deref_mut() {
            Some(levels) => {
                for &(t, a) in &other.raw {
                    for (level, buckets) in LEVELS.iter().zip(levels.iter_mut()) {
                        add_to(buckets, t.div_euclid(level.granularity_us), 1, a);
                    }
                }
                if let Some(theirs) = other.levels.as_deref() {
                    for (mine, theirs) in levels.iter_mut().zip(theirs.iter()) {
                        for b in theirs {
                            add_to(mine, b.idx, b.count, b.sum);
                        }
                    }
                }
            }
            None => {
                self.raw.extend_from_slice(&other.raw);
                self.raw.sort_by_key(|e| e.0);
            }
        }
        self.prune();
    }

    /// Switches from the exact event list to buckets.
    fn densify(&mut self) {
        if self.levels.is_some() {
            return;
        }
        let mut levels: Box<[VecDeque<Bucket>; 4]> = Box::default();
        for &(t, a) in &self.raw {
            for (level, buckets) in LEVELS.iter().zip(levels.iter_mut()) {
                add_to(buckets, t.div_euclid(level.granularity_us), 1, a);
            }
        }
        self.raw = Vec::new();
        self.levels = Some(levels);
    }

    fn prune(&mut self) {
        let Some(latest) = self.latest_us else { return };
        match self.levels.as_deref_mut() {
            Some(levels) => {
                for (level, buckets) in LEVELS.iter().zip(levels.iter_mut()) {
                    let oldest_kept = latest.div_euclid(level.granularity_us) - level.buckets + 1;
                    let mut popped = false;
                    while buckets.front().is_some_and(|b| b.idx < oldest_kept) {
                        buckets.pop_front();
                        popped = true;
                    }
                    if popped {
                        rebuild_cum(buckets, 0);
                    }
                }
            }
            None => {
                let oldest = latest.saturating_sub(RAW_HORIZON_US);
                let drop = self.raw.partition_point(|e| e.0 <= oldest);
                if drop > 0 {
                    self.raw.drain(..drop);
                }
                if self.raw.len() > RAW_MAX {
                    self.densify();
                    self.prune();
                }
            }
        }
    }

    /// Events in `(at − window, at]`: exact while the key is sparse, counted per bucket once
    /// it is dense (see the module docs for the rounding). `None` when the window reaches
    /// further back than the sketch keeps, or is not positive.
    pub fn query(&self, at_us: i64, window_us: i64) -> Option<Window> {
        if window_us <= 0 {
            return None;
        }
        let Some(latest) = self.latest_us else {
            return Some(Window::default());
        };
        let start_us = at_us.checked_sub(window_us)?;
        let Some(levels) = self.levels.as_deref() else {
            if start_us < latest.saturating_sub(RAW_HORIZON_US) {
                return None;
            }
            let mut w = Window::default();
            let from = self.raw.partition_point(|e| e.0 <= start_us);
            for &(_, a) in self.raw[from..].iter().take_while(|e| e.0 <= at_us) {
                w.count += 1;
                w.sum += a;
            }
            return Some(w);
        };
        for (level, buckets) in LEVELS.iter().zip(levels.iter()) {
            if window_us > level.granularity_us * (level.buckets - 1) {
                continue;
            }
            let first = start_us.div_euclid(level.granularity_us);
            let last = at_us.div_euclid(level.granularity_us);
            let oldest_kept = latest.div_euclid(level.granularity_us) - level.buckets + 1;
            if first < oldest_kept {
                continue;
            }
            let start = buckets.partition_point(|b| b.idx < first);
            let end = buckets.partition_point(|b| b.idx <= last);
            if end <= start {
                return Some(Window::default());
            }
            let (hi, lo) = (&buckets[end - 1], &buckets[start]);
            return Some(Window {
                count: hi.cum_count - lo.cum_count + lo.count as u64,
                sum: hi.cum_sum - lo.cum_sum + lo.sum,
            });
        }
        None
    }

    /// Several windows ending at the same instant, in one pass over a sparse key's events
    /// (the trigger asks for 1 min, 10 min, 1 h and 24 h of every entity on every row).
    /// `windows_us` must be ascending.
    pub fn query_many<const N: usize>(&self, at_us: i64, windows_us: [i64; N]) -> [Option<Window>; N] {
        let (Some(latest), None) = (self.latest_us, self.levels.as_deref()) else {
            return windows_us.map(|w| self.query(at_us, w));
        };
        let oldest = latest.saturating_sub(RAW_HORIZON_US);
        let mut out = [Some(Window::default()); N];
        let end = self.raw.partition_point(|e| e.0 <= at_us);
        let mut acc = Window::default();
        let mut i = end;
        for (slot, &w) in out.iter_mut().zip(windows_us.iter()) {
            let Some(start) = at_us.checked_sub(w).filter(|s| w > 0 && *s >= oldest) else {
                *slot = None;
                continue;
            };
            while i > 0 && self.raw[i - 1].0 > start {
                i -= 1;
                acc.count += 1;
                acc.sum += self.raw[i].1;
            }
            *slot = Some(acc);
        }
        out
    }

    /// Exact events plus buckets held (a measure of the sketch's size).
    pub fn bucket_count(&self) -> usize {
        self.raw.len() + self.levels.as_deref().map_or(0, |l| l.iter().map(VecDeque::len).sum())
    }

    /// Whether the key switched to buckets.
    pub fn is_dense(&self) -> bool {
        self.levels.is_some()
    }

    /// Restores the running totals after deserialization.
    pub fn after_decode(&mut self) {
        if let Some(levels) = self.levels.as_deref_mut() {
            levels.iter_mut().for_each(|b| rebuild_cum(b, 0));
        }
    }
}

fn add_to(buckets: &mut VecDeque<Bucket>, idx: i64, count: u32, sum: f64) {
    // Events arrive nearly in order: check the newest bucket before searching.
    let (prev_c, prev_s) = buckets.back().map_or((0, 0.0), |b| (b.cum_count, b.cum_sum));
    match buckets.back_mut() {
        Some(b) if b.idx == idx => {
            b.count = b.count.saturating_add(count);
            b.sum += sum;
            b.cum_count += count as u64;
            b.cum_sum += sum;
            return;
        }
        Some(b) if b.idx > idx => {}
        _ => {
            let mut b = Bucket::new(idx, count, sum);
            b.cum_count = prev_c + count as u64;
            b.cum_sum = prev_s + sum;
            buckets.push_back(b);
            return;
        }
    }
    let pos = match buckets.binary_search_by_key(&idx, |b| b.idx) {
        Ok(i) => {
            buckets[i].count = buckets[i].count.saturating_add(count);
            buckets[i].sum += sum;
            i
        }
        Err(i) => {
            buckets.insert(i, Bucket::new(idx, count, sum));
            i
        }
    };
    rebuild_cum(buckets, pos);
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
    fn sparse_keys_are_exact() {
        let base = 1_700_000_000 * S + 777;
        let events: Vec<(i64, f64)> = (0..RAW_MAX as i64).map(|i| (base + i * 37 * MIN + i * 13, i as f64)).collect();
        let mut s = VelocitySketch::default();
        for &(t, a) in events.iter().rev() {
            s.add(t, a); // out of order on purpose
        }
        assert!(!s.is_dense());
        let last = events.last().unwrap().0;
        for (at, window) in [
            (last, MIN),
            (last, H),
            (last - 5 * MIN, 3 * H + 7),
            (last, 24 * H),
            (last, 7 * 24 * H),
            (base + 10 * MIN, 5 * MIN),
        ] {
            assert_eq!(s.query(at, window), Some(exact(&events, at, window)), "at={at} window={window}");
        }
        // one more event inside the horizon makes it dense, still within one bucket of exact
        s.add(last + S, 1.0);
        assert!(s.is_dense());
        assert_eq!(s.query(last + S, MIN).unwrap().count, 2);
    }

    #[test]
    fn query_many_matches_query() {
        let base = 1_700_000_000 * S;
        for n in [0, 1, 10, RAW_MAX as i64, 500] {
            let mut s = VelocitySketch::default();
            for i in 0..n {
                s.add(base + i * 97 * S, i as f64);
            }
            let at = base + n * 97 * S;
            let ws = [MIN, 10 * MIN, H, 24 * H, 30 * 24 * H];
            assert_eq!(s.query_many(at, ws), ws.map(|w| s.query(at, w)), "n={n}");
            assert_eq!(s.query_many(at - 3 * H, ws), ws.map(|w| s.query(at - 3 * H, w)), "n={n}");
        }
    }

    #[test]
    fn sparse_and_dense_merge_both_ways() {
        let base = 1_700_000_000 * S;
        let mut dense = VelocitySketch::default();
        for i in 0..500 {
            dense.add(base + i * 10 * S, 1.0);
        }
        let mut sparse = VelocitySketch::default();
        for i in 0..5 {
            sparse.add(base + 4000 * S + i * S, 2.0);
        }
        let at = base + 4999 * S;
        let want = dense.query(at, H).unwrap().count + sparse.query(at, H).unwrap().count;
        let mut a = dense.clone();
        a.merge(&sparse);
        let mut b = sparse.clone();
        b.merge(&dense);
        assert_eq!(a.query(at, H).unwrap().count, want);
        assert_eq!(b.query(at, H).unwrap().count, want);
        assert!(a.is_dense() && b.is_dense());
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
        assert!(hot.is_dense());
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
