//! Per-key state: everything the features need to know about an entity, merchant, device
//! or IP address, updated in O(1) per event and mergeable.
//!
//! Several partial states may exist for one key (the extension gives each writing backend
//! its own row so concurrent inserts never wait on each other's row locks); reading merges
//! them. Every field therefore merges commutatively and associatively.

use serde::{Deserialize, Serialize};

use crate::decay::DecayedCount;
use crate::geo::{HomeCentroid, LatLon};
use crate::sketch::VelocitySketch;
use crate::stats::{LogHistogram, Welford, MAX_PROFILE_AMOUNT};
use crate::timefeat::HourHistogram;

/// Format byte that prefixes every encoded state.
pub const STATE_FORMAT: u8 = 1;

/// Entries kept in a [`RecentSet`]: novelty ("first time on this device") is judged against
/// the 32 most recently used values, which covers any genuine customer's devices, merchants
/// and countries while bounding the state of a key that sees thousands.
pub const RECENT_SET_CAPACITY: usize = 32;

/// Half-life of alert and label counts (merchant risk fades after a month without incidents).
pub const RISK_HALF_LIFE_DAYS: f64 = 30.0;

/// Half-life of the recent-transaction count used as the denominator of alert rates.
pub const ACTIVITY_HALF_LIFE_DAYS: f64 = 30.0;

/// What a key identifies; decides which parts of [`State`] it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The customer / card / account the transaction belongs to.
    Entity,
    /// The merchant or terminal.
    Merchant,
    /// The device fingerprint.
    Device,
    /// The client IP address.
    Ip,
}

impl Kind {
    /// All kinds, in storage order.
    pub const ALL: [Kind; 4] = [Kind::Entity, Kind::Merchant, Kind::Device, Kind::Ip];

    /// Name used in the `fraud.profile_shards.kind` column and in SQL arguments.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::Merchant => "merchant",
            Kind::Device => "device",
            Kind::Ip => "ip",
        }
    }

    /// Parses [`Kind::as_str`] output.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Stable 64-bit hash of a categorical value (device id, merchant, country...). Stable
/// across releases because it is persisted: xxh3 is specified, not an implementation detail.
pub fn value_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// The most recently used values of a category, by hash, with their last-use time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentSet {
    entries: Vec<(u64, i64)>,
}

impl RecentSet {
    /// Whether `hash` is among the recent values.
    pub fn contains(&self, hash: u64) -> bool {
        self.entries.iter().any(|&(h, _)| h == hash)
    }

    /// Number of distinct values held (at most [`RECENT_SET_CAPACITY`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no value has been recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a use of `hash` at `t_us`, evicting the least recently used value when full.
    pub fn touch(&mut self, hash: u64, t_us: i64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == hash) {
            e.1 = e.1.max(t_us);
            return;
        }
        self.entries.push((hash, t_us));
        self.evict();
    }

    /// Union keeping the most recent uses.
    pub fn merge(&mut self, other: &RecentSet) {
        for &(h, t) in &other.entries {
            if let Some(e) = self.entries.iter_mut().find(|e| e.0 == h) {
                e.1 = e.1.max(t);
            } else {
                self.entries.push((h, t));
            }
        }
        self.evict();
    }

    fn evict(&mut self) {
        if self.entries.len() > RECENT_SET_CAPACITY {
            // newest first; ties broken by hash so that merge order never matters
            self.entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            self.entries.truncate(RECENT_SET_CAPACITY);
        }
    }
}

/// One transaction as the state sees it (values already validated by the caller).
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// When it happened (µs since the Unix epoch).
    pub t_us: i64,
    /// A valid, non-negative amount below [`MAX_PROFILE_AMOUNT`]; `None` otherwise.
    pub amount: Option<f64>,
    /// Validated location of the transaction.
    pub location: Option<LatLon>,
    /// Hash of the device used, if known.
    pub device: Option<u64>,
    /// Hash of the merchant, if known.
    pub merchant: Option<u64>,
    /// Hash of the country, if known.
    pub country: Option<u64>,
    /// Hash of the entity (recorded on device and IP keys: how many cards share a device).
    pub entity: Option<u64>,
}

/// Everything remembered about one key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Events recorded.
    pub n: u64,
    /// First event time.
    pub first_seen_us: Option<i64>,
    /// Newest event time.
    pub last_seen_us: Option<i64>,
    /// Running mean/variance of valid amounts (entities only).
    pub amount: Welford,
    /// Log-amount histogram for robust statistics (entities only).
    pub log_amount: LogHistogram,
    /// Largest valid amount seen (entities only).
    pub max_amount: Option<f64>,
    /// The newest event that had a location, and when.
    pub last_location: Option<(LatLon, i64)>,
    /// Time-decayed home location.
    pub home: HomeCentroid,
    /// Activity by hour of day (entities only).
    pub hours: HourHistogram,
    /// Recently used devices (entities only).
    pub devices: RecentSet,
    /// Recently used merchants (entities only).
    pub merchants: RecentSet,
    /// Recently used countries (entities only).
    pub countries: RecentSet,
    /// Entities seen on this key (devices and IPs only).
    pub entities: RecentSet,
    /// Counts and amount sums in time buckets.
    pub velocity: VelocitySketch,
    /// Decayed count of recent transactions (merchants only; alert-rate denominator).
    pub activity: DecayedCount,
    /// Decayed count of alerts raised on this key.
    pub alerts: DecayedCount,
    /// Decayed count of rows labelled fraud.
    pub fraud_labels: DecayedCount,
    /// Decayed count of rows labelled genuine.
    pub genuine_labels: DecayedCount,
}

impl State {
    /// Records one event for a key of the given kind.
    pub fn record(&mut self, kind: Kind, ev: &Event) {
        self.n += 1;
        self.first_seen_us = Some(self.first_seen_us.map_or(ev.t_us, |f| f.min(ev.t_us)));
        self.last_seen_us = Some(self.last_seen_us.map_or(ev.t_us, |l| l.max(ev.t_us)));
        self.velocity.add(ev.t_us, ev.amount.unwrap_or(0.0));
        match kind {
            Kind::Entity => {
                if let Some(a) = ev.amount.filter(|a| a.is_finite() && *a >= 0.0 && *a < MAX_PROFILE_AMOUNT) {
                    self.amount.push(a);
                    self.log_amount.push(a);
                    self.max_amount = Some(self.max_amount.map_or(a, |m| m.max(a)));
                }
                if let Some(p) = ev.location {
                    if self.last_location.is_none_or(|(_, t)| ev.t_us >= t) {
                        self.last_location = Some((p, ev.t_us));
                    }
                    self.home.push(p, ev.t_us);
                }
                self.hours.push(ev.t_us);
                for (set, value) in [
                    (&mut self.devices, ev.device),
                    (&mut self.merchants, ev.merchant),
                    (&mut self.countries, ev.country),
                ] {
                    if let Some(h) = value {
                        set.touch(h, ev.t_us);
                    }
                }
            }
            Kind::Merchant => self.activity.add(1.0, ev.t_us, ACTIVITY_HALF_LIFE_DAYS),
            Kind::Device | Kind::Ip => {
                if let Some(h) = ev.entity {
                    self.entities.touch(h, ev.t_us);
                }
            }
        }
    }

    /// Records an alert raised at `t_us`.
    pub fn record_alert(&mut self, t_us: i64) {
        self.alerts.add(1.0, t_us, RISK_HALF_LIFE_DAYS);
    }

    /// Records an analyst label for a row of this key, effective at `t_us`.
    pub fn record_label(&mut self, is_fraud: bool, t_us: i64) {
        let counter = if is_fraud { &mut self.fraud_labels } else { &mut self.genuine_labels };
        counter.add(1.0, t_us, RISK_HALF_LIFE_DAYS);
    }

    /// Adds `delta` (±1) to the fraud or genuine label count at `t_us`; used to move a
    /// relabelled row from one class to the other.
    pub fn record_label_delta(&mut self, is_fraud: bool, delta: f64, t_us: i64) {
        let counter = if is_fraud { &mut self.fraud_labels } else { &mut self.genuine_labels };
        counter.add(delta, t_us, RISK_HALF_LIFE_DAYS);
    }

    /// Combines two partial states of the same key.
    pub fn merge(&mut self, o: &State) {
        self.n += o.n;
        self.first_seen_us = min_opt(self.first_seen_us, o.first_seen_us);
        self.last_seen_us = max_opt(self.last_seen_us, o.last_seen_us);
        self.amount.merge(&o.amount);
        self.log_amount.merge(&o.log_amount);
        self.max_amount = match (self.max_amount, o.max_amount) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.last_location = match (self.last_location, o.last_location) {
            // newest wins; ties broken by coordinates so the merge order never matters
            (Some(a), Some(b)) => Some(if (b.1, b.0.lat, b.0.lon) > (a.1, a.0.lat, a.0.lon) { b } else { a }),
            (a, b) => a.or(b),
        };
        self.home.merge(&o.home);
        self.hours.merge(&o.hours);
        self.devices.merge(&o.devices);
        self.merchants.merge(&o.merchants);
        self.countries.merge(&o.countries);
        self.entities.merge(&o.entities);
        self.velocity.merge(&o.velocity);
        self.activity.merge(&o.activity, ACTIVITY_HALF_LIFE_DAYS);
        self.alerts.merge(&o.alerts, RISK_HALF_LIFE_DAYS);
        self.fraud_labels.merge(&o.fraud_labels, RISK_HALF_LIFE_DAYS);
        self.genuine_labels.merge(&o.genuine_labels, RISK_HALF_LIFE_DAYS);
    }

    /// Serializes the state: a format byte followed by postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_FORMAT];
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).expect("state serialization is infallible"));
        out
    }

    /// Decodes [`State::encode`] output; a truncated or corrupted blob is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<State, StateError> {
        match bytes.split_first() {
            None => Err(StateError::Empty),
            Some((&STATE_FORMAT, rest)) => {
                let (mut state, left) =
                    postcard::take_from_bytes::<State>(rest).map_err(|e| StateError::Corrupt(e.to_string()))?;
                if !left.is_empty() {
                    return Err(StateError::Corrupt(format!("{} trailing bytes", left.len())));
                }
                state.velocity.after_decode();
                Ok(state)
            }
            Some((&v, _)) => Err(StateError::UnknownFormat(v)),
        }
    }
}

/// A read-only view of a key's state split in two parts — the committed state read from the
/// table and this statement's unwritten delta — answering as if they were merged, without
/// copying the big parts (velocity buckets, recent sets).
#[derive(Clone, Copy, Debug)]
pub struct StateView<'a> {
    base: &'a State,
    delta: Option<&'a State>,
}

impl<'a> StateView<'a> {
    /// A view of one state.
    pub fn one(s: &'a State) -> Self {
        StateView { base: s, delta: None }
    }

    /// A view of a committed state plus a delta.
    pub fn two(base: &'a State, delta: &'a State) -> Self {
        StateView { base, delta: Some(delta) }
    }

    fn parts(&self) -> impl Iterator<Item = &'a State> + '_ {
        std::iter::once(self.base).chain(self.delta)
    }

    /// Events recorded.
    pub fn n(&self) -> u64 {
        self.parts().map(|s| s.n).sum()
    }

    /// First event time.
    pub fn first_seen_us(&self) -> Option<i64> {
        self.parts().filter_map(|s| s.first_seen_us).min()
    }

    /// Newest event time.
    pub fn last_seen_us(&self) -> Option<i64> {
        self.parts().filter_map(|s| s.last_seen_us).max()
    }

    /// Running mean/variance of valid amounts.
    pub fn amount(&self) -> Welford {
        let mut w = self.base.amount;
        if let Some(d) = self.delta {
            w.merge(&d.amount);
        }
        w
    }

    /// Robust z-score of an amount against the merged log-amount histogram.
    pub fn robust_z(&self, amount: f64, clip: f64) -> Option<f64> {
        match self.delta.filter(|d| d.log_amount.count() > 0) {
            None => self.base.log_amount.robust_z(amount, clip),
            Some(d) => {
                let mut h = self.base.log_amount.clone();
                h.merge(&d.log_amount);
                h.robust_z(amount, clip)
            }
        }
    }

    /// Largest valid amount.
    pub fn max_amount(&self) -> Option<f64> {
        self.parts().filter_map(|s| s.max_amount).reduce(f64::max)
    }

    /// Home location.
    pub fn home(&self) -> Option<LatLon> {
        let mut h = self.base.home;
        if let Some(d) = self.delta {
            h.merge(&d.home);
        }
        h.center()
    }

    /// The newest located event.
    pub fn last_location(&self) -> Option<(LatLon, i64)> {
        self.parts().filter_map(|s| s.last_location).max_by(|a, b| {
            (a.1, a.0.lat, a.0.lon).partial_cmp(&(b.1, b.0.lat, b.0.lon)).unwrap_or(std::cmp::Ordering::Equal)
        })
    }

    /// Activity by hour of day.
    pub fn hours(&self) -> HourHistogram {
        let mut h = self.base.hours;
        if let Some(d) = self.delta {
            h.merge(&d.hours);
        }
        h
    }

    /// Whether a device / merchant / country hash is among the recent ones.
    pub fn knows(&self, set: fn(&State) -> &RecentSet, hash: u64) -> bool {
        self.parts().any(|s| set(s).contains(hash))
    }

    /// Distinct entities seen on this key (capped like the sets themselves).
    pub fn distinct_entities(&self) -> usize {
        let extra = self
            .delta
            .map_or(0, |d| d.entities.entries.iter().filter(|(h, _)| !self.base.entities.contains(*h)).count());
        (self.base.entities.len() + extra).min(RECENT_SET_CAPACITY)
    }

    /// Events in a window (see [`VelocitySketch::query`]).
    pub fn velocity(&self, at_us: i64, window_us: i64) -> Option<crate::sketch::Window> {
        let mut w = self.base.velocity.query(at_us, window_us)?;
        if let Some(d) = self.delta {
            let x = d.velocity.query(at_us, window_us)?;
            w.count += x.count;
            w.sum += x.sum;
        }
        Some(w)
    }

    /// Several windows ending at `at_us` (ascending), see [`VelocitySketch::query_many`].
    pub fn velocity_many<const N: usize>(
        &self,
        at_us: i64,
        windows_us: [i64; N],
    ) -> [Option<crate::sketch::Window>; N] {
        let mut out = self.base.velocity.query_many(at_us, windows_us);
        if let Some(d) = self.delta {
            for (o, x) in out.iter_mut().zip(d.velocity.query_many(at_us, windows_us)) {
                *o = match (*o, x) {
                    (Some(a), Some(b)) => Some(crate::sketch::Window { count: a.count + b.count, sum: a.sum + b.sum }),
                    _ => None,
                };
            }
        }
        out
    }

    /// A decayed counter's value at `t_us`.
    pub fn decayed(&self, counter: fn(&State) -> &DecayedCount, t_us: i64, half_life_days: f64) -> f64 {
        self.parts().map(|s| counter(s).value_at(t_us, half_life_days)).sum()
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Why a stored state could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    /// Zero bytes.
    #[error("profile state is empty")]
    Empty,
    /// Written by a newer (or unknown) version of pg_fraud.
    #[error("profile state has unknown format {0} (this build reads format {STATE_FORMAT})")]
    UnknownFormat(u8),
    /// Truncated or corrupted.
    #[error("profile state is corrupt: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn ev(t_min: i64, amount: f64, device: &str) -> Event {
        Event {
            t_us: 1_700_000_000_000_000 + t_min * MIN,
            amount: Some(amount),
            location: LatLon::new(48.85 + t_min as f64 * 0.001, 2.35),
            device: Some(value_hash(device)),
            merchant: Some(value_hash("m1")),
            country: Some(value_hash("FR")),
            entity: None,
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("card"), None);
    }

    #[test]
    fn record_and_merge_equal_single_stream() {
        let events: Vec<Event> =
            (0..40).map(|i| ev(i * 5, 10.0 + i as f64, if i % 3 == 0 { "d1" } else { "d2" })).collect();
        let (mut a, mut b, mut all) = (State::default(), State::default(), State::default());
        for (i, e) in events.iter().enumerate() {
            all.record(Kind::Entity, e);
            if i % 4 == 1 {
                a.record(Kind::Entity, e)
            } else {
                b.record(Kind::Entity, e)
            }
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        for m in [&ab, &ba] {
            assert_eq!(m.n, all.n);
            assert_eq!(m.first_seen_us, all.first_seen_us);
            assert_eq!(m.last_seen_us, all.last_seen_us);
            assert!((m.amount.mean - all.amount.mean).abs() < 1e-9);
            assert_eq!(m.max_amount, all.max_amount);
            assert_eq!(m.last_location, all.last_location);
            assert_eq!(m.hours, all.hours);
            assert_eq!(m.devices.len(), 2);
            assert!(m.devices.contains(value_hash("d1")));
            assert_eq!(
                m.velocity.query(all.last_seen_us.unwrap(), 3_600_000_000),
                all.velocity.query(all.last_seen_us.unwrap(), 3_600_000_000)
            );
        }
    }

    #[test]
    fn absurd_amounts_stay_out_of_the_profile() {
        let mut s = State::default();
        for a in [f64::NAN, f64::INFINITY, -5.0, 1e300, MAX_PROFILE_AMOUNT] {
            s.record(Kind::Entity, &Event { t_us: 0, amount: Some(a), ..Default::default() });
        }
        assert_eq!(s.n, 5, "the events still count");
        assert_eq!(s.amount.n, 0);
        assert_eq!(s.max_amount, None);
        assert_eq!(s.velocity.query(0, 60_000_000).unwrap().count, 5);
    }

    #[test]
    fn recent_set_evicts_least_recent_and_merges_deterministically() {
        let mut s = RecentSet::default();
        for i in 0..40u64 {
            s.touch(i, i as i64);
        }
        assert_eq!(s.len(), RECENT_SET_CAPACITY);
        assert!(!s.contains(0) && s.contains(39) && s.contains(8));
        s.touch(8, 100); // refresh
        s.touch(1000, 101);
        assert!(s.contains(8) && !s.contains(9));
        let (mut a, mut b) = (RecentSet::default(), RecentSet::default());
        for i in 0..30u64 {
            a.touch(i, 5);
            b.touch(i + 100, 5);
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b;
        ba.merge(&a);
        let mut x = ab.entries.clone();
        let mut y = ba.entries.clone();
        x.sort();
        y.sort();
        assert_eq!(x, y);
    }

    #[test]
    fn codec_round_trip() {
        let mut s = State::default();
        for i in 0..100 {
            s.record(Kind::Entity, &ev(i, i as f64 * 3.5, "dev"));
        }
        s.record_alert(1);
        s.record_label(true, 2);
        let bytes = s.encode();
        assert_eq!(bytes[0], STATE_FORMAT);
        assert_eq!(State::decode(&bytes).unwrap(), s);
        assert_eq!(State::decode(&State::default().encode()).unwrap(), State::default());
    }

    #[test]
    fn corrupt_blobs_are_errors_not_panics() {
        let mut s = State::default();
        for i in 0..20 {
            s.record(Kind::Entity, &ev(i, 12.0, "dev"));
        }
        let bytes = s.encode();
        assert_eq!(State::decode(&[]), Err(StateError::Empty));
        assert_eq!(State::decode(&[99, 1, 2]), Err(StateError::UnknownFormat(99)));
        for cut in 1..bytes.len() {
            assert!(State::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(State::decode(&longer).is_err());
        for i in 1..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xFF;
            let _ = State::decode(&flipped); // any answer but a panic
        }
    }
}
