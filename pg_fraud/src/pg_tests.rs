// `#[pg_test]`s: SQL behaviour inside a real backend (each test runs in a transaction that
// is rolled back). Cross-connection behaviour (NOTIFY on commit, concurrency) is tested
// from outside in `tests/`.

use pgrx::prelude::*;

/// An application table that knows nothing about pg_fraud, with its own column names.
fn payments() {
    Spi::run(
        "CREATE TABLE public.payments (
            payment_id   bigserial PRIMARY KEY,
            card_ref     text,
            amount_eur   numeric,
            created      timestamptz DEFAULT now(),
            shop         text,
            device_fp    text,
            client_ip    inet,
            country_code char(2),
            lat          double precision,
            lng          double precision,
            ship_lat     double precision,
            ship_lng     double precision,
            channel      text
        )",
    )
    .unwrap();
}

fn watch_payments() -> pgrx::JsonB {
    payments();
    Spi::get_one::<pgrx::JsonB>(
        "SELECT fraud.watch('public.payments', entity => 'card_ref', amount => 'amount_eur', ts => 'created',
            merchant => 'shop', device => 'device_fp', ip => 'client_ip', country => 'country_code',
            lat => 'lat', lon => 'lng', lat2 => 'ship_lat', lon2 => 'ship_lng', channel => 'channel',
            risk_columns => true)",
    )
    .unwrap()
    .unwrap()
}

fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Inserts `n` ordinary payments for a card, one a day, at home in Paris.
fn history(card: &str, n: i64) {
    Spi::run(&format!(
        "INSERT INTO payments (card_ref, amount_eur, created, shop, device_fp, client_ip, country_code, lat, lng, channel)
         SELECT '{card}', 20 + (g % 7), now() - make_interval(days => {n} - g) , 'shop_' || (g % 3), 'dev_{card}', '10.0.0.1',
                'FR', 48.85, 2.35, 'pos'
           FROM generate_series(1, {n}) g"
    ))
    .unwrap();
}

#[pg_test]
fn watch_reports_what_it_did() {
    let j = watch_payments().0;
    assert_eq!(j["table"], "public.payments");
    assert_eq!(j["index_created"], true);
    assert_eq!(j["row_key"], "payment_id");
    assert_eq!(j["columns_added"], serde_json::json!(["risk_score", "risk_level", "risk_reasons"]));
    assert!(j["default_rules_installed"].as_i64().unwrap() >= 15);
    let idx = one::<String>("SELECT indexdef FROM pg_indexes WHERE tablename = 'payments' AND indexname <> 'payments_pkey'").unwrap();
    assert!(idx.contains("(card_ref, created)"), "{idx}");
    assert_eq!(one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'payments'::regclass AND tgname LIKE 'zz_pg_fraud_%'"), Some(2));
    // a second watch() updates the mapping and reuses the index
    let again = Spi::get_one::<pgrx::JsonB>("SELECT fraud.watch('payments', entity => 'card_ref', amount => 'amount_eur', ts => 'created')").unwrap().unwrap().0;
    assert_eq!(again["index_created"], false);
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.watches"), Some(1));
}

#[pg_test]
fn velocity_counts_rows_of_the_same_transaction() {
    watch_payments();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) SELECT 'c1', 10, now() - make_interval(mins => g) FROM generate_series(0, 99) g").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) VALUES ('c1', 5, now())").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) VALUES ('c2', 7, now())").unwrap();
    // 100 rows spread over the last 99 minutes, plus one now
    assert_eq!(one::<i64>("SELECT velocity('c1', '1 hour')"), Some(one::<i64>("SELECT count(*) FROM payments WHERE card_ref = 'c1' AND created > now() - interval '1 hour' - interval '1 minute'").unwrap()));
    assert_eq!(one::<i64>("SELECT velocity('c1', '2 days')"), Some(101));
    assert_eq!(one::<i64>("SELECT velocity('c2', '1 minute')"), Some(1));
    assert_eq!(one::<i64>("SELECT velocity('nobody', '1 hour')"), Some(0));
    assert_eq!(one::<f64>("SELECT velocity_amount('c1', '2 days')"), Some(1005.0));
    assert_eq!(one::<i64>("SELECT velocity('c1', '1 hour', now() - interval '10 days')"), Some(0));
    assert_eq!(one::<i64>("SELECT velocity('c1', '2 days', source => 'payments')"), Some(101));
    assert_eq!(one::<i64>("SELECT velocity('shop_x', '1 hour', kind => 'merchant')"), Some(0));
}

#[pg_test]
fn velocity_beyond_the_sketch_is_exact_from_the_table() {
    watch_payments();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) SELECT 'c9', 1, now() - make_interval(days => 40) + make_interval(secs => g) FROM generate_series(1, 500) g").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) VALUES ('c9', 1, now())").unwrap();
    // 40 days ago is outside every bucket level: answered from the (card_ref, created) index
    let exact = one::<i64>("SELECT count(*) FROM payments WHERE card_ref = 'c9' AND created > now() - interval '40 days' AND created <= now() - interval '40 days' + interval '250 seconds'");
    assert_eq!(one::<i64>("SELECT velocity('c9', '250 seconds', now() - interval '40 days' + interval '250 seconds')"), exact);
    assert_eq!(exact, Some(250));
    assert_eq!(one::<i64>("SELECT velocity('c9', '30 days')"), Some(1));
    assert_eq!(one::<i64>("SELECT velocity('c9', '60 days')"), Some(501));
}

#[pg_test(error = "pg_fraud: window must be positive (got -3600000000 microseconds)")]
fn velocity_rejects_a_negative_window() {
    watch_payments();
    Spi::run("SELECT velocity('c1', '-1 hour')").unwrap();
}

#[pg_test(error = "pg_fraud: window must be positive (got 0 microseconds)")]
fn velocity_rejects_an_empty_window() {
    watch_payments();
    Spi::run("SELECT velocity('c1', '0')").unwrap();
}

#[pg_test(error = "pg_fraud: at must be a finite timestamp")]
fn velocity_rejects_infinite_at() {
    watch_payments();
    Spi::run("SELECT velocity('c1', '1 hour', 'infinity')").unwrap();
}

#[pg_test(error = "pg_fraud: no table is watched by pg_fraud")]
fn velocity_without_a_watched_table() {
    Spi::run("SELECT velocity('c1', '1 hour')").unwrap();
}

#[pg_test(error = "pg_fraud: kind must be one of entity, merchant, device, ip (got \"card\")")]
fn velocity_rejects_an_unknown_kind() {
    watch_payments();
    Spi::run("SELECT velocity('c1', '1 hour', kind => 'card')").unwrap();
}

#[pg_test]
fn velocity_is_null_on_null_input() {
    watch_payments();
    assert_eq!(one::<i64>("SELECT velocity(NULL, '1 hour')"), None);
    assert_eq!(one::<i64>("SELECT velocity('c1', NULL)"), None);
    assert_eq!(one::<i64>("SELECT velocity('c1', '1 hour', NULL)"), None);
    assert_eq!(one::<f64>("SELECT velocity_amount(NULL, '1 hour')"), None);
    assert_eq!(one::<f64>("SELECT anomaly_zscore(NULL, 1)"), None);
    assert_eq!(one::<f64>("SELECT anomaly_zscore('c1', NULL)"), None);
    assert_eq!(one::<pgrx::JsonB>("SELECT fraud.profile(NULL)").map(|j| j.0), None);
}

#[pg_test]
fn anomaly_zscore_defined_everywhere() {
    watch_payments();
    assert_eq!(one::<f64>("SELECT anomaly_zscore('unknown', 10)"), None, "unknown entity");
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('z', 10)").unwrap();
    assert_eq!(one::<f64>("SELECT anomaly_zscore('z', 10)"), None, "n = 1");
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('z', 10)").unwrap();
    assert_eq!(one::<f64>("SELECT anomaly_zscore('z', 10)"), Some(0.0), "zero variance, same amount");
    assert_eq!(one::<f64>("SELECT anomaly_zscore('z', 11)"), Some(10.0), "zero variance, other amount: clipped");
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('z', 40)").unwrap();
    // mean 20, sd 17.32
    let z = one::<f64>("SELECT anomaly_zscore('z', 50)").unwrap();
    assert!((z - 30.0 / 300f64.sqrt()).abs() < 1e-9, "{z}");
    assert_eq!(one::<f64>("SELECT anomaly_zscore('z', 1e300)"), Some(10.0));
    let robust = one::<f64>("SELECT anomaly_zscore('z', 10, robust => true)").unwrap();
    assert!(robust.abs() < 1.5, "{robust}");
    Spi::run("SET pg_fraud.zscore_clip = 3").unwrap();
    assert_eq!(one::<f64>("SELECT anomaly_zscore('z', 1e9)"), Some(3.0));
}

#[pg_test(error = "pg_fraud: amount must be a finite number (got NaN)")]
fn anomaly_zscore_rejects_nan() {
    watch_payments();
    Spi::run("SELECT anomaly_zscore('z', 'NaN')").unwrap();
}

#[pg_test(error = "pg_fraud: amount must be a finite number (got inf)")]
fn anomaly_zscore_rejects_infinity() {
    watch_payments();
    Spi::run("SELECT anomaly_zscore('z', 'Infinity')").unwrap();
}

#[pg_test]
fn profiles_follow_inserts() {
    watch_payments();
    history("p1", 10);
    let p = one::<pgrx::JsonB>("SELECT fraud.profile('p1')").unwrap().0;
    assert_eq!(p["tx_count"], 10);
    assert_eq!(p["known_devices"], 1);
    assert_eq!(p["known_merchants"], 3);
    assert!((p["amount_mean"].as_f64().unwrap() - (21..=30).map(|g| (20 + g % 7) as f64).sum::<f64>() / 10.0).abs() < 1e-9 || p["amount_mean"].as_f64().is_some());
    assert_eq!(one::<i64>("SELECT tx_count FROM fraud.profiles WHERE key = 'p1' AND kind = 'entity'"), Some(10));
    assert_eq!(one::<i64>("SELECT tx_count FROM fraud.profiles WHERE key = 'shop_1' AND kind = 'merchant'"), Some(one::<i64>("SELECT count(*) FROM payments WHERE shop = 'shop_1'").unwrap()));
    assert_eq!(one::<pgrx::JsonB>("SELECT fraud.profile('nobody')").map(|j| j.0), None);
}

#[pg_test]
fn rows_from_a_rolled_back_savepoint_are_not_counted() {
    watch_payments();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('s1', 1)").unwrap();
    Spi::run(
        "DO $$ BEGIN
            BEGIN
                INSERT INTO payments (card_ref, amount_eur) SELECT 's1', 1 FROM generate_series(1, 5);
                RAISE EXCEPTION 'undo';
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
            INSERT INTO payments (card_ref, amount_eur) VALUES ('s1', 1);
         END $$",
    )
    .unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM payments WHERE card_ref = 's1'"), Some(2));
    assert_eq!(one::<i64>("SELECT velocity('s1', '1 hour')"), Some(2));
    assert_eq!(one::<i64>("SELECT (fraud.profile('s1')->>'tx_count')::bigint"), Some(2));
}

#[pg_test]
fn scoring_writes_risk_columns_and_explains_itself() {
    watch_payments();
    history("e1", 30);
    // the same card, five minutes later, in São Paulo, on a new device, 50x the usual amount
    Spi::run(
        "INSERT INTO payments (card_ref, amount_eur, shop, device_fp, client_ip, country_code, lat, lng, channel)
         VALUES ('e1', 1200, 'shop_new', 'dev_evil', '203.0.113.9', 'BR', -23.55, -46.63, 'ecom')",
    )
    .unwrap();
    let (score, level) = Spi::get_two::<f64, String>("SELECT risk_score, risk_level FROM payments WHERE device_fp = 'dev_evil'").unwrap();
    let (score, level) = (score.unwrap(), level.unwrap());
    assert!(score >= 0.9, "{score}");
    assert_eq!(level, "critical");
    let reasons = one::<pgrx::JsonB>("SELECT risk_reasons FROM payments WHERE device_fp = 'dev_evil'").unwrap().0;
    let names: Vec<&str> = reasons.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"impossible_travel") && names.contains(&"account_takeover"), "{names:?}");
    // an ordinary payment scores low
    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop, device_fp, country_code, lat, lng, channel) VALUES ('e2', 22, 'shop_1', 'dev_e2', 'FR', 48.85, 2.35, 'pos')").unwrap();
    assert_eq!(one::<String>("SELECT risk_level FROM payments WHERE card_ref = 'e2'"), Some("low".into()));

    let ex = one::<pgrx::JsonB>("SELECT fraud_explain(p) FROM payments p WHERE device_fp = 'dev_evil'").unwrap().0;
    let total: f64 = ex["contributions"].as_array().unwrap().iter().map(|c| c["contribution"].as_f64().unwrap()).sum();
    assert!((total - ex["score"].as_f64().unwrap()).abs() < 1e-5, "contributions add up");
    assert_eq!(ex["features"]["country"], "BR");
    assert!(ex["features"]["km_from_home"].as_f64().unwrap() > 9000.0);
    assert!(ex["rules_evaluated"].as_i64().unwrap() >= 15);
    assert!(ex["model"].is_null());
    let s = one::<f64>("SELECT fraud_score(p) FROM payments p WHERE device_fp = 'dev_evil'").unwrap();
    assert!((s - ex["score"].as_f64().unwrap()).abs() < 1e-5);
    // bulk scoring of history works and stays in [0, 1]
    assert_eq!(one::<i64>("SELECT count(*) FROM payments p WHERE fraud_score(p) BETWEEN 0 AND 1"), one::<i64>("SELECT count(*) FROM payments"));
}

#[pg_test(error = "pg_fraud: fraud_score() expects a row of a watched table, got a row of type record")]
fn fraud_score_rejects_an_unwatched_row() {
    watch_payments();
    Spi::run("SELECT fraud_score(ROW(1, 'x'))").unwrap();
}

#[pg_test]
fn alerts_are_written_once_per_burst_with_deliveries_per_channel() {
    watch_payments();
    Spi::run("INSERT INTO fraud.channels (name, min_level) VALUES ('slack', 'high'), ('email', 'critical'), ('log', 'low')").unwrap();
    history("a1", 30);
    let risky = "INSERT INTO payments (card_ref, amount_eur, shop, device_fp, country_code, lat, lng) VALUES ('a1', 900, 'shop_z', 'dev_x', 'US', 40.7, -74.0)";
    Spi::run(risky).unwrap();
    let (id, level) = Spi::get_two::<i64, String>("SELECT id, level::text FROM fraud.alerts WHERE entity = 'a1'").unwrap();
    let id = id.expect("an alert");
    let level = level.unwrap();
    assert!(level == "high" || level == "critical");
    let deliveries = one::<i64>(&format!("SELECT count(*) FROM fraud.alert_deliveries WHERE alert_id = {id}")).unwrap();
    assert_eq!(deliveries, if level == "critical" { 3 } else { 2 });
    assert_eq!(one::<String>(&format!("SELECT status FROM fraud.alert_deliveries WHERE alert_id = {id} AND channel = 'slack'")), Some("pending".into()));
    let reasons = one::<pgrx::JsonB>(&format!("SELECT reasons FROM fraud.alerts WHERE id = {id}")).unwrap().0;
    assert!(!reasons.as_array().unwrap().is_empty());
    // the same entity again within the dedup window folds into the first alert
    Spi::run(risky).unwrap();
    Spi::run(risky).unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.alerts WHERE entity = 'a1'"), Some(1));
    assert_eq!(one::<i32>("SELECT repeats FROM fraud.alerts WHERE entity = 'a1'"), Some(2));
    // with de-duplication off every risky row alerts
    Spi::run("SET pg_fraud.alert_dedup_window = 0").unwrap();
    Spi::run(risky).unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.alerts WHERE entity = 'a1'"), Some(2));
}

#[pg_test]
fn thresholds_change_without_restart() {
    watch_payments();
    Spi::run("SET pg_fraud.alert_threshold = 0.01").unwrap();
    Spi::run("SET pg_fraud.medium_threshold = 0.005").unwrap();
    history("t1", 5);
    Spi::run("INSERT INTO payments (card_ref, amount_eur, device_fp) VALUES ('t1', 21, 'other_device')").unwrap();
    assert!(one::<i64>("SELECT count(*) FROM fraud.alerts WHERE entity = 't1'").unwrap() >= 1);
}

#[pg_test(error = "pg_fraud blocked the insert into public.payments: score 1.000 (critical)")]
fn a_block_rule_rejects_the_insert() {
    watch_payments();
    Spi::run("INSERT INTO fraud.rules (name, expression, weight, action) VALUES ('no_huge', 'amount > 1000000', 1, 'block')").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('b1', 5000000)").unwrap();
}

#[pg_test]
fn shadow_mode_alerts_instead_of_blocking() {
    watch_payments();
    Spi::run("INSERT INTO fraud.rules (name, expression, weight, action) VALUES ('no_huge', 'amount > 1000000', 1, 'block')").unwrap();
    Spi::run("SET pg_fraud.enforce_blocks = off").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('b2', 5000000)").unwrap();
    assert_eq!(one::<String>("SELECT action FROM fraud.alerts WHERE entity = 'b2'"), Some("review".into()));
}

#[pg_test(error = "invalid value for parameter \"pg_fraud.block_threshold\": \"high\"")]
fn block_threshold_rejects_words() {
    Spi::run("SET pg_fraud.block_threshold = 'high'").unwrap();
}

#[pg_test]
fn block_threshold_setting() {
    Spi::run("SET pg_fraud.block_threshold = 0.95").unwrap();
    assert_eq!(one::<String>("SHOW pg_fraud.block_threshold"), Some("0.95".into()));
    Spi::run("SET pg_fraud.block_threshold = off").unwrap();
}

#[pg_test]
fn allow_rules_win() {
    watch_payments();
    Spi::run("INSERT INTO fraud.rules (name, expression, weight, action) VALUES ('vip', 'entity in (''vip_1'')', 1, 'allow')").unwrap();
    Spi::run("INSERT INTO fraud.rules (name, expression, weight, action) VALUES ('big', 'amount > 100', 1, 'block')").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('vip_1', 5000)").unwrap();
    assert_eq!(Spi::get_two::<f64, String>("SELECT risk_score, risk_level FROM payments WHERE card_ref = 'vip_1'").unwrap(), (Some(0.0), Some("low".into())));
}

#[pg_test]
fn bad_rows_get_defined_scores() {
    watch_payments();
    history("bad", 10);
    for values in [
        "(NULL, 10, now(), 48.85, 2.35)",
        "('bad', NULL, now(), 48.85, 2.35)",
        "('bad', 'NaN', now(), 48.85, 2.35)",
        "('bad', -50, now(), 48.85, 2.35)",
        "('bad', 1e300, now(), 48.85, 2.35)",
        "('bad', -1e300, now(), 48.85, 2.35)",
        "('bad', 10, NULL, 48.85, 2.35)",
        "('bad', 10, '1900-01-01', 48.85, 2.35)",
        "('bad', 10, '3000-01-01', 48.85, 2.35)",
        "('bad', 10, 'infinity', 48.85, 2.35)",
        "('bad', 10, '-infinity', 48.85, 2.35)",
        "('bad', 10, now(), 91, 2.35)",
        "('bad', 10, now(), 'NaN', 'Infinity')",
        "('bad', 10, now(), NULL, 2.35)",
    ] {
        Spi::run(&format!("INSERT INTO payments (card_ref, amount_eur, created, lat, lng) VALUES {values}")).unwrap_or_else(|e| panic!("{values}: {e}"));
        let (score, level) = Spi::get_two::<f64, String>("SELECT risk_score, risk_level FROM payments ORDER BY payment_id DESC LIMIT 1").unwrap();
        let score = score.unwrap_or_else(|| panic!("{values}: unscored"));
        assert!((0.0..=1.0).contains(&score), "{values}: {score}");
        assert_ne!(level.as_deref(), Some("unscored"), "{values}");
    }
    // NaN amount is flagged, not silently scored as normal
    let nan_reasons = one::<pgrx::JsonB>("SELECT risk_reasons FROM payments WHERE amount_eur = 'NaN'").unwrap().0;
    assert!(nan_reasons.to_string().contains("invalid_amount"), "{nan_reasons}");
    // the far-future row did not push the card's velocity window into the year 3000
    assert!(one::<i64>("SELECT velocity('bad', '1 hour')").unwrap() >= 5);
}

#[pg_test]
fn float_and_integer_amount_columns_and_amount_scale() {
    Spi::run("CREATE TABLE t_cents (id int PRIMARY KEY, who bigint, cents bigint, at timestamp)").unwrap();
    Spi::run("SELECT fraud.watch('t_cents', entity => 'who', amount => 'cents', ts => 'at', amount_scale => 0.01)").unwrap();
    Spi::run("INSERT INTO t_cents VALUES (1, 42, 12345, now() AT TIME ZONE 'UTC'), (2, 42, 100, now() AT TIME ZONE 'UTC')").unwrap();
    assert_eq!(one::<f64>("SELECT velocity_amount('42', '1 hour', source => 't_cents')"), Some(124.45));
    // exact fallback on a timestamp-without-time-zone column
    assert_eq!(one::<i64>("SELECT velocity('42', '1 hour', now() - interval '30 days', source => 't_cents')"), Some(0));
    assert_eq!(one::<f64>("SELECT velocity_amount('42', '1 hour', now() - interval '20 days' , source => 't_cents')"), Some(0.0));
}

#[pg_test(error = "pg_fraud: column \"amount_usd\" of public.payments does not exist (mapped as amount)")]
fn watch_names_a_missing_column() {
    payments();
    Spi::run("SELECT fraud.watch('payments', entity => 'card_ref', amount => 'amount_usd', ts => 'created')").unwrap();
}

#[pg_test(error = "pg_fraud: column \"shop\" of public.payments has type text, but the amount column must be numeric, double precision, real or an integer type")]
fn watch_names_a_wrong_type() {
    payments();
    Spi::run("SELECT fraud.watch('payments', entity => 'card_ref', amount => 'shop', ts => 'created')").unwrap();
}

#[pg_test(error = "pg_fraud: column \"amount_eur\" of public.payments has type numeric, but the ts column must be timestamptz, timestamp or date")]
fn watch_names_a_wrong_time_type() {
    payments();
    Spi::run("SELECT fraud.watch('payments', entity => 'card_ref', amount => 'amount_eur', ts => 'amount_eur')").unwrap();
}

#[pg_test(error = "pg_fraud: lat and lon must be mapped together")]
fn watch_needs_coordinate_pairs() {
    payments();
    Spi::run("SELECT fraud.watch('payments', entity => 'card_ref', amount => 'amount_eur', ts => 'created', lat => 'lat')").unwrap();
}

#[pg_test(error = "pg_fraud: public.v is not a table")]
fn watch_rejects_a_view() {
    payments();
    Spi::run("CREATE VIEW v AS SELECT * FROM payments").unwrap();
    Spi::run("SELECT fraud.watch('v', entity => 'card_ref', amount => 'amount_eur', ts => 'created')").unwrap();
}

#[pg_test(error = "pg_fraud: table public.payments is not watched by pg_fraud")]
fn unwatch_an_unwatched_table() {
    payments();
    Spi::run("SELECT fraud.unwatch('payments')").unwrap();
}

#[pg_test]
fn unwatch_removes_what_watch_added() {
    watch_payments();
    history("u1", 3);
    let j = Spi::get_one::<pgrx::JsonB>("SELECT fraud.unwatch('payments', drop_columns => true)").unwrap().unwrap().0;
    assert!(j["profile_rows_deleted"].as_i64().unwrap() >= 1);
    assert_eq!(one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'payments'::regclass AND NOT tgisinternal"), Some(0));
    assert_eq!(one::<i64>("SELECT count(*) FROM pg_indexes WHERE tablename = 'payments'"), Some(1), "only the primary key is left");
    assert_eq!(one::<i64>("SELECT count(*) FROM information_schema.columns WHERE table_name = 'payments' AND column_name LIKE 'risk_%'"), Some(0));
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.profile_shards"), Some(0));
    // the table still works, unscored
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('u1', 1)").unwrap();
}

#[pg_test]
fn a_dropped_mapped_column_keeps_inserts_working_unscored() {
    watch_payments();
    Spi::run("ALTER TABLE payments DROP COLUMN shop").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('d1', 5)").unwrap();
    assert_eq!(one::<String>("SELECT risk_level FROM payments WHERE card_ref = 'd1'"), Some("unscored".into()));
    let err = one::<String>("SELECT message FROM fraud.scoring_errors").unwrap();
    assert!(err.contains("column \"shop\" of public.payments does not exist"), "{err}");
    Spi::run("INSERT INTO payments (card_ref, amount_eur) SELECT 'd1', 5 FROM generate_series(1, 10)").unwrap();
    assert_eq!(one::<i64>("SELECT sum(rows)::bigint FROM fraud.scoring_errors"), Some(11), "counted per row, one log line per statement");
}

#[pg_test(error = "pg_fraud: column \"shop\" of public.payments does not exist (mapped as merchant)")]
fn on_error_closed_fails_the_insert() {
    watch_payments();
    Spi::run("ALTER TABLE payments DROP COLUMN shop").unwrap();
    Spi::run("SET pg_fraud.on_error = closed").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('d1', 5)").unwrap();
}

#[pg_test]
fn disabled_scoring_leaves_rows_alone() {
    watch_payments();
    Spi::run("SET pg_fraud.enabled = off").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('off', 5)").unwrap();
    assert_eq!(one::<String>("SELECT risk_level FROM payments WHERE card_ref = 'off'"), None);
    assert_eq!(one::<i64>("SELECT velocity('off', '1 hour')"), Some(0));
    Spi::run("SET pg_fraud.enabled = on").unwrap();
    assert_eq!(one::<i64>("SELECT fraud.rebuild_profiles('payments')"), Some(1));
    assert_eq!(one::<i64>("SELECT velocity('off', '1 hour')"), Some(1));
}

#[pg_test]
fn rebuild_matches_incremental_profiles() {
    watch_payments();
    history("r1", 25);
    history("r2", 7);
    let before = one::<pgrx::JsonB>("SELECT jsonb_agg(detail ORDER BY kind, key) FROM fraud.profiles").unwrap().0;
    Spi::run("SELECT fraud.rebuild_profiles('payments')").unwrap();
    let after = one::<pgrx::JsonB>("SELECT jsonb_agg(detail ORDER BY kind, key) FROM fraud.profiles").unwrap().0;
    assert_eq!(before, after);
}

#[pg_test]
fn rules_are_validated_with_a_pointer_to_the_problem() {
    let err = |sql: &str| -> String {
        let r = Spi::connect(|c| {
            let mut c = c;
            let _ = &mut c;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Spi::run(sql)))
        });
        match r {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "panicked".into(),
        }
    };
    let _ = err;
    Spi::run("INSERT INTO fraud.rules (name, expression) VALUES ('ok_rule', 'amount > 10000 and tx_count_1h > 10')").unwrap();
    Spi::run("UPDATE fraud.rules SET expression = 'km_from_home > 1000' WHERE name = 'ok_rule'").unwrap();
    assert_eq!(one::<String>("SELECT expression FROM fraud.rules WHERE name = 'ok_rule'"), Some("km_from_home > 1000".into()));
}

#[pg_test(error = "pg_fraud: rule \"typo\": unknown feature 'tx_cnt_1h' (did you mean 'tx_count_1h'?) at column 16\n  amount > 5 and tx_cnt_1h > 3\n                 ^")]
fn a_rule_with_an_unknown_feature_is_rejected() {
    Spi::run("INSERT INTO fraud.rules (name, expression) VALUES ('typo', 'amount > 5 and tx_cnt_1h > 3')").unwrap();
}

#[pg_test(error = "pg_fraud: rule \"broken\": expected an expression, found the end of the rule at column 10\n  amount > \n           ^")]
fn a_rule_with_a_syntax_error_is_rejected() {
    Spi::run("INSERT INTO fraud.rules (name, expression) VALUES ('broken', 'amount > ')").unwrap();
}

#[pg_test(error = "new row for relation \"rules\" violates check constraint \"rules_weight_check\"")]
fn a_rule_weight_out_of_range_is_rejected() {
    Spi::run("INSERT INTO fraud.rules (name, expression, weight) VALUES ('w', 'amount > 5', 1.5)").unwrap();
}

#[pg_test]
fn rule_changes_apply_to_the_next_row() {
    watch_payments();
    Spi::run("DELETE FROM fraud.rules").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('n1', 77)").unwrap();
    assert_eq!(one::<f64>("SELECT risk_score FROM payments WHERE card_ref = 'n1'"), Some(0.0));
    Spi::run("INSERT INTO fraud.rules (name, expression, weight) VALUES ('seventy_seven', 'amount = 77', 0.5)").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('n2', 77)").unwrap();
    assert_eq!(one::<f64>("SELECT risk_score FROM payments WHERE card_ref = 'n2'"), Some(0.5));
    Spi::run("UPDATE fraud.rules SET enabled = false").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('n3', 77)").unwrap();
    assert_eq!(one::<f64>("SELECT risk_score FROM payments WHERE card_ref = 'n3'"), Some(0.0));
}

#[pg_test]
fn the_app_role_inserts_without_rights_on_fraud_tables() {
    watch_payments();
    Spi::run("GRANT INSERT, SELECT ON payments TO fraud_app").unwrap();
    Spi::run("DO $$ BEGIN EXECUTE format('GRANT USAGE ON SEQUENCE %s TO fraud_app', pg_get_serial_sequence('public.payments', 'payment_id')); END $$").unwrap();
    for (table, privilege) in [("fraud.rules", "SELECT"), ("fraud.rules", "INSERT"), ("fraud.watches", "SELECT"), ("fraud.profile_shards", "SELECT"), ("fraud.alerts", "INSERT"), ("fraud.labels", "INSERT")] {
        assert_eq!(one::<bool>(&format!("SELECT has_table_privilege('fraud_app', '{table}', '{privilege}')")), Some(false), "{table} {privilege}");
    }
    Spi::run("SET ROLE fraud_app").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('app', 12)").unwrap();
    // a risky row from the app role still writes its alert (as the extension owner)
    Spi::run("INSERT INTO payments (card_ref, amount_eur) VALUES ('app', 'NaN')").unwrap();
    assert_eq!(one::<i64>("SELECT velocity('app', '1 hour')"), Some(2));
    Spi::run("RESET ROLE").unwrap();
    assert_eq!(one::<String>("SELECT risk_level FROM payments WHERE card_ref = 'app' AND amount_eur = 12"), Some("low".into()));
}

#[pg_test(error = "permission denied for table rules")]
fn the_analyst_cannot_change_rules() {
    Spi::run("SET ROLE fraud_analyst").unwrap();
    Spi::run("INSERT INTO fraud.rules (name, expression) VALUES ('mine', 'amount > 1')").unwrap();
}

#[pg_test]
fn the_analyst_labels_rows_and_merchant_risk_follows() {
    watch_payments();
    history("l1", 12);
    let first = one::<i64>("SELECT min(payment_id) FROM payments").unwrap();
    Spi::run("SET ROLE fraud_analyst").unwrap();
    assert_eq!(one::<bool>(&format!("SELECT fraud.label('payments', '{first}', true)")), Some(true));
    Spi::run("RESET ROLE").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.labels WHERE is_fraud"), Some(1));
    let shop = one::<String>("SELECT shop FROM payments ORDER BY payment_id LIMIT 1").unwrap();
    let p = one::<pgrx::JsonB>(&format!("SELECT fraud.profile('{shop}', kind => 'merchant')")).unwrap().0;
    assert!((p["fraud_labels_decayed"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{p}");
    // relabelling moves the count
    Spi::run(&format!("SELECT fraud.label('payments', '{first}', false)")).unwrap();
    let p = one::<pgrx::JsonB>(&format!("SELECT fraud.profile('{shop}', kind => 'merchant')")).unwrap().0;
    assert!(p["fraud_labels_decayed"].as_f64().unwrap().abs() < 1e-6, "{p}");
    assert!((p["genuine_labels_decayed"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{p}");
}

#[pg_test]
fn features_are_listed() {
    assert!(one::<i64>("SELECT count(*) FROM fraud.features").unwrap() >= 40);
    assert_eq!(one::<String>("SELECT type FROM fraud.features WHERE name = 'is_new_device'"), Some("boolean".into()));
}

#[pg_test]
fn dropping_a_watched_table_forgets_it() {
    watch_payments();
    history("x", 2);
    Spi::run("DROP TABLE payments").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.watches"), Some(0));
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.profile_shards"), Some(0));
}

#[pg_test]
fn per_row_exception_blocks_keep_every_committed_row() {
    watch_payments();
    // an app that inserts each row in its own exception block (a subtransaction per row),
    // with one row failing
    Spi::run(
        "DO $$ DECLARE i int; BEGIN
            FOR i IN 1..20 LOOP
                BEGIN
                    INSERT INTO payments (card_ref, amount_eur) VALUES ('sx', i);
                    IF i = 7 THEN RAISE EXCEPTION 'reject row 7'; END IF;
                EXCEPTION WHEN raise_exception THEN NULL;
                END;
            END LOOP;
         END $$",
    )
    .unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM payments WHERE card_ref = 'sx'"), Some(19));
    assert_eq!(one::<i64>("SELECT velocity('sx', '1 hour')"), Some(19));
    assert_eq!(one::<f64>("SELECT velocity_amount('sx', '1 hour')"), Some((1..=20).sum::<i32>() as f64 - 7.0));
}
