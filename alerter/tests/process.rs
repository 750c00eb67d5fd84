//! The `alerter` binary as an operator runs it: `check-config`, `send-test`, and `run`
//! killed with SIGKILL and started again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_alerter");

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("alerter.toml");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(text.as_bytes())).unwrap();
    path
}

fn alerter(args: &[&str], config: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config).env_remove("ALERTER_DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run alerter")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

const DB: &str = "[database]\nurl = \"postgres://alerter:db-pass-123@127.0.0.1:5/app\"\n";

#[test]
fn check_config_accepts_a_good_file_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"{DB}
[channels.slack]
type = "slack"
webhook_url_env = "SLACK_WEBHOOK_URL"

[channels.hook]
type = "webhook"
url = "https://example.com/hook"
secret_env = "HOOK_SECRET"
"#
        ),
    );
    let out = alerter(
        &["check-config"],
        &path,
        &[
            ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/SECRETPART"),
            ("HOOK_SECRET", "hmac-secret-456"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("alerter@127.0.0.1:5/app"), "{stdout}");
    for secret in ["SECRETPART", "hmac-secret-456", "db-pass-123"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} leaked:\n{stdout}{stderr}");
    }

    // The same file without the environment: the missing variable is named.
    let out = alerter(&["check-config"], &path, &[("SLACK_WEBHOOK_URL", "https://hooks.slack.com/x")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(
            "channels.hook.secret: environment variable HOOK_SECRET (named by channels.hook.secret_env) is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn check_config_names_the_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"{DB}
[channels.slack]
type = "slack"
webhook_url = "hooks.slack.com/services/T0/B0/X"

[channels.hook]
type = "webhook"
url = "https://example.com/hook"
"#
        ),
    );
    let out = alerter(&["check-config"], &path, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("channels.slack.webhook_url: relative URL without a base"), "{stderr}");
    assert!(stderr.contains("channels.hook.secret: missing"), "{stderr}");

    let out = alerter(&["check-config"], &dir.path().join("nope.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot read"), "{}", text(&out).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_reports_success_and_failure_in_the_exit_code() {
    let good = FakeHttp::ok().await;
    let bad = FakeHttp::start(|_| Reply::status(404, "no_service")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"{DB}
[channels.good]
type = "slack"
webhook_url = "{}"
[channels.bad]
type = "webhook"
url = "{}"
secret = "k"
"#,
            good.url("/services/x"),
            bad.url("/")
        ),
    );
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || alerter(&["send-test", "--channel", "good"], &p, &[])).await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("test alert sent through good: HTTP 200"));
    assert_eq!(good.count(), 1);
    assert!(good.received()[0].json().to_string().contains("card_test"));

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || alerter(&["send-test", "--channel", "bad"], &p, &[])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("(permanent): HTTP 404 Not Found: no_service"), "{:?}", text(&out));

    let out =
        tokio::task::spawn_blocking(move || alerter(&["send-test", "--channel", "nope"], &path, &[])).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_run(config: &std::path::Path) -> Proc {
    Proc(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn alerter run"),
    )
}

async fn wait_ready(addr: SocketAddr) {
    eventually("alerter process ready", LIMIT, || async move { (get(addr, "/readyz").await.0 == 200).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hard_then_restarted_delivers_everything_exactly_once() {
    let pg = PgCluster::start();
    let url = pg.create_db("app").await;
    let hook = FakeHttp::ok().await;
    let http: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        "crash-test",
        &url,
        "",
        &format!("[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"k\"\n", hook.url("/")),
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{http}\""));
    let path = write_config(&dir, &toml);

    let c = pg.client("app").await;
    let mut expected = BTreeSet::new();
    let mut proc = spawn_run(&path);
    wait_ready(http).await;
    for i in 0..5 {
        expected.insert(enqueue(&c, &format!("card_{i}"), 0.9, "high").await);
    }
    wait_delivered(&c, "hook", 5, LIMIT).await;

    // SIGKILL: no shutdown code runs.
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    assert_eq!(get(http, "/healthz").await.0, 0, "the process is gone");

    for i in 5..25 {
        expected.insert(enqueue(&c, &format!("card_{i}"), 0.9, "high").await);
    }
    // As if the killed process had died holding claims on three of them, with an hour of
    // lease left: the restarted instance must reclaim its own claims at once.
    let held = c
        .execute(
            "UPDATE fraud.alert_deliveries SET status = 'sending', claimed_by = 'crash-test', attempts = 1,
                    next_attempt_at = now() + interval '1 hour'
              WHERE alert_id IN (SELECT alert_id FROM fraud.alert_deliveries WHERE status = 'pending'
                                  ORDER BY alert_id LIMIT 3)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(held, 3);

    let _proc = spawn_run(&path);
    wait_ready(http).await;
    wait_delivered(&c, "hook", 25, LIMIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // let any duplicate arrive
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for r in hook.received() {
        for id in webhook_ids(&r) {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(seen.values().all(|n| *n == 1), "each alert exactly once: {seen:?}");
}
