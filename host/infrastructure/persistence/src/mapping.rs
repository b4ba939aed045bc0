//! Rows to domain values and back, shared by both databases.
//!
//! The two schemas have the same column names and, for everything but ids and JSON, the same
//! types; ids are read as the dialect stores them and JSON through `sqlx::types::Json`, so
//! one decoder serves both drivers. Stored values pass through the domain's own parsers: a
//! value that does not parse (a status this build does not know, a negative amount) is
//! reported as [`StoreError::Corrupt`] instead of being trusted.

use std::collections::HashMap;

use oms_application::ports::StoreError;
use oms_application::saga::{SagaData, SagaId, SagaInstance, SagaKind, SagaStatus};
use oms_domain::{
    Currency, CustomerId, LineItem, Money, Order, OrderId, OrderParts, OrderStatus, PaymentAction,
    PaymentMethod, PaymentStatus, Quantity, ReservationStatus, ShippingAddress, Sku, Timestamp,
    Version,
};
use serde::Deserialize;
use sqlx::types::Json;
use uuid::Uuid;

use crate::sql::{Dialect, RowExt, RowOf};

/// An `orders` row as stored.
#[derive(Debug)]
pub(crate) struct OrderRow {
    pub id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub payment_status: String,
    pub reservation_status: String,
    pub currency: String,
    pub total_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub payment_provider: String,
    pub payment_token: String,
    pub ship_recipient: String,
    pub ship_line1: String,
    pub ship_line2: String,
    pub ship_city: String,
    pub ship_postal_code: String,
    pub ship_country: String,
    pub ship_email: String,
    pub failure_reason: Option<String>,
    pub payment_action_url: Option<String>,
    pub payment_action_expires_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An `order_items` row as stored.
#[derive(Debug)]
pub(crate) struct ItemRow {
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub currency: String,
}

/// The `orders` columns in [`OrderRow`] order. A macro, so that queries can `concat!` it into
/// a `&'static str`.
macro_rules! order_columns {
    () => {
        "id, customer_id, status, payment_status, reservation_status, currency, total_minor, \
         captured_minor, refunded_minor, payment_provider, payment_token, ship_recipient, \
         ship_line1, ship_line2, ship_city, ship_postal_code, ship_country, failure_reason, \
         version, created_at, updated_at, ship_email, payment_action_url, \
         payment_action_expires_at"
    };
}
pub(crate) use order_columns;

/// The `order_items` columns [`decode_item`] reads.
macro_rules! item_columns {
    () => {
        "order_id, sku, quantity, unit_price_minor, currency"
    };
}
pub(crate) use item_columns;

/// Decodes an `orders` row selected as `order_columns!()`.
pub(crate) fn decode_order<D: Dialect>(row: &RowOf<D>) -> Result<OrderRow, sqlx::Error> {
    Ok(OrderRow {
        id: D::uuid(row.col("id")?),
        customer_id: row.col("customer_id")?,
        status: row.col("status")?,
        payment_status: row.col("payment_status")?,
        reservation_status: row.col("reservation_status")?,
        currency: row.col("currency")?,
        total_minor: row.col("total_minor")?,
        captured_minor: row.col("captured_minor")?,
        refunded_minor: row.col("refunded_minor")?,
        payment_provider: row.col("payment_provider")?,
        payment_token: row.col("payment_token")?,
        ship_recipient: row.col("ship_recipient")?,
        ship_line1: row.col("ship_line1")?,
        ship_line2: row.col("ship_line2")?,
        ship_city: row.col("ship_city")?,
        ship_postal_code: row.col("ship_postal_code")?,
        ship_country: row.col("ship_country")?,
        ship_email: row.col("ship_email")?,
        failure_reason: row.col("failure_reason")?,
        payment_action_url: row.col("payment_action_url")?,
        payment_action_expires_at: row.col("payment_action_expires_at")?,
        version: row.col("version")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

/// Decodes an `order_items` row selected as `item_columns!()`.
pub(crate) fn decode_item<D: Dialect>(row: &RowOf<D>) -> Result<ItemRow, sqlx::Error> {
    Ok(ItemRow {
        order_id: D::uuid(row.col("order_id")?),
        sku: row.col("sku")?,
        quantity: row.col("quantity")?,
        unit_price_minor: row.col("unit_price_minor")?,
        currency: row.col("currency")?,
    })
}

/// Decodes the line of a row that joins an order with one of its lines (columns `line_sku`,
/// `line_quantity`, `line_unit_price_minor`, `line_currency`); `None` when the row has no
/// line (an order without lines, read through a left join).
pub(crate) fn decode_joined_item<D: Dialect>(
    order_id: Uuid,
    row: &RowOf<D>,
) -> Result<Option<ItemRow>, sqlx::Error> {
    let Some(sku) = row.col::<Option<String>>("line_sku")? else {
        return Ok(None);
    };
    Ok(Some(ItemRow {
        order_id,
        sku,
        quantity: row.col("line_quantity")?,
        unit_price_minor: row.col("line_unit_price_minor")?,
        currency: row.col("line_currency")?,
    }))
}

fn corrupt(id: Uuid, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("order {id}: {what}"))
}

fn money(id: Uuid, field: &str, amount: i64, currency: Currency) -> Result<Money, StoreError> {
    Money::new(amount, currency).map_err(|e| corrupt(id, format_args!("{field}: {e}")))
}

fn item(id: Uuid, row: ItemRow) -> Result<LineItem, StoreError> {
    let currency = Currency::parse(&row.currency).map_err(|e| corrupt(id, e))?;
    Ok(LineItem {
        sku: Sku::parse(&row.sku).map_err(|e| corrupt(id, format_args!("sku {e}")))?,
        quantity: Quantity::new(i64::from(row.quantity))
            .map_err(|e| corrupt(id, format_args!("quantity {e}")))?,
        unit_price: money(id, "unit price", row.unit_price_minor, currency)?,
    })
}

/// Rebuilds an order from its row and its lines (in line order).
pub(crate) fn order_from_rows(row: OrderRow, items: Vec<ItemRow>) -> Result<Order, StoreError> {
    let id = row.id;
    let currency = Currency::parse(&row.currency).map_err(|e| corrupt(id, e))?;
    let items = items
        .into_iter()
        .map(|i| item(id, i))
        .collect::<Result<Vec<_>, _>>()?;
    let parts = OrderParts {
        id: OrderId::from_uuid(id),
        customer_id: CustomerId::parse(&row.customer_id)
            .map_err(|e| corrupt(id, format_args!("customer id {e}")))?,
        items,
        total: money(id, "total", row.total_minor, currency)?,
        status: OrderStatus::parse(&row.status)
            .ok_or_else(|| corrupt(id, format_args!("unknown status {}", row.status)))?,
        payment_status: PaymentStatus::parse(&row.payment_status).ok_or_else(|| {
            corrupt(
                id,
                format_args!("unknown payment status {}", row.payment_status),
            )
        })?,
        reservation_status: ReservationStatus::parse(&row.reservation_status).ok_or_else(|| {
            corrupt(
                id,
                format_args!("unknown reservation status {}", row.reservation_status),
            )
        })?,
        // Validated when the order was placed; stored verbatim.
        payment: PaymentMethod {
            provider: row.payment_provider,
            token: row.payment_token,
        },
        shipping_address: ShippingAddress {
            recipient: row.ship_recipient,
            line1: row.ship_line1,
            line2: row.ship_line2,
            city: row.ship_city,
            postal_code: row.ship_postal_code,
            country: row.ship_country,
            email: row.ship_email,
        },
        captured: money(id, "captured", row.captured_minor, currency)?,
        refunded: money(id, "refunded", row.refunded_minor, currency)?,
        failure_reason: row.failure_reason,
        payment_action: match (row.payment_action_url, row.payment_action_expires_at) {
            (Some(url), Some(at)) => Some(PaymentAction {
                url,
                expires_at: Timestamp::from_unix_millis(at),
            }),
            _ => None,
        },
        version: Version(row.version),
        created_at: Timestamp::from_unix_millis(row.created_at),
        updated_at: Timestamp::from_unix_millis(row.updated_at),
    };
    Ok(Order::rehydrate(parts))
}

/// Joins a page of order rows with the lines of all of them (one query for the page, one
/// for the lines), keeping the page's order.
pub(crate) fn orders_from_rows(
    rows: Vec<OrderRow>,
    items: Vec<ItemRow>,
) -> Result<Vec<Order>, StoreError> {
    let mut by_order: HashMap<Uuid, Vec<ItemRow>> = HashMap::with_capacity(rows.len());
    for item in items {
        by_order.entry(item.order_id).or_default().push(item);
    }
    rows.into_iter()
        .map(|row| {
            let items = by_order.remove(&row.id).unwrap_or_default();
            order_from_rows(row, items)
        })
        .collect()
}

/// A `saga_instances` row as stored.
#[derive(Debug)]
pub(crate) struct SagaRow {
    pub id: Uuid,
    pub kind: String,
    pub order_id: Uuid,
    pub status: String,
    pub step_index: i32,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub deadline_at: Option<i64>,
    pub last_error: Option<String>,
    pub state: serde_json::Value,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The `saga_instances` columns of [`SagaRow`], for `SELECT` and `RETURNING` alike.
macro_rules! saga_columns {
    () => {
        "id, kind, order_id, status, step_index, attempts, next_attempt_at, deadline_at, \
         last_error, state, version, created_at, updated_at"
    };
}
pub(crate) use saga_columns;

/// Decodes a `saga_instances` row selected as `saga_columns!()`.
pub(crate) fn decode_saga<D: Dialect>(row: &RowOf<D>) -> Result<SagaRow, sqlx::Error> {
    let Json(state) = row.col("state")?;
    Ok(SagaRow {
        id: D::uuid(row.col("id")?),
        kind: row.col("kind")?,
        order_id: D::uuid(row.col("order_id")?),
        status: row.col("status")?,
        step_index: row.col("step_index")?,
        attempts: row.col("attempts")?,
        next_attempt_at: row.col("next_attempt_at")?,
        deadline_at: row.col("deadline_at")?,
        last_error: row.col("last_error")?,
        state,
        version: row.col("version")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

/// Rebuilds a saga from its row.
pub(crate) fn saga_from_row(row: SagaRow) -> Result<SagaInstance, StoreError> {
    let id = row.id;
    let bad = |what: std::fmt::Arguments<'_>| StoreError::Corrupt(format!("saga {id}: {what}"));
    Ok(SagaInstance {
        id: SagaId(id),
        kind: SagaKind::parse(&row.kind)
            .ok_or_else(|| bad(format_args!("unknown kind {}", row.kind)))?,
        order_id: OrderId::from_uuid(row.order_id),
        status: SagaStatus::parse(&row.status)
            .ok_or_else(|| bad(format_args!("unknown status {}", row.status)))?,
        step: usize::try_from(row.step_index)
            .map_err(|_| bad(format_args!("step index {}", row.step_index)))?,
        attempts: u32::try_from(row.attempts)
            .map_err(|_| bad(format_args!("attempts {}", row.attempts)))?,
        next_attempt_at: Timestamp::from_unix_millis(row.next_attempt_at),
        step_deadline: row.deadline_at.map(Timestamp::from_unix_millis),
        last_error: row.last_error,
        data: SagaData::deserialize(&row.state).map_err(|e| bad(format_args!("state {e}")))?,
        version: row.version,
        created_at: Timestamp::from_unix_millis(row.created_at),
        updated_at: Timestamp::from_unix_millis(row.updated_at),
    })
}

/// The integer columns of a saga as the schema stores them (INTEGER: 32 bits on PostgreSQL;
/// bound as `i32` on both databases, so both refuse the same values).
pub(crate) struct SagaInts {
    pub step_index: i32,
    pub attempts: i32,
}

impl SagaInts {
    pub(crate) fn of(saga: &SagaInstance) -> Result<Self, StoreError> {
        // Out of range only through a bug upstream; refuse rather than store a wrapped value.
        let range =
            |what: &str| StoreError::Corrupt(format!("saga {}: {what} out of range", saga.id));
        Ok(Self {
            step_index: i32::try_from(saga.step).map_err(|_| range("step index"))?,
            attempts: i32::try_from(saga.attempts).map_err(|_| range("attempts"))?,
        })
    }
}
