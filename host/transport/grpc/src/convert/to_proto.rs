//! Domain -> protobuf.

use oms_domain::{
    Money, Order, OrderStatus, PaymentStatus, ReservationStatus, ShippingAddress, Timestamp,
};

use crate::pb;

fn money(m: Money) -> pb::Money {
    pb::Money {
        amount_minor: m.amount_minor(),
        currency: m.currency().to_string(),
    }
}

pub(crate) fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let ms = t.unix_millis();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid keeps nanos in 0..1e9 for times before 1970 too.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn address(a: &ShippingAddress) -> pb::ShippingAddress {
    pb::ShippingAddress {
        recipient: a.recipient.clone(),
        line1: a.line1.clone(),
        line2: a.line2.clone(),
        city: a.city.clone(),
        postal_code: a.postal_code.clone(),
        country: a.country.clone(),
        email: a.email.clone(),
    }
}

/// The proto enum value of a domain order status.
pub fn order_status(s: OrderStatus) -> pb::OrderStatus {
    use pb::OrderStatus as P;
    match s {
        OrderStatus::Pending => P::Pending,
        OrderStatus::Confirmed => P::Confirmed,
        OrderStatus::PartiallyFulfilled => P::PartiallyFulfilled,
        OrderStatus::Fulfilled => P::Fulfilled,
        OrderStatus::Completed => P::Completed,
        OrderStatus::Rejected => P::Rejected,
        OrderStatus::PaymentFailed => P::PaymentFailed,
        OrderStatus::Cancelling => P::Cancelling,
        OrderStatus::Cancelled => P::Cancelled,
        OrderStatus::CompensationFailed => P::CompensationFailed,
    }
}

fn payment_status(s: PaymentStatus) -> pb::PaymentStatus {
    use pb::PaymentStatus as P;
    match s {
        PaymentStatus::Pending => P::Pending,
        PaymentStatus::Authorized => P::Authorized,
        PaymentStatus::AuthFailed => P::AuthFailed,
        PaymentStatus::Captured => P::Captured,
        PaymentStatus::PartiallyCaptured => P::PartiallyCaptured,
        PaymentStatus::Voided => P::Voided,
        PaymentStatus::Refunded => P::Refunded,
        PaymentStatus::PartiallyRefunded => P::PartiallyRefunded,
        PaymentStatus::Unresolved => P::Unresolved,
        PaymentStatus::ActionRequired => P::ActionRequired,
    }
}

fn reservation_status(s: ReservationStatus) -> pb::ReservationStatus {
    use pb::ReservationStatus as P;
    match s {
        ReservationStatus::None => P::None,
        ReservationStatus::Reserved => P::Reserved,
        ReservationStatus::Released => P::Released,
        ReservationStatus::Committed => P::Committed,
    }
}

/// The API view of an order. The payment token is never echoed.
pub fn order_to_proto(o: &Order) -> pb::Order {
    pb::Order {
        order_id: o.id().to_string(),
        customer_id: o.customer_id().to_string(),
        status: order_status(o.status()).into(),
        payment_status: payment_status(o.payment_status()).into(),
        items: o
            .items()
            .iter()
            .map(|l| pb::LineItem {
                sku: l.sku.to_string(),
                quantity: i64::from(l.quantity.get()),
                unit_price: Some(money(l.unit_price)),
            })
            .collect(),
        total: Some(money(o.total())),
        version: o.version().0,
        shipping_address: Some(address(o.shipping_address())),
        failure_reason: o.failure_reason().unwrap_or_default().to_owned(),
        created_at: Some(timestamp(o.created_at())),
        updated_at: Some(timestamp(o.updated_at())),
        reservation_status: reservation_status(o.reservation_status()).into(),
        captured: Some(money(o.captured())),
        refunded: Some(money(o.refunded())),
        payment: Some(pb::PaymentMethodSummary {
            provider: o.payment().provider.clone(),
        }),
        payment_action: o.payment_action().map(|a| pb::PaymentAction {
            url: a.url.clone(),
            expires_at: Some(timestamp(a.expires_at)),
        }),
    }
}
