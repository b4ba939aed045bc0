//! The one retry/backoff helper of the host (sagas, outbox relay, notification channels):
//! exponential growth to a cap, with jitter.

use std::time::Duration;

/// How a step retries transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The delay never grows past this.
    pub max: Duration,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    /// The ceiling of the delay before attempt `attempt` (1-based): `initial * 2^(attempt-1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// [`Self::delay`] with a fresh random sample.
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    /// A delay drawn uniformly from `[ceiling/2, ceiling]`: jitter spreads retries of many
    /// sagas that failed together (a provider outage) while keeping a floor so a retry never
    /// comes back at once. `unit` is a uniform sample in `[0, 1)`, injected for testability.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let p = RetryPolicy::DEFAULT;
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(10), Duration::from_secs(5));
        assert_eq!(p.ceiling(200), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let p = RetryPolicy::DEFAULT;
        for attempt in 1..12 {
            for unit in [0.0, 0.3, 0.999] {
                let d = p.delay(attempt, unit);
                assert!(d >= p.ceiling(attempt) / 2 && d <= p.ceiling(attempt));
            }
        }
    }
}
