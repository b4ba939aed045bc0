//! The saga engine against the test kit: in-memory stores, a manual clock and scripted
//! gateways. Each test drives one placement saga step by step and checks what the engine
//! called, in which order, and what it committed. No database, no Wasm, no sleeps: each
//! test runs in milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use oms_application::changes::OrderChanges;
use oms_application::clock::Clock;
use oms_application::outbox::{OutboxMessage, SAGA_PARKED};
use oms_application::ports::{
    FailureCode, FailureReason, GatewayError, OrderStore, OrderWrite, PluginKvStore,
    ProviderPaymentState, SagaCommit, SagaQuery, SagaStore, StepDirection, StepHistory, StepState,
    StoreError,
};
use oms_application::saga::{
    Direction, EngineConfig, SagaEngine, SagaId, SagaInstance, SagaKind, SagaOperations, SagaPorts,
    SagaStatus,
};
use oms_application::testing::{
    ManualClock, MemoryStore, SCRIPTED_PLUGINS, Scripted, ScriptedGateways, sample_order, transient,
};
use oms_domain::{
    Order, OrderEvent, OrderId, OrderStatus, PaymentAction, PaymentStatus, ReservationStatus,
    Timestamp, Version,
};

/// When every test begins, in Unix milliseconds.
const T0: i64 = 1_000_000;
/// The engine's lease (the default of `saga.lease_secs`).
const LEASE: Duration = Duration::from_secs(30);
/// How long a worker renews its lease while a step's call runs.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(120);
/// The placement table's per-step deadline.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

/// One placed order, its placement saga, and a worker engine over the test kit.
struct Rig {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    gateways: Arc<ScriptedGateways>,
    order: OrderId,
    saga: SagaInstance,
}

impl Rig {
    async fn new() -> Self {
        let store = Arc::new(MemoryStore::default());
        let saga = place(&store, ts(T0)).await;
        Self {
            store,
            clock: Arc::new(ManualClock::at(ts(T0))),
            gateways: Arc::new(ScriptedGateways::default()),
            order: saga.order_id,
            saga,
        }
    }

    /// A worker named `name`, with the tables' own deadlines and jitter pinned to the
    /// bottom of its range (exact retry times).
    fn engine(&self, name: &str) -> SagaEngine {
        SagaEngine::new(
            SagaPorts {
                orders: self.store.clone(),
                sagas: self.store.clone(),
                payments: self.gateways.clone(),
                inventory: self.gateways.clone(),
            },
            self.clock.clone(),
            OrderChanges::default(),
            self.config(name),
            Arc::new(|| 0.0),
        )
    }

    /// The configuration of [`Self::engine`]'s workers.
    fn config(&self, name: &str) -> EngineConfig {
        EngineConfig {
            worker: name.to_owned(),
            lease: LEASE,
            heartbeat_limit: HEARTBEAT_LIMIT,
            deadline_cap: None,
        }
    }

    async fn saga(&self) -> SagaInstance {
        SagaStore::get(self.store.as_ref(), self.saga.id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Starts a worker named `name` on the due saga in a task of its own, and returns once
    /// its first gateway call is in flight (a test holds it with `gateways.hold`).
    async fn drive_until_the_first_call(&self, name: &str) -> tokio::task::JoinHandle<()> {
        let worker = self.engine(name);
        let driving = tokio::spawn(async move {
            worker.run_due(10).await.unwrap();
        });
        while self.gateways.calls().is_empty() {
            tokio::task::yield_now().await;
        }
        driving
    }

    /// What worker `name` would claim now, on the store's clock.
    async fn claim_as(&self, name: &str) -> Vec<SagaInstance> {
        let now = self.clock.now();
        self.store
            .claim_due(name, now, now.saturating_add(LEASE), 10)
            .await
            .unwrap()
    }

    async fn order(&self) -> Order {
        OrderStore::get(self.store.as_ref(), self.order)
            .await
            .unwrap()
            .unwrap()
    }

    /// Runs the saga every time it is due, never late, until it is no longer active. Returns
    /// the times (ms after T0) at which it was run.
    async fn run_to_rest(&self, engine: &SagaEngine) -> Vec<i64> {
        let mut runs = Vec::new();
        for _ in 0..1_000 {
            let saga = self.saga().await;
            if !saga.status.is_active() {
                return runs;
            }
            let now = self.clock.now().max(saga.next_attempt_at);
            self.clock.set(now);
            runs.push(now.unix_millis() - T0);
            engine.run_due(10).await.unwrap();
        }
        panic!("the saga never came to rest");
    }

    /// The calls whose plugin writes were committed, as `step:operation`, placement order.
    async fn committed_effects(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (step, operation) in [
            ("reserve-inventory", "reserve"),
            ("authorize-payment", "authorize"),
            ("authorize-payment", "void"),
            ("reserve-inventory", "release"),
        ] {
            let key = self.saga.idempotency_key(step, operation);
            for plugin in SCRIPTED_PLUGINS {
                if PluginKvStore::get(self.store.as_ref(), plugin, &key)
                    .await
                    .unwrap()
                    .is_some()
                {
                    found.push(format!("{step}:{operation}"));
                }
            }
        }
        found
    }

    /// While w1's first `operation` call for `saga` hangs past w1's lease, w2 claims the
    /// saga: w1's next commit is refused.
    fn take_over_during(&self, saga: &SagaInstance, operation: &'static str) {
        let store = self.store.clone();
        let clock = self.clock.clone();
        let saga_id = saga.id;
        self.gateways.before_each(move |call| {
            if call.operation == operation && store.lease(saga_id).0.as_deref() == Some("w1") {
                clock.advance(LEASE + Duration::from_secs(1));
                let claimed = futures::executor::block_on(store.claim_due(
                    "w2",
                    clock.now(),
                    clock.now().saturating_add(LEASE),
                    10,
                ))
                .unwrap();
                assert_eq!(claimed.len(), 1, "w2 takes over the abandoned saga");
            }
        });
    }

    /// The order is cancelled while each `operation` call is in flight.
    fn cancel_during(&self, operation: &'static str) {
        let store = self.store.clone();
        let clock = self.clock.clone();
        let order_id = self.order;
        self.gateways.before_each(move |call| {
            if call.operation == operation {
                futures::executor::block_on(cancel(&store, order_id, clock.now()));
            }
        });
    }

    async fn cancel_order(&self) {
        cancel(&self.store, self.order, self.clock.now()).await;
    }
}

fn unknown() -> GatewayError {
    GatewayError::Unknown {
        reason: FailureReason::new(FailureCode::PluginDeadlineExceeded, "no answer in time"),
    }
}

fn permanent(code: FailureCode, why: &str) -> GatewayError {
    GatewayError::Permanent {
        reason: FailureReason::new(code, why),
    }
}

#[tokio::test]
async fn a_placement_reserves_authorizes_and_confirms_in_one_claim() {
    let rig = Rig::new().await;
    let engine = rig.engine("w1");
    assert_eq!(engine.run_due(10).await.unwrap(), 1);
    let reads = rig.store.order_reads();
    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Succeeded);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert_eq!(order.payment_status(), PaymentStatus::Authorized);
    assert_eq!(
        rig.store.lease(saga.id),
        (None, None),
        "an ended saga holds no lease"
    );
    let steps = rig.store.steps(saga.id);
    assert_eq!(
        steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        ["reserve-inventory", "authorize-payment", "confirm-order"]
    );
    assert!(steps.iter().all(|s| s.state == StepState::Succeeded));
    assert_eq!(
        reads, 1,
        "the order is read once per claim; each step goes on from the order it committed"
    );
    assert_eq!(
        saga.version,
        rig.saga.version + 3,
        "calls that reached outside the host are each committed before the next step runs"
    );
}

#[tokio::test]
async fn steps_that_stayed_in_the_host_commit_once_with_the_pivot() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();

    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Succeeded);
    assert_eq!(
        saga.version,
        rig.saga.version + 1,
        "reserve, authorize and confirm were made durable by one commit"
    );
    assert!(saga.data.reservation_id.is_some() && saga.data.payment_id.is_some());
    let steps = rig.store.steps(saga.id);
    assert_eq!(
        steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        ["reserve-inventory", "authorize-payment", "confirm-order"]
    );
    assert!(steps.iter().all(|s| s.state == StepState::Succeeded));
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert_eq!(order.reservation_status(), ReservationStatus::Reserved);
    assert_eq!(order.payment_status(), PaymentStatus::Authorized);
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve", "authorize-payment:authorize"],
        "both calls' plugin writes were applied with that commit"
    );
}

/// A call that created its record without reading it (the engine leaves that check to the
/// commit), under a key that was there after all: the commit is refused, nothing of it
/// lands, and the steps run again reading what they create, so that the plugin decides from
/// its own record; that commit lands. Without the switch to reading, the steps would be
/// refused the same way every time.
#[tokio::test]
async fn a_commit_refused_over_a_created_key_runs_the_steps_again_reading_it() {
    use oms_application::plugin_kv::AbsentKeys::{CheckedAtCommit, Read};

    let rig = Rig::new().await;
    rig.gateways.host_only();
    rig.gateways.creates_records();
    let recorded = rig.saga.idempotency_key("authorize-payment", "authorize");
    PluginKvStore::set(
        rig.store.as_ref(),
        SCRIPTED_PLUGINS[1],
        &recorded,
        b"before",
    )
    .await
    .unwrap();
    rig.engine("w1").run_due(10).await.unwrap();

    let calls: Vec<_> = rig
        .gateways
        .calls()
        .iter()
        .map(|c| (c.operation, c.buffering.absent_keys))
        .collect();
    assert_eq!(
        calls,
        [
            ("reserve", CheckedAtCommit),
            ("authorize", CheckedAtCommit),
            ("reserve", Read),
            ("authorize", Read),
        ]
    );
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Succeeded);
    assert_eq!(saga.version, rig.saga.version + 1, "one commit landed");
    assert_eq!(rig.order().await.status(), OrderStatus::Confirmed);
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve", "authorize-payment:authorize"]
    );
}

/// A provider behind the network after a step that stays in the host (a local stock
/// plugin): the reservation, deferred to the authorisation's commit, commits alone before
/// the authorisation goes out. What the provider does then can no longer depend on a step
/// that a refused commit would take back.
#[tokio::test]
async fn steps_before_a_networked_call_commit_before_it_goes_out() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    rig.gateways.reaches_network("authorize");
    let store = rig.store.clone();
    let reserved = rig.saga.idempotency_key("reserve-inventory", "reserve");
    let committed_before_authorize = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = committed_before_authorize.clone();
    rig.gateways.before_each(move |call| {
        if call.operation == "authorize" {
            let record = futures::executor::block_on(PluginKvStore::get(
                store.as_ref(),
                SCRIPTED_PLUGINS[0],
                &reserved,
            ))
            .unwrap();
            seen.lock().unwrap().push(record.is_some());
        }
    });
    rig.engine("w1").run_due(10).await.unwrap();

    assert_eq!(
        *committed_before_authorize.lock().unwrap(),
        [true],
        "one authorisation, sent once the reservation was committed"
    );
    let calls: Vec<_> = rig
        .gateways
        .calls()
        .iter()
        .map(|c| (c.operation, c.buffering.pending_steps))
        .collect();
    assert_eq!(calls, [("reserve", false), ("authorize", false)]);
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Succeeded);
    assert_eq!(
        saga.version,
        rig.saga.version + 3,
        "the reservation, the authorisation and the confirmation commit one by one"
    );
    assert_eq!(rig.order().await.status(), OrderStatus::Confirmed);
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve", "authorize-payment:authorize"]
    );
}

/// The money this protects: the reservation's commit is refused (its plugin state moved) and
/// its second run finds the SKU sold out. Had the authorisation gone out with the
/// reservation still pending, the provider would hold the customer's money for an order
/// that the saga rejects without ever knowing of the payment, so nothing would void it.
#[tokio::test]
async fn a_reservation_refused_at_its_commit_never_strands_an_authorisation() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    rig.gateways.reaches_network("authorize");
    rig.gateways.creates_records();
    // The reservation's record is there already: its first commit is refused over it.
    let reserved = rig.saga.idempotency_key("reserve-inventory", "reserve");
    PluginKvStore::set(rig.store.as_ref(), SCRIPTED_PLUGINS[0], &reserved, b"moved")
        .await
        .unwrap();
    let sold_out = GatewayError::Permanent {
        reason: FailureReason::new(FailureCode::OutOfStock, "DEMO-1: none left"),
    };
    rig.gateways
        .script("reserve", [Scripted::Answer, Scripted::Fail(sold_out)]);
    rig.engine("w1").run_due(10).await.unwrap();

    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "reserve"],
        "the authorisation never went out"
    );
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Rejected);
    let reason = order.failure_reason().unwrap_or_default();
    assert!(reason.starts_with("OUT_OF_STOCK: "), "{reason}");
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
}

/// An order edited under every attempt (an address change while each authorisation runs):
/// the steps that commit with the confirmation run again after each refused commit, and
/// the worker gives up after a bounded number of refusals in a row, leaving the saga for its
/// next claim, instead of spinning for as long as the edits go on.
#[tokio::test]
async fn steps_refused_over_and_over_wait_for_the_next_claim() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    let store = rig.store.clone();
    let clock = rig.clock.clone();
    let order_id = rig.order;
    rig.gateways.before_each(move |call| {
        if call.operation == "authorize" {
            futures::executor::block_on(async {
                let mut order = OrderStore::get(store.as_ref(), order_id)
                    .await
                    .unwrap()
                    .unwrap();
                let base = order.version();
                let address = order.shipping_address().clone();
                let event = order.update_shipping_address(address, clock.now()).unwrap();
                save(&store, &order, Some(base), &event, None).await;
            });
        }
    });
    rig.engine("w1").run_due(10).await.unwrap();

    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize"].repeat(5),
        "five refused commits, then the worker let the saga be"
    );
    assert_eq!(rig.saga().await, rig.saga, "nothing was committed");
    assert!(rig.committed_effects().await.is_empty());
}

#[tokio::test]
async fn a_retry_makes_the_steps_run_before_it_durable() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    rig.gateways.fail("authorize", [transient()]);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();

    let saga = rig.saga().await;
    assert_eq!((saga.status, saga.step), (SagaStatus::Running, 1));
    assert_eq!(
        saga.version,
        rig.saga.version + 1,
        "one commit: the retry's"
    );
    assert_eq!(
        rig.order().await.reservation_status(),
        ReservationStatus::Reserved
    );
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve"],
        "the reservation waiting for the retry is durable"
    );

    rig.run_to_rest(&engine).await;
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "authorize"]
    );
}

#[tokio::test]
async fn a_worker_stopped_before_the_commit_leaves_nothing_and_the_next_one_runs_it_all_again() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    // While w1's authorisation hangs past its lease, w2 claims the saga: w1's commit of
    // reserve + authorize + confirm is refused, as if w1 had crashed before it.
    rig.take_over_during(&rig.saga, "authorize");
    let w1 = rig.engine("w1");
    w1.run_due(10).await.unwrap();
    assert_eq!(rig.saga().await, rig.saga, "nothing of w1's was committed");
    assert!(
        rig.committed_effects().await.is_empty(),
        "neither call's writes were applied: there is nothing to undo"
    );

    // w2's claim lapses too (say it crashed); the next claim runs both calls again, with the
    // same keys, and commits them once.
    rig.clock.advance(LEASE + Duration::from_secs(1));
    let w3 = rig.engine("w3");
    w3.run_due(10).await.unwrap();
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
    let calls = rig.gateways.calls();
    assert_eq!(
        calls.iter().map(|c| c.operation).collect::<Vec<_>>(),
        ["reserve", "authorize", "reserve", "authorize"]
    );
    assert_eq!(calls[0].idempotency_key, calls[2].idempotency_key);
    assert_eq!(calls[1].idempotency_key, calls[3].idempotency_key);
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve", "authorize-payment:authorize"]
    );
}

#[tokio::test]
async fn a_cancellation_before_anything_was_committed_cancels_at_once_with_nothing_to_undo() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    rig.cancel_during("authorize");
    let engine = rig.engine("w1");
    rig.run_to_rest(&engine).await;

    // The reservation was never committed, so the cancel found nothing held and cancelled
    // at once; the placement's commit was then refused and took its calls' writes with it.
    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.reservation_status(), ReservationStatus::None);
    assert_eq!(order.payment_status(), PaymentStatus::Pending);
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
    assert!(rig.committed_effects().await.is_empty());
}

/// Runs the placement to CONFIRMED, then starts `kind` (fulfilment or cancellation) on the
/// order as its use case would; the new saga is due at once.
async fn follow_placement(rig: &Rig, kind: SagaKind) -> SagaInstance {
    rig.run_to_rest(&rig.engine("w1")).await;
    assert_eq!(rig.order().await.status(), OrderStatus::Confirmed);

    let now = rig.clock.now();
    let mut order = rig.order().await;
    let base = order.version();
    let event = match kind {
        SagaKind::FulfillOrder => order.request_fulfillment(now).unwrap(),
        SagaKind::CancelOrder => order.cancel("changed my mind", now).unwrap(),
        other => panic!("{other:?} does not follow a placement here"),
    };
    let saga = SagaInstance::start(kind, order.id(), now);
    save(&rig.store, &order, Some(base), &event, Some(&saga)).await;
    saga
}

/// [`follow_placement`], run by one worker until it rests. Returns the saga as it started and
/// as it ended.
async fn after_placement(rig: &Rig, kind: SagaKind) -> (SagaInstance, SagaInstance) {
    let saga = follow_placement(rig, kind).await;
    rig.engine("w1").run_due(10).await.unwrap();
    let ended = SagaStore::get(rig.store.as_ref(), saga.id)
        .await
        .unwrap()
        .unwrap();
    (saga, ended)
}

/// Whether the call `step:operation` of `saga` had its plugin writes committed.
async fn committed(rig: &Rig, saga: &SagaInstance, step: &str, operation: &str) -> bool {
    let key = saga.idempotency_key(step, operation);
    for plugin in SCRIPTED_PLUGINS {
        if PluginKvStore::get(rig.store.as_ref(), plugin, &key)
            .await
            .unwrap()
            .is_some()
        {
            return true;
        }
    }
    false
}

/// After a placement, `kind` ends in `status` with the reservation and payment as given, and
/// both of its plugin calls (`step:operation`) committed: in one commit when the plugins stay
/// in the host, in one commit per step otherwise.
async fn follows_in_one_commit(
    kind: SagaKind,
    status: OrderStatus,
    reservation: ReservationStatus,
    payment: PaymentStatus,
    calls: [(&str, &str); 2],
) {
    for host_only in [false, true] {
        let rig = Rig::new().await;
        if host_only {
            rig.gateways.host_only();
        }
        let (started, ended) = after_placement(&rig, kind).await;
        assert_eq!(ended.status, SagaStatus::Succeeded);
        assert_eq!(
            ended.version,
            started.version + if host_only { 1 } else { 3 },
            "{kind:?}: its three steps in one commit only with host-only plugins (host_only={host_only})"
        );
        let order = rig.order().await;
        assert_eq!(
            (
                order.status(),
                order.reservation_status(),
                order.payment_status()
            ),
            (status, reservation, payment)
        );
        for (step, operation) in calls {
            assert!(committed(&rig, &started, step, operation).await, "{step}");
        }
    }
}

#[tokio::test]
async fn a_fulfilment_whose_calls_stayed_in_the_host_commits_once() {
    follows_in_one_commit(
        SagaKind::FulfillOrder,
        OrderStatus::Fulfilled,
        ReservationStatus::Committed,
        PaymentStatus::Captured,
        [
            ("commit-inventory", "commit"),
            ("capture-payment", "capture"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_cancellation_whose_calls_stayed_in_the_host_commits_once() {
    follows_in_one_commit(
        SagaKind::CancelOrder,
        OrderStatus::Cancelled,
        ReservationStatus::Released,
        PaymentStatus::Voided,
        [
            ("undo-payment", "undo-payment"),
            ("undo-reservation", "undo-reservation"),
        ],
    )
    .await;
}

/// The follow-up calls of each kind, with the placement call whose build they must reach.
const FOLLOW_UPS: [(SagaKind, [(&str, &str); 2]); 2] = [
    (
        SagaKind::FulfillOrder,
        [("commit", "reserve"), ("capture", "authorize")],
    ),
    (
        SagaKind::CancelOrder,
        [("release", "reserve"), ("void", "authorize")],
    ),
];

#[tokio::test]
async fn follow_up_calls_are_pinned_to_the_build_that_made_the_hold() {
    for (kind, pairs) in FOLLOW_UPS {
        let rig = Rig::new().await;
        rig.gateways.swap_build("sha256:v1");
        let saga = follow_placement(&rig, kind).await;
        // A new version is installed between the placement and its follow-up.
        rig.gateways.swap_build("sha256:v2");
        rig.engine("w1").run_due(10).await.unwrap();
        let ended = SagaStore::get(rig.store.as_ref(), saga.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.status, SagaStatus::Succeeded, "{kind:?}");

        let calls = rig.gateways.calls();
        for (follow_up, made_by) in pairs {
            let made = calls.iter().find(|c| c.operation == made_by).unwrap();
            assert_eq!(made.pinned, None, "{made_by} starts on the current build");
            let call = calls.iter().find(|c| c.operation == follow_up).unwrap();
            assert_eq!(
                call.pinned.as_deref(),
                Some("sha256:v1"),
                "{kind:?}: {follow_up} goes to the build that made the {made_by}"
            );
        }
        // The history records the build that served each follow-up.
        let served: Vec<String> = SagaStore::steps(rig.store.as_ref(), saga.id)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|s| s.plugin.map(|(_, _, digest)| digest))
            .collect();
        assert_eq!(served, ["sha256:v1", "sha256:v1"], "{kind:?}");
        // Until the order ends, the builds it used are in use.
        let in_use = SagaStore::plugin_builds_in_use(rig.store.as_ref())
            .await
            .unwrap();
        assert!(
            in_use.iter().all(|(_, digest)| digest == "sha256:v1"),
            "{in_use:?}"
        );
        assert_eq!(
            !in_use.is_empty(),
            !rig.order().await.status().is_terminal(),
            "{kind:?}: {in_use:?}"
        );
    }
}

#[tokio::test]
async fn a_cancellation_stopped_before_its_commit_undoes_again_with_the_same_keys() {
    let rig = Rig::new().await;
    rig.gateways.host_only();
    let started = follow_placement(&rig, SagaKind::CancelOrder).await;
    // w1 loses the cancellation's lease while releasing: its one commit is refused.
    rig.take_over_during(&started, "release");
    rig.engine("w1").run_due(10).await.unwrap();
    let stopped = SagaStore::get(rig.store.as_ref(), started.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stopped, started,
        "nothing of w1's cancellation was committed"
    );
    assert!(!committed(&rig, &started, "undo-payment", "undo-payment").await);
    assert!(!committed(&rig, &started, "undo-reservation", "undo-reservation").await);
    assert_eq!(
        rig.order().await.payment_status(),
        PaymentStatus::Authorized,
        "the hold is still there to void"
    );

    rig.clock.advance(LEASE + Duration::from_secs(1));
    rig.engine("w3").run_due(10).await.unwrap();
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.payment_status(), PaymentStatus::Voided);
    let calls = rig.gateways.calls();
    let keys = |operation: &str| {
        calls
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.idempotency_key.clone())
            .collect::<Vec<_>>()
    };
    let voids = keys("void");
    assert_eq!(voids.len(), 2, "voided again after the refused commit");
    assert_eq!(voids[0], voids[1], "with the same key");
    assert!(committed(&rig, &started, "undo-payment", "undo-payment").await);
    assert!(committed(&rig, &started, "undo-reservation", "undo-reservation").await);
}

#[tokio::test]
async fn a_transient_failure_retries_with_growing_backoff_until_the_deadline() {
    let rig = Rig::new().await;
    rig.gateways
        .fail("authorize", std::iter::repeat_n(transient(), 1_000));
    let engine = rig.engine("w1");
    let runs = rig.run_to_rest(&engine).await;

    // Jitter pinned at 0: each delay is half its ceiling (100 ms doubling, capped at 5 s).
    let gaps: Vec<i64> = runs.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..7], [50, 100, 200, 400, 800, 1_600, 2_500]);
    assert!(gaps[7..].iter().all(|&g| g == 2_500), "{gaps:?}");
    // The step gave up at the first attempt at or past its 30 s deadline, not before.
    let deadline = i64::try_from(STEP_DEADLINE.as_millis()).unwrap();
    let last = *runs.last().unwrap();
    assert!(
        last >= deadline && last - gaps.last().unwrap() < deadline,
        "{runs:?}"
    );
    assert_eq!(rig.gateways.count("authorize"), runs.len());

    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(
        rig.gateways.count("release"),
        1,
        "the reservation was undone"
    );
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::PaymentFailed);
    assert!(
        order
            .failure_reason()
            .is_some_and(|r| r.starts_with("PROVIDER_UNAVAILABLE: ")),
        "{:?}",
        order.failure_reason()
    );
    let authorize = rig
        .store
        .steps(saga.id)
        .into_iter()
        .find(|s| s.step == "authorize-payment")
        .unwrap();
    assert_eq!(authorize.state, StepState::Failed);
    assert_eq!(authorize.attempts as usize, runs.len());
}

/// A saga's end is counted once: an end through `finish` (compensated, parked) used to be
/// counted both there and by the commit that made it durable, doubling
/// `oms_saga_outcomes_total` for every failed order.
#[tokio::test]
async fn a_saga_that_ends_is_counted_once() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rig = Rig::new().await;
    // Declined: the reservation is undone and the saga ends COMPENSATED.
    rig.gateways.fail(
        "authorize",
        [permanent(
            FailureCode::PaymentDeclined,
            "insufficient funds",
        )],
    );
    let engine = rig.engine("w1");
    {
        let _counted_here = metrics::set_default_local_recorder(&recorder);
        rig.run_to_rest(&engine).await;
    }
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
    let text = handle.render();
    for expected in [
        r#"oms_saga_outcomes_total{kind="place_order",outcome="COMPENSATED"} 1"#,
        r#"oms_saga_duration_seconds_count{kind="place_order",outcome="COMPENSATED"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "{expected} in:\n{text}"
        );
    }
}

#[tokio::test]
async fn an_unresolved_authorization_is_reconciled_before_anything_is_resent() {
    // The provider took the first authorisation but its answer was lost.
    let rig = Rig::new().await;
    rig.gateways.script("authorize", [Scripted::LostAnswer]);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.order().await.payment_status(),
        PaymentStatus::Unresolved
    );
    assert_eq!(rig.saga().await.status, SagaStatus::Running);

    rig.run_to_rest(&engine).await;
    let calls = rig.gateways.calls();
    assert_eq!(
        calls.iter().map(|c| c.operation).collect::<Vec<_>>(),
        ["reserve", "authorize", "get-payment"],
        "the retry asked the provider first and found the payment: nothing was resent"
    );
    assert_eq!(calls[1].idempotency_key, calls[2].idempotency_key);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert_eq!(order.payment_status(), PaymentStatus::Authorized);
    assert_eq!(rig.saga().await.data.payment_id.as_deref(), Some("pay-1"));
}

/// The build that may have taken a hold is asked about it, and finishes it, even after a new
/// build (or the end of a canary) made another one current; a host-only call that failed
/// left nothing, so its retry is not pinned.
#[tokio::test]
async fn an_unresolved_authorization_is_reconciled_by_the_build_that_may_have_acted() {
    for host_only in [false, true] {
        let rig = Rig::new().await;
        if host_only {
            rig.gateways.host_only();
        }
        rig.gateways.swap_build("sha256:canary");
        rig.gateways.script("authorize", [Scripted::LostAnswer]);
        let engine = rig.engine("w1");
        engine.run_due(10).await.unwrap();
        rig.gateways.swap_build("sha256:current");
        rig.run_to_rest(&engine).await;

        let calls = rig.gateways.calls();
        let lookup = calls.iter().find(|c| c.operation == "get-payment").unwrap();
        let expected = (!host_only).then(|| "sha256:canary".to_owned());
        assert_eq!(lookup.pinned, expected, "host_only={host_only}");
        assert_eq!(
            rig.saga().await.data.payment_build.as_deref(),
            Some(if host_only {
                "sha256:current"
            } else {
                "sha256:canary"
            }),
            "follow-ups go to the build that answered the reconciliation"
        );
        assert_eq!(rig.order().await.status(), OrderStatus::Confirmed);
    }
}

#[tokio::test]
async fn an_unresolved_authorization_that_never_happened_is_sent_again_with_the_same_key() {
    let rig = Rig::new().await;
    rig.gateways.fail("authorize", [unknown()]);
    let engine = rig.engine("w1");
    rig.run_to_rest(&engine).await;
    let calls = rig.gateways.calls();
    assert_eq!(
        calls.iter().map(|c| c.operation).collect::<Vec<_>>(),
        ["reserve", "authorize", "get-payment", "authorize"]
    );
    assert_eq!(calls[1].idempotency_key, calls[3].idempotency_key);
    assert_eq!(rig.order().await.status(), OrderStatus::Confirmed);
}

/// A placement whose authorisation ran out of time with its last outcome unknown, at a
/// provider the plugin reaches over the network, asks the provider before failing the order:
/// a hold found is voided. It used to end PAYMENT_FAILED without asking, leaving the hold on
/// the customer's card (a known gap).
#[tokio::test]
async fn an_authorization_that_runs_out_of_time_unresolved_voids_the_hold_it_finds() {
    let rig = Rig::new().await;
    // The provider took the authorisation but the answer was lost, and then could not be
    // asked until the step's deadline had passed.
    rig.gateways.script("authorize", [Scripted::LostAnswer]);
    rig.gateways
        .fail("get-payment", std::iter::repeat_n(transient(), 1_000));
    let engine = rig.engine("w1");
    for _ in 0..1_000 {
        let saga = rig.saga().await;
        if saga.status != SagaStatus::Running {
            break;
        }
        rig.clock.set(rig.clock.now().max(saga.next_attempt_at));
        engine.run_due(10).await.unwrap();
    }
    assert_eq!(rig.saga().await.status, SagaStatus::Compensating);
    assert_eq!(
        rig.order().await.payment_status(),
        PaymentStatus::Unresolved,
        "nothing decided before the provider answers"
    );
    rig.gateways.clear("get-payment");
    rig.run_to_rest(&engine).await;

    let operations = rig.gateways.operations();
    assert_eq!(
        operations[operations.len() - 3..],
        ["get-payment", "void", "release"],
        "the provider was asked and the hold it found voided: {operations:?}"
    );
    assert!(!operations[2..].contains(&"authorize"), "nothing resent");
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::PaymentFailed);
    assert_eq!(order.payment_status(), PaymentStatus::Voided);
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
}

/// Runs the placement until its authorisation is UNRESOLVED (as `rig`'s gateways are
/// scripted), cancels the order, and runs the saga to rest.
async fn cancel_while_unresolved(rig: &Rig) {
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.order().await.payment_status(),
        PaymentStatus::Unresolved
    );
    rig.cancel_order().await;
    rig.run_to_rest(&engine).await;
}

/// Regression (found by the fault-injection harness): a cancellation while an authorisation's
/// outcome was unknown released the stock and ended the order CANCELLED with its payment
/// still UNRESOLVED, never asking the provider: a hold the provider took stayed on the card.
#[tokio::test]
async fn a_cancellation_while_an_authorization_is_unresolved_voids_the_hold_it_finds() {
    let rig = Rig::new().await;
    rig.gateways.script("authorize", [Scripted::LostAnswer]);
    cancel_while_unresolved(&rig).await;

    let calls = rig.gateways.calls();
    assert_eq!(
        calls.iter().map(|c| c.operation).collect::<Vec<_>>(),
        ["reserve", "authorize", "get-payment", "void", "release"],
        "the provider was asked by the authorise key and the hold it found voided"
    );
    assert_eq!(calls[1].idempotency_key, calls[2].idempotency_key);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.payment_status(), PaymentStatus::Voided);
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
}

/// The same, when the unknown authorisation took nothing: the order records that nothing was
/// authorised instead of staying UNRESOLVED.
#[tokio::test]
async fn a_cancellation_while_an_authorization_is_unresolved_records_nothing_held() {
    let rig = Rig::new().await;
    rig.gateways.fail("authorize", [unknown()]);
    cancel_while_unresolved(&rig).await;

    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "get-payment", "release"]
    );
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.payment_status(), PaymentStatus::AuthFailed);
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
}

/// A provider (contract 0.2) that asks for a customer action (3-D Secure), expiring `ms`
/// after T0.
fn customer_action(rig: &Rig, expires_after_ms: i64) -> PaymentAction {
    let action = PaymentAction {
        url: "https://psp.example/challenge/1".to_owned(),
        expires_at: ts(T0 + expires_after_ms),
    };
    rig.gateways
        .script("authorize", [Scripted::RequiresAction(action.clone())]);
    action
}

/// The order ended `PAYMENT_FAILED` with the payment `payment` and a reason under `code`.
fn assert_payment_failed(order: &Order, payment: PaymentStatus, code: &str) {
    assert_eq!(order.status(), OrderStatus::PaymentFailed);
    assert_eq!(order.payment_status(), payment);
    let reason = order.failure_reason().unwrap_or_default();
    assert!(reason.starts_with(&format!("{code}: ")), "{reason}");
}

#[tokio::test]
async fn a_payment_that_requires_action_waits_polls_and_goes_on_once_the_customer_acted() {
    let rig = Rig::new().await;
    let action = customer_action(&rig, 10 * 60 * 1000);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Pending);
    assert_eq!(order.payment_status(), PaymentStatus::ActionRequired);
    assert_eq!(order.payment_action(), Some(&action), "shown on the order");
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Running);
    assert_eq!(saga.next_attempt_at, ts(T0 + 5_000), "polled in 5 s");
    assert_eq!(
        rig.committed_effects().await,
        ["reserve-inventory:reserve", "authorize-payment:authorize"],
        "the reservation and the pending payment are durable while the customer acts"
    );

    // Still waiting at the first poll.
    rig.clock.set(ts(T0 + 5_000));
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "get-payment"]
    );
    assert_eq!(rig.saga().await.next_attempt_at, ts(T0 + 10_000));

    rig.gateways
        .customer_acted(&rig.saga.id.to_string(), ProviderPaymentState::Authorized);
    rig.clock.set(ts(T0 + 10_000));
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "get-payment", "get-payment"],
        "nothing resent: the poll found the payment authorized"
    );
    let calls = rig.gateways.calls();
    assert_eq!(calls[1].idempotency_key, calls[3].idempotency_key);
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert_eq!(order.payment_status(), PaymentStatus::Authorized);
    assert_eq!(order.payment_action(), None);
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
}

#[tokio::test]
async fn a_customer_action_that_expires_cancels_the_payment_and_fails_it_with_a_stable_code() {
    let rig = Rig::new().await;
    customer_action(&rig, 12_000);
    let engine = rig.engine("w1");
    let runs = rig.run_to_rest(&engine).await;
    assert_eq!(
        runs,
        [0, 5_000, 10_000, 12_000],
        "polled until the expiry, not after"
    );
    assert_eq!(
        rig.gateways.operations(),
        [
            "reserve",
            "authorize",
            "get-payment",
            "get-payment",
            "get-payment",
            "get-payment",
            "void",
            "release"
        ],
        "after the last poll the compensation asks once more (the customer may have acted), \
         cancels the pending payment at the provider, then releases the stock"
    );
    let order = rig.order().await;
    assert_payment_failed(&order, PaymentStatus::Voided, "PAYMENT_ACTION_EXPIRED");
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
    assert_eq!(rig.saga().await.status, SagaStatus::Compensated);
}

#[tokio::test]
async fn a_customer_who_fails_the_action_fails_the_payment() {
    let rig = Rig::new().await;
    customer_action(&rig, 60_000);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    rig.gateways
        .customer_acted(&rig.saga.id.to_string(), ProviderPaymentState::Declined);
    rig.run_to_rest(&engine).await;
    assert_eq!(
        rig.gateways.operations(),
        [
            "reserve",
            "authorize",
            "get-payment",
            "get-payment",
            "release"
        ],
        "nothing to void: a provider refuses to void a declined payment"
    );
    let order = rig.order().await;
    assert_payment_failed(&order, PaymentStatus::AuthFailed, "PAYMENT_DECLINED");
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
    assert_eq!(
        rig.saga().await.status,
        SagaStatus::Compensated,
        "not parked"
    );
}

#[tokio::test]
async fn an_action_answered_already_expired_is_still_cancelled_at_the_provider() {
    let rig = Rig::new().await;
    // The provider's expiry is before the answer arrives (a clock skew, a resend after a
    // long outage).
    rig.clock.set(ts(T0 + 20_000));
    customer_action(&rig, 10_000);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.gateways.operations(),
        [
            "reserve",
            "authorize",
            "get-payment",
            "get-payment",
            "void",
            "release"
        ],
        "recorded, polled at once by the same worker, expired, cancelled"
    );
    let order = rig.order().await;
    assert_payment_failed(&order, PaymentStatus::Voided, "PAYMENT_ACTION_EXPIRED");
}

#[tokio::test]
async fn news_from_the_provider_makes_a_waiting_payment_due_at_once() {
    let rig = Rig::new().await;
    customer_action(&rig, 60_000);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    let wakeup = Arc::new(tokio::sync::Notify::new());
    let operations = SagaOperations::new(
        rig.store.clone(),
        rig.store.clone(),
        rig.clock.clone(),
        OrderChanges::default(),
        wakeup.clone(),
    );
    rig.clock.set(ts(T0 + 1_000));
    assert_eq!(operations.payment_news(rig.order).await.unwrap(), 1);
    assert_eq!(rig.saga().await.next_attempt_at, ts(T0 + 1_000));
    assert!(
        futures::FutureExt::now_or_never(wakeup.notified()).is_some(),
        "the workers are woken"
    );
    assert_eq!(
        operations.payment_news(rig.order).await.unwrap(),
        0,
        "a saga already due is left alone"
    );
}

#[tokio::test]
async fn a_cancellation_while_the_customer_acts_cancels_the_payment_at_the_provider() {
    let rig = Rig::new().await;
    customer_action(&rig, 60_000);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    rig.cancel_order().await;
    rig.run_to_rest(&engine).await;
    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "get-payment", "void", "release"]
    );
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.payment_status(), PaymentStatus::Voided);
}

#[tokio::test]
async fn a_cancellation_during_placement_undoes_every_step_in_reverse() {
    let rig = Rig::new().await;
    // The order is cancelled while the authorisation is in flight.
    rig.cancel_during("authorize");
    let engine = rig.engine("w1");
    rig.run_to_rest(&engine).await;

    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "void", "release"],
        "the hold taken under the cancellation is voided too, money before stock"
    );
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.payment_status(), PaymentStatus::Voided);
    assert_eq!(order.reservation_status(), ReservationStatus::Released);
    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    let undone: Vec<_> = rig
        .store
        .steps(saga.id)
        .into_iter()
        .filter(|s| s.direction == StepDirection::Compensate)
        .map(|s| s.step)
        .collect();
    assert_eq!(undone, ["authorize-payment", "reserve-inventory"]);
}

#[tokio::test]
async fn a_cancellation_between_steps_stops_the_placement() {
    let rig = Rig::new().await;
    rig.gateways.fail("authorize", [transient()]);
    let engine = rig.engine("w1");
    engine.run_due(10).await.unwrap();
    assert_eq!(
        rig.order().await.reservation_status(),
        ReservationStatus::Reserved
    );
    rig.cancel_order().await;
    assert_eq!(rig.order().await.status(), OrderStatus::Cancelling);

    rig.run_to_rest(&engine).await;
    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize", "release"],
        "nothing more is sent forward once the order is cancelled"
    );
    assert_eq!(rig.order().await.status(), OrderStatus::Cancelled);
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_parks_the_saga_and_says_so() {
    let rig = Rig::new().await;
    rig.gateways.fail(
        "authorize",
        [permanent(FailureCode::PaymentDeclined, "card declined")],
    );
    rig.gateways
        .fail("release", std::iter::repeat_n(transient(), 10_000));
    let engine = rig.engine("w1");
    let runs = rig.run_to_rest(&engine).await;
    assert!(
        *runs.last().unwrap() >= 10 * 60 * 1_000,
        "the compensation retried for its whole 10-minute deadline"
    );

    let saga = rig.saga().await;
    assert_eq!(saga.status, SagaStatus::CompensationFailed);
    assert_eq!(saga.data.parked_while, Some(Direction::Compensating));
    assert_eq!(saga.current_step(), Some("reserve-inventory"));
    let order = rig.order().await;
    assert_eq!(order.status(), OrderStatus::CompensationFailed);
    assert!(
        order.failure_reason().is_some_and(
            |r| r.starts_with("PROVIDER_UNAVAILABLE: compensation of reserve-inventory failed")
        ),
        "{:?}",
        order.failure_reason()
    );
    let parked: Vec<_> = rig
        .store
        .outbox(rig.order)
        .into_iter()
        .filter(|m| m.event_type == SAGA_PARKED)
        .collect();
    assert_eq!(parked.len(), 1, "parking is announced once");
    assert_eq!(rig.store.lease(saga.id), (None, None));
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_stops_after_the_first_rejected_commit() {
    let rig = Rig::new().await;
    // While w1's reservation call hangs past its lease, w2 claims the saga.
    rig.take_over_during(&rig.saga, "reserve");
    let w1 = rig.engine("w1");
    w1.run_due(10).await.unwrap();

    assert_eq!(
        rig.gateways.operations(),
        ["reserve"],
        "w1 made one call and stopped when its commit was refused"
    );
    let saga = rig.saga().await;
    assert_eq!(saga, rig.saga, "nothing of w1's was committed");
    assert_eq!(rig.store.lease(saga.id).0.as_deref(), Some("w2"));
}

#[tokio::test]
async fn a_stale_worker_stops_at_its_refused_commit_even_when_the_order_moved_too() {
    // Found by the fault-injection harness: while w1's call outlived its lease, w2 claimed
    // the saga and the order moved on. w1's commit was refused by the order's version (the
    // order is written before the saga), w1 took that for "the order moved", and ran its
    // steps again from its stale copy of the saga: provider calls for nothing, and domain
    // refusals ("cannot change its reservation that way") logged as failed steps.
    let rig = Rig::new().await;
    rig.gateways.host_only();
    let store = rig.store.clone();
    let clock = rig.clock.clone();
    let saga_id = rig.saga.id;
    let order_id = rig.order;
    rig.gateways.before_each(move |call| {
        if call.operation == "authorize" && store.lease(saga_id).0.as_deref() == Some("w1") {
            clock.advance(LEASE + Duration::from_secs(1));
            let now = clock.now();
            let claimed = futures::executor::block_on(store.claim_due(
                "w2",
                now,
                now.saturating_add(LEASE),
                10,
            ))
            .unwrap();
            assert_eq!(claimed.len(), 1, "w2 takes over the abandoned saga");
            futures::executor::block_on(async {
                let mut order = OrderStore::get(store.as_ref(), order_id)
                    .await
                    .unwrap()
                    .unwrap();
                let base = order.version();
                let address = order.shipping_address().clone();
                let event = order.update_shipping_address(address, now).unwrap();
                save(&store, &order, Some(base), &event, None).await;
            });
        }
    });
    let w1 = rig.engine("w1");
    w1.run_due(10).await.unwrap();

    assert_eq!(
        rig.gateways.operations(),
        ["reserve", "authorize"],
        "w1 stopped at its first refused commit instead of running its steps again"
    );
    assert_eq!(rig.saga().await, rig.saga, "nothing of w1's was committed");
    assert_eq!(rig.store.lease(rig.saga.id).0.as_deref(), Some("w2"));
    assert!(rig.committed_effects().await.is_empty());
}

#[tokio::test]
async fn a_stale_worker_that_reads_the_order_after_the_new_owner_finished_stops_quietly() {
    // Found by the fault-injection harness (1-3 per long run): a worker claimed a saga, its
    // lease lapsed before it read the order (the database was away), another worker ran
    // the saga to its end, and the first one then read the order as that left it. Its steps'
    // changes were refused by the domain (`order in status CONFIRMED cannot change its
    // reservation that way`) and logged as failed steps: a warning for a worker that merely
    // lost its lease.
    let rig = Rig::new().await;
    let w1 = rig.engine("w1");
    let (mut claimed, claimed_at) = w1.claim_due(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    rig.clock.advance(LEASE + Duration::from_secs(1));
    let w2 = rig.engine("w2");
    w2.run_due(10).await.unwrap();
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
    let finished = (rig.saga().await, rig.order().await);

    let warnings = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer({
            let warnings = Arc::clone(&warnings);
            move || Capture(Arc::clone(&warnings))
        })
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    w1.drive(claimed.remove(0), claimed_at).await;
    drop(guard);

    let warnings = String::from_utf8(warnings.lock().unwrap().clone()).unwrap();
    assert!(
        warnings.is_empty(),
        "a worker that lost its lease warned: {warnings}"
    );
    assert_eq!((rig.saga().await, rig.order().await), finished);
}

/// A log writer into a shared buffer.
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_outlasts_the_lease_keeps_it_by_heartbeat() {
    // Found by the fault-injection harness: a drive longer than the lease was claimed by
    // another worker meanwhile, whose drive then also outlasted a lease, and so on until the
    // step's deadline parked the saga. The worker now renews its lease while a call runs.
    let rig = Rig::new().await;
    let release = rig.gateways.hold(&rig.saga.id.to_string());
    let driving = rig.drive_until_the_first_call("w1").await;
    // Two leases pass while the reservation hangs; each third of a lease (Tokio's paused
    // clock) the worker renews from the store's clock.
    for _ in 0..4 {
        rig.clock.advance(LEASE / 2);
        tokio::time::sleep(LEASE / 3 + Duration::from_millis(1)).await;
        assert_eq!(
            rig.store.lease(rig.saga.id),
            (
                Some("w1".to_owned()),
                Some(rig.clock.now().saturating_add(LEASE))
            ),
            "renewed while the call runs"
        );
        assert!(
            rig.claim_as("w2").await.is_empty(),
            "no other worker takes the saga over"
        );
    }
    release.notify_one();
    driving.await.unwrap();
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
    assert_eq!(rig.gateways.operations(), ["reserve", "authorize"]);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_stuck_on_the_database_never_holds_the_call_up() {
    // The first heartbeat awaited its renewal inside the call's `select!` arm: while a
    // renewal hung (the database gone), the call was not polled, and the step waited on the
    // database instead of finishing. Renewals now run beside the call.
    let rig = Rig::new().await;
    let release = rig.gateways.hold(&rig.saga.id.to_string());
    let worker = SagaEngine::new(
        SagaPorts {
            orders: rig.store.clone(),
            sagas: Arc::new(StuckRenewals(rig.store.clone())),
            payments: rig.gateways.clone(),
            inventory: rig.gateways.clone(),
        },
        rig.clock.clone(),
        OrderChanges::default(),
        rig.config("w1"),
        Arc::new(|| 0.0),
    );
    let driving = tokio::spawn(async move { worker.run_due(10).await.unwrap() });
    while rig.gateways.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    // A renewal is due after a third of the lease, and hangs; the call answers after it.
    tokio::time::sleep(LEASE / 2).await;
    release.notify_one();
    tokio::time::timeout(LEASE, driving)
        .await
        .expect("the drive went on while its renewal hung")
        .unwrap();
    assert_eq!(rig.saga().await.status, SagaStatus::Succeeded);
}

/// The test kit's store, except that a lease renewal never answers (the database went away
/// under a heartbeat).
struct StuckRenewals(Arc<MemoryStore>);

#[async_trait::async_trait]
impl SagaStore for StuckRenewals {
    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<SagaInstance>, StoreError> {
        self.0.claim_due(owner, now, lease_until, limit).await
    }
    async fn commit(&self, commit: SagaCommit<'_>) -> Result<(), StoreError> {
        self.0.commit(commit).await
    }
    async fn renew_lease(
        &self,
        _: SagaId,
        _: &str,
        _: i64,
        _: Timestamp,
    ) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn wake(&self, id: SagaId, now: Timestamp) -> Result<bool, StoreError> {
        self.0.wake(id, now).await
    }
    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>, StoreError> {
        SagaStore::get(self.0.as_ref(), id).await
    }
    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError> {
        self.0.for_order(order_id).await
    }
    async fn find(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>, StoreError> {
        self.0.find(query).await
    }
    async fn steps(&self, id: SagaId) -> Result<Vec<StepHistory>, StoreError> {
        SagaStore::steps(self.0.as_ref(), id).await
    }
    async fn plugin_builds_in_use(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.0.plugin_builds_in_use().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_never_returns_keeps_the_lease_no_longer_than_the_heartbeat_limit() {
    // The heartbeat is bounded: a drive stuck for longer than any step's calls can take
    // must not keep its saga from the other workers for good.
    let rig = Rig::new().await;
    let _never = rig.gateways.hold(&rig.saga.id.to_string());
    let driving = rig.drive_until_the_first_call("w1").await;
    let tick = LEASE / 3;
    let mut waited = Duration::ZERO;
    while waited < HEARTBEAT_LIMIT {
        rig.clock.advance(tick);
        tokio::time::sleep(tick).await;
        waited += tick;
        assert!(
            rig.claim_as("w2").await.is_empty(),
            "held by its heartbeat after {waited:?}"
        );
    }
    // No renewal after the limit: one lease later the saga is anyone's.
    let lapse = LEASE + Duration::from_millis(1);
    rig.clock.advance(lapse);
    tokio::time::sleep(lapse).await;
    assert_eq!(
        rig.claim_as("w2").await.len(),
        1,
        "the lease lapsed after the heartbeat limit"
    );
    driving.abort();
}

/// Places an order with its placement saga, due `now`.
async fn place(store: &MemoryStore, now: Timestamp) -> SagaInstance {
    let (order, event) = Order::place(sample_order(), OrderId::generate(), now);
    let saga = SagaInstance::start(SagaKind::PlaceOrder, order.id(), now);
    save(store, &order, None, &event, Some(&saga)).await;
    saga
}

/// Yields to the worker until `saga` ended, or panics after a bounded number of rounds (the
/// clock is paused: nothing else moves time).
async fn until_ended(store: &MemoryStore, saga: &SagaInstance) -> SagaStatus {
    for _ in 0..10_000 {
        let status = SagaStore::get(store, saga.id)
            .await
            .unwrap()
            .unwrap()
            .status;
        if !status.is_active() {
            return status;
        }
        tokio::task::yield_now().await;
    }
    panic!("saga {} never ended", saga.id);
}

#[tokio::test(start_paused = true)]
async fn a_worker_takes_new_work_as_soon_as_a_slot_frees() {
    use oms_application::saga::worker::{self, WorkerConfig};
    let rig = Rig::new().await;
    let slow = rig.saga.clone();
    let quick = place(&rig.store, ts(T0)).await;
    // The first saga's reservation hangs until released.
    let release = rig.gateways.hold(&slow.id.to_string());
    let wakeup = Arc::new(tokio::sync::Notify::new());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(worker::run(
        Arc::new(rig.engine("w1")),
        WorkerConfig {
            batch: 2,
            poll_interval: Duration::from_millis(100),
        },
        Arc::clone(&wakeup),
        shutdown,
    ));
    assert_eq!(until_ended(&rig.store, &quick).await, SagaStatus::Succeeded);

    // A new order while the slow saga still holds its slot: taken into the free slot at once,
    // not after the slow one finishes.
    let late = place(&rig.store, ts(T0)).await;
    wakeup.notify_one();
    assert_eq!(until_ended(&rig.store, &late).await, SagaStatus::Succeeded);
    assert!(
        rig.saga().await.status.is_active(),
        "the slow saga is still in flight"
    );

    release.notify_one();
    assert_eq!(until_ended(&rig.store, &slow).await, SagaStatus::Succeeded);
    stop.send(true).unwrap();
    worker.await.unwrap();
}

/// Cancels `order` as the CancelOrder use case would write it, at `now`.
async fn cancel(store: &MemoryStore, order: OrderId, now: Timestamp) {
    let mut order = OrderStore::get(store, order).await.unwrap().unwrap();
    let base = order.version();
    let event = order.cancel("changed my mind", now).unwrap();
    save(store, &order, Some(base), &event, None).await;
}

/// Writes `order` as its use case would: its event in the outbox, and `saga` started with it.
async fn save(
    store: &MemoryStore,
    order: &Order,
    expected_version: Option<Version>,
    event: &OrderEvent,
    saga: Option<&SagaInstance>,
) {
    let messages = vec![OutboxMessage::for_event(order, event)];
    store
        .save(OrderWrite {
            order,
            expected_version,
            outbox: &messages,
            idempotency: None,
            start_saga: saga,
            lease_saga_to: None,
        })
        .await
        .unwrap();
}
