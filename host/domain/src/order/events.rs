//! Domain events: facts about an order that other systems learn through the outbox.

use crate::money::Money;
use crate::text::Reason;
use crate::time::Timestamp;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEventKind {
    Created,
    ShippingAddressUpdated,
    CancellationRequested,
    Cancelled,
    Confirmed,
    Rejected,
    PaymentFailed,
    FulfillmentRequested,
    Fulfilled,
    RefundRequested {
        amount: Money,
        /// The caller's reason (may be empty); carried by the outbox event.
        reason: Reason,
    },
    Refunded {
        amount: Money,
    },
    /// Compensations ran out of retries; an operator must act.
    CompensationFailed,
}

/// A fact about one order, recorded in the same transaction as the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    pub kind: OrderEventKind,
    pub occurred_at: Timestamp,
}

impl OrderEventKind {
    /// The stable event type name used in the outbox and in message headers.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created => "OrderCreated",
            Self::ShippingAddressUpdated => "OrderShippingAddressUpdated",
            Self::CancellationRequested => "OrderCancellationRequested",
            Self::Cancelled => "OrderCancelled",
            Self::Confirmed => "OrderConfirmed",
            Self::Rejected => "OrderRejected",
            Self::PaymentFailed => "PaymentFailed",
            Self::FulfillmentRequested => "OrderFulfillmentRequested",
            Self::Fulfilled => "OrderFulfilled",
            Self::RefundRequested { .. } => "OrderRefundRequested",
            Self::Refunded { .. } => "OrderRefunded",
            Self::CompensationFailed => "OrderCompensationFailed",
        }
    }

    /// Bumped whenever an event's payload changes incompatibly.
    pub fn schema_version(&self) -> u32 {
        1
    }
}
