//! Durability of the sagas: the host as a child process, SIGKILLed at random moments under
//! load and restarted; and two host processes sharing one PostgreSQL database. Invariants
//! are checked in the database and in the plugins' own records (their KV state).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod host;
mod invariants;

use std::collections::HashMap;
use std::time::Duration;

use oms_grpc::pb;
use oms_persistence::testing::TestDatabase;
use rand::{Rng, SeedableRng};

use host::{Host, order};
use invariants::Snapshot;

/// Orders with every placement outcome, each created with its own idempotency key so a
/// request cut off by a kill can be retried safely.
fn workload(n: usize, rng: &mut impl Rng) -> Vec<(String, pb::CreateOrderRequest)> {
    (0..n)
        .map(|i| {
            let (sku, token) = match rng.random_range(0..10) {
                0..=5 => ("DEMO-1", "tok_ok"),
                6 => ("DEMO-2", "tok_flaky"),
                7 => ("DEMO-2", "tok_decline"),
                8 => ("OUT-OF-STOCK", "tok_ok"),
                _ => ("DEMO-1", "tok_decline"),
            };
            (format!("crash-{i}"), order(&format!("c-{i}"), sku, token))
        })
        .collect()
}

async fn crash_and_recover(db: TestDatabase) {
    let seed: u64 = rand::random();
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let plugins = host::PluginDirs::new();
    let mut pending = workload(120, &mut rng);
    let mut created: HashMap<String, String> = HashMap::new();

    // Five kill/restart cycles while orders are created and sagas run.
    let mut interrupted = 0;
    for cycle in 0..5 {
        let host = Host::start(db.url(), &plugins).await;
        let kill_after = Duration::from_millis(rng.random_range(150..600));
        let submitted = host
            .submit_until(&mut pending, &mut created, kill_after)
            .await;
        host.kill().await;
        let active = invariants::active_sagas(db.url()).await;
        interrupted += active;
        println!(
            "cycle {cycle}: {submitted} orders accepted, SIGKILL after {kill_after:?} with {active} sagas unfinished"
        );
    }
    assert!(
        interrupted > 0,
        "no kill landed while sagas were running: the test proved nothing"
    );
    // The last run sees every remaining order accepted and every saga finished.
    let host = Host::start(db.url(), &plugins).await;
    host.submit_until(&mut pending, &mut created, Duration::from_secs(60))
        .await;
    assert!(pending.is_empty(), "every order was accepted eventually");
    host.wait_for_quiet_sagas(db.url(), Duration::from_secs(90))
        .await;
    host.stop().await;

    let snapshot = Snapshot::read(db.url()).await;
    assert_eq!(
        snapshot.orders.len(),
        created.len(),
        "no order lost or duplicated"
    );
    snapshot.assert_placement_invariants();

    // Fulfil every confirmed order, killing the host twice while captures are in flight.
    let confirmed: Vec<String> = snapshot
        .orders
        .iter()
        .filter(|o| o.status == "CONFIRMED")
        .map(|o| o.id.clone())
        .collect();
    assert!(!confirmed.is_empty());
    let mut to_fulfil = confirmed.clone();
    for _ in 0..2 {
        let host = Host::start(db.url(), &plugins).await;
        let kill_after = Duration::from_millis(rng.random_range(100..400));
        host.fulfil_until(&mut to_fulfil, kill_after).await;
        host.kill().await;
    }
    let host = Host::start(db.url(), &plugins).await;
    host.fulfil_until(&mut to_fulfil, Duration::from_secs(60))
        .await;
    assert!(
        to_fulfil.is_empty(),
        "every fulfilment was accepted eventually"
    );
    host.wait_for_quiet_sagas(db.url(), Duration::from_secs(90))
        .await;
    host.stop().await;
    Snapshot::read(db.url())
        .await
        .assert_fulfilment_invariants(&confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sagas_survive_sigkill() {
    crash_and_recover(TestDatabase::postgres().await.expect("PostgreSQL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sagas_survive_sigkill() {
    crash_and_recover(TestDatabase::sqlite().expect("SQLite")).await;
}

/// Two hosts on one PostgreSQL: 500 orders, half sent to each, all placed, and every
/// provider call made exactly once per saga step (counted by the plugins themselves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_work_without_doubling_a_step() {
    let db = TestDatabase::postgres().await.expect("PostgreSQL");
    let plugins = host::PluginDirs::new();
    let a = Host::start(db.url(), &plugins).await;
    let b = Host::start(db.url(), &plugins).await;
    let mut pending_a: Vec<_> = (0..250)
        .map(|i| {
            (
                format!("two-a-{i}"),
                order(&format!("a-{i}"), "DEMO-1", "tok_ok"),
            )
        })
        .collect();
    let mut pending_b: Vec<_> = (0..250)
        .map(|i| {
            (
                format!("two-b-{i}"),
                order(&format!("b-{i}"), "DEMO-2", "tok_ok"),
            )
        })
        .collect();
    let mut created_a = HashMap::new();
    let mut created_b = HashMap::new();
    let (_, _) = tokio::join!(
        a.submit_until(&mut pending_a, &mut created_a, Duration::from_secs(120)),
        b.submit_until(&mut pending_b, &mut created_b, Duration::from_secs(120)),
    );
    assert!(pending_a.is_empty() && pending_b.is_empty());
    a.wait_for_quiet_sagas(db.url(), Duration::from_secs(120))
        .await;
    a.stop().await;
    b.stop().await;

    let snapshot = Snapshot::read(db.url()).await;
    assert_eq!(snapshot.orders.len(), 500);
    assert!(
        snapshot.orders.iter().all(|o| o.status == "CONFIRMED"),
        "every order confirmed"
    );
    snapshot.assert_placement_invariants();
    // Exactly one reserve and one authorize reached the plugins per saga.
    let reserves = snapshot.calls("local-stock", "reserve");
    let authorizes = snapshot.calls("fakepay", "authorize");
    assert_eq!(reserves.len(), 500, "one reserve key per saga");
    assert_eq!(authorizes.len(), 500, "one authorize key per saga");
    assert!(
        reserves.values().all(|&n| n == 1),
        "a reserve ran twice: {reserves:?}"
    );
    assert!(
        authorizes.values().all(|&n| n == 1),
        "an authorize ran twice"
    );
}
