//! What channels deliver: alerts as read from `fraud.alerts`, grouped into one
//! [`Notification`] per message.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// `fraud.risk_level`, ordered like the SQL enum so `level >= min_level` works the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `low`
    Low,
    /// `medium`
    Medium,
    /// `high`
    High,
    /// `critical`
    Critical,
}

impl Level {
    /// The SQL label (`"high"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    /// The label in capitals, as humans read it in a message (`"HIGH"`).
    pub fn upper(self) -> &'static str {
        match self {
            Level::Low => "LOW",
            Level::Medium => "MEDIUM",
            Level::High => "HIGH",
            Level::Critical => "CRITICAL",
        }
    }

    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Low, Level::Medium, Level::High, Level::Critical];
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Level::Low),
            "medium" => Ok(Level::Medium),
            "high" => Ok(Level::High),
            "critical" => Ok(Level::Critical),
            other => Err(format!("unknown risk level {other:?} (expected low, medium, high or critical)")),
        }
    }
}

/// One entry of `fraud.alerts.reasons`: `{"name", "contribution", "detail"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// Feature or rule name, e.g. `impossible_travel`.
    pub name: String,
    /// How much it added to the score.
    pub contribution: Option<f64>,
    /// Free text for humans, e.g. `8,000 km in 1 h`.
    pub detail: Option<String>,
}

impl Reason {
    /// Reads the `reasons` jsonb leniently. The extension owns that column's shape; a field
    /// we do not understand must degrade the message, never block the delivery, so anything
    /// that is not an object with a name is rendered as best we can instead of rejected.
    pub fn parse_list(value: &serde_json::Value) -> Vec<Reason> {
        let Some(items) = value.as_array() else {
            return Vec::new();
        };
        items
            .iter()
            .map(|item| match item {
                serde_json::Value::Object(map) => Reason {
                    name: match map.get("name") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "?".to_owned(),
                    },
                    contribution: map.get("contribution").and_then(serde_json::Value::as_f64),
                    detail: match map.get("detail") {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) if s.is_empty() => None,
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(other) => Some(other.to_string()),
                    },
                },
                serde_json::Value::String(s) => Reason { name: s.clone(), contribution: None, detail: None },
                other => Reason { name: other.to_string(), contribution: None, detail: None },
            })
            .collect()
    }
}

/// One row of `fraud.alerts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// `alerts.id`.
    pub id: i64,
    /// When the alert was written (the scored row's transaction time in the database).
    pub created_at: DateTime<Utc>,
    /// Schema-qualified watched table, e.g. `public.payments`.
    pub source_table: String,
    /// The scored row's primary key rendered as text.
    pub row_key: Option<String>,
    /// The entity (card, user, account) the transaction belongs to.
    pub entity: String,
    /// Transaction amount, if the table maps one.
    pub amount: Option<f64>,
    /// Transaction time, if the table maps one.
    pub tx_time: Option<DateTime<Utc>>,
    /// Risk score in [0, 1].
    pub score: f64,
    /// Risk level.
    pub level: Level,
    /// `allow`, `review` or `block`.
    pub action: String,
    /// Top reasons, highest contribution first.
    pub reasons: Vec<Reason>,
    /// Deduplication key, if any.
    pub dedup_key: Option<String>,
    /// How many later alerts were folded into this one by the extension's dedup window.
    pub repeats: i32,
}

impl Alert {
    /// A synthetic alert for `alerter send-test`: obviously fake, but with every field set
    /// so the message shows what a real one looks like.
    pub fn synthetic() -> Alert {
        Alert {
            id: 0,
            created_at: Utc::now(),
            source_table: "public.payments".into(),
            row_key: Some("test-0001".into()),
            entity: "card_test".into(),
            amount: Some(950.0),
            tx_time: Some(Utc::now()),
            score: 0.91,
            level: Level::High,
            action: "review".into(),
            reasons: vec![
                Reason {
                    name: "impossible_travel".into(),
                    contribution: Some(0.41),
                    detail: Some("test alert sent by `alerter send-test`".into()),
                },
                Reason { name: "new_device".into(), contribution: Some(0.22), detail: None },
            ],
            dedup_key: None,
            repeats: 0,
        }
    }

    /// The amount as shown to humans: two decimals, `-` when unknown.
    pub fn amount_text(&self) -> String {
        match self.amount {
            Some(a) if a.is_finite() => format!("{a:.2}"),
            Some(a) => a.to_string(),
            None => "-".into(),
        }
    }
}

/// One message: one or more alerts for the same entity on the same channel (grouping), the
/// most severe first. A channel renders it; the delivery loop records the outcome for every
/// alert it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    alerts: Vec<Alert>,
}

impl Notification {
    /// Builds a notification; `None` when `alerts` is empty (a message must cover something).
    /// The headline alert is the highest score (latest on ties): that is the one an analyst
    /// should open first.
    pub fn new(mut alerts: Vec<Alert>) -> Option<Notification> {
        if alerts.is_empty() {
            return None;
        }
        alerts.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.created_at.cmp(&a.created_at)).then(b.id.cmp(&a.id)));
        Some(Notification { alerts })
    }

    /// The headline alert.
    pub fn primary(&self) -> &Alert {
        &self.alerts[0]
    }

    /// Every alert covered, headline first.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// How many alerts this message covers.
    pub fn count(&self) -> usize {
        self.alerts.len()
    }

    /// The ids covered, ascending (for "covers #1, #2, #3" lines).
    pub fn ids_ascending(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.alerts.iter().map(|a| a.id).collect();
        ids.sort_unstable();
        ids
    }

    /// The highest level among the covered alerts.
    pub fn max_level(&self) -> Level {
        self.alerts.iter().map(|a| a.level).max().unwrap_or(self.primary().level)
    }
}

/// Characters left as-is when a value is substituted into a link: RFC 3986 unreserved.
/// Everything else is percent-encoded so a row key such as `a/b?c` cannot change the path.
const LINK_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A URL template such as `https://app.example.com/tx/{row_key}`; placeholders are
/// `{id}`, `{row_key}`, `{entity}`, `{source_table}` and `{level}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTemplate(String);

impl LinkTemplate {
    /// The placeholders a template may use.
    pub const PLACEHOLDERS: [&'static str; 5] = ["id", "row_key", "entity", "source_table", "level"];

    /// Checks placeholders and that the result is an absolute URL.
    pub fn parse(template: &str) -> Result<LinkTemplate, String> {
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
            let name = &after[..end];
            if !Self::PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} (allowed: {})",
                    Self::PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
                ));
            }
            rest = &after[end + 1..];
        }
        let t = LinkTemplate(template.to_owned());
        let sample = t.render(&Alert::synthetic()).unwrap_or_default();
        url::Url::parse(&sample).map_err(|e| e.to_string())?;
        Ok(t)
    }

    /// The link for one alert; `None` when the template needs a value the alert lacks
    /// (no `row_key`): a broken link is worse than none.
    pub fn render(&self, alert: &Alert) -> Option<String> {
        let mut out = self.0.clone();
        for name in Self::PLACEHOLDERS {
            let token = format!("{{{name}}}");
            if !out.contains(&token) {
                continue;
            }
            let value = match name {
                "id" => alert.id.to_string(),
                "row_key" => alert.row_key.clone()?,
                "entity" => alert.entity.clone(),
                "source_table" => alert.source_table.clone(),
                "level" => alert.level.as_str().to_owned(),
                _ => continue,
            };
            let encoded = utf8_percent_encode(&value, LINK_VALUE).to_string();
            out = out.replace(&token, &encoded);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_like_sql() {
        assert!(Level::Low < Level::Medium && Level::Medium < Level::High);
        assert!(Level::High < Level::Critical);
        assert_eq!("critical".parse::<Level>(), Ok(Level::Critical));
        assert!("severe".parse::<Level>().is_err());
    }

    #[test]
    fn reasons_are_read_leniently() {
        let v = serde_json::json!([
            {"name": "impossible_travel", "contribution": 0.41, "detail": "8000 km in 1 h"},
            {"name": "new_device", "contribution": 0.22},
            "bare_string",
            {"contribution": "oops"}
        ]);
        let r = Reason::parse_list(&v);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].contribution, Some(0.41));
        assert_eq!(r[1].detail, None);
        assert_eq!(r[2].name, "bare_string");
        assert_eq!(r[3].name, "?");
        assert!(Reason::parse_list(&serde_json::json!({"not": "a list"})).is_empty());
    }

    #[test]
    fn link_template_encodes_and_validates() {
        let t = LinkTemplate::parse("https://app.example.com/tx/{row_key}?e={entity}").unwrap();
        let mut a = Alert::synthetic();
        a.row_key = Some("a/b c".into());
        a.entity = "card&42".into();
        assert_eq!(t.render(&a).unwrap(), "https://app.example.com/tx/a%2Fb%20c?e=card%2642");
        a.row_key = None;
        assert_eq!(t.render(&a), None);
        assert!(LinkTemplate::parse("https://x/{nope}").unwrap_err().contains("unknown placeholder {nope}"));
        assert!(LinkTemplate::parse("/tx/{row_key}").is_err());
    }

    #[test]
    fn notification_puts_the_worst_alert_first() {
        let mut a = Alert::synthetic();
        a.id = 1;
        a.score = 0.5;
        let mut b = Alert::synthetic();
        b.id = 2;
        b.score = 0.95;
        b.level = Level::Critical;
        let n = Notification::new(vec![a, b]).unwrap();
        assert_eq!(n.primary().id, 2);
        assert_eq!(n.ids_ascending(), vec![1, 2]);
        assert_eq!(n.max_level(), Level::Critical);
        assert!(Notification::new(vec![]).is_none());
    }
}
