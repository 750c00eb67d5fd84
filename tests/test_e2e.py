"""End-to-end behaviour that needs real client connections: NOTIFY on COMMIT only, one NOTIFY
per transaction, rollbacks, and concurrent writers of one entity."""

import json
import threading
import time
from pathlib import Path

import psycopg

RISKY = (
    "INSERT INTO payments (customer, amount, merchant, device, lat, lon, country)"
    " VALUES (%s, 5000, 'm_far', 'dev_new', -33.87, 151.21, 'AU')"
)


def history(conn, customer, n=20):
    conn.execute(
        "INSERT INTO payments (customer, amount, at, merchant, device, lat, lon, country)"
        " SELECT %s, 20 + g %% 5, now() - make_interval(days => %s - g + 1), 'm1', 'dev_home', 48.85, 2.35, 'FR'"
        " FROM generate_series(1, %s) g",
        (customer, n, n),
    )


def notifications(listener, timeout=1.0):
    return list(listener.notifies(timeout=timeout, stop_after=None))


def listen(cluster):
    conn = cluster.connect(autocommit=True)
    conn.execute("LISTEN fraud_alerts")
    return conn


def test_notify_is_sent_on_commit_only(db):
    listener = listen(db)
    with db.connect() as app:
        history(app, "alice")
        app.commit()
        app.execute(RISKY, ("alice",))
        alert = app.execute("SELECT id, level::text, score FROM fraud.alerts WHERE entity = 'alice'").fetchone()
        assert alert is not None, "the alert row is written in the inserting transaction"
        assert notifications(listener, 0.5) == [], "nothing before COMMIT"
        app.commit()
    got = notifications(listener, 3.0)
    assert len(got) == 1
    assert got[0].channel == "fraud_alerts"
    payload = json.loads(got[0].payload)
    assert payload == {"id": alert[0], "level": alert[1], "score": round(alert[2], 4)}
    assert len(got[0].payload) < 8000
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM fraud.alert_deliveries WHERE alert_id = %s", (alert[0],)).fetchone()[0] == 1
    listener.close()


def test_rollback_leaves_no_alert_and_no_notification(db):
    listener = listen(db)
    with db.connect() as app:
        history(app, "bob")
        app.commit()
        app.execute(RISKY, ("bob",))
        app.rollback()
        assert app.execute("SELECT count(*) FROM fraud.alerts WHERE entity = 'bob'").fetchone()[0] == 0
        assert app.execute("SELECT count(*) FROM payments WHERE customer = 'bob'").fetchone()[0] == 20
        assert app.execute("SELECT velocity('bob', '1 hour')").fetchone()[0] == 0
    assert notifications(listener, 1.0) == []
    listener.close()


def test_one_notify_per_transaction_for_a_bulk_insert(db):
    listener = listen(db)
    with db.connect() as app:
        app.execute("SET pg_fraud.alert_dedup_window = 0")
        for i in range(30):
            history(app, f"bulk{i}", 10)
        app.commit()
        app.execute(
            "INSERT INTO payments (customer, amount, merchant, device, lat, lon, country)"
            " SELECT 'bulk' || g, 5000, 'm_far', 'dev_new', -33.87, 151.21, 'AU' FROM generate_series(0, 29) g"
        )
        app.execute(RISKY, ("bulk1",))  # a second statement in the same transaction
        app.commit()
        n_alerts = app.execute("SELECT count(*) FROM fraud.alerts WHERE entity LIKE 'bulk%'").fetchone()[0]
    assert n_alerts >= 30
    got = notifications(listener, 3.0)
    assert len(got) == 1, f"{len(got)} notifications for {n_alerts} alerts"
    listener.close()


def test_savepoint_rollback_drops_the_alert_and_its_notify(db):
    listener = listen(db)
    with db.connect() as app:
        history(app, "carol")
        app.commit()
        app.execute("SAVEPOINT s")
        app.execute(RISKY, ("carol",))
        app.execute("ROLLBACK TO SAVEPOINT s")
        app.execute("INSERT INTO payments (customer, amount, merchant) VALUES ('carol', 21, 'm1')")
        app.commit()
        assert app.execute("SELECT count(*) FROM fraud.alerts WHERE entity = 'carol'").fetchone()[0] == 0
        assert app.execute("SELECT (fraud.profile('carol')->>'tx_count')::int").fetchone()[0] == 21
    assert notifications(listener, 1.0) == []
    listener.close()


def test_concurrent_writers_of_one_entity_lose_nothing(db):
    """Two connections insert for the same customer, merchant and device at once."""
    per_thread, batches = 400, 40
    errors = []

    def writer(tag):
        try:
            with db.connect() as c:
                for b in range(batches):
                    c.execute(
                        "INSERT INTO payments (customer, amount, merchant, device)"
                        " SELECT 'shared', (%s * 1000 + g) %% 97 + 1, 'm_shared', 'dev_shared'"
                        " FROM generate_series(1, %s) g",
                        (tag * batches + b, per_thread // batches),
                    )
                    c.commit()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with db.connect() as c:
        n, avg, var = c.execute(
            "SELECT count(*), avg(amount)::float8, var_samp(amount)::float8 FROM payments WHERE customer = 'shared'"
        ).fetchone()
        assert n == 2 * per_thread
        assert c.execute("SELECT velocity('shared', '1 hour')").fetchone()[0] == n
        assert c.execute("SELECT velocity('m_shared', '1 hour', kind => 'merchant')").fetchone()[0] == n
        profile = c.execute("SELECT fraud.profile('shared')").fetchone()[0]
        assert profile["tx_count"] == n
        assert abs(profile["amount_mean"] - avg) < 1e-9
        assert abs(profile["amount_stddev"] ** 2 - var) < 1e-6
        shards = c.execute("SELECT count(*) FROM fraud.profile_shards WHERE key = 'shared'").fetchone()[0]
        assert shards >= 1


def test_extension_update_path(cluster):
    with cluster.connect(autocommit=True) as c:
        c.execute("ALTER EXTENSION pg_fraud UPDATE")
        v = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_fraud'").fetchone()[0]
        assert v == c.execute("SELECT fraud.version()").fetchone()[0]


def test_app_role_connection_inserts_and_alerts(db):
    with db.connect(autocommit=True) as admin:
        admin.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'shop_app') THEN CREATE ROLE shop_app LOGIN; END IF; END $$")
        admin.execute("GRANT fraud_app TO shop_app")
        admin.execute("GRANT INSERT, SELECT ON payments TO shop_app")
        admin.execute("GRANT USAGE ON SEQUENCE payments_id_seq TO shop_app")
        history(admin, "dave")
    with db.connect(user="shop_app") as app:
        app.execute(RISKY, ("dave",))
        app.commit()
        try:
            app.execute("SELECT * FROM fraud.rules")
            raise AssertionError("the app role can read rules")
        except psycopg.errors.InsufficientPrivilege:
            app.rollback()
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM fraud.alerts WHERE entity = 'dave'").fetchone()[0] == 1


def test_a_deploy_reaches_other_connections_on_their_next_row(db):
    with db.connect(autocommit=True) as admin, db.connect(autocommit=True) as app:
        admin.execute(
            "INSERT INTO payments (customer, amount, at, merchant, device, lat, lon, country)"
            " SELECT 'c' || g % 30, 10 + g % 17, now() - make_interval(mins => g * 20), 'm' || g % 5,"
            "        'd' || g % 30, 48.8 + (g % 30) / 100.0, 2.35, 'FR' FROM generate_series(1, 600) g"
        )
        admin.execute("SELECT fraud.train_isolation_forest('anomaly', n_trees => 10, deploy => 'always')")
        explain = "SELECT fraud_explain(t)->'models'->0->>'version' FROM payments t ORDER BY id DESC LIMIT 1"
        assert app.execute(explain).fetchone()[0] == "1"
        admin.execute("SELECT fraud.train_isolation_forest('anomaly', n_trees => 10, seed => 7, deploy => 'always')")
        # The app's connection caches model 1; the deploy's invalidation reaches it at its next statement.
        assert app.execute(explain).fetchone()[0] == "2"
        app.execute("INSERT INTO payments (customer, amount, merchant) VALUES ('c1', 12, 'm1')")
        logged = admin.execute(
            "SELECT model_outputs ? 'anomaly@2' FROM fraud.scores WHERE entity = 'c1' ORDER BY scored_at DESC, tx_time DESC LIMIT 1"
        ).fetchone()[0]
        assert logged
        admin.execute("SELECT fraud.rollback('anomaly')")
        assert app.execute(explain).fetchone()[0] == "1"
        admin.execute("SELECT fraud.undeploy('anomaly')")
        assert app.execute("SELECT fraud_explain(t)->'models' FROM payments t LIMIT 1").fetchone()[0] == []


def test_cron_jobs_are_registered_and_run(cluster):
    script = (Path(__file__).resolve().parents[1] / "sql" / "cron.sql").read_text()
    with cluster.connect(autocommit=True) as c:
        c.execute(script)
        c.execute(script)  # re-runnable: updates in place
        jobs = dict(c.execute("SELECT jobname, schedule FROM cron.job WHERE jobname LIKE 'pg_fraud_%'").fetchall())
        assert jobs == {"pg_fraud_maintenance": "17 3 * * *", "pg_fraud_retrain": "42 4 * * 0"}
        # Run the maintenance job now-ish: every minute (pg_cron 1.4 has no seconds schedule).
        c.execute("SELECT cron.schedule('pg_fraud_maintenance', '* * * * *', $$SELECT fraud.maintenance()$$)")
        job = c.execute("SELECT jobid FROM cron.job WHERE jobname = 'pg_fraud_maintenance'").fetchone()[0]
        deadline = time.time() + 90
        status = None
        while time.time() < deadline:
            row = c.execute(
                "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s AND status IN ('succeeded', 'failed')"
                " ORDER BY runid DESC LIMIT 1",
                (job,),
            ).fetchone()
            if row:
                status = row
                break
            time.sleep(1)
        c.execute("SELECT cron.unschedule(jobname) FROM cron.job WHERE jobname LIKE 'pg_fraud_%'")
        assert status is not None, "pg_cron did not run the job within 90 s"
        assert status[0] == "succeeded", status
