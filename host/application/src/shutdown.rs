//! The host's shutdown signal, as its background loops wait on it: a `watch` channel that
//! turns `true` once, when the process stops.

use std::time::Duration;

use tokio::sync::watch;

/// Waits `period`, or less when shutdown comes meanwhile. `true`: carry on; `false`: the
/// process is stopping (or the sender is gone, which only happens then), end the loop.
pub async fn pause(period: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let slept = tokio::select! {
        () = tokio::time::sleep(period) => true,
        _ = shutdown.wait_for(|stopping| *stopping) => false,
    };
    slept && !*shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::pause;

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_with_its_period_or_at_shutdown() {
        let (stop, mut shutdown) = tokio::sync::watch::channel(false);
        assert!(
            pause(Duration::from_secs(5), &mut shutdown).await,
            "carry on"
        );
        let waiting = tokio::spawn(async move {
            let carry_on = pause(Duration::from_secs(3600), &mut shutdown).await;
            (carry_on, shutdown)
        });
        tokio::task::yield_now().await;
        stop.send(true)
            .unwrap_or_else(|_| unreachable!("the receiver is alive"));
        let (carry_on, mut shutdown) = waiting.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!carry_on, "shutdown ends the pause");
        assert!(
            !pause(Duration::ZERO, &mut shutdown).await,
            "and every later one"
        );
    }
}
