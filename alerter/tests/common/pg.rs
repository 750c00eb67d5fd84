//! A throw-away PostgreSQL 15 cluster for tests and the benchmark: `initdb -A trust` into a
//! fresh temporary directory, a free TCP port on 127.0.0.1, the outbox schema loaded per
//! database, stopped and deleted on drop.
//!
//! PostgreSQL refuses to run as root, and CI runs tests as root: then every server binary
//! runs as the `postgres` OS user through `runuser`, and the temporary directory is handed
//! to that user. Binaries come from `$PG_BIN`, else `pg_config --bindir`, else
//! `/usr/lib/postgresql/15/bin`.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The schema the extension installs for the alerter (the contract).
pub const OUTBOX_SQL: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../pg_fraud/src/sql/outbox.sql"));

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: Option<(u32, u32)>,
    extra_conf: Vec<String>,
}

fn bindir() -> PathBuf {
    if let Ok(p) = std::env::var("PG_BIN") {
        return PathBuf::from(p);
    }
    let fixed = PathBuf::from("/usr/lib/postgresql/15/bin");
    if fixed.join("pg_ctl").exists() {
        return fixed;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    fixed
}

/// uid/gid of the `postgres` OS user, read from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("running as root but there is no `postgres` OS user to run PostgreSQL as");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn check(what: &str, out: Output) {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl PgCluster {
    /// initdb + start.
    pub fn start() -> PgCluster {
        PgCluster::start_with(Vec::new(), |_| {})
    }

    /// initdb, run `prepare(data_dir)` (e.g. to drop certificates in), start with extra
    /// `-c name=value` settings.
    pub fn start_with(extra_conf: Vec<String>, prepare: impl FnOnce(&Path)) -> PgCluster {
        let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let as_postgres = is_root.then(postgres_user);
        let dir = tempfile::Builder::new().prefix("alerter-pg-").tempdir().expect("temp dir");
        if let Some((uid, gid)) = as_postgres {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let mut pg = PgCluster { dir, bin: bindir(), port: 0, as_postgres, extra_conf };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        check("initdb", out);
        prepare(&data);
        if let Some((uid, gid)) = pg.as_postgres {
            // Files `prepare` wrote belong to root; the server must read them.
            for entry in std::fs::read_dir(&data).expect("read data dir").flatten() {
                let _ = std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid));
            }
        }
        // A port can be taken between probing and binding by a parallel test: retry.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("could not start PostgreSQL: {last}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.as_postgres {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        for c in &self.extra_conf {
            opts.push_str(" -c ");
            opts.push_str(c);
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            Err(format!("{}\n{log}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "fast", "stop"])
            .output()
            .expect("run pg_ctl stop");
        check("pg_ctl stop", out);
    }

    /// Starts again on the same port after [`stop`](Self::stop).
    pub fn start_again(&self) {
        self.try_start().unwrap_or_else(|e| panic!("restart failed: {e}"));
    }

    /// Stop and start on the same port: every client connection is cut.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// URL of database `db` over TCP without TLS.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A plain client connection to `db`.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {db}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates database `name` with the outbox schema loaded; returns its URL.
    pub async fn create_db(&self, name: &str) -> String {
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let c = self.client(name).await;
        c.batch_execute(OUTBOX_SQL).await.unwrap_or_else(|e| panic!("load outbox.sql: {e}"));
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: the directory is deleted right after, nothing needs to be flushed.
        let _ = self.command("pg_ctl").arg("-D").arg(self.data_dir()).args(["-w", "-m", "immediate", "stop"]).output();
    }
}
