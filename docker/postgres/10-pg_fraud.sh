#!/usr/bin/env bash
# First start of an empty data directory (the official image runs /docker-entrypoint-initdb.d/*
# once, against a temporary server reachable only over the Unix socket):
#
#   1. CREATE EXTENSION pg_cron, pg_fraud in $POSTGRES_DB (which must be cron.database_name);
#   2. schedule fraud.maintenance() and fraud.retrain() (sql/cron.sql);
#   3. login roles for the services, each only when its password variable is set:
#        alerter   <- ALERTER_DB_PASSWORD   member of fraud_alerter
#        grafana   <- GRAFANA_DB_PASSWORD   member of fraud_analyst, read-only, 30 s statement timeout
#        metabase  <- METABASE_DB_PASSWORD  member of fraud_analyst (read-only in $POSTGRES_DB) and
#                                           owner of database `metabase`, Metabase's own storage
#
# Passwords are read from the environment inside psql (\getenv), so they never appear on a
# command line. Safe to run again by hand to rotate passwords:
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-pg_fraud.sh
set -euo pipefail

db=${POSTGRES_DB:-fraud}
user=${POSTGRES_USER:-postgres}
run_psql() { psql -X -v ON_ERROR_STOP=1 --no-password --username "$user" "$@"; }

echo "pg_fraud: installing extensions in database \"$db\""
run_psql --dbname "$db" <<'SQL'
DO $$
BEGIN
    IF current_setting('cron.database_name', true) IS DISTINCT FROM current_database() THEN
        RAISE EXCEPTION 'cron.database_name is %, but POSTGRES_DB is %: pg_cron and pg_fraud must share a database',
            coalesce(current_setting('cron.database_name', true), '(unset: is pg_cron in shared_preload_libraries?)'),
            current_database()
            USING HINT = 'start postgres with -c cron.database_name=<POSTGRES_DB>';
    END IF;
END
$$;
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION IF NOT EXISTS pg_fraud;
SQL

echo "pg_fraud: scheduling maintenance and retraining (pg_cron)"
run_psql --dbname "$db" -q -f "${PG_FRAUD_CRON_SQL:-/usr/share/pg_fraud/cron.sql}" >/dev/null

# login_role NAME PASSWORD_VARIABLE GROUP_ROLE: creates the role or resets its password.
login_role() {
    local name=$1 var=$2 group=$3
    echo "pg_fraud: login role \"$name\" (member of $group)"
    run_psql --dbname "$db" -q -v name="$name" -v group="$group" -v var="$var" <<'SQL'
\getenv pw :var
SELECT format('CREATE ROLE %I LOGIN', :'name') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'name', :'pw') \gexec
SELECT format('GRANT %I TO %I', :'group', :'name') \gexec
SQL
}
skip() { echo "pg_fraud: $1 is not set: no login role \"$2\""; }

if [ -n "${ALERTER_DB_PASSWORD:-}" ]; then
    login_role alerter ALERTER_DB_PASSWORD fraud_alerter
else
    skip ALERTER_DB_PASSWORD alerter
fi

if [ -n "${GRAFANA_DB_PASSWORD:-}" ]; then
    login_role grafana GRAFANA_DB_PASSWORD fraud_analyst
    run_psql --dbname "$db" -q <<'SQL'
ALTER ROLE grafana SET default_transaction_read_only = on;
ALTER ROLE grafana SET statement_timeout = '30s';
SQL
else
    skip GRAFANA_DB_PASSWORD grafana
fi

if [ -n "${METABASE_DB_PASSWORD:-}" ]; then
    login_role metabase METABASE_DB_PASSWORD fraud_analyst
    run_psql --dbname "$db" -q -v db="$db" <<'SQL'
SELECT 'CREATE DATABASE metabase OWNER metabase' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'metabase') \gexec
SELECT format('ALTER ROLE metabase IN DATABASE %I SET default_transaction_read_only = on', :'db') \gexec
SELECT format('ALTER ROLE metabase IN DATABASE %I SET statement_timeout = %L', :'db', '60s') \gexec
SQL
else
    skip METABASE_DB_PASSWORD metabase
fi

echo "pg_fraud: ready (SELECT fraud.version(); SELECT * FROM cron.job;)"
