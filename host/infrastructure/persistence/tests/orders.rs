//! `OrderStore` against real databases: PostgreSQL on 127.0.0.1:5432 (or `OMS_TEST_PG_URL`)
//! and a SQLite file.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Stores, address, insert, new_order, outbox, outbox_rows, ts};
use oms_application::idempotency::{IdempotencyCompletion, StoredOutcome};
use oms_application::ports::{OrderQuery, OrderWrite, StoreError};
use oms_domain::{CustomerId, OrderId, OrderStatus, Version};

async fn round_trip_with_items(db: Stores) {
    let order = insert(&db, "cust-1", 1_000).await;
    let loaded = db.orders().get(order.id()).await.unwrap().unwrap();
    assert_eq!(
        loaded, order,
        "every field and line survives, lines in request order"
    );
    assert_eq!(loaded.items()[0].sku.as_str(), "SKU-B");
    assert_eq!(outbox_rows(&db, order.id()).await, 1);
    assert_eq!(db.orders().get(OrderId::generate()).await.unwrap(), None);
}
on_all!(round_trip, round_trip_with_items);

async fn stale_version_conflicts(db: Stores) {
    let order = insert(&db, "cust-1", 1_000).await;
    let mut first = order.clone();
    let event = first
        .update_shipping_address(address("Hamburg"), ts(2_000))
        .unwrap();
    let messages = outbox(&first, &event);
    db.orders()
        .save(OrderWrite {
            order: &first,
            expected_version: Some(order.version()),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();

    // A second change computed from the same (now stale) version.
    let mut second = order.clone();
    let event = second
        .update_shipping_address(address("Munich"), ts(3_000))
        .unwrap();
    let messages = outbox(&second, &event);
    let err = db
        .orders()
        .save(OrderWrite {
            order: &second,
            expected_version: Some(order.version()),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::VersionConflict {
            current: Version(2)
        }
    );

    let stored = db.orders().get(order.id()).await.unwrap().unwrap();
    assert_eq!(stored, first, "the losing write changed nothing");
    assert_eq!(
        outbox_rows(&db, order.id()).await,
        2,
        "created + the winning update; the conflicting write left no outbox row"
    );
}
on_all!(version_conflict, stale_version_conflicts);

async fn update_of_missing_order(db: Stores) {
    let (mut order, _) = new_order("cust-1", ts(1_000));
    let event = order
        .update_shipping_address(address("Hamburg"), ts(2_000))
        .unwrap();
    let messages = outbox(&order, &event);
    let err = db
        .orders()
        .save(OrderWrite {
            order: &order,
            expected_version: Some(Version(1)),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NotFound);
    assert_eq!(outbox_rows(&db, order.id()).await, 0);
}
on_all!(not_found, update_of_missing_order);

async fn concurrent_updates_one_winner(db: Stores) {
    let order = insert(&db, "cust-1", 1_000).await;
    let tasks = (0..20).map(|i| {
        let store = db.orders();
        let mut changed = order.clone();
        async move {
            let event = changed
                .update_shipping_address(address(&format!("City {i}")), ts(2_000))
                .unwrap();
            let messages = outbox(&changed, &event);
            store
                .save(OrderWrite {
                    order: &changed,
                    expected_version: Some(Version(1)),
                    outbox: &messages,
                    idempotency: None,
                    start_saga: None,
                    lease_saga_to: None,
                })
                .await
        }
    });
    let results = futures::future::join_all(tasks).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(
            r.as_ref().unwrap_err(),
            &StoreError::VersionConflict {
                current: Version(2)
            }
        );
    }
    assert_eq!(outbox_rows(&db, order.id()).await, 2);
}
on_all!(concurrent_updates, concurrent_updates_one_winner);

async fn listing_pages_newest_first(db: Stores) {
    let mut placed = Vec::new();
    for i in 0..5 {
        let customer = if i % 2 == 0 { "cust-even" } else { "cust-odd" };
        placed.push(insert(&db, customer, 1_000 + i).await);
    }
    // Cancel the newest so that one order has another status.
    let mut cancelled = placed[4].clone();
    let event = cancelled.cancel("changed my mind", ts(5_000)).unwrap();
    let messages = outbox(&cancelled, &event);
    db.orders()
        .save(OrderWrite {
            order: &cancelled,
            expected_version: Some(Version(1)),
            outbox: &messages,
            idempotency: None,
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap();
    placed[4] = cancelled;
    let ids = |orders: &[oms_domain::Order]| orders.iter().map(|o| o.id()).collect::<Vec<_>>();

    let page1 = db
        .orders()
        .list(&OrderQuery {
            limit: 2,
            ..OrderQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page1), [placed[4].id(), placed[3].id()]);
    assert_eq!(
        page1[0], placed[4],
        "lines are loaded for every order of the page"
    );
    assert_eq!(page1[1], placed[3]);
    let page2 = db
        .orders()
        .list(&OrderQuery {
            limit: 2,
            before: Some(placed[3].id()),
            ..OrderQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page2), [placed[2].id(), placed[1].id()]);

    let even = db
        .orders()
        .list(&OrderQuery {
            limit: 10,
            customer_id: Some(CustomerId::parse("cust-even").unwrap()),
            ..OrderQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&even), [placed[4].id(), placed[2].id(), placed[0].id()]);

    let pending_even = db
        .orders()
        .list(&OrderQuery {
            limit: 10,
            status: Some(OrderStatus::Pending),
            customer_id: Some(CustomerId::parse("cust-even").unwrap()),
            ..OrderQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&pending_even), [placed[2].id(), placed[0].id()]);
    assert!(pending_even.iter().all(|o| o.items().len() == 2));
}
on_all!(listing, listing_pages_newest_first);

async fn lost_lease_rolls_back_everything(db: Stores) {
    let scope = common::scope("create-1");
    let fp = common::fingerprint(b"body");
    let lease = std::time::Duration::from_secs(1);
    let ttl = std::time::Duration::from_secs(3600);
    let oms_application::ports::BeginOutcome::Proceed(stale) = db
        .idempotency()
        .begin(&scope, &fp, ts(1_000), lease, ttl)
        .await
        .unwrap()
    else {
        panic!("first begin must proceed");
    };
    // The first holder stalls past its lease; a retry takes the key over.
    let taken = db
        .idempotency()
        .begin(&scope, &fp, ts(5_000), lease, ttl)
        .await
        .unwrap();
    assert!(matches!(
        taken,
        oms_application::ports::BeginOutcome::Proceed(_)
    ));

    let (order, event) = new_order("cust-1", ts(6_000));
    let messages = outbox(&order, &event);
    let completion = IdempotencyCompletion::Claimed {
        claim: stale,
        outcome: StoredOutcome::success(&order),
    };
    let err = db
        .orders()
        .save(OrderWrite {
            order: &order,
            expected_version: None,
            outbox: &messages,
            idempotency: Some(&completion),
            start_saga: None,
            lease_saga_to: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::LeaseLost);
    assert_eq!(db.orders().get(order.id()).await.unwrap(), None);
    assert_eq!(outbox_rows(&db, order.id()).await, 0);
}
on_all!(lease_lost, lost_lease_rolls_back_everything);
