-- pg_fraud's scheduled jobs, run by pg_cron.
--
-- Needs shared_preload_libraries = 'pg_cron' and CREATE EXTENSION pg_cron in the database
-- named by cron.database_name (pg_fraud must be installed in that database too). Run it as
-- the role the jobs should run as (a superuser or the fraud_admin owner):
--
--     psql -d yourdb -f sql/cron.sql
--
-- Safe to run again: cron.schedule() updates a job with the same name in place.
-- Times are in the server's cron.timezone (GMT unless set).

-- Nightly: merge profile shards and forget keys idle for 180 days, drop finished alerts
-- older than 90 days, trim the decision log and the error log to 30 days.
SELECT cron.schedule('pg_fraud_maintenance', '17 3 * * *', $$SELECT fraud.maintenance()$$);

-- Weekly: retrain every deployed model on the last 90 days; a new version goes live only if
-- its validation metric is not worse than the active one (see fraud.model_deployments).
SELECT cron.schedule('pg_fraud_retrain', '42 4 * * 0', $$SELECT * FROM fraud.retrain()$$);
