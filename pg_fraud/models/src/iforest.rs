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
        IsolationForestParams {
            n_trees: 100,
            sample_size: 256,
            max_depth: None,
            seed: 42,
        }
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
            return Err(ModelError::param(
                "sample_size",
                format!("must be at least 2, got {}", self.sample_size),
            ));
        }
        if let Some(d) = self.max_depth {
            if !(1..=64).contains(&d) {
                return Err(ModelError::param(
                    "max_depth",
                    format!("must be between 1 and 64, got {d}"),
                ));
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
        let max_depth = params
            .max_depth
            .unwrap_or_else(|| (psi as f64).log2().ceil().max(1.0) as usize);
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
            forest: Forest {
                nodes: builder.nodes,
                roots,
            },
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
            return Err(ModelError::RowLength {
                expected: self.feature_names.len(),
                got: x.ncols(),
            });
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
            let leaf = self
                .forest
                .walk(root, row, &self.medians, |from, to| steps.push((from, to)));
            let h = self.forest.nodes[leaf].value;
            total_depth += h;
            if h <= 0.0 {
                continue;
            }
            for &(from, to) in &steps {
                let parent = f64::from(self.node_sizes[from]);
                let child = f64::from(self.node_sizes[to]);
                let cut_away = if parent > 0.0 {
                    1.0 - child / parent
                } else {
                    0.0
                };
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
            return Err(ModelError::RowLength {
                expected: self.feature_names.len(),
                got: row.len(),
            });
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
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &m| {
                    (lo.min(col[m]), hi.max(col[m]))
                });
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
        self.nodes.push(Node {
            value: t,
            feature: j as u32,
            right: 0,
        });
        self.sizes.push(size_u32);
        let (l, r) = members.split_at_mut(left);
        self.grow(l, depth + 1, rng)?;
        self.nodes[me].right = node_index(self.nodes.len())?;
        self.grow(r, depth + 1, rng)
    }

    fn push_leaf(&mut self, depth: usize, size: usize, size_u32: u32) {
        self.nodes
            .push(Node::leaf(depth as f64 + average_path_length(size)));
        self.sizes.push(size_u32);
    }
}
