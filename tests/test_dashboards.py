"""The Grafana dashboard's SQL runs, and shows something, against a database with demo data.

Every panel's rawSql (rows included, collapsed or not) is expanded the way Grafana's PostgreSQL
data source would expand it - the time macros, $__interval and the dashboard's own variables at
their defaults - and run as a login role that has only `fraud_analyst`, as the provisioned
Grafana data source does. A macro or variable the expander does not know fails the test: a panel
must not depend on something this test cannot check.

The data: the demo generator's history, split in two. The older part is loaded before
`fraud.watch()` (profiles are built from it, models are trained on it), the last two days after,
so that the decision log, alerts, deliveries and live model metrics exist as in production.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from cluster import PG_BIN, Cluster

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "pg_fraud.json"
DATASOURCE_YML = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "pg_fraud.yml"
DASHBOARDS_YML = ROOT / "docker" / "grafana" / "provisioning" / "dashboards" / "pg_fraud.yml"
COMPOSE = ROOT / "docker" / "docker-compose.yml"

# The time range every panel is run with: it covers the whole demo history.
NOW = datetime.now(timezone.utc).replace(microsecond=0)
TIME_FROM = NOW - timedelta(days=30)
TIME_TO = NOW + timedelta(days=1)
# What Grafana would pick for $__interval on a ~1000 px wide panel over 31 days.
INTERVAL = "1h"

WATCH = (
    "SELECT fraud.watch('shop.card_payments', entity => 'card_token', amount => 'amount_cents',"
    " ts => 'authorized_at', merchant => 'terminal_id', device => 'device_fingerprint', ip => 'client_ip',"
    " country => 'ip_country', lat => 'geo_lat', lon => 'geo_lon', lat2 => 'ship_lat', lon2 => 'ship_lon',"
    " channel => 'entry_mode', amount_scale => 0.01, risk_columns => true)"
)


# ---------------------------------------------------------------------------------------
# The dashboard


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    out = []

    def walk(panels):
        for p in panels:
            out.append(p)
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def variable_defaults(dashboard: dict) -> dict[str, str]:
    """Each dashboard variable at its default (`current`) value."""
    values = {}
    for v in dashboard.get("templating", {}).get("list", []):
        current = v.get("current", {})
        if "value" not in current:
            raise AssertionError(f"variable ${v['name']} has no default value")
        value = current["value"]
        if isinstance(value, list):
            raise AssertionError(f"variable ${v['name']}: multi-value defaults are not supported by this test")
        values[v["name"]] = str(value)
    return values


# ---------------------------------------------------------------------------------------
# Grafana macro expansion (PostgreSQL data source)

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class UnknownMacro(Exception):
    pass


def interval_seconds(text: str) -> float:
    m = re.fullmatch(r"\s*'?\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)\s*'?\s*", text)
    if not m:
        raise UnknownMacro(f"cannot parse interval {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_args(text: str) -> list[str]:
    """Splits macro arguments on top-level commas."""
    args, depth, cur, quote = [], 0, "", False
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        args.append(cur.strip())
    return args


def time_group(args: list[str]) -> str:
    if len(args) not in (2, 3):  # a third argument is Grafana's fill mode: not SQL
        raise UnknownMacro(f"$__timeGroup takes (column, interval[, fill]), got {args}")
    secs = interval_seconds(args[1])
    secs = int(secs) if secs == int(secs) else secs
    return f"to_timestamp(floor(extract(epoch from {args[0]}) / {secs}) * {secs})"


def expand(sql: str, variables: dict[str, str], time_from: datetime = TIME_FROM, time_to: datetime = TIME_TO,
           interval: str = INTERVAL) -> str:
    """Expands Grafana's PostgreSQL macros and dashboard variables; raises on anything unknown."""
    frm, to = rfc3339(time_from), rfc3339(time_to)
    # Dashboard variables: $name, ${name}, ${name:format} and the deprecated [[name]].
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        escaped = value.replace("'", "''")  # what Grafana's SQL data sources do to single values
        sql = re.sub(r"\$\{" + re.escape(name) + r"(?::\w+)?\}|\[\[" + re.escape(name) + r"\]\]", escaped, sql)
        sql = re.sub(r"\$" + re.escape(name) + r"\b", lambda _m: escaped, sql)
    # Global variables first (Grafana interpolates them before the data source's macros).
    secs = interval_seconds(interval)
    sql = sql.replace("$__interval_ms", str(int(secs * 1000))).replace("$__interval", interval)
    sql = sql.replace("${__interval_ms}", str(int(secs * 1000))).replace("${__interval}", interval)

    simple = {
        "timeFilter": lambda a: f"{a[0]} BETWEEN '{frm}' AND '{to}'",
        "timeFrom": lambda a: f"'{frm}'",
        "timeTo": lambda a: f"'{to}'",
        "timeGroup": time_group,
        "timeGroupAlias": lambda a: time_group(a) + ' AS "time"',
        "time": lambda a: f'{a[0]} AS "time"',
        "timeEpoch": lambda a: f'extract(epoch from {a[0]}) AS "time"',
        "unixEpochFilter": lambda a: f"{a[0]} >= {int(time_from.timestamp())} AND {a[0]} <= {int(time_to.timestamp())}",
        "unixEpochFrom": lambda a: str(int(time_from.timestamp())),
        "unixEpochTo": lambda a: str(int(time_to.timestamp())),
    }
    arity = {"timeFilter": 1, "timeFrom": 0, "timeTo": 0, "time": 1, "timeEpoch": 1, "unixEpochFilter": 1,
             "unixEpochFrom": 0, "unixEpochTo": 0}
    out, pos = [], 0
    for m in re.finditer(r"\$__(\w+)", sql):
        if m.start() < pos:
            continue
        name = m.group(1)
        if name not in simple:
            raise UnknownMacro(f"unknown Grafana macro ${'__' + name} in:\n{sql}")
        i = m.end()
        if i >= len(sql) or sql[i] != "(":
            raise UnknownMacro(f"${'__' + name} must be called with parentheses")
        depth, j = 0, i
        while j < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[j], 0)
            if depth == 0:
                break
            j += 1
        else:
            raise UnknownMacro(f"unbalanced parentheses after ${'__' + name}")
        args = split_args(sql[i + 1 : j])
        if name in arity and len(args) != arity[name]:
            raise UnknownMacro(f"${'__' + name} takes {arity[name]} argument(s), got {args}")
        out.append(sql[pos : m.start()])
        out.append(simple[name](args))
        pos = j + 1
    out.append(sql[pos:])
    sql = "".join(out)
    left = re.search(r"\$\{[^}]*\}|\[\[[^\]]*\]\]|\$[A-Za-z_]\w*", sql)
    if left:
        raise UnknownMacro(f"unexpanded variable or macro {left.group(0)} in:\n{sql}")
    return sql


def test_macro_expansion():
    frm, to = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
    got = expand(
        "SELECT $__timeGroupAlias(a.created_at, $__interval), count(*) FROM t WHERE $__timeFilter(a.created_at)"
        " AND level >= '$min_level' AND x = '${entity}' AND y < $__timeTo()",
        {"min_level": "high", "entity": "o'brien"}, frm, to, "5m",
    )
    assert got == (
        'SELECT to_timestamp(floor(extract(epoch from a.created_at) / 300) * 300) AS "time", count(*) FROM t'
        " WHERE a.created_at BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z'"
        " AND level >= 'high' AND x = 'o''brien' AND y < '2026-01-02T00:00:00Z'"
    )
    assert expand("$__timeGroup(t, '1h', 0)", {}) == "to_timestamp(floor(extract(epoch from t) / 3600) * 3600)"
    for bad in ("SELECT $__unixEpochGroup(t, '1m')", "SELECT $__timeFilter", "SELECT $undefined_var",
                "SELECT ${nope}", "SELECT $__timeGroup(t, 'soon')"):
        with pytest.raises(UnknownMacro):
            expand(bad, {})


# ---------------------------------------------------------------------------------------
# Static checks: the dashboard and its provisioning agree


def test_dashboard_is_well_formed():
    d = load_dashboard()
    assert d["uid"] == "pg-fraud", "the uid is in links (alerter link_template, README): keep it stable"
    assert d["schemaVersion"] >= 39
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_uid = re.search(r"^\s*uid:\s*([\w-]+)\s*$", DATASOURCE_YML.read_text(), re.M).group(1)
    assert re.search(r"^\s*type:\s*grafana-postgresql-datasource\s*$", DATASOURCE_YML.read_text(), re.M)
    for p in query_panels(d):
        assert p.get("title") and p.get("gridPos"), p.get("id")
        assert p["datasource"]["uid"] == ds_uid, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("rawQuery") is True and t.get("rawSql"), p["title"]
            assert t["format"] in ("table", "time_series"), p["title"]
            assert t["datasource"]["uid"] == ds_uid, p["title"]
    # the provider reads the directory compose mounts the dashboard into
    path = re.search(r"^\s*path:\s*(\S+)\s*$", DASHBOARDS_YML.read_text(), re.M).group(1)
    assert f"./grafana/dashboards:{path}" in COMPOSE.read_text()
    assert any(p["type"] == "row" and p.get("panels") for p in panels), "a collapsed row keeps its panels nested"


# ---------------------------------------------------------------------------------------
# The database with demo data


def psql(cluster: Cluster, *args: str) -> None:
    r = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(cluster.port),
         "-U", "postgres", "-d", cluster.dbname, *args],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, f"psql {' '.join(args)} failed:\n{r.stderr}"


def history_batches(workdir: Path) -> tuple[Path, Path]:
    """The generator's history as two CSV files: before and after the last two days."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo" / "generate.py"), "history", "--customers", "300", "--days", "10",
         # three times the default fraud rate, so that the last two days surely hold fraud
         "--fraud-rate", "0.03", "--seed", "7"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = list(csv.reader(io.StringIO(out)))
    cut = datetime.now(timezone.utc) - timedelta(days=2)
    old = [r for r in rows if datetime.fromisoformat(r[3]) < cut]
    new = [r for r in rows if datetime.fromisoformat(r[3]) >= cut]
    assert old and new and any(r[14] for r in new), "the generator's history should hold fraud in its last two days"
    paths = []
    for name, batch in (("history.csv", old), ("recent.csv", new)):
        path = workdir / name
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(batch)
        paths.append(path)
    return paths[0], paths[1]


def build_demo(cluster: Cluster, workdir: Path) -> None:
    with cluster.connect(autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_cron")
        conn.execute("CREATE EXTENSION pg_fraud")
    psql(cluster, "-f", str(ROOT / "sql" / "demo" / "schema.sql"))
    history, recent = history_batches(workdir)
    # 1. History the application had before pg_fraud: profiles are built from it by watch().
    psql(cluster, "-v", f"csv={history}", "-f", str(ROOT / "sql" / "demo" / "load.sql"))
    with cluster.connect(autocommit=True) as conn:
        conn.execute(WATCH)
        # Chargebacks arrive a while after the fraud: label the known fraud of the history.
        conn.execute(
            "SELECT count(fraud.label('shop.card_payments', p.payment_id::text, true, at => p.authorized_at + interval '1 hour'))"
            "  FROM demo.truth t JOIN shop.card_payments p USING (payment_id)"
        )
        conn.execute("SELECT fraud.train_isolation_forest('anomaly', n_trees => 20)")
        conn.execute("SELECT fraud.train_classifier('fraud_rf', n_trees => 20)")
        assert conn.execute("SELECT count(*) FROM fraud.models WHERE active").fetchone()[0] == 2
        conn.execute("INSERT INTO fraud.channels (name, min_level) VALUES ('log', 'medium'), ('email', 'high')")
    # 2. The last two days arrive live: scored, logged, alerted, queued for delivery.
    psql(cluster, "-v", f"csv={recent}", "-f", str(ROOT / "sql" / "demo" / "load.sql"))
    with cluster.connect(autocommit=True) as conn:
        alerts = conn.execute("SELECT count(*) FROM fraud.alerts").fetchone()[0]
        assert alerts >= 3, f"the recent batch raised {alerts} alerts"
        # Analyst feedback on the recent rows: confirmed fraud, and alerts found genuine.
        conn.execute(
            "SELECT count(fraud.label('shop.card_payments', t.payment_id::text, true))"
            "  FROM demo.truth t JOIN fraud.scores s ON s.row_key = t.payment_id::text"
        )
        conn.execute(
            "SELECT count(fraud.label('shop.card_payments', a.row_key, false)) FROM fraud.alerts a"
            " WHERE NOT EXISTS (SELECT 1 FROM demo.truth t WHERE t.payment_id::text = a.row_key)"
        )
        # What an alerter would have done: the log channel delivered everything; email lost one
        # alert to a permanent SMTP error and is retrying another.
        conn.execute(
            "UPDATE fraud.alert_deliveries d SET status = 'delivered', attempts = 1, delivered_at = a.created_at + interval '2 seconds',"
            " updated_at = a.created_at + interval '2 seconds' FROM fraud.alerts a WHERE a.id = d.alert_id AND d.channel = 'log'"
        )
        conn.execute(
            "UPDATE fraud.alert_deliveries SET status = 'dead', attempts = 1, updated_at = now(),"
            " last_error = 'permanent: SMTP 550 5.1.1 <fraud-oncall@example.test>: mailbox unavailable'"
            " WHERE channel = 'email' AND alert_id = (SELECT min(alert_id) FROM fraud.alert_deliveries WHERE channel = 'email')"
        )
        conn.execute(
            "UPDATE fraud.alert_deliveries SET status = 'failed', attempts = 2, updated_at = now(),"
            " next_attempt_at = now() + interval '30 seconds', last_error = 'connection refused (mailpit:1025)'"
            " WHERE channel = 'email' AND status = 'pending'"
            "   AND alert_id = (SELECT min(alert_id) FROM fraud.alert_deliveries WHERE channel = 'email' AND status = 'pending')"
        )
        # Schema drift on another watched table: its rows go in unscored and the error is logged.
        conn.execute(
            "CREATE TABLE shop.refunds (refund_id bigserial PRIMARY KEY, card_token text NOT NULL,"
            " amount_cents bigint NOT NULL, refunded_at timestamptz NOT NULL DEFAULT now(), terminal_id text)"
        )
        conn.execute(
            "SELECT fraud.watch('shop.refunds', entity => 'card_token', amount => 'amount_cents', ts => 'refunded_at',"
            " merchant => 'terminal_id', amount_scale => 0.01)"
        )
        conn.execute("ALTER TABLE shop.refunds DROP COLUMN terminal_id")
        conn.execute("INSERT INTO shop.refunds (card_token, amount_cents) VALUES ('card_000001', 1250), ('card_000002', 990)")
        assert conn.execute("SELECT count(*) FROM fraud.scoring_errors").fetchone()[0] >= 1
        # The Grafana data source's role, as docker/postgres/10-pg_fraud.sh creates it:
        # fraud_analyst and nothing else, read-only, with a statement timeout.
        conn.execute("CREATE ROLE grafana_test LOGIN IN ROLE fraud_analyst")
        conn.execute("ALTER ROLE grafana_test SET default_transaction_read_only = on")
        conn.execute("ALTER ROLE grafana_test SET statement_timeout = '30s'")


@pytest.fixture(scope="module")
def demo():
    with tempfile.TemporaryDirectory(prefix="pgfraud-dash-") as tmp, Cluster() as cluster:
        build_demo(cluster, Path(tmp))
        yield cluster


@pytest.fixture(scope="module")
def grafana_conn(demo):
    with demo.connect(autocommit=True, user="grafana_test") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
        yield conn


def run(conn: psycopg.Connection, sql: str) -> tuple[list[str], list[tuple]]:
    cur = conn.execute(sql)
    return [c.name for c in cur.description], cur.fetchall()


def check_result(panel: dict, fmt: str, cols: list[str], rows: list[tuple]) -> None:
    assert rows, f"panel {panel['title']!r} returned no rows"
    if fmt == "time_series":
        assert cols[0] == "time", f"panel {panel['title']!r}: a time series' first column must be \"time\", got {cols}"
        assert all(r[0] is not None for r in rows), f"panel {panel['title']!r}: NULL time"
        values = [i for i, c in enumerate(cols) if c not in ("time", "metric")]
        assert values, f"panel {panel['title']!r}: no value column in {cols}"
        assert any(r[i] is not None for r in rows for i in values), f"panel {panel['title']!r}: every value is NULL"


DASH = load_dashboard()
PANELS = query_panels(DASH)


@pytest.mark.parametrize("panel", PANELS, ids=[f"{p['id']}-{p['title']}" for p in PANELS])
def test_panel_query(grafana_conn, panel):
    variables = variable_defaults(DASH)
    for t in panel["targets"]:
        sql = expand(t["rawSql"], variables)
        try:
            cols, rows = run(grafana_conn, sql)
        except psycopg.Error as e:
            pytest.fail(f"panel {panel['title']!r} failed: {e}\n--- SQL as Grafana would send it ---\n{sql}")
        check_result(panel, t["format"], cols, rows)


def test_variables_filter(grafana_conn):
    """The entity and level variables narrow the panels that use them."""
    by_title = {p["title"]: p for p in PANELS}
    entity = grafana_conn.execute(
        "SELECT entity FROM fraud.alerts ORDER BY score DESC, id LIMIT 1"
    ).fetchone()[0]
    variables = variable_defaults(DASH) | {"entity": entity}
    cols, rows = run(grafana_conn, expand(by_title["Latest alerts with reasons"]["targets"][0]["rawSql"], variables))
    assert rows and {r[cols.index("entity")] for r in rows} == {entity}
    variables = variable_defaults(DASH) | {"min_level": "critical"}
    cols, rows = run(grafana_conn, expand(by_title["Alerts by level"]["targets"][0]["rawSql"], variables))
    assert rows and {r[cols.index("metric")] for r in rows} == {"critical"}
    cols, rows = run(grafana_conn, expand(by_title["Alerts in the last 24 h"]["targets"][0]["rawSql"], variables))
    assert [r[0] for r in rows] == ["critical"]
