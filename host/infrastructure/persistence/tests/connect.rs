//! `connect`: URL schemes, file creation, repeatable migrations, corrupt rows.

#![allow(clippy::unwrap_used)]

mod common;

use oms_application::ports::{OrderWrite, StoreError};
use oms_persistence::{DatabaseOptions, PersistenceError, connect};
use sqlx::Connection;

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let err = connect("mysql://u:secret@h/db", &DatabaseOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PersistenceError::UnsupportedUrl(_)));
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn sqlite_file_and_directories_are_created_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/oms.db");
    let url = format!("sqlite://{}", path.display());
    let db = connect(&url, &DatabaseOptions::default()).await.unwrap();
    let (order, event) = common::new_order("cust-1", common::ts(1_000));
    let messages = common::outbox(&order, &event);
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();
    db.close().await;
    assert!(path.exists());

    // Reopening runs the (already applied) migrations again and finds the data.
    let db = connect(&url, &DatabaseOptions::default()).await.unwrap();
    assert_eq!(db.orders().get(order.id()).await.unwrap(), Some(order));
    db.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let db = connect("sqlite::memory:", &DatabaseOptions::default())
        .await
        .unwrap();
    let (order, event) = common::new_order("cust-1", common::ts(1_000));
    let messages = common::outbox(&order, &event);
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();
    assert_eq!(db.orders().get(order.id()).await.unwrap(), Some(order));
}

#[tokio::test]
async fn postgres_unreachable_is_a_connect_error() {
    let options = DatabaseOptions {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..DatabaseOptions::default()
    };
    // Port 1 is never a PostgreSQL server.
    let err = connect("postgres://postgres@127.0.0.1:1/postgres", &options)
        .await
        .unwrap_err();
    assert!(matches!(err, PersistenceError::Connect { .. }), "{err}");
}

async fn unreadable_rows_are_corrupt(db: oms_persistence::Database) {
    let (order, event) = common::new_order("cust-1", common::ts(1_000));
    let messages = common::outbox(&order, &event);
    db.orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();
    // Three letters pass the schema's CHECK but are no ISO-4217 code.
    if let Some(pool) = db.postgres() {
        sqlx::query("UPDATE orders SET currency = 'ZZZ' WHERE id = $1")
            .bind(order.id().as_uuid())
            .execute(pool)
            .await
            .unwrap();
    } else {
        sqlx::query("UPDATE orders SET currency = 'ZZZ' WHERE id = ?1")
            .bind(order.id().to_string())
            .execute(&db.sqlite().unwrap().writer)
            .await
            .unwrap();
    }
    let err = db.orders().get(order.id()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}
on_both!(corrupt_rows, unreadable_rows_are_corrupt);

/// Pooled connections are not pinged before use (a round trip per checkout). A connection the
/// server dropped fails its next statement instead: retryable (`Unavailable`), and the pool
/// replaces it, so a caller that retries succeeds.
#[tokio::test]
async fn a_connection_the_server_dropped_costs_one_retryable_error() {
    let test_db = oms_persistence::testing::TestDatabase::postgres()
        .await
        .unwrap();
    let db = test_db.connect().await.unwrap();
    let pool = db.postgres().unwrap().clone();
    let order = common::insert(&common::Stores::Sql(db.clone()), "cust-1", 1_000).await;
    // Every pooled connection is idle in the pool now; the server ends them all.
    let mut admin = sqlx::PgConnection::connect(test_db.url()).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|&e| e));
    assert!(pool.size() > 0, "the pool still holds the dead connections");

    let mut failures = 0;
    let found = loop {
        match db.orders().get(order.id()).await {
            Ok(found) => break found,
            Err(StoreError::Unavailable(_)) if failures < ended.len() => failures += 1,
            Err(other) => panic!("a dropped connection must be retryable, got {other:?}"),
        }
    };
    assert_eq!(found, Some(order));
    assert!(failures >= 1, "the dead connection was used without a ping");
    drop(admin);
    db.close().await;
    test_db.cleanup().await.unwrap();
}
