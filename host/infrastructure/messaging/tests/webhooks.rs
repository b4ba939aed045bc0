//! The webhook channel against real HTTP and HTTPS receivers: retries, TLS with an operator's
//! CA, Standard Webhooks signatures, the egress guard and redirects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oms_egress::EgressPolicy;
use oms_messaging::notifications::{
    Channel, ChannelKind, DeliveryError, Notification, SigningSecret, WebhookChannel,
    WebhookOptions,
};

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A receiver answering `statuses` in turn (the last one from then on), over TLS when a
/// certificate is given. Returns its address and what it received.
async fn receiver(
    statuses: Vec<u16>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (seen2, statuses) = (seen.clone(), Arc::new(statuses));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, count, statuses) = (seen2.clone(), count.clone(), statuses.clone());
            let service = service_fn(move |request: http::Request<Incoming>| {
                let (seen, count, statuses) = (seen.clone(), count.clone(), statuses.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(Received {
                        path: parts.uri.path().to_owned(),
                        headers: parts.headers,
                        body,
                    });
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = statuses[n.min(statuses.len() - 1)];
                    let mut response = http::Response::builder().status(status);
                    if (300..400).contains(&status) {
                        response = response.header("location", "http://169.254.169.254/");
                    }
                    Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap())
                }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A certificate for `localhost`, as PEM, and a server configuration presenting it.
fn localhost_tls() -> (String, Arc<rustls::ServerConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    (certified.cert.pem(), Arc::new(config))
}

fn note(url: &str) -> Notification {
    Notification {
        event_id: "0190f1c2-0000-7000-8000-000000000001".into(),
        event_type: "OrderConfirmed".into(),
        formatter: "webhook-json".into(),
        channel: ChannelKind::Webhook,
        recipient: url.to_owned(),
        subject: None,
        body: r#"{"type":"order.confirmed"}"#.into(),
        content_type: "application/json".into(),
    }
}

fn quick(options: WebhookOptions) -> WebhookOptions {
    WebhookOptions {
        backoff: oms_application::retry::RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        timeout: Duration::from_secs(5),
        ..options
    }
}

const PRIVATE_OK: EgressPolicy = EgressPolicy {
    allow_private: true,
};

/// A channel that may reach the receivers these tests run on loopback.
fn local_channel() -> WebhookChannel {
    WebhookChannel::new(quick(WebhookOptions {
        egress: PRIVATE_OK,
        ..WebhookOptions::default()
    }))
    .unwrap()
}

#[tokio::test]
async fn server_errors_are_retried_then_delivered_once() {
    let (addr, seen) = receiver(vec![503, 503, 204], None).await;
    let channel = local_channel();
    channel
        .deliver(&note(&format!("http://{addr}/hook")))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let last = &seen[2];
    assert_eq!(last.path, "/hook");
    assert_eq!(
        last.headers["idempotency-key"],
        "0190f1c2-0000-7000-8000-000000000001"
    );
    assert_eq!(last.headers["content-type"], "application/json");
    assert_eq!(&last.body[..], br#"{"type":"order.confirmed"}"#);
    assert!(
        !last.headers.contains_key("webhook-signature"),
        "unsigned without a secret"
    );
}

#[tokio::test]
async fn attempts_are_bounded() {
    let (addr, seen) = receiver(vec![503], None).await;
    let channel = WebhookChannel::new(quick(WebhookOptions {
        egress: PRIVATE_OK,
        attempts: 3,
        ..WebhookOptions::default()
    }))
    .unwrap();
    let err = channel
        .deliver(&note(&format!("http://{addr}/hook")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Exhausted { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// Over `https://` with the receiver's CA configured, the request arrives signed the way
/// Standard Webhooks specifies; without that CA the certificate is refused and nothing is
/// sent.
#[tokio::test]
async fn https_receivers_get_signed_requests_when_their_ca_is_trusted() {
    let (ca_pem, tls) = localhost_tls();
    let (addr, seen) = receiver(vec![204], Some(tls)).await;
    let url = format!("https://localhost:{}/hook", addr.port());
    let secret_text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let channel = WebhookChannel::new(quick(WebhookOptions {
        egress: PRIVATE_OK,
        signing_secret: Some(SigningSecret::parse(secret_text).unwrap()),
        extra_roots_pem: Some(ca_pem.into_bytes()),
        ..WebhookOptions::default()
    }))
    .unwrap();
    channel.deliver(&note(&url)).await.unwrap();
    let got = seen.lock().unwrap()[0].clone();
    let header = |name: &str| got.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("webhook-id"), "0190f1c2-0000-7000-8000-000000000001");
    let timestamp: u64 = header("webhook-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "{timestamp} vs {now}");
    // The receiver's check, done as the specification describes it.
    let signed = format!(
        "{}.{}.{}",
        header("webhook-id"),
        timestamp,
        String::from_utf8_lossy(&got.body)
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret_text.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signature = header("webhook-signature");
    let tag = base64::engine::general_purpose::STANDARD
        .decode(signature.strip_prefix("v1,").expect("a v1 signature"))
        .unwrap();
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        signed.as_bytes(),
        &tag,
    )
    .expect("the signature verifies");

    // Mozilla's roots alone do not trust the test CA: refused at the handshake.
    let untrusting = WebhookChannel::new(quick(WebhookOptions {
        egress: PRIVATE_OK,
        attempts: 1,
        ..WebhookOptions::default()
    }))
    .unwrap();
    assert!(untrusting.deliver(&note(&url)).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing sent without trust");
}

/// By default a webhook may not reach loopback, private or link-local addresses, by name or
/// by literal, and never a metadata endpoint: refused at once (not retried), nothing sent.
#[tokio::test]
async fn private_and_metadata_targets_are_refused() {
    let (addr, seen) = receiver(vec![204], None).await;
    let strict = WebhookChannel::new(quick(WebhookOptions::default())).unwrap();
    for url in [
        format!("http://{addr}/hook"),
        format!("http://localhost:{}/hook", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/hook", addr.port()),
    ] {
        let err = strict.deliver(&note(&url)).await.unwrap_err();
        assert!(
            matches!(&err, DeliveryError::Refused(why) if why.contains("private")),
            "{url}: {err}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );
    let allowing = local_channel();
    let err = allowing
        .deliver(&note("http://169.254.169.254/latest/meta-data"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Refused(why) if why.contains("metadata")),
        "{err}"
    );
    let err = allowing
        .deliver(&note("ftp://example.com/hook"))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Refused(_)), "{err}");
}

/// A redirect is a refusal: following it could lead past the guard.
#[tokio::test]
async fn redirects_are_not_followed() {
    let (addr, seen) = receiver(vec![302], None).await;
    let channel = local_channel();
    let err = channel
        .deliver(&note(&format!("http://{addr}/hook")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Refused(why) if why.contains("redirect")),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "one request, not retried");
}

#[test]
fn a_bad_ca_file_is_refused_at_setup() {
    let bad = WebhookChannel::new(WebhookOptions {
        extra_roots_pem: Some(b"not a certificate".to_vec()),
        ..WebhookOptions::default()
    });
    assert!(bad.is_err());
}
