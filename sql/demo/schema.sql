-- The demo's application: a payments table that knows nothing about pg_fraud (its own
-- column names, amounts in cents), plus the generator's ground truth for the summary.

CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE shop.card_payments (
    payment_id         bigserial PRIMARY KEY,
    card_token         text NOT NULL,
    amount_cents       bigint NOT NULL,
    currency           char(3) NOT NULL DEFAULT 'EUR',
    authorized_at      timestamptz NOT NULL DEFAULT now(),
    terminal_id        text,
    merchant_category  text,
    device_fingerprint text,
    client_ip          inet,
    ip_country         char(2),
    geo_lat            double precision,
    geo_lon            double precision,
    ship_lat           double precision,
    ship_lon           double precision,
    entry_mode         text
);

-- Ground truth from the generator (the application would never have this): which payments
-- were injected fraud, and which pattern.
CREATE SCHEMA IF NOT EXISTS demo;
CREATE TABLE demo.truth (
    payment_id    bigint PRIMARY KEY,
    fraud_pattern text NOT NULL
);
