//! The crate's one error type.
//!
//! Delivery failures are not errors of the daemon: they are outcomes recorded in
//! `fraud.alert_deliveries` and are described by [`crate::channel::SendError`].

use std::fmt;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One configuration problem, named by its key (`channels.slack.webhook_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the offending key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration file (all of them, so one edit fixes them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssues(pub Vec<ConfigIssue>);

impl ConfigIssues {
    /// Whether some issue names exactly this key.
    pub fn names(&self, key: &str) -> bool {
        self.0.iter().any(|i| i.key == key)
    }
}

impl fmt::Display for ConfigIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// Errors of the alerter itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; every issue names its key.
    #[error("invalid configuration:\n{0}")]
    Config(ConfigIssues),

    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A database operation failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),

    /// No pooled database connection could be obtained.
    #[error("database pool: {0}")]
    Pool(String),

    /// TLS setup for the database connection failed.
    #[error("database TLS: {0}")]
    Tls(String),

    /// The HTTP server could not bind or serve.
    #[error("http server on {addr}: {source}")]
    Server {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },

    /// A channel could not be built from its configuration.
    #[error("channel {channel}: {message}")]
    Channel {
        /// Channel name.
        channel: String,
        /// What went wrong.
        message: String,
    },

    /// The daemon is not ready (used by `/readyz`).
    #[error("not ready: {0}")]
    NotReady(String),

    /// Metrics could not be encoded.
    #[error("encoding metrics failed")]
    Metrics,

    /// A database operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(db) => Error::Db(db),
            other => Error::Pool(other.to_string()),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match self {
            Error::NotReady(_) | Error::Db(_) | Error::Pool(_) | Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}
