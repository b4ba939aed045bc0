//! The sagas end to end: orders placed through gRPC, driven by the background workers
//! through the real fakepay and local-stock plugins, ending in the right states with the
//! right events.

use std::collections::HashMap;
use std::time::Duration;

use oms_grpc::pb;
use oms_persistence::testing::TestBackend;
use pb::{OrderStatus as S, PaymentStatus as P, ReservationStatus as R};
use tonic::Code;

use crate::helpers::{
    LogCapture, TestApp, address, break_fakepay, error_info, fetch_for_order, money, omsctl,
    omsctl_json, order_with, outbox_event_id, outbox_event_types, outbox_payloads,
    plugins_with_testing, quiet, renamed_plugin, settle, wait_for_saga, wait_until,
};

pub async fn placement_confirms_with_stock_and_a_hold(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create(order_with("c-ok", "DEMO-1", "tok_ok")).await;
    assert_eq!(
        created.status(),
        S::Pending,
        "CreateOrder returns once accepted"
    );
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Confirmed, "{done:?}");
    assert_eq!(done.payment_status(), P::Authorized);
    assert_eq!(done.reservation_status(), R::Reserved);
    assert_eq!(
        outbox_event_types(&app.db, &created.order_id).await,
        ["OrderCreated", "OrderConfirmed"]
    );
    app.stop().await;
}

/// A payment plugin granted the network (a real PSP) after local-stock, whose reservation
/// would otherwise wait for the authorisation's commit: the runtime refuses to call the
/// provider while the reservation is pending, the engine commits it alone, then authorises.
/// The placement saga's row shows it: created at version 1, then one commit each for the
/// reservation, the authorisation and the confirmation (the bundled plugins, which stay in
/// the host, need one commit for all three: version 2).
pub async fn a_networked_provider_is_called_once_the_reservation_is_committed(
    backend: TestBackend,
) {
    let plugins = plugins_with_testing(&[]);
    let manifest = plugins.path().join("fakepay.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\nkv = true\n"), "{text}");
    let granted = text.replace(
        "\nkv = true\n",
        "\nkv = true\nhttp.allow = [\"127.0.0.1:9\"]\nhttp.allow_private = true\n",
    );
    std::fs::write(&manifest, granted).unwrap();
    let dir = plugins.path().to_path_buf();
    let app = TestApp::spawn_with(backend, move |config| config.plugins.dir = dir).await;
    let created = app.create(order_with("c-psp", "DEMO-1", "tok_ok")).await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Confirmed, "{done:?}");
    assert_eq!(done.payment_status(), P::Authorized);
    assert_eq!(done.reservation_status(), R::Reserved);
    let versions: Vec<(i64,)> = fetch_for_order(
        &app.db,
        "SELECT version FROM saga_instances WHERE CAST(order_id AS TEXT) = $1",
        &created.order_id,
    )
    .await;
    assert_eq!(versions, [(4,)], "created, then three commits");
    app.stop().await;
}

pub async fn out_of_stock_rejects_without_touching_payment(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app
        .create(order_with("c-oos", "OUT-OF-STOCK", "tok_ok"))
        .await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Rejected, "{done:?}");
    assert_eq!(
        done.failure_reason,
        "OUT_OF_STOCK: SKU OUT-OF-STOCK is out of stock"
    );
    assert_eq!(
        done.payment_status(),
        P::Pending,
        "no payment was attempted"
    );
    assert_eq!(done.reservation_status(), R::None);
    assert_eq!(
        outbox_event_types(&app.db, &created.order_id).await,
        ["OrderCreated", "OrderRejected"]
    );
    app.stop().await;
}

pub async fn declined_payment_releases_the_stock(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app
        .create(order_with("c-decl", "DEMO-1", "tok_decline"))
        .await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
    // The provider's own words after a stable code, not `PaymentError::Declined("...")`.
    assert_eq!(
        done.failure_reason,
        "PAYMENT_DECLINED: card declined (tok_decline)"
    );
    assert_eq!(done.payment_status(), P::AuthFailed);
    assert_eq!(
        done.reservation_status(),
        R::Released,
        "compensation released the stock"
    );
    assert_eq!(
        outbox_event_types(&app.db, &created.order_id).await,
        ["OrderCreated", "PaymentFailed"]
    );
    app.stop().await;
}

pub async fn transient_failures_are_retried_to_success(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app
        .create(order_with("c-flaky", "DEMO-2", "tok_flaky"))
        .await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Confirmed, "{done:?}");
    assert_eq!(done.payment_status(), P::Authorized);
    app.stop().await;
}

pub async fn a_provider_past_its_deadline_fails_the_payment(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create(order_with("c-slow", "DEMO-1", "tok_slow")).await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
    assert_eq!(
        done.failure_reason,
        "PLUGIN_DEADLINE_EXCEEDED: the payment plugin \"fakepay\" did not answer within its 2000 ms deadline"
    );
    assert_eq!(done.reservation_status(), R::Released);
    assert_ne!(
        done.payment_status(),
        P::Authorized,
        "no hold is left behind"
    );
    app.stop().await;
}

pub async fn a_trapping_payment_plugin_fails_the_payment(backend: TestBackend) {
    // The bundled plugins plus the test-only `trap` payment provider.
    let dir = plugins_with_testing(&["trap"]);
    let plugins = dir.path().to_owned();
    let app = TestApp::spawn_with(backend, move |config| config.plugins.dir = plugins).await;
    let mut request = order_with("c-trap", "DEMO-1", "tok_ok");
    request.payment.as_mut().unwrap().provider = "trap".into();
    let created = app.create(request).await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
    assert_eq!(done.reservation_status(), R::Released);
    // The host kept serving: the next order with a healthy provider confirms.
    let next = app
        .create(order_with("c-after-trap", "DEMO-1", "tok_ok"))
        .await;
    assert_eq!(settle(&app, &next.order_id).await.status(), S::Confirmed);
    app.stop().await;
}

pub async fn cancel_after_confirmation_voids_and_releases(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create(order_with("c-cancel", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &created.order_id).await.status(), S::Confirmed);
    let cancelling = app
        .cancel(&created.order_id, "customer changed their mind")
        .await;
    assert_eq!(cancelling.status(), S::Cancelling);
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Cancelled, "{done:?}");
    assert_eq!(done.payment_status(), P::Voided);
    assert_eq!(done.reservation_status(), R::Released);
    assert_eq!(
        outbox_event_types(&app.db, &created.order_id).await,
        [
            "OrderCreated",
            "OrderConfirmed",
            "OrderCancellationRequested",
            "OrderCancelled"
        ]
    );
    app.stop().await;
}

pub async fn cancel_while_placing_leaves_nothing_held(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    // tok_flaky keeps the placement busy with retries, so the cancel lands mid-saga (or,
    // on a fast machine, right after it): either way nothing may stay held.
    let created = app
        .create(order_with("c-race", "DEMO-1", "tok_flaky"))
        .await;
    app.cancel(&created.order_id, "").await;
    wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.status() == S::Cancelled
    })
    .await;
    // A cancel that found nothing held ends CANCELLED at once, while the placement may still
    // take the reservation it was making and then undo it: judge once its saga has ended.
    let done = quiet(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Cancelled, "{done:?}");
    assert_ne!(done.reservation_status(), R::Reserved, "{done:?}");
    assert!(
        matches!(
            done.payment_status(),
            P::Pending | P::AuthFailed | P::Voided
        ),
        "{done:?}"
    );
    app.stop().await;
}

pub async fn fulfillment_captures_and_refunds_are_bounded(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create(order_with("c-ship", "DEMO-1", "tok_ok")).await;
    settle(&app, &created.order_id).await;
    let total = created.total.clone().unwrap();
    app.fulfill(&created.order_id).await;
    let shipped = wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.status() == S::Fulfilled
    })
    .await;
    assert_eq!(shipped.payment_status(), P::Captured);
    assert_eq!(shipped.reservation_status(), R::Committed);
    assert_eq!(shipped.captured, Some(total.clone()));

    // A partial refund, then the rest, then nothing more.
    let part = total.amount_minor / 4;
    app.refund(&created.order_id, money(part, &total.currency), "")
        .await;
    let refunded = wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.payment_status() == P::PartiallyRefunded
    })
    .await;
    assert_eq!(refunded.refunded, money(part, &total.currency));
    let err = app
        .try_refund(
            &created.order_id,
            money(total.amount_minor, &total.currency),
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // An amount limit, not an illegal transition: clients tell the two apart by reason.
    assert_eq!(crate::helpers::error_info(&err).0, "AMOUNT_EXCEEDED");
    let other = if total.currency == "USD" {
        "EUR"
    } else {
        "USD"
    };
    let err = app
        .try_refund(&created.order_id, money(1, other), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(crate::helpers::error_info(&err).0, "CURRENCY_MISMATCH");
    assert_eq!(crate::helpers::violated_fields(&err), ["amount"]);
    app.refund(&created.order_id, None, "").await;
    let all = wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.payment_status() == P::Refunded
    })
    .await;
    assert_eq!(all.refunded, Some(total));
    app.stop().await;
}

pub async fn operator_retries_a_parked_cancellation_after_a_rollback(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create(order_with("c-ops", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &created.order_id).await.status(), S::Confirmed);

    // Hot-swap a broken build in as `fakepay`: every call traps.
    let _broken = break_fakepay(&app).await;

    // The cancellation cannot void the hold: it parks, and the order with it.
    app.cancel(&created.order_id, "").await;
    let parked = wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.status() == S::CompensationFailed
    })
    .await;
    assert_eq!(
        parked.payment_status(),
        P::Authorized,
        "the hold is still there"
    );
    let ops = app.server().operations();
    let queue = ops.parked(10).await.unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    let saga = &queue[0];
    assert_eq!(saga.order_id.to_string(), created.order_id);
    // A cancellation has nothing to compensate: it can only be retried.
    assert!(ops.force_compensate(saga.id).await.is_err());

    // Fix the cause, then retry: the same saga finishes the cancellation.
    let restored = omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    assert_eq!(restored["current"]["version"], "0.1.0");
    ops.retry(saga.id).await.unwrap();
    assert!(
        ops.retry(saga.id).await.is_err(),
        "only a parked saga can be retried"
    );
    let done = wait_until(&app, &created.order_id, Duration::from_secs(20), |o| {
        o.status() == S::Cancelled
    })
    .await;
    assert_eq!(done.payment_status(), P::Voided);
    assert_eq!(done.reservation_status(), R::Released);
    assert!(ops.parked(10).await.unwrap().is_empty());
    app.stop().await;
}

pub async fn a_missing_inventory_adapter_rejects_after_its_deadline(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.plugins.inventory = "no-such-adapter".into();
    })
    .await;
    let created = app.create(order_with("c-noinv", "DEMO-1", "tok_ok")).await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Rejected, "{done:?}");
    assert_eq!(
        done.failure_reason,
        "PLUGIN_NOT_INSTALLED: no inventory plugin named \"no-such-adapter\" is installed"
    );
    assert_eq!(done.payment_status(), P::Pending);
    app.stop().await;
}

pub async fn a_confirmed_order_notifies_its_customer(backend: TestBackend) {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("notifications.jsonl");
    let file = sink.clone();
    let app = TestApp::spawn_with(backend, move |config| {
        config.broker.notifications.file = file.display().to_string();
    })
    .await;
    let created = app.create(order_with("c-mail", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &created.order_id).await.status(), S::Confirmed);
    // The relay publishes OrderConfirmed, the consumer runs email-text, the sink appends a
    // line: poll the file (bounded) until the e-mail for this order is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&sink).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&created.order_id)) {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification in {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let note: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(note["recipient"], "ada@example.com", "{note}");
    assert_eq!(note["channel"], "email", "{note}");
    assert_eq!(note["formatter"], "email-text", "{note}");
    app.stop().await;
}

/// What `failure_reason` must never be: Rust formatting, a Wasm backtrace, a wall of text.
fn assert_public(reason: &str) {
    assert!(
        reason.chars().count() <= oms_application::ports::MAX_PUBLIC_REASON_CHARS,
        "{} characters: {reason}",
        reason.chars().count()
    );
    for leak in ["backtrace", "wasm", "0x", "::", "(\"", "{ ", "\n"] {
        assert!(!reason.contains(leak), "{leak:?} in {reason:?}");
    }
}

pub async fn misbehaving_payment_plugins_fail_with_their_own_code(backend: TestBackend) {
    let dir = plugins_with_testing(&["trap", "infinite-loop", "memory-bomb"]);
    let plugins = dir.path().to_owned();
    // A 300 ms step deadline leaves room for at most four attempts per order, fewer than the
    // five failures that open a plugin's circuit: each order fails on its plugin's own fault.
    let app = TestApp::spawn_with(backend, move |config| {
        config.plugins.dir = plugins;
        config.saga.step_deadline_cap_ms = 300;
    })
    .await;
    let cases = [
        (
            "trap",
            "PLUGIN_TRAPPED: the payment plugin \"trap\" crashed",
        ),
        (
            "infinite-loop",
            "PLUGIN_DEADLINE_EXCEEDED: the payment plugin \"infinite-loop\" did not answer within its 200 ms deadline",
        ),
        (
            "memory-bomb",
            "PLUGIN_MEMORY_EXCEEDED: the payment plugin \"memory-bomb\" exceeded its 64 MiB memory limit",
        ),
    ];
    for (provider, expected) in cases {
        let mut request = order_with(&format!("c-{provider}"), "DEMO-1", "tok_ok");
        request.payment.as_mut().unwrap().provider = provider.into();
        let created = app.create(request).await;
        let done = settle(&app, &created.order_id).await;
        assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
        assert_eq!(done.failure_reason, expected);
        assert_public(&done.failure_reason);
        assert_eq!(done.reservation_status(), R::Released);
    }
    app.stop().await;
}

pub async fn an_open_circuit_names_the_failure_that_opened_it(backend: TestBackend) {
    let dir = plugins_with_testing(&["trap"]);
    let plugins = dir.path().to_owned();
    let app = TestApp::spawn_with(backend, move |config| config.plugins.dir = plugins).await;
    let trapping = |customer: &str| {
        let mut request = order_with(customer, "DEMO-1", "tok_ok");
        request.payment.as_mut().unwrap().provider = "trap".into();
        request
    };
    let crashed = "PLUGIN_TRAPPED: the payment plugin \"trap\" crashed";
    let open = "PLUGIN_UNAVAILABLE: circuit open after the payment plugin \"trap\" crashed";
    // Orders on the trapping plugin until their failures open its circuit (five in a row;
    // an order retries four or five times within its 1.5 s step deadline).
    let breaker = || app.server().plugins().status_of("trap").unwrap().breaker;
    let mut placed = 0;
    while breaker() != oms_plugin_runtime::breaker::BreakerState::Open {
        assert!(placed < 5, "the circuit never opened");
        let created = app.create(trapping(&format!("c-trip-{placed}"))).await;
        let done = settle(&app, &created.order_id).await;
        assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
        assert!(
            [crashed, open].contains(&done.failure_reason.as_str()),
            "{}",
            done.failure_reason
        );
        placed += 1;
    }
    // With the circuit open, the next order's first attempts are refused without reaching
    // the plugin. A refusal is no attempt (docs/saga.md), so the order is only failed once
    // the plugin was really tried (when the breaker lets a probe through); whichever failure
    // ends it, the reason names the trap, never a bare "circuit open".
    let created = app.create(trapping("c-open")).await;
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
    assert!(
        [crashed, open].contains(&done.failure_reason.as_str()),
        "{}",
        done.failure_reason
    );
    assert_public(&done.failure_reason);
    app.stop().await;
}

pub async fn confirmation_emails_stay_out_of_the_logs(backend: TestBackend) {
    let logs = LogCapture::get();
    // No notifications file: the default sink logs them. Values unique to this test, since
    // other tests log into the same capture.
    let app = TestApp::spawn(backend).await;
    let tag = format!("{backend:?}").to_lowercase();
    let email = format!("privacy-{tag}@example.com");
    let name = format!("Grace Privacy{tag}");
    let mut request = order_with(&format!("c-privacy-{tag}"), "DEMO-1", "tok_ok");
    let address = request.shipping_address.as_mut().unwrap();
    address.email = email.clone();
    address.recipient = name.clone();
    address.line1 = format!("{tag} Secret Lane 7");
    let created = app.create(request).await;
    assert_eq!(settle(&app, &created.order_id).await.status(), S::Confirmed);
    let event_id = outbox_event_id(&app.db, &created.order_id, "OrderConfirmed").await;
    // The sink logs the confirmation under its event id: poll (bounded) until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !logs
        .text()
        .lines()
        .any(|l| l.contains(&event_id) && l.contains("email"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the confirmation e-mail {event_id} was never logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = logs.text();
    for personal in [email.as_str(), name.as_str(), &format!("{tag} Secret Lane")] {
        assert!(!text.contains(personal), "{personal:?} is in the log");
    }
    app.stop().await;
}

/// A confirmed order (tok_ok), settled.
async fn confirmed(app: &TestApp, customer: &str) -> pb::Order {
    let created = app.create(order_with(customer, "DEMO-1", "tok_ok")).await;
    let done = settle(app, &created.order_id).await;
    assert_eq!(done.status(), S::Confirmed, "{done:?}");
    done
}

/// The refusal's ErrorInfo reason, after checking it is FAILED_PRECONDITION.
fn refused(result: Result<pb::Order, tonic::Status>) -> (String, HashMap<String, String>) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    error_info(&status)
}

/// Fulfill-then-cancel (and refund, address change) while the fulfillment saga runs: the cancel
/// used to be accepted, leaving the order CANCELLING with the money captured and the stock
/// committed, and the fulfillment failing forever. Now each is refused and nothing is written.
pub async fn operations_during_fulfillment_are_refused_without_a_trace(backend: TestBackend) {
    // Captures retry for 10 s against a broken provider: the fulfillment saga is still
    // running while the requests below arrive.
    let app = TestApp::spawn_with(backend, |c| c.saga.step_deadline_cap_ms = 10_000).await;
    let order = confirmed(&app, "c-ship-race").await;
    let _broken = break_fakepay(&app).await;
    assert_eq!(app.fulfill(&order.order_id).await.status(), S::Confirmed);
    // The stock is committed; the saga now retries the capture (changing nothing).
    let requested = wait_until(&app, &order.order_id, Duration::from_secs(20), |o| {
        o.reservation_status() == R::Committed
    })
    .await;

    let (reason, _) = refused(app.try_cancel(&order.order_id, "").await);
    assert_eq!(reason, "FULFILLMENT_STARTED");
    let (reason, metadata) = refused(app.try_refund(&order.order_id, None, "").await);
    assert_eq!(reason, "OPERATION_IN_PROGRESS");
    assert_eq!(metadata["operation"], "fulfill_order", "{metadata:?}");
    assert_eq!(metadata["operation_status"], "RUNNING", "{metadata:?}");
    let address_change = app
        .try_update_address(&order.order_id, address("Nice"), requested.version)
        .await;
    assert_eq!(refused(address_change).0, "FULFILLMENT_STARTED");
    let (reason, metadata) = refused(app.try_fulfill(&order.order_id).await);
    assert_eq!(reason, "OPERATION_IN_PROGRESS");
    assert_eq!(metadata["operation"], "fulfill_order");

    let now = app.get(&order.order_id).await;
    assert_eq!(now.version, requested.version, "refusals write nothing");
    assert_eq!(now.status(), S::Confirmed);
    assert_eq!(
        outbox_event_types(&app.db, &order.order_id).await,
        [
            "OrderCreated",
            "OrderConfirmed",
            "OrderFulfillmentRequested"
        ]
    );
    let sagas = crate::helpers::sagas_of(&app.db, &order.order_id).await;
    assert_eq!(
        sagas.len(),
        2,
        "no saga started beside the fulfillment: {sagas:?}"
    );
    app.stop().await;
}

/// Cancel-then-fulfill: while the cancellation saga runs, fulfill, refund and a second cancel
/// are refused as in progress; once it ends the order is CANCELLED with nothing held, and a
/// fulfillment is an illegal transition.
pub async fn operations_during_a_cancellation_wait_for_it(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| c.saga.step_deadline_cap_ms = 10_000).await;
    let order = confirmed(&app, "c-cancel-race").await;
    let broken = break_fakepay(&app).await;
    assert_eq!(
        app.cancel(&order.order_id, "").await.status(),
        S::Cancelling
    );
    for (what, result) in [
        ("fulfill", app.try_fulfill(&order.order_id).await),
        ("refund", app.try_refund(&order.order_id, None, "").await),
        ("cancel", app.try_cancel(&order.order_id, "").await),
    ] {
        let (reason, metadata) = refused(result);
        assert_eq!(reason, "OPERATION_IN_PROGRESS", "{what}");
        assert_eq!(
            metadata["operation"], "cancel_order",
            "{what}: {metadata:?}"
        );
    }
    // The provider comes back: the cancellation's next retry voids the hold.
    omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    drop(broken);
    let done = wait_until(&app, &order.order_id, Duration::from_secs(20), |o| {
        o.status() == S::Cancelled
    })
    .await;
    assert_eq!(done.payment_status(), P::Voided);
    assert_eq!(done.reservation_status(), R::Released);
    let (reason, _) = refused(app.try_fulfill(&order.order_id).await);
    assert_eq!(
        reason, "ILLEGAL_STATE",
        "after the end, the order's state decides"
    );
    app.stop().await;
}

/// Capture fails after the stock was committed: the fulfillment parks (announced), a cancel is
/// refused for good (it used to void the hold and leave the stock committed: goods shipped
/// unpaid), and the operator's `omsctl sagas retry` finishes the fulfillment.
pub async fn a_parked_fulfillment_refuses_cancel_and_the_operator_finishes_it(
    backend: TestBackend,
) {
    let app = TestApp::spawn(backend).await;
    let order = confirmed(&app, "c-ship-fail").await;
    let broken = break_fakepay(&app).await;
    app.fulfill(&order.order_id).await;
    let saga_id = wait_for_saga(
        &app,
        &order.order_id,
        "fulfill_order",
        "COMPENSATION_FAILED",
        Duration::from_secs(20),
    )
    .await;
    let parked = app.get(&order.order_id).await;
    assert_eq!(
        parked.status(),
        S::Confirmed,
        "after the pivot the order stays"
    );
    assert_eq!(parked.reservation_status(), R::Committed);
    assert_eq!(parked.payment_status(), P::Authorized);
    // Parking is announced even though the order did not change.
    let events = outbox_payloads(&app.db, &order.order_id, "SagaParked").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["saga"]["saga_id"], saga_id.as_str());
    assert_eq!(events[0]["saga"]["kind"], "fulfill_order");
    assert_eq!(events[0]["saga"]["step"], "capture-payment");

    let (reason, _) = refused(app.try_cancel(&order.order_id, "").await);
    assert_eq!(reason, "FULFILLMENT_STARTED");
    let (reason, metadata) = refused(app.try_refund(&order.order_id, None, "").await);
    assert_eq!(reason, "OPERATION_IN_PROGRESS");
    assert_eq!(metadata["operation_status"], "COMPENSATION_FAILED");
    assert_eq!(app.get(&order.order_id).await.version, parked.version);

    // The operator lists the queue, reads the step history, rolls the plugin back and
    // retries, all with omsctl.
    let listed = omsctl_json(&app, &["sagas", "list", "--status", "COMPENSATION_FAILED"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["saga_id"], saga_id.as_str());
    assert_eq!(listed[0]["order_id"], order.order_id.as_str());
    assert_eq!(listed[0]["kind"], "fulfill_order");
    assert_eq!(listed[0]["step"], "capture-payment");
    let shown = omsctl_json(&app, &["sagas", "show", &saga_id]).await;
    let capture = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "capture-payment")
        .unwrap_or_else(|| panic!("no capture step: {shown}"));
    assert_eq!(capture["status"], "FAILED");
    assert_eq!(capture["plugin"], "fakepay");
    assert_eq!(
        capture["plugin_version"], "0.2.0-broken",
        "the history names the build that failed"
    );
    let rolled_back = omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    assert_eq!(rolled_back["current"]["version"], "0.1.0");
    drop(broken);
    let retried = omsctl(&app, &["sagas", "retry", &saga_id]).await;
    assert!(retried.status.success(), "{retried:?}");
    let done = wait_until(&app, &order.order_id, Duration::from_secs(20), |o| {
        o.status() == S::Fulfilled
    })
    .await;
    assert_eq!(done.payment_status(), P::Captured);
    assert_eq!(done.reservation_status(), R::Committed);
    let again = omsctl(&app, &["sagas", "retry", &saga_id]).await;
    assert!(!again.status.success(), "only a parked saga can be retried");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not parked"), "{stderr}");
    let listed = omsctl_json(&app, &["sagas", "list", "--status", "COMPENSATION_FAILED"]).await;
    assert_eq!(listed, serde_json::json!([]));
    // The way back after fulfillment is a refund.
    app.refund(&order.order_id, None, "").await;
    wait_until(&app, &order.order_id, Duration::from_secs(20), |o| {
        o.payment_status() == P::Refunded
    })
    .await;
    app.stop().await;
}

/// A cancel that finds nothing held yet cancels at once; the placement saga, still retrying
/// its first step, must then stop and end instead of going on for a cancelled order.
pub async fn a_cancel_before_anything_is_held_stops_the_placement(backend: TestBackend) {
    // The inventory adapter is missing: the placement retries `reserve` with nothing held.
    let app = TestApp::spawn_with(backend, |c| {
        c.plugins.inventory = "late-stock".into();
        c.saga.step_deadline_cap_ms = 60_000;
    })
    .await;
    let created = app.create(order_with("c-early", "DEMO-1", "tok_ok")).await;
    let cancelled = app.cancel(&created.order_id, "").await;
    assert_eq!(cancelled.status(), S::Cancelled, "nothing held: at once");
    // The adapter arrives: a placement that went on would now reserve stock for a cancelled
    // order and then fail at its pivot forever.
    let dir = tempfile::tempdir().unwrap();
    let manifest = renamed_plugin(dir.path(), "local-stock", "late-stock", "0.1.0");
    app.server().plugins().install(manifest).await.unwrap();
    wait_for_saga(
        &app,
        &created.order_id,
        "place_order",
        "COMPENSATED",
        Duration::from_secs(20),
    )
    .await;
    let done = app.get(&created.order_id).await;
    assert_eq!(done.status(), S::Cancelled);
    assert_ne!(done.reservation_status(), R::Reserved, "{done:?}");
    assert_eq!(done.payment_status(), P::Pending);
    assert_eq!(
        outbox_event_types(&app.db, &created.order_id).await,
        ["OrderCreated", "OrderCancelled"]
    );
    app.stop().await;
}

/// An address change beside a running placement is kept: each step re-reads the order.
pub async fn an_address_change_beside_the_placement_is_kept(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let created = app
        .create(order_with("c-move", "DEMO-1", "tok_flaky"))
        .await;
    // The placement bumps the version as it goes: re-read and retry on a conflict.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let current = app.get(&created.order_id).await;
        match app
            .try_update_address(&created.order_id, address("Lyon"), current.version)
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == Code::Aborted => {
                assert!(tokio::time::Instant::now() < deadline, "{status:?}");
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let done = settle(&app, &created.order_id).await;
    assert_eq!(done.status(), S::Confirmed, "{done:?}");
    assert_eq!(done.shipping_address.unwrap().city, "Lyon");
    app.stop().await;
}

/// A flash sale: 130 concurrent orders of one unit of a SKU with 100 in stock, through the
/// saga path where local-stock's reservation is committed with the step (its stock take is
/// a bounded add in SQL at commit, checked against every other order's): exactly 100
/// confirm, the rest are rejected as out of stock, and a cancelled order's unit comes back.
pub async fn a_hot_sku_never_oversells(backend: TestBackend) {
    const ORDERS: usize = 130;
    let one_unit = |customer: &str| {
        let mut request = order_with(customer, "LIMITED-100", "tok_ok");
        request.items[0].quantity = 1;
        request
    };
    let app = TestApp::spawn(backend).await;
    let created =
        futures::future::join_all((0..ORDERS).map(|i| app.create(one_unit(&format!("c-hot-{i}")))))
            .await;
    let mut outcomes: HashMap<S, usize> = HashMap::new();
    let mut confirmed = Vec::new();
    for order in &created {
        let done = settle(&app, &order.order_id).await;
        if done.status() == S::Rejected {
            assert_eq!(
                done.failure_reason,
                "OUT_OF_STOCK: SKU LIMITED-100 is out of stock"
            );
        }
        if done.status() == S::Confirmed {
            confirmed.push(done.order_id.clone());
        }
        *outcomes.entry(done.status()).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        HashMap::from([(S::Confirmed, 100), (S::Rejected, ORDERS - 100)])
    );

    // Sold out until a confirmed order is cancelled; then exactly one more unit is there.
    let late = app.create(one_unit("c-late")).await;
    assert_eq!(settle(&app, &late.order_id).await.status(), S::Rejected);
    let cancelled = app.cancel(&confirmed[0], "changed my mind").await;
    let cancelled = settle(&app, &cancelled.order_id).await;
    assert_eq!(cancelled.status(), S::Cancelled);
    assert_eq!(cancelled.reservation_status(), R::Released);
    let again = app.create(one_unit("c-again")).await;
    assert_eq!(settle(&app, &again.order_id).await.status(), S::Confirmed);
    let after = app.create(one_unit("c-after")).await;
    assert_eq!(settle(&app, &after.order_id).await.status(), S::Rejected);
    app.stop().await;
}
