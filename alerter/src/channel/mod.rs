//! Notification channels behind one small trait. The delivery loop only sees
//! [`Channel::send`] and the [`SendError`] it may return (retryable or not, with any
//! `Retry-After`); everything Slack-, SMTP- or webhook-specific lives in the submodules.

pub mod email;
pub mod log;
pub mod slack;
pub mod webhook;

use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::alert::Notification;
use crate::config::{ChannelConfig, ChannelKind};
use crate::error::{Error, Result};

/// Proof of a successful send, for the log line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivered {
    /// What the receiver said (`HTTP 200`, the SMTP reply …).
    pub detail: String,
}

/// Why a send failed and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// `false` for errors a retry will not fix (HTTP 4xx other than 408/429, SMTP 5xx).
    pub retryable: bool,
    /// The receiver asked us to wait this long (HTTP 429/503 `Retry-After`): no request to
    /// this channel is made before it has passed.
    pub retry_after: Option<Duration>,
    /// Human-readable reason, stored in `last_error`. Never contains a secret.
    pub message: String,
}

impl SendError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> SendError {
        SendError { retryable: true, retry_after: None, message: message.into() }
    }

    /// A failure a retry will not fix.
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError { retryable: false, retry_after: None, message: message.into() }
    }

    /// Adds the receiver's `Retry-After`.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> SendError {
        self.retry_after = after;
        self
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(after) = self.retry_after {
            write!(f, " (retry after {}s)", after.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for SendError {}

/// A destination for notifications.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Delivers one message (covering one or more alerts).
    async fn send(&self, msg: &Notification) -> Result<Delivered, SendError>;
}

/// Builds the channel described by `cfg`.
pub fn build(cfg: &ChannelConfig, send_timeout: Duration) -> Result<Arc<dyn Channel>> {
    let err = |message: String| Error::Channel { channel: cfg.name.clone(), message };
    Ok(match &cfg.kind {
        ChannelKind::Slack(s) => Arc::new(slack::Slack::new(s, cfg, http_client(send_timeout).map_err(err)?)),
        ChannelKind::Webhook(w) => Arc::new(webhook::Webhook::new(w, cfg, http_client(send_timeout).map_err(err)?)),
        ChannelKind::Email(e) => Arc::new(email::Email::new(e, cfg, send_timeout).map_err(err)?),
        ChannelKind::Log(l) => Arc::new(log::LogChannel::stdout(l, cfg)),
    })
}

/// The HTTP client for webhook-style channels: rustls, a timeout, and no redirects (a
/// redirected webhook is a configuration error, and a signed body should not be replayed
/// to wherever a 302 points).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pg-fraud-alerter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// Maps an HTTP response to the delivery outcome: 2xx delivered; 408, 429 and 5xx retryable
/// (with `Retry-After`); any other status permanent.
pub(crate) async fn classify_response(resp: reqwest::Response) -> Result<Delivered, SendError> {
    let status = resp.status();
    let retry_after = parse_retry_after(resp.headers(), SystemTime::now());
    // Bodies are read only to explain failures, and cut short: a receiver's error page is
    // not worth storing whole in last_error.
    let body = resp.text().await.unwrap_or_default();
    classify_status(status, retry_after, &body)
}

/// The pure part of `classify_response`: status, `Retry-After` and body to an outcome.
pub fn classify_status(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Delivered, SendError> {
    if status.is_success() {
        return Ok(Delivered { detail: format!("HTTP {}", status.as_u16()) });
    }
    let snippet: String = body.trim().chars().take(200).collect();
    let message = if snippet.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {snippet}") };
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        Err(SendError::retryable(message).with_retry_after(retry_after))
    } else {
        Err(SendError::permanent(message))
    }
}

/// Longest `Retry-After` we honour; a receiver asking for a day is treated as asking for
/// an hour so a misconfigured proxy cannot park a channel indefinitely.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let after = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = value.parse::<f64>() {
        // Not RFC 9110, but some servers send "1.5"; honour it rather than ignore it.
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(after.min(MAX_RETRY_AFTER))
}

/// A request error as text, without the URL (for Slack the URL is the credential) and with
/// the underlying cause (`connection refused`), which reqwest keeps in the source chain.
pub(crate) fn request_error(e: reqwest::Error) -> SendError {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_builder() {
        SendError::permanent(message)
    } else {
        SendError::retryable(message)
    }
}

/// Characters that would let a value from the database forge extra lines or formatting in
/// a log line or a plain-text message.
pub(crate) fn one_line(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_map_to_outcomes() {
        assert!(classify_status(StatusCode::OK, None, "ok").is_ok());
        let e = classify_status(StatusCode::BAD_REQUEST, None, "invalid_payload").unwrap_err();
        assert!(!e.retryable);
        assert_eq!(e.message, "HTTP 400 Bad Request: invalid_payload");
        assert!(classify_status(StatusCode::NOT_FOUND, None, "").unwrap_err().message == "HTTP 404 Not Found");
        for s in [StatusCode::REQUEST_TIMEOUT, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY] {
            assert!(classify_status(s, None, "").unwrap_err().retryable, "{s}");
        }
        let e = classify_status(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2)), "").unwrap_err();
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(parse_retry_after(&h, now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn one_line_strips_control_characters() {
        assert_eq!(one_line("card\n42\tx"), "card 42 x");
        assert_eq!(one_line("plain"), "plain");
    }
}
