//! What must hold after any crash: read straight from the database and from the plugins'
//! KV records, never through the API under test.

use std::collections::HashMap;

/// One order's state dimensions.
#[derive(Debug)]
pub struct OrderRow {
    pub id: String,
    pub status: String,
    pub payment: String,
    pub reservation: String,
}

/// Everything the invariants look at.
pub struct Snapshot {
    pub orders: Vec<OrderRow>,
    /// (order id, sku, quantity)
    pub items: Vec<(String, String, i64)>,
    /// (plugin, key) -> value
    pub kv: HashMap<(String, String), Vec<u8>>,
    pub sagas_by_status: HashMap<String, i64>,
    /// (saga id, step, action) -> attempts, as the host recorded them in `saga_steps`.
    pub step_attempts: HashMap<(String, String, String), i64>,
}

const ORDERS: &str =
    "SELECT CAST(id AS TEXT), status, payment_status, reservation_status FROM orders";
const ITEMS: &str = "SELECT CAST(order_id AS TEXT), sku, CAST(quantity AS BIGINT) FROM order_items";
const KV: &str = "SELECT namespace, key, value FROM plugin_kv";
const SAGAS: &str = "SELECT status, COUNT(*) FROM saga_instances GROUP BY status";
const STEPS: &str =
    "SELECT CAST(saga_id AS TEXT), step, action, CAST(attempts AS BIGINT) FROM saga_steps";
const ACTIVE: &str =
    "SELECT COUNT(*) FROM saga_instances WHERE status IN ('RUNNING', 'COMPENSATING')";

type OrderTuple = (String, String, String, String);
type StepTuple = (String, String, String, i64);

macro_rules! read_all {
    ($pool:expr) => {{
        let pool = $pool;
        let orders: Vec<OrderTuple> = sqlx::query_as(ORDERS).fetch_all(&pool).await.unwrap();
        let items: Vec<(String, String, i64)> =
            sqlx::query_as(ITEMS).fetch_all(&pool).await.unwrap();
        let kv: Vec<(String, String, Vec<u8>)> = sqlx::query_as(KV).fetch_all(&pool).await.unwrap();
        let sagas: Vec<(String, i64)> = sqlx::query_as(SAGAS).fetch_all(&pool).await.unwrap();
        let steps: Vec<StepTuple> = sqlx::query_as(STEPS).fetch_all(&pool).await.unwrap();
        pool.close().await;
        (orders, items, kv, sagas, steps)
    }};
}

pub async fn active_sagas(url: &str) -> i64 {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(ACTIVE).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(ACTIVE).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// The one saga of a database, as its last commit left it (times in unix ms).
#[derive(Debug)]
pub struct SagaRow {
    pub status: String,
    /// Index into the flow's steps (`place_order`: 1 is `authorize-payment`).
    pub step_index: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub deadline_at: Option<i64>,
    pub lease_until: Option<i64>,
}

const SAGA: &str = "SELECT status, CAST(step_index AS BIGINT), CAST(attempts AS BIGINT), next_attempt_at, \
                    deadline_at, lease_until FROM saga_instances";

type SagaTuple = (String, i64, i64, i64, Option<i64>, Option<i64>);

/// The only saga in the database (`None` before the order that starts it exists).
pub async fn only_saga(url: &str) -> Option<SagaRow> {
    let rows: Vec<SagaTuple> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query_as(SAGA).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query_as(SAGA).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    };
    assert!(rows.len() <= 1, "expected one saga, found {}", rows.len());
    rows.into_iter().next().map(
        |(status, step_index, attempts, next_attempt_at, deadline_at, lease_until)| SagaRow {
            status,
            step_index,
            attempts,
            next_attempt_at,
            deadline_at,
            lease_until,
        },
    )
}

/// Units each SKU started with, from local-stock's manifest catalogue.
pub fn initial_stock(sku: &str) -> i64 {
    match sku {
        "DEMO-1" | "DEMO-2" => 1_000_000,
        _ => 0,
    }
}

impl Snapshot {
    pub async fn read(url: &str) -> Snapshot {
        let (orders, items, kv, sagas, steps) = if url.starts_with("postgres") {
            read_all!(sqlx::PgPool::connect(url).await.unwrap())
        } else {
            read_all!(sqlx::SqlitePool::connect(url).await.unwrap())
        };
        Snapshot {
            orders: orders
                .into_iter()
                .map(|(id, status, payment, reservation)| OrderRow {
                    id,
                    status,
                    payment,
                    reservation,
                })
                .collect(),
            items,
            kv: kv.into_iter().map(|(ns, k, v)| ((ns, k), v)).collect(),
            sagas_by_status: sagas.into_iter().collect(),
            step_attempts: steps
                .into_iter()
                .map(|(saga, step, action, attempts)| ((saga, step, action), attempts))
                .collect(),
        }
    }

    /// Attempts per saga of one step in one direction (`forward` or `compensate`), as the
    /// host recorded them when it committed each attempt's outcome.
    pub fn attempts(&self, step: &str, action: &str) -> HashMap<String, i64> {
        self.step_attempts
            .iter()
            .filter(|((_, s, a), _)| s == step && a == action)
            .map(|((saga, _, _), &n)| (saga.clone(), n))
            .collect()
    }

    /// Call counters a plugin keeps under `calls/<operation>/<key>` (turned on by
    /// [`crate::host::PluginDirs`]). They count every call that reached the plugin, including
    /// one whose answer the host never recorded (a worker that lost its lease mid-call).
    pub fn calls(&self, plugin: &str, operation: &str) -> HashMap<String, i64> {
        let prefix = format!("calls/{operation}/");
        self.kv
            .iter()
            .filter(|((ns, key), _)| ns == plugin && key.starts_with(&prefix))
            .map(|((_, key), value)| {
                let n = std::str::from_utf8(value).unwrap().trim().parse().unwrap();
                (key[prefix.len()..].to_owned(), n)
            })
            .collect()
    }

    /// Every saga finished; every order is in the state its saga's outcome demands, and the
    /// plugins hold exactly what the confirmed orders need: no leaked hold, no leaked stock.
    pub fn assert_placement_invariants(&self) {
        let active: i64 = ["RUNNING", "COMPENSATING"]
            .iter()
            .filter_map(|s| self.sagas_by_status.get(*s))
            .sum();
        assert_eq!(active, 0, "sagas still active: {:?}", self.sagas_by_status);
        assert_eq!(
            self.sagas_by_status.get("COMPENSATION_FAILED"),
            None,
            "parked sagas: {:?}",
            self.sagas_by_status
        );
        let mut confirmed = HashMap::new();
        for o in &self.orders {
            match o.status.as_str() {
                "CONFIRMED" => {
                    assert_eq!(
                        (o.payment.as_str(), o.reservation.as_str()),
                        ("AUTHORIZED", "RESERVED"),
                        "{o:?}"
                    );
                    confirmed.insert(o.id.clone(), ());
                }
                "REJECTED" => {
                    assert_eq!(o.payment, "PENDING", "{o:?}");
                    assert_ne!(o.reservation, "RESERVED", "{o:?}");
                }
                "PAYMENT_FAILED" => {
                    assert_eq!(o.reservation, "RELEASED", "{o:?}");
                    assert!(
                        matches!(o.payment.as_str(), "AUTH_FAILED" | "VOIDED"),
                        "{o:?}"
                    );
                }
                other => panic!("order {} ended in {other}", o.id),
            }
        }
        // local-stock: what left the shelf is exactly what confirmed orders hold.
        let mut held: HashMap<&str, i64> = HashMap::new();
        for (order, sku, quantity) in &self.items {
            if confirmed.contains_key(order) {
                *held.entry(sku.as_str()).or_default() += quantity;
            }
        }
        for ((plugin, key), value) in &self.kv {
            if plugin != "local-stock" {
                continue;
            }
            if let Some(sku) = key.strip_prefix("stock/") {
                let now: i64 = std::str::from_utf8(value).unwrap().trim().parse().unwrap();
                let taken = initial_stock(sku) - now;
                assert_eq!(taken, held.get(sku).copied().unwrap_or(0), "stock of {sku}");
            }
        }
        // fakepay: a payment is held for every confirmed order and for no other.
        let mut holds = 0;
        for ((plugin, key), value) in &self.kv {
            if plugin == "fakepay" && key.starts_with("payment/") {
                let record: serde_json::Value = serde_json::from_slice(value).unwrap();
                let record = record.get("value").unwrap_or(&record);
                if record["status"] == "authorized" {
                    let order = record["order_id"].as_str().unwrap();
                    assert!(
                        confirmed.contains_key(order),
                        "hold left for {order}: {record}"
                    );
                    holds += 1;
                }
            }
        }
        assert_eq!(holds, confirmed.len(), "one hold per confirmed order");
    }

    /// Every fulfilled order's payment was captured exactly once: the provider's record
    /// shows the authorised amount captured (never more), and the order says CAPTURED.
    pub fn assert_fulfillment_invariants(&self, fulfilled: &[String]) {
        let active: i64 = ["RUNNING", "COMPENSATING"]
            .iter()
            .filter_map(|s| self.sagas_by_status.get(*s))
            .sum();
        assert_eq!(active, 0, "sagas still active: {:?}", self.sagas_by_status);
        assert_eq!(self.sagas_by_status.get("COMPENSATION_FAILED"), None);
        for id in fulfilled {
            let o = self
                .orders
                .iter()
                .find(|o| &o.id == id)
                .expect("order exists");
            assert_eq!(
                (
                    o.status.as_str(),
                    o.payment.as_str(),
                    o.reservation.as_str()
                ),
                ("FULFILLED", "CAPTURED", "COMMITTED"),
                "{o:?}"
            );
        }
        let mut captured = 0;
        for ((plugin, key), value) in &self.kv {
            if plugin == "fakepay" && key.starts_with("payment/") {
                let record: serde_json::Value = serde_json::from_slice(value).unwrap();
                let order = record["order_id"].as_str().unwrap().to_owned();
                if fulfilled.contains(&order) {
                    assert_eq!(record["status"], "captured", "{record}");
                    assert_eq!(
                        record["captured"], record["authorized"],
                        "captured twice? {record}"
                    );
                    captured += 1;
                }
            }
        }
        assert_eq!(
            captured,
            fulfilled.len(),
            "one captured payment per fulfilled order"
        );
    }
}
