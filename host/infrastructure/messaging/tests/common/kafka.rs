//! Kafka test helpers: the broker address from `KAFKA_TEST_BROKERS` (set by
//! `scripts/kafka-test-broker`), per-test topics, and a tansu process a test can stop and
//! restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oms_messaging::broker::{Broker, Delivery, KafkaBroker, KafkaOptions, Topics};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The shared test broker, or `None` after a loud skip message. Where a broker is required
/// (`OMS_REQUIRE_KAFKA=1`, which `.ci/run` sets), a missing one fails the test instead: CI
/// must never pass by skipping what it exists to check.
pub fn brokers(test: &str) -> Option<String> {
    match std::env::var("KAFKA_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("OMS_REQUIRE_KAFKA").is_ok_and(|v| v == "1") => {
            panic!("{test}: OMS_REQUIRE_KAFKA=1 but KAFKA_TEST_BROKERS is not set")
        }
        _ => {
            eprintln!(
                "\n!!!!! SKIPPED {test}: KAFKA_TEST_BROKERS is not set (no Kafka broker). \
                 Run scripts/test or scripts/kafka-test-broker to get one. !!!!!\n"
            );
            None
        }
    }
}

/// Topic names unique to one test, so tests sharing a broker never see each other's data.
pub fn unique_topics() -> Topics {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    Topics {
        events: format!("t-events-{tag}"),
        plugin_changes: format!("t-plugins-{tag}"),
        dead_letters: format!("t-dlq-{tag}"),
        notification_dead_letters: format!("t-ndlq-{tag}"),
    }
}

pub async fn create_topics(brokers: &str, topics: &Topics, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let names = [
        &topics.events,
        &topics.plugin_changes,
        &topics.dead_letters,
        &topics.notification_dead_letters,
    ];
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .expect("create topics");
    for r in results {
        if let Err((name, code)) = r {
            assert_eq!(
                code,
                rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists,
                "creating {name}"
            );
        }
    }
}

pub fn kafka(brokers: &str) -> KafkaBroker {
    KafkaBroker::new(KafkaOptions {
        bootstrap_servers: brokers.to_owned(),
        delivery_timeout: Duration::from_secs(5),
        properties: [("reconnect.backoff.max.ms".to_owned(), "500".to_owned())].into(),
        ..KafkaOptions::default()
    })
    .expect("kafka broker")
}

/// Reads `topic` with a fresh consumer group until `count` messages arrived (or panics
/// after `timeout`).
pub async fn consume(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Delivery> {
    let group = format!("test-reader-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = kafka(brokers).consumer(&group, &[topic]).expect("consumer");
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(d)) => out.push(d),
            Ok(Err(e)) => eprintln!("consumer error (retrying): {e}"),
            Err(_) => panic!("only {} of {count} messages arrived on {topic}", out.len()),
        }
    }
    out
}

/// A tansu broker owned by one test (memory storage), which the test may stop and restart on
/// the same port.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// `None` (with a loud message) when no `tansu` binary is on PATH.
    pub async fn start(test: &str) -> Option<Self> {
        if Command::new("tansu")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("\n!!!!! SKIPPED {test}: no tansu binary on PATH !!!!!\n");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut t = Self { port, child: None };
        t.restart().await;
        Some(t)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let addr = self.address();
        super::eventually(Duration::from_secs(20), "tansu listening", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
