//! Delivery benchmark (run it through `alerter/bench.sh`, not directly).
//!
//! Starts a throw-away PostgreSQL cluster (the test harness's `pg.rs`), a fast local webhook
//! receiver in this process, and the real `alerter` binary as a separate process with rate
//! limits off. Then:
//!
//! 1. **Latency**: enqueues alerts at a steady rate (default 100/s), each with
//!    `fraud.enqueue_alert` in its own transaction, and measures the time from issuing that
//!    transaction (and from its commit acknowledgement) to the receiver getting the alert.
//!    Both clocks are this process's monotonic clock.
//! 2. **Throughput**: stops the alerter (SIGTERM), writes a backlog (default 20,000 alerts),
//!    starts the alerter again and measures deliveries per second until the receiver has
//!    them all, and until the database has recorded them all as delivered.
//!
//! The harness's cluster runs with `fsync=off` and `synchronous_commit=off`; `--durable`
//! turns both (and `full_page_writes`) back on, so every commit — the producer's, and the
//! alerter's claim and record statements — waits for a WAL flush as in production. The
//! alerter's CPU time per phase is read from `/proc/<pid>/stat`.

// The test harness's cluster, shared rather than copied; the bench uses only part of it.
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use clap::Parser;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// The alerter binary to benchmark.
    #[arg(long)]
    alerter: PathBuf,
    /// Alerts per second in the latency phase.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Duration of the latency phase in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Backlog size for the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    backlog: usize,
    /// Concurrent sends of the webhook channel.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Deliveries claimed per query.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Run PostgreSQL with fsync, synchronous_commit and full_page_writes on.
    #[arg(long)]
    durable: bool,
}

/// What the receiver has seen: every (alert id, arrival) pair, the distinct ids, and the
/// number of requests (one message may cover several alerts when grouping is on).
#[derive(Default)]
struct Seen {
    receipts: Vec<(i64, Instant)>,
    ids: HashSet<i64>,
    requests: usize,
}

type Receipts = Arc<Mutex<Seen>>;

fn lock(r: &Receipts) -> std::sync::MutexGuard<'_, Seen> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

async fn receive(State(r): State<Receipts>, body: Bytes) -> &'static str {
    let now = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut r = lock(&r);
    r.requests += 1;
    for id in v["alert_ids"].as_array().into_iter().flatten() {
        if let Some(id) = id.as_i64() {
            r.receipts.push((id, now));
            r.ids.insert(id);
        }
    }
    "ok"
}

struct Alerter(Child);

impl Alerter {
    fn start(bin: &PathBuf, config: &PathBuf) -> Alerter {
        Alerter(
            Command::new(bin)
                .arg("run")
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("start alerter"),
        )
    }

    /// User + system CPU time the process has used so far (Linux `/proc`, 100 ticks/s).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
        Duration::from_millis(f.iter().sum::<u64>() * 10)
    }

    /// SIGTERM and wait: the graceful path.
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn ready(addr: SocketAddr, alerter: &mut Alerter) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = alerter.0.try_wait() {
            panic!("the alerter exited before it was ready: {status}");
        }
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "alerter not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let durable = args.durable;
    let cluster = tokio::task::spawn_blocking(move || {
        let conf = if durable { vec!["fsync=on", "synchronous_commit=on", "full_page_writes=on"] } else { vec![] };
        pg::PgCluster::start_with(conf.into_iter().map(String::from).collect(), |_| {})
    })
    .await
    .expect("cluster");
    let url = cluster.create_db("bench").await;

    let receipts: Receipts = Arc::default();
    let app = Router::new().route("/hook", post(receive)).with_state(receipts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            r#"instance = "bench"
[database]
url = "{url}"
pool_size = 6
[server]
listen = "{http}"
[log]
level = "warn"
[delivery]
batch_size = {batch}
send_timeout = "5s"
lease = "60s"
poll_interval = "5s"
[channels.hook]
type = "webhook"
url = "http://{hook}/hook"
secret = "bench-secret"
min_level = "low"
rate_limit = 0
concurrency = {conc}
"#,
            batch = args.batch_size,
            conc = args.concurrency
        ),
    )
    .unwrap();

    let mut alerter = Alerter::start(&args.alerter, &config);
    ready(http, &mut alerter).await;
    let client = cluster.client("bench").await;
    let settings: Vec<String> = client
        .query("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes') ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let version: String = client.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    let cpu_before = alerter.cpu();
    let stmt = client
        .prepare(
            "SELECT fraud.enqueue_alert('public.payments', $1, 0.93, 'high',
                    '[{\"name\":\"impossible_travel\",\"contribution\":0.41}]'::jsonb, $2, 950.0)",
        )
        .await
        .unwrap();

    // Phase 1: steady rate, one transaction per alert.
    let total = (args.rate * args.seconds) as usize;
    let mut sent: Vec<(i64, Instant, Instant)> = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let phase1 = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let entity = format!("card_{}", i % 1000);
        let key = format!("tx-{i}");
        let t0 = Instant::now();
        let id: i64 = client.query_one(&stmt, &[&entity, &key]).await.unwrap().get(0);
        sent.push((id, t0, Instant::now()));
    }
    let offered = total as f64 / phase1.elapsed().as_secs_f64();
    let r = receipts.clone();
    wait_until("all steady-rate alerts", Duration::from_secs(120), || lock(&r).ids.len() >= total).await;
    let cpu_phase1 = alerter.cpu().saturating_sub(cpu_before);
    let phase1_time = phase1.elapsed();
    // First arrival of each id (a re-delivery must not improve the figure).
    let mut got: HashMap<i64, Instant> = HashMap::with_capacity(total);
    for &(id, at) in &lock(&receipts).receipts {
        got.entry(id).and_modify(|t| *t = (*t).min(at)).or_insert(at);
    }
    let requests1 = lock(&receipts).requests;
    let mut from_start: Vec<Duration> = Vec::with_capacity(total);
    let mut from_commit: Vec<Duration> = Vec::with_capacity(total);
    for (id, t0, t1) in &sent {
        let at = got[id];
        from_start.push(at.saturating_duration_since(*t0));
        from_commit.push(at.saturating_duration_since(*t1));
    }
    from_start.sort();
    from_commit.sort();

    // Phase 2: a backlog written while the alerter is down.
    alerter.stop();
    *lock(&receipts) = Seen::default();
    let insert = Instant::now();
    let mut left = args.backlog;
    while left > 0 {
        let n = left.min(5000);
        client
            .execute(
                "SELECT fraud.enqueue_alert('public.payments', 'card_' || (i % 1000), 0.93, 'high',
                        '[{\"name\":\"impossible_travel\",\"contribution\":0.41}]'::jsonb, i::text, 950.0)
                   FROM generate_series(1, $1::int) AS i",
                &[&(n as i32)],
            )
            .await
            .unwrap();
        left -= n;
    }
    let insert_time = insert.elapsed();
    let started = Instant::now();
    let alerter = Alerter::start(&args.alerter, &config);
    let r = receipts.clone();
    let backlog = args.backlog;
    wait_until("the backlog at the receiver", Duration::from_secs(600), || lock(&r).ids.len() >= backlog).await;
    let received_all = started.elapsed();
    let (first, last, requests2) = {
        let r = lock(&receipts);
        let first = r.receipts.iter().map(|x| x.1).min().unwrap();
        let last = r.receipts.iter().map(|x| x.1).max().unwrap();
        (first, last, r.requests)
    };
    let expected_delivered = (total + backlog) as i64;
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM fraud.alert_deliveries WHERE status = 'delivered'", &[])
            .await
            .unwrap()
            .get(0);
        if n >= expected_delivered {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "backlog not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recorded_all = started.elapsed();
    let cpu_phase2 = alerter.cpu();
    let duplicates = {
        let r = lock(&receipts);
        r.receipts.len() - r.ids.len()
    };
    alerter.stop();

    let sustained = backlog as f64 / last.duration_since(first).as_secs_f64();
    println!(
        "PostgreSQL {version} ({}); webhook concurrency {}, batch_size {}, no rate limit, no grouping",
        settings.join(", "),
        args.concurrency,
        args.batch_size
    );
    println!();
    println!("## Latency: {total} alerts at {} alerts/s (offered {offered:.1}/s), one transaction each", args.rate);
    println!();
    println!("| measured from | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, v) in [("transaction start", &from_start), ("commit acknowledged", &from_commit)] {
        println!(
            "| {name} → receiver | {} | {} | {} | {} |",
            ms(percentile(v, 0.50)),
            ms(percentile(v, 0.90)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap())
        );
    }
    println!();
    println!(
        "{requests1} webhook requests; alerter CPU {:.2} s over {:.1} s ({:.0}% of one core)",
        cpu_phase1.as_secs_f64(),
        phase1_time.as_secs_f64(),
        100.0 * cpu_phase1.as_secs_f64() / phase1_time.as_secs_f64()
    );
    println!();
    println!("## Throughput: backlog of {backlog} alerts written while the alerter was down");
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| backlog insert time | {:.2} s |", insert_time.as_secs_f64());
    println!("| alerter start → all received | {:.2} s |", received_all.as_secs_f64());
    println!("| sustained delivery rate (first → last receipt) | {sustained:.0} deliveries/s |");
    println!(
        "| start → all received (incl. connect, catch-up) | {:.0} deliveries/s |",
        backlog as f64 / received_all.as_secs_f64()
    );
    println!(
        "| start → all recorded `delivered` in the table | {:.2} s ({:.0}/s) |",
        recorded_all.as_secs_f64(),
        backlog as f64 / recorded_all.as_secs_f64()
    );
    println!("| webhook requests | {requests2} |");
    println!("| duplicate deliveries | {duplicates} |");
    println!(
        "| alerter CPU, start → all recorded | {:.2} s ({:.0} µs per delivery) |",
        cpu_phase2.as_secs_f64(),
        cpu_phase2.as_secs_f64() * 1e6 / backlog as f64
    );
}
