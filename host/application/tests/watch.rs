//! WatchOrder from the change feed: an order this process commits is sent as committed,
//! without a read; a change committed elsewhere is read only when a hint names a version
//! newer than the one sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oms_application::changes::OrderChanges;
use oms_application::testing::{ManualClock, MemoryStore, sample_order};
use oms_application::{OrderService, ServiceConfig};
use oms_domain::{Order, OrderStatus, Timestamp, Version};

/// A service over `store` with its own change feed, as one host process; watchers never poll
/// (an hour), so only the feed can explain what they send.
fn process(store: &Arc<MemoryStore>) -> OrderService {
    OrderService::new(
        store.clone(),
        store.clone(),
        store.clone(),
        OrderChanges::default(),
        Arc::new(ManualClock::at(Timestamp::from_unix_millis(1_000_000))),
        ServiceConfig {
            watch_poll_interval: Duration::from_secs(3600),
            ..ServiceConfig::default()
        },
    )
}

async fn next(
    stream: &mut (impl futures::Stream<Item = Result<Order, oms_application::AppError>> + Unpin),
) -> Order {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an update in time")
        .expect("the stream goes on")
        .unwrap()
}

#[tokio::test]
async fn local_commits_are_sent_without_a_read() {
    let store = Arc::new(MemoryStore::default());
    let host = process(&store);
    // What a cancel reads by itself, nobody watching.
    let unwatched = host.create_order(sample_order(), None).await.unwrap();
    let before = store.order_reads();
    host.cancel_order(unwatched.id(), String::new(), None, None)
        .await
        .unwrap();
    let cancel_reads = store.order_reads() - before;

    let order = host.create_order(sample_order(), None).await.unwrap();
    let mut watch = Box::pin(host.watch_order(order.id()).await.unwrap());
    assert_eq!(next(&mut watch).await.version(), Version(1));
    let before = store.order_reads();
    host.cancel_order(order.id(), String::new(), None, None)
        .await
        .unwrap();
    let cancelled = next(&mut watch).await;
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert!(
        watch.next().await.is_none(),
        "a terminal order ends the stream"
    );
    assert_eq!(
        store.order_reads() - before,
        cancel_reads,
        "the watcher read the order again"
    );
}

#[tokio::test]
async fn changes_elsewhere_are_read_on_a_newer_hint_only() {
    let store = Arc::new(MemoryStore::default());
    let (here, elsewhere) = (process(&store), process(&store));
    let order = here.create_order(sample_order(), None).await.unwrap();
    let mut watch = Box::pin(here.watch_order(order.id()).await.unwrap());
    assert_eq!(next(&mut watch).await.version(), Version(1));
    let cancelled = elsewhere
        .cancel_order(order.id(), String::new(), None, None)
        .await
        .unwrap();
    let reads = store.order_reads();
    // A hint of the version already sent, then of another order: no read. Then the news.
    here.changes().hint(order.id(), Version(1));
    here.changes().hint(
        elsewhere
            .create_order(sample_order(), None)
            .await
            .unwrap()
            .id(),
        Version(9),
    );
    here.changes().hint(order.id(), cancelled.version());
    let seen = next(&mut watch).await;
    assert_eq!(seen.version(), cancelled.version());
    assert_eq!(seen.status(), OrderStatus::Cancelled);
    assert_eq!(
        store.order_reads() - reads,
        1,
        "one read, for the newer hint"
    );
}

#[tokio::test]
async fn a_watch_opens_with_one_read_and_refuses_an_unknown_order_at_once() {
    let store = Arc::new(MemoryStore::default());
    let host = process(&store);
    let order = host.create_order(sample_order(), None).await.unwrap();
    let before = store.order_reads();
    let mut watch = Box::pin(host.watch_order(order.id()).await.unwrap());
    assert_eq!(next(&mut watch).await.version(), Version(1));
    assert_eq!(
        store.order_reads() - before,
        1,
        "the read that found the order is the first update"
    );

    let unknown = oms_domain::OrderId::generate();
    assert!(matches!(
        host.watch_order(unknown).await.map(|_| ()),
        Err(oms_application::AppError::NotFound(_))
    ));
}
