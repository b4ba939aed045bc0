//! `TestApp`: the real server on a random port with a fresh database, and a client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oms::Config;
use oms::config::LogFormat;
use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use oms_persistence::testing::{TestBackend, TestDatabase};
use tonic::transport::Channel;

pub struct TestApp {
    pub client: OrderServiceClient<Channel>,
    pub channel: Channel,
    pub db: TestDatabase,
    /// The configuration it was started with, for another host on the same database.
    pub config: Config,
    server: Option<oms::RunningServer>,
    _cache: tempfile::TempDir,
}

/// The bundled plugins as `scripts/build-plugins` lays them out.
pub fn built_plugins() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    assert!(
        dir.join("fakepay.wasm").is_file(),
        "{} has no built plugins: run scripts/build-plugins first",
        dir.display()
    );
    dir
}

/// A plugins directory holding the bundled plugins plus the named test-only ones from
/// `testing/` (`trap`, `infinite-loop`, `memory-bomb`...).
pub fn plugins_with_testing(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let built = built_plugins();
    for entry in std::fs::read_dir(&built).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    for name in names {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(built.join("testing").join(&file), dir.path().join(&file)).unwrap();
        }
    }
    dir
}

impl TestApp {
    /// The full host: API plus saga workers.
    pub async fn spawn(backend: TestBackend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// The API without saga workers: orders stay as the API left them, so tests of the API's
    /// own behaviour (versions, idempotency, watching) are not raced by placement.
    pub async fn api_only(backend: TestBackend) -> TestApp {
        Self::spawn_with(backend, |config| config.saga.workers = 0).await
    }

    /// Spawns with the bundled plugins, fast saga polling, and a 1.5 s cap on step
    /// deadlines (so a provider that never answers fails a saga in seconds, not minutes),
    /// then lets `adjust` change the configuration.
    pub async fn spawn_with(backend: TestBackend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_inner(backend, adjust, None, true).await
    }

    /// [`Self::spawn_with`], returning as soon as gRPC serves, while the plugins may still
    /// be loading (every other constructor waits for them, so tests start from a ready
    /// host).
    pub async fn spawn_loading(backend: TestBackend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_inner(backend, adjust, None, false).await
    }

    /// [`Self::spawn_with`] for a host whose public API serves TLS with a certificate for
    /// `localhost` that `ca` (PEM) vouches for; the client trusts it.
    pub async fn spawn_with_tls(
        backend: TestBackend,
        adjust: impl FnOnce(&mut Config),
        ca: &Path,
    ) -> TestApp {
        Self::spawn_inner(backend, adjust, Some(ca), true).await
    }

    async fn spawn_inner(
        backend: TestBackend,
        adjust: impl FnOnce(&mut Config),
        ca: Option<&Path>,
        wait_for_plugins: bool,
    ) -> TestApp {
        let db = TestDatabase::new(backend).await.unwrap_or_else(|e| {
            panic!("{backend:?} test database (PostgreSQL: 127.0.0.1:5432 or OMS_TEST_PG_URL): {e}")
        });
        let mut config = Config::default();
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.database.url = db.url().to_owned();
        config.watch.poll_interval_ms = 200;
        config.log.format = LogFormat::Text;
        let cache = tempfile::tempdir().expect("plugin cache dir");
        config.plugins.dir = built_plugins();
        config.plugins.cache_dir = cache.path().to_owned();
        config.plugins.watch_interval_ms = 0;
        config.saga.poll_interval_ms = 20;
        config.saga.step_deadline_cap_ms = 1500;
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.token = ADMIN_TOKEN.to_owned();
        config.metrics.listen = "127.0.0.1:0".parse().unwrap();
        config.plugins.sync_interval_ms = 100;
        adjust(&mut config);
        let server = oms::start(config.clone()).await.expect("server starts");
        if wait_for_plugins {
            server.plugins_loaded().await;
        }
        let channel = match ca {
            None => Channel::from_shared(format!("http://{}", server.addr)).unwrap(),
            Some(ca) => {
                let pem = std::fs::read(ca).unwrap();
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem));
                Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
            }
        }
        .connect()
        .await
        .expect("client connects");
        TestApp {
            client: OrderServiceClient::new(channel.clone()),
            channel,
            db,
            config,
            server: Some(server),
            _cache: cache,
        }
    }

    /// Another host process on the same database (as a replica would be), with its own
    /// listeners and plugin cache. Stop it before [`TestApp::stop`].
    pub async fn another_host(&self) -> (oms::RunningServer, tempfile::TempDir) {
        let cache = tempfile::tempdir().expect("plugin cache dir");
        let mut config = self.config.clone();
        config.plugins.cache_dir = cache.path().to_owned();
        let server = oms::start(config).await.expect("second host starts");
        server.plugins_loaded().await;
        (server, cache)
    }

    /// The running server, for what the API does not expose (plugins, operator operations).
    pub fn server(&self) -> &oms::RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// Stops this host (its database stays), for a test that goes on with another host;
    /// [`Self::stop`] then only drops the database.
    pub async fn stop_host(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops cleanly");
        }
    }

    /// Stops the server and drops the database. Call at the end of each test.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops cleanly");
        }
        self.db.cleanup().await.expect("test database dropped");
    }
}

/// Typed calls of the order API. `try_*` return what the server answered, for tests that
/// look at the refusal; the others unwrap it, for tests where the call must succeed. Those
/// taking `impl IntoRequest` accept a message or a [`keyed`] request.
impl TestApp {
    pub async fn try_create(
        &self,
        request: impl tonic::IntoRequest<pb::CreateOrderRequest>,
    ) -> Result<pb::Order, tonic::Status> {
        let response = self.client.clone().create_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    /// Creates an order (it answers once the order is durably PENDING).
    pub async fn create(
        &self,
        request: impl tonic::IntoRequest<pb::CreateOrderRequest>,
    ) -> pb::Order {
        self.try_create(request).await.expect("CreateOrder")
    }

    pub async fn try_get(&self, order_id: &str) -> Result<pb::Order, tonic::Status> {
        let request = pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        };
        let response = self.client.clone().get_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn get(&self, order_id: &str) -> pb::Order {
        self.try_get(order_id).await.expect("GetOrder")
    }

    pub async fn try_list(
        &self,
        request: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, tonic::Status> {
        let response = self.client.clone().list_orders(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn list(&self, request: pb::ListOrdersRequest) -> pb::ListOrdersResponse {
        self.try_list(request).await.expect("ListOrders")
    }

    /// The orders of one customer (the first page, newest first).
    pub async fn list_of(&self, customer_id: &str) -> Vec<pb::Order> {
        self.list(pb::ListOrdersRequest {
            customer_id: customer_id.to_owned(),
            ..Default::default()
        })
        .await
        .orders
    }

    /// Follows an order: its current state first, then every change until a terminal status.
    pub async fn try_watch(
        &self,
        request: impl tonic::IntoRequest<pb::WatchOrderRequest>,
    ) -> Result<tonic::Streaming<pb::Order>, tonic::Status> {
        let response = self.client.clone().watch_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn watch(
        &self,
        request: impl tonic::IntoRequest<pb::WatchOrderRequest>,
    ) -> tonic::Streaming<pb::Order> {
        self.try_watch(request).await.expect("WatchOrder")
    }

    /// A cancel with every field of the request chosen (expected version, idempotency key).
    pub async fn try_cancel_with(
        &self,
        request: impl tonic::IntoRequest<pb::CancelOrderRequest>,
    ) -> Result<pb::Order, tonic::Status> {
        let response = self.client.clone().cancel_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    /// Cancels at whatever version the order is; `reason` may be empty.
    pub async fn try_cancel(
        &self,
        order_id: &str,
        reason: &str,
    ) -> Result<pb::Order, tonic::Status> {
        self.try_cancel_with(pb::CancelOrderRequest {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
            expected_version: None,
        })
        .await
    }

    pub async fn cancel(&self, order_id: &str, reason: &str) -> pb::Order {
        self.try_cancel(order_id, reason)
            .await
            .expect("CancelOrder")
    }

    pub async fn try_fulfill(&self, order_id: &str) -> Result<pb::Order, tonic::Status> {
        let request = pb::FulfillOrderRequest {
            order_id: order_id.to_owned(),
            expected_version: None,
        };
        let response = self.client.clone().fulfill_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn fulfill(&self, order_id: &str) -> pb::Order {
        self.try_fulfill(order_id).await.expect("FulfillOrder")
    }

    /// Refunds `amount` (`None`: the whole refundable balance); `reason` may be empty.
    pub async fn try_refund(
        &self,
        order_id: &str,
        amount: Option<pb::Money>,
        reason: &str,
    ) -> Result<pb::Order, tonic::Status> {
        let request = pb::RefundOrderRequest {
            order_id: order_id.to_owned(),
            amount,
            reason: reason.to_owned(),
            expected_version: None,
        };
        let response = self.client.clone().refund_order(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn refund(
        &self,
        order_id: &str,
        amount: Option<pb::Money>,
        reason: &str,
    ) -> pb::Order {
        self.try_refund(order_id, amount, reason)
            .await
            .expect("RefundOrder")
    }

    /// An address change with the request built by the caller (an idempotency key).
    pub async fn try_update_address_with(
        &self,
        request: impl tonic::IntoRequest<pb::UpdateShippingAddressRequest>,
    ) -> Result<pb::Order, tonic::Status> {
        let response = self.client.clone().update_shipping_address(request).await;
        response.map(tonic::Response::into_inner)
    }

    pub async fn try_update_address(
        &self,
        order_id: &str,
        address: pb::ShippingAddress,
        expected_version: i64,
    ) -> Result<pb::Order, tonic::Status> {
        self.try_update_address_with(pb::UpdateShippingAddressRequest {
            order_id: order_id.to_owned(),
            shipping_address: Some(address),
            expected_version,
        })
        .await
    }

    pub async fn update_address(
        &self,
        order_id: &str,
        address: pb::ShippingAddress,
        expected_version: i64,
    ) -> pb::Order {
        self.try_update_address(order_id, address, expected_version)
            .await
            .expect("UpdateShippingAddress")
    }
}

pub fn money(amount_minor: i64, currency: &str) -> Option<pb::Money> {
    Some(pb::Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

pub fn address(city: &str) -> pb::ShippingAddress {
    pb::ShippingAddress {
        recipient: "Ada Lovelace".into(),
        line1: "12 Analytical Row".into(),
        line2: String::new(),
        city: city.into(),
        postal_code: "10115".into(),
        country: "DE".into(),
        email: "ada@example.com".into(),
    }
}

pub fn valid_order(customer: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        customer_id: customer.into(),
        items: vec![
            pb::LineItem {
                sku: "DEMO-1".into(),
                quantity: 2,
                unit_price: money(1250, "EUR"),
            },
            pb::LineItem {
                sku: "DEMO-2".into(),
                quantity: 1,
                unit_price: money(499, "EUR"),
            },
        ],
        payment: Some(pb::PaymentMethod {
            provider: "fakepay".into(),
            token: "tok_ok".into(),
        }),
        shipping_address: Some(address("Berlin")),
    }
}

/// A request carrying an `idempotency-key`.
pub fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The fields named by the status's `google.rpc.BadRequest`.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The `current_version` an ABORTED version conflict reports.
pub fn current_version(status: &tonic::Status) -> Option<i64> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("current_version"))
        .and_then(|v| v.parse().ok())
}

/// Rows of `sql` (one `$1` parameter: the order id as text), read straight from the
/// database (not through the API under test).
/// Runs one statement with `arg` bound as `$1` against the test's database (tests that
/// inject what only a bug or an operator could write); returns the rows it touched.
pub async fn execute(db: &TestDatabase, sql: &'static str, arg: &str) -> u64 {
    if db.url().starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        let done = sqlx::query(sql).bind(arg).execute(&pool).await.unwrap();
        pool.close().await;
        done.rows_affected()
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        let done = sqlx::query(sql).bind(arg).execute(&pool).await.unwrap();
        pool.close().await;
        done.rows_affected()
    }
}

pub async fn fetch_for_order<T>(db: &TestDatabase, sql: &'static str, order_id: &str) -> Vec<T>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    if db.url().starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        let rows = sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        let rows = sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    }
}

/// The event types the outbox holds for an order, oldest first.
pub async fn outbox_event_types(db: &TestDatabase, order_id: &str) -> Vec<String> {
    let sql = "SELECT event_type FROM outbox WHERE CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    let rows: Vec<(String,)> = fetch_for_order(db, sql, order_id).await;
    rows.into_iter().map(|r| r.0).collect()
}

/// The payloads of an order's outbox events of one type, oldest first.
pub async fn outbox_payloads(
    db: &TestDatabase,
    order_id: &str,
    event_type: &str,
) -> Vec<serde_json::Value> {
    let sql = "SELECT event_type, CAST(payload AS TEXT) FROM outbox \
               WHERE CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    let rows: Vec<(String, String)> = fetch_for_order(db, sql, order_id).await;
    rows.into_iter()
        .filter(|(t, _)| t == event_type)
        .map(|(_, payload)| serde_json::from_str(&payload).unwrap())
        .collect()
}

/// An order's sagas as (id, kind, status), oldest first.
pub async fn sagas_of(db: &TestDatabase, order_id: &str) -> Vec<(String, String, String)> {
    let sql = "SELECT CAST(id AS TEXT), kind, status FROM saga_instances \
               WHERE CAST(order_id AS TEXT) = $1 ORDER BY created_at, id";
    fetch_for_order(db, sql, order_id).await
}

/// Polls the order's sagas until one of `kind` is in `status`; returns its id.
pub async fn wait_for_saga(
    app: &TestApp,
    order_id: &str,
    kind: &str,
    status: &str,
    within: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let sagas = sagas_of(&app.db, order_id).await;
        if let Some((id, _, _)) = sagas.iter().find(|(_, k, s)| k == kind && s == status) {
            return id.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} saga {status} for order {order_id} within {within:?}: {sagas:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `google.rpc.ErrorInfo` of a status: its reason and metadata.
pub fn error_info(status: &tonic::Status) -> (String, HashMap<String, String>) {
    use tonic_types::StatusExt;
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    (info.reason, info.metadata)
}

/// Copies the bundled plugin `name` into `dir` as `new_name` (same component, renamed in its
/// manifest) and returns the manifest's path.
pub fn renamed_plugin(dir: &Path, name: &str, new_name: &str, version: &str) -> PathBuf {
    let built = built_plugins();
    let (wasm, toml) = match name {
        "trap" => (
            built.join("testing/trap.wasm"),
            built.join("testing/trap.toml"),
        ),
        _ => (
            built.join(format!("{name}.wasm")),
            built.join(format!("{name}.toml")),
        ),
    };
    std::fs::copy(&wasm, dir.join(format!("{name}.wasm"))).unwrap();
    let manifest = std::fs::read_to_string(&toml)
        .unwrap()
        .replace(
            &format!("name = \"{name}\""),
            &format!("name = \"{new_name}\""),
        )
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
    let path = dir.join(format!("{new_name}.toml"));
    std::fs::write(&path, manifest).unwrap();
    path
}

/// Hot-swaps a broken build in as `fakepay`: the same component under a manifest that makes
/// every call crash (`[config] crash = "true"`), so that the follow-up calls of orders placed
/// before the swap, pinned to that component, crash too, until `fakepay` is rolled back.
/// Keep the returned directory alive while it serves.
pub async fn break_fakepay(app: &TestApp) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let built = built_plugins();
    let wasm = dir.path().join("fakepay.wasm");
    std::fs::copy(built.join("fakepay.wasm"), &wasm).unwrap();
    let manifest = std::fs::read_to_string(built.join("fakepay.toml"))
        .unwrap()
        .replace("version = \"0.1.0\"", "version = \"0.2.0-broken\"")
        .replace("[config]", "[config]\ncrash = \"true\"");
    let manifest_path = dir.path().join("fakepay.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let out = omsctl(
        app,
        &[
            "plugins",
            "swap",
            "fakepay",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest_path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let current = app.server().plugins().status_of("fakepay").unwrap().current;
    assert_eq!(current.version, "0.2.0-broken");
    dir
}

/// The admin token every test host accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Runs the built `omsctl` binary with `args` against the test host's admin API.
pub async fn omsctl(app: &TestApp, args: &[&str]) -> std::process::Output {
    let addr = app.server().admin_addr.expect("admin API on");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_omsctl"))
        .args(args)
        .env("OMS_ADMIN_ADDR", format!("http://{addr}"))
        .env("OMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .output()
        .await
        .expect("omsctl runs")
}

/// `omsctl --json ARGS`, which must succeed, parsed.
pub async fn omsctl_json(app: &TestApp, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = omsctl(app, &all).await;
    assert!(out.status.success(), "omsctl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("omsctl {args:?} printed no JSON ({e}): {out:?}"))
}

/// Follows the order with WatchOrder until `done` holds, failing after `within`.
pub async fn wait_until(
    app: &TestApp,
    order_id: &str,
    within: Duration,
    done: impl Fn(&pb::Order) -> bool,
) -> pb::Order {
    use futures::StreamExt;
    let mut stream = app
        .watch(with_timeout(
            pb::WatchOrderRequest {
                order_id: order_id.to_owned(),
            },
            within,
        ))
        .await;
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(order) if done(&order) => return order,
            Ok(order) => last = Some(order),
            Err(status) => {
                panic!("order {order_id} did not get there: {status:?}; last seen {last:?}")
            }
        }
    }
    panic!("order {order_id} reached a terminal state without matching: {last:?}");
}

/// Waits for a terminal status (or COMPENSATION_FAILED, which parks).
pub async fn settle(app: &TestApp, order_id: &str) -> pb::Order {
    use pb::OrderStatus as S;
    wait_until(app, order_id, Duration::from_secs(20), |o| {
        matches!(
            o.status(),
            S::Confirmed
                | S::Rejected
                | S::PaymentFailed
                | S::Cancelled
                | S::CompensationFailed
                | S::Fulfilled
        )
    })
    .await
}

/// Waits until no saga of the order is running or compensating, then returns the order.
pub async fn quiet(app: &TestApp, order_id: &str) -> pb::Order {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: Vec<(String,)> = fetch_for_order(
            &app.db,
            "SELECT CAST(id AS TEXT) FROM saga_instances WHERE CAST(order_id AS TEXT) = $1 \
             AND status IN ('RUNNING', 'COMPENSATING')",
            order_id,
        )
        .await;
        if running.is_empty() {
            return app.get(order_id).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas still running: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn order_with(customer: &str, sku: &str, token: &str) -> pb::CreateOrderRequest {
    let mut request = valid_order(customer);
    request.items.truncate(1);
    request.items[0].sku = sku.to_owned();
    request.payment.as_mut().unwrap().token = token.to_owned();
    request
}

/// The id of the order's (first) event of `event_type`, read straight from the outbox.
pub async fn outbox_event_id(db: &TestDatabase, order_id: &str, event_type: &str) -> String {
    let sql = "SELECT event_type, CAST(event_id AS TEXT) FROM outbox \
               WHERE CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    let rows: Vec<(String, String)> = fetch_for_order(db, sql, order_id).await;
    rows.into_iter()
        .find(|(t, _)| t == event_type)
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("order {order_id} has no {event_type} in the outbox"))
}

/// Everything this test process logs, through the host's own subscriber set-up
/// (`oms::telemetry`, default `[log]` configuration), kept in memory. Installed once for the
/// whole test binary: tests running at the same time log into it too, so assertions look
/// for values unique to their test.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn get() -> LogCapture {
        // The telemetry handle lives as long as the process: dropping it would shut the
        // tracer provider down, and spans would stop carrying trace context.
        static CAPTURE: std::sync::OnceLock<(LogCapture, oms::telemetry::Telemetry)> =
            std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let config = Config::default();
                let telemetry =
                    oms::telemetry::init_with_writer(&config.log, &config.tracing, capture.clone());
                (capture, telemetry)
            })
            .0
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}
