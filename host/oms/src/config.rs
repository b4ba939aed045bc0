//! Configuration: built-in defaults, then an optional TOML file, then `OMS_*` environment
//! variables (`__` separates nesting: `OMS_GRPC__LISTEN`, `OMS_DATABASE__URL`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `oms serve` can be told. Every field has a default; see the README's
/// configuration reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub admin: AdminConfig,
    pub database: DatabaseConfig,
    pub idempotency: IdempotencyConfig,
    pub watch: WatchConfig,
    pub plugins: PluginsConfig,
    pub saga: SagaConfig,
    pub broker: BrokerConfig,
    pub health: HealthConfig,
    pub metrics: MetricsConfig,
    pub webhooks: WebhooksConfig,
    pub tracing: TracingConfig,
    pub log: LogConfig,
}

/// Traces (`crate::telemetry`): spans from each gRPC call through its saga steps and plugin
/// calls, with W3C trace context taken from requests and written into the events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP endpoint spans are exported to (a collector's base URL, e.g.
    /// `http://127.0.0.1:4318`); empty exports nothing, while trace context still flows
    /// from requests into events.
    pub otlp_endpoint: String,
    /// Share of new traces recorded when exporting (0.0 to 1.0); a request whose
    /// `traceparent` says sampled is always recorded.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// The Prometheus endpoint (`crate::metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Where `GET /metrics` is served; keep it private (it names plugins and methods).
    pub listen: SocketAddr,
}

/// Payment providers' inbound webhooks (`crate::webhooks`): their own listener, off until
/// `listen` is set. Put it behind the TLS proxy the providers reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where `POST /webhooks/<plugin>` is served (`OMS_WEBHOOKS__LISTEN`); unset: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Largest delivery body accepted; larger ones get 413 unread.
    pub max_body_bytes: usize,
}

/// `grpc.health.v1` checks (`crate::health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often the database, the plugins and the background tasks are checked; also how
    /// long the database may take to answer before it counts as unreachable.
    pub interval_ms: u64,
}

/// The operators' API (`oms.admin.v1`, docs/operations.md): its own listener, off until a
/// token is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; keep it private (loopback or an operators' network).
    pub listen: SocketAddr,
    /// The bearer token every admin call must carry; empty leaves the admin API off. Set it
    /// from the environment (`OMS_ADMIN__TOKEN`) rather than a file.
    pub token: String,
    /// Largest plugin component an upload may carry.
    pub max_upload_bytes: usize,
    /// TLS for the admin API, as for the public one (`grpc.tls_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

/// The public API listener and its limits against hostile or broken clients (docs/api.md,
/// "Limits").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Caller id -> bearer token. When any is set, every `oms.v1` call must carry one of the
    /// tokens (`UNAUTHENTICATED` / `PERMISSION_DENIED` otherwise), and idempotency keys are
    /// scoped per caller. Empty: the API is open (behind a trusted network).
    #[serde(default)]
    pub callers: std::collections::BTreeMap<String, String>,
    /// TLS for the public API: a PEM certificate chain and its PEM private key; both or
    /// neither (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Calls per second one connection may make (bursts up to as many); more are
    /// `RESOURCE_EXHAUSTED` (`RATE_LIMITED`) with when to retry. `0`: unlimited.
    pub max_calls_per_sec_per_connection: u32,
    /// Calls one connection may have running at once (a `WatchOrder` stream counts until it
    /// closes); more are `RESOURCE_EXHAUSTED` (`CONCURRENCY_LIMITED`). `0`: unlimited.
    pub max_calls_per_connection: usize,
    /// Open connections at most; further ones are accepted and closed at once. Keep it well
    /// below the process's file-descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls open at once on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: bytes of request headers (metadata) per call.
    pub max_header_list_bytes: u32,
    /// Largest request message, encoded; larger is RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Largest response message, encoded.
    pub max_response_bytes: usize,
    /// Request bytes being received by all calls together; past it a new message is
    /// RESOURCE_EXHAUSTED until others complete.
    pub max_buffered_request_bytes: usize,
    /// Calls running at once; more wait. Each holds at most one database connection, so it
    /// is capped at `database.max_connections` minus a reserve for the background workers.
    pub max_in_flight_requests: usize,
    /// HTTP/2 PING interval; a peer that does not answer within the timeout is disconnected.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// A connection whose peer sends nothing (not even a preface, a frame or a PING answer)
    /// for this long is closed. Must exceed `keepalive_interval_ms`.
    pub idle_timeout_ms: u64,
    /// Longest time a call may take to arrive and be answered (streams: until the stream
    /// starts); bounds requests whose body never ends.
    pub request_timeout_ms: u64,
}

/// The transactional store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the embedded default) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// PostgreSQL: how many group commits run side by side, each on one connection while it
    /// commits (SQLite has one writer: always one). See docs/saga.md, "Group commit".
    pub commit_lanes: u32,
    /// The most order writes and saga steps one commit carries; 1 turns group commit off.
    /// Unset: 64 on SQLite, off on PostgreSQL (docs/saga.md, "Group commit").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_commit_group: Option<u32>,
}

/// Idempotency-key retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a completed key is remembered.
    pub ttl_secs: u64,
    /// How long a running request holds its key before a retry may take it over.
    pub lease_secs: u64,
    /// How often expired keys are swept.
    pub sweep_interval_secs: u64,
}

/// WatchOrder behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Re-read interval that catches changes committed by other host processes.
    pub poll_interval_ms: u64,
    /// `WatchOrder` streams open at once on this host; more are `RESOURCE_EXHAUSTED`
    /// (`CONCURRENCY_LIMITED`). Each costs a task, a read per poll interval and a look at
    /// every change this host commits.
    pub max_streams: usize,
}

/// Where plugins come from and which ones the sagas use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of `NAME.wasm` + `NAME.toml` pairs, loaded at start and watched for hot
    /// swaps. A missing directory is not fatal: sagas retry until plugins appear.
    pub dir: PathBuf,
    /// Where precompiled plugins are cached, so a restart does not recompile.
    pub cache_dir: PathBuf,
    /// Most MiB of precompiled plugins kept in `cache_dir`; the least recently used are
    /// deleted beyond it.
    pub cache_max_mib: u64,
    /// How often the directory is rescanned for new versions; 0 turns watching off.
    pub watch_interval_ms: u64,
    /// How often the shared release set (uploads and rollbacks through any host process on
    /// this database) is checked for changes to follow.
    pub sync_interval_ms: u64,
    /// The inventory adapter plugin the sagas reserve stock with.
    pub inventory: String,
    /// When a canary is rolled back without an operator.
    #[serde(default)]
    pub canary: CanaryConfig,
    /// Benchmark builds only (`--features native-adapters`): serve `fakepay` and
    /// `local-stock` with their Rust ports in-process instead of the Wasm plugins, to measure
    /// what the sandbox costs (docs/benchmarks.md). Other builds refuse the key.
    #[cfg(feature = "native-adapters")]
    #[serde(default)]
    pub native_adapters: bool,
}

/// The automatic rollback of a canary (docs/operations.md, "Canary"): each host process
/// watches the canaries it serves and aborts one, everywhere, when more than
/// `max_failure_rate` of its calls in the last `window_secs` failed (sandbox faults, an open
/// circuit, `transient` answers; declines and other refusals are answers, not failures), once
/// it made at least `min_calls` calls in that window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Above this share of failed calls (0 < rate <= 1; 1 never aborts), the canary ends.
    pub max_failure_rate: f64,
    pub window_secs: u64,
    /// Fewer calls than this in the window decide nothing.
    pub min_calls: u64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            max_failure_rate: 0.1,
            window_secs: 60,
            min_calls: 20,
        }
    }
}

/// The saga workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaConfig {
    /// Worker tasks in this process (each claims its own batches); 0 runs no sagas here
    /// (an API-only replica). SQLite always uses at most one.
    pub workers: u32,
    /// Sagas one worker drives at the same time.
    pub batch: u32,
    /// Placements this process drives at once on their own tasks right after `CreateOrder`
    /// commits (no worker wake-up, claim or read); orders beyond it go to the workers. 0
    /// leaves every placement to the workers.
    pub inline_placements: u32,
    /// Longest sleep of an idle worker: bounds how late a retry is picked up.
    pub poll_interval_ms: u64,
    /// How long a claimed saga stays leased without progress; after a crash another worker
    /// (or process) resumes it once this has passed.
    pub lease_secs: u64,
    /// Caps every step's retry deadline (0: the step tables' own, e.g. 30 s per placement
    /// step, 10 min per compensation). Lower it to fail fast during provider outages.
    pub step_deadline_cap_ms: u64,
}

/// The event broker, the outbox relay and the notification consumer (see docs/outbox.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `in-process` (embedded: no broker to run) or `kafka`.
    pub kind: BrokerKind,
    /// Kafka `bootstrap.servers` (`host:port,host:port`).
    pub bootstrap_servers: String,
    /// How long the producer tries one message before the relay counts a failed attempt.
    pub delivery_timeout_ms: u64,
    pub topics: BrokerTopicsConfig,
    pub relay: RelayConfig,
    pub notifications: NotificationsConfig,
    /// Consumers read every partition of their topics, assigned by themselves, instead of
    /// joining their group's rebalancing (offsets are still committed under the group): for
    /// a deployment with one notification consumer, or a broker whose group coordination
    /// fails (tansu 0.6, docs/reliability.md). One such consumer per group: two would both
    /// read every event.
    pub assign_all_partitions: bool,
    /// librdkafka properties passed through unchanged (TLS, SASL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Which broker the relay publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    InProcess,
    Kafka,
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTopicsConfig {
    pub events: String,
    pub plugin_changes: String,
    pub dead_letters: String,
    pub notification_dead_letters: String,
}

/// The outbox relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub batch_size: u32,
    /// Failed publish attempts before a row is dead-lettered.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Idle re-check interval (commits wake the relay at once).
    pub poll_interval_ms: u64,
    /// Published rows are deleted after this long.
    pub retention_hours: u64,
    /// How long a woken relay waits after its last round that claimed rows began, so that
    /// concurrent commits share a round; 0 runs a round per wake.
    pub linger_ms: u64,
}

/// The notification consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    pub enabled: bool,
    /// Formatter plugins run on every event.
    pub formatters: Vec<String>,
    /// JSON-lines file receiving e-mail/SMS notifications; empty logs them instead.
    pub file: String,
    /// When notifications go to the log (no `file`): also log their recipient, subject and
    /// body. Off by default, since those carry personal data (names, addresses).
    pub log_bodies: bool,
    /// Standard Webhooks signing secret (`whsec_` + base64); empty sends webhooks unsigned.
    pub webhook_secret: String,
    /// Let webhooks reach loopback, private and link-local addresses (an operator's own
    /// receivers, tests). Metadata and multicast addresses stay refused.
    pub webhook_allow_private: bool,
    /// PEM file of CA certificates trusted for `https://` webhook receivers besides
    /// Mozilla's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca_file: Option<PathBuf>,
    /// The consumer's Kafka `group.instance.id` (static membership), unique per host and
    /// stable across its restarts (a StatefulSet pod name); empty for dynamic membership.
    pub group_instance_id: String,
    /// How long a batch of events waits for more once its first has arrived (its dedup
    /// record is one flushed commit per batch); a notification is delayed by at most this.
    /// 0 handles what has arrived at once.
    pub batch_linger_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `oms=debug,sqlx=warn`; `RUST_LOG` wins if set.
    pub filter: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
                callers: std::collections::BTreeMap::new(),
                tls_cert_file: None,
                tls_key_file: None,
                max_calls_per_sec_per_connection: 0,
                max_calls_per_connection: 0,
                max_connections: 1024,
                max_concurrent_streams: 100,
                max_header_list_bytes: 16 * 1024,
                max_request_bytes: 256 * 1024,
                max_response_bytes: 16 * 1024 * 1024,
                max_buffered_request_bytes: 64 * 1024 * 1024,
                max_in_flight_requests: 12,
                keepalive_interval_ms: 20_000,
                keepalive_timeout_ms: 10_000,
                idle_timeout_ms: 60_000,
                request_timeout_ms: 60_000,
            },
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
                token: String::new(),
                max_upload_bytes: 64 * 1024 * 1024,
                tls_cert_file: None,
                tls_key_file: None,
            },
            database: DatabaseConfig {
                url: "sqlite://./data/oms.db".to_owned(),
                max_connections: 16,
                commit_lanes: 1,
                max_commit_group: None,
            },
            idempotency: IdempotencyConfig {
                ttl_secs: 24 * 60 * 60,
                lease_secs: 60,
                sweep_interval_secs: 300,
            },
            watch: WatchConfig {
                poll_interval_ms: 1000,
                max_streams: 1024,
            },
            plugins: PluginsConfig {
                dir: PathBuf::from("target/plugins"),
                cache_dir: PathBuf::from("./data/plugin-cache"),
                cache_max_mib: 1024,
                watch_interval_ms: 1000,
                sync_interval_ms: 1000,
                inventory: "local-stock".to_owned(),
                canary: CanaryConfig::default(),
                #[cfg(feature = "native-adapters")]
                native_adapters: false,
            },
            saga: SagaConfig {
                workers: 2,
                batch: 64,
                inline_placements: 64,
                poll_interval_ms: 100,
                lease_secs: 30,
                step_deadline_cap_ms: 0,
            },
            broker: BrokerConfig {
                kind: BrokerKind::InProcess,
                bootstrap_servers: "127.0.0.1:9092".to_owned(),
                delivery_timeout_ms: 30_000,
                topics: BrokerTopicsConfig {
                    events: "oms.order-events.v1".to_owned(),
                    plugin_changes: "oms.plugin-changes.v1".to_owned(),
                    dead_letters: "oms.order-events.dlq.v1".to_owned(),
                    notification_dead_letters: "oms.notifications.dlq.v1".to_owned(),
                },
                relay: RelayConfig {
                    batch_size: 500,
                    max_attempts: 10,
                    backoff_base_ms: 200,
                    backoff_max_ms: 60_000,
                    poll_interval_ms: 500,
                    retention_hours: 168,
                    linger_ms: 20,
                },
                notifications: NotificationsConfig {
                    enabled: true,
                    formatters: vec!["email-text".to_owned()],
                    file: String::new(),
                    log_bodies: false,
                    webhook_secret: String::new(),
                    webhook_allow_private: false,
                    webhook_ca_file: None,
                    group_instance_id: String::new(),
                    batch_linger_ms: 50,
                },
                assign_all_partitions: false,
                properties: std::collections::BTreeMap::new(),
            },
            health: HealthConfig { interval_ms: 1000 },
            tracing: TracingConfig {
                otlp_endpoint: String::new(),
                sample_ratio: 1.0,
                service_name: "oms".to_owned(),
            },
            metrics: MetricsConfig {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            },
            webhooks: WebhooksConfig {
                listen: None,
                max_body_bytes: 256 * 1024,
            },
            log: LogConfig {
                filter: "info".to_owned(),
                format: LogFormat::Text,
            },
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// A duration or count that only makes sense above zero (a zero lease or poll interval
    /// would spin, a zero batch never progresses). Named by its key, as in the file.
    #[error("invalid configuration: {key} must be greater than zero")]
    NotPositive { key: &'static str },
    #[error("invalid configuration: tracing.sample_ratio must be between 0.0 and 1.0, not {0}")]
    SampleRatio(f64),
    #[error(
        "invalid configuration: plugins.canary.max_failure_rate must be above 0.0 and at most 1.0, not {0}"
    )]
    FailureRate(f64),
    /// A wait that delays what it holds back by its whole length.
    #[error("invalid configuration: {key} must be at most {max}")]
    TooLarge { key: &'static str, max: u64 },
}

/// The longest notification linger accepted: a batch's events wait for it, and the
/// consumer must still poll Kafka well within its poll interval.
const MAX_BATCH_LINGER_MS: u64 = 10_000;

/// The longest relay linger accepted: every event of a busy relay may wait for it (an
/// order's later events, once per event before them).
const MAX_RELAY_LINGER_MS: u64 = 1_000;

/// What printed or logged secrets are replaced with.
pub const REDACTED: &str = "***";

/// Whether a `broker.properties` key holds a credential (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...). Deliberately broad: hiding a
/// harmless value costs nothing, printing a password cannot be undone.
fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// `url` with the password of its user-info replaced by [`REDACTED`]
/// (`postgres://oms:***@db/oms`); URLs without one are returned as they are.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:{REDACTED}{}", &url[..scheme + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The key an `OMS_*` variable (without the prefix) sets when its value is a secret, which is
/// read as text exactly as given (figment would read `0123` as the number 123): the admin
/// token, the webhook signing secret and the callers' tokens (`OMS_GRPC__CALLERS__<CALLER>`, the caller id in lower case,
/// as figment reads every key).
fn secret_key(var: &str) -> Option<String> {
    let upper = var.to_ascii_uppercase();
    if upper == "ADMIN__TOKEN" {
        return Some("admin.token".to_owned());
    }
    if upper == "BROKER__NOTIFICATIONS__WEBHOOK_SECRET" {
        return Some("broker.notifications.webhook_secret".to_owned());
    }
    upper
        .strip_prefix("GRPC__CALLERS__")
        .filter(|caller| !caller.is_empty() && !caller.contains("__"))
        .map(|caller| format!("grpc.callers.{}", caller.to_ascii_lowercase()))
}

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `OMS_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Every key lives in a section, so only `OMS_SECTION__KEY` variables are
        // configuration; other OMS_* variables (OMS_CONFIG, OMS_TEST_PG_URL, build settings)
        // are not, and must not trip the unknown-key check.
        figment = figment.merge(
            Env::prefixed("OMS_")
                .filter(|key| key.as_str().contains("__") && secret_key(key.as_str()).is_none())
                .split("__"),
        );
        for (var, value) in std::env::vars() {
            if let Some(key) = var.strip_prefix("OMS_").and_then(secret_key) {
                figment = figment.merge(Serialized::default(&key, value));
            }
        }
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses zero where only a positive value works, naming the key. The wiring relies on
    /// it instead of clamping each value where it is used. Negative values never get here:
    /// the fields are unsigned, so figment refuses them naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.grpc;
        let b = &self.broker;
        // `plugins.watch_interval_ms` and `saga.step_deadline_cap_ms` are absent on purpose:
        // for them 0 means "off" and "the step tables' own", as documented.
        let positive: [(&'static str, u64); 25] = [
            ("plugins.sync_interval_ms", self.plugins.sync_interval_ms),
            ("plugins.cache_max_mib", self.plugins.cache_max_mib),
            (
                "plugins.canary.window_secs",
                self.plugins.canary.window_secs,
            ),
            ("plugins.canary.min_calls", self.plugins.canary.min_calls),
            ("health.interval_ms", self.health.interval_ms),
            (
                "admin.max_upload_bytes",
                u64::try_from(self.admin.max_upload_bytes).unwrap_or(u64::MAX),
            ),
            ("grpc.keepalive_interval_ms", g.keepalive_interval_ms),
            ("grpc.keepalive_timeout_ms", g.keepalive_timeout_ms),
            ("grpc.idle_timeout_ms", g.idle_timeout_ms),
            ("grpc.request_timeout_ms", g.request_timeout_ms),
            ("idempotency.ttl_secs", self.idempotency.ttl_secs),
            ("idempotency.lease_secs", self.idempotency.lease_secs),
            (
                "idempotency.sweep_interval_secs",
                self.idempotency.sweep_interval_secs,
            ),
            ("watch.poll_interval_ms", self.watch.poll_interval_ms),
            (
                "watch.max_streams",
                u64::try_from(self.watch.max_streams).unwrap_or(u64::MAX),
            ),
            ("saga.batch", u64::from(self.saga.batch)),
            ("saga.poll_interval_ms", self.saga.poll_interval_ms),
            ("saga.lease_secs", self.saga.lease_secs),
            ("broker.delivery_timeout_ms", b.delivery_timeout_ms),
            ("broker.relay.batch_size", u64::from(b.relay.batch_size)),
            ("broker.relay.max_attempts", u64::from(b.relay.max_attempts)),
            ("broker.relay.backoff_base_ms", b.relay.backoff_base_ms),
            ("broker.relay.backoff_max_ms", b.relay.backoff_max_ms),
            ("broker.relay.poll_interval_ms", b.relay.poll_interval_ms),
            ("broker.relay.retention_hours", b.relay.retention_hours),
        ];
        if let Some(&(key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::NotPositive { key });
        }
        // Waits that delay what they hold back by their whole length: bounded.
        let bounded: [(&'static str, u64, u64); 2] = [
            (
                "broker.notifications.batch_linger_ms",
                b.notifications.batch_linger_ms,
                MAX_BATCH_LINGER_MS,
            ),
            (
                "broker.relay.linger_ms",
                b.relay.linger_ms,
                MAX_RELAY_LINGER_MS,
            ),
        ];
        if let Some(&(key, _, max)) = bounded.iter().find(|(_, value, max)| value > max) {
            return Err(ConfigError::TooLarge { key, max });
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return Err(ConfigError::SampleRatio(self.tracing.sample_ratio));
        }
        let rate = self.plugins.canary.max_failure_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(ConfigError::FailureRate(rate));
        }
        Ok(())
    }

    /// A copy safe to print or log: the database password and every credential-like
    /// `broker.properties` value (see [`is_secret_property`]) replaced by [`REDACTED`]. The
    /// one place secrets are hidden: whatever prints configuration goes through here.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.database.url = redact_url(&self.database.url);
        if !copy.admin.token.is_empty() {
            REDACTED.clone_into(&mut copy.admin.token);
        }
        let webhook_secret = &mut copy.broker.notifications.webhook_secret;
        if !webhook_secret.is_empty() {
            REDACTED.clone_into(webhook_secret);
        }
        for token in copy.grpc.callers.values_mut() {
            REDACTED.clone_into(token);
        }
        for (key, value) in &mut copy.broker.properties {
            if is_secret_property(key) {
                *value = REDACTED.to_owned();
            }
        }
        copy
    }

    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency.ttl_secs)
    }
}

#[cfg(test)]
// figment's Jail API fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "oms.toml",
                "[grpc]\nlisten = \"0.0.0.0:6000\"\n[database]\nurl = \"sqlite://x.db\"\n",
            )?;
            jail.set_env("OMS_DATABASE__URL", "postgres://postgres@127.0.0.1/oms");
            jail.set_env("OMS_IDEMPOTENCY__TTL_SECS", "60");
            jail.set_env("OMS_TEST_PG_URL", "not configuration");
            jail.set_env("OMS_GRPC__MAX_CONNECTIONS", "64");
            let c = Config::load(Some(Path::new("oms.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.grpc.listen.to_string(), "0.0.0.0:6000");
            assert_eq!(c.database.url, "postgres://postgres@127.0.0.1/oms");
            assert_eq!(c.idempotency.ttl_secs, 60);
            assert_eq!(c.grpc.max_connections, 64);
            assert_eq!(c.watch.poll_interval_ms, 1000);
            Ok(())
        });
    }

    #[test]
    fn broker_section_from_file_and_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "oms.toml",
                "[broker]\nkind = \"kafka\"\n[broker.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
            )?;
            jail.set_env("OMS_BROKER__BOOTSTRAP_SERVERS", "k1:9092,k2:9092");
            jail.set_env("OMS_BROKER__RELAY__BATCH_SIZE", "1000");
            jail.set_env("OMS_BROKER__NOTIFICATIONS__BATCH_LINGER_MS", "0");
            jail.set_env("OMS_BROKER__RELAY__LINGER_MS", "0");
            let c = Config::load(Some(Path::new("oms.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.broker.kind, BrokerKind::Kafka);
            assert_eq!(c.broker.bootstrap_servers, "k1:9092,k2:9092");
            assert_eq!(c.broker.relay.batch_size, 1000);
            // 0 is a valid linger (off), unlike the durations `validate` refuses at 0; a
            // linger past 10 s is refused by name.
            assert_eq!(c.broker.notifications.batch_linger_ms, 0);
            assert!(c.validate().is_ok());
            let mut long = c.clone();
            long.broker.notifications.batch_linger_ms = 10_001;
            assert_eq!(
                long.validate().map_err(|e| e.to_string()),
                Err("invalid configuration: broker.notifications.batch_linger_ms must be at most 10000".to_owned())
            );
            // The relay's linger likewise: 0 (a round per wake) is valid, past 1 s is not.
            assert_eq!(c.broker.relay.linger_ms, 0);
            let mut long = c.clone();
            long.broker.relay.linger_ms = 1_001;
            assert_eq!(
                long.validate().map_err(|e| e.to_string()),
                Err(
                    "invalid configuration: broker.relay.linger_ms must be at most 1000".to_owned()
                )
            );
            assert_eq!(
                c.broker
                    .properties
                    .get("security.protocol")
                    .map(String::as_str),
                Some("SASL_SSL")
            );
            Ok(())
        });
    }

    #[test]
    fn zero_durations_are_refused_by_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("oms.toml", "[saga]\nlease_secs = 0\n")?;
            let e = Config::load(Some(Path::new("oms.toml"))).expect_err("zero lease");
            assert_eq!(
                e.to_string(),
                "invalid configuration: saga.lease_secs must be greater than zero"
            );
            jail.create_file("neg.toml", "[broker.relay]\npoll_interval_ms = -5\n")?;
            let e = Config::load(Some(Path::new("neg.toml"))).expect_err("negative");
            assert!(e.to_string().contains("poll_interval_ms"), "{e}");
            Ok(())
        });
        let mut c = Config::default();
        c.plugins.watch_interval_ms = 0;
        c.saga.step_deadline_cap_ms = 0;
        assert!(c.validate().is_ok(), "0 means off / the tables' own there");
    }

    #[test]
    fn tokens_are_taken_verbatim_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            // Read as a number, this would become 123 (or fail to be a string at all).
            jail.set_env("OMS_ADMIN__TOKEN", "0123");
            jail.set_env("OMS_GRPC__CALLERS__SHOP_FRONT", "007");
            jail.create_file("oms.toml", "[grpc.callers]\npos = \"from-file\"\n")?;
            let c = Config::load(Some(Path::new("oms.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.admin.token, "0123");
            assert_eq!(
                c.grpc.callers.get("shop_front").map(String::as_str),
                Some("007")
            );
            assert_eq!(
                c.grpc.callers.get("pos").map(String::as_str),
                Some("from-file")
            );
            jail.set_env("OMS_ADMIN__TOKEN", "s3cret=with spaces");
            jail.set_env(
                "OMS_BROKER__NOTIFICATIONS__WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.admin.token, "s3cret=with spaces");
            assert_eq!(
                c.broker.notifications.webhook_secret,
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            );
            let shown = toml::to_string_pretty(&c.redacted()).map_err(|e| e.to_string())?;
            assert!(
                !shown.contains("007") && !shown.contains("s3cret") && !shown.contains("whsec"),
                "{shown}"
            );
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.database.url = "postgres://oms:s3cret@db:5432/oms".to_owned();
        for (k, v) in [
            ("sasl.password", "p1"),
            ("ssl.key.password", "p2"),
            ("sasl.oauthbearer.client.secret", "p3"),
            ("security.protocol", "SASL_SSL"),
        ] {
            c.broker.properties.insert(k.to_owned(), v.to_owned());
        }
        let shown = toml::to_string_pretty(&c.redacted()).unwrap_or_default();
        for secret in ["s3cret", "p1", "p2", "p3"] {
            assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
        }
        assert!(shown.contains("postgres://oms:***@db:5432/oms"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(
            redact_url("postgres://postgres@db/oms"),
            "postgres://postgres@db/oms"
        );
        assert_eq!(
            redact_url("sqlite://./data/oms.db"),
            "sqlite://./data/oms.db"
        );
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[grpc]\nlistne = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            assert!(matches!(
                Config::load(Some(Path::new("nope.toml"))),
                Err(ConfigError::MissingFile(_))
            ));
            Ok(())
        });
    }
}
