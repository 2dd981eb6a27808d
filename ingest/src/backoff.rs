//! Reconnect delays: capped exponential backoff with jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delay before reconnect attempt `n` (0-based): `initial · 2ⁿ`, capped at `max`, of which the
/// upper half is random ("equal jitter"). The random half keeps many replicas that lost the
/// same broker from reconnecting in lock step; the fixed half keeps the delay from collapsing
/// to nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The delay for `attempt` with `unit` in `[0, 1)` as the random part.
    pub(crate) fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 1u32 << attempt.min(30);
        let capped = self.initial.saturating_mul(factor).min(self.max);
        let half = capped / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay for `attempt`, with fresh randomness.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }
}

/// A random number in `[0, 1)`. `RandomState` is seeded from the operating system's randomness
/// per instance, which is plenty for jitter and saves a dependency on `rand`.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(7, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay_with(u32::MAX, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay_with(2, 0.0), Duration::from_millis(200));
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let full = b.delay_with(attempt, 1.0);
            assert!(d >= full / 2 && d <= full, "{d:?} for attempt {attempt}");
        }
    }

    #[test]
    fn random_unit_varies() {
        let values: Vec<f64> = (0..8).map(|_| random_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.windows(2).any(|w| w[0] != w[1]));
    }
}
