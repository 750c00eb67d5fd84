//! Email over SMTP (lettre): STARTTLS, implicit TLS, or plain for local mail catchers, with
//! optional AUTH PLAIN/LOGIN. The message is plain text so it reads well in any client and
//! in a pager on an on-call phone.

use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{one_line, Channel, Delivered, SendError};
use crate::alert::{LinkTemplate, Notification};
use crate::config::{ChannelConfig, EmailConfig, SmtpTls};

/// An SMTP channel.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: String,
    link: Option<LinkTemplate>,
    max_reasons: usize,
}

impl Email {
    /// Builds the transport (connections are opened lazily, on first send).
    pub fn new(cfg: &EmailConfig, channel: &ChannelConfig, timeout: Duration) -> Result<Email, String> {
        let params = || {
            TlsParameters::builder(cfg.host.clone())
                .dangerous_accept_invalid_certs(cfg.accept_invalid_certs)
                .build_rustls()
                .map_err(|e| format!("TLS setup: {e}"))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
            .port(cfg.port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(channel.concurrency.max(1) as u32));
        builder = match cfg.tls {
            SmtpTls::Starttls => builder.tls(Tls::Required(params()?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(params()?)),
            SmtpTls::None => builder.tls(Tls::None),
        };
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            builder = builder
                .credentials(Credentials::new(user.clone(), password.expose().clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Email {
            transport: builder.build(),
            from: cfg.from.clone(),
            to: cfg.to.clone(),
            subject_prefix: cfg.subject_prefix.clone(),
            link: channel.link_template.clone(),
            max_reasons: channel.max_reasons,
        })
    }

    /// Subject line.
    pub fn subject(&self, msg: &Notification) -> String {
        subject(&self.subject_prefix, msg)
    }

    /// Plain-text body.
    pub fn body(&self, msg: &Notification) -> String {
        body(msg, self.link.as_ref(), self.max_reasons)
    }
}

/// `[pg_fraud] HIGH alert #123: card_42 score 0.91 (+2 more)`
pub fn subject(prefix: &str, msg: &Notification) -> String {
    let a = msg.primary();
    let mut s =
        format!("{prefix} {} alert #{}: {} score {:.2}", msg.max_level().upper(), a.id, one_line(&a.entity), a.score);
    if msg.count() > 1 {
        let _ = write!(s, " (+{} more)", msg.count() - 1);
    }
    s.trim_start().to_owned()
}

/// The plain-text body.
pub fn body(msg: &Notification, link: Option<&LinkTemplate>, max_reasons: usize) -> String {
    let a = msg.primary();
    let mut b = String::new();
    let _ = writeln!(b, "{} fraud alert #{}", msg.max_level().upper(), a.id);
    let _ = writeln!(b);
    let _ = writeln!(b, "Entity:   {}", one_line(&a.entity));
    let _ = writeln!(b, "Score:    {:.2} ({})", a.score, a.level);
    let _ = writeln!(b, "Amount:   {}", a.amount_text());
    match &a.row_key {
        Some(k) => {
            let _ = writeln!(b, "Source:   {} row {}", one_line(&a.source_table), one_line(k));
        }
        None => {
            let _ = writeln!(b, "Source:   {}", one_line(&a.source_table));
        }
    }
    let _ = writeln!(b, "Action:   {}", a.action);
    let _ = writeln!(b, "Created:  {} UTC", a.created_at.format("%Y-%m-%d %H:%M:%S"));
    if a.repeats > 0 {
        let _ = writeln!(b, "Repeats:  {} more alerts folded into this one", a.repeats);
    }
    let _ = writeln!(b);
    let _ = writeln!(b, "Top reasons:");
    if a.reasons.is_empty() {
        let _ = writeln!(b, "  (none recorded)");
    }
    for r in a.reasons.iter().take(max_reasons) {
        let _ = write!(b, "  - {}", one_line(&r.name));
        if let Some(c) = r.contribution {
            let _ = write!(b, "  +{c:.2}");
        }
        if let Some(d) = &r.detail {
            let _ = write!(b, "  {}", one_line(d));
        }
        let _ = writeln!(b);
    }
    if let Some(url) = link.and_then(|t| t.render(a)) {
        let _ = writeln!(b);
        let _ = writeln!(b, "Open: {url}");
    }
    if msg.count() > 1 {
        let ids: Vec<String> = msg.ids_ascending().iter().map(|i| format!("#{i}")).collect();
        let _ = writeln!(b);
        let _ =
            writeln!(b, "This message covers {} alerts for {}: {}", msg.count(), one_line(&a.entity), ids.join(" "));
    }
    b
}

#[async_trait]
impl Channel for Email {
    async fn send(&self, msg: &Notification) -> Result<Delivered, SendError> {
        let mut builder =
            Message::builder().from(self.from.clone()).subject(self.subject(msg)).header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let email =
            builder.body(self.body(msg)).map_err(|e| SendError::permanent(format!("cannot build email: {e}")))?;
        match self.transport.send(email).await {
            Ok(resp) => {
                Ok(Delivered { detail: format!("SMTP {} {}", resp.code(), resp.first_line().unwrap_or_default()) })
            }
            // 5xx replies (unknown mailbox, authentication refused) will not get better by
            // themselves; connection problems and 4xx replies might.
            Err(e) if e.is_permanent() => Err(SendError::permanent(format!("SMTP: {e}"))),
            Err(e) => Err(SendError::retryable(format!("SMTP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Alert;

    #[test]
    fn subject_and_body_read_well() {
        let mut a = Alert::synthetic();
        a.id = 123;
        let mut b = Alert::synthetic();
        b.id = 124;
        b.score = 0.5;
        let msg = Notification::new(vec![a, b]).unwrap();
        assert_eq!(subject("[pg_fraud]", &msg), "[pg_fraud] HIGH alert #123: card_test score 0.91 (+1 more)");
        let link = LinkTemplate::parse("https://app.example.com/tx/{row_key}").unwrap();
        let text = body(&msg, Some(&link), 1);
        assert!(text.contains("Entity:   card_test"), "{text}");
        assert!(text.contains("  - impossible_travel  +0.41"), "{text}");
        assert!(!text.contains("new_device"), "{text}");
        assert!(text.contains("Open: https://app.example.com/tx/test-0001"), "{text}");
        assert!(text.contains("covers 2 alerts for card_test: #123 #124"), "{text}");
    }
}
