//! Host capabilities offered to plugins, one module each, all in the same shape:
//! - a grant built once per plugin version from its manifest (`from_manifest`), which is where
//!   a bad grant is refused at load time;
//! - the WIT host implementation on [`HostState`](crate::state::HostState), which checks the
//!   grant on every call (an un-granted capability answers `denied`, it is never unlinked, so
//!   a plugin that merely imports it still loads);
//! - its own unit tests.
//!
//! Log, config/secrets and clock are always granted; kv and HTTP only when the manifest says so.
//! A guest's stdout and stderr go to the log like `log` records ([`stdio`]).

pub mod clock;
pub mod config;
pub mod http;
mod http_tls;
pub mod kv;
pub mod log;
pub(crate) mod stdio;

use std::sync::Arc;

use crate::error::LoadError;
use crate::kv::PluginKvStore;
use crate::manifest::Manifest;

/// Everything a plugin version may use, resolved from its manifest at load; shared by all of
/// its calls.
#[derive(Debug)]
pub struct PluginContext {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub log: log::LogPolicy,
    pub config: config::PluginConfig,
    pub kv: kv::KvGrant,
    pub http: Option<Arc<http::HttpGrant>>,
}

impl PluginContext {
    /// Resolves every grant of `manifest`; refuses one that is malformed.
    pub fn from_manifest(
        manifest: &Manifest,
        store: Option<Arc<dyn PluginKvStore>>,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            name: manifest.name.as_str().into(),
            version: manifest.version.as_str().into(),
            log: log::LogPolicy::from_manifest(manifest),
            config: config::PluginConfig::from_manifest(manifest),
            kv: kv::KvGrant::from_manifest(manifest, store)?,
            http: http::HttpGrant::from_manifest(manifest)?.map(Arc::new),
        })
    }
}
