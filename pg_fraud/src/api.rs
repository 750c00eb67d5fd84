//! The SQL surface. The scoring functions live in the extension's schema (callable
//! unqualified); administration lives in schema `fraud`.
//!
//! Hot-path functions (`fraud_score`, `velocity`...) do not pin `search_path` with a `SET`
//! clause, which would cost a GUC save/restore per call: every query they run internally is
//! fully schema-qualified, operators included, so the caller's path cannot redirect them.
//! Administrative functions pin it.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;

use crate::regclass::RegClass;
use serde_json::json;

use fraud_core::features::FEATURES;
use fraud_core::sketch::Window;
use fraud_core::state::{Kind, State};
use fraud_core::timefeat::hour_of_day;

use crate::catalog::{self, Config, Conv, Watch};
use crate::error::{FraudError, Result};
use crate::rowread::{self, read_row, with_datums, RowValues};
use crate::scoring::{self, Mode, Scored};
use crate::store::{self, KeyId};

/// Scores a row of a watched table against the current state, without changing anything.
fn score_composite(t: PgHeapTuple<'_, AllocatedByRust>, mode: Mode) -> Result<Scored> {
    let cfg = catalog::config()?;
    let (typoid, row) = composite_row(&cfg, t);
    let watch = cfg
        .by_rowtype
        .get(&typoid)
        .ok_or_else(|| {
            FraudError::NotWatched(format!(
                "fraud_score() expects a row of a watched table, got a row of type {}",
                type_name(typoid)
            ))
        })?
        .clone();
    let row = row.ok_or_else(|| FraudError::Config(watch.columns.as_ref().err().cloned().unwrap_or_default()))?;
    catalog::as_owner(cfg.owner, || scoring::score(&cfg, &watch, row, mode))
}

fn type_name(typoid: Oid) -> String {
    // SAFETY: format_type_be handles any oid.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typoid)).to_string_lossy().into_owned() }
}

/// The row type of a composite value and, if it is a watched table's row, its mapped values.
fn composite_row(cfg: &Config, t: PgHeapTuple<'_, AllocatedByRust>) -> (Oid, Option<RowValues>) {
    let raw = t.into_pg();
    // SAFETY: a PgHeapTuple built from a composite datum has a valid header.
    let (typoid, typmod) = unsafe {
        (pgrx::heap_tuple_header_get_type_id((*raw).t_data), pgrx::heap_tuple_header_get_typmod((*raw).t_data))
    };
    let Some(watch) = cfg.by_rowtype.get(&typoid) else { return (typoid, None) };
    let Ok(cols) = &watch.columns else { return (typoid, None) };
    // SAFETY: the tuple's type is the watched table's row type, which its descriptor describes.
    let row = unsafe {
        let tupdesc = pg_sys::lookup_rowtype_tupdesc(typoid, typmod);
        let row = with_datums(raw, tupdesc, |d| read_row(cols, d, watch.amount_scale));
        pg_sys::DecrTupleDescRefCount(tupdesc);
        row
    };
    (typoid, Some(row))
}

/// Risk score in [0, 1] of a row of a watched table, e.g. `SELECT fraud_score(t) FROM payments t`.
///
/// Scored against the current profiles, as if the row arrived now with its own timestamp;
/// the score stored at insert time is in the row's risk columns and in `fraud.alerts`.
#[pg_extern(stable, parallel_restricted)]
fn fraud_score(t: pgrx::composite_type!("record")) -> std::result::Result<f64, pgrx::pg_sys::panic::ErrorReport> {
    Ok(score_composite(t, Mode::Query).map_err(|e| e.report())?.outcome.score)
}

/// Why a row scores what it does: every feature, every contribution (they add up to the
/// score), the rules that fired and the model used.
#[pg_extern(stable, parallel_restricted)]
fn fraud_explain(t: pgrx::composite_type!("record")) -> std::result::Result<JsonB, pgrx::pg_sys::panic::ErrorReport> {
    let s = score_composite(t, Mode::Explain).map_err(|e| e.report())?;
    let mut j = s.outcome.explain_json(&s.features, &s.models, s.rules_evaluated);
    j["scored_at"] = json!(iso(s.t_us));
    Ok(JsonB(j))
}

fn iso(t_us: i64) -> String {
    let secs = t_us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant), valid for the whole proleptic Gregorian range we use
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// Resolves the watch a SQL function should read.
pub(crate) fn watch_for(cfg: &Config, source: Option<&RegClass>) -> Result<std::rc::Rc<Watch>> {
    Ok(match source {
        Some(rel) => cfg.watch(rel.0)?.clone(),
        None => cfg.single_watch()?.clone(),
    })
}

fn parse_kind(kind: &str) -> Result<Kind> {
    Kind::parse(kind).ok_or_else(|| {
        FraudError::InvalidArgument(format!("kind must be one of entity, merchant, device, ip (got \"{kind}\")"))
    })
}

pub(crate) fn window_us(w: &Interval) -> Result<i64> {
    let us = w.as_micros();
    if us <= 0 {
        return Err(FraudError::InvalidArgument(format!("window must be positive (got {us} microseconds)")));
    }
    i64::try_from(us).map_err(|_| FraudError::InvalidArgument("window is too large".into()))
}

/// A timestamp argument as µs since the Unix epoch; ±infinity is an error naming `what`.
pub(crate) fn finite_us(what: &str, t: TimestampWithTimeZone) -> Result<i64> {
    if t.is_infinity() || t.is_neg_infinity() {
        return Err(FraudError::InvalidArgument(format!("{what} must be a finite timestamp")));
    }
    Ok(rowread::timestamptz_to_unix_us(pg_sys::TimestampTz::from(t)))
}

/// Count and amount sum of a key's transactions in `(at − window, at]`: from the key's
/// bucketed counters when they still hold the window (constant cost), otherwise exactly from
/// the watched table through its index.
fn window_for(
    source: Option<&RegClass>,
    kind: &str,
    key: &str,
    window: &Interval,
    at: TimestampWithTimeZone,
) -> Result<Window> {
    let kind = parse_kind(kind)?;
    let win = window_us(window)?;
    let at = finite_us("at", at)?;
    let cfg = catalog::config()?;
    let watch = watch_for(&cfg, source)?;
    let state = store::read_cached(&KeyId { watch: watch.id, kind, key: key.to_string() })?;
    if let Some(w) = state.velocity.query(at, win) {
        return Ok(w);
    }
    exact_window(&cfg, &watch, kind, key, at, win)
}

fn exact_window(cfg: &Config, watch: &Watch, kind: Kind, key: &str, at_us: i64, win_us: i64) -> Result<Window> {
    let cols = watch.columns.as_ref().map_err(|e| FraudError::Config(e.clone()))?;
    let col = match kind {
        Kind::Entity => Some(&cols.entity),
        Kind::Merchant => cols.merchant.as_ref(),
        Kind::Device => cols.device.as_ref(),
        Kind::Ip => cols.ip.as_ref(),
    }
    .ok_or_else(|| FraudError::InvalidArgument(format!("{} has no {} column mapped", watch.name, kind.as_str())))?;
    let q = |s: &str| pgrx::spi::quote_identifier(s);
    let ts = q(&cols.ts.name);
    let bound = |p: &str| match cols.ts.conv {
        Conv::Timestamptz => p.to_string(),
        Conv::Timestamp => format!("pg_catalog.timezone('UTC', {p})"),
        _ => format!("pg_catalog.timezone('UTC', {p})::pg_catalog.date"),
    };
    let amt = q(&cols.amount.name);
    let scaled = format!("({amt})::pg_catalog.float8 OPERATOR(pg_catalog.*) {}", watch.amount_scale);
    let sql = format!(
        "SELECT pg_catalog.count(*), pg_catalog.sum(CASE WHEN {scaled} OPERATOR(pg_catalog.>=) 0 AND {scaled} OPERATOR(pg_catalog.<) 1e15 THEN {scaled} ELSE 0 END) \
           FROM {} WHERE {} OPERATOR(pg_catalog.=) CAST($1 AS {}) AND {ts} OPERATOR(pg_catalog.>) {} AND {ts} OPERATOR(pg_catalog.<=) {}",
        watch.name,
        q(&col.name),
        type_name(col.typoid),
        bound("pg_catalog.to_timestamp($2)"),
        bound("pg_catalog.to_timestamp($3)"),
    );
    let (lo, hi) = ((at_us - win_us) as f64 / 1e6, at_us as f64 / 1e6);
    // Reads the application's table as the caller: their rights apply.
    let _ = cfg;
    let (count, sum) = Spi::get_two_with_args::<i64, f64>(&sql, &[key.into(), lo.into(), hi.into()])?;
    Ok(Window { count: count.unwrap_or(0) as u64, sum: sum.unwrap_or(0.0) })
}

/// Exact count of a key's transactions in `(at − window, at]`.
///
/// `kind` picks the key: `entity` (default), `merchant`, `device` or `ip`. With several
/// watched tables, `source` names the table.
#[pg_extern(stable, parallel_restricted)]
fn velocity(
    entity: Option<&str>,
    window: Option<Interval>,
    at: default!(Option<TimestampWithTimeZone>, "now()"),
    source: default!(Option<RegClass>, "NULL"),
    kind: default!(Option<&str>, "'entity'"),
) -> std::result::Result<Option<i64>, pgrx::pg_sys::panic::ErrorReport> {
    let (Some(entity), Some(window), Some(at), Some(kind)) = (entity, window, at, kind) else { return Ok(None) };
    Ok(Some(window_for(source.as_ref(), kind, entity, &window, at).map_err(|e| e.report())?.count as i64))
}

/// Sum of a key's valid (non-negative, finite) amounts in `(at − window, at]`.
#[pg_extern(stable, parallel_restricted)]
fn velocity_amount(
    entity: Option<&str>,
    window: Option<Interval>,
    at: default!(Option<TimestampWithTimeZone>, "now()"),
    source: default!(Option<RegClass>, "NULL"),
    kind: default!(Option<&str>, "'entity'"),
) -> std::result::Result<Option<f64>, pgrx::pg_sys::panic::ErrorReport> {
    let (Some(entity), Some(window), Some(at), Some(kind)) = (entity, window, at, kind) else { return Ok(None) };
    Ok(Some(window_for(source.as_ref(), kind, entity, &window, at).map_err(|e| e.report())?.sum))
}

/// How unusual `amount` is for `entity`: (amount − mean) / std dev from the running profile,
/// clipped to ±`pg_fraud.zscore_clip`. NULL for an unknown entity or one with a single amount;
/// 0 / ±clip against a history of identical amounts. `robust => true` uses the median and
/// MAD of log10(amount) instead, which one past outlier does not distort.
#[pg_extern(stable, parallel_restricted)]
fn anomaly_zscore(
    entity: Option<&str>,
    amount: Option<f64>,
    source: default!(Option<RegClass>, "NULL"),
    robust: default!(Option<bool>, false),
) -> std::result::Result<Option<f64>, pgrx::pg_sys::panic::ErrorReport> {
    let (Some(entity), Some(amount)) = (entity, amount) else { return Ok(None) };
    let robust = robust.unwrap_or(false);
    let run = || -> Result<Option<f64>> {
        if !amount.is_finite() {
            return Err(FraudError::InvalidArgument(format!("amount must be a finite number (got {amount})")));
        }
        let cfg = catalog::config()?;
        let watch = watch_for(&cfg, source.as_ref())?;
        let state = store::read_cached(&KeyId { watch: watch.id, kind: Kind::Entity, key: entity.to_string() })?;
        let clip = crate::gucs::ZSCORE_CLIP.get();
        Ok(if robust { state.log_amount.robust_z(amount, clip) } else { state.amount.zscore(amount, clip) })
    };
    run().map_err(|e| e.report())
}

/// A readable summary of a merged profile state.
pub fn state_json(s: &State) -> serde_json::Value {
    let ts = |t: Option<i64>| t.map(iso);
    let at = s.last_seen_us;
    let window = |w: i64| at.and_then(|t| s.velocity.query(t, w)).map(|w| w.count);
    json!({
        "tx_count": s.n,
        "first_seen": ts(s.first_seen_us),
        "last_seen": ts(s.last_seen_us),
        "amount_mean": (s.amount.n > 0).then_some(s.amount.mean),
        "amount_stddev": s.amount.std_dev(),
        "amount_m2": s.amount.m2,
        "amount_max": s.max_amount,
        "amount_median": s.log_amount.median_log10().map(|m| 10f64.powf(m)),
        "home": s.home.center().map(|p| json!({"lat": p.lat, "lon": p.lon})),
        "last_location": s.last_location.map(|(p, t)| json!({"lat": p.lat, "lon": p.lon, "at": iso(t)})),
        "hour_histogram": s.hours.counts().to_vec(),
        "busiest_hour": at.map(|_| (0..24u8).max_by_key(|h| s.hours.counts()[*h as usize]).unwrap_or(0)),
        "last_hour_of_day": at.map(hour_of_day),
        "known_devices": s.devices.len(),
        "known_merchants": s.merchants.len(),
        "known_countries": s.countries.len(),
        "distinct_entities": s.entities.len(),
        "tx_count_1h_at_last_seen": window(3_600_000_000),
        "tx_count_24h_at_last_seen": window(86_400_000_000),
        "alerts_decayed": at.map(|t| s.alerts.value_at(t, fraud_core::state::RISK_HALF_LIFE_DAYS)),
        "fraud_labels_decayed": at.map(|t| s.fraud_labels.value_at(t, fraud_core::state::RISK_HALF_LIFE_DAYS)),
        "genuine_labels_decayed": at.map(|t| s.genuine_labels.value_at(t, fraud_core::state::RISK_HALF_LIFE_DAYS)),
        "velocity_buckets": s.velocity.bucket_count(),
    })
}

#[pg_schema]
mod fraud {
    use super::*;

    /// Merges two encoded profile states (used by the profile upsert). A corrupt stored state
    /// is replaced by the new one with a WARNING rather than failing every insert for the key.
    #[pg_extern(immutable, strict, parallel_safe)]
    fn _merge_state(old: &[u8], new: &[u8]) -> std::result::Result<Vec<u8>, pgrx::pg_sys::panic::ErrorReport> {
        let new_state =
            State::decode(new).map_err(|e| FraudError::Config(format!("new profile state: {e}")).report())?;
        match State::decode(old) {
            Ok(mut s) => {
                s.merge(&new_state);
                Ok(s.encode())
            }
            Err(e) => {
                pgrx::warning!("pg_fraud: replacing a corrupt profile state ({e}); run fraud.rebuild_profiles() to restore its history");
                Ok(new_state.encode())
            }
        }
    }

    /// A readable summary of the merged shards of one profile.
    #[pg_extern(immutable, strict, parallel_safe)]
    fn _state_json(states: pgrx::Array<'_, &[u8]>) -> std::result::Result<JsonB, pgrx::pg_sys::panic::ErrorReport> {
        let mut merged = State::default();
        for bytes in states.iter().flatten() {
            let s = State::decode(bytes).map_err(|e| FraudError::Config(format!("profile state: {e}")).report())?;
            merged.merge(&s);
        }
        Ok(JsonB(state_json(&merged)))
    }

    /// The profile of one key (entity by default) as JSON, including this statement's
    /// not-yet-written updates.
    #[pg_extern(stable, parallel_restricted)]
    fn profile(
        key: Option<&str>,
        source: default!(Option<RegClass>, "NULL"),
        kind: default!(Option<&str>, "'entity'"),
    ) -> std::result::Result<Option<JsonB>, pgrx::pg_sys::panic::ErrorReport> {
        let (Some(key), Some(kind)) = (key, kind) else { return Ok(None) };
        let run = || -> Result<Option<JsonB>> {
            let kind = parse_kind(kind)?;
            let cfg = catalog::config()?;
            let watch = watch_for(&cfg, source.as_ref())?;
            let s = store::read_for_query(&KeyId { watch: watch.id, kind, key: key.to_string() })?;
            Ok((s.n > 0).then(|| JsonB(state_json(&s))))
        };
        run().map_err(|e| e.report())
    }

    /// Every feature the rules and models can use, with its type and meaning.
    #[pg_extern(immutable, parallel_safe)]
    fn _features() -> TableIterator<'static, (name!(name, String), name!(type, String), name!(description, String))> {
        TableIterator::new(FEATURES.iter().map(|d| (d.name.to_string(), d.ty.name().to_string(), d.doc.to_string())))
    }
}

/// The extension's own version (for upgrade checks).
#[pg_extern(immutable, parallel_safe, schema = "fraud")]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
