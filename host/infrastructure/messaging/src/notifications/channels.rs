//! Delivery channels. A channel says which notifications it takes and delivers them; adding a
//! channel (SMTP, SMS gateway) means one more [`Channel`] implementation here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oms_egress::EgressPolicy;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{ChannelKind, Notification};
use oms_application::retry::RetryPolicy;

/// Why a delivery failed for good (after the channel's own retries).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeliveryError {
    #[error("recipient refused: {0}")]
    Refused(String),
    #[error("unreachable after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("sink failed: {0}")]
    Sink(String),
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// For logs and dead-letter reasons.
    fn name(&self) -> &str;
    fn accepts(&self, n: &Notification) -> bool;
    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError>;
}

/// The default channel: every notification as one JSON line, appended to a file, or to the
/// log when no file is set. Stands in for e-mail and SMS until real gateways are configured.
///
/// A notification carries personal data (the recipient's address, a body with their name
/// and shipping address), and logs travel further and live longer than a delivery does: the
/// log records only which event went where (event id, event type, channel, formatter) unless
/// [`FileSink::log_bodies`] asks for the whole notification.
pub struct FileSink {
    path: Option<PathBuf>,
    log_bodies: bool,
    /// Serialises appends so lines never interleave.
    lock: Mutex<()>,
}

impl FileSink {
    /// `None` logs each notification at info level (without its personal data) instead of
    /// writing a file.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            log_bodies: false,
            lock: Mutex::new(()),
        }
    }

    /// Whether the log (when there is no file) also gets the recipient, subject and body.
    /// Off by default; for demos and local debugging only.
    #[must_use]
    pub fn log_bodies(mut self, yes: bool) -> Self {
        self.log_bodies = yes;
        self
    }
}

fn channel_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Email => "email",
        ChannelKind::Sms => "sms",
        ChannelKind::Webhook => "webhook",
    }
}

#[async_trait]
impl Channel for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    fn accepts(&self, n: &Notification) -> bool {
        matches!(n.channel, ChannelKind::Email | ChannelKind::Sms)
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let channel = channel_name(n.channel);
        let line = serde_json::json!({
            "event_id": n.event_id,
            "event_type": n.event_type,
            "formatter": n.formatter,
            "channel": channel,
            "recipient": n.recipient,
            "subject": n.subject,
            "content_type": n.content_type,
            "body": n.body,
        });
        let Some(path) = &self.path else {
            if self.log_bodies {
                info!(event_id = %n.event_id, event_type = %n.event_type, channel,
                      formatter = %n.formatter, notification = %line, "notification");
            } else {
                info!(event_id = %n.event_id, event_type = %n.event_type, channel,
                      formatter = %n.formatter, "notification");
            }
            return Ok(());
        };
        let _guard = self.lock.lock().await;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| DeliveryError::Sink(format!("{}: {e}", path.display())))?;
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        file.write_all(&bytes)
            .await
            .map_err(|e| DeliveryError::Sink(format!("{}: {e}", path.display())))?;
        file.flush()
            .await
            .map_err(|e| DeliveryError::Sink(format!("{}: {e}", path.display())))
    }
}

/// The host part of a URL, for logs; `?` when it does not parse.
fn url_host(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Per request.
    pub timeout: Duration,
    /// Attempts per notification (first try included).
    pub attempts: u32,
    pub backoff: RetryPolicy,
    /// Which addresses a webhook URL may point at: the guard the plugins' HTTP capability
    /// uses, so a formatter cannot aim deliveries at the host's own network (private targets
    /// only when the operator allows them).
    pub egress: EgressPolicy,
    /// Signs each request (Standard Webhooks) when set.
    pub signing_secret: Option<SigningSecret>,
    /// PEM certificates of CAs trusted for `https://` receivers besides Mozilla's roots (an
    /// operator's internal CA).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: RetryPolicy {
                initial: Duration::from_millis(250),
                max: Duration::from_secs(5),
            },
            egress: EgressPolicy::default(),
            signing_secret: None,
            extra_roots_pem: None,
        }
    }
}

/// Why the webhook channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error(
        "the webhook signing secret must be `whsec_` followed by base64 (at least 16 bytes): {0}"
    )]
    Secret(&'static str),
    #[error("the webhook CA certificates are not PEM certificates: {0}")]
    Roots(String),
    #[error("the webhook HTTP client: {0}")]
    Client(String),
}

/// The key that signs webhook requests the way Standard Webhooks (standardwebhooks.com)
/// specifies, which receivers can check with that project's libraries in most languages:
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`.
#[derive(Clone)]
pub struct SigningSecret(ring::hmac::Key);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    /// A secret written as Standard Webhooks does: `whsec_` and the key in base64.
    pub fn parse(text: &str) -> Result<Self, WebhookSetupError> {
        use base64::Engine as _;
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or(WebhookSetupError::Secret("no `whsec_` prefix"))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| WebhookSetupError::Secret("not base64"))?;
        if key.len() < 16 {
            return Err(WebhookSetupError::Secret("shorter than 16 bytes"));
        }
        Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)))
    }

    /// The `webhook-signature` value of one request.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        use base64::Engine as _;
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

/// Resolves webhook hosts through the egress guard: a name with any refused address fails
/// to resolve, and the connection goes to the addresses checked.
struct GuardedResolver(EgressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            // Port 0: the client puts the URL's port on the addresses it connects to.
            let addrs = policy.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// POSTs webhook notifications to their recipient URL, `https://` (rustls, Mozilla's roots
/// plus any configured CA) or `http://`, with `Idempotency-Key`, `ce-id` and `webhook-id` set
/// to the event id so the receiver can drop duplicates, and signed when a secret is set.
/// Targets pass the egress guard; redirects are not followed (a redirect could lead past the
/// guard) and proxies from the environment are not used (they would resolve the name
/// instead of the guard). 5xx, 429 and transport errors are retried with backoff; other
/// answers, and refused targets, are refusals and not retried.
pub struct WebhookChannel {
    options: WebhookOptions,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl WebhookChannel {
    pub fn new(options: WebhookOptions) -> Result<Self, WebhookSetupError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(options.timeout)
            .dns_resolver(Arc::new(GuardedResolver(options.egress)));
        if let Some(pem) = &options.extra_roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| WebhookSetupError::Roots(e.to_string()))?;
            if roots.is_empty() {
                return Err(WebhookSetupError::Roots("no certificate found".into()));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .build()
            .map_err(|e| WebhookSetupError::Client(e.to_string()))?;
        Ok(Self { options, client })
    }

    async fn post_once(&self, n: &Notification) -> Result<(), (bool, String)> {
        let url =
            reqwest::Url::parse(&n.recipient).map_err(|e| (false, format!("bad URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err((
                false,
                format!("only https:// and http:// URLs: {}", url.scheme()),
            ));
        }
        // An IP address in the URL is not resolved, so the client would not ask the guard.
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if literal.parse::<std::net::IpAddr>().is_ok() {
            let port = url.port_or_known_default().unwrap_or(0);
            self.options
                .egress
                .resolve(host, port)
                .await
                .map_err(|e| (false, e.to_string()))?;
        }
        let mut request = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, &n.content_type)
            .header("idempotency-key", &n.event_id)
            .header("ce-id", &n.event_id)
            .header("ce-type", &n.event_type)
            .header("webhook-id", &n.event_id);
        if let Some(secret) = &self.options.signing_secret {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request.header("webhook-timestamp", timestamp).header(
                "webhook-signature",
                secret.sign(&n.event_id, timestamp, n.body.as_bytes()),
            );
        }
        let response = request
            .body(n.body.clone())
            .send()
            .await
            .map_err(|e| failure(&e))?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err((false, format!("HTTP {status}: redirects are not followed")))
        } else {
            let retry = status.is_server_error() || status.as_u16() == 429;
            Err((retry, format!("HTTP {status}")))
        }
    }
}

/// Whether a failed send is worth retrying, and why it failed, without the URL (it may carry
/// a token in its path or query).
fn failure(e: &reqwest::Error) -> (bool, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<oms_egress::EgressError>() {
            let retry = !matches!(refused, oms_egress::EgressError::Prohibited { .. });
            return (retry, refused.to_string());
        }
        source = cause.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let detail = std::error::Error::source(e).map_or_else(String::new, |c| format!(": {c}"));
    (true, format!("{kind}{detail}"))
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &str {
        "webhook"
    }

    fn accepts(&self, n: &Notification) -> bool {
        n.channel == ChannelKind::Webhook
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let attempts = self.options.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.post_once(n).await {
                Ok(()) => return Ok(()),
                Err((false, e)) => return Err(DeliveryError::Refused(e)),
                Err((true, e)) => {
                    // The host only: a webhook URL may carry a token in its path or query.
                    warn!(event_id = %n.event_id, host = %url_host(&n.recipient), attempt,
                          error = %e, "webhook failed");
                    last = e;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(self.options.backoff.jittered(attempt)).await;
            }
        }
        Err(DeliveryError::Exhausted { attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use super::SigningSecret;

    /// The example of the Standard Webhooks specification, so that receivers using its
    /// libraries accept what this host signs.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningSecret::parse("whsec_not base64!").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err(), "5 bytes");
    }
}
