#!/usr/bin/env python3
"""pg_fraud benchmarks, each against baselines measured in the same run on the same cluster.

    bench.py velocity      velocity() vs a live count(*) with 1, 100 and 10,000 events in the window
    bench.py insert        bulk INSERT ... SELECT and single-row pgbench inserts: no trigger vs a
                           hand-written PL/pgSQL trigger vs pg_fraud; and SELECT fraud_score(t)
    bench.py models        in-database training (100k and 1M rows), the models' cost inside the
                           trigger and in SELECT fraud_score(t), and fraud_models vs scikit-learn
                           on the point-in-time feature matrix exported from the database
    bench.py all

Starts its own throwaway cluster (tests/cluster.py) and prints tables of figures and ratios;
`--json FILE` also writes them. Nothing here is a test: timings on a shared machine are noisy,
so every figure is the median of several runs and the runs of each variant are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from cluster import PG_BIN, Cluster  # noqa: E402

SETTINGS = {
    "shared_buffers": "'1GB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "wal_buffers": "'64MB'",
    "max_connections": "50",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pgbench(cluster: Cluster, script: str, clients: int, seconds: int, options: str = "", log_dir: str | None = None) -> dict:
    """Runs pgbench with a custom script; returns tps and, with log_dir, latency percentiles (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    os.chmod(path, 0o644)
    cmd = [str(PG_BIN / "pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
           "-f", path, "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", cluster.dbname]
    env = dict(os.environ, PGOPTIONS=options)
    prefix = None
    if log_dir:
        prefix = os.path.join(log_dir, "pgbench_log")
        cmd[1:1] = ["-l", "--log-prefix", prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=log_dir or None)
    os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(out.stderr + out.stdout)
    tps = next(float(line.split("=")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("tps ="))
    result = {"tps": tps}
    if prefix:
        lat = []
        for p in Path(log_dir).glob("pgbench_log*"):
            for line in p.read_text().splitlines():
                parts = line.split()
                lat.append(int(parts[2]) / 1000.0)  # µs -> ms
            p.unlink()
        lat.sort()
        result |= {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "calls": len(lat)}
    return result


# ---------------------------------------------------------------------------- velocity

def bench_velocity(cluster: Cluster, seconds: int) -> list[dict]:
    with cluster.connect(autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS vtx (id bigserial PRIMARY KEY, who text, amount numeric, at timestamptz)")
        c.execute("TRUNCATE vtx")
        c.execute("SELECT fraud.watch('vtx', entity => 'who', amount => 'amount', ts => 'at')")
        for n in (1, 100, 10_000):
            # n events spread over the last 50 minutes, plus a long history outside the window
            c.execute(
                "INSERT INTO vtx (who, amount, at) SELECT %s, 10, now() - make_interval(secs => 3000.0 * g / %s) FROM generate_series(1, %s) g",
                (f"e{n}", n, n),
            )
        c.execute("ANALYZE vtx")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        for n in (1, 100, 10_000):
            for name, sql in (
                ("velocity()", f"SELECT velocity('e{n}', '1 hour');"),
                ("count(*) over the index", f"SELECT count(*) FROM vtx WHERE who = 'e{n}' AND at > now() - interval '1 hour' AND at <= now();"),
            ):
                r = pgbench(cluster, sql + "\n", 1, seconds, log_dir=d)
                rows.append({"events": n, "method": name} | r)
                log(f"  velocity: {n:>6} events  {name:<25} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms")
    return rows


# ---------------------------------------------------------------------------- inserts

PLPGSQL = """
CREATE TABLE pl_profiles (entity text PRIMARY KEY, n bigint NOT NULL, mean float8 NOT NULL, m2 float8 NOT NULL,
                          last_at timestamptz, last_lat float8, last_lon float8);
CREATE FUNCTION pl_km(lat1 float8, lon1 float8, lat2 float8, lon2 float8) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
  SELECT 2 * 6371.0088 * asin(sqrt(power(sin(radians(lat2 - lat1) / 2), 2)
         + cos(radians(lat1)) * cos(radians(lat2)) * power(sin(radians(lon2 - lon1) / 2), 2)))
$$;
-- The core features by hand: 1 h velocity from the table, z-score from a running profile
-- (Welford, updated in the same transaction), distance from the previous transaction.
CREATE FUNCTION pl_score() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  p pl_profiles;
  v bigint;
  z float8;
  km float8;
  a float8 := NEW.amount_cents / 100.0;
  d float8;
BEGIN
  SELECT count(*) INTO v FROM bench_plpgsql
   WHERE card_token = NEW.card_token AND authorized_at > NEW.authorized_at - interval '1 hour' AND authorized_at <= NEW.authorized_at;
  -- first payment of the card creates its profile; ON CONFLICT makes that safe when two
  -- sessions see the card for the first time at once
  INSERT INTO pl_profiles VALUES (NEW.card_token, 1, a, 0, NEW.authorized_at, NEW.geo_lat, NEW.geo_lon)
  ON CONFLICT (entity) DO NOTHING;
  IF NOT FOUND THEN
    SELECT * INTO p FROM pl_profiles WHERE entity = NEW.card_token FOR UPDATE;
    z := CASE WHEN p.n > 1 AND p.m2 > 0 THEN (a - p.mean) / sqrt(p.m2 / (p.n - 1)) END;
    km := pl_km(p.last_lat, p.last_lon, NEW.geo_lat, NEW.geo_lon);
    d := a - p.mean;
    UPDATE pl_profiles SET n = p.n + 1, mean = p.mean + d / (p.n + 1),
           m2 = p.m2 + d * (a - (p.mean + d / (p.n + 1))), last_at = NEW.authorized_at,
           last_lat = coalesce(NEW.geo_lat, p.last_lat), last_lon = coalesce(NEW.geo_lon, p.last_lon)
     WHERE entity = NEW.card_token;
  END IF;
  NEW.risk_score := least(1, greatest(0, coalesce(abs(z), 0) / 10 + v / 100.0 + coalesce(km, 0) / 20000));
  RETURN NEW;
END $$;
"""

COLUMNS = ("card_token, amount_cents, currency, authorized_at, terminal_id, merchant_category, device_fingerprint, "
           "client_ip, ip_country, geo_lat, geo_lon, ship_lat, ship_lon, entry_mode")

TABLE = """CREATE TABLE {name} (
    payment_id bigserial PRIMARY KEY, card_token text NOT NULL, amount_cents bigint NOT NULL, currency char(3) NOT NULL,
    authorized_at timestamptz NOT NULL, terminal_id text, merchant_category text, device_fingerprint text, client_ip inet,
    ip_country char(2), geo_lat float8, geo_lon float8, ship_lat float8, ship_lon float8, entry_mode text,
    risk_score float8, risk_level text, risk_reasons jsonb);
CREATE INDEX ON {name} (card_token, authorized_at);"""

WATCH = ("SELECT fraud.watch('bench_fraud', entity => 'card_token', amount => 'amount_cents', amount_scale => 0.01, "
         "ts => 'authorized_at', merchant => 'terminal_id', device => 'device_fingerprint', ip => 'client_ip', "
         "country => 'ip_country', lat => 'geo_lat', lon => 'geo_lon', lat2 => 'ship_lat', lon2 => 'ship_lon', "
         "channel => 'entry_mode', backfill => false)")

VARIANTS = ("plain", "plpgsql", "fraud")


def reset(c, variant: str) -> None:
    c.execute(f"TRUNCATE bench_{variant}")
    if variant == "plpgsql":
        c.execute("TRUNCATE pl_profiles")
    if variant == "fraud":
        c.execute("DELETE FROM fraud.profile_shards")
        c.execute("TRUNCATE fraud.alerts, fraud.scores CASCADE")
    c.execute("CHECKPOINT")


def bench_insert(cluster: Cluster, rows: int, runs: int, seconds: int) -> dict:
    gen = ROOT / "scripts" / "demo" / "generate.py"
    customers = max(100, rows // 40)
    with cluster.connect(autocommit=True) as c:
        log(f"  generating ~{rows} rows ({customers} customers x 30 days) ...")
        c.execute(
            "CREATE UNLOGGED TABLE staging (card_token text, amount_cents bigint, currency char(3), authorized_at timestamptz,"
            " terminal_id text, merchant_category text, device_fingerprint text, client_ip inet, ip_country char(2),"
            " geo_lat float8, geo_lon float8, ship_lat float8, ship_lon float8, entry_mode text, fraud_pattern text)"
        )
        data = subprocess.run([sys.executable, str(gen), "history", "--customers", str(customers), "--days", "30"],
                              capture_output=True, text=True, check=True).stdout
        with c.cursor().copy("COPY staging FROM STDIN WITH (FORMAT csv)") as cp:
            cp.write(data)
        n = c.execute("SELECT count(*) FROM staging").fetchone()[0]
        for v in VARIANTS:
            c.execute(TABLE.format(name=f"bench_{v}"))
        c.execute(PLPGSQL)
        c.execute("CREATE TRIGGER score BEFORE INSERT ON bench_plpgsql FOR EACH ROW EXECUTE FUNCTION pl_score()")
        c.execute(WATCH)
        c.execute("VACUUM ANALYZE staging")

        bulk = {v: [] for v in VARIANTS}
        for r in range(runs):
            for v in VARIANTS:
                reset(c, v)
                t0 = time.perf_counter()
                c.execute(f"INSERT INTO bench_{v} ({COLUMNS}) SELECT {COLUMNS} FROM staging ORDER BY authorized_at")
                el = time.perf_counter() - t0
                bulk[v].append(n / el)
                log(f"  bulk run {r + 1}/{runs} {v:<8} {n / el:>10.0f} rows/s")
        bulk_med = {v: statistics.median(x) for v, x in bulk.items()}

        # fraud_score over the loaded history (the last bulk run left bench_fraud full)
        c.execute("VACUUM ANALYZE bench_fraud")
        scores = []
        for _ in range(runs):
            t0 = time.perf_counter()
            c.execute("SELECT count(*) FROM bench_fraud t WHERE fraud_score(t) >= 0").fetchone()
            scores.append(n / (time.perf_counter() - t0))
        score_rate = statistics.median(scores)
        log(f"  SELECT fraud_score(t) over {n} rows: {score_rate:.0f} rows/s")

    # Single-row inserts: live traffic, one payment per transaction, timestamps = now(). A
    # million cards (each with its own device and IP) pay at 60 busy terminals: at thousands
    # of payments a second a card pays about once a run, as real cards do, so the rows are
    # ordinary and raise few alerts (a few thousand cards would each pay every second, and
    # every row would alert on velocity).
    single_script = """\\set c random(0, 999999)
\\set m random(0, 59)
\\set a random(100, 20000)
INSERT INTO bench_{v} (card_token, amount_cents, currency, authorized_at, terminal_id, device_fingerprint, client_ip, ip_country, geo_lat, geo_lon, entry_mode)
VALUES ('card_' || :c, :a, 'EUR', now(), 'T' || :m, 'dev_' || :c, ('10.' || (:c / 65536) || '.' || (:c / 256 % 256) || '.' || (:c % 256))::inet, 'FR', 48.85 + :m / 1000.0, 2.35, 'chip');
"""
    single = {}
    for label, clients, opts in (("2 clients, synchronous_commit=off", 2, "-c synchronous_commit=off"),
                                 ("16 clients, synchronous_commit=on", 16, "")):
        tps = {v: [] for v in VARIANTS}
        for r in range(runs):
            for v in VARIANTS:
                with cluster.connect(autocommit=True) as c:
                    reset(c, v)
                tps[v].append(pgbench(cluster, single_script.format(v=v), clients, seconds, opts)["tps"])
                log(f"  single-row {label}: run {r + 1}/{runs} {v:<8} {tps[v][-1]:>8.0f} tps")
        single[label] = {v: statistics.median(x) for v, x in tps.items()}
    return {"rows": n, "bulk_rows_per_s": bulk_med, "single_tps": single, "fraud_score_rows_per_s": score_rate}


# ---------------------------------------------------------------------------- models

MODELS_DIR = ROOT / "pg_fraud" / "models"


def model_tools() -> tuple[str, Path]:
    """scikit-learn's venv and the fraud_models example binary (built once, release)."""
    venv = MODELS_DIR / "bench" / ".venv" / "bin" / "python"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv.parents[1])], check=True)
        subprocess.run([str(venv), "-m", "pip", "install", "--quiet", "scikit-learn", "numpy", "imbalanced-learn"], check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "fraud_models", "--example", "bench"], cwd=ROOT, check=True)
    return str(venv), target / "release" / "examples" / "bench"


def load_history(c, table: str, rows: int) -> int:
    """A watched-table-shaped copy of generated history, with the generator's truth aside."""
    gen = ROOT / "scripts" / "demo" / "generate.py"
    customers = max(100, rows // 42)
    data = subprocess.run([sys.executable, str(gen), "history", "--customers", str(customers), "--days", "30"],
                          capture_output=True, text=True, check=True).stdout
    c.execute(TABLE.format(name=table).replace("risk_reasons jsonb", "risk_reasons jsonb, truth text"))
    c.execute(f"CREATE UNLOGGED TABLE {table}_in AS TABLE {table} WITH NO DATA")
    cols = COLUMNS + ", truth"
    with c.cursor().copy(f"COPY {table}_in ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
        cp.write(data)
    c.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_in ORDER BY authorized_at")
    c.execute(f"UPDATE {table} SET truth = NULL WHERE truth = ''")
    return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def timed(c, sql: str, params=None):
    t0 = time.perf_counter()
    r = c.execute(sql, params).fetchone()
    return time.perf_counter() - t0, r


def bench_models(cluster: Cluster, sizes: list[int], runs: int) -> list[dict]:
    venv, rust_bench = model_tools()
    results = []
    with cluster.connect(autocommit=True) as c:
        for target in sizes:
            table = f"models_{target}"
            log(f"  {table}: generating and loading ~{target:,} rows ...")
            n = load_history(c, table, target)
            # The newest day is held back: it is inserted through the trigger below.
            cutoff = c.execute(f"SELECT max(authorized_at) - interval '1 day' FROM {table}").fetchone()[0]
            c.execute(f"CREATE TABLE {table}_live AS SELECT * FROM {table} WHERE authorized_at > %s", (cutoff,))
            c.execute(f"DELETE FROM {table} WHERE authorized_at > %s", (cutoff,))
            c.execute(f"VACUUM ANALYZE {table}")
            history = n - c.execute(f"SELECT count(*) FROM {table}_live").fetchone()[0]
            watch_s, _ = timed(c, WATCH.replace("bench_fraud", table).replace("backfill => false", "backfill => true"))
            # Chargebacks arrive two days after the payment.
            c.execute(f"INSERT INTO fraud.labels (source_table, row_key, is_fraud, labelled_at, note)"
                      f" SELECT '{table}'::regclass, payment_id::text, true, authorized_at + interval '2 days', truth"
                      f"   FROM {table} WHERE truth IS NOT NULL")
            until = c.execute(f"SELECT max(authorized_at) - interval '2 days' FROM {table}").fetchone()[0]
            r = {"rows": history, "watch_backfill_s": watch_s}
            for kind, call in (("iforest", f"fraud.train_isolation_forest('if_{target}', '{table}', until => %s, deploy => 'always')"),
                               ("classifier", f"fraud.train_classifier('rf_{target}', '{table}', until => %s, deploy => 'always')")):
                wall, (res,) = timed(c, f"SELECT {call}", (until,))
                r[kind] = {"wall_s": wall, "fit_rows": res["training_rows"], "model_s": res["training_seconds"],
                           "auc": res["metrics"].get("auc"), "ap": res["metrics"].get("average_precision")}
                log(f"  {table}: {kind} trained in {wall:.1f} s (AUC {r[kind]['auc']})")

            # The same point-in-time matrix, exported for fraud_models' and scikit-learn's benches.
            names = c.execute("SELECT fraud.model_features()").fetchone()[0]
            matrix = c.execute(
                f"SELECT (extract(epoch FROM ts) * 1e6)::bigint, coalesce(is_fraud, false)::int, features"
                f"  FROM fraud.feature_matrix('{table}', until => %s)", (until,)).fetchall()
            usable = [j for j in range(len(names)) if any(row[2][j] is not None for row in matrix)]
            csv_path = Path(tempfile.gettempdir()) / f"pg_fraud_{table}.csv"
            with open(csv_path, "w") as f:
                f.write("ts,label," + ",".join(names[j] for j in usable) + "\n")
                for t, y, x in matrix:
                    f.write(f"{t},{y}," + ",".join("nan" if x[j] is None else repr(x[j]) for j in usable) + "\n")
            del matrix
            rust = json.loads(subprocess.run([str(rust_bench), str(csv_path)], capture_output=True, text=True, check=True).stdout)
            sk = json.loads(subprocess.run([venv, str(MODELS_DIR / "bench" / "sklearn_bench.py"), "run", str(csv_path)],
                                           capture_output=True, text=True, check=True).stdout)
            csv_path.unlink()
            r["fraud_models"], r["sklearn"], r["features"] = rust, sk, len(usable)

            # Inside the trigger: the held-back day inserted in one statement (rolled back each
            # time, so every run sees the same profiles), with both models deployed vs none.
            live = c.execute(f"SELECT count(*) FROM {table}_live").fetchone()[0]
            ins = f"INSERT INTO {table} SELECT * FROM {table}_live ORDER BY authorized_at"
            per = {"models": [], "none": []}
            score = {"models": [], "none": []}
            for _ in range(runs):
                for mode in ("models", "none"):
                    if mode == "none":
                        c.execute(f"SELECT fraud.undeploy('if_{target}'), fraud.undeploy('rf_{target}')")
                    else:
                        c.execute(f"SELECT fraud.deploy('if_{target}', 1), fraud.deploy('rf_{target}', 1)")
                    with c.transaction(force_rollback=True):
                        t0 = time.perf_counter()
                        c.execute(ins)
                        per[mode].append((time.perf_counter() - t0) / live * 1e6)
                    t0 = time.perf_counter()
                    c.execute(f"SELECT count(*) FROM {table} t WHERE fraud_score(t) >= 0").fetchone()
                    score[mode].append(history / (time.perf_counter() - t0))
            r["trigger_us_per_row"] = {m: statistics.median(v) for m, v in per.items()}
            r["fraud_score_rows_per_s"] = {m: statistics.median(v) for m, v in score.items()}
            r["live_rows"] = live
            log(f"  {table}: trigger {r['trigger_us_per_row']['none']:.1f} -> {r['trigger_us_per_row']['models']:.1f} us/row with models")
            results.append(r)
            for t in (table, f"{table}_in", f"{table}_live"):
                c.execute(f"DROP TABLE {t}")
    return results


def report_models(results: list[dict]) -> str:
    lines = []
    for r in results:
        fm, sk = r["fraud_models"], r["sklearn"]
        lines += [
            f"### {r['rows']:,} history rows ({r['features']} features, {fm['test_positives']} fraud rows in the newest 20%)",
            "",
            "In the database (training includes replaying the whole table in time order for point-in-time features):",
            "",
            "| step | time | detail |",
            "|---|---:|---|",
            f"| fraud.watch(..., backfill) | {r['watch_backfill_s']:.1f} s | profiles for {r['rows']:,} rows |",
        ]
        for kind, name in (("iforest", "train_isolation_forest"), ("classifier", "train_classifier")):
            k = r[kind]
            auc = "-" if k["auc"] is None else f"{k['auc']:.3f}"
            ap = "-" if k["ap"] is None else f"{k['ap']:.3f}"
            lines.append(f"| fraud.{name} | {k['wall_s']:.1f} s | fit on {k['fit_rows']:,} rows in {k['model_s']:.1f} s; validation AUC {auc}, AP {ap} |")
        t, s = r["trigger_us_per_row"], r["fraud_score_rows_per_s"]
        lines += [
            f"| trigger, no model | {t['none']:.1f} µs/row | {r['live_rows']:,}-row INSERT ... SELECT |",
            f"| trigger, both models | {t['models']:.1f} µs/row | {t['models'] / t['none']:.2f}x; {t['models'] - t['none']:.1f} µs per row for two forests |",
            f"| SELECT fraud_score(t), no model | {s['none']:,.0f} rows/s | |",
            f"| SELECT fraud_score(t), both models | {s['models']:,.0f} rows/s | {s['models'] / s['none']:.2f}x |",
            "",
            f"fraud_models vs scikit-learn {sk['version']} on that matrix (exported with fraud.feature_matrix; first 80% train):",
            "",
            "| model | metric | fraud_models | scikit-learn | ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for m in ("iforest", "rf"):
            a, b = fm[m], sk[m]
            lines += [
                f"| {m} | training (s) | {a['fit_s']:.3f} | {b['fit_s']:.3f} | {b['fit_s'] / a['fit_s']:.1f}x faster |",
                f"| {m} | batch (rows/s) | {a['batch_rows_per_s']:,.0f} | {b['batch_rows_per_s']:,.0f} | {a['batch_rows_per_s'] / b['batch_rows_per_s']:.2f}x |",
                f"| {m} | 1-row p50 (µs) | {a['single_p50_us']:.2f} | {b['single_p50_us']:,.0f} | {b['single_p50_us'] / a['single_p50_us']:,.0f}x faster |",
                f"| {m} | 1-row p99 (µs) | {a['single_p99_us']:.2f} | {b['single_p99_us']:,.0f} | {b['single_p99_us'] / a['single_p99_us']:,.0f}x faster |",
                f"| {m} | held-out AUC | {a['auc']:.4f} | {b['auc']:.4f} | {a['auc'] - b['auc']:+.4f} |",
            ]
        lines.append("")
    return "\n".join(lines)


def report_insert(res: dict) -> str:
    b = res["bulk_rows_per_s"]
    lines = [
        f"Bulk INSERT ... SELECT of {res['rows']:,} rows (median rows/s):",
        "",
        "| variant | rows/s | vs no trigger | pg_fraud vs it |",
        "|---|---:|---:|---:|",
    ]
    for v, name in (("plain", "no trigger"), ("plpgsql", "PL/pgSQL trigger (3 features)"), ("fraud", "pg_fraud (all features, rules, alerts)")):
        lines.append(f"| {name} | {b[v]:,.0f} | {b[v] / b['plain']:.0%} | {b['fraud'] / b[v]:.2f}x |")
    for label, t in res["single_tps"].items():
        lines += ["", f"Single-row inserts, pgbench, {label} (median tps):", "",
                  "| variant | tps | vs no trigger |", "|---|---:|---:|"]
        for v in VARIANTS:
            lines.append(f"| {v} | {t[v]:,.0f} | {t[v] / t['plain']:.0%} |")
    lines += ["", f"SELECT fraud_score(t) over {res['rows']:,} history rows: {res['fraud_score_rows_per_s']:,.0f} rows/s"]
    return "\n".join(lines)


def report_velocity(rows: list[dict]) -> str:
    lines = ["velocity(entity, '1 hour') per call, pgbench 1 client (latency includes the client round trip):", "",
             "| events in window | method | p50 ms | p99 ms |", "|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['events']:,} | {r['method']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["velocity", "insert", "models", "all"])
    p.add_argument("--model-sizes", default="100000,1000000", help="rows per model benchmark, comma-separated")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--json")
    a = p.parse_args()
    out = {}
    with Cluster(SETTINGS, dbname="bench") as cluster:
        with cluster.connect(autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_fraud")
        if a.what in ("velocity", "all"):
            log("velocity benchmark")
            out["velocity"] = bench_velocity(cluster, a.seconds)
            print(report_velocity(out["velocity"]) + "\n")
        if a.what in ("insert", "all"):
            log("insert benchmark")
            out["insert"] = bench_insert(cluster, a.rows, a.runs, a.seconds)
            print(report_insert(out["insert"]) + "\n")
        if a.what in ("models", "all"):
            log("models benchmark")
            sizes = [int(x) for x in a.model_sizes.split(",") if x]
            out["models"] = bench_models(cluster, sizes, a.runs)
            print(report_models(out["models"]) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
