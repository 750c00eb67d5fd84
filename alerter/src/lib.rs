//! # alerter — the pg_fraud notification daemon
//!
//! Turns rows of `fraud.alert_deliveries` (written by the pg_fraud extension together with
//! each alert) into Slack messages, signed webhooks, emails and log lines.
//!
//! - `LISTEN fraud_alerts` is only a wake-up; the table is the truth. Due rows are claimed
//!   with `FOR UPDATE SKIP LOCKED`, so several alerters can share a database without
//!   sending anything twice, and everything due is caught up on start, on reconnect and on
//!   a periodic poll ([`db`], [`listener`]).
//! - One worker per channel claims in batches, groups per entity, sends concurrently under
//!   a rate limit and `Retry-After`, and a recorder writes outcomes back in batches
//!   ([`dispatch`]).
//! - Channels sit behind the [`channel::Channel`] trait.
//! - `/healthz`, `/readyz`, `/metrics` come from [`http::app`].
//!
//! The binary is a thin wrapper around [`cli::main`]; tests start the whole daemon with
//! [`serve`] on an ephemeral port and stop it through the shutdown future.

pub mod alert;
pub mod backoff;
pub mod channel;
pub mod cli;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod secret;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::{Error, Result};

use crate::backoff::Backoff;
use crate::db::Database;
use crate::dispatch::{Engine, Worker};
use crate::http::{AppState, Health};
use crate::listener::{Listener, WakeTarget};
use crate::metrics::Metrics;

/// Runs the daemon on `config.server.listen` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Server { addr: addr.to_string(), source })?;
    serve(config, listener, shutdown).await
}

/// Aborts a task when dropped, so dropping (or aborting) [`serve`] stops everything it
/// started: tests rely on that to simulate a crash in-process.
struct Guard<T>(JoinHandle<T>);

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Guard<T> {
    async fn join(mut self) -> Option<T> {
        (&mut self.0).await.ok()
    }
}

/// Runs the daemon with an already bound HTTP listener (port 0 in tests) until `shutdown`
/// completes, then shuts down gracefully: stop claiming, let in-flight sends finish within
/// `delivery.shutdown_grace`, write their outcomes, release every claim still held.
pub async fn serve(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let db = Database::new(&config.database, &config.instance)?;
    let health = Arc::new(Health::new(Some(db.clone())));

    let mut workers = Vec::new();
    for c in config.channels.iter().filter(|c| c.enabled) {
        metrics.init_channel(&c.name);
        let channel = channel::build(c, config.delivery.send_timeout)?;
        workers.push((Arc::new(Worker::new(c, channel, &config.delivery)), c.min_level));
    }

    let stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let (recorder_tx, recorder_rx) = mpsc::unbounded_channel();
    let db_backoff = Backoff { base: Duration::from_millis(100), ..config.database.reconnect };
    let engine = Arc::new(Engine {
        db: db.clone(),
        metrics: metrics.clone(),
        delivery: config.delivery.clone(),
        recorder: recorder_tx,
        db_backoff,
    });

    let addr =
        listener.local_addr().map_err(|source| Error::Server { addr: config.server.listen.to_string(), source })?;
    let app = http::app(AppState { metrics: metrics.clone(), health: health.clone() });
    let http_stop = stop.clone();
    let http = Guard(tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { http_stop.cancelled().await }).await
    }));
    info!(%addr, instance = %config.instance, channels = workers.len(), "alerter started; serving /healthz /readyz /metrics");

    let recorder =
        Guard(tokio::spawn(dispatch::record(db.clone(), recorder_rx, hard_stop.clone(), config.database.reconnect)));
    let (may_claim, may_claim_rx) = watch::channel(false);
    let supervisor = Listener {
        db: db.clone(),
        metrics: metrics.clone(),
        health,
        channels: config.channels.clone(),
        targets: workers
            .iter()
            .map(|(w, min_level)| WakeTarget { min_level: *min_level, wake: w.wake.clone() })
            .collect(),
        poll_interval: config.delivery.poll_interval,
        reconnect: config.database.reconnect,
        may_claim,
    };
    let listen = Guard(tokio::spawn(supervisor.run(stop.clone())));
    let worker_tasks: Vec<Guard<()>> = workers
        .iter()
        .map(|(w, _)| Guard(tokio::spawn(w.clone().run(engine.clone(), may_claim_rx.clone(), stop.clone()))))
        .collect();
    drop(workers);
    drop(engine); // the recorder ends when the last worker's handle is gone

    shutdown.await;
    info!("shutting down: finishing in-flight sends");
    stop.cancel();
    for w in worker_tasks {
        w.join().await;
    }
    // Outcomes of finished sends are written before claims are released, so a delivered
    // row is never put back in the queue.
    let grace = config.delivery.shutdown_grace.max(Duration::from_secs(1));
    let mut recorder = recorder;
    if tokio::time::timeout(grace, &mut recorder.0).await.is_err() {
        // The database is unreachable: stop retrying the writes and move on.
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut recorder.0).await;
    }
    match tokio::time::timeout(Duration::from_secs(5), db.release_own()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => info!(deliveries = n, "released claims of unsent deliveries"),
        Ok(Err(e)) => warn!(error = %e, "could not release claims; they return when their lease expires"),
        Err(_) => warn!("releasing claims timed out; they return when their lease expires"),
    }
    listen.join().await;
    if let Some(Err(e)) = http.join().await {
        warn!(error = %e, "http server ended with an error");
    }
    info!("alerter stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C received"),
        _ = term => info!("SIGTERM received"),
    }
}

/// Selects ring as the process-wide rustls provider (idempotent). Every TLS user here is
/// built for ring; installing it explicitly keeps rustls from guessing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
