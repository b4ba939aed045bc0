//! Protobuf -> domain, collecting every violation with its request path so that a client
//! can fix all of them in one round trip.

use oms_application::FieldViolation;
use oms_domain::address::RawAddress;
use oms_domain::order::MAX_LINES;
use oms_domain::{
    Currency, CustomerId, LineItem, Money, NewOrder, OrderId, OrderStatus, PaymentMethod, Quantity,
    Reason, ShippingAddress, Sku, Version,
};

use crate::pb;

/// Accumulates field violations while a request is parsed.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps `Ok` values; records `Err` under `field`.
    pub fn check<T, E: ToString>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.add(field, e.to_string())).ok()
    }

    pub fn into_result<T>(self, value: Option<T>) -> Result<T, Vec<FieldViolation>> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ if self.0.is_empty() => {
                Err(vec![FieldViolation::new("request", "could not be parsed")])
            }
            _ => Err(self.0),
        }
    }
}

pub fn parse_order_id(raw: &str, field: &str, v: &mut Violations) -> Option<OrderId> {
    if raw.is_empty() {
        v.add(field, "is required");
        return None;
    }
    v.check(field, OrderId::parse(raw))
}

/// Money given as a message: both parts validated, reported under `field.amount_minor` and
/// `field.currency`.
pub fn parse_money(m: Option<&pb::Money>, field: &str, v: &mut Violations) -> Option<Money> {
    let Some(m) = m else {
        v.add(field, "is required");
        return None;
    };
    let currency = v.check(&format!("{field}.currency"), Currency::parse(&m.currency));
    if m.amount_minor < 0 {
        v.add(format!("{field}.amount_minor"), "must not be negative");
        return None;
    }
    Money::new(m.amount_minor, currency?).ok()
}

pub fn parse_address(
    a: Option<&pb::ShippingAddress>,
    field: &str,
    v: &mut Violations,
) -> Option<ShippingAddress> {
    let Some(a) = a else {
        v.add(field, "is required");
        return None;
    };
    match ShippingAddress::parse(RawAddress {
        recipient: &a.recipient,
        line1: &a.line1,
        line2: &a.line2,
        city: &a.city,
        postal_code: &a.postal_code,
        country: &a.country,
        email: &a.email,
    }) {
        Ok(addr) => Some(addr),
        Err(errors) => {
            for (name, e) in errors {
                v.add(format!("{field}.{name}"), e.to_string());
            }
            None
        }
    }
}

fn parse_line(i: usize, l: &pb::LineItem, v: &mut Violations) -> Option<LineItem> {
    let sku = v.check(&format!("items[{i}].sku"), Sku::parse(&l.sku));
    let quantity = v.check(&format!("items[{i}].quantity"), Quantity::new(l.quantity));
    let unit_price = parse_money(l.unit_price.as_ref(), &format!("items[{i}].unit_price"), v);
    Some(LineItem {
        sku: sku?,
        quantity: quantity?,
        unit_price: unit_price?,
    })
}

/// The whole CreateOrder request, every violation reported.
pub fn parse_new_order(r: &pb::CreateOrderRequest) -> Result<NewOrder, Vec<FieldViolation>> {
    let mut v = Violations::default();
    // Sizes first: an over-long list is refused before any line is looked at, so the work
    // (and the error) stays the same however many lines were sent.
    if r.items.len() > MAX_LINES {
        return Err(vec![FieldViolation::new(
            "items",
            format!(
                "at most {MAX_LINES} lines are allowed ({} sent)",
                r.items.len()
            ),
        )]);
    }
    let customer = v.check("customer_id", CustomerId::parse(&r.customer_id));
    if r.items.is_empty() {
        v.add("items", "at least one line is required");
    }
    let lines: Vec<Option<LineItem>> = r
        .items
        .iter()
        .enumerate()
        .map(|(i, l)| parse_line(i, l, &mut v))
        .collect();
    let payment = match &r.payment {
        None => {
            v.add("payment", "is required");
            None
        }
        Some(p) => match PaymentMethod::parse(&p.provider, &p.token) {
            Ok(p) => Some(p),
            Err(errors) => {
                for (name, e) in errors {
                    v.add(format!("payment.{name}"), e.to_string());
                }
                None
            }
        },
    };
    let address = parse_address(r.shipping_address.as_ref(), "shipping_address", &mut v);
    let (Some(customer), Some(lines), Some(payment), Some(address)) = (
        customer,
        lines.into_iter().collect::<Option<Vec<_>>>(),
        payment,
        address,
    ) else {
        return v.into_result(None);
    };
    if !v.0.is_empty() {
        return v.into_result(None);
    }
    match NewOrder::new(customer, lines, payment, address) {
        Ok(order) => v.into_result(Some(order)),
        Err(errors) => {
            for (field, e) in errors {
                v.add(field, e.to_string());
            }
            v.into_result(None)
        }
    }
}

/// A free-text reason (`CancelOrderRequest.reason`, `RefundOrderRequest.reason`).
pub fn parse_reason(raw: &str, field: &str, v: &mut Violations) -> Option<Reason> {
    v.check(field, Reason::parse(raw))
}

/// `optional int64 expected_version`: absent means "any version"; present must be >= 1.
pub fn parse_expected_version(
    raw: Option<i64>,
    field: &str,
    v: &mut Violations,
) -> Option<Option<Version>> {
    match raw {
        None => Some(None),
        Some(n) if n >= 1 => Some(Some(Version(n))),
        Some(_) => {
            v.add(
                field,
                "must be at least 1 (the version the client last saw)",
            );
            None
        }
    }
}

/// UNSPECIFIED means "any status"; an unknown number is a violation.
pub fn parse_status_filter(raw: i32, v: &mut Violations) -> Option<Option<OrderStatus>> {
    use pb::OrderStatus as P;
    let status = match P::try_from(raw) {
        Ok(P::Unspecified) => return Some(None),
        Ok(P::Pending) => OrderStatus::Pending,
        Ok(P::Confirmed) => OrderStatus::Confirmed,
        Ok(P::PartiallyFulfilled) => OrderStatus::PartiallyFulfilled,
        Ok(P::Fulfilled) => OrderStatus::Fulfilled,
        Ok(P::Completed) => OrderStatus::Completed,
        Ok(P::Rejected) => OrderStatus::Rejected,
        Ok(P::PaymentFailed) => OrderStatus::PaymentFailed,
        Ok(P::Cancelling) => OrderStatus::Cancelling,
        Ok(P::Cancelled) => OrderStatus::Cancelled,
        Ok(P::CompensationFailed) => OrderStatus::CompensationFailed,
        Err(_) => {
            v.add("status", format!("{raw} is not an OrderStatus value"));
            return None;
        }
    };
    Some(Some(status))
}
