//! Kafka through rdkafka (librdkafka built from the vendored sources).
//!
//! The producer is idempotent with `acks=all`: librdkafka's retries cannot duplicate or
//! reorder messages within a partition, which is what makes the relay's per-order ordering
//! hold across the client's internal retries. Any librdkafka property (TLS, SASL, tuning)
//! passes through [`KafkaOptions::properties`] unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};

use super::{Broker, Consumer, Delivery, Message, Publisher};
use crate::error::BrokerError;

/// Connection and client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// `bootstrap.servers`, e.g. `broker1:9092,broker2:9092`.
    pub bootstrap_servers: String,
    /// How long the producer keeps trying one message (`message.timeout.ms`) before the
    /// relay counts a failed attempt.
    pub delivery_timeout: Duration,
    /// librdkafka properties applied last to producers and consumers alike, e.g.
    /// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`,
    /// `ssl.ca.location = "/etc/ssl/ca.pem"`.
    pub properties: BTreeMap<String, String>,
    /// The consumers' `group.instance.id` (static membership, KIP-345), or `None` for
    /// dynamic membership. A host restarted under the same id takes its partitions back at
    /// once instead of waiting out the old member's session and a rebalance; two live
    /// processes must never share one.
    pub group_instance_id: Option<String>,
    /// Each consumer reads every partition of its topics, assigned by itself, instead of
    /// joining its group's rebalancing; offsets are still committed (and resumed from)
    /// under the group. For a deployment that runs one notification consumer, and for a
    /// broker whose group coordination cannot be relied on (docs/reliability.md: tansu).
    /// Two processes consuming one group this way would both read every event.
    pub assign_all_partitions: bool,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            delivery_timeout: Duration::from_secs(30),
            properties: BTreeMap::new(),
            group_instance_id: None,
            assign_all_partitions: false,
        }
    }
}

/// Makes Kafka producers and consumers from one set of options. The producer is created
/// once and shared (librdkafka producers are thread-safe and batch internally).
#[derive(Clone)]
pub struct KafkaBroker {
    options: KafkaOptions,
    producer: Arc<KafkaPublisher>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may hold SASL passwords: show only their names.
        f.debug_struct("KafkaBroker")
            .field("bootstrap_servers", &self.options.bootstrap_servers)
            .field("properties", &self.options.properties.keys())
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Creates the producer (which connects lazily: an unreachable cluster is not an error
    /// here, publishes fail instead).
    pub fn new(options: KafkaOptions) -> Result<Self, BrokerError> {
        let mut config = base_config(&options);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                options.delivery_timeout.as_millis().max(1).to_string(),
            )
            // Small linger: batches form under load, and an idle relay's single message
            // waits at most this long.
            .set("linger.ms", "2");
        apply_properties(&mut config, &options);
        let producer: FutureProducer = config.create().map_err(config_error)?;
        Ok(Self {
            options,
            producer: Arc::new(KafkaPublisher {
                config,
                producer: RwLock::new(Arc::new(producer)),
            }),
        })
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }
}

fn base_config(options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.bootstrap_servers)
        .set("client.id", "oms");
    config
}

fn apply_properties(config: &mut ClientConfig, options: &KafkaOptions) {
    for (k, v) in &options.properties {
        config.set(k, v);
    }
}

fn config_error(e: KafkaError) -> BrokerError {
    BrokerError::Config(e.to_string())
}

/// Broker-side refusals that retrying the same message cannot fix; everything else
/// (timeouts, transport errors, leader changes) counts as unavailability.
fn classify(e: &KafkaError) -> BrokerError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    );
    if permanent {
        BrokerError::Rejected(e.to_string())
    } else {
        BrokerError::Unavailable(e.to_string())
    }
}

impl Broker for KafkaBroker {
    fn publisher(&self) -> Result<Arc<dyn Publisher>, BrokerError> {
        Ok(self.producer.clone())
    }

    fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BrokerError> {
        Ok(Box::new(self.kafka_consumer(group, topics)?))
    }
}

impl KafkaBroker {
    /// A consumer's configuration in `group`.
    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = base_config(&self.options);
        config
            .set("group.id", group)
            // Offsets move only when the application commits after processing.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka's statistics carry the group's offset lag (`LagContext`).
            .set("statistics.interval.ms", "5000");
        if let Some(id) = &self.options.group_instance_id {
            config.set("group.instance.id", id);
        }
        apply_properties(&mut config, &self.options);
        config
    }

    fn kafka_consumer(&self, group: &str, topics: &[&str]) -> Result<KafkaConsumer, BrokerError> {
        let consumer: StreamConsumer<LagContext> = self
            .consumer_config(group)
            .create_with_context(LagContext {
                group: group.to_owned(),
                lag: std::sync::atomic::AtomicI64::new(-1),
            })
            .map_err(config_error)?;
        let unassigned = if self.options.assign_all_partitions {
            // Assigned at the first `recv`: the partitions must be read from the broker,
            // which may be down while the host starts.
            Some(topics.iter().map(|t| (*t).to_owned()).collect())
        } else {
            consumer.subscribe(topics).map_err(config_error)?;
            None
        };
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            unassigned,
        })
    }
}

/// `topic/partition` of each element, comma-separated, for the assignment log lines.
fn partition_names(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long one metadata request for the self-assigned partitions may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Assigns every partition of `topics` to `consumer`, each from its group's committed offset
/// (`auto.offset.reset` where none is). Blocking: librdkafka's metadata call waits.
fn assign_all(
    consumer: &StreamConsumer<LagContext>,
    topics: &[String],
) -> Result<TopicPartitionList, BrokerError> {
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| classify(&e))?;
        let partitions = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect::<Vec<_>>();
        if partitions.is_empty() {
            return Err(BrokerError::Unavailable(format!(
                "topic {topic} has no partitions yet"
            )));
        }
        for partition in partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Stored)
                .map_err(|e| classify(&e))?;
        }
    }
    consumer.assign(&assignment).map_err(|e| classify(&e))?;
    Ok(assignment)
}

/// The shared idempotent producer.
pub struct KafkaPublisher {
    config: ClientConfig,
    /// Replaced after a fatal error (see [`KafkaPublisher::recover`]).
    producer: RwLock<Arc<FutureProducer>>,
}

impl KafkaPublisher {
    fn current(&self) -> Arc<FutureProducer> {
        // A panic elsewhere cannot leave the Arc half-written: use it anyway.
        Arc::clone(&self.producer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the producer after a batch in which nothing got through: either it is in a
    /// fatal state (an idempotent producer whose guarantees the cluster can no longer honour,
    /// e.g. a broker restarted without its producer state), or every message timed out. In
    /// the second case librdkafka would keep waiting to re-establish its producer id while
    /// the relay keeps enqueueing retries, and a broker that came back could stay unused
    /// (seen against tansu). A fresh producer gets a new producer id and fresh metadata.
    /// Safe: the relay marks rows published only on acks, so the worst case is a duplicate.
    fn recover(&self, used: &Arc<FutureProducer>, all_failed: bool) {
        let fatal = used.client().fatal_error();
        if fatal.is_none() && !all_failed {
            return;
        }
        let mut guard = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&guard, used) {
            return; // another task already replaced it
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(?fatal, "replacing the Kafka producer after a failed batch");
                let old = std::mem::replace(&mut *guard, Arc::new(fresh));
                // Destroying a producer may wait for its queue: not on a runtime thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "recreating the Kafka producer failed"),
        }
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: Vec<Message>) -> Vec<Result<(), BrokerError>> {
        let producer = self.current();
        let results = publish_with(&producer, &batch).await;
        if results.iter().any(Result::is_err) {
            let all_failed = results.iter().all(Result::is_err);
            self.recover(&producer, all_failed);
        }
        results
    }
}

async fn publish_with(
    producer: &FutureProducer,
    batch: &[Message],
) -> Vec<Result<(), BrokerError>> {
    // Enqueue everything first so librdkafka can batch, then wait for all acks.
    let mut pending = Vec::with_capacity(batch.len());
    for msg in batch {
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
        for (k, v) in &msg.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let record = FutureRecord::to(&msg.topic)
            .key(msg.key.as_bytes())
            .payload(msg.payload.as_slice())
            .headers(headers);
        pending.push(match producer.send_result(record) {
            Ok(future) => Ok(future),
            Err((e, _)) => Err(classify(&e)),
        });
    }
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        results.push(match p {
            Ok(future) => match future.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(classify(&e)),
                Err(_) => Err(BrokerError::Closed),
            },
            Err(e) => Err(e),
        });
    }
    results
}

/// Publishes the consumer group's offset lag from librdkafka's statistics (every
/// `statistics.interval.ms`, 5 s, served while the consumer polls, which it does whenever
/// it waits for events): `oms_broker_consumer_lag_messages{group}`, the sum over this
/// consumer's assigned partitions of the high watermark minus the committed offset.
struct LagContext {
    group: String,
    /// The last figure, -1 until librdkafka knows one (the gauge shows the same).
    lag: std::sync::atomic::AtomicI64,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        // librdkafka reports -1 for what it does not know yet (no commit, no fetch) and
        // lists partitions this consumer is not assigned (also -1), and partition -1 is
        // its internal "unassigned" queue.
        let lags: Vec<i64> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|(id, p)| **id >= 0 && p.consumer_lag >= 0)
            .map(|(_, p)| p.consumer_lag)
            .collect();
        if !lags.is_empty() {
            let lag = lags.iter().sum::<i64>();
            self.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)] // far below 2^52 messages
            metrics::gauge!("oms_broker_consumer_lag_messages", "group" => self.group.clone())
                .set(lag as f64);
        }
    }
}

/// Rebalances are logged: a consumer left without partitions consumes nothing while the
/// group's lag grows, and these lines are how an operator tells that from an idle topic.
impl ConsumerContext for LagContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(
                group = %self.group,
                partitions = %partition_names(tpl),
                "consumer group assigned partitions"
            ),
            Rebalance::Revoke(tpl) => tracing::info!(
                group = %self.group,
                partitions = %partition_names(tpl),
                "consumer group revoked partitions"
            ),
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "consumer group rebalance failed")
            }
        }
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<LagContext>>,
    /// The topics still to assign to itself ([`KafkaOptions::assign_all_partitions`]).
    unassigned: Option<Vec<String>>,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn recv(&mut self) -> Result<Delivery, BrokerError> {
        if let Some(topics) = self.unassigned.clone() {
            let consumer = Arc::clone(&self.consumer);
            let assigned = tokio::task::spawn_blocking(move || assign_all(&consumer, &topics))
                .await
                .map_err(|e| BrokerError::Unavailable(format!("assigning partitions: {e}")))??;
            // The line an operator reads instead of a rebalance's (`post_rebalance`).
            tracing::info!(
                group = %self.consumer.context().group,
                partitions = %partition_names(&assigned),
                "consumer group not joined: the consumer assigned every partition to itself"
            );
            self.unassigned = None;
        }
        let m = self.consumer.recv().await.map_err(|e| classify(&e))?;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Delivery {
            message: Message {
                topic: m.topic().to_owned(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            },
            partition: m.partition(),
            offset: m.offset(),
        })
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BrokerError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &delivery.message.topic,
            delivery.partition,
            Offset::Offset(delivery.offset + 1),
        )
        .map_err(|e| classify(&e))?;
        // Async: a lost commit only means a redelivery, which consumers deduplicate.
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| classify(&e))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[test]
    fn unknown_properties_are_configuration_errors() {
        let options = KafkaOptions {
            properties: [("no.such.property".to_owned(), "1".to_owned())].into(),
            ..KafkaOptions::default()
        };
        assert!(matches!(
            KafkaBroker::new(options),
            Err(BrokerError::Config(_))
        ));
    }

    /// Static membership is what the option says: the consumers' `group.instance.id`, or
    /// none (dynamic membership) by default.
    #[test]
    fn consumers_join_under_the_configured_instance_id() {
        let dynamic = KafkaBroker::new(KafkaOptions::default()).expect("broker");
        assert_eq!(dynamic.consumer_config("g").get("group.instance.id"), None);
        let static_member = KafkaBroker::new(KafkaOptions {
            group_instance_id: Some("oms-0".to_owned()),
            ..KafkaOptions::default()
        })
        .expect("broker");
        let config = static_member.consumer_config("g");
        assert_eq!(config.get("group.instance.id"), Some("oms-0"));
        assert_eq!(config.get("group.id"), Some("g"));
    }

    /// The next delivery, within 30 s.
    async fn next(consumer: &mut dyn Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("in time")
            .expect("message")
    }

    /// A broker on librdkafka's in-process mock cluster at `bootstrap`, with `options`.
    fn mock_broker(bootstrap: String, options: KafkaOptions) -> KafkaBroker {
        KafkaBroker::new(KafkaOptions {
            bootstrap_servers: bootstrap,
            delivery_timeout: Duration::from_secs(10),
            ..options
        })
        .expect("broker")
    }

    /// librdkafka's in-process mock cluster: key, payload and headers survive the trip and
    /// one key's messages keep their order.
    #[tokio::test]
    async fn publishes_and_consumes_through_a_mock_cluster() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("events", 3, 1).expect("topic");
        let broker = mock_broker(cluster.bootstrap_servers(), KafkaOptions::default());
        let batch: Vec<Message> = (0..20)
            .map(|i| Message {
                topic: "events".into(),
                key: format!("order-{}", i % 3),
                payload: vec![i],
                headers: vec![("ce_id".into(), format!("e{i}").into_bytes())],
            })
            .collect();
        let results = broker.publisher().expect("publisher").publish(batch).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");

        let mut consumer = broker.consumer("g", &["events"]).expect("consumer");
        let mut per_key: std::collections::HashMap<String, Vec<u8>> = Default::default();
        for _ in 0..20 {
            let d = next(consumer.as_mut()).await;
            let i = d.message.payload[0];
            assert_eq!(d.message.header("ce_id"), Some(format!("e{i}").as_str()));
            per_key.entry(d.message.key.clone()).or_default().push(i);
            consumer.commit(&d).await.expect("commit");
        }
        for (key, seq) in per_key {
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "{key}: {seq:?}");
        }
    }

    /// `assign_all_partitions`: a consumer reads every partition without joining its group,
    /// commits under the group, and a successor resumes from those commits (not from the
    /// start, as `auto.offset.reset` would).
    #[tokio::test]
    async fn a_self_assigned_consumer_reads_every_partition_and_resumes_from_its_commits() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("events", 3, 1).expect("topic");
        let broker = mock_broker(
            cluster.bootstrap_servers(),
            KafkaOptions {
                assign_all_partitions: true,
                ..KafkaOptions::default()
            },
        );
        let publish = |range: std::ops::Range<u8>| {
            let batch: Vec<Message> = range
                .map(|i| Message {
                    topic: "events".into(),
                    key: format!("order-{i}"),
                    payload: vec![i],
                    headers: vec![],
                })
                .collect();
            let publisher = broker.publisher().expect("publisher");
            async move { publisher.publish(batch).await }
        };
        let results = publish(0..30).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");

        let mut first = broker.kafka_consumer("g", &["events"]).expect("consumer");
        let mut partitions = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let d = next(&mut first).await;
            partitions.insert(d.partition);
            seen.insert(d.message.payload[0]);
            first.commit(&d).await.expect("commit");
        }
        assert_eq!(partitions.len(), 3, "every partition, without a group");
        assert_eq!(seen.len(), 30);
        assert_eq!(first.consumer.assignment().expect("assignment").count(), 3);
        // Commits are asynchronous: wait until the group holds all 30.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let committed = first
                .consumer
                .committed(Duration::from_secs(5))
                .expect("committed offsets");
            let total: i64 = committed
                .elements()
                .iter()
                .filter_map(|e| e.offset().to_raw())
                .filter(|o| *o > 0)
                .sum();
            if total == 30 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "committed {total} of 30"
            );
            tokio::task::yield_now().await;
        }
        drop(first);

        let results = publish(30..36).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut second = broker.kafka_consumer("g", &["events"]).expect("consumer");
        let mut resumed = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let d = next(&mut second).await;
            resumed.insert(d.message.payload[0]);
        }
        assert_eq!(
            resumed,
            (30..36).collect(),
            "only what the first did not commit"
        );
    }

    /// The group's offset lag from librdkafka's statistics: what was published and not
    /// committed, received or not.
    #[tokio::test]
    async fn the_groups_offset_lag_is_what_it_has_not_committed() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("events", 1, 1).expect("topic");
        let broker = mock_broker(
            cluster.bootstrap_servers(),
            KafkaOptions {
                // Statistics every 100 ms instead of 5 s.
                properties: [("statistics.interval.ms".to_owned(), "100".to_owned())].into(),
                ..KafkaOptions::default()
            },
        );
        let batch: Vec<Message> = (0..10)
            .map(|i| Message {
                topic: "events".into(),
                key: "order-1".into(),
                payload: vec![i],
                headers: vec![],
            })
            .collect();
        let results = broker.publisher().expect("publisher").publish(batch).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut consumer = broker.kafka_consumer("g", &["events"]).expect("consumer");
        let mut received = Vec::new();
        for _ in 0..4 {
            let d = next(&mut consumer).await;
            received.push(d);
        }
        consumer
            .commit(received.last().expect("four"))
            .await
            .expect("commit");
        let context = consumer.consumer.context().clone();
        let lag = || context.lag.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Statistics are served while the consumer polls: keep receiving (the six left,
        // never committed) until the one after the commit arrives.
        while lag() != 6 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        }
        assert_eq!(lag(), 6, "10 published, 4 committed");
    }
}
