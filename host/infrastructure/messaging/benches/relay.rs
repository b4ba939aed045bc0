//! Relay benchmark against a real Kafka-protocol broker (tansu) and PostgreSQL, next to a raw
//! rdkafka producer on the same broker in the same run.
//!
//! ```sh
//! eval "$(scripts/kafka-test-broker start)"
//! cargo bench -p oms-messaging --bench relay
//! scripts/kafka-test-broker stop
//! ```
//!
//! Env: KAFKA_TEST_BROKERS (required), BENCH_EVENTS (20000), BENCH_ORDERS (2000),
//! BENCH_BATCH (500), BENCH_RATE (2000 events/s), BENCH_SECS (10).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use oms_application::outbox::OutboxMessage;
use oms_domain::{
    Currency, CustomerId, LineItem, Money, NewOrder, Order, OrderId, PaymentMethod, Quantity,
    ShippingAddress, Sku, Timestamp, address::RawAddress,
};
use oms_messaging::broker::{Broker, KafkaBroker, KafkaOptions, Message, Topics};
use oms_messaging::relay::{Relay, RelayConfig};
use oms_persistence::testing::TestDatabase;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::PgPool;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sample_payload() -> serde_json::Value {
    let new = NewOrder::new(
        CustomerId::parse("bench-customer").unwrap(),
        vec![LineItem {
            sku: Sku::parse("SKU-1").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            unit_price: Money::new(1250, Currency::parse("EUR").unwrap()).unwrap(),
        }],
        PaymentMethod::parse("fakepay", "tok").unwrap(),
        ShippingAddress::parse(RawAddress {
            recipient: "Ada",
            line1: "1 Main St",
            city: "Berlin",
            postal_code: "10115",
            country: "DE",
            ..RawAddress::default()
        })
        .unwrap(),
    )
    .unwrap();
    let (order, event) = Order::place(
        new,
        OrderId::generate(),
        Timestamp::from_unix_millis(now_ms()),
    );
    serde_json::to_value(OutboxMessage::for_event(&order, &event).payload).unwrap()
}

/// Inserts `n` rows for `orders` orders (round robin) in one transaction per `chunk`.
async fn insert_rows(
    pool: &PgPool,
    orders: &[uuid::Uuid],
    n: usize,
    chunk: usize,
    payload: &serde_json::Value,
) {
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        let now = now_ms();
        let ids: Vec<uuid::Uuid> = (0..k).map(|_| uuid::Uuid::now_v7()).collect();
        let aggs: Vec<uuid::Uuid> = (0..k).map(|i| orders[(done + i) % orders.len()]).collect();
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
             occurred_at, created_at, next_attempt_at) \
             SELECT e, a, 'OrderCreated', 1, $3, $4, $4, $4 FROM UNNEST($1::uuid[], $2::uuid[]) AS t(e, a)",
        )
        .bind(&ids)
        .bind(&aggs)
        .bind(payload)
        .bind(now)
        .execute(pool)
        .await
        .unwrap();
        done += k;
    }
}

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(new.iter(), &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(brokers) = std::env::var("KAFKA_TEST_BROKERS") else {
        eprintln!("KAFKA_TEST_BROKERS is not set: start a broker with scripts/kafka-test-broker");
        return;
    };
    let events = env("BENCH_EVENTS", 20_000);
    let n_orders = env("BENCH_ORDERS", 2_000);
    let batch = env("BENCH_BATCH", 500) as u32;
    let rate = env("BENCH_RATE", 2_000);
    let secs = env("BENCH_SECS", 10);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let topics = Topics {
        events: format!("bench-events-{tag}"),
        plugin_changes: format!("bench-plugins-{tag}"),
        dead_letters: format!("bench-dlq-{tag}"),
        notification_dead_letters: format!("bench-ndlq-{tag}"),
    };
    let raw_topic = format!("bench-raw-{tag}");
    create_topics(
        &brokers,
        &[&topics.events, &topics.dead_letters, &raw_topic],
    )
    .await;
    let kafka = KafkaBroker::new(KafkaOptions {
        bootstrap_servers: brokers.clone(),
        delivery_timeout: Duration::from_secs(30),
        properties: Default::default(),
        ..KafkaOptions::default()
    })
    .unwrap();
    let publisher = kafka.publisher().unwrap();
    let payload = sample_payload();
    let encoded = oms_messaging::event::encode_payload(&payload).unwrap();
    println!(
        "event size: {} bytes protobuf ({} bytes JSON)",
        encoded.len(),
        payload.to_string().len()
    );

    // Warm-up: the first publish to a topic waits for its metadata and leader; keep that
    // out of every measurement.
    for topic in [&raw_topic, &topics.events] {
        let warm = Message {
            topic: topic.clone(),
            key: "warm-up".into(),
            payload: vec![],
            headers: vec![],
        };
        assert!(
            publisher
                .publish(vec![warm])
                .await
                .iter()
                .all(Result::is_ok)
        );
    }

    // 1. Raw producer: the same messages, no database.
    let msgs: Vec<Message> = (0..events)
        .map(|i| Message {
            topic: raw_topic.clone(),
            key: format!("order-{}", i % n_orders),
            payload: encoded.clone(),
            headers: vec![("ce_id".into(), i.to_string().into_bytes())],
        })
        .collect();
    let t = Instant::now();
    for chunk in msgs.chunks(batch as usize) {
        let r = publisher.publish(chunk.to_vec()).await;
        assert!(r.iter().all(Result::is_ok));
    }
    let raw_secs = t.elapsed().as_secs_f64();
    println!(
        "raw producer, batches of {batch} awaited in turn: {events} msgs in {raw_secs:.2}s = {:.0} msgs/s",
        events as f64 / raw_secs
    );
    let t = Instant::now();
    let r = publisher.publish(msgs.clone()).await;
    assert!(r.iter().all(Result::is_ok));
    let raw_all = t.elapsed().as_secs_f64();
    println!(
        "raw producer, all in flight at once: {events} msgs in {raw_all:.2}s = {:.0} msgs/s",
        events as f64 / raw_all
    );

    // Raw latency at the target rate: one message per tick, send -> ack.
    let mut lat = Vec::new();
    let total = rate * secs;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut pending = Vec::new();
    let start = Instant::now();
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let p = publisher.clone();
        let m = msgs[i % msgs.len()].clone();
        pending.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = p.publish(vec![m]).await;
            assert!(r[0].is_ok());
            t.elapsed().as_micros() as i64
        }));
    }
    for p in pending {
        lat.push(p.await.unwrap());
    }
    lat.sort_unstable();
    println!(
        "raw producer at {rate}/s for {secs}s: send->ack p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0
    );

    // 2. Relay throughput: a backlog of `events` rows drained by one relay.
    let test_db = TestDatabase::postgres().await.unwrap();
    let db = test_db.connect().await.unwrap();
    let pool = db.postgres().unwrap().clone();
    let orders: Vec<uuid::Uuid> = (0..n_orders).map(|_| uuid::Uuid::now_v7()).collect();
    insert_rows(&pool, &orders, events, 1_000, &payload).await;
    let config = RelayConfig {
        batch_size: batch,
        ..RelayConfig::default()
    };
    let relay = Relay::new(db.outbox(), publisher.clone(), topics.clone(), config);
    let t = Instant::now();
    let mut rounds = 0;
    while unpublished(&pool).await > 0 {
        relay.run_once().await.unwrap();
        rounds += 1;
    }
    let relay_secs = t.elapsed().as_secs_f64();
    println!(
        "relay backlog drain: {events} events over {n_orders} orders, batch {batch}: {relay_secs:.2}s = {:.0} events/s ({rounds} rounds)",
        events as f64 / relay_secs
    );
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();

    // 3. Commit-to-ack at the target rate: a writer commits rows (2 per ms tick) and wakes the
    // relay, as serve does after each commit; latency = published_at - created_at.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(relay.clone().run(stop_rx));
    let per_tick = (rate / 1000).max(1);
    let ticks = total / per_tick;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    for i in 0..ticks {
        interval.tick().await;
        insert_rows(
            &pool,
            &orders[(i * per_tick) % n_orders..],
            per_tick,
            per_tick,
            &payload,
        )
        .await;
        relay.wake();
    }
    let write_secs = t.elapsed().as_secs_f64();
    while unpublished(&pool).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap();
    let mut lags: Vec<i64> = sqlx::query_scalar("SELECT published_at - created_at FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    lags.sort_unstable();
    println!(
        "relay at {:.0} events/s offered ({} events): commit->ack p50 {} ms, p99 {} ms, max {} ms",
        lags.len() as f64 / write_secs,
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
    db.close().await;
    test_db.cleanup().await.unwrap();
}
