//! `oms-loadgen`: a load generator for the place-order saga.
//!
//! Each order is created (unique idempotency key) and followed with WatchOrder until it is
//! CONFIRMED (or fails); its latency is create -> CONFIRMED. Two modes:
//!
//! - closed loop (default): N concurrent clients, each starting its next order as soon as the
//!   last one ended; measures the throughput the host sustains.
//! - open loop (`--rate R`): orders start on a fixed schedule of R per second whatever the
//!   host does, each on its own task; measures latency at a given load. Latency counts from
//!   the order's *scheduled* start, so a host (or generator) that falls behind shows it in
//!   the percentiles instead of hiding it (no coordinated omission); orders that started more
//!   than `--late-ms` after their schedule are counted as late.
//!
//! Orders go to one SKU (`--sku`, a hot SKU) or round-robin over `--spread N` SKUs named
//! `<sku>-0` .. `<sku>-<N-1>`, which the inventory plugin must know (`scripts/bench-sagas`
//! seeds them in local-stock's catalogue). Prints one `key=value` line; see
//! docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Load on CreateOrder -> CONFIRMED, closed loop or at a fixed rate")]
struct Args {
    /// The host's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Closed loop: concurrent clients (each has one order in flight).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Open loop: start this many orders per second on a fixed schedule instead.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: at most this many orders in flight; beyond it the schedule slips (and the
    /// orders that slip count as late).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Open loop: an order that starts this much after its scheduled time is late.
    #[arg(long, default_value_t = 10)]
    late_ms: u64,
    /// The SKU of every order (a hot SKU), or the stem of the spread SKUs.
    #[arg(long, default_value = "DEMO-1")]
    sku: String,
    /// Spread the orders round-robin over this many SKUs, `<sku>-0` .. `<sku>-<N-1>`.
    #[arg(long)]
    spread: Option<u32>,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Unmeasured warm-up.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Open loop: how long to wait for the orders still in flight at the end before counting
    /// them as failed.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
}

/// What the orders go to.
#[derive(Clone)]
struct Skus {
    stem: String,
    spread: Option<u32>,
}

impl Skus {
    fn for_order(&self, n: u64) -> String {
        match self.spread {
            Some(spread) if spread > 0 => format!("{}-{}", self.stem, n % u64::from(spread)),
            _ => self.stem.clone(),
        }
    }

    fn describe(&self) -> String {
        match self.spread {
            Some(spread) if spread > 0 => format!("{}-0..{}", self.stem, spread - 1),
            _ => self.stem.clone(),
        }
    }
}

/// Results of the measured orders.
#[derive(Default)]
struct Tally {
    confirmed: Vec<Duration>,
    failed: usize,
    late: usize,
}

/// An open-loop order's result: measured (scheduled after the warm-up), late, outcome, and
/// latency from its scheduled start.
type Finished = (bool, bool, anyhow::Result<bool>, Duration);

impl Tally {
    fn add(&mut self, (measured, late, outcome, latency): Finished) {
        if !measured {
            return;
        }
        self.late += usize::from(late);
        match outcome {
            Ok(true) => self.confirmed.push(latency),
            _ => self.failed += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.confirmed.extend(other.confirmed);
        self.failed += other.failed;
        self.late += other.late;
    }
}

async fn place_one(
    client: &mut OrderServiceClient<Channel>,
    n: u64,
    sku: String,
) -> anyhow::Result<bool> {
    let mut request = tonic::Request::new(pb::CreateOrderRequest {
        customer_id: format!("bench-{}", n % 1000),
        items: vec![pb::LineItem {
            sku,
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

/// N clients, each with one order in flight, until `stop_at`.
async fn closed_loop(
    channel: &Channel,
    args: &Args,
    skus: &Skus,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Tally> {
    let clients = (0..args.concurrency).map(|c| {
        let mut client = OrderServiceClient::new(channel.clone());
        let skus = skus.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = (c as u64) << 32;
            while Instant::now() < stop_at {
                n += 1;
                let began = Instant::now();
                let outcome = place_one(&mut client, n, skus.for_order(n)).await;
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
    let mut total = Tally::default();
    for tally in futures::future::join_all(clients).await {
        total.merge(tally?);
    }
    Ok(total)
}

/// Orders started at `rate` per second on a fixed schedule until `stop_at`, then waits up to
/// `--drain-seconds` for those still in flight. Returns the tally and how many measured
/// orders were started.
async fn open_loop(
    channel: &Channel,
    args: &Args,
    skus: &Skus,
    rate: f64,
    start: Instant,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<(Tally, usize)> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of orders per second");
    }
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));
    let late_after = Duration::from_millis(args.late_ms);
    let mut tally = Tally::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0usize;
    for n in 0u64.. {
        let scheduled = start + Duration::from_secs_f64(n as f64 / rate);
        if scheduled >= stop_at {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        // Waiting for a free slot delays this order past its schedule: that counts.
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let measured = scheduled >= warm_until;
        started += usize::from(measured);
        let mut client = OrderServiceClient::new(channel.clone());
        let sku = skus.for_order(n);
        let _ = tasks.spawn(async move {
            let late = scheduled.elapsed() > late_after;
            let outcome = place_one(&mut client, n, sku).await;
            drop(permit);
            (measured, late, outcome, scheduled.elapsed())
        });
        // Tally finished orders as we go, so the set does not hold every result to the end.
        while let Some(done) = tasks.try_join_next() {
            tally.add(done?);
        }
    }
    let drain = tokio::time::sleep(Duration::from_secs(args.drain_seconds));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                let Some(done) = done else { break };
                tally.add(done?);
            }
            () = &mut drain => {
                // Still in flight after the drain: failed (they are cut off by the abort).
                tally.failed += tasks.len();
                tasks.abort_all();
                break;
            }
        }
    }
    Ok((tally, started))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(args.target.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    let skus = Skus {
        stem: args.sku.clone(),
        spread: args.spread,
    };
    let start = Instant::now();
    let warm_until = start + Duration::from_secs(args.warmup_seconds);
    let stop_at = warm_until + Duration::from_secs(args.seconds);
    let (mode, tally, started) = match args.rate {
        None => {
            let tally = closed_loop(&channel, &args, &skus, warm_until, stop_at).await?;
            (
                format!("closed concurrency={}", args.concurrency),
                tally,
                None,
            )
        }
        Some(rate) => {
            let (tally, started) =
                open_loop(&channel, &args, &skus, rate, start, warm_until, stop_at).await?;
            (format!("open rate={rate}"), tally, Some(started))
        }
    };
    let mut latencies = tally.confirmed;
    latencies.sort();
    if latencies.is_empty() {
        bail!("no order was confirmed ({} failed)", tally.failed);
    }
    let seconds = args.seconds as f64;
    let ms = |p| percentile(&latencies, p).as_secs_f64() * 1e3;
    let started = started
        .map(|s| {
            format!(
                " started_per_s={:.0} late={}",
                s as f64 / seconds,
                tally.late
            )
        })
        .unwrap_or_default();
    println!(
        "mode={mode} skus={} confirmed={} failed={} orders_per_s={:.0}{started} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1} p999_ms={:.1}",
        skus.describe(),
        latencies.len(),
        tally.failed,
        latencies.len() as f64 / seconds,
        ms(50.0),
        ms(95.0),
        ms(99.0),
        ms(99.9),
    );
    Ok(())
}
