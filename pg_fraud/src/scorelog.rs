//! The decision log: one `fraud.scores` row per scored insert (score, level, action, the
//! rules that fired, each model's output), buffered for the statement and written with one
//! INSERT when it ends. It is what the quality views (`fraud.rule_performance`,
//! `fraud.model_performance`) and the dashboards read; `pg_fraud.log_scores = off` skips it.

use std::cell::RefCell;

use pgrx::pg_sys::{self, Oid, SubTransactionId};
use pgrx::spi::SpiClient;

use fraud_core::score::Source;

use crate::error::Result;
use crate::gucs;
use crate::scoring::Scored;
use crate::store::with_plan;

struct Entry {
    subxid: SubTransactionId,
    source: Oid,
    row_key: Option<String>,
    entity: Option<String>,
    t_us: i64,
    score: f64,
    level: &'static str,
    action: &'static str,
    /// Names of the rules that fired, comma-separated (rule names cannot contain commas).
    rules: String,
    /// `{"name@version": output, ...}`, or `None` without models.
    models: Option<String>,
}

thread_local! {
    static PENDING: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

const FLUSH_SQL: &str =
    "INSERT INTO fraud.scores (source_table, row_key, entity, tx_time, score, level, action, rules, model_outputs) \
     SELECT s::pg_catalog.regclass, k, e, pg_catalog.to_timestamp(t), sc, l::fraud.risk_level, a, \
            pg_catalog.string_to_array(NULLIF(r, ''), ','), m::pg_catalog.jsonb \
       FROM unnest($1::pg_catalog.oid[], $2::pg_catalog.text[], $3::pg_catalog.text[], $4::pg_catalog.float8[], \
                   $5::pg_catalog.float8[], $6::pg_catalog.text[], $7::pg_catalog.text[], $8::pg_catalog.text[], \
                   $9::pg_catalog.text[]) AS d(s, k, e, t, sc, l, a, r, m)";

/// Buffers a scored row for the log (when `pg_fraud.log_scores` is on).
pub fn record(source: Oid, scored: &Scored) {
    if !gucs::LOG_SCORES.get() {
        return;
    }
    let o = &scored.outcome;
    let mut rules = String::new();
    for c in o.contributions.iter().filter(|c| c.source == Source::Rule) {
        if !rules.is_empty() {
            rules.push(',');
        }
        rules.push_str(&c.name);
    }
    // Review/block rules fire even at weight 0, when they add no contribution.
    for name in &o.forced_by {
        if !rules.split(',').any(|r| r == name) {
            if !rules.is_empty() {
                rules.push(',');
            }
            rules.push_str(name);
        }
    }
    let models = (!scored.models.is_empty()).then(|| {
        let m: serde_json::Map<String, serde_json::Value> = scored
            .models
            .iter()
            .map(|m| (format!("{}@{}", m.name, m.version), serde_json::json!((m.raw * 1e6).round() / 1e6)))
            .collect();
        serde_json::Value::Object(m).to_string()
    });
    // SAFETY: reads the current subtransaction id.
    let subxid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        p.borrow_mut().push(Entry {
            subxid,
            source,
            row_key: scored.row.key.clone(),
            entity: scored.row.entity.clone(),
            t_us: scored.t_us,
            score: o.score,
            level: o.level.as_str(),
            action: o.decision.as_str(),
            rules,
            models,
        })
    });
}

/// Whether log rows wait to be written.
pub fn has_pending() -> bool {
    PENDING.with(|p| !p.borrow().is_empty())
}

/// Writes the buffered rows (one INSERT).
pub fn flush(client: &SpiClient<'_>) -> Result<()> {
    let rows: Vec<Entry> = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if rows.is_empty() {
        return Ok(());
    }
    let source: Vec<Oid> = rows.iter().map(|r| r.source).collect();
    let key: Vec<Option<&str>> = rows.iter().map(|r| r.row_key.as_deref()).collect();
    let entity: Vec<Option<&str>> = rows.iter().map(|r| r.entity.as_deref()).collect();
    let t: Vec<f64> = rows.iter().map(|r| r.t_us as f64 / 1e6).collect();
    let score: Vec<f64> = rows.iter().map(|r| r.score).collect();
    let level: Vec<&str> = rows.iter().map(|r| r.level).collect();
    let action: Vec<&str> = rows.iter().map(|r| r.action).collect();
    let rules: Vec<&str> = rows.iter().map(|r| r.rules.as_str()).collect();
    let models: Vec<Option<&str>> = rows.iter().map(|r| r.models.as_deref()).collect();
    let text = pg_sys::TEXTARRAYOID;
    with_plan(
        client,
        FLUSH_SQL,
        &[pg_sys::OIDARRAYOID, text, text, pg_sys::FLOAT8ARRAYOID, pg_sys::FLOAT8ARRAYOID, text, text, text, text],
        |plan| {
            client.select(
                plan,
                None,
                &[
                    source.into(),
                    key.into(),
                    entity.into(),
                    t.into(),
                    score.into(),
                    level.into(),
                    action.into(),
                    rules.into(),
                    models.into(),
                ],
            )?;
            Ok(())
        },
    )
}

/// Forgets rows logged inside an aborted subtransaction.
pub fn on_subxact_abort(subxid: SubTransactionId) {
    PENDING.with(|p| p.borrow_mut().retain(|e| e.subxid < subxid));
}

/// Forgets everything (transaction end).
pub fn clear() {
    PENDING.with(|p| p.borrow_mut().clear());
}
