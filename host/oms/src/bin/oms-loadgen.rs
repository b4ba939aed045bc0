//! `oms-loadgen`: a closed-loop load generator for the place-order saga.
//!
//! N concurrent clients each create an order (unique idempotency key), follow it with
//! WatchOrder until it is CONFIRMED (or fails), and immediately start the next one, for a
//! fixed duration. Reports confirmed orders per second and create->confirmed latency
//! percentiles. `scripts/bench-sagas` runs it against a host on PostgreSQL next to a pgbench
//! ceiling; see docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Closed-loop load on CreateOrder -> CONFIRMED")]
struct Args {
    /// The host's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Concurrent clients (each has one order in flight).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Unmeasured warm-up.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
}

/// One client's results: latencies of confirmed orders, and failures.
#[derive(Default)]
struct Tally {
    confirmed: Vec<Duration>,
    failed: usize,
}

async fn place_one(client: &mut OrderServiceClient<Channel>, n: u64) -> anyhow::Result<bool> {
    let mut request = tonic::Request::new(pb::CreateOrderRequest {
        customer_id: format!("bench-{}", n % 1000),
        items: vec![pb::LineItem {
            sku: "DEMO-1".into(),
            quantity: 1,
            unit_price: Some(pb::Money {
                amount_minor: 1999,
                currency: "EUR".into(),
            }),
        }],
        payment: Some(pb::PaymentMethod {
            provider: "fakepay".into(),
            token: "tok_ok".into(),
        }),
        shipping_address: Some(pb::ShippingAddress {
            recipient: "Bench".into(),
            line1: "1 Load St".into(),
            city: "Berlin".into(),
            country: "DE".into(),
            ..Default::default()
        }),
    });
    request.metadata_mut().insert(
        "idempotency-key",
        format!("bench-{}-{n}", std::process::id()).parse()?,
    );
    let order = client.create_order(request).await?.into_inner();
    let mut watch = client
        .watch_order(pb::WatchOrderRequest {
            order_id: order.order_id,
        })
        .await?
        .into_inner();
    while let Some(update) = watch.next().await {
        match update?.status() {
            pb::OrderStatus::Confirmed => return Ok(true),
            pb::OrderStatus::Pending => continue,
            _ => return Ok(false),
        }
    }
    Ok(false)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(args.target.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    let start = Instant::now();
    let warm_until = start + Duration::from_secs(args.warmup_seconds);
    let stop_at = warm_until + Duration::from_secs(args.seconds);
    let clients = (0..args.concurrency).map(|c| {
        let mut client = OrderServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = (c as u64) << 32;
            while Instant::now() < stop_at {
                n += 1;
                let began = Instant::now();
                let outcome = place_one(&mut client, n).await;
                if began < warm_until {
                    continue;
                }
                match outcome {
                    Ok(true) => tally.confirmed.push(began.elapsed()),
                    _ => tally.failed += 1,
                }
            }
            tally
        })
    });
    let mut latencies = Vec::new();
    let mut failed = 0;
    for tally in futures::future::join_all(clients).await {
        let tally = tally?;
        latencies.extend(tally.confirmed);
        failed += tally.failed;
    }
    latencies.sort();
    if latencies.is_empty() {
        bail!("no order was confirmed ({failed} failed)");
    }
    let rate = latencies.len() as f64 / args.seconds as f64;
    println!(
        "concurrency={} confirmed={} failed={} orders_per_s={:.0} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1}",
        args.concurrency,
        latencies.len(),
        failed,
        rate,
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 95.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
    );
    Ok(())
}
