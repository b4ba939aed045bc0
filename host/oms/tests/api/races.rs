//! Many writers on one order at once (issue "Proof under fire", concurrency): every call
//! gets a documented answer, and the order and its payment end in one consistent outcome.

use std::time::Duration;

use oms_grpc::pb::OrderStatus as S;
use oms_persistence::testing::TestBackend;
use tonic::Code;

use crate::helpers::{TestApp, address, fetch_for_order, money, order_with, quiet, settle};

/// The steps of the order's sagas that completed forward, by name.
async fn completed_steps(app: &TestApp, order_id: &str) -> Vec<String> {
    let rows: Vec<(String,)> = fetch_for_order(
        &app.db,
        "SELECT st.step FROM saga_steps st JOIN saga_instances si ON si.id = st.saga_id \
         WHERE CAST(si.order_id AS TEXT) = $1 AND st.action = 'forward' \
         AND st.status = 'SUCCEEDED'",
        order_id,
    )
    .await;
    rows.into_iter().map(|r| r.0).collect()
}

/// 100 concurrent calls on a confirmed order, a quarter each of cancel, fulfil, full refund
/// and address update: each answers OK or a caller's error (`FAILED_PRECONDITION`,
/// `ABORTED`), never `INTERNAL` or `UNKNOWN`; cancellation and fulfilment exclude each other;
/// and the order ends cancelled with nothing captured, or fulfilled with the total captured
/// and never more refunded than captured.
pub async fn racing_operations_on_one_order_end_in_one_outcome(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let order = app
        .create(order_with("c-race-ops", "DEMO-1", "tok_ok"))
        .await;
    let confirmed = settle(&app, &order.order_id).await;
    assert_eq!(confirmed.status(), S::Confirmed);
    let id = order.order_id.as_str();
    let version = confirmed.version;
    let calls = (0..100).map(|i| {
        let app = &app;
        async move {
            let result = match i % 4 {
                0 => app.try_cancel(id, "race").await,
                1 => app.try_fulfill(id).await,
                2 => app.try_refund(id, None, "race").await,
                _ => {
                    app.try_update_address(id, address(&format!("City {i}")), version)
                        .await
                }
            };
            (i % 4, result)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut accepted = [0_u32; 4];
    for (op, result) in &results {
        match result {
            Ok(_) => accepted[*op] += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                "operation {op}: {status:?}"
            ),
        }
    }
    assert!(
        accepted[0] == 0 || accepted[1] == 0,
        "cancel and fulfil both accepted: {accepted:?}"
    );
    assert!(
        accepted[0] + accepted[1] >= 1,
        "neither cancel nor fulfil accepted: {accepted:?}"
    );
    assert!(
        accepted[3] <= 1,
        "one address update at one version: {accepted:?}"
    );

    let done = quiet(&app, id).await;
    let total = done.total.as_ref().unwrap().amount_minor;
    let captured = done.captured.as_ref().unwrap().amount_minor;
    let refunded = done.refunded.as_ref().unwrap().amount_minor;
    let steps = completed_steps(&app, id).await;
    match done.status() {
        S::Cancelled => {
            assert_eq!((captured, refunded), (0, 0), "{done:?}");
            assert!(!steps.iter().any(|s| s == "capture-payment"), "{steps:?}");
        }
        S::Fulfilled | S::Completed => {
            assert_eq!(captured, total, "{done:?}");
            assert!(refunded <= captured, "{done:?}");
            assert!(!steps.iter().any(|s| s == "undo-payment"), "{steps:?}");
        }
        other => panic!("unexpected outcome {other:?}: {done:?}"),
    }
    app.stop().await;
}

/// Rounds of 20 concurrent partial refunds of 40% of the capture: whatever interleaving, the
/// refunds accepted never add up to more than was captured, the ones refused say
/// `FAILED_PRECONDITION` (another refund running, or the amount exceeded), and the order ends
/// with exactly two refunds (80%) recorded.
pub async fn concurrent_refunds_never_exceed_the_capture(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let order = app
        .create(order_with("c-race-refund", "DEMO-1", "tok_ok"))
        .await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    let id = order.order_id.as_str();
    app.fulfill(id).await;
    let fulfilled = quiet(&app, id).await;
    let total = fulfilled.total.clone().unwrap();
    assert_eq!(
        fulfilled.captured.as_ref().unwrap().amount_minor,
        total.amount_minor
    );
    let part = total.amount_minor * 2 / 5;
    let mut accepted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let round = futures::future::join_all(
            (0..20).map(|_| app.try_refund(id, money(part, &total.currency), "race")),
        )
        .await;
        let mut exceeded = 0;
        for result in round {
            match result {
                Ok(_) => accepted += 1,
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    if crate::helpers::error_info(&status).0 == "AMOUNT_EXCEEDED" {
                        exceeded += 1;
                    }
                }
            }
        }
        assert!(
            accepted <= 2,
            "more refunds accepted than the capture allows: {accepted}"
        );
        if exceeded == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refunds never settled"
        );
        // Let the running refund finish before the next round.
        quiet(&app, id).await;
    }
    let done = quiet(&app, id).await;
    assert_eq!(accepted, 2);
    assert_eq!(
        done.refunded.as_ref().unwrap().amount_minor,
        2 * part,
        "{done:?}"
    );
    assert!(done.refunded.unwrap().amount_minor <= done.captured.unwrap().amount_minor);
    app.stop().await;
}
