//! Synthetic data for the unit tests.

use ndarray::Array2;

use crate::rng::TrainRng;

/// Standard normal draw (Box–Muller).
pub(crate) fn gaussian(rng: &mut TrainRng) -> f64 {
    let u1 = rng.unit().max(f64::MIN_POSITIVE);
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `n` standard-normal rows of `p` features.
pub(crate) fn blob(n: usize, p: usize, seed: u64) -> Array2<f64> {
    let mut rng = TrainRng::new(seed);
    Array2::from_shape_fn((n, p), |_| gaussian(&mut rng))
}

/// Feature names f0..f{p-1}.
pub(crate) fn names(p: usize) -> Vec<String> {
    (0..p).map(|i| format!("f{i}")).collect()
}

/// A fraud-like labelled set: genuine rows are N(0,1); fraud rows (rate `rate`) are shifted
/// by +2.5 on the first two features and +1 on the third, the rest noise.
pub(crate) fn labelled(n: usize, p: usize, rate: f64, seed: u64) -> (Array2<f64>, Vec<bool>) {
    let mut rng = TrainRng::new(seed);
    let mut x = Array2::zeros((n, p));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let fraud = rng.unit() < rate;
        for j in 0..p {
            let shift = match (fraud, j) {
                (true, 0 | 1) => 2.5,
                (true, 2) => 1.0,
                _ => 0.0,
            };
            x[[i, j]] = gaussian(&mut rng) + shift;
        }
        y.push(fraud);
    }
    (x, y)
}
