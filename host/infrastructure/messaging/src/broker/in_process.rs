//! The embedded broker of the default `serve`: partitioned in-memory logs with consumer-group
//! offsets, so it behaves like Kafka for one process.
//!
//! Durability is the outbox's job, not this broker's: messages live in memory only, and a
//! process restart loses what was published but not consumed. The relay marks a row
//! published once this broker holds it, so consumers must run in the same process (they do
//! in `serve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Broker, Consumer, Delivery, Message, Publisher};
use crate::error::BrokerError;

/// Sizes of the embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct InProcessOptions {
    /// Partitions per topic (keys are hashed onto them).
    pub partitions: usize,
    /// Messages kept per partition; older ones are dropped (like Kafka's retention), and a
    /// consumer that lagged behind that far skips to the oldest kept message.
    pub retention_per_partition: usize,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        Self {
            partitions: 8,
            retention_per_partition: 100_000,
        }
    }
}

#[derive(Default)]
struct Partition {
    /// Offset of `log[0]`.
    start: i64,
    log: std::collections::VecDeque<Message>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<Partition>>,
    /// (group, topic, partition) -> next offset to consume.
    committed: HashMap<(String, String, i32), i64>,
    /// The topics each consumer group reads, for its lag.
    groups: HashMap<String, Vec<String>>,
}

impl State {
    /// Each consumer group's lag: the messages on its topics' partitions after its committed
    /// offsets (what Kafka calls the consumer lag).
    fn lags(&self) -> Vec<(&str, i64)> {
        self.groups
            .iter()
            .map(|(group, topics)| {
                let mut lag = 0i64;
                for topic in topics {
                    for (i, p) in self.topics.get(topic).into_iter().flatten().enumerate() {
                        let end = p.start + p.log.len() as i64;
                        let committed = self
                            .committed
                            .get(&(group.clone(), topic.clone(), i as i32))
                            .copied()
                            .unwrap_or(0)
                            .max(p.start);
                        lag += (end - committed).max(0);
                    }
                }
                (group.as_str(), lag)
            })
            .collect()
    }

    /// Sets `oms_broker_consumer_lag_messages{group}` from [`Self::lags`]. Called on every
    /// publish and commit, so it moves while a consumer is stuck too.
    fn report_lag(&self) {
        for (group, lag) in self.lags() {
            #[allow(clippy::cast_precision_loss)] // far below 2^52 messages
            metrics::gauge!("oms_broker_consumer_lag_messages", "group" => group.to_owned())
                .set(lag as f64);
        }
    }
}

struct Inner {
    options: InProcessOptions,
    state: Mutex<State>,
    /// Woken on every publish; consumers re-check their partitions.
    published: Notify,
}

/// An in-memory, partitioned, multi-topic log. Cheap to clone (shared state).
#[derive(Clone)]
pub struct InProcessBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBroker")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl InProcessBroker {
    pub fn new(options: InProcessOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options: InProcessOptions {
                    partitions: options.partitions.max(1),
                    retention_per_partition: options.retention_per_partition.max(1),
                },
                state: Mutex::new(State::default()),
                published: Notify::new(),
            }),
        }
    }

    /// This broker as a shareable publisher.
    pub fn publisher_arc(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }

    /// Every message currently held in `topic`, partition by partition (for tests and
    /// diagnostics).
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        let state = self.inner.lock();
        state
            .topics
            .get(topic)
            .map(|ps| ps.iter().flat_map(|p| p.log.iter().cloned()).collect())
            .unwrap_or_default()
    }
}

impl Default for InProcessBroker {
    fn default() -> Self {
        Self::new(InProcessOptions::default())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the logs half-written (every update is
        // a single push or insert), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partition_of(&self, key: &str) -> usize {
        // FNV-1a: stable across runs and processes, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.options.partitions as u64) as usize
    }
}

#[async_trait]
impl Publisher for InProcessBroker {
    async fn publish(&self, batch: Vec<Message>) -> Vec<Result<(), BrokerError>> {
        let n = batch.len();
        {
            let mut state = self.inner.lock();
            for msg in batch {
                let partition = self.inner.partition_of(&msg.key);
                let parts = state.topics.entry(msg.topic.clone()).or_insert_with(|| {
                    (0..self.inner.options.partitions)
                        .map(|_| Partition::default())
                        .collect()
                });
                let p = &mut parts[partition];
                p.log.push_back(msg);
                if p.log.len() > self.inner.options.retention_per_partition {
                    p.log.pop_front();
                    p.start += 1;
                }
            }
            state.report_lag();
        }
        self.inner.published.notify_waiters();
        vec![Ok(()); n]
    }
}

impl Broker for InProcessBroker {
    fn publisher(&self) -> Result<Arc<dyn Publisher>, BrokerError> {
        Ok(Arc::new(self.clone()))
    }

    fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BrokerError> {
        self.inner.lock().groups.insert(
            group.to_owned(),
            topics.iter().map(|t| (*t).to_owned()).collect(),
        );
        Ok(Box::new(InProcessConsumer {
            inner: Arc::clone(&self.inner),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            positions: HashMap::new(),
            next_scan: 0,
        }))
    }
}

/// A consumer of one group. It reads every partition of its topics (a group is meant to have
/// one consumer in this broker); a new consumer of the group resumes from the committed
/// offsets, so what was received but not committed is delivered again.
struct InProcessConsumer {
    inner: Arc<Inner>,
    group: String,
    topics: Vec<String>,
    /// (topic, partition) -> next offset this consumer reads (ahead of the committed one).
    positions: HashMap<(String, i32), i64>,
    /// Round-robin start, so a busy partition does not starve the others.
    next_scan: usize,
}

impl InProcessConsumer {
    fn poll(&mut self) -> Option<Delivery> {
        let state = self.inner.lock();
        let mut slots = Vec::new();
        for topic in &self.topics {
            if let Some(parts) = state.topics.get(topic) {
                for i in 0..parts.len() {
                    slots.push((topic.clone(), i));
                }
            }
        }
        if slots.is_empty() {
            return None;
        }
        for k in 0..slots.len() {
            let (topic, i) = &slots[(self.next_scan + k) % slots.len()];
            let partition = &state.topics[topic][*i];
            let pid = *i as i32;
            let committed = state
                .committed
                .get(&(self.group.clone(), topic.clone(), pid))
                .copied()
                .unwrap_or(0);
            let pos = self
                .positions
                .entry((topic.clone(), pid))
                .or_insert(committed);
            // Retention dropped what this consumer had not read yet: skip ahead, as Kafka's
            // `auto.offset.reset=earliest` does.
            *pos = (*pos).max(partition.start);
            let idx = (*pos - partition.start) as usize;
            if let Some(msg) = partition.log.get(idx) {
                let delivery = Delivery {
                    message: msg.clone(),
                    partition: pid,
                    offset: *pos,
                };
                *pos += 1;
                self.next_scan = (self.next_scan + k + 1) % slots.len();
                return Some(delivery);
            }
        }
        None
    }
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn recv(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            // Register interest before looking, so a publish between the look and the wait
            // is not missed.
            let inner = Arc::clone(&self.inner);
            let notified = inner.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.poll() {
                return Ok(d);
            }
            notified.await;
        }
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<(), BrokerError> {
        let mut state = self.inner.lock();
        let key = (
            self.group.clone(),
            delivery.message.topic.clone(),
            delivery.partition,
        );
        let next = delivery.offset + 1;
        let entry = state.committed.entry(key).or_insert(0);
        // Commits only move forward, like Kafka's for one consumer.
        *entry = (*entry).max(next);
        state.report_lag();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: &str, n: u32) -> Message {
        Message {
            topic: "t".into(),
            key: key.into(),
            payload: n.to_be_bytes().to_vec(),
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn per_key_order_and_resume_from_committed_offsets() {
        let broker = InProcessBroker::default();
        let batch: Vec<_> = (0..100).map(|n| msg(&format!("k{}", n % 7), n)).collect();
        assert!(broker.publish(batch).await.iter().all(Result::is_ok));

        let mut c = broker.consumer("g", &["t"]).expect("consumer");
        let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
        let mut first_half = Vec::new();
        for _ in 0..50 {
            let d = c.recv().await.expect("recv");
            let n = u32::from_be_bytes(d.message.payload[..4].try_into().expect("4 bytes"));
            seen.entry(d.message.key.clone()).or_default().push(n);
            first_half.push(d);
        }
        // Commit only the first 30 received; the other 20 must come again.
        for d in &first_half[..30] {
            c.commit(d).await.expect("commit");
        }
        drop(c);
        let mut c = broker.consumer("g", &["t"]).expect("consumer");
        let mut again = 0;
        let mut total = 0;
        while total < 70 {
            let d = c.recv().await.expect("recv");
            if first_half[30..].contains(&d) {
                again += 1;
            }
            total += 1;
        }
        assert_eq!(again, 20, "uncommitted deliveries are redelivered");
        for (_, ns) in seen {
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "per-key order kept");
        }
    }

    #[tokio::test]
    async fn a_groups_lag_is_what_it_has_not_committed() {
        let broker = InProcessBroker::default();
        let mut c = broker.consumer("g", &["t"]).expect("consumer");
        let lag = |b: &InProcessBroker| {
            let state = b.inner.lock();
            state
                .lags()
                .into_iter()
                .map(|(g, n)| (g.to_owned(), n))
                .collect::<Vec<_>>()
        };
        assert_eq!(lag(&broker), [("g".to_owned(), 0)]);
        let batch: Vec<_> = (0..10).map(|n| msg(&format!("k{n}"), n)).collect();
        broker.publish(batch).await;
        assert_eq!(lag(&broker), [("g".to_owned(), 10)]);
        // Received is not committed: only commits move the lag.
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(c.recv().await.expect("recv"));
        }
        assert_eq!(lag(&broker), [("g".to_owned(), 10)]);
        for d in &received {
            c.commit(d).await.expect("commit");
        }
        assert_eq!(lag(&broker), [("g".to_owned(), 6)]);
    }

    #[tokio::test]
    async fn a_consumer_waits_for_a_publish() {
        let broker = InProcessBroker::default();
        let mut c = broker.consumer("g", &["t"]).expect("consumer");
        let b = broker.clone();
        let publisher = tokio::spawn(async move { b.publish(vec![msg("k", 1)]).await });
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), c.recv())
            .await
            .expect("delivered in time")
            .expect("recv");
        assert_eq!(d.message.key, "k");
        publisher.await.expect("join");
    }
}
