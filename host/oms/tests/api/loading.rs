//! Startup respects the operator's time: gRPC serves while the plugins still load, and an
//! order naming a plugin that is still loading is accepted and waits for it.
//!
//! The slow plugin is made deterministic without a hook in the host: its component is a
//! FIFO that this test holds closed, as a slow network mount would, so the host cannot
//! finish loading it until the test writes the bytes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use oms_grpc::pb::OrderStatus as S;
use oms_persistence::testing::TestBackend;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{TestApp, order_with, plugins_with_testing, settle};

/// A component that arrives when the test says so: its path is a FIFO, so the host's read
/// blocks until [`SlowComponent::arrive`] writes the bytes.
struct SlowComponent {
    gate: std::sync::mpsc::Sender<()>,
}

impl SlowComponent {
    fn replace(path: PathBuf) -> Self {
        let staged = path.with_extension("staged");
        std::fs::rename(&path, &staged).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        let (gate, opened) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if opened.recv().is_err() {
                return;
            }
            let bytes = std::fs::read(&staged).unwrap();
            let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            writer.write_all(&bytes).unwrap();
            // A regular file takes the FIFO's place before the reader sees the end, so
            // every later read (the release the host publishes from it) finds the bytes.
            std::fs::rename(&staged, &path).unwrap();
        });
        Self { gate }
    }

    fn arrive(&self) {
        self.gate.send(()).unwrap();
    }
}

pub async fn grpc_serves_while_plugins_load_and_orders_wait_for_them(backend: TestBackend) {
    let dir = plugins_with_testing(&[]);
    let slow = SlowComponent::replace(dir.path().join("fakepay.wasm"));
    let path = dir.path().to_owned();
    // If start waited for the plugins, it would wait for the test: bounded, and named.
    let app = tokio::time::timeout(
        Duration::from_secs(60),
        TestApp::spawn_loading(backend, |c| {
            c.plugins.dir = path;
            // The order below waits for its payment plugin within its step's deadline.
            c.saga.step_deadline_cap_ms = 60_000;
        }),
    )
    .await
    .expect("gRPC serves before the plugins have loaded");

    assert_eq!(
        crate::health::status(&app, "").await,
        ServingStatus::NotServing,
        "a host still loading its plugins is not yet a balancer's first choice"
    );
    // fakepay cannot be installed yet (its bytes have not arrived), but it is expected:
    // the order is accepted, and waits.
    let order = app
        .create(order_with("c-loading", "DEMO-1", "tok_ok"))
        .await;
    let unknown = {
        let mut request = order_with("c-unknown", "DEMO-1", "tok_ok");
        request.payment.as_mut().unwrap().provider = "no-such-provider".into();
        app.try_create(request).await
    };
    assert_eq!(
        unknown.expect_err("an unknown provider").code(),
        tonic::Code::InvalidArgument,
        "a provider neither installed nor loading is still refused"
    );
    assert_eq!(
        app.get(&order.order_id).await.status(),
        S::Pending,
        "no payment can have been made without the plugin"
    );

    slow.arrive();
    tokio::time::timeout(Duration::from_secs(60), app.server().plugins_loaded())
        .await
        .expect("the plugins load once the component arrives");
    assert_eq!(
        settle(&app, &order.order_id).await.status(),
        S::Confirmed,
        "the order waited for its plugin and was placed"
    );
    app.stop().await;
}
