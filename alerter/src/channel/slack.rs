//! Slack incoming webhooks with a Block Kit message an on-call analyst can act on without
//! opening anything: level, score, entity, amount, the top reasons and a link.
//!
//! Slack allows about one message per second per webhook; the default rate limit for this
//! channel kind is set accordingly in `config.rs`, and 429 `Retry-After` is honoured by the
//! delivery loop.

use async_trait::async_trait;
use serde_json::{json, Value};
use url::Url;

use super::{classify_response, request_error, Channel, Delivered, SendError};
use crate::alert::{Level, LinkTemplate, Notification};
use crate::config::{ChannelConfig, SlackConfig};
use crate::secret::Secret;

/// Slack limits: header text 150 characters, section text 3000, field text 2000.
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 2900;
/// Ids listed in the "covers N alerts" line before it says "…".
const LISTED_IDS: usize = 10;

/// A Slack incoming webhook.
pub struct Slack {
    client: reqwest::Client,
    url: Secret<Url>,
    link: Option<LinkTemplate>,
    max_reasons: usize,
}

impl Slack {
    /// Builds the channel.
    pub fn new(cfg: &SlackConfig, channel: &ChannelConfig, client: reqwest::Client) -> Slack {
        Slack {
            client,
            url: cfg.webhook_url.clone(),
            link: channel.link_template.clone(),
            max_reasons: channel.max_reasons,
        }
    }

    /// The JSON payload for a notification.
    pub fn render(&self, msg: &Notification) -> Value {
        render(msg, self.link.as_ref(), self.max_reasons)
    }
}

/// `&`, `<` and `>` are Slack's control characters in mrkdwn and must be escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An inline code span; a backtick inside would close it early.
fn code(s: &str) -> String {
    format!("`{}`", esc(&super::one_line(s)).replace('`', "'"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn emoji(level: Level) -> &'static str {
    match level {
        Level::Low => ":white_circle:",
        Level::Medium => ":large_yellow_circle:",
        Level::High => ":large_orange_circle:",
        Level::Critical => ":red_circle:",
    }
}

/// Renders the Block Kit payload (public for tests and `send-test` previews).
pub fn render(msg: &Notification, link: Option<&LinkTemplate>, max_reasons: usize) -> Value {
    let a = msg.primary();
    let level = msg.max_level();
    let count = msg.count();
    let header = truncate(
        &format!("{} {} fraud alert: {}", emoji(level), level.upper(), super::one_line(&a.entity)),
        HEADER_MAX,
    );
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Level*\n{}", level.upper())}),
        json!({"type": "mrkdwn", "text": format!("*Score*\n{:.2}", a.score)}),
        json!({"type": "mrkdwn", "text": format!("*Entity*\n{}", code(&a.entity))}),
        json!({"type": "mrkdwn", "text": format!("*Amount*\n{}", a.amount_text())}),
        json!({"type": "mrkdwn", "text": format!("*Source*\n{}", esc(&super::one_line(&a.source_table)))}),
        json!({"type": "mrkdwn", "text": format!("*Action*\n{}", esc(&a.action))}),
    ];
    if let Some(key) = &a.row_key {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Row*\n{}", code(key))}));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "fields": fields}),
    ];
    if count > 1 {
        let ids = msg.ids_ascending();
        let mut listed: Vec<String> = ids.iter().take(LISTED_IDS).map(|i| format!("#{i}")).collect();
        if ids.len() > LISTED_IDS {
            listed.push("…".into());
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
            "*Covers {count} alerts* for this entity: {} (highest score shown)",
            listed.join(", ")
        )}}));
    }
    let reasons: Vec<String> = a
        .reasons
        .iter()
        .take(max_reasons)
        .map(|r| {
            let mut line = format!("• {}", code(&r.name));
            if let Some(c) = r.contribution {
                line.push_str(&format!(" +{c:.2}"));
            }
            if let Some(d) = &r.detail {
                line.push_str(&format!(" — {}", esc(&super::one_line(d))));
            }
            line
        })
        .collect();
    let reasons_text = if reasons.is_empty() {
        "*Top reasons*\n_none recorded_".to_owned()
    } else {
        format!("*Top reasons*\n{}", reasons.join("\n"))
    };
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&reasons_text, TEXT_MAX)}}));
    let mut context = format!("Alert #{} · {} UTC", a.id, a.created_at.format("%Y-%m-%d %H:%M:%S"));
    if a.repeats > 0 {
        context.push_str(&format!(" · repeated {} more times", a.repeats));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    if let Some(url) = link.and_then(|t| t.render(a)) {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open transaction"},
            "url": url
        }]}));
    }
    let mut fallback =
        format!("{} fraud alert #{}: {} score {:.2}", level.upper(), a.id, super::one_line(&a.entity), a.score);
    if count > 1 {
        fallback.push_str(&format!(" ({count} alerts)"));
    }
    json!({"text": esc(&fallback), "blocks": blocks})
}

#[async_trait]
impl Channel for Slack {
    async fn send(&self, msg: &Notification) -> Result<Delivered, SendError> {
        let resp =
            self.client.post(self.url.expose().clone()).json(&self.render(msg)).send().await.map_err(request_error)?;
        classify_response(resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Reason};

    fn alert(id: i64, score: f64) -> Alert {
        Alert {
            id,
            score,
            entity: "card_<42>".into(),
            row_key: Some("tx-9".into()),
            reasons: vec![
                Reason {
                    name: "impossible_travel".into(),
                    contribution: Some(0.41),
                    detail: Some("8000 km in 1 h".into()),
                },
                Reason { name: "new_device".into(), contribution: Some(0.22), detail: None },
                Reason { name: "night_time".into(), contribution: Some(0.05), detail: None },
            ],
            ..Alert::synthetic()
        }
    }

    #[test]
    fn renders_a_readable_block_kit_message() {
        let link = LinkTemplate::parse("https://app.example.com/tx/{row_key}").unwrap();
        let v = render(&Notification::new(vec![alert(123, 0.91)]).unwrap(), Some(&link), 2);
        let text = v.to_string();
        assert_eq!(v["blocks"][0]["type"], "header");
        assert_eq!(v["blocks"][0]["text"]["text"], ":large_orange_circle: HIGH fraud alert: card_<42>");
        assert!(text.contains("*Score*\\n0.91"), "{text}");
        assert!(text.contains("*Amount*\\n950.00"), "{text}");
        assert!(text.contains("`card_&lt;42&gt;`"), "entity escaped in mrkdwn: {text}");
        assert!(text.contains("• `impossible_travel` +0.41 — 8000 km in 1 h"), "{text}");
        assert!(text.contains("`new_device` +0.22"), "{text}");
        assert!(!text.contains("night_time"), "max_reasons = 2: {text}");
        assert!(text.contains("https://app.example.com/tx/tx-9"), "{text}");
        assert!(!text.contains("Covers"), "single alert: {text}");
        assert_eq!(v["text"], "HIGH fraud alert #123: card_&lt;42&gt; score 0.91");
    }

    #[test]
    fn a_group_says_how_many_alerts_it_covers() {
        let msg = Notification::new(vec![alert(7, 0.8), alert(9, 0.95), alert(8, 0.85)]).unwrap();
        let v = render(&msg, None, 3);
        let text = v.to_string();
        assert!(text.contains("*Covers 3 alerts* for this entity: #7, #8, #9"), "{text}");
        assert!(text.contains("Alert #9"), "headline is the highest score: {text}");
        assert!(!text.contains("\"actions\""), "no link without a template: {text}");
        assert!(v["text"].as_str().unwrap().ends_with("(3 alerts)"));
    }
}
