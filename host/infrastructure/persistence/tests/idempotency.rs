//! `IdempotencyStore` against real databases, including the concurrency guarantees.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Stores, fingerprint, new_order, outbox, scope, ts};
use oms_application::idempotency::{
    IdempotencyClaim, IdempotencyCompletion, StoredError, StoredOutcome,
};
use oms_application::ports::{BeginOutcome, OrderWrite, StoreError};

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
    let completion = IdempotencyCompletion {
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
            assert_eq!(outcome, completion.outcome);
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
