//! Everything the alerter says to PostgreSQL: the work-queue protocol over
//! `fraud.alert_deliveries` (see `pg_fraud/src/sql/outbox.sql`).
//!
//! The protocol, in short:
//! - **claim**: due rows (`pending`/`failed`, or `sending` whose lease expired) are locked
//!   with `FOR UPDATE SKIP LOCKED` and flipped to `sending` with `claimed_by = instance` and
//!   `next_attempt_at = now() + lease` in one statement, so two alerters never take the same
//!   row and a crashed claimer's rows come back when the lease runs out. `attempts` counts
//!   claims, so a delivery that crashes the alerter every time still reaches `dead`.
//! - **record**: outcomes are written in batches, guarded by `status = 'sending' AND
//!   claimed_by = instance` so a claim that expired and was taken over is not overwritten.
//! - **release** (shutdown): unsent claims go back to `pending`/`failed`, due now, and the
//!   claim is not counted as an attempt.
//! - **reclaim** (start): rows still claimed under our own name belong to a previous run of
//!   this instance that died; they are made due at once instead of waiting for the lease.

pub mod tls;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::alert::{Alert, Level, Reason};
use crate::config::{ChannelConfig, DatabaseConfig};
use crate::error::{Error, Result};

/// The NOTIFY channel the extension signals on.
pub const NOTIFY_CHANNEL: &str = "fraud_alerts";

/// A raw connection whose notifications the caller polls.
pub type PgConnection = Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// A claimed delivery with its alert.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The alert.
    pub alert: Alert,
    /// Claims so far, this one included.
    pub attempts: u32,
    /// Age of the alert when claimed (database clock), for the latency histogram.
    pub age_at_claim: Duration,
    /// When we claimed it (local monotonic clock).
    pub claimed_at: Instant,
}

/// Final state of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Sent.
    Delivered,
    /// Will be retried.
    Failed,
    /// Given up.
    Dead,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }
}

/// One row's outcome, written by [`Database::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct RowUpdate {
    /// `alert_id`.
    pub alert_id: i64,
    /// `channel`.
    pub channel: String,
    /// New status.
    pub status: Status,
    /// For `Failed`: delay until the retry, counted from the database's `now()` so alerter
    /// and database clocks need not agree.
    pub retry_in: Duration,
    /// Error text for `Failed` and `Dead`.
    pub error: Option<String>,
}

/// One line of the queue-depth query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Channel.
    pub channel: String,
    /// `pending`, `sending` or `failed`.
    pub status: String,
    /// Rows in that state.
    pub rows: i64,
    /// Of which due now.
    pub due: i64,
}

/// Connection settings plus a small pool for the work queue.
#[derive(Clone)]
pub struct Database {
    prepared: tls::Prepared,
    tls: MakeRustlsConnect,
    pool: Pool,
    instance: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("target", &self.describe()).field("instance", &self.instance).finish()
    }
}

/// The claim; `{limit}` is replaced by a number from [`claim_size`].
///
/// Two choices keep it O(batch) however long the queue is (found with a 200,000-row
/// backlog, see alerter/BENCHMARKS.md):
/// - it orders by `next_attempt_at` alone, so the partial index on it returns rows in order
///   and the LIMIT stops the scan. A tie-breaker on `alert_id` forced a sort of every due
///   row, and ties are the rule: a bulk insert gives all its deliveries one `now()`. Rows
///   due at the same instant come out in index order, which is insertion order in practice.
/// - the LIMIT is a literal, not a parameter: a cached generic plan must guess a
///   parameter's LIMIT (10% of the rows) and then hash-joins the whole table to update them.
const CLAIM: &str = "
WITH due AS (
    SELECT d.alert_id, d.channel
      FROM fraud.alert_deliveries d
     WHERE d.channel = $1
       AND d.status IN ('pending', 'sending', 'failed')
       AND d.next_attempt_at <= now()
       AND (d.attempts > 0 OR d.created_at <= now() - make_interval(secs => $4))
     ORDER BY d.next_attempt_at
     LIMIT {limit}
       FOR UPDATE SKIP LOCKED
)
UPDATE fraud.alert_deliveries d
   SET status = 'sending',
       claimed_by = $2,
       attempts = d.attempts + 1,
       next_attempt_at = now() + make_interval(secs => $3),
       updated_at = now()
  FROM due, fraud.alerts a
 WHERE d.alert_id = due.alert_id AND d.channel = due.channel AND a.id = d.alert_id
RETURNING d.alert_id, d.attempts, a.created_at, a.source_table, a.row_key, a.entity, a.amount,
          a.tx_time, a.score, a.level::text, a.action, a.reasons, a.dedup_key, a.repeats,
          extract(epoch FROM clock_timestamp() - a.created_at)::float8";

const NEXT_DUE: &str = "
SELECT extract(epoch FROM min(CASE WHEN attempts = 0
                                   THEN greatest(next_attempt_at, created_at + make_interval(secs => $2))
                                   ELSE next_attempt_at END) - now())::float8
  FROM fraud.alert_deliveries
 WHERE channel = $1 AND status IN ('pending', 'sending', 'failed')";

/// `(d.status = 'sending') IS TRUE` means `d.status = 'sending'` (the column is NOT NULL),
/// written so the planner cannot use the `(channel, status)` index for it. That index looks
/// selective (few rows are `sending`) but keeps an entry for every past claim until VACUUM;
/// probed once per updated row it made a batch take up to 0.5 s at a 200,000-row backlog.
/// The primary key finds each row with one probe.
const RECORD: &str = "
UPDATE fraud.alert_deliveries d
   SET status = u.status,
       last_error = coalesce(u.error, d.last_error),
       delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE d.delivered_at END,
       next_attempt_at = CASE WHEN u.status = 'failed'
                              THEN now() + u.delay_ms * interval '1 millisecond'
                              ELSE d.next_attempt_at END,
       updated_at = now()
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[])
       AS u(alert_id, channel, status, delay_ms, error)
 WHERE d.alert_id = u.alert_id AND d.channel = u.channel
   AND (d.status = 'sending') IS TRUE AND d.claimed_by = $6";

const RELEASE_OWN: &str = "
UPDATE fraud.alert_deliveries
   SET status = CASE WHEN attempts > 1 THEN 'failed' ELSE 'pending' END,
       attempts = greatest(attempts - 1, 0),
       next_attempt_at = now(),
       claimed_by = NULL,
       updated_at = now()
 WHERE status = 'sending' AND claimed_by = $1";

const RECLAIM_OWN: &str = "
UPDATE fraud.alert_deliveries
   SET status = 'failed',
       next_attempt_at = now(),
       claimed_by = NULL,
       last_error = 'alerter ' || $1 || ' restarted while this delivery was claimed (it may have been sent)',
       updated_at = now()
 WHERE status = 'sending' AND claimed_by = $1";

const REGISTER: &str = "
INSERT INTO fraud.channels AS c (name, min_level, enabled, updated_at)
VALUES ($1, $2::text::fraud.risk_level, $3, now())
ON CONFLICT (name) DO UPDATE
   SET min_level = EXCLUDED.min_level, enabled = EXCLUDED.enabled, updated_at = now()
 WHERE (c.min_level, c.enabled) IS DISTINCT FROM (EXCLUDED.min_level, EXCLUDED.enabled)";

const QUEUE_DEPTH: &str = "
SELECT channel, status, count(*)::bigint, (count(*) FILTER (WHERE next_attempt_at <= now()))::bigint
  FROM fraud.alert_deliveries
 WHERE status IN ('pending', 'sending', 'failed')
 GROUP BY channel, status";

/// How many rows to claim when `free` may be claimed and a full batch is `cap`: the whole
/// batch, else the largest power of two not above `free`. The LIMIT is part of the claim's
/// SQL text (a literal keeps cached plans good), so this bounds the statements each
/// connection prepares to about log2(cap) + 1.
pub fn claim_size(free: usize, cap: usize) -> usize {
    if free >= cap {
        cap.max(1)
    } else if free <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - free.leading_zeros())
    }
}

impl Database {
    /// Parses the connection string, builds the TLS connector and the (lazy) pool. Does not
    /// connect: the daemon must start, and report not-ready, while the database is down.
    pub fn new(cfg: &DatabaseConfig, instance: &str) -> Result<Database> {
        let mut prepared = tls::prepare(cfg.url.expose()).map_err(Error::Tls)?;
        prepared.config.connect_timeout(cfg.connect_timeout);
        // Keepalives let a dead peer (host gone, no RST) surface as an error instead of a
        // LISTEN that silently never fires again; the periodic poll covers the gap meanwhile.
        prepared.config.keepalives(true);
        prepared.config.keepalives_idle(Duration::from_secs(30));
        if prepared.config.get_application_name().is_none() {
            prepared.config.application_name(format!("pg-fraud-alerter {instance}"));
        }
        let tls = tls::connector(&prepared).map_err(Error::Tls)?;
        let manager = Manager::from_config(
            prepared.config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(cfg.connect_timeout))
            .wait_timeout(Some(cfg.connect_timeout * 2))
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Database { prepared, tls, pool, instance: instance.to_owned() })
    }

    /// Redacted description of the target for logs.
    pub fn describe(&self) -> String {
        tls::describe(&self.prepared)
    }

    /// The name written to `claimed_by`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A dedicated connection (for LISTEN: a pooled one would lose its subscriptions).
    pub async fn connect(&self) -> Result<(Client, PgConnection)> {
        Ok(self.prepared.config.connect(self.tls.clone()).await?)
    }

    /// A pooled connection.
    pub async fn pooled(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }

    /// `SELECT 1` through the pool within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        let work = async {
            let client = self.pooled().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, Error>(())
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout(format!("database ping after {timeout:?}")))?
    }

    /// Upserts the channels this alerter serves into `fraud.channels`, so the extension
    /// creates deliveries for them.
    pub async fn register_channels(&self, client: &Client, channels: &[ChannelConfig]) -> Result<()> {
        let stmt = client.prepare(REGISTER).await?;
        for c in channels {
            client.execute(&stmt, &[&c.name, &c.min_level.as_str(), &c.enabled]).await?;
        }
        Ok(())
    }

    /// Makes rows still claimed under our name due now (a previous run died holding them).
    pub async fn reclaim_own(&self, client: &Client) -> Result<u64> {
        Ok(client.execute(RECLAIM_OWN, &[&self.instance]).await?)
    }

    /// Claims up to `limit` due deliveries of `channel`; `limit` should come from
    /// [`claim_size`] (any value works, but each distinct one is a statement to prepare).
    pub async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
        group_wait: Duration,
    ) -> Result<Vec<Claimed>> {
        let client = self.pooled().await?;
        let stmt = client.prepare_cached(&CLAIM.replace("{limit}", &limit.max(1).to_string())).await?;
        let rows =
            client.query(&stmt, &[&channel, &self.instance, &lease.as_secs_f64(), &group_wait.as_secs_f64()]).await?;
        let claimed_at = Instant::now();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let level: String = row.try_get(9)?;
            let reasons: serde_json::Value = row.try_get(11)?;
            let attempts: i32 = row.try_get(1)?;
            let age: Option<f64> = row.try_get(14)?;
            let created_at: DateTime<Utc> = row.try_get(2)?;
            out.push(Claimed {
                alert: Alert {
                    id: row.try_get(0)?,
                    created_at,
                    source_table: row.try_get(3)?,
                    row_key: row.try_get(4)?,
                    entity: row.try_get(5)?,
                    amount: row.try_get(6)?,
                    tx_time: row.try_get(7)?,
                    score: row.try_get(8)?,
                    // The enum is ours (outbox.sql); an unknown label means a newer schema,
                    // and treating it as critical errs on the side of telling someone.
                    level: level.parse().unwrap_or(Level::Critical),
                    action: row.try_get(10)?,
                    reasons: Reason::parse_list(&reasons),
                    dedup_key: row.try_get(12)?,
                    repeats: row.try_get(13)?,
                },
                attempts: attempts.max(0) as u32,
                age_at_claim: Duration::from_secs_f64(age.unwrap_or(0.0).clamp(0.0, 1e9)),
                claimed_at,
            });
        }
        Ok(out)
    }

    /// How long until the next delivery of `channel` becomes due (`None`: nothing queued).
    pub async fn next_due(&self, channel: &str, group_wait: Duration) -> Result<Option<Duration>> {
        let client = self.pooled().await?;
        let stmt = client.prepare_cached(NEXT_DUE).await?;
        let row = client.query_one(&stmt, &[&channel, &group_wait.as_secs_f64()]).await?;
        let secs: Option<f64> = row.try_get(0)?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))))
    }

    /// Writes outcomes in one statement; returns the rows changed.
    pub async fn record(&self, updates: &[RowUpdate]) -> Result<u64> {
        if updates.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = updates.iter().map(|u| u.alert_id).collect();
        let channels: Vec<&str> = updates.iter().map(|u| u.channel.as_str()).collect();
        let statuses: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
        let delays: Vec<i64> = updates.iter().map(|u| u.retry_in.as_millis().min(i64::MAX as u128) as i64).collect();
        let errors: Vec<Option<&str>> = updates.iter().map(|u| u.error.as_deref()).collect();
        let client = self.pooled().await?;
        let stmt = client.prepare_cached(RECORD).await?;
        Ok(client.execute(&stmt, &[&ids, &channels, &statuses, &delays, &errors, &self.instance]).await?)
    }

    /// Hands back every claim this instance still holds (shutdown).
    pub async fn release_own(&self) -> Result<u64> {
        let client = self.pooled().await?;
        Ok(client.execute(RELEASE_OWN, &[&self.instance]).await?)
    }

    /// Unfinished deliveries by channel and status.
    pub async fn queue_depth(&self) -> Result<Vec<QueueDepth>> {
        let client = self.pooled().await?;
        let stmt = client.prepare_cached(QUEUE_DEPTH).await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.into_iter()
            .map(|r| {
                Ok(QueueDepth {
                    channel: r.try_get(0)?,
                    status: r.try_get(1)?,
                    rows: r.try_get(2)?,
                    due: r.try_get(3)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_sizes_are_the_batch_or_a_power_of_two() {
        assert_eq!(claim_size(500, 384), 384);
        assert_eq!(claim_size(384, 384), 384);
        assert_eq!(claim_size(383, 384), 256);
        assert_eq!(claim_size(3, 384), 2);
        assert_eq!(claim_size(1, 384), 1);
        assert_eq!(claim_size(0, 384), 1);
        assert_eq!(claim_size(7, 1), 1);
        let distinct: std::collections::BTreeSet<usize> = (1..=200).map(|f| claim_size(f, 200)).collect();
        assert_eq!(distinct.len(), 9, "{distinct:?}"); // 1, 2, 4 … 128, and 200
    }

    #[test]
    fn the_claim_limit_is_a_literal() {
        let sql = CLAIM.replace("{limit}", "128");
        assert!(sql.contains("LIMIT 128\n"), "{sql}");
        assert!(!sql.contains("$5"), "parameters are $1..$4: {sql}");
    }
}
