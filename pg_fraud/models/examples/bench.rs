//! Times fraud_models on a CSV written by `bench/sklearn_bench.py gen`, for comparison with
//! scikit-learn on the very same rows. Prints one JSON object on stdout.
//!
//! Run through `bench/run.sh`, or by hand:
//! `cargo run --release -p fraud_models --example bench -- data.csv`
//!
//! CSV layout: header `ts,label,<feature>...`; rows in time order; `nan` for missing values.
//! The first 80% of rows train, the last 20% are held out, as in the Python script.

use std::hint::black_box;
use std::time::Instant;

use fraud_models::metrics::roc_auc;
use fraud_models::{Classifier, ClassifierParams, IsolationForest, IsolationForestParams};
use ndarray::{s, Array2};

/// Single-row calls timed per model: enough for a stable p99.
const LATENCY_ROWS: usize = 20_000;
/// Batch runs per model; the fastest counts, so that a burst of load from other processes on
/// a shared machine does not decide the figure (the Python side does the same).
const BATCH_REPEATS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: bench <data.csv> [rf_max_samples]")?;
    let rf_max_samples: usize = match std::env::args().nth(2) {
        Some(v) => v.parse()?,
        None => 20_000,
    };
    let (names, x, labels) = read_csv(&path)?;
    let n = x.nrows();
    let cut = n * 8 / 10;
    let (train, test) = (x.slice(s![..cut, ..]), x.slice(s![cut.., ..]));
    let (y_train, y_test) = (&labels[..cut], &labels[cut..]);

    // Isolation forest: scikit-learn's defaults (100 trees, 256 rows, depth ceil(log2 256)).
    let if_params = IsolationForestParams { n_trees: 100, sample_size: 256, max_depth: None, seed: 42 };
    let t = Instant::now();
    let iforest = IsolationForest::fit(train, &names, &if_params)?;
    let if_fit = t.elapsed().as_secs_f64();
    let (if_scores, if_batch) = best_of(BATCH_REPEATS, || iforest.score_batch(test))?;
    let if_auc = roc_auc(&if_scores, y_test)?;
    let if_latency = latencies(test, |row| iforest.score(row).map(|_| ()))?;

    let rf_params = ClassifierParams {
        n_trees: 100,
        max_depth: 12,
        max_samples: Some(rf_max_samples),
        seed: 42,
        ..ClassifierParams::default()
    };
    let t = Instant::now();
    let forest = Classifier::fit(train, y_train, &names, &rf_params)?;
    let rf_fit = t.elapsed().as_secs_f64();
    let (rf_scores, rf_batch) = best_of(BATCH_REPEATS, || forest.predict_proba_batch(test))?;
    let rf_auc = roc_auc(&rf_scores, y_test)?;
    let rf_latency = latencies(test, |row| forest.predict_proba(row).map(|_| ()))?;

    let test_rows = test.nrows() as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust",
            "rows": n,
            "train_rows": cut,
            "test_rows": test.nrows(),
            "features": names.len(),
            "test_positives": y_test.iter().filter(|&&v| v).count(),
            "iforest": {
                "fit_s": if_fit,
                "batch_rows_per_s": test_rows / if_batch,
                "single_p50_us": if_latency.0,
                "single_p99_us": if_latency.1,
                "auc": if_auc,
                "nodes": iforest.node_count(),
            },
            "rf": {
                "fit_s": rf_fit,
                "batch_rows_per_s": test_rows / rf_batch,
                "single_p50_us": rf_latency.0,
                "single_p99_us": rf_latency.1,
                "auc": rf_auc,
                "nodes": forest.node_count(),
            },
        })
    );
    Ok(())
}

/// The result and the fastest wall time of `repeats` runs of `f`.
fn best_of<T>(repeats: usize, mut f: impl FnMut() -> fraud_models::Result<T>) -> fraud_models::Result<(T, f64)> {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let value = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(value);
    }
    let out = out.ok_or_else(|| fraud_models::ModelError::InvalidParameter {
        name: "repeats",
        reason: "must be at least 1".into(),
    })?;
    Ok((out, best))
}

/// p50 and p99 of single-row calls in microseconds, over the first held-out rows.
fn latencies(
    x: ndarray::ArrayView2<'_, f64>,
    mut score: impl FnMut(&[f64]) -> fraud_models::Result<()>,
) -> fraud_models::Result<(f64, f64)> {
    let rows: Vec<Vec<f64>> = x.rows().into_iter().take(LATENCY_ROWS).map(|r| r.to_vec()).collect();
    let mut times = Vec::with_capacity(rows.len());
    for row in &rows {
        let t = Instant::now();
        black_box(score(black_box(row))?);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

type Dataset = (Vec<String>, Array2<f64>, Vec<bool>);

fn read_csv(path: &str) -> Result<Dataset, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty csv")?.split(',').collect();
    if header.len() < 3 || header[0] != "ts" || header[1] != "label" {
        return Err("csv header must start with ts,label".into());
    }
    let names: Vec<String> = header[2..].iter().map(|s| s.to_string()).collect();
    let p = names.len();
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines.enumerate() {
        let mut fields = line.split(',');
        fields.next();
        let label: f64 = fields.next().ok_or("short row")?.parse()?;
        labels.push(label != 0.0);
        let before = values.len();
        for f in fields {
            values.push(f.parse::<f64>()?);
        }
        if values.len() - before != p {
            return Err(format!("row {} has {} features", i + 2, values.len() - before).into());
        }
    }
    let x = Array2::from_shape_vec((labels.len(), p), values)?;
    Ok((names, x, labels))
}
