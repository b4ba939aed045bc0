//! The plugin-backed formatter with the real bundled `webhook-json` and `email-text` plugins (built by
//! `scripts/build-plugins` into `target/plugins/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use oms_messaging::broker::{Broker, InProcessBroker, Topics};
use oms_messaging::event::pb;
use oms_messaging::notifications::plugin::PluginFormatter;
use oms_messaging::notifications::{
    ChannelKind, FormatFailure, Formatter, NotificationConfig, NotificationService,
};
use oms_messaging::relay::{Relay, RelayConfig};
use oms_persistence::testing::TestBackend;
use oms_plugin_runtime::breaker::BreakerConfig;
use oms_plugin_runtime::clients::payment::{AuthorizeRequest, Money};
use oms_plugin_runtime::{
    CallErrorKind, EngineOptions, PluginError, PluginRuntime, RuntimeOptions,
};

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
        reason: None,
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

/// `plugin`'s error count under `label` in the runtime's metrics.
fn errors(runtime: &PluginRuntime, plugin: &str, label: &str) -> u64 {
    runtime
        .metrics()
        .into_iter()
        .find(|(name, _)| name == plugin)
        .and_then(|(_, m)| m.errors.get(label).copied())
        .unwrap_or(0)
}

/// A formatter that cannot be started right now (the host's instance pool is exhausted) is a
/// transient failure: the consumer retries the event with backoff and then formats it, instead
/// of dead-lettering an event that was never at fault.
async fn an_instantiation_failure_is_retried_not_dead_lettered(backend: TestBackend) {
    let (test_db, db) = database(backend).await;
    // One instance slot for the whole runtime, held for 2 s by a plugin that spins until its
    // deadline: meanwhile no other instance can be started, as on a host at its pool limit.
    // The breaker is not under test: a high threshold keeps it out of the way.
    let runtime = PluginRuntime::new(
        RuntimeOptions {
            engine: EngineOptions {
                pool_instances: 1,
                ..EngineOptions::default()
            },
            breaker: BreakerConfig {
                failure_threshold: 1000,
                ..BreakerConfig::default()
            },
            ..RuntimeOptions::default()
        },
        None,
    )
    .unwrap();
    let staging = tempfile::tempdir().unwrap();
    let spinner = plugins_dir().join("testing/infinite-loop.toml");
    let wasm = plugins_dir().join("testing/infinite-loop.wasm");
    std::fs::copy(&wasm, staging.path().join("infinite-loop.wasm")).unwrap();
    let manifest = std::fs::read_to_string(&spinner)
        .unwrap()
        .replace("deadline_ms = 200", "deadline_ms = 2000");
    std::fs::write(staging.path().join("infinite-loop.toml"), manifest).unwrap();
    runtime
        .install(staging.path().join("infinite-loop.toml"))
        .await
        .unwrap();
    runtime
        .install(plugins_dir().join("webhook-json.toml"))
        .await
        .unwrap();

    // One real event on the in-process broker.
    let broker = InProcessBroker::default();
    let topics = Topics::default();
    let relay = Relay::new(
        db.outbox(),
        broker.publisher_arc(),
        topics.clone(),
        RelayConfig::default(),
    );
    order_with_events(&service(&db), "cust-busy", 0).await;
    while relay.run_once().await.unwrap().claimed > 0 {}
    let formatter = Arc::new(PluginFormatter::new(runtime.notification("webhook-json")));
    let config = NotificationConfig {
        dead_letter_topic: topics.notification_dead_letters.clone(),
        max_attempts: 50,
        backoff: oms_application::retry::RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..NotificationConfig::default()
    };
    let notifications = NotificationService::new(
        db.processed_events(),
        config.clone(),
        vec![formatter.clone() as Arc<dyn Formatter>],
        vec![],
        broker.publisher_arc(),
    );

    let spinning = runtime.payment("infinite-loop");
    let hold = tokio::spawn(async move {
        let request = AuthorizeRequest {
            order_id: "hold".into(),
            amount: Money {
                amount_minor: 1,
                currency: "EUR".into(),
            },
            payment_token: "tok_ok".into(),
            idempotency_key: "hold".into(),
        };
        // Until it gets the slot (the test's own polling below may hold it for a moment).
        loop {
            match spinning.authorize(request.clone()).await {
                Err(PluginError::Runtime(e))
                    if matches!(e.kind, CallErrorKind::Instantiate { .. }) =>
                {
                    tokio::task::yield_now().await;
                }
                other => return other.map(|_| ()),
            }
        }
    });
    // Poll (bounded) until the slot is taken: the formatter then cannot be started.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match formatter.format(&event()).await {
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the spinning plugin never took the slot"
            ),
            Err(FormatFailure::Unavailable(e)) => {
                assert!(e.contains("could not instantiate"), "{e}");
                break;
            }
            Err(other) => panic!("a busy pool is not the event's fault: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // While the pool is busy, one pass over the event is a transient failure (the consumer
    // retries it), not a dead letter.
    let mut consumer = broker
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    let delivery = consumer.recv().await.unwrap();
    let failed_before = errors(&runtime, "webhook-json", "instantiate");
    let outcome = notifications.handle(&delivery).await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(errors(&runtime, "webhook-json", "instantiate") > failed_before);
    drop(consumer);

    // The consumer retries with backoff until the slot is free again, then formats it.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = broker
        .consumer(&config.consumer, &[topics.events.as_str()])
        .unwrap();
    let worker = tokio::spawn(notifications.clone().run(consumer, stop_rx));
    let metrics = notifications.metrics();
    eventually(
        Duration::from_secs(20),
        "the event is processed",
        || async { metrics.processed.load(Ordering::Relaxed) == 1 },
    )
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();
    let held = hold.await.unwrap().unwrap_err();
    assert!(
        matches!(&held, PluginError::Runtime(e) if matches!(e.kind, CallErrorKind::DeadlineExceeded { .. })),
        "{held:?}"
    );
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 0);
    assert!(
        broker
            .messages(&topics.notification_dead_letters)
            .is_empty()
    );
    drop(db);
    test_db.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instantiation_failure_is_retried_not_dead_lettered_postgres() {
    an_instantiation_failure_is_retried_not_dead_lettered(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instantiation_failure_is_retried_not_dead_lettered_sqlite() {
    an_instantiation_failure_is_retried_not_dead_lettered(TestBackend::Sqlite).await;
}

/// Every event type the host emits, with whether the bundled `email-text` writes to the
/// customer about it. The match makes a new event kind a compile error here until it is
/// decided.
fn every_event_type() -> Vec<(&'static str, bool)> {
    use oms_domain::OrderEventKind as K;
    use oms_domain::{Currency, Money, Reason};
    let money = Money::new(100, Currency::parse("EUR").unwrap()).unwrap();
    let kinds = [
        K::Created,
        K::ShippingAddressUpdated,
        K::CancellationRequested,
        K::Cancelled,
        K::Confirmed,
        K::Rejected,
        K::PaymentFailed,
        K::FulfillmentRequested,
        K::Fulfilled,
        K::RefundRequested {
            amount: money,
            reason: Reason::parse("").unwrap(),
        },
        K::Refunded { amount: money },
        K::CompensationFailed,
    ];
    let mut all: Vec<(&'static str, bool)> = kinds
        .iter()
        .map(|k| {
            let writes = match k {
                K::ShippingAddressUpdated
                | K::Cancelled
                | K::Confirmed
                | K::Rejected
                | K::PaymentFailed
                | K::Fulfilled
                | K::Refunded { .. } => true,
                // Steps on the way, and the operator's queue: nothing for the customer yet.
                K::Created
                | K::CancellationRequested
                | K::FulfillmentRequested
                | K::RefundRequested { .. }
                | K::CompensationFailed => false,
            };
            (k.event_type(), writes)
        })
        .collect();
    all.push((oms_application::outbox::SAGA_PARKED, false));
    all
}

#[tokio::test]
async fn email_text_writes_for_every_event_that_changes_an_order_for_its_customer() {
    let runtime = PluginRuntime::new(RuntimeOptions::default(), None).unwrap();
    runtime
        .install(plugins_dir().join("email-text.toml"))
        .await
        .unwrap();
    let formatter = PluginFormatter::new(runtime.notification("email-text"));
    for (event_type, writes) in every_event_type() {
        let mut e = event();
        e.event_type = event_type.to_owned();
        if let Some(order) = e.order.as_mut() {
            order.shipping_address = Some(pb::Address {
                recipient: "Ada".into(),
                line1: "1 Main St".into(),
                city: "Berlin".into(),
                country: "DE".into(),
                email: "ada@example.com".into(),
                ..pb::Address::default()
            });
        }
        let notes = formatter.format(&e).await.unwrap();
        assert_eq!(notes.len(), usize::from(writes), "{event_type}: {notes:?}");
        if let Some(n) = notes.first() {
            assert_eq!(n.channel, ChannelKind::Email, "{event_type}");
            assert_eq!(n.recipient, "ada@example.com");
            assert!(
                n.subject.as_deref().is_some_and(|s| s.contains("0190f1c2")),
                "{event_type}: {:?}",
                n.subject
            );
        }
    }
}
