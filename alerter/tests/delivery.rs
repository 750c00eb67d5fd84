//! End-to-end delivery against a real PostgreSQL cluster (one per test) and fake receivers.
//! The daemon runs in-process through `alerter::serve` on an ephemeral port.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const LIMIT: Duration = Duration::from_secs(60);

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[channels.{name}]
type = "webhook"
url = "{url}"
secret = "s3cret"
min_level = "low"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_slack_the_webhook_and_email() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let slack = FakeHttp::ok().await;
    let hook = FakeHttp::ok().await;
    let smtp = FakeSmtp::start().await;
    let channels = format!(
        r#"
[channels.slack]
type = "slack"
webhook_url = "{}"
link_template = "https://app.example.com/tx/{{row_key}}"

[channels.hook]
type = "webhook"
url = "{}"
secret = "s3cret"
min_level = "medium"
headers = {{ "X-Env" = "test" }}

[channels.mail]
type = "email"
host = "127.0.0.1"
port = {}
tls = "none"
username = "alerter"
password = "mail-pass"
from = "pg_fraud <fraud@example.com>"
to = ["oncall@example.com"]
"#,
        slack.url("/services/T0/B0/XYZ"),
        hook.url("/hook"),
        smtp.addr.port()
    );
    let daemon = Daemon::start(config("t-all", &url, "", &channels)).await;
    daemon.wait_ready().await;
    let c = pg.client("app").await;

    // The alerter registered the channels it serves, so the extension routes to them.
    let registered: Vec<(String, String, bool)> = c
        .query("SELECT name, min_level::text, enabled FROM fraud.channels ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        registered,
        vec![
            ("hook".into(), "medium".into(), true),
            ("mail".into(), "high".into(), true),
            ("slack".into(), "high".into(), true),
        ]
    );

    let id = enqueue(&c, "card_42", 0.91, "high").await;
    eventually("slack, webhook and email to receive the alert", LIMIT, || async {
        (slack.count() == 1 && hook.count() == 1 && smtp.received().len() == 1).then_some(())
    })
    .await;

    // Slack: a readable Block Kit message.
    let s = slack.received()[0].json();
    assert_eq!(slack.received()[0].path, "/services/T0/B0/XYZ");
    let text = s.to_string();
    assert!(s["blocks"][0]["text"]["text"].as_str().unwrap().contains("HIGH fraud alert: card_42"), "{text}");
    for needle in
        ["*Score*\\n0.91", "*Amount*\\n950.00", "`impossible_travel` +0.41", "https://app.example.com/tx/tx-card_42"]
    {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }

    // Webhook: the signature verifies with the shared secret, computed independently here.
    let r = &hook.received()[0];
    let ts: i64 = r.header("x-signature-timestamp").unwrap().parse().unwrap();
    let sig = r.header("x-signature").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    assert_eq!(sig, hex::encode(mac.finalize().into_bytes()), "signature must verify");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - ts).abs() < 120, "timestamp is current");
    assert_eq!(r.header("x-env").as_deref(), Some("test"));
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let body = r.json();
    assert_eq!(body["alert_ids"], serde_json::json!([id]));
    assert_eq!(body["alerts"][0]["entity"], "card_42");
    assert_eq!(body["alerts"][0]["reasons"][0]["name"], "impossible_travel");

    // Email: authenticated, addressed, readable.
    let m = &smtp.received()[0];
    assert_eq!(m.auth, Some(("alerter".into(), "mail-pass".into())));
    assert!(m.to.iter().any(|t| t.contains("oncall@example.com")), "{m:?}");
    assert!(m.data.contains(&format!("Subject: [pg_fraud] HIGH alert #{id}: card_42 score 0.91")), "{}", m.data);
    assert!(m.data.contains("impossible_travel"), "{}", m.data);

    for ch in ["slack", "hook", "mail"] {
        let (status, attempts, _) = eventually("delivery recorded", LIMIT, || async {
            delivery(&c, id, ch).await.filter(|d| d.0 == "delivered")
        })
        .await;
        assert_eq!((status.as_str(), attempts), ("delivered", 1), "{ch}");
    }

    // Routing: a medium alert reaches only the channel whose min_level allows it.
    let medium = enqueue(&c, "card_7", 0.5, "medium").await;
    eventually("medium alert on the webhook", LIMIT, || async { (hook.count() == 2).then_some(()) }).await;
    assert!(delivery(&c, medium, "slack").await.is_none());
    assert_eq!(slack.count(), 1);

    let m = daemon.metrics().await;
    assert_eq!(metric(&m, "alerter_deliveries_delivered_total{channel=\"slack\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "alerter_deliveries_delivered_total{channel=\"hook\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "alerter_delivery_latency_seconds_count{channel=\"mail\"}"), 1.0, "{m}");
    assert!(!m.contains("XYZ") && !m.contains("s3cret") && !m.contains("mail-pass"));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_postgres_restart_and_delivers_what_comes_next() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::ok().await;
    let daemon = Daemon::start(config("t-restart", &url, "", &webhook("hook", &hook.url("/"), ""))).await;
    daemon.wait_ready().await;
    let c = pg.client("app").await;
    enqueue(&c, "card_1", 0.9, "high").await;
    wait_delivered(&c, "hook", 1, LIMIT).await;
    drop(c);

    tokio::task::block_in_place(|| pg.restart());

    eventually("the reconnect metric to increment", LIMIT, || async {
        (metric(&daemon.metrics().await, "alerter_db_reconnects_total") >= 1.0).then_some(())
    })
    .await;
    daemon.wait_ready().await;
    let c = pg.client("app").await;
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(enqueue(&c, &format!("card_{i}"), 0.9, "high").await);
    }
    wait_delivered(&c, "hook", 4, LIMIT).await;
    let got: BTreeSet<i64> = hook.received().iter().skip(1).flat_map(webhook_ids).collect();
    assert_eq!(got, ids);
    assert!(daemon.is_running());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_delivered() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::start(|n| if n < 2 { Reply::status(500, "boom") } else { Reply::ok() }).await;
    let daemon = Daemon::start(config("t-500", &url, "", &webhook("hook", &hook.url("/"), ""))).await;
    let c = pg.client("app").await;
    let id = enqueue(&c, "card_1", 0.9, "high").await;
    let (_, attempts, last_error) = eventually("delivered after retries", LIMIT, || async {
        delivery(&c, id, "hook").await.filter(|d| d.0 == "delivered")
    })
    .await;
    assert_eq!(attempts, 3, "two failures then a success");
    assert!(last_error.unwrap().contains("HTTP 500"), "the last failure is kept for the record");
    assert_eq!(hook.count(), 3);
    let m = daemon.metrics().await;
    assert_eq!(metric(&m, "alerter_deliveries_failed_total{channel=\"hook\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "alerter_deliveries_delivered_total{channel=\"hook\"}"), 1.0, "{m}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured_for_the_whole_channel() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook =
        FakeHttp::start(
            |n| {
                if n == 0 {
                    Reply::status(429, "slow down").header("Retry-After", "2")
                } else {
                    Reply::ok()
                }
            },
        )
        .await;
    let daemon = Daemon::start(config("t-429", &url, "", &webhook("hook", &hook.url("/"), ""))).await;
    let c = pg.client("app").await;
    let first = enqueue(&c, "card_1", 0.9, "high").await;
    eventually("the first request", LIMIT, || async { (hook.count() >= 1).then_some(()) }).await;
    // A second alert while the channel is told to wait must wait too.
    let second = enqueue(&c, "card_2", 0.9, "high").await;
    wait_delivered(&c, "hook", 2, LIMIT).await;
    let r = hook.received();
    assert_eq!(r.len(), 3, "one 429, then both alerts");
    for later in &r[1..] {
        let gap = later.at.duration_since(r[0].at);
        assert!(gap >= Duration::from_secs(2), "request {gap:?} after the 429 with Retry-After: 2");
    }
    let delivered: BTreeSet<i64> = r[1..].iter().flat_map(webhook_ids).collect();
    assert_eq!(delivered, BTreeSet::from([first, second]));
    assert_eq!(delivery(&c, first, "hook").await.unwrap().1, 2);
    assert_eq!(metric(&daemon.metrics().await, "alerter_rate_limited_total{channel=\"hook\"}"), 1.0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_dead_at_once_with_the_reason() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::start(|_| Reply::status(400, "invalid_payload")).await;
    let daemon = Daemon::start(config("t-400", &url, "", &webhook("hook", &hook.url("/"), ""))).await;
    let c = pg.client("app").await;
    let id = enqueue(&c, "card_1", 0.9, "high").await;
    let (_, attempts, last_error) =
        eventually("dead", LIMIT, || async { delivery(&c, id, "hook").await.filter(|d| d.0 == "dead") }).await;
    assert_eq!(attempts, 1);
    let last_error = last_error.unwrap();
    assert!(last_error.contains("HTTP 400 Bad Request: invalid_payload"), "{last_error}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.count(), 1, "a permanent error is not retried");
    assert_eq!(metric(&daemon.metrics().await, "alerter_deliveries_dead_total{channel=\"hook\"}"), 1.0);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_go_dead_after_max_attempts() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::start(|_| Reply::status(503, "maintenance")).await;
    let daemon = Daemon::start(config("t-max", &url, "", &webhook("hook", &hook.url("/"), "max_attempts = 3"))).await;
    let c = pg.client("app").await;
    let id = enqueue(&c, "card_1", 0.9, "high").await;
    let (_, attempts, last_error) = eventually("dead after 3 attempts", LIMIT, || async {
        delivery(&c, id, "hook").await.filter(|d| d.0 == "dead")
    })
    .await;
    assert_eq!(attempts, 3);
    assert!(last_error.unwrap().starts_with("attempt 3: HTTP 503"));
    assert_eq!(hook.count(), 3);
    let m = daemon.metrics().await;
    assert_eq!(metric(&m, "alerter_deliveries_dead_total{channel=\"hook\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "alerter_deliveries_failed_total{channel=\"hook\"}"), 2.0, "{m}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_alerters_on_one_database_never_send_twice() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::ok().await;
    let channels = webhook("hook", &hook.url("/"), "concurrency = 4");
    let a = Daemon::start(config("alerter-a", &url, "", &channels)).await;
    let b = Daemon::start(config("alerter-b", &url, "", &channels)).await;
    a.wait_ready().await;
    b.wait_ready().await;
    // Three writers, each alert its own transaction, so both alerters are woken for every
    // alert and race for the same rows.
    let mut writers = Vec::new();
    for w in 0..3 {
        let c = pg.client("app").await;
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..100 {
                ids.push(enqueue(&c, &format!("card_{w}_{i}"), 0.9, "high").await);
            }
            ids
        }));
    }
    let mut expected = BTreeSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    let c = pg.client("app").await;
    wait_delivered(&c, "hook", 300, LIMIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // let any duplicate arrive
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for r in hook.received() {
        for id in webhook_ids(&r) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "delivered more than once: {dupes:?}");
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), expected);
    let by: Vec<(Option<String>, i64)> = c
        .query("SELECT claimed_by, count(*) FROM fraud.alert_deliveries GROUP BY 1 ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!("deliveries per alerter: {by:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_is_grouped_and_rate_limited_as_configured() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let grouped = FakeHttp::ok().await;
    let limited = FakeHttp::ok().await;
    let channels = format!(
        "{}{}",
        webhook(
            "grouped",
            &grouped.url("/"),
            "group_window = \"10m\"\ngroup_wait = \"2s\"\ngroup_max = 100\nconcurrency = 4"
        ),
        webhook("limited", &limited.url("/"), "rate_limit = 200.0\nrate_burst = 10\nconcurrency = 8"),
    );
    let daemon = Daemon::start(config("t-burst", &url, "batch_size = 500\nlease = \"10m\"", &channels)).await;
    daemon.wait_ready().await;
    let c = pg.client("app").await;
    // 1000 alerts for 10 entities, committed together.
    c.batch_execute(
        "SELECT fraud.enqueue_alert('public.payments', 'card_' || (i % 10), 0.9, 'high', '[]', i::text, 10.0)
           FROM generate_series(1, 1000) AS i",
    )
    .await
    .unwrap();
    wait_delivered(&c, "grouped", 1000, LIMIT).await;
    wait_delivered(&c, "limited", 1000, LIMIT).await;

    // Grouped: every alert exactly once, each message one entity, and far fewer messages.
    let messages = grouped.received();
    let mut ids = BTreeSet::new();
    let mut covered = 0;
    for r in &messages {
        let body = r.json();
        let n = body["count"].as_u64().unwrap() as usize;
        let these = webhook_ids(r);
        assert_eq!(n, these.len());
        assert!(n <= 100, "group_max");
        let entities: BTreeSet<&str> =
            body["alerts"].as_array().unwrap().iter().map(|a| a["entity"].as_str().unwrap()).collect();
        assert_eq!(entities.len(), 1, "one entity per message: {entities:?}");
        covered += n;
        ids.extend(these);
    }
    assert_eq!(covered, 1000);
    assert_eq!(ids.len(), 1000);
    assert!(messages.len() >= 10, "at least one message per entity");
    assert!(messages.len() <= 200, "grouping must compress the burst: {} messages", messages.len());
    let m = daemon.metrics().await;
    assert_eq!(metric(&m, "alerter_messages_sent_total{channel=\"grouped\"}"), messages.len() as f64);
    assert_eq!(metric(&m, "alerter_deliveries_delivered_total{channel=\"grouped\"}"), 1000.0);

    // Limited: one message per alert, no faster than 200/s after a burst of 10.
    let sent = limited.received();
    assert_eq!(sent.len(), 1000);
    let span = sent.last().unwrap().at.duration_since(sent[0].at);
    assert!(span >= Duration::from_secs_f64(990.0 / 200.0 * 0.95), "1000 messages at 200/s cannot take {span:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_dangling_notifications_are_ignored() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::ok().await;
    let daemon = Daemon::start(config("t-notify", &url, "", &webhook("hook", &hook.url("/"), ""))).await;
    daemon.wait_ready().await;
    let c = pg.client("app").await;
    c.batch_execute(
        r#"NOTIFY fraud_alerts, 'garbage';
           NOTIFY fraud_alerts, '{"id":1}';
           NOTIFY fraud_alerts, '{"id":999999,"level":"high","score":0.5}';
           SELECT pg_notify('fraud_alerts', repeat('x', 7000));
           NOTIFY fraud_alerts;"#,
    )
    .await
    .unwrap();
    eventually("five notifications received", LIMIT, || async {
        (metric(&daemon.metrics().await, "alerter_notifications_total") >= 5.0).then_some(())
    })
    .await;
    let m = daemon.metrics().await;
    assert_eq!(metric(&m, "alerter_notifications_ignored_total"), 4.0, "{m}");
    assert!(daemon.is_running());
    assert_eq!(daemon.get("/readyz").await.0, 200);
    enqueue(&c, "card_1", 0.9, "high").await;
    wait_delivered(&c, "hook", 1, LIMIT).await;
    assert_eq!(hook.count(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_claims_it_cannot_finish() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    // The receiver hangs far longer than the shutdown grace.
    let hook = FakeHttp::start(|_| Reply::ok().delayed(Duration::from_secs(20))).await;
    let daemon = Daemon::start(config(
        "t-release",
        &url,
        "send_timeout = \"25s\"\nlease = \"5m\"\nshutdown_grace = \"500ms\"",
        &webhook("hook", &hook.url("/"), "concurrency = 1"),
    ))
    .await;
    let c = pg.client("app").await;
    for i in 0..3 {
        enqueue(&c, &format!("card_{i}"), 0.9, "high").await;
    }
    eventually("a send in flight", LIMIT, || async { (hook.count() == 1).then_some(()) }).await;
    eventually("all three claimed", LIMIT, || async { (count_status(&c, "hook", "sending").await == 3).then_some(()) })
        .await;
    daemon.stop().await.unwrap();
    let rows: Vec<(String, i32, Option<String>, bool)> = c
        .query("SELECT status, attempts, claimed_by, next_attempt_at <= now() FROM fraud.alert_deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r, ("pending".to_owned(), 0, None, true), "released, not counted, due now");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_sends() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::start(|_| Reply::ok().delayed(Duration::from_secs(1))).await;
    let daemon =
        Daemon::start(config("t-finish", &url, "shutdown_grace = \"10s\"", &webhook("hook", &hook.url("/"), ""))).await;
    let c = pg.client("app").await;
    let id = enqueue(&c, "card_1", 0.9, "high").await;
    eventually("a send in flight", LIMIT, || async { (hook.count() == 1).then_some(()) }).await;
    daemon.stop().await.unwrap();
    assert_eq!(delivery(&c, id, "hook").await.unwrap().0, "delivered");
}
