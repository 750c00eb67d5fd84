//! Input checks and the missing-value policy shared by both models.
//!
//! Policy (the same at training and at scoring, so a row scores as its training twin did):
//! - NaN is "missing" and becomes the feature's training median. The median rather than the
//!   mean because fraud features are heavy-tailed (amounts, distances): one huge amount would
//!   drag a mean far from any typical row.
//! - ±Infinity at training time is clipped to the column's finite max / min: thresholds are
//!   drawn between observed values and cannot be infinite. At scoring time ±Infinity is left
//!   alone: it falls on the far side of every split, which is exactly where the clipped
//!   training extreme falls, so both ends agree.
//! - A column with no finite value at all is an error, not a silent constant: it almost always
//!   means a broken column mapping, and the DBA should hear about it.

use ndarray::ArrayView2;

use crate::error::{ModelError, Result};

/// Per-feature statistics learnt from the training rows.
#[derive(Debug, Clone)]
pub(crate) struct ColumnStats {
    pub(crate) medians: Vec<f64>,
    pub(crate) mins: Vec<f64>,
    pub(crate) maxs: Vec<f64>,
}

impl ColumnStats {
    /// The training-time cleaning of one value of feature `j`.
    #[inline]
    pub(crate) fn clean(&self, j: usize, v: f64) -> f64 {
        if v.is_nan() {
            self.medians[j]
        } else if v == f64::INFINITY {
            self.maxs[j]
        } else if v == f64::NEG_INFINITY {
            self.mins[j]
        } else {
            v
        }
    }

    /// Whether feature `j` takes a single value over the training rows.
    pub(crate) fn is_constant(&self, j: usize) -> bool {
        self.mins[j] == self.maxs[j]
    }
}

/// Checks that there is one non-empty, unique name per column.
pub(crate) fn check_feature_names(names: &[String], columns: usize) -> Result<()> {
    if columns == 0 {
        return Err(ModelError::NoFeatures);
    }
    if names.len() != columns {
        return Err(ModelError::FeatureNameCount { names: names.len(), columns });
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for name in names {
        if name.trim().is_empty() || !seen.insert(name.as_str()) {
            return Err(ModelError::BadFeatureName { name: name.clone() });
        }
    }
    Ok(())
}

/// Median, min and max of the finite values of each column over `rows`, refusing columns
/// with no finite value and data where every column is constant (all rows identical).
pub(crate) fn column_stats(x: ArrayView2<'_, f64>, rows: &[usize], names: &[String]) -> Result<ColumnStats> {
    let p = x.ncols();
    let mut stats =
        ColumnStats { medians: Vec::with_capacity(p), mins: Vec::with_capacity(p), maxs: Vec::with_capacity(p) };
    // One scratch column at a time keeps extra memory at O(rows), not O(rows x features).
    let mut finite = Vec::with_capacity(rows.len());
    for j in 0..p {
        finite.clear();
        finite.extend(rows.iter().map(|&i| x[[i, j]]).filter(|v| v.is_finite()));
        if finite.is_empty() {
            return Err(ModelError::NoFiniteValues { feature: names[j].clone(), rows: rows.len() });
        }
        let (min, max) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        stats.medians.push(median_in_place(&mut finite));
        stats.mins.push(min);
        stats.maxs.push(max);
    }
    if (0..p).all(|j| stats.is_constant(j)) {
        return Err(ModelError::IdenticalRows { rows: rows.len() });
    }
    Ok(stats)
}

/// Median of a non-empty slice of finite values (mean of the two middle values for an even
/// count, as numpy and Postgres' `percentile_cont(0.5)` do). Reorders the slice.
fn median_in_place(values: &mut [f64]) -> f64 {
    let n = values.len();
    let mid = n / 2;
    let (lower, &mut upper_mid, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    if n % 2 == 1 {
        upper_mid
    } else {
        let lower_mid = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        lower_mid + (upper_mid - lower_mid) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_in_place(&mut [7.0]), 7.0);
    }

    #[test]
    fn stats_ignore_non_finite_and_clean_maps_them() {
        let x = array![[1.0, f64::NAN], [f64::INFINITY, 2.0], [3.0, 4.0], [f64::NEG_INFINITY, 6.0]];
        let s = column_stats(x.view(), &[0, 1, 2, 3], &names(2)).unwrap();
        assert_eq!(s.medians, vec![2.0, 4.0]);
        assert_eq!(s.clean(0, f64::INFINITY), 3.0);
        assert_eq!(s.clean(0, f64::NEG_INFINITY), 1.0);
        assert_eq!(s.clean(1, f64::NAN), 4.0);
        assert_eq!(s.clean(1, 5.5), 5.5);
    }

    #[test]
    fn all_nan_column_is_named() {
        let x = array![[1.0, f64::NAN], [2.0, f64::INFINITY]];
        let err = column_stats(x.view(), &[0, 1], &names(2)).unwrap_err();
        assert_eq!(err, ModelError::NoFiniteValues { feature: "f1".into(), rows: 2 });
        assert!(err.to_string().contains("\"f1\""));
    }

    #[test]
    fn identical_rows_are_refused() {
        let x = array![[1.0, 5.0], [1.0, f64::NAN], [1.0, 5.0]];
        let err = column_stats(x.view(), &[0, 1, 2], &names(2)).unwrap_err();
        assert_eq!(err, ModelError::IdenticalRows { rows: 3 });
    }

    #[test]
    fn feature_names_checked() {
        assert_eq!(check_feature_names(&[], 0), Err(ModelError::NoFeatures));
        assert!(matches!(
            check_feature_names(&names(2), 3),
            Err(ModelError::FeatureNameCount { names: 2, columns: 3 })
        ));
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(matches!(check_feature_names(&dup, 2), Err(ModelError::BadFeatureName { .. })));
        let empty = vec!["a".to_string(), " ".to_string()];
        assert!(check_feature_names(&empty, 2).is_err());
    }
}
