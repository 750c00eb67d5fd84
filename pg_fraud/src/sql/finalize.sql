-- pg_fraud finalize: triggers on the configuration tables, views, dump registration, grants.

CREATE TRIGGER validate_rule BEFORE INSERT OR UPDATE ON fraud.rules
    FOR EACH ROW EXECUTE FUNCTION fraud._validate_rule();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud.rules
    FOR EACH STATEMENT EXECUTE FUNCTION fraud._config_changed();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud.watches
    FOR EACH STATEMENT EXECUTE FUNCTION fraud._config_changed();

-- When a watched table is dropped, forget its watch and profiles. SECURITY DEFINER (the one
-- in pg_fraud, reviewed): the user dropping their table need not have rights on fraud.*;
-- the function only deletes configuration rows of the objects being dropped.
CREATE FUNCTION fraud._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.to_regclass('fraud.watches') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM fraud.profile_shards p USING fraud.watches w, pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE p.watch_id = w.id AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND w.relid::pg_catalog.oid = d.objid;
    DELETE FROM fraud.watches w USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND w.relid::pg_catalog.oid = d.objid;
END
$$;
REVOKE ALL ON FUNCTION fraud._on_sql_drop() FROM PUBLIC;
CREATE EVENT TRIGGER pg_fraud_sql_drop ON sql_drop EXECUTE FUNCTION fraud._on_sql_drop();

CREATE VIEW fraud.features AS SELECT * FROM fraud._features();
COMMENT ON VIEW fraud.features IS 'Every feature rules and models can use.';

CREATE VIEW fraud.profiles AS
SELECT w.relid AS source_table,
       s.kind,
       s.key,
       (s.j OPERATOR(pg_catalog.->>) 'tx_count')::bigint AS tx_count,
       (s.j OPERATOR(pg_catalog.->>) 'first_seen')::timestamptz AS first_seen,
       (s.j OPERATOR(pg_catalog.->>) 'last_seen')::timestamptz AS last_seen,
       (s.j OPERATOR(pg_catalog.->>) 'amount_mean')::double precision AS amount_mean,
       (s.j OPERATOR(pg_catalog.->>) 'amount_stddev')::double precision AS amount_stddev,
       (s.j OPERATOR(pg_catalog.->>) 'amount_max')::double precision AS amount_max,
       (s.j OPERATOR(pg_catalog.->>) 'known_devices')::integer AS known_devices,
       (s.j OPERATOR(pg_catalog.->>) 'known_merchants')::integer AS known_merchants,
       (s.j OPERATOR(pg_catalog.->>) 'known_countries')::integer AS known_countries,
       s.shards,
       s.j AS detail
  FROM (SELECT watch_id, kind, key, pg_catalog.count(*) AS shards,
               fraud._state_json(pg_catalog.array_agg(state)) AS j
          FROM fraud.profile_shards GROUP BY watch_id, kind, key) s
  JOIN fraud.watches w ON w.id = s.watch_id;
COMMENT ON VIEW fraud.profiles IS 'Per-key profiles (count, mean, M2, last time and place, hour histogram, known devices...), merged from their shards.';

CREATE VIEW fraud.scoring_error_summary AS
SELECT source_table, message, pg_catalog.sum(rows) AS rows, pg_catalog.min(at) AS first_at, pg_catalog.max(at) AS last_at
  FROM fraud.scoring_errors GROUP BY source_table, message;

-- pg_dump: configuration and history are user data.
SELECT pg_catalog.pg_extension_config_dump('fraud.watches', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.rules', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.labels', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.channels', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.alert_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.profile_shards', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.scoring_errors', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.alerts', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.watches', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.scoring_errors', 'id'), '');

-- Privileges: least privilege per role (see README "Roles").
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fraud FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.fraud_score(record), @extschema@.fraud_explain(record),
    @extschema@.velocity(text, interval, timestamptz, regclass, text),
    @extschema@.velocity_amount(text, interval, timestamptz, regclass, text),
    @extschema@.anomaly_zscore(text, double precision, regclass, boolean) FROM PUBLIC;

GRANT USAGE ON SCHEMA fraud TO fraud_app, fraud_analyst, fraud_alerter, fraud_admin;
GRANT fraud_analyst TO fraud_admin;

GRANT EXECUTE ON FUNCTION @extschema@.fraud_score(record), @extschema@.fraud_explain(record),
    @extschema@.velocity(text, interval, timestamptz, regclass, text),
    @extschema@.velocity_amount(text, interval, timestamptz, regclass, text),
    @extschema@.anomaly_zscore(text, double precision, regclass, boolean)
    TO fraud_app, fraud_analyst, fraud_admin;
GRANT EXECUTE ON FUNCTION fraud.version(), fraud._features() TO fraud_app, fraud_analyst, fraud_alerter, fraud_admin;
GRANT SELECT ON fraud.features TO fraud_app, fraud_analyst, fraud_alerter, fraud_admin;

GRANT SELECT ON fraud.alerts, fraud.alert_deliveries, fraud.channels, fraud.rules, fraud.watches,
    fraud.labels, fraud.scoring_errors, fraud.scoring_error_summary, fraud.profiles TO fraud_analyst;
GRANT INSERT, UPDATE, DELETE ON fraud.labels TO fraud_analyst;
GRANT EXECUTE ON FUNCTION fraud.label(regclass, text, boolean, text), fraud.profile(text, regclass, text),
    fraud._state_json(bytea[]) TO fraud_analyst;

GRANT SELECT ON fraud.alerts, fraud.channels TO fraud_alerter;
GRANT SELECT, UPDATE ON fraud.alert_deliveries TO fraud_alerter;
GRANT INSERT, UPDATE ON fraud.channels TO fraud_alerter;

GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON fraud.rules, fraud.watches, fraud.channels,
    fraud.labels, fraud.scoring_errors TO fraud_admin;
GRANT SELECT, UPDATE, DELETE ON fraud.alerts, fraud.alert_deliveries TO fraud_admin;
GRANT SELECT, DELETE ON fraud.profile_shards TO fraud_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fraud TO fraud_admin;
REVOKE EXECUTE ON FUNCTION fraud._on_sql_drop() FROM fraud_admin;
