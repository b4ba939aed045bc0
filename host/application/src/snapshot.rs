//! A serialisable copy of an order, used where an order must be stored as a document: the
//! response kept under an idempotency key and the payload of outbox events.

use oms_domain::Currency;
use oms_domain::order::OrderParts;
use oms_domain::{
    CustomerId, LineItem, Money, Order, OrderId, OrderStatus, PaymentAction, PaymentMethod,
    PaymentStatus, Quantity, ReservationStatus, ShippingAddress, Sku, Timestamp, Version,
};
use serde::{Deserialize, Serialize};

/// Money in a document: minor units and currency code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyDoc {
    pub amount_minor: i64,
    pub currency: String,
}

/// One order line in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDoc {
    pub sku: String,
    pub quantity: u32,
    pub unit_price: MoneyDoc,
}

/// A shipping address in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressDoc {
    pub recipient: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    /// Contact e-mail; empty when none (absent in documents written before it existed).
    #[serde(default)]
    pub email: String,
}

/// The whole order as a document. The payment token is deliberately absent: documents end up
/// in events and logs, tokens must not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub payment_status: String,
    pub reservation_status: String,
    pub items: Vec<LineDoc>,
    pub total: MoneyDoc,
    pub captured: MoneyDoc,
    pub refunded: MoneyDoc,
    pub payment_provider: String,
    pub shipping_address: AddressDoc,
    pub failure_reason: Option<String>,
    /// What the customer must do while the payment is ACTION_REQUIRED. Absent from documents
    /// written before contract 0.2 (hence the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_action: Option<PaymentActionDoc>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// [`oms_domain::PaymentAction`] as a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentActionDoc {
    pub url: String,
    pub expires_at_ms: i64,
}

fn money(m: Money) -> MoneyDoc {
    MoneyDoc {
        amount_minor: m.amount_minor(),
        currency: m.currency().to_string(),
    }
}

fn parse_money(m: &MoneyDoc) -> Result<Money, String> {
    let currency = Currency::parse(&m.currency).map_err(|e| e.to_string())?;
    Money::new(m.amount_minor, currency).map_err(|e| e.to_string())
}

impl From<&Order> for OrderSnapshot {
    fn from(order: &Order) -> Self {
        let a = order.shipping_address();
        Self {
            order_id: order.id().to_string(),
            customer_id: order.customer_id().to_string(),
            status: order.status().as_str().to_owned(),
            payment_status: order.payment_status().as_str().to_owned(),
            reservation_status: order.reservation_status().as_str().to_owned(),
            items: order
                .items()
                .iter()
                .map(|l| LineDoc {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price: money(l.unit_price),
                })
                .collect(),
            total: money(order.total()),
            captured: money(order.captured()),
            refunded: money(order.refunded()),
            payment_provider: order.payment().provider.clone(),
            shipping_address: AddressDoc {
                recipient: a.recipient.clone(),
                line1: a.line1.clone(),
                line2: a.line2.clone(),
                city: a.city.clone(),
                postal_code: a.postal_code.clone(),
                country: a.country.clone(),
                email: a.email.clone(),
            },
            failure_reason: order.failure_reason().map(str::to_owned),
            payment_action: order.payment_action().map(|a| PaymentActionDoc {
                url: a.url.clone(),
                expires_at_ms: a.expires_at.unix_millis(),
            }),
            version: order.version().0,
            created_at_ms: order.created_at().unix_millis(),
            updated_at_ms: order.updated_at().unix_millis(),
        }
    }
}

impl OrderSnapshot {
    /// Rebuilds the order a stored response described. The payment token is not part of the
    /// document, so the rebuilt order carries an empty one: it is only used to answer, never
    /// to pay.
    pub fn to_order(&self) -> Result<Order, String> {
        let items = self
            .items
            .iter()
            .map(|l| {
                Ok(LineItem {
                    sku: Sku::parse(&l.sku).map_err(|e| e.to_string())?,
                    quantity: Quantity::new(i64::from(l.quantity)).map_err(|e| e.to_string())?,
                    unit_price: parse_money(&l.unit_price)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let a = &self.shipping_address;
        Ok(Order::rehydrate(OrderParts {
            id: OrderId::parse(&self.order_id).map_err(|e| e.to_string())?,
            customer_id: CustomerId::parse(&self.customer_id).map_err(|e| e.to_string())?,
            items,
            total: parse_money(&self.total)?,
            status: OrderStatus::parse(&self.status).ok_or("unknown order status")?,
            payment_status: PaymentStatus::parse(&self.payment_status)
                .ok_or("unknown payment status")?,
            reservation_status: ReservationStatus::parse(&self.reservation_status)
                .ok_or("unknown reservation status")?,
            payment: PaymentMethod {
                provider: self.payment_provider.clone(),
                token: String::new(),
            },
            shipping_address: ShippingAddress {
                recipient: a.recipient.clone(),
                line1: a.line1.clone(),
                line2: a.line2.clone(),
                city: a.city.clone(),
                postal_code: a.postal_code.clone(),
                country: a.country.clone(),
                email: a.email.clone(),
            },
            captured: parse_money(&self.captured)?,
            refunded: parse_money(&self.refunded)?,
            failure_reason: self.failure_reason.clone(),
            payment_action: self.payment_action.as_ref().map(|a| PaymentAction {
                url: a.url.clone(),
                expires_at: Timestamp::from_unix_millis(a.expires_at_ms),
            }),
            version: Version(self.version),
            created_at: Timestamp::from_unix_millis(self.created_at_ms),
            updated_at: Timestamp::from_unix_millis(self.updated_at_ms),
        }))
    }
}
