-- Models: trained in the database on point-in-time features, versioned per name, at most one
-- active version per name. Every active model whose source_table is the row's table adds one
-- signal to the score (see fraud_explain(t) -> 'models').

CREATE TABLE fraud.models (
    name             text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    version          integer NOT NULL CHECK (version > 0),
    kind             text NOT NULL CHECK (kind IN ('isolation_forest', 'classifier')),
    source_table     regclass NOT NULL,
    features         text[] NOT NULL,
    params           jsonb NOT NULL,
    metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
    training_rows    bigint NOT NULL CHECK (training_rows > 0),
    training_seconds double precision NOT NULL,
    trained_at       timestamptz NOT NULL DEFAULT now(),
    trained_by       name NOT NULL DEFAULT current_user,
    weight           double precision NOT NULL CHECK (weight >= 0 AND weight <= 1),
    signal_from      double precision NOT NULL,
    signal_to        double precision NOT NULL,
    model            bytea NOT NULL,
    active           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (name, version),
    CHECK (signal_from >= 0 AND signal_to <= 1 AND signal_from < signal_to)
);
CREATE UNIQUE INDEX models_one_active_idx ON fraud.models (name) WHERE active;
COMMENT ON TABLE fraud.models IS
    'Trained models. signal = weight * clamp((output - signal_from) / (signal_to - signal_from), 0, 1).';
COMMENT ON COLUMN fraud.models.params IS 'The training call''s arguments; fraud.retrain() reuses them.';
COMMENT ON COLUMN fraud.models.metrics IS
    'Validation on the most recent rows (time split): auc, average_precision, precision/recall at the alert threshold.';
COMMENT ON COLUMN fraud.models.model IS 'The serialized model (versioned, checksummed binary format).';

-- Every deploy, rollback and undeploy, newest last: the audit trail fraud.rollback() walks back.
CREATE TABLE fraud.model_deployments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    version     integer,
    action      text NOT NULL CHECK (action IN ('deploy', 'rollback', 'undeploy')),
    at          timestamptz NOT NULL DEFAULT now(),
    by_role     name NOT NULL DEFAULT current_user,
    reason      text NOT NULL
);
CREATE INDEX model_deployments_name_idx ON fraud.model_deployments (name, id);
COMMENT ON TABLE fraud.model_deployments IS 'Deployment history: version NULL means undeployed.';

-- The decision log: one row per scored insert, written once per statement by the trigger
-- (pg_fraud.log_scores). The quality views and dashboards read it; fraud.maintenance() trims it.
CREATE TABLE fraud.scores (
    source_table  regclass NOT NULL,
    row_key       text,
    entity        text,
    tx_time       timestamptz NOT NULL,
    scored_at     timestamptz NOT NULL DEFAULT now(),
    score         double precision NOT NULL,
    level         fraud.risk_level NOT NULL,
    action        text NOT NULL,
    rules         text[],
    model_outputs jsonb
);
-- Only a BRIN index: the log is written for every scored row and read in bulk (the views
-- hash-join it to the much smaller fraud.labels); a btree on row_key cost 15% of a bulk insert.
CREATE INDEX scores_scored_at_idx ON fraud.scores USING brin (scored_at);
COMMENT ON TABLE fraud.scores IS
    'Decision log: score, level, action, rules fired and model outputs ({"name@version": output}) of every scored insert.';
