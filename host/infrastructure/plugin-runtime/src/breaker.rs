//! Per-plugin circuit breaker. After `failure_threshold` consecutive failures (sandbox
//! failures or the plugin's own `transient` errors; a `declined` payment is a success here) the
//! circuit opens and calls fail fast with `CircuitOpen` for `open_for`; then one probe call is
//! let through (half-open): its success closes the circuit, its failure re-opens it. A probe
//! whose caller goes away before it finishes (its future dropped: a cancelled request, a
//! timeout around the call) hands the probe back ([`Admission`]); otherwise the circuit would
//! wait for that outcome for ever and refuse every call until a restart.
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

/// A call the breaker let through. When it is the half-open probe, dropping it before
/// [`Self::settle`] (the call's future dropped mid-call) hands the probe back.
#[derive(Debug)]
#[must_use = "settle it once the call's outcome is recorded"]
pub struct Admission<'a> {
    probe: Option<&'a CircuitBreaker>,
}

impl Admission<'_> {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The call's outcome is recorded (`record_success`/`record_failure`): nothing to hand
    /// back.
    pub fn settle(mut self) {
        self.probe = None;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.probe.take() {
            breaker.abandon_probe();
        }
    }
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
    /// the circuit. The caller records the call's outcome, then [`Admission::settle`]s.
    pub fn try_acquire(&self) -> Result<Admission<'_>, BreakerCause> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Result<Admission<'_>, BreakerCause> {
        let mut inner = self.lock();
        match &*inner {
            Inner::Closed { .. } => Ok(Admission { probe: None }),
            Inner::Open { until, cause } if now >= *until => {
                *inner = Inner::HalfOpen {
                    cause: cause.clone(),
                };
                Ok(Admission { probe: Some(self) })
            }
            Inner::Open { cause, .. } | Inner::HalfOpen { cause } => Err(cause.clone()),
        }
    }

    /// A probe ended without an outcome: the circuit stays open, and the next call may probe
    /// at once (the abandoned one told nothing about the plugin).
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { cause } = &*inner {
            *inner = Inner::Open {
                until: Instant::now(),
                cause: cause.clone(),
            };
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
            b.try_acquire_at(t0).map(|a| a.is_probe()).unwrap_err(),
            trap(),
            "the refusal names the failure that opened the circuit"
        );
        let later = t0 + Duration::from_secs(2);
        let probe = b.try_acquire_at(later).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.try_acquire_at(later).map(|a| a.is_probe()).unwrap_err(),
            trap(),
            "only one probe at a time"
        );
        b.record_failure_at(deadline(), later);
        probe.settle();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire_at(later).map(|a| a.is_probe()).unwrap_err(),
            deadline(),
            "a failed probe re-opens with its own cause"
        );
        let much_later = later + Duration::from_secs(2);
        let probe = b.try_acquire_at(much_later).unwrap();
        b.record_success();
        probe.settle();
        assert_eq!(b.state(), BreakerState::Closed);
        let normal = b.try_acquire_at(much_later).unwrap();
        assert!(!normal.is_probe());
        normal.settle();
    }

    /// A probe whose call was dropped before it finished (its caller went away) told nothing:
    /// the next call probes instead of the circuit refusing everything for good.
    #[test]
    fn an_abandoned_probe_is_handed_back() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        b.record_failure_at(trap(), t0);
        let later = t0 + Duration::from_secs(2);
        let probe = b.try_acquire_at(later).unwrap();
        assert!(probe.is_probe());
        drop(probe);
        assert_eq!(b.state(), BreakerState::Open);
        let next = b.try_acquire_at(later).unwrap();
        assert!(next.is_probe(), "the next call is the probe");
        b.record_success();
        next.settle();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
