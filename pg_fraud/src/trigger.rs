//! The triggers `fraud.watch()` attaches: a BEFORE INSERT row trigger that scores, and an
//! AFTER INSERT statement trigger that writes the statement's profile updates.

use std::convert::Infallible;

use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::{AnyNumeric, IntoDatum, JsonB, PgSqlErrorCode};

use fraud_core::score::Decision;

use crate::catalog::{self, Column, Conv, Outputs, Watch};
use crate::error::{raise, FraudError, Result};
use crate::gucs::{self, OnError};
use crate::rowread::{read_row, with_datums};
use crate::scoring::{self, Mode, Scored};
use crate::{alerts, scorelog, store};

/// Rejects the insert with SQLSTATE 09000 and the reasons.
fn block(watch: &Watch, scored: &Scored) -> ! {
    let reasons: Vec<String> =
        scored.outcome.contributions.iter().take(5).map(|c| format!("{} ({:.2})", c.name, c.contribution)).collect();
    let entity = scored.row.entity.as_deref().unwrap_or("(null)");
    let forced = if scored.outcome.forced_by.is_empty() {
        String::new()
    } else {
        format!("; block rules: {}", scored.outcome.forced_by.join(", "))
    };
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
        format!("pg_fraud blocked the insert into {}: score {:.3} ({})", watch.name, scored.outcome.score, scored.outcome.level.as_str()),
        "pg_fraud",
    )
    .set_detail(format!("entity {entity}; reasons: {}{forced}", if reasons.is_empty() { "-".into() } else { reasons.join(", ") }))
    .set_hint("Blocking follows pg_fraud.block_threshold and rules with action 'block'; SET pg_fraud.enforce_blocks = off for shadow mode.")
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Applies `pg_fraud.on_error`: fail the insert, or keep the row unscored and count it.
fn on_error<'a>(
    source: &str,
    e: FraudError,
    cols: Option<&Outputs>,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    if gucs::ON_ERROR.get() == OnError::Closed {
        raise(e);
    }
    let message = e.to_string();
    if alerts::note_error(source, &message) {
        pgrx::warning!("pg_fraud: row inserted into {source} unscored: {message}");
    }
    // SAFETY: tuple/tupdesc come from the firing trigger.
    cols.and_then(|c| unsafe { with_outputs(c, tuple, tupdesc, Written::Error(&message)) })
}

enum Written<'s> {
    Scored(&'s Scored),
    Error(&'s str),
}

fn score_datum(col: &Column, score: f64) -> Option<Datum> {
    match col.conv {
        Conv::Float8 => score.into_datum(),
        Conv::Float4 => (score as f32).into_datum(),
        _ => AnyNumeric::try_from(score).ok().and_then(|n| n.into_datum()),
    }
}

fn json_datum(col: &Column, v: serde_json::Value) -> Option<Datum> {
    match col.conv {
        Conv::Jsonb => JsonB(v).into_datum(),
        _ => v.to_string().into_datum(),
    }
}

/// Writes the mapped output columns (score, level, reasons) into a copy of the row.
///
/// # Safety
/// `tuple` and `tupdesc` must be valid and describe each other.
unsafe fn with_outputs<'a>(
    cols: &Outputs,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    out: Written,
) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    let mut attnums = Vec::new();
    let mut values = Vec::new();
    let mut nulls = Vec::new();
    let mut put = |col: &Option<Column>, v: Option<Datum>| {
        if let Some(c) = col {
            attnums.push(c.attnum as i32);
            nulls.push(v.is_none());
            values.push(v.unwrap_or(Datum::from(0usize)));
        }
    };
    match out {
        Written::Scored(s) => {
            put(&cols.score, cols.score.as_ref().and_then(|c| score_datum(c, (s.outcome.score * 1e6).round() / 1e6)));
            put(&cols.level, s.outcome.level.as_str().into_datum());
            put(
                &cols.reasons,
                cols.reasons
                    .as_ref()
                    .and_then(|c| json_datum(c, s.outcome.reasons_json(gucs::ALERT_REASONS.get().max(1) as usize))),
            );
        }
        Written::Error(msg) => {
            put(&cols.score, None);
            put(&cols.level, "unscored".into_datum());
            put(&cols.reasons, cols.reasons.as_ref().and_then(|c| json_datum(c, serde_json::json!({"error": msg}))));
        }
    }
    if attnums.is_empty() {
        return None;
    }
    // SAFETY: the caller vouches for tuple/tupdesc; the arrays have one entry per column.
    unsafe {
        let new = pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            attnums.len() as i32,
            attnums.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        Some(PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(tupdesc), new))
    }
}

/// Writes what a statement left in memory: profile deltas, scoring errors, the score log.
pub fn flush_statement(client: &pgrx::spi::SpiClient<'_>, owner: pg_sys::Oid) -> Result<()> {
    store::flush(client, owner)?;
    alerts::flush_errors(client)?;
    scorelog::flush(client)
}

#[pg_schema]
mod fraud {
    use super::*;

    /// Scores the new row; attached by `fraud.watch()` as `zz_pg_fraud_score` (named to fire
    /// after the application's own BEFORE triggers, so it sees the row they produced).
    #[pg_trigger]
    fn _score_row<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        let td = trigger.trigger_data();
        let is_before_row_insert = matches!(trigger.when(), Ok(PgTriggerWhen::Before))
            && matches!(trigger.level(), PgTriggerLevel::Row)
            && matches!(trigger.op(), Ok(PgTriggerOperation::Insert));
        if !is_before_row_insert {
            raise(FraudError::Config(
                "fraud._score_row() must be attached as a BEFORE INSERT ... FOR EACH ROW trigger (use fraud.watch)"
                    .into(),
            ));
        }
        let tuple = td.tg_trigtuple;
        // SAFETY: a row trigger's relation and tuple are valid for the duration of the call.
        let (relid, tupdesc) = unsafe { ((*td.tg_relation).rd_id, (*td.tg_relation).rd_att) };
        // SAFETY: tuple/tupdesc come from the firing trigger.
        let unchanged =
            || unsafe { PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(tupdesc), tuple) };
        if !gucs::ENABLED.get() {
            return Ok(Some(unchanged()));
        }
        let cfg = match catalog::config() {
            Ok(c) => c,
            Err(e) => {
                return Ok(Some(
                    on_error(&catalog::relation_name(relid), e, None, tuple, tupdesc).unwrap_or_else(unchanged),
                ))
            }
        };
        let watch = match cfg.watch(relid) {
            Ok(w) => w.clone(),
            Err(e) => {
                return Ok(Some(
                    on_error(&catalog::relation_name(relid), e, None, tuple, tupdesc).unwrap_or_else(unchanged),
                ))
            }
        };
        let cols = match &watch.columns {
            Ok(c) => c,
            Err(msg) => {
                return Ok(Some(
                    on_error(&watch.name, FraudError::Config(msg.clone()), Some(&watch.outputs), tuple, tupdesc)
                        .unwrap_or_else(unchanged),
                ))
            }
        };
        // SAFETY: the tuple and its descriptor come from the firing trigger.
        let row = unsafe { with_datums(tuple, tupdesc, |d| read_row(cols, d, watch.amount_scale)) };
        let result = catalog::as_owner(cfg.owner, || -> Result<Scored> {
            let scored = scoring::score(&cfg, &watch, row, Mode::Insert)?;
            if scored.outcome.decision == Decision::Block {
                return Ok(scored);
            }
            scoring::record(&watch, &scored);
            if scored.outcome.alert
                && Spi::connect(|client| alerts::raise(client, &watch, &scored.row, scored.t_us, &scored.outcome))?
                    .is_some()
            {
                scoring::record_alert(&watch, &scored);
            }
            // Last, so a row that ends up unscored (an error above) is not logged as scored.
            scorelog::record(watch.relid, &scored);
            Ok(scored)
        });
        match result {
            Ok(scored) if scored.outcome.decision == Decision::Block => block(&watch, &scored),
            // SAFETY: tuple/tupdesc come from the firing trigger.
            Ok(scored) => Ok(Some(
                unsafe { with_outputs(&watch.outputs, tuple, tupdesc, Written::Scored(&scored)) }
                    .unwrap_or_else(unchanged),
            )),
            Err(e) => {
                Ok(Some(on_error(&watch.name, e, Some(&watch.outputs), tuple, tupdesc).unwrap_or_else(unchanged)))
            }
        }
    }

    /// Writes the statement's profile updates and scoring errors; attached by `fraud.watch()` as
    /// the AFTER INSERT statement trigger `zz_pg_fraud_flush`.
    #[pg_trigger]
    fn _flush<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
        if !store::has_pending() && !alerts::has_errors() && !scorelog::has_pending() {
            return Ok(None);
        }
        let owner = catalog::config().unwrap_or_else(|e| raise(e)).owner;
        let res = catalog::as_owner(owner, || Spi::connect_mut(|client| flush_statement(client, owner)));
        if let Err(e) = res {
            raise(e);
        }
        Ok(None)
    }
}
