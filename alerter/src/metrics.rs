//! Prometheus metrics (prometheus-client), served at `/metrics`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `alerter_deliveries_delivered_total` | counter | channel | deliveries (alert × channel) sent |
//! | `alerter_deliveries_failed_total` | counter | channel | attempts that failed and will be retried |
//! | `alerter_deliveries_dead_total` | counter | channel | deliveries given up (`dead`) |
//! | `alerter_deliveries_skipped_total` | counter | channel | deliveries below the channel's `min_level`, parked `dead` unsent |
//! | `alerter_messages_sent_total` | counter | channel | messages sent (one message may cover several alerts) |
//! | `alerter_rate_limited_total` | counter | channel | 429 responses received |
//! | `alerter_delivery_latency_seconds` | histogram | channel | `alerts.created_at` → delivered |
//! | `alerter_queue_depth` | gauge | channel, status | unfinished deliveries (`pending`, `sending`, `failed`) |
//! | `alerter_queue_due` | gauge | channel | unfinished deliveries due now |
//! | `alerter_db_reconnects_total` | counter | | LISTEN connection re-established after a loss |
//! | `alerter_notifications_total` | counter | | NOTIFY wake-ups received |
//! | `alerter_notifications_ignored_total` | counter | | NOTIFY payloads that could not be parsed |
//! | `alerter_listen_active` | gauge | | 1 while LISTEN fraud_alerts is established |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::QueueDepth;
use crate::error::{Error, Result};

/// `{channel="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// Channel name.
    pub channel: String,
}

/// `{channel="…", status="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Channel name.
    pub channel: String,
    /// Delivery status.
    pub status: String,
}

type HistogramFamily = Family<ChannelLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s: the interesting range is milliseconds (NOTIFY path) to a minute
    // (retries, rate limiting).
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the alerter exports.
pub struct Metrics {
    registry: Registry,
    /// Deliveries sent.
    pub delivered: Family<ChannelLabel, Counter>,
    /// Attempts that failed and will be retried.
    pub failed: Family<ChannelLabel, Counter>,
    /// Deliveries given up.
    pub dead: Family<ChannelLabel, Counter>,
    /// Deliveries below the channel's min_level.
    pub skipped: Family<ChannelLabel, Counter>,
    /// Messages sent.
    pub messages: Family<ChannelLabel, Counter>,
    /// 429 responses.
    pub rate_limited: Family<ChannelLabel, Counter>,
    /// Alert creation → delivery.
    pub latency: HistogramFamily,
    /// Unfinished deliveries by status.
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Unfinished deliveries due now.
    pub queue_due: Family<ChannelLabel, Gauge>,
    /// LISTEN connection re-established.
    pub reconnects: Counter,
    /// NOTIFY received.
    pub notifications: Counter,
    /// NOTIFY payloads ignored.
    pub notifications_ignored: Counter,
    /// 1 while LISTEN is active.
    pub listen_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("alerter");
        let m = Metrics {
            delivered: Family::default(),
            failed: Family::default(),
            dead: Family::default(),
            skipped: Family::default(),
            messages: Family::default(),
            rate_limited: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            queue_due: Family::default(),
            reconnects: Counter::default(),
            notifications: Counter::default(),
            notifications_ignored: Counter::default(),
            listen_active: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("deliveries_delivered", "Deliveries (alert x channel) sent", m.delivered.clone());
        registry.register("deliveries_failed", "Delivery attempts that failed and will be retried", m.failed.clone());
        registry.register(
            "deliveries_dead",
            "Deliveries given up after the last attempt or a permanent error",
            m.dead.clone(),
        );
        registry.register(
            "deliveries_skipped",
            "Deliveries below the channel's min_level, parked dead unsent",
            m.skipped.clone(),
        );
        registry.register("messages_sent", "Messages sent; one message may cover several alerts", m.messages.clone());
        registry.register("rate_limited", "HTTP 429 responses received", m.rate_limited.clone());
        registry.register_with_unit(
            "delivery_latency",
            "Time from alerts.created_at to successful delivery",
            prometheus_client::registry::Unit::Seconds,
            m.latency.clone(),
        );
        registry.register("queue_depth", "Unfinished deliveries by channel and status", m.queue_depth.clone());
        registry.register("queue_due", "Unfinished deliveries that are due now", m.queue_due.clone());
        registry.register("db_reconnects", "LISTEN connection re-established after a loss", m.reconnects.clone());
        registry.register("notifications", "NOTIFY fraud_alerts wake-ups received", m.notifications.clone());
        registry.register(
            "notifications_ignored",
            "NOTIFY payloads that could not be parsed",
            m.notifications_ignored.clone(),
        );
        registry.register("listen_active", "1 while LISTEN fraud_alerts is established", m.listen_active.clone());
        Metrics { registry, ..m }
    }

    /// `{channel}` label value.
    pub fn channel(name: &str) -> ChannelLabel {
        ChannelLabel { channel: name.to_owned() }
    }

    /// Creates the per-channel series at zero so dashboards see them before the first event.
    pub fn init_channel(&self, name: &str) {
        let l = Metrics::channel(name);
        let _ = self.delivered.get_or_create(&l);
        let _ = self.failed.get_or_create(&l);
        let _ = self.dead.get_or_create(&l);
        let _ = self.messages.get_or_create(&l);
        let _ = self.queue_due.get_or_create(&l);
        for status in ["pending", "sending", "failed"] {
            let _ = self.queue_depth.get_or_create(&QueueLabel { channel: name.to_owned(), status: status.to_owned() });
        }
    }

    /// Replaces the queue gauges with a fresh reading; `channels` are the ones we serve
    /// (set to zero when absent from the reading).
    pub fn set_queue(&self, channels: &[String], rows: &[QueueDepth]) {
        for c in channels {
            self.queue_due.get_or_create(&Metrics::channel(c)).set(0);
            for status in ["pending", "sending", "failed"] {
                self.queue_depth.get_or_create(&QueueLabel { channel: c.clone(), status: status.to_owned() }).set(0);
            }
        }
        let mut due: std::collections::HashMap<&str, i64> = Default::default();
        for r in rows {
            self.queue_depth
                .get_or_create(&QueueLabel { channel: r.channel.clone(), status: r.status.clone() })
                .set(r.rows);
            *due.entry(&r.channel).or_default() += r.due;
        }
        for (c, n) in due {
            self.queue_due.get_or_create(&Metrics::channel(c)).set(n);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).map_err(|_| Error::Metrics)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        m.init_channel("slack");
        m.delivered.get_or_create(&Metrics::channel("slack")).inc_by(3);
        m.latency.get_or_create(&Metrics::channel("slack")).observe(0.004);
        m.reconnects.inc();
        m.set_queue(
            &["slack".into()],
            &[QueueDepth { channel: "slack".into(), status: "failed".into(), rows: 5, due: 2 }],
        );
        let text = m.encode().unwrap();
        assert!(text.contains("alerter_deliveries_delivered_total{channel=\"slack\"} 3"), "{text}");
        assert!(text.contains("alerter_deliveries_dead_total{channel=\"slack\"} 0"), "{text}");
        assert!(
            text.contains("alerter_delivery_latency_seconds_bucket{le=\"0.004\",channel=\"slack\"} 1")
                || text.contains("alerter_delivery_latency_seconds_count{channel=\"slack\"} 1"),
            "{text}"
        );
        assert!(text.contains("alerter_queue_depth{channel=\"slack\",status=\"failed\"} 5"), "{text}");
        assert!(text.contains("alerter_queue_due{channel=\"slack\"} 2"), "{text}");
        assert!(text.contains("alerter_db_reconnects_total 1"), "{text}");
    }
}
