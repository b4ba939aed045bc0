//! The host under test as a child process: started from the built `oms` binary, ready when
//! it logs that it serves, killed with SIGKILL.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oms_grpc::pb;
use oms_grpc::pb::order_service_client::OrderServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Plugin directory (a copy of the built bundle) and a compile cache shared by every start of
/// a test, so restarts load precompiled artifacts like a production restart does.
pub struct PluginDirs {
    pub plugins: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

/// The plugins whose call counters (`calls/<operation>/<key>` in their KV) the invariants
/// read: they keep them only when their manifest says `count-calls = "true"`.
const COUNTING: [&str; 2] = ["fakepay", "local-stock"];

impl PluginDirs {
    /// Copies the bundle `scripts/build-plugins` laid out, turning the call counters of
    /// [`COUNTING`] on in the copied manifests: the bundled manifests leave them off, since
    /// production should not pay a KV write per call for what only these tests read.
    pub fn new() -> Self {
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
        assert!(
            built.join("fakepay.wasm").is_file(),
            "run scripts/build-plugins first"
        );
        let plugins = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&built).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, plugins.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        for name in COUNTING {
            let manifest = plugins.path().join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&manifest).unwrap();
            assert_eq!(
                text.matches("\n[config]\n").count(),
                1,
                "{name}.toml has one [config] table to turn counting on in"
            );
            let counting = text.replace("\n[config]\n", "\n[config]\ncount-calls = \"true\"\n");
            std::fs::write(&manifest, counting).unwrap();
        }
        Self {
            plugins,
            cache: tempfile::tempdir().unwrap(),
        }
    }
}

pub fn order(customer: &str, sku: &str, token: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        customer_id: customer.into(),
        items: vec![pb::LineItem {
            sku: sku.into(),
            quantity: 1,
            unit_price: Some(pb::Money {
                amount_minor: 999,
                currency: "EUR".into(),
            }),
        }],
        payment: Some(pb::PaymentMethod {
            provider: "fakepay".into(),
            token: token.into(),
        }),
        shipping_address: Some(pb::ShippingAddress {
            recipient: "Ada".into(),
            line1: "1 Main St".into(),
            city: "Berlin".into(),
            country: "DE".into(),
            ..Default::default()
        }),
    }
}

pub struct Host {
    child: Child,
    /// The gRPC address it serves on (`host:port`).
    addr: String,
    client: OrderServiceClient<Channel>,
    /// The most jobs one group commit carried, from the host's debug log of its commit
    /// lanes (see `sql::group`); 0 until a group with more than one job was logged.
    largest_group: Arc<AtomicU64>,
}

impl Host {
    /// Starts `oms serve` on a free port and waits for its "serving" log line.
    pub async fn start(database_url: &str, dirs: &PluginDirs) -> Host {
        Self::start_with(database_url, dirs, &[]).await
    }

    /// [`Host::start`] with `overrides` (`OMS_…` variables) set after the defaults below.
    pub async fn start_with(
        database_url: &str,
        dirs: &PluginDirs,
        overrides: &[(&str, &str)],
    ) -> Host {
        let mut command = Command::new(env!("CARGO_BIN_EXE_oms"));
        command
            .arg("serve")
            .env("OMS_GRPC__LISTEN", "127.0.0.1:0")
            // Several hosts run at once: no fixed port for the metrics endpoint.
            .env("OMS_METRICS__LISTEN", "127.0.0.1:0")
            .env("OMS_DATABASE__URL", database_url)
            .env("OMS_DATABASE__MAX_CONNECTIONS", "8")
            .env("OMS_PLUGINS__DIR", dirs.plugins.path())
            .env("OMS_PLUGINS__CACHE_DIR", dirs.cache.path())
            .env("OMS_PLUGINS__WATCH_INTERVAL_MS", "0")
            // A killed worker's sagas, and the idempotency keys its requests held, are taken
            // over once their leases lapse.
            .env("OMS_SAGA__LEASE_SECS", "1")
            .env("OMS_IDEMPOTENCY__LEASE_SECS", "1")
            .env("OMS_SAGA__POLL_INTERVAL_MS", "20")
            // Group commit on both databases (PostgreSQL leaves it off by default): the kills
            // must land while groups of many orders' writes are in flight.
            .env("OMS_DATABASE__MAX_COMMIT_GROUP", "64")
            .env("OMS_LOG__FORMAT", "json")
            // The commit lanes log each group's size at debug (`Host::largest_group`).
            .env(
                "OMS_LOG__FILTER",
                // HOST_LOG_FILTER widens it for reading a failed run (with HOST_LOG_DIR).
                std::env::var("HOST_LOG_FILTER")
                    .unwrap_or_else(|_| "info,oms_persistence::sql::group=debug".to_owned()),
            )
            .env_remove("RUST_LOG")
            .envs(overrides.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("oms binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Ready once it serves gRPC and has loaded its plugins (in the background, so the
        // two lines come in either order; the tests want a host that places orders at once).
        // Generous: the example plugins' test loads three Python and three JavaScript
        // components, compiled at load. On a slow 2-core machine, otherwise idle, that ran
        // past the former 180 s once and passed in 179 s (orders included) the next time.
        let addr = tokio::time::timeout(Duration::from_secs(600), async {
            let (mut addr, mut loaded) = (None, false);
            while let Some(line) = lines.next_line().await.expect("read host log") {
                if line.contains("oms serving gRPC") {
                    let value: serde_json::Value = serde_json::from_str(&line).expect("json log");
                    addr = value["fields"]["addr"].as_str().map(str::to_owned);
                }
                loaded |= line.contains("oms plugins loaded");
                if let (Some(addr), true) = (&addr, loaded) {
                    return addr.clone();
                }
            }
            panic!("host exited before serving");
        })
        .await
        .expect("host serves and loads its plugins within 600 s (a Python component takes ~40 s or more to compile)");
        // Keep draining the log so the child never blocks on a full pipe, noting group sizes.
        let largest_group = Arc::new(AtomicU64::new(0));
        let largest = Arc::clone(&largest_group);
        let echo_warnings = std::env::var("HOST_LOG").is_ok_and(|v| v == "1");
        // HOST_LOG_DIR=DIR keeps every line of every host's log, one file per process.
        let mut keep = std::env::var_os("HOST_LOG_DIR").map(|dir| {
            let path = std::path::Path::new(&dir)
                .join(format!("oms-{}.jsonl", child.id().unwrap_or_default()));
            std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("HOST_LOG_DIR: create {}: {e}", path.display()))
        });
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                // HOST_LOG=1 echoes the host's warnings and errors, and its consumer's
                // rebalances, for reading a failed run (not OMS_…: the host would read it as
                // configuration).
                let notable = line.contains("\"WARN\"")
                    || line.contains("\"ERROR\"")
                    || line.contains("consumer group");
                if echo_warnings && notable {
                    eprintln!("host: {line}");
                }
                if !line.contains("group committed") {
                    continue;
                }
                let jobs = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["jobs"].as_u64())
                    .unwrap_or(0);
                largest.fetch_max(jobs, Ordering::Relaxed);
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to host");
        Host {
            child,
            addr,
            client: OrderServiceClient::new(channel),
            largest_group,
        }
    }

    /// Submits orders (each under its idempotency key) until all are accepted or `budget`
    /// runs out; a request cut off by a kill stays pending for the next host. Returns how
    /// many were accepted.
    pub async fn submit_until(
        &self,
        pending: &mut Vec<(String, pb::CreateOrderRequest)>,
        created: &mut HashMap<String, String>,
        budget: Duration,
    ) -> usize {
        let deadline = tokio::time::Instant::now() + budget;
        let mut accepted = 0;
        while let Some((key, request)) = pending.last().cloned() {
            let mut client = self.client.clone();
            let mut call = tonic::Request::new(request);
            call.metadata_mut()
                .insert("idempotency-key", key.parse().unwrap());
            call.set_timeout(Duration::from_secs(5));
            let outcome = tokio::time::timeout_at(deadline, client.create_order(call)).await;
            match outcome {
                Err(_) => break,
                Ok(Ok(order)) => {
                    created.insert(key, order.into_inner().order_id);
                    pending.pop();
                    accepted += 1;
                }
                // The key is held by a request the previous host was killed in: back off
                // until its lease lapses, then the retry takes it over.
                Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(_)) => break,
            }
        }
        accepted
    }

    /// [`Host::submit_until`] from `clients` concurrent clients, each with its share of
    /// `pending`; what none of them got accepted stays in `pending`.
    pub async fn submit_concurrently(
        &self,
        pending: &mut Vec<(String, pb::CreateOrderRequest)>,
        created: &mut HashMap<String, String>,
        budget: Duration,
        clients: usize,
    ) -> usize {
        let mut shares: Vec<Vec<_>> = (0..clients).map(|_| Vec::new()).collect();
        for (i, request) in pending.drain(..).enumerate() {
            shares[i % clients].push(request);
        }
        let mut accepted = 0;
        let runs = shares.into_iter().map(|mut share| async move {
            let mut mine = HashMap::new();
            let n = self.submit_until(&mut share, &mut mine, budget).await;
            (share, mine, n)
        });
        for (left, mine, n) in futures::future::join_all(runs).await {
            pending.extend(left);
            created.extend(mine);
            accepted += n;
        }
        accepted
    }

    /// A client of this host's gRPC API.
    pub fn client(&self) -> OrderServiceClient<Channel> {
        self.client.clone()
    }

    /// The most jobs one of this host's group commits carried so far.
    pub fn largest_group(&self) -> u64 {
        self.largest_group.load(Ordering::Relaxed)
    }

    /// Asks for fulfillment of each order (key `fulfill-<id>`) until all are accepted or
    /// `budget` runs out, as [`Host::submit_until`] does for creation.
    pub async fn fulfill_until(&self, pending: &mut Vec<String>, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        while let Some(order_id) = pending.last().cloned() {
            let mut client = self.client.clone();
            let mut call = tonic::Request::new(pb::FulfillOrderRequest {
                order_id: order_id.clone(),
                ..Default::default()
            });
            call.metadata_mut().insert(
                "idempotency-key",
                format!("fulfill-{order_id}").parse().unwrap(),
            );
            call.set_timeout(Duration::from_secs(5));
            match tokio::time::timeout_at(deadline, client.fulfill_order(call)).await {
                Err(_) => break,
                Ok(Ok(_)) => {
                    pending.pop();
                }
                Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(status)) => {
                    assert_ne!(
                        status.code(),
                        tonic::Code::FailedPrecondition,
                        "fulfillment refused: {status:?}"
                    );
                    break;
                }
            }
        }
    }

    /// The gRPC address it serves on (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The process id (the host is running).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the host is running")
    }

    /// The order as the API reports it.
    pub async fn get_order(&self, order_id: &str) -> pb::Order {
        let mut call = tonic::Request::new(pb::GetOrderRequest {
            order_id: order_id.into(),
        });
        call.set_timeout(Duration::from_secs(5));
        self.client()
            .get_order(call)
            .await
            .expect("GetOrder")
            .into_inner()
    }

    /// Creates one order under `key` (the host must be up and idle: no retry).
    pub async fn create_order(&self, key: &str, request: pb::CreateOrderRequest) -> pb::Order {
        let mut call = tonic::Request::new(request);
        call.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
        call.set_timeout(Duration::from_secs(5));
        self.client()
            .create_order(call)
            .await
            .expect("CreateOrder")
            .into_inner()
    }

    /// Polls the database until no saga is running (bounded by `within`).
    pub async fn wait_for_quiet_sagas(&self, database_url: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let active = crate::invariants::active_sagas(database_url).await;
            if active == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{active} sagas still active after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown hook runs, in-flight transactions die with the process. Returns
    /// whether the host was still running (false: it had exited on its own before).
    pub async fn kill(mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        // A child that already exited is only reaped.
        let _ = self.child.start_kill();
        self.child.wait().await.expect("reap host");
        running
    }

    /// SIGTERM and wait: the graceful path. Returns whether the host was still running.
    pub async fn stop(mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        running
    }
}
