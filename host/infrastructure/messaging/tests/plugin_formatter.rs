//! The plugin-backed formatter with the real bundled `webhook-json` plugin (built by
//! `scripts/build-plugins` into `target/plugins/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use oms_messaging::event::pb;
use oms_messaging::notifications::plugin::PluginFormatter;
use oms_messaging::notifications::{ChannelKind, FormatFailure, Formatter};
use oms_plugin_runtime::{PluginRuntime, RuntimeOptions};

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../target/plugins")
}

fn event() -> pb::OrderEvent {
    pb::OrderEvent {
        event_id: "0190f1c2-0000-7000-8000-000000000001".into(),
        event_type: "OrderConfirmed".into(),
        schema_version: 1,
        order_id: "0190f1c2-0000-7000-8000-0000000000aa".into(),
        occurred_at_ms: 1_700_000_000_000,
        order: Some(pb::OrderSnapshot {
            order_id: "0190f1c2-0000-7000-8000-0000000000aa".into(),
            customer_id: "cust-1".into(),
            status: "CONFIRMED".into(),
            items: vec![pb::LineItem {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price: Some(pb::Money {
                    amount_minor: 1250,
                    currency: "EUR".into(),
                }),
            }],
            total: Some(pb::Money {
                amount_minor: 2500,
                currency: "EUR".into(),
            }),
            version: 2,
            ..pb::OrderSnapshot::default()
        }),
        amount: None,
        saga: None,
    }
}

#[tokio::test]
async fn webhook_json_plugin_formats_an_event() {
    let manifest = plugins_dir().join("webhook-json.toml");
    assert!(
        manifest.exists(),
        "{} missing: run scripts/build-plugins first",
        manifest.display()
    );
    let runtime = PluginRuntime::new(RuntimeOptions::default(), None).unwrap();
    runtime.install(&manifest).await.unwrap();
    let formatter = PluginFormatter::new(runtime.notification("webhook-json"));
    let notes = formatter.format(&event()).await.unwrap();
    assert_eq!(notes.len(), 1);
    let n = &notes[0];
    assert_eq!(n.channel, ChannelKind::Webhook);
    assert_eq!(n.formatter, "webhook-json");
    assert_eq!(n.content_type, "application/json");
    assert!(
        n.body.contains("0190f1c2-0000-7000-8000-000000000001"),
        "{}",
        n.body
    );
    assert!(n.body.contains("order.confirmed"), "{}", n.body);
}

#[tokio::test]
async fn a_missing_plugin_is_unavailable_not_poison() {
    let runtime = PluginRuntime::new(RuntimeOptions::default(), None).unwrap();
    let formatter = PluginFormatter::new(runtime.notification("no-such-formatter"));
    let err = formatter.format(&event()).await.unwrap_err();
    assert!(matches!(err, FormatFailure::Unavailable(_)), "{err:?}");
}

/// A formatter plugin that traps is poison for that event (the consumer dead-letters it, see
/// tests/notifications.rs), never a crash of the host: the next event formats fine.
#[tokio::test]
async fn a_trapping_formatter_is_poison_and_the_host_goes_on() {
    let testing = plugins_dir().join("testing/formatter-trap.toml");
    assert!(
        testing.exists(),
        "{} missing: run scripts/build-plugins first",
        testing.display()
    );
    let runtime = PluginRuntime::new(RuntimeOptions::default(), None).unwrap();
    runtime.install(&testing).await.unwrap();
    runtime
        .install(plugins_dir().join("webhook-json.toml"))
        .await
        .unwrap();
    let trapping = PluginFormatter::new(runtime.notification("formatter-trap"));
    let err = trapping.format(&event()).await.unwrap_err();
    assert!(matches!(err, FormatFailure::Crashed(_)), "{err:?}");
    assert!(err.to_string().contains("trap"), "{err}");
    let healthy = PluginFormatter::new(runtime.notification("webhook-json"));
    assert_eq!(healthy.format(&event()).await.unwrap().len(), 1);
}
