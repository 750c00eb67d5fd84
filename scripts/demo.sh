#!/usr/bin/env bash
# The whole product in one command: builds and installs pg_fraud, starts a PostgreSQL 15
# cluster of its own under .demo/, loads a realistic payments history with labelled fraud,
# trains the models, starts the alerter, streams live payments and shows alerts as they
# arrive, then prints a summary.
#
#   scripts/demo.sh            run the demo (re-runnable: it replaces the previous demo cluster)
#   scripts/demo.sh stop       stop the demo cluster and the alerter
#   scripts/demo.sh clean      stop and delete .demo/
#
# Knobs (environment): DEMO_CUSTOMERS=3000 DEMO_DAYS=30 DEMO_SECONDS=60 DEMO_RATE=20
#   DEMO_PROFILE=release|debug   SKIP_SETUP=1 (machine already set up)   DEMO_KEEP=0 (stop
#   the cluster at the end instead of leaving it up for exploration)   DEMO_DIR=.demo
#   DEMO_SEED (a fixed live stream; default: a new one each run)
# Real channels, in addition to the console: DEMO_SLACK_WEBHOOK_URL; DEMO_WEBHOOK_URL with
#   DEMO_WEBHOOK_SECRET; DEMO_SMTP_HOST (DEMO_SMTP_PORT, DEMO_SMTP_TLS=starttls|tls|none,
#   DEMO_SMTP_USER, DEMO_SMTP_PASSWORD, DEMO_EMAIL_FROM, DEMO_EMAIL_TO).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo=${DEMO_DIR:-$root/.demo}
export PATH="$HOME/.cargo/bin:$PATH"
PG_BIN=/usr/lib/postgresql/15/bin
CUSTOMERS=${DEMO_CUSTOMERS:-3000}
DAYS=${DEMO_DAYS:-30}
LIVE_SECONDS=${DEMO_SECONDS:-60}
RATE=${DEMO_RATE:-20}
PROFILE=${DEMO_PROFILE:-release}

say() { printf '\n\033[1;35m▶ %s\033[0m\n' "$*"; }
note() { printf '  %s\n' "$*"; }

# Postgres refuses to run as root: as root, the cluster belongs to the postgres user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_all() {
  if [ -f "$demo/alerter.pid" ]; then
    kill "$(cat "$demo/alerter.pid")" 2>/dev/null || true
    rm -f "$demo/alerter.pid"
  fi
  if [ -f "$demo/pg/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$demo/pg/data" stop -m fast >/dev/null 2>&1 || true
  fi
}

case "${1:-run}" in
  run) ;;
  stop) stop_all; echo "demo stopped"; exit 0 ;;
  clean) stop_all; rm -rf "$demo"; echo "demo removed"; exit 0 ;;
  *) echo "usage: $0 [run|stop|clean]" >&2; exit 2 ;;
esac

started=$(date +%s)
if [ -z "${SKIP_SETUP:-}" ]; then
  say "Setting up the machine (idempotent; the first run installs cargo-pgrx, ~16 min)"
  scripts/setup.sh
fi

say "Building and installing pg_fraud ($PROFILE) and the alerter"
rel=(); [ "$PROFILE" = release ] && rel=(--release)
(cd pg_fraud && cargo pgrx install "${rel[@]}" --pg-config "$PG_BIN/pg_config" --sudo 2>&1 | tail -n 1)
cargo build "${rel[@]}" -p alerter 2>&1 | tail -n 1
alerter_bin=$root/target/$([ "$PROFILE" = release ] && echo release || echo debug)/alerter
scripts/pyenv.sh
py=$root/.venv/bin/python

say "Starting a PostgreSQL 15 cluster in ${demo#"$root"/} (pg_cron preloaded)"
stop_all
rm -rf "$demo"
mkdir -p "$demo/pg"
trap 'status=$?; if [ $status -ne 0 ]; then echo "demo failed (exit $status); logs in $demo" >&2; stop_all; fi' EXIT
trap 'echo; echo "interrupted"; stop_all; exit 130' INT TERM
# (the server runs as postgres when we are root: it must be able to reach its directory)
chmod a+rx "$demo"
[ "$(id -u)" -eq 0 ] && chown postgres "$demo/pg"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PG_BIN/initdb" -D "$demo/pg/data" -A trust -U postgres --locale=C.UTF-8 >/dev/null
as_pg tee -a "$demo/pg/data/postgresql.conf" >/dev/null <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$demo/pg'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'demo'
shared_buffers = '512MB'
max_wal_size = '4GB'
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$demo/pg/data" -l "$demo/pg/server.log" -w start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=demo
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE demo"
psql -c "CREATE EXTENSION pg_cron" -c "CREATE EXTENSION pg_fraud" -f sql/demo/schema.sql
note "postgres://postgres@127.0.0.1:$port/demo"

say "Generating $DAYS days of payments for $CUSTOMERS customers, with labelled fraud"
"$py" scripts/demo/generate.py history --customers "$CUSTOMERS" --days "$DAYS" > "$demo/history.csv"
psql -v csv="$demo/history.csv" -f sql/demo/load.sql
# The last day is held back: it goes through the scoring trigger after training.
psql <<'SQL'
CREATE TABLE demo.last_day AS
WITH moved AS (DELETE FROM shop.card_payments WHERE authorized_at > now() - interval '1 day' RETURNING *)
SELECT * FROM moved;
CREATE TABLE demo.metrics (name text PRIMARY KEY, value double precision);
SQL
psql -At -c "SELECT format('  %s payments in history (%s injected fraud: %s), %s held back for live scoring',
    (SELECT count(*) FROM shop.card_payments), (SELECT count(*) FROM demo.truth),
    (SELECT string_agg(fraud_pattern || ' ' || n, ', ' ORDER BY n DESC)
       FROM (SELECT fraud_pattern, count(*) n FROM demo.truth GROUP BY 1) t),
    (SELECT count(*) FROM demo.last_day))"

say "Watching shop.card_payments (its own column names, amounts in cents) and building profiles"
psql -At <<'SQL'
SELECT '  ' || fraud.watch('shop.card_payments',
    entity => 'card_token', amount => 'amount_cents', ts => 'authorized_at',
    merchant => 'terminal_id', device => 'device_fingerprint', ip => 'client_ip', country => 'ip_country',
    lat => 'geo_lat', lon => 'geo_lon', lat2 => 'ship_lat', lon2 => 'ship_lon', channel => 'entry_mode',
    amount_scale => 0.01, risk_columns => true)::text;
-- Chargebacks: fraud becomes known two days after it happened.
SELECT format('  %s chargebacks recorded as labels', count(fraud.label('shop.card_payments', t.payment_id::text, true,
           note => t.fraud_pattern, at => p.authorized_at + interval '2 days')))
  FROM demo.truth t JOIN shop.card_payments p USING (payment_id)
 WHERE p.authorized_at < now() - interval '2 days';
SQL

say "Training models on point-in-time features (history replayed in time order)"
note "rows of the last 2 days are left out: their chargebacks may not have arrived yet"
psql -At <<'SQL'
SELECT format('  isolation forest v%s: %s rows in %s s, validation AUC %s, AP %s; %s',
              r->>'version', r->>'training_rows', r->>'training_seconds',
              round((r->'metrics'->>'auc')::numeric, 3), round((r->'metrics'->>'average_precision')::numeric, 3), r->>'reason')
  FROM fraud.train_isolation_forest('anomaly', until => now() - interval '2 days') r;
SELECT format('  classifier v%s: %s rows in %s s, validation AUC %s, AP %s, precision %s / recall %s at the alert threshold; %s',
              r->>'version', r->>'training_rows', r->>'training_seconds',
              round((r->'metrics'->>'auc')::numeric, 3), round((r->'metrics'->>'average_precision')::numeric, 3),
              round((r->'metrics'->>'precision')::numeric, 3), round((r->'metrics'->>'recall')::numeric, 3), r->>'reason')
  FROM fraud.train_classifier('fraud_rf', until => now() - interval '2 days') r;
SQL
psql -f sql/cron.sql >/dev/null
note "pg_cron: fraud.maintenance() nightly, fraud.retrain() weekly (SELECT * FROM cron.job)"

say "Starting the alerter (console channel; Slack / webhook / email when configured)"
alerter_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{
  cat <<EOF
instance = "demo"

[database]
url_env = "ALERTER_DATABASE_URL"

[server]
listen = "127.0.0.1:$alerter_port"

[log]
level = "warn"

[channels.console]
type = "log"
min_level = "high"
group_window = "20s"
EOF
  if [ -n "${DEMO_SLACK_WEBHOOK_URL:-}" ]; then
    printf '\n[channels.slack]\ntype = "slack"\nmin_level = "high"\nwebhook_url_env = "DEMO_SLACK_WEBHOOK_URL"\n'
  fi
  if [ -n "${DEMO_WEBHOOK_URL:-}" ]; then
    printf '\n[channels.webhook]\ntype = "webhook"\nmin_level = "high"\nurl_env = "DEMO_WEBHOOK_URL"\nsecret_env = "DEMO_WEBHOOK_SECRET"\n'
  fi
  if [ -n "${DEMO_SMTP_HOST:-}" ]; then
    printf '\n[channels.email]\ntype = "email"\nmin_level = "critical"\nhost = "%s"\nport = %s\ntls = "%s"\nfrom = "%s"\nto = ["%s"]\n' \
      "$DEMO_SMTP_HOST" "${DEMO_SMTP_PORT:-587}" "${DEMO_SMTP_TLS:-starttls}" "${DEMO_EMAIL_FROM:-pg_fraud@localhost}" \
      "${DEMO_EMAIL_TO:-oncall@localhost}"
    if [ -n "${DEMO_SMTP_USER:-}" ]; then
      printf 'username = "%s"\npassword_env = "DEMO_SMTP_PASSWORD"\n' "$DEMO_SMTP_USER"
    fi
  fi
} > "$demo/alerter.toml"
export ALERTER_DATABASE_URL="postgres://postgres@127.0.0.1:$port/demo"
"$alerter_bin" --config "$demo/alerter.toml" check-config > "$demo/alerter.check" 
"$alerter_bin" --config "$demo/alerter.toml" run > "$demo/alerter.out" 2> "$demo/alerter.err" &
echo $! > "$demo/alerter.pid"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$alerter_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$alerter_port/readyz" >/dev/null || { cat "$demo/alerter.err" >&2; exit 1; }
note "ready: http://127.0.0.1:$alerter_port/metrics  (channels: $(psql -At -c "SELECT string_agg(name, ', ') FROM fraud.channels"))"

say "Scoring the held-back last day in one INSERT ... SELECT (and the same rows into an unwatched twin)"
psql -At <<'SQL'
CREATE TABLE demo.plain_twin (LIKE shop.card_payments INCLUDING DEFAULTS);
CREATE INDEX ON demo.plain_twin (card_token, authorized_at);
DO $$
DECLARE t0 timestamptz; plain double precision; watched double precision; n bigint;
BEGIN
    t0 := clock_timestamp();
    INSERT INTO demo.plain_twin SELECT * FROM demo.last_day ORDER BY authorized_at, payment_id;
    plain := extract(epoch FROM clock_timestamp() - t0);
    t0 := clock_timestamp();
    INSERT INTO shop.card_payments SELECT * FROM demo.last_day ORDER BY authorized_at, payment_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    watched := extract(epoch FROM clock_timestamp() - t0);
    INSERT INTO demo.metrics VALUES ('bulk_rows', n), ('bulk_plain_s', plain), ('bulk_watched_s', watched);
END $$;
SELECT format('  %s rows: %s ms without pg_fraud, %s ms scored (%s µs per row for features, rules, two models, alerts and the log)',
              (SELECT value FROM demo.metrics WHERE name = 'bulk_rows'),
              round((SELECT value FROM demo.metrics WHERE name = 'bulk_plain_s')::numeric * 1000),
              round((SELECT value FROM demo.metrics WHERE name = 'bulk_watched_s')::numeric * 1000),
              round(((SELECT value FROM demo.metrics WHERE name = 'bulk_watched_s')
                     - (SELECT value FROM demo.metrics WHERE name = 'bulk_plain_s'))::numeric * 1e6
                    / (SELECT value FROM demo.metrics WHERE name = 'bulk_rows')::numeric, 1));
SQL
psql -At -c "SELECT '  alerts raised: ' || coalesce(string_agg(level || ' ' || n, ', ' ORDER BY level DESC), 'none')
               FROM (SELECT level, count(*) n FROM fraud.alerts GROUP BY level) a"
psql -c "INSERT INTO demo.metrics VALUES ('live_from_id', (SELECT max(payment_id) FROM shop.card_payments))"

say "Streaming live payments for ${LIVE_SECONDS}s at ${RATE}/s (fraud mixed in); alerts as the alerter delivers them:"
tail -n 0 -f "$demo/alerter.out" &
tail_pid=$!
seed=(); [ -n "${DEMO_SEED:-}" ] && seed=(--seed "$DEMO_SEED")
"$py" scripts/demo/generate.py stream --customers "$CUSTOMERS" --seconds "$LIVE_SECONDS" --rate "$RATE" \
  --dsn "host=127.0.0.1 port=$port user=postgres dbname=demo" --quiet "${seed[@]}"
sleep 3  # let the alerter deliver the last ones
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true

say "Summary"
psql <<'SQL'
\pset footer off
WITH scored AS (
    SELECT p.payment_id, p.risk_level, p.risk_score, t.fraud_pattern,
           p.payment_id > (SELECT value FROM demo.metrics WHERE name = 'live_from_id') AS live
      FROM shop.card_payments p LEFT JOIN demo.truth t USING (payment_id)
     WHERE p.risk_level IS NOT NULL
)
SELECT CASE WHEN live THEN 'live stream' ELSE 'held-back day' END AS "rows scored on insert",
       count(*) AS rows,
       count(*) FILTER (WHERE risk_level IN ('high', 'critical')) AS alerted,
       count(*) FILTER (WHERE fraud_pattern IS NOT NULL) AS fraud,
       round(count(*) FILTER (WHERE risk_level IN ('high', 'critical') AND fraud_pattern IS NOT NULL)::numeric
             / nullif(count(*) FILTER (WHERE risk_level IN ('high', 'critical')), 0), 3) AS precision,
       round(count(*) FILTER (WHERE risk_level IN ('high', 'critical') AND fraud_pattern IS NOT NULL)::numeric
             / nullif(count(*) FILTER (WHERE fraud_pattern IS NOT NULL), 0), 3) AS recall
  FROM scored GROUP BY live ORDER BY live;

SELECT t.fraud_pattern AS pattern, count(*) AS fraud_rows,
       count(*) FILTER (WHERE p.risk_level IN ('high', 'critical')) AS alerted,
       round(count(*) FILTER (WHERE p.risk_level IN ('high', 'critical'))::numeric / count(*), 3) AS detection_rate,
       round(avg(p.risk_score)::numeric, 3) AS mean_score
  FROM demo.truth t JOIN shop.card_payments p USING (payment_id)
 WHERE p.risk_level IS NOT NULL
 GROUP BY 1 ORDER BY detection_rate DESC;

SELECT level, count(*) AS alerts, sum(repeats) AS folded_repeats FROM fraud.alerts GROUP BY level ORDER BY level DESC;

SELECT channel, pending, sending, failed, dead, delivered_24h AS delivered,
       round(avg_latency_seconds_24h::numeric, 3) AS avg_latency_s
  FROM fraud.delivery_health;

-- Each model's logged outputs on the rows scored here, against the generator's truth.
SELECT m.name, m.version, m.kind, round(m.validation_auc::numeric, 3) AS validation_auc,
       round(m.validation_ap::numeric, 3) AS validation_ap, count(*) AS rows_scored,
       round((fraud.classification_metrics(array_agg((s.model_outputs->>(m.name || '@' || m.version))::float8),
                                           array_agg(t.payment_id IS NOT NULL))->>'auc')::numeric, 3) AS auc_vs_truth
  FROM fraud.model_performance m
  JOIN fraud.scores s ON s.model_outputs ? (m.name || '@' || m.version)
  LEFT JOIN demo.truth t ON t.payment_id::text = s.row_key
 WHERE m.active
 GROUP BY 1, 2, 3, 4, 5;
SQL

elapsed=$(( $(date +%s) - started ))
if [ "${DEMO_KEEP:-1}" = 0 ]; then
  stop_all
  say "Done in ${elapsed}s; everything it started is stopped (scripts/demo.sh clean removes $demo)."
else
  kill "$(cat "$demo/alerter.pid")" 2>/dev/null || true
  rm -f "$demo/alerter.pid"
  say "Done in ${elapsed}s. The alerter is stopped; the demo database is still up for you:"
  cat <<EOF
  psql "postgres://postgres@127.0.0.1:$port/demo"

  Try:
    SELECT payment_id, card_token, amount_cents, risk_level, risk_score FROM shop.card_payments
     WHERE risk_level = 'critical' ORDER BY payment_id DESC LIMIT 5;
    SELECT fraud_explain(p) FROM shop.card_payments p WHERE risk_level = 'critical' ORDER BY payment_id DESC LIMIT 1;
    SELECT velocity('card_000042', '24 hours'), anomaly_zscore('card_000042', 250);
    SELECT * FROM fraud.rule_performance ORDER BY hits DESC;
    SELECT * FROM fraud.model_performance;
    SELECT * FROM fraud.alerts ORDER BY id DESC LIMIT 5;

  Logs: $demo/alerter.out (delivered alerts), $demo/alerter.err, $demo/pg/server.log
  Stop: scripts/demo.sh stop      Remove: scripts/demo.sh clean
EOF
fi
