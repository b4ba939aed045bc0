//! The saga engine over the real stores (and the in-memory one), with the test kit's
//! scripted gateways and manual clock: what a step's deadline counts. Time a saga sat
//! unclaimed behind a dead worker's lease is not spent on its step, and a call an open
//! circuit refused is no attempt.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Stores, new_order, place_with_saga, saga_for, ts};
use oms_application::changes::OrderChanges;
use oms_application::clock::Clock;
use oms_application::ports::{FailureCode, FailureReason, GatewayError};
use oms_application::saga::{
    EngineConfig, SagaEngine, SagaInstance, SagaKind, SagaPorts, SagaStatus,
};
use oms_application::testing::{ManualClock, ScriptedGateways, transient};
use oms_domain::{OrderId, OrderStatus, PaymentStatus, ReservationStatus, Timestamp};

/// The engine's lease (the default of `saga.lease_secs`).
const LEASE: Duration = Duration::from_secs(30);
/// When the tests begin, in Unix milliseconds.
const T0: i64 = 1_000_000;

fn circuit_open() -> GatewayError {
    GatewayError::NotTried {
        reason: FailureReason::new(
            FailureCode::PluginUnavailable,
            "circuit open after repeated failures; retry later",
        ),
    }
}

/// One worker's engine on `db`, a placed order and its saga, all at [`T0`].
struct Rig {
    db: Stores,
    clock: Arc<ManualClock>,
    gateways: Arc<ScriptedGateways>,
    engine: SagaEngine,
    order: OrderId,
    saga: SagaInstance,
}

impl Rig {
    async fn new(db: Stores) -> Self {
        let (order, event) = new_order("cust-1", ts(T0));
        let saga = saga_for(&order, T0);
        place_with_saga(&db, &order, &event, &saga).await.unwrap();
        Self::with(db, order.id(), saga)
    }

    fn with(db: Stores, order: OrderId, saga: SagaInstance) -> Self {
        let clock = Arc::new(ManualClock::at(ts(T0)));
        let gateways = Arc::new(ScriptedGateways::default());
        let engine = SagaEngine::new(
            SagaPorts {
                orders: db.orders(),
                sagas: db.sagas(),
                payments: gateways.clone(),
                inventory: gateways.clone(),
            },
            clock.clone(),
            OrderChanges::default(),
            EngineConfig {
                worker: "worker-1".into(),
                lease: LEASE,
                heartbeat_limit: Duration::from_secs(120),
                // The tables' own deadlines: 30 s per placement step.
                deadline_cap: None,
            },
            // Retry delays at the bottom of their jitter range, for exact times.
            Arc::new(|| 0.0),
        );
        Self {
            db,
            clock,
            gateways,
            engine,
            order,
            saga,
        }
    }

    /// Runs the due sagas at `at`.
    async fn run_at(&self, at: Timestamp) {
        self.clock.set(at);
        self.engine.run_due(10).await.unwrap();
    }

    async fn saga(&self) -> SagaInstance {
        self.db.sagas().get(self.saga.id).await.unwrap().unwrap()
    }

    async fn order_status(&self) -> OrderStatus {
        self.db
            .orders()
            .get(self.order)
            .await
            .unwrap()
            .unwrap()
            .status()
    }

    /// Runs the saga each time it is due (never late) until `until` or until it stops
    /// retrying `authorize-payment`.
    async fn retry_on_time_until(&self, until: i64) {
        loop {
            let saga = self.saga().await;
            if saga.status != SagaStatus::Running || saga.step != 1 {
                return;
            }
            if saga.next_attempt_at.unix_millis() > until {
                return;
            }
            self.run_at(saga.next_attempt_at).await;
        }
    }
}

/// A worker took the saga, failed `authorize` once, claimed the retry and died holding the
/// lease; the saga was picked up again only when the lease lapsed, after its step's deadline.
/// The 30 s spent waiting are not the step's: it retries and confirms.
async fn a_saga_resumed_after_its_lease_lapsed_keeps_its_deadline(db: Stores) {
    let rig = Rig::new(db).await;
    rig.gateways.fail("authorize", [transient(), transient()]);
    rig.run_at(ts(T0)).await;
    let waiting = rig.saga().await;
    assert_eq!(waiting.step, 1, "reserved, waiting to retry authorize");
    assert_eq!(waiting.step_deadline, Some(ts(T0 + 30_000)));

    // The dying worker's claim: its lease runs out 30 s later.
    let due = waiting.next_attempt_at;
    let claimed = rig
        .db
        .sagas()
        .claim_due("dead-worker", due, ts(due.unix_millis() + 30_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let resumed_at = due.unix_millis() + 30_000 + 1_000;
    assert!(resumed_at > T0 + 30_000, "past the deadline as first set");
    rig.run_at(ts(resumed_at)).await;
    let after = rig.saga().await;
    assert_eq!(after.status, SagaStatus::Running, "{after:?}");
    assert_eq!(
        after.step_deadline,
        Some(ts(T0 + 30_000 + (resumed_at - due.unix_millis()))),
        "the deadline moved by the time the saga sat unclaimed"
    );
    rig.retry_on_time_until(i64::MAX).await;
    assert_eq!(rig.order_status().await, OrderStatus::Confirmed);
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
}
on_all!(
    resumed_after_a_lapsed_lease,
    a_saga_resumed_after_its_lease_lapsed_keeps_its_deadline
);

/// An open circuit (tripped by other orders) refuses every call past the step's deadline: a
/// refusal is no attempt, so the saga waits for a real one, which confirms it.
async fn a_circuit_open_refusal_never_fails_a_step(db: Stores) {
    let rig = Rig::new(db).await;
    rig.gateways
        .fail("authorize", std::iter::repeat_with(circuit_open).take(40));
    rig.run_at(ts(T0)).await;
    rig.retry_on_time_until(T0 + 40_000).await;
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Running, "{saga:?}");
    assert!(
        saga.step_deadline.unwrap() < rig.clock.now(),
        "past its deadline"
    );
    assert_eq!(rig.order_status().await, OrderStatus::Pending);
    // The circuit closes: the next, real attempt authorizes.
    rig.gateways.clear("authorize");
    rig.retry_on_time_until(i64::MAX).await;
    assert_eq!(rig.order_status().await, OrderStatus::Confirmed);
}
on_all!(
    circuit_open_refusals,
    a_circuit_open_refusal_never_fails_a_step
);

/// The bound: a step that really tried and failed still fails at its deadline, whether the
/// last answer was a real failure or a refusal.
async fn a_step_that_really_tried_fails_at_its_deadline(db: Stores) {
    let rig = Rig::new(db).await;
    rig.gateways.fail(
        "authorize",
        std::iter::once(transient()).chain(std::iter::repeat_with(circuit_open).take(40)),
    );
    rig.run_at(ts(T0)).await;
    rig.retry_on_time_until(T0 + 60_000).await;
    assert_eq!(rig.order_status().await, OrderStatus::PaymentFailed);
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert!(
        rig.clock.now() >= ts(T0 + 30_000),
        "not before the deadline"
    );
}
on_all!(
    real_failures_still_end,
    a_step_that_really_tried_fails_at_its_deadline
);

/// A cancellation that finds the stock already committed (a state the API no longer lets a
/// cancel reach, but one stored before that rule or left by a race) must not void the hold
/// and then "release" nothing: it parks with the money untouched, and says so.
async fn a_cancellation_never_skips_a_committed_reservation(db: Stores) {
    let (order, event) = new_order("cust-1", ts(T0));
    let now = ts(T0);
    let mut confirmed = order.clone();
    confirmed.record_reservation(now).unwrap();
    confirmed.record_authorization(now).unwrap();
    confirmed.confirm(now).unwrap();
    confirmed.record_commit(now).unwrap();
    let mut parts = confirmed.parts().clone();
    parts.status = OrderStatus::Cancelling;
    let cancelling = oms_domain::Order::rehydrate(parts);
    let mut saga = SagaInstance::start(SagaKind::CancelOrder, order.id(), now);
    saga.data.reservation_id = Some("res-1".into());
    saga.data.payment_id = Some("pay-1".into());
    place_with_saga(&db, &cancelling, &event, &saga)
        .await
        .unwrap();
    let rig = Rig::with(db, order.id(), saga);
    rig.run_at(now).await;

    let parked = rig.saga().await;
    assert_eq!(parked.status, SagaStatus::CompensationFailed, "{parked:?}");
    assert_eq!(parked.current_step(), Some("undo-payment"));
    let stored = rig.db.orders().get(rig.order).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::CompensationFailed);
    assert_eq!(
        stored.payment_status(),
        PaymentStatus::Authorized,
        "not voided"
    );
    assert_eq!(stored.reservation_status(), ReservationStatus::Committed);
}
on_all!(
    committed_stock_parks_a_cancellation,
    a_cancellation_never_skips_a_committed_reservation
);
