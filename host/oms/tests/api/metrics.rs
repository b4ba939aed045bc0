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
    // The notification group's offset lag (the tests of this process share the recorder,
    // so only its presence and range are this test's to check; its arithmetic is the
    // broker's unit test).
    let backlog = value(
        &samples,
        "oms_broker_consumer_lag_messages",
        &[("group", "oms-notifications")],
    );
    assert!(backlog.is_some_and(|b| b >= 0.0), "backlog {backlog:?}");
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

/// The W3C trace context of a call reaches the events it writes: each outbox row of an order
/// created with a `traceparent` carries the caller's trace id (with the host's own span ids,
/// from the call's span and the saga's steps under it), the relay publishes it as a header,
/// and a call without one starts a trace of its own.
pub async fn events_carry_the_callers_trace_context(backend: TestBackend) {
    // The process's subscriber, as `oms serve` sets it up (OpenTelemetry layer included).
    crate::helpers::LogCapture::get();
    let app = TestApp::spawn(backend).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let callers_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(order_with("c-traced", "DEMO-1", "tok_ok"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{callers_span}-01").parse().unwrap(),
    );
    let traced = app.create(request).await;
    assert_eq!(settle(&app, &traced.order_id).await.status(), S::Confirmed);
    let untraced = app
        .create(order_with("c-untraced", "DEMO-1", "tok_ok"))
        .await;
    assert_eq!(
        settle(&app, &untraced.order_id).await.status(),
        S::Confirmed
    );

    let sql = "SELECT event_type, CAST(headers AS TEXT) FROM outbox \
               WHERE CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    let parents = |rows: Vec<(String, String)>| -> Vec<(String, [String; 4])> {
        rows.into_iter()
            .map(|(event, headers)| {
                let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
                let parent = headers["traceparent"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{event} has no traceparent: {headers}"));
                let parts: Vec<String> = parent.split('-').map(str::to_owned).collect();
                let parts: [String; 4] = parts.try_into().unwrap_or_else(|p| {
                    panic!("{event}: {parent} is not version-trace-span-flags: {p:?}")
                });
                (event, parts)
            })
            .collect()
    };
    let rows = parents(crate::helpers::fetch_for_order(&app.db, sql, &traced.order_id).await);
    let events: Vec<&str> = rows.iter().map(|(e, _)| e.as_str()).collect();
    assert!(
        events.contains(&"OrderCreated") && events.contains(&"OrderConfirmed"),
        "{events:?}"
    );
    for (event, [version, trace, span, flags]) in &rows {
        assert_eq!(version, "00", "{event}");
        assert_eq!(trace, trace_id, "{event} is in the caller's trace");
        assert_ne!(
            span, callers_span,
            "{event}: the host's own span, under the caller's"
        );
        assert_eq!(span.len(), 16, "{event}: {span}");
        assert_eq!(flags, "01", "{event}: sampled, as the caller asked");
    }
    let rows = parents(crate::helpers::fetch_for_order(&app.db, sql, &untraced.order_id).await);
    let (_, [_, own_trace, _, _]) = &rows[0];
    assert_ne!(own_trace, trace_id);
    assert!(
        rows.iter().all(|(_, [_, t, _, _])| t == own_trace),
        "one trace per call: {rows:?}"
    );
    app.stop().await;
}
