"""The README's first command, end to end: scripts/demo.sh with a small data set and the debug
build (the test run has just built and installed it), checked on what it printed and on the
database it leaves behind."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_runs_and_detects_fraud():
    demo_dir = Path(tempfile.mkdtemp(prefix="pgfraud-demo-"))
    env = dict(os.environ, SKIP_SETUP="1", DEMO_PROFILE="debug", DEMO_CUSTOMERS="400", DEMO_DAYS="12",
               DEMO_SECONDS="20", DEMO_SEED="11", DEMO_DIR=str(demo_dir))
    try:
        run = subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=1800)
        out = run.stdout
        assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
        assert "Summary" in out
        alerts = [line for line in out.splitlines() if line.startswith("ALERT #")]
        assert alerts, out[-3000:]
        odd = [a for a in alerts if not re.search(r" (HIGH|CRITICAL) score=[01]\.\d\d entity=\S+ .* reasons: [\w:]+ [01]\.\d\d", a)]
        assert not odd, odd[:3]
        port = re.search(r"postgres://postgres@127\.0\.0\.1:(\d+)/demo", out).group(1)
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="demo") as c:
            delivered, dead = c.execute("SELECT delivered_24h, dead FROM fraud.delivery_health WHERE channel = 'console'").fetchone()
            assert delivered >= len(alerts) > 0 and dead == 0
            # The live stream's alerts against the generator's truth.
            tp, alerted, fraud = c.execute(
                """SELECT count(*) FILTER (WHERE p.risk_level IN ('high', 'critical') AND t.payment_id IS NOT NULL),
                          count(*) FILTER (WHERE p.risk_level IN ('high', 'critical')),
                          count(*) FILTER (WHERE t.payment_id IS NOT NULL)
                     FROM shop.card_payments p LEFT JOIN demo.truth t USING (payment_id)
                    WHERE p.payment_id > (SELECT value FROM demo.metrics WHERE name = 'live_from_id')"""
            ).fetchone()
            assert fraud > 0 and alerted > 0
            assert tp / alerted >= 0.5, (tp, alerted, fraud)
            assert tp / fraud >= 0.4, (tp, alerted, fraud)
            assert c.execute("SELECT count(*) FROM fraud.models WHERE active").fetchone()[0] == 2
            assert c.execute("SELECT count(*) FROM cron.job WHERE jobname LIKE 'pg_fraud_%'").fetchone()[0] == 2
    finally:
        subprocess.run([str(ROOT / "scripts" / "demo.sh"), "clean"], env=env, capture_output=True)
        shutil.rmtree(demo_dir, ignore_errors=True)
