//! The background loop that drives sagas: keep up to `batch` sagas in flight, claim more as
//! soon as one finishes or new work is announced, sleep when nothing is due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::outage::FailureRun;

use super::engine::SagaEngine;

/// How a worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Sagas one worker drives at the same time.
    pub batch: u32,
    /// Sleep between claims when nothing was due and no wake-up came: bounds how late a
    /// retry (or a saga started by another process) is picked up.
    pub poll_interval: Duration,
}

/// Runs `engine` until `shutdown` turns true, then lets the sagas in flight finish their
/// current step. A saga is claimed whenever a slot is free: one that finishes frees its
/// slot at once, so a saga started while the worker is busy waits for the first free slot,
/// not for the slowest saga of a batch. Woken early by `wakeup` (a local write started a
/// saga). A failing claim (database down) is retried after the poll interval, and logged
/// once per run of failures ([`FailureRun`]); the sagas themselves are safe in the database
/// meanwhile.
pub async fn run(
    engine: Arc<SagaEngine>,
    config: WorkerConfig,
    wakeup: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = usize::try_from(config.batch.max(1)).unwrap_or(usize::MAX);
    let mut in_flight: JoinSet<()> = JoinSet::new();
    // While the database is away every claim fails: one line per run of failures, not per
    // poll (docs/operations.md).
    let mut claim_failures = FailureRun::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let free = slots.saturating_sub(in_flight.len());
        let mut claimed = 0;
        if free > 0 {
            match engine
                .claim_due(u32::try_from(free).unwrap_or(u32::MAX))
                .await
            {
                Ok((sagas, claimed_at)) => {
                    crate::log_recovery!(claim_failures, "saga worker claims work again");
                    claimed = sagas.len();
                    for saga in sagas {
                        let engine = Arc::clone(&engine);
                        in_flight.spawn(async move { engine.drive(saga, claimed_at).await });
                    }
                }
                Err(e) => crate::log_failure!(
                    claim_failures,
                    e,
                    "saga worker claim failed",
                    "saga worker claims still failing"
                ),
            }
        }
        // Every free slot filled: more may be due; claim again at once.
        if claimed > 0 && claimed == free {
            continue;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            () = wakeup.notified() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}
