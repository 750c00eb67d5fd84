//! Shared test harness: a real PostgreSQL cluster ([`pg`]), fake receivers ([`fakes`]) and
//! helpers to run the daemon in-process or as a process.
//!
//! Each test binary uses only part of this module, hence the allowance below.
#![allow(dead_code, unused_imports)]

pub mod fakes;
pub mod pg;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use alerter::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use fakes::{FakeHttp, FakeSmtp, Received, Reply};
pub use pg::PgCluster;

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
/// Limits are generous: they are there to end a broken test, not to measure anything.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Configuration TOML with fast timings for tests; `delivery_extra` holds `key = value`
/// lines that override the `[delivery]` defaults below, `channels` holds `[channels.X]`
/// tables.
pub fn config_toml(instance: &str, db_url: &str, delivery_extra: &str, channels: &str) -> String {
    let mut delivery: Vec<(String, String)> = [
        ("poll_interval", "\"1s\""),
        ("backoff_base", "\"200ms\""),
        ("backoff_max", "\"2s\""),
        ("jitter", "0.2"),
        ("send_timeout", "\"5s\""),
        ("lease", "\"30s\""),
        ("shutdown_grace", "\"2s\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in delivery_extra.lines().filter(|l| l.contains('=')) {
        let (k, v) = line.split_once('=').unwrap();
        let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
        match delivery.iter_mut().find(|(dk, _)| *dk == k) {
            Some(entry) => entry.1 = v,
            None => delivery.push((k, v)),
        }
    }
    let delivery: String = delivery.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    format!(
        r#"
instance = "{instance}"

[database]
url = "{db_url}"
reconnect_min = "100ms"
reconnect_max = "1s"
connect_timeout = "3s"

[server]
listen = "127.0.0.1:0"

[log]
level = "alerter=debug,warn"

[delivery]
{delivery}
{channels}
"#
    )
}

pub fn config(instance: &str, db_url: &str, delivery_extra: &str, channels: &str) -> Config {
    let text = config_toml(instance, db_url, delivery_extra, channels);
    Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The daemon running in-process on an ephemeral port.
pub struct Daemon {
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<alerter::Result<()>>>,
}

/// Routes the daemon's tracing output to the test harness (shown for failing tests only);
/// `RUST_LOG` picks the level, errors only by default.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Daemon {
    /// Starts the daemon and waits until it is ready (LISTEN active, channels registered:
    /// an alert enqueued before registration has no delivery for our channels).
    pub async fn start(config: Config) -> Daemon {
        let d = Daemon::spawn(config).await;
        d.wait_ready().await;
        d
    }

    /// Starts the daemon without waiting for readiness.
    pub async fn spawn(config: Config) -> Daemon {
        init_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(alerter::serve(config, listener, async move {
            let _ = rx.await;
        }));
        Daemon { http, stop: Some(tx), handle: Some(handle) }
    }

    /// Graceful stop (what SIGTERM does); returns serve's result.
    pub async fn stop(mut self) -> alerter::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("daemon did not stop within 30 s")
            .expect("daemon task panicked")
    }

    /// Hard stop: the task is aborted mid-flight, nothing is cleaned up.
    pub async fn kill(mut self) {
        let handle = self.handle.take().unwrap();
        handle.abort();
        let _ = handle.await;
    }

    /// Whether the daemon task is still running (it must not crash).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        get(self.http, path).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    pub async fn wait_ready(&self) {
        let addr = self.http;
        eventually("/readyz to return 200", Duration::from_secs(30), || async move {
            (get(addr, "/readyz").await.0 == 200).then_some(())
        })
        .await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Value of an unlabelled or labelled sample in the exposition text, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `fraud.enqueue_alert` in its own transaction; returns the alert id.
pub async fn enqueue(c: &tokio_postgres::Client, entity: &str, score: f64, level: &str) -> i64 {
    c.query_one(
        "SELECT fraud.enqueue_alert('public.payments', $1, $2, $3::text::fraud.risk_level, \
         '[{\"name\":\"impossible_travel\",\"contribution\":0.41,\"detail\":\"8000 km in 1 h\"},\
           {\"name\":\"new_device\",\"contribution\":0.22}]'::jsonb, \
         'tx-' || $1, 950.0)",
        &[&entity, &score, &level],
    )
    .await
    .unwrap_or_else(|e| panic!("enqueue_alert: {e}"))
    .get(0)
}

/// `(status, attempts, last_error)` of one delivery.
pub async fn delivery(
    c: &tokio_postgres::Client,
    alert_id: i64,
    channel: &str,
) -> Option<(String, i32, Option<String>)> {
    c.query_opt(
        "SELECT status, attempts, last_error FROM fraud.alert_deliveries WHERE alert_id = $1 AND channel = $2",
        &[&alert_id, &channel],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Number of deliveries of `channel` in `status`.
pub async fn count_status(c: &tokio_postgres::Client, channel: &str, status: &str) -> i64 {
    c.query_one("SELECT count(*) FROM fraud.alert_deliveries WHERE channel = $1 AND status = $2", &[&channel, &status])
        .await
        .unwrap()
        .get(0)
}

/// Waits until every delivery of `channel` is `delivered` and there are `n` of them.
pub async fn wait_delivered(c: &tokio_postgres::Client, channel: &str, n: i64, limit: Duration) {
    eventually(&format!("{n} deliveries on {channel} to be delivered"), limit, || async {
        (count_status(c, channel, "delivered").await == n).then_some(())
    })
    .await
}

/// Ids of the alerts a webhook-channel request covered.
pub fn webhook_ids(r: &Received) -> Vec<i64> {
    r.json()["alert_ids"].as_array().expect("alert_ids").iter().map(|v| v.as_i64().unwrap()).collect()
}
