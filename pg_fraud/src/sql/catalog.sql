-- Configuration and state tables. Internal writes (profiles, alerts, errors) are made by the
-- scoring trigger as the extension owner, so application roles need no rights on them.

-- One row per watched application table: which of its columns mean what.
CREATE TABLE fraud.watches (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid            regclass NOT NULL UNIQUE,
    entity_column    name NOT NULL,
    amount_column    name NOT NULL,
    ts_column        name NOT NULL,
    key_column       name,
    merchant_column  name,
    device_column    name,
    ip_column        name,
    country_column   name,
    lat_column       name,
    lon_column       name,
    lat2_column      name,
    lon2_column      name,
    channel_column   name,
    amount_scale     double precision NOT NULL DEFAULT 1 CHECK (amount_scale > 0 AND amount_scale < 'Infinity'),
    score_column     name,
    level_column     name,
    reasons_column   name,
    created_index    name,
    created_columns  name[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((lat_column IS NULL) = (lon_column IS NULL)),
    CHECK ((lat2_column IS NULL) = (lon2_column IS NULL))
);
COMMENT ON TABLE fraud.watches IS 'Watched application tables and the mapping of their own columns (see fraud.watch).';

-- Rules: named expressions over features (SELECT * FROM fraud.features), validated on write.
CREATE TABLE fraud.rules (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    expression   text NOT NULL,
    weight       double precision NOT NULL DEFAULT 0.5 CHECK (weight >= 0 AND weight <= 1),
    action       text NOT NULL DEFAULT 'score' CHECK (action IN ('score', 'review', 'block', 'allow')),
    enabled      boolean NOT NULL DEFAULT true,
    source_table regclass,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE fraud.rules IS
    'Scoring rules. weight = signal strength in [0,1] when the rule fires; action score|review|block|allow; source_table NULL = every watched table.';

-- Per-key profile state, one row per (key, writing shard); read by merging the shards.
CREATE TABLE fraud.profile_shards (
    watch_id  integer NOT NULL,
    -- entity | merchant | device | ip; written only by the extension (no CHECK: a constraint
    -- is re-prepared by every statement that writes the table, and this one writes per insert)
    kind      text NOT NULL,
    key       text NOT NULL,
    shard     smallint NOT NULL,
    state     bytea NOT NULL,
    PRIMARY KEY (watch_id, kind, key, shard)
) WITH (fillfactor = 80);
COMMENT ON TABLE fraud.profile_shards IS
    'Raw profile state (binary); read it through fraud.profiles or fraud.profile().';

-- Scoring errors, aggregated per statement (on_error = open keeps the rows and logs here).
CREATE TABLE fraud.scoring_errors (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    source_table text NOT NULL,
    message      text NOT NULL,
    rows         bigint NOT NULL DEFAULT 1
);
CREATE INDEX scoring_errors_at_idx ON fraud.scoring_errors (at);
COMMENT ON TABLE fraud.scoring_errors IS 'Rows inserted unscored because scoring failed (pg_fraud.on_error = open).';

-- Analyst feedback: is this row fraud?
CREATE TABLE fraud.labels (
    source_table regclass NOT NULL,
    row_key      text NOT NULL,
    is_fraud     boolean NOT NULL,
    labelled_at  timestamptz NOT NULL DEFAULT now(),
    labelled_by  name NOT NULL DEFAULT current_user,
    note         text,
    PRIMARY KEY (source_table, row_key)
);
COMMENT ON TABLE fraud.labels IS 'Analyst feedback; write it with fraud.label(table, row_key, is_fraud).';
