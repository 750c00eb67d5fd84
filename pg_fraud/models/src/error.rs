//! The crate's single error type.

use thiserror::Error;

/// Every way training, scoring, evaluation or decoding can fail.
///
/// Messages name the offending input (a feature, a parameter, a length) so the extension can
/// pass them to `ereport` unchanged and a DBA can act on them without reading this crate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// Fewer training rows than the algorithm can learn anything from.
    #[error("training needs at least {needed} rows, got {got}")]
    TooFewRows {
        /// Minimum number of rows.
        needed: usize,
        /// Rows actually given.
        got: usize,
    },

    /// The training matrix has zero columns.
    #[error("training data has no feature columns")]
    NoFeatures,

    /// The number of feature names differs from the number of matrix columns.
    #[error("{names} feature names were given for a matrix with {columns} columns")]
    FeatureNameCount {
        /// Names given.
        names: usize,
        /// Columns in the matrix.
        columns: usize,
    },

    /// A feature name is empty or appears twice.
    #[error("feature name {name:?} is empty or duplicated")]
    BadFeatureName {
        /// The offending name.
        name: String,
    },

    /// A per-row input (labels, timestamps, scores) does not have one entry per row.
    #[error("{what} has {got} entries but {expected} were expected (one per row)")]
    LengthMismatch {
        /// Which input, e.g. `"labels"`.
        what: &'static str,
        /// Entries expected.
        expected: usize,
        /// Entries given.
        got: usize,
    },

    /// A feature column has no finite value at all, so it cannot be imputed or split on.
    #[error("feature {feature:?} has no finite value in {rows} training rows (all NaN or ±Infinity)")]
    NoFiniteValues {
        /// The feature's name.
        feature: String,
        /// Training rows looked at.
        rows: usize,
    },

    /// Every training row is the same after imputation: no split is possible.
    #[error("all {rows} training rows are identical (after imputing missing values): there is nothing to learn")]
    IdenticalRows {
        /// Training rows looked at.
        rows: usize,
    },

    /// No labels were given to a supervised trainer.
    #[error("no labels given: the classifier needs a fraud/genuine label for every training row")]
    NoLabels,

    /// Only one class is present where both are required.
    #[error("{context} needs both classes, got {positives} positive (fraud) and {negatives} negative (genuine) rows")]
    OneClass {
        /// What needed both classes, e.g. `"classifier training"` or `"ROC AUC"`.
        context: &'static str,
        /// Positive rows seen.
        positives: usize,
        /// Negative rows seen.
        negatives: usize,
    },

    /// A metric that needs at least one positive row got none.
    #[error("{metric} needs at least one positive (fraud) row, got none among {rows}")]
    NoPositives {
        /// The metric's name.
        metric: &'static str,
        /// Rows given.
        rows: usize,
    },

    /// A training or evaluation parameter is out of range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A row passed to a model has the wrong number of features.
    #[error("row has {got} features but the model was trained on {expected}")]
    RowLength {
        /// Features the model expects.
        expected: usize,
        /// Features in the row.
        got: usize,
    },

    /// A metric was asked of empty input.
    #[error("{metric} of an empty input is undefined")]
    EmptyInput {
        /// The metric's name.
        metric: &'static str,
    },

    /// A score given to a metric is NaN (so it cannot be ranked).
    #[error("score at index {index} is NaN: scores must be comparable to be ranked")]
    NanScore {
        /// Position of the first NaN.
        index: usize,
    },

    /// A time split would leave one side empty.
    #[error("time split leaves the {side} set empty ({rows} rows, {distinct} distinct timestamps)")]
    EmptySplit {
        /// `"train"` or `"validation"`.
        side: &'static str,
        /// Rows given.
        rows: usize,
        /// Distinct timestamps among them.
        distinct: usize,
    },

    /// The underlying learner (smartcore) rejected the data.
    #[error("tree learner failed: {0}")]
    Learner(String),

    /// A serialized model is truncated, corrupted or not a model at all.
    #[error("corrupt model blob: {reason}")]
    Corrupt {
        /// What check failed.
        reason: String,
    },

    /// A serialized model was written by a newer (or unknown) format version.
    #[error("model format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the blob.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
}

impl ModelError {
    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        ModelError::Corrupt { reason: reason.into() }
    }

    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        ModelError::InvalidParameter { name, reason: reason.into() }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
