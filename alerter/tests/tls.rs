//! The database connection over TLS with libpq's `sslmode` semantics, against a cluster
//! started with `ssl = on` and a certificate from a throw-away CA (made with `openssl`;
//! the test is skipped when the tool is missing).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &Path, ca_name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca_name}.key"),
            "-out",
            &format!("{ca_name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name}"),
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca_name}.crt"),
            "-CAkey",
            &format!("{ca_name}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        dir,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_and_verifies_the_server() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not found: skipping the TLS test");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "test-ca");
    let pg = PgCluster::start_with(
        vec!["ssl=on".into(), "ssl_cert_file=server.crt".into(), "ssl_key_file=server.key".into()],
        |data| {
            for f in ["server.crt", "server.key"] {
                std::fs::copy(certs.path().join(f), data.join(f)).unwrap();
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
    pg.create_db("app").await;
    let hook = FakeHttp::ok().await;
    let ca = certs.path().join("test-ca.crt");
    let url = format!("postgres://postgres@localhost:{}/app?sslmode=verify-full&sslrootcert={}", pg.port, ca.display());
    let channels = format!("[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"k\"\n", hook.url("/"));
    let daemon = Daemon::start(config("t-tls", &url, "", &channels)).await;
    let c = pg.client("app").await;
    enqueue(&c, "card_1", 0.9, "high").await;
    wait_delivered(&c, "hook", 1, Duration::from_secs(60)).await;
    let encrypted: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.application_name LIKE 'pg-fraud-alerter%' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the alerter's connections use TLS");
    daemon.stop().await.unwrap();

    // A server certificate from another CA is refused under verify-full: never ready.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path(), "other-ca");
    let url = format!(
        "postgres://postgres@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
        pg.port,
        other.path().join("other-ca.crt").display()
    );
    let daemon = Daemon::spawn(config("t-tls-bad", &url, "", &channels)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(daemon.get("/readyz").await.0, 503);
    assert!(daemon.is_running(), "a refused connection is retried, not fatal");
    daemon.stop().await.unwrap();

    // require without a root certificate: encrypted, not authenticated (libpq semantics).
    let url = format!("postgres://postgres@127.0.0.1:{}/app?sslmode=require", pg.port);
    let daemon = Daemon::start(config("t-tls-require", &url, "", &channels)).await;
    daemon.stop().await.unwrap();
}
