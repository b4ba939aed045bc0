//! The relay and the notification consumer against a real Kafka-protocol broker (tansu).
//! Skipped, loudly, when `KAFKA_TEST_BROKERS` is not set; CI always sets it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::kafka::{Tansu, brokers, consume, create_topics, kafka, unique_topics};
use common::*;
use oms_application::retry::RetryPolicy;
use oms_messaging::broker::{Broker, Publisher};
use oms_messaging::event::headers;
use oms_messaging::relay::{Relay, RelayConfig};
use oms_persistence::testing::TestBackend;

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 500,
        max_attempts: 3,
        backoff: RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(200),
        },
        poll_interval: Duration::from_millis(100),
        housekeeping_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

/// Per key, the order versions must be exactly 1..=n in order: none missing, none reordered.
fn assert_per_order_sequences(msgs: &[oms_messaging::broker::Delivery], per_order: i64) {
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for d in msgs {
        let (_, v) = type_and_version(&d.message);
        by_key.entry(d.message.key.clone()).or_default().push(v);
    }
    for (key, versions) in &by_key {
        let expected: Vec<i64> = (1..=per_order).collect();
        assert_eq!(versions, &expected, "order {key}");
    }
}

async fn ten_thousand_events_arrive_complete_and_in_order(backend: TestBackend) {
    let Some(brokers) = brokers("ten_thousand_events_arrive_complete_and_in_order") else {
        return;
    };
    let topics = unique_topics();
    create_topics(&brokers, &topics, 3).await;
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    // 500 orders x 20 events = 10,000 events, written 8 orders at a time.
    let ids = write_orders(&svc, 500, 19, 8).await;
    assert_eq!(ids.len(), 500);
    assert_eq!(unpublished(&db).await, 10_000);

    let relay = Relay::new(
        db.outbox(),
        kafka(&brokers).publisher().unwrap(),
        topics.clone(),
        config(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(relay.clone().run(stop_rx));
    eventually(
        Duration::from_secs(180),
        "10,000 events published",
        || async { unpublished(&db).await == 0 },
    )
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap();

    let msgs = consume(&brokers, &topics.events, 10_000, Duration::from_secs(120)).await;
    let mut ids: Vec<_> = msgs
        .iter()
        .map(|d| d.message.header(headers::ID).unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        10_000,
        "every event exactly once (no relay crash here)"
    );
    assert_per_order_sequences(&msgs, 20);
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_complete_and_in_order_postgres() {
    ten_thousand_events_arrive_complete_and_in_order(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_complete_and_in_order_sqlite() {
    ten_thousand_events_arrive_complete_and_in_order(TestBackend::Sqlite).await;
}

async fn broker_outage_keeps_writes_and_drains_after_restart(backend: TestBackend) {
    let Some(_) = brokers("broker_outage_keeps_writes_and_drains_after_restart") else {
        return;
    };
    let Some(mut tansu) = Tansu::start("broker_outage").await else {
        return;
    };
    let addr = tansu.address();
    let topics = unique_topics();
    create_topics(&addr, &topics, 3).await;
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let relay = Relay::new(
        db.outbox(),
        kafka(&addr).publisher().unwrap(),
        topics.clone(),
        config(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(relay.clone().run(stop_rx));

    write_orders(&svc, 20, 0, 4).await;
    eprintln!("outage: 20 orders written");
    eventually(
        Duration::from_secs(60),
        "first events published",
        || async { unpublished(&db).await == 0 },
    )
    .await;

    eprintln!("outage: first events published; stopping the broker");
    tansu.stop();
    // Orders keep being accepted while the broker is down.
    let during = write_orders(&svc, 100, 1, 4).await;
    assert_eq!(during.len(), 100);
    eprintln!("outage: 100 orders written while the broker is down");
    eventually(
        Duration::from_secs(60),
        "relay notices the outage",
        || async { scalar(&db, "SELECT COUNT(*) FROM outbox WHERE attempts > 0").await > 0 },
    )
    .await;
    assert_eq!(
        unpublished(&db).await,
        200,
        "nothing published while the broker is down"
    );
    // Failures beyond max_attempts would dead-letter; the outage must not lose the rows.
    eprintln!("outage: relay saw failures; restarting the broker");
    tansu.restart().await;
    // Memory storage: the restarted broker starts empty.
    create_topics(&addr, &topics, 3).await;
    eprintln!("outage: broker back, topics recreated");
    let mut polls = 0u32;
    eventually(
        Duration::from_secs(180),
        "backlog drained after restart",
        || {
            polls += 1;
            let report = polls.is_multiple_of(25);
            let (relay, db) = (&relay, &db);
            async move {
                if let Err(e) = relay.run_once().await {
                    eprintln!("outage: round failed: {e}");
                }
                let left = unpublished(db).await;
                if report {
                    eprintln!(
                        "outage: {left} unpublished, error {:?}",
                        last_error(db).await
                    );
                }
                left == 0
            }
        },
    )
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap();
    let operations = outbox_operations(&db, &relay);
    let dead = operations.dead_letters(false, 1000).await.unwrap();
    for d in &dead {
        eprintln!(
            "dead-lettered during the outage: {} {}",
            d.event_id, d.last_error
        );
    }
    // Everything written during the outage reached the restarted broker (minus anything the
    // DLQ took, which redrive brings back).
    for d in &dead {
        operations.redrive(d.id).await.unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "redriven rows published",
        || async {
            relay.run_once().await.ok();
            unpublished(&db).await == 0
        },
    )
    .await;
    let msgs = consume(&addr, &topics.events, 200, Duration::from_secs(60)).await;
    let keys: std::collections::HashSet<_> = msgs.iter().map(|d| d.message.key.clone()).collect();
    for id in &during {
        assert!(
            keys.contains(&id.to_string()),
            "order {id} missing after restart"
        );
    }
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_writes_and_drains_after_restart_postgres() {
    broker_outage_keeps_writes_and_drains_after_restart(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_writes_and_drains_after_restart_sqlite() {
    broker_outage_keeps_writes_and_drains_after_restart(TestBackend::Sqlite).await;
}

async fn poison_row_dead_letters_to_kafka_and_redrive_delivers_once(backend: TestBackend) {
    let Some(brokers) = brokers("poison_row_dead_letters_to_kafka") else {
        return;
    };
    let topics = unique_topics();
    create_topics(&brokers, &topics, 3).await;
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let flaky = FlakyPublisher::new(kafka(&brokers).publisher().unwrap());
    let publisher: Arc<dyn Publisher> = flaky.clone();
    let relay = Relay::new(db.outbox(), publisher, topics.clone(), config());
    let order = order_with_events(&svc, "cust-poison", 2).await;
    let first = relay_first_event_id(&db).await;
    flaky.fail(&first, u32::MAX);
    eventually(
        Duration::from_secs(30),
        "poison dead-lettered and the rest published",
        || async {
            relay.run_once().await.unwrap();
            unpublished(&db).await == 0
        },
    )
    .await;
    let operations = outbox_operations(&db, &relay);
    let dead = operations.dead_letters(false, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    let dlq = consume(&brokers, &topics.dead_letters, 1, Duration::from_secs(30)).await;
    assert_eq!(dlq[0].message.header(headers::ID), Some(first.as_str()));
    assert_eq!(dlq[0].message.header(headers::ATTEMPTS), Some("3"));

    flaky.heal();
    assert!(operations.redrive(dead[0].id).await.unwrap());
    eventually(
        Duration::from_secs(30),
        "redriven row published",
        || async {
            relay.run_once().await.unwrap();
            unpublished(&db).await == 0
        },
    )
    .await;
    let msgs = consume(&brokers, &topics.events, 3, Duration::from_secs(30)).await;
    let copies = msgs
        .iter()
        .filter(|d| d.message.header(headers::ID) == Some(first.as_str()))
        .count();
    assert_eq!(copies, 1);
    assert!(msgs.iter().all(|d| d.message.key == order.id().to_string()));
    drop(db);
    test_db.cleanup().await.unwrap();
}

async fn last_error(db: &oms_persistence::Database) -> Option<String> {
    let sql = "SELECT last_error FROM outbox WHERE last_error IS NOT NULL LIMIT 1";
    match db.postgres() {
        Some(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await.unwrap(),
        None => sqlx::query_scalar(sql)
            .fetch_optional(&db.sqlite().unwrap().reader)
            .await
            .unwrap(),
    }
}

async fn relay_first_event_id(db: &oms_persistence::Database) -> String {
    match db.postgres() {
        Some(pool) => {
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM outbox ORDER BY id LIMIT 1")
                .fetch_one(pool)
                .await
                .unwrap()
                .to_string()
        }
        None => sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY id LIMIT 1")
            .fetch_one(&db.sqlite().unwrap().reader)
            .await
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_row_dead_letters_to_kafka_and_redrive_delivers_once_postgres() {
    poison_row_dead_letters_to_kafka_and_redrive_delivers_once(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_row_dead_letters_to_kafka_and_redrive_delivers_once_sqlite() {
    poison_row_dead_letters_to_kafka_and_redrive_delivers_once(TestBackend::Sqlite).await;
}

/// The notification consumer on a Kafka consumer group: each event notified once even when
/// the topic holds it twice, a crashing formatter's event goes to the DLQ, the rest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_consumer_on_kafka_dedups_and_dead_letters() {
    use oms_messaging::notifications::*;
    let Some(brokers) = brokers("notification_consumer_on_kafka") else {
        return;
    };
    let topics = unique_topics();
    create_topics(&brokers, &topics, 3).await;
    let (test_db, db) = database(TestBackend::Postgres).await;
    let svc = service(&db);
    let k = kafka(&brokers);
    let relay = Relay::new(
        db.outbox(),
        k.publisher().unwrap(),
        topics.clone(),
        config(),
    );
    let ids = write_orders(&svc, 6, 1, 3).await; // 12 events
    while relay.run_once().await.unwrap().claimed > 0 {}
    // Duplicate every event on the topic, as a relay crash after publishing would.
    let all = consume(&brokers, &topics.events, 12, Duration::from_secs(30)).await;
    let copies: Vec<_> = all.into_iter().map(|d| d.message).collect();
    assert!(
        k.publisher()
            .unwrap()
            .publish(copies)
            .await
            .iter()
            .all(Result::is_ok)
    );

    struct Crashy(String);
    #[async_trait::async_trait]
    impl Formatter for Crashy {
        fn name(&self) -> &str {
            "crashy"
        }
        async fn format(
            &self,
            e: &oms_messaging::event::pb::OrderEvent,
        ) -> Result<Vec<Notification>, FormatFailure> {
            if e.order_id == self.0 {
                return Err(FormatFailure::Crashed("trapped: wasm unreachable".into()));
            }
            Ok(vec![Notification {
                event_id: e.event_id.clone(),
                event_type: e.event_type.clone(),
                formatter: "crashy".into(),
                channel: ChannelKind::Email,
                recipient: "x@example.test".into(),
                subject: None,
                body: "hi".into(),
                content_type: "text/plain".into(),
            }])
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n.jsonl");
    let config = NotificationConfig {
        consumer: format!("notify-{}", uuid::Uuid::now_v7().simple()),
        dead_letter_topic: topics.notification_dead_letters.clone(),
        ..NotificationConfig::default()
    };
    let service = NotificationService::new(
        db.processed_events(),
        config.clone(),
        vec![Arc::new(Crashy(ids[0].to_string()))],
        vec![Arc::new(FileSink::new(Some(out.clone()))) as Arc<dyn Channel>],
        k.publisher().unwrap(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = k
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    let worker = tokio::spawn(service.clone().run(consumer, stop_rx));
    let m = service.metrics();
    eventually(Duration::from_secs(60), "24 deliveries handled", || async {
        m.processed.load(Ordering::Relaxed)
            + m.duplicates.load(Ordering::Relaxed)
            + m.dead_lettered.load(Ordering::Relaxed)
            >= 24
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap();
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(lines, 10, "10 good events, one notification each");
    assert_eq!(m.duplicates.load(Ordering::Relaxed), 10);
    let dlq = consume(
        &brokers,
        &topics.notification_dead_letters,
        4,
        Duration::from_secs(30),
    )
    .await;
    assert!(dlq.iter().all(|d| d.message.key == ids[0].to_string()));
    drop(db);
    test_db.cleanup().await.unwrap();
}
