//! A sample order for tests of the engine and the use cases.

use oms_domain::address::RawAddress;
use oms_domain::{
    Currency, CustomerId, LineItem, Money, NewOrder, PaymentMethod, Quantity, ShippingAddress, Sku,
};

/// A valid new order: two units of `SKU-A` at 12.50 EUR, paid with `fake-pay`, to Berlin.
///
/// # Panics
/// Never: every value is a valid literal.
#[allow(clippy::unwrap_used)] // Literals the domain accepts; a failure is a broken fixture.
pub fn sample_order() -> NewOrder {
    let eur = Currency::parse("EUR").unwrap();
    NewOrder::new(
        CustomerId::parse("cust-1").unwrap(),
        vec![LineItem {
            sku: Sku::parse("SKU-A").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            unit_price: Money::new(1250, eur).unwrap(),
        }],
        PaymentMethod::parse("fake-pay", "tok_ok").unwrap(),
        ShippingAddress::parse(RawAddress {
            recipient: "Ada Lovelace",
            line1: "1 Main St",
            city: "Berlin",
            postal_code: "10115",
            country: "DE",
            ..RawAddress::default()
        })
        .unwrap(),
    )
    .unwrap()
}
