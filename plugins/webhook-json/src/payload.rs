//! The webhook body. Field names are snake_case and amounts stay in minor units, so that a
//! receiver never parses a decimal string.
//!
//! ```json
//! {"id":"evt-1","type":"order.confirmed","schema_version":1,"occurred_at_ms":1700000000000,
//!  "order":{"id":"ord-1","status":"confirmed","customer":{"id":"c-1","name":null,"email":"a@b.c","phone":null},
//!           "items":[{"sku":"DEMO-1","name":null,"quantity":2,"unit_price":{"amount_minor":500,"currency":"EUR"},
//!                     "line_total":{"amount_minor":1000,"currency":"EUR"}}],
//!           "total":{"amount_minor":1000,"currency":"EUR"},"shipping_address":null,"created_at_ms":1700000000000},
//!  "metadata":{"correlation-id":"..."}}
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bindings::exports::oms::plugins::formatter::{
    Address, Customer, Event, Item, Money, OrderSnapshot,
};

#[derive(Serialize)]
pub struct Payload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u32,
    occurred_at_ms: u64,
    order: OrderJson<'a>,
    /// A map, not pairs: receivers look keys up. A duplicated key keeps its last value.
    metadata: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct MoneyJson<'a> {
    amount_minor: i64,
    currency: &'a str,
}

#[derive(Serialize)]
struct CustomerJson<'a> {
    id: &'a str,
    name: Option<&'a str>,
    email: Option<&'a str>,
    phone: Option<&'a str>,
}

#[derive(Serialize)]
struct ItemJson<'a> {
    sku: &'a str,
    name: Option<&'a str>,
    quantity: u32,
    unit_price: MoneyJson<'a>,
    line_total: MoneyJson<'a>,
}

#[derive(Serialize)]
struct AddressJson<'a> {
    name: &'a str,
    line1: &'a str,
    line2: Option<&'a str>,
    city: &'a str,
    region: Option<&'a str>,
    postal_code: &'a str,
    country: &'a str,
}

#[derive(Serialize)]
struct OrderJson<'a> {
    id: &'a str,
    status: &'a str,
    customer: CustomerJson<'a>,
    items: Vec<ItemJson<'a>>,
    total: MoneyJson<'a>,
    shipping_address: Option<AddressJson<'a>>,
    created_at_ms: u64,
}

impl<'a> From<&'a Money> for MoneyJson<'a> {
    fn from(money: &'a Money) -> Self {
        MoneyJson {
            amount_minor: money.amount_minor,
            currency: &money.currency,
        }
    }
}

impl<'a> From<&'a Customer> for CustomerJson<'a> {
    fn from(customer: &'a Customer) -> Self {
        CustomerJson {
            id: &customer.id,
            name: customer.name.as_deref(),
            email: customer.email.as_deref(),
            phone: customer.phone.as_deref(),
        }
    }
}

impl<'a> From<&'a Item> for ItemJson<'a> {
    fn from(item: &'a Item) -> Self {
        ItemJson {
            sku: &item.sku,
            name: item.name.as_deref(),
            quantity: item.quantity,
            unit_price: (&item.unit_price).into(),
            line_total: (&item.line_total).into(),
        }
    }
}

impl<'a> From<&'a Address> for AddressJson<'a> {
    fn from(address: &'a Address) -> Self {
        AddressJson {
            name: &address.name,
            line1: &address.line1,
            line2: address.line2.as_deref(),
            city: &address.city,
            region: address.region.as_deref(),
            postal_code: &address.postal_code,
            country: &address.country,
        }
    }
}

impl<'a> From<&'a OrderSnapshot> for OrderJson<'a> {
    fn from(order: &'a OrderSnapshot) -> Self {
        OrderJson {
            id: &order.id,
            status: &order.status,
            customer: (&order.customer).into(),
            items: order.items.iter().map(ItemJson::from).collect(),
            total: (&order.total).into(),
            shipping_address: order.shipping_address.as_ref().map(AddressJson::from),
            created_at_ms: order.created_at_ms,
        }
    }
}

impl<'a> From<&'a Event> for Payload<'a> {
    fn from(event: &'a Event) -> Self {
        Payload {
            id: &event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            occurred_at_ms: event.occurred_at_ms,
            order: (&event.order).into(),
            metadata: event
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}
