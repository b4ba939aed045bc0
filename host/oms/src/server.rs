//! `serve`: connects the database, wires the use cases behind the gRPC API (with health and
//! reflection), and runs background workers until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use oms_application::changes::OrderChanges;
use oms_application::clock::SystemClock;
use oms_application::{OrderService, ServiceConfig};
use oms_grpc::OrderApi;
use oms_persistence::{Database, DatabaseOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::config::Config;

/// Expired idempotency keys deleted per sweep batch: bounded so a sweep never holds long
/// locks.
const SWEEP_BATCH: u32 = 1_000;

/// A server started by [`start`].
pub struct RunningServer {
    /// The bound address (useful when the configured port was 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    db: Database,
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

    /// A handle that triggers shutdown from elsewhere (signal handlers).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // Either a `true` was sent or every sender is gone: both mean stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Starts the host as configured and returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    let options = DatabaseOptions {
        max_connections: config.database.max_connections,
        ..DatabaseOptions::default()
    };
    let db = oms_persistence::connect(&config.database.url, &options)
        .await
        .with_context(|| format!("opening database {}", redact(&config.database.url)))?;
    let service = OrderService::new(
        db.orders(),
        db.idempotency(),
        OrderChanges::default(),
        Arc::new(SystemClock),
        ServiceConfig {
            idempotency_ttl: config.idempotency_ttl(),
            idempotency_lease: Duration::from_secs(config.idempotency.lease_secs),
            watch_poll_interval: Duration::from_millis(config.watch.poll_interval_ms),
        },
    );

    let listener = TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", config.grpc.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<oms_grpc::pb::order_service_server::OrderServiceServer<OrderApi>>()
        .await;
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

    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(OrderApi::new(service.clone()).into_server())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stopped(shutdown_rx.clone()),
        );
    let grpc_task = tokio::spawn(async move {
        grpc.await.context("gRPC server failed")?;
        Ok(())
    });

    let sweeper = tokio::spawn(sweep_idempotency_keys(
        service.clone(),
        Duration::from_secs(config.idempotency.sweep_interval_secs.max(1)),
        shutdown_rx,
    ));

    info!(%addr, database = %redact(&config.database.url), "oms serving gRPC");
    Ok(RunningServer {
        addr,
        shutdown,
        tasks: vec![grpc_task, sweeper],
        db,
    })
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

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://oms:s3cret@db:5432/oms"),
            "postgres://oms:***@db:5432/oms"
        );
        assert_eq!(
            redact("postgres://postgres@db/oms"),
            "postgres://postgres@db/oms"
        );
        assert_eq!(redact("sqlite://./data/oms.db"), "sqlite://./data/oms.db");
    }
}
