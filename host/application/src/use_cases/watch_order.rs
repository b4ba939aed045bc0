//! WatchOrder: the order now and after every change, until a terminal status.

use futures::Stream;
use oms_domain::{Order, OrderId};
use tokio::sync::broadcast::error::RecvError;

use crate::error::AppError;
use crate::service::OrderService;

impl OrderService {
    /// Yields the current order, then each newer version, and ends after yielding a terminal
    /// one. Subscribes before the first read so that no change between read and wait is
    /// missed; re-reads on a fallback interval for changes committed by other processes.
    /// Intermediate versions may be coalesced: a watcher always sees the latest state.
    pub fn watch_order(
        &self,
        id: OrderId,
    ) -> impl Stream<Item = Result<Order, AppError>> + Send + 'static {
        let service = self.clone();
        async_stream(move |tx| async move {
            let mut changes = service.changes.subscribe();
            let mut last_sent = None;
            loop {
                let order = match service.get_order(id).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if last_sent != Some(order.version()) {
                    last_sent = Some(order.version());
                    let terminal = order.status().is_terminal();
                    if tx.send(Ok(order)).await.is_err() || terminal {
                        return;
                    }
                }
                // Wait for a local change to this order, the poll interval, or the client.
                let poll = tokio::time::sleep(service.config.watch_poll_interval);
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        _ = &mut poll => break,
                        _ = tx.closed() => return,
                        msg = changes.recv() => match msg {
                            Ok((changed, _)) if changed == id => break,
                            Ok(_) => continue,
                            Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            }
        })
    }
}

/// A stream fed by a task through a small channel; the task stops when the receiver drops.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Order, AppError>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Order, AppError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
