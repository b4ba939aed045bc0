//! The API against hostile or broken clients: bounded errors, validated free text, malformed
//! bodies, and the connection and stream limits. Bounds are asserted on sizes and counts,
//! never on elapsed time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use oms_grpc::pb;
use oms_persistence::testing::TestBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::helpers::{TestApp, address, money, settle, valid_order, violated_fields, wait_until};

/// How long a test waits for something that should happen quickly before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// The `BadRequest` violations of a status, and the size of its encoded details.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn oversized_requests_get_bounded_errors(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;

    // Twenty thousand empty lines: refused on their count alone, in one violation.
    let mut request = valid_order("c-big");
    request.items = vec![pb::LineItem::default(); 20_000];
    let err = app.try_create(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let listed = violations(&err);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, "items");
    assert!(err.details().len() < 1024, "{} bytes", err.details().len());

    // A hundred empty lines (the most allowed) make three violations each: the list is cut,
    // with a last entry counting the rest, and stays a few KiB.
    let mut request = valid_order("c-many");
    request.items = vec![pb::LineItem::default(); 100];
    let err = app.try_create(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let listed = violations(&err);
    assert!(listed.len() <= 101, "{} violations", listed.len());
    let (field, description) = listed.last().unwrap();
    assert_eq!(field, "request");
    assert!(description.contains("more violation"), "{description}");
    assert!(
        err.details().len() <= 8 * 1024,
        "{} bytes",
        err.details().len()
    );
    assert!(err.message().len() <= 512, "{} bytes", err.message().len());
    app.stop().await;
}

pub async fn mixed_currencies_name_the_line_not_an_overflow(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let mut request = valid_order("c-fx");
    request.items[1].unit_price = money(499, "USD");
    request.items.push(pb::LineItem {
        sku: "DEMO-3".into(),
        quantity: 1,
        unit_price: money(100, "EUR"),
    });
    let err = app.try_create(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["items[1].unit_price.currency"]);
    app.stop().await;
}

pub async fn free_text_is_bounded_and_printable(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;

    type Mutation = fn(&mut pb::CreateOrderRequest);
    let cases: Vec<(&str, Mutation)> = vec![
        ("customer_id", |r| r.customer_id = "cust\0".into()),
        ("shipping_address.recipient", |r| {
            r.shipping_address.as_mut().unwrap().recipient = "Ada\0Lovelace".into()
        }),
        ("shipping_address.line1", |r| {
            r.shipping_address.as_mut().unwrap().line1 = "12 Row\u{1b}[2J".into()
        }),
        ("shipping_address.line2", |r| {
            r.shipping_address.as_mut().unwrap().line2 = "x".repeat(201)
        }),
        ("shipping_address.city", |r| {
            r.shipping_address.as_mut().unwrap().city = "Ber\u{85}lin".into()
        }),
        ("shipping_address.postal_code", |r| {
            r.shipping_address.as_mut().unwrap().postal_code = "10\r\n115".into()
        }),
        ("payment.token", |r| {
            r.payment.as_mut().unwrap().token = "tok\0ok".into()
        }),
    ];
    for (field, mutate) in cases {
        let mut request = valid_order("c-text");
        mutate(&mut request);
        let err = app.try_create(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violated_fields(&err), [field], "{field}");
    }

    let order = app.create(valid_order("c-text")).await;
    let id = order.order_id.clone();
    let err = app
        .try_update_address(&id, address("Ber\0lin"), order.version)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["shipping_address.city"]);

    // A NUL reached PostgreSQL and came back INTERNAL; every reason is checked at the edge.
    for reason in ["changed\0mind", "bell\u{7}", &"x".repeat(501)] {
        let err = app.try_cancel(&id, reason).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), ["reason"]);
        let err = app.try_refund(&id, None, reason).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), ["reason"]);
    }

    // Nothing above changed the order; a clean reason still works.
    app.update_address(&id, address("Hamburg"), order.version)
        .await;
    let cancelled = app.cancel(&id, "changed mind — früh").await;
    assert_eq!(cancelled.failure_reason, "changed mind — früh");
    app.stop().await;
}

pub async fn refund_arguments_are_invalid_not_preconditions(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let order = app.create(valid_order("c-refund-arg")).await;
    for amount in [money(0, "EUR"), money(100, "USD")] {
        let err = app
            .try_refund(&order.order_id, amount.clone(), "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{amount:?}: {err:?}");
        assert_eq!(violated_fields(&err), ["amount"], "{amount:?}");
        // A wrong currency has a reason of its own: the client fixes the currency.
        let expected = if amount == money(0, "EUR") {
            "INVALID_ARGUMENT"
        } else {
            "CURRENCY_MISMATCH"
        };
        assert_eq!(crate::helpers::error_info(&err).0, expected, "{amount:?}");
    }
    // Refunding an order that captured nothing stays a question of its state.
    let err = app
        .try_refund(&order.order_id, money(100, "EUR"), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    app.stop().await;
}

pub async fn refund_reason_reaches_the_outbox_event(backend: TestBackend) {
    use pb::OrderStatus as S;
    use pb::PaymentStatus as P;
    let app = TestApp::spawn(backend).await;
    let order = app
        .create(crate::helpers::order_with("c-why", "DEMO-1", "tok_ok"))
        .await;
    settle(&app, &order.order_id).await;
    app.fulfill(&order.order_id).await;
    wait_until(&app, &order.order_id, PATIENCE * 2, |o| {
        o.status() == S::Fulfilled
    })
    .await;
    app.refund(&order.order_id, None, "arrived damaged").await;
    wait_until(&app, &order.order_id, PATIENCE * 2, |o| {
        o.payment_status() == P::Refunded
    })
    .await;
    let payload = outbox_payload(&app, &order.order_id, "OrderRefundRequested").await;
    assert_eq!(payload["reason"], "arrived damaged", "{payload}");
    app.stop().await;
}

/// The JSON payload of the order's outbox event of `event_type`, read from the database.
async fn outbox_payload(app: &TestApp, order_id: &str, event_type: &str) -> serde_json::Value {
    let sql = "SELECT CAST(payload AS TEXT) FROM outbox \
               WHERE CAST(aggregate_id AS TEXT) = $1 AND event_type = $2";
    let url = app.db.url();
    let row: (String,) = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let row = sqlx::query_as(sql)
            .bind(order_id)
            .bind(event_type)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        row
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let row = sqlx::query_as(sql)
            .bind(order_id)
            .bind(event_type)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        row
    };
    serde_json::from_str(&row.0).unwrap()
}

/// One gRPC call written byte by byte over a fresh HTTP/2 connection: `body` is the whole
/// request body, framing included. Returns the status code and message.
async fn raw_call(addr: SocketAddr, method: &str, body: Vec<u8>) -> (Code, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/oms.v1.OrderService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(body), true).unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the server answers")
        .unwrap();
    let (parts, mut body) = response.into_parts();
    let headers = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            body.trailers().await.unwrap().expect("trailers")
        }
    };
    let code: i32 = headers["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = headers
        .get("grpc-message")
        .map(|m| m.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (Code::from_i32(code), message)
}

/// A gRPC length-prefixed message with the given flag and announced length.
fn frame(flag: u8, announced: u32, message: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&announced.to_be_bytes());
    v.extend_from_slice(message);
    v
}

fn framed(message: &[u8]) -> Vec<u8> {
    frame(0, u32::try_from(message.len()).unwrap(), message)
}

pub async fn malformed_bodies_are_the_callers_fault(backend: TestBackend) {
    let app = TestApp::api_only(backend).await;
    let addr = app.server().addr;
    // Field 1 (order_id) announced as 5 bytes but only 1 follows; field 1 with invalid
    // UTF-8; a field with wire type 7 (there is none).
    let bad_protobuf: [&[u8]; 3] = [b"\x0a\x05a", b"\x0a\x02\xff\xfe", b"\x0f"];
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        (
            "truncated field",
            framed(bad_protobuf[0]),
            Code::InvalidArgument,
        ),
        (
            "invalid utf-8",
            framed(bad_protobuf[1]),
            Code::InvalidArgument,
        ),
        (
            "bad wire type",
            framed(bad_protobuf[2]),
            Code::InvalidArgument,
        ),
        (
            "compression flag 7",
            frame(7, 2, b"\x0a\x00"),
            Code::InvalidArgument,
        ),
        (
            "compressed without encoding",
            frame(1, 2, b"\x0a\x00"),
            Code::InvalidArgument,
        ),
        (
            "length past the limit",
            frame(0, 64 << 20, b"\x0a\x00"),
            Code::ResourceExhausted,
        ),
        (
            "body cut inside a message",
            frame(0, 10, b"\x0a\x00"),
            Code::InvalidArgument,
        ),
        (
            "body cut inside a prefix",
            vec![0, 0],
            Code::InvalidArgument,
        ),
        ("no message", Vec::new(), Code::InvalidArgument),
    ];
    for method in ["GetOrder", "WatchOrder"] {
        for (what, body, expected) in &cases {
            let (code, message) = raw_call(addr, method, body.clone()).await;
            assert_eq!(code, *expected, "{method}, {what}: {message}");
        }
    }
    app.stop().await;
}

/// Reads what the server sends until it closes the connection; `None` if it is still open
/// after `PATIENCE`. Returns how many bytes came before the close.
async fn until_closed(socket: &mut TcpStream) -> Option<usize> {
    let mut seen = 0;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen += n,
        }
    }
}

pub async fn connections_beyond_the_limit_are_closed(backend: TestBackend) {
    const LIMIT: usize = 4;
    let app = TestApp::spawn_with(backend, |c| c.grpc.max_connections = LIMIT).await;
    let addr = app.server().addr;
    // The test client holds one place; three more are free.
    let mut raw = Vec::new();
    for _ in 0..LIMIT + 6 {
        raw.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut served = 0;
    let mut closed = 0;
    for socket in &mut raw {
        let mut first = [0u8; 64];
        match tokio::time::timeout(PATIENCE, socket.read(&mut first)).await {
            // An accepted connection starts with the server's HTTP/2 SETTINGS.
            Ok(Ok(n)) if n > 0 => served += 1,
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => panic!("the server neither served nor closed a connection"),
        }
    }
    assert_eq!((served, closed), (LIMIT - 1, 7));
    // The client that was there first is still served.
    let order = app.create(valid_order("c-limit")).await;
    assert_eq!(order.customer_id, "c-limit");
    drop(raw);
    app.stop().await;
}

pub async fn silent_connections_are_closed_after_the_idle_timeout(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.grpc.keepalive_interval_ms = 200;
        c.grpc.keepalive_timeout_ms = 200;
        c.grpc.idle_timeout_ms = 500;
    })
    .await;
    let addr = app.server().addr;
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // Nothing; only the preface; the preface and half a frame header.
    let openings: [&[u8]; 3] = [b"", preface, &[preface, &[0, 0, 4]].concat()];
    for opening in openings {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(opening).await.unwrap();
        assert!(
            until_closed(&mut socket).await.is_some(),
            "a connection that sent {opening:?} was left open"
        );
    }
    app.stop().await;
}

pub async fn one_connection_has_a_bounded_number_of_streams(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| c.grpc.max_concurrent_streams = 5).await;
    let addr = app.server().addr;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // One exchange guarantees the server's SETTINGS (its first frame) have been applied.
    let request = http::Request::post(format!("http://{addr}/oms.v1.OrderService/GetOrder"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(framed(b"")), true).unwrap();
    tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the server answers")
        .unwrap();
    assert_eq!(client.current_max_send_streams(), 5);
    app.stop().await;
}

/// With a call rate per connection, the calls beyond it are RESOURCE_EXHAUSTED
/// (`RATE_LIMITED`) with when to retry, and another connection is not affected.
pub async fn a_connection_over_its_call_rate_is_slowed_down(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| c.grpc.max_calls_per_sec_per_connection = 5).await;
    let order = app
        .create(crate::helpers::order_with("c-rate", "DEMO-1", "tok_ok"))
        .await;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(status) = app.try_get(&order.order_id).await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("a burst of 20 calls on one connection is limited at 5/s");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(crate::helpers::error_info(&status).0, "RATE_LIMITED");
    let retry = tonic_types::StatusExt::get_details_retry_info(&status)
        .and_then(|r| r.retry_delay)
        .expect("says when to retry");
    assert!(retry <= std::time::Duration::from_secs(1), "{retry:?}");
    // A fresh connection has its own budget.
    let fresh = tonic::transport::Channel::from_shared(format!("http://{}", app.server().addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = oms_grpc::pb::order_service_client::OrderServiceClient::new(fresh);
    let request = oms_grpc::pb::GetOrderRequest {
        order_id: order.order_id.clone(),
    };
    assert!(client.get_order(request).await.is_ok());
    app.stop().await;
}

/// A connection with its bound of calls running gets `CONCURRENCY_LIMITED` for one more,
/// and its place back when one ends; another connection is not affected until the host's
/// bound of `WatchOrder` streams is reached, which no connection passes.
pub async fn concurrent_calls_are_bounded_per_connection_and_streams_per_host(
    backend: TestBackend,
) {
    let app = TestApp::spawn_with(backend, |c| {
        c.grpc.max_calls_per_connection = 2;
        c.watch.max_streams = 3;
    })
    .await;
    let order = app
        .create(crate::helpers::order_with("c-conc", "DEMO-1", "tok_ok"))
        .await;
    // Settled, so that a stream stays open (a terminal order's stream ends after one item)
    // only while the order is not terminal: a CONFIRMED order is not terminal.
    let order = crate::helpers::settle(&app, &order.order_id).await;
    assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
    let watch = || pb::WatchOrderRequest {
        order_id: order.order_id.clone(),
    };
    let refused = |status: tonic::Status, limit: &str| {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let (reason, metadata) = crate::helpers::error_info(&status);
        assert_eq!(reason, "CONCURRENCY_LIMITED");
        assert_eq!(metadata.get("limit").map(String::as_str), Some(limit));
    };

    // Two streams fill this connection: a third call of any kind is refused.
    let first = app.watch(watch()).await;
    let second = app.watch(watch()).await;
    refused(app.try_get(&order.order_id).await.unwrap_err(), "2");
    // One ends: its place is given back once the server has seen the stream close.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(status) = app.try_get(&order.order_id).await {
        refused(status, "2");
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream never gave its place back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another connection: one more stream fits the host's bound of three, a fourth does not.
    let fresh = tonic::transport::Channel::from_shared(format!("http://{}", app.server().addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut other = pb::order_service_client::OrderServiceClient::new(fresh);
    let third = app.watch(watch()).await;
    let fourth = other.watch_order(watch()).await.map(|r| r.into_inner());
    let fourth = fourth.expect("the third stream on the host fits");
    refused(other.watch_order(watch()).await.unwrap_err(), "3");
    // Unary calls on the other connection still run.
    assert!(
        other
            .get_order(pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .is_ok()
    );
    drop((second, third, fourth));
    app.stop().await;
}
