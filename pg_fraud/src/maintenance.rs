//! Housekeeping, scheduled by `sql/cron.sql`: compact and expire profiles, trim the alert
//! outbox, the decision log and the error log.

use std::time::Instant;

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::Spi;
use pgrx::JsonB;
use serde_json::json;

use fraud_core::state::State;

use crate::catalog;
use crate::error::{FraudError, Result};

type SqlResult<T> = std::result::Result<T, pgrx::pg_sys::panic::ErrorReport>;

/// Keys merged per statement when compacting (bounds the memory of one pass).
const BATCH: usize = 5_000;

/// A profile key and whether to keep it.
struct Key {
    watch: i32,
    kind: String,
    key: String,
}

/// Merges every key's shard rows into one and deletes keys idle since `cutoff_us`.
///
/// Two passes: a read finds candidates (several shards, or idle); then each candidate's rows
/// are deleted with `RETURNING state` and re-inserted merged. Deleting with RETURNING makes
/// the merge see exactly the rows it removes, including a delta another backend committed a
/// moment earlier; a delta inserted after the delete lands in a new row. Nothing is lost.
fn compact_profiles(cutoff_us: i64) -> Result<(i64, i64)> {
    let mut candidates = Vec::new();
    let sql = "SELECT watch_id, kind, key, pg_catalog.array_agg(state) FROM fraud.profile_shards GROUP BY 1, 2, 3";
    crate::admin::scan(sql, |batch| {
        for r in batch {
            let (Some(watch), Some(kind), Some(key), Some(states)) =
                (r.get::<i32>(1)?, r.get::<String>(2)?, r.get::<String>(3)?, r.get::<pgrx::Array<'_, &[u8]>>(4)?)
            else {
                continue;
            };
            let mut merged = State::default();
            let mut corrupt = false;
            let mut shards = 0;
            for s in states.iter() {
                shards += 1;
                match s.map(State::decode) {
                    Some(Ok(s)) => merged.merge(&s),
                    _ => corrupt = true,
                }
            }
            // A corrupt shard is left for fraud.rebuild_profiles, which names it.
            let idle = merged.last_seen_us.is_none_or(|t| t < cutoff_us);
            if !corrupt && (shards > 1 || idle) {
                candidates.push(Key { watch, kind, key });
            }
        }
        Ok(())
    })?;
    let (mut merged_keys, mut expired) = (0i64, 0i64);
    for chunk in candidates.chunks(BATCH) {
        pgrx::check_for_interrupts!();
        Spi::connect_mut(|client| -> Result<()> {
            for k in chunk {
                let rows = client.update(
                    "DELETE FROM fraud.profile_shards WHERE watch_id OPERATOR(pg_catalog.=) $1 \
                        AND kind OPERATOR(pg_catalog.=) $2 AND key OPERATOR(pg_catalog.=) $3 RETURNING state",
                    None,
                    &[k.watch.into(), k.kind.as_str().into(), k.key.as_str().into()],
                )?;
                let mut merged = State::default();
                for r in rows {
                    if let Some(bytes) = r.get::<&[u8]>(1)? {
                        let s = State::decode(bytes).map_err(|source| FraudError::CorruptState {
                            kind: "profile",
                            key: k.key.clone(),
                            source,
                        })?;
                        merged.merge(&s);
                    }
                }
                if merged.last_seen_us.is_none_or(|t| t < cutoff_us) {
                    expired += 1;
                    continue;
                }
                client.update(
                    "INSERT INTO fraud.profile_shards AS p (watch_id, kind, key, shard, state) VALUES ($1, $2, $3, 0, $4) \
                     ON CONFLICT (watch_id, kind, key, shard) DO UPDATE SET state = fraud._merge_state(p.state, excluded.state)",
                    None,
                    &[k.watch.into(), k.kind.as_str().into(), k.key.as_str().into(), merged.encode().into()],
                )?;
                merged_keys += 1;
            }
            Ok(())
        })?;
    }
    Ok((merged_keys, expired))
}

fn delete(sql: &str, older_than: &Interval) -> Result<i64> {
    Spi::connect_mut(|client| {
        let n = client.update(sql, None, &[(*older_than).into()])?.len();
        Ok(n as i64)
    })
}

fn positive(name: &str, i: &Interval) -> Result<i64> {
    let us = crate::api::window_us(i)
        .map_err(|_| FraudError::InvalidArgument(format!("{name} must be a positive, finite interval")))?;
    Ok(us)
}

#[pg_schema]
mod fraud {
    use super::*;

    /// Housekeeping: merges each profile's shard rows into one, forgets keys idle for
    /// `profile_ttl`, deletes alerts older than `alert_retention` whose deliveries are all
    /// finished (delivered or dead), and trims the decision log and the error log. Safe to
    /// run while rows are inserted. Returns what it did.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn maintenance(
        profile_ttl: default!(Interval, "'180 days'"),
        alert_retention: default!(Interval, "'90 days'"),
        score_retention: default!(Interval, "'30 days'"),
        error_retention: default!(Interval, "'30 days'"),
    ) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            let started = Instant::now();
            let ttl_us = positive("profile_ttl", &profile_ttl)?;
            for (name, i) in [
                ("alert_retention", &alert_retention),
                ("score_retention", &score_retention),
                ("error_retention", &error_retention),
            ] {
                positive(name, i)?;
            }
            let cfg = catalog::config()?;
            let cutoff_us = crate::scoring::now_us().saturating_sub(ttl_us);
            let (merged, expired) = catalog::as_owner(cfg.owner, || compact_profiles(cutoff_us))?;
            let alerts = delete(
                "DELETE FROM fraud.alerts a WHERE a.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1) \
                   AND NOT EXISTS (SELECT 1 FROM fraud.alert_deliveries d WHERE d.alert_id OPERATOR(pg_catalog.=) a.id \
                                      AND d.status OPERATOR(pg_catalog.<>) ALL (ARRAY['delivered', 'dead']))",
                &alert_retention,
            )?;
            let scores = delete(
                "DELETE FROM fraud.scores WHERE scored_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)",
                &score_retention,
            )?;
            let errors = delete(
                "DELETE FROM fraud.scoring_errors WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1)",
                &error_retention,
            )?;
            Ok(JsonB(json!({
                "profiles_compacted": merged,
                "profiles_expired": expired,
                "alerts_deleted": alerts,
                "scores_deleted": scores,
                "scoring_errors_deleted": errors,
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            })))
        };
        run().map_err(|e| e.report())
    }
}
