//! Inline placement: the process that accepted an order drives its placement saga at once,
//! from the order in memory, under a lease written with the order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use oms_application::changes::OrderChanges;
use oms_application::ports::SagaStore;
use oms_application::saga::{EngineConfig, SagaEngine, SagaPorts, SagaStatus};
use oms_application::testing::{ManualClock, MemoryStore, ScriptedGateways, sample_order};
use oms_application::{InlinePlacement, OrderService, ServiceConfig};
use oms_domain::{OrderStatus, Timestamp};

const T0: i64 = 1_000_000;

struct Rig {
    store: Arc<MemoryStore>,
    gateways: Arc<ScriptedGateways>,
    service: OrderService,
}

fn rig(slots: usize) -> Rig {
    let store = Arc::new(MemoryStore::default());
    let gateways = Arc::new(ScriptedGateways::default());
    let clock = Arc::new(ManualClock::at(Timestamp::from_unix_millis(T0)));
    let changes = OrderChanges::default();
    let engine = SagaEngine::new(
        SagaPorts {
            orders: store.clone(),
            sagas: store.clone(),
            payments: gateways.clone(),
            inventory: gateways.clone(),
        },
        clock.clone(),
        changes.clone(),
        EngineConfig {
            worker: "host-a-inline".into(),
            lease: Duration::from_secs(30),
            heartbeat_limit: Duration::from_secs(120),
            deadline_cap: None,
        },
        Arc::new(|| 0.0),
    );
    let service = OrderService::new(
        store.clone(),
        store.clone(),
        store.clone(),
        changes,
        clock,
        ServiceConfig::default(),
    )
    .with_inline_placement(InlinePlacement::new(Arc::new(engine), slots));
    Rig {
        store,
        gateways,
        service,
    }
}

/// Yields until the order's placement saga ended (bounded: the saga runs on another task of
/// this runtime, with no real waits in it).
async fn placed(store: &MemoryStore, order: oms_domain::OrderId) -> SagaStatus {
    for _ in 0..10_000 {
        let sagas = store.for_order(order).await.unwrap();
        if let Some(saga) = sagas.first()
            && !saga.status.is_active()
        {
            return saga.status;
        }
        tokio::task::yield_now().await;
    }
    panic!("the placement never ended");
}

#[tokio::test]
async fn a_new_order_is_placed_at_once_without_a_claim_or_a_read() {
    let rig = rig(4);
    let order = rig
        .service
        .create_order(sample_order(), None)
        .await
        .unwrap();
    assert_eq!(
        order.status(),
        OrderStatus::Pending,
        "the API answers PENDING"
    );
    let saga = rig.store.for_order(order.id()).await.unwrap().remove(0);
    assert_eq!(
        rig.store.lease(saga.id).0.as_deref(),
        Some("host-a-inline"),
        "leased in the create commit: no worker may claim it meanwhile"
    );

    assert_eq!(placed(&rig.store, order.id()).await, SagaStatus::Succeeded);
    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
    assert_eq!(
        rig.store.order_reads(),
        0,
        "driven from the order the request held"
    );
    let stored = rig.service.get_order(order.id()).await.unwrap();
    assert_eq!(stored.status(), OrderStatus::Confirmed);
}

#[tokio::test]
async fn without_a_free_slot_the_placement_is_left_to_the_workers() {
    let rig = rig(0);
    let order = rig
        .service
        .create_order(sample_order(), None)
        .await
        .unwrap();
    let saga = rig.store.for_order(order.id()).await.unwrap().remove(0);
    assert_eq!(
        rig.store.lease(saga.id),
        (None, None),
        "claimable by any worker"
    );
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        SagaStore::get(rig.store.as_ref(), saga.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        SagaStatus::Running
    );
    assert!(rig.gateways.calls().is_empty(), "nothing ran it inline");
}
