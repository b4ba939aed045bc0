//! `grpc.health.v1` follows what the host can do: the database, the plugins it needs.

use std::net::SocketAddr;
use std::time::Duration;

use oms_grpc::pb::OrderStatus as S;
use oms_persistence::testing::TestBackend;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{TestApp, order_with, settle};

/// A TCP forwarder the test can cut and restore, standing between the host and PostgreSQL:
/// cutting it drops every connection and refuses new ones, as a database outage does.
struct Outage {
    addr: SocketAddr,
    target: SocketAddr,
    forwarding: Option<JoinHandle<()>>,
}

impl Outage {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            addr,
            target,
            forwarding: Some(tokio::spawn(forward(listener, target))),
        }
    }

    fn cut(&mut self) {
        if let Some(task) = self.forwarding.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.forwarding = Some(tokio::spawn(forward(listener, self.target)));
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Accepts and forwards until aborted; aborting drops the `JoinSet`, which aborts (and so
/// closes) every forwarded connection.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

pub(crate) async fn status(app: &TestApp, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(app.channel.clone());
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let status = health.check(request).await.unwrap().into_inner().status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

/// Polls both the overall status and the order API's until they are `expected` (15 s).
pub(crate) async fn until(app: &TestApp, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = (
            status(app, "").await,
            status(app, "oms.v1.OrderService").await,
        );
        if now == (expected, expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host's database address, from the test database's URL (`...@HOST:PORT/DB`).
async fn database_addr(url: &str) -> (SocketAddr, String) {
    let after_at = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = after_at.split('/').next().unwrap();
    let addr = tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    (addr, host_port.to_owned())
}

/// PostgreSQL goes away: NOT_SERVING within a few checks; it comes back: SERVING again, and
/// orders are placed again.
pub async fn health_follows_the_database() {
    let backend = TestBackend::Postgres;
    let probe = oms_persistence::testing::TestDatabase::new(backend)
        .await
        .unwrap();
    let (target, host_port) = database_addr(probe.url()).await;
    probe.cleanup().await.unwrap();
    let mut outage = Outage::start(target).await;
    let proxied = outage.addr.to_string();
    let app = TestApp::spawn_with(backend, |c| {
        c.database.url = c.database.url.replace(&host_port, &proxied);
        c.health.interval_ms = 200;
    })
    .await;
    until(&app, ServingStatus::Serving).await;

    outage.cut();
    until(&app, ServingStatus::NotServing).await;

    outage.restore().await;
    until(&app, ServingStatus::Serving).await;
    let order = app.create(order_with("c-back", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    app.stop().await;
}

/// A host whose inventory adapter is not installed cannot place orders: NOT_SERVING.
pub async fn health_needs_the_plugins_the_sagas_call(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.plugins.inventory = "no-such-adapter".into();
        c.health.interval_ms = 200;
    })
    .await;
    until(&app, ServingStatus::NotServing).await;
    app.stop().await;
    let app = TestApp::spawn_with(backend, |c| c.health.interval_ms = 200).await;
    until(&app, ServingStatus::Serving).await;
    app.stop().await;
}
