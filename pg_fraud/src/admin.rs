//! Administration: attaching scoring to a table, rebuilding profiles, labels, and the
//! triggers that keep the configuration tables valid and the caches fresh.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, Spi, SpiClient};
use pgrx::{JsonB, PgRelation, PgSqlErrorCode};
use serde_json::json;

use fraud_core::rules::{self, RuleError};
use fraud_core::state::Kind;

use crate::catalog::{self, resolve_mapping, Mapping, Watch};
use crate::error::{raise, FraudError, Result};
use crate::regclass::RegClass;
use crate::rowread::{read_row, with_datums, RowValues};
use crate::scoring;
use crate::store;

type SqlResult<T> = std::result::Result<T, pgrx::pg_sys::panic::ErrorReport>;

/// Names of the output columns `risk_columns => true` adds.
const RISK_COLUMNS: [(&str, &str); 3] =
    [("risk_score", "double precision"), ("risk_level", "text"), ("risk_reasons", "jsonb")];

/// First column of the first row, or `None` when the query returns no row (pgrx's
/// `get_one` treats "no row" as an error).
pub(crate) fn first<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    Spi::connect_mut(|client| match client.update(sql, Some(1), args)?.next() {
        Some(r) => Ok(r.get::<T>(1)?),
        None => Ok(None),
    })
}

fn column_exists(relid: Oid, name: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attname OPERATOR(pg_catalog.=) $2 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped)",
        &[relid.into(), name.into()],
    )?
    .unwrap_or(false))
}

fn primary_key_column(relid: Oid) -> Result<Option<String>> {
    first::<String>(
        "SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0] \
          WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
        &[relid.into()],
    )
}

/// An existing valid btree index whose leading keys are (entity, ts), if any.
fn velocity_index(relid: Oid, entity_attnum: i16, ts_attnum: i16) -> Result<Option<String>> {
    first::<String>(
        "SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid \
           JOIN pg_catalog.pg_am am ON am.oid OPERATOR(pg_catalog.=) c.relam \
          WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND am.amname OPERATOR(pg_catalog.=) 'btree' AND i.indisvalid \
            AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts OPERATOR(pg_catalog.>=) 2 \
            AND i.indkey[0] OPERATOR(pg_catalog.=) $2 AND i.indkey[1] OPERATOR(pg_catalog.=) $3 \
          ORDER BY i.indnkeyatts, c.relname LIMIT 1",
        &[relid.into(), entity_attnum.into(), ts_attnum.into()],
    )
}

/// Runs `sql` through a cursor and hands `batch` 10,000 rows at a time (cancellable between
/// batches), so replaying or compacting a huge table never holds it in memory.
pub(crate) fn scan(sql: &str, mut batch: impl FnMut(pgrx::spi::SpiTupleTable<'_>) -> Result<()>) -> Result<()> {
    Spi::connect_mut(|client| {
        let mut cursor = client.try_open_cursor(sql, &[])?;
        loop {
            let rows = cursor.fetch(10_000)?;
            if rows.is_empty() {
                return Ok(());
            }
            pgrx::check_for_interrupts!();
            batch(rows)?;
        }
    })
}

/// Drops the triggers `watch()` creates, where present (no NOTICE for absent ones).
fn drop_our_triggers(relid: Oid, name: &str) -> Result<()> {
    for tg in ["zz_pg_fraud_score", "zz_pg_fraud_flush"] {
        let present = first::<bool>(
            "SELECT true FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 AND tgname OPERATOR(pg_catalog.=) $2",
            &[relid.into(), tg.into()],
        )?
        .unwrap_or(false);
        if present {
            Spi::run(&format!("DROP TRIGGER {tg} ON {name}"))?;
        }
    }
    Ok(())
}

fn nonempty(name: &str, v: Option<&str>) -> Result<Option<String>> {
    match v {
        Some(s) if s.trim().is_empty() => {
            Err(FraudError::InvalidArgument(format!("{name} must be a column name, not an empty string")))
        }
        other => Ok(other.map(str::to_string)),
    }
}

#[pg_schema]
mod fraud {
    use super::*;

    /// Attaches scoring to an existing table: maps its own column names, creates the
    /// `(entity, ts)` index velocity needs if there is none, optionally adds `risk_score`,
    /// `risk_level`, `risk_reasons`, installs the triggers and (by default) builds profiles
    /// from the rows already there. Calling it again updates the mapping.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::too_many_arguments)]
    fn watch(
        tbl: RegClass,
        entity: &str,
        amount: &str,
        ts: &str,
        merchant: default!(Option<&str>, "NULL"),
        device: default!(Option<&str>, "NULL"),
        ip: default!(Option<&str>, "NULL"),
        country: default!(Option<&str>, "NULL"),
        lat: default!(Option<&str>, "NULL"),
        lon: default!(Option<&str>, "NULL"),
        lat2: default!(Option<&str>, "NULL"),
        lon2: default!(Option<&str>, "NULL"),
        channel: default!(Option<&str>, "NULL"),
        key: default!(Option<&str>, "NULL"),
        amount_scale: default!(f64, 1.0),
        risk_columns: default!(bool, false),
        backfill: default!(bool, true),
    ) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            let relid = tbl.0;
            let name = catalog::relation_name(relid);
            // SAFETY: regclass input guarantees the relation existed; opening it checks again.
            let rel = unsafe { PgRelation::with_lock(relid, pg_sys::AccessShareLock as _) };
            if !(rel.is_table() || rel.is_partitioned_table()) {
                return Err(FraudError::InvalidArgument(format!("{name} is not a table")));
            }
            if !(amount_scale.is_finite() && amount_scale > 0.0) {
                return Err(FraudError::InvalidArgument(format!(
                    "amount_scale must be a positive finite number (got {amount_scale})"
                )));
            }
            let mut m = Mapping {
                entity: entity.to_string(),
                amount: amount.to_string(),
                ts: ts.to_string(),
                key: nonempty("key", key)?,
                merchant: nonempty("merchant", merchant)?,
                device: nonempty("device", device)?,
                ip: nonempty("ip", ip)?,
                country: nonempty("country", country)?,
                lat: nonempty("lat", lat)?,
                lon: nonempty("lon", lon)?,
                lat2: nonempty("lat2", lat2)?,
                lon2: nonempty("lon2", lon2)?,
                channel: nonempty("channel", channel)?,
                ..Default::default()
            };
            if m.key.is_none() {
                m.key = primary_key_column(relid)?;
            }
            // Validate before changing anything.
            resolve_mapping(&rel, &name, &m)?;
            drop(rel);

            let mut added = Vec::new();
            if risk_columns {
                for (col, ty) in RISK_COLUMNS {
                    if !column_exists(relid, col)? {
                        Spi::run(&format!("ALTER TABLE {name} ADD COLUMN {} {ty}", quote_identifier(col)))?;
                        added.push(col.to_string());
                    }
                }
            }
            for (col, slot) in [
                ("risk_score", &mut m.score_out),
                ("risk_level", &mut m.level_out),
                ("risk_reasons", &mut m.reasons_out),
            ] {
                if column_exists(relid, col)? {
                    *slot = Some(col.to_string());
                }
            }
            // SAFETY: the relation exists (we hold a lock on it through `tbl`).
            let fresh = unsafe { PgRelation::with_lock(relid, pg_sys::AccessShareLock as _) };
            let cols = resolve_mapping(&fresh, &name, &m)?;
            drop(fresh);

            let (index, created_index) = match velocity_index(relid, cols.entity.attnum, cols.ts.attnum)? {
                Some(existing) => (existing, None),
                None => {
                    Spi::run(&format!(
                        "CREATE INDEX ON {name} ({}, {})",
                        quote_identifier(&cols.entity.name),
                        quote_identifier(&cols.ts.name)
                    ))?;
                    let created = velocity_index(relid, cols.entity.attnum, cols.ts.attnum)?
                        .ok_or_else(|| FraudError::Config("the velocity index was not created".into()))?;
                    (created.clone(), Some(created))
                }
            };

            let args = [
                relid.into(),
                m.entity.as_str().into(),
                m.amount.as_str().into(),
                m.ts.as_str().into(),
                m.key.as_deref().into(),
                m.merchant.as_deref().into(),
                m.device.as_deref().into(),
                m.ip.as_deref().into(),
                m.country.as_deref().into(),
                m.lat.as_deref().into(),
                m.lon.as_deref().into(),
                m.lat2.as_deref().into(),
                m.lon2.as_deref().into(),
                m.channel.as_deref().into(),
                amount_scale.into(),
                m.score_out.as_deref().into(),
                m.level_out.as_deref().into(),
                m.reasons_out.as_deref().into(),
                created_index.as_deref().into(),
                added.clone().into(),
            ];
            let watch_id = Spi::get_one_with_args::<i32>(
                "INSERT INTO fraud.watches AS w (relid, entity_column, amount_column, ts_column, key_column, merchant_column, device_column, \
                     ip_column, country_column, lat_column, lon_column, lat2_column, lon2_column, channel_column, amount_scale, \
                     score_column, level_column, reasons_column, created_index, created_columns) \
                 VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
                 ON CONFLICT (relid) DO UPDATE SET entity_column = excluded.entity_column, amount_column = excluded.amount_column, \
                     ts_column = excluded.ts_column, key_column = excluded.key_column, merchant_column = excluded.merchant_column, \
                     device_column = excluded.device_column, ip_column = excluded.ip_column, country_column = excluded.country_column, \
                     lat_column = excluded.lat_column, lon_column = excluded.lon_column, lat2_column = excluded.lat2_column, \
                     lon2_column = excluded.lon2_column, channel_column = excluded.channel_column, amount_scale = excluded.amount_scale, \
                     score_column = excluded.score_column, level_column = excluded.level_column, reasons_column = excluded.reasons_column, \
                     created_index = COALESCE(w.created_index, excluded.created_index), \
                     created_columns = w.created_columns OPERATOR(pg_catalog.||) excluded.created_columns \
                 RETURNING id",
                &args,
            )?
            .ok_or_else(|| FraudError::Config("fraud.watches insert returned nothing".into()))?;

            drop_our_triggers(relid, &name)?;
            for sql in [
                format!("CREATE TRIGGER zz_pg_fraud_score BEFORE INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION fraud._score_row()"),
                format!("CREATE TRIGGER zz_pg_fraud_flush AFTER INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION fraud._flush()"),
            ] {
                Spi::run(&sql)?;
            }
            let rules_installed =
                if Spi::get_one::<bool>("SELECT NOT EXISTS (SELECT 1 FROM fraud.rules)")?.unwrap_or(false) {
                    install_defaults(false)?
                } else {
                    0
                };
            // The new configuration must be visible to this very transaction's next insert.
            catalog::invalidate();
            let profiled = if backfill { rebuild(relid)? } else { 0 };
            Ok(JsonB(json!({
                "table": name,
                "watch_id": watch_id,
                "index": index,
                "index_created": created_index.is_some(),
                "columns_added": added,
                "row_key": m.key,
                "risk_columns": [m.score_out, m.level_out, m.reasons_out],
                "rows_profiled": profiled,
                "default_rules_installed": rules_installed,
            })))
        };
        run().map_err(|e| e.report())
    }

    /// Detaches scoring: drops the triggers, the index `watch()` created, the table's
    /// profiles, and — only with `drop_columns => true` — the risk columns it added.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn unwatch(tbl: RegClass, drop_columns: default!(bool, false)) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            let relid = tbl.0;
            let name = catalog::relation_name(relid);
            let Some(id) = first::<i32>("SELECT id FROM fraud.watches WHERE relid OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass", &[relid.into()])? else {
                return Err(FraudError::NotWatched(format!("table {name} is not watched by pg_fraud")));
            };
            let index = first::<String>(
                "SELECT created_index::pg_catalog.text FROM fraud.watches WHERE id OPERATOR(pg_catalog.=) $1",
                &[id.into()],
            )?;
            let columns = first::<Vec<String>>(
                "SELECT created_columns::pg_catalog.text[] FROM fraud.watches WHERE id OPERATOR(pg_catalog.=) $1",
                &[id.into()],
            )?;
            drop_our_triggers(relid, &name)?;
            // SAFETY: syscache lookups on an existing relation.
            let nsp = unsafe {
                quote_identifier(
                    std::ffi::CStr::from_ptr(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid)))
                        .to_string_lossy(),
                )
            };
            if let Some(ix) = &index {
                Spi::run(&format!("DROP INDEX IF EXISTS {nsp}.{}", quote_identifier(ix)))?;
            }
            let columns = columns.unwrap_or_default();
            if drop_columns {
                for c in &columns {
                    Spi::run(&format!("ALTER TABLE {name} DROP COLUMN IF EXISTS {}", quote_identifier(c)))?;
                }
            }
            let profiles = Spi::get_one_with_args::<i64>(
                "WITH d AS (DELETE FROM fraud.profile_shards WHERE watch_id OPERATOR(pg_catalog.=) $1 RETURNING 1) SELECT pg_catalog.count(*) FROM d",
                &[id.into()],
            )?;
            Spi::run_with_args("DELETE FROM fraud.watches WHERE id OPERATOR(pg_catalog.=) $1", &[id.into()])?;
            catalog::invalidate();
            Ok(JsonB(json!({
                "table": name,
                "index_dropped": index,
                "columns_dropped": if drop_columns { columns } else { Vec::new() },
                "profile_rows_deleted": profiles.unwrap_or(0),
            })))
        };
        run().map_err(|e| e.report())
    }

    /// Recomputes a watched table's profiles from its rows, in time order (the table is the
    /// source of truth). Use after bulk changes made with scoring disabled, or after an
    /// UPDATE/DELETE of history. Returns the number of rows replayed.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn rebuild_profiles(tbl: RegClass) -> SqlResult<i64> {
        rebuild(tbl.0).map_err(|e| e.report())
    }

    /// Records analyst feedback on a row (by its key) and feeds it to the merchant and
    /// entity risk features. Relabelling a row moves its count to the other class. `at` is
    /// when the truth became known (e.g. a chargeback's date; default now): training replays
    /// labels from that instant, so no row learns from a label given after it.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn label(
        source: RegClass,
        row_key: &str,
        is_fraud: bool,
        note: default!(Option<&str>, "NULL"),
        at: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
    ) -> SqlResult<bool> {
        label_row(source.0, row_key, is_fraud, note, at).map_err(|e| e.report())
    }

    /// Inserts the built-in rules (one per classic fraud pattern; see `fraud.rules` after).
    /// Existing rules with the same names are kept unless `replace => true`. Returns the
    /// number of rules written.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn install_default_rules(replace: default!(bool, false)) -> SqlResult<i64> {
        install_defaults(replace).map_err(|e| e.report())
    }

    /// BEFORE INSERT OR UPDATE trigger on `fraud.rules`: compiles the expression and rejects
    /// it with a message pointing at the problem.
    #[pg_trigger]
    fn _validate_rule<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
        // Errors are raised directly: pgrx would wrap a returned Err in "Trigger function panic".
        let Some(new) = trigger.new() else {
            raise(FraudError::Config("fraud._validate_rule() must be a row trigger on INSERT or UPDATE".into()))
        };
        let name: String = new.get_by_name("name").ok().flatten().unwrap_or_default();
        let expression: String = new.get_by_name("expression").ok().flatten().unwrap_or_default();
        if let Err(e) = rules::compile(&expression) {
            raise(rule_error(&name, e));
        }
        let mut new = new.into_owned();
        if matches!(trigger.op(), Ok(PgTriggerOperation::Update)) {
            // SAFETY: reading the transaction timestamp is always valid inside a transaction.
            let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
            if let Ok(now) = pgrx::datum::TimestampWithTimeZone::try_from(now) {
                new.set_by_name("updated_at", now).unwrap_or_else(|e| raise(FraudError::Config(e.to_string())));
            }
        }
        Ok(Some(new))
    }

    /// Statement trigger on the configuration tables: tells every backend to reload the
    /// configuration when this transaction commits.
    #[pg_trigger]
    fn _config_changed<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
        signal_config_change();
        Ok(None)
    }
}

fn install_defaults(replace: bool) -> Result<i64> {
    let mut n = 0;
    let conflict = if replace {
        "ON CONFLICT (name) DO UPDATE SET expression = excluded.expression, weight = excluded.weight, action = excluded.action, description = excluded.description, enabled = true"
    } else {
        "ON CONFLICT (name) DO NOTHING"
    };
    let sql = format!("INSERT INTO fraud.rules (name, expression, weight, action, description) VALUES ($1, $2, $3, $4, $5) {conflict} RETURNING 1");
    for (name, expr, weight, action, doc) in fraud_core::defaults::DEFAULT_RULES {
        if first::<i32>(&sql, &[(*name).into(), (*expr).into(), (*weight).into(), (*action).into(), (*doc).into()])?
            .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Queues a relcache invalidation of `fraud.watches`, delivered to every backend at commit.
pub fn signal_config_change() {
    let relid = Spi::get_one::<Oid>("SELECT 'fraud.watches'::pg_catalog.regclass::pg_catalog.oid").ok().flatten();
    if let Some(relid) = relid {
        // SAFETY: queues an invalidation message for an existing relation.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
    catalog::invalidate();
}

fn rule_error(name: &str, e: RuleError) -> FraudError {
    let code = if e.message.starts_with("unknown feature") || e.message.starts_with("unknown function") {
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT
    } else if e.message.contains("expects a")
        || e.message.contains("cannot compare")
        || e.message.contains("must be a condition")
        || e.message.contains("booleans can only")
    {
        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH
    } else {
        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR
    };
    FraudError::Rule { name: name.to_string(), message: e.to_string(), code }
}

/// Fetches the row with the given key from a watched table.
fn fetch_row(client: &SpiClient<'_>, watch: &Watch, row_key: &str) -> Result<Option<RowValues>> {
    let cols = watch.columns.as_ref().map_err(|e| FraudError::Config(e.clone()))?;
    let key = cols.key.as_ref().ok_or_else(|| {
        FraudError::InvalidArgument(format!(
            "{} has no key column (no single-column primary key and none mapped)",
            watch.name
        ))
    })?;
    let sql = format!(
        "SELECT t FROM {} AS t WHERE {} OPERATOR(pg_catalog.=) CAST($1 AS {}) LIMIT 1",
        watch.name,
        quote_identifier(&key.name),
        type_name(key.typoid)
    );
    let rows = client.select(&sql, Some(1), &[row_key.into()])?;
    for r in rows {
        if let Some(t) = r.get::<PgHeapTuple<'_, AllocatedByRust>>(1)? {
            return Ok(Some(composite_values(watch, t)));
        }
    }
    Ok(None)
}

fn type_name(typoid: Oid) -> String {
    // SAFETY: format_type_be handles any oid.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typoid)).to_string_lossy().into_owned() }
}

/// Reads the mapped values out of a whole-row value of the watched table.
pub(crate) fn composite_values(watch: &Watch, t: PgHeapTuple<'_, AllocatedByRust>) -> RowValues {
    let Ok(cols) = &watch.columns else { return RowValues::default() };
    let raw = t.into_pg();
    // SAFETY: `raw` is a tuple of the watched table's row type, which its descriptor describes.
    unsafe {
        let tupdesc = pg_sys::lookup_rowtype_tupdesc(watch.rowtype, -1);
        let row = with_datums(raw, tupdesc, |v| read_row(cols, v, watch.amount_scale));
        pg_sys::DecrTupleDescRefCount(tupdesc);
        row
    }
}

fn label_row(
    relid: Oid,
    row_key: &str,
    is_fraud: bool,
    note: Option<&str>,
    at: Option<pgrx::datum::TimestampWithTimeZone>,
) -> Result<bool> {
    let at_us = at.map(|t| crate::api::finite_us("at", t)).transpose()?;
    let cfg = catalog::config()?;
    let watch = cfg.watch(relid)?.clone();
    // The label itself is written with the caller's rights (fraud_analyst may write labels).
    let previous = first::<bool>(
        "SELECT is_fraud FROM fraud.labels WHERE source_table OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass AND row_key OPERATOR(pg_catalog.=) $2",
        &[relid.into(), row_key.into()],
    )?;
    Spi::run_with_args(
        "INSERT INTO fraud.labels (source_table, row_key, is_fraud, note, labelled_at) \
         VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, COALESCE($5, pg_catalog.now())) \
         ON CONFLICT (source_table, row_key) DO UPDATE SET is_fraud = excluded.is_fraud, note = excluded.note, \
             labelled_at = excluded.labelled_at, labelled_by = CURRENT_USER",
        &[relid.into(), row_key.into(), is_fraud.into(), note.into(), at.into()],
    )?;
    if previous == Some(is_fraud) {
        return Ok(true);
    }
    let row = catalog::as_owner(cfg.owner, || Spi::connect(|client| fetch_row(client, &watch, row_key)))?;
    let Some(row) = row else {
        return Err(FraudError::InvalidArgument(format!("{} has no row with key {row_key}", watch.name)));
    };
    let now = at_us.unwrap_or_else(scoring::now_us);
    let ids = scoring::key_ids(watch.id, &row);
    for id in [ids[0], ids[1]].into_iter().flatten() {
        store::update(id, |s| {
            if let Some(prev) = previous {
                s.record_label_delta(prev, -1.0, now);
            }
            s.record_label(is_fraud, now);
        });
    }
    let owner = cfg.owner;
    catalog::as_owner(owner, || Spi::connect_mut(|client| store::flush(client, owner)))?;
    Ok(true)
}

/// Rows buffered before the replay writes its states (bounds memory on huge tables).
const REBUILD_FLUSH_KEYS: usize = 50_000;

/// Replays a watched table in time order into fresh profiles; returns rows replayed.
pub fn rebuild(relid: Oid) -> Result<i64> {
    let cfg = catalog::config()?;
    let watch = cfg.watch(relid)?.clone();
    let cols = watch.columns.as_ref().map_err(|e| FraudError::Config(e.clone()))?.clone();
    let owner = cfg.owner;
    let now = scoring::now_us();
    let ts = quote_identifier(&cols.ts.name);
    let mut rows = 0i64;
    catalog::as_owner(owner, || {
        Spi::run_with_args(
            "DELETE FROM fraud.profile_shards WHERE watch_id OPERATOR(pg_catalog.=) $1",
            &[watch.id.into()],
        )
    })?;
    // Rows are read with the caller's rights on their own table.
    let sql = format!("SELECT t FROM {} AS t ORDER BY t.{ts}", watch.name);
    scan(&sql, |batch| {
        for r in batch {
            let Some(t) = r.get::<PgHeapTuple<'_, AllocatedByRust>>(1)? else { continue };
            let row = composite_values(&watch, t);
            let t_us = scoring::effective_time(&row, now);
            let ev = row.txn(t_us, now).event(t_us);
            for (id, kind) in scoring::key_ids(watch.id, &row).iter().zip(Kind::ALL) {
                if let Some(id) = *id {
                    store::update(id, |s| s.record(kind, &ev));
                }
            }
            rows += 1;
        }
        if store::pending_keys() >= REBUILD_FLUSH_KEYS {
            catalog::as_owner(owner, || Spi::connect_mut(|c| store::flush(c, owner)))?;
        }
        Ok(())
    })?;
    // Labels count from the time they were given.
    if cols.key.is_some() {
        let labels = Spi::connect(|client| -> Result<Vec<(String, bool, i64)>> {
            let mut out = Vec::new();
            let rows = client.select(
                "SELECT row_key, is_fraud, (EXTRACT(epoch FROM labelled_at) OPERATOR(pg_catalog.*) 1e6)::pg_catalog.int8 FROM fraud.labels WHERE source_table OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
                None,
                &[relid.into()],
            )?;
            for r in rows {
                out.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<i64>(3)?.unwrap_or(now),
                ));
            }
            Ok(out)
        })?;
        for (key, is_fraud, at) in labels {
            let row = catalog::as_owner(owner, || Spi::connect(|client| fetch_row(client, &watch, &key)))?;
            if let Some(row) = row {
                let ids = scoring::key_ids(watch.id, &row);
                for id in [ids[0], ids[1]].into_iter().flatten() {
                    store::update(id, |s| s.record_label(is_fraud, at));
                }
            }
        }
    }
    catalog::as_owner(owner, || Spi::connect_mut(|c| store::flush(c, owner)))?;
    Ok(rows)
}
