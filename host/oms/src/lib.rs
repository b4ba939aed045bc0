//! The OMS host: configuration, wiring of the layers, and the `serve` runtime. The binary in
//! `main.rs` is a thin CLI over this library, so tests can start the same server in-process.

pub mod adapters;
pub mod config;
pub mod health;
mod http;
pub mod metrics;
pub mod plugin_kit;
pub mod plugins;
pub mod server;
pub mod telemetry;
pub mod webhooks;

pub use config::Config;
pub use server::{RunningServer, start};
