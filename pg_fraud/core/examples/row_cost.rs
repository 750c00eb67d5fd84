//! Pure per-row cost of the scoring path (features + rules + state updates), without
//! Postgres: `cargo run --release -p fraud_core --example row_cost`.

use std::collections::HashMap;
use std::time::Instant;

use fraud_core::defaults::DEFAULT_RULES;
use fraud_core::features::{compute, FeatureConfig, KeyStates, Txn};
use fraud_core::rules::compile;
use fraud_core::score::{decide, Action, RuleSpec, Thresholds};
use fraud_core::state::{Kind, State, StateView};

fn main() {
    let rules: Vec<RuleSpec> = DEFAULT_RULES
        .iter()
        .map(|(n, e, w, a, _)| RuleSpec {
            name: n.to_string(),
            expression: e.to_string(),
            compiled: compile(e).unwrap(),
            weight: *w,
            action: Action::parse(a).unwrap(),
        })
        .collect();
    let n = 200_000i64;
    let t0 = 1_700_000_000_000_000i64;
    let keys: Vec<[String; 4]> = (0..n)
        .map(|g| {
            [
                format!("card_{}", g % 5000),
                format!("m_{}", g % 50),
                format!("dev_{}", g % 5000),
                format!("10.0.{}.1", g % 200),
            ]
        })
        .collect();
    // one delta per key, like a bulk insert into an empty watched table
    let mut delta: HashMap<(Kind, &str), State> = HashMap::new();
    let cfg = FeatureConfig::default();
    let th = Thresholds::default();
    let start = Instant::now();
    let mut alerts = 0;
    for g in 0..n {
        let k = &keys[g as usize];
        let t_us = t0 + g * 500_000;
        let txn = Txn {
            entity: Some(&k[0]),
            amount: Some((g % 200) as f64),
            t_us,
            now_us: t_us,
            merchant: Some(&k[1]),
            device: Some(&k[2]),
            ip: Some(&k[3]),
            country: Some("FR"),
            location: Some((48.0 + (g % 100) as f64 / 100.0, 2.0 + (g % 100) as f64 / 100.0)),
            ..Default::default()
        };
        let fv = {
            let get = |i: usize| delta.get(&(Kind::ALL[i], k[i].as_str())).map(StateView::one);
            let states = KeyStates { entity: get(0), merchant: get(1), device: get(2), ip: get(3) };
            compute(&txn, &states, &cfg)
        };
        let o = decide(&rules, &fv, &[], &th);
        alerts += o.alert as u32;
        let ev = txn.event(t_us);
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            delta.entry((kind, k[i].as_str())).or_default().record(kind, &ev);
        }
    }
    let el = start.elapsed();
    println!("{n} rows in {:?}: {:.2} µs/row, {alerts} alerts", el, el.as_secs_f64() * 1e6 / n as f64);
}
