//! WatchOrder: the order now and after every change, until a terminal status.

use std::sync::Arc;

use futures::Stream;
use oms_domain::{Order, OrderId, Version};
use tokio::sync::broadcast::error::RecvError;

use crate::changes::OrderChange;
use crate::error::AppError;
use crate::service::OrderService;

impl OrderService {
    /// The current order, then each newer version, ending after a terminal one; an unknown
    /// order is an error at once (`NotFound`), not a stream that fails. Subscribes before the
    /// one read that opens the stream, so that no change between read and wait is missed. A
    /// change this process committed is sent as broadcast, without a read; the order is read
    /// again only for a hint of a newer version committed elsewhere, after the watcher lagged
    /// behind the broadcast, or on the fallback interval (hints can be lost). Intermediate
    /// versions may be coalesced: a watcher always sees the latest state.
    pub async fn watch_order(
        &self,
        id: OrderId,
    ) -> Result<impl Stream<Item = Result<Order, AppError>> + Send + 'static, AppError> {
        let mut changes = self.changes.subscribe();
        let first = self.get_order(id).await?;
        let service = self.clone();
        Ok(async_stream(move |tx| async move {
            let mut last_sent: Option<Version> = None;
            // The next order to send when it is already in hand: the opening read, then
            // whatever a local commit broadcast.
            let mut known: Option<Arc<Order>> = Some(Arc::new(first));
            loop {
                let order = match known.take() {
                    Some(order) => Arc::unwrap_or_clone(order),
                    None => match service.get_order(id).await {
                        Ok(o) => o,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                };
                if last_sent.is_none_or(|sent| order.version() > sent) {
                    last_sent = Some(order.version());
                    let terminal = order.status().is_terminal();
                    if tx.send(Ok(order)).await.is_err() || terminal {
                        return;
                    }
                }
                let newer = |version: Version| last_sent.is_none_or(|sent| version > sent);
                // Wait for a newer version of this order, the poll interval, or the client.
                let poll = tokio::time::sleep(service.config.watch_poll_interval);
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        _ = &mut poll => break,
                        _ = tx.closed() => return,
                        msg = changes.recv() => match msg {
                            Ok(change) if change.order_id() == id && newer(change.version()) => {
                                if let OrderChange::Committed(order) = change {
                                    known = Some(order);
                                }
                                break;
                            }
                            Ok(_) => continue,
                            Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            }
        }))
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
