//! Loads, sandboxes, hot-swaps and calls the OMS's Wasm component plugins (infrastructure
//! layer). See `docs/plugins.md` for the plugin author's view.
//!
//! - [`engine`]: wasmtime configuration (component model, pooling allocator, epoch
//!   interruption, optional fuel metering) and the precompiled-artifact cache.
//! - [`manifest`], [`limits`]: what a plugin declares, and the defaults and ceilings applied.
//! - [`capabilities`]: the host functions (log, config/secrets, clock, kv, HTTP), one module
//!   each; [`kv`] the storage port behind the kv capability (and an in-memory store).
//! - [`plugin`]: loading and checking one version; [`registry`] hot swap and rollback;
//!   [`watcher`] the watched directory; [`breaker`], [`metrics`] per-plugin health.
//! - [`clients`]: typed handles for each world; [`PluginRuntime`] ties it together.

pub mod bindings;
pub mod breaker;
mod call;
pub mod capabilities;
pub mod clients;
pub mod engine;
pub mod error;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod plugin;
pub mod registry;
mod runtime;
pub mod state;
pub mod watcher;

pub use call::{CallInfo, KvMode};
pub use clients::{Called, InventoryPlugin, NotificationFormatter, PaymentPlugin};
pub use engine::{CacheOutcome, EngineOptions};
pub use error::{BreakerCause, CallError, CallErrorKind, LoadError, PluginError};
pub use kv::KvError;
pub use manifest::{CONTRACT_VERSION, Manifest, PluginKind, manifest_digest};
pub use registry::{CanaryStatus, MAX_RETAINED, PluginStatus, RETAIN_AT_LEAST, VersionInfo};
pub use runtime::{PluginRuntime, RuntimeOptions, SetupError, manifests_in};
pub use watcher::{DirWatcher, WatchHandle};
