//! The command line: `run` (default), `check-config` and `send-test`.
//!
//! Exit codes: 0 success, 1 runtime failure (daemon error, test send failed), 2 invalid
//! configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::alert::{Alert, Notification};
use crate::config::{ChannelKind, Config};
use crate::error::Error;

/// pg_fraud alerter: delivers fraud.alerts to Slack, webhooks, email and stdout.
#[derive(Debug, Parser)]
#[command(name = "alerter", version, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, env = "ALERTER_CONFIG", default_value = "/etc/pg-fraud-alerter/alerter.toml")]
    pub config: PathBuf,

    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or Ctrl-C.
    Run,
    /// Validate the configuration and print a summary (secrets redacted).
    CheckConfig,
    /// Send a synthetic alert through one channel now; the exit code tells whether it
    /// was accepted.
    SendTest {
        /// Channel name (`[channels.NAME]`).
        #[arg(long)]
        channel: String,
    },
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(&cli.config).map_err(|e| {
        eprintln!("alerter: {}: {e}", cli.config.display());
        ExitCode::from(2)
    })
}

/// Runs the command line; the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", summary(&config));
            ExitCode::SUCCESS
        }
        Command::Run => {
            crate::logging::init(&config.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("alerter: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::run(config, crate::shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "alerter stopped with an error");
                    eprintln!("alerter: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SendTest { channel } => {
            crate::logging::init(&config.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("alerter: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(send_test(&config, &channel))
        }
    }
}

async fn send_test(config: &Config, name: &str) -> ExitCode {
    let Some(cfg) = config.channel(name) else {
        let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        eprintln!("alerter: no channel {name:?} (configured: {})", names.join(", "));
        return ExitCode::from(2);
    };
    crate::install_crypto_provider();
    let channel = match crate::channel::build(cfg, config.delivery.send_timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("alerter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(msg) = Notification::new(vec![Alert::synthetic()]) else {
        return ExitCode::FAILURE;
    };
    match tokio::time::timeout(config.delivery.send_timeout, channel.send(&msg)).await {
        Ok(Ok(d)) => {
            println!("test alert sent through {name}: {}", d.detail);
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            let kind = if e.retryable { "temporary" } else { "permanent" };
            eprintln!("alerter: test alert through {name} failed ({kind}): {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("alerter: test alert through {name} timed out");
            ExitCode::FAILURE
        }
    }
}

/// What `check-config` prints: everything that matters, no secret.
pub fn summary(c: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let target = crate::db::tls::prepare(c.database.url.expose())
        .map(|p| crate::db::tls::describe(&p))
        .unwrap_or_else(|e| Error::Tls(e).to_string());
    let _ = writeln!(s, "configuration OK");
    let _ = writeln!(s, "instance:  {}", c.instance);
    let _ = writeln!(s, "database:  {target} (pool {})", c.database.pool_size);
    let _ = writeln!(s, "server:    http://{}/metrics", c.server.listen);
    let _ = writeln!(
        s,
        "delivery:  poll {:?}, lease {:?}, batch {}, max attempts {}",
        c.delivery.poll_interval, c.delivery.lease, c.delivery.batch_size, c.delivery.retry.max_attempts
    );
    for ch in &c.channels {
        let rate = ch
            .rate_limit
            .map(|r| format!("{}/s burst {}", r.per_second, r.burst))
            .unwrap_or_else(|| "unlimited".into());
        let target = match &ch.kind {
            ChannelKind::Slack(_) => "incoming webhook (URL hidden)".to_owned(),
            ChannelKind::Webhook(w) => format!("{} (signed)", w.url.expose().host_str().unwrap_or("?")),
            ChannelKind::Email(e) => format!("{}:{} {:?} -> {} recipient(s)", e.host, e.port, e.tls, e.to.len()),
            ChannelKind::Log(l) => format!("stdout ({:?})", l.format),
        };
        let _ = writeln!(
            s,
            "channel:   {} [{}] min_level={} {} rate={} concurrency={} group_window={:?} -> {}",
            ch.name,
            ch.kind.type_name(),
            ch.min_level,
            if ch.enabled { "enabled" } else { "DISABLED" },
            rate,
            ch.concurrency,
            ch.group.window,
            target
        );
    }
    s
}
