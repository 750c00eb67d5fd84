//! Point-in-time features for training: history replayed in time order through the same
//! feature and state code the trigger runs, so each row sees only what was known when it
//! arrived — never a later row, never a label given after it.
//!
//! Training on features recomputed from *today's* profiles would leak the future into the
//! past (an entity's mean already containing the fraud spike being learned) and make every
//! offline metric lie. Replaying is the alternative to storing each row's vector at insert
//! time: it costs nothing on the insert path and works on history loaded before pg_fraud.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::features::{self, FeatureConfig, FeatureVector, KeyStates, Txn};
use crate::state::{Kind, State, StateView};

/// A label that becomes known at `at_us` for a row with these keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PendingLabel {
    at_us: i64,
    seq: u64,
    entity: Option<String>,
    merchant: Option<String>,
    is_fraud: bool,
}

/// In-memory states of every key of one watched table, advanced row by row.
#[derive(Debug, Default)]
pub struct Replay {
    states: HashMap<(Kind, String), State>,
    labels: BinaryHeap<Reverse<PendingLabel>>,
    seq: u64,
    cfg: FeatureConfig,
}

impl Replay {
    /// An empty replay (no key has any history yet).
    pub fn new(cfg: FeatureConfig) -> Self {
        Replay { cfg, ..Default::default() }
    }

    /// Number of keys with state.
    pub fn keys(&self) -> usize {
        self.states.len()
    }

    /// The state of a key, if it has one.
    pub fn state(&self, kind: Kind, key: &str) -> Option<&State> {
        self.states.get(&(kind, key.to_string()))
    }

    fn view(&self, kind: Kind, key: Option<&str>) -> Option<StateView<'_>> {
        // A lookup by (Kind, &str) would need a borrowed key type; the allocation is cheap
        // next to the feature computation and keeps this module simple.
        key.and_then(|k| self.states.get(&(kind, k.to_string()))).map(StateView::one)
    }

    /// Applies every scheduled label that is known by `t_us`.
    fn release_labels(&mut self, t_us: i64) {
        while self.labels.peek().is_some_and(|Reverse(l)| l.at_us <= t_us) {
            let Reverse(l) = self.labels.pop().expect("peeked");
            for (kind, key) in [(Kind::Entity, l.entity), (Kind::Merchant, l.merchant)] {
                if let Some(key) = key {
                    self.states.entry((kind, key)).or_default().record_label(l.is_fraud, l.at_us);
                }
            }
        }
    }

    /// The features of `txn` as of its arrival, then records it like the trigger does.
    /// `alerted` is asked whether the row raised an alert (it feeds the merchant's alert
    /// rate); `t_us` is the time the trigger would record the row at.
    pub fn step(&mut self, txn: &Txn, alerted: impl FnOnce(&FeatureVector) -> bool) -> FeatureVector {
        let t = txn.t_us;
        self.release_labels(t);
        let fv = {
            let states = KeyStates {
                entity: self.view(Kind::Entity, txn.entity),
                merchant: self.view(Kind::Merchant, txn.merchant),
                device: self.view(Kind::Device, txn.device),
                ip: self.view(Kind::Ip, txn.ip),
            };
            features::compute(txn, &states, &self.cfg)
        };
        let ev = txn.event(t);
        for (kind, key) in
            [(Kind::Entity, txn.entity), (Kind::Merchant, txn.merchant), (Kind::Device, txn.device), (Kind::Ip, txn.ip)]
        {
            if let Some(key) = key {
                self.states.entry((kind, key.to_string())).or_default().record(kind, &ev);
            }
        }
        if alerted(&fv) {
            if let Some(m) = txn.merchant {
                self.states.entry((Kind::Merchant, m.to_string())).or_default().record_alert(t);
            }
        }
        fv
    }

    /// Schedules a label for a row with these keys, known from `at_us` on: rows after that
    /// instant see it in the entity's and merchant's fraud rates, rows before do not.
    pub fn schedule_label(&mut self, entity: Option<&str>, merchant: Option<&str>, is_fraud: bool, at_us: i64) {
        self.seq += 1;
        self.labels.push(Reverse(PendingLabel {
            at_us,
            seq: self.seq,
            entity: entity.map(str::to_string),
            merchant: merchant.map(str::to_string),
            is_fraud,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{f, Value};

    const MIN: i64 = 60_000_000;

    fn txn<'a>(entity: &'a str, merchant: &'a str, amount: f64, t_us: i64) -> Txn<'a> {
        Txn {
            entity: Some(entity),
            merchant: Some(merchant),
            amount: Some(amount),
            t_us,
            now_us: t_us,
            ..Default::default()
        }
    }

    #[test]
    fn each_row_sees_only_the_past() {
        let mut r = Replay::new(FeatureConfig::default());
        let first = r.step(&txn("alice", "m1", 10.0, 0), |_| false);
        assert_eq!(first.get(f::ENTITY_TX_COUNT), &Value::Num(0.0));
        assert_eq!(first.get(f::TX_COUNT_1H), &Value::Num(1.0));
        let second = r.step(&txn("alice", "m1", 30.0, MIN), |_| false);
        assert_eq!(second.get(f::ENTITY_TX_COUNT), &Value::Num(1.0));
        assert_eq!(second.get(f::TX_COUNT_1H), &Value::Num(2.0));
        assert_eq!(second.get(f::AMOUNT_TO_MEAN), &Value::Num(3.0));
        assert_eq!(r.keys(), 2);
    }

    #[test]
    fn replay_matches_the_trigger_order_of_compute_then_record() {
        // The same rows through compute + record by hand give the same vectors.
        let rows = [("a", "m", 5.0, 0), ("a", "m", 7.0, MIN), ("b", "m", 100.0, 2 * MIN), ("a", "m", 9.0, 3 * MIN)];
        let mut r = Replay::new(FeatureConfig::default());
        let mut states: HashMap<(Kind, String), State> = HashMap::new();
        for (e, m, a, t) in rows {
            let tx = txn(e, m, a, t);
            let expected = {
                let es = states.get(&(Kind::Entity, e.to_string())).map(StateView::one);
                let ms = states.get(&(Kind::Merchant, m.to_string())).map(StateView::one);
                let ks = KeyStates { entity: es, merchant: ms, ..Default::default() };
                features::compute(&tx, &ks, &FeatureConfig::default())
            };
            let ev = tx.event(t);
            states.entry((Kind::Entity, e.to_string())).or_default().record(Kind::Entity, &ev);
            states.entry((Kind::Merchant, m.to_string())).or_default().record(Kind::Merchant, &ev);
            assert_eq!(r.step(&tx, |_| false), expected);
        }
    }

    #[test]
    fn labels_count_only_from_when_they_are_known() {
        let mut r = Replay::new(FeatureConfig::default());
        r.step(&txn("thief", "shop", 900.0, 0), |_| false);
        // The chargeback arrives two days later.
        r.schedule_label(Some("thief"), Some("shop"), true, 2 * 24 * 60 * MIN);
        let before = r.step(&txn("carol", "shop", 20.0, 24 * 60 * MIN), |_| false);
        assert_eq!(before.get(f::MERCHANT_FRAUD_RATE), &Value::Null);
        let after = r.step(&txn("dave", "shop", 20.0, 3 * 24 * 60 * MIN), |_| false);
        match after.get(f::MERCHANT_FRAUD_RATE) {
            Value::Num(rate) => assert!(*rate > 0.05 && *rate < 0.2, "rate {rate}"),
            v => panic!("expected a rate, got {v:?}"),
        }
    }

    #[test]
    fn alerts_feed_the_merchant_alert_rate() {
        let mut r = Replay::new(FeatureConfig::default());
        for i in 0..4 {
            r.step(&txn(["a", "b", "c", "d"][i], "m", 10.0, i as i64 * MIN), |_| i < 2);
        }
        let fv = r.step(&txn("e", "m", 10.0, 5 * MIN), |_| false);
        match fv.get(f::MERCHANT_ALERT_RATE) {
            Value::Num(rate) => assert!((rate - 0.5).abs() < 0.01, "rate {rate}"),
            v => panic!("expected a rate, got {v:?}"),
        }
    }
}
