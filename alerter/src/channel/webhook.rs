//! A generic JSON webhook, signed so the receiver can tell it came from us and is fresh.
//!
//! Headers:
//! - `X-Signature-Timestamp`: Unix time in seconds when the request was signed;
//! - `X-Signature`: lower-case hex of HMAC-SHA256(secret, `"{timestamp}.{body}"`).
//!
//! A receiver recomputes the HMAC over the raw body bytes it received, compares in constant
//! time, and rejects timestamps older than a few minutes (replay protection). Deliveries are
//! at-least-once, so receivers should also de-duplicate on `alert_ids` + `channel`.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use url::Url;

use super::{classify_response, request_error, Channel, Delivered, SendError};
use crate::alert::{Alert, LinkTemplate, Notification};
use crate::config::{ChannelConfig, WebhookConfig};
use crate::secret::Secret;

/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "X-Signature-Timestamp";
/// Header carrying the hex HMAC.
pub const SIGNATURE_HEADER: &str = "X-Signature";

/// A signed JSON webhook.
pub struct Webhook {
    name: String,
    client: reqwest::Client,
    url: Secret<Url>,
    secret: Secret<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    link: Option<LinkTemplate>,
}

/// The JSON body.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// Always `fraud_alert`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Channel name (several webhooks may point at one receiver).
    pub channel: &'a str,
    /// Number of alerts in this message.
    pub count: usize,
    /// Ids covered, ascending: the de-duplication key together with `channel`.
    pub alert_ids: Vec<i64>,
    /// The alerts, headline (highest score) first.
    pub alerts: Vec<BodyAlert<'a>>,
}

/// One alert in the body.
#[derive(Debug, Serialize)]
pub struct BodyAlert<'a> {
    /// The alert as stored.
    #[serde(flatten)]
    pub alert: &'a Alert,
    /// Link from the template, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Hex HMAC-SHA256 over `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signature the way a receiver should (constant-time compare, bounded age).
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature_hex: &str, now: i64, max_age_secs: i64) -> bool {
    if (now - timestamp).abs() > max_age_secs {
        return false;
    }
    let Ok(expected) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

impl Webhook {
    /// Builds the channel.
    pub fn new(cfg: &WebhookConfig, channel: &ChannelConfig, client: reqwest::Client) -> Webhook {
        Webhook {
            name: channel.name.clone(),
            client,
            url: cfg.url.clone(),
            secret: cfg.secret.clone(),
            headers: cfg.headers.clone(),
            link: channel.link_template.clone(),
        }
    }

    /// The serialized body for a notification.
    pub fn body(&self, msg: &Notification) -> Result<Vec<u8>, SendError> {
        let body = Body {
            kind: "fraud_alert",
            channel: &self.name,
            count: msg.count(),
            alert_ids: msg.ids_ascending(),
            alerts: msg
                .alerts()
                .iter()
                .map(|a| BodyAlert { alert: a, link: self.link.as_ref().and_then(|t| t.render(a)) })
                .collect(),
        };
        // Only non-finite floats can fail here (serde_json refuses NaN); the database's
        // CHECK on score rules that out, amounts could in theory carry it.
        serde_json::to_vec(&body).map_err(|e| SendError::permanent(format!("cannot encode body: {e}")))
    }
}

#[async_trait]
impl Channel for Webhook {
    async fn send(&self, msg: &Notification) -> Result<Delivered, SendError> {
        let body = self.body(msg)?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let signature = sign(self.secret.expose().as_bytes(), ts, &body);
        let mut req = self
            .client
            .post(self.url.expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, signature);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(request_error)?;
        classify_response(resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently: python3 -c "import hmac,hashlib;
        //   print(hmac.new(b'key', b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(b"key", 1_700_000_000, br#"{"a":1}"#),
            "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }

    #[test]
    fn verify_round_trips_and_rejects_tampering() {
        let body = br#"{"type":"fraud_alert"}"#;
        let sig = sign(b"s3cret", 1000, body);
        assert_eq!(sig.len(), 64);
        assert!(verify(b"s3cret", 1000, body, &sig, 1010, 300));
        assert!(!verify(b"wrong", 1000, body, &sig, 1010, 300));
        assert!(!verify(b"s3cret", 1001, body, &sig, 1010, 300), "timestamp is signed");
        assert!(!verify(b"s3cret", 1000, b"{}", &sig, 1010, 300), "body is signed");
        assert!(!verify(b"s3cret", 1000, body, &sig, 5000, 300), "too old");
        assert!(!verify(b"s3cret", 1000, body, "zz", 1010, 300));
    }
}
