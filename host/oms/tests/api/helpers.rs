//! `TestApp`: the real server on a random port with a fresh database, and a client.

use std::time::Duration;

use oms::Config;
use oms::config::LogFormat;
use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use oms_persistence::testing::TestDatabase;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub struct TestApp {
    pub client: OrderServiceClient<Channel>,
    pub channel: Channel,
    pub db: TestDatabase,
    server: Option<oms::RunningServer>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        let db = match backend {
            Backend::Postgres => TestDatabase::postgres()
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (or OMS_TEST_PG_URL)"),
            Backend::Sqlite => TestDatabase::sqlite().expect("temporary SQLite file"),
        };
        let mut config = Config::default();
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.database.url = db.url().to_owned();
        config.watch.poll_interval_ms = 200;
        config.log.format = LogFormat::Text;
        let server = oms::start(config).await.expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .expect("client connects");
        TestApp {
            client: OrderServiceClient::new(channel.clone()),
            channel,
            db,
            server: Some(server),
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

/// The event types the outbox holds for an order, oldest first, read straight from the
/// database (not through the API under test).
pub async fn outbox_event_types(db: &TestDatabase, order_id: &str) -> Vec<String> {
    let sql = "SELECT event_type FROM outbox WHERE CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    if db.url().starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        let rows: Vec<(String,)> = sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter().map(|r| r.0).collect()
    } else {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        let rows: Vec<(String,)> = sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter().map(|r| r.0).collect()
    }
}
