//! Shared fixtures: sample orders and a macro that runs one test body on both databases.

#![allow(dead_code, clippy::unwrap_used)]

use oms_application::idempotency::{Fingerprint, IdempotencyScope};
use oms_application::outbox::OutboxMessage;
use oms_application::ports::{OrderWrite, StoreError};
use oms_application::saga::{SagaId, SagaInstance, SagaKind};
use oms_domain::address::RawAddress;
use oms_domain::{
    Currency, CustomerId, IdempotencyKey, LineItem, Money, NewOrder, Order, OrderEvent, OrderId,
    PaymentMethod, Quantity, ShippingAddress, Sku, Timestamp,
};
use std::sync::Arc;

use oms_application::ports::{IdempotencyStore, OrderStore, PluginKvStore, SagaStore};
use oms_application::testing::MemoryStore;
use oms_persistence::Database;
use oms_persistence::testing::TestDatabase;

/// Runs `$body(db: Database)` once on a fresh PostgreSQL database and once on a fresh SQLite
/// file, as two tests named `$name::postgres` and `$name::sqlite`: for tests that need SQL
/// itself (tampering with rows, connection behaviour).
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let test_db = oms_persistence::testing::TestDatabase::postgres()
                    .await
                    .unwrap();
                $crate::common::run(test_db, super::$body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let test_db = oms_persistence::testing::TestDatabase::sqlite().unwrap();
                $crate::common::run(test_db, super::$body).await;
            }
        }
    };
}

/// Runs the contract test `$body(db: Stores)` on PostgreSQL, on SQLite, and on the
/// application test kit's in-memory store, as `$name::{postgres,sqlite,memory}`: the fakes the
/// engine tests rely on are held to the same contract as the real stores.
#[macro_export]
macro_rules! on_all {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let test_db = oms_persistence::testing::TestDatabase::postgres()
                    .await
                    .unwrap();
                $crate::common::run(test_db, |db| super::$body($crate::common::Stores::Sql(db)))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let test_db = oms_persistence::testing::TestDatabase::sqlite().unwrap();
                $crate::common::run(test_db, |db| super::$body($crate::common::Stores::Sql(db)))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                super::$body($crate::common::Stores::memory()).await;
            }
        }
    };
}

pub async fn run<F, Fut>(test_db: TestDatabase, body: F)
where
    F: FnOnce(Database) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = test_db.connect().await.unwrap();
    body(db.clone()).await;
    db.close().await;
    test_db.cleanup().await.unwrap();
}

/// The stores a contract test runs against: a real database, or the in-memory test store.
#[derive(Clone)]
pub enum Stores {
    Sql(Database),
    Memory(Arc<MemoryStore>),
}

impl Stores {
    pub fn memory() -> Self {
        Self::Memory(Arc::new(MemoryStore::default()))
    }

    pub fn orders(&self) -> Arc<dyn OrderStore> {
        match self {
            Self::Sql(db) => db.orders(),
            Self::Memory(store) => store.clone(),
        }
    }

    pub fn sagas(&self) -> Arc<dyn SagaStore> {
        match self {
            Self::Sql(db) => db.sagas(),
            Self::Memory(store) => store.clone(),
        }
    }

    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        match self {
            Self::Sql(db) => db.idempotency(),
            Self::Memory(store) => store.clone(),
        }
    }

    pub fn plugin_kv(&self) -> Arc<dyn PluginKvStore> {
        match self {
            Self::Sql(db) => db.plugin_kv(),
            Self::Memory(store) => store.clone(),
        }
    }
}

pub fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
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

pub fn line(sku: &str, quantity: i64, price: i64) -> LineItem {
    LineItem {
        sku: Sku::parse(sku).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        unit_price: Money::new(price, Currency::parse("EUR").unwrap()).unwrap(),
    }
}

/// A new PENDING order with two lines, and its `OrderCreated` event.
pub fn new_order(customer: &str, now: Timestamp) -> (Order, OrderEvent) {
    let new = NewOrder::new(
        CustomerId::parse(customer).unwrap(),
        vec![line("SKU-B", 2, 1250), line("SKU-A", 1, 999)],
        PaymentMethod::parse("fake-pay", "tok_visa").unwrap(),
        address("Berlin"),
    )
    .unwrap();
    Order::place(new, OrderId::generate(), now)
}

pub fn outbox(order: &Order, event: &OrderEvent) -> Vec<OutboxMessage> {
    vec![OutboxMessage::for_event(order, event)]
}

/// Inserts a new order of `customer` (with its `OrderCreated` outbox row) at `now`.
pub async fn insert(db: &Stores, customer: &str, now: i64) -> Order {
    let (order, event) = new_order(customer, ts(now));
    let messages = outbox(&order, &event);
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();
    order
}

pub fn scope(key: &str) -> IdempotencyScope {
    IdempotencyScope {
        method: "/oms.v1.OrderService/CreateOrder".to_owned(),
        caller: String::new(),
        key: IdempotencyKey::parse(key).unwrap(),
    }
}

pub fn fingerprint(body: &[u8]) -> Fingerprint {
    Fingerprint::of("/oms.v1.OrderService/CreateOrder", body)
}

/// How many outbox rows the database holds for `order` (read with the raw pools).
pub async fn outbox_rows(stores: &Stores, order: OrderId) -> i64 {
    let db = match stores {
        Stores::Sql(db) => db,
        Stores::Memory(store) => return i64::try_from(store.outbox(order).len()).unwrap(),
    };
    if let Some(pool) = db.postgres() {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1")
            .bind(order.as_uuid())
            .fetch_one(pool)
            .await
            .unwrap()
    } else {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = ?1")
            .bind(order.to_string())
            .fetch_one(&db.sqlite().unwrap().reader)
            .await
            .unwrap()
    }
}

/// A new placement saga for `order`, due at `now`.
pub fn saga_for(order: &Order, now: i64) -> SagaInstance {
    SagaInstance::start(SagaKind::PlaceOrder, order.id(), ts(now))
}

/// Inserts `order` (with its `OrderCreated` outbox row) and starts `saga` in the same write.
pub async fn place_with_saga(
    db: &Stores,
    order: &Order,
    event: &OrderEvent,
    saga: &SagaInstance,
) -> Result<(), StoreError> {
    let messages = outbox(order, event);
    db.orders()
        .save(OrderWrite {
            order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: Some(saga),
            lease_saga_to: None,
        })
        .await
}

/// A `saga_steps` row as stored: (step, action, plugin name, plugin version, plugin digest,
/// idempotency key, status, attempts, last error, started at, finished at).
pub type StepRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    i32,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// The step rows of `saga`, by step and action, as the store's `steps` reads them back.
pub async fn step_rows(stores: &Stores, saga: SagaId) -> Vec<StepRow> {
    let mut rows: Vec<StepRow> = stores
        .sagas()
        .steps(saga)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            let (plugin, version, digest) = match s.plugin {
                Some((p, v, d)) => (Some(p), Some(v), Some(d)),
                None => (None, None, None),
            };
            (
                s.step,
                s.direction,
                plugin,
                version,
                digest,
                s.idempotency_key,
                s.status,
                i32::try_from(s.attempts).unwrap(),
                s.last_error,
                s.started_at.map(|t| t.unix_millis()),
                s.finished_at.map(|t| t.unix_millis()),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rows
}

/// The lease (owner, until) stored on `saga`.
pub async fn lease(stores: &Stores, saga: SagaId) -> (Option<String>, Option<i64>) {
    let db = match stores {
        Stores::Sql(db) => db,
        Stores::Memory(store) => {
            let (owner, until) = store.lease(saga);
            return (owner, until.map(|t| t.unix_millis()));
        }
    };
    if let Some(pool) = db.postgres() {
        sqlx::query_as("SELECT lease_owner, lease_until FROM saga_instances WHERE id = $1")
            .bind(saga.0)
            .fetch_one(pool)
            .await
            .unwrap()
    } else {
        sqlx::query_as("SELECT lease_owner, lease_until FROM saga_instances WHERE id = ?1")
            .bind(saga.to_string())
            .fetch_one(&db.sqlite().unwrap().reader)
            .await
            .unwrap()
    }
}

/// Runs a statement without parameters on either database (test setup and tampering).
pub async fn execute(db: &Database, sql: &'static str) {
    if let Some(pool) = db.postgres() {
        sqlx::query(sql).execute(pool).await.unwrap();
    } else {
        sqlx::query(sql)
            .execute(&db.sqlite().unwrap().writer)
            .await
            .unwrap();
    }
}
