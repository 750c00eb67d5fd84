-- pg_fraud finalize: triggers on the configuration tables, views, dump registration, grants.

CREATE TRIGGER validate_rule BEFORE INSERT OR UPDATE ON fraud.rules
    FOR EACH ROW EXECUTE FUNCTION fraud._validate_rule();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud.rules
    FOR EACH STATEMENT EXECUTE FUNCTION fraud._config_changed();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud.watches
    FOR EACH STATEMENT EXECUTE FUNCTION fraud._config_changed();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud.models
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
    -- Models of a dropped table stop scoring; their versions stay for the record.
    UPDATE fraud.models m SET active = false FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE m.active AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND m.source_table::pg_catalog.oid = d.objid;
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

-- Dashboard views (Grafana / Metabase panels are plain SELECTs over these).

CREATE VIEW fraud.alerts_hourly AS
SELECT pg_catalog.date_trunc('hour', created_at) AS hour, level,
       pg_catalog.count(*) AS alerts, pg_catalog.sum(repeats) AS repeats
  FROM fraud.alerts
 GROUP BY 1, 2;
COMMENT ON VIEW fraud.alerts_hourly IS 'Alerts per hour and level (repeats = further alerts folded into them).';

CREATE VIEW fraud.score_distribution AS
SELECT b AS bucket, (b - 1) / 20.0 AS score_from, b / 20.0 AS score_to, n AS rows,
       n::double precision / pg_catalog.sum(n) OVER () AS share
  FROM (SELECT LEAST(pg_catalog.width_bucket(score, 0, 1, 20), 20) AS b, pg_catalog.count(*) AS n
          FROM fraud.scores GROUP BY 1) s;
COMMENT ON VIEW fraud.score_distribution IS 'Logged scores in 20 buckets of 0.05.';

CREATE VIEW fraud.top_risky_entities AS
SELECT source_table, entity, pg_catalog.count(*) AS alerts, pg_catalog.sum(repeats) AS repeats,
       pg_catalog.max(score) AS max_score, pg_catalog.max(level) AS worst_level,
       pg_catalog.min(created_at) AS first_alert_at, pg_catalog.max(created_at) AS last_alert_at
  FROM fraud.alerts
 GROUP BY source_table, entity;
COMMENT ON VIEW fraud.top_risky_entities IS 'Entities by alerts raised (ORDER BY alerts DESC for the riskiest).';

CREATE VIEW fraud.rule_performance AS
WITH scored AS (
    SELECT s.rules, COALESCE(l.is_fraud, false) AS is_fraud, l.is_fraud IS NOT NULL AS labelled
      FROM fraud.scores s
      LEFT JOIN fraud.labels l ON l.source_table = s.source_table AND l.row_key = s.row_key
), totals AS (
    SELECT pg_catalog.count(*) AS rows, pg_catalog.count(*) FILTER (WHERE is_fraud) AS fraud_rows FROM scored
), hits AS (
    SELECT r AS rule, pg_catalog.count(*) AS hits, pg_catalog.count(*) FILTER (WHERE is_fraud) AS fraud_hits,
           pg_catalog.count(*) FILTER (WHERE labelled) AS labelled_hits
      FROM scored, pg_catalog.unnest(rules) AS r
     GROUP BY r
)
SELECT ru.name AS rule, ru.expression, ru.action, ru.weight, ru.enabled,
       t.rows AS rows_scored, COALESCE(h.hits, 0) AS hits,
       COALESCE(h.hits, 0)::double precision / NULLIF(t.rows, 0) AS hit_rate,
       COALESCE(h.labelled_hits, 0) AS labelled_hits, COALESCE(h.fraud_hits, 0) AS fraud_hits,
       h.fraud_hits::double precision / NULLIF(h.hits, 0) AS precision,
       COALESCE(h.fraud_hits, 0)::double precision / NULLIF(t.fraud_rows, 0) AS recall
  FROM fraud.rules ru
 CROSS JOIN totals t
  LEFT JOIN hits h ON h.rule = ru.name;
COMMENT ON VIEW fraud.rule_performance IS
    'Per rule, over the decision log: hits, hit rate, and precision/recall against fraud.labels (unlabelled rows count as genuine).';

CREATE VIEW fraud.model_performance AS
WITH live AS (
    SELECT pg_catalog.split_part(o.k, '@', 1) AS name, pg_catalog.split_part(o.k, '@', 2)::integer AS version,
           pg_catalog.array_agg(o.v::double precision) AS outputs,
           pg_catalog.array_agg(COALESCE(l.is_fraud, false)) AS labels,
           pg_catalog.count(*) AS rows, pg_catalog.count(l.is_fraud) AS labelled
      FROM fraud.scores s
     CROSS JOIN LATERAL pg_catalog.jsonb_each_text(s.model_outputs) AS o(k, v)
      LEFT JOIN fraud.labels l ON l.source_table = s.source_table AND l.row_key = s.row_key
     WHERE s.model_outputs IS NOT NULL
     GROUP BY 1, 2
)
SELECT m.name, m.version, m.kind, m.active, m.source_table, m.trained_at, m.training_rows,
       (m.metrics OPERATOR(pg_catalog.->>) 'auc')::double precision AS validation_auc,
       (m.metrics OPERATOR(pg_catalog.->>) 'average_precision')::double precision AS validation_ap,
       (m.metrics OPERATOR(pg_catalog.->>) 'precision')::double precision AS validation_precision,
       (m.metrics OPERATOR(pg_catalog.->>) 'recall')::double precision AS validation_recall,
       COALESCE(live.rows, 0) AS live_rows, COALESCE(live.labelled, 0) AS live_labelled,
       (x.j OPERATOR(pg_catalog.->>) 'auc')::double precision AS live_auc,
       (x.j OPERATOR(pg_catalog.->>) 'average_precision')::double precision AS live_ap,
       (x.j OPERATOR(pg_catalog.->>) 'precision')::double precision AS live_precision,
       (x.j OPERATOR(pg_catalog.->>) 'recall')::double precision AS live_recall
  FROM fraud.models m
  LEFT JOIN live ON live.name = m.name AND live.version = m.version
  LEFT JOIN LATERAL (
      SELECT fraud.classification_metrics(live.outputs, live.labels,
                 m.signal_from + (m.signal_to - m.signal_from)
                     * CASE WHEN m.weight >= t.alert THEN t.alert / m.weight ELSE t.alert END) AS j
        FROM (SELECT COALESCE(pg_catalog.current_setting('pg_fraud.alert_threshold', true), '0.7')::double precision
                     AS alert) t
       WHERE live.rows IS NOT NULL
  ) x ON true;
COMMENT ON VIEW fraud.model_performance IS
    'Per model version: validation metrics from training, and live metrics of the logged outputs against fraud.labels (unlabelled rows count as genuine; flagged = the model alone reaches the alert threshold, or for a model too light to alert alone, its output reaches the threshold on its own scale).';

CREATE VIEW fraud.delivery_health AS
SELECT c.name AS channel, c.enabled, c.min_level,
       pg_catalog.count(d.alert_id) FILTER (WHERE d.status = 'pending') AS pending,
       pg_catalog.count(d.alert_id) FILTER (WHERE d.status = 'sending') AS sending,
       pg_catalog.count(d.alert_id) FILTER (WHERE d.status = 'failed') AS failed,
       pg_catalog.count(d.alert_id) FILTER (WHERE d.status = 'dead') AS dead,
       pg_catalog.count(d.alert_id) FILTER (WHERE d.status = 'delivered'
                                             AND d.delivered_at > pg_catalog.now() - interval '24 hours') AS delivered_24h,
       pg_catalog.min(d.created_at) FILTER (WHERE d.status IN ('pending', 'sending', 'failed')) AS oldest_undelivered_at,
       pg_catalog.max(d.delivered_at) AS last_delivered_at,
       pg_catalog.avg(EXTRACT(epoch FROM d.delivered_at - a.created_at))
           FILTER (WHERE d.delivered_at > pg_catalog.now() - interval '24 hours') AS avg_latency_seconds_24h,
       (pg_catalog.array_agg(d.last_error ORDER BY d.updated_at DESC) FILTER (WHERE d.last_error IS NOT NULL))[1] AS last_error,
       (pg_catalog.array_agg(d.last_error ORDER BY d.updated_at DESC) FILTER (WHERE d.status = 'dead'))[1] AS last_dead_error
  FROM fraud.channels c
  LEFT JOIN fraud.alert_deliveries d ON d.channel = c.name
  LEFT JOIN fraud.alerts a ON a.id = d.alert_id
 GROUP BY c.name, c.enabled, c.min_level;
COMMENT ON VIEW fraud.delivery_health IS
    'Per channel: queue by status, dead letters, latency from alert to delivery, the latest error (of any delivery, and of a dead one).';

-- pg_dump: configuration and history are user data.
SELECT pg_catalog.pg_extension_config_dump('fraud.watches', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.rules', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.labels', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.channels', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.alert_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.profile_shards', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.scoring_errors', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.models', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.model_deployments', '');
SELECT pg_catalog.pg_extension_config_dump('fraud.scores', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.alerts', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.watches', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.scoring_errors', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('fraud.model_deployments', 'id'), '');

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
    fraud.labels, fraud.scoring_errors, fraud.scoring_error_summary, fraud.profiles, fraud.model_deployments,
    fraud.scores, fraud.alerts_hourly, fraud.score_distribution, fraud.top_risky_entities, fraud.rule_performance,
    fraud.model_performance, fraud.delivery_health TO fraud_analyst;
GRANT EXECUTE ON FUNCTION fraud.classification_metrics(double precision[], boolean[], double precision) TO fraud_analyst;
GRANT SELECT (name, version, kind, source_table, features, params, metrics, training_rows, training_seconds,
              trained_at, trained_by, weight, signal_from, signal_to, active) ON fraud.models TO fraud_analyst;
GRANT INSERT, UPDATE, DELETE ON fraud.labels TO fraud_analyst;
GRANT EXECUTE ON FUNCTION fraud.label(regclass, text, boolean, text, timestamptz), fraud.profile(text, regclass, text),
    fraud._state_json(bytea[]) TO fraud_analyst;

GRANT SELECT ON fraud.alerts, fraud.channels, fraud.delivery_health TO fraud_alerter;
GRANT SELECT, UPDATE ON fraud.alert_deliveries TO fraud_alerter;
GRANT INSERT, UPDATE ON fraud.channels TO fraud_alerter;

GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON fraud.rules, fraud.watches, fraud.channels,
    fraud.labels, fraud.scoring_errors, fraud.models TO fraud_admin;
GRANT SELECT, INSERT ON fraud.model_deployments TO fraud_admin;
GRANT SELECT, UPDATE, DELETE ON fraud.alerts, fraud.alert_deliveries, fraud.scores TO fraud_admin;
GRANT SELECT, DELETE ON fraud.profile_shards TO fraud_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fraud TO fraud_admin;
REVOKE EXECUTE ON FUNCTION fraud._on_sql_drop() FROM fraud_admin;
