//! Configuration: a TOML file, secrets optionally taken from the environment, validated once
//! at start so that every later failure is about the world, not about a typo.
//!
//! Every secret key `k` may instead be given as `k_env = "VAR"`, naming an environment
//! variable that holds the value (`webhook_url_env = "SLACK_WEBHOOK_URL"`). The database URL
//! falls back to `$ALERTER_DATABASE_URL` when neither `database.url` nor `database.url_env`
//! is set. Validation collects every problem and names each by its dotted key, e.g.
//! `channels.slack.webhook_url: relative URL without a base`.
//!
//! The file is parsed in two steps: serde (with `serde_path_to_error`, so type errors and
//! unknown keys carry their path) into `Raw*` structs whose every field is optional, then a
//! validation pass into the typed [`Config`], which applies defaults and checks values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use lettre::message::Mailbox;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::alert::{Level, LinkTemplate};
use crate::backoff::Backoff;
use crate::error::{ConfigIssue, ConfigIssues, Error, Result};
use crate::secret::Secret;

/// Environment variable read for the database URL when the file names none.
pub const DEFAULT_DATABASE_URL_ENV: &str = "ALERTER_DATABASE_URL";

/// The validated configuration of one alerter.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name written to `fraud.alert_deliveries.claimed_by`. Must be stable across restarts
    /// (so a restarted alerter reclaims its own claims at once) and unique among alerters
    /// sharing a database.
    pub instance: String,
    /// Database connection.
    pub database: DatabaseConfig,
    /// HTTP server for health and metrics.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Claiming, retries and shutdown.
    pub delivery: DeliveryConfig,
    /// The channels this alerter serves, in name order.
    pub channels: Vec<ChannelConfig>,
}

/// `[database]`
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// libpq-style connection string or URL (`sslmode` honoured, see `db::tls`).
    pub url: Secret<String>,
    /// Pooled connections for claiming and recording (the LISTEN connection is extra).
    pub pool_size: usize,
    /// Timeout for establishing a connection.
    pub connect_timeout: Duration,
    /// Backoff between reconnect attempts.
    pub reconnect: Backoff,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the health/metrics server (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Default filter (`info`, `alerter=debug,warn` …); `RUST_LOG` overrides it.
    pub level: String,
}

/// `[delivery]`
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Catch-up poll interval: how long a missed NOTIFY can delay a delivery at most.
    pub poll_interval: Duration,
    /// How long a claim (`status = 'sending'`) is held before any alerter may take it over.
    pub lease: Duration,
    /// Maximum deliveries claimed per query.
    pub batch_size: usize,
    /// Timeout of one send.
    pub send_timeout: Duration,
    /// On shutdown, how long in-flight sends may take before their claims are released.
    pub shutdown_grace: Duration,
    /// Retry policy shared by channels (each may override `max_attempts`).
    pub retry: RetryPolicy,
    /// Default link template for messages.
    pub link_template: Option<LinkTemplate>,
}

/// When to retry and when to give up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// After this many attempts a delivery is `dead`.
    pub max_attempts: u32,
    /// A permanent error (HTTP 4xx other than 408/429, SMTP 5xx) kills a delivery once it
    /// has had this many attempts; 1 means at once.
    pub permanent_failure_attempts: u32,
    /// Delay between retries.
    pub backoff: Backoff,
}

/// Token-bucket rate limit of one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages that may be sent back to back.
    pub burst: u32,
}

/// Grouping of deliveries for the same entity into one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Alerts for the same entity created within this span of each other are sent as one
    /// message when they are due together. Zero disables grouping.
    pub window: Duration,
    /// How long a fresh delivery waits for companions before it is sent (adds latency).
    pub wait: Duration,
    /// Upper bound on alerts in one message.
    pub max: usize,
}

/// `[channels.NAME]`
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Name, as registered in `fraud.channels`.
    pub name: String,
    /// Minimum level delivered.
    pub min_level: Level,
    /// Disabled channels are registered with `enabled = false` and not served.
    pub enabled: bool,
    /// Optional rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Concurrent sends.
    pub concurrency: usize,
    /// Grouping.
    pub group: GroupPolicy,
    /// Retries for this channel.
    pub retry: RetryPolicy,
    /// Link to put in messages.
    pub link_template: Option<LinkTemplate>,
    /// How many reasons to show in human-readable messages.
    pub max_reasons: usize,
    /// Kind-specific settings.
    pub kind: ChannelKind,
}

/// Kind-specific settings of a channel.
#[derive(Debug, Clone)]
pub enum ChannelKind {
    /// Slack incoming webhook.
    Slack(SlackConfig),
    /// Generic signed JSON webhook.
    Webhook(WebhookConfig),
    /// Email over SMTP.
    Email(EmailConfig),
    /// One line per alert on stdout.
    Log(LogChannelConfig),
}

impl ChannelKind {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelKind::Slack(_) => "slack",
            ChannelKind::Webhook(_) => "webhook",
            ChannelKind::Email(_) => "email",
            ChannelKind::Log(_) => "log",
        }
    }
}

/// `type = "slack"`
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// The incoming-webhook URL; it is the credential, hence secret.
    pub webhook_url: Secret<Url>,
}

/// `type = "webhook"`
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoint (secret: such URLs often carry a token).
    pub url: Secret<Url>,
    /// HMAC-SHA256 key for `X-Signature`.
    pub secret: Secret<String>,
    /// Extra headers; values are marked sensitive so `Debug` hides them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required); default port 587.
    Starttls,
    /// Implicit TLS ("SMTPS"); default port 465.
    Tls,
    /// No encryption, for local mail catchers only; default port 25.
    None,
}

/// `type = "email"`
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// SMTP server host.
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// Accept any server certificate (self-signed test servers only).
    pub accept_invalid_certs: bool,
    /// Login, if the server wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Secret<String>>,
    /// Sender.
    pub from: Mailbox,
    /// Recipients.
    pub to: Vec<Mailbox>,
    /// Prepended to every subject.
    pub subject_prefix: String,
}

/// Format of the log channel's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// `ALERT #123 HIGH score=0.91 entity=card_42 …`
    Text,
    /// One JSON object per alert message.
    Json,
}

/// `type = "log"`
#[derive(Debug, Clone)]
pub struct LogChannelConfig {
    /// Line format.
    pub format: LineFormat,
}

impl Config {
    /// Reads and validates a file, taking `*_env` secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates TOML text with the process environment.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        Config::from_toml_str_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates TOML text, looking environment variables up through `env`
    /// (tests pass a map instead of mutating the process environment).
    pub fn from_toml_str_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::Config(ConfigIssues(vec![ConfigIssue {
                key: String::new(),
                message: format!("not valid TOML: {}", e.message()),
            }]))
        })?;
        let mut check = Check { issues: Vec::new(), env };
        let raw: Option<RawConfig> = check.deserialize("", toml::Value::Table(table));
        let config = raw.map(|raw| check.config(raw));
        match config {
            Some(config) if check.issues.is_empty() => Ok(config),
            _ => Err(Error::Config(ConfigIssues(check.issues))),
        }
    }

    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

// ---------------------------------------------------------------------------------------
// The file as written: everything optional, unknown keys rejected.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: Option<String>,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    channels: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    url_env: Option<String>,
    pool_size: Option<usize>,
    connect_timeout: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    poll_interval: Option<String>,
    lease: Option<String>,
    batch_size: Option<usize>,
    send_timeout: Option<String>,
    shutdown_grace: Option<String>,
    max_attempts: Option<u32>,
    permanent_failure_attempts: Option<u32>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    backoff_factor: Option<f64>,
    jitter: Option<f64>,
    link_template: Option<String>,
}

/// Keys every channel table may have; the rest belong to its `type`.
const COMMON_CHANNEL_KEYS: &[&str] = &[
    "type",
    "min_level",
    "enabled",
    "rate_limit",
    "rate_burst",
    "concurrency",
    "group_window",
    "group_wait",
    "group_max",
    "max_attempts",
    "permanent_failure_attempts",
    "link_template",
    "max_reasons",
];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    #[serde(rename = "type")]
    kind: Option<String>,
    min_level: Option<Level>,
    enabled: Option<bool>,
    rate_limit: Option<f64>,
    rate_burst: Option<u32>,
    concurrency: Option<usize>,
    group_window: Option<String>,
    group_wait: Option<String>,
    group_max: Option<usize>,
    max_attempts: Option<u32>,
    permanent_failure_attempts: Option<u32>,
    link_template: Option<String>,
    max_reasons: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    webhook_url: Option<String>,
    webhook_url_env: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
    url_env: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    accept_invalid_certs: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    from: Option<String>,
    #[serde(default)]
    to: Vec<String>,
    subject_prefix: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogChannel {
    format: Option<LineFormat>,
}

// ---------------------------------------------------------------------------------------
// Validation.

/// Accumulates issues while turning `Raw*` into the typed config.
struct Check<'e> {
    issues: Vec<ConfigIssue>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}.{key}"),
    }
}

impl Check<'_> {
    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue { key: key.into(), message: message.into() });
    }

    /// serde with the failing key's path in the issue.
    fn deserialize<T: DeserializeOwned>(&mut self, prefix: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                self.issue(join(prefix, &path), e.into_inner().to_string());
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) => d,
                Err(e) => {
                    self.issue(
                        key,
                        format!("{text:?} is not a duration ({e}); write e.g. \"5s\", \"250ms\" or \"10m\""),
                    );
                    default
                }
            },
        }
    }

    fn positive_duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(key, raw, default);
        if d.is_zero() {
            self.issue(key, "must be greater than zero");
            return default;
        }
        d
    }

    /// A secret given inline (`key`) or through the environment (`key_env`).
    fn secret(&mut self, key: &str, inline: Option<String>, env_name: Option<String>) -> Option<Secret<String>> {
        match (inline, env_name) {
            (Some(_), Some(_)) => {
                self.issue(key, format!("set either {key} or {key}_env, not both"));
                None
            }
            (Some(v), None) if v.is_empty() => {
                self.issue(key, "must not be empty");
                None
            }
            (Some(v), None) => Some(Secret::new(v)),
            (None, Some(var)) => match (self.env)(&var) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    self.issue(key, format!("environment variable {var} (named by {key}_env) is not set or empty"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn required_secret(
        &mut self,
        key: &str,
        inline: Option<String>,
        env_name: Option<String>,
    ) -> Option<Secret<String>> {
        let had_input = inline.is_some() || env_name.is_some();
        let s = self.secret(key, inline, env_name);
        if s.is_none() && !had_input {
            self.issue(key, format!("missing: set {key} or {key}_env"));
        }
        s
    }

    fn http_url(&mut self, key: &str, value: &Secret<String>) -> Option<Secret<Url>> {
        match Url::parse(value.expose().trim()) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {
                if u.host_str().is_none_or(str::is_empty) {
                    self.issue(key, "URL has no host");
                    None
                } else {
                    Some(Secret::new(u))
                }
            }
            // Never echo the URL itself: it may be the credential.
            Ok(u) => {
                self.issue(key, format!("scheme {:?} is not http or https", u.scheme()));
                None
            }
            Err(e) => {
                self.issue(key, e.to_string());
                None
            }
        }
    }

    fn link_template(&mut self, key: &str, raw: Option<&str>) -> Option<LinkTemplate> {
        let raw = raw?;
        match LinkTemplate::parse(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                self.issue(key, e);
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let instance = match raw.instance {
            Some(name) => {
                if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                    self.issue("instance", "must be 1 to 128 printable characters");
                }
                name
            }
            None => default_instance(),
        };
        let database = self.database(raw.database);
        let server = self.server(raw.server);
        let log = self.log(raw.log);
        let delivery = self.delivery(raw.delivery);
        let declared = raw.channels.len();
        let mut channels = Vec::new();
        for (name, table) in raw.channels {
            if let Some(c) = self.channel(&name, table, &delivery) {
                channels.push(c);
            }
        }
        if declared == 0 {
            self.issue("channels", "no channel: add at least one [channels.NAME] table");
        } else if channels.len() == declared && channels.iter().all(|c| !c.enabled) {
            self.issue("channels", "every channel has enabled = false");
        }
        Config { instance, database, server, log, delivery, channels }
    }

    fn database(&mut self, raw: RawDatabase) -> DatabaseConfig {
        let url = match (raw.url.is_some(), raw.url_env.is_some()) {
            (false, false) => match (self.env)(DEFAULT_DATABASE_URL_ENV) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    self.issue(
                        "database.url",
                        format!("missing: set database.url, database.url_env or ${DEFAULT_DATABASE_URL_ENV}"),
                    );
                    None
                }
            },
            _ => self.secret("database.url", raw.url, raw.url_env),
        };
        if let Some(url) = &url {
            if let Err(e) = crate::db::tls::prepare(url.expose()) {
                self.issue("database.url", e.to_string());
            }
        }
        let pool_size = raw.pool_size.unwrap_or(4);
        if !(1..=64).contains(&pool_size) {
            self.issue("database.pool_size", "must be between 1 and 64");
        }
        let reconnect_min =
            self.positive_duration("database.reconnect_min", raw.reconnect_min.as_deref(), Duration::from_millis(250));
        let reconnect_max =
            self.positive_duration("database.reconnect_max", raw.reconnect_max.as_deref(), Duration::from_secs(30));
        if reconnect_max < reconnect_min {
            self.issue("database.reconnect_max", "must not be less than database.reconnect_min");
        }
        DatabaseConfig {
            url: url.unwrap_or_else(|| Secret::new(String::new())),
            pool_size: pool_size.clamp(1, 64),
            connect_timeout: self.positive_duration(
                "database.connect_timeout",
                raw.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            reconnect: Backoff { base: reconnect_min, max: reconnect_max, factor: 2.0, jitter: 0.3 },
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let text = raw.listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = text.parse().unwrap_or_else(|e| {
            self.issue("server.listen", format!("{text:?} is not an address such as 127.0.0.1:9187 ({e})"));
            SocketAddr::from(([127, 0, 0, 1], 9187))
        });
        ServerConfig { listen }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.issue("log.level", format!("{level:?} is not a valid filter such as \"info\""));
        }
        LogConfig { format: raw.format.unwrap_or(LogFormat::Text), level }
    }

    fn delivery(&mut self, raw: RawDelivery) -> DeliveryConfig {
        let poll_interval =
            self.positive_duration("delivery.poll_interval", raw.poll_interval.as_deref(), Duration::from_secs(5));
        let lease = self.positive_duration("delivery.lease", raw.lease.as_deref(), Duration::from_secs(60));
        let send_timeout =
            self.positive_duration("delivery.send_timeout", raw.send_timeout.as_deref(), Duration::from_secs(10));
        if lease < send_timeout * 2 {
            // A claim that can expire while its send is still running invites a second
            // alerter to send the same alert.
            self.issue("delivery.lease", "must be at least twice delivery.send_timeout");
        }
        let batch_size = raw.batch_size.unwrap_or(200);
        if !(1..=10_000).contains(&batch_size) {
            self.issue("delivery.batch_size", "must be between 1 and 10000");
        }
        let backoff = Backoff {
            base: self.positive_duration("delivery.backoff_base", raw.backoff_base.as_deref(), Duration::from_secs(2)),
            max: self.positive_duration("delivery.backoff_max", raw.backoff_max.as_deref(), Duration::from_secs(600)),
            factor: raw.backoff_factor.unwrap_or(2.0),
            jitter: raw.jitter.unwrap_or(0.2),
        };
        if !(backoff.factor.is_finite() && (1.0..=10.0).contains(&backoff.factor)) {
            self.issue("delivery.backoff_factor", "must be between 1 and 10");
        }
        if !(backoff.jitter.is_finite() && (0.0..=1.0).contains(&backoff.jitter)) {
            self.issue("delivery.jitter", "must be between 0 and 1");
        }
        if backoff.max < backoff.base {
            self.issue("delivery.backoff_max", "must not be less than delivery.backoff_base");
        }
        let retry = RetryPolicy {
            max_attempts: self.attempts("delivery.max_attempts", raw.max_attempts, 10),
            permanent_failure_attempts: self.attempts(
                "delivery.permanent_failure_attempts",
                raw.permanent_failure_attempts,
                1,
            ),
            backoff,
        };
        DeliveryConfig {
            poll_interval,
            lease,
            batch_size: batch_size.clamp(1, 10_000),
            send_timeout,
            shutdown_grace: self.duration(
                "delivery.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                Duration::from_secs(10),
            ),
            retry,
            link_template: self.link_template("delivery.link_template", raw.link_template.as_deref()),
        }
    }

    fn attempts(&mut self, key: &str, raw: Option<u32>, default: u32) -> u32 {
        let v = raw.unwrap_or(default);
        if !(1..=1000).contains(&v) {
            self.issue(key, "must be between 1 and 1000");
            return default;
        }
        v
    }

    fn channel(&mut self, name: &str, table: toml::Table, delivery: &DeliveryConfig) -> Option<ChannelConfig> {
        let prefix = format!("channels.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_name {
            // The same rule as the CHECK on fraud.channels.name.
            self.issue(&prefix, "channel names are 1-64 characters of A-Z a-z 0-9 _ . -");
        }
        let (common, specific): (toml::Table, toml::Table) =
            table.into_iter().partition(|(k, _)| COMMON_CHANNEL_KEYS.contains(&k.as_str()));
        let common: RawCommon = self.deserialize(&prefix, toml::Value::Table(common))?;
        let key = |k: &str| format!("{prefix}.{k}");
        let Some(type_name) = common.kind.clone() else {
            self.issue(key("type"), "missing: one of slack, webhook, email, log");
            return None;
        };
        let specific = toml::Value::Table(specific);
        let kind = match type_name.as_str() {
            "slack" => {
                let raw: RawSlack = self.deserialize(&prefix, specific)?;
                let url = self.required_secret(&key("webhook_url"), raw.webhook_url, raw.webhook_url_env);
                let url = url.and_then(|u| self.http_url(&key("webhook_url"), &u))?;
                ChannelKind::Slack(SlackConfig { webhook_url: url })
            }
            "webhook" => {
                let raw: RawWebhook = self.deserialize(&prefix, specific)?;
                let url = self.required_secret(&key("url"), raw.url, raw.url_env);
                let url = url.and_then(|u| self.http_url(&key("url"), &u));
                let secret = self.required_secret(&key("secret"), raw.secret, raw.secret_env);
                let mut headers = Vec::new();
                for (h, v) in raw.headers {
                    let hk = key(&format!("headers.{h}"));
                    match (HeaderName::from_bytes(h.as_bytes()), HeaderValue::from_str(&v)) {
                        (Ok(name), Ok(mut value)) => {
                            value.set_sensitive(true);
                            headers.push((name, value));
                        }
                        (Err(_), _) => self.issue(hk, "not a valid HTTP header name"),
                        (_, Err(_)) => self.issue(hk, "not a valid HTTP header value"),
                    }
                }
                ChannelKind::Webhook(WebhookConfig { url: url?, secret: secret?, headers })
            }
            "email" => {
                let raw: RawEmail = self.deserialize(&prefix, specific)?;
                self.email(&prefix, raw).map(ChannelKind::Email)?
            }
            "log" => {
                let raw: RawLogChannel = self.deserialize(&prefix, specific)?;
                ChannelKind::Log(LogChannelConfig { format: raw.format.unwrap_or(LineFormat::Text) })
            }
            other => {
                self.issue(
                    key("type"),
                    format!("unknown channel type {other:?} (expected slack, webhook, email or log)"),
                );
                return None;
            }
        };

        // Slack documents about one message per second per webhook; other kinds are
        // unlimited unless configured.
        let (default_rate, default_concurrency) = match &kind {
            ChannelKind::Slack(_) => (1.0, 1),
            ChannelKind::Webhook(_) => (0.0, 8),
            ChannelKind::Email(_) => (0.0, 2),
            ChannelKind::Log(_) => (0.0, 1),
        };
        let rate = common.rate_limit.unwrap_or(default_rate);
        let rate_limit = if !(rate.is_finite() && rate >= 0.0) {
            self.issue(key("rate_limit"), "must be a number of messages per second, 0 for none");
            None
        } else if rate == 0.0 {
            None
        } else {
            let burst = common.rate_burst.unwrap_or(1);
            if burst == 0 {
                self.issue(key("rate_burst"), "must be at least 1");
            }
            Some(RateLimit { per_second: rate, burst: burst.max(1) })
        };
        let concurrency = common.concurrency.unwrap_or(default_concurrency);
        if !(1..=1024).contains(&concurrency) {
            self.issue(key("concurrency"), "must be between 1 and 1024");
        }
        let group = GroupPolicy {
            window: self.duration(&key("group_window"), common.group_window.as_deref(), Duration::ZERO),
            wait: self.duration(&key("group_wait"), common.group_wait.as_deref(), Duration::ZERO),
            max: common.group_max.unwrap_or(50),
        };
        if group.max == 0 {
            self.issue(key("group_max"), "must be at least 1");
        }
        if group.wait >= delivery.lease {
            self.issue(key("group_wait"), "must be shorter than delivery.lease");
        }
        let retry = RetryPolicy {
            max_attempts: match common.max_attempts {
                Some(v) => self.attempts(&key("max_attempts"), Some(v), delivery.retry.max_attempts),
                None => delivery.retry.max_attempts,
            },
            permanent_failure_attempts: match common.permanent_failure_attempts {
                Some(v) => self.attempts(
                    &key("permanent_failure_attempts"),
                    Some(v),
                    delivery.retry.permanent_failure_attempts,
                ),
                None => delivery.retry.permanent_failure_attempts,
            },
            backoff: delivery.retry.backoff,
        };
        let link_template = match common.link_template.as_deref() {
            Some(t) => self.link_template(&key("link_template"), Some(t)),
            None => delivery.link_template.clone(),
        };
        Some(ChannelConfig {
            name: name.to_owned(),
            min_level: common.min_level.unwrap_or(Level::High),
            enabled: common.enabled.unwrap_or(true),
            rate_limit,
            concurrency: concurrency.clamp(1, 1024),
            group: GroupPolicy { max: group.max.max(1), ..group },
            retry,
            link_template,
            max_reasons: common.max_reasons.unwrap_or(3),
            kind,
        })
    }

    fn email(&mut self, prefix: &str, raw: RawEmail) -> Option<EmailConfig> {
        let key = |k: &str| format!("{prefix}.{k}");
        let tls = raw.tls.unwrap_or(SmtpTls::Starttls);
        let host = match raw.host {
            Some(h) if !h.trim().is_empty() => h.trim().to_owned(),
            _ => {
                self.issue(key("host"), "missing");
                String::new()
            }
        };
        let password = self.secret(&key("password"), raw.password, raw.password_env);
        if password.is_some() && raw.username.is_none() {
            self.issue(key("username"), "missing: a password is set but no username");
        }
        if raw.username.is_some() && password.is_none() {
            self.issue(key("password"), "missing: set password or password_env for username");
        }
        let from = match raw.from.as_deref().map(str::parse::<Mailbox>) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                self.issue(key("from"), format!("not an address: {e}"));
                None
            }
            None => {
                self.issue(key("from"), "missing");
                None
            }
        };
        if raw.to.is_empty() {
            self.issue(key("to"), "missing: at least one recipient");
        }
        let mut to = Vec::new();
        for (i, addr) in raw.to.iter().enumerate() {
            match addr.parse::<Mailbox>() {
                Ok(m) => to.push(m),
                Err(e) => self.issue(format!("{}[{i}]", key("to")), format!("not an address: {e}")),
            }
        }
        Some(EmailConfig {
            port: raw.port.unwrap_or(match tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            }),
            host,
            tls,
            accept_invalid_certs: raw.accept_invalid_certs.unwrap_or(false),
            username: raw.username,
            password,
            from: from?,
            to,
            subject_prefix: raw.subject_prefix.unwrap_or_else(|| "[pg_fraud]".into()),
        })
    }
}

/// The host name: stable across restarts of the same machine or container, which is what
/// "reclaim my own claims on start" needs.
fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "alerter".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SLACK_URL" => Some("https://hooks.slack.com/services/T0/B0/XYZ".into()),
            "HOOK_SECRET" => Some("s3cret".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml_str_with_env(text, &env)
    }

    fn issues(text: &str) -> ConfigIssues {
        match parse(text) {
            Err(Error::Config(i)) => i,
            other => panic!("expected config issues, got {other:?}"),
        }
    }

    const BASE: &str = r#"
        [database]
        url = "postgres://alerter:pw@localhost/app"
    "#;

    #[test]
    fn a_full_config_parses_with_defaults() {
        let c = parse(&format!(
            r#"instance = "a1"
            {BASE}
            [delivery]
            link_template = "https://app.example.com/tx/{{row_key}}"
            [channels.slack]
            type = "slack"
            webhook_url_env = "SLACK_URL"
            [channels.hook]
            type = "webhook"
            url = "http://127.0.0.1:9/hook"
            secret_env = "HOOK_SECRET"
            min_level = "medium"
            headers = {{ "X-Env" = "prod" }}
            [channels.mail]
            type = "email"
            host = "smtp.example.com"
            from = "Fraud <fraud@example.com>"
            to = ["oncall@example.com"]
            [channels.stdout]
            type = "log"
            format = "json"
            "#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.instance, "a1");
        assert_eq!(c.channels.len(), 4);
        let slack = c.channel("slack").unwrap();
        assert_eq!(slack.rate_limit, Some(RateLimit { per_second: 1.0, burst: 1 }));
        assert_eq!(slack.min_level, Level::High);
        let hook = c.channel("hook").unwrap();
        assert_eq!(hook.min_level, Level::Medium);
        assert!(hook.link_template.is_some());
        let ChannelKind::Email(mail) = &c.channel("mail").unwrap().kind else { panic!("not email") };
        assert_eq!((mail.port, mail.tls), (587, SmtpTls::Starttls));
        assert_eq!(c.delivery.retry.max_attempts, 10);
    }

    #[test]
    fn errors_name_the_key() {
        let i = issues(&format!(
            r#"{BASE}
            [channels.slack]
            type = "slack"
            webhook_url = "hooks.slack.com/services/x"
            "#
        ));
        assert_eq!(i.to_string(), "channels.slack.webhook_url: relative URL without a base");

        let i = issues(&format!(
            r#"{BASE}
            [channels.hook]
            type = "webhook"
            url = "https://example.com/hook"
            "#
        ));
        assert!(i.names("channels.hook.secret"), "{i}");
        assert!(i.to_string().contains("missing"), "{i}");

        let i = issues(&format!(
            r#"{BASE}
            [channels.hook]
            type = "webhook"
            url = "https://example.com/hook"
            secret_env = "NOPE_UNSET"
            "#
        ));
        assert!(i.to_string().contains("channels.hook.secret: environment variable NOPE_UNSET"), "{i}");
    }

    #[test]
    fn type_errors_and_unknown_keys_carry_their_path() {
        let i = issues(&format!(
            r#"{BASE}
            [delivery]
            poll_interval = "soon"
            max_attempts = 0
            [channels.s]
            type = "slack"
            webhook_url = "https://hooks.slack.com/x"
            min_level = "severe"
            [channels.t]
            type = "log"
            colour = "red"
            [channels.u]
            type = "sms"
            "#
        ));
        let text = i.to_string();
        assert!(i.names("delivery.poll_interval"), "{text}");
        assert!(i.names("delivery.max_attempts"), "{text}");
        assert!(text.contains("channels.s.min_level: unknown variant `severe`"), "{text}");
        assert!(text.contains("channels.t") && text.contains("colour"), "{text}");
        assert!(text.contains("channels.u.type: unknown channel type \"sms\""), "{text}");
    }

    #[test]
    fn missing_database_url_and_no_channels() {
        let i = issues("");
        assert!(i.names("database.url"), "{i}");
        assert!(i.names("channels"), "{i}");
        let i = issues("[database]\nurl = \"postgres://x@h/db?sslmode=sometimes\"\n[channels.l]\ntype=\"log\"");
        assert!(i.to_string().starts_with("database.url: "), "{i}");
        assert!(!i.to_string().contains("postgres://"), "the URL must not be echoed: {i}");
    }

    #[test]
    fn the_example_file_is_valid() {
        // alerter.example.toml documents every key; this keeps it in step with the parser.
        let text = include_str!("../alerter.example.toml");
        let env = |name: &str| match name {
            "ALERTER_DATABASE_URL" => Some("postgres://alerter:pw@db.example.com/app?sslmode=verify-full".to_owned()),
            "SLACK_WEBHOOK_URL" => Some("https://hooks.slack.com/services/T0/B0/XYZ".to_owned()),
            "FRAUD_WEBHOOK_SECRET" | "SMTP_PASSWORD" => Some("s3cret".to_owned()),
            _ => None,
        };
        let c = Config::from_toml_str_with_env(text, &env).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["oncall_email", "risk_api", "slack", "stdout"]);
        let kinds: Vec<&str> = c.channels.iter().map(|c| c.kind.type_name()).collect();
        assert_eq!(kinds, ["email", "webhook", "slack", "log"]);
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = parse("[database\nurl=").unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let c = parse(&format!(
            r#"{BASE}
            [channels.slack]
            type = "slack"
            webhook_url_env = "SLACK_URL"
            [channels.hook]
            type = "webhook"
            url = "https://example.com/hook?token=abc123"
            secret = "hmac-key-xyz"
            headers = {{ Authorization = "Bearer tok-999" }}
            [channels.mail]
            type = "email"
            host = "smtp.example.com"
            username = "u"
            password = "smtp-pass-777"
            from = "f@example.com"
            to = ["t@example.com"]
            "#
        ))
        .unwrap();
        let dbg = format!("{c:?}");
        for leak in ["XYZ", "abc123", "hmac-key-xyz", "tok-999", "smtp-pass-777", ":pw@"] {
            assert!(!dbg.contains(leak), "{leak} leaked in {dbg}");
        }
        assert!(dbg.contains("***"));
    }
}
