//! Status dimensions and their transition tables.
//!
//! Each dimension moves only through its `apply` table: a transition that is not in the table
//! yields `None`, so there is no code path that writes an arbitrary status. Keeping order,
//! payment and reservation apart (commercetools/Saleor style) avoids the combinatorial
//! "PAID_BUT_PARTIALLY_SHIPPED" statuses of a single enum.

use std::fmt;

/// Where the order is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    PartiallyFulfilled,
    Fulfilled,
    Completed,
    Rejected,
    PaymentFailed,
    Cancelling,
    Cancelled,
    /// Compensation retries were exhausted: an operator must look.
    CompensationFailed,
}

/// What can happen to an order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderTransition {
    Confirm,
    Reject,
    FailPayment,
    /// Cancel an order that has external effects to undo first.
    RequestCancel,
    /// Cancel an order with nothing left to undo (from PENDING or after CANCELLING).
    Cancel,
    FailCompensation,
    /// An operator retries a parked compensation.
    RetryCompensation,
    FulfillPartially,
    Fulfill,
    Complete,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 10] = [
        Self::Pending,
        Self::Confirmed,
        Self::PartiallyFulfilled,
        Self::Fulfilled,
        Self::Completed,
        Self::Rejected,
        Self::PaymentFailed,
        Self::Cancelling,
        Self::Cancelled,
        Self::CompensationFailed,
    ];

    /// The transition table. Everything not listed is illegal.
    pub fn apply(self, transition: OrderTransition) -> Option<OrderStatus> {
        use OrderStatus as S;
        use OrderTransition as T;
        match (self, transition) {
            (S::Pending, T::Confirm) => Some(S::Confirmed),
            (S::Pending, T::Reject) => Some(S::Rejected),
            (S::Pending, T::FailPayment) => Some(S::PaymentFailed),
            (S::Pending | S::Confirmed, T::RequestCancel) => Some(S::Cancelling),
            (S::Pending | S::Cancelling, T::Cancel) => Some(S::Cancelled),
            (S::Pending | S::Cancelling, T::FailCompensation) => Some(S::CompensationFailed),
            (S::CompensationFailed, T::RetryCompensation) => Some(S::Cancelling),
            (S::Confirmed | S::PartiallyFulfilled, T::FulfillPartially) => {
                Some(S::PartiallyFulfilled)
            }
            (S::Confirmed | S::PartiallyFulfilled, T::Fulfill) => Some(S::Fulfilled),
            (S::Fulfilled, T::Complete) => Some(S::Completed),
            _ => None,
        }
    }

    /// Terminal statuses never change again; `WatchOrder` ends on them.
    /// COMPENSATION_FAILED is not terminal: an operator can retry it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Rejected | Self::PaymentFailed | Self::Cancelled
        )
    }

    /// The stable upper-case name used in storage, events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::PartiallyFulfilled => "PARTIALLY_FULFILLED",
            Self::Fulfilled => "FULFILLED",
            Self::Completed => "COMPLETED",
            Self::Rejected => "REJECTED",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
            Self::CompensationFailed => "COMPENSATION_FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of the order's payment (one attempt per order in this version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Pending,
    Authorized,
    AuthFailed,
    Captured,
    PartiallyCaptured,
    Voided,
    Refunded,
    PartiallyRefunded,
    /// A provider call timed out: the outcome is unknown until reconciled.
    Unresolved,
    /// The provider waits for the customer (3-D Secure, a bank redirect): the order shows
    /// the action until the provider decides or the action expires. Nothing is held yet.
    ActionRequired,
}

/// What can happen to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentTransition {
    Authorize,
    FailAuthorization,
    MarkUnresolved,
    RequireAction,
    CapturePartially,
    Capture,
    Void,
    RefundPartially,
    Refund,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 10] = [
        Self::Pending,
        Self::Authorized,
        Self::AuthFailed,
        Self::Captured,
        Self::PartiallyCaptured,
        Self::Voided,
        Self::Refunded,
        Self::PartiallyRefunded,
        Self::Unresolved,
        Self::ActionRequired,
    ];

    pub fn apply(self, transition: PaymentTransition) -> Option<PaymentStatus> {
        use PaymentStatus as S;
        use PaymentTransition as T;
        match (self, transition) {
            (S::Pending | S::Unresolved | S::ActionRequired, T::Authorize) => Some(S::Authorized),
            (S::Pending | S::Unresolved | S::ActionRequired, T::FailAuthorization) => {
                Some(S::AuthFailed)
            }
            (S::Pending, T::MarkUnresolved) => Some(S::Unresolved),
            (S::Pending | S::Unresolved | S::ActionRequired, T::RequireAction) => {
                Some(S::ActionRequired)
            }
            (S::Authorized | S::PartiallyCaptured, T::CapturePartially) => {
                Some(S::PartiallyCaptured)
            }
            (S::Authorized | S::PartiallyCaptured, T::Capture) => Some(S::Captured),
            // An unresolved authorisation found held at the provider and voided at once.
            // A payment still waiting for the customer is cancelled at the provider the same way.
            (S::Authorized | S::Unresolved | S::ActionRequired, T::Void) => Some(S::Voided),
            (S::Captured | S::PartiallyCaptured | S::PartiallyRefunded, T::RefundPartially) => {
                Some(S::PartiallyRefunded)
            }
            (S::Captured | S::PartiallyCaptured | S::PartiallyRefunded, T::Refund) => {
                Some(S::Refunded)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Authorized => "AUTHORIZED",
            Self::AuthFailed => "AUTH_FAILED",
            Self::Captured => "CAPTURED",
            Self::PartiallyCaptured => "PARTIALLY_CAPTURED",
            Self::Voided => "VOIDED",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Unresolved => "UNRESOLVED",
            Self::ActionRequired => "ACTION_REQUIRED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of the order's stock reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    /// Nothing reserved yet.
    None,
    Reserved,
    Released,
    /// Allocated at fulfillment.
    Committed,
}

/// What can happen to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationTransition {
    Reserve,
    Release,
    Commit,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 4] =
        [Self::None, Self::Reserved, Self::Released, Self::Committed];

    pub fn apply(self, transition: ReservationTransition) -> Option<ReservationStatus> {
        use ReservationStatus as S;
        use ReservationTransition as T;
        match (self, transition) {
            (S::None, T::Reserve) => Some(S::Reserved),
            (S::Reserved, T::Release) => Some(S::Released),
            (S::Reserved, T::Commit) => Some(S::Committed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Reserved => "RESERVED",
            Self::Released => "RELEASED",
            Self::Committed => "COMMITTED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ORDER_TRANSITIONS: [OrderTransition; 10] = [
        OrderTransition::Confirm,
        OrderTransition::Reject,
        OrderTransition::FailPayment,
        OrderTransition::RequestCancel,
        OrderTransition::Cancel,
        OrderTransition::FailCompensation,
        OrderTransition::RetryCompensation,
        OrderTransition::FulfillPartially,
        OrderTransition::Fulfill,
        OrderTransition::Complete,
    ];

    #[test]
    fn names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        for s in ReservationStatus::ALL {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
    }

    proptest! {
        /// Terminal statuses absorb every transition, whatever came before.
        #[test]
        fn terminal_statuses_never_move(path in prop::collection::vec(0usize..10, 0..40)) {
            let mut status = OrderStatus::Pending;
            for i in path {
                let before = status;
                if let Some(next) = status.apply(ORDER_TRANSITIONS[i]) {
                    prop_assert!(!before.is_terminal(), "{before} moved to {next}");
                    status = next;
                }
            }
        }

        /// Nothing reaches CONFIRMED except from PENDING, and nothing returns to PENDING:
        /// an announced confirmation is never followed by a second one.
        #[test]
        fn pending_is_never_reentered(path in prop::collection::vec(0usize..10, 0..40)) {
            let mut status = OrderStatus::Pending;
            let mut left_pending = false;
            for i in path {
                if let Some(next) = status.apply(ORDER_TRANSITIONS[i]) {
                    if next == OrderStatus::Confirmed {
                        prop_assert_eq!(status, OrderStatus::Pending);
                    }
                    left_pending |= next != OrderStatus::Pending;
                    prop_assert!(!(left_pending && next == OrderStatus::Pending));
                    status = next;
                }
            }
        }

        /// A voided payment can never be captured or refunded, and a refund needs a capture.
        #[test]
        fn money_never_moves_after_void(path in prop::collection::vec(0usize..8, 0..30)) {
            let all = [
                PaymentTransition::Authorize, PaymentTransition::FailAuthorization,
                PaymentTransition::MarkUnresolved, PaymentTransition::CapturePartially,
                PaymentTransition::Capture, PaymentTransition::Void,
                PaymentTransition::RefundPartially, PaymentTransition::Refund,
            ];
            let mut status = PaymentStatus::Pending;
            let mut captured = false;
            for i in path {
                if let Some(next) = status.apply(all[i]) {
                    prop_assert!(status != PaymentStatus::Voided);
                    prop_assert!(status != PaymentStatus::AuthFailed);
                    if matches!(next, PaymentStatus::Refunded | PaymentStatus::PartiallyRefunded) {
                        prop_assert!(captured);
                    }
                    captured |= matches!(next, PaymentStatus::Captured | PaymentStatus::PartiallyCaptured);
                    status = next;
                }
            }
        }
    }
}
