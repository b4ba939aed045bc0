//! Errors the domain can report. They carry no transport concerns: the gRPC edge maps them.

use crate::money::{Currency, MoneyError};
use crate::order::{OrderStatus, PaymentStatus};

/// Why a raw value was refused by a value-object constructor. The caller attaches the field
/// path (`items[2].sku`), which only it knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl InvalidValue {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// A business rule refused an operation on a valid aggregate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The order's status does not allow the requested action.
    #[error("order in status {from} cannot {action}")]
    IllegalOrderTransition {
        from: OrderStatus,
        action: &'static str,
    },
    /// The payment's status does not allow the requested action.
    #[error("payment in status {from} cannot {action}")]
    IllegalPaymentTransition {
        from: PaymentStatus,
        action: &'static str,
    },
    /// Money arithmetic failed (currency mismatch, overflow, negative result).
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A refund or capture asked for more than the payment allows.
    #[error("{0}")]
    AmountExceeded(String),
    /// An amount in another currency than the order's: no amount limit is involved, the
    /// amount given is simply not comparable. `field` is its request path.
    #[error("{field}: must be in the order's currency {expected}, not {actual}")]
    CurrencyMismatch {
        field: &'static str,
        expected: Currency,
        actual: Currency,
    },
    /// An argument that no state of this order could accept (a refund of zero): the request,
    /// not the order's state, is wrong. `field` is its request path.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Fulfillment has begun (stock committed or money captured): what the order holds can no
    /// longer be undone by a cancellation, and the address it ships to is fixed.
    #[error("fulfillment of this order has begun: it cannot {action}")]
    FulfillmentStarted { action: &'static str },
}
