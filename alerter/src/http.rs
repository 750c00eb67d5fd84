//! The operations endpoint: `/healthz` (the process is alive), `/readyz` (database reachable
//! and LISTEN active, 503 otherwise) and `/metrics` (Prometheus text format).
//!
//! [`app`] builds the router from state and nothing else, so tests drive it with
//! `tower::ServiceExt::oneshot` without a socket; serving happens in `crate::serve`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Readiness as seen by the LISTEN supervisor, plus a way to probe the database.
#[derive(Debug)]
pub struct Health {
    listening: AtomicBool,
    db: Option<Database>,
}

impl Health {
    /// `db` is probed by `/readyz`; `None` skips the probe (tests of the router alone).
    pub fn new(db: Option<Database>) -> Health {
        Health { listening: AtomicBool::new(false), db }
    }

    /// Set by the supervisor when `LISTEN fraud_alerts` succeeds and cleared when the
    /// connection is lost.
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Release);
    }

    /// Whether LISTEN is active.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Ok when ready; otherwise why not.
    pub async fn check(&self) -> Result<()> {
        if !self.listening() {
            return Err(Error::NotReady("LISTEN fraud_alerts is not active".into()));
        }
        if let Some(db) = &self.db {
            db.ping(Duration::from_secs(2)).await.map_err(|e| Error::NotReady(format!("database unreachable: {e}")))?;
        }
        Ok(())
    }
}

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// The router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str> {
    state.health.check().await?;
    Ok("ready\n")
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse> {
    let body = state.metrics.encode()?;
    Ok(([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> AppState {
        AppState { metrics: Arc::new(Metrics::new()), health: Arc::new(Health::new(None)) }
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app.oneshot(Request::builder().uri(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        assert_eq!(get(app(state()), "/healthz").await, (StatusCode::OK, "ok\n".into()));
    }

    #[tokio::test]
    async fn readyz_follows_listen_state() {
        let s = state();
        let (status, body) = get(app(s.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("LISTEN fraud_alerts is not active"), "{body}");
        s.health.set_listening(true);
        assert_eq!(get(app(s.clone()), "/readyz").await, (StatusCode::OK, "ready\n".into()));
        s.health.set_listening(false);
        assert_eq!(get(app(s), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn metrics_are_exposed() {
        let s = state();
        s.metrics.init_channel("hook");
        s.metrics.reconnects.inc();
        let resp = app(s).oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("alerter_deliveries_delivered_total{channel=\"hook\"} 0"), "{body}");
        assert!(body.contains("alerter_db_reconnects_total 1"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        assert_eq!(get(app(state()), "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
