//! The order aggregate: the only place where an order's state changes.

use std::collections::HashSet;

use super::events::{OrderEvent, OrderEventKind};
use super::status::{
    OrderStatus, OrderTransition, PaymentStatus, PaymentTransition, ReservationStatus,
    ReservationTransition,
};
use crate::address::ShippingAddress;
use crate::error::{DomainError, InvalidValue};
use crate::ids::{CustomerId, OrderId};
use crate::line_item::LineItem;
use crate::money::Money;
use crate::text::Reason;
use crate::time::Timestamp;

/// At most this many lines per order: a bound on the work one request can cause.
pub const MAX_LINES: usize = 100;

/// The optimistic-lock version of an order: 1 when created, +1 on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub i64);

impl Version {
    pub const INITIAL: Version = Version(1);

    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

/// Which payment provider plugin to use and the client's opaque payment token for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    pub provider: String,
    pub token: String,
}

/// A step the customer must complete for the provider to decide on the payment (a 3-D Secure
/// challenge, a bank redirect), and when the provider stops waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAction {
    /// Where the storefront sends the customer.
    pub url: String,
    pub expires_at: Timestamp,
}

impl PaymentMethod {
    const MAX_LEN: usize = 255;

    /// Both parts are required, printable and at most 255 characters; the provider name must
    /// look like a plugin name (`a-z 0-9 -`).
    pub fn parse(provider: &str, token: &str) -> Result<Self, Vec<(&'static str, InvalidValue)>> {
        let mut errors = Vec::new();
        if provider.is_empty()
            || provider.len() > Self::MAX_LEN
            || !provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            errors.push((
                "provider",
                InvalidValue::new("must be a plugin name: 1 to 255 of a-z, 0-9 and '-'"),
            ));
        }
        if token.is_empty() || token.len() > Self::MAX_LEN || token.chars().any(char::is_control) {
            errors.push((
                "token",
                InvalidValue::new("must be 1 to 255 characters without control characters"),
            ));
        }
        if errors.is_empty() {
            Ok(Self {
                provider: provider.to_owned(),
                token: token.to_owned(),
            })
        } else {
            Err(errors)
        }
    }
}

/// A validated request to place an order: lines are non-empty, of one currency, with
/// distinct SKUs, and their total fits in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    customer_id: CustomerId,
    items: Vec<LineItem>,
    total: Money,
    payment: PaymentMethod,
    shipping_address: ShippingAddress,
}

impl NewOrder {
    /// Checks the cross-field rules. Errors are `(field path, reason)` pairs relative to the
    /// request (`items[3].unit_price.currency`), so the edge can report every one.
    pub fn new(
        customer_id: CustomerId,
        items: Vec<LineItem>,
        payment: PaymentMethod,
        shipping_address: ShippingAddress,
    ) -> Result<Self, Vec<(String, InvalidValue)>> {
        let mut errors = Vec::new();
        if items.is_empty() {
            errors.push((
                "items".to_owned(),
                InvalidValue::new("at least one line is required"),
            ));
        }
        if items.len() > MAX_LINES {
            errors.push((
                "items".to_owned(),
                InvalidValue::new(format!("at most {MAX_LINES} lines are allowed")),
            ));
        }
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item.sku.as_str()) {
                errors.push((
                    format!("items[{i}].sku"),
                    InvalidValue::new(format!("duplicate SKU {}: merge the lines", item.sku)),
                ));
            }
        }
        let total = match items.first() {
            Some(first) => {
                let currency = first.unit_price.currency();
                // A line in another currency is reported on that line and left out of the
                // sum, so the sum of the remaining lines is still checked for overflow (and
                // a mismatch is never misreported as one).
                let mut mixed = false;
                let mut total = Some(Money::zero(currency));
                for (i, item) in items.iter().enumerate() {
                    if item.unit_price.currency() != currency {
                        errors.push((
                            format!("items[{i}].unit_price.currency"),
                            InvalidValue::new(format!(
                                "all lines must use one currency ({currency})"
                            )),
                        ));
                        mixed = true;
                        continue;
                    }
                    total =
                        total.and_then(|t| item.subtotal().and_then(|s| t.checked_add(&s)).ok());
                    if total.is_none() {
                        errors.push((
                            format!("items[{i}]"),
                            InvalidValue::new("order total overflows 64-bit minor units"),
                        ));
                        break;
                    }
                }
                total.filter(|_| !mixed)
            }
            None => None,
        };
        match (total, errors.is_empty()) {
            (Some(total), true) => Ok(Self {
                customer_id,
                items,
                total,
                payment,
                shipping_address,
            }),
            _ => Err(errors),
        }
    }

    /// The payment provider and token the order names.
    pub fn payment(&self) -> &PaymentMethod {
        &self.payment
    }

    pub fn total(&self) -> Money {
        self.total
    }
}

/// Every field of a stored order, for repositories to rebuild an aggregate. It bypasses the
/// transition table, so only storage code that read a previously valid order may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderParts {
    /// What the customer must do for the payment to go on (while it is ACTION_REQUIRED).
    pub payment_action: Option<PaymentAction>,
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub reservation_status: ReservationStatus,
    pub payment: PaymentMethod,
    pub shipping_address: ShippingAddress,
    pub captured: Money,
    pub refunded: Money,
    pub failure_reason: Option<String>,
    pub version: Version,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An order and its three status dimensions. Fields are private: state changes only through
/// the methods below, each of which goes through a transition table, bumps the version and
/// returns the event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    parts: OrderParts,
}

impl Order {
    /// A new PENDING order at version 1, with its `OrderCreated` event.
    pub fn place(new: NewOrder, id: OrderId, now: Timestamp) -> (Order, OrderEvent) {
        let currency = new.total.currency();
        let order = Order {
            parts: OrderParts {
                id,
                customer_id: new.customer_id,
                items: new.items,
                total: new.total,
                status: OrderStatus::Pending,
                payment_status: PaymentStatus::Pending,
                reservation_status: ReservationStatus::None,
                payment: new.payment,
                shipping_address: new.shipping_address,
                captured: Money::zero(currency),
                refunded: Money::zero(currency),
                failure_reason: None,
                payment_action: None,
                version: Version::INITIAL,
                created_at: now,
                updated_at: now,
            },
        };
        let event = OrderEvent {
            kind: OrderEventKind::Created,
            occurred_at: now,
        };
        (order, event)
    }

    /// See [`OrderParts`].
    pub fn rehydrate(parts: OrderParts) -> Order {
        Order { parts }
    }

    pub fn parts(&self) -> &OrderParts {
        &self.parts
    }

    pub fn id(&self) -> OrderId {
        self.parts.id
    }
    pub fn customer_id(&self) -> &CustomerId {
        &self.parts.customer_id
    }
    pub fn items(&self) -> &[LineItem] {
        &self.parts.items
    }
    pub fn total(&self) -> Money {
        self.parts.total
    }
    pub fn status(&self) -> OrderStatus {
        self.parts.status
    }
    pub fn payment_status(&self) -> PaymentStatus {
        self.parts.payment_status
    }
    pub fn reservation_status(&self) -> ReservationStatus {
        self.parts.reservation_status
    }
    pub fn payment(&self) -> &PaymentMethod {
        &self.parts.payment
    }
    pub fn shipping_address(&self) -> &ShippingAddress {
        &self.parts.shipping_address
    }
    pub fn captured(&self) -> Money {
        self.parts.captured
    }
    pub fn refunded(&self) -> Money {
        self.parts.refunded
    }
    pub fn failure_reason(&self) -> Option<&str> {
        self.parts.failure_reason.as_deref()
    }
    pub fn version(&self) -> Version {
        self.parts.version
    }
    pub fn created_at(&self) -> Timestamp {
        self.parts.created_at
    }
    pub fn updated_at(&self) -> Timestamp {
        self.parts.updated_at
    }

    fn touch(&mut self, now: Timestamp, kind: OrderEventKind) -> OrderEvent {
        self.bump(now);
        OrderEvent {
            kind,
            occurred_at: now,
        }
    }

    /// A change that announces no event of its own (a step's intermediate bookkeeping).
    fn bump(&mut self, now: Timestamp) {
        self.parts.version = self.parts.version.next();
        self.parts.updated_at = now;
    }

    fn move_order(
        &mut self,
        transition: OrderTransition,
        action: &'static str,
    ) -> Result<(), DomainError> {
        let next =
            self.parts
                .status
                .apply(transition)
                .ok_or(DomainError::IllegalOrderTransition {
                    from: self.parts.status,
                    action,
                })?;
        self.parts.status = next;
        Ok(())
    }

    fn move_payment(
        &mut self,
        transition: PaymentTransition,
        action: &'static str,
    ) -> Result<(), DomainError> {
        let next = self.parts.payment_status.apply(transition).ok_or(
            DomainError::IllegalPaymentTransition {
                from: self.parts.payment_status,
                action,
            },
        )?;
        self.parts.payment_status = next;
        if next != PaymentStatus::ActionRequired {
            self.parts.payment_action = None;
        }
        Ok(())
    }

    fn move_reservation(&mut self, transition: ReservationTransition) -> Result<(), DomainError> {
        let from = self.parts.reservation_status;
        self.parts.reservation_status =
            from.apply(transition)
                .ok_or(DomainError::IllegalOrderTransition {
                    from: self.parts.status,
                    action: "change its reservation that way",
                })?;
        Ok(())
    }

    /// Only before anything has shipped: once fulfillment starts the address is history.
    pub fn update_shipping_address(
        &mut self,
        address: ShippingAddress,
        now: Timestamp,
    ) -> Result<OrderEvent, DomainError> {
        if !matches!(
            self.parts.status,
            OrderStatus::Pending | OrderStatus::Confirmed
        ) {
            return Err(DomainError::IllegalOrderTransition {
                from: self.parts.status,
                action: "change its shipping address",
            });
        }
        self.refuse_once_fulfillment_started("change its shipping address")?;
        self.parts.shipping_address = address;
        Ok(self.touch(now, OrderEventKind::ShippingAddressUpdated))
    }

    /// Whether stock or money is held for this order outside the OMS.
    pub fn has_external_effects(&self) -> bool {
        self.parts.reservation_status == ReservationStatus::Reserved
            || !matches!(
                self.parts.payment_status,
                PaymentStatus::Pending | PaymentStatus::AuthFailed | PaymentStatus::Voided
            )
    }

    /// Whether fulfillment has left marks that no cancellation can undo: the inventory
    /// contract cannot release a committed reservation, and money captured is only returned
    /// by a refund.
    pub fn fulfillment_started(&self) -> bool {
        self.parts.reservation_status == ReservationStatus::Committed
            || !self.parts.captured.is_zero()
    }

    fn refuse_once_fulfillment_started(&self, action: &'static str) -> Result<(), DomainError> {
        if self.fulfillment_started() {
            return Err(DomainError::FulfillmentStarted { action });
        }
        Ok(())
    }

    /// Cancels at once when nothing is held outside the OMS; otherwise moves to CANCELLING
    /// and leaves the undoing (void, release) to the saga. Refused once fulfillment has begun:
    /// the way back from there is a refund.
    pub fn cancel(&mut self, reason: &str, now: Timestamp) -> Result<OrderEvent, DomainError> {
        let direct = self.parts.status == OrderStatus::Pending && !self.has_external_effects();
        if direct {
            self.move_order(OrderTransition::Cancel, "be cancelled")?;
            self.parts.failure_reason = Some(reason.to_owned());
            Ok(self.touch(now, OrderEventKind::Cancelled))
        } else {
            if self
                .parts
                .status
                .apply(OrderTransition::RequestCancel)
                .is_some()
            {
                self.refuse_once_fulfillment_started("be cancelled")?;
            }
            self.move_order(OrderTransition::RequestCancel, "be cancelled")?;
            self.parts.failure_reason = Some(reason.to_owned());
            Ok(self.touch(now, OrderEventKind::CancellationRequested))
        }
    }

    /// The compensations of a cancellation are done.
    pub fn complete_cancellation(&mut self, now: Timestamp) -> Result<OrderEvent, DomainError> {
        self.move_order(OrderTransition::Cancel, "finish cancelling")?;
        Ok(self.touch(now, OrderEventKind::Cancelled))
    }

    /// Stock was reserved by the inventory adapter.
    pub fn record_reservation(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_reservation(ReservationTransition::Reserve)?;
        self.bump(now);
        Ok(())
    }

    /// Stock was released back (compensation or cancellation).
    pub fn record_release(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_reservation(ReservationTransition::Release)?;
        self.bump(now);
        Ok(())
    }

    /// The payment provider holds the order's total.
    pub fn record_authorization(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_payment(PaymentTransition::Authorize, "be authorized")?;
        self.bump(now);
        Ok(())
    }

    /// The provider waits for the customer to complete `action` before it decides.
    pub fn record_action_required(
        &mut self,
        action: PaymentAction,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        if self.parts.payment_status == PaymentStatus::ActionRequired
            && self.parts.payment_action.as_ref() == Some(&action)
        {
            return Ok(());
        }
        self.move_payment(
            PaymentTransition::RequireAction,
            "require a customer action",
        )?;
        self.parts.payment_action = Some(action);
        self.bump(now);
        Ok(())
    }

    /// The customer action the payment waits for, while it is ACTION_REQUIRED.
    pub fn payment_action(&self) -> Option<&PaymentAction> {
        self.parts.payment_action.as_ref()
    }

    /// An unresolved authorisation turned out to hold nothing (the provider has no payment
    /// for its key, or declined it).
    pub fn record_authorization_failure(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_payment(PaymentTransition::FailAuthorization, "fail authorization")?;
        self.bump(now);
        Ok(())
    }

    /// A payment call timed out: its outcome is unknown until reconciled with the provider.
    pub fn mark_payment_unresolved(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_payment(PaymentTransition::MarkUnresolved, "become unresolved")?;
        self.bump(now);
        Ok(())
    }

    /// The provider released the hold.
    pub fn record_void(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_payment(PaymentTransition::Void, "be voided")?;
        self.bump(now);
        Ok(())
    }

    /// The reservation was allocated at fulfillment.
    pub fn record_commit(&mut self, now: Timestamp) -> Result<(), DomainError> {
        self.move_reservation(ReservationTransition::Commit)?;
        self.bump(now);
        Ok(())
    }

    /// The provider captured `amount`; the whole authorised total makes it CAPTURED.
    pub fn record_capture(&mut self, amount: Money, now: Timestamp) -> Result<(), DomainError> {
        let captured = self.parts.captured.checked_add(&amount)?;
        if captured.amount_minor() > self.parts.total.amount_minor() {
            return Err(DomainError::AmountExceeded(format!(
                "capture of {} exceeds the authorised {}",
                captured.amount_minor(),
                self.parts.total.amount_minor()
            )));
        }
        let full = captured == self.parts.total;
        self.move_payment(
            if full {
                PaymentTransition::Capture
            } else {
                PaymentTransition::CapturePartially
            },
            "be captured",
        )?;
        self.parts.captured = captured;
        self.bump(now);
        Ok(())
    }

    /// Compensation retries ran out: park the order for an operator.
    pub fn fail_compensation(
        &mut self,
        reason: &str,
        now: Timestamp,
    ) -> Result<OrderEvent, DomainError> {
        self.move_order(OrderTransition::FailCompensation, "park for an operator")?;
        self.parts.failure_reason = Some(reason.to_owned());
        Ok(self.touch(now, OrderEventKind::CompensationFailed))
    }

    /// An operator retries a parked order's compensations: it goes back to CANCELLING, the
    /// only way out of COMPENSATION_FAILED (an order never returns to PENDING).
    pub fn retry_compensation(&mut self, now: Timestamp) -> Result<OrderEvent, DomainError> {
        self.move_order(
            OrderTransition::RetryCompensation,
            "retry its compensations",
        )?;
        Ok(self.touch(now, OrderEventKind::CancellationRequested))
    }

    /// The pivot of the place-order saga: from here on only forward recovery exists.
    pub fn confirm(&mut self, now: Timestamp) -> Result<OrderEvent, DomainError> {
        if self.parts.reservation_status != ReservationStatus::Reserved
            || self.parts.payment_status != PaymentStatus::Authorized
        {
            return Err(DomainError::IllegalOrderTransition {
                from: self.parts.status,
                action: "be confirmed before stock is reserved and payment authorized",
            });
        }
        self.move_order(OrderTransition::Confirm, "be confirmed")?;
        Ok(self.touch(now, OrderEventKind::Confirmed))
    }

    /// Inventory refused the order (out of stock, invalid SKU).
    pub fn reject(&mut self, reason: &str, now: Timestamp) -> Result<OrderEvent, DomainError> {
        self.move_order(OrderTransition::Reject, "be rejected")?;
        self.parts.failure_reason = Some(reason.to_owned());
        Ok(self.touch(now, OrderEventKind::Rejected))
    }

    /// The payment provider declined; the saga releases the stock before calling this.
    pub fn fail_payment(
        &mut self,
        reason: &str,
        now: Timestamp,
    ) -> Result<OrderEvent, DomainError> {
        self.move_order(OrderTransition::FailPayment, "fail its payment")?;
        if self.parts.payment_status == PaymentStatus::Pending
            || self.parts.payment_status == PaymentStatus::Unresolved
        {
            self.move_payment(PaymentTransition::FailAuthorization, "fail authorization")?;
        }
        self.parts.failure_reason = Some(reason.to_owned());
        Ok(self.touch(now, OrderEventKind::PaymentFailed))
    }

    /// Starts fulfillment: only a confirmed order whose stock and money are still held can be
    /// fulfilled. The fulfillment saga then commits the stock, captures and calls [`Self::fulfill`].
    pub fn request_fulfillment(&mut self, now: Timestamp) -> Result<OrderEvent, DomainError> {
        let ready = matches!(
            self.parts.status,
            OrderStatus::Confirmed | OrderStatus::PartiallyFulfilled
        ) && self.parts.reservation_status == ReservationStatus::Reserved
            && matches!(
                self.parts.payment_status,
                PaymentStatus::Authorized | PaymentStatus::PartiallyCaptured
            );
        if !ready {
            return Err(DomainError::IllegalOrderTransition {
                from: self.parts.status,
                action: "be fulfilled (it must be CONFIRMED with stock reserved and payment held)",
            });
        }
        Ok(self.touch(now, OrderEventKind::FulfillmentRequested))
    }

    /// What a refund of `amount` would be refused for, if anything; the refund saga records
    /// the refund with [`Self::refund`] once the provider has made it.
    pub fn check_refund(&self, amount: Money) -> Result<(), DomainError> {
        let mut probe = self.clone();
        probe.refund(amount, self.parts.updated_at).map(|_| ())
    }

    /// Starts a refund of `amount`, or of the whole refundable balance when `None`, for
    /// `reason`, checked like [`Self::refund`]. Returns the amount with the event.
    pub fn request_refund(
        &mut self,
        amount: Option<Money>,
        reason: Reason,
        now: Timestamp,
    ) -> Result<(Money, OrderEvent), DomainError> {
        let amount = match amount {
            None => self.parts.captured.checked_sub(&self.parts.refunded)?,
            Some(amount) => {
                let currency = self.parts.total.currency();
                if amount.currency() != currency {
                    return Err(DomainError::CurrencyMismatch {
                        field: "amount",
                        expected: currency,
                        actual: amount.currency(),
                    });
                }
                if amount.is_zero() {
                    return Err(DomainError::InvalidArgument {
                        field: "amount",
                        reason: "must be greater than zero (omit it to refund the whole balance)"
                            .into(),
                    });
                }
                amount
            }
        };
        self.check_refund(amount)?;
        let event = self.touch(now, OrderEventKind::RefundRequested { amount, reason });
        Ok((amount, event))
    }

    /// Everything was shipped: the reservation is committed and the payment captured by the
    /// fulfillment flow before this is recorded.
    pub fn fulfill(&mut self, now: Timestamp) -> Result<OrderEvent, DomainError> {
        self.move_order(OrderTransition::Fulfill, "be fulfilled")?;
        Ok(self.touch(now, OrderEventKind::Fulfilled))
    }

    /// Records a refund of `amount`; never more than was captured and not yet refunded.
    pub fn refund(&mut self, amount: Money, now: Timestamp) -> Result<OrderEvent, DomainError> {
        let refundable = self.parts.captured.checked_sub(&self.parts.refunded)?;
        if amount.currency() != refundable.currency() {
            return Err(DomainError::CurrencyMismatch {
                field: "amount",
                expected: refundable.currency(),
                actual: amount.currency(),
            });
        }
        if amount.is_zero() || amount.amount_minor() > refundable.amount_minor() {
            return Err(DomainError::AmountExceeded(format!(
                "refund of {} exceeds the refundable {}",
                amount.amount_minor(),
                refundable.amount_minor()
            )));
        }
        let full = amount == refundable;
        self.move_payment(
            if full {
                PaymentTransition::Refund
            } else {
                PaymentTransition::RefundPartially
            },
            "be refunded",
        )?;
        self.parts.refunded = self.parts.refunded.checked_add(&amount)?;
        Ok(self.touch(now, OrderEventKind::Refunded { amount }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::address::RawAddress;
    use crate::line_item::{Quantity, Sku};
    use crate::money::Currency;

    fn line(sku: &str, qty: i64, price: i64, currency: &str) -> LineItem {
        LineItem {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::new(qty).unwrap(),
            unit_price: Money::new(price, Currency::parse(currency).unwrap()).unwrap(),
        }
    }

    fn address() -> ShippingAddress {
        ShippingAddress::parse(RawAddress {
            recipient: "Ada",
            line1: "1 Main St",
            city: "Berlin",
            country: "DE",
            ..RawAddress::default()
        })
        .unwrap()
    }

    fn new_order(items: Vec<LineItem>) -> Result<NewOrder, Vec<(String, InvalidValue)>> {
        NewOrder::new(
            CustomerId::parse("c1").unwrap(),
            items,
            PaymentMethod::parse("fakepay", "tok_ok").unwrap(),
            address(),
        )
    }

    #[test]
    fn total_is_the_sum_of_subtotals() {
        let n = new_order(vec![line("A", 2, 150, "EUR"), line("B", 1, 99, "EUR")]).unwrap();
        assert_eq!(n.total().amount_minor(), 399);
    }

    #[test]
    fn cross_field_errors_name_their_fields() {
        let errors = new_order(vec![line("A", 1, 1, "EUR"), line("A", 1, 1, "USD")]).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["items[1].sku", "items[1].unit_price.currency"]);
        assert_eq!(new_order(vec![]).unwrap_err()[0].0, "items");
    }

    #[test]
    fn mixed_currencies_are_reported_on_their_lines_only() {
        let errors = new_order(vec![
            line("A", 1, 100, "EUR"),
            line("B", 1, 100, "USD"),
            line("C", 1, 100, "EUR"),
            line("D", 1, 100, "GBP"),
        ])
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[1].unit_price.currency",
                "items[3].unit_price.currency"
            ]
        );
    }

    #[test]
    fn overflowing_total_is_refused() {
        let errors = new_order(vec![line("A", 2, i64::MAX / 2 + 1, "EUR")]).unwrap_err();
        assert_eq!(errors[0].0, "items[0]");
    }

    #[test]
    fn pending_order_without_effects_cancels_at_once() {
        let (mut order, _) = Order::place(
            new_order(vec![line("A", 1, 1, "EUR")]).unwrap(),
            OrderId::generate(),
            Timestamp::from_unix_millis(1),
        );
        let event = order
            .cancel("changed mind", Timestamp::from_unix_millis(2))
            .unwrap();
        assert_eq!(event.kind, OrderEventKind::Cancelled);
        assert_eq!(order.status(), OrderStatus::Cancelled);
        assert_eq!(order.version(), Version(2));
        assert!(
            order
                .cancel("again", Timestamp::from_unix_millis(3))
                .is_err()
        );
        assert_eq!(
            order.version(),
            Version(2),
            "a refused change leaves no trace"
        );
    }

    #[test]
    fn confirmation_needs_stock_and_a_hold() {
        let (mut order, _) = Order::place(
            new_order(vec![line("A", 1, 1, "EUR")]).unwrap(),
            OrderId::generate(),
            Timestamp::from_unix_millis(1),
        );
        let now = Timestamp::from_unix_millis(2);
        assert!(order.confirm(now).is_err());
        order.record_reservation(now).unwrap();
        assert!(order.confirm(now).is_err());
        order.record_authorization(now).unwrap();
        order.confirm(now).unwrap();
        assert_eq!(order.status(), OrderStatus::Confirmed);
        // With a hold outstanding, cancelling has work to do.
        assert_eq!(
            order.cancel("x", now).unwrap().kind,
            OrderEventKind::CancellationRequested
        );
    }

    #[test]
    fn cancel_and_address_change_are_refused_once_fulfillment_started() {
        let (mut order, _) = Order::place(
            new_order(vec![line("A", 1, 1, "EUR")]).unwrap(),
            OrderId::generate(),
            Timestamp::from_unix_millis(1),
        );
        let now = Timestamp::from_unix_millis(2);
        order.record_reservation(now).unwrap();
        order.record_authorization(now).unwrap();
        order.confirm(now).unwrap();
        order.record_commit(now).unwrap();
        let before = order.version();
        assert_eq!(
            order.cancel("too late", now).unwrap_err(),
            DomainError::FulfillmentStarted {
                action: "be cancelled"
            }
        );
        assert!(matches!(
            order.update_shipping_address(address(), now),
            Err(DomainError::FulfillmentStarted { .. })
        ));
        assert_eq!(order.status(), OrderStatus::Confirmed);
        assert_eq!(order.version(), before, "a refused change leaves no trace");
    }

    #[test]
    fn refunds_never_exceed_the_capture() {
        let (order, _) = Order::place(
            new_order(vec![line("A", 1, 1000, "EUR")]).unwrap(),
            OrderId::generate(),
            Timestamp::from_unix_millis(1),
        );
        let eur = Currency::parse("EUR").unwrap();
        let mut parts = order.parts().clone();
        parts.payment_status = PaymentStatus::Captured;
        parts.captured = Money::new(1000, eur).unwrap();
        let mut order = Order::rehydrate(parts);
        let now = Timestamp::from_unix_millis(2);
        order.refund(Money::new(400, eur).unwrap(), now).unwrap();
        assert_eq!(order.payment_status(), PaymentStatus::PartiallyRefunded);
        assert!(order.refund(Money::new(601, eur).unwrap(), now).is_err());
        order.refund(Money::new(600, eur).unwrap(), now).unwrap();
        assert_eq!(order.payment_status(), PaymentStatus::Refunded);
        assert!(order.refund(Money::new(1, eur).unwrap(), now).is_err());
    }

    proptest! {
        /// Whatever sequence of partial refunds is attempted, the refunded sum never passes
        /// the captured amount, and each accepted change bumps the version by exactly one.
        #[test]
        fn refund_sequences_are_bounded(captured in 1i64..1_000_000, asks in prop::collection::vec(0i64..400_000, 0..20)) {
            let eur = Currency::parse("EUR").unwrap();
            let (order, _) = Order::place(
                new_order(vec![line("A", 1, captured, "EUR")]).unwrap(),
                OrderId::generate(),
                Timestamp::from_unix_millis(1),
            );
            let mut parts = order.parts().clone();
            parts.payment_status = PaymentStatus::Captured;
            parts.captured = Money::new(captured, eur).unwrap();
            let mut order = Order::rehydrate(parts);
            for ask in asks {
                let before = order.version();
                let accepted = order.refund(Money::new(ask, eur).unwrap(), Timestamp::from_unix_millis(2)).is_ok();
                prop_assert_eq!(order.version(), if accepted { before.next() } else { before });
                prop_assert!(order.refunded().amount_minor() <= captured);
            }
            if order.refunded().amount_minor() == captured {
                prop_assert_eq!(order.payment_status(), PaymentStatus::Refunded);
            }
        }
    }
}
