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
    assert_eq!(ex["models"], serde_json::json!([]));
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

// ---------------------------------------------------------------------------------------
// Models

/// 3,000 ordinary payments of 40 cards over the last 30 days.
fn population() {
    watch_payments();
    Spi::run(
        "INSERT INTO payments (card_ref, amount_eur, created, shop, device_fp, client_ip, country_code, lat, lng, channel)
         SELECT 'card' || (g % 40), 10 + (g % 40) + (g % 7), now() - interval '30 days' + make_interval(mins => g * 14),
                'shop_' || (g % 9), 'dev_' || (g % 40), ('10.0.' || (g % 40) || '.1')::inet, 'FR', 48.85 + (g % 40) * 0.01, 2.35, 'pos'
           FROM generate_series(1, 3000) g",
    )
    .unwrap();
}

fn json(sql: &str) -> serde_json::Value {
    one::<pgrx::JsonB>(sql).unwrap().0
}

const SMALL_FOREST: &str = "n_trees => 25, sample_size => 128";

#[pg_test]
fn an_isolation_forest_is_trained_versioned_deployed_and_scores_rows() {
    population();
    let r = json(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST})"));
    assert_eq!((r["version"].as_i64(), r["deployed"].as_bool()), (Some(1), Some(true)), "{r}");
    assert_eq!(r["kind"], "isolation_forest");
    assert_eq!(r["training_rows"], 3000);
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.models WHERE name = 'anomaly' AND active"), Some(1));
    assert_eq!(one::<String>("SELECT action FROM fraud.model_deployments WHERE name = 'anomaly'"), Some("deploy".into()));
    // Not mapped in this table's rows: no finite value, so the model leaves it out.
    assert!(r["metrics"]["dropped_features"].as_array().unwrap().iter().any(|f| f == "km_between_locations"), "{r}");

    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop, device_fp, client_ip, country_code, lat, lng, channel)
              VALUES ('card7', 15, 'shop_3', 'dev_7', '10.0.7.1', 'FR', 48.92, 2.35, 'pos'),
                     ('card8', 9500, 'shop_new', 'dev_stolen', '203.0.113.9', 'AU', -33.86, 151.2, 'web')").unwrap();
    // Out of the training range, the odd row isolates as fast as the most extreme history
    // rows, well above a typical one, and the model flags it.
    let typical = one::<f64>(
        "SELECT avg((fraud_explain(t)->'models'->0->>'output')::float8) FROM payments t WHERE payment_id % 100 = 0 AND payment_id <= 3000",
    )
    .unwrap();
    let odd = json("SELECT fraud_explain(t) FROM payments t WHERE card_ref = 'card8' ORDER BY payment_id DESC LIMIT 1");
    let output = odd["models"][0]["output"].as_f64().unwrap();
    assert_eq!(odd["models"][0]["name"], "anomaly");
    assert_eq!(odd["models"][0]["version"], 1);
    assert!(output > typical + 0.08, "odd {output} typical {typical}");
    assert!(odd["models"][0]["signal"].as_f64().unwrap() > 0.0, "{odd}");
    assert!(odd["contributions"].as_array().unwrap().iter().any(|c| c["name"] == "model:anomaly"), "{odd}");
    assert!(!odd["models"][0]["top_features"].as_array().unwrap().is_empty());
    // the contributions still add up to the score
    let total: f64 = odd["contributions"].as_array().unwrap().iter().map(|c| c["contribution"].as_f64().unwrap()).sum();
    assert!((total - odd["score"].as_f64().unwrap()).abs() < 1e-5, "{odd}");
}

#[pg_test]
fn training_features_are_point_in_time() {
    population();
    let before = one::<pgrx::JsonB>(
        "SELECT jsonb_agg(jsonb_build_array(row_key, features) ORDER BY ts, row_key) FROM fraud.feature_matrix('payments')",
    )
    .unwrap()
    .0;
    // Later rows and a later label must not change what earlier rows looked like.
    history("card3", 5);
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created, shop) VALUES ('card3', 4000, now() + interval '1 minute', 'shop_1')").unwrap();
    let late = one::<i64>("SELECT max(payment_id) FROM payments").unwrap();
    Spi::run(&format!("SELECT fraud.label('payments', '{late}', true, at => now() + interval '2 minutes')")).unwrap();
    let after = one::<pgrx::JsonB>(&format!(
        "SELECT jsonb_agg(jsonb_build_array(row_key, features) ORDER BY ts, row_key) FROM fraud.feature_matrix('payments')
          WHERE row_key::bigint <= {}",
        3000
    ))
    .unwrap()
    .0;
    // history("card3", 5) inserted rows dated inside the window: rows after them change,
    // rows before them must not.
    let first_new = one::<String>(
        "SELECT to_char(min(created), 'YYYY-MM-DD HH24:MI:SS.US') FROM payments WHERE payment_id > 3000",
    )
    .unwrap();
    let cutoff_rows = one::<i64>(&format!("SELECT count(*) FROM payments WHERE payment_id <= 3000 AND created < '{first_new}'")).unwrap() as usize;
    assert!(cutoff_rows > 1000, "{cutoff_rows}");
    let (b, a) = (before.as_array().unwrap(), after.as_array().unwrap());
    assert_eq!(&b[..cutoff_rows], &a[..cutoff_rows]);
    let names = one::<Vec<String>>("SELECT fraud.model_features()").unwrap();
    assert_eq!(names.len(), b[0][1].as_array().unwrap().len());
}

#[pg_test]
fn a_classifier_learns_from_labels_and_reports_validation_metrics() {
    population();
    // Fraud: big amounts at one shop, labelled as chargebacks two days later.
    Spi::run(
        "INSERT INTO payments (card_ref, amount_eur, created, shop, device_fp, client_ip, country_code, lat, lng, channel)
         SELECT 'card' || (g % 40), 900 + g, now() - interval '29 days' + make_interval(hours => g * 4),
                'shop_bad', 'dev_x' || g, ('198.51.100.' || g)::inet, 'NG', 6.5, 3.4, 'web'
           FROM generate_series(1, 150) g",
    )
    .unwrap();
    Spi::run("SELECT fraud.label('payments', payment_id::text, true, at => created + interval '2 days') FROM payments WHERE shop = 'shop_bad'").unwrap();
    let r = json("SELECT fraud.train_classifier('fraud_rf', n_trees => 30)");
    assert_eq!(r["version"], 1, "{r}");
    assert_eq!(r["deployed"], true);
    let m = &r["metrics"];
    assert!(m["auc"].as_f64().unwrap() > 0.9, "{m}");
    assert!(m["average_precision"].as_f64().is_some(), "{m}");
    assert!(m["validation_positives"].as_i64().unwrap() > 0, "{m}");
    assert!(m["precision"].is_number() || m["precision"].is_null());
    // A worse challenger (one weak feature) is stored but not deployed.
    let worse = json("SELECT fraud.train_classifier('fraud_rf', n_trees => 5, features => ARRAY['hour_of_day'])");
    assert_eq!((worse["version"].as_i64(), worse["deployed"].as_bool()), (Some(2), Some(false)), "{worse}");
    assert_eq!(one::<i32>("SELECT version FROM fraud.models WHERE name = 'fraud_rf' AND active"), Some(1));
    // The deployed classifier scores new rows like the fraud it learnt.
    // Calibrated to the 150 / 3,150 fraud rate of the labels: a row like the fraud scores far
    // above it, an ordinary one far below.
    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop, device_fp, client_ip, country_code, lat, lng, channel)
              VALUES ('card5', 1200, 'shop_bad', 'dev_new', '198.51.100.7', 'NG', 6.5, 3.4, 'web'),
                     ('card6', 20, 'shop_2', 'dev_6', '10.0.6.1', 'FR', 48.91, 2.35, 'pos')").unwrap();
    let bad = json("SELECT fraud_explain(t) FROM payments t WHERE card_ref = 'card5' ORDER BY payment_id DESC LIMIT 1");
    let good = json("SELECT fraud_explain(t) FROM payments t WHERE card_ref = 'card6' ORDER BY payment_id DESC LIMIT 1");
    assert_eq!(bad["models"][0]["kind"], "classifier");
    let (b, g) = (bad["models"][0]["output"].as_f64().unwrap(), good["models"][0]["output"].as_f64().unwrap());
    assert!(b > 0.2 && g < 0.05, "fraud-like {b}, ordinary {g}");
}

#[pg_test]
fn deploy_rollback_and_undeploy_walk_the_history() {
    population();
    for _ in 0..3 {
        Spi::run(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST}, deploy => 'always')")).unwrap();
    }
    let active = || one::<i32>("SELECT max(version) FROM fraud.models WHERE name = 'anomaly' AND active");
    assert_eq!(active(), Some(3));
    assert_eq!(one::<i32>("SELECT fraud.rollback('anomaly')"), Some(2));
    assert_eq!(active(), Some(2));
    assert_eq!(one::<i32>("SELECT fraud.rollback('anomaly')"), Some(1));
    assert_eq!(one::<bool>("SELECT fraud.deploy('anomaly', 3)"), Some(true));
    assert_eq!(active(), Some(3));
    assert_eq!(one::<bool>("SELECT fraud.undeploy('anomaly')"), Some(true));
    assert_eq!(active(), None);
    assert_eq!(one::<bool>("SELECT fraud.undeploy('anomaly')"), Some(false));
    // the model no longer scores
    let j = json("SELECT fraud_explain(t) FROM payments t LIMIT 1");
    assert_eq!(j["models"], serde_json::json!([]));
    // retrain() only retrains deployed models
    Spi::run("SELECT fraud.deploy('anomaly', 1)").unwrap();
    let n = one::<i64>("SELECT count(*) FROM fraud.retrain(training_window => '60 days') WHERE name = 'anomaly' AND version = 4").unwrap();
    assert_eq!(n, 1);
}

#[pg_test(error = "pg_fraud: model \"anomaly\" has no version 7 (versions: 1)")]
fn deploying_a_missing_version_is_an_error() {
    population();
    Spi::run(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST})")).unwrap();
    Spi::run("SELECT fraud.deploy('anomaly', 7)").unwrap();
}

#[pg_test(error = "pg_fraud: there is no model named \"nope\"")]
fn deploying_an_unknown_model_is_an_error() {
    Spi::run("SELECT fraud.deploy('nope', 1)").unwrap();
}

#[pg_test(error = "pg_fraud: model \"anomaly\" has no earlier deployment to roll back to (use fraud.undeploy to switch it off)")]
fn rolling_back_the_first_version_is_an_error() {
    population();
    Spi::run(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST})")).unwrap();
    Spi::run("SELECT fraud.rollback('anomaly')").unwrap();
}

#[pg_test(error = "pg_fraud: training model \"anomaly\": public.payments has 0 rows in the training window; at least 2 are needed")]
fn training_on_an_empty_table_is_an_error() {
    watch_payments();
    Spi::run("SELECT fraud.train_isolation_forest('anomaly')").unwrap();
}

#[pg_test(error = "pg_fraud: training model \"anomaly\": public.payments has 1 rows in the training window; at least 2 are needed")]
fn training_on_one_row_is_an_error() {
    watch_payments();
    history("solo", 1);
    Spi::run("SELECT fraud.train_isolation_forest('anomaly')").unwrap();
}

#[pg_test(error = "pg_fraud: training model \"anomaly\": all 30 training rows are identical (after imputing missing values): there is nothing to learn")]
fn training_on_identical_rows_is_an_error() {
    watch_payments();
    Spi::run("INSERT INTO payments (card_ref, amount_eur) SELECT 'same', 10 FROM generate_series(1, 30)").unwrap();
    Spi::run("SELECT fraud.train_isolation_forest('anomaly', features => ARRAY['amount', 'card_present'])").unwrap();
}

#[pg_test(error = "pg_fraud: training model \"fraud_rf\": no row of public.payments in the training window is labelled fraud (fraud.label(...))")]
fn a_classifier_without_fraud_labels_is_an_error() {
    population();
    Spi::run("SELECT fraud.train_classifier('fraud_rf')").unwrap();
}

#[pg_test(error = "pg_fraud: training model \"fraud_rf\": every training row is labelled fraud; genuine rows are needed too")]
fn a_classifier_with_only_fraud_is_an_error() {
    watch_payments();
    history("f", 10);
    Spi::run("SELECT fraud.label('payments', payment_id::text, true) FROM payments").unwrap();
    Spi::run("SELECT fraud.train_classifier('fraud_rf', unlabelled_as_genuine => false)").unwrap();
}

#[pg_test(error = "pg_fraud: unknown feature \"amout\" in features (SELECT name FROM fraud.features lists them)")]
fn training_names_an_unknown_feature() {
    population();
    Spi::run("SELECT fraud.train_isolation_forest('anomaly', features => ARRAY['amout'])").unwrap();
}

#[pg_test(error = "pg_fraud: contamination must be in (0, 0.5), got NaN")]
fn training_rejects_nan_parameters() {
    population();
    Spi::run("SELECT fraud.train_isolation_forest('anomaly', contamination => 'NaN')").unwrap();
}

#[pg_test]
fn a_corrupt_model_is_refused_and_never_breaks_inserts() {
    population();
    Spi::run(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST}, deploy => 'never')")).unwrap();
    // Flip every bit of one byte in the middle of the blob.
    Spi::run("UPDATE fraud.models SET model = set_byte(model, length(model) / 2, get_byte(model, length(model) / 2) # 255) WHERE name = 'anomaly'").unwrap();
    // An ERROR would end the test: catch the refusal in a subtransaction.
    Spi::run(
        "DO $$ BEGIN PERFORM fraud.deploy('anomaly', 1); RAISE EXCEPTION 'deployed'; EXCEPTION WHEN OTHERS THEN
             PERFORM set_config('test.err', SQLERRM, true); END $$",
    )
    .unwrap();
    let refused = one::<String>("SELECT current_setting('test.err')");
    assert!(refused.as_deref().is_some_and(|e| e.contains("checksum") || e.contains("corrupt")), "{refused:?}");
    // Forced active anyway: inserts still succeed, scored by rules, and the error is counted.
    Spi::run("UPDATE fraud.models SET active = true WHERE name = 'anomaly'").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop) VALUES ('card1', 25, 'shop_1'), ('card2', 30, 'shop_2')").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM payments WHERE risk_level IS DISTINCT FROM 'unscored' AND risk_score IS NOT NULL AND payment_id > 3000"), Some(2));
    let errors = one::<i64>("SELECT sum(rows)::bigint FROM fraud.scoring_errors WHERE message LIKE 'model \"anomaly\" version 1:%'");
    assert_eq!(errors, Some(2));
}

// ---------------------------------------------------------------------------------------
// Decision log, quality views, metrics, maintenance

#[pg_test]
fn every_scored_insert_is_logged_once() {
    watch_payments();
    history("d1", 30);
    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop, device_fp, country_code, lat, lng) VALUES ('d1', 900, 'shop_z', 'dev_x', 'US', 40.7, -74.0)").unwrap();
    Spi::run(
        "DO $$ BEGIN
            BEGIN
                INSERT INTO payments (card_ref, amount_eur) SELECT 'd1', 1 FROM generate_series(1, 5);
                RAISE EXCEPTION 'undo';
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
         END $$",
    )
    .unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.scores"), Some(31));
    let (level, rules) = Spi::get_two::<String, Vec<String>>(
        "SELECT s.level::text, s.rules FROM fraud.scores s JOIN payments p ON s.row_key = p.payment_id::text WHERE p.amount_eur = 900",
    )
    .unwrap();
    assert_eq!(level.as_deref(), Some(one::<String>("SELECT risk_level FROM payments WHERE amount_eur = 900").unwrap().as_str()));
    let rules = rules.unwrap();
    assert!(rules.iter().any(|r| r == "far_from_home"), "{rules:?}");
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.scores WHERE rules IS NULL"), Some(30));
    Spi::run("SET pg_fraud.log_scores = off").unwrap();
    history("d2", 3);
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.scores"), Some(31));
}

#[pg_test]
fn the_dashboard_views_answer() {
    population();
    Spi::run("INSERT INTO fraud.channels (name, min_level) VALUES ('slack', 'medium')").unwrap();
    Spi::run("INSERT INTO payments (card_ref, amount_eur, shop, device_fp, country_code, lat, lng) VALUES ('card1', 9000, 'shop_z', 'dev_x', 'US', 40.7, -74.0)").unwrap();
    let alert = one::<i64>("SELECT max(id) FROM fraud.alerts").unwrap();
    Spi::run(&format!("SELECT fraud.label('payments', row_key, true) FROM fraud.alerts WHERE id = {alert}")).unwrap();
    Spi::run(&format!("SELECT fraud.train_isolation_forest('anomaly', {SMALL_FOREST})")).unwrap();
    history("card2", 2);

    assert!(one::<i64>("SELECT sum(alerts)::bigint FROM fraud.alerts_hourly WHERE level >= 'high'").unwrap() >= 1);
    assert_eq!(one::<i64>("SELECT sum(rows)::bigint FROM fraud.score_distribution"), Some(3003));
    assert!((one::<f64>("SELECT sum(share) FROM fraud.score_distribution").unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(one::<String>("SELECT entity FROM fraud.top_risky_entities ORDER BY alerts DESC, max_score DESC LIMIT 1"), Some("card1".into()));
    // far_from_home fired on the labelled row only: precision 1, recall 1
    let (hits, precision) = Spi::get_two::<i64, f64>("SELECT hits, precision FROM fraud.rule_performance WHERE rule = 'far_from_home'").unwrap();
    assert_eq!((hits, precision), (Some(1), Some(1.0)));
    assert_eq!(one::<i64>("SELECT rows_scored FROM fraud.rule_performance LIMIT 1"), Some(3003));
    let (live_rows, active) = Spi::get_two::<i64, bool>("SELECT live_rows, active FROM fraud.model_performance WHERE name = 'anomaly' AND version = 1").unwrap();
    assert_eq!((live_rows, active), (Some(2), Some(true)));
    let (pending, channel) = Spi::get_two::<i64, String>("SELECT pending, channel FROM fraud.delivery_health").unwrap();
    assert_eq!((pending, channel.as_deref()), (Some(1), Some("slack")));
}

#[pg_test]
fn classification_metrics_on_good_and_bad_input() {
    let j = json("SELECT fraud.classification_metrics(ARRAY[0.9, 0.8, 0.2, 0.1, NULL, 'NaN', 'Infinity', '-Infinity'], ARRAY[true, true, false, false, true, false, true, false])");
    assert_eq!((j["rows"].as_i64(), j["positives"].as_i64()), (Some(4), Some(2)), "{j}");
    assert_eq!((j["auc"].as_f64(), j["average_precision"].as_f64()), (Some(1.0), Some(1.0)));
    assert_eq!((j["precision"].as_f64(), j["recall"].as_f64()), (Some(1.0), Some(1.0)));
    let one_class = json("SELECT fraud.classification_metrics(ARRAY[0.9, 0.1], ARRAY[false, false])");
    assert!(one_class["auc"].is_null() && one_class["average_precision"].is_null(), "{one_class}");
    let empty = json("SELECT fraud.classification_metrics('{}'::float8[], '{}'::bool[])");
    assert_eq!(empty["rows"], 0);
    assert_eq!(one::<pgrx::JsonB>("SELECT fraud.classification_metrics(NULL, ARRAY[true])").map(|j| j.0), None);
}

#[pg_test(error = "pg_fraud: scores has 2 elements but labels has 1")]
fn classification_metrics_rejects_mismatched_arrays() {
    Spi::run("SELECT fraud.classification_metrics(ARRAY[0.1, 0.2], ARRAY[true])").unwrap();
}

#[pg_test]
fn maintenance_compacts_expires_and_trims() {
    watch_payments();
    history("m1", 5);
    Spi::run("INSERT INTO payments (card_ref, amount_eur, created) SELECT 'gone', 5, now() - interval '400 days' FROM generate_series(1, 3)").unwrap();
    // A second writer's shard for m1 (as if another backend had inserted 5 rows).
    Spi::run("INSERT INTO fraud.profile_shards SELECT watch_id, kind, key, shard + 1, state FROM fraud.profile_shards WHERE key = 'm1'").unwrap();
    assert_eq!(one::<i64>("SELECT shards FROM fraud.profiles WHERE key = 'm1'"), Some(2));
    // An old alert fully delivered goes; an old alert still pending stays.
    Spi::run("INSERT INTO fraud.channels (name) VALUES ('hook')").unwrap();
    Spi::run("SELECT fraud.enqueue_alert('payments', 'a', 0.9, 'high'), fraud.enqueue_alert('payments', 'b', 0.9, 'high')").unwrap();
    Spi::run("UPDATE fraud.alerts SET created_at = now() - interval '100 days'").unwrap();
    Spi::run("UPDATE fraud.alert_deliveries d SET status = 'delivered' FROM fraud.alerts a WHERE a.id = d.alert_id AND a.entity = 'a'").unwrap();
    Spi::run("UPDATE fraud.scores SET scored_at = now() - interval '40 days' WHERE entity = 'gone'").unwrap();

    let r = json("SELECT fraud.maintenance()");
    assert_eq!(r["profiles_expired"], 1, "{r}");
    assert!(r["profiles_compacted"].as_i64().unwrap() >= 1, "{r}");
    assert_eq!((r["alerts_deleted"].as_i64(), r["scores_deleted"].as_i64()), (Some(1), Some(3)), "{r}");
    assert_eq!(one::<i64>("SELECT shards FROM fraud.profiles WHERE key = 'm1'"), Some(1));
    assert_eq!(one::<i64>("SELECT tx_count FROM fraud.profiles WHERE key = 'm1'"), Some(10));
    assert_eq!(one::<i64>("SELECT count(*) FROM fraud.profiles WHERE key = 'gone'"), Some(0));
    assert_eq!(one::<String>("SELECT entity FROM fraud.alerts"), Some("b".into()));
}

#[pg_test(error = "pg_fraud: profile_ttl must be a positive, finite interval")]
fn maintenance_rejects_a_negative_ttl() {
    Spi::run("SELECT fraud.maintenance(profile_ttl => '-1 day')").unwrap();
}

#[pg_test(error = "pg_fraud: until must be a finite timestamp")]
fn the_feature_matrix_rejects_an_infinite_bound() {
    population();
    Spi::run("SELECT count(*) FROM fraud.feature_matrix('payments', until => 'infinity')").unwrap();
}

#[pg_test(error = "pg_fraud: at must be a finite timestamp")]
fn a_label_rejects_an_infinite_time() {
    watch_payments();
    history("inf", 2);
    Spi::run("SELECT fraud.label('payments', min(payment_id)::text, true, at => '-infinity') FROM payments").unwrap();
}

#[pg_test(error = "pg_fraud: n_trees must be a positive integer, got 0")]
fn training_rejects_zero_trees() {
    population();
    Spi::run("SELECT fraud.train_classifier('fraud_rf', n_trees => 0)").unwrap();
}
