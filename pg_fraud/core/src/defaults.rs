//! The rules `fraud.watch()` installs when `fraud.rules` is empty: one per classic fraud
//! pattern, written in the rule language so analysts can read, tune or delete them.
//!
//! Weights are "how likely is fraud if this alone fires"; they combine by noisy-OR (see
//! `score.rs`). With the default alert threshold of 0.7, one strong pattern (impossible
//! travel, account takeover) alerts on its own; weak ones (a new device) need company.

/// (name, expression, weight, action, description)
#[rustfmt::skip]
pub const DEFAULT_RULES: &[(&str, &str, f64, &str, &str)] = &[
    ("amount_spike", "clamp((amount_zscore - 3) / 5, 0, 1)", 0.5, "score",
     "Amount far above the entity's usual (z-score 3 -> 8 ramps 0 -> full weight)."),
    ("amount_spike_robust", "min(clamp(entity_tx_count - 4, 0, 1), clamp((amount_robust_z - 3) / 4, 0, 1))", 0.35, "score",
     "Amount far above the entity's median, robust to one-off past outliers."),
    ("above_previous_max", "entity_tx_count >= 5 and amount_to_max > 3", 0.3, "score",
     "Three times the largest amount the entity ever made."),
    ("velocity_burst", "clamp((tx_count_10m - 4) / 6, 0, 1)", 0.45, "score",
     "Many transactions in ten minutes (5 -> 10 ramps to full weight)."),
    ("card_testing", "tx_count_10m >= 4 and avg_amount_10m < 5", 0.65, "score",
     "A burst of tiny amounts: someone checking whether a card works."),
    ("spending_spree", "min(clamp(tx_count_1h - 2, 0, 1), clamp((spend_1h_to_mean - 6) / 10, 0, 1))", 0.6, "score",
     "Several payments in an hour adding up to many times the entity's usual spend."),
    ("impossible_travel", "speed_kmh > 900 and km_from_last > 300", 0.7, "score",
     "Too far from the previous transaction for the time between them."),
    ("far_from_home", "clamp((km_from_home - 300) / 3000, 0, 1)", 0.3, "score",
     "Far from the entity's usual location (300 km -> 3300 km ramps to full weight)."),
    ("unusual_hour", "entity_tx_count >= 20 and hour_unusualness >= 0.9", 0.2, "score",
     "An hour of the day this entity is never active in."),
    ("night_anomaly", "entity_tx_count >= 10 and hour_unusualness >= 0.8 and coalesce(amount_to_mean, 0) > 2", 0.6, "score",
     "A large payment at an hour this entity is never active in."),
    ("new_device", "is_new_device and entity_tx_count >= 3", 0.15, "score",
     "First use of this device by an established entity."),
    ("new_country", "is_new_country and entity_tx_count >= 3", 0.3, "score",
     "First transaction in this country by an established entity."),
    ("account_takeover", "is_new_device and coalesce(km_from_home, 0) > 500 and coalesce(amount_to_mean, 0) > 3", 0.8, "score",
     "New device, far from home, large amount: the classic takeover."),
    ("shared_device", "device_entity_count >= 4", 0.4, "score",
     "One device used by four or more entities."),
    ("shared_ip", "ip_entity_count >= 8", 0.25, "score",
     "One IP address used by eight or more entities."),
    ("risky_merchant", "clamp((merchant_fraud_rate - 0.02) * 10, 0, 1)", 0.45, "score",
     "Merchant with a recent history of confirmed fraud (labels)."),
    ("merchant_alert_burst", "merchant_alert_rate > 0.2 and merchant_tx_count_1h >= 5", 0.3, "score",
     "Merchant whose recent transactions keep raising alerts."),
    ("location_mismatch", "km_between_locations > 500", 0.25, "score",
     "The row's two locations (e.g. billing and shipping) are far apart."),
    ("invalid_amount", "amount_invalid", 0.3, "score",
     "Amount NULL, NaN, infinite or absurd: a data problem or an attack."),
    ("future_timestamp", "ts_skew_seconds > 300", 0.2, "score",
     "Timestamp in the future of the database clock."),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile;
    use crate::score::Action;

    #[test]
    fn every_default_rule_compiles_and_is_well_formed() {
        let mut names: Vec<&str> = DEFAULT_RULES.iter().map(|r| r.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DEFAULT_RULES.len(), "names are unique");
        for (name, expr, weight, action, doc) in DEFAULT_RULES {
            compile(expr).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!((0.0..=1.0).contains(weight), "{name}");
            assert!(Action::parse(action).is_some(), "{name}");
            assert!(!doc.is_empty());
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
