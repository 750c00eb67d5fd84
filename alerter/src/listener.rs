//! The LISTEN supervisor: one dedicated connection that subscribes to `fraud_alerts`,
//! registers our channels, and turns notifications into wake-ups for the channel workers.
//!
//! NOTIFY is only a hint. On every (re)connect the workers are woken to catch up from the
//! table, and every `poll_interval` the connection is pinged and the workers are woken
//! again, so a lost notification (or one sent while we were disconnected) delays a delivery
//! by at most one poll interval. Losing the connection clears readiness, counts a reconnect
//! once it is back, and retries with jittered exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Notification};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alert::Level;
use crate::backoff::Backoff;
use crate::config::ChannelConfig;
use crate::db::{Database, NOTIFY_CHANNEL};
use crate::error::{Error, Result};
use crate::http::Health;
use crate::metrics::Metrics;

/// The NOTIFY payload: `{"id":123,"level":"high","score":0.91}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Payload {
    /// `alerts.id`.
    pub id: i64,
    /// The alert's level, used to wake only the channels that want it.
    pub level: Level,
    /// The score (informational).
    #[serde(default)]
    pub score: Option<f64>,
}

/// Parses a payload; the error text is for the log line.
pub fn parse_payload(payload: &str) -> std::result::Result<Payload, String> {
    serde_json::from_str(payload).map_err(|e| e.to_string())
}

/// A channel worker's wake-up handle.
#[derive(Debug, Clone)]
pub(crate) struct WakeTarget {
    pub min_level: Level,
    pub wake: Arc<Notify>,
}

pub(crate) struct Listener {
    pub db: Database,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub channels: Vec<ChannelConfig>,
    pub targets: Vec<WakeTarget>,
    pub poll_interval: Duration,
    pub reconnect: Backoff,
    /// Set once our own stale claims have been reclaimed; workers claim only after that,
    /// or the reclaim would snatch back rows this very run had just claimed.
    pub may_claim: watch::Sender<bool>,
}

/// Aborts the connection driver when the session ends, whichever way it ends.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut first_session = true;
        let mut connected_before = false;
        let mut failures = 0u32;
        loop {
            let result = self.session(&stop, &mut first_session, &mut connected_before, &mut failures).await;
            self.health.set_listening(false);
            self.metrics.listen_active.set(0);
            let Err(e) = result else { return };
            if stop.is_cancelled() {
                return;
            }
            failures += 1;
            let delay = self.reconnect.delay(failures);
            if connected_before && failures == 1 {
                warn!(error = %e, retry_in = ?delay, "database connection lost; reconnecting");
            } else {
                warn!(error = %e, retry_in = ?delay, target = %self.db.describe(), "cannot connect to the database");
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn wake_all(&self) {
        for t in &self.targets {
            t.wake.notify_one();
        }
    }

    fn on_notification(&self, n: &Notification) {
        self.metrics.notifications.inc();
        match parse_payload(n.payload()) {
            Ok(p) => {
                debug!(alert_id = p.id, level = %p.level, "NOTIFY received");
                for t in self.targets.iter().filter(|t| p.level >= t.min_level) {
                    t.wake.notify_one();
                }
            }
            Err(e) => {
                self.metrics.notifications_ignored.inc();
                let shown: String = n.payload().chars().take(200).collect();
                warn!(payload = %shown, error = %e, "ignoring malformed NOTIFY payload on {NOTIFY_CHANNEL}");
            }
        }
    }

    async fn refresh_queue(&self) {
        match self.db.queue_depth().await {
            Ok(rows) => {
                let names: Vec<String> = self.channels.iter().filter(|c| c.enabled).map(|c| c.name.clone()).collect();
                self.metrics.set_queue(&names, &rows);
            }
            Err(e) => debug!(error = %e, "queue depth query failed"),
        }
    }

    /// One connection's life. `Ok` only when stopped.
    async fn session(
        &self,
        stop: &CancellationToken,
        first_session: &mut bool,
        connected_before: &mut bool,
        failures: &mut u32,
    ) -> Result<()> {
        let (client, mut connection) = tokio::select! {
            c = self.db.connect() => c?,
            _ = stop.cancelled() => return Ok(()),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The connection must be polled for notifications to arrive; this task does nothing
        // else and ends with the connection's error when the server goes away.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            break;
                        }
                    }
                    Ok(AsyncMessage::Notice(notice)) => debug!(%notice, "server notice"),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }));

        client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await?;
        self.db.register_channels(&client, &self.channels).await?;
        if *first_session {
            let n = self.db.reclaim_own(&client).await?;
            if n > 0 {
                info!(
                    deliveries = n,
                    instance = self.db.instance(),
                    "reclaimed deliveries this instance held when it last stopped"
                );
            }
            *first_session = false;
            self.may_claim.send_replace(true);
        }
        if *connected_before {
            self.metrics.reconnects.inc();
            info!(target = %self.db.describe(), "reconnected; LISTEN {NOTIFY_CHANNEL} re-established, catching up");
        } else {
            info!(target = %self.db.describe(), instance = self.db.instance(), "connected; listening on {NOTIFY_CHANNEL}");
        }
        *connected_before = true;
        *failures = 0;
        self.health.set_listening(true);
        self.metrics.listen_active.set(1);
        // Anything written while we were away is due now.
        self.wake_all();
        self.refresh_queue().await;

        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(n) => self.on_notification(&n),
                    None => {
                        let mut handle = driver;
                        let ended = (&mut handle.0).await;
                        return Err(match ended {
                            Ok(Err(e)) => Error::Db(e),
                            _ => Error::Pool("LISTEN connection closed".into()),
                        });
                    }
                },
                _ = tick.tick() => {
                    let ping = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1")).await;
                    match ping {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(Error::Db(e)),
                        Err(_) => return Err(Error::Timeout("LISTEN connection ping".into())),
                    }
                    self.wake_all();
                    self.refresh_queue().await;
                }
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse_payload(r#"{"id":123,"level":"high","score":0.91}"#),
            Ok(Payload { id: 123, level: Level::High, score: Some(0.91) })
        );
        assert!(parse_payload("").is_err());
        assert!(parse_payload("not json").is_err());
        assert!(parse_payload(r#"{"id":"x","level":"high"}"#).is_err());
        assert!(parse_payload(r#"{"id":1,"level":"apocalyptic"}"#).is_err());
        assert!(parse_payload(r#"{"level":"high"}"#).is_err());
    }
}
