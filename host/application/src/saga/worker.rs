//! The background loop that drives sagas: claim due work, run it, sleep until woken.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::warn;

use super::engine::SagaEngine;

/// How a worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Sagas claimed per round.
    pub batch: u32,
    /// Sleep between rounds when nothing was due and no wake-up came: bounds how late a
    /// retry (or a saga started by another process) is picked up.
    pub poll_interval: Duration,
}

/// Runs `engine` until `shutdown` turns true. Woken early by `wakeup` (a local write
/// started a saga). A failing round (database down) is logged and retried after the poll
/// interval; the sagas themselves are safe in the database meanwhile.
pub async fn run(
    engine: Arc<SagaEngine>,
    config: WorkerConfig,
    wakeup: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let busy = match engine.run_due(config.batch).await {
            Ok(n) => n > 0,
            Err(e) => {
                warn!(error = %e, "saga worker round failed");
                false
            }
        };
        if busy {
            continue;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = wakeup.notified() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
        }
    }
}
