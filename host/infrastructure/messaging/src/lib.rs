//! Messaging: the transactional outbox's relay to a message broker, the brokers behind one
//! interface, and the notification service that consumes the events.
//!
//! - [`event`]: the published contract (`oms.events.v1.OrderEvent`, protobuf bytes) and the
//!   CloudEvents-style header names.
//! - [`broker`]: [`broker::Publisher`] / [`broker::Consumer`], implemented by the embedded
//!   [`broker::InProcessBroker`] (the default `serve`) and by Kafka ([`broker::KafkaBroker`]).
//! - [`relay`]: the worker that claims unpublished outbox rows, publishes them keyed by order
//!   id, retries with backoff, dead-letters, redrives and prunes (through the application's
//!   `OutboxStore` port; this crate runs no SQL).
//! - [`notifications`]: a consumer that deduplicates by event id, formats and delivers through
//!   channels, and sends poison events to its dead-letter topic.
//! - [`host`]: what `oms serve` starts from its configuration.
//!
//! Guarantees and failure behaviour are described in `docs/outbox.md`.

pub mod broker;
pub mod error;
pub mod event;
pub mod host;
pub mod notifications;
pub mod relay;
mod trace;

pub use error::{BrokerError, EventError, MessagingError};
