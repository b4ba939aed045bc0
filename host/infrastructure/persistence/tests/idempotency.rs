//! `IdempotencyStore` against real databases, including the concurrency guarantees.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Stores, fingerprint, new_order, outbox, outbox_rows, scope, ts};
use oms_application::idempotency::{
    IdempotencyClaim, IdempotencyCompletion, IdempotencyRequest, StoredError, StoredOutcome,
};
use oms_application::ports::{BeginOutcome, OrderQuery, OrderWrite, StoreError};
use oms_domain::{CustomerId, Order, OrderEvent};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(3600);

async fn begin_at(db: &Stores, key: &str, body: &[u8], now: i64) -> BeginOutcome {
    db.idempotency()
        .begin(&scope(key), &fingerprint(body), ts(now), LEASE, TTL)
        .await
        .unwrap()
}

fn proceed(outcome: BeginOutcome) -> IdempotencyClaim {
    match outcome {
        BeginOutcome::Proceed(claim) => claim,
        other => panic!("expected Proceed, got {other:?}"),
    }
}

/// 50 concurrent first requests with one key (and 50 more after the lease ran out): exactly
/// one of each wave may run.
async fn one_of_many_proceeds(db: Stores) {
    for now in [1_000, 1_000 + 11_000] {
        let tasks = (0..50).map(|_| {
            let store = db.idempotency();
            async move {
                store
                    .begin(&scope("k"), &fingerprint(b"body"), ts(now), LEASE, TTL)
                    .await
            }
        });
        let results = futures::future::join_all(tasks).await;
        let proceeded = results
            .iter()
            .filter(|r| matches!(r, Ok(BeginOutcome::Proceed(_))))
            .count();
        assert_eq!(proceeded, 1, "at {now}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(BeginOutcome::Proceed(_) | BeginOutcome::InProgress))),
            "{results:?}"
        );
    }
}
on_all!(concurrent_begin, one_of_many_proceeds);

async fn replay_after_success_and_mismatch(db: Stores) {
    let claim = proceed(begin_at(&db, "k", b"body", 1_000).await);
    let (order, event) = new_order("cust-1", ts(1_100));
    let messages = outbox(&order, &event);
    let completion = IdempotencyCompletion::Claimed {
        claim,
        outcome: StoredOutcome::success(&order),
    };
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: Some(&completion),
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();

    match begin_at(&db, "k", b"body", 2_000).await {
        BeginOutcome::Replay(outcome) => {
            assert_eq!(&outcome, completion.outcome());
            // The stored response is the order as answered (without the payment token).
            assert_eq!(outcome.replay().unwrap().id(), order.id());
        }
        other => panic!("expected Replay, got {other:?}"),
    }
    assert_eq!(
        begin_at(&db, "k", b"other body", 2_000).await,
        BeginOutcome::Mismatch
    );
    // Another key is independent.
    proceed(begin_at(&db, "k2", b"other body", 2_000).await);
}
on_all!(replay_and_mismatch, replay_after_success_and_mismatch);

async fn final_errors_replay_and_stale_leases_fail(db: Stores) {
    let claim = proceed(begin_at(&db, "k", b"body", 1_000).await);
    let outcome = StoredOutcome::Error {
        error: StoredError::IllegalTransition {
            message: "order is CANCELLED".into(),
        },
    };
    // A holder whose lease was taken over cannot complete.
    let mut stale = claim.clone();
    stale.lease_token = uuid::Uuid::now_v7();
    assert_eq!(
        db.idempotency()
            .complete(&stale, &outcome, ts(1_100))
            .await
            .unwrap_err(),
        StoreError::LeaseLost
    );
    assert_eq!(
        begin_at(&db, "k", b"body", 1_200).await,
        BeginOutcome::InProgress
    );

    db.idempotency()
        .complete(&claim, &outcome, ts(1_300))
        .await
        .unwrap();
    assert_eq!(
        begin_at(&db, "k", b"body", 1_400).await,
        BeginOutcome::Replay(outcome.clone())
    );
    // Completed: neither a second completion nor a release changes it.
    assert_eq!(
        db.idempotency()
            .complete(&claim, &outcome, ts(1_500))
            .await
            .unwrap_err(),
        StoreError::LeaseLost
    );
    db.idempotency().release(&claim).await.unwrap();
    assert_eq!(
        begin_at(&db, "k", b"body", 1_600).await,
        BeginOutcome::Replay(outcome)
    );
}
on_all!(
    complete_and_lease_lost,
    final_errors_replay_and_stale_leases_fail
);

async fn release_lets_a_retry_execute(db: Stores) {
    let claim = proceed(begin_at(&db, "k", b"body", 1_000).await);
    db.idempotency().release(&claim).await.unwrap();
    let retry = proceed(begin_at(&db, "k", b"body", 1_100).await);
    assert_ne!(retry.lease_token, claim.lease_token);
}
on_all!(release, release_lets_a_retry_execute);

async fn expired_lease_is_taken_over(db: Stores) {
    let first = proceed(begin_at(&db, "k", b"body", 1_000).await);
    // Within the lease: still running.
    assert_eq!(
        begin_at(&db, "k", b"body", 10_999).await,
        BeginOutcome::InProgress
    );
    // A different request under the key is refused even when the lease ran out...
    assert_eq!(
        begin_at(&db, "k", b"other", 11_000).await,
        BeginOutcome::Mismatch
    );
    // ...but the same request takes over.
    let second = proceed(begin_at(&db, "k", b"body", 11_000).await);
    assert_ne!(first.lease_token, second.lease_token);
    // The stalled first holder can no longer release or complete the key.
    db.idempotency().release(&first).await.unwrap();
    assert_eq!(
        begin_at(&db, "k", b"body", 11_001).await,
        BeginOutcome::InProgress
    );
}
on_all!(lease_takeover, expired_lease_is_taken_over);

async fn expired_records_count_as_absent_and_are_swept(db: Stores) {
    let short = Duration::from_secs(10);
    for key in ["a", "b", "c"] {
        let claim = db
            .idempotency()
            .begin(&scope(key), &fingerprint(b"x"), ts(1_000), LEASE, short)
            .await
            .unwrap();
        let claim = proceed(claim);
        let outcome = StoredOutcome::Error {
            error: StoredError::NotFound {
                what: "order".into(),
            },
        };
        db.idempotency()
            .complete(&claim, &outcome, ts(1_100))
            .await
            .unwrap();
    }
    // A running request whose lease is still live at the sweep.
    proceed(begin_at(&db, "live", b"x", 15_000).await);

    // Past its TTL a key is free again, even for a different request.
    let reused = db
        .idempotency()
        .begin(&scope("a"), &fingerprint(b"y"), ts(20_000), LEASE, short)
        .await
        .unwrap();
    proceed(reused);

    // "a" was renewed by the reuse; "b" and "c" are due, in batches of at most 1.
    let sweep = |now| {
        let store = db.idempotency();
        async move { store.sweep_expired(ts(now), 1).await.unwrap() }
    };
    assert_eq!(sweep(20_000).await, 1);
    assert_eq!(sweep(20_000).await, 1);
    assert_eq!(sweep(20_000).await, 0);
    assert_eq!(
        begin_at(&db, "live", b"x", 20_000).await,
        BeginOutcome::InProgress
    );
    assert_eq!(
        begin_at(&db, "a", b"y", 20_000).await,
        BeginOutcome::InProgress
    );
    proceed(begin_at(&db, "b", b"x", 20_000).await);
}
on_all!(ttl_and_sweep, expired_records_count_as_absent_and_are_swept);

/// The unclaimed completion CreateOrder writes: the key's record inserted completed with
/// `order`, created at `now`.
fn unclaimed(key: &str, body: &[u8], order: &Order, now: i64) -> IdempotencyCompletion {
    IdempotencyCompletion::Unclaimed {
        request: IdempotencyRequest {
            scope: scope(key),
            fingerprint: fingerprint(body),
        },
        outcome: StoredOutcome::success(order),
        created_at: ts(now),
        expires_at: ts(now).saturating_add(TTL),
    }
}

/// Saves `order` (created by `event`) as new, its key written as `key`.
async fn create(
    db: &Stores,
    (order, event): &(Order, OrderEvent),
    key: &IdempotencyCompletion,
) -> Result<(), StoreError> {
    let messages = outbox(order, event);
    db.orders()
        .save(OrderWrite {
            order,
            expected_version: None,
            outbox: &messages,
            idempotency: Some(key),
            start_saga: None,
            lease_saga_to: None,
        })
        .await
}

async fn orders_of(db: &Stores, customer: &str) -> Vec<Order> {
    db.orders()
        .list(&OrderQuery {
            customer_id: Some(CustomerId::parse(customer).unwrap()),
            limit: 100,
            ..OrderQuery::default()
        })
        .await
        .unwrap()
}

/// One commit: the create inserts its key completed, and the next request with the key is
/// answered from it by `begin`'s rules. A second unclaimed insert conflicts and writes
/// nothing, whatever the record's state (here: completed, a live claim, an expired record).
async fn unclaimed_insert_records_the_outcome_or_conflicts(db: Stores) {
    let first = new_order("cust-u", ts(1_000));
    let recorded = unclaimed("k", b"body", &first.0, 1_000);
    create(&db, &first, &recorded).await.unwrap();
    assert_eq!(
        begin_at(&db, "k", b"body", 2_000).await,
        BeginOutcome::Replay(recorded.outcome().clone())
    );
    assert_eq!(
        begin_at(&db, "k", b"other", 2_000).await,
        BeginOutcome::Mismatch
    );

    let second = new_order("cust-u", ts(2_000));
    assert_eq!(
        create(&db, &second, &unclaimed("k", b"body", &second.0, 2_000)).await,
        Err(StoreError::KeyExists)
    );
    // Under a live claim of the old path, too.
    proceed(begin_at(&db, "claimed", b"body", 2_000).await);
    assert_eq!(
        create(
            &db,
            &second,
            &unclaimed("claimed", b"body", &second.0, 2_000)
        )
        .await,
        Err(StoreError::KeyExists)
    );
    // Past its TTL the record still conflicts: `begin` (the caller's fallback) takes it over.
    let late = 1_000 + i64::try_from(TTL.as_millis()).unwrap() + 1;
    assert_eq!(
        create(&db, &second, &unclaimed("k", b"body", &second.0, late)).await,
        Err(StoreError::KeyExists)
    );
    proceed(begin_at(&db, "k", b"body", late).await);

    assert_eq!(db.orders().get(second.0.id()).await.unwrap(), None);
    assert_eq!(outbox_rows(&db, second.0.id()).await, 0);
    assert_eq!(orders_of(&db, "cust-u").await.len(), 1);
}
on_all!(
    unclaimed_insert,
    unclaimed_insert_records_the_outcome_or_conflicts
);

/// Crash-equivalent: the create's transaction fails after its key was inserted (here the
/// order's own insert fails: its id exists). Nothing is left, the key least of all: the
/// retry is a first request.
async fn failed_create_leaves_no_record(db: Stores) {
    let order = new_order("cust-f", ts(1_000));
    create(&db, &order, &unclaimed("a", b"body", &order.0, 1_000))
        .await
        .unwrap();
    let err = create(&db, &order, &unclaimed("b", b"body", &order.0, 1_100))
        .await
        .unwrap_err();
    assert_ne!(err, StoreError::KeyExists, "the key was free: {err:?}");
    proceed(begin_at(&db, "b", b"body", 1_200).await);
    assert_eq!(orders_of(&db, "cust-f").await.len(), 1);
}
on_all!(failed_create_keeps_no_key, failed_create_leaves_no_record);

/// 20 concurrent creates under one key, each with its own order: exactly one commits, every
/// other one conflicts having written nothing.
async fn one_of_many_unclaimed_creates_commits(db: Stores) {
    let tasks = (0..20).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            let order = new_order("cust-race", ts(1_000));
            create(&db, &order, &unclaimed("race", b"body", &order.0, 1_000)).await
        })
    });
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::KeyExists))),
        "{results:?}"
    );
    let orders = orders_of(&db, "cust-race").await;
    assert_eq!(orders.len(), 1);
    match begin_at(&db, "race", b"body", 2_000).await {
        BeginOutcome::Replay(outcome) => assert_eq!(outcome.replay().unwrap().id(), orders[0].id()),
        other => panic!("expected Replay, got {other:?}"),
    }
}
on_all!(
    concurrent_unclaimed_creates,
    one_of_many_unclaimed_creates_commits
);
