//! Delivery channels. A channel says which notifications it takes and delivers them; adding a
//! channel (SMTP, SMS gateway) means one more [`Channel`] implementation here.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
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
        }
    }
}

/// POSTs webhook notifications to their recipient URL (`http://` only: TLS is left to a
/// sidecar or gateway for now), with `Idempotency-Key` and `ce-id` set to the event id so the
/// receiver can drop duplicates. 5xx, 429 and transport errors are retried with backoff;
/// other 4xx are refusals and not retried.
pub struct WebhookChannel {
    options: WebhookOptions,
}

impl WebhookChannel {
    pub fn new(options: WebhookOptions) -> Self {
        Self { options }
    }

    async fn post_once(&self, n: &Notification) -> Result<(), (bool, String)> {
        let uri: http::Uri = n
            .recipient
            .parse()
            .map_err(|e| (false, format!("bad URL {:?}: {e}", n.recipient)))?;
        if uri.scheme_str() != Some("http") {
            return Err((false, format!("only http:// URLs are supported: {uri}")));
        }
        let host = uri.host().ok_or((false, "URL without host".to_owned()))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, &n.content_type)
            .header("idempotency-key", &n.event_id)
            .header("ce-id", &n.event_id)
            .header("ce-type", &n.event_type)
            .body(Full::new(Bytes::from(n.body.clone())))
            .map_err(|e| (false, e.to_string()))?;
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| (true, format!("connect {host}:{port}: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| (true, e.to_string()))?;
            tokio::spawn(conn);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| (true, e.to_string()))?;
            let status = response.status();
            // Drain the body so the connection closes cleanly.
            let _ = response.into_body().collect().await;
            Ok::<_, (bool, String)>(status)
        };
        let status = tokio::time::timeout(self.options.timeout, exchange)
            .await
            .map_err(|_| (true, format!("timed out after {:?}", self.options.timeout)))??;
        if status.is_success() {
            Ok(())
        } else {
            let retry = status.is_server_error() || status.as_u16() == 429;
            Err((retry, format!("HTTP {status}")))
        }
    }
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
