//! Exponential backoff with jitter, used for delivery retries and database reconnects.
//!
//! The delay for the n-th retry is drawn uniformly from `[c * (1 - jitter), c]` where
//! `c = min(max, base * factor^(n-1))`. Jitter spreads the retries of many deliveries that
//! failed together (a receiver outage) so they do not hammer it in lockstep when it comes
//! back; keeping the upper bound at `c` makes the worst case easy to reason about.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Cap on the delay.
    pub max: Duration,
    /// Growth factor per attempt (≥ 1).
    pub factor: f64,
    /// Fraction of the delay that is randomised, in [0, 1].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(1), max: Duration::from_secs(600), factor: 2.0, jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based) without jitter: the upper bound.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.base.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let capped = secs.min(self.max.as_secs_f64());
        // `capped` is finite and non-negative here; from_secs_f64 would panic on NaN.
        Duration::from_secs_f64(if capped.is_finite() { capped.max(0.0) } else { 0.0 })
    }

    /// The lower bound of the jittered delay for retry number `attempt`.
    pub fn floor(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(1.0 - self.jitter.clamp(0.0, 1.0))
    }

    /// A jittered delay for retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// The delay for a given uniform sample `r` in [0, 1): deterministic, for tests.
    pub fn delay_with(&self, attempt: u32, r: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        self.ceiling(attempt).mul_f64(1.0 - jitter * r.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff { base: Duration::from_millis(500), max: Duration::from_secs(30), factor: 2.0, jitter: 0.25 }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let b = policy();
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(2));
        assert_eq!(b.ceiling(7), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        // attempt 0 is treated like the first retry rather than dividing by the factor
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = policy();
        for attempt in 1..12 {
            let (lo, hi) = (b.floor(attempt), b.ceiling(attempt));
            assert_eq!(lo, hi.mul_f64(0.75));
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(d >= lo && d <= hi, "attempt {attempt}: {d:?} not in [{lo:?}, {hi:?}]");
            }
            assert_eq!(b.delay_with(attempt, 0.0), hi);
            assert_eq!(b.delay_with(attempt, 1.0), lo);
        }
    }

    #[test]
    fn no_jitter_is_deterministic() {
        let b = Backoff { jitter: 0.0, ..policy() };
        assert_eq!(b.delay(3), Duration::from_secs(2));
    }
}
