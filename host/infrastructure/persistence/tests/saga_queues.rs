//! Which sagas are picked up: `claim_due` (what a worker may lease; concurrent workers on two
//! connection pools, as two host processes would have, never lease the same saga twice) and
//! `find` (the operators' lists).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};

use common::{Stores, lease, new_order, place_with_saga, saga_for, ts};
use oms_application::ports::SagaQuery;
use oms_application::ports::{OrderWrite, SagaLease};
use oms_application::saga::{SagaId, SagaInstance, SagaKind, SagaStatus};
use oms_persistence::testing::{TestBackend, TestDatabase};

/// Starts one saga (on an order of its own) with the given status and due time.
async fn start(db: &Stores, status: SagaStatus, due: i64) -> SagaInstance {
    let (order, event) = new_order("cust-1", ts(100));
    let mut saga = saga_for(&order, 100);
    saga.status = status;
    saga.next_attempt_at = ts(due);
    place_with_saga(db, &order, &event, &saga).await.unwrap();
    saga
}

async fn claim(db: &Stores, owner: &str, now: i64, until: i64, limit: u32) -> Vec<SagaId> {
    let sagas = db.sagas();
    let claimed = sagas.claim_due(owner, ts(now), ts(until), limit).await;
    claimed.unwrap().into_iter().map(|s| s.id).collect()
}

async fn claims_due_unleased_active_sagas(db: Stores) {
    let first = start(&db, SagaStatus::Running, 1_000).await;
    let compensating = start(&db, SagaStatus::Compensating, 1_050).await;
    let second = start(&db, SagaStatus::Running, 1_100).await;
    let third = start(&db, SagaStatus::Running, 1_200).await;
    let _later = start(&db, SagaStatus::Running, 10_000).await;
    let _done = start(&db, SagaStatus::Succeeded, 1_000).await;
    let _parked = start(&db, SagaStatus::CompensationFailed, 1_000).await;

    assert_eq!(
        claim(&db, "a", 2_000, 5_000, 2).await,
        [first.id, compensating.id],
        "most overdue first, at most `limit`"
    );
    assert_eq!(
        claim(&db, "b", 2_000, 6_000, 10).await,
        [second.id, third.id],
        "not the ones leased to a, not future, ended or parked ones"
    );
    assert_eq!(claim(&db, "c", 3_000, 9_000, 10).await, [], "leases live");
    assert_eq!(
        claim(&db, "c", 5_001, 9_000, 10).await,
        [first.id, compensating.id],
        "a's expired leases are taken over; b's still holds"
    );
    assert_eq!(lease(&db, first.id).await, (Some("c".into()), Some(9_000)));
    assert_eq!(lease(&db, second.id).await, (Some("b".into()), Some(6_000)));
    let reread = db.sagas().get(first.id).await.unwrap();
    assert_eq!(reread, Some(first), "claiming does not bump the version");
    assert_eq!(claim(&db, "d", 5_001, 9_000, 0).await, []);
}
on_all!(claim_due, claims_due_unleased_active_sagas);

/// A saga started leased (the placement its creating process drives at once) is nobody
/// else's until that lease runs out; then any worker may resume it, as after a crash.
async fn a_saga_started_leased_waits_out_its_lease(db: Stores) {
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    let messages = common::outbox(&order, &event);
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: Some(&saga),
            lease_saga_to: Some(SagaLease {
                owner: "host-a-inline",
                until: ts(31_000),
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        lease(&db, saga.id).await,
        (Some("host-a-inline".into()), Some(31_000))
    );
    assert_eq!(claim(&db, "w1", 2_000, 60_000, 10).await, []);
    assert_eq!(claim(&db, "w1", 31_001, 60_000, 10).await, [saga.id]);
}
on_all!(started_leased, a_saga_started_leased_waits_out_its_lease);

async fn operator_queue_is_oldest_first(db: Stores) {
    let mut parked = Vec::new();
    for created in [1_000, 3_000, 2_000] {
        let (order, event) = new_order("cust-1", ts(created));
        let mut saga = saga_for(&order, created);
        saga.status = SagaStatus::CompensationFailed;
        place_with_saga(&db, &order, &event, &saga).await.unwrap();
        parked.push(saga);
    }
    let running = start(&db, SagaStatus::Running, 500).await;
    let sagas = db.sagas();
    let find = |statuses: &[SagaStatus], kind, updated_before, limit| {
        let query = SagaQuery {
            statuses: statuses.to_vec(),
            kind,
            updated_before,
            limit,
        };
        let sagas = sagas.clone();
        async move { sagas.find(&query).await.unwrap() }
    };
    let parked_only = [SagaStatus::CompensationFailed];
    assert_eq!(
        find(&parked_only, None, None, 2).await,
        [parked[0].clone(), parked[2].clone()]
    );
    assert_eq!(find(&[SagaStatus::Compensating], None, None, 10).await, []);
    // Several statuses at once, oldest first across them.
    let both = [SagaStatus::Running, SagaStatus::CompensationFailed];
    let all = find(&both, None, None, 10).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, running.id);
    // By kind: every saga here places an order.
    assert_eq!(
        find(&both, Some(SagaKind::PlaceOrder), None, 10)
            .await
            .len(),
        4
    );
    assert_eq!(find(&both, Some(SagaKind::RefundOrder), None, 10).await, []);
    // Stuck ones: last changed before the instant.
    let stuck = find(&parked_only, None, Some(parked[2].updated_at), 10).await;
    assert_eq!(stuck, [parked[0].clone()]);
    // Parked sagas wait for an operator, not for the workers.
    assert_eq!(claim(&db, "w1", 10_000, 20_000, 10).await, [running.id]);
}
on_all!(operator_queue, operator_queue_is_oldest_first);

/// 200 due sagas, two `Database`s on one database with two claiming tasks each, small
/// batches so that the claimers race many times: every saga is leased exactly once, to the
/// claimer that got it back.
async fn concurrent_claimers_never_share(backend: TestBackend) {
    let test_db = TestDatabase::new(backend).await.unwrap();
    let one = Stores::Sql(test_db.connect().await.unwrap());
    let two = Stores::Sql(test_db.connect().await.unwrap());
    for i in 0..200 {
        start(&one, SagaStatus::Running, 1_000 + i % 7).await;
    }
    let tasks = [
        (&one, "one-a"),
        (&one, "one-b"),
        (&two, "two-a"),
        (&two, "two-b"),
    ]
    .map(|(db, owner)| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = claim(&db, owner, 2_000, 60_000, 7).await;
                if batch.is_empty() {
                    return (owner, got);
                }
                got.extend(batch);
            }
        })
    });
    let mut by_owner: HashMap<&str, Vec<SagaId>> = HashMap::new();
    for task in tasks {
        let (owner, got) = task.await.unwrap();
        by_owner.insert(owner, got);
    }
    let all: Vec<SagaId> = by_owner.values().flatten().copied().collect();
    let distinct: HashSet<SagaId> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "claims per owner: {:?}", counts(&by_owner));
    assert_eq!(distinct.len(), 200, "no saga claimed twice");
    assert!(
        by_owner.values().filter(|got| !got.is_empty()).count() >= 2,
        "the claimers actually competed: {:?}",
        counts(&by_owner)
    );
    for (owner, got) in &by_owner {
        for id in got {
            let (holder, _) = lease(&one, *id).await;
            assert_eq!(
                holder.as_deref(),
                Some(*owner),
                "a later claim overwrote it"
            );
        }
    }
    assert_eq!(claim(&two, "late", 2_000, 60_000, 500).await, []);
    for stores in [one, two] {
        if let Stores::Sql(db) = stores {
            db.close().await;
        }
    }
    test_db.cleanup().await.unwrap();
}

fn counts(by_owner: &HashMap<&str, Vec<SagaId>>) -> Vec<(String, usize)> {
    by_owner
        .iter()
        .map(|(owner, got)| ((*owner).to_owned(), got.len()))
        .collect()
}

mod concurrent_claimers {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        concurrent_claimers_never_share(TestBackend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        concurrent_claimers_never_share(TestBackend::Sqlite).await;
    }
}
