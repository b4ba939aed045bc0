//! The scenarios, each run against PostgreSQL and SQLite by `main.rs`.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use oms_grpc::pb;
use oms_persistence::testing::TestBackend;
use tonic::Code;

use crate::helpers::{
    TestApp, address, current_version, keyed, money, outbox_event_types, valid_order,
    violated_fields, with_timeout,
};

pub async fn create_then_get_returns_the_same_order(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let created = app.create(valid_order("c-1")).await;
    assert_eq!(created.status(), pb::OrderStatus::Pending);
    assert_eq!(created.payment_status(), pb::PaymentStatus::Pending);
    assert_eq!(created.version, 1);
    assert_eq!(created.total, money(2 * 1250 + 499, "EUR"));
    assert_eq!(created.items.len(), 2);
    assert_eq!(created.payment.as_ref().unwrap().provider, "fakepay");
    let fetched = app.get(&created.order_id).await;
    assert_eq!(fetched, created);
    app.stop().await;
}

pub async fn list_paginates_newest_first_with_filters(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let customer = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(app.create(valid_order(customer)).await.order_id);
    }
    let cancelled = ids[6].clone();
    app.cancel(&cancelled, "").await;

    // Walk all pages of size 3: 3 + 3 + 1, newest first, no duplicates, no empty last page.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .list(pb::ListOrdersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await;
        pages += 1;
        assert!(!page.orders.is_empty());
        seen.extend(page.orders.into_iter().map(|o| o.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let odd = app.list_of("odd").await;
    assert_eq!(odd.len(), 3);
    assert!(odd.iter().all(|o| o.customer_id == "odd"));

    let only_cancelled = app
        .list(pb::ListOrdersRequest {
            status: pb::OrderStatus::Cancelled.into(),
            ..Default::default()
        })
        .await;
    let got: Vec<_> = only_cancelled
        .orders
        .iter()
        .map(|o| o.order_id.clone())
        .collect();
    assert_eq!(got, vec![cancelled]);

    // A token is bound to the filters it was issued for.
    let first = app
        .list(pb::ListOrdersRequest {
            page_size: 1,
            customer_id: "even".into(),
            ..Default::default()
        })
        .await;
    let err = app
        .try_list(pb::ListOrdersRequest {
            page_size: 1,
            customer_id: "odd".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["page_token"]);
    app.stop().await;
}

pub async fn every_validation_error_names_its_field(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;

    type Mutation = fn(&mut pb::CreateOrderRequest);
    let cases: Vec<(&str, Mutation)> = vec![
        ("customer_id", |r| r.customer_id.clear()),
        ("items", |r| r.items.clear()),
        ("items[0].sku", |r| r.items[0].sku = "bad sku".into()),
        ("items[1].quantity", |r| r.items[1].quantity = 0),
        ("items[0].quantity", |r| r.items[0].quantity = 10_001),
        ("items[0].unit_price", |r| r.items[0].unit_price = None),
        ("items[0].unit_price.currency", |r| {
            r.items[0].unit_price = money(1, "eur")
        }),
        ("items[0].unit_price.amount_minor", |r| {
            r.items[0].unit_price = money(-1, "EUR")
        }),
        ("items[1].unit_price.currency", |r| {
            r.items[1].unit_price = money(1, "USD")
        }),
        ("items[1].sku", |r| r.items[1].sku = r.items[0].sku.clone()),
        ("items[0]", |r| {
            r.items.truncate(1);
            r.items[0].unit_price = money(i64::MAX, "EUR");
        }),
        ("payment", |r| r.payment = None),
        ("payment.provider", |r| {
            r.payment.as_mut().unwrap().provider = "Fake Pay".into()
        }),
        ("payment.token", |r| {
            r.payment.as_mut().unwrap().token.clear()
        }),
        ("shipping_address", |r| r.shipping_address = None),
        ("shipping_address.country", |r| {
            r.shipping_address.as_mut().unwrap().country = "Germany".into()
        }),
        ("shipping_address.city", |r| {
            r.shipping_address.as_mut().unwrap().city.clear()
        }),
    ];
    for (field, mutate) in cases {
        let mut request = valid_order("c-1");
        mutate(&mut request);
        let err = app.try_create(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violated_fields(&err), [field], "{field}");
    }

    // Several problems at once are all reported.
    let mut request = valid_order("");
    request.items[0].sku.clear();
    request.shipping_address.as_mut().unwrap().country.clear();
    let err = app.try_create(request).await.unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["customer_id", "items[0].sku", "shipping_address.country"]
    );

    // An empty request names every missing part.
    let err = app
        .try_create(pb::CreateOrderRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["customer_id", "items", "payment", "shipping_address"]
    );

    // The idempotency key is validated like a field.
    let err = app
        .try_create(keyed(valid_order("c-1"), &"k".repeat(256)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["idempotency-key"]);

    let err = app.try_get("42").await.unwrap_err();
    assert_eq!(violated_fields(&err), ["order_id"]);
    let err = app
        .try_list(pb::ListOrdersRequest {
            page_size: 501,
            status: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_size", "status"]);
    let created = app.create(valid_order("c-1")).await;
    let err = app
        .try_update_address(&created.order_id, address("Paris"), 0)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["expected_version"]);
    let err = app
        .try_refund(&created.order_id, money(-5, "EUR"), "")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["amount.amount_minor"]);
    app.stop().await;
}

pub async fn failed_validation_does_not_consume_the_key(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let mut bad = valid_order("c-1");
    bad.items.clear();
    let err = app.try_create(keyed(bad, "key-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The corrected retry with the same key executes.
    let order = app.create(keyed(valid_order("c-1"), "key-1")).await;
    assert_eq!(order.status(), pb::OrderStatus::Pending);
    app.stop().await;
}

pub async fn idempotent_replay_returns_the_identical_response(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let first = app.create(keyed(valid_order("c-replay"), "replay-1")).await;
    for _ in 0..3 {
        let again = app.create(keyed(valid_order("c-replay"), "replay-1")).await;
        assert_eq!(again, first);
    }
    let listed = app.list_of("c-replay").await;
    assert_eq!(listed.len(), 1, "replays executed nothing");

    // A final error is replayed too: a stale update stays stale under its key.
    let stale = pb::UpdateShippingAddressRequest {
        order_id: first.order_id.clone(),
        shipping_address: Some(address("Rome")),
        expected_version: 9,
    };
    for _ in 0..2 {
        let err = app
            .try_update_address_with(keyed(stale.clone(), "stale-1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        assert_eq!(current_version(&err), Some(1));
    }
    // The same key on another method is another key.
    let cancelled = app
        .try_cancel_with(keyed(
            pb::CancelOrderRequest {
                order_id: first.order_id.clone(),
                ..Default::default()
            },
            "replay-1",
        ))
        .await
        .unwrap();
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    app.stop().await;
}

pub async fn key_reused_with_another_request_is_refused(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    app.create(keyed(valid_order("c-a"), "shared")).await;
    let err = app
        .try_create(keyed(valid_order("c-b"), "shared"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("different request"),
        "{}",
        err.message()
    );
    let b_orders = app.list_of("c-b").await;
    assert!(b_orders.is_empty(), "nothing was executed");
    app.stop().await;
}

pub async fn concurrent_identical_creates_make_one_order(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let calls = (0..50).map(|_| {
        let mut c = app.client.clone();
        tokio::spawn(async move {
            c.create_order(keyed(valid_order("c-race"), "race-key"))
                .await
                .map(tonic::Response::into_inner)
        })
    });
    let results = futures::future::join_all(calls).await;
    let mut ids = HashSet::new();
    for r in results {
        match r.unwrap() {
            Ok(order) => {
                ids.insert(order.order_id);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success names the same order");
    let listed = app.list_of("c-race").await;
    assert_eq!(listed.len(), 1, "exactly one order exists");
    app.stop().await;
}

pub async fn concurrent_address_updates_admit_exactly_one(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-lock")).await;
    let calls = (0..50).map(|i| {
        let mut c = app.client.clone();
        let id = order.order_id.clone();
        tokio::spawn(async move {
            c.update_shipping_address(pb::UpdateShippingAddressRequest {
                order_id: id,
                shipping_address: Some(address(&format!("City {i}"))),
                expected_version: 1,
            })
            .await
            .map(tonic::Response::into_inner)
        })
    });
    let results = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    let mut aborted = 0;
    for r in results {
        match r.unwrap() {
            Ok(o) => winners.push(o),
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert_eq!(current_version(&status), Some(2));
                aborted += 1;
            }
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(aborted, 49);
    let stored = app.get(&order.order_id).await;
    assert_eq!(stored.version, 2);
    assert_eq!(
        stored.shipping_address, winners[0].shipping_address,
        "no lost update"
    );
    app.stop().await;
}

pub async fn stale_version_is_aborted_with_the_current_version(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-v")).await;
    let updated = app
        .update_address(&order.order_id, address("Oslo"), 1)
        .await;
    assert_eq!(updated.version, 2);
    assert_eq!(updated.shipping_address.unwrap().city, "Oslo");
    let err = app
        .try_cancel_with(pb::CancelOrderRequest {
            order_id: order.order_id,
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(current_version(&err), Some(2));
    app.stop().await;
}

pub async fn watch_ends_with_deadline_exceeded(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-w")).await;
    let mut stream = app
        .watch(with_timeout(
            pb::WatchOrderRequest {
                order_id: order.order_id.clone(),
            },
            Duration::from_millis(400),
        ))
        .await;
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, order);
    // Without saga workers nothing moves the PENDING order, so the deadline ends the stream.
    let end = stream.next().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    app.stop().await;
}

pub async fn watch_follows_a_cancellation_to_its_end(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-w")).await;
    let mut stream = app
        .watch(pb::WatchOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await;
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    let moved = app
        .update_address(&order.order_id, address("Lyon"), 1)
        .await;
    let seen = stream.next().await.unwrap().unwrap();
    assert_eq!(seen, moved);
    app.cancel(&order.order_id, "changed my mind").await;
    let last = stream.next().await.unwrap().unwrap();
    assert_eq!(last.status(), pb::OrderStatus::Cancelled);
    assert_eq!(last.failure_reason, "changed my mind");
    assert!(
        stream.next().await.is_none(),
        "the stream ends at a terminal status"
    );
    app.stop().await;
}

pub async fn unknown_order_is_not_found(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let missing = "0190c3f2-7b1e-7cc0-8f35-1c1d2e3f4a5b".to_owned();
    let err = app.try_get(&missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app.try_cancel(&missing, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .try_watch(pb::WatchOrderRequest { order_id: missing })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
}

pub async fn illegal_transitions_fail_precondition(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-x")).await;
    let err = app.try_fulfill(&order.order_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = app.try_refund(&order.order_id, None, "").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    app.cancel(&order.order_id, "").await;
    let err = app
        .try_update_address(&order.order_id, address("Nice"), 2)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let stored = app.get(&order.order_id).await;
    assert_eq!(stored.version, 2, "refused changes leave no trace");
    app.stop().await;
}

pub async fn every_change_writes_its_outbox_event(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-o")).await;
    app.update_address(&order.order_id, address("Graz"), 1)
        .await;
    // A refused change writes no event.
    app.try_update_address(&order.order_id, address("Linz"), 1)
        .await
        .unwrap_err();
    app.cancel(&order.order_id, "").await;
    let events = outbox_event_types(&app.db, &order.order_id).await;
    assert_eq!(
        events,
        [
            "OrderCreated",
            "OrderShippingAddressUpdated",
            "OrderCancelled"
        ]
    );
    app.stop().await;
}

pub async fn health_and_reflection_are_served(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    // Health is re-checked as the plugins' startup load ends: SERVING follows shortly after.
    let serving = crate::health::until(
        &app,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    );
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("health SERVING within 10 s of the plugins loading");

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"oms.v1.OrderService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    app.stop().await;
}
