//! Settings. Every knob is a GUC so `ALTER DATABASE … SET pg_fraud.x = …` or `ALTER ROLE`
//! changes behaviour without a restart. Policy knobs are `SUSET`: an application role must
//! not be able to `SET pg_fraud.enabled = off` and skip scoring.

use std::cell::Cell;
use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_guard, pg_sys, PostgresGucEnum};

use fraud_core::score::Thresholds;

/// What a scoring error does to the row.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnError {
    /// Insert the row unscored, log a WARNING and count the error (default).
    #[name = c"open"]
    Open,
    /// Fail the insert.
    #[name = c"closed"]
    Closed,
}

/// Master switch: off skips scoring and profile maintenance entirely (an emergency brake;
/// profiles then lag the table until `fraud.rebuild_profiles`).
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// What a scoring error does: `open` keeps the row, `closed` fails the insert.
pub static ON_ERROR: GucSetting<OnError> = GucSetting::<OnError>::new(OnError::Open);
/// Score at which a row becomes `medium`.
pub static MEDIUM_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.4);
/// Score at which a row becomes `high` and raises an alert.
pub static ALERT_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.7);
/// Score at which a row becomes `critical`.
pub static CRITICAL_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.9);
/// Raw text of `pg_fraud.block_threshold` ('off' or a number); parsed into [`BLOCK_AT`].
static BLOCK_THRESHOLD: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"off"));
/// Whether block decisions reject the insert; off is shadow mode (they alert instead).
pub static ENFORCE_BLOCKS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Seconds during which further alerts for the same entity fold into the first one.
pub static ALERT_DEDUP_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(600);
/// Reasons stored with an alert.
pub static ALERT_REASONS: GucSetting<i32> = GucSetting::<i32>::new(5);
/// |z| is clipped at this value.
pub static ZSCORE_CLIP: GucSetting<f64> = GucSetting::<f64>::new(10.0);
/// Rows stamped further in the future than this are recorded at now + this.
pub static MAX_FUTURE_SKEW: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Profile rows per key: each backend writes its own so concurrent inserts never wait.
pub static WRITE_SHARDS: GucSetting<i32> = GucSetting::<i32>::new(8);
/// Whether each scored insert is logged to `fraud.scores` (the quality views read it).
pub static LOG_SCORES: GucSetting<bool> = GucSetting::<bool>::new(true);

thread_local! {
    /// Parsed `pg_fraud.block_threshold`; `None` = off.
    static BLOCK_AT: Cell<Option<f64>> = const { Cell::new(None) };
}

fn parse_block_threshold(s: &str) -> Result<Option<f64>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(Some(x)),
        _ => Err(format!("\"{s}\" is neither off nor a number in (0, 1]")),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_block_threshold(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to a NUL-terminated string (or NULL).
    let text = unsafe {
        if newval.is_null() || (*newval).is_null() {
            "off".into()
        } else {
            CStr::from_ptr(*newval).to_string_lossy()
        }
    };
    match parse_block_threshold(&text) {
        Ok(_) => true,
        Err(msg) => {
            let detail = CString::new(msg).unwrap_or_default();
            // SAFETY: GUC_check_errdetail_string is a plain global read by the GUC machinery
            // right after a failed check hook; the string must be palloc'd.
            unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
            false
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_block_threshold(newval: *const std::ffi::c_char, _extra: *mut std::ffi::c_void) {
    // SAFETY: the check hook accepted this value, so it is a valid string or NULL.
    let text = unsafe {
        if newval.is_null() {
            "off".into()
        } else {
            CStr::from_ptr(newval).to_string_lossy()
        }
    };
    BLOCK_AT.with(|b| b.set(parse_block_threshold(&text).unwrap_or(None)));
}

/// Registers every setting; called once from `_PG_init`.
pub fn init() {
    let none = GucFlags::default();
    GucRegistry::define_bool_guc(
        c"pg_fraud.enabled",
        c"Score rows inserted into watched tables.",
        c"off skips scoring and profile maintenance entirely.",
        &ENABLED,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_enum_guc(
        c"pg_fraud.on_error",
        c"What a scoring error does: open (insert unscored) or closed (fail the insert).",
        c"",
        &ON_ERROR,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_float_guc(
        c"pg_fraud.medium_threshold",
        c"Score at which a row is medium risk.",
        c"",
        &MEDIUM_THRESHOLD,
        0.0,
        1.0,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_float_guc(
        c"pg_fraud.alert_threshold",
        c"Score at which a row is high risk and raises an alert.",
        c"",
        &ALERT_THRESHOLD,
        0.0,
        1.0,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_float_guc(
        c"pg_fraud.critical_threshold",
        c"Score at which a row is critical.",
        c"",
        &CRITICAL_THRESHOLD,
        0.0,
        1.0,
        GucContext::Suset,
        none,
    );
    // SAFETY: both hooks are #[pg_guard] functions that only read their arguments.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_fraud.block_threshold",
            c"Score at which an insert is rejected, or off.",
            c"Rows scoring at or above it fail with SQLSTATE PF001 (when pg_fraud.enforce_blocks is on).",
            &BLOCK_THRESHOLD,
            GucContext::Suset,
            none,
            Some(check_block_threshold),
            Some(assign_block_threshold),
            None,
        );
    }
    GucRegistry::define_bool_guc(
        c"pg_fraud.enforce_blocks",
        c"Reject inserts the score or a block rule blocks.",
        c"off is shadow mode: would-be blocks raise alerts instead.",
        &ENFORCE_BLOCKS,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_int_guc(
        c"pg_fraud.alert_dedup_window",
        c"Window in which repeat alerts for one entity fold into the first.",
        c"0 disables de-duplication.",
        &ALERT_DEDUP_WINDOW,
        0,
        7 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_fraud.alert_reasons",
        c"Number of reasons stored with an alert.",
        c"",
        &ALERT_REASONS,
        1,
        50,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_float_guc(
        c"pg_fraud.zscore_clip",
        c"Absolute z-scores are clipped at this value.",
        c"",
        &ZSCORE_CLIP,
        1.0,
        1e6,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_int_guc(
        c"pg_fraud.max_future_skew",
        c"Rows timestamped further in the future are recorded at now plus this.",
        c"Stops one bad clock from pushing an entity's velocity window into the future.",
        &MAX_FUTURE_SKEW,
        0,
        86_400 * 365,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_fraud.write_shards",
        c"Profile rows per key (one per writing backend, modulo this).",
        c"More shards mean fewer row-lock waits between concurrent writers of one key and more rows to merge on read.",
        &WRITE_SHARDS,
        1,
        64,
        GucContext::Suset,
        none,
    );
    GucRegistry::define_bool_guc(
        c"pg_fraud.log_scores",
        c"Log every scored insert to fraud.scores (score, level, rules fired, model outputs).",
        c"The rule and model quality views read the log; fraud.maintenance() trims it.",
        &LOG_SCORES,
        GucContext::Suset,
        none,
    );
}

/// The score thresholds in force.
pub fn thresholds() -> Thresholds {
    Thresholds {
        medium: MEDIUM_THRESHOLD.get(),
        alert: ALERT_THRESHOLD.get(),
        critical: CRITICAL_THRESHOLD.get(),
        block: BLOCK_AT.with(Cell::get),
        enforce_blocks: ENFORCE_BLOCKS.get(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_block_threshold;

    #[test]
    fn block_threshold_parsing() {
        assert_eq!(parse_block_threshold("off"), Ok(None));
        assert_eq!(parse_block_threshold(" OFF "), Ok(None));
        assert_eq!(parse_block_threshold("0.95"), Ok(Some(0.95)));
        assert_eq!(parse_block_threshold("1"), Ok(Some(1.0)));
        for bad in ["0", "-0.1", "1.5", "NaN", "inf", "high", "0.9x"] {
            assert!(parse_block_threshold(bad).is_err(), "{bad}");
        }
    }
}
