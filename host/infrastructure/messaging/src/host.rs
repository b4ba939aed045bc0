//! What `oms serve` starts: the chosen broker, the relay worker (woken by every order change
//! this process commits), the listener for order changes other processes' relays published
//! (hints for `WatchOrder`) and the notification consumer, all stopping on one shutdown
//! signal.

use std::path::PathBuf;
use std::sync::Arc;

use oms_application::changes::{OrderChange, OrderChanges};
use oms_application::ports::{OutboxStore, ProcessedEventStore};
use oms_domain::{OrderId, Version};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::broker::{Broker, InProcessBroker, KafkaBroker, KafkaOptions, Topics};
use crate::error::BrokerError;
use crate::notifications::{
    Channel, FileSink, Formatter, NotificationConfig, NotificationService, WebhookChannel,
    WebhookOptions,
};
use crate::relay::{Relay, RelayConfig};

/// Which broker.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// The embedded broker: nothing to run beside the host.
    InProcess,
    Kafka(KafkaOptions),
}

/// Everything the host configures.
#[derive(Debug, Clone)]
pub struct MessagingSettings {
    pub broker: BrokerChoice,
    pub topics: Topics,
    pub relay: RelayConfig,
    /// `None` runs no notification consumer.
    pub notifications: Option<NotificationSettings>,
}

/// The notification consumer's settings.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    pub consumer: String,
    /// JSON-lines file for e-mail/SMS notifications; `None` logs them.
    pub file: Option<PathBuf>,
    /// Whether logged notifications include recipient, subject and body (personal data).
    pub log_bodies: bool,
    pub webhook: WebhookOptions,
}

/// The running messaging part of the host.
pub struct Messaging {
    /// For redrive and metrics (the admin API will expose them).
    pub relay: Relay,
    pub tasks: Vec<JoinHandle<()>>,
}

/// The stores messaging works on.
#[derive(Clone)]
pub struct MessagingStores {
    pub outbox: Arc<dyn OutboxStore>,
    pub processed_events: Arc<dyn ProcessedEventStore>,
}

/// Starts the relay and (when configured) the notification consumer with `formatters`.
pub fn start(
    settings: MessagingSettings,
    stores: MessagingStores,
    changes: &OrderChanges,
    formatters: Vec<Arc<dyn Formatter>>,
    shutdown: watch::Receiver<bool>,
) -> Result<Messaging, BrokerError> {
    let broker: Arc<dyn Broker> = match &settings.broker {
        BrokerChoice::InProcess => Arc::new(InProcessBroker::default()),
        BrokerChoice::Kafka(options) => Arc::new(KafkaBroker::new(options.clone())?),
    };
    let publisher = broker.publisher()?;
    // Order changes other processes committed, as their relays publish them: hints for
    // this process's `WatchOrder` streams. Ends at once where the database has no such signal.
    let hints = {
        let (outbox, changes) = (Arc::clone(&stores.outbox), changes.clone());
        let on_change: Arc<dyn Fn(OrderId, Version) + Send + Sync> =
            Arc::new(move |id, version| changes.hint(id, version));
        let stop = shutdown.clone();
        tokio::spawn(async move { outbox.watch_published(on_change, stop).await })
    };
    let relay = Relay::new(
        stores.outbox,
        publisher.clone(),
        settings.topics.clone(),
        settings.relay,
    );
    let mut tasks = vec![
        hints,
        tokio::spawn(relay.clone().run(shutdown.clone())),
        tokio::spawn(forward_wakeups(
            changes.subscribe(),
            relay.clone(),
            shutdown.clone(),
        )),
    ];
    if let Some(n) = settings.notifications {
        let consumer = broker.consumer(&n.consumer, &[settings.topics.events.as_str()])?;
        let channels: Vec<Arc<dyn Channel>> = vec![
            Arc::new(FileSink::new(n.file).log_bodies(n.log_bodies)),
            Arc::new(WebhookChannel::new(n.webhook)),
        ];
        let config = NotificationConfig {
            consumer: n.consumer,
            dead_letter_topic: settings.topics.notification_dead_letters.clone(),
            ..NotificationConfig::default()
        };
        let service = NotificationService::new(
            stores.processed_events,
            config,
            formatters,
            channels,
            publisher,
        );
        tasks.push(tokio::spawn(service.run(consumer, shutdown)));
    }
    info!(broker = ?kind(&settings.broker), "messaging started");
    Ok(Messaging { relay, tasks })
}

fn kind(b: &BrokerChoice) -> &'static str {
    match b {
        BrokerChoice::InProcess => "in-process",
        BrokerChoice::Kafka(_) => "kafka",
    }
}

/// Every order change this process committed wakes the relay (the change feed is published
/// after commit). Hints of changes published elsewhere do not: their rows are published.
async fn forward_wakeups(
    mut changes: broadcast::Receiver<OrderChange>,
    relay: Relay,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                // Lagging only means several changes at once: one wake covers them.
                Ok(OrderChange::Committed(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    relay.wake();
                }
                Ok(OrderChange::Hint { .. }) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return; },
        }
    }
}
