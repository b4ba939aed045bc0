//! Change notifications for `WatchOrder`.
//!
//! Committed writes announce `(order id, version)` on an in-process broadcast channel, so a
//! watcher wakes at once; watchers also re-read on a fallback interval, which covers changes
//! made by another host process sharing the database.

use oms_domain::{OrderId, Version};
use tokio::sync::broadcast;

/// Fan-out of committed order changes inside one process.
#[derive(Debug, Clone)]
pub struct OrderChanges {
    sender: broadcast::Sender<(OrderId, Version)>,
}

impl OrderChanges {
    /// `capacity` bounds memory; a watcher that lags behind simply re-reads the order.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    pub fn publish(&self, id: OrderId, version: Version) {
        // No receivers is normal (nobody watches); the send error only says that.
        let _ = self.sender.send((id, version));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(OrderId, Version)> {
        self.sender.subscribe()
    }
}

impl Default for OrderChanges {
    fn default() -> Self {
        Self::new(1024)
    }
}
