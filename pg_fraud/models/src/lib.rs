//! Models for pg_fraud: an isolation forest, a supervised classifier, quality metrics, a
//! time-based train/validation split, and a versioned, checksummed binary format.
//!
//! This crate never sees a Postgres type. The extension turns each transaction into a
//! fixed-order feature vector (`&[f64]`, NaN meaning "missing"), trains on matrices of such
//! vectors inside a backend (single-threaded, deterministic for a seed, no global state), and
//! scores one row at a time from an INSERT trigger, where [`Model::score`] allocates nothing
//! and takes microseconds.
//!
//! Missing and non-finite values: NaN becomes the feature's training median, at training and
//! at scoring time; ±Infinity is clipped to the training range when training and compared
//! as-is when scoring, which sends it to the same side of every split. A column with no finite
//! training value is an error.
//!
//! Class imbalance (the classifier): each tree is grown by smartcore on a balanced sample
//! (every fraud row up to a cap, as many genuine rows drawn afresh per tree), and the forest's
//! balanced-world probability is mapped back to the real fraud rate with the undersampling
//! prior correction. See [`Classifier`].
//!
//! ```
//! use fraud_models::{IsolationForest, IsolationForestParams, Model};
//! use ndarray::array;
//!
//! let x = array![[10.0, 0.0], [12.0, 1.0], [11.0, 0.0], [9.0, 1.0], [10.5, f64::NAN], [500.0, 1.0]];
//! let forest = IsolationForest::fit(x.view(), &["amount", "is_new_device"], &IsolationForestParams::default())?;
//! let blob = Model::from(forest).to_bytes()?;
//!
//! // Later, in the trigger: decode once per model version, then score rows.
//! let model = Model::from_bytes(&blob)?;
//! let odd = model.score(&[480.0, 1.0])?;
//! let usual = model.score(&[10.2, f64::NAN])?;
//! assert!(odd > usual);
//! let why = model.explain(&[480.0, 1.0])?;
//! assert!(why.attribution[0] > why.attribution[1]);
//! # Ok::<(), fraud_models::ModelError>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod classifier;
mod data;
mod error;
mod iforest;
pub mod metrics;
mod model;
mod rng;
mod sample;
mod split;
mod tree;

#[cfg(test)]
mod testutil;

pub use classifier::{Classifier, ClassifierParams};
pub use error::{ModelError, Result};
pub use iforest::{average_path_length, IsolationForest, IsolationForestParams};
pub use model::{Model, FORMAT_VERSION, MAGIC};
pub use sample::Reservoir;
pub use split::{time_split, train_classifier, TimeSplit, TrainConfig, ValidationReport};

/// Why a row got its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The same value `score` returns for the row.
    pub score: f64,
    /// Per-feature share of the decision, in the model's feature order: every entry >= 0 and
    /// the entries sum to 1 (all zero only when no feature influenced the result at all).
    pub attribution: Vec<f64>,
    /// Isolation forest only: the mean path length E[h(x)] over the trees.
    pub average_path_length: Option<f64>,
    /// Classifier only: each feature's signed push on the forest's balanced-sample fraud
    /// probability along the decision paths (positive = towards fraud); they add up to that
    /// probability minus the forest's base value. `attribution` is their absolute share.
    pub signed_contributions: Option<Vec<f64>>,
}

/// Scales non-negative credits to sum 1; all-zero input stays all zero.
pub(crate) fn normalise(credit: &[f64]) -> Vec<f64> {
    let total: f64 = credit.iter().sum();
    if total > 0.0 && total.is_finite() {
        credit.iter().map(|c| c / total).collect()
    } else {
        vec![0.0; credit.len()]
    }
}
