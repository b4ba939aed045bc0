//! Contract `oms:plugins@0.2.0` beside 0.1 on one host: `redirectpay` (0.2) asks for a
//! customer action, a signed webhook to the host's endpoint moves the payment on, and an
//! expired action fails the payment with a stable code; `fakepay` (0.1, unchanged) serves
//! orders on the same host meanwhile.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oms_grpc::pb;
use oms_persistence::testing::TestBackend;
use pb::{OrderStatus as S, PaymentStatus as P};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const SECRET: &str = "whsec_test_0123456789";

/// A host with the bundled plugins, `redirectpay` (its webhook secret in a file) and the
/// webhook endpoint on a random port.
async fn host(backend: TestBackend) -> (TestApp, tempfile::TempDir) {
    let dir = plugins_with_testing(&["redirectpay"]);
    let secret = dir.path().join("redirectpay-webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let manifest = dir.path().join("redirectpay.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("env:REDIRECTPAY_WEBHOOK_SECRET"), "{text}");
    let text = text.replace(
        "\"env:REDIRECTPAY_WEBHOOK_SECRET\"",
        &format!("\"file:{}\"", secret.display()),
    );
    std::fs::write(&manifest, text).unwrap();
    let plugins = dir.path().to_owned();
    let app = TestApp::spawn_with(backend, |config| {
        config.plugins.dir = plugins;
        config.webhooks.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    (app, dir)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` to `/webhooks/<plugin>` with `signature` (if any); the status code and body.
async fn deliver(
    app: &TestApp,
    plugin: &str,
    body: &str,
    signature: Option<&str>,
) -> (u16, String) {
    let addr = app.server().webhooks_addr.expect("the webhook endpoint");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let signature = signature
        .map(|s| format!("webhook-signature: {s}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /webhooks/{plugin} HTTP/1.1\r\nhost: psp\r\ncontent-type: application/json\r\n\
         {signature}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

fn order_paid_with(customer: &str, provider: &str, token: &str) -> pb::CreateOrderRequest {
    let mut request = valid_order(customer);
    let payment = request.payment.as_mut().unwrap();
    payment.provider = provider.to_owned();
    payment.token = token.to_owned();
    request
}

pub async fn a_customer_action_is_shown_and_a_signed_webhook_moves_the_order_on(
    backend: TestBackend,
) {
    let (app, _dir) = host(backend).await;
    let placed = app
        .create(order_paid_with("cust-3ds", "redirectpay", "tok_3ds"))
        .await;
    let waiting = wait_until(&app, &placed.order_id, Duration::from_secs(20), |o| {
        o.payment_status() == P::ActionRequired
    })
    .await;
    assert_eq!(waiting.status(), S::Pending);
    let action = waiting.payment_action.clone().expect("the customer action");
    assert!(
        action
            .url
            .starts_with("https://pay.example.test/challenge/rp_"),
        "{action:?}"
    );
    let expires = action.expires_at.expect("an expiry").seconds;
    assert!(expires > i64::try_from(unix_now()).unwrap(), "{action:?}");

    // A 0.1 plugin on the same host is unchanged: fakepay confirms an order meanwhile.
    let classic = app.create(valid_order("cust-classic")).await;
    let classic = settle(&app, &classic.order_id).await;
    assert_eq!(classic.status(), S::Confirmed);
    assert_eq!(classic.payment_status(), P::Authorized);
    assert!(classic.payment_action.is_none());

    let payment_id = action.url.rsplit('/').next().unwrap().to_owned();
    let body = format!(r#"{{"type":"action.completed","payment_id":"{payment_id}"}}"#);
    // Unsigned, forged, or replayed from long ago: refused before the plugin sees them.
    assert_eq!(deliver(&app, "redirectpay", &body, None).await.0, 401);
    let forged = oms::webhooks::sign(b"not-the-secret", body.as_bytes(), unix_now());
    assert_eq!(
        deliver(&app, "redirectpay", &body, Some(&forged)).await.0,
        401
    );
    let stale = oms::webhooks::sign(SECRET.as_bytes(), body.as_bytes(), unix_now() - 3600);
    assert_eq!(
        deliver(&app, "redirectpay", &body, Some(&stale)).await.0,
        401
    );
    assert_eq!(
        app.get(&placed.order_id).await.payment_status(),
        P::ActionRequired,
        "nothing moved"
    );
    // Only plugins that take webhooks have an endpoint.
    let signed = oms::webhooks::sign(SECRET.as_bytes(), body.as_bytes(), unix_now());
    assert_eq!(deliver(&app, "fakepay", &body, Some(&signed)).await.0, 404);
    assert_eq!(deliver(&app, "nobody", &body, Some(&signed)).await.0, 404);

    let (status, text) = deliver(&app, "redirectpay", &body, Some(&signed)).await;
    assert_eq!((status, text.as_str()), (200, "handled"));
    // Woken by the webhook, not by the next poll (5 s later).
    let done = wait_until(&app, &placed.order_id, Duration::from_secs(4), |o| {
        o.status() == S::Confirmed
    })
    .await;
    assert_eq!(done.payment_status(), P::Authorized);
    assert!(done.payment_action.is_none());
    // A redelivery is handled again and changes nothing.
    let (status, _) = deliver(&app, "redirectpay", &body, Some(&signed)).await;
    assert_eq!(status, 200);
    assert_eq!(app.get(&placed.order_id).await.version, done.version);
    app.stop().await;
}

pub async fn an_expired_customer_action_fails_the_payment_and_cancels_it(backend: TestBackend) {
    let (app, _dir) = host(backend).await;
    let placed = app
        .create(order_paid_with(
            "cust-gone",
            "redirectpay",
            "tok_3ds_ttl_1500",
        ))
        .await;
    let done = settle(&app, &placed.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed);
    assert!(
        done.failure_reason.starts_with("PAYMENT_ACTION_EXPIRED: "),
        "{}",
        done.failure_reason
    );
    let done = quiet(&app, &placed.order_id).await;
    assert_eq!(
        done.payment_status(),
        P::Voided,
        "cancelled at the provider: the customer can no longer complete it"
    );
    assert_eq!(done.reservation_status(), pb::ReservationStatus::Released);
    app.stop().await;
}

pub async fn a_customer_who_fails_the_action_fails_the_payment_without_parking(
    backend: TestBackend,
) {
    let (app, _dir) = host(backend).await;
    let placed = app
        .create(order_paid_with("cust-fails", "redirectpay", "tok_3ds"))
        .await;
    let waiting = wait_until(&app, &placed.order_id, Duration::from_secs(20), |o| {
        o.payment_status() == P::ActionRequired
    })
    .await;
    let url = waiting.payment_action.expect("the customer action").url;
    let payment_id = url.rsplit('/').next().unwrap();
    let body = format!(r#"{{"type":"action.failed","payment_id":"{payment_id}"}}"#);
    let signed = oms::webhooks::sign(SECRET.as_bytes(), body.as_bytes(), unix_now());
    let (status, _) = deliver(&app, "redirectpay", &body, Some(&signed)).await;
    assert_eq!(status, 200);
    let done = settle(&app, &placed.order_id).await;
    assert_eq!(done.status(), S::PaymentFailed, "{done:?}");
    assert!(
        done.failure_reason.starts_with("PAYMENT_DECLINED: "),
        "{}",
        done.failure_reason
    );
    let done = quiet(&app, &placed.order_id).await;
    assert_eq!(
        done.payment_status(),
        P::AuthFailed,
        "nothing held, nothing voided"
    );
    assert_eq!(done.reservation_status(), pb::ReservationStatus::Released);
    app.stop().await;
}
