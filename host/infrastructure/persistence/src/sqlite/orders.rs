//! `OrderStore` on SQLite. Ids are stored as canonical lower-case hyphenated UUID text,
//! which sorts byte-wise exactly like the UUID, so "newest first" is `ORDER BY id DESC`.

use async_trait::async_trait;
use oms_application::outbox::OutboxMessage;
use oms_application::ports::{OrderQuery, OrderStore, OrderWrite, StoreError};
use oms_domain::{Order, OrderId, Version};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::idempotency::complete_claim;
use super::sagas::insert_saga;
use super::{begin_write, classify};
use crate::SqlitePools;
use crate::mapping::{
    ItemRow, OrderRow, decode_item, decode_order, order_columns, order_from_rows, orders_from_rows,
};

pub(crate) struct SqliteOrderStore {
    pools: SqlitePools,
}

impl SqliteOrderStore {
    pub(crate) fn new(pools: SqlitePools) -> Self {
        Self { pools }
    }
}

fn decode_items(rows: &[SqliteRow]) -> Result<Vec<ItemRow>, StoreError> {
    rows.iter()
        .map(|r| decode_item(r).map_err(classify))
        .collect()
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let id_text = id.to_string();
        let row = sqlx::query(concat!(
            "SELECT id, ",
            order_columns!(),
            " FROM orders WHERE id = ?1"
        ))
        .bind(&id_text)
        .fetch_optional(&self.pools.reader)
        .await
        .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let order = decode_order(&row).map_err(classify)?;
        // Lines are written with the order and never change afterwards.
        let items = sqlx::query(
            "SELECT order_id, sku, quantity, unit_price_minor, currency FROM order_items \
             WHERE order_id = ?1 ORDER BY line_no",
        )
        .bind(&id_text)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(classify)?;
        order_from_rows(order, decode_items(&items)?).map(Some)
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT id, ",
            order_columns!(),
            " FROM orders WHERE 1"
        ));
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(customer) = &query.customer_id {
            sql.push(" AND customer_id = ")
                .push_bind(customer.as_str().to_owned());
        }
        if let Some(before) = query.before {
            sql.push(" AND id < ").push_bind(before.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql
            .build()
            .fetch_all(&self.pools.reader)
            .await
            .map_err(classify)?;
        let orders = rows
            .iter()
            .map(|r| decode_order(r).map_err(classify))
            .collect::<Result<Vec<OrderRow>, _>>()?;
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        // The page's ids as one JSON array parameter: one statement for any page size, and
        // no dynamic `IN (?, ?, ...)` list.
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let ids = serde_json::to_string(&ids)
            .map_err(|e| StoreError::Corrupt(format!("encoding order ids: {e}")))?;
        let items = sqlx::query(
            "SELECT order_id, sku, quantity, unit_price_minor, currency FROM order_items \
             WHERE order_id IN (SELECT value FROM json_each(?1)) ORDER BY order_id, line_no",
        )
        .bind(ids)
        .fetch_all(&self.pools.reader)
        .await
        .map_err(classify)?;
        orders_from_rows(orders, decode_items(&items)?)
    }

    async fn save(&self, write: OrderWrite<'_>) -> Result<(), StoreError> {
        let mut tx = begin_write(&self.pools.writer).await?;
        write_order(&mut tx, &write).await?;
        // Dropping `tx` on any early return above rolls everything back.
        tx.commit().await.map_err(classify)
    }
}

/// Everything an [`OrderWrite`] changes, inside the caller's transaction: `save` runs it
/// alone; a saga commit runs it before updating the saga (the lock order is explained in
/// `sagas.rs`). On error the caller must roll back (drop the transaction).
pub(super) async fn write_order(
    conn: &mut SqliteConnection,
    write: &OrderWrite<'_>,
) -> Result<(), StoreError> {
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

async fn insert_order(conn: &mut SqliteConnection, order: &Order) -> Result<(), StoreError> {
    let p = order.parts();
    let id = p.id.to_string();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, payment_status, reservation_status, \
         currency, total_minor, captured_minor, refunded_minor, payment_provider, payment_token, \
         ship_recipient, ship_line1, ship_line2, ship_city, ship_postal_code, ship_country, \
         failure_reason, version, created_at, updated_at, ship_email) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
         ?18, ?19, ?20, ?21, ?22)",
    )
    .bind(&id)
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
    // One prepared statement per line: in-process calls, so no round trips to save.
    for (line_no, item) in (0i64..).zip(&p.items) {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor, \
             currency) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&id)
        .bind(line_no)
        .bind(item.sku.as_str())
        .bind(i64::from(item.quantity.get()))
        .bind(item.unit_price.amount_minor())
        .bind(item.unit_price.currency().as_str())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// The optimistic-locked update; lines never change after the insert.
async fn update_order(
    conn: &mut SqliteConnection,
    order: &Order,
    expected: Version,
) -> Result<(), StoreError> {
    let p = order.parts();
    let id = p.id.to_string();
    let updated = sqlx::query(
        "UPDATE orders SET status = ?3, payment_status = ?4, reservation_status = ?5, \
         captured_minor = ?6, refunded_minor = ?7, ship_recipient = ?8, ship_line1 = ?9, \
         ship_line2 = ?10, ship_city = ?11, ship_postal_code = ?12, ship_country = ?13, \
         failure_reason = ?14, version = ?15, updated_at = ?16, ship_email = ?17 \
         WHERE id = ?1 AND version = ?2",
    )
    .bind(&id)
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
    // The write lock is held since BEGIN IMMEDIATE: this is the version that beat us.
    let current: Option<i64> = sqlx::query_scalar("SELECT version FROM orders WHERE id = ?1")
        .bind(&id)
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
    conn: &mut SqliteConnection,
    messages: &[OutboxMessage],
    order: &Order,
) -> Result<(), StoreError> {
    for m in messages {
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
             occurred_at, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
        )
        .bind(m.event_id.to_string())
        .bind(m.aggregate_id.to_string())
        .bind(m.event_type)
        .bind(i64::from(m.schema_version))
        .bind(m.payload.to_string())
        .bind(m.occurred_at.unix_millis())
        .bind(order.updated_at().unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    Ok(())
}
