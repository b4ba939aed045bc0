//! The application layer: use cases over the domain, the ports (traits) that infrastructure
//! implements, and the idempotency protocol.
//!
//! Every mutating use case is one atomic write ([`ports::OrderWrite`]): the order row, its
//! outbox messages and the idempotency record's completion commit together or not at all.

pub mod changes;
pub mod clock;
pub mod error;
pub mod idempotency;
pub mod operations;
pub mod outage;
pub mod outbox;
pub mod plugin_kv;
pub mod ports;
pub mod retry;
pub mod saga;
pub mod service;
pub mod shutdown;
pub mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace_context;
pub mod use_cases;

pub use error::{AppError, FieldViolation, RunningOperation};
pub use service::{InlinePlacement, OrderService, ServiceConfig};
