//! Inbound webhooks of payment providers: `POST /webhooks/<plugin name>` on `webhooks.listen`
//! (off until set). A delivery reaches the plugin (`handle-webhook`, contract
//! `oms:plugins@0.2.0`) only after its signature checks out against the secret the plugin's
//! manifest names (`[webhook]`) with a timestamp within the manifest's tolerance; the plugin
//! records what it says, and the order waiting on that payment is woken to read the outcome
//! with `get-payment`. The signature is what keeps forgeries out: for a plugin that keeps its
//! provider's state in KV, `handle-webhook` is what moves the payment. A delivery replayed
//! within the tolerance is a redelivery, which the contract requires plugins to handle
//! idempotently; a lost one only delays the order until its next poll.
//!
//! Answers, for the provider's retry logic: 200 handled (or ignored), 400 the plugin refused
//! the event, 401 bad or stale signature, 404 no such plugin or no webhooks, 405 not a POST,
//! 408 body not received within 10 s, 413 body over `webhooks.max_body_bytes` (read up to
//! the limit, no further), 503 try again (the plugin or the database is unavailable, or the
//! secret is not provisioned).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use oms_application::saga::SagaOperations;
use oms_domain::OrderId;
use oms_plugin_runtime::clients::payment::{PaymentError, Webhook};
use oms_plugin_runtime::{PluginError, PluginRuntime};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// What a webhook delivery needs from the host.
#[derive(Clone)]
pub struct WebhookHost {
    pub plugins: PluginRuntime,
    pub operations: SagaOperations,
    pub max_body_bytes: usize,
}

/// Binds `listen` and serves webhooks until shutdown; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    host: WebhookHost,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the webhook listener on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(%addr, "serving payment provider webhooks on /webhooks/<plugin>");
    let serve = crate::http::serve(listener, "webhooks", shutdown, move |request| {
        let host = host.clone();
        async move { handle(&host, request).await }
    });
    Ok((addr, serve))
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

async fn handle(host: &WebhookHost, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(plugin) = request
        .uri()
        .path()
        .strip_prefix("/webhooks/")
        .map(str::to_owned)
    else {
        return reply(StatusCode::NOT_FOUND, "not found");
    };
    if request.method() != hyper::Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed");
    }
    // Refused before the body is read: nothing of an unknown sender is buffered.
    let Some(spec) = host.plugins.webhook_of(&plugin) else {
        return reply(
            StatusCode::NOT_FOUND,
            "no installed plugin of that name takes webhooks",
        );
    };
    // The signature's shape and time are checked before the body is read or the secret
    // looked up, so a sender without a fresh signature costs nothing.
    let unauthenticated = |why: &str| {
        // Debug only: a flood of forgeries must not flood the log.
        debug!(%plugin, why, "webhook refused");
        metrics::counter!("oms_webhooks_total", "plugin" => plugin.clone(), "outcome" => "unauthenticated").increment(1);
        reply(StatusCode::UNAUTHORIZED, "bad signature")
    };
    let signature = request
        .headers()
        .get(spec.signature_header.as_str())
        .and_then(|v| v.to_str().ok());
    let signature = match Signature::parse(signature, spec.tolerance_secs, unix_now()) {
        Ok(signature) => signature,
        Err(why) => return unauthenticated(why),
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let collect = Limited::new(request.into_body(), host.max_body_bytes).collect();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Ok(Err(e)) => {
            debug!(%plugin, error = %e, "reading a webhook body failed");
            return reply(StatusCode::BAD_REQUEST, "unreadable body");
        }
        Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "body too slow"),
    };
    // Read per delivery: a rotated secret (a new file, a restarted sidecar) applies at once.
    let secret = match spec.secret.resolve() {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) | Err(_) => {
            warn!(%plugin, "a webhook arrived but the plugin's webhook secret is not provisioned");
            return reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable; try again");
        }
    };
    if let Err(why) = signature.verify(secret.as_bytes(), &body) {
        return unauthenticated(why);
    }
    let event = Webhook {
        headers,
        body: body.to_vec(),
    };
    let (status, text, outcome) = match host.plugins.payment(&plugin).handle_webhook(event).await {
        Ok(called) => match called.value {
            Some(payment) => wake(host, &plugin, &payment.order_id).await,
            None => (StatusCode::OK, "ignored".to_owned(), "ignored"),
        },
        Err(PluginError::Rejected { error, .. }) => match error {
            PaymentError::Transient(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("try again: {why}"),
                "transient",
            ),
            PaymentError::Invalid(why) | PaymentError::Declined(why) => (
                StatusCode::BAD_REQUEST,
                format!("refused: {why}"),
                "refused",
            ),
        },
        Err(e) => {
            warn!(%plugin, error = %e, "the plugin could not handle a webhook");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the plugin is unavailable; try again".to_owned(),
                "unavailable",
            )
        }
    };
    metrics::counter!("oms_webhooks_total", "plugin" => plugin, "outcome" => outcome).increment(1);
    reply(status, &text)
}

/// Wakes the sagas of the order a webhook concerns.
async fn wake(
    host: &WebhookHost,
    plugin: &str,
    order_id: &str,
) -> (StatusCode, String, &'static str) {
    let Ok(order) = OrderId::parse(order_id) else {
        // The plugin's payment is not one of the host's orders (a payment made elsewhere
        // with the same provider account): recorded by the plugin, nothing to wake.
        debug!(plugin, order_id, "webhook for a payment of no order here");
        return (StatusCode::OK, "handled".to_owned(), "handled");
    };
    match host.operations.payment_news(order).await {
        Ok(woken) => {
            debug!(plugin, %order, woken, "webhook handled");
            (StatusCode::OK, "handled".to_owned(), "handled")
        }
        Err(e) => {
            // The plugin recorded the event; the order reads it at its next poll. 503 makes
            // the provider deliver again, which the plugin handles idempotently.
            warn!(plugin, %order, error = %e, "waking the order after a webhook failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "try again".to_owned(),
                "unavailable",
            )
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Longest signature header read: a timestamp and a few signatures.
const MAX_SIGNATURE_HEADER: usize = 512;
/// Most `v1=` signatures one header may carry (a provider rotating its secret sends two).
const MAX_SIGNATURES: usize = 4;
/// How long a sender may take to send the body once its headers are in.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A parsed `t=<unix seconds>,v1=<hex>[,v1=<hex>]` header whose timestamp is fresh.
struct Signature {
    timestamp: String,
    candidates: Vec<[u8; 32]>,
}

impl Signature {
    /// Bounded parsing, no cryptography: the header's size, its number of signatures (each
    /// exactly 32 bytes of hex) and its timestamp within `tolerance` of `now`.
    fn parse(header: Option<&str>, tolerance: u64, now: u64) -> Result<Self, &'static str> {
        let header = header.ok_or("no signature header")?;
        if header.len() > MAX_SIGNATURE_HEADER {
            return Err("signature header too long");
        }
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", hex_sig)) => {
                    let mut bytes = [0u8; 32];
                    if hex::decode_to_slice(hex_sig, &mut bytes).is_ok() {
                        candidates.push(bytes);
                    }
                }
                _ => {}
            }
        }
        if candidates.is_empty() || candidates.len() > MAX_SIGNATURES {
            return Err("no usable v1 signature, or too many");
        }
        let timestamp = timestamp.ok_or("no timestamp")?;
        let at: u64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
        if now.abs_diff(at) > tolerance {
            return Err("timestamp outside the tolerance");
        }
        Ok(Self {
            timestamp: timestamp.to_owned(),
            candidates,
        })
    }

    /// One HMAC-SHA256 of `"<t>.<body>"` under `secret`, compared with each candidate in
    /// constant time.
    fn verify(&self, secret: &[u8], body: &[u8]) -> Result<(), &'static str> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable secret")?;
        mac.update(self.timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize();
        let mut matched = false;
        for candidate in &self.candidates {
            let candidate = hmac::digest::CtOutput::<Hmac<Sha256>>::new((*candidate).into());
            matched |= expected == candidate;
        }
        if matched {
            Ok(())
        } else {
            Err("no matching signature")
        }
    }
}

/// Signs `body` as a provider would (`t=<now>,v1=<hex>`): for tests and for operators who
/// script a delivery by hand.
pub fn sign(secret: &[u8], body: &[u8], now: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(now.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={now},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(
        secret: &[u8],
        header: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), &'static str> {
        Signature::parse(header, 300, now)?.verify(secret, body)
    }

    #[test]
    fn a_signature_must_match_the_body_the_secret_and_the_time() {
        let body = br#"{"type":"action.completed"}"#;
        let now = 1_800_000_000;
        let good = sign(b"s3cret", body, now);
        assert_eq!(verify(b"s3cret", Some(good.as_str()), body, now), Ok(()));
        // Within the tolerance either way.
        assert_eq!(
            verify(b"s3cret", Some(good.as_str()), body, now + 300),
            Ok(())
        );
        assert_eq!(
            verify(b"s3cret", Some(good.as_str()), body, now + 301),
            Err("timestamp outside the tolerance")
        );
        assert_eq!(
            verify(b"other", Some(good.as_str()), body, now),
            Err("no matching signature")
        );
        assert_eq!(
            verify(b"s3cret", Some(good.as_str()), b"{}", now),
            Err("no matching signature")
        );
        assert_eq!(
            verify(b"s3cret", None, body, now),
            Err("no signature header")
        );
        // A replay with a new timestamp but the old signature fails.
        let replayed = good.replace(&format!("t={now}"), &format!("t={}", now + 10));
        assert_eq!(
            verify(b"s3cret", Some(replayed.as_str()), body, now + 10),
            Err("no matching signature")
        );
        // Rotation: any one of several v1 signatures may match; a flood of them is refused
        // before any hashing.
        let rotated = format!("{good},v1={}", "00".repeat(32));
        assert_eq!(verify(b"s3cret", Some(rotated.as_str()), body, now), Ok(()));
        let flood = format!("{good}{}", format!(",v1={}", "00".repeat(32)).repeat(4));
        assert_eq!(
            verify(b"s3cret", Some(flood.as_str()), body, now),
            Err("no usable v1 signature, or too many")
        );
        let long = format!("{good},{}", "x".repeat(MAX_SIGNATURE_HEADER));
        assert_eq!(
            verify(b"s3cret", Some(long.as_str()), body, now),
            Err("signature header too long")
        );
    }
}
