//! Supervised fraud classifier: a balanced random forest whose trees smartcore grows and this
//! crate scores.
//!
//! Imbalance (fraud is ~0.5–2% of rows) is handled by *balanced undersampling per tree*
//! (Chen, Liaw & Breiman 2004, "balanced random forest"): every tree sees the positives
//! (up to a cap) and `negatives_per_positive` times as many genuine rows drawn without
//! replacement, a fresh draw per tree, so the forest as a whole still sees most genuine rows.
//! smartcore then bootstraps within that sample, per class, and picks `max_features` candidate
//! features per split. Compared with class weights this also bounds each tree's training set,
//! which matters because smartcore's splitter scans the whole tree sample at every node.
//!
//! Probabilities: each leaf holds the fraud fraction of its tree's sample that reached it,
//! and the forest averages them. That fraction lives in the balanced world (prior π_s ≈ 50%),
//! so it is mapped back to the real base rate π with the standard undersampling correction
//! (Elkan 2001; Dal Pozzolo et al. 2015): odds(p) = odds(p_s) · [odds(π) / odds(π_s)]. The
//! result is "calibrated-ish": right on average when the label rate matches production, and
//! a monotone map, so AUC and rankings are unchanged by it.
//!
//! Inference does not use smartcore: its predict takes a matrix and returns a hard vote. The
//! fitted trees are read back through smartcore's serde form into this crate's flat node
//! array (see [`crate::tree`]), which scores a row without allocating.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;

use crate::data::{check_feature_names, column_stats};
use crate::error::{ModelError, Result};
use crate::rng::TrainRng;
use crate::tree::{node_index, Forest, Node};
use crate::Explanation;

/// Largest forest accepted (a guard against typos, not a tuning limit).
const MAX_TREES: usize = 10_000;
/// Depth cap: beyond this trees only memorise, and it bounds the recursion that flattens them.
const MAX_DEPTH: u16 = 64;

/// Training parameters of a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierParams {
    /// Number of trees (default 100).
    pub n_trees: usize,
    /// Maximum depth, counted in splits from the root as in scikit-learn (default 12: deep
    /// enough for interactions such as "new device and far from home", shallow enough that a
    /// tree stays a few thousand nodes and a row is scored in microseconds).
    pub max_depth: u16,
    /// Minimum training rows in a leaf (default 1).
    pub min_samples_leaf: usize,
    /// Candidate features per split; `None` means floor(sqrt(features)), the usual choice.
    pub max_features: Option<usize>,
    /// Cap on each tree's balanced sample (positives + negatives); `None` means every
    /// positive plus `negatives_per_positive` times as many negatives.
    pub max_samples: Option<usize>,
    /// Genuine rows drawn per fraud row in each tree's sample (default 1.0 = balanced).
    pub negatives_per_positive: f64,
    /// Fraud rate that probabilities are calibrated to; `None` means the rate in the
    /// training labels. Set it when labelled rows over-represent fraud (e.g. only reviewed
    /// transactions are labelled).
    pub base_rate: Option<f64>,
    /// Seed: the same data, parameters and seed give a bit-identical model.
    pub seed: u64,
}

impl Default for ClassifierParams {
    fn default() -> Self {
        ClassifierParams {
            n_trees: 100,
            max_depth: 12,
            min_samples_leaf: 1,
            max_features: None,
            max_samples: None,
            negatives_per_positive: 1.0,
            base_rate: None,
            seed: 42,
        }
    }
}

impl ClassifierParams {
    fn validate(&self, n_features: usize) -> Result<()> {
        if self.n_trees == 0 || self.n_trees > MAX_TREES {
            return Err(ModelError::param(
                "n_trees",
                format!("must be between 1 and {MAX_TREES}, got {}", self.n_trees),
            ));
        }
        if !(1..=MAX_DEPTH).contains(&self.max_depth) {
            return Err(ModelError::param(
                "max_depth",
                format!("must be between 1 and {MAX_DEPTH}, got {}", self.max_depth),
            ));
        }
        if self.min_samples_leaf == 0 {
            return Err(ModelError::param("min_samples_leaf", "must be at least 1"));
        }
        if let Some(m) = self.max_features {
            if m == 0 || m > n_features {
                return Err(ModelError::param(
                    "max_features",
                    format!("must be between 1 and the {n_features} features, got {m}"),
                ));
            }
        }
        if let Some(s) = self.max_samples {
            if s < 2 {
                return Err(ModelError::param("max_samples", format!("must be at least 2, got {s}")));
            }
        }
        let r = self.negatives_per_positive;
        if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
            return Err(ModelError::param("negatives_per_positive", format!("must be in (0, 1000], got {r}")));
        }
        if let Some(b) = self.base_rate {
            if !(b > 0.0 && b < 1.0) {
                return Err(ModelError::param("base_rate", format!("must be strictly between 0 and 1, got {b}")));
            }
        }
        Ok(())
    }
}

/// A fitted fraud classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub(crate) feature_names: Vec<String>,
    /// Training medians: the value a missing (NaN) feature takes.
    pub(crate) medians: Vec<f64>,
    /// Leaf values are balanced-sample fraud fractions.
    pub(crate) forest: Forest,
    /// Fraud fraction at every node (parallel to `forest.nodes`), for explanations.
    pub(crate) node_fraction: Vec<f64>,
    /// odds(base rate) / odds(sample rate): the prior correction factor.
    pub(crate) odds_ratio: f64,
    /// Fraud rate probabilities are calibrated to.
    pub(crate) base_rate: f64,
    /// Fraud share of each tree's sample.
    pub(crate) sample_rate: f64,
    pub(crate) params: ClassifierParams,
    pub(crate) training_rows: usize,
    pub(crate) training_positives: usize,
}

impl Classifier {
    /// Fits the forest on every row of `x` with `labels` (true = fraud).
    ///
    /// Errors: no labels, a label count that differs from the row count, fewer than 2 rows,
    /// only one class, no columns or mismatched names, a column with no finite value, all
    /// rows identical, out-of-range parameters.
    pub fn fit<S: AsRef<str>>(
        x: ArrayView2<'_, f64>,
        labels: &[bool],
        feature_names: &[S],
        params: &ClassifierParams,
    ) -> Result<Self> {
        if labels.is_empty() && x.nrows() > 0 {
            return Err(ModelError::NoLabels);
        }
        if labels.len() != x.nrows() {
            return Err(ModelError::LengthMismatch { what: "labels", expected: x.nrows(), got: labels.len() });
        }
        let rows: Vec<usize> = (0..x.nrows()).collect();
        Self::fit_rows(x, labels, &rows, feature_names, params)
    }

    /// Fits on the subset `rows` of `x` (`labels` is indexed like `x`), without copying it.
    pub(crate) fn fit_rows<S: AsRef<str>>(
        x: ArrayView2<'_, f64>,
        labels: &[bool],
        rows: &[usize],
        feature_names: &[S],
        params: &ClassifierParams,
    ) -> Result<Self> {
        let names: Vec<String> = feature_names.iter().map(|s| s.as_ref().to_owned()).collect();
        check_feature_names(&names, x.ncols())?;
        params.validate(x.ncols())?;
        if rows.len() < 2 {
            return Err(ModelError::TooFewRows { needed: 2, got: rows.len() });
        }
        let (pos, neg): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&i| labels[i]);
        if pos.is_empty() || neg.is_empty() {
            return Err(ModelError::OneClass {
                context: "classifier training",
                positives: pos.len(),
                negatives: neg.len(),
            });
        }
        let stats = column_stats(x, rows, &names)?;

        let ratio = params.negatives_per_positive;
        let pos_cap = params.max_samples.map_or(usize::MAX, |s| ((s as f64 / (1.0 + ratio)).floor() as usize).max(1));
        let n_pos = pos.len().min(pos_cap);
        let n_neg = ((n_pos as f64 * ratio).round() as usize).clamp(1, neg.len());
        let sample_rate = n_pos as f64 / (n_pos + n_neg) as f64;
        let base_rate = params.base_rate.unwrap_or(pos.len() as f64 / rows.len() as f64);
        let odds = |p: f64| p / (1.0 - p);
        let odds_ratio = odds(base_rate) / odds(sample_rate);

        let p = x.ncols();
        let mtry = params.max_features.unwrap_or_else(|| ((p as f64).sqrt().floor() as usize).max(1));
        let mut rng = TrainRng::new(params.seed);
        let mut nodes = Vec::new();
        let mut fractions = Vec::new();
        let mut roots = Vec::with_capacity(params.n_trees);
        let m = n_pos + n_neg;
        let mut values = Vec::with_capacity(m * p);
        let mut y = Vec::with_capacity(m);
        for _ in 0..params.n_trees {
            values.clear();
            y.clear();
            for (class, members, draw) in [(1u32, &pos, n_pos), (0u32, &neg, n_neg)] {
                for k in rng.sample_indices(members.len(), draw) {
                    let i = members[k];
                    values.extend((0..p).map(|j| stats.clean(j, x[[i, j]])));
                    y.push(class);
                }
            }
            let tree_seed = rng.next_u64();
            let tree = grow_tree(&values, &y, p, mtry, params, tree_seed)?;
            roots.push(node_index(nodes.len())?);
            append_tree(&tree, &values, &y, p, &mut nodes, &mut fractions)?;
        }
        Ok(Classifier {
            feature_names: names,
            medians: stats.medians,
            forest: Forest { nodes, roots },
            node_fraction: fractions,
            odds_ratio,
            base_rate,
            sample_rate,
            params: params.clone(),
            training_rows: rows.len(),
            training_positives: pos.len(),
        })
    }

    /// Probability that the row is fraud, calibrated to the base rate (see the module docs).
    /// Allocation-free. Errors only if `row` has the wrong length.
    pub fn predict_proba(&self, row: &[f64]) -> Result<f64> {
        self.check_row(row)?;
        Ok(self.calibrate(self.balanced_probability(row)))
    }

    /// [`predict_proba`](Self::predict_proba) for every row of `x`, walking the trees block
    /// by block.
    pub fn predict_proba_batch(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>> {
        if x.ncols() != self.feature_names.len() {
            return Err(ModelError::RowLength { expected: self.feature_names.len(), got: x.ncols() });
        }
        let trees = self.forest.n_trees() as f64;
        let mut out = self.forest.sum_leaf_values_batch(x, &self.medians);
        for v in &mut out {
            *v = self.calibrate(*v / trees);
        }
        Ok(out)
    }

    /// The probability and each feature's part in it.
    ///
    /// Attribution follows the decision paths (Saabas' method): each split moves the fraud
    /// fraction from the parent's to the child's, and that change is credited to the split's
    /// feature, averaged over trees. The signed sums add up to the balanced-sample
    /// probability minus the forest's base value; `attribution` is their absolute share.
    pub fn explain(&self, row: &[f64]) -> Result<Explanation> {
        self.check_row(row)?;
        let mut signed = vec![0.0; self.feature_names.len()];
        let mut total = 0.0;
        for &root in &self.forest.roots {
            let leaf = self.forest.walk(root, row, &self.medians, |from, to| {
                signed[self.forest.nodes[from].feature as usize] += self.node_fraction[to] - self.node_fraction[from];
            });
            total += self.forest.nodes[leaf].value;
        }
        let trees = self.forest.n_trees() as f64;
        for c in &mut signed {
            *c /= trees;
        }
        let magnitude: Vec<f64> = signed.iter().map(|c| c.abs()).collect();
        Ok(Explanation {
            score: self.calibrate(total / trees),
            attribution: crate::normalise(&magnitude),
            average_path_length: None,
            signed_contributions: Some(signed),
        })
    }

    /// Feature names, in the order rows must follow.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Training medians used for missing values, in feature order.
    pub fn medians(&self) -> &[f64] {
        &self.medians
    }

    /// The parameters the model was trained with.
    pub fn params(&self) -> &ClassifierParams {
        &self.params
    }

    /// Fraud rate the probabilities are calibrated to.
    pub fn base_rate(&self) -> f64 {
        self.base_rate
    }

    /// Number of training rows.
    pub fn training_rows(&self) -> usize {
        self.training_rows
    }

    /// Number of fraud rows among the training rows.
    pub fn training_positives(&self) -> usize {
        self.training_positives
    }

    /// Number of nodes over all trees (a size indicator for dashboards).
    pub fn node_count(&self) -> usize {
        self.forest.nodes.len()
    }

    fn check_row(&self, row: &[f64]) -> Result<()> {
        if row.len() != self.feature_names.len() {
            return Err(ModelError::RowLength { expected: self.feature_names.len(), got: row.len() });
        }
        Ok(())
    }

    fn balanced_probability(&self, row: &[f64]) -> f64 {
        self.forest.sum_leaf_values(row, &self.medians) / self.forest.n_trees() as f64
    }

    /// Prior correction from the balanced sample to the base rate, in odds space.
    fn calibrate(&self, p: f64) -> f64 {
        let scaled = p * self.odds_ratio;
        let denominator = scaled + (1.0 - p);
        if denominator > 0.0 {
            (scaled / denominator).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Checks the invariants scoring relies on; run after decoding.
    pub(crate) fn validate(&self) -> Result<()> {
        let p = self.feature_names.len();
        if p == 0 || self.medians.len() != p {
            return Err(ModelError::corrupt("feature names and medians disagree"));
        }
        if self.node_fraction.len() != self.forest.nodes.len()
            || self.node_fraction.iter().any(|f| !(0.0..=1.0).contains(f))
        {
            return Err(ModelError::corrupt("node fractions do not match the nodes or leave [0, 1]"));
        }
        if !(self.odds_ratio.is_finite() && self.odds_ratio > 0.0) {
            return Err(ModelError::corrupt("calibration factor is not positive"));
        }
        self.forest.validate(p)
    }
}

/// The parts of smartcore's serde form of a fitted tree that scoring needs. Field names are
/// those of smartcore 0.7.0's private `Node`; the exact version pin in Cargo.toml and the
/// tests keep them honest.
#[derive(Deserialize)]
struct LearnedForest {
    trees: Option<Vec<LearnedTree>>,
}

#[derive(Deserialize)]
struct LearnedTree {
    nodes: Vec<LearnedNode>,
}

#[derive(Deserialize)]
struct LearnedNode {
    split_feature: usize,
    split_value: Option<f64>,
    true_child: Option<usize>,
    false_child: Option<usize>,
}

/// Grows one tree with smartcore on a row-major sample.
fn grow_tree(
    values: &[f64],
    y: &[u32],
    p: usize,
    mtry: usize,
    params: &ClassifierParams,
    seed: u64,
) -> Result<LearnedTree> {
    let learner_error = |e: &dyn std::fmt::Display| ModelError::Learner(e.to_string());
    let matrix = DenseMatrix::new(y.len(), p, values.to_vec(), false).map_err(|e| learner_error(&e))?;
    let y = y.to_vec();
    // A one-tree smartcore forest rather than a bare decision tree: only the forest exposes
    // per-split feature subsampling (`m`) and the per-class bootstrap. smartcore counts the
    // root as level 1 and splits while level < max_depth, hence the +1 to mean "splits".
    let sc_params = RandomForestClassifierParameters::default()
        .with_n_trees(1)
        .with_max_depth(params.max_depth + 1)
        .with_min_samples_leaf(params.min_samples_leaf)
        .with_m(mtry)
        .with_seed(seed);
    // smartcore unwraps internally; our inputs are checked so it should never panic, but a
    // panic inside a Postgres backend is still an ERROR without context, so turn one into a
    // `Learner` error that says where it came from.
    let fitted: RandomForestClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>> =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| RandomForestClassifier::fit(&matrix, &y, sc_params)))
            .map_err(|_| ModelError::Learner("smartcore panicked while growing a tree".into()))?
            .map_err(|e| learner_error(&e))?;
    let form = serde_json::to_value(&fitted).map_err(|e| learner_error(&e))?;
    let learned: LearnedForest = serde_json::from_value(form).map_err(|e| learner_error(&e))?;
    learned.trees.and_then(|mut t| t.pop()).ok_or_else(|| ModelError::Learner("smartcore returned no tree".into()))
}

/// Flattens a smartcore tree into pre-order `nodes`, then routes the tree's sample through it
/// to give every node its fraud fraction (leaves output it).
fn append_tree(
    tree: &LearnedTree,
    values: &[f64],
    y: &[u32],
    p: usize,
    nodes: &mut Vec<Node>,
    fractions: &mut Vec<f64>,
) -> Result<()> {
    let root = nodes.len();
    flatten(&tree.nodes, 0, nodes, 0)?;
    let count = nodes.len() - root;
    let mut seen = vec![0u32; count];
    let mut fraud = vec![0u32; count];
    for (row, &label) in values.chunks_exact(p).zip(y) {
        let mut i = root;
        loop {
            seen[i - root] += 1;
            fraud[i - root] += label;
            let node = nodes[i];
            if node.is_leaf() {
                break;
            }
            i = if row[node.feature as usize] <= node.value { i + 1 } else { node.right as usize };
        }
    }
    // Pre-order puts parents first, so a node the sample never reached (possible only if a
    // threshold fell exactly on a value smartcore bootstrapped away) inherits its parent's.
    let mut parent_of = vec![usize::MAX; count];
    for local in 0..count {
        let node = nodes[root + local];
        if !node.is_leaf() {
            parent_of[local + 1] = local;
            parent_of[node.right as usize - root] = local;
        }
        let fraction = if seen[local] > 0 {
            f64::from(fraud[local]) / f64::from(seen[local])
        } else if parent_of[local] != usize::MAX {
            fractions[root + parent_of[local]]
        } else {
            0.0
        };
        fractions.push(fraction);
        if node.is_leaf() {
            nodes[root + local].value = fraction;
        }
    }
    Ok(())
}

fn flatten(learned: &[LearnedNode], i: usize, out: &mut Vec<Node>, depth: usize) -> Result<()> {
    let node = learned.get(i).ok_or_else(|| ModelError::Learner(format!("tree node {i} is missing")))?;
    if depth > usize::from(MAX_DEPTH) + 1 {
        return Err(ModelError::Learner("tree deeper than max_depth".into()));
    }
    match (node.true_child, node.false_child, node.split_value) {
        (Some(left), Some(right), Some(threshold)) => {
            let feature = u32::try_from(node.split_feature)
                .map_err(|_| ModelError::Learner("split feature out of range".into()))?;
            let me = out.len();
            out.push(Node { value: threshold, feature, right: 0 });
            flatten(learned, left, out, depth + 1)?;
            out[me].right = node_index(out.len())?;
            flatten(learned, right, out, depth + 1)
        }
        _ => {
            out.push(Node::leaf(0.0));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::roc_auc;
    use crate::testutil::{labelled, names};

    fn small_params() -> ClassifierParams {
        ClassifierParams { n_trees: 30, max_depth: 8, ..ClassifierParams::default() }
    }

    #[test]
    fn learns_shifted_fraud_with_good_auc() {
        let (x, y) = labelled(4000, 6, 0.02, 11);
        let model = Classifier::fit(x.view(), &y, &names(6), &small_params()).unwrap();
        let (xt, yt) = labelled(4000, 6, 0.02, 12);
        let scores = model.predict_proba_batch(xt.view()).unwrap();
        let auc = roc_auc(&scores, &yt).unwrap();
        assert!(auc > 0.93, "auc {auc}");
        // Single-row and batch paths agree exactly.
        for (row, &batch) in xt.rows().into_iter().zip(&scores).take(50) {
            assert_eq!(model.predict_proba(&row.to_vec()).unwrap(), batch);
        }
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (x, y) = labelled(800, 4, 0.05, 3);
        let a = Classifier::fit(x.view(), &y, &names(4), &small_params()).unwrap();
        let b = Classifier::fit(x.view(), &y, &names(4), &small_params()).unwrap();
        assert_eq!(a, b);
        let other = ClassifierParams { seed: 9, ..small_params() };
        let c = Classifier::fit(x.view(), &y, &names(4), &other).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn probabilities_are_calibrated_to_the_base_rate() {
        let (x, y) = labelled(6000, 5, 0.02, 21);
        let model = Classifier::fit(x.view(), &y, &names(5), &small_params()).unwrap();
        let scores = model.predict_proba_batch(x.view()).unwrap();
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let rate = y.iter().filter(|&&v| v).count() as f64 / y.len() as f64;
        // The balanced forest alone would average about 0.5; the prior correction brings the
        // mean back near the label rate (within a factor of 2 on this easy-ish problem).
        assert!(mean > rate / 2.0 && mean < rate * 2.0, "mean {mean} rate {rate}");
        let flagged_fraud = model.predict_proba(&[3.0, 3.0, 1.0, 0.0, 0.0]).unwrap();
        let typical = model.predict_proba(&[0.0; 5]).unwrap();
        assert!(flagged_fraud > 0.3 && typical < 0.01, "{flagged_fraud} {typical}");

        // A higher base rate raises probabilities without changing the ranking.
        let params = ClassifierParams { base_rate: Some(0.2), ..small_params() };
        let shifted = Classifier::fit(x.view(), &y, &names(5), &params).unwrap();
        let s2 = shifted.predict_proba_batch(x.view()).unwrap();
        assert!(s2.iter().zip(&scores).all(|(b, a)| b >= a));
        assert_eq!(roc_auc(&s2, &y).unwrap(), roc_auc(&scores, &y).unwrap());
    }

    #[test]
    fn explanation_follows_the_decision_paths() {
        let (x, y) = labelled(3000, 5, 0.03, 5);
        let model = Classifier::fit(x.view(), &y, &names(5), &small_params()).unwrap();
        let row = [3.0, 3.0, 1.0, 0.0, 0.0];
        let e = model.explain(&row).unwrap();
        assert_eq!(e.score, model.predict_proba(&row).unwrap());
        assert!((e.attribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // Contributions add up to (balanced probability − mean root fraction).
        let signed = e.signed_contributions.clone().unwrap();
        let roots: f64 = model.forest.roots.iter().map(|&r| model.node_fraction[r as usize]).sum::<f64>()
            / model.forest.n_trees() as f64;
        let balanced = model.balanced_probability(&row);
        assert!((signed.iter().sum::<f64>() - (balanced - roots)).abs() < 1e-9);
        // The two strongly shifted features carry most of the push towards fraud.
        assert!(signed[0] > 0.0 && signed[1] > 0.0);
        assert!(e.attribution[0] + e.attribution[1] > 0.6, "{:?}", e.attribution);
    }

    #[test]
    fn missing_values_take_the_training_median() {
        let (x, y) = labelled(1000, 3, 0.05, 8);
        let model = Classifier::fit(x.view(), &y, &names(3), &small_params()).unwrap();
        let m = model.medians()[0];
        assert_eq!(model.predict_proba(&[f64::NAN, 1.0, 0.5]).unwrap(), model.predict_proba(&[m, 1.0, 0.5]).unwrap());
        let p = model.predict_proba(&[f64::INFINITY, f64::NEG_INFINITY, 0.5]);
        assert!(p.unwrap().is_finite());
    }

    #[test]
    fn bad_training_input_is_a_named_error() {
        let (x, y) = labelled(200, 3, 0.1, 2);
        let n = names(3);
        let p = small_params();
        assert_eq!(Classifier::fit(x.view(), &[], &n, &p).unwrap_err(), ModelError::NoLabels);
        assert_eq!(
            Classifier::fit(x.view(), &y[..10], &n, &p).unwrap_err(),
            ModelError::LengthMismatch { what: "labels", expected: 200, got: 10 }
        );
        let empty = ndarray::Array2::<f64>::zeros((0, 3));
        assert_eq!(
            Classifier::fit(empty.view(), &[], &n, &p).unwrap_err(),
            ModelError::TooFewRows { needed: 2, got: 0 }
        );
        assert_eq!(
            Classifier::fit(x.slice(ndarray::s![..1, ..]), &[true], &n, &p).unwrap_err(),
            ModelError::TooFewRows { needed: 2, got: 1 }
        );
        let all_genuine = vec![false; 200];
        let err = Classifier::fit(x.view(), &all_genuine, &n, &p).unwrap_err();
        assert_eq!(err, ModelError::OneClass { context: "classifier training", positives: 0, negatives: 200 });
        assert!(err.to_string().contains("0 positive"));
        let same = ndarray::Array2::from_elem((20, 3), 1.5);
        let labels: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        assert_eq!(Classifier::fit(same.view(), &labels, &n, &p).unwrap_err(), ModelError::IdenticalRows { rows: 20 });
        let mut inf_col = x.clone();
        inf_col.column_mut(2).fill(f64::INFINITY);
        assert!(matches!(Classifier::fit(inf_col.view(), &y, &n, &p), Err(ModelError::NoFiniteValues { .. })));
        for bad in [
            ClassifierParams { n_trees: 0, ..small_params() },
            ClassifierParams { max_depth: 0, ..small_params() },
            ClassifierParams { max_features: Some(4), ..small_params() },
            ClassifierParams { negatives_per_positive: f64::NAN, ..small_params() },
            ClassifierParams { base_rate: Some(1.0), ..small_params() },
            ClassifierParams { min_samples_leaf: 0, ..small_params() },
        ] {
            let err = Classifier::fit(x.view(), &y, &n, &bad).unwrap_err();
            assert!(matches!(err, ModelError::InvalidParameter { .. }), "{err}");
        }
        let model = Classifier::fit(x.view(), &y, &n, &p).unwrap();
        assert_eq!(model.predict_proba(&[0.0; 2]).unwrap_err(), ModelError::RowLength { expected: 3, got: 2 });
    }

    #[test]
    fn non_finite_training_values_are_tolerated() {
        let (mut x, y) = labelled(500, 3, 0.1, 4);
        x[[0, 0]] = f64::NAN;
        x[[1, 1]] = f64::INFINITY;
        x[[2, 2]] = f64::NEG_INFINITY;
        let model = Classifier::fit(x.view(), &y, &names(3), &small_params()).unwrap();
        assert!(model.forest.nodes.iter().all(|n| n.value.is_finite()));
    }

    #[test]
    fn sample_cap_and_ratio_shape_each_tree() {
        let (x, y) = labelled(2000, 4, 0.05, 6);
        let params =
            ClassifierParams { max_samples: Some(60), negatives_per_positive: 2.0, n_trees: 5, ..small_params() };
        let model = Classifier::fit(x.view(), &y, &names(4), &params).unwrap();
        // 60 / (1 + 2) = 20 positives and 40 negatives per tree.
        assert!((model.sample_rate - 20.0 / 60.0).abs() < 1e-12);
        assert!(model.node_count() > model.forest.n_trees());
    }
}
