//! CreateOrder's idempotency through the service: the key's record is written by the create's
//! own commit, and a key that already has a record is answered by `begin`'s rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use oms_application::changes::OrderChanges;
use oms_application::clock::Clock;
use oms_application::error::AppError;
use oms_application::idempotency::{Fingerprint, IdempotencyRequest, IdempotencyScope};
use oms_application::ports::{BeginOutcome, IdempotencyStore, OrderQuery, OrderStore};
use oms_application::snapshot::OrderSnapshot;
use oms_application::testing::{ManualClock, MemoryStore, sample_order};
use oms_application::{OrderService, ServiceConfig};
use oms_domain::{IdempotencyKey, Order, Timestamp};

const METHOD: &str = "/oms.v1.OrderService/CreateOrder";

struct Rig {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    service: OrderService,
}

fn rig() -> Rig {
    let store = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::at(Timestamp::from_unix_millis(1_000_000)));
    let service = OrderService::new(
        store.clone(),
        store.clone(),
        store.clone(),
        OrderChanges::default(),
        clock.clone(),
        ServiceConfig::default(),
    );
    Rig {
        store,
        clock,
        service,
    }
}

fn keyed(key: &str, body: &[u8]) -> IdempotencyRequest {
    IdempotencyRequest {
        scope: IdempotencyScope {
            method: METHOD.to_owned(),
            caller: String::new(),
            key: IdempotencyKey::parse(key).unwrap(),
        },
        fingerprint: Fingerprint::of(METHOD, body),
    }
}

/// The response as a replay gives it (replays carry no payment token).
fn answered(order: &Order) -> OrderSnapshot {
    OrderSnapshot::from(order)
}

async fn order_count(store: &MemoryStore) -> usize {
    store
        .list(&OrderQuery {
            limit: 100,
            ..OrderQuery::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_create_records_its_key_and_a_repeat_replays_it() {
    let rig = rig();
    let first = rig
        .service
        .create_order(sample_order(), Some(keyed("k", b"a")))
        .await
        .unwrap();
    // No claim was left behind to complete: the record is already the answer.
    let begun = rig
        .store
        .begin(
            &keyed("k", b"a").scope,
            &Fingerprint::of(METHOD, b"a"),
            rig.clock.now(),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert!(matches!(begun, BeginOutcome::Replay(_)), "{begun:?}");

    let again = rig
        .service
        .create_order(sample_order(), Some(keyed("k", b"a")))
        .await
        .unwrap();
    assert_eq!(answered(&again), answered(&first));
    assert_eq!(
        rig.service
            .create_order(sample_order(), Some(keyed("k", b"other")))
            .await
            .unwrap_err(),
        AppError::IdempotencyMismatch {
            method: METHOD.to_owned()
        }
    );
    assert_eq!(order_count(&rig.store).await, 1);
}

#[tokio::test]
async fn a_key_claimed_by_a_running_request_is_in_progress() {
    let rig = rig();
    let request = keyed("k", b"a");
    let claimed = rig
        .store
        .begin(
            &request.scope,
            &request.fingerprint,
            rig.clock.now(),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert!(matches!(claimed, BeginOutcome::Proceed(_)));
    assert_eq!(
        rig.service
            .create_order(sample_order(), Some(request))
            .await
            .unwrap_err(),
        AppError::IdempotencyInProgress
    );
    assert_eq!(order_count(&rig.store).await, 0);
}

#[tokio::test]
async fn an_expired_record_is_taken_over_and_the_create_runs_again() {
    let rig = rig();
    let first = rig
        .service
        .create_order(sample_order(), Some(keyed("k", b"a")))
        .await
        .unwrap();
    rig.clock
        .advance(ServiceConfig::default().idempotency_ttl + Duration::from_secs(1));
    let second = rig
        .service
        .create_order(sample_order(), Some(keyed("k", b"a")))
        .await
        .unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(order_count(&rig.store).await, 2);
    // The takeover completed its claim with the new order.
    let third = rig
        .service
        .create_order(sample_order(), Some(keyed("k", b"a")))
        .await
        .unwrap();
    assert_eq!(answered(&third), answered(&second));
}
