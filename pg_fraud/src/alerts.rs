//! The outbox side: alert rows, their deliveries, de-duplication, and one NOTIFY per
//! transaction.
//!
//! The NOTIFY is sent from a pre-commit callback, once, carrying the most severe surviving
//! alert of the transaction: every notifying commit takes a database-wide lock on the
//! notification queue, so a bulk insert that raised 500 alerts must notify once, not 500
//! times. Alerts created inside a subtransaction that later aborted are forgotten with it.

use std::cell::RefCell;
use std::ffi::CString;

use pgrx::pg_sys::{self, SubTransactionId};
use pgrx::spi::SpiClient;

use fraud_core::score::{Level, Outcome};

use crate::catalog::Watch;
use crate::error::Result;
use crate::gucs;
use crate::rowread::RowValues;
use crate::store::with_plan;

/// The NOTIFY channel (DESIGN.md).
pub const CHANNEL: &str = "fraud_alerts";

#[derive(Clone, Debug)]
struct Note {
    subxid: SubTransactionId,
    id: i64,
    level: Level,
    score: f64,
}

#[derive(Clone, Debug)]
struct ErrorNote {
    subxid: SubTransactionId,
    source: String,
    message: String,
    rows: i64,
}

thread_local! {
    static NOTES: RefCell<Vec<Note>> = const { RefCell::new(Vec::new()) };
    static ERRORS: RefCell<Vec<ErrorNote>> = const { RefCell::new(Vec::new()) };
}

const DEDUP_SQL: &str = "SELECT id, level::pg_catalog.text FROM fraud.alerts \
     WHERE dedup_key OPERATOR(pg_catalog.=) $1 \
       AND created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2)) \
     ORDER BY created_at DESC LIMIT 1";

const REPEAT_SQL: &str =
    "UPDATE fraud.alerts SET repeats = repeats OPERATOR(pg_catalog.+) 1, last_repeat_at = pg_catalog.now() \
     WHERE id OPERATOR(pg_catalog.=) $1";

const INSERT_SQL: &str = "WITH a AS ( \
       INSERT INTO fraud.alerts (source_table, row_key, entity, amount, tx_time, score, level, action, reasons, dedup_key) \
       VALUES ($1, $2, $3, $4, pg_catalog.to_timestamp($5), $6, $7::fraud.risk_level, $8, $9::pg_catalog.jsonb, $10) \
       RETURNING id, level), \
     d AS ( \
       INSERT INTO fraud.alert_deliveries (alert_id, channel) \
       SELECT a.id, c.name FROM a, fraud.channels c WHERE c.enabled AND c.min_level OPERATOR(pg_catalog.<=) a.level) \
     SELECT id FROM a";

const ERRORS_SQL: &str = "INSERT INTO fraud.scoring_errors (source_table, message, rows) \
     SELECT * FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.int8[])";

fn parse_level(s: &str) -> Level {
    match s {
        "critical" => Level::Critical,
        "high" => Level::High,
        "medium" => Level::Medium,
        _ => Level::Low,
    }
}

/// Writes (or folds into a recent duplicate) the alert for a scored row. Returns the new
/// alert's id, or `None` when it was folded into an earlier alert of the same entity.
pub fn raise(
    client: &SpiClient<'_>,
    watch: &Watch,
    row: &RowValues,
    t_us: i64,
    outcome: &Outcome,
) -> Result<Option<i64>> {
    let entity = row.entity.as_deref().unwrap_or("(null)");
    let dedup_key = format!("{}:{}", watch.name, entity);
    let window = gucs::ALERT_DEDUP_WINDOW.get();
    if window > 0 {
        let existing = with_plan(client, DEDUP_SQL, &[pg_sys::TEXTOID, pg_sys::FLOAT8OID], |plan| {
            let rows = client.select(plan, Some(1), &[dedup_key.as_str().into(), (window as f64).into()])?;
            let mut out = None;
            for r in rows {
                out =
                    Some((r.get::<i64>(1)?.unwrap_or_default(), parse_level(&r.get::<String>(2)?.unwrap_or_default())));
            }
            Ok(out)
        })?;
        if let Some((id, level)) = existing {
            // Escalations are new alerts; repeats at the same or a lower level fold in.
            if outcome.level <= level {
                with_plan(client, REPEAT_SQL, &[pg_sys::INT8OID], |plan| {
                    client.select(plan, None, &[id.into()])?;
                    Ok(())
                })?;
                return Ok(None);
            }
        }
    }
    let reasons = outcome.reasons_json(gucs::ALERT_REASONS.get().max(1) as usize).to_string();
    let amount = row.amount.filter(|a| a.is_finite());
    let id = with_plan(
        client,
        INSERT_SQL,
        &[
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::FLOAT8OID,
            pg_sys::FLOAT8OID,
            pg_sys::FLOAT8OID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
        ],
        |plan| {
            let rows = client.select(
                plan,
                None,
                &[
                    watch.name.as_str().into(),
                    row.key.as_deref().into(),
                    entity.into(),
                    amount.into(),
                    (t_us as f64 / 1e6).into(),
                    outcome.score.into(),
                    outcome.level.as_str().into(),
                    outcome.decision.as_str().into(),
                    reasons.as_str().into(),
                    dedup_key.as_str().into(),
                ],
            )?;
            let mut id = 0i64;
            for r in rows {
                id = r.get::<i64>(1)?.unwrap_or_default();
            }
            Ok(id)
        },
    )?;
    // SAFETY: reads the current subtransaction id.
    let subxid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    NOTES.with(|n| n.borrow_mut().push(Note { subxid, id, level: outcome.level, score: outcome.score }));
    Ok(Some(id))
}

/// Records a scoring error to be written to `fraud.scoring_errors` (aggregated per message).
/// Returns true the first time a message is seen in this statement, so the caller logs one
/// WARNING per distinct problem rather than one per row of a bulk insert.
pub fn note_error(source: &str, message: &str) -> bool {
    // SAFETY: reads the current subtransaction id.
    let subxid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    ERRORS.with(|e| {
        let mut e = e.borrow_mut();
        if let Some(n) = e.iter_mut().find(|n| n.source == source && n.message == message) {
            n.rows += 1;
            false
        } else {
            e.push(ErrorNote { subxid, source: source.to_string(), message: message.to_string(), rows: 1 });
            true
        }
    })
}

/// Whether scoring errors wait to be written.
pub fn has_errors() -> bool {
    ERRORS.with(|e| !e.borrow().is_empty())
}

/// Writes the noted scoring errors.
pub fn flush_errors(client: &SpiClient<'_>) -> Result<()> {
    let notes: Vec<ErrorNote> = ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    if notes.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = notes.iter().map(|n| n.source.as_str()).collect();
    let messages: Vec<&str> = notes.iter().map(|n| n.message.as_str()).collect();
    let rows: Vec<i64> = notes.iter().map(|n| n.rows).collect();
    with_plan(client, ERRORS_SQL, &[pg_sys::TEXTARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::INT8ARRAYOID], |plan| {
        client.select(plan, None, &[sources.into(), messages.into(), rows.into()])?;
        Ok(())
    })
}

unsafe extern "C-unwind" {
    // async.h is not in pgrx's bindings; this is the function pg_notify() calls.
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

/// Queues the transaction's one NOTIFY (Postgres delivers it on commit). Called from the
/// pre-commit callback.
pub fn notify_pending() {
    let best = NOTES.with(|n| {
        let notes = std::mem::take(&mut *n.borrow_mut());
        notes
            .into_iter()
            .max_by(|a, b| (a.level, a.score).partial_cmp(&(b.level, b.score)).unwrap_or(std::cmp::Ordering::Equal))
    });
    let Some(best) = best else { return };
    let payload = format!(
        "{{\"id\":{},\"level\":\"{}\",\"score\":{}}}",
        best.id,
        best.level.as_str(),
        (best.score * 1e4).round() / 1e4
    );
    let channel = CString::new(CHANNEL).expect("no NUL in channel name");
    let payload = CString::new(payload).expect("no NUL in payload");
    // SAFETY: we are in a transaction (pre-commit); both strings are valid C strings and
    // Async_Notify copies them.
    // Async_Notify may ereport; the guard turns that into a Rust panic pgrx can unwind.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(channel.as_ptr(), payload.as_ptr())) };
}

/// Forgets alerts and errors recorded inside an aborted subtransaction.
pub fn on_subxact_abort(subxid: SubTransactionId) {
    NOTES.with(|n| n.borrow_mut().retain(|x| x.subxid < subxid));
    ERRORS.with(|e| e.borrow_mut().retain(|x| x.subxid < subxid));
}

/// Forgets everything (transaction end).
pub fn clear() {
    NOTES.with(|n| n.borrow_mut().clear());
    ERRORS.with(|e| e.borrow_mut().clear());
}
