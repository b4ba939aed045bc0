//! The notification consumer with real databases and the in-process broker: dedup across
//! redeliveries, poison events to the dead-letter topic (webhooks: `webhooks.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use oms_messaging::broker::{Broker, InProcessBroker, Topics};
use oms_messaging::event::{headers, pb};
use oms_messaging::notifications::{
    Channel, ChannelKind, FileSink, FormatFailure, Formatter, Handled, Notification,
    NotificationConfig, NotificationService,
};
use oms_messaging::relay::{Relay, RelayConfig};
use oms_persistence::testing::TestBackend;

/// One e-mail per event; "crashes" (like a trapping plugin) on events of one order.
struct TestFormatter {
    crash_on_order: Option<String>,
    calls: AtomicUsize,
}

#[async_trait]
impl Formatter for TestFormatter {
    fn name(&self) -> &str {
        "test-email"
    }

    async fn format(&self, event: &pb::OrderEvent) -> Result<Vec<Notification>, FormatFailure> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.crash_on_order.as_deref() == Some(event.order_id.as_str()) {
            return Err(FormatFailure::Crashed("trapped: unreachable".into()));
        }
        Ok(vec![Notification {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            formatter: "test-email".into(),
            channel: ChannelKind::Email,
            recipient: format!("{}@example.test", event.order.as_ref().unwrap().customer_id),
            subject: Some(event.event_type.clone()),
            body: format!(
                "order {} is now version {}",
                event.order_id,
                event.order.as_ref().unwrap().version
            ),
            content_type: "text/plain".into(),
        }])
    }
}

/// Writes `orders` orders with `updates` updates each (`concurrency` at a time) and relays all
/// their events to `broker` on the default topics; returns the orders' ids.
async fn relayed_orders(
    db: &oms_persistence::Database,
    broker: &InProcessBroker,
    orders: usize,
    updates: usize,
    concurrency: usize,
) -> Vec<oms_domain::OrderId> {
    let relay = Relay::new(
        db.outbox(),
        broker.publisher_arc(),
        Topics::default(),
        RelayConfig::default(),
    );
    let ids = write_orders(&service(db), orders, updates, concurrency).await;
    while relay.run_once().await.unwrap().claimed > 0 {}
    ids
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn redeliveries_notify_once_and_poison_goes_to_the_dlq(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let ids = relayed_orders(&db, &broker, 5, 1, 2).await; // 10 events
    let poison_order = ids[0].to_string();
    // The relay publishes everything a second time (as after a crash mid-batch): the same
    // events, duplicated on the topic.
    let again = broker.messages(&topics.events);
    assert_eq!(again.len(), 10);
    use oms_messaging::broker::Publisher;
    broker.publish(again).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let formatter = Arc::new(TestFormatter {
        crash_on_order: Some(poison_order.clone()),
        calls: AtomicUsize::new(0),
    });
    let config = NotificationConfig {
        dead_letter_topic: topics.notification_dead_letters.clone(),
        ..NotificationConfig::default()
    };
    let service = NotificationService::new(
        db.processed_events(),
        config.clone(),
        vec![formatter.clone()],
        vec![Arc::new(FileSink::new(Some(out.clone()))) as Arc<dyn Channel>],
        broker.publisher_arc(),
    );

    // Process half of the 20 deliveries by hand and "crash" without committing.
    let mut consumer = broker
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    for _ in 0..7 {
        let d = consumer.recv().await.unwrap();
        service.handle(&d).await.unwrap();
    }
    drop(consumer);

    // A fresh consumer of the group gets everything again and runs until the end.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = broker
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    let worker = tokio::spawn(service.clone().run(consumer, stop_rx));
    let metrics = service.metrics();
    eventually(
        Duration::from_secs(20),
        "all deliveries handled",
        || async {
            let m = &metrics;
            m.processed.load(Ordering::Relaxed)
                + m.duplicates.load(Ordering::Relaxed)
                + m.dead_lettered.load(Ordering::Relaxed)
                >= 20 + 7 // every delivery of the run, plus the 7 handled before the crash
        },
    )
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();

    // 8 good events, one notification each despite 2-3 deliveries of each.
    let written = lines(&out);
    let mut event_ids: Vec<_> = written
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(written.len(), 8, "{written:#?}");
    assert_eq!(event_ids.len(), 8);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM processed_events").await,
        8
    );
    // The poison order's 2 events, each delivered twice, went to the DLQ (never blocking).
    let dlq = broker.messages(&topics.notification_dead_letters);
    assert!(dlq.len() >= 2, "{}", dlq.len());
    assert!(dlq.iter().all(|m| m.key == poison_order));
    assert!(dlq[0].header(headers::ERROR).unwrap().contains("trapped"));
    assert!(
        dlq[0]
            .header(headers::ORIGIN)
            .unwrap()
            .starts_with(&topics.events)
    );
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn redeliveries_notify_once_and_poison_goes_to_the_dlq_postgres() {
    redeliveries_notify_once_and_poison_goes_to_the_dlq(TestBackend::Postgres).await;
}

#[tokio::test]
async fn redeliveries_notify_once_and_poison_goes_to_the_dlq_sqlite() {
    redeliveries_notify_once_and_poison_goes_to_the_dlq(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn undecodable_messages_are_poison() {
    let (test_db, db) = database(TestBackend::Sqlite).await;
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let service = NotificationService::new(
        db.processed_events(),
        NotificationConfig::default(),
        vec![],
        vec![],
        broker.publisher_arc(),
    );
    let d = oms_messaging::broker::Delivery {
        message: oms_messaging::broker::Message {
            topic: topics.events.clone(),
            key: "k".into(),
            payload: b"not protobuf \xff\xff".to_vec(),
            headers: vec![],
        },
        partition: 0,
        offset: 41,
    };
    let handled = service.handle(&d).await.unwrap();
    assert!(matches!(handled, Handled::DeadLettered(_)), "{handled:?}");
    assert_eq!(broker.messages(&topics.notification_dead_letters).len(), 1);
    drop(db);
    test_db.cleanup().await.unwrap();
}

/// One batch holding the same event twice (a relay's republish), then a batch repeating
/// events of the first: each event is formatted and delivered once, recorded once, and every
/// other copy is a duplicate.
async fn batches_deduplicate_within_and_across(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    relayed_orders(&db, &broker, 3, 0, 1).await; // 3 events
    let msgs = broker.messages(&topics.events);
    assert_eq!(msgs.len(), 3);
    let delivery = |n: usize, offset: i64| oms_messaging::broker::Delivery {
        message: msgs[n].clone(),
        partition: 0,
        offset,
    };
    let formatter = Arc::new(TestFormatter {
        crash_on_order: None,
        calls: AtomicUsize::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let service = NotificationService::new(
        db.processed_events(),
        NotificationConfig::default(),
        vec![formatter.clone()],
        vec![Arc::new(FileSink::new(Some(out.clone()))) as Arc<dyn Channel>],
        broker.publisher_arc(),
    );

    let (first, error) = service
        .handle_batch(&[delivery(0, 0), delivery(1, 1), delivery(0, 2)])
        .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        first,
        vec![
            Handled::Processed(1),
            Handled::Processed(1),
            Handled::Duplicate
        ]
    );
    let (second, error) = service
        .handle_batch(&[delivery(1, 3), delivery(2, 4), delivery(0, 5)])
        .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        second,
        vec![
            Handled::Duplicate,
            Handled::Processed(1),
            Handled::Duplicate
        ]
    );
    assert_eq!(formatter.calls.load(Ordering::Relaxed), 3);
    assert_eq!(lines(&out).len(), 3);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM processed_events").await,
        3
    );
    let m = service.metrics();
    assert_eq!(m.processed.load(Ordering::Relaxed), 3);
    assert_eq!(m.duplicates.load(Ordering::Relaxed), 3);
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn batches_deduplicate_within_and_across_postgres() {
    batches_deduplicate_within_and_across(TestBackend::Postgres).await;
}

#[tokio::test]
async fn batches_deduplicate_within_and_across_sqlite() {
    batches_deduplicate_within_and_across(TestBackend::Sqlite).await;
}

/// The real processed-events store, observed: its first `failures` reads fail as a database
/// that is down does ([`a_database_outage_never_dead_letters_an_event`]), and it logs how
/// many events each record holds ([`a_trickle_of_events_is_recorded_in_one_batch`]).
struct Observed {
    store: Arc<dyn oms_application::ports::ProcessedEventStore>,
    failures: AtomicUsize,
    records: std::sync::Mutex<Vec<usize>>,
}

impl Observed {
    fn new(store: Arc<dyn oms_application::ports::ProcessedEventStore>, failures: usize) -> Self {
        Self {
            store,
            failures: AtomicUsize::new(failures),
            records: std::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl oms_application::ports::ProcessedEventStore for Observed {
    async fn processed_among(
        &self,
        consumer: &str,
        event_ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, oms_application::ports::StoreError> {
        let left = self.failures.load(Ordering::Relaxed);
        if left > 0 {
            self.failures.store(left - 1, Ordering::Relaxed);
            return Err(oms_application::ports::StoreError::Unavailable(
                "connection refused".into(),
            ));
        }
        self.store.processed_among(consumer, event_ids).await
    }

    async fn record_all(
        &self,
        consumer: &str,
        event_ids: &[uuid::Uuid],
        now: oms_domain::Timestamp,
    ) -> Result<(), oms_application::ports::StoreError> {
        self.records.lock().unwrap().push(event_ids.len());
        self.store.record_all(consumer, event_ids, now).await
    }
}

/// Regression (found by the fault-injection harness): while the database was down, each
/// event's failures counted toward `max_attempts` and the event was dead-lettered after ~2 s,
/// so a short outage sent healthy events to the dead-letter topic, never to be applied. The
/// consumer now waits the outage out: every event is applied, none dead-lettered.
#[tokio::test]
async fn a_database_outage_never_dead_letters_an_event() {
    let (test_db, db) = database(TestBackend::Sqlite).await;
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    relayed_orders(&db, &broker, 2, 1, 2).await; // 4 events
    let config = NotificationConfig {
        dead_letter_topic: topics.notification_dead_letters.clone(),
        // Three times the attempts that dead-letter a failing event, quickly.
        max_attempts: 3,
        backoff: oms_application::retry::RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        ..NotificationConfig::default()
    };
    let store = Arc::new(Observed::new(db.processed_events(), 9));
    let service = NotificationService::new(
        store.clone(),
        config.clone(),
        vec![Arc::new(TestFormatter {
            crash_on_order: None,
            calls: AtomicUsize::new(0),
        })],
        vec![Arc::new(FileSink::new(None)) as Arc<dyn Channel>],
        broker.publisher_arc(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = broker
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    let worker = tokio::spawn(service.clone().run(consumer, stop_rx));
    let metrics = service.metrics();
    eventually(Duration::from_secs(20), "all events applied", || async {
        metrics.processed.load(Ordering::Relaxed) + metrics.dead_lettered.load(Ordering::Relaxed)
            >= 4
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap();
    assert_eq!(
        store.failures.load(Ordering::Relaxed),
        0,
        "the outage happened"
    );
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.processed.load(Ordering::Relaxed), 4);
    assert!(
        broker
            .messages(&topics.notification_dead_letters)
            .is_empty()
    );
    drop(db);
    test_db.cleanup().await.unwrap();
}

/// Passes deliveries through and says when one has been received.
struct Announcing {
    inner: Box<dyn oms_messaging::broker::Consumer>,
    received: tokio::sync::mpsc::UnboundedSender<()>,
}

#[async_trait]
impl oms_messaging::broker::Consumer for Announcing {
    async fn recv(
        &mut self,
    ) -> Result<oms_messaging::broker::Delivery, oms_messaging::BrokerError> {
        let delivery = self.inner.recv().await?;
        let _ = self.received.send(());
        Ok(delivery)
    }

    async fn commit(
        &mut self,
        delivery: &oms_messaging::broker::Delivery,
    ) -> Result<(), oms_messaging::BrokerError> {
        self.inner.commit(delivery).await
    }
}

/// A trickle of events (one order at a time) is recorded in batches, not one flushed commit
/// per event: once a batch's first event has arrived, the consumer waits up to
/// `batch_linger` for more. Here the second and third events are published only after the
/// first was received, and the three are still recorded together; and a batch that fills
/// goes at once: the 5 s wait for it is shorter than its linger (10 s).
#[tokio::test]
async fn a_trickle_of_events_is_recorded_in_one_batch() {
    let (test_db, db) = database(TestBackend::Sqlite).await;
    let source = InProcessBroker::default();
    let topics = Topics::default();
    relayed_orders(&db, &source, 3, 0, 1).await; // 3 events
    let mut events = source.messages(&topics.events).into_iter();
    assert_eq!(events.len(), 3);

    let broker = InProcessBroker::default();
    use oms_messaging::broker::Publisher;
    broker.publish(vec![events.next().unwrap()]).await;
    let store = Arc::new(Observed::new(db.processed_events(), 0));
    let config = NotificationConfig {
        dead_letter_topic: topics.notification_dead_letters.clone(),
        batch_size: 3,
        batch_linger: Duration::from_secs(10),
        ..NotificationConfig::default()
    };
    let service = NotificationService::new(
        store.clone(),
        config.clone(),
        vec![Arc::new(TestFormatter {
            crash_on_order: None,
            calls: AtomicUsize::new(0),
        })],
        vec![Arc::new(FileSink::new(None)) as Arc<dyn Channel>],
        broker.publisher_arc(),
    );
    let (received, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Box::new(Announcing {
        inner: broker
            .consumer(&config.consumer, &[topics.events.as_str()])
            .unwrap(),
        received,
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(service.clone().run(consumer, stop_rx));
    receipts.recv().await.unwrap();
    broker.publish(events.collect()).await;
    let metrics = service.metrics();
    eventually(Duration::from_secs(5), "three events processed", || async {
        metrics.processed.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(*store.records.lock().unwrap(), vec![3]);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .unwrap()
        .unwrap();
    db.close().await;
    test_db.cleanup().await.unwrap();
}
