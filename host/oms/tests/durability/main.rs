//! Durability of the sagas: the host as a child process, SIGKILLed at random moments under
//! load and restarted; and two host processes sharing one PostgreSQL database. Invariants
//! are checked in the database and in the plugins' own records (their KV state).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with the chaos and edge_memory tests, which use helpers this binary does not.
#[allow(dead_code)]
mod host;
mod invariants;

use std::collections::HashMap;
use std::time::Duration;

use oms_grpc::pb;
use oms_persistence::testing::{TestBackend, TestDatabase};
use rand::{Rng, SeedableRng};

use host::{Host, order};
use invariants::Snapshot;

/// The tests of this file run one at a time. Each runs real host processes with 1-2 s leases
/// on a 2-core machine; run side by side, their load can make a step outlast its lease, and
/// the exactly-once test then sees a second host repeat it (a slow machine, not the property
/// under test).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database; the tests' host processes connect to its URL.
async fn test_database(backend: TestBackend) -> TestDatabase {
    TestDatabase::new(backend)
        .await
        .unwrap_or_else(|e| panic!("{backend:?} test database: {e}"))
}

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

/// Concurrent clients per host: enough that the host's commit lanes carry many orders'
/// writes per commit when a kill lands (`sql::group`).
const CLIENTS: usize = 8;

async fn crash_and_recover(backend: TestBackend) {
    let db = test_database(backend).await;
    let seed: u64 = rand::random();
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let plugins = host::PluginDirs::new();
    let mut pending = workload(240, &mut rng);
    let mut created: HashMap<String, String> = HashMap::new();

    // Five kill/restart cycles while orders are created from concurrent clients and sagas
    // run, their commits grouped.
    let mut interrupted = 0;
    let mut largest_group = 0;
    for cycle in 0..5 {
        let host = Host::start(db.url(), &plugins).await;
        let kill_after = Duration::from_millis(rng.random_range(150..600));
        let submitted = host
            .submit_concurrently(&mut pending, &mut created, kill_after, CLIENTS)
            .await;
        let group = host.largest_group();
        largest_group = largest_group.max(group);
        assert!(host.kill().await, "the host exited before it was killed");
        let active = invariants::active_sagas(db.url()).await;
        interrupted += active;
        println!(
            "cycle {cycle}: {submitted} orders accepted, groups of up to {group} jobs, SIGKILL \
             after {kill_after:?} with {active} sagas unfinished"
        );
    }
    assert!(
        interrupted > 0,
        "no kill landed while sagas were running: the test proved nothing"
    );
    assert!(
        largest_group > 1,
        "no commit carried more than one job: the kills never hit a group commit"
    );
    // The last run sees every remaining order accepted and every saga finished.
    let host = Host::start(db.url(), &plugins).await;
    host.submit_until(&mut pending, &mut created, Duration::from_secs(60))
        .await;
    assert!(pending.is_empty(), "every order was accepted eventually");
    host.wait_for_quiet_sagas(db.url(), Duration::from_secs(90))
        .await;
    assert!(host.stop().await, "the host exited before it was stopped");

    let snapshot = Snapshot::read(db.url()).await;
    assert_eq!(
        snapshot.orders.len(),
        created.len(),
        "no order lost or duplicated"
    );
    snapshot.assert_placement_invariants();

    // Fulfill every confirmed order, killing the host twice while captures are in flight.
    let confirmed: Vec<String> = snapshot
        .orders
        .iter()
        .filter(|o| o.status == "CONFIRMED")
        .map(|o| o.id.clone())
        .collect();
    assert!(!confirmed.is_empty());
    let mut to_fulfill = confirmed.clone();
    for _ in 0..2 {
        let host = Host::start(db.url(), &plugins).await;
        let kill_after = Duration::from_millis(rng.random_range(100..400));
        host.fulfill_until(&mut to_fulfill, kill_after).await;
        assert!(host.kill().await, "the host exited before it was killed");
    }
    let host = Host::start(db.url(), &plugins).await;
    host.fulfill_until(&mut to_fulfill, Duration::from_secs(60))
        .await;
    assert!(
        to_fulfill.is_empty(),
        "every fulfillment was accepted eventually"
    );
    host.wait_for_quiet_sagas(db.url(), Duration::from_secs(90))
        .await;
    assert!(host.stop().await, "the host exited before it was stopped");
    Snapshot::read(db.url())
        .await
        .assert_fulfillment_invariants(&confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sagas_survive_sigkill() {
    let _serial = SERIAL.lock().await;
    crash_and_recover(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sagas_survive_sigkill() {
    let _serial = SERIAL.lock().await;
    crash_and_recover(TestBackend::Sqlite).await;
}

/// The step deadline cap of [`resumed_saga_keeps_its_step_budget`], in ms: far above one
/// retry delay of `tok_flaky` (100 ms at most for the first), far below the test's runtime.
const STEP_DEADLINE_CAP_MS: i64 = 1_000;

fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

/// Regression: a host killed while a placement waited to retry a transient failure. The step
/// deadline is stored as an instant from the first failure; a successor that claimed the saga
/// later than that instant used to fail the order (`PAYMENT_FAILED`) on its next transient
/// error, though no time was spent working on the step meanwhile. `SagaInstance::resume`
/// moves the deadline later by the time the saga sat unclaimed, so the order is confirmed.
async fn resumed_saga_keeps_its_step_budget(backend: TestBackend) {
    let db = test_database(backend).await;
    let plugins = host::PluginDirs::new();
    let cap = STEP_DEADLINE_CAP_MS.to_string();
    // A lease longer than the step deadline (in production both are 30 s): a host killed
    // holding the lease leaves its successor to claim the saga past the deadline. Here the
    // kill lands while the saga waits for its retry (lease released), which `resume` treats
    // the same way: unclaimed time is not working time.
    let saga_config = [
        ("OMS_SAGA__STEP_DEADLINE_CAP_MS", cap.as_str()),
        ("OMS_SAGA__LEASE_SECS", "2"),
    ];
    // The first host's worker is woken by the order it accepts and then sleeps a full poll
    // interval: it leaves the retry after the first `tok_flaky` failure alone until killed.
    let mut first_config = saga_config.to_vec();
    first_config.push(("OMS_SAGA__POLL_INTERVAL_MS", "60000"));
    let first = Host::start_with(db.url(), &plugins, &first_config).await;
    let order_id = first
        .create_order("resume-1", order("c-resume", "DEMO-1", "tok_flaky"))
        .await
        .order_id;

    // Kill once the authorisation has failed transiently (and so has a stored deadline).
    let within = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let saga = invariants::only_saga(db.url()).await;
        if saga.is_some_and(|s| s.attempts >= 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < within,
            "the authorisation never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(first.kill().await, "the host exited before it was killed");
    let saga = invariants::only_saga(db.url()).await.unwrap();
    assert_eq!(
        // Step 1 of `place_order` is `authorize-payment`.
        (saga.status.as_str(), saga.step_index, saga.attempts),
        ("RUNNING", 1, 1),
        "the kill must land between the first and second authorisation attempt: {saga:?}"
    );
    let deadline = saga.deadline_at.expect("a retrying step has a deadline");
    assert!(
        deadline - saga.next_attempt_at < STEP_DEADLINE_CAP_MS,
        "the capped deadline applies: {saga:?}"
    );

    // Stay down until the stored deadline and any lease have passed, by the clock the hosts
    // use to compare them (this machine's wall clock), so the successor claims the saga late.
    let resume_after = deadline.max(saga.lease_until.unwrap_or(0)) + 100;
    let within = tokio::time::Instant::now() + Duration::from_secs(10);
    while now_millis() <= resume_after {
        assert!(tokio::time::Instant::now() < within, "clock stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The successor makes the second (failing) and third attempt within the budget left.
    let second = Host::start_with(db.url(), &plugins, &saga_config).await;
    let within = tokio::time::Instant::now() + Duration::from_secs(20);
    let placed = loop {
        let current = second.get_order(&order_id).await;
        if current.status() != pb::OrderStatus::Pending {
            break current;
        }
        assert!(
            tokio::time::Instant::now() < within,
            "order {order_id} still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(second.stop().await, "the host exited before it was stopped");
    assert_eq!(
        placed.status(),
        pb::OrderStatus::Confirmed,
        "failure_reason: {}",
        placed.failure_reason
    );
    let saga = invariants::only_saga(db.url()).await.unwrap();
    assert_eq!(saga.status, "SUCCEEDED", "{saga:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_resumed_saga_keeps_its_step_budget() {
    let _serial = SERIAL.lock().await;
    resumed_saga_keeps_its_step_budget(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_resumed_saga_keeps_its_step_budget() {
    let _serial = SERIAL.lock().await;
    resumed_saga_keeps_its_step_budget(TestBackend::Sqlite).await;
}

/// Two hosts on one PostgreSQL: 500 orders, half sent to each, all placed, and every
/// provider call made exactly once per saga step (recorded by the host, and counted by the
/// plugins themselves, whose manifests [`host::PluginDirs`] turns counting on in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_work_without_doubling_a_step() {
    let _serial = SERIAL.lock().await;
    let db = test_database(TestBackend::Postgres).await;
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
    assert!(a.stop().await, "the host exited before it was stopped");
    assert!(b.stop().await, "the host exited before it was stopped");

    let snapshot = Snapshot::read(db.url()).await;
    assert_eq!(snapshot.orders.len(), 500);
    assert!(
        snapshot.orders.iter().all(|o| o.status == "CONFIRMED"),
        "every order confirmed"
    );
    snapshot.assert_placement_invariants();
    // The host recorded one attempt of each step per saga...
    for step in ["reserve-inventory", "authorize-payment"] {
        let attempts = snapshot.attempts(step, "forward");
        assert_eq!(attempts.len(), 500, "one {step} record per saga");
        assert!(
            attempts.values().all(|&n| n == 1),
            "{step} was attempted twice: {attempts:?}"
        );
    }
    // ...and exactly one reserve and one authorize reached the plugins per saga. The host's
    // records alone cannot show this: a worker whose lease lapsed mid-call has its commit
    // fenced out, so a call that reached the plugin leaves no trace in `saga_steps` while
    // the successor's repeat is recorded as the first attempt. Only the plugins see both.
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
