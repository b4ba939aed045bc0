//! Inbound webhooks of payment providers: `POST /webhooks/<plugin name>` on `webhooks.listen`
//! (off until set). A delivery reaches the plugin (`handle-webhook`, contract
//! `oms:plugins@0.2.0`) only after its signature checks out against the secret the plugin's
//! manifest names (`[webhook]`); the plugin records what it says, and the order waiting on
//! that payment is woken to read the outcome from the provider itself (`get-payment`). A
//! forged or replayed delivery therefore reaches nothing, and a lost one only delays the
//! order until its next poll.
//!
//! Answers, for the provider's retry logic: 200 handled (or ignored), 400 the plugin refused
//! the event, 401 bad or stale signature, 404 no such plugin or no webhooks, 405 not a POST,
//! 413 body over `webhooks.max_body_bytes`, 503 try again (the plugin or the database is
//! unavailable, or the secret is not set).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oms_application::saga::SagaOperations;
use oms_domain::OrderId;
use oms_plugin_runtime::clients::payment::{PaymentError, Webhook};
use oms_plugin_runtime::manifest::WebhookSpec;
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
    Ok((addr, accept(listener, host, shutdown)))
}

async fn accept(
    listener: TcpListener,
    host: WebhookHost,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { debug!(error = %e, "webhook accept failed"); continue; }
            },
            r = shutdown.wait_for(|s| *s) => { let _ = r; return Ok(()); }
        };
        let host = host.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let host = host.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&host, request).await) }
            });
            // A slow sender cannot hold a connection open for good (the timeout needs the
            // timer).
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(error = %e, "webhook connection failed");
            }
        });
    }
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
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let body = match Limited::new(request.into_body(), host.max_body_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Err(e) => {
            debug!(%plugin, error = %e, "reading a webhook body failed");
            return reply(StatusCode::BAD_REQUEST, "unreadable body");
        }
    };
    // Read per delivery: a rotated secret (a new file, a restarted sidecar) applies at once.
    let secret = match spec.secret.resolve() {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) | Err(_) => {
            warn!(%plugin, "a webhook arrived but the plugin's webhook secret is not provisioned");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook secret not configured",
            );
        }
    };
    let signature = headers
        .iter()
        .find(|(name, _)| *name == spec.signature_header)
        .map(|(_, value)| value.as_str());
    if let Err(why) = verify(&spec, secret.as_bytes(), signature, &body, unix_now()) {
        // Debug only: a flood of forgeries must not flood the log.
        debug!(%plugin, why, "webhook refused");
        metrics::counter!("oms_webhooks_total", "plugin" => plugin.clone(), "outcome" => "unauthenticated").increment(1);
        return reply(StatusCode::UNAUTHORIZED, "bad signature");
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

/// Checks `t=<unix seconds>,v1=<hex>` (several `v1` allowed, for secret rotation at the
/// provider): the timestamp within the tolerance of `now`, and one `v1` the HMAC-SHA256 of
/// `"<t>.<body>"` under `secret`, compared in constant time.
fn verify(
    spec: &WebhookSpec,
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let header = header.ok_or("no signature header")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let t = timestamp.ok_or("no timestamp")?;
    let at: u64 = t.parse().map_err(|_| "timestamp is not a number")?;
    if now.abs_diff(at) > spec.tolerance_secs {
        return Err("timestamp outside the tolerance");
    }
    for signature in signatures {
        let Ok(expected) = hex::decode(signature) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable secret")?;
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err("no matching signature")
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

    fn spec() -> WebhookSpec {
        toml::from_str("secret = \"env:X\"\ntolerance_secs = 300\n").expect("a webhook table")
    }

    #[test]
    fn a_signature_must_match_the_body_the_secret_and_the_time() {
        let body = br#"{"type":"action.completed"}"#;
        let now = 1_800_000_000;
        let good = sign(b"s3cret", body, now);
        assert_eq!(verify(&spec(), b"s3cret", Some(&good), body, now), Ok(()));
        // Within the tolerance either way.
        assert_eq!(
            verify(&spec(), b"s3cret", Some(&good), body, now + 300),
            Ok(())
        );
        assert_eq!(
            verify(&spec(), b"s3cret", Some(&good), body, now + 301),
            Err("timestamp outside the tolerance")
        );
        assert_eq!(
            verify(&spec(), b"other", Some(&good), body, now),
            Err("no matching signature")
        );
        assert_eq!(
            verify(&spec(), b"s3cret", Some(&good), b"{}", now),
            Err("no matching signature")
        );
        assert_eq!(
            verify(&spec(), b"s3cret", None, body, now),
            Err("no signature header")
        );
        // A replay with a new timestamp but the old signature fails.
        let replayed = good.replace(&format!("t={now}"), &format!("t={}", now + 10));
        assert_eq!(
            verify(&spec(), b"s3cret", Some(&replayed), body, now + 10),
            Err("no matching signature")
        );
        // Rotation: any one of several v1 signatures may match.
        let rotated = format!("{good},v1=00ff");
        assert_eq!(
            verify(&spec(), b"s3cret", Some(&rotated), body, now),
            Ok(())
        );
    }
}
