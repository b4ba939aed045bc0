//! The source of "now", injected so that tests can control time (idempotency TTLs, leases).

use oms_domain::Timestamp;

/// Supplies the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
