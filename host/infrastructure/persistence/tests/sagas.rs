//! `SagaStore` against real databases: sagas start atomically with their order, at most one
//! is active per order, and a step commit is all-or-nothing and fenced by version and lease.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Stores, address, execute, lease, new_order, outbox, outbox_rows, place_with_saga, saga_for,
    step_rows, ts,
};
use oms_application::outbox::OutboxMessage;
use oms_application::ports::{
    Fence, OrderWrite, PluginCall, SagaCommit, StepDirection, StepRecord, StepState, StoreError,
};
use oms_application::saga::{Direction, SagaData, SagaInstance, SagaKind, SagaStatus};
use oms_domain::{Order, Version};
use oms_persistence::Database;

/// Places an order with a placement saga and leases the saga to `owner` until 100 s.
async fn placed_and_claimed(db: &Stores, owner: &str) -> (Order, SagaInstance) {
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    place_with_saga(db, &order, &event, &saga).await.unwrap();
    let claimed = db
        .sagas()
        .claim_due(owner, ts(2_000), ts(100_000), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed,
        std::slice::from_ref(&saga),
        "claiming changes nothing"
    );
    (order, saga)
}

/// The saga after one successful step at `at`.
fn advanced(saga: &SagaInstance, at: i64) -> SagaInstance {
    let mut next = saga.clone();
    next.step += 1;
    next.version += 1;
    next.data.reservation_id = Some("res-1".into());
    next.updated_at = ts(at);
    next
}

fn record(state: StepState, attempts: u32, call: Option<&str>, at: i64) -> StepRecord {
    StepRecord {
        step: "reserve-inventory",
        direction: StepDirection::Forward,
        call: call.map(|version| PluginCall {
            plugin: "fake-inventory".into(),
            version: version.into(),
            digest: format!("sha256:{version}"),
            ..PluginCall::default()
        }),
        idempotency_key: "saga:x:reserve-inventory:reserve".into(),
        state,
        attempts,
        last_error: (state != StepState::Succeeded).then(|| "transient: busy".into()),
        at: ts(at),
    }
}

async fn starts_with_its_order(db: Stores) {
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    place_with_saga(&db, &order, &event, &saga).await.unwrap();
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga.clone()));
    assert_eq!(db.sagas().for_order(order.id()).await.unwrap(), [saga]);

    // A write that fails (the order to update does not exist) starts no saga.
    let (mut missing, _) = new_order("cust-2", ts(1_000));
    let event = missing
        .update_shipping_address(address("Hamburg"), ts(2_000))
        .unwrap();
    let orphan = SagaInstance::start(SagaKind::CancelOrder, missing.id(), ts(2_000));
    let messages = outbox(&missing, &event);
    let err = db
        .orders()
        .save(OrderWrite {
            order: &missing,
            expected_version: Some(Version(1)),
            outbox: &messages,
            idempotency: None,
            start_saga: Some(&orphan),
            lease_saga_to: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NotFound);
    assert_eq!(db.sagas().get(orphan.id).await.unwrap(), None);
}
on_all!(start_with_order, starts_with_its_order);

async fn one_active_saga_per_order(db: Stores) {
    let (order, saga) = placed_and_claimed(&db, "w1").await;
    let mut changed = order.clone();
    let event = changed
        .update_shipping_address(address("Hamburg"), ts(3_000))
        .unwrap();
    let messages = outbox(&changed, &event);
    let cancel = SagaInstance::start(SagaKind::CancelOrder, order.id(), ts(3_000));
    let write = || OrderWrite {
        order: &changed,
        expected_version: Some(order.version()),
        outbox: &messages,
        idempotency: None,
        start_saga: Some(&cancel),
        lease_saga_to: None,
    };
    assert_eq!(
        db.orders().save(write()).await.unwrap_err(),
        StoreError::SagaActive
    );
    assert_eq!(
        db.orders().get(order.id()).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(
        outbox_rows(&db, order.id()).await,
        1,
        "no outbox row either"
    );
    assert_eq!(
        db.sagas().for_order(order.id()).await.unwrap(),
        std::slice::from_ref(&saga)
    );

    // Once the first saga has ended, the order may start another.
    let mut done = advanced(&saga, 4_000);
    done.status = SagaStatus::Succeeded;
    db.sagas()
        .commit(SagaCommit {
            saga: &done,
            expected_version: saga.version,
            fence: Fence::Lease("w1"),
            lease_until: ts(100_000),
            steps: &[],
            order: None,
        })
        .await
        .unwrap();
    db.orders().save(write()).await.unwrap();
    assert_eq!(
        db.sagas().for_order(order.id()).await.unwrap(),
        [done, cancel]
    );
}
on_all!(one_active, one_active_saga_per_order);

async fn commit_is_fenced_by_version_and_lease(db: Stores) {
    let (order, saga) = placed_and_claimed(&db, "w1").await;
    let next = advanced(&saga, 3_000);
    let step = record(StepState::Succeeded, 1, Some("1.0.0"), 3_000);
    let mut changed = order.clone();
    let event = changed
        .update_shipping_address(address("Hamburg"), ts(3_000))
        .unwrap();
    let messages = outbox(&changed, &event);
    let commit = |expected_version: i64, owner: &'static str| SagaCommit {
        saga: &next,
        expected_version,
        fence: Fence::Lease(owner),
        lease_until: ts(50_000),
        steps: std::slice::from_ref(&step),
        order: Some(OrderWrite {
            order: &changed,
            expected_version: Some(order.version()),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        }),
    };
    assert_eq!(
        db.sagas().commit(commit(7, "w1")).await.unwrap_err(),
        StoreError::LeaseLost,
        "a worker whose copy of the saga is stale no longer owns it"
    );
    assert_eq!(
        db.sagas().commit(commit(1, "w2")).await.unwrap_err(),
        StoreError::LeaseLost,
        "a worker that does not hold the lease cannot commit"
    );
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga.clone()));
    assert!(step_rows(&db, saga.id).await.is_empty());
    assert_eq!(
        db.orders().get(order.id()).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(outbox_rows(&db, order.id()).await, 1);

    db.sagas().commit(commit(1, "w1")).await.unwrap();
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(next.clone()));
    assert_eq!(step_rows(&db, saga.id).await.len(), 1);
    assert_eq!(
        db.orders().get(order.id()).await.unwrap().as_ref(),
        Some(&changed)
    );
    assert_eq!(outbox_rows(&db, order.id()).await, 2);
    assert_eq!(
        lease(&db, saga.id).await,
        (Some("w1".into()), Some(50_000)),
        "the commit extends the lease"
    );
    // A replay of the same commit (a worker that missed the answer) is refused. The order's
    // version fails first (the order is written before the saga), but the worker hears that
    // its saga is stale: told that the order moved, it would lay the same step onto the
    // order again, which already has it.
    assert_eq!(
        db.sagas().commit(commit(1, "w1")).await.unwrap_err(),
        StoreError::LeaseLost
    );
    // So does a worker that lost the saga to another one while the order moved too.
    db.sagas()
        .claim_due("w2", ts(60_000), ts(100_000), 10)
        .await
        .unwrap();
    assert_eq!(
        db.sagas().commit(commit(2, "w1")).await.unwrap_err(),
        StoreError::LeaseLost
    );
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(next.clone()));
}
on_all!(fenced_commit, commit_is_fenced_by_version_and_lease);

async fn a_lease_is_renewed_only_by_its_holder_at_its_version(db: Stores) {
    let (_, saga) = placed_and_claimed(&db, "w1").await;
    db.sagas()
        .renew_lease(saga.id, "w1", saga.version, ts(150_000))
        .await
        .unwrap();
    assert_eq!(
        lease(&db, saga.id).await,
        (Some("w1".into()), Some(150_000))
    );
    assert_eq!(
        db.sagas()
            .renew_lease(saga.id, "w2", saga.version, ts(200_000))
            .await
            .unwrap_err(),
        StoreError::LeaseLost,
        "another worker's heartbeat"
    );
    assert_eq!(
        db.sagas()
            .renew_lease(saga.id, "w1", saga.version + 1, ts(200_000))
            .await
            .unwrap_err(),
        StoreError::LeaseLost,
        "a heartbeat from a stale copy of the saga"
    );
    assert_eq!(
        lease(&db, saga.id).await,
        (Some("w1".into()), Some(150_000))
    );
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga));
}
on_all!(
    renew_lease,
    a_lease_is_renewed_only_by_its_holder_at_its_version
);

async fn order_conflict_rolls_back_the_step(db: Stores) {
    let (order, saga) = placed_and_claimed(&db, "w1").await;
    // Someone else changes the order after the worker loaded it.
    let mut theirs = order.clone();
    let event = theirs
        .update_shipping_address(address("Munich"), ts(2_500))
        .unwrap();
    let messages = outbox(&theirs, &event);
    db.orders()
        .save(OrderWrite {
            order: &theirs,
            expected_version: Some(order.version()),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();

    let next = advanced(&saga, 3_000);
    let step = record(StepState::Succeeded, 1, Some("1.0.0"), 3_000);
    let mut ours = order.clone();
    let event = ours
        .update_shipping_address(address("Hamburg"), ts(3_000))
        .unwrap();
    let messages = outbox(&ours, &event);
    let err = db
        .sagas()
        .commit(SagaCommit {
            saga: &next,
            expected_version: saga.version,
            fence: Fence::Lease("w1"),
            lease_until: ts(50_000),
            steps: std::slice::from_ref(&step),
            order: Some(OrderWrite {
                order: &ours,
                expected_version: Some(order.version()),
                outbox: &messages,
                idempotency: None,
                start_saga: None,
                lease_saga_to: None,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::VersionConflict {
            current: Version(2)
        },
        "the order's version"
    );
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga.clone()));
    assert!(step_rows(&db, saga.id).await.is_empty());
    assert_eq!(db.orders().get(order.id()).await.unwrap(), Some(theirs));
    assert_eq!(outbox_rows(&db, order.id()).await, 2);
}
on_all!(order_conflict, order_conflict_rolls_back_the_step);

async fn steps_record_attempts_and_plugin_builds(db: Stores) {
    let (_, mut saga) = placed_and_claimed(&db, "w1").await;
    let attempts = [
        record(StepState::Retrying, 1, Some("1.0.0"), 2_000),
        // Never reached the plugin (circuit open): the last known build stays recorded.
        record(StepState::Retrying, 2, None, 3_000),
        record(StepState::Succeeded, 3, Some("1.1.0"), 4_000),
    ];
    let mut seen = Vec::new();
    for step in &attempts {
        let mut next = saga.clone();
        next.version += 1;
        next.attempts = step.attempts;
        db.sagas()
            .commit(SagaCommit {
                saga: &next,
                expected_version: saga.version,
                fence: Fence::Lease("w1"),
                lease_until: ts(100_000),
                steps: std::slice::from_ref(step),
                order: None,
            })
            .await
            .unwrap();
        saga = next;
        let rows = step_rows(&db, saga.id).await;
        assert_eq!(rows.len(), 1, "one row per step and direction");
        seen.push(rows[0].clone());
    }
    let row = |version: Option<&str>, status: &str, attempts, error: bool, finished| {
        (
            "reserve-inventory".to_owned(),
            "forward".to_owned(),
            Some("fake-inventory".to_owned()),
            version.map(str::to_owned),
            version.map(|v| format!("sha256:{v}")),
            "saga:x:reserve-inventory:reserve".to_owned(),
            status.to_owned(),
            attempts,
            error.then(|| "transient: busy".to_owned()),
            Some(2_000),
            finished,
        )
    };
    assert_eq!(seen[0], row(Some("1.0.0"), "RUNNING", 1, true, None));
    assert_eq!(seen[1], row(Some("1.0.0"), "RUNNING", 2, true, None));
    assert_eq!(
        seen[2],
        row(Some("1.1.0"), "SUCCEEDED", 3, false, Some(4_000))
    );
}
on_all!(step_upsert, steps_record_attempts_and_plugin_builds);

/// The builds that served steps of open orders are in use (their follow-up calls are pinned
/// to them); once the order is terminal they are not.
async fn builds_of_open_orders_are_in_use(db: Stores) {
    let (mut order, saga) = placed_and_claimed(&db, "w1").await;
    assert_eq!(db.sagas().plugin_builds_in_use().await.unwrap(), []);
    let mut next = advanced(&saga, 3_000);
    db.sagas()
        .commit(SagaCommit {
            saga: &next,
            expected_version: saga.version,
            fence: Fence::Lease("w1"),
            lease_until: ts(100_000),
            steps: &[record(StepState::Succeeded, 1, Some("1.0.0"), 3_000)],
            order: None,
        })
        .await
        .unwrap();
    assert_eq!(
        db.sagas().plugin_builds_in_use().await.unwrap(),
        [("fake-inventory".to_owned(), "sha256:1.0.0".to_owned())]
    );

    // The order is rejected: terminal, nothing more will be called for it.
    let base = order.version();
    let event = order.reject("out of stock", ts(4_000)).unwrap();
    let outbox = [OutboxMessage::for_event(&order, &event)];
    let previous = next.version;
    next.version += 1;
    next.status = SagaStatus::Compensated;
    db.sagas()
        .commit(SagaCommit {
            saga: &next,
            expected_version: previous,
            fence: Fence::Lease("w1"),
            lease_until: ts(100_000),
            steps: &[],
            order: Some(OrderWrite {
                order: &order,
                expected_version: Some(base),
                outbox: &outbox,
                idempotency: None,
                start_saga: None,
                lease_saga_to: None,
            }),
        })
        .await
        .unwrap();
    assert_eq!(db.sagas().plugin_builds_in_use().await.unwrap(), []);
}
on_all!(builds_in_use, builds_of_open_orders_are_in_use);

async fn saga_data_round_trips(db: Stores) {
    let (order, event) = new_order("cust-1", ts(1_000));
    let mut saga = saga_for(&order, 1_000);
    saga.status = SagaStatus::Compensating;
    saga.step = 2;
    saga.attempts = 3;
    saga.step_deadline = Some(ts(9_000));
    saga.last_error = Some("declined: do_not_honor".into());
    saga.data = SagaData {
        reservation_id: Some("res-\"quoted\"-ü".into()),
        payment_id: Some("pay-1".into()),
        reservation_build: Some("sha-res".into()),
        payment_build: Some("sha-pay".into()),
        failure: Some("declined".into()),
        failed_step: Some(1),
        parked_while: Some(Direction::Compensating),
        refund_amount_minor: Some(1_250),
        step_tried: true,
    };
    place_with_saga(&db, &order, &event, &saga).await.unwrap();
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga.clone()));

    let sagas = db.sagas();
    let claimed = sagas.claim_due("w1", ts(2_000), ts(100_000), 1).await;
    assert_eq!(claimed.unwrap(), [saga.clone()]);
    let mut done = saga.clone();
    done.status = SagaStatus::Compensated;
    done.step = 0;
    done.step_deadline = None;
    done.data.payment_id = None;
    done.version += 1;
    done.updated_at = ts(3_000);
    db.sagas()
        .commit(SagaCommit {
            saga: &done,
            expected_version: saga.version,
            fence: Fence::Lease("w1"),
            lease_until: ts(100_000),
            steps: &[],
            order: None,
        })
        .await
        .unwrap();
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(done));
    assert_eq!(
        lease(&db, saga.id).await,
        (None, None),
        "an ended saga lets go of its lease"
    );
}
on_all!(data_round_trip, saga_data_round_trips);

async fn unreadable_rows_are_corrupt(db: Database) {
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    place_with_saga(&Stores::Sql(db.clone()), &order, &event, &saga)
        .await
        .unwrap();
    execute(&db, "UPDATE saga_instances SET kind = 'launch_rockets'").await;
    assert!(matches!(
        db.sagas().get(saga.id).await,
        Err(StoreError::Corrupt(_))
    ));
    execute(
        &db,
        "UPDATE saga_instances SET kind = 'place_order', state = '[1, 2]'",
    )
    .await;
    assert!(matches!(
        db.sagas().for_order(order.id()).await,
        Err(StoreError::Corrupt(_))
    ));
}
on_both!(corrupt_rows, unreadable_rows_are_corrupt);
