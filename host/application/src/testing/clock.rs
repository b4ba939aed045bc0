//! A clock that moves only when the test moves it.

use std::sync::Mutex;
use std::time::Duration;

use oms_domain::Timestamp;

use crate::clock::Clock;

/// Time under the test's control. Starts where the test says and never moves by itself.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn at(now: Timestamp) -> Self {
        Self(Mutex::new(now))
    }

    pub fn set(&self, now: Timestamp) {
        *self.lock() = now;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now = now.saturating_add(by);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // A test that panicked while holding the lock already failed; the time is still valid.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.lock()
    }
}
