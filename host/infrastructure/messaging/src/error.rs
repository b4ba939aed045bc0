//! Errors of this crate, one enum per concern.

use oms_application::ports::StoreError;

/// A broker operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    /// The broker (or the path to it) is unavailable or timed out: retrying later may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused this message (too large, not authorised...): retrying the same
    /// message is unlikely to help.
    #[error("message rejected by the broker: {0}")]
    Rejected(String),
    /// Client configuration is invalid (unknown librdkafka property, bad value...).
    #[error("broker client configuration: {0}")]
    Config(String),
    /// The consumer or producer was closed.
    #[error("broker client closed")]
    Closed,
}

/// An event could not be encoded from the outbox payload or decoded from a message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("outbox payload does not match the event contract: {0}")]
    Payload(String),
    #[error("message is not an oms.events.v1.OrderEvent: {0}")]
    Decode(String),
}

/// A relay or notification store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("{0}")]
    Invalid(String),
}
