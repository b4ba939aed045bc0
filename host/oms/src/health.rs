//! `grpc.health.v1` that means something: the host reports SERVING only while it can do its
//! job, re-checked every `health.interval_ms`:
//! - the database answers (`SELECT 1` within the interval);
//! - the startup load of the plugins has finished, and a payment provider and the
//!   configured inventory adapter are installed;
//! - no background task (saga workers, relay, notification consumer, sweeper, admin API) has
//!   ended before shutdown.
//!
//! Both the overall status (service `""`) and `oms.v1.OrderService` follow it, so a load
//! balancer's health check takes the host out of rotation while it cannot place orders.
//! Every change of status is logged with its reasons.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oms_persistence::Database;
use oms_plugin_runtime::{PluginKind, PluginRuntime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::adapters::RuntimeCatalog;

/// Background tasks that ended while the host was meant to be running.
#[derive(Clone, Default)]
pub struct TaskWatch {
    ended: Arc<Mutex<Vec<&'static str>>>,
}

impl TaskWatch {
    /// Spawns `task`; if it ends before `shutdown` turns true, its name is recorded and the
    /// host reports NOT_SERVING.
    pub fn spawn(
        &self,
        name: &'static str,
        shutdown: &watch::Receiver<bool>,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> JoinHandle<anyhow::Result<()>> {
        let ended = Arc::clone(&self.ended);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // A panic is caught here as well: the inner task is its own tokio task.
            let outcome = match tokio::spawn(task).await {
                Ok(result) => result,
                Err(e) => Err(anyhow::anyhow!("{name} panicked: {e}")),
            };
            if !*shutdown.borrow() {
                warn!(
                    task = name,
                    ?outcome,
                    "background task ended before shutdown"
                );
                ended.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            }
            outcome
        })
    }

    fn ended(&self) -> Vec<&'static str> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the health checks look at.
pub struct Checks {
    pub db: Database,
    pub plugins: PluginRuntime,
    pub inventory: String,
    pub tasks: TaskWatch,
    /// Which plugins are still loading.
    pub catalog: RuntimeCatalog,
    /// Whether the startup load of the plugins has finished.
    pub plugins_loaded: watch::Receiver<bool>,
}

impl Checks {
    /// Why the host cannot serve now; empty when it can.
    async fn problems(&self, within: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.db.ping(within).await {
            problems.push(format!("database unreachable: {e}"));
        }
        if !*self.plugins_loaded.borrow() {
            // Orders are accepted meanwhile and wait; a balancer should still prefer a
            // process that serves them at once.
            problems.push(format!(
                "plugins still loading: {}",
                self.catalog.still_loading().join(", ")
            ));
        }
        let payments = self
            .plugins
            .list()
            .iter()
            .any(|p| p.current.kind == PluginKind::PaymentProvider);
        if !payments {
            problems.push("no payment provider plugin is installed".to_owned());
        }
        if self.plugins.kind_of(&self.inventory) != Some(PluginKind::InventoryAdapter) {
            problems.push(format!(
                "the inventory adapter {:?} (plugins.inventory) is not installed",
                self.inventory
            ));
        }
        for task in self.tasks.ended() {
            problems.push(format!("background task {task:?} has stopped"));
        }
        problems
    }
}

/// Checks once, so that the host starts serving with a status that means something, then
/// spawns the task that re-checks every `interval` until shutdown.
pub async fn start(
    reporter: HealthReporter,
    checks: Checks,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    let first = checks.problems(interval).await;
    report(&reporter, &first).await;
    tokio::spawn(run(reporter, checks, interval, first, shutdown))
}

async fn run(
    reporter: HealthReporter,
    checks: Checks,
    interval: Duration,
    mut reported: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // The end of the plugins' startup load is checked at once, not at the next tick.
    let mut loaded = checks.plugins_loaded.clone();
    let mut loading = !*loaded.borrow();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            r = loaded.changed(), if loading => loading = r.is_ok() && !*loaded.borrow(),
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break; } else { continue },
        }
        let problems = checks.problems(interval).await;
        if problems != reported {
            report(&reporter, &problems).await;
            reported = problems;
        }
    }
    // Draining: load balancers stop sending new calls while in-flight ones finish.
    set(&reporter, ServingStatus::NotServing).await;
    Ok(())
}

async fn report(reporter: &HealthReporter, problems: &[String]) {
    let status = if problems.is_empty() {
        info!("health: SERVING");
        ServingStatus::Serving
    } else {
        warn!(?problems, "health: NOT_SERVING");
        ServingStatus::NotServing
    };
    set(reporter, status).await;
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    use oms_grpc::pb::order_service_server::OrderServiceServer;
    use tonic::server::NamedService;
    reporter.set_service_status("", status).await;
    let api = <OrderServiceServer<oms_grpc::OrderApi> as NamedService>::NAME;
    reporter.set_service_status(api, status).await;
}
