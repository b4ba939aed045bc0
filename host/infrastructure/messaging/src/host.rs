//! What `oms serve` starts: the chosen broker, the relay worker (woken by every order change
//! this process commits), the listener for order changes other processes' relays published
//! (hints for `WatchOrder`) and the notification consumer, all stopping on one shutdown
//! signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oms_application::changes::{OrderChange, OrderChanges};
use oms_application::ports::{OutboxStore, ProcessedEventStore};
use oms_application::retry::RetryPolicy;
use oms_domain::{OrderId, Version};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::{Broker, Consumer, InProcessBroker, KafkaBroker, KafkaOptions, Topics};
use crate::error::BrokerError;
use crate::notifications::{
    Channel, FileSink, Formatter, NotificationConfig, NotificationMetrics, NotificationService,
    WebhookChannel,
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
    /// Built by the caller, which reports a bad secret or CA file at startup.
    pub webhook: Arc<WebhookChannel>,
    /// See [`NotificationConfig::batch_linger`].
    pub batch_linger: Duration,
}

/// The running messaging part of the host.
pub struct Messaging {
    /// For waking it after a redrive (`OutboxOperations`) and for its metrics.
    pub relay: Relay,
    /// Each task with its name, for health checks: none of them ends before shutdown
    /// unless something is wrong.
    pub tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The notification consumer's counters, when it runs (exported by the host).
    pub notifications: Option<Arc<NotificationMetrics>>,
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
    // this process's `WatchOrder` streams.
    let hints = {
        let (outbox, changes) = (Arc::clone(&stores.outbox), changes.clone());
        let on_change: Arc<dyn Fn(OrderId, Version) + Send + Sync> =
            Arc::new(move |id, version| changes.hint(id, version));
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            outbox.watch_published(on_change, stop.clone()).await;
            // Where the database has no signal it returned at once: the task still lives
            // until shutdown, so that its end always means something went wrong.
            let _ = stop.wait_for(|s| *s).await;
        })
    };
    let relay = Relay::new(
        stores.outbox,
        publisher.clone(),
        settings.topics.clone(),
        settings.relay,
    );
    let mut tasks = vec![
        ("order change listener", hints),
        (
            "outbox relay",
            tokio::spawn(relay.clone().run(shutdown.clone())),
        ),
        (
            "relay wake-ups",
            tokio::spawn(forward_wakeups(
                changes.subscribe(),
                relay.clone(),
                shutdown.clone(),
            )),
        ),
    ];
    let mut notification_metrics = None;
    if let Some(n) = settings.notifications {
        let group = n.consumer.clone();
        let consumer = broker.consumer(&group, &[settings.topics.events.as_str()])?;
        let channels: Vec<Arc<dyn Channel>> = vec![
            Arc::new(FileSink::new(n.file).log_bodies(n.log_bodies)),
            n.webhook,
        ];
        let config = NotificationConfig {
            consumer: group.clone(),
            dead_letter_topic: settings.topics.notification_dead_letters.clone(),
            batch_linger: n.batch_linger,
            ..NotificationConfig::default()
        };
        let service = NotificationService::new(
            stores.processed_events,
            config,
            formatters,
            channels,
            publisher,
        );
        notification_metrics = Some(service.metrics());
        let topic = settings.topics.events.clone();
        let restart = move || broker.consumer(&group, &[topic.as_str()]);
        tasks.push((
            "notification consumer",
            tokio::spawn(keep_consuming(service, consumer, restart, shutdown)),
        ));
    }
    info!(broker = ?kind(&settings.broker), "messaging started");
    Ok(Messaging {
        relay,
        tasks,
        notifications: notification_metrics,
    })
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

/// Runs the notification consumer until shutdown, starting a new one whenever it stops
/// before that (its dead-letter topic kept failing, say, after a long broker outage): with
/// backoff, so a broker that stays down is not hammered, and never for good. A fresh
/// consumer resumes from the group's committed offsets.
async fn keep_consuming(
    service: NotificationService,
    first: Box<dyn Consumer>,
    restart: impl Fn() -> Result<Box<dyn Consumer>, BrokerError>,
    mut shutdown: watch::Receiver<bool>,
) {
    let backoff = RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let mut consumer = Some(first);
    let mut restarts = 0u32;
    loop {
        if let Some(c) = consumer.take() {
            service.clone().run(c, shutdown.clone()).await;
        }
        if *shutdown.borrow() {
            return;
        }
        restarts = restarts.saturating_add(1);
        let wait = backoff.jittered(restarts);
        warn!(
            restarts,
            wait_ms = wait.as_millis() as u64,
            "notification consumer stopped; restarting"
        );
        if !oms_application::shutdown::pause(wait, &mut shutdown).await {
            return;
        }
        match restart() {
            Ok(c) => consumer = Some(c),
            Err(e) => warn!(error = %e, "notification consumer could not be restarted"),
        }
    }
}
