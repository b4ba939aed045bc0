//! Per-plugin circuit breaker. After `failure_threshold` consecutive failures (sandbox
//! failures or the plugin's own `transient` errors; a `declined` payment is a success here) the
//! circuit opens and calls fail fast with `CircuitOpen` for `open_for`; then one probe call is
//! let through (half-open): its success closes the circuit, its failure re-opens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker thresholds.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// Externally visible breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight; everyone else still fails fast.
    HalfOpen,
}

/// One plugin's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go ahead now; `false` means fail fast.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } if now >= until => {
                *inner = Inner::HalfOpen;
                true
            }
            Inner::Open { .. } | Inner::HalfOpen => false,
        }
    }

    /// Records how an admitted call ended.
    pub fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    fn record_at(&self, success: bool, now: Instant) {
        let mut inner = self.lock();
        *inner = match (&*inner, success) {
            (_, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, false) if failures + 1 < self.config.failure_threshold => {
                Inner::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => Inner::Open {
                until: now + self.config.open_for,
            },
        };
    }

    /// Resets to closed (after an install or rollback: the new version gets a fresh start).
    pub fn reset(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        b.record_at(false, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_at(false, t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire_at(t0));
        let later = t0 + Duration::from_secs(2);
        assert!(b.try_acquire_at(later));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.try_acquire_at(later), "only one probe at a time");
        b.record_at(false, later);
        assert_eq!(b.state(), BreakerState::Open);
        let much_later = later + Duration::from_secs(2);
        assert!(b.try_acquire_at(much_later));
        b.record_at(true, much_later);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
