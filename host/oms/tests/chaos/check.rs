//! The invariants, read after the last fault from PostgreSQL (directly, not through the
//! proxy), from the plugins' own records (their KV rows) and from the broker. Each broken
//! invariant is one line in [`Report::violations`]; nothing here stops at the first.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use oms_messaging::broker::{Broker, KafkaBroker, KafkaOptions};
use sqlx::PgPool;

use crate::broker::EVENTS;
use crate::invariants::initial_stock;

/// Outbox rows not yet published.
pub const UNPUBLISHED: &str = "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL";

/// Order events the notification consumer has not recorded as processed.
pub const UNAPPLIED: &str = "SELECT COUNT(*) FROM outbox o WHERE o.aggregate_type = 'order' \
     AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.consumer = 'oms-notifications' \
     AND p.event_id = o.event_id)";

pub struct Report {
    pub orders: usize,
    pub events_checked: usize,
    /// Event messages seen more than once on the broker (at-least-once delivery at work).
    pub redelivered: usize,
    pub violations: Vec<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct Order {
    id: String,
    customer_id: String,
    status: String,
    payment_status: String,
    reservation_status: String,
    captured_minor: i64,
    refunded_minor: i64,
}

/// The (payment, reservation) states each final order state allows.
fn consistent(o: &Order) -> bool {
    let (p, r) = (o.payment_status.as_str(), o.reservation_status.as_str());
    match o.status.as_str() {
        "CONFIRMED" => p == "AUTHORIZED" && r == "RESERVED",
        "FULFILLED" => {
            matches!(p, "CAPTURED" | "PARTIALLY_REFUNDED" | "REFUNDED") && r == "COMMITTED"
        }
        // A cancel that took over a running placement stops it where it was: nothing
        // reserved or authorized yet, or undone.
        "CANCELLED" => {
            matches!(p, "PENDING" | "AUTH_FAILED" | "VOIDED") && matches!(r, "NONE" | "RELEASED")
        }
        "REJECTED" => p == "PENDING" && matches!(r, "NONE" | "RELEASED"),
        "PAYMENT_FAILED" => matches!(p, "AUTH_FAILED" | "VOIDED") && r == "RELEASED",
        _ => false,
    }
}

/// The order's payment status that a fakepay record's status means.
fn provider_status(status: &str) -> Option<&'static str> {
    Some(match status {
        "authorized" => "AUTHORIZED",
        "captured" => "CAPTURED",
        "partially-refunded" => "PARTIALLY_REFUNDED",
        "refunded" => "REFUNDED",
        "voided" => "VOIDED",
        "declined" => "AUTH_FAILED",
        _ => return None,
    })
}

pub async fn run(url: &str, brokers: &str, acknowledged: &HashMap<String, String>) -> Report {
    let pool = PgPool::connect(url).await.expect("connect for checks");
    let mut v = Vec::new();

    let orders: Vec<Order> = sqlx::query_as(
        "SELECT CAST(id AS TEXT) AS id, customer_id, status, payment_status, \
         reservation_status, captured_minor, refunded_minor FROM orders",
    )
    .fetch_all(&pool)
    .await
    .expect("orders");
    let by_id: HashMap<&str, &Order> = orders.iter().map(|o| (o.id.as_str(), o)).collect();

    // Every acknowledged CreateOrder exists, and is the order of its key.
    for (key, id) in acknowledged {
        match by_id.get(id.as_str()) {
            None => v.push(format!("acknowledged order {id} (key {key}) is lost")),
            Some(o) if &o.customer_id != key => {
                v.push(format!(
                    "order {id} acknowledged for key {key} belongs to {}",
                    o.customer_id
                ));
            }
            Some(_) => {}
        }
    }
    // One order per idempotency key (the load uses the key as the customer id).
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for o in &orders {
        *per_key.entry(o.customer_id.as_str()).or_default() += 1;
    }
    for (key, n) in per_key.into_iter().filter(|(_, n)| *n > 1) {
        v.push(format!("key {key} made {n} orders"));
    }

    // Every saga finished, none parked.
    let sagas: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM saga_instances GROUP BY status")
            .fetch_all(&pool)
            .await
            .expect("sagas");
    for (status, n) in &sagas {
        if !matches!(status.as_str(), "SUCCEEDED" | "COMPENSATED") {
            v.push(format!("{n} sagas {status}"));
        }
    }
    for o in &orders {
        if !consistent(o) {
            v.push(format!("inconsistent order {o:?}"));
        }
    }

    // The plugins' own records.
    let kv: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT namespace, key, value FROM plugin_kv")
            .fetch_all(&pool)
            .await
            .expect("plugin kv");
    // local-stock: what left the shelf is exactly what reserved or committed orders hold.
    let items: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT CAST(order_id AS TEXT), sku, CAST(quantity AS BIGINT) FROM order_items",
    )
    .fetch_all(&pool)
    .await
    .expect("items");
    let mut held: HashMap<&str, i64> = HashMap::new();
    for (order, sku, quantity) in &items {
        if by_id
            .get(order.as_str())
            .is_some_and(|o| matches!(o.reservation_status.as_str(), "RESERVED" | "COMMITTED"))
        {
            *held.entry(sku.as_str()).or_default() += quantity;
        }
    }
    for (plugin, key, value) in &kv {
        if let ("local-stock", Some(sku)) = (plugin.as_str(), key.strip_prefix("stock/")) {
            let left: i64 = String::from_utf8_lossy(value).trim().parse().unwrap_or(-1);
            let taken = initial_stock(sku) - left;
            let expected = held.get(sku).copied().unwrap_or(0);
            if taken != expected {
                v.push(format!(
                    "stock of {sku}: {taken} taken, orders hold {expected}"
                ));
            }
        }
    }
    // fakepay: one live payment per order, never captured beyond the hold nor refunded
    // beyond the capture, and the order says what the provider says.
    let mut payments: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for (plugin, key, value) in &kv {
        if plugin == "fakepay" && key.starts_with("payment/") {
            let record: serde_json::Value = serde_json::from_slice(value).expect("payment json");
            let record = record.get("value").cloned().unwrap_or(record);
            let order = record["order_id"].as_str().unwrap_or_default().to_owned();
            payments.entry(order).or_default().push(record);
        }
    }
    for (order, records) in &payments {
        let live: Vec<_> = records
            .iter()
            .filter(|r| r["status"] != "declined")
            .collect();
        if live.len() > 1 {
            v.push(format!(
                "order {order} has {} payments: {records:?}",
                live.len()
            ));
        }
        for r in records {
            let (a, c, f) = (
                r["authorized"].as_i64().unwrap_or(-1),
                r["captured"].as_i64().unwrap_or(-1),
                r["refunded"].as_i64().unwrap_or(-1),
            );
            if !(0 <= f && f <= c && c <= a) {
                v.push(format!("payment of {order} moved money wrongly: {r}"));
            }
        }
        let Some(o) = by_id.get(order.as_str()) else {
            v.push(format!("payment for unknown order {order}"));
            continue;
        };
        if let Some(r) = live.first().copied().or(records.first()) {
            let status = r["status"].as_str().and_then(provider_status);
            // A cancel that took over the placement while the authorisation was being
            // declined keeps the order's payment PENDING: nothing was held either way.
            let declined_then_cancelled = status == Some("AUTH_FAILED")
                && o.status == "CANCELLED"
                && o.payment_status == "PENDING";
            if (status != Some(o.payment_status.as_str()) && !declined_then_cancelled)
                || r["captured"].as_i64() != Some(o.captured_minor)
                || r["refunded"].as_i64() != Some(o.refunded_minor)
            {
                v.push(format!("order {o:?} disagrees with its provider: {r}"));
            }
        }
    }
    for o in &orders {
        let needs = !matches!(o.payment_status.as_str(), "PENDING" | "AUTH_FAILED");
        if needs && !payments.contains_key(&o.id) {
            v.push(format!("order {o:?} has no payment at the provider"));
        }
    }

    // Events: all published, none dead-lettered, all applied by the notification consumer.
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(aggregate_id AS TEXT), CAST(event_id AS TEXT) FROM outbox \
         WHERE aggregate_type = 'order' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox");
    let (unpublished,): (i64,) = sqlx::query_as(UNPUBLISHED)
        .fetch_one(&pool)
        .await
        .expect("unpublished");
    if unpublished > 0 {
        v.push(format!("{unpublished} outbox rows never published"));
    }
    let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .expect("dead letters");
    if dead > 0 {
        v.push(format!("{dead} events dead-lettered"));
    }
    let (unapplied,): (i64,) = sqlx::query_as(UNAPPLIED)
        .fetch_one(&pool)
        .await
        .expect("processed events");
    if unapplied > 0 {
        v.push(format!(
            "{unapplied} events never applied by the notification consumer"
        ));
    }
    pool.close().await;

    let (redelivered, broker_violations) = check_broker(brokers, &events).await;
    v.extend(broker_violations);
    Report {
        orders: orders.len(),
        events_checked: events.len(),
        redelivered,
        violations: v,
    }
}

/// Reads the event topic from the start until every outbox event has been seen, then checks
/// that each order's events first appeared in the order the outbox wrote them.
async fn check_broker(brokers: &str, events: &[(String, String)]) -> (usize, Vec<String>) {
    let broker = KafkaBroker::new(KafkaOptions {
        bootstrap_servers: brokers.to_owned(),
        delivery_timeout: Duration::from_secs(5),
        properties: Default::default(),
        group_instance_id: None,
        assign_all_partitions: false,
    })
    .expect("kafka client");
    let group = format!("chaos-check-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = broker.consumer(&group, &[EVENTS]).expect("consumer");
    let expected: HashSet<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut first_order: HashMap<String, Vec<String>> = HashMap::new();
    let mut redelivered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while expected.iter().any(|e| !seen.contains(*e)) && tokio::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                eprintln!("chaos check: consumer error (retrying): {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Ok(d)) => d,
        };
        let id = delivery
            .message
            .headers
            .iter()
            .find(|(name, _)| name == oms_messaging::event::headers::ID)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        if seen.insert(id.clone()) {
            first_order
                .entry(delivery.message.key.clone())
                .or_default()
                .push(id);
        } else {
            redelivered += 1;
        }
    }
    let mut v = Vec::new();
    let missing = expected.iter().filter(|e| !seen.contains(**e)).count();
    if missing > 0 {
        v.push(format!(
            "{missing} of {} events never reached the broker",
            expected.len()
        ));
    }
    let mut written: HashMap<&str, Vec<&str>> = HashMap::new();
    for (order, event) in events {
        written
            .entry(order.as_str())
            .or_default()
            .push(event.as_str());
    }
    for (order, ids) in &written {
        let on_broker: Vec<&str> = first_order
            .get(*order)
            .map(|ids| ids.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if missing == 0 && &on_broker != ids {
            v.push(format!(
                "order {order}: events on the broker in order {on_broker:?}, written {ids:?}"
            ));
        }
    }
    (redelivered, v)
}
