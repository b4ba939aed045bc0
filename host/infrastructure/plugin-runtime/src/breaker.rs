//! Per-plugin circuit breaker. After `failure_threshold` consecutive failures (sandbox
//! failures or the plugin's own `transient` errors; a `declined` payment is a success here) the
//! circuit opens and calls fail fast with `CircuitOpen` for `open_for`; then one probe call is
//! let through (half-open): its success closes the circuit, its failure re-opens it.
//!
//! An open breaker remembers the failure that opened it and hands it out with every refusal:
//! "circuit open" alone hides whether the plugin traps, hangs or runs out of memory, and the
//! refusal is often the last error a caller sees.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::BreakerCause;

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
        cause: BreakerCause,
    },
    /// A probe is in flight; everyone else still fails fast, for the same cause.
    HalfOpen {
        cause: BreakerCause,
    },
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

    /// Whether a call may go ahead now; `Err` means fail fast, with the failure that opened
    /// the circuit.
    pub fn try_acquire(&self) -> Result<(), BreakerCause> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Result<(), BreakerCause> {
        let mut inner = self.lock();
        match &*inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until, cause } if now >= *until => {
                *inner = Inner::HalfOpen {
                    cause: cause.clone(),
                };
                Ok(())
            }
            Inner::Open { cause, .. } | Inner::HalfOpen { cause } => Err(cause.clone()),
        }
    }

    /// Records that an admitted call succeeded.
    pub fn record_success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// Records that an admitted call failed, and how.
    pub fn record_failure(&self, cause: BreakerCause) {
        self.record_failure_at(cause, Instant::now());
    }

    fn record_failure_at(&self, cause: BreakerCause, now: Instant) {
        let mut inner = self.lock();
        *inner = match &*inner {
            Inner::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                Inner::Closed {
                    failures: failures + 1,
                }
            }
            // The threshold was reached, or the half-open probe failed.
            _ => Inner::Open {
                until: now + self.config.open_for,
                cause,
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
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CallErrorKind;

    fn trap() -> BreakerCause {
        BreakerCause::Call(CallErrorKind::Trapped {
            message: "unreachable".into(),
        })
    }

    fn deadline() -> BreakerCause {
        BreakerCause::Call(CallErrorKind::DeadlineExceeded { deadline_ms: 200 })
    }

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        b.record_failure_at(deadline(), t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure_at(trap(), t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire_at(t0),
            Err(trap()),
            "the refusal names the failure that opened the circuit"
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.try_acquire_at(later), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.try_acquire_at(later),
            Err(trap()),
            "only one probe at a time"
        );
        b.record_failure_at(deadline(), later);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire_at(later),
            Err(deadline()),
            "a failed probe re-opens with its own cause"
        );
        let much_later = later + Duration::from_secs(2);
        assert_eq!(b.try_acquire_at(much_later), Ok(()));
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
