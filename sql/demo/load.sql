-- Loads the generator's CSV (psql variable :csv) into shop.card_payments in time order,
-- keeping the ground truth aside. Run with: psql -v csv=/path/history.csv -f load.sql
CREATE TEMP TABLE staging (
    card_token text, amount_cents bigint, currency char(3), authorized_at timestamptz, terminal_id text,
    merchant_category text, device_fingerprint text, client_ip inet, ip_country char(2),
    geo_lat double precision, geo_lon double precision, ship_lat double precision, ship_lon double precision,
    entry_mode text, fraud_pattern text, n bigserial
);
\set copy '\\copy staging (card_token, amount_cents, currency, authorized_at, terminal_id, merchant_category, device_fingerprint, client_ip, ip_country, geo_lat, geo_lon, ship_lat, ship_lon, entry_mode, fraud_pattern) FROM ' :'csv' ' WITH (FORMAT csv)'
:copy
WITH ins AS (
    INSERT INTO shop.card_payments (card_token, amount_cents, currency, authorized_at, terminal_id, merchant_category,
                                    device_fingerprint, client_ip, ip_country, geo_lat, geo_lon, ship_lat, ship_lon, entry_mode)
    SELECT card_token, amount_cents, currency, authorized_at, terminal_id, merchant_category, device_fingerprint,
           client_ip, ip_country, geo_lat, geo_lon, ship_lat, ship_lon, entry_mode
      FROM staging ORDER BY authorized_at, n
    RETURNING payment_id, card_token, authorized_at, amount_cents, terminal_id
)
INSERT INTO demo.truth (payment_id, fraud_pattern)
SELECT ins.payment_id, s.fraud_pattern
  FROM ins JOIN staging s USING (card_token, authorized_at, amount_cents, terminal_id)
 WHERE s.fraud_pattern IS NOT NULL AND s.fraud_pattern <> '';
