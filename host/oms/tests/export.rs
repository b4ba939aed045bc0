//! Traces exported over OTLP/HTTP from a real `oms serve` to a collector listening here: the
//! spans of one order, from the caller's `traceparent` through the saga, its plugin calls, the
//! relay's publish and the notification consumer, arrive as OTLP protobuf in one trace. The
//! same host answers `oms health`, the container image's health check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oms_grpc::pb;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A stand-in OTLP/HTTP collector: keeps every `POST /v1/traces` body, answers 200.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            let service = service_fn(move |request: http::Request<Incoming>| {
                let kept = kept.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    if path == "/v1/traces" {
                        kept.lock().unwrap().push(body);
                    }
                    let response = http::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, bodies)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_trace_reaches_the_collector() {
    let (endpoint, bodies) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    assert!(
        plugins.join("fakepay.wasm").is_file(),
        "run scripts/build-plugins first"
    );
    let notes = dir.path().join("notifications.jsonl");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oms"))
        .arg("serve")
        .env("OMS_GRPC__LISTEN", "127.0.0.1:0")
        .env("OMS_METRICS__LISTEN", "127.0.0.1:0")
        .env(
            "OMS_DATABASE__URL",
            format!("sqlite://{}", dir.path().join("oms.db").display()),
        )
        .env("OMS_PLUGINS__DIR", &plugins)
        .env("OMS_PLUGINS__CACHE_DIR", dir.path().join("cache"))
        .env("OMS_PLUGINS__WATCH_INTERVAL_MS", "0")
        .env("OMS_BROKER__NOTIFICATIONS__FILE", &notes)
        .env("OMS_TRACING__OTLP_ENDPOINT", &endpoint)
        .env("OMS_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        // Ready once it serves gRPC and has loaded its plugins (in the background: the two
        // lines come in either order).
        let (mut addr, mut loaded) = (None, false);
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("oms serving gRPC") {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                addr = value["fields"]["addr"].as_str().map(str::to_owned);
            }
            loaded |= line.contains("oms plugins loaded");
            if let (Some(addr), true) = (&addr, loaded) {
                return addr.clone();
            }
        }
        panic!("host exited before serving");
    })
    .await
    .expect("serving within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::order_service_client::OrderServiceClient::new(channel);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let callers_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::CreateOrderRequest {
        customer_id: "c-exported".into(),
        items: vec![pb::LineItem {
            sku: "DEMO-1".into(),
            quantity: 1,
            unit_price: Some(pb::Money {
                amount_minor: 999,
                currency: "EUR".into(),
            }),
        }],
        payment: Some(pb::PaymentMethod {
            provider: "fakepay".into(),
            token: "tok_ok".into(),
        }),
        shipping_address: Some(pb::ShippingAddress {
            recipient: "Ada".into(),
            line1: "1 Main St".into(),
            city: "Berlin".into(),
            country: "DE".into(),
            email: "ada@example.com".into(),
            ..Default::default()
        }),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{callers_span}-01").parse().unwrap(),
    );
    let order = client.create_order(request).await.unwrap().into_inner();
    // Confirmed, and its confirmation notified (the consumer's span is then closed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&notes).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("OrderConfirmed") && l.contains("ada@example.com"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no confirmation notified: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `oms health`, the container's health check, asks the same listener.
    let health = |listen: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_oms"))
            .arg("health")
            .env("OMS_GRPC__LISTEN", listen)
            .output()
            .unwrap()
    };
    let serving = health(&addr);
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert!(!health(&nobody).status.success(), "nothing listens there");
    // A graceful stop flushes the spans still batched.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the host stops within 30 s")
        .unwrap();
    assert!(status.success(), "{status}");

    let spans: Vec<Span> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|body| ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf"))
        .flat_map(|r| r.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let named = |name: &str| ours.iter().filter(|s| s.name == name).count();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    let create = ours
        .iter()
        .find(|s| s.name == "oms.v1.OrderService/CreateOrder")
        .unwrap_or_else(|| panic!("no CreateOrder span in {names:?}"));
    assert_eq!(
        hex(&create.parent_span_id),
        callers_span,
        "the caller's span is its parent"
    );
    assert_eq!(named("saga"), 1, "{names:?}");
    assert!(
        named("saga.step") >= 2,
        "reserve and authorize at least: {names:?}"
    );
    assert!(named("plugin.call") >= 2, "{names:?}");
    assert!(
        named("notification") >= 1,
        "the consumer continued the trace: {names:?}"
    );
    let publish_links = spans
        .iter()
        .filter(|s| s.name == "outbox.publish")
        .flat_map(|s| &s.links)
        .filter(|l| hex(&l.trace_id) == trace_id)
        .count();
    assert!(
        publish_links >= 2,
        "the relay's publishes link to the order's events"
    );
    let _ = order;
}
