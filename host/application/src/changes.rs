//! Change notifications for `WatchOrder`.
//!
//! Every write this process commits announces the order as committed on an in-process
//! broadcast channel, so a watcher wakes at once and sends that snapshot without reading the
//! database. Changes committed by other host processes arrive as hints (order id and
//! version, from the relays' "published" notifications, see `OutboxStore::watch_published`)
//! on the same channel; only those make a watcher read the order. Watchers also re-read on a
//! fallback interval, since hints can be late or lost.

use std::sync::Arc;

use oms_domain::{Order, OrderId, Version};
use tokio::sync::broadcast;

/// One committed change of an order.
#[derive(Debug, Clone)]
pub enum OrderChange {
    /// Committed by this process: the order as committed.
    Committed(Arc<Order>),
    /// Committed by some process (possibly this one), heard from the database: the order
    /// must be read to see it.
    Hint { id: OrderId, version: Version },
}

impl OrderChange {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::Committed(order) => order.id(),
            Self::Hint { id, .. } => *id,
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Self::Committed(order) => order.version(),
            Self::Hint { version, .. } => *version,
        }
    }
}

/// Fan-out of committed order changes inside one process.
#[derive(Debug, Clone)]
pub struct OrderChanges {
    sender: broadcast::Sender<OrderChange>,
}

impl OrderChanges {
    /// `capacity` bounds memory; a watcher that lags behind simply re-reads the order.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// Announces `order` as this process just committed it. Call it after the commit.
    pub fn publish(&self, order: &Order) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        // A send error only says that nobody listens any more.
        let _ = self
            .sender
            .send(OrderChange::Committed(Arc::new(order.clone())));
    }

    /// Announces that `id` reached `version` in some process.
    pub fn hint(&self, id: OrderId, version: Version) {
        let _ = self.sender.send(OrderChange::Hint { id, version });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OrderChange> {
        self.sender.subscribe()
    }
}

impl Default for OrderChanges {
    fn default() -> Self {
        Self::new(1024)
    }
}
