//! One row, end to end: mapped values → key states → features → rules + models → outcome,
//! and, when inserting, the state updates and the alert.

use pgrx::pg_sys;
use pgrx::spi::Spi;

use fraud_core::features::{self, FeatureConfig, FeatureVector, KeyStates};
use fraud_core::score::{self, ModelSignal, Outcome};
use fraud_core::state::{Kind, State, StateView};

use crate::catalog::{Config, Watch};
use crate::error::Result;
use crate::gucs;
use crate::rowread::RowValues;
use crate::store::{self, KeyRef};

/// Why a row is being scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the BEFORE INSERT trigger: reads pending state, records the event.
    Insert,
    /// From `fraud_score`: reads committed state, changes nothing.
    Query,
    /// From `fraud_explain`: as `Query`, with every model's feature attribution.
    Explain,
}

/// Everything known about a scored row.
pub struct Scored {
    /// The row's mapped values.
    pub row: RowValues,
    /// The time the row was scored (and recorded) at, µs since the Unix epoch.
    pub t_us: i64,
    /// Its features.
    pub features: FeatureVector,
    /// The decision.
    pub outcome: Outcome,
    /// The signal of each active model of the table.
    pub models: Vec<ModelSignal>,
    /// Rules evaluated.
    pub rules_evaluated: usize,
}

/// The keys of a row, in [`KeyStates`] order: entity, merchant, device, ip.
pub fn key_ids(watch_id: i32, row: &RowValues) -> [Option<KeyRef<'_>>; 4] {
    fn id(watch: i32, kind: Kind, v: &Option<String>) -> Option<KeyRef<'_>> {
        v.as_deref().map(|key| KeyRef { watch, kind, key })
    }
    [
        id(watch_id, Kind::Entity, &row.entity),
        id(watch_id, Kind::Merchant, &row.merchant),
        id(watch_id, Kind::Device, &row.device),
        id(watch_id, Kind::Ip, &row.ip),
    ]
}

/// The instant a row is scored at: its own timestamp, or now when NULL/infinite, and never
/// further in the future than `pg_fraud.max_future_skew` (a bad clock must not push an
/// entity's velocity window days ahead and empty it).
pub fn effective_time(row: &RowValues, now_us: i64) -> i64 {
    let skew_us = gucs::MAX_FUTURE_SKEW.get() as i64 * 1_000_000;
    row.t_us.unwrap_or(now_us).min(now_us.saturating_add(skew_us))
}

/// The database clock (statement start), µs since the Unix epoch.
pub fn now_us() -> i64 {
    // SAFETY: reads the statement start timestamp of the current transaction.
    crate::rowread::timestamptz_to_unix_us(unsafe { pg_sys::GetCurrentStatementStartTimestamp() })
}

/// Feature tunables from the GUCs.
pub fn feature_config() -> FeatureConfig {
    FeatureConfig { zscore_clip: gucs::ZSCORE_CLIP.get(), ..FeatureConfig::default() }
}

/// Scores one row. In insert mode SPI is opened only when a key's state must be read (its
/// first row in the statement), so a bulk insert's later rows run no query at all.
pub fn score(cfg: &Config, watch: &Watch, row: RowValues, mode: Mode) -> Result<Scored> {
    let now = now_us();
    let t_us = effective_time(&row, now);
    let fcfg = feature_config();
    let fv = {
        let ids = key_ids(watch.id, &row);
        let txn = row.txn(t_us, now);
        match mode {
            Mode::Insert => {
                if store::needs_load(&ids) {
                    Spi::connect(|client| store::load(client, &ids))?;
                }
                store::with_states(&ids, |[entity, merchant, device, ip]| {
                    features::compute(&txn, &KeyStates { entity, merchant, device, ip }, &fcfg)
                })
            }
            Mode::Query | Mode::Explain => {
                let read = |id: Option<KeyRef<'_>>| -> Result<Option<State>> {
                    id.map(|id| store::read_cached(&id.to_owned())).transpose()
                };
                let (e, m, d, i) = (read(ids[0])?, read(ids[1])?, read(ids[2])?, read(ids[3])?);
                let states = KeyStates {
                    entity: e.as_ref().map(StateView::one),
                    merchant: m.as_ref().map(StateView::one),
                    device: d.as_ref().map(StateView::one),
                    ip: i.as_ref().map(StateView::one),
                };
                features::compute(&txn, &states, &fcfg)
            }
        }
    };
    let rules = cfg.rules_for(watch.relid);
    let thresholds = gucs::thresholds();
    let mut models = crate::models::signals(cfg, watch, &fv, mode == Mode::Explain)?;
    let mut outcome = score::decide(&rules, &fv, &models, &thresholds);
    if mode == Mode::Insert && outcome.alert && models.iter().any(|m| m.p > 0.0) {
        // An alert names the features behind each model's signal; attributing costs a second
        // walk of the trees, so only alerting rows pay it.
        crate::models::attribute(cfg, watch, &fv, &mut models)?;
        outcome = score::decide(&rules, &fv, &models, &thresholds);
    }
    Ok(Scored { row, t_us, features: fv, outcome, models, rules_evaluated: rules.len() })
}

/// Records a scored row's event in its keys' pending states (insert mode).
pub fn record(watch: &Watch, scored: &Scored) {
    let ids = key_ids(watch.id, &scored.row);
    let ev = scored.row.txn(scored.t_us, scored.t_us).event(scored.t_us);
    for (id, kind) in ids.iter().zip(Kind::ALL) {
        if let Some(id) = *id {
            store::update(id, |s| s.record(kind, &ev));
        }
    }
}

/// Records an alert on the row's merchant (merchant alert rate).
pub fn record_alert(watch: &Watch, scored: &Scored) {
    if let Some(m) = key_ids(watch.id, &scored.row)[1] {
        store::update(m, |s| s.record_alert(scored.t_us));
    }
}
