//! Capped exponential backoff with "equal jitter".
//!
//! The wait before retry `n` (1 = the first retry) is drawn uniformly from `[c/2, c]` where
//! the ceiling `c = min(max, initial · 2ⁿ⁻¹)`. The random half spreads the retries of replicas,
//! firings or uploads that failed together (a broker or a receiver that went away comes back to
//! a trickle, not a stampede); the fixed half keeps a wait from collapsing to nothing, which
//! would retry a server that just failed at once.

use std::time::Duration;

/// Backoff bounds; `Copy`, so each retry loop keeps its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// `initial` is the ceiling of the first wait, `max` caps every wait (raised to `initial`
    /// when smaller).
    pub const fn new(initial: Duration, max: Duration) -> Self {
        // `Ord::max` is not const.
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Backoff { initial, max }
    }

    /// Ceiling of the first wait.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// Cap on every wait.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ceiling of the wait before retry `retry` (1-based; 0 counts as 1).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// The wait before retry `retry`, with `unit` in `[0, 1]` as the random draw (a value
    /// outside, NaN included, is clamped), so that tests can pick the draw.
    pub fn delay_with(&self, retry: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit)
    }

    /// The wait before retry `retry`, with a fresh random draw.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_doubles_per_retry_up_to_the_cap() {
        let b = Backoff::new(ms(100), Duration::from_secs(10));
        assert_eq!(b.ceiling(0), ms(100));
        assert_eq!(b.ceiling(1), ms(100));
        assert_eq!(b.ceiling(2), ms(200));
        assert_eq!(b.ceiling(4), ms(800));
        assert_eq!(b.ceiling(8), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn the_wait_lies_in_the_upper_half_of_the_ceiling() {
        let b = Backoff::new(ms(500), Duration::from_secs(30));
        assert_eq!(b.delay_with(1, 0.0), ms(250));
        assert_eq!(b.delay_with(1, 1.0), ms(500));
        assert_eq!(b.delay_with(4, 0.0), ms(2000));
        assert_eq!(b.delay_with(u32::MAX, 0.0), Duration::from_secs(15));
        assert_eq!(b.delay_with(u32::MAX, 1.0), Duration::from_secs(30));
        for retry in 0..40 {
            let d = b.delay(retry);
            let c = b.ceiling(retry);
            assert!(d >= c / 2 && d <= c, "{d:?} for retry {retry}");
        }
    }

    #[test]
    fn odd_draws_and_bounds_are_tamed() {
        let b = Backoff::new(ms(100), ms(10));
        assert_eq!(b.max(), ms(100), "max is raised to initial");
        assert_eq!(b.delay_with(1, f64::NAN), ms(50));
        assert_eq!(b.delay_with(1, -3.0), ms(50));
        assert_eq!(b.delay_with(1, 7.0), ms(100));
        let odd = Backoff::new(Duration::from_nanos(3), Duration::from_nanos(3));
        assert_eq!(odd.delay_with(1, 1.0), Duration::from_nanos(3));
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).delay(5),
            Duration::ZERO
        );
    }

    #[test]
    fn draws_vary() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let draws: Vec<Duration> = (0..16).map(|_| b.delay(1)).collect();
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "{draws:?}");
    }
}
