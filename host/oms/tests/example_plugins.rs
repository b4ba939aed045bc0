//! The example payment plugins of `plugins/examples/` (Python through componentize-py,
//! JavaScript through componentize-js, Rust: the templates of `oms plugin new`) dropped into
//! a real host's plugins directory beside the bundled ones: each serves an order from
//! placement through fulfilment and a partial refund, and declines as the contract says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The durability tests' child-process host; not every helper of it is used here.
#[allow(dead_code)]
#[path = "durability/host.rs"]
mod host;
#[allow(dead_code)]
#[path = "durability/invariants.rs"]
mod invariants;

use std::path::Path;
use std::time::Duration;

use oms_grpc::pb;
use oms_persistence::testing::{TestBackend, TestDatabase};

use host::{Host, PluginDirs, order};

const EXAMPLES: [&str; 3] = ["python-pay", "js-pay", "rust-pay"];

/// `request` under `key`, with at most `secs` for the answer.
fn keyed<T>(key: &str, request: T, secs: u64) -> tonic::Request<T> {
    let mut call = tonic::Request::new(request);
    call.metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    call.set_timeout(Duration::from_secs(secs));
    call
}

/// The order's states as `WatchOrder` streams them, until `done` holds (within 60 s).
async fn watch_until(host: &Host, order_id: &str, done: impl Fn(&pb::Order) -> bool) -> pb::Order {
    let request = pb::WatchOrderRequest {
        order_id: order_id.into(),
    };
    let mut stream = host
        .client()
        .watch_order(request)
        .await
        .expect("WatchOrder")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let order = stream
                .message()
                .await
                .expect("watch stream")
                .unwrap_or_else(|| panic!("the watch of {order_id} ended before the state"));
            if done(&order) {
                return order;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{order_id} did not reach the state within 60 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_example_plugin_serves_an_order_in_a_real_host() {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins-examples");
    let dirs = PluginDirs::new();
    for name in EXAMPLES {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join(&file), dirs.plugins.path().join(&file)).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run scripts/build-example-plugins",
                    built.join(&file).display()
                )
            });
        }
    }
    let db = TestDatabase::new(TestBackend::Sqlite).await.unwrap();
    let host = Host::start(db.url(), &dirs).await;

    for name in EXAMPLES {
        let mut request = order(name, "DEMO-1", "tok_ok");
        request.payment.as_mut().unwrap().provider = name.into();
        let placed = host
            .client()
            .create_order(keyed(&format!("{name}-place"), request, 60))
            .await
            .unwrap_or_else(|s| panic!("{name}: CreateOrder: {s:?}"))
            .into_inner();
        let id = placed.order_id.clone();
        let confirmed =
            watch_until(&host, &id, |o| o.status != pb::OrderStatus::Pending as i32).await;
        assert_eq!(
            (confirmed.status(), confirmed.payment_status()),
            (pb::OrderStatus::Confirmed, pb::PaymentStatus::Authorized),
            "{name}: {confirmed:?}"
        );

        host.client()
            .fulfill_order(keyed(
                &format!("{name}-fulfil"),
                pb::FulfillOrderRequest {
                    order_id: id.clone(),
                    expected_version: None,
                },
                30,
            ))
            .await
            .unwrap_or_else(|s| panic!("{name}: FulfillOrder: {s:?}"));
        let fulfilled = watch_until(&host, &id, |o| {
            o.status == pb::OrderStatus::Fulfilled as i32
        })
        .await;
        assert_eq!(
            fulfilled.payment_status(),
            pb::PaymentStatus::Captured,
            "{name}"
        );
        assert_eq!(
            fulfilled.captured.as_ref().unwrap().amount_minor,
            999,
            "{name}"
        );

        host.client()
            .refund_order(keyed(
                &format!("{name}-refund"),
                pb::RefundOrderRequest {
                    order_id: id.clone(),
                    amount: Some(pb::Money {
                        amount_minor: 300,
                        currency: "EUR".into(),
                    }),
                    reason: "damaged".into(),
                    expected_version: None,
                },
                30,
            ))
            .await
            .unwrap_or_else(|s| panic!("{name}: RefundOrder: {s:?}"));
        let refunded = watch_until(&host, &id, |o| {
            o.payment_status == pb::PaymentStatus::PartiallyRefunded as i32
        })
        .await;
        assert_eq!(
            refunded.refunded.as_ref().unwrap().amount_minor,
            300,
            "{name}"
        );

        // A decline fails the order with the public code, and releases its stock.
        let mut request = order(name, "DEMO-1", "tok_decline");
        request.payment.as_mut().unwrap().provider = name.into();
        let declined = host
            .client()
            .create_order(keyed(&format!("{name}-decline"), request, 60))
            .await
            .unwrap_or_else(|s| panic!("{name}: CreateOrder: {s:?}"))
            .into_inner();
        let failed = watch_until(&host, &declined.order_id, |o| {
            o.status != pb::OrderStatus::Pending as i32
        })
        .await;
        assert_eq!(
            failed.status(),
            pb::OrderStatus::PaymentFailed,
            "{name}: {failed:?}"
        );
        assert!(
            failed.failure_reason.starts_with("PAYMENT_DECLINED"),
            "{name}: {:?}",
            failed.failure_reason
        );
    }
    assert!(host.stop().await, "the host exited during the test");
}
