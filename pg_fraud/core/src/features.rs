//! The feature vector: what the rules, the model and the explanation see for one transaction.
//!
//! Every feature is computed from the incoming row and the states of its keys *before* the
//! row is recorded ("what did we know when it arrived"), except the velocity counts, which
//! include the row itself ("this is the 6th payment in ten minutes").

use crate::geo::{haversine_km, speed_kmh, LatLon};
use crate::sketch::Window;
use crate::state::{value_hash, Event, StateView, ACTIVITY_HALF_LIFE_DAYS, RISK_HALF_LIFE_DAYS};
use crate::stats::MAX_PROFILE_AMOUNT;
use crate::timefeat::{hour_of_day, DAY_US};

/// Static type of a feature (and of rule expressions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FType {
    /// A float (NaN never appears: missing is `Null`).
    Num,
    /// true / false.
    Bool,
    /// A string from the row (country, merchant...).
    Str,
}

impl FType {
    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            FType::Num => "number",
            FType::Bool => "boolean",
            FType::Str => "string",
        }
    }
}

/// A feature value; `Null` when it cannot be computed (no history, column not mapped...).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unknown.
    Null,
    /// A finite number.
    Num(f64),
    /// A truth value.
    Bool(bool),
    /// A string.
    Str(String),
}

impl Value {
    /// A number, or `Null` for NaN/±Inf so that nothing downstream sees a non-finite float.
    pub fn num(x: f64) -> Value {
        if x.is_finite() {
            Value::Num(x)
        } else {
            Value::Null
        }
    }

    fn opt_num(x: Option<f64>) -> Value {
        x.map_or(Value::Null, Value::num)
    }

    fn opt_bool(x: Option<bool>) -> Value {
        x.map_or(Value::Null, Value::Bool)
    }

    /// The value as a model input: numbers as is, booleans as 0/1, anything else NaN.
    pub fn as_model_input(&self) -> f64 {
        match self {
            Value::Num(x) => *x,
            Value::Bool(b) => *b as u8 as f64,
            Value::Null | Value::Str(_) => f64::NAN,
        }
    }

    /// JSON rendering for explanations.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Num(x) => {
                serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Str(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// Name, type and meaning of one feature.
#[derive(Debug)]
pub struct FeatureDef {
    /// The name rules use.
    pub name: &'static str,
    /// Its type.
    pub ty: FType,
    /// One line for the documentation and `fraud.features`.
    pub doc: &'static str,
}

macro_rules! features {
    ($($id:ident = $name:literal : $ty:ident, $doc:literal;)*) => {
        /// Indices into [`FeatureVector`], one per feature.
        #[allow(missing_docs)]
        pub mod f {
            features!(@consts 0usize; $($id)*);
        }
        /// Every feature, in vector order.
        pub const FEATURES: &[FeatureDef] = &[
            $(FeatureDef { name: $name, ty: FType::$ty, doc: $doc },)*
        ];
    };
    (@consts $n:expr; $id:ident $($rest:ident)*) => {
        pub const $id: usize = $n;
        features!(@consts $n + 1usize; $($rest)*);
    };
    (@consts $n:expr;) => {
        pub const COUNT: usize = $n;
    };
}

features! {
    AMOUNT = "amount": Num, "Transaction amount (after the watch's amount_scale).";
    LOG_AMOUNT = "log_amount": Num, "ln(1 + amount) for non-negative amounts.";
    IS_REFUND = "is_refund": Bool, "The amount is negative.";
    AMOUNT_INVALID = "amount_invalid": Bool, "The amount is NULL, NaN, ±Infinity or ≥ 1e15 (kept out of profiles).";
    AMOUNT_ZSCORE = "amount_zscore": Num, "(amount − entity mean) / entity std dev, clipped; NULL below 2 prior amounts.";
    AMOUNT_ROBUST_Z = "amount_robust_z": Num, "Robust z-score of log10(amount) against the entity's median/MAD.";
    AMOUNT_TO_MEAN = "amount_to_mean": Num, "amount / the entity's mean amount.";
    AMOUNT_TO_MAX = "amount_to_max": Num, "amount / the largest amount the entity has made.";
    ENTITY_TX_COUNT = "entity_tx_count": Num, "Transactions the entity made before this one.";
    ENTITY_AGE_DAYS = "entity_age_days": Num, "Days since the entity's first transaction.";
    SECS_SINCE_LAST = "secs_since_last": Num, "Seconds since the entity's previous transaction.";
    TX_COUNT_1M = "tx_count_1m": Num, "Entity transactions in the last minute, this one included.";
    TX_COUNT_10M = "tx_count_10m": Num, "Entity transactions in the last 10 minutes, this one included.";
    TX_COUNT_1H = "tx_count_1h": Num, "Entity transactions in the last hour, this one included.";
    TX_COUNT_24H = "tx_count_24h": Num, "Entity transactions in the last 24 hours, this one included.";
    AMOUNT_SUM_10M = "amount_sum_10m": Num, "Entity amount total over 10 minutes, this one included.";
    AMOUNT_SUM_1H = "amount_sum_1h": Num, "Entity amount total over 1 hour, this one included.";
    AMOUNT_SUM_24H = "amount_sum_24h": Num, "Entity amount total over 24 hours, this one included.";
    AVG_AMOUNT_10M = "avg_amount_10m": Num, "Mean amount of the entity's transactions in the last 10 minutes.";
    SPEND_1H_TO_MEAN = "spend_1h_to_mean": Num, "Last hour's spend (this one included) in multiples of the entity's mean amount.";
    MERCHANT_TX_COUNT_1H = "merchant_tx_count_1h": Num, "Transactions at this merchant/terminal in the last hour.";
    MERCHANT_TX_COUNT_24H = "merchant_tx_count_24h": Num, "Transactions at this merchant/terminal in the last 24 hours.";
    MERCHANT_AGE_DAYS = "merchant_age_days": Num, "Days since the merchant's first transaction.";
    MERCHANT_FRAUD_RATE = "merchant_fraud_rate": Num, "Smoothed share of this merchant's transactions labelled fraud, unlabelled ones counting as genuine (30-day half-life); NULL without labels.";
    MERCHANT_ALERT_RATE = "merchant_alert_rate": Num, "Alerts per transaction at this merchant (30-day half-life).";
    DEVICE_TX_COUNT_1H = "device_tx_count_1h": Num, "Transactions from this device in the last hour.";
    DEVICE_ENTITY_COUNT = "device_entity_count": Num, "Distinct entities seen on this device (capped at 32).";
    IP_TX_COUNT_1H = "ip_tx_count_1h": Num, "Transactions from this IP address in the last hour.";
    IP_ENTITY_COUNT = "ip_entity_count": Num, "Distinct entities seen on this IP address (capped at 32).";
    KM_FROM_HOME = "km_from_home": Num, "Distance from the entity's decayed home location, km.";
    KM_FROM_LAST = "km_from_last": Num, "Distance from the entity's previous located transaction, km.";
    SPEED_KMH = "speed_kmh": Num, "Speed needed to get here from the previous located transaction, km/h.";
    KM_BETWEEN_LOCATIONS = "km_between_locations": Num, "Distance between the row's two locations (e.g. billing vs shipping), km.";
    HOUR_OF_DAY = "hour_of_day": Num, "Hour of day, UTC (0-23).";
    HOUR_UNUSUALNESS = "hour_unusualness": Num, "0 = the entity's busiest hour, 1 = an hour it is never active in.";
    IS_NEW_DEVICE = "is_new_device": Bool, "The entity has not used this device recently.";
    IS_NEW_MERCHANT = "is_new_merchant": Bool, "The entity has not paid this merchant recently.";
    IS_NEW_COUNTRY = "is_new_country": Bool, "The entity has not transacted in this country recently.";
    CARD_PRESENT = "card_present": Bool, "Card-present transaction (from the channel column).";
    TS_SKEW_SECONDS = "ts_skew_seconds": Num, "Row timestamp minus the database clock, seconds (positive = future).";
    ENTITY = "entity": Str, "The entity key as text.";
    MERCHANT = "merchant": Str, "The merchant/terminal as text.";
    COUNTRY = "country": Str, "The country as text.";
    DEVICE = "device": Str, "The device id as text.";
}

/// The features a model uses unless told otherwise: every number and flag except the clock
/// skew, which describes the writer's clock rather than the payment.
pub fn default_model_features() -> Vec<&'static str> {
    FEATURES.iter().filter(|d| d.ty != FType::Str && d.name != "ts_skew_seconds").map(|d| d.name).collect()
}

/// Looks a feature up by name.
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|d| d.name == name)
}

/// One value per feature, indexed by the constants in [`f`].
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureVector {
    /// The values, in [`FEATURES`] order.
    pub values: Vec<Value>,
}

impl FeatureVector {
    /// The value of feature `id`.
    pub fn get(&self, id: usize) -> &Value {
        &self.values[id]
    }

    /// A JSON object `{name: value}` of every feature.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        FEATURES.iter().zip(&self.values).map(|(d, v)| (d.name.to_string(), v.to_json())).collect()
    }

    /// Model inputs for the given feature ids (NaN for missing).
    pub fn model_row(&self, ids: &[usize], out: &mut Vec<f64>) {
        out.clear();
        out.extend(ids.iter().map(|&i| self.values[i].as_model_input()));
    }
}

/// An incoming transaction, as read from the watched table's mapped columns.
#[derive(Clone, Debug, Default)]
pub struct Txn<'a> {
    /// Entity key (customer, card, account); `None` if the column is NULL.
    pub entity: Option<&'a str>,
    /// Amount; `None` for NULL.
    pub amount: Option<f64>,
    /// Timestamp, µs since the Unix epoch.
    pub t_us: i64,
    /// The database clock when scoring, µs since the Unix epoch.
    pub now_us: i64,
    /// Merchant or terminal.
    pub merchant: Option<&'a str>,
    /// Device fingerprint.
    pub device: Option<&'a str>,
    /// Client IP address.
    pub ip: Option<&'a str>,
    /// Country code.
    pub country: Option<&'a str>,
    /// Latitude/longitude as stored (validated here).
    pub location: Option<(f64, f64)>,
    /// A second location on the row (shipping address, terminal...).
    pub location2: Option<(f64, f64)>,
    /// Card present (true) or not (false).
    pub card_present: Option<bool>,
}

/// Tunables for feature computation.
#[derive(Clone, Copy, Debug)]
pub struct FeatureConfig {
    /// |z| is clipped here.
    pub zscore_clip: f64,
    /// Minimum events before hour-of-day unusualness is computed.
    pub hour_min_events: u64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig { zscore_clip: 10.0, hour_min_events: 10 }
    }
}

/// The states of the row's keys, as they were before the row.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyStates<'s> {
    /// The entity's state (`None` for a NULL entity).
    pub entity: Option<StateView<'s>>,
    /// The merchant's state, if the merchant is mapped and non-NULL.
    pub merchant: Option<StateView<'s>>,
    /// The device's state.
    pub device: Option<StateView<'s>>,
    /// The IP's state.
    pub ip: Option<StateView<'s>>,
}

/// Whether an amount may enter profiles and sums.
pub fn profile_amount(amount: Option<f64>) -> Option<f64> {
    amount.filter(|a| a.is_finite() && *a >= 0.0 && *a < MAX_PROFILE_AMOUNT)
}

impl Txn<'_> {
    /// The validated location, if any.
    pub fn loc(&self) -> Option<LatLon> {
        self.location.and_then(|(lat, lon)| LatLon::new(lat, lon))
    }

    /// The state-side view of this transaction. `t_us` is the time recorded in states,
    /// which the caller may have clamped (see the extension's clock-skew guard).
    pub fn event(&self, t_us: i64) -> Event {
        Event {
            t_us,
            amount: profile_amount(self.amount),
            location: self.loc(),
            device: self.device.map(value_hash),
            merchant: self.merchant.map(value_hash),
            country: self.country.map(value_hash),
            entity: self.entity.map(value_hash),
        }
    }
}

fn window_with_self(state: Option<StateView<'_>>, t_us: i64, window_us: i64, amount: f64) -> Option<Window> {
    let mut w = match state {
        Some(s) => s.velocity(t_us, window_us)?,
        None => Window::default(),
    };
    w.count += 1;
    w.sum += amount;
    Some(w)
}

/// Computes every feature of `txn` against the prior states of its keys.
pub fn compute(txn: &Txn, states: &KeyStates, cfg: &FeatureConfig) -> FeatureVector {
    use f::*;
    let mut v = vec![Value::Null; COUNT];
    let t = txn.t_us;
    let valid_amount = profile_amount(txn.amount);
    let amount_for_sums = valid_amount.unwrap_or(0.0);

    if let Some(a) = txn.amount.filter(|a| a.is_finite()) {
        v[AMOUNT] = Value::num(a);
        v[IS_REFUND] = Value::Bool(a < 0.0);
        if a >= 0.0 {
            v[LOG_AMOUNT] = Value::num(a.ln_1p());
        }
    }
    v[AMOUNT_INVALID] = Value::Bool(txn.amount.is_none_or(|a| !a.is_finite() || a.abs() >= MAX_PROFILE_AMOUNT));
    v[TS_SKEW_SECONDS] = Value::num((t as f64 - txn.now_us as f64) / 1e6);
    v[HOUR_OF_DAY] = Value::Num(hour_of_day(t) as f64);
    v[CARD_PRESENT] = Value::opt_bool(txn.card_present);
    v[ENTITY] = txn.entity.map_or(Value::Null, |s| Value::Str(s.to_string()));
    v[MERCHANT] = txn.merchant.map_or(Value::Null, |s| Value::Str(s.to_string()));
    v[COUNTRY] = txn.country.map_or(Value::Null, |s| Value::Str(s.to_string()));
    v[DEVICE] = txn.device.map_or(Value::Null, |s| Value::Str(s.to_string()));

    let loc = txn.loc();
    if let (Some(a), Some(b)) = (loc, txn.location2.and_then(|(lat, lon)| LatLon::new(lat, lon))) {
        v[KM_BETWEEN_LOCATIONS] = Value::num(haversine_km(a, b));
    }

    // Velocity: a row with a NULL entity still has a velocity of one (itself).
    const WINDOWS_S: [i64; 4] = [60, 600, 3600, 86_400];
    let windows = match states.entity {
        Some(e) => e.velocity_many(t, WINDOWS_S.map(|s| s * 1_000_000)),
        None => [Some(Window::default()); 4],
    };
    let ids = [
        (TX_COUNT_1M, None),
        (TX_COUNT_10M, Some(AMOUNT_SUM_10M)),
        (TX_COUNT_1H, Some(AMOUNT_SUM_1H)),
        (TX_COUNT_24H, Some(AMOUNT_SUM_24H)),
    ];
    for ((count_id, sum_id), w) in ids.into_iter().zip(windows) {
        let Some(mut w) = w else { continue };
        w.count += 1;
        w.sum += amount_for_sums;
        v[count_id] = Value::Num(w.count as f64);
        if let Some(sid) = sum_id {
            v[sid] = Value::num(w.sum);
        }
        if count_id == TX_COUNT_10M {
            v[AVG_AMOUNT_10M] = Value::num(w.sum / w.count as f64);
        }
    }

    let clip = cfg.zscore_clip;
    if let Some(e) = states.entity {
        let n = e.n();
        v[ENTITY_TX_COUNT] = Value::Num(n as f64);
        if let Some(first) = e.first_seen_us() {
            v[ENTITY_AGE_DAYS] = Value::num(((t - first) as f64 / DAY_US as f64).max(0.0));
        }
        if let Some(last) = e.last_seen_us() {
            v[SECS_SINCE_LAST] = Value::num(((t - last) as f64 / 1e6).max(0.0));
        }
        let w = e.amount();
        if w.n > 0 && w.mean > 0.0 {
            if let Value::Num(spend) = v[AMOUNT_SUM_1H] {
                v[SPEND_1H_TO_MEAN] = Value::num(spend / w.mean);
            }
        }
        if let Some(a) = valid_amount {
            v[AMOUNT_ZSCORE] = Value::opt_num(w.zscore(a, clip));
            v[AMOUNT_ROBUST_Z] = Value::opt_num(e.robust_z(a, clip));
            if w.n > 0 && w.mean > 0.0 {
                v[AMOUNT_TO_MEAN] = Value::num(a / w.mean);
            }
            if let Some(m) = e.max_amount().filter(|m| *m > 0.0) {
                v[AMOUNT_TO_MAX] = Value::num(a / m);
            }
        }
        if let Some(p) = loc {
            if let Some(home) = e.home() {
                v[KM_FROM_HOME] = Value::num(haversine_km(p, home));
            }
            if let Some((prev, prev_t)) = e.last_location() {
                let km = haversine_km(p, prev);
                v[KM_FROM_LAST] = Value::num(km);
                v[SPEED_KMH] = Value::opt_num(speed_kmh(km, (t - prev_t) as f64 / 1e6));
            }
        }
        v[HOUR_UNUSUALNESS] = Value::opt_num(e.hours().unusualness(hour_of_day(t), cfg.hour_min_events));
        // Novelty is only meaningful once the entity has a history to be new against.
        if n > 0 {
            let novel = |set: fn(&crate::state::State) -> &crate::state::RecentSet, value: Option<&str>| {
                value.map(|s| !e.knows(set, value_hash(s)))
            };
            v[IS_NEW_DEVICE] = Value::opt_bool(novel(|s| &s.devices, txn.device));
            v[IS_NEW_MERCHANT] = Value::opt_bool(novel(|s| &s.merchants, txn.merchant));
            v[IS_NEW_COUNTRY] = Value::opt_bool(novel(|s| &s.countries, txn.country));
        }
    } else if txn.entity.is_some() {
        // A first transaction: known zero history rather than unknown.
        v[ENTITY_TX_COUNT] = Value::Num(0.0);
    }

    if txn.merchant.is_some() {
        let m = states.merchant;
        if let Some(w) = window_with_self(m, t, 3_600_000_000, 0.0) {
            v[MERCHANT_TX_COUNT_1H] = Value::Num(w.count as f64);
        }
        if let Some(w) = window_with_self(m, t, 86_400_000_000, 0.0) {
            v[MERCHANT_TX_COUNT_24H] = Value::Num(w.count as f64);
        }
        if let Some(m) = m {
            if let Some(first) = m.first_seen_us() {
                v[MERCHANT_AGE_DAYS] = Value::num(((t - first) as f64 / DAY_US as f64).max(0.0));
            }
            let fraud = m.decayed(|s| &s.fraud_labels, t, RISK_HALF_LIFE_DAYS).max(0.0);
            let genuine = m.decayed(|s| &s.genuine_labels, t, RISK_HALF_LIFE_DAYS).max(0.0);
            let activity = m.decayed(|s| &s.activity, t, ACTIVITY_HALF_LIFE_DAYS);
            if fraud + genuine > 0.0 {
                // Labels are mostly chargebacks: fraud is reported, genuine rarely is. So the
                // denominator is the merchant's transactions (unlabelled ones count as genuine),
                // or its labels if more were labelled than seen. Beta(0.1, 9.9) prior: a 1%
                // base rate worth ten transactions, so one fraud on a new merchant reads ~10%.
                let seen = activity.max(fraud + genuine);
                v[MERCHANT_FRAUD_RATE] = Value::num((fraud + 0.1) / (seen + 10.0));
            }
            if activity >= 1.0 {
                v[MERCHANT_ALERT_RATE] =
                    Value::num((m.decayed(|s| &s.alerts, t, RISK_HALF_LIFE_DAYS) / activity).min(1.0));
            }
        }
    }
    let entity_hash = txn.entity.map(value_hash);
    for (value, state, count_id, distinct_id) in [
        (txn.device, states.device, DEVICE_TX_COUNT_1H, DEVICE_ENTITY_COUNT),
        (txn.ip, states.ip, IP_TX_COUNT_1H, IP_ENTITY_COUNT),
    ] {
        if value.is_none() {
            continue;
        }
        if let Some(w) = window_with_self(state, t, 3_600_000_000, 0.0) {
            v[count_id] = Value::Num(w.count as f64);
        }
        let mut distinct = state.map_or(0, |s| s.distinct_entities());
        if let Some(h) = entity_hash {
            if !state.is_some_and(|s| s.knows(|s| &s.entities, h)) {
                distinct += 1;
            }
        }
        v[distinct_id] = Value::Num(distinct as f64);
    }
    FeatureVector { values: v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Kind, State};

    const T0: i64 = 1_700_000_000_000_000;
    const MIN: i64 = 60_000_000;

    fn txn(amount: f64, t_min: i64) -> Txn<'static> {
        Txn {
            entity: Some("card_1"),
            amount: Some(amount),
            t_us: T0 + t_min * MIN,
            now_us: T0 + t_min * MIN,
            merchant: Some("m1"),
            device: Some("dev_a"),
            country: Some("FR"),
            location: Some((48.8566, 2.3522)),
            ..Default::default()
        }
    }

    fn history(n: i64) -> State {
        let mut s = State::default();
        for i in 0..n {
            let t = txn(20.0 + (i % 5) as f64, i * 60 * 24);
            s.record(Kind::Entity, &t.event(t.t_us));
        }
        s
    }

    #[test]
    fn names_are_unique_and_indexed() {
        let mut names: Vec<_> = FEATURES.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FEATURES.len());
        assert_eq!(FEATURES.len(), f::COUNT);
        assert_eq!(feature_index("tx_count_1h"), Some(f::TX_COUNT_1H));
        assert_eq!(feature_index("nope"), None);
    }

    #[test]
    fn first_transaction_of_an_unknown_entity() {
        let fv = compute(&txn(50.0, 0), &KeyStates::default(), &FeatureConfig::default());
        assert_eq!(fv.get(f::TX_COUNT_1H), &Value::Num(1.0));
        assert_eq!(fv.get(f::AMOUNT_SUM_1H), &Value::Num(50.0));
        assert_eq!(fv.get(f::ENTITY_TX_COUNT), &Value::Num(0.0));
        assert_eq!(fv.get(f::AMOUNT_ZSCORE), &Value::Null);
        assert_eq!(fv.get(f::IS_NEW_DEVICE), &Value::Null, "no history to be new against");
        assert_eq!(fv.get(f::KM_FROM_HOME), &Value::Null);
        assert_eq!(fv.get(f::MERCHANT_TX_COUNT_1H), &Value::Num(1.0));
        assert_eq!(fv.get(f::DEVICE_TX_COUNT_1H), &Value::Num(1.0));
        assert_eq!(fv.get(f::DEVICE_ENTITY_COUNT), &Value::Num(1.0));
        assert_eq!(fv.get(f::IP_TX_COUNT_1H), &Value::Null, "no IP on the row");
    }

    #[test]
    fn spike_far_away_on_new_device() {
        let e = history(30);
        let mut t = txn(5000.0, 29 * 60 * 24 + 5);
        t.device = Some("dev_new");
        t.country = Some("BR");
        t.location = Some((-23.55, -46.63)); // São Paulo
        let fv = compute(
            &t,
            &KeyStates { entity: Some(StateView::one(&e)), ..Default::default() },
            &FeatureConfig::default(),
        );
        assert_eq!(fv.get(f::AMOUNT_ZSCORE), &Value::Num(10.0));
        assert!(matches!(fv.get(f::AMOUNT_ROBUST_Z), Value::Num(z) if *z > 5.0));
        assert_eq!(fv.get(f::IS_NEW_DEVICE), &Value::Bool(true));
        assert_eq!(fv.get(f::IS_NEW_COUNTRY), &Value::Bool(true));
        assert_eq!(fv.get(f::IS_NEW_MERCHANT), &Value::Bool(false));
        let Value::Num(km) = *fv.get(f::KM_FROM_HOME) else { panic!() };
        assert!((km - 9400.0).abs() < 200.0, "{km}");
        let Value::Num(speed) = *fv.get(f::SPEED_KMH) else { panic!() };
        assert!(speed > 50_000.0, "Paris to São Paulo in 5 minutes: {speed}");
        assert_eq!(fv.get(f::ENTITY_TX_COUNT), &Value::Num(30.0));
    }

    #[test]
    fn bad_inputs_give_defined_values() {
        let e = history(10);
        let states = KeyStates { entity: Some(StateView::one(&e)), ..Default::default() };
        for amount in [None, Some(f64::NAN), Some(f64::INFINITY), Some(f64::NEG_INFINITY), Some(1e300)] {
            let mut t = txn(0.0, 20_000);
            t.amount = amount;
            t.location = Some((91.0, 0.0));
            t.location2 = Some((f64::NAN, 0.0));
            let fv = compute(&t, &states, &FeatureConfig::default());
            assert_eq!(fv.get(f::AMOUNT_INVALID), &Value::Bool(true), "{amount:?}");
            assert_eq!(fv.get(f::AMOUNT_ZSCORE), &Value::Null);
            assert_eq!(fv.get(f::KM_FROM_HOME), &Value::Null, "latitude 91 is not a place");
            assert_eq!(fv.get(f::KM_BETWEEN_LOCATIONS), &Value::Null);
            assert!(fv.values.iter().all(|v| !matches!(v, Value::Num(x) if !x.is_finite())));
        }
        let mut refund = txn(-30.0, 20_000);
        refund.location = None;
        let fv = compute(&refund, &states, &FeatureConfig::default());
        assert_eq!(fv.get(f::IS_REFUND), &Value::Bool(true));
        assert_eq!(fv.get(f::AMOUNT_INVALID), &Value::Bool(false));
        assert_eq!(fv.get(f::LOG_AMOUNT), &Value::Null);
        assert_eq!(fv.get(f::AMOUNT_SUM_24H), &Value::Num(0.0), "refunds do not add to spend");
    }

    #[test]
    fn velocity_includes_this_row_and_prior_rows() {
        let mut e = State::default();
        for i in 0..5 {
            let t = txn(2.0, 0);
            e.record(Kind::Entity, &t.event(T0 + i * 1_000_000));
        }
        let mut now = txn(3.0, 0);
        now.t_us = T0 + 5_000_000;
        let fv = compute(
            &now,
            &KeyStates { entity: Some(StateView::one(&e)), ..Default::default() },
            &FeatureConfig::default(),
        );
        assert_eq!(fv.get(f::TX_COUNT_1M), &Value::Num(6.0));
        assert_eq!(fv.get(f::AMOUNT_SUM_10M), &Value::Num(13.0));
        assert_eq!(fv.get(f::AVG_AMOUNT_10M), &Value::Num(13.0 / 6.0));
    }

    #[test]
    fn shared_device_counts_distinct_entities() {
        let mut dev = State::default();
        for card in ["a", "b", "c"] {
            let mut t = txn(1.0, 0);
            t.entity = Some(card);
            dev.record(Kind::Device, &t.event(t.t_us));
        }
        let mut t = txn(1.0, 1);
        t.entity = Some("d");
        let fv = compute(
            &t,
            &KeyStates { device: Some(StateView::one(&dev)), ..Default::default() },
            &FeatureConfig::default(),
        );
        assert_eq!(fv.get(f::DEVICE_ENTITY_COUNT), &Value::Num(4.0));
        assert_eq!(fv.get(f::DEVICE_TX_COUNT_1H), &Value::Num(4.0));
        t.entity = Some("a");
        let fv = compute(
            &t,
            &KeyStates { device: Some(StateView::one(&dev)), ..Default::default() },
            &FeatureConfig::default(),
        );
        assert_eq!(fv.get(f::DEVICE_ENTITY_COUNT), &Value::Num(3.0));
    }

    #[test]
    fn merchant_risk_from_labels() {
        let mut m = State::default();
        let t = txn(1.0, 0);
        for _ in 0..20 {
            m.record(Kind::Merchant, &t.event(t.t_us));
        }
        let fv = compute(
            &t,
            &KeyStates { merchant: Some(StateView::one(&m)), ..Default::default() },
            &FeatureConfig::default(),
        );
        assert_eq!(fv.get(f::MERCHANT_FRAUD_RATE), &Value::Null, "no labels yet");
        for _ in 0..5 {
            m.record_label(true, t.t_us);
        }
        for _ in 0..5 {
            m.record_label(false, t.t_us);
        }
        let fv = compute(
            &t,
            &KeyStates { merchant: Some(StateView::one(&m)), ..Default::default() },
            &FeatureConfig::default(),
        );
        // 5 fraud among 20 transactions (the 10 labels are among them), with the prior.
        let Value::Num(rate) = *fv.get(f::MERCHANT_FRAUD_RATE) else { panic!() };
        assert!((rate - 5.1 / 30.0).abs() < 1e-9, "{rate}");
        assert_eq!(fv.get(f::MERCHANT_TX_COUNT_1H), &Value::Num(21.0));
    }

    #[test]
    fn a_busy_merchant_with_a_few_chargebacks_is_not_risky() {
        let mut m = State::default();
        let t = txn(1.0, 0);
        for _ in 0..500 {
            m.record(Kind::Merchant, &t.event(t.t_us));
        }
        for _ in 0..2 {
            m.record_label(true, t.t_us);
        }
        let states = KeyStates { merchant: Some(StateView::one(&m)), ..Default::default() };
        let Value::Num(rate) = *compute(&t, &states, &FeatureConfig::default()).get(f::MERCHANT_FRAUD_RATE) else {
            panic!()
        };
        assert!((rate - 2.1 / 510.0).abs() < 1e-9, "{rate}");
        // ... while the same two on a quiet merchant are.
        let mut quiet = State::default();
        quiet.record(Kind::Merchant, &t.event(t.t_us));
        quiet.record_label(true, t.t_us);
        quiet.record_label(true, t.t_us);
        let states = KeyStates { merchant: Some(StateView::one(&quiet)), ..Default::default() };
        let Value::Num(rate) = *compute(&t, &states, &FeatureConfig::default()).get(f::MERCHANT_FRAUD_RATE) else {
            panic!()
        };
        assert!((rate - 2.1 / 12.0).abs() < 1e-9, "{rate}");
    }
}
