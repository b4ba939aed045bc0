//! The relay against real databases (PostgreSQL and SQLite) and the in-process broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use oms_application::AppError;
use oms_application::retry::RetryPolicy;
use oms_domain::{OrderId, Timestamp, Version};
use oms_messaging::broker::{InProcessBroker, Publisher, Topics};
use oms_messaging::event::headers;
use oms_messaging::relay::{Relay, RelayConfig};
use oms_persistence::testing::TestBackend;

fn fast_config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        max_attempts: 3,
        backoff: RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

/// Runs rounds until a round claims nothing that is due (retries are a few ms apart here).
async fn drain(relay: &Relay, db: &oms_persistence::Database) {
    eventually(Duration::from_secs(20), "outbox drained", || async {
        relay.run_once().await.unwrap();
        unpublished(db).await == 0
    })
    .await;
}

/// A relay of `db`'s outbox to an in-process broker with the default topics.
fn in_process_relay(db: &oms_persistence::Database) -> (InProcessBroker, Topics, Relay) {
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let relay = Relay::new(
        db.outbox(),
        broker.publisher_arc(),
        topics.clone(),
        fast_config(),
    );
    (broker, topics, relay)
}

async fn every_change_is_relayed_once_in_order(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let (broker, topics, relay) = in_process_relay(&db);

    let order = svc.create_order(new_order("cust-1"), None).await.unwrap();
    let v1 = order.version();
    let order = svc
        .update_shipping_address(order.id(), address("Paris"), v1, None)
        .await
        .unwrap();
    // A stale version: the transaction fails and must leave no event behind.
    let stale = svc
        .update_shipping_address(order.id(), address("Rome"), v1, None)
        .await;
    assert!(
        matches!(stale, Err(AppError::VersionConflict { .. })),
        "{stale:?}"
    );
    svc.cancel_order(order.id(), String::new(), None, None)
        .await
        .unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox").await, 3);

    drain(&relay, &db).await;
    let msgs = broker.messages(&topics.events);
    let seen: Vec<_> = msgs.iter().map(type_and_version).collect();
    assert_eq!(
        seen,
        vec![
            ("OrderCreated".to_owned(), 1),
            ("OrderShippingAddressUpdated".to_owned(), 2),
            ("OrderCancelled".to_owned(), 3),
        ]
    );
    let first = &msgs[0];
    assert_eq!(first.key, order.id().to_string());
    assert_eq!(first.header(headers::TYPE), Some("OrderCreated"));
    assert_eq!(first.header(headers::SPEC_VERSION), Some("1.0"));
    assert_eq!(first.header(headers::SCHEMA_VERSION), Some("1"));
    let event = oms_messaging::event::decode(&first.payload).unwrap();
    assert_eq!(first.header(headers::ID), Some(event.event_id.as_str()));
    // Published rows are not published again.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
    assert_eq!(broker.messages(&topics.events).len(), 3);
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn every_change_is_relayed_once_in_order_postgres() {
    every_change_is_relayed_once_in_order(TestBackend::Postgres).await;
}

#[tokio::test]
async fn every_change_is_relayed_once_in_order_sqlite() {
    every_change_is_relayed_once_in_order(TestBackend::Sqlite).await;
}

/// A change of the plugin set goes to its own topic, keyed by the plugin name, as a
/// `PluginChanged`; the order events beside it stay on theirs.
async fn plugin_changes_go_to_their_topic_keyed_by_name(backend: TestBackend) {
    use oms_application::ports::{NewRelease, ReleaseAction};

    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let (broker, topics, relay) = in_process_relay(&db);
    let release = |version: &'static str, sha256: &'static str, action| NewRelease {
        name: "fakepay",
        manifest: "name = \"fakepay\"",
        sha256,
        version,
        wasm: b"component",
        action,
        actor: "admin@127.0.0.1:5000",
    };
    let plugins = db.plugin_releases();
    plugins
        .release(
            release("1.0.0", "aa", ReleaseAction::Seed),
            Timestamp::now(),
        )
        .await
        .unwrap()
        .unwrap();
    let order = svc.create_order(new_order("cust-pl"), None).await.unwrap();
    plugins
        .release(
            release("1.1.0", "bb", ReleaseAction::Upload),
            Timestamp::now(),
        )
        .await
        .unwrap()
        .unwrap();

    drain(&relay, &db).await;
    let changes = broker.messages(&topics.plugin_changes);
    assert_eq!(changes.len(), 2);
    let events: Vec<_> = changes
        .iter()
        .map(|m| oms_messaging::event::decode_plugin_changed(&m.payload).unwrap())
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.action.as_str(), e.to.as_ref().unwrap().version.as_str()))
            .collect::<Vec<_>>(),
        [("seed", "1.0.0"), ("upload", "1.1.0")]
    );
    assert_eq!(events[1].from.as_ref().unwrap().sha256, "aa");
    assert_eq!(events[1].actor, "admin@127.0.0.1:5000");
    for (m, e) in changes.iter().zip(&events) {
        assert_eq!(m.key, "fakepay");
        assert_eq!(m.header(headers::SUBJECT), Some("fakepay"));
        assert_eq!(m.header(headers::TYPE), Some("PluginChanged"));
        assert_eq!(m.header(headers::ID), Some(e.event_id.as_str()));
    }
    let order_events = broker.messages(&topics.events);
    assert_eq!(order_events.len(), 1);
    assert_eq!(order_events[0].key, order.id().to_string());
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn plugin_changes_go_to_their_topic_keyed_by_name_postgres() {
    plugin_changes_go_to_their_topic_keyed_by_name(TestBackend::Postgres).await;
}

#[tokio::test]
async fn plugin_changes_go_to_their_topic_keyed_by_name_sqlite() {
    plugin_changes_go_to_their_topic_keyed_by_name(TestBackend::Sqlite).await;
}

async fn poison_row_blocks_its_order_then_dead_letters_and_redrives(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let broker = InProcessBroker::default();
    let flaky = FlakyPublisher::new(broker.publisher_arc());
    let topics = Topics::default();
    let publisher: Arc<dyn Publisher> = flaky.clone();
    let relay = Relay::new(db.outbox(), publisher, topics.clone(), fast_config());
    let operations = outbox_operations(&db, &relay);

    let order = svc.create_order(new_order("cust-p"), None).await.unwrap();
    let other = svc.create_order(new_order("cust-q"), None).await.unwrap();
    let poison_id = scalar_text(&db, "SELECT event_id FROM outbox ORDER BY id LIMIT 1").await;
    flaky.fail(&poison_id, u32::MAX);
    svc.update_shipping_address(order.id(), address("Oslo"), order.version(), None)
        .await
        .unwrap();

    // Round 1: the other order goes through; the poison row fails and its order's second
    // event is not even claimed (it waits behind the failed one).
    let r = relay.run_once().await.unwrap();
    assert_eq!((r.claimed, r.published, r.retried), (2, 1, 1));
    assert!(
        broker
            .messages(&topics.events)
            .iter()
            .all(|m| m.key == other.id().to_string())
    );

    drain(&relay, &db).await;
    // Dead-lettered after max_attempts, and then the blocked event went out.
    let dead = operations.dead_letters(false, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id.to_string(), poison_id);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].last_error.contains("injected failure"),
        "{}",
        dead[0].last_error
    );
    let dlq = broker.messages(&topics.dead_letters);
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(headers::ID), Some(poison_id.as_str()));
    assert!(
        dlq[0]
            .header(headers::ERROR)
            .unwrap()
            .contains("injected failure")
    );
    let keyed: Vec<_> = broker
        .messages(&topics.events)
        .into_iter()
        .filter(|m| m.key == order.id().to_string())
        .map(|m| type_and_version(&m))
        .collect();
    assert_eq!(keyed, vec![("OrderShippingAddressUpdated".to_owned(), 2)]);
    assert_eq!(relay.backlog().await.unwrap().dead_letters, 1);

    // Redrive once the cause is fixed: delivered exactly once more, and not redriven twice.
    flaky.heal();
    assert!(operations.redrive(dead[0].id).await.unwrap());
    assert!(!operations.redrive(dead[0].id).await.unwrap());
    drain(&relay, &db).await;
    let copies = broker
        .messages(&topics.events)
        .iter()
        .filter(|m| m.header(headers::ID) == Some(poison_id.as_str()))
        .count();
    assert_eq!(copies, 1);
    assert!(operations.dead_letters(false, 10).await.unwrap().is_empty());
    assert_eq!(operations.dead_letters(true, 10).await.unwrap().len(), 1);
    assert_eq!(relay.backlog().await.unwrap().dead_letters, 0);
    assert!(
        matches!(
            operations.redrive(123_456).await,
            Err(AppError::NotFound(_))
        ),
        "unknown ids are NOT_FOUND"
    );
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn poison_row_blocks_its_order_then_dead_letters_and_redrives_postgres() {
    poison_row_blocks_its_order_then_dead_letters_and_redrives(TestBackend::Postgres).await;
}

#[tokio::test]
async fn poison_row_blocks_its_order_then_dead_letters_and_redrives_sqlite() {
    poison_row_blocks_its_order_then_dead_letters_and_redrives(TestBackend::Sqlite).await;
}

async fn scalar_text(db: &oms_persistence::Database, sql: &str) -> String {
    match db.postgres() {
        Some(pool) => {
            let id: uuid::Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .unwrap();
            id.to_string()
        }
        None => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&db.sqlite().unwrap().reader)
            .await
            .unwrap(),
    }
}

async fn the_worker_wakes_on_commit_and_prunes(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let config = RelayConfig {
        // Polling alone would take an hour: only the wake signal can explain a fast publish.
        poll_interval: Duration::from_secs(3600),
        retention: Duration::ZERO,
        housekeeping_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let relay = Relay::new(db.outbox(), broker.publisher_arc(), topics.clone(), config);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(relay.clone().run(stop_rx));
    // Two rounds, each started by a commit's wake-up: polling alone would take an hour.
    for n in 1..=2 {
        let order = svc.create_order(new_order("cust-w"), None).await.unwrap();
        relay.wake();
        eventually(
            Duration::from_secs(10),
            "event relayed after wake",
            || async { broker.messages(&topics.events).len() == n },
        )
        .await;
        assert!(
            broker
                .messages(&topics.events)
                .iter()
                .any(|m| m.key == order.id().to_string())
        );
    }
    eventually(Duration::from_secs(10), "rows marked published", || async {
        unpublished(&db).await == 0
    })
    .await;
    // Retention zero: the published rows are pruned.
    assert_eq!(relay.prune().await.unwrap(), 2);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox").await, 0);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn the_worker_wakes_on_commit_and_prunes_postgres() {
    the_worker_wakes_on_commit_and_prunes(TestBackend::Postgres).await;
}

#[tokio::test]
async fn the_worker_wakes_on_commit_and_prunes_sqlite() {
    the_worker_wakes_on_commit_and_prunes(TestBackend::Sqlite).await;
}

async fn next_hint(
    hints: &mut tokio::sync::mpsc::UnboundedReceiver<(OrderId, Version)>,
) -> (OrderId, Version) {
    tokio::time::timeout(Duration::from_secs(10), hints.recv())
        .await
        .expect("a hint in time")
        .expect("listener running")
}

/// PostgreSQL only: the relay's commits that mark rows published tell every process which
/// order versions were published (the hint `WatchOrder` streams of other processes wake on),
/// both when a round marks them in the next claim (`run`) and when it marks them at once
/// (`run_once`). Order transactions notify nothing (migration 0007).
#[tokio::test]
async fn postgres_marking_published_notifies_other_processes() {
    let (test_db, db) = database(TestBackend::Postgres).await;
    let svc = service(&db);
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let (hints_tx, mut hints) = tokio::sync::mpsc::unbounded_channel();
    let on_change: Arc<dyn Fn(OrderId, Version) + Send + Sync> = Arc::new(move |id, version| {
        let _ = hints_tx.send((id, version));
    });
    let (stop_listener, listening) = tokio::sync::watch::channel(false);
    let outbox = db.outbox();
    let listener = tokio::spawn(async move { outbox.watch_published(on_change, listening).await });
    eventually(Duration::from_secs(10), "listener connected", || async {
        scalar(
            &db,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
        )
        .await
            > 0
    })
    .await;

    // Marked by the claim of the round after the publish (the relay's own loop).
    let config = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        mark_delay: Duration::from_millis(10),
        ..fast_config()
    };
    let first = svc.create_order(new_order("cust-n"), None).await.unwrap();
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM pg_trigger WHERE tgname = 'outbox_notify'"
        )
        .await,
        0,
        "order commits must not notify"
    );
    let relay = Relay::new(db.outbox(), broker.publisher_arc(), topics.clone(), config);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(relay.run(stop_rx));
    assert_eq!(next_hint(&mut hints).await, (first.id(), Version(1)));
    assert_eq!(unpublished(&db).await, 0);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();

    // Marked at once (`run_once`), for an order at version 2.
    let second = order_with_events(&svc, "cust-m", 1).await;
    let relay = Relay::new(db.outbox(), broker.publisher_arc(), topics, fast_config());
    while relay.run_once().await.unwrap().claimed > 0 {}
    let mut got = vec![next_hint(&mut hints).await, next_hint(&mut hints).await];
    got.sort_by_key(|(_, v)| *v);
    assert_eq!(
        got,
        vec![(second.id(), Version(1)), (second.id(), Version(2))]
    );
    stop_listener.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .unwrap()
        .unwrap();
    drop(db);
    test_db.cleanup().await.unwrap();
}

/// The claim that marks the previous round's rows published treats them as published
/// already: their orders' next rows are claimed in the same call, and they are not leased
/// again.
async fn a_claim_marks_the_previous_round_and_claims_the_next_rows(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    let svc = service(&db);
    let order = order_with_events(&svc, "cust-c", 1).await;
    let outbox = db.outbox();
    let now = Timestamp::now();
    let lease = now.saturating_add(Duration::from_secs(60));
    let first = outbox.claim(&[], now, now, lease, 10).await.unwrap();
    assert_eq!(first.len(), 1, "the order's second row waits for its first");
    assert_eq!(first[0].aggregate_id, order.id().as_uuid());
    let second = outbox
        .claim(&[first[0].id], now, now, lease, 10)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].id > first[0].id);
    assert_eq!(unpublished(&db).await, 1);
    let third = outbox
        .claim(&[second[0].id], now, now, lease, 10)
        .await
        .unwrap();
    assert!(third.is_empty(), "{third:?}");
    assert_eq!(unpublished(&db).await, 0);
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_claim_marks_the_previous_round_and_claims_the_next_rows_postgres() {
    a_claim_marks_the_previous_round_and_claims_the_next_rows(TestBackend::Postgres).await;
}

#[tokio::test]
async fn a_claim_marks_the_previous_round_and_claims_the_next_rows_sqlite() {
    a_claim_marks_the_previous_round_and_claims_the_next_rows(TestBackend::Sqlite).await;
}
