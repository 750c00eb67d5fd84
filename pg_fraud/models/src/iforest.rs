//! Isolation forest (Liu, Ting & Zhou, 2008): unsupervised anomaly scores.
//!
//! Anomalies are few and different, so random axis-aligned cuts isolate them in fewer steps
//! than normal points. Each tree is grown on a small random subsample (`sample_size`, 256 by
//! default: the paper shows larger samples mostly add "swamping" of anomalies by normal points)
//! to a depth limit of ceil(log2(sample_size)), the average depth of a random binary tree,
//! below which only normal points would be separated further.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::data::{check_feature_names, column_stats, ColumnStats};
use crate::error::{ModelError, Result};
use crate::rng::TrainRng;
use crate::tree::{node_index, Forest, Node};
use crate::Explanation;

/// Euler–Mascheroni constant, for the harmonic-number approximation H(i) ≈ ln(i) + γ.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Largest forest accepted: far beyond any useful size, small enough that a typo (1e9 trees)
/// is an error rather than an out-of-memory backend.
const MAX_TREES: usize = 10_000;

/// c(n): the average path length of an unsuccessful search in a binary search tree of `n`
/// points, c(n) = 2·H(n−1) − 2(n−1)/n, with c(2) = 1 and c(0) = c(1) = 0.
///
/// It is both the normaliser of the anomaly score (the expected depth of a point in a tree
/// grown on `n` points) and the correction added at a leaf that still holds `n` points
/// because the depth limit stopped the tree: those points would have needed about c(n) more
/// cuts. H uses ln(i) + γ as in the paper (and scikit-learn), so scores are comparable.
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// Training parameters of an [`IsolationForest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForestParams {
    /// Number of trees (default 100; scores stabilise well before that per the paper).
    pub n_trees: usize,
    /// Rows drawn without replacement for each tree (default 256), clipped to the row count.
    pub sample_size: usize,
    /// Depth limit; `None` means ceil(log2(sample size)).
    pub max_depth: Option<usize>,
    /// Seed: the same data, parameters and seed give a bit-identical model.
    pub seed: u64,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        IsolationForestParams { n_trees: 100, sample_size: 256, max_depth: None, seed: 42 }
    }
}

impl IsolationForestParams {
    fn validate(&self) -> Result<()> {
        if self.n_trees == 0 || self.n_trees > MAX_TREES {
            return Err(ModelError::param(
                "n_trees",
                format!("must be between 1 and {MAX_TREES}, got {}", self.n_trees),
            ));
        }
        if self.sample_size < 2 {
            return Err(ModelError::param("sample_size", format!("must be at least 2, got {}", self.sample_size)));
        }
        if let Some(d) = self.max_depth {
            if !(1..=64).contains(&d) {
                return Err(ModelError::param("max_depth", format!("must be between 1 and 64, got {d}")));
            }
        }
        Ok(())
    }
}

/// A fitted isolation forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    pub(crate) feature_names: Vec<String>,
    /// Training medians: the value a missing (NaN) feature takes.
    pub(crate) medians: Vec<f64>,
    pub(crate) forest: Forest,
    /// Training-sample rows that reached each node (parallel to `forest.nodes`); only
    /// explanations read it.
    pub(crate) node_sizes: Vec<u32>,
    /// Rows each tree was grown on (ψ), after clipping to the training row count.
    pub(crate) sample_size: usize,
    pub(crate) max_depth: usize,
    pub(crate) params: IsolationForestParams,
    pub(crate) training_rows: usize,
}

impl IsolationForest {
    /// Fits a forest on the rows of `x` (one row per transaction, columns in the order of
    /// `feature_names`).
    ///
    /// Missing values (NaN) are imputed with the column median; ±Infinity is clipped to the
    /// column's finite range (see the crate docs). Errors: fewer than 2 rows, no columns, a
    /// name count that differs from the column count, a column with no finite value, all rows
    /// identical, or out-of-range parameters.
    pub fn fit<S: AsRef<str>>(
        x: ArrayView2<'_, f64>,
        feature_names: &[S],
        params: &IsolationForestParams,
    ) -> Result<Self> {
        params.validate()?;
        let names: Vec<String> = feature_names.iter().map(|s| s.as_ref().to_owned()).collect();
        check_feature_names(&names, x.ncols())?;
        let n = x.nrows();
        if n < 2 {
            return Err(ModelError::TooFewRows { needed: 2, got: n });
        }
        let all_rows: Vec<usize> = (0..n).collect();
        let stats = column_stats(x, &all_rows, &names)?;
        drop(all_rows);

        let psi = params.sample_size.min(n);
        let max_depth = params.max_depth.unwrap_or_else(|| (psi as f64).log2().ceil().max(1.0) as usize);
        let p = x.ncols();
        let mut rng = TrainRng::new(params.seed);
        let mut builder = Builder {
            nodes: Vec::new(),
            sizes: Vec::new(),
            sample: vec![0.0; psi * p],
            psi,
            features: (0..p).collect(),
            max_depth,
        };
        let mut roots = Vec::with_capacity(params.n_trees);
        let mut members: Vec<usize> = Vec::with_capacity(psi);
        for _ in 0..params.n_trees {
            let picked = rng.sample_indices(n, psi);
            builder.load_sample(x, &picked, &stats);
            members.clear();
            members.extend(0..psi);
            roots.push(node_index(builder.nodes.len())?);
            builder.grow(&mut members, 0, &mut rng)?;
        }
        Ok(IsolationForest {
            feature_names: names,
            medians: stats.medians,
            forest: Forest { nodes: builder.nodes, roots },
            node_sizes: builder.sizes,
            sample_size: psi,
            max_depth,
            params: params.clone(),
            training_rows: n,
        })
    }

    /// Anomaly score s(x) = 2^(−E[h(x)] / c(ψ)) in (0, 1]: near 1 is anomalous, well below
    /// 0.5 is normal, about 0.5 everywhere means the data has no distinct anomalies.
    /// Allocation-free. Errors only if `row` has the wrong length.
    pub fn score(&self, row: &[f64]) -> Result<f64> {
        self.check_row(row)?;
        Ok(self.score_from_depth(self.mean_depth(row)))
    }

    /// [`score`](Self::score) for every row of `x`, walking the trees block by block.
    pub fn score_batch(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>> {
        if x.ncols() != self.feature_names.len() {
            return Err(ModelError::RowLength { expected: self.feature_names.len(), got: x.ncols() });
        }
        let trees = self.forest.n_trees() as f64;
        let mut out = self.forest.sum_leaf_values_batch(x, &self.medians);
        for s in &mut out {
            *s = self.score_from_depth(*s / trees);
        }
        Ok(out)
    }

    /// The score, the mean path length E[h(x)], and which features isolated the row.
    ///
    /// Attribution: along each tree's path, the split on feature f that sends the row into a
    /// child holding a fraction q of its parent's training points is credited (1 − q) / h,
    /// where h is that tree's path length. (1 − q) rewards the cuts that actually separated
    /// the row from the crowd (an early cut that leaves 2 of 200 points scores 0.99, one that
    /// halves the node 0.5); dividing by h makes trees that isolated the row quickly, the
    /// ones that drive the score up, count more. Credits are normalised to sum to 1 (all zero
    /// if no tree made a split, which cannot happen after a successful `fit`).
    pub fn explain(&self, row: &[f64]) -> Result<Explanation> {
        self.check_row(row)?;
        let mut credit = vec![0.0; self.feature_names.len()];
        let mut steps: Vec<(usize, usize)> = Vec::with_capacity(self.max_depth);
        let mut total_depth = 0.0;
        for &root in &self.forest.roots {
            steps.clear();
            let leaf = self.forest.walk(root, row, &self.medians, |from, to| steps.push((from, to)));
            let h = self.forest.nodes[leaf].value;
            total_depth += h;
            if h <= 0.0 {
                continue;
            }
            for &(from, to) in &steps {
                let parent = f64::from(self.node_sizes[from]);
                let child = f64::from(self.node_sizes[to]);
                let cut_away = if parent > 0.0 { 1.0 - child / parent } else { 0.0 };
                credit[self.forest.nodes[from].feature as usize] += cut_away / h;
            }
        }
        let mean_depth = total_depth / self.forest.n_trees() as f64;
        Ok(Explanation {
            score: self.score_from_depth(mean_depth),
            attribution: crate::normalise(&credit),
            average_path_length: Some(mean_depth),
            signed_contributions: None,
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
    pub fn params(&self) -> &IsolationForestParams {
        &self.params
    }

    /// Rows each tree was grown on (the requested sample size clipped to the row count).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// The depth limit actually used.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Number of training rows.
    pub fn training_rows(&self) -> usize {
        self.training_rows
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

    fn mean_depth(&self, row: &[f64]) -> f64 {
        self.forest.sum_leaf_values(row, &self.medians) / self.forest.n_trees() as f64
    }

    fn score_from_depth(&self, mean_depth: f64) -> f64 {
        (-mean_depth / average_path_length(self.sample_size)).exp2()
    }

    /// Checks the invariants scoring relies on; run after decoding.
    pub(crate) fn validate(&self) -> Result<()> {
        let p = self.feature_names.len();
        if p == 0 || self.medians.len() != p {
            return Err(ModelError::corrupt("feature names and medians disagree"));
        }
        if self.node_sizes.len() != self.forest.nodes.len() {
            return Err(ModelError::corrupt("node sizes do not match the nodes"));
        }
        if self.sample_size < 2 {
            return Err(ModelError::corrupt("sample size below 2"));
        }
        self.forest.validate(p)
    }
}

/// Scratch state for growing trees; reused across trees so training allocates O(ψ·p) once.
struct Builder {
    nodes: Vec<Node>,
    sizes: Vec<u32>,
    /// The current tree's sample, column-major (feature j of member k at `j * psi + k`), so
    /// the min/max scan and the partition read one contiguous column.
    sample: Vec<f64>,
    psi: usize,
    /// Feature indices, permuted in place to draw split features without replacement.
    features: Vec<usize>,
    max_depth: usize,
}

impl Builder {
    fn load_sample(&mut self, x: ArrayView2<'_, f64>, picked: &[usize], stats: &ColumnStats) {
        for j in 0..x.ncols() {
            let col = &mut self.sample[j * self.psi..(j + 1) * self.psi];
            for (dst, &i) in col.iter_mut().zip(picked) {
                *dst = stats.clean(j, x[[i, j]]);
            }
        }
    }

    fn grow(&mut self, members: &mut [usize], depth: usize, rng: &mut TrainRng) -> Result<()> {
        let size = members.len();
        // Sizes never exceed ψ <= row count; u32 covers any sample a backend could hold.
        let size_u32 = u32::try_from(size).unwrap_or(u32::MAX);
        if size <= 1 || depth >= self.max_depth {
            self.push_leaf(depth, size, size_u32);
            return Ok(());
        }
        // Draw features without replacement until one varies within the node, like
        // scikit-learn's random splitter: a constant column is skipped, not used for a cut
        // that would isolate nothing.
        let p = self.features.len();
        let mut split = None;
        for k in 0..p {
            let pick = k + rng.below(p - k);
            self.features.swap(k, pick);
            let j = self.features[k];
            let col = &self.sample[j * self.psi..(j + 1) * self.psi];
            let (lo, hi) = members
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &m| (lo.min(col[m]), hi.max(col[m])));
            if lo < hi {
                let mut t = lo + rng.unit() * (hi - lo);
                // Rounding can land t on hi, which would send everything left.
                if t >= hi {
                    t = lo;
                }
                split = Some((j, t));
                break;
            }
        }
        let Some((j, t)) = split else {
            self.push_leaf(depth, size, size_u32);
            return Ok(());
        };
        let col = &self.sample[j * self.psi..(j + 1) * self.psi];
        let mut left = 0;
        for k in 0..size {
            if col[members[k]] <= t {
                members.swap(left, k);
                left += 1;
            }
        }
        let me = self.nodes.len();
        self.nodes.push(Node { value: t, feature: j as u32, right: 0 });
        self.sizes.push(size_u32);
        let (l, r) = members.split_at_mut(left);
        self.grow(l, depth + 1, rng)?;
        self.nodes[me].right = node_index(self.nodes.len())?;
        self.grow(r, depth + 1, rng)
    }

    fn push_leaf(&mut self, depth: usize, size: usize, size_u32: u32) {
        self.nodes.push(Node::leaf(depth as f64 + average_path_length(size)));
        self.sizes.push(size_u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::roc_auc;
    use crate::testutil::{blob, gaussian, names};
    use ndarray::{concatenate, s, Array2, Axis};

    fn params(seed: u64) -> IsolationForestParams {
        IsolationForestParams { seed, ..IsolationForestParams::default() }
    }

    #[test]
    fn c_n_matches_the_paper() {
        assert_eq!(average_path_length(0), 0.0);
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        // 2(ln 255 + γ) − 2·255/256, the normaliser for the default sample of 256.
        assert!((average_path_length(256) - 10.244_770_920_119_917).abs() < 1e-12);
    }

    #[test]
    fn far_points_rank_top() {
        // Far on both axes: an isolation forest scores any point beyond the sample's hull like
        // the hull's edge on the axes it is not extreme in, so [12, 0] ranks with the blob's
        // most extreme corners. scikit-learn behaves the same (checked on this data shape).
        let p = 2;
        let normal = blob(1000, p, 1);
        let far = ndarray::array![[7.0, 7.0], [-7.0, 7.0], [7.0, -7.0], [-7.0, -7.0], [9.0, -5.0]];
        let x = concatenate(Axis(0), &[normal.view(), far.view()]).unwrap();
        let model = IsolationForest::fit(x.view(), &names(p), &params(42)).unwrap();
        let scores = model.score_batch(x.view()).unwrap();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut top: Vec<usize> = order[..5].to_vec();
        top.sort_unstable();
        assert_eq!(top, vec![1000, 1001, 1002, 1003, 1004]);
        assert!(scores[1000..].iter().all(|&s| s > 0.6), "{:?}", &scores[1000..]);
        let mean_normal: f64 = scores[..1000].iter().sum::<f64>() / 1000.0;
        assert!(mean_normal < 0.5, "mean normal score {mean_normal}");
    }

    #[test]
    fn auc_against_scattered_outliers() {
        let p = 5;
        let mut rng = TrainRng::new(9);
        let normal = blob(2000, p, 3);
        // Outliers: uniform in a wide box, at least 4.5 from the origin in some coordinate.
        let outliers = Array2::from_shape_fn((40, p), |(_, j)| {
            let v = (rng.unit() - 0.5) * 14.0;
            if j == 0 {
                v.signum() * (4.5 + rng.unit() * 2.0)
            } else {
                v
            }
        });
        let x = concatenate(Axis(0), &[normal.view(), outliers.view()]).unwrap();
        let labels: Vec<bool> = (0..x.nrows()).map(|i| i >= 2000).collect();
        let model = IsolationForest::fit(x.view(), &names(p), &params(42)).unwrap();
        let scores = model.score_batch(x.view()).unwrap();
        let auc = roc_auc(&scores, &labels).unwrap();
        assert!(auc > 0.95, "auc {auc}");
    }

    #[test]
    fn deterministic_for_a_seed() {
        let x = blob(600, 3, 5);
        let a = IsolationForest::fit(x.view(), &names(3), &params(7)).unwrap();
        let b = IsolationForest::fit(x.view(), &names(3), &params(7)).unwrap();
        let c = IsolationForest::fit(x.view(), &names(3), &params(8)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let row = [0.3, -1.2, 2.0];
        assert_eq!(a.score(&row).unwrap(), b.score(&row).unwrap());
    }

    #[test]
    fn constant_column_is_never_split_and_does_not_matter() {
        let mut x = blob(500, 3, 2);
        x.slice_mut(s![.., 1]).fill(4.0);
        let model = IsolationForest::fit(x.view(), &names(3), &params(1)).unwrap();
        assert!(model.forest.nodes.iter().all(|n| n.is_leaf() || n.feature != 1));
        let a = model.score(&[0.5, 4.0, -0.5]).unwrap();
        let b = model.score(&[0.5, 1e6, -0.5]).unwrap();
        assert_eq!(a, b);
        let e = model.explain(&[3.0, 4.0, 0.0]).unwrap();
        assert_eq!(e.attribution[1], 0.0);
    }

    #[test]
    fn single_row_batch_and_explain_agree() {
        let x = blob(300, 4, 4);
        let model = IsolationForest::fit(x.view(), &names(4), &params(3)).unwrap();
        let batch = model.score_batch(x.view()).unwrap();
        for (row, &from_batch) in x.rows().into_iter().zip(&batch) {
            let row = row.to_vec();
            let single = model.score(&row).unwrap();
            assert_eq!(single, from_batch);
            let e = model.explain(&row).unwrap();
            assert!((e.score - single).abs() < 1e-12);
            assert!((e.attribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(e.average_path_length.unwrap() > 0.0);
            assert!((0.0..=1.0).contains(&single));
        }
    }

    #[test]
    fn explain_names_the_isolating_feature() {
        let x = blob(1000, 4, 8);
        let model = IsolationForest::fit(x.view(), &names(4), &params(5)).unwrap();
        let e = model.explain(&[0.1, 0.0, 9.0, -0.1]).unwrap();
        let top = (0..4).max_by(|&a, &b| e.attribution[a].total_cmp(&e.attribution[b])).unwrap();
        assert_eq!(top, 2, "{:?}", e.attribution);
        assert!(e.attribution[2] > 0.5, "{:?}", e.attribution);
    }

    #[test]
    fn missing_value_scores_as_the_median_and_inf_as_an_extreme() {
        let x = blob(400, 3, 6);
        let model = IsolationForest::fit(x.view(), &names(3), &params(2)).unwrap();
        let m = model.medians()[1];
        assert_eq!(model.score(&[0.2, f64::NAN, 0.1]).unwrap(), model.score(&[0.2, m, 0.1]).unwrap());
        let inf = model.score(&[0.2, f64::INFINITY, 0.1]).unwrap();
        assert_eq!(inf, model.score(&[0.2, 1e300, 0.1]).unwrap());
        assert!(inf > model.score(&[0.2, 0.0, 0.1]).unwrap());
    }

    #[test]
    fn non_finite_training_values_are_imputed_or_clipped() {
        let mut x = blob(300, 3, 10);
        x[[0, 0]] = f64::NAN;
        x[[1, 1]] = f64::INFINITY;
        x[[2, 2]] = f64::NEG_INFINITY;
        let model = IsolationForest::fit(x.view(), &names(3), &params(4)).unwrap();
        assert!(model.forest.nodes.iter().all(|n| n.value.is_finite()));
        let scores = model.score_batch(x.view()).unwrap();
        assert!(scores.iter().all(|s| s.is_finite()));
    }

    #[test]
    fn bad_training_input_is_a_named_error() {
        let n = names(2);
        let empty = Array2::<f64>::zeros((0, 2));
        assert_eq!(
            IsolationForest::fit(empty.view(), &n, &params(1)).unwrap_err(),
            ModelError::TooFewRows { needed: 2, got: 0 }
        );
        let one = ndarray::array![[1.0, 2.0]];
        assert_eq!(
            IsolationForest::fit(one.view(), &n, &params(1)).unwrap_err(),
            ModelError::TooFewRows { needed: 2, got: 1 }
        );
        let same = Array2::from_elem((50, 2), 3.0);
        assert_eq!(
            IsolationForest::fit(same.view(), &n, &params(1)).unwrap_err(),
            ModelError::IdenticalRows { rows: 50 }
        );
        let mut nan_col = blob(20, 2, 1);
        nan_col.slice_mut(s![.., 1]).fill(f64::NAN);
        let err = IsolationForest::fit(nan_col.view(), &n, &params(1)).unwrap_err();
        assert!(err.to_string().contains("\"f1\""), "{err}");
        let x = blob(20, 2, 1);
        assert!(matches!(
            IsolationForest::fit(x.view(), &names(3), &params(1)),
            Err(ModelError::FeatureNameCount { .. })
        ));
        let no_cols = Array2::<f64>::zeros((5, 0));
        let none: [&str; 0] = [];
        assert_eq!(IsolationForest::fit(no_cols.view(), &none, &params(1)).unwrap_err(), ModelError::NoFeatures);
        for bad in [
            IsolationForestParams { n_trees: 0, ..params(1) },
            IsolationForestParams { sample_size: 1, ..params(1) },
            IsolationForestParams { max_depth: Some(0), ..params(1) },
        ] {
            let err = IsolationForest::fit(x.view(), &n, &bad).unwrap_err();
            assert!(matches!(err, ModelError::InvalidParameter { .. }), "{err}");
        }
    }

    #[test]
    fn small_data_clips_sample_size_and_depth() {
        let mut rng = TrainRng::new(3);
        let x = Array2::from_shape_fn((10, 2), |_| gaussian(&mut rng));
        let model = IsolationForest::fit(x.view(), &names(2), &params(1)).unwrap();
        assert_eq!(model.sample_size(), 10);
        assert_eq!(model.max_depth(), 4);
        let two = ndarray::array![[0.0, 1.0], [1.0, 1.0]];
        let model = IsolationForest::fit(two.view(), &names(2), &params(1)).unwrap();
        // Each of the two points is isolated by the single cut: h = 1 = c(2), s = 0.5.
        assert_eq!(model.score(&[0.0, 1.0]).unwrap(), 0.5);
    }

    #[test]
    fn wrong_row_length_is_an_error() {
        let x = blob(50, 3, 1);
        let model = IsolationForest::fit(x.view(), &names(3), &params(1)).unwrap();
        assert_eq!(model.score(&[1.0, 2.0]).unwrap_err(), ModelError::RowLength { expected: 3, got: 2 });
        assert!(model.explain(&[1.0; 4]).is_err());
        assert!(model.score_batch(Array2::zeros((2, 2)).view()).is_err());
    }
}
