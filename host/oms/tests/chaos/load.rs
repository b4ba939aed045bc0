//! The steady mixed load: clients that place orders with every fakepay token (including the
//! slow one the host's deadline stops) and the out-of-stock SKU, and cancel, fulfil, refund
//! (partly and fully) and re-address the orders they got back, each call under its own
//! idempotency key and retried under that key on whichever host is up until it gets a final
//! answer. What they were told is what the checks hold the system to.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, RwLock};
use tonic::Code;
use tonic::transport::Channel;

/// One call's tries before the client gives up on it (counted, not a violation: the call may
/// have landed; the checks judge the state, not the answer).
const MAX_TRIES: usize = 40;

/// What every client shares: the hosts up now, and what the clients were told.
#[derive(Default)]
pub struct Shared {
    /// (slot, client) of each host that serves now.
    endpoints: RwLock<Vec<(usize, OrderServiceClient<Channel>)>>,
    /// Orders whose creation was acknowledged: idempotency key -> order id.
    pub acknowledged: Mutex<HashMap<String, String>>,
    /// Acknowledged order ids, for picking one to act on.
    ids: Mutex<Vec<String>>,
    pub tally: Mutex<Tally>,
    stop: AtomicBool,
}

#[derive(Default, Debug)]
pub struct Tally {
    /// Final answers by operation and code.
    pub answers: HashMap<(&'static str, String), u64>,
    /// Calls that ran out of tries.
    pub given_up: u64,
    /// Answers retried, by code (hosts killed or cut off, keys held by a killed request).
    pub retried: HashMap<String, u64>,
    /// Answers no fault excuses (`INTERNAL`; a create key answered with two order ids).
    pub violations: Vec<String>,
}

impl Tally {
    pub fn calls(&self) -> u64 {
        self.answers.values().sum::<u64>() + self.given_up
    }
}

impl Shared {
    pub async fn add_endpoint(&self, slot: usize, client: OrderServiceClient<Channel>) {
        self.endpoints.write().await.push((slot, client));
    }

    /// Taken out before the host is killed, so no new call is sent to it.
    pub async fn remove_endpoint(&self, slot: usize) {
        self.endpoints.write().await.retain(|(s, _)| *s != slot);
    }

    /// Records a broken promise that no fault excuses.
    pub async fn violation(&self, what: String) {
        self.tally.lock().await.violations.push(what);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    async fn pick(&self, rng: &mut StdRng) -> OrderServiceClient<Channel> {
        loop {
            {
                let endpoints = self.endpoints.read().await;
                if !endpoints.is_empty() {
                    return endpoints[rng.random_range(0..endpoints.len())].1.clone();
                }
            }
            // Every host is restarting: wait for one to come back.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Cancel,
    Fulfill,
    RefundPart,
    RefundAll,
    Readdress,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Cancel => "cancel",
            Op::Fulfill => "fulfill",
            Op::RefundPart => "refund-part",
            Op::RefundAll => "refund-all",
            Op::Readdress => "readdress",
        }
    }
}

fn money(amount_minor: i64) -> pb::Money {
    pb::Money {
        amount_minor,
        currency: "EUR".into(),
    }
}

fn address(city: &str) -> pb::ShippingAddress {
    pb::ShippingAddress {
        recipient: "Ada".into(),
        line1: "1 Main St".into(),
        city: city.into(),
        country: "DE".into(),
        ..Default::default()
    }
}

/// A placement with an outcome drawn from every path the saga has. The customer id is the
/// idempotency key, so the checks can tell two orders made under one key apart.
fn placement(key: &str, rng: &mut StdRng) -> pb::CreateOrderRequest {
    let (sku, token) = match rng.random_range(0..100) {
        0..=54 => ("DEMO-1", "tok_ok"),
        55..=69 => ("DEMO-2", "tok_flaky"),
        70..=79 => ("DEMO-1", "tok_decline"),
        80..=81 => ("DEMO-2", "tok_slow"),
        82..=84 => ("DEMO-1", "tok_unknown"),
        _ => ("OUT-OF-STOCK", "tok_ok"),
    };
    let mut request = crate::host::order(key, sku, token);
    request.items[0].quantity = rng.random_range(1..=3);
    request
}

/// A transport failure, a host going away or a key still held by a killed host's request:
/// the same call is sent again.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// One client: `seed` makes its choices replayable.
pub async fn client(shared: Arc<Shared>, id: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0_u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let target = {
            let ids = shared.ids.lock().await;
            (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())].clone())
        };
        let op = match (rng.random_range(0..100), &target) {
            (_, None) | (0..=49, _) => Op::Create,
            (50..=61, _) => Op::Cancel,
            (62..=77, _) => Op::Fulfill,
            (78..=87, _) => Op::RefundPart,
            (88..=92, _) => Op::RefundAll,
            _ => Op::Readdress,
        };
        let key = format!("chaos-{id}-{n}-{}", op.name());
        let create = placement(&key, &mut rng);
        let part = rng.random_range(1..=999);
        let order_id = target.unwrap_or_default();
        let mut answer = None;
        for _ in 0..MAX_TRIES {
            let mut api = shared.pick(&mut rng).await;
            let outcome = call(&mut api, op, &key, &order_id, &create, part).await;
            match outcome {
                Ok(order) => {
                    answer = Some(Ok(order));
                    break;
                }
                Err(status) if retryable(&status) => {
                    *shared
                        .tally
                        .lock()
                        .await
                        .retried
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
                }
                Err(status) => {
                    answer = Some(Err(status));
                    break;
                }
            }
        }
        // An acknowledged create sent again under its key (a client that lost the answer)
        // must be answered with the same order, whichever host answers.
        if let (Op::Create, Some(Ok(order))) = (op, &answer) {
            let mut api = shared.pick(&mut rng).await;
            if let Ok(replayed) = call(&mut api, op, &key, "", &create, part).await
                && replayed.order_id != order.order_id
            {
                let what = format!(
                    "key {key} answered with orders {} and {}",
                    order.order_id, replayed.order_id
                );
                shared.violation(what).await;
            }
        }
        let mut tally = shared.tally.lock().await;
        match answer {
            None => tally.given_up += 1,
            Some(Ok(order)) => {
                *tally.answers.entry((op.name(), "OK".into())).or_default() += 1;
                if let Op::Create = op {
                    shared
                        .acknowledged
                        .lock()
                        .await
                        .insert(key.clone(), order.order_id.clone());
                    shared.ids.lock().await.push(order.order_id);
                }
            }
            Some(Err(status)) => {
                if status.code() == Code::Internal {
                    tally.violations.push(format!(
                        "{} {order_id}: INTERNAL {}",
                        op.name(),
                        status.message()
                    ));
                }
                *tally
                    .answers
                    .entry((op.name(), format!("{:?}", status.code())))
                    .or_default() += 1;
            }
        }
    }
}

/// One try of `op`, with `key` as its idempotency key.
async fn call(
    api: &mut OrderServiceClient<Channel>,
    op: Op,
    key: &str,
    order_id: &str,
    create: &pb::CreateOrderRequest,
    part: i64,
) -> Result<pb::Order, tonic::Status> {
    fn keyed<T>(body: T, key: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().expect("ascii key"));
        request.set_timeout(Duration::from_secs(5));
        request
    }
    let order_id = order_id.to_owned();
    let answer = match op {
        Op::Create => api.create_order(keyed(create.clone(), key)).await,
        Op::Cancel => {
            let body = pb::CancelOrderRequest {
                order_id,
                reason: "chaos".into(),
                expected_version: None,
            };
            api.cancel_order(keyed(body, key)).await
        }
        Op::Fulfill => {
            let body = pb::FulfillOrderRequest {
                order_id,
                expected_version: None,
            };
            api.fulfill_order(keyed(body, key)).await
        }
        Op::RefundPart | Op::RefundAll => {
            let body = pb::RefundOrderRequest {
                order_id,
                amount: matches!(op, Op::RefundPart).then(|| money(part)),
                reason: "chaos".into(),
                expected_version: None,
            };
            api.refund_order(keyed(body, key)).await
        }
        Op::Readdress => {
            // The version read here may be stale by the time the update lands: the host
            // must then refuse it, never apply it over the newer state.
            let mut get = tonic::Request::new(pb::GetOrderRequest {
                order_id: order_id.clone(),
            });
            get.set_timeout(Duration::from_secs(5));
            let version = api.get_order(get).await?.into_inner().version;
            let body = pb::UpdateShippingAddressRequest {
                order_id,
                shipping_address: Some(address(&format!("City {part}"))),
                expected_version: version,
            };
            api.update_shipping_address(keyed(body, key)).await
        }
    };
    answer.map(tonic::Response::into_inner)
}
