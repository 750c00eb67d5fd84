//! Model-quality metrics over (score, label) pairs, as the model-performance views need them.
//!
//! Conventions follow scikit-learn so numbers can be checked against it: ROC AUC with tied
//! scores sharing their average rank (a tie counts half), average precision as the
//! step-wise sum Σ (Rₖ − Rₖ₋₁)·Pₖ over distinct thresholds (no interpolation), and a row is
//! predicted positive when `score >= threshold`. Undefined cases are errors, never NaN:
//! empty input, NaN scores, mismatched lengths, a single class for AUC, no positive for AP.
//! ±Infinity scores are allowed: they rank fine.

use crate::error::{ModelError, Result};

/// Counts of a thresholded prediction against the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Confusion {
    /// Fraud predicted fraud.
    pub true_positives: usize,
    /// Genuine predicted fraud (false alarms).
    pub false_positives: usize,
    /// Genuine predicted genuine.
    pub true_negatives: usize,
    /// Fraud predicted genuine (missed fraud).
    pub false_negatives: usize,
}

impl Confusion {
    /// TP / (TP + FP); `None` when nothing was predicted positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// TP / (TP + FN); `None` when there is no positive row.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    /// Harmonic mean of precision and recall; `None` when either is undefined, 0 when both
    /// are 0.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        Some(if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 })
    }

    /// Number of rows counted.
    pub fn total(&self) -> usize {
        self.true_positives + self.false_positives + self.true_negatives + self.false_negatives
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Confusion counts when rows with `score >= threshold` are predicted fraud.
pub fn confusion(scores: &[f64], labels: &[bool], threshold: f64) -> Result<Confusion> {
    check("confusion counts", scores, labels)?;
    if threshold.is_nan() {
        return Err(ModelError::param("threshold", "must not be NaN"));
    }
    let mut c = Confusion::default();
    for (&s, &y) in scores.iter().zip(labels) {
        match (s >= threshold, y) {
            (true, true) => c.true_positives += 1,
            (true, false) => c.false_positives += 1,
            (false, false) => c.true_negatives += 1,
            (false, true) => c.false_negatives += 1,
        }
    }
    Ok(c)
}

/// Area under the ROC curve: the probability that a random fraud row scores above a random
/// genuine row, ties counting half (Mann–Whitney U over average ranks).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    check("ROC AUC", scores, labels)?;
    let positives = labels.iter().filter(|&&y| y).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(ModelError::OneClass { context: "ROC AUC", positives, negatives });
    }
    let order = sorted_order(scores, false);
    // Sum of the (1-based, tie-averaged) ranks of the positive rows.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let group_positives = order[start..end].iter().filter(|&&i| labels[i]).count();
        rank_sum += average_rank * group_positives as f64;
        start = end;
    }
    let p = positives as f64;
    let u = rank_sum - p * (p + 1.0) / 2.0;
    Ok(u / (p * negatives as f64))
}

/// Average precision as scikit-learn's `average_precision_score`: walking thresholds from the
/// highest score down (tied scores form one threshold), the precision at each threshold
/// weighted by the recall gained there. 1.0 when every row is fraud.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64> {
    check("average precision", scores, labels)?;
    let positives = labels.iter().filter(|&&y| y).count();
    if positives == 0 {
        return Err(ModelError::NoPositives { metric: "average precision", rows: labels.len() });
    }
    let order = sorted_order(scores, true);
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            if labels[order[end]] {
                tp += 1;
            } else {
                fp += 1;
            }
            end += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
        start = end;
    }
    Ok(ap)
}

fn check(metric: &'static str, scores: &[f64], labels: &[bool]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(ModelError::LengthMismatch { what: "labels", expected: scores.len(), got: labels.len() });
    }
    if scores.is_empty() {
        return Err(ModelError::EmptyInput { metric });
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(ModelError::NanScore { index });
    }
    Ok(())
}

/// Row indices by score (NaN already excluded, so `total_cmp` only adds an order between −0
/// and +0, which stay adjacent and are grouped as a tie by `==`).
fn sorted_order(scores: &[f64], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if descending {
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    } else {
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: bool = false;
    const T: bool = true;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_with_ties() {
        // Pairs (pos, neg): (0.2,0.2) ½, (0.2,0.5) 0, (0.5,0.2) 1, (0.5,0.5) ½, (0.9,·) 1+1 → 4/6.
        let labels = [F, T, F, T, T];
        let scores = [0.2, 0.2, 0.5, 0.5, 0.9];
        assert!(close(roc_auc(&scores, &labels).unwrap(), 4.0 / 6.0));
        // Thresholds 0.9, 0.5, 0.2: (R, P) = (1/3, 1), (2/3, 2/3), (1, 3/5).
        let ap = (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0;
        assert!(close(average_precision(&scores, &labels).unwrap(), ap));
    }

    #[test]
    fn perfect_inverted_and_constant_rankings() {
        let labels = [F, F, T, T];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels).unwrap(), 0.0);
        assert_eq!(roc_auc(&[0.5; 4], &labels).unwrap(), 0.5);
        assert_eq!(average_precision(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0);
        assert_eq!(average_precision(&[0.5; 4], &labels).unwrap(), 0.5);
        assert_eq!(average_precision(&[0.3, 0.1], &[T, T]).unwrap(), 1.0);
        // −0 and +0 are the same score.
        assert_eq!(roc_auc(&[-0.0, 0.0], &[T, F]).unwrap(), 0.5);
        // Infinite scores rank.
        assert_eq!(roc_auc(&[f64::NEG_INFINITY, f64::INFINITY], &[F, T]).unwrap(), 1.0);
    }

    /// Values printed once by scikit-learn 1.9.1 for this exact input:
    /// `roc_auc_score`, `average_precision_score`, and `precision_score` / `recall_score` /
    /// `f1_score` / `confusion_matrix` of `scores >= 0.5`.
    #[test]
    fn matches_scikit_learn() {
        let scores = [
            0.6, 0.6, 0.3, 0.1, 0.0, 0.8, 0.4, 0.8, 0.8, 0.6, 0.2, 0.5, 0.8, 0.3, 0.7, 0.7, 0.7, 0.5, 0.2, 0.4, 0.8,
            0.4, 0.5, 0.2, 0.5, 0.5, 0.3, 0.9, 0.5, 0.8, 0.5, 0.7, 0.2, 0.6, 0.8, 0.4, 0.5, 0.5, 0.6, 0.6,
        ];
        let labels = [
            F, T, F, F, F, T, T, T, F, T, F, F, T, F, T, F, F, F, F, F, T, F, T, F, T, T, F, T, T, T, F, T, F, T, F, F,
            F, F, F, T,
        ];
        assert!(close(roc_auc(&scores, &labels).unwrap(), 0.8017902813299232));
        assert!(close(average_precision(&scores, &labels).unwrap(), 0.6863974980673273));
        let c = confusion(&scores, &labels, 0.5).unwrap();
        assert_eq!(c, Confusion { true_negatives: 12, false_positives: 11, false_negatives: 1, true_positives: 16 });
        assert!(close(c.precision().unwrap(), 0.5925925925925926));
        assert!(close(c.recall().unwrap(), 0.9411764705882353));
        assert!(close(c.f1().unwrap(), 0.7272727272727273));
        assert_eq!(c.total(), 40);
    }

    #[test]
    fn undefined_inputs_are_errors() {
        assert_eq!(roc_auc(&[], &[]).unwrap_err(), ModelError::EmptyInput { metric: "ROC AUC" });
        assert!(matches!(average_precision(&[], &[]), Err(ModelError::EmptyInput { .. })));
        assert!(matches!(confusion(&[], &[], 0.5), Err(ModelError::EmptyInput { .. })));
        assert_eq!(
            roc_auc(&[0.1, 0.2], &[T, T]).unwrap_err(),
            ModelError::OneClass { context: "ROC AUC", positives: 2, negatives: 0 }
        );
        assert!(matches!(roc_auc(&[0.1, 0.2], &[F, F]), Err(ModelError::OneClass { .. })));
        assert_eq!(
            average_precision(&[0.1, 0.2], &[F, F]).unwrap_err(),
            ModelError::NoPositives { metric: "average precision", rows: 2 }
        );
        assert_eq!(roc_auc(&[0.1, f64::NAN], &[T, F]).unwrap_err(), ModelError::NanScore { index: 1 });
        assert!(matches!(average_precision(&[f64::NAN], &[T]), Err(ModelError::NanScore { index: 0 })));
        assert!(matches!(roc_auc(&[0.1, 0.2], &[T]), Err(ModelError::LengthMismatch { .. })));
        assert!(matches!(confusion(&[0.1], &[T], f64::NAN), Err(ModelError::InvalidParameter { .. })));
    }

    #[test]
    fn ratios_undefined_without_denominator() {
        let none_flagged = confusion(&[0.1, 0.2], &[T, F], 0.9).unwrap();
        assert_eq!(none_flagged.precision(), None);
        assert_eq!(none_flagged.recall(), Some(0.0));
        assert_eq!(none_flagged.f1(), None);
        let no_fraud = confusion(&[0.1, 0.9], &[F, F], 0.5).unwrap();
        assert_eq!(no_fraud.recall(), None);
        assert_eq!(no_fraud.precision(), Some(0.0));
        let zero = Confusion { false_positives: 1, false_negatives: 1, ..Confusion::default() };
        assert_eq!(zero.f1(), Some(0.0));
    }
}
