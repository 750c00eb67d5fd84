-- pg_fraud bootstrap: the schema and the four roles (created once per cluster, kept on DROP
-- EXTENSION because other databases may use them). Everything is schema-qualified.

CREATE SCHEMA IF NOT EXISTS fraud;
COMMENT ON SCHEMA fraud IS 'pg_fraud: fraud scoring inside PostgreSQL';

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['fraud_app', 'fraud_analyst', 'fraud_alerter', 'fraud_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$roles$;
