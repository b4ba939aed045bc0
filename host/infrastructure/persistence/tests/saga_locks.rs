//! Lock order on PostgreSQL: a saga commit that changes the order and an order write that
//! starts a second saga for the same order must not deadlock (PostgreSQL would break the
//! cycle only after `deadlock_timeout`, failing one side).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{address, new_order, outbox, place_with_saga, saga_for, ts};
use oms_application::ports::{Fence, OrderWrite, SagaCommit};
use oms_persistence::testing::TestDatabase;
use sqlx::{Connection, PgConnection};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_commit_and_saga_start_do_not_deadlock() {
    let test_db = TestDatabase::postgres().await.unwrap();
    let db = test_db.connect().await.unwrap();
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    place_with_saga(&common::Stores::Sql(db.clone()), &order, &event, &saga)
        .await
        .unwrap();
    let claimed = db.sagas().claim_due("w1", ts(2_000), ts(100_000), 1).await;
    assert_eq!(claimed.unwrap().len(), 1);

    // An order write that will start a second saga is under way: it holds the order row.
    let mut starter = PgConnection::connect(test_db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut starter).await.unwrap();
    sqlx::query("UPDATE orders SET updated_at = updated_at + 1 WHERE id = $1")
        .bind(order.id().as_uuid())
        .execute(&mut starter)
        .await
        .unwrap();

    // The worker commits a step that changes the order: it queues behind the starter.
    let order_id = order.id();
    let sagas = db.sagas();
    let worker = tokio::spawn(async move {
        let mut next = saga.clone();
        next.step = 1;
        next.version = 2;
        let mut changed = order.clone();
        let event = changed
            .update_shipping_address(address("Hamburg"), ts(3_000))
            .unwrap();
        let messages = outbox(&changed, &event);
        sagas
            .commit(SagaCommit {
                saga: &next,
                expected_version: 1,
                fence: Fence::Lease("w1"),
                lease_until: ts(100_000),
                steps: &[],
                order: Some(OrderWrite {
                    order: &changed,
                    expected_version: Some(order.version()),
                    outbox: &messages,
                    idempotency: None,
                    start_saga: None,
                    lease_saga_to: None,
                }),
            })
            .await
    });
    // Wait until PostgreSQL reports the worker's statement blocked on a lock (bounded), so
    // the test proceeds on the state it is about, not on a guess of how long that takes.
    let mut observer = PgConnection::connect(test_db.url()).await.unwrap();
    let blocked = async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database())",
            )
            .fetch_one(&mut observer)
            .await
            .unwrap();
            if waiting || worker.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the worker's commit reaches the database within 10 s");
    assert!(!worker.is_finished(), "the worker waits for the order row");

    // The starter inserts its saga. Had the worker updated its saga row before queueing for
    // the order, this insert would wait for the worker: a deadlock. It must fail at once.
    let insert = sqlx::query(
        "INSERT INTO saga_instances (id, kind, order_id, status, next_attempt_at, created_at, \
         updated_at) VALUES ($1, 'cancel_order', $2, 'RUNNING', 0, 0, 0)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(order_id.as_uuid())
    .execute(&mut starter);
    let err = tokio::time::timeout(Duration::from_millis(500), insert)
        .await
        .expect("the second saga's insert must not wait")
        .unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("23505"), "one active saga per order");
    sqlx::query("ROLLBACK").execute(&mut starter).await.unwrap();

    worker.await.unwrap().unwrap();
    drop(starter);
    drop(observer);
    db.close().await;
    test_db.cleanup().await.unwrap();
}
