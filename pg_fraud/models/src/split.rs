//! Time-based train/validation split and the supervised training entry point.
//!
//! Fraud patterns drift and labels arrive late, so a random split flatters a model: it lets
//! the forest learn from next week's fraud to predict last week's. Validating on the most
//! recent slice of time is what the model will face once deployed.

use ndarray::ArrayView2;
use serde::Serialize;

use crate::classifier::{Classifier, ClassifierParams};
use crate::error::{ModelError, Result};
use crate::metrics::{self, Confusion};

/// Row indices of a time split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSplit {
    /// Rows strictly before `cutoff`, in ascending index order.
    pub train: Vec<usize>,
    /// Rows at or after `cutoff`, in ascending index order.
    pub validation: Vec<usize>,
    /// First timestamp of the validation set (same unit as the input).
    pub cutoff: i64,
}

/// Splits rows by time: the latest `validation_fraction` of rows (by timestamp) validate.
///
/// Timestamps are integers in any unit (the extension passes Postgres microseconds). Rows
/// sharing a timestamp always land on the same side, so the validation share can be slightly
/// above the requested one; if the chosen cutoff would leave no training row, the cutoff
/// moves to the second-earliest timestamp. Errors: fewer than 2 rows, a fraction outside
/// (0, 1), or a single distinct timestamp (no split can separate anything).
pub fn time_split(timestamps: &[i64], validation_fraction: f64) -> Result<TimeSplit> {
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(ModelError::param(
            "validation_fraction",
            format!("must be strictly between 0 and 1, got {validation_fraction}"),
        ));
    }
    let n = timestamps.len();
    if n < 2 {
        return Err(ModelError::TooFewRows { needed: 2, got: n });
    }
    let mut sorted = timestamps.to_vec();
    sorted.sort_unstable();
    let validation_rows = ((n as f64 * validation_fraction).ceil() as usize).clamp(1, n - 1);
    let mut cutoff = sorted[n - validation_rows];
    if cutoff == sorted[0] {
        // Everything up to the cutoff shares the earliest timestamp: move to the next one.
        match sorted.iter().find(|&&t| t > sorted[0]) {
            Some(&next) => cutoff = next,
            None => return Err(ModelError::EmptySplit { side: "train", rows: n, distinct: 1 }),
        }
    }
    let (validation, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| timestamps[i] >= cutoff);
    Ok(TimeSplit { train, validation, cutoff })
}

/// How [`train_classifier`] validates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    /// Share of the most recent rows held out (default 0.2).
    pub validation_fraction: f64,
    /// Probability at or above which a row counts as flagged for precision/recall (default
    /// 0.5, on the calibrated probability).
    pub threshold: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { validation_fraction: 0.2, threshold: 0.5 }
    }
}

/// Quality of a classifier on its held-out, most recent rows. Serializes to the JSON the
/// extension stores with the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    /// Rows the model was trained on.
    pub train_rows: usize,
    /// Held-out rows.
    pub validation_rows: usize,
    /// Fraud rows in the training split.
    pub train_positives: usize,
    /// Fraud rows in the validation split.
    pub validation_positives: usize,
    /// First timestamp of the validation split.
    pub cutoff: i64,
    /// ROC AUC on validation; `None` when the validation split has a single class.
    pub auc: Option<f64>,
    /// Average precision on validation; `None` when it has no fraud row.
    pub average_precision: Option<f64>,
    /// The threshold the counts below use.
    pub threshold: f64,
    /// Confusion counts at `threshold`.
    pub confusion: Confusion,
    /// Precision at `threshold`; `None` when nothing was flagged.
    pub precision: Option<f64>,
    /// Recall at `threshold`; `None` when the validation split has no fraud row.
    pub recall: Option<f64>,
    /// F1 at `threshold`; `None` when precision or recall is undefined.
    pub f1: Option<f64>,
}

/// Trains a [`Classifier`] on all but the most recent rows and measures it on those.
///
/// The returned model is the one trained on the training split, so the report describes
/// exactly the model returned (retraining on everything would ship an unmeasured model).
/// Errors: those of [`time_split`] and [`Classifier::fit`], plus labels or timestamps whose
/// length differs from the row count, and a threshold that is NaN.
pub fn train_classifier<S: AsRef<str>>(
    x: ArrayView2<'_, f64>,
    labels: &[bool],
    timestamps: &[i64],
    feature_names: &[S],
    params: &ClassifierParams,
    config: &TrainConfig,
) -> Result<(Classifier, ValidationReport)> {
    let n = x.nrows();
    if labels.is_empty() && n > 0 {
        return Err(ModelError::NoLabels);
    }
    for (what, got) in [("labels", labels.len()), ("timestamps", timestamps.len())] {
        if got != n {
            return Err(ModelError::LengthMismatch { what, expected: n, got });
        }
    }
    if config.threshold.is_nan() {
        return Err(ModelError::param("threshold", "must not be NaN"));
    }
    let split = time_split(timestamps, config.validation_fraction)?;
    let model = Classifier::fit_rows(x, labels, &split.train, feature_names, params)?;

    let mut row = vec![0.0; x.ncols()];
    let mut scores = Vec::with_capacity(split.validation.len());
    let mut held_out_labels = Vec::with_capacity(split.validation.len());
    for &i in &split.validation {
        for (dst, &v) in row.iter_mut().zip(x.row(i).iter()) {
            *dst = v;
        }
        scores.push(model.predict_proba(&row)?);
        held_out_labels.push(labels[i]);
    }
    let confusion = metrics::confusion(&scores, &held_out_labels, config.threshold)?;
    let report = ValidationReport {
        train_rows: split.train.len(),
        validation_rows: split.validation.len(),
        train_positives: model.training_positives(),
        validation_positives: held_out_labels.iter().filter(|&&y| y).count(),
        cutoff: split.cutoff,
        auc: metrics::roc_auc(&scores, &held_out_labels).ok(),
        average_precision: metrics::average_precision(&scores, &held_out_labels).ok(),
        threshold: config.threshold,
        confusion,
        precision: confusion.precision(),
        recall: confusion.recall(),
        f1: confusion.f1(),
    };
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labelled, names};

    #[test]
    fn latest_rows_validate() {
        let ts = [50, 10, 40, 20, 30, 60, 70, 80, 90, 100];
        let s = time_split(&ts, 0.3).unwrap();
        assert_eq!(s.cutoff, 80);
        assert_eq!(s.validation, vec![7, 8, 9]);
        assert_eq!(s.train, vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn ties_stay_on_one_side() {
        let ts = [1, 2, 3, 3, 3, 3];
        let s = time_split(&ts, 0.2).unwrap();
        assert_eq!(s.cutoff, 3);
        assert_eq!(s.validation, vec![2, 3, 4, 5]);
        // The cutoff would be the earliest timestamp: it moves to the next one.
        let ts = [5, 5, 5, 9];
        let s = time_split(&ts, 0.9).unwrap();
        assert_eq!((s.train, s.validation), (vec![0, 1, 2], vec![3]));
    }

    #[test]
    fn impossible_splits_are_errors() {
        assert_eq!(
            time_split(&[7, 7, 7], 0.5).unwrap_err(),
            ModelError::EmptySplit { side: "train", rows: 3, distinct: 1 }
        );
        assert!(matches!(time_split(&[1], 0.5), Err(ModelError::TooFewRows { needed: 2, got: 1 })));
        for f in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(time_split(&[1, 2, 3], f), Err(ModelError::InvalidParameter { .. })));
        }
    }

    #[test]
    fn train_classifier_reports_held_out_quality() {
        let (x, y) = labelled(3000, 5, 0.03, 31);
        let ts: Vec<i64> = (0..3000).map(|i| 1_000_000 + i * 60).collect();
        let params = ClassifierParams { n_trees: 30, max_depth: 8, ..ClassifierParams::default() };
        let config = TrainConfig { validation_fraction: 0.25, threshold: 0.2 };
        let (model, report) = train_classifier(x.view(), &y, &ts, &names(5), &params, &config).unwrap();
        assert_eq!(report.train_rows, 2250);
        assert_eq!(report.validation_rows, 750);
        assert_eq!(model.training_rows(), 2250);
        assert_eq!(report.train_positives + report.validation_positives, y.iter().filter(|&&v| v).count());
        assert_eq!(report.confusion.total(), 750);
        assert!(report.auc.unwrap() > 0.9, "{report:?}");
        assert!(report.average_precision.unwrap() > 0.3, "{report:?}");
        assert_eq!(report.precision, report.confusion.precision());
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["auc"].is_number());
        assert!(json["confusion"]["true_positives"].is_number());
    }

    #[test]
    fn train_classifier_checks_lengths() {
        let (x, y) = labelled(100, 3, 0.1, 1);
        let ts: Vec<i64> = (0..100).collect();
        let p = ClassifierParams::default();
        let c = TrainConfig::default();
        let n = names(3);
        assert!(matches!(
            train_classifier(x.view(), &y, &ts[..50], &n, &p, &c),
            Err(ModelError::LengthMismatch { what: "timestamps", .. })
        ));
        assert_eq!(train_classifier(x.view(), &[], &ts, &n, &p, &c).unwrap_err(), ModelError::NoLabels);
        // All fraud in the validation window: training has one class.
        let late_fraud: Vec<bool> = (0..100).map(|i| i >= 90).collect();
        assert!(matches!(train_classifier(x.view(), &late_fraud, &ts, &n, &p, &c), Err(ModelError::OneClass { .. })));
    }
}
