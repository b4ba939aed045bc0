//! The OMS domain: the `Order` aggregate, its value objects and its state machines.
//!
//! This crate depends on no other layer and performs no I/O. Every value that crosses into it
//! is parsed by a constructor that validates (`Sku::parse`, `Money::new`, ...), so an invalid
//! value cannot exist past the edge, and every state change goes through a transition table,
//! so an illegal transition cannot be applied.

pub mod address;
pub mod error;
pub mod idempotency_key;
pub mod ids;
pub mod line_item;
pub mod money;
pub mod order;
pub mod text;
pub mod time;

pub use address::ShippingAddress;
pub use error::{DomainError, InvalidValue};
pub use idempotency_key::IdempotencyKey;
pub use ids::{CustomerId, OrderId};
pub use line_item::{LineItem, Quantity, Sku};
pub use money::{Currency, Money, MoneyError};
pub use order::{
    NewOrder, Order, OrderEvent, OrderEventKind, OrderParts, OrderStatus, PaymentAction,
    PaymentMethod, PaymentStatus, ReservationStatus, Version,
};
pub use text::Reason;
pub use time::Timestamp;
