//! The Prometheus endpoint, scraped over HTTP and parsed as the exposition format.

use std::collections::BTreeMap;
use std::time::Duration;

use oms_grpc::pb::OrderStatus as S;
use oms_persistence::testing::TestBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, keyed, order_with, settle};

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (version 0.0.4): `name{k="v",...} value` per line,
/// `#` lines are comments. Refuses what it cannot read, so a malformed output fails.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                (name.to_owned(), labels(body, line))
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label: {line}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let (_, c) = chars.next().unwrap_or_else(|| panic!("bad escape: {line}"));
                    value.push(if c == 'n' { '\n' } else { c });
                }
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label: {line}"),
            }
        };
        labels.insert(key.to_owned(), value);
        body = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

async fn scrape(app: &TestApp) -> Vec<Sample> {
    let addr = app.server().metrics_addr.expect("metrics on");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // A fixed-length body (no chunking) from hyper for a full body.
    parse(body)
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// After an order, a replayed create and the relay's round, every family of series is
/// there with the values the traffic implies. The recorder is the process's, shared with
/// the tests running beside this one, so counts are lower bounds.
pub async fn metrics_show_the_traffic(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let request = order_with("c-metrics", "DEMO-1", "tok_ok");
    let order = app.create(keyed(request.clone(), "metrics-key")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    let again = app.create(keyed(request, "metrics-key")).await;
    assert_eq!(again.order_id, order.order_id, "replayed");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let samples = scrape(&app).await;
        let notified = value(
            &samples,
            "oms_notifications_total",
            &[("outcome", "processed")],
        );
        if value(&samples, "oms_outbox_published_total", &[]).unwrap_or(0.0) >= 2.0
            && notified.unwrap_or(0.0) >= 1.0
        {
            break samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published, or the notification consumer never handled an event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let v = value(&samples, name, labels);
        assert!(
            v.is_some_and(|v| v >= min),
            "{name}{labels:?} = {v:?}, want >= {min}"
        );
    };
    let create = [
        ("service", "oms.v1.OrderService"),
        ("method", "CreateOrder"),
    ];
    at_least(
        "oms_rpc_requests_total",
        &[create[0], create[1], ("code", "Ok")],
        2.0,
    );
    at_least("oms_rpc_duration_seconds_count", &create, 2.0);
    at_least(
        "oms_idempotency_hits_total",
        &[
            ("method", "/oms.v1.OrderService/CreateOrder"),
            ("outcome", "replayed"),
        ],
        1.0,
    );
    at_least(
        "oms_saga_outcomes_total",
        &[("kind", "place_order"), ("outcome", "SUCCEEDED")],
        1.0,
    );
    at_least(
        "oms_saga_step_duration_seconds_count",
        &[
            ("kind", "place_order"),
            ("operation", "authorize"),
            ("outcome", "ok"),
        ],
        1.0,
    );
    at_least(
        "oms_plugin_calls_total",
        &[("plugin", "fakepay"), ("outcome", "ok")],
        1.0,
    );
    at_least(
        "oms_plugin_call_duration_seconds_count",
        &[("plugin", "local-stock")],
        1.0,
    );
    assert_eq!(
        value(
            &samples,
            "oms_plugin_circuit_open",
            &[("plugin", "fakepay")]
        ),
        Some(0.0)
    );
    at_least("oms_outbox_commit_to_ack_seconds_count", &[], 2.0);
    // The consumer's lag: the age of the newest event it handled, seconds after it happened.
    let lag = value(&samples, "oms_notification_lag_seconds", &[]);
    assert!(lag.is_some_and(|l| (0.0..60.0).contains(&l)), "lag {lag:?}");
    // Histograms come with their buckets, cumulative up to +Inf.
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "oms_outbox_publish_duration_seconds_bucket")
        .collect();
    assert!(
        buckets
            .iter()
            .any(|b| b.labels.get("le").map(String::as_str) == Some("+Inf"))
    );
    app.stop().await;
}
