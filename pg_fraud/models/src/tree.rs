//! The flat node array both models score with.
//!
//! Every tree of a forest lives in one `Vec<Node>` in pre-order, so a split's left child is
//! the next node and only the right child's index is stored. A node is 16 bytes (threshold or
//! leaf value, feature, right index): four to a cache line, and a walk down the left spine
//! touches consecutive memory. Training-only detail (node sizes, class fractions) lives in
//! parallel arrays that scoring never reads.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `feature` value marking a leaf.
pub(crate) const LEAF: u32 = u32::MAX;

/// Rows scored together by the batch path: enough to amortise one tree's nodes across many
/// rows while the rows' features (64 x 8 x p bytes) stay in L1/L2.
const BATCH_BLOCK: usize = 64;

/// Rows walked down a tree in lockstep by the batch path (see `walk_lanes`).
const LANES: usize = 8;

/// One node. For a split, `value` is the threshold (`x <= value` goes left, to the next node);
/// for a leaf, `value` is what the tree outputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub(crate) value: f64,
    pub(crate) feature: u32,
    pub(crate) right: u32,
}

impl Node {
    pub(crate) fn leaf(value: f64) -> Self {
        Node { value, feature: LEAF, right: 0 }
    }

    pub(crate) fn is_leaf(&self) -> bool {
        self.feature == LEAF
    }
}

/// A forest as one pre-order node array plus the index of each tree's root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Forest {
    pub(crate) nodes: Vec<Node>,
    pub(crate) roots: Vec<u32>,
}

impl Forest {
    pub(crate) fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Sum over all trees of the leaf values reached by `row`. Walks `LANES` trees in
    /// lockstep, for the same reason as the batch path: independent walks overlap their
    /// cache misses. Allocation-free.
    pub(crate) fn sum_leaf_values(&self, row: &[f64], fill: &[f64]) -> f64 {
        let nodes = &self.nodes[..];
        let mut total = 0.0;
        for roots in self.roots.chunks(LANES) {
            let mut at = [0usize; LANES];
            for (slot, &root) in at.iter_mut().zip(roots) {
                *slot = root as usize;
            }
            let lanes = roots.len();
            loop {
                let mut moving = false;
                for i in at.iter_mut().take(lanes) {
                    let node = nodes[*i];
                    if node.is_leaf() {
                        continue;
                    }
                    moving = true;
                    let f = node.feature as usize;
                    let mut v = row[f];
                    if v.is_nan() {
                        v = fill[f];
                    }
                    *i = if v <= node.value { *i + 1 } else { node.right as usize };
                }
                if !moving {
                    break;
                }
            }
            // One addition per tree, in tree order, exactly like the batch path and the
            // explanations, so all three give bit-identical scores.
            for &i in at.iter().take(lanes) {
                total += nodes[i].value;
            }
        }
        total
    }

    /// Walks one tree and calls `step(parent, child)` for every edge taken; returns the leaf.
    pub(crate) fn walk(&self, root: u32, row: &[f64], fill: &[f64], mut step: impl FnMut(usize, usize)) -> usize {
        let mut i = root as usize;
        loop {
            let node = self.nodes[i];
            if node.is_leaf() {
                return i;
            }
            let f = node.feature as usize;
            let mut v = row[f];
            if v.is_nan() {
                v = fill[f];
            }
            let next = if v <= node.value { i + 1 } else { node.right as usize };
            step(i, next);
            i = next;
        }
    }

    /// Sum of leaf values for every row of `x`, tree-major within blocks of rows, so a
    /// tree's nodes are fetched once per block rather than once per row.
    pub(crate) fn sum_leaf_values_batch(&self, x: ArrayView2<'_, f64>, fill: &[f64]) -> Vec<f64> {
        let p = x.ncols();
        let mut out = vec![0.0; x.nrows()];
        let mut block = vec![0.0; BATCH_BLOCK * p];
        for (start, out_block) in (0..x.nrows()).step_by(BATCH_BLOCK).zip(out.chunks_mut(BATCH_BLOCK)) {
            let rows = out_block.len();
            // Copy and impute once per block: the walk below then needs no NaN test.
            for r in 0..rows {
                let src = x.row(start + r);
                let dst = &mut block[r * p..(r + 1) * p];
                for ((d, &s), &m) in dst.iter_mut().zip(src.iter()).zip(fill) {
                    *d = if s.is_nan() { m } else { s };
                }
            }
            for &root in &self.roots {
                for (lane_start, accs) in (0..rows).step_by(LANES).zip(out_block.chunks_mut(LANES)) {
                    self.walk_lanes(root, &block[lane_start * p..], p, accs);
                }
            }
        }
        out
    }

    /// Walks up to `LANES` rows (row-major in `rows`, `p` features each) down one tree at
    /// once and adds the leaf values to `accs`. Advancing several independent walks per step
    /// keeps several node loads in flight instead of waiting on one cache miss at a time; a
    /// finished walk just re-reads its (cached) leaf until the slowest one arrives.
    fn walk_lanes(&self, root: u32, rows: &[f64], p: usize, accs: &mut [f64]) {
        let nodes = &self.nodes[..];
        let mut at = [root as usize; LANES];
        let lanes = accs.len();
        loop {
            let mut moving = false;
            for (lane, i) in at.iter_mut().enumerate().take(lanes) {
                let node = nodes[*i];
                if node.is_leaf() {
                    continue;
                }
                moving = true;
                *i = if rows[lane * p + node.feature as usize] <= node.value { *i + 1 } else { node.right as usize };
            }
            if !moving {
                break;
            }
        }
        for (acc, &i) in accs.iter_mut().zip(&at) {
            *acc += nodes[i].value;
        }
    }

    /// Structural checks run on every decoded model, so that no corrupted-but-checksummed or
    /// hand-crafted blob can make scoring index out of bounds or loop: every child index points
    /// strictly forward and inside the array, every feature index is below `n_features`.
    pub(crate) fn validate(&self, n_features: usize) -> Result<()> {
        let n = self.nodes.len();
        if self.roots.is_empty() {
            return Err(ModelError::corrupt("forest has no trees"));
        }
        if let Some(&r) = self.roots.iter().find(|&&r| r as usize >= n) {
            return Err(ModelError::corrupt(format!("tree root {r} is outside the {n} nodes")));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_leaf() {
                if !node.value.is_finite() {
                    return Err(ModelError::corrupt(format!("leaf {i} has a non-finite value")));
                }
                continue;
            }
            let right = node.right as usize;
            if node.feature as usize >= n_features {
                return Err(ModelError::corrupt(format!(
                    "node {i} splits on feature {} but the model has {n_features}",
                    node.feature
                )));
            }
            if i + 1 >= n || right <= i + 1 || right >= n {
                return Err(ModelError::corrupt(format!("node {i} has child indices outside the tree")));
            }
        }
        Ok(())
    }
}

/// Converts a node count to the `u32` the arrays store, refusing absurd forests.
pub(crate) fn node_index(i: usize) -> Result<u32> {
    u32::try_from(i)
        .ok()
        .filter(|&v| v != LEAF)
        .ok_or_else(|| ModelError::param("n_trees", "the forest would exceed 4 billion nodes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x0 <= 1 ? 10 : (x1 <= 5 ? 20 : 30)
    fn small() -> Forest {
        Forest {
            nodes: vec![
                Node { value: 1.0, feature: 0, right: 2 },
                Node::leaf(10.0),
                Node { value: 5.0, feature: 1, right: 4 },
                Node::leaf(20.0),
                Node::leaf(30.0),
            ],
            roots: vec![0],
        }
    }

    #[test]
    fn walks_and_imputes() {
        let f = small();
        let fill = [0.0, 9.0];
        assert_eq!(f.sum_leaf_values(&[0.5, 0.0], &fill), 10.0);
        assert_eq!(f.sum_leaf_values(&[2.0, 4.0], &fill), 20.0);
        assert_eq!(f.sum_leaf_values(&[2.0, f64::NAN], &fill), 30.0);
        assert_eq!(f.sum_leaf_values(&[f64::NAN, 100.0], &fill), 10.0);
        assert_eq!(f.sum_leaf_values(&[f64::INFINITY, f64::NEG_INFINITY], &fill), 20.0);
        let x = ndarray::array![[0.5, 0.0], [2.0, 4.0], [2.0, f64::NAN]];
        assert_eq!(f.sum_leaf_values_batch(x.view(), &fill), vec![10.0, 20.0, 30.0]);
        assert!(f.validate(2).is_ok());
        assert!(f.validate(1).is_err());
    }

    #[test]
    fn validate_rejects_backward_children() {
        let mut f = small();
        f.nodes[2].right = 1;
        assert!(matches!(f.validate(2), Err(ModelError::Corrupt { .. })));
        let mut f = small();
        f.roots = vec![9];
        assert!(f.validate(2).is_err());
    }
}
