//! The notification service: consumes order events, turns each into notifications with the
//! configured formatters, and delivers them through channels.
//!
//! Per batch of the messages that have arrived (up to `batch_size`): decode each (a message
//! that is not an event is poison) -> one read of which event ids this consumer already
//! processed -> for each new event, format with every formatter and deliver each notification
//! through the channel that accepts it -> one multi-row insert of the delivered event ids into
//! `processed_events` -> commit the offsets. A poison message (undecodable, a formatter that traps or rejects the event, a
//! delivery that keeps failing) goes to the notification dead-letter topic and the offset is
//! committed, so one bad event never blocks its partition.

mod channels;
#[cfg(feature = "plugins")]
pub mod plugin;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use oms_application::ports::ProcessedEventStore;
use oms_domain::Timestamp;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::broker::{Consumer, Delivery, Message, Publisher};
use crate::error::MessagingError;
use crate::event::{self, headers, pb};
use oms_application::retry::RetryPolicy;

pub use channels::{
    Channel, DeliveryError, FileSink, SigningSecret, WebhookChannel, WebhookOptions,
    WebhookSetupError,
};

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Email,
    Sms,
    Webhook,
}

/// One message to deliver, as a formatter produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The event it announces; sent along (webhook `Idempotency-Key`) so receivers can
    /// drop duplicates.
    pub event_id: String,
    pub event_type: String,
    /// Which formatter produced it.
    pub formatter: String,
    pub channel: ChannelKind,
    /// An e-mail address, a phone number or a URL, by channel.
    pub recipient: String,
    pub subject: Option<String>,
    pub body: String,
    pub content_type: String,
}

/// Why a formatter produced nothing usable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormatFailure {
    /// The formatter refuses this event (permanent): the event is dead-lettered.
    #[error("formatter rejected the event: {0}")]
    Rejected(String),
    /// The formatter crashed on this event (a trap, output outside the contract): poison, the
    /// event is dead-lettered rather than retried forever.
    #[error("formatter failed: {0}")]
    Crashed(String),
    /// The formatter could not run now (no instance could be started, a resource limit or
    /// deadline, circuit open, not installed): the event is retried with backoff, and
    /// dead-lettered only once the consumer's attempts run out.
    #[error("formatter unavailable: {0}")]
    Unavailable(String),
}

/// Turns an event into notifications. Must be pure (no side effects): it may run twice.
#[async_trait]
pub trait Formatter: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn format(&self, event: &pb::OrderEvent) -> Result<Vec<Notification>, FormatFailure>;
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// The consumer group and the `processed_events.consumer` name.
    pub consumer: String,
    /// Where poison events go.
    pub dead_letter_topic: String,
    /// Retries of a transient failure (formatter unavailable, database error) before the
    /// event is dead-lettered.
    pub max_attempts: u32,
    pub backoff: RetryPolicy,
    /// Messages handled together at most (one dedup read and one record per batch).
    pub batch_size: usize,
    /// How long a batch waits for more messages once its first has arrived, when no more are
    /// there yet (as Kafka's `fetch.max.wait.ms` does for a fetch). A batch's record is a
    /// flushed commit, so without it a trickle of events (one order at a time: two per
    /// order) costs a flush per event; with it, one per linger. It delays a notification by at
    /// most this much; a backlog fills batches at once and never waits.
    pub batch_linger: Duration,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            consumer: "oms-notifications".into(),
            dead_letter_topic: crate::broker::Topics::default().notification_dead_letters,
            max_attempts: 5,
            backoff: RetryPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
            batch_size: 100,
            batch_linger: Duration::from_millis(50),
        }
    }
}

/// Counters of the notification service.
#[derive(Debug, Default)]
pub struct NotificationMetrics {
    pub processed: AtomicU64,
    pub duplicates: AtomicU64,
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Formatted and delivered this many notifications.
    Processed(usize),
    /// Already processed by this consumer: nothing sent.
    Duplicate,
    /// Sent to the dead-letter topic, with the reason.
    DeadLettered(String),
}

/// The notification service. Cheap to clone.
#[derive(Clone)]
pub struct NotificationService {
    processed: Arc<dyn ProcessedEventStore>,
    config: NotificationConfig,
    formatters: Vec<Arc<dyn Formatter>>,
    channels: Vec<Arc<dyn Channel>>,
    dlq: Arc<dyn Publisher>,
    metrics: Arc<NotificationMetrics>,
}

impl NotificationService {
    pub fn new(
        processed: Arc<dyn ProcessedEventStore>,
        config: NotificationConfig,
        formatters: Vec<Arc<dyn Formatter>>,
        channels: Vec<Arc<dyn Channel>>,
        dlq: Arc<dyn Publisher>,
    ) -> Self {
        Self {
            processed,
            config,
            formatters,
            channels,
            dlq,
            metrics: Arc::new(NotificationMetrics::default()),
        }
    }

    pub fn metrics(&self) -> Arc<NotificationMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Consumes until `shutdown` turns true, in batches: it waits for one message, takes
    /// whatever else arrives within `batch_linger` (up to `batch_size`), and handles them together
    /// ([`Self::handle_batch`]). The offset of a message is committed only after it was
    /// processed, found duplicate, or dead-lettered.
    pub async fn run(self, mut consumer: Box<dyn Consumer>, mut shutdown: watch::Receiver<bool>) {
        info!(consumer = %self.config.consumer, "notification consumer started");
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let delivery = tokio::select! {
                d = consumer.recv() => d,
                r = shutdown.changed() => { if r.is_err() { break; } continue; }
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, "receiving events failed");
                    tokio::time::sleep(self.config.backoff.jittered(failures)).await;
                    continue;
                }
            };
            failures = 0;
            let mut batch = vec![delivery];
            let linger_ends = tokio::time::Instant::now() + self.config.batch_linger;
            // `timeout_at` polls `recv` before it looks at the clock, so once the linger has
            // ended (or with none) a message that is ready is still taken; with Kafka, `recv`
            // may answer "not yet" once while rdkafka handles another event (an offset
            // commit's result), which ends the batch early. Nothing is lost either way.
            while batch.len() < self.config.batch_size {
                match tokio::time::timeout_at(linger_ends, consumer.recv()).await {
                    Ok(Ok(d)) => batch.push(d),
                    Ok(Err(e)) => {
                        // The next `recv` meets it again if it lasts.
                        debug!(error = %e, "receiving more events for the batch failed");
                        break;
                    }
                    Err(_) => break,
                }
            }
            match self.handle_with_retries(&batch).await {
                Ok(outcomes) => {
                    debug!(?outcomes, events = batch.len(), "events handled");
                    for delivery in last_of_each_partition(&batch) {
                        if let Err(e) = consumer.commit(delivery).await {
                            // The events are recorded as processed: a redelivery is a
                            // duplicate.
                            warn!(error = %e, "offset commit failed");
                        }
                    }
                }
                // The dead-letter topic keeps failing: stop with the offsets uncommitted.
                Err(_) => break,
            }
        }
        info!("notification consumer stopped");
    }

    /// [`Self::handle_batch`], retrying transient failures with backoff from the event that
    /// failed on (the ones before it are done and recorded); after `max_attempts` that event
    /// is dead-lettered. A database failure is retried for as long as it lasts and never
    /// dead-letters: it is about the consumer's own store, not the event (a database outage
    /// of a few seconds used to send healthy events to the dead-letter topic). Errs only when
    /// even the dead-letter publish keeps failing.
    async fn handle_with_retries(
        &self,
        batch: &[Delivery],
    ) -> Result<Vec<Handled>, MessagingError> {
        let mut done: Vec<Handled> = Vec::with_capacity(batch.len());
        let mut attempt = 0u32;
        while let Some(head) = batch.get(done.len()) {
            let (handled, error) = self.handle_batch(&batch[done.len()..]).await;
            if !handled.is_empty() {
                // Progress: the error, if any, is about a later event.
                attempt = 0;
            }
            done.extend(handled);
            let Some(error) = error else { continue };
            let head = batch.get(done.len()).unwrap_or(head);
            attempt = attempt.saturating_add(1);
            warn!(error = %error, attempt, offset = head.offset, "event processing failed");
            let store_down = matches!(error, MessagingError::Store(_));
            if !store_down && attempt >= self.config.max_attempts {
                let reason = format!("gave up after {attempt} attempts: {error}");
                match self.dead_letter(head, &reason).await {
                    Ok(()) => {
                        done.push(Handled::DeadLettered(reason));
                        attempt = 0;
                        continue;
                    }
                    Err(e) if attempt >= self.config.max_attempts.saturating_mul(4) => {
                        return Err(e);
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(self.config.backoff.jittered(attempt)).await;
        }
        Ok(done)
    }

    /// Processes one delivery once: [`Self::handle_batch`] of one. `Err` means a transient
    /// failure worth retrying.
    pub async fn handle(&self, delivery: &Delivery) -> Result<Handled, MessagingError> {
        match self.handle_batch(std::slice::from_ref(delivery)).await {
            (_, Some(e)) => Err(e),
            (mut handled, None) => handled
                .pop()
                .ok_or_else(|| MessagingError::Invalid("a batch of one handled nothing".into())),
        }
    }

    /// Processes `batch` in order, once: one read of which events this consumer processed
    /// before; then each new event is formatted and delivered (an event twice in the batch,
    /// as after a relay's republish, only once); then one multi-row insert records the
    /// delivered ones. Returns the outcomes of the events it finished, in order, and the
    /// transient failure (formatter unavailable, database error) that stopped it early, if
    /// any: the events before it are recorded. When the record itself fails, nothing is
    /// finished: a retry delivers the batch's notifications again (at least once, as after a
    /// crash between delivery and record).
    pub async fn handle_batch(&self, batch: &[Delivery]) -> (Vec<Handled>, Option<MessagingError>) {
        let decoded: Vec<Result<(Uuid, pb::OrderEvent), String>> =
            batch.iter().map(decode_event).collect();
        let ids: Vec<Uuid> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().map(|(id, _)| *id))
            .collect();
        let mut seen = match self
            .processed
            .processed_among(&self.config.consumer, &ids)
            .await
        {
            Ok(seen) => seen,
            Err(e) => return (Vec::new(), Some(e.into())),
        };
        let mut handled = Vec::with_capacity(batch.len());
        let mut delivered = Vec::new();
        let mut stopped = None;
        // When the newest event handled here happened: the consumer's lag is its age.
        let mut newest_ms = None;
        for (delivery, event) in batch.iter().zip(decoded) {
            let occurred_ms = event.as_ref().ok().map(|(_, e)| e.occurred_at_ms);
            let outcome = match event {
                Err(reason) => self.poison(delivery, reason).await,
                Ok((id, _)) if seen.contains(&id) => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    Ok(Handled::Duplicate)
                }
                Ok((id, event)) => {
                    // Handled in the trace of the work that wrote the event.
                    let span = tracing::debug_span!(
                        "notification",
                        otel.kind = "consumer",
                        event.id = %id,
                        event.type = %event.event_type,
                    );
                    let _ = span.set_parent(crate::trace::context_of(&delivery.message));
                    let outcome =
                        tracing::Instrument::instrument(self.notify(delivery, &event), span).await;
                    if let Ok(Handled::Processed(_)) = outcome {
                        seen.insert(id);
                        delivered.push(id);
                    }
                    outcome
                }
            };
            match outcome {
                Ok(h) => {
                    handled.push(h);
                    newest_ms = newest_ms.max(occurred_ms);
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        if let Some(occurred_ms) = newest_ms {
            let age_ms = Timestamp::now()
                .unix_millis()
                .saturating_sub(occurred_ms)
                .max(0);
            // Milliseconds as f64: exact far beyond any lag worth reporting.
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("oms_notification_lag_seconds").set(age_ms as f64 / 1000.0);
        }
        if !delivered.is_empty() {
            if let Err(e) = self
                .processed
                .record_all(&self.config.consumer, &delivered, Timestamp::now())
                .await
            {
                return (Vec::new(), Some(e.into()));
            }
            self.metrics
                .processed
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        }
        (handled, stopped)
    }

    /// Formats `event` with every formatter and delivers the notifications. `Err` means a
    /// transient failure worth retrying.
    async fn notify(
        &self,
        delivery: &Delivery,
        event: &pb::OrderEvent,
    ) -> Result<Handled, MessagingError> {
        let mut notes = Vec::new();
        for f in &self.formatters {
            match f.format(event).await {
                Ok(mut n) => notes.append(&mut n),
                Err(FormatFailure::Unavailable(e)) => {
                    return Err(MessagingError::Invalid(format!(
                        "formatter {}: {e}",
                        f.name()
                    )));
                }
                Err(e) => {
                    return self
                        .poison(delivery, format!("formatter {}: {e}", f.name()))
                        .await;
                }
            }
        }
        for n in &notes {
            let Some(channel) = self.channels.iter().find(|c| c.accepts(n)) else {
                debug!(channel = ?n.channel, formatter = %n.formatter, "no channel configured; dropped");
                continue;
            };
            if let Err(e) = channel.deliver(n).await {
                // Channels retry on their own; what reaches here is permanent or exhausted.
                return self
                    .poison(delivery, format!("delivery via {}: {e}", channel.name()))
                    .await;
            }
            self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Handled::Processed(notes.len()))
    }

    async fn poison(&self, delivery: &Delivery, reason: String) -> Result<Handled, MessagingError> {
        self.dead_letter(delivery, &reason).await?;
        Ok(Handled::DeadLettered(reason))
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), MessagingError> {
        let mut hs = delivery.message.headers.clone();
        hs.push((headers::ERROR.into(), reason.as_bytes().to_vec()));
        let origin = format!(
            "{}/{}/{}",
            delivery.message.topic, delivery.partition, delivery.offset
        );
        hs.push((headers::ORIGIN.into(), origin.into_bytes()));
        let msg = Message {
            topic: self.config.dead_letter_topic.clone(),
            key: delivery.message.key.clone(),
            payload: delivery.message.payload.clone(),
            headers: hs,
        };
        if let Some(Err(e)) = self.dlq.publish(vec![msg]).await.into_iter().next() {
            return Err(e.into());
        }
        self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        warn!(reason, key = %delivery.message.key, event_id = ?delivery.message.header(headers::ID),
              "event sent to the notification dead-letter topic");
        Ok(())
    }
}

/// The event in `delivery` and its id, or why it is poison.
fn decode_event(delivery: &Delivery) -> Result<(Uuid, pb::OrderEvent), String> {
    let event = event::decode(&delivery.message.payload).map_err(|e| e.to_string())?;
    let id = Uuid::parse_str(&event.event_id)
        .map_err(|_| format!("event id {:?} is not a UUID", event.event_id))?;
    Ok((id, event))
}

/// The last delivery of each partition in `batch`: committing it commits the ones before.
fn last_of_each_partition(batch: &[Delivery]) -> Vec<&Delivery> {
    let mut last: Vec<&Delivery> = Vec::new();
    for d in batch {
        match last
            .iter_mut()
            .find(|l| l.message.topic == d.message.topic && l.partition == d.partition)
        {
            Some(l) if l.offset < d.offset => *l = d,
            Some(_) => {}
            None => last.push(d),
        }
    }
    last
}
