//! Configuration: built-in defaults, then an optional TOML file, then `OMS_*` environment
//! variables (`__` separates nesting: `OMS_GRPC__LISTEN`, `OMS_DATABASE__URL`).

use std::net::SocketAddr;
use std::path::Path;
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
    pub database: DatabaseConfig,
    pub idempotency: IdempotencyConfig,
    pub watch: WatchConfig,
    pub log: LogConfig,
}

/// The public API listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

/// The transactional store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the embedded default) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
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
            },
            database: DatabaseConfig {
                url: "sqlite://./data/oms.db".to_owned(),
                max_connections: 16,
            },
            idempotency: IdempotencyConfig {
                ttl_secs: 24 * 60 * 60,
                lease_secs: 60,
                sweep_interval_secs: 300,
            },
            watch: WatchConfig {
                poll_interval_ms: 1000,
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
        figment = figment.merge(Env::prefixed("OMS_").split("__"));
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))
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
            let c = Config::load(Some(Path::new("oms.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.grpc.listen.to_string(), "0.0.0.0:6000");
            assert_eq!(c.database.url, "postgres://postgres@127.0.0.1/oms");
            assert_eq!(c.idempotency.ttl_secs, 60);
            assert_eq!(c.watch.poll_interval_ms, 1000);
            Ok(())
        });
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
