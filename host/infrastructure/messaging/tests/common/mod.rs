//! Shared helpers of the messaging tests: real databases (PostgreSQL and SQLite through
//! `TestDatabase`), real orders written through the application service, bounded polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod kafka;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oms_application::changes::OrderChanges;
use oms_application::clock::SystemClock;
use oms_application::operations::OutboxOperations;
use oms_application::{OrderService, ServiceConfig};
use oms_domain::{
    Currency, CustomerId, LineItem, Money, NewOrder, Order, OrderId, PaymentMethod, Quantity,
    ShippingAddress, Sku, address::RawAddress,
};
use oms_messaging::BrokerError;
use oms_messaging::broker::{Message, Publisher};
use oms_messaging::event::headers;
use oms_messaging::relay::Relay;
use oms_persistence::Database;
use oms_persistence::testing::{TestBackend, TestDatabase};

pub const BACKENDS: [TestBackend; 2] = [TestBackend::Postgres, TestBackend::Sqlite];

/// A fresh migrated database of `backend`.
pub async fn database(backend: TestBackend) -> (TestDatabase, Database) {
    let test_db = TestDatabase::new(backend).await.expect("test database");
    let db = test_db.connect().await.expect("connect");
    (test_db, db)
}

/// The operator's outbox operations over `db`, waking `relay` after a redrive.
pub fn outbox_operations(db: &Database, relay: &Relay) -> OutboxOperations {
    let relay = relay.clone();
    OutboxOperations::new(
        db.outbox(),
        Arc::new(SystemClock),
        Arc::new(move || relay.wake()),
    )
}

pub fn service(db: &Database) -> OrderService {
    OrderService::new(
        db.orders(),
        db.sagas(),
        db.idempotency(),
        OrderChanges::default(),
        Arc::new(SystemClock),
        ServiceConfig::default(),
    )
}

pub fn address(city: &str) -> ShippingAddress {
    ShippingAddress::parse(RawAddress {
        recipient: "Ada Lovelace",
        line1: "1 Main St",
        city,
        postal_code: "10115",
        country: "DE",
        ..RawAddress::default()
    })
    .unwrap()
}

pub fn new_order(customer: &str) -> NewOrder {
    NewOrder::new(
        CustomerId::parse(customer).unwrap(),
        vec![LineItem {
            sku: Sku::parse("SKU-1").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            unit_price: Money::new(1250, Currency::parse("EUR").unwrap()).unwrap(),
        }],
        PaymentMethod::parse("fakepay", "tok_ok").unwrap(),
        address("Berlin"),
    )
    .unwrap()
}

/// Places an order and changes its address `updates` times: `1 + updates` events, versions
/// 1..=1+updates.
pub async fn order_with_events(svc: &OrderService, customer: &str, updates: usize) -> Order {
    let mut order = svc.create_order(new_order(customer), None).await.unwrap();
    for i in 0..updates {
        order = svc
            .update_shipping_address(
                order.id(),
                address(&format!("City {i}")),
                order.version(),
                None,
            )
            .await
            .unwrap();
    }
    order
}

/// Writes `orders` orders with `updates` address changes each, `concurrency` at a time.
pub async fn write_orders(
    svc: &OrderService,
    orders: usize,
    updates: usize,
    concurrency: usize,
) -> Vec<OrderId> {
    use futures::StreamExt;
    futures::stream::iter(0..orders)
        .map(|i| {
            let svc = svc.clone();
            async move {
                order_with_events(&svc, &format!("cust-{i}"), updates)
                    .await
                    .id()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn scalar(db: &Database, sql: &str) -> i64 {
    match db.postgres() {
        Some(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap(),
        None => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&db.sqlite().unwrap().reader)
            .await
            .unwrap(),
    }
}

pub async fn unpublished(db: &Database) -> i64 {
    scalar(db, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").await
}

/// (event type, order version) of a decoded event message.
pub fn type_and_version(m: &Message) -> (String, i64) {
    let e = oms_messaging::event::decode(&m.payload).unwrap();
    (e.event_type, e.order.unwrap().version)
}

/// A publisher that fails every message of chosen event ids while a counter allows, then
/// forwards to the real one: a row the broker keeps refusing, on demand.
pub struct FlakyPublisher {
    pub inner: Arc<dyn Publisher>,
    /// event id -> remaining failures (`u32::MAX` = fail until changed).
    pub failing: Mutex<HashMap<String, u32>>,
}

impl FlakyPublisher {
    pub fn new(inner: Arc<dyn Publisher>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failing: Mutex::new(HashMap::new()),
        })
    }

    pub fn fail(&self, event_id: &str, times: u32) {
        self.failing
            .lock()
            .unwrap()
            .insert(event_id.to_owned(), times);
    }

    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }
}

#[async_trait]
impl Publisher for FlakyPublisher {
    async fn publish(&self, batch: Vec<Message>) -> Vec<Result<(), BrokerError>> {
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut forward = Vec::new();
        {
            let mut failing = self.failing.lock().unwrap();
            for m in batch {
                let id = m.header(headers::ID).unwrap_or_default().to_owned();
                // Dead-letter messages (they carry an error header) always pass.
                let poisoned = m.header(headers::ERROR).is_none()
                    && failing.get_mut(&id).is_some_and(|n| {
                        if *n == 0 {
                            return false;
                        }
                        *n = n.saturating_sub(1);
                        true
                    });
                if poisoned {
                    verdicts.push(Some(Err(BrokerError::Rejected("injected failure".into()))));
                } else {
                    verdicts.push(None);
                    forward.push(m);
                }
            }
        }
        let mut results = self.inner.publish(forward).await.into_iter();
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| results.next().unwrap_or(Err(BrokerError::Closed))))
            .collect()
    }
}
