//! [`OrderStore`]: orders, their lines, and the outbox rows written with them (through
//! [`crate::outbox::write_outbox`]).

use std::fmt::Write as _;
use std::marker::PhantomData;

use async_trait::async_trait;
use oms_application::idempotency::IdempotencyCompletion;
use oms_application::outbox::OutboxMessage;
use oms_application::ports::{
    AggregateType, OrderQuery, OrderStore, OrderWrite, SagaLease, StoreError,
};
use oms_application::saga::SagaInstance;
use oms_domain::{Order, OrderId, ShippingAddress, Timestamp, Version};
use sqlx::AssertSqlSafe;

use crate::idempotency::{KeyCheck, key_taken, push_key};
use crate::mapping::{
    ItemRow, OrderRow, decode_item, decode_joined_item, decode_order, item_columns, order_columns,
    order_from_rows, orders_from_rows,
};
use crate::outbox::{NewOutboxRow, outbox_rows};
use crate::sagas::{push_saga, saga_write_error};
use crate::sql::{
    Args, Batch, Column, ConnOf, Counts, Dialect, PartId, Q, RowOf, Rows, Sql, current_version,
    json, work,
};

pub(crate) struct SqlOrderStore<D: Dialect> {
    sql: Sql<D>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlOrderStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        Self {
            sql,
            dialect: PhantomData,
        }
    }
}

fn decode_items<D: Dialect>(rows: &[RowOf<D>]) -> Result<Vec<ItemRow>, StoreError> {
    rows.iter()
        .map(|r| decode_item::<D>(r).map_err(D::classify))
        .collect()
}

#[async_trait]
impl<D: Dialect> OrderStore for SqlOrderStore<D> {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        // One statement (one round trip): the order's columns on every row, beside one line
        // each. The lines never change after the insert, so they cannot disagree with it.
        let rows = D::query(concat!(
            "SELECT o.*, i.sku AS line_sku, i.quantity AS line_quantity, \
             i.unit_price_minor AS line_unit_price_minor, i.currency AS line_currency \
             FROM (SELECT ",
            order_columns!(),
            " FROM orders WHERE id = $1) AS o \
             LEFT JOIN order_items i ON i.order_id = o.id ORDER BY i.line_no"
        ))
        .arg(D::id(id.as_uuid()))
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let order = decode_order::<D>(first).map_err(D::classify)?;
        let items = rows
            .iter()
            .filter_map(|row| decode_joined_item::<D>(order.id, row).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(D::classify)?;
        order_from_rows(order, items).map(Some)
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Built per filter combination rather than `($1 IS NULL OR status = $1)`, so that
        // the planner always sees a predicate it can match to the (status, id) and
        // (customer_id, id) indexes.
        let mut sql = String::from(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE TRUE"
        ));
        let mut params = 0;
        let mut param = || {
            params += 1;
            params
        };
        if query.status.is_some() {
            let _ = write!(sql, " AND status = ${}", param());
        }
        if query.customer_id.is_some() {
            let _ = write!(sql, " AND customer_id = ${}", param());
        }
        if query.before.is_some() {
            let _ = write!(sql, " AND id < ${}", param());
        }
        let _ = write!(sql, " ORDER BY id DESC LIMIT ${}", param());
        let mut select = D::query(AssertSqlSafe(sql));
        if let Some(status) = query.status {
            select = select.arg(status.as_str());
        }
        if let Some(customer) = &query.customer_id {
            select = select.arg(customer.as_str());
        }
        if let Some(before) = query.before {
            select = select.arg(D::id(before.as_uuid()));
        }
        let rows = select
            .arg(i64::from(query.limit))
            .fetch_all(self.sql.reader())
            .await
            .map_err(D::classify)?;
        let orders = rows
            .iter()
            .map(|r| decode_order::<D>(r).map_err(D::classify))
            .collect::<Result<Vec<OrderRow>, _>>()?;
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        // One query for the lines of the whole page, not one per order.
        let ids = orders.iter().map(|o| o.id).collect();
        let items = D::bind_list(
            D::query(AssertSqlSafe(format!(
                concat!(
                    "SELECT ",
                    item_columns!(),
                    " FROM order_items WHERE order_id {} ORDER BY order_id, line_no"
                ),
                D::in_list("$1")
            ))),
            Column::Id(ids),
        )
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        orders_from_rows(orders, decode_items::<D>(&items)?)
    }

    async fn save(&self, write: OrderWrite<'_>) -> Result<(), StoreError> {
        // Committed with whatever other writes are queued (`sql::group`); a create, one
        // statement on PostgreSQL, without a transaction of its own when nothing is grouped.
        let alone = atomic_alone(&write);
        let write = OwnedOrderWrite::of(&write);
        let work = work::<D, _>(move |conn| {
            Box::pin(async move { write_order::<D>(conn, &write.borrow()).await })
        });
        if alone {
            self.sql.commit_alone(work).await
        } else {
            self.sql.commit_grouped(work).await
        }
    }
}

/// An [`OrderWrite`] that owns what it writes, for a group-commit job (which may outlive
/// the request that queued it).
#[derive(Debug)]
pub(crate) struct OwnedOrderWrite {
    order: Order,
    expected_version: Option<Version>,
    outbox: Vec<OutboxMessage>,
    idempotency: Option<IdempotencyCompletion>,
    start_saga: Option<SagaInstance>,
    lease_saga_to: Option<(String, Timestamp)>,
}

impl OwnedOrderWrite {
    pub(crate) fn of(write: &OrderWrite<'_>) -> Self {
        Self {
            order: write.order.clone(),
            expected_version: write.expected_version,
            outbox: write.outbox.to_vec(),
            idempotency: write.idempotency.cloned(),
            start_saga: write.start_saga.cloned(),
            lease_saga_to: write.lease_saga_to.map(|l| (l.owner.to_owned(), l.until)),
        }
    }

    pub(crate) fn borrow(&self) -> OrderWrite<'_> {
        OrderWrite {
            order: &self.order,
            expected_version: self.expected_version,
            outbox: &self.outbox,
            idempotency: self.idempotency.as_ref(),
            start_saga: self.start_saga.as_ref(),
            lease_saga_to: self.lease_saga_to.as_ref().map(|(owner, until)| SagaLease {
                owner,
                until: *until,
            }),
        }
    }
}

/// Everything an [`OrderWrite`] changes, as one batch (one statement on PostgreSQL): `save`
/// runs it alone; a saga commit adds its own statements after it (the lock order is
/// explained in `sagas.rs`). On error the caller must roll back (drop the transaction).
pub(crate) async fn write_order<D: Dialect>(
    conn: &mut ConnOf<D>,
    write: &OrderWrite<'_>,
) -> Result<(), StoreError> {
    let mut batch = Batch::default();
    let checks = push_order::<D>(&mut batch, write)?;
    let counts = batch.run(conn).await.map_err(write_error::<D>)?;
    checks.check::<D>(conn, write.order, &counts).await
}

/// Whether [`write_order`] of `write` is atomic without a transaction where its batch is one
/// statement: no count to check that would have to roll it back (a create, without a claim
/// to complete).
///
/// Whether the batch is one statement is the commit mechanism's to judge (`Sql::commit_alone`).
pub(crate) fn atomic_alone(write: &OrderWrite<'_>) -> bool {
    write.expected_version.is_none()
        && !matches!(
            write.idempotency,
            Some(IdempotencyCompletion::Claimed { .. })
        )
}

/// A batch's error as the store reports it: a taken idempotency key is `KeyExists`, a second
/// active saga of one order `SagaActive`.
pub(crate) fn write_error<D: Dialect>(e: sqlx::Error) -> StoreError {
    if key_taken::<D>(&e) {
        StoreError::KeyExists
    } else {
        saga_write_error::<D>(e)
    }
}

/// What [`push_order`] asks of its parts' counts.
pub(crate) struct OrderChecks {
    key: Option<KeyCheck>,
    /// The optimistic-locked update, when the write is one.
    update: Option<PartId>,
}

impl OrderChecks {
    /// What [`Self::check`] asks, as expectations of the batch for
    /// [`Batch::run_all_or_nothing`]: the key's completion and the update each change their row.
    pub(crate) fn expect<D: Dialect>(&self, batch: &mut Batch<'_, D>) {
        if let Some(key) = self.key {
            key.expect(batch);
        }
        if let Some(part) = self.update {
            batch.expect(part, 1);
        }
    }

    /// The key first: a request whose lease was taken over fails whatever else happened.
    /// Then the version: an update that changed no row lost to a concurrent writer.
    pub(crate) async fn check<D: Dialect>(
        self,
        conn: &mut ConnOf<D>,
        order: &Order,
        counts: &Counts,
    ) -> Result<(), StoreError> {
        if let Some(key) = self.key {
            key.check(counts)?;
        }
        match self.update {
            Some(part) if counts.of(part) != 1 => Err(version_conflict::<D>(conn, order).await?),
            _ => Ok(()),
        }
    }
}

/// Adds `write`'s statements to `batch`, in lock order: the idempotency record first (a
/// request whose key is already recorded, or whose lease was taken over, fails before it
/// writes anything, and holding the key's row lock makes a concurrent takeover or insert
/// wait for this commit, then see the key completed); then the order, its lines, its events;
/// the saga last (its row references the order).
pub(crate) fn push_order<'q, D: Dialect>(
    batch: &mut Batch<'q, D>,
    write: &OrderWrite<'q>,
) -> Result<OrderChecks, StoreError> {
    let key = write
        .idempotency
        .map(|key| push_key::<D>(batch, key))
        .transpose()?;
    let update = match write.expected_version {
        None => {
            push_insert::<D>(batch, write.order);
            None
        }
        Some(expected) => Some(push_update::<D>(batch, write.order, expected)),
    };
    // Guarded by the update: a stale writer's events may already be in the outbox under the
    // same ids, and its saga may already run; the update's count must tell it so instead.
    batch.push_rows(
        outbox_rows(outbox_of(write.outbox)?, write.order.updated_at())?,
        update,
    );
    if let Some(saga) = write.start_saga {
        push_saga::<D>(batch, saga, write.lease_saga_to, update)?;
    }
    Ok(OrderChecks { key, update })
}

fn push_insert<'q, D: Dialect>(batch: &mut Batch<'q, D>, order: &'q Order) {
    let p = order.parts();
    let a = &p.shipping_address;
    batch.push(
        "INSERT INTO orders (id, customer_id, status, payment_status, reservation_status, \
         currency, total_minor, captured_minor, refunded_minor, payment_provider, payment_token, \
         ship_recipient, ship_line1, ship_line2, ship_city, ship_postal_code, ship_country, \
         failure_reason, version, created_at, updated_at, ship_email, payment_action_url, \
         payment_action_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24)",
        move |query| {
            let query = query
                .arg(D::id(p.id.as_uuid()))
                .arg(p.customer_id.as_str())
                .arg(p.status.as_str())
                .arg(p.payment_status.as_str())
                .arg(p.reservation_status.as_str())
                .arg(p.total.currency().as_str())
                .arg(p.total.amount_minor())
                .arg(p.captured.amount_minor())
                .arg(p.refunded.amount_minor())
                .arg(p.payment.provider.as_str())
                .arg(p.payment.token.as_str());
            bind_address::<D>(query, a)
                .arg(p.failure_reason.as_deref())
                .arg(p.version.0)
                .arg(p.created_at.unix_millis())
                .arg(p.updated_at.unix_millis())
                .arg(a.email.as_str())
                .arg(p.payment_action.as_ref().map(|x| x.url.as_str()))
                .arg(
                    p.payment_action
                        .as_ref()
                        .map(|x| x.expires_at.unix_millis()),
                )
        },
    );

    let lines = p.items.len();
    let mut line_nos = Vec::with_capacity(lines);
    let mut skus = Vec::with_capacity(lines);
    let mut quantities = Vec::with_capacity(lines);
    let mut prices = Vec::with_capacity(lines);
    let mut currencies = Vec::with_capacity(lines);
    for (line_no, item) in (0i32..).zip(&p.items) {
        line_nos.push(line_no);
        skus.push(item.sku.as_str().to_owned());
        quantities.push(i32::try_from(item.quantity.get()).unwrap_or(i32::MAX));
        prices.push(item.unit_price.amount_minor());
        currencies.push(item.unit_price.currency().as_str().to_owned());
    }
    batch.push_rows(
        Rows {
            table: "order_items",
            columns: &[
                "order_id",
                "line_no",
                "sku",
                "quantity",
                "unit_price_minor",
                "currency",
            ],
            values: vec![
                Column::Id(vec![p.id.as_uuid(); lines]),
                Column::Int(line_nos),
                Column::Text(skus),
                Column::Int(quantities),
                Column::BigInt(prices),
                Column::Text(currencies),
            ],
            on_conflict: "",
        },
        None,
    );
}

/// The optimistic-locked update. Lines never change after the insert, so only the order row
/// is written.
fn push_update<'q, D: Dialect>(
    batch: &mut Batch<'q, D>,
    order: &'q Order,
    expected: Version,
) -> PartId {
    let p = order.parts();
    let a = &p.shipping_address;
    batch.push(
        "UPDATE orders SET status = $3, payment_status = $4, reservation_status = $5, \
         captured_minor = $6, refunded_minor = $7, ship_recipient = $8, ship_line1 = $9, \
         ship_line2 = $10, ship_city = $11, ship_postal_code = $12, ship_country = $13, \
         failure_reason = $14, version = $15, updated_at = $16, ship_email = $17, \
         payment_action_url = $18, payment_action_expires_at = $19 \
         WHERE id = $1 AND version = $2",
        move |query| {
            let query = query
                .arg(D::id(p.id.as_uuid()))
                .arg(expected.0)
                .arg(p.status.as_str())
                .arg(p.payment_status.as_str())
                .arg(p.reservation_status.as_str())
                .arg(p.captured.amount_minor())
                .arg(p.refunded.amount_minor());
            bind_address::<D>(query, a)
                .arg(p.failure_reason.as_deref())
                .arg(p.version.0)
                .arg(p.updated_at.unix_millis())
                .arg(a.email.as_str())
                .arg(p.payment_action.as_ref().map(|x| x.url.as_str()))
                .arg(
                    p.payment_action
                        .as_ref()
                        .map(|x| x.expires_at.unix_millis()),
                )
        },
    )
}

/// Why an update changed no row: the version that beat it. Under READ COMMITTED (PostgreSQL)
/// a concurrent writer's commit is visible to this read; on SQLite the write lock is held
/// since `BEGIN`.
async fn version_conflict<D: Dialect>(
    conn: &mut ConnOf<D>,
    order: &Order,
) -> Result<StoreError, StoreError> {
    let current = current_version::<D>(conn, "orders", order.id().as_uuid()).await?;
    Ok(match current {
        None => StoreError::NotFound,
        Some(v) => StoreError::VersionConflict {
            current: Version(v),
        },
    })
}

/// Binds the shipping address's `ship_recipient` .. `ship_country` columns, which the insert
/// and the update both write in this order.
fn bind_address<'q, D: Dialect>(query: Q<'q, D>, a: &'q ShippingAddress) -> Q<'q, D> {
    query
        .arg(a.recipient.as_str())
        .arg(a.line1.as_str())
        .arg(a.line2.as_str())
        .arg(a.city.as_str())
        .arg(a.postal_code.as_str())
        .arg(a.country.as_str())
}

/// The events, in order (the relay publishes in id order, which follows insertion order).
fn outbox_of(messages: &[OutboxMessage]) -> Result<Vec<NewOutboxRow>, StoreError> {
    messages
        .iter()
        .map(|m| {
            Ok(NewOutboxRow {
                event_id: m.event_id,
                aggregate_type: AggregateType::Order,
                aggregate_id: m.aggregate_id.as_uuid(),
                event_type: m.event_type,
                schema_version: m.schema_version,
                payload: json(&m.payload, "outbox payload")?,
                headers: json(&m.headers, "outbox headers")?,
                occurred_at: m.occurred_at,
            })
        })
        .collect()
}
