//! The log channel: one line per message on stdout. This is what the demo shows, so the
//! text form is written for people:
//!
//! ```text
//! ALERT #123 HIGH score=0.91 entity=card_42 amount=950.00 source=public.payments reasons: impossible_travel 0.41, new_device 0.22
//! ```
//!
//! Diagnostics (tracing) go to stderr, so stdout carries nothing but alerts and can be piped.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::json;

use super::{one_line, Channel, Delivered, SendError};
use crate::alert::{LinkTemplate, Notification};
use crate::config::{ChannelConfig, LineFormat, LogChannelConfig};

/// Prints alerts.
pub struct LogChannel {
    format: LineFormat,
    link: Option<LinkTemplate>,
    max_reasons: usize,
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogChannel {
    /// Writes to stdout.
    pub fn stdout(cfg: &LogChannelConfig, channel: &ChannelConfig) -> LogChannel {
        LogChannel::with_writer(cfg, channel, Box::new(std::io::stdout()))
    }

    /// Writes to any sink (tests).
    pub fn with_writer(cfg: &LogChannelConfig, channel: &ChannelConfig, out: Box<dyn Write + Send>) -> LogChannel {
        LogChannel {
            format: cfg.format,
            link: channel.link_template.clone(),
            max_reasons: channel.max_reasons,
            out: Mutex::new(out),
        }
    }

    /// The line for a message, without the newline.
    pub fn line(&self, msg: &Notification) -> String {
        match self.format {
            LineFormat::Text => text_line(msg, self.link.as_ref(), self.max_reasons),
            LineFormat::Json => json_line(msg, self.link.as_ref()),
        }
    }
}

/// Quotes a value that contains spaces so `key=value` stays parseable.
fn field(s: &str) -> String {
    let s = one_line(s);
    if s.is_empty() || s.contains(' ') || s.contains('"') {
        format!("{s:?}")
    } else {
        s
    }
}

/// The human-readable line.
pub fn text_line(msg: &Notification, link: Option<&LinkTemplate>, max_reasons: usize) -> String {
    let a = msg.primary();
    let mut line = format!(
        "ALERT #{} {} score={:.2} entity={} amount={} source={}",
        a.id,
        a.level.upper(),
        a.score,
        field(&a.entity),
        a.amount_text(),
        field(&a.source_table)
    );
    if let Some(k) = &a.row_key {
        let _ = write!(line, " row={}", field(k));
    }
    if a.repeats > 0 {
        let _ = write!(line, " repeats={}", a.repeats);
    }
    if msg.count() > 1 {
        let ids: Vec<String> = msg.ids_ascending().iter().map(|i| format!("#{i}")).collect();
        let _ = write!(line, " covers={} ({})", msg.count(), ids.join(" "));
    }
    if let Some(url) = link.and_then(|t| t.render(a)) {
        let _ = write!(line, " link={url}");
    }
    let reasons: Vec<String> = a
        .reasons
        .iter()
        .take(max_reasons)
        .map(|r| match r.contribution {
            Some(c) => format!("{} {c:.2}", one_line(&r.name)),
            None => one_line(&r.name),
        })
        .collect();
    if !reasons.is_empty() {
        let _ = write!(line, " reasons: {}", reasons.join(", "));
    }
    line
}

/// One JSON object.
pub fn json_line(msg: &Notification, link: Option<&LinkTemplate>) -> String {
    let a = msg.primary();
    json!({
        "alert_id": a.id,
        "level": a.level,
        "score": a.score,
        "entity": a.entity,
        "amount": a.amount,
        "source_table": a.source_table,
        "row_key": a.row_key,
        "action": a.action,
        "created_at": a.created_at,
        "repeats": a.repeats,
        "reasons": a.reasons,
        "count": msg.count(),
        "alert_ids": msg.ids_ascending(),
        "link": link.and_then(|t| t.render(a)),
    })
    .to_string()
}

#[async_trait]
impl Channel for LogChannel {
    async fn send(&self, msg: &Notification) -> Result<Delivered, SendError> {
        let mut line = self.line(msg);
        line.push('\n');
        // A poisoned lock only means another send panicked mid-write; the sink is still
        // usable for whole lines.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| SendError::retryable(format!("writing to stdout: {e}")))?;
        Ok(Delivered { detail: "printed".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Reason};

    fn demo_alert() -> Alert {
        Alert {
            id: 123,
            entity: "card_42".into(),
            row_key: None,
            reasons: vec![
                Reason { name: "impossible_travel".into(), contribution: Some(0.41), detail: Some("8000 km".into()) },
                Reason { name: "new_device".into(), contribution: Some(0.22), detail: None },
            ],
            ..Alert::synthetic()
        }
    }

    #[test]
    fn the_demo_line() {
        let msg = Notification::new(vec![demo_alert()]).unwrap();
        assert_eq!(
            text_line(&msg, None, 3),
            "ALERT #123 HIGH score=0.91 entity=card_42 amount=950.00 source=public.payments reasons: impossible_travel 0.41, new_device 0.22"
        );
    }

    #[test]
    fn hostile_values_stay_on_one_line() {
        let mut a = demo_alert();
        a.entity = "evil\nALERT #1 CRITICAL".into();
        let msg = Notification::new(vec![a]).unwrap();
        let line = text_line(&msg, None, 3);
        assert!(!line.contains('\n'));
        assert!(line.contains(r#"entity="evil ALERT #1 CRITICAL""#), "{line}");
    }

    #[test]
    fn json_lines_parse() {
        let mut b = demo_alert();
        b.id = 124;
        let msg = Notification::new(vec![demo_alert(), b]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json_line(&msg, None)).unwrap();
        assert_eq!(v["count"], 2);
        assert_eq!(v["alert_ids"], json!([123, 124]));
        assert_eq!(v["level"], "high");
        assert_eq!(v["reasons"][0]["name"], "impossible_travel");
    }
}
