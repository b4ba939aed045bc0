//! The outbox as the relay claims it: what its plans and its rows must survive.
#![allow(clippy::unwrap_used)]

use oms_domain::Timestamp;
use oms_persistence::testing::TestDatabase;
use oms_persistence::{DatabaseOptions, connect};

/// Regression: the relay's claim was a prepared statement, and PostgreSQL settled on a
/// generic plan for it while the outbox was empty (it is now planned at each run). With the claim's first form (`NOT EXISTS`
/// an earlier unpublished row of the same order) that plan walked every unpublished row for
/// each candidate, so once the relay fell behind, each claim took minutes and it never caught
/// up (seen in `scripts/bench-sagas` at 300 orders/s: 40,000 rows behind, one claim running
/// for 11 minutes). Here the claim runs ten times on an empty outbox on one connection, then
/// finds 40,000 unpublished rows (two per order, never analysed, as with autovacuum off):
/// it must claim its batch well within a 10 s statement timeout (it takes milliseconds; the
/// plan's own bound is `claim_plan_reads_what_it_claims_at_any_backlog` in src/outbox.rs).
#[tokio::test]
async fn claim_is_planned_for_the_backlog_it_finds() {
    let test_db = TestDatabase::postgres().await.unwrap();
    let separator = if test_db.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}options=-c%20statement_timeout%3D10000",
        test_db.url()
    );
    // One connection: every claim runs where the plans of the earlier ones are cached.
    let options = DatabaseOptions {
        max_connections: 1,
        ..DatabaseOptions::default()
    };
    let db = connect(&url, &options).await.unwrap();
    let outbox = db.outbox();
    let now = Timestamp::from_unix_millis(1_000);
    let lease = Timestamp::from_unix_millis(60_000);
    for _ in 0..10 {
        assert!(
            outbox
                .claim(&[], now, now, lease, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
         occurred_at, created_at, next_attempt_at) \
         SELECT gen_random_uuid(), a, 'OrderCreated', 1, '{}', 0, 0, 0 \
         FROM (SELECT gen_random_uuid() AS a FROM generate_series(1, 20000)) orders, \
         generate_series(1, 2)",
    )
    .execute(db.postgres().unwrap())
    .await
    .unwrap();
    let claimed = outbox.claim(&[], now, now, lease, 100).await.unwrap();
    assert_eq!(claimed.len(), 100);
    // One row per order: each order's second event waits for its first.
    let orders: std::collections::HashSet<_> = claimed.iter().map(|r| r.aggregate_id).collect();
    assert_eq!(orders.len(), 100);
    db.close().await;
    test_db.cleanup().await.unwrap();
}

/// Regression: one row that does not decode (on SQLite, an `event_id` that is not a UUID)
/// failed every claim, so no order's events were published any more. It is now set aside
/// (never due, with the reason as `last_error`) and the other orders' events are claimed.
#[tokio::test]
async fn a_corrupt_row_is_set_aside_and_the_others_flow() {
    use oms_persistence::testing::TestBackend;
    let test_db = TestDatabase::new(TestBackend::Sqlite).await.unwrap();
    let db = test_db.connect().await.unwrap();
    let pool = &db.sqlite().unwrap().writer;
    let good_order = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
         occurred_at, created_at, next_attempt_at) VALUES \
         ('not-a-uuid', $1, 'OrderCreated', 1, '{}', 0, 0, 0), \
         ($2, $3, 'OrderCreated', 1, '{}', 0, 0, 0)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&good_order)
    .execute(pool)
    .await
    .unwrap();
    let outbox = db.outbox();
    let now = Timestamp::from_unix_millis(1_000);
    let lease = Timestamp::from_unix_millis(60_000);
    let claimed = outbox.claim(&[], now, now, lease, 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "the good row is claimed: {claimed:?}");
    assert_eq!(claimed[0].aggregate_id.to_string(), good_order);
    let (error, due): (String, i64) = sqlx::query_as(
        "SELECT last_error, next_attempt_at FROM outbox WHERE event_id = 'not-a-uuid'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(error.starts_with("corrupt outbox row"), "{error}");
    assert_eq!(due, i64::MAX, "never due again");
    // Later claims do not see it again.
    let later = Timestamp::from_unix_millis(120_000);
    let again = outbox
        .claim(&[], later, later, Timestamp::from_unix_millis(180_000), 100)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "only the good row, its lease lapsed: {again:?}"
    );
    db.close().await;
    test_db.cleanup().await.unwrap();
}

/// The same for the dead letters: one corrupt row used to fail the whole listing (and with
/// it a bulk redrive); it is left out, and the others are listed.
#[tokio::test]
async fn a_corrupt_dead_letter_does_not_hide_the_others() {
    use oms_persistence::testing::TestBackend;
    let test_db = TestDatabase::new(TestBackend::Sqlite).await.unwrap();
    let db = test_db.connect().await.unwrap();
    let pool = &db.sqlite().unwrap().writer;
    let good = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO dead_letters (id, event_id, aggregate_id, event_type, schema_version, \
         payload, occurred_at, attempts, last_error, failed_at) VALUES \
         (1, 'not-a-uuid', $1, 'OrderCreated', 1, '{}', 0, 10, 'broker down', 5), \
         (2, $2, $1, 'OrderCreated', 1, '{}', 0, 10, 'broker down', 4)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&good)
    .execute(pool)
    .await
    .unwrap();
    let listed = db.outbox().dead_letters(true, 10).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].event_id.to_string(), good);
    db.close().await;
    test_db.cleanup().await.unwrap();
}

/// The relay's claims and marks go through a pool of their own whose sessions run with
/// `synchronous_commit = off` (their loss in a database crash only publishes events again;
/// see `Pools::async_commit`), while every other connection keeps the server's setting and
/// consumers' dedup records stay on them. With that pool's connections all taken, the claim
/// and the mark wait for one and the dedup record does not; they finish once the connections
/// are back.
#[tokio::test]
async fn relay_bookkeeping_goes_through_the_async_commit_pool() {
    use std::time::Duration;
    let test_db = TestDatabase::postgres().await.unwrap();
    let db = test_db.connect().await.unwrap();
    let pools = db.postgres_pools().unwrap();
    let show = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // The server's setting, as a plain connection sees it (a test server may run with `off`).
    let mut plain = <sqlx::PgConnection as sqlx::Connection>::connect(test_db.url())
        .await
        .unwrap();
    let server: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    sqlx::Connection::close(plain).await.unwrap();
    assert_eq!(show(&pools.writer).await, server);
    assert_eq!(show(&pools.reader).await, server);
    assert_eq!(show(&pools.async_commit).await, "off");

    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
         occurred_at, created_at, next_attempt_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 'OrderCreated', 1, '{}', 0, 0, 0)",
    )
    .execute(&pools.writer)
    .await
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..pools.async_commit.options().get_max_connections() {
        held.push(pools.async_commit.acquire().await.unwrap());
    }
    let now = Timestamp::from_unix_millis(1_000);
    let lease = Timestamp::from_unix_millis(60_000);
    // Had it gone through the writer pool (free), it would finish at once.
    let claim = tokio::time::timeout(
        Duration::from_millis(300),
        db.outbox().claim(&[], now, now, lease, 10),
    )
    .await;
    assert!(
        claim.is_err(),
        "the claim did not use the async-commit pool"
    );
    // The dedup record is flushed before it returns: it does not need that pool.
    let event = uuid::Uuid::now_v7();
    db.processed_events()
        .record_all("test", &[event], now)
        .await
        .unwrap();

    drop(held);
    let claimed = db.outbox().claim(&[], now, now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut held = Vec::new();
    for _ in 0..pools.async_commit.options().get_max_connections() {
        held.push(pools.async_commit.acquire().await.unwrap());
    }
    let mark = tokio::time::timeout(
        Duration::from_millis(300),
        db.outbox().mark_published(&[claimed[0].id], now),
    )
    .await;
    assert!(mark.is_err(), "the mark did not use the async-commit pool");
    drop(held);
    db.outbox()
        .mark_published(&[claimed[0].id], now)
        .await
        .unwrap();
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&pools.reader)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
    db.close().await;
    test_db.cleanup().await.unwrap();
}
