//! `serve`: connects the database, wires the use cases behind the gRPC API (with health and
//! reflection), and runs background workers until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use oms_application::changes::OrderChanges;
use oms_application::clock::SystemClock;
use oms_application::operations::OutboxOperations;
use oms_application::saga::worker::{self, WorkerConfig};
use oms_application::saga::{EngineConfig, SagaEngine, SagaOperations, SagaPorts};
use oms_application::{InlinePlacement, OrderService, ServiceConfig};
use oms_grpc::admin::{AdminApi, BearerAuth};
use oms_grpc::auth::CallerAuth;
use oms_grpc::listener::{self, ConnectionLimits};
use oms_grpc::metrics::RpcMetricsLayer;
use oms_grpc::{ApiLimits, OrderApi};
use oms_persistence::{Database, DatabaseOptions, GroupCommitOptions};
use oms_plugin_runtime::PluginRuntime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::adapters::{CanaryGuard, PluginInventory, PluginPayments, RuntimeCatalog};
use crate::config::Config;
use crate::health::{self, TaskWatch};
use crate::plugins::Plugins;

/// Expired idempotency keys deleted per sweep batch: bounded so a sweep never holds long
/// locks.
const SWEEP_BATCH: u32 = 1_000;

/// A server started by [`start`].
pub struct RunningServer {
    /// The bound address (useful when the configured port was 0).
    pub addr: SocketAddr,
    /// The admin API's bound address; `None` when it is off (no `admin.token`).
    pub admin_addr: Option<SocketAddr>,
    /// The Prometheus endpoint's bound address; `None` when `metrics.enabled` is false.
    pub metrics_addr: Option<SocketAddr>,
    /// The webhook endpoint's bound address; `None` when `webhooks.listen` is unset.
    pub webhooks_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    db: Database,
    plugins: Plugins,
    operations: SagaOperations,
    plugins_loaded: watch::Receiver<bool>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish, stops the workers, and returns the first
    /// error any of them hit.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`RunningServer::stop`] or a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for task in self.tasks {
            let outcome = task.await.context("server task panicked").and_then(|r| r);
            if result.is_ok() {
                result = outcome;
            }
        }
        // Only after every task stopped: in-flight calls may still have been writing.
        self.db.close().await;
        result
    }

    /// The plugin runtime (install, rollback, metrics: what the admin API will expose).
    pub fn plugins(&self) -> &PluginRuntime {
        &self.plugins.runtime
    }

    /// Returns once the startup load of the plugins has finished (every plugin installed or
    /// refused; [`crate::plugins::load`]) or the server stopped. gRPC serves before that.
    pub async fn plugins_loaded(&self) {
        let mut loaded = self.plugins_loaded.clone();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Operator operations on sagas (what the admin API will expose).
    pub fn operations(&self) -> &SagaOperations {
        &self.operations
    }

    /// A handle that triggers shutdown from elsewhere (signal handlers).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens (and migrates) the configured database with a pool of `max_connections`, wording a
/// failure with the password redacted.
async fn open_database(config: &Config, max_connections: u32) -> anyhow::Result<Database> {
    let options = DatabaseOptions {
        max_connections,
        group_commit: GroupCommitOptions {
            lanes: config.database.commit_lanes,
            max_group: config.database.max_commit_group,
        },
        ..DatabaseOptions::default()
    };
    oms_persistence::connect(&config.database.url, &options)
        .await
        .with_context(|| {
            format!(
                "opening database {}",
                crate::config::redact_url(&config.database.url)
            )
        })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // Either a `true` was sent or every sender is gone: both mean stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Starts the host as configured and returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    // `Config::load` validated already; a config built in code (tests, embedders) has not.
    config.validate()?;
    check_grpc_limits(&config)?;
    let db = open_database(&config, config.database.max_connections).await?;
    let (plugins, mut watcher) = crate::plugins::start(&config.plugins, &db)?;
    let changes = OrderChanges::default();
    // Names this process's saga leases: its workers' and its inline placement's.
    let process = format!(
        "oms-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let mut service = OrderService::new(
        db.orders(),
        db.sagas(),
        db.idempotency(),
        changes.clone(),
        Arc::new(SystemClock),
        ServiceConfig {
            idempotency_ttl: config.idempotency_ttl(),
            idempotency_lease: Duration::from_secs(config.idempotency.lease_secs),
            watch_poll_interval: Duration::from_millis(config.watch.poll_interval_ms),
        },
    );
    let canary = &config.plugins.canary;
    let catalog = Arc::new(RuntimeCatalog::new(
        plugins.runtime.clone(),
        db.plugin_releases(),
        db.sagas(),
        CanaryGuard {
            max_failure_rate: canary.max_failure_rate,
            window: Duration::from_secs(canary.window_secs),
            min_calls: canary.min_calls,
        },
    ));
    // Plugins compile in the background once gRPC serves (a large component takes tens of
    // seconds); what will be served is known from the manifests now, so orders naming it
    // are accepted meanwhile and wait for it.
    let expected = catalog.expect(&config.plugins.dir).await;
    info!(plugins = expected, "plugins will load in the background");
    service = service.with_plugins(catalog.clone());
    // A process that runs no sagas (`saga.workers = 0`, an API-only replica) does not place
    // orders inline either.
    let ports = saga_ports(&config, &db, &plugins)?;
    if config.saga.workers > 0 && config.saga.inline_placements > 0 {
        let engine = saga_engine(&config, &ports, &changes, format!("{process}-inline"));
        let slots = usize::try_from(config.saga.inline_placements).unwrap_or(usize::MAX);
        service = service.with_inline_placement(InlinePlacement::new(Arc::new(engine), slots));
    }

    let mut tasks = Vec::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let background = TaskWatch::default();
    let (loaded_tx, plugins_loaded) = watch::channel(false);
    let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
    tasks.push(background.spawn("plugin loader", &shutdown_rx, {
        let catalog = RuntimeCatalog::clone(&catalog);
        let config = config.plugins.clone();
        let mut stop = shutdown_rx.clone();
        let process = process.clone();
        async move {
            let applied = tokio::select! {
                applied = crate::plugins::load(&mut watcher, &catalog, &config, &process) => applied,
                () = stopped(stop.clone()) => return Ok(()),
            };
            let _ = applied_tx.send(applied);
            let _ = loaded_tx.send(true);
            if config.watch_interval_ms > 0 {
                crate::plugins::watch(watcher, catalog, config, format!("dir:{process}"), stop)
                    .await;
            } else {
                // Nothing left to do; ending early would read as a failed task.
                let _ = stop.wait_for(|stop| *stop).await;
            }
            Ok(())
        }
    }));
    let follow = RuntimeCatalog::clone(&catalog);
    tasks.push(background.spawn("plugin release follower", &shutdown_rx, {
        let interval = Duration::from_millis(config.plugins.sync_interval_ms);
        let stop = shutdown_rx.clone();
        let actor = format!("auto-rollback:{process}");
        async move {
            // Follows from what the startup load applied; no load, nothing to follow.
            if let Ok(applied) = applied_rx.await {
                follow.follow(applied, interval, actor, stop).await;
            }
            Ok(())
        }
    }));
    spawn_saga_workers(
        &config,
        &db,
        &service,
        (&ports, &plugins_loaded),
        &process,
        (&background, &shutdown_rx),
        &mut tasks,
    );
    let (relay, notifications) = spawn_messaging(
        &config,
        &db,
        &service,
        (&plugins, &plugins_loaded),
        (&background, &shutdown_rx),
        &mut tasks,
    )?;
    let operations = SagaOperations::new(
        db.orders(),
        db.sagas(),
        Arc::new(SystemClock),
        service.changes().clone(),
        service.saga_wakeup(),
    );
    let outbox = OutboxOperations::new(
        db.outbox(),
        Arc::new(SystemClock),
        Arc::new(move || relay.wake()),
    );
    let health_catalog = RuntimeCatalog::clone(&catalog);
    let admin = AdminApi::new(
        operations.clone(),
        outbox,
        catalog,
        config.admin.max_upload_bytes,
    );
    let admin_addr = serve_admin(&config, admin, (&background, &shutdown_rx), &mut tasks).await?;
    let metrics_addr = if config.metrics.enabled {
        let collect = collect_metrics(plugins.runtime.clone(), notifications);
        let (addr, server) =
            crate::metrics::serve(config.metrics.listen, collect, shutdown_rx.clone()).await?;
        tasks.push(background.spawn("metrics endpoint", &shutdown_rx, server));
        Some(addr)
    } else {
        None
    };

    let webhooks_addr = if let Some(listen) = config.webhooks.listen {
        let host = crate::webhooks::WebhookHost {
            plugins: plugins.runtime.clone(),
            operations: operations.clone(),
            max_body_bytes: config.webhooks.max_body_bytes,
        };
        let (addr, server) = crate::webhooks::serve(listen, host, shutdown_rx.clone()).await?;
        tasks.push(background.spawn("webhook endpoint", &shutdown_rx, server));
        Some(addr)
    } else {
        None
    };

    let listener = TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", config.grpc.listen))?;
    let addr = listener.local_addr()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl speaks v1, many older tools only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(oms_grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building gRPC reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building gRPC reflection v1alpha")?;

    let g = &config.grpc;
    let ms = Duration::from_millis;
    let api_limits = ApiLimits {
        max_in_flight: api_in_flight(&config),
        max_request_bytes: g.max_request_bytes,
        max_response_bytes: g.max_response_bytes,
        max_buffered_request_bytes: g.max_buffered_request_bytes,
        max_calls_per_connection: g.max_calls_per_connection,
        max_watch_streams: config.watch.max_streams,
    };
    let connections = ConnectionLimits {
        max_connections: g.max_connections,
        idle_timeout: ms(g.idle_timeout_ms),
    };
    let grpc = with_tls(
        tonic::transport::Server::builder(),
        "grpc",
        (g.tls_cert_file.as_deref(), g.tls_key_file.as_deref()),
    )?
    .max_concurrent_streams(g.max_concurrent_streams)
    .http2_max_header_list_size(g.max_header_list_bytes)
    .http2_keepalive_interval(Some(ms(g.keepalive_interval_ms)))
    .http2_keepalive_timeout(Some(ms(g.keepalive_timeout_ms)))
    .timeout(ms(g.request_timeout_ms))
    .layer(RpcMetricsLayer)
    .layer(crate::telemetry::RpcTraceLayer)
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha)
    .add_service(OrderApi::new(service.clone(), api_limits).into_server(callers(&config)?))
    .serve_with_incoming_shutdown(
        listener::incoming(listener, connections),
        stopped(shutdown_rx.clone()),
    );
    let grpc_task = tokio::spawn(async move {
        grpc.await.context("gRPC server failed")?;
        Ok(())
    });

    let sweeper = background.spawn(
        "idempotency sweeper",
        &shutdown_rx,
        sweep_idempotency_keys(
            service.clone(),
            Duration::from_secs(config.idempotency.sweep_interval_secs),
            shutdown_rx.clone(),
        ),
    );
    let checks = health::Checks {
        db: db.clone(),
        plugins: plugins.runtime.clone(),
        inventory: config.plugins.inventory.clone(),
        tasks: background,
        catalog: health_catalog,
        plugins_loaded: plugins_loaded.clone(),
    };
    let health = health::start(
        health_reporter,
        checks,
        Duration::from_millis(config.health.interval_ms),
        shutdown_rx,
    )
    .await;

    tasks.push(grpc_task);
    tasks.push(sweeper);
    tasks.push(health);
    info!(%addr, database = %crate::config::redact_url(&config.database.url), "oms serving gRPC");
    Ok(RunningServer {
        addr,
        admin_addr,
        metrics_addr,
        webhooks_addr,
        shutdown,
        tasks,
        operations,
        db,
        plugins,
        plugins_loaded,
    })
}

/// Starts the admin API on its own listener when `admin.token` is set; returns its address.
async fn serve_admin(
    config: &Config,
    admin: AdminApi,
    (background, shutdown): (&TaskWatch, &watch::Receiver<bool>),
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(auth) = BearerAuth::new(&config.admin.token) else {
        info!("admin API off: set admin.token (OMS_ADMIN__TOKEN) to enable it");
        return Ok(None);
    };
    let listen = config.admin.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding admin listener on {listen}"))?;
    let addr = listener.local_addr()?;
    // Reflection answers without a token: it describes the API, it does not operate it.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(oms_grpc::admin_pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building admin reflection")?;
    let a = &config.admin;
    let server = with_tls(
        tonic::transport::Server::builder(),
        "admin",
        (a.tls_cert_file.as_deref(), a.tls_key_file.as_deref()),
    )?
    .layer(RpcMetricsLayer)
    .layer(crate::telemetry::RpcTraceLayer)
    .add_service(reflection)
    .add_service(admin.into_server(auth))
    .serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        stopped(shutdown.clone()),
    );
    tasks.push(background.spawn("admin API", shutdown, async move {
        server.await.context("admin server failed")?;
        Ok(())
    }));
    info!(%addr, "oms serving the admin API");
    Ok(Some(addr))
}

/// What the scrape reads from state kept elsewhere: each plugin's circuit
/// (`oms_plugin_circuit_open`, 1 while open or half-open) and the notification consumer's
/// counters (`oms_notifications_total{outcome}`).
fn collect_metrics(
    runtime: oms_plugin_runtime::PluginRuntime,
    notifications: Option<Arc<oms_messaging::notifications::NotificationMetrics>>,
) -> crate::metrics::Collect {
    use std::sync::atomic::Ordering::Relaxed;
    Arc::new(move || {
        for plugin in runtime.list() {
            let open = plugin.breaker != oms_plugin_runtime::breaker::BreakerState::Closed;
            metrics::gauge!("oms_plugin_circuit_open", "plugin" => plugin.current.name.clone())
                .set(if open { 1.0 } else { 0.0 });
        }
        if let Some(n) = &notifications {
            for (outcome, value) in [
                ("processed", &n.processed),
                ("duplicate", &n.duplicates),
                ("delivered", &n.delivered),
                ("dead_lettered", &n.dead_lettered),
            ] {
                metrics::counter!("oms_notifications_total", "outcome" => outcome)
                    .absolute(value.load(Relaxed));
            }
        }
    })
}

/// Database connections kept from the API for the background work that must not starve
/// behind it: the outbox relay, the notification consumer and the sweeper, besides one per
/// saga worker.
const BACKGROUND_CONNECTIONS: u32 = 3;

/// How many API calls may run at once: as configured, but never so many that they could
/// hold every database connection while saga workers, relay, consumer or the commit lanes
/// (which commit the API's own writes) wait for one.
fn api_in_flight(config: &Config) -> usize {
    let reserve = BACKGROUND_CONNECTIONS
        .saturating_add(config.saga.workers)
        .saturating_add(config.database.commit_lanes);
    let room = config
        .database
        .max_connections
        .saturating_sub(reserve)
        .max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    config.grpc.max_in_flight_requests.clamp(1, room)
}

/// `builder` serving TLS with the PEM certificate chain and key of `section`'s
/// `tls_cert_file` / `tls_key_file` (both or neither; neither is plaintext).
fn with_tls(
    builder: tonic::transport::Server,
    section: &str,
    (cert, key): (Option<&std::path::Path>, Option<&std::path::Path>),
) -> anyhow::Result<tonic::transport::Server> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(builder),
        (Some(cert), Some(key)) => (cert, key),
        _ => anyhow::bail!("{section}.tls_cert_file and {section}.tls_key_file go together"),
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("{section}.{what}: reading {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(cert, "tls_cert_file")?,
        read(key, "tls_key_file")?,
    );
    builder
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .with_context(|| format!("{section}: TLS certificate and key"))
}

/// The public API's admission: open without `grpc.callers`, otherwise their tokens; and the
/// per-connection call rate.
fn callers(config: &Config) -> anyhow::Result<CallerAuth> {
    let callers = &config.grpc.callers;
    let rate = config.grpc.max_calls_per_sec_per_connection;
    if callers.is_empty() {
        return Ok(CallerAuth::open().with_rate_limit(rate));
    }
    for (caller, token) in callers {
        anyhow::ensure!(
            !token.is_empty(),
            "grpc.callers.{caller}: the token must not be empty"
        );
    }
    let auth = BearerAuth::for_callers(callers.iter().map(|(c, t)| (c.as_str(), t.as_str())))
        .context("grpc.callers")?;
    info!(
        callers = callers.len(),
        "the public API requires a caller token"
    );
    Ok(CallerAuth::tokens(auth).with_rate_limit(rate))
}

/// Refuses limits that cannot work, before anything listens.
fn check_grpc_limits(config: &Config) -> anyhow::Result<()> {
    let g = &config.grpc;
    anyhow::ensure!(
        g.max_connections > 0,
        "grpc.max_connections must be at least 1"
    );
    anyhow::ensure!(
        g.max_concurrent_streams > 0,
        "grpc.max_concurrent_streams must be at least 1"
    );
    anyhow::ensure!(
        g.max_request_bytes > 0 && g.max_request_bytes <= g.max_buffered_request_bytes,
        "grpc.max_request_bytes must be at least 1 and at most grpc.max_buffered_request_bytes"
    );
    anyhow::ensure!(
        g.idle_timeout_ms > g.keepalive_interval_ms,
        "grpc.idle_timeout_ms must exceed grpc.keepalive_interval_ms: live clients show they \
         are there by answering the keep-alive pings"
    );
    Ok(())
}

/// The stores and plugin gateways every saga engine of this process shares.
fn saga_ports(config: &Config, db: &Database, plugins: &Plugins) -> anyhow::Result<SagaPorts> {
    let payments = PluginPayments::new(plugins.runtime.clone());
    #[cfg(feature = "native-adapters")]
    if config.plugins.native_adapters {
        return native_saga_ports(config, db, payments);
    }
    Ok(SagaPorts {
        orders: db.orders(),
        sagas: db.sagas(),
        payments: Arc::new(payments),
        inventory: Arc::new(PluginInventory::new(
            plugins.runtime.clone(),
            config.plugins.inventory.clone(),
        )),
    })
}

/// [`saga_ports`] with `fakepay` and `local-stock` served in-process by their Rust ports
/// (benchmark builds; `crate::adapters::native`).
#[cfg(feature = "native-adapters")]
fn native_saga_ports(
    config: &Config,
    db: &Database,
    payments: PluginPayments,
) -> anyhow::Result<SagaPorts> {
    use crate::adapters::native::{NativeInventory, NativePayments};
    anyhow::ensure!(
        config.plugins.inventory == "local-stock",
        "plugins.native_adapters serves only local-stock as inventory, not {:?}",
        config.plugins.inventory
    );
    let dir = &config.plugins.dir;
    tracing::warn!("native adapters: fakepay and local-stock run unsandboxed, for benchmarks only");
    Ok(SagaPorts {
        orders: db.orders(),
        sagas: db.sagas(),
        payments: Arc::new(NativePayments::new(db.plugin_kv(), dir, payments)?),
        inventory: Arc::new(NativeInventory::new(db.plugin_kv(), dir)?),
    })
}

/// A saga engine over `ports`, leasing sagas as `worker`.
fn saga_engine(
    config: &Config,
    ports: &SagaPorts,
    changes: &OrderChanges,
    worker: String,
) -> SagaEngine {
    SagaEngine::new(
        ports.clone(),
        Arc::new(SystemClock),
        changes.clone(),
        EngineConfig {
            worker,
            lease: Duration::from_secs(config.saga.lease_secs),
            // A step makes at most two plugin calls (a reconciliation, then the call).
            heartbeat_limit: 2 * oms_plugin_runtime::limits::LONGEST_CALL,
            deadline_cap: (config.saga.step_deadline_cap_ms > 0)
                .then(|| Duration::from_millis(config.saga.step_deadline_cap_ms)),
        },
        Arc::new(rand::random::<f64>),
    )
}

/// Starts `saga.workers` tasks that drive sagas through the plugins. Each has its own lease
/// identity, so they (and other host processes) never run the same saga at once.
///
/// Each worker claims its first saga once the startup load of the plugins has ended: the
/// sagas an earlier process left would otherwise spend their steps' deadlines on plugins
/// still compiling (new orders meanwhile are placed inline and wait for theirs).
fn spawn_saga_workers(
    config: &Config,
    db: &Database,
    service: &OrderService,
    (ports, plugins_loaded): (&SagaPorts, &watch::Receiver<bool>),
    process: &str,
    (background, shutdown): (&TaskWatch, &watch::Receiver<bool>),
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
) {
    // The database says how many workers can make progress at once (one on SQLite's single
    // writer); more would only queue their claims behind each other.
    let workers = db
        .max_saga_workers()
        .map_or(config.saga.workers, |max| config.saga.workers.min(max));
    for n in 0..workers {
        let engine = Arc::new(saga_engine(
            config,
            ports,
            service.changes(),
            format!("{process}-{n}"),
        ));
        let worker_config = WorkerConfig {
            batch: config.saga.batch,
            poll_interval: Duration::from_millis(config.saga.poll_interval_ms),
        };
        let wakeup = service.saga_wakeup();
        let stop = shutdown.clone();
        let mut loaded = plugins_loaded.clone();
        tasks.push(background.spawn("saga worker", shutdown, async move {
            // Ends early only when the loader stopped (shutdown): the worker then stops too.
            let _ = loaded.wait_for(|loaded| *loaded).await;
            worker::run(engine, worker_config, wakeup, stop).await;
            Ok(())
        }));
    }
}

/// Starts the outbox relay and the notification consumer (docs/outbox.md) on the configured
/// broker; the relay wakes on every committed order change. Returns the relay, which a
/// redrive wakes, and the notification consumer's counters, which the metrics export.
/// The webhook channel as `broker.notifications.webhook_*` configure it; a bad secret or CA
/// file stops the host at startup, naming the key.
fn webhook_channel(
    n: &crate::config::NotificationsConfig,
) -> anyhow::Result<Arc<oms_messaging::notifications::WebhookChannel>> {
    use oms_messaging::notifications::{SigningSecret, WebhookChannel, WebhookOptions};
    let signing_secret = if n.webhook_secret.is_empty() {
        None
    } else {
        Some(
            SigningSecret::parse(&n.webhook_secret)
                .context("broker.notifications.webhook_secret")?,
        )
    };
    let extra_roots_pem = match &n.webhook_ca_file {
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!(
                "broker.notifications.webhook_ca_file: reading {}",
                path.display()
            )
        })?),
        None => None,
    };
    let channel = WebhookChannel::new(WebhookOptions {
        egress: oms_egress::EgressPolicy {
            allow_private: n.webhook_allow_private,
        },
        signing_secret,
        extra_roots_pem,
        ..WebhookOptions::default()
    })
    .context("broker.notifications.webhook_*")?;
    Ok(Arc::new(channel))
}

fn spawn_messaging(
    config: &Config,
    db: &Database,
    service: &OrderService,
    (plugins, plugins_loaded): (&Plugins, &watch::Receiver<bool>),
    (background, shutdown): (&TaskWatch, &watch::Receiver<bool>),
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<(
    oms_messaging::relay::Relay,
    Option<Arc<oms_messaging::notifications::NotificationMetrics>>,
)> {
    use oms_application::retry::RetryPolicy;
    use oms_messaging::{broker, host, notifications, relay};
    let b = &config.broker;
    let ms = Duration::from_millis;
    let webhook = if b.notifications.enabled {
        Some(webhook_channel(&b.notifications)?)
    } else {
        None
    };
    let settings = host::MessagingSettings {
        broker: match b.kind {
            crate::config::BrokerKind::InProcess => host::BrokerChoice::InProcess,
            crate::config::BrokerKind::Kafka => host::BrokerChoice::Kafka(broker::KafkaOptions {
                bootstrap_servers: b.bootstrap_servers.clone(),
                delivery_timeout: ms(b.delivery_timeout_ms),
                properties: b.properties.clone(),
                group_instance_id: Some(b.notifications.group_instance_id.clone())
                    .filter(|id| !id.is_empty()),
                assign_all_partitions: b.assign_all_partitions,
            }),
        },
        topics: broker::Topics {
            events: b.topics.events.clone(),
            plugin_changes: b.topics.plugin_changes.clone(),
            dead_letters: b.topics.dead_letters.clone(),
            notification_dead_letters: b.topics.notification_dead_letters.clone(),
        },
        relay: relay::RelayConfig {
            batch_size: b.relay.batch_size,
            max_attempts: b.relay.max_attempts,
            backoff: RetryPolicy {
                initial: ms(b.relay.backoff_base_ms),
                max: ms(b.relay.backoff_max_ms),
            },
            // The lease must outlast a publish: twice the delivery timeout.
            lease: ms(b.delivery_timeout_ms.saturating_mul(2)),
            poll_interval: ms(b.relay.poll_interval_ms),
            retention: Duration::from_secs(b.relay.retention_hours.saturating_mul(3600)),
            linger: ms(b.relay.linger_ms),
            ..relay::RelayConfig::default()
        },
        notifications: webhook.map(|webhook| host::NotificationSettings {
            consumer: "oms-notifications".to_owned(),
            file: (!b.notifications.file.is_empty()).then(|| b.notifications.file.clone().into()),
            log_bodies: b.notifications.log_bodies,
            webhook,
            batch_linger: ms(b.notifications.batch_linger_ms),
        }),
    };
    let formatters: Vec<Arc<dyn notifications::Formatter>> = b
        .notifications
        .formatters
        .iter()
        .map(|name| {
            Arc::new(AfterStartupLoad {
                inner: notifications::plugin::PluginFormatter::new(
                    plugins.runtime.notification(name),
                ),
                loaded: plugins_loaded.clone(),
            }) as Arc<dyn notifications::Formatter>
        })
        .collect();
    let stores = host::MessagingStores {
        outbox: db.outbox(),
        processed_events: db.processed_events(),
    };
    let messaging = host::start(
        settings,
        stores,
        service.changes(),
        formatters,
        shutdown.clone(),
    )
    .context("starting the outbox relay")?;
    for (name, task) in messaging.tasks {
        tasks.push(background.spawn(name, shutdown, async move {
            task.await.context("messaging task panicked")
        }));
    }
    Ok((messaging.relay, messaging.notifications))
}

/// A notification formatter that formats its first event once the startup load of the
/// plugins has ended. A formatter still compiling is not a failing one: without the wait, a
/// backlog of events would spend the consumer's attempts on it and be dead-lettered while a
/// large component compiles.
struct AfterStartupLoad<F> {
    inner: F,
    loaded: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl<F: oms_messaging::notifications::Formatter> oms_messaging::notifications::Formatter
    for AfterStartupLoad<F>
{
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn format(
        &self,
        event: &oms_messaging::event::pb::OrderEvent,
    ) -> Result<
        Vec<oms_messaging::notifications::Notification>,
        oms_messaging::notifications::FormatFailure,
    > {
        // Returns at once after the load; early only when the loader stopped (shutdown).
        let _ = self.loaded.clone().wait_for(|loaded| *loaded).await;
        self.inner.format(event).await
    }
}

/// Deletes expired idempotency keys until shutdown. A failed sweep is logged and retried at
/// the next tick: expired keys are harmless, only storage.
async fn sweep_idempotency_keys(
    service: OrderService,
    every: Duration,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(every);
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticker.tick() => {
                loop {
                    match service.sweep_idempotency_keys(SWEEP_BATCH).await {
                        Ok(n) if u64::from(SWEEP_BATCH) == n => continue,
                        Ok(n) => {
                            if n > 0 { info!(deleted = n, "swept expired idempotency keys"); }
                            break;
                        }
                        Err(e) => { warn!(error = %e, "idempotency sweep failed"); break; }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AfterStartupLoad, api_in_flight, check_grpc_limits};
    use crate::config::Config;
    use futures::FutureExt;
    use oms_messaging::event::pb::OrderEvent;
    use oms_messaging::notifications::{FormatFailure, Formatter, Notification};

    /// Answers "unavailable", as a formatter that is not installed yet does.
    struct NotYet;

    #[async_trait::async_trait]
    impl Formatter for NotYet {
        fn name(&self) -> &str {
            "not-yet"
        }
        async fn format(&self, _: &OrderEvent) -> Result<Vec<Notification>, FormatFailure> {
            Err(FormatFailure::Unavailable("not installed".into()))
        }
    }

    #[tokio::test]
    async fn a_formatter_formats_nothing_before_the_plugins_have_loaded() {
        let (loaded, rx) = tokio::sync::watch::channel(false);
        let formatter = AfterStartupLoad {
            inner: NotYet,
            loaded: rx,
        };
        let event = OrderEvent::default();
        let mut first = Box::pin(formatter.format(&event));
        assert!(
            (&mut first).now_or_never().is_none(),
            "waits while the plugins load (an answer now would spend one of the event's attempts)"
        );
        loaded.send(true).unwrap();
        assert!(matches!(first.await, Err(FormatFailure::Unavailable(_))));
        assert!(
            formatter.format(&event).now_or_never().is_some(),
            "no wait once loaded"
        );
    }

    #[test]
    fn api_calls_leave_database_connections_to_the_background() {
        let mut c = Config::default();
        c.database.max_connections = 64;
        assert_eq!(api_in_flight(&c), c.grpc.max_in_flight_requests);
        // 16 connections: 3 for relay, consumer and sweeper, 2 for the saga workers, 1 for
        // the commit lane.
        c.database.max_connections = 16;
        assert_eq!(api_in_flight(&c), 10);
        c.database.max_connections = 2;
        assert_eq!(api_in_flight(&c), 1);
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(check_grpc_limits(&Config::default()).is_ok());
        let mut c = Config::default();
        c.grpc.idle_timeout_ms = c.grpc.keepalive_interval_ms;
        assert!(check_grpc_limits(&c).is_err());
        let mut c = Config::default();
        c.grpc.max_connections = 0;
        assert!(check_grpc_limits(&c).is_err());
        let mut c = Config::default();
        c.grpc.max_buffered_request_bytes = c.grpc.max_request_bytes - 1;
        assert!(check_grpc_limits(&c).is_err());
    }
}
