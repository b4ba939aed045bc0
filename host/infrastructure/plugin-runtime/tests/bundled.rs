//! Every bundled plugin, loaded from its built `.wasm` by the real runtime and called.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use oms_plugin_runtime::clients::inventory::{InventoryError, Line};
use oms_plugin_runtime::clients::notification::{Channel, Customer, Event, Item, OrderSnapshot};
use oms_plugin_runtime::clients::payment::{PaymentError, PaymentLookup, PaymentStatus};
use oms_plugin_runtime::kv::{MemoryKvStore, PluginKvStore};
use oms_plugin_runtime::{CallErrorKind, PluginError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fakepay_tokens_behave_as_specified() {
    let rt = runtime();
    let info = rt.install(manifest("fakepay")).await.unwrap();
    assert_eq!(info.name, "fakepay");
    let pay = rt.payment("fakepay");

    let ok = pay
        .authorize(authorize_request("tok_ok", "k-ok"))
        .await
        .unwrap();
    assert_eq!(ok.value.payment().status, PaymentStatus::Authorized);
    assert_eq!(ok.value.payment().authorized, eur(1250));
    assert_eq!(&*ok.info.plugin, "fakepay");
    assert_eq!(&*ok.info.version, info.version.as_str());
    assert_eq!(&*ok.info.digest, info.digest.as_str());
    // Idempotent per key: the same answer, the same payment.
    let again = pay
        .authorize(authorize_request("tok_ok", "k-ok"))
        .await
        .unwrap();
    assert_eq!(again.value.payment().id, ok.value.payment().id);

    let declined = pay
        .authorize(authorize_request("tok_decline", "k-dec"))
        .await;
    match declined {
        Err(PluginError::Rejected {
            error: PaymentError::Declined(_),
            info: i,
        }) => {
            assert_eq!(&*i.plugin, "fakepay")
        }
        other => panic!("expected declined, got {other:?}"),
    }

    // tok_flaky: transient twice per key, then authorized.
    for attempt in 0..2 {
        match pay
            .authorize(authorize_request("tok_flaky", "k-flaky"))
            .await
        {
            Err(PluginError::Rejected { error, .. }) => {
                assert!(error.is_transient(), "attempt {attempt}: {error:?}")
            }
            other => panic!("attempt {attempt}: expected transient, got {other:?}"),
        }
    }
    let third = pay
        .authorize(authorize_request("tok_flaky", "k-flaky"))
        .await
        .unwrap();
    assert_eq!(third.value.payment().status, PaymentStatus::Authorized);

    // Capture more than authorized is invalid; a partial capture then a refund work.
    let id = ok.value.payment().id.clone();
    let over = pay
        .capture(id.clone(), Some(eur(5000)), "cap-over".into())
        .await;
    assert!(
        matches!(
            over,
            Err(PluginError::Rejected {
                error: PaymentError::Invalid(_),
                ..
            })
        ),
        "{over:?}"
    );
    let cap = pay
        .capture(id.clone(), Some(eur(1000)), "cap-1".into())
        .await
        .unwrap();
    assert_eq!(cap.value.status, PaymentStatus::PartiallyCaptured);
    assert_eq!(cap.value.captured, eur(1000));
    let refund = pay
        .refund(id.clone(), Some(eur(1001)), "ref-over".into())
        .await;
    assert!(
        matches!(
            refund,
            Err(PluginError::Rejected {
                error: PaymentError::Invalid(_),
                ..
            })
        ),
        "{refund:?}"
    );
    let refund = pay
        .refund(id.clone(), None, "ref-all".into())
        .await
        .unwrap();
    assert_eq!(refund.value.refunded, eur(1000));
    let got = pay.get_payment(PaymentLookup::PaymentId(id)).await.unwrap();
    assert_eq!(got.value.unwrap().status, PaymentStatus::Refunded);
    let none = pay
        .get_payment(PaymentLookup::AuthorizeKey("never-sent".into()))
        .await
        .unwrap();
    assert!(none.value.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fakepay_tok_slow_is_stopped_at_its_deadline() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let m = staged(dir.path(), "fakepay", |t| {
        set_line(&t, "deadline_ms", "300")
    });
    rt.install(&m).await.unwrap();
    let pay = rt.payment("fakepay");
    let started = std::time::Instant::now();
    let slow = pay.authorize(authorize_request("tok_slow", "k-slow")).await;
    match slow {
        Err(PluginError::Runtime(e)) => {
            assert_eq!(e.kind, CallErrorKind::DeadlineExceeded { deadline_ms: 300 });
            assert_eq!(e.info.unwrap().version.as_ref(), "0.1.0");
        }
        other => panic!("expected a deadline, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The host keeps serving the same plugin.
    pay.authorize(authorize_request("tok_ok", "k-after"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fakepay_strict_imports_no_wasi_and_works() {
    let rt = runtime();
    rt.install(manifest("fakepay-strict")).await.unwrap();
    let ok = rt
        .payment("fakepay-strict")
        .authorize(authorize_request("tok_ok", "strict-1"))
        .await
        .unwrap();
    assert_eq!(ok.value.payment().status, PaymentStatus::Authorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stock_reserves_all_or_nothing() {
    let rt = runtime();
    rt.install(manifest("local-stock")).await.unwrap();
    let inv = rt.inventory("local-stock");
    let line = |sku: &str, quantity| Line {
        sku: sku.into(),
        quantity,
    };
    let r = inv
        .reserve(
            "o1".into(),
            vec![line("DEMO-1", 2), line("DEMO-2", 1)],
            "r1".into(),
        )
        .await
        .unwrap();
    let again = inv
        .reserve(
            "o1".into(),
            vec![line("DEMO-1", 2), line("DEMO-2", 1)],
            "r1".into(),
        )
        .await
        .unwrap();
    assert_eq!(r.value, again.value, "idempotent per key");
    let short = inv
        .reserve(
            "o2".into(),
            vec![line("DEMO-1", 1), line("OUT-OF-STOCK", 1)],
            "r2".into(),
        )
        .await;
    match short {
        Err(PluginError::Rejected {
            error: InventoryError::OutOfStock(skus),
            ..
        }) => {
            assert_eq!(skus, vec!["OUT-OF-STOCK".to_string()])
        }
        other => panic!("expected out-of-stock, got {other:?}"),
    }
    inv.commit(r.value.clone(), "c1".into()).await.unwrap();
    inv.commit(r.value.clone(), "c1".into()).await.unwrap();
    let release = inv.release(r.value, "rel1".into()).await;
    assert!(
        matches!(
            release,
            Err(PluginError::Rejected {
                error: InventoryError::Invalid(_),
                ..
            })
        ),
        "{release:?}"
    );
}

/// fakepay and local-stock count their calls in KV only when a manifest asks (a KV write per
/// call that production should not pay): the bundled manifests do not, a test's copy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_counters_are_kept_only_when_the_manifest_asks() {
    let lines = || {
        vec![Line {
            sku: "DEMO-1".into(),
            quantity: 1,
        }]
    };

    let kv = Arc::new(MemoryKvStore::new());
    let rt = runtime_with(kv.clone());
    rt.install(manifest("fakepay")).await.unwrap();
    rt.install(manifest("local-stock")).await.unwrap();
    let pay = rt.payment("fakepay");
    pay.authorize(authorize_request("tok_ok", "k-quiet"))
        .await
        .unwrap();
    let inv = rt.inventory("local-stock");
    inv.reserve("o-quiet".into(), lines(), "r-quiet".into())
        .await
        .unwrap();
    assert!(kv.get("fakepay", "idem/k-quiet").await.unwrap().is_some());
    assert_eq!(
        kv.get("fakepay", "calls/authorize/k-quiet").await.unwrap(),
        None
    );
    assert_eq!(
        kv.get("local-stock", "calls/reserve/r-quiet")
            .await
            .unwrap(),
        None
    );

    let dir = tempfile::tempdir().unwrap();
    let counting =
        |text: String| text.replace("\n[config]\n", "\n[config]\ncount-calls = \"true\"\n");
    let kv = Arc::new(MemoryKvStore::new());
    let rt = runtime_with(kv.clone());
    rt.install(staged(dir.path(), "fakepay", counting))
        .await
        .unwrap();
    rt.install(staged(dir.path(), "local-stock", counting))
        .await
        .unwrap();
    let pay = rt.payment("fakepay");
    let inv = rt.inventory("local-stock");
    // Twice each: a replay of the same key reaches the plugin too, and is counted.
    for _ in 0..2 {
        pay.authorize(authorize_request("tok_ok", "k-counted"))
            .await
            .unwrap();
        inv.reserve("o-counted".into(), lines(), "r-counted".into())
            .await
            .unwrap();
    }
    assert_eq!(
        kv.get("fakepay", "calls/authorize/k-counted")
            .await
            .unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        kv.get("local-stock", "calls/reserve/r-counted")
            .await
            .unwrap(),
        Some(b"2".to_vec())
    );
}

fn event(event_type: &str) -> Event {
    Event {
        event_type: event_type.into(),
        schema_version: 1,
        event_id: "evt-1".into(),
        occurred_at_ms: 1_700_000_000_000,
        order: OrderSnapshot {
            id: "order-1".into(),
            customer: Customer {
                id: "c-1".into(),
                name: Some("Ada".into()),
                email: Some("ada@example.com".into()),
                phone: None,
            },
            status: "confirmed".into(),
            items: vec![Item {
                sku: "DEMO-1".into(),
                name: Some("Demo".into()),
                quantity: 2,
                unit_price: eur(500),
                line_total: eur(1000),
            }],
            total: eur(1000),
            shipping_address: None,
            created_at_ms: 1_700_000_000_000,
        },
        metadata: vec![("correlation-id".into(), "corr-1".into())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatters_format_an_order_event() {
    let rt = runtime();
    rt.install(manifest("email-text")).await.unwrap();
    rt.install(manifest("webhook-json")).await.unwrap();

    let email = rt
        .notification("email-text")
        .format(event("order.confirmed"))
        .await
        .unwrap();
    assert_eq!(email.value.len(), 1);
    let m = &email.value[0];
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.recipient, "ada@example.com");
    assert!(m.body.contains("order-1"), "{}", m.body);

    let hook = rt
        .notification("webhook-json")
        .format(event("order.confirmed"))
        .await
        .unwrap();
    assert_eq!(hook.value.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&hook.value[0].body).unwrap();
    assert!(body.to_string().contains("order-1"));
    assert_eq!(hook.value[0].channel, Channel::Webhook);

    let none = rt
        .notification("email-text")
        .format(event("order.unknown-type"))
        .await
        .unwrap();
    assert!(none.value.is_empty());
}
