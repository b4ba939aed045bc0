//! `OrderStore` on PostgreSQL.

use async_trait::async_trait;
use oms_application::outbox::OutboxMessage;
use oms_application::ports::{OrderQuery, OrderStore, OrderWrite, StoreError};
use oms_domain::{Order, OrderId, Version};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::classify;
use super::idempotency::complete_claim;
use super::sagas::insert_saga;
use crate::mapping::{
    ItemRow, OrderRow, decode_item, decode_order, order_columns, order_from_rows, orders_from_rows,
};

pub(crate) struct PgOrderStore {
    pool: PgPool,
}

impl PgOrderStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn decode_items(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<ItemRow>, StoreError> {
    rows.iter()
        .map(|r| decode_item(r).map_err(classify))
        .collect()
}

#[async_trait]
impl OrderStore for PgOrderStore {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT id::text AS id, ",
            order_columns!(),
            " FROM orders WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let order = decode_order(&row).map_err(classify)?;
        // Lines are written with the order and never change, so reading them in a second
        // statement cannot see a different order than the first.
        let items = sqlx::query(concat!(
            "SELECT order_id::text AS order_id, sku, quantity, unit_price_minor, currency ",
            "FROM order_items WHERE order_id = $1 ORDER BY line_no"
        ))
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        order_from_rows(order, decode_items(&items)?).map(Some)
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Built per filter combination rather than `($1 IS NULL OR status = $1)`, so that
        // the planner always sees a predicate it can match to the (status, id) and
        // (customer_id, id) indexes.
        let mut sql = QueryBuilder::<Postgres>::new(concat!(
            "SELECT id::text AS id, ",
            order_columns!(),
            " FROM orders WHERE TRUE"
        ));
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(customer) = &query.customer_id {
            sql.push(" AND customer_id = ")
                .push_bind(customer.as_str().to_owned());
        }
        if let Some(before) = query.before {
            sql.push(" AND id < ").push_bind(before.as_uuid());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.pool).await.map_err(classify)?;
        let orders = rows
            .iter()
            .map(|r| decode_order(r).map_err(classify))
            .collect::<Result<Vec<OrderRow>, _>>()?;
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let ids = orders
            .iter()
            .map(|o| Uuid::try_parse(&o.id))
            .collect::<Result<Vec<Uuid>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("order id: {e}")))?;
        // One query for the lines of the whole page, not one per order.
        let items = sqlx::query(concat!(
            "SELECT order_id::text AS order_id, sku, quantity, unit_price_minor, currency ",
            "FROM order_items WHERE order_id = ANY($1) ORDER BY order_id, line_no"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        orders_from_rows(orders, decode_items(&items)?)
    }

    async fn save(&self, write: OrderWrite<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        write_order(&mut tx, &write).await?;
        // Dropping `tx` on any early return above rolls everything back.
        tx.commit().await.map_err(classify)
    }
}

/// Everything an [`OrderWrite`] changes, inside the caller's transaction: `save` runs it
/// alone; a saga commit runs it before updating the saga (the lock order is explained in
/// `sagas.rs`). On error the caller must roll back (drop the transaction).
pub(super) async fn write_order(
    conn: &mut PgConnection,
    write: &OrderWrite<'_>,
) -> Result<(), StoreError> {
    // The key first: a request whose lease was taken over fails before it writes anything,
    // and holding the key's row lock makes a concurrent takeover wait for this commit (then
    // see the key completed).
    if let Some(completion) = write.idempotency {
        complete_claim(conn, &completion.claim, &completion.outcome).await?;
    }
    match write.expected_version {
        None => insert_order(conn, write.order).await?,
        Some(expected) => update_order(conn, write.order, expected).await?,
    }
    insert_outbox(conn, write.outbox, write.order).await?;
    // After the order: the saga row references it.
    if let Some(saga) = write.start_saga {
        insert_saga(conn, saga).await?;
    }
    Ok(())
}

async fn insert_order(conn: &mut PgConnection, order: &Order) -> Result<(), StoreError> {
    let p = order.parts();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, payment_status, reservation_status, \
         currency, total_minor, captured_minor, refunded_minor, payment_provider, payment_token, \
         ship_recipient, ship_line1, ship_line2, ship_city, ship_postal_code, ship_country, \
         failure_reason, version, created_at, updated_at, ship_email) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22)",
    )
    .bind(p.id.as_uuid())
    .bind(p.customer_id.as_str())
    .bind(p.status.as_str())
    .bind(p.payment_status.as_str())
    .bind(p.reservation_status.as_str())
    .bind(p.total.currency().as_str())
    .bind(p.total.amount_minor())
    .bind(p.captured.amount_minor())
    .bind(p.refunded.amount_minor())
    .bind(&p.payment.provider)
    .bind(&p.payment.token)
    .bind(&p.shipping_address.recipient)
    .bind(&p.shipping_address.line1)
    .bind(&p.shipping_address.line2)
    .bind(&p.shipping_address.city)
    .bind(&p.shipping_address.postal_code)
    .bind(&p.shipping_address.country)
    .bind(p.failure_reason.as_deref())
    .bind(p.version.0)
    .bind(p.created_at.unix_millis())
    .bind(p.updated_at.unix_millis())
    .bind(&p.shipping_address.email)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;

    // All lines in one statement: an order has up to 100 of them.
    let mut line_nos = Vec::with_capacity(p.items.len());
    let mut skus = Vec::with_capacity(p.items.len());
    let mut quantities = Vec::with_capacity(p.items.len());
    let mut prices = Vec::with_capacity(p.items.len());
    let mut currencies = Vec::with_capacity(p.items.len());
    for (line_no, item) in (0i32..).zip(&p.items) {
        line_nos.push(line_no);
        skus.push(item.sku.as_str().to_owned());
        quantities.push(i32::try_from(item.quantity.get()).unwrap_or(i32::MAX));
        prices.push(item.unit_price.amount_minor());
        currencies.push(item.unit_price.currency().as_str().to_owned());
    }
    sqlx::query(
        "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor, currency) \
         SELECT $1, * FROM UNNEST($2::int4[], $3::text[], $4::int4[], $5::int8[], $6::text[])",
    )
    .bind(p.id.as_uuid())
    .bind(line_nos)
    .bind(skus)
    .bind(quantities)
    .bind(prices)
    .bind(currencies)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// The optimistic-locked update. Lines never change after the insert, so only the order row
/// is written.
async fn update_order(
    conn: &mut PgConnection,
    order: &Order,
    expected: Version,
) -> Result<(), StoreError> {
    let p = order.parts();
    let updated = sqlx::query(
        "UPDATE orders SET status = $3, payment_status = $4, reservation_status = $5, \
         captured_minor = $6, refunded_minor = $7, ship_recipient = $8, ship_line1 = $9, \
         ship_line2 = $10, ship_city = $11, ship_postal_code = $12, ship_country = $13, \
         failure_reason = $14, version = $15, updated_at = $16, ship_email = $17 \
         WHERE id = $1 AND version = $2",
    )
    .bind(p.id.as_uuid())
    .bind(expected.0)
    .bind(p.status.as_str())
    .bind(p.payment_status.as_str())
    .bind(p.reservation_status.as_str())
    .bind(p.captured.amount_minor())
    .bind(p.refunded.amount_minor())
    .bind(&p.shipping_address.recipient)
    .bind(&p.shipping_address.line1)
    .bind(&p.shipping_address.line2)
    .bind(&p.shipping_address.city)
    .bind(&p.shipping_address.postal_code)
    .bind(&p.shipping_address.country)
    .bind(p.failure_reason.as_deref())
    .bind(p.version.0)
    .bind(p.updated_at.unix_millis())
    .bind(&p.shipping_address.email)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if updated.rows_affected() == 1 {
        return Ok(());
    }
    // Under READ COMMITTED a concurrent writer's commit is visible to this statement, so the
    // version reported is the one that beat us.
    let current: Option<i64> = sqlx::query_scalar("SELECT version FROM orders WHERE id = $1")
        .bind(p.id.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?;
    Err(match current {
        None => StoreError::NotFound,
        Some(v) => StoreError::VersionConflict {
            current: Version(v),
        },
    })
}

async fn insert_outbox(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
    order: &Order,
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut event_ids = Vec::with_capacity(messages.len());
    let mut aggregates = Vec::with_capacity(messages.len());
    let mut types = Vec::with_capacity(messages.len());
    let mut versions = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    let mut occurred = Vec::with_capacity(messages.len());
    for m in messages {
        event_ids.push(m.event_id);
        aggregates.push(m.aggregate_id.as_uuid());
        types.push(m.event_type.to_owned());
        versions.push(i32::try_from(m.schema_version).map_err(|_| {
            StoreError::Corrupt(format!("schema version {} out of range", m.schema_version))
        })?);
        payloads.push(m.payload.clone());
        occurred.push(m.occurred_at.unix_millis());
    }
    // WITH ORDINALITY + ORDER BY: the BIGSERIAL ids follow the events' order, which is the
    // order the relay publishes them in.
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
         occurred_at, created_at, next_attempt_at) \
         SELECT e.event_id, e.aggregate_id, e.event_type, e.schema_version, e.payload, \
         e.occurred_at, $7, e.occurred_at \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::jsonb[], $6::int8[]) \
         WITH ORDINALITY AS e(event_id, aggregate_id, event_type, schema_version, payload, \
         occurred_at, ord) ORDER BY e.ord",
    )
    .bind(event_ids)
    .bind(aggregates)
    .bind(types)
    .bind(versions)
    .bind(payloads)
    .bind(occurred)
    .bind(order.updated_at().unix_millis())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}
