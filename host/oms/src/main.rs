//! `oms`: the command-line entry point of the OMS host.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use oms::Config;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "oms",
    version,
    about = "Order Management System host with Wasm plugins"
)]
struct Cli {
    /// TOML configuration file; `OMS_*` environment variables override it.
    #[arg(long, global = true, env = "OMS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: gRPC API, database, background workers.
    Serve,
    /// Print the effective configuration (defaults + file + environment) as TOML, secrets
    /// redacted.
    Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            // Secrets (database password, broker credentials) are shown as `***`.
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
        Command::Serve => {
            oms::telemetry::init(&config.log);
            let server = oms::start(config).await?;
            let stop = server.shutdown_handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                info!("shutdown requested; finishing in-flight calls");
                let _ = stop.send(true);
            });
            server.wait().await.context("server stopped with an error")
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
