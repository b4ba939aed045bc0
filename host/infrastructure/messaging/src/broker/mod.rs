//! The broker interface shared by the embedded broker and Kafka.
//!
//! Semantics both implementations give: a message is delivered at least once; messages with
//! the same key go to the same partition and are delivered in publish order; a consumer
//! group resumes from its last committed offset (what was received but not committed is
//! delivered again).

mod in_process;
mod kafka;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::BrokerError;

pub use in_process::{InProcessBroker, InProcessOptions};
pub use kafka::{KafkaBroker, KafkaOptions};

/// A message to publish or one received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// Partitioning key: the order id for events.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// The first header named `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A received message and where it sits, which is what [`Consumer::commit`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Message,
    pub partition: i32,
    pub offset: i64,
}

/// Sends messages. Cheap to share between tasks.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `batch` and waits until each message is acknowledged (Kafka: by all in-sync
    /// replicas) or failed. One result per message, in order. Messages with the same key
    /// are appended in batch order.
    async fn publish(&self, batch: Vec<Message>) -> Vec<Result<(), BrokerError>>;
}

/// Receives messages of a consumer group. Offsets are committed only by [`Consumer::commit`].
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next message; waits until there is one. Cancellation safe, in both brokers:
    /// nothing is taken from the queue until a message is returned, so a consumer may give up
    /// waiting (a batch's linger, a shutdown) and lose nothing.
    async fn recv(&mut self) -> Result<Delivery, BrokerError>;
    /// Marks `delivery` and everything before it in its partition as processed.
    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BrokerError>;
}

/// A broker: makes publishers and consumers.
pub trait Broker: Send + Sync + 'static {
    fn publisher(&self) -> Result<Arc<dyn Publisher>, BrokerError>;
    /// A consumer in `group` subscribed to `topics`.
    fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BrokerError>;
}

/// Topic names, configurable so that several environments can share one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Order events (`oms.events.v1.OrderEvent`).
    pub events: String,
    /// Changes of the plugin set (`oms.events.v1.PluginChanged`).
    pub plugin_changes: String,
    /// Outbox rows that exhausted their publish attempts (of both aggregate types).
    pub dead_letters: String,
    /// Events the notification consumer could not process (poison events).
    pub notification_dead_letters: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            events: "oms.order-events.v1".into(),
            plugin_changes: "oms.plugin-changes.v1".into(),
            dead_letters: "oms.order-events.dlq.v1".into(),
            notification_dead_letters: "oms.notifications.dlq.v1".into(),
        }
    }
}
