//! `oms:plugins/clock`: wall-clock milliseconds and a monotonic reading. Always granted.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::bindings::caps::oms::plugins::clock as wit;
use crate::state::HostState;

/// One origin for the whole process, so readings from different calls are comparable.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl wit::Host for HostState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Ok(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    async fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}
