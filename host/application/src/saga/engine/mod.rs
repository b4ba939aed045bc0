//! The generic orchestrator: runs any saga table one step at a time, durably.
//!
//! - this file: the engine, its claim of due sagas and the loop that drives one saga;
//! - [`steps`]: one forward step or one compensation, and turning back after a failure;
//! - [`outcome`]: ending a saga and committing every step's outcome with its order change;
//! - [`run`]: the saga as its worker holds it, with the steps that ran since its last commit.

mod outcome;
mod run;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use oms_domain::{DomainError, Order, Timestamp};
use tracing::{debug, warn};

use super::flows;
use super::instance::{SagaInstance, SagaStatus};
use crate::changes::OrderChanges;
use crate::clock::Clock;
use crate::error::AppError;
use crate::plugin_kv::AbsentKeys;
use crate::ports::{InventoryGateway, OrderStore, PaymentGateway, SagaStore, StoreError};
use run::Run;

/// How a step left the saga.
#[derive(Debug)]
enum Next {
    /// The next step is due now: keep going while we hold the lease, from the order as this
    /// step left it (no need to read it again: a commit that finds it moved since is
    /// refused by its version, and the step then reads it afresh).
    Continue(Box<Order>),
    /// Wait for a retry time, or the saga ended.
    Stop,
}

/// Why a step did not get its outcome committed.
#[derive(Debug)]
enum StepError {
    /// The order moved on (an address change) between reading it and committing: the step
    /// runs again on the fresh order. Its gateway call is idempotent by key, so it is the
    /// same call.
    OrderMoved,
    /// The plugin state the step's call read changed before the step committed (another
    /// step took the same stock meanwhile), or a key the call created without reading it was
    /// there after all (a replay): the call's writes were not applied, and the step runs its
    /// call again on the new state, with the same idempotency key, reading every key it
    /// creates from then on ([`AbsentKeys::Read`]).
    PluginStateMoved,
    /// This worker no longer owns the saga (another worker claimed it after the lease ran
    /// out, or it moved on): stop at once; calling the provider again would be for nothing.
    LeaseLost,
    /// The domain refused the step's change for the order as read (`payment in status
    /// AUTHORIZED cannot be authorized`). Mostly a stale worker: its lease lapsed before it
    /// read the order, another worker ran the step and committed, and this one read the
    /// order as that commit left it. [`SagaEngine::drive_steps`] tells it from a real
    /// failure by the lease.
    Refused(DomainError),
    Failed(AppError),
}

impl From<AppError> for StepError {
    fn from(e: AppError) -> Self {
        Self::Failed(e)
    }
}

impl From<DomainError> for StepError {
    fn from(e: DomainError) -> Self {
        Self::Refused(e)
    }
}

/// The stores and gateways a saga engine works with.
#[derive(Clone)]
pub struct SagaPorts {
    pub orders: Arc<dyn OrderStore>,
    pub sagas: Arc<dyn SagaStore>,
    pub payments: Arc<dyn PaymentGateway>,
    pub inventory: Arc<dyn InventoryGateway>,
}

/// How one engine (one worker) behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lease owner name: unique per worker (host process + task).
    pub worker: String,
    /// How long a claim lasts without a commit; a crashed worker's sagas are picked up by
    /// others after this.
    pub lease: Duration,
    /// How long a step's worker keeps renewing its lease while the step's calls run (see
    /// the heartbeat in [`steps`]): the longest those calls can take, after which the lease
    /// lapses as a crashed worker's would. The host sets it from the plugin runtime's
    /// ceiling on a call's deadline.
    pub heartbeat_limit: Duration,
    /// Caps every step's and compensation's retry deadline (the tables' values otherwise):
    /// for tests, and for operators who prefer failing fast over waiting out an outage.
    pub deadline_cap: Option<Duration>,
}

/// Runs saga tables. One per worker task; cheap to share behind an `Arc`.
pub struct SagaEngine {
    ports: SagaPorts,
    clock: Arc<dyn Clock>,
    changes: OrderChanges,
    config: EngineConfig,
    /// Uniform samples in `[0, 1)` for backoff jitter (injected so tests can pin them).
    jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
}

/// How many commits in a row a worker lets be refused because the order or a plugin key
/// moved under the steps before it lets the saga wait for its next claim: a bound against an
/// order edited in a tight loop. Counted over the run, not per step: steps that commit with
/// the next one ([`StepCommit::WithNext`](super::definition::StepCommit)) all run again after
/// each refusal. A provider call's outcome is not run again but committed onto the fresh
/// order, up to as many times for that one commit (`commit_called`).
const ORDER_MOVED_ROUNDS: usize = 5;

impl SagaEngine {
    pub fn new(
        ports: SagaPorts,
        clock: Arc<dyn Clock>,
        changes: OrderChanges,
        config: EngineConfig,
        jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Self {
        Self {
            ports,
            clock,
            changes,
            config,
            jitter,
        }
    }

    fn capped(&self, deadline: Duration) -> Duration {
        self.config
            .deadline_cap
            .map_or(deadline, |cap| deadline.min(cap))
    }

    /// Claims up to `limit` due sagas and drives each as far as it can go now. Returns how
    /// many were claimed (0 means: nothing due).
    pub async fn run_due(&self, limit: u32) -> Result<usize, AppError> {
        let (claimed, now) = self.claim_due(limit).await?;
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|saga| self.drive(saga, now))).await;
        Ok(count)
    }

    /// Leases up to `limit` due sagas to this worker; returns them with the claim's time,
    /// which [`Self::drive`] needs.
    pub async fn claim_due(&self, limit: u32) -> Result<(Vec<SagaInstance>, Timestamp), AppError> {
        let now = self.clock.now();
        let claimed = self
            .ports
            .sagas
            .claim_due(
                &self.config.worker,
                now,
                now.saturating_add(self.config.lease),
                limit,
            )
            .await?;
        Ok((claimed, now))
    }

    /// This engine's lease owner name.
    pub fn worker(&self) -> &str {
        &self.config.worker
    }

    /// How long this engine's leases last.
    pub fn lease(&self) -> Duration {
        self.config.lease
    }

    /// Runs the steps of a saga this worker claimed at `claimed_at` until the saga must wait
    /// or ends. An error leaves the saga as last committed; its lease expires and a worker
    /// (maybe another process) resumes it.
    pub async fn drive(&self, mut saga: SagaInstance, claimed_at: Timestamp) {
        saga.reclaim(claimed_at, self.config.lease);
        self.drive_from(saga, None).await;
    }

    /// Drives a saga that was committed already leased to this engine (see
    /// [`SagaLease`](crate::ports::SagaLease)), starting from `order` as committed with it:
    /// no claim and no read.
    pub async fn drive_started(&self, saga: SagaInstance, order: Order) {
        self.drive_from(saga, Some(order)).await;
    }

    async fn drive_from(&self, saga: SagaInstance, held: Option<Order>) {
        // The saga's span: a child of the request's when the request drives it (placement
        // on its own task), a root of its own when a worker resumes it.
        let span = tracing::debug_span!(
            "saga",
            saga.kind = saga.kind.as_str(),
            saga.id = %saga.id,
            order.id = %saga.order_id,
        );
        tracing::Instrument::instrument(self.drive_steps(saga, held), span).await;
    }

    async fn drive_steps(&self, saga: SagaInstance, mut held: Option<Order>) {
        // Whatever ends this loop, steps not committed yet are dropped with `run`: their
        // calls left nothing outside their pending writes (`StepCommit::WithNext`).
        let mut saga = Run::new(saga);
        loop {
            match self.step(&mut saga, held.take()).await {
                Ok(Next::Continue(order)) => held = Some(*order),
                Ok(Next::Stop) => return,
                Err(StepError::LeaseLost) => {
                    debug!(saga = %saga.id, "saga lease lost to another worker; stopping");
                    return;
                }
                Err(StepError::OrderMoved | StepError::PluginStateMoved) => {
                    debug!(saga = %saga.id, "order or plugin state kept moving under the saga; it resumes later");
                    return;
                }
                Err(StepError::Refused(e)) => {
                    // A worker that lost its lease has nothing to report: the saga is
                    // another's. One that holds it reports the refusal as the failure it is.
                    if matches!(self.renew_lease(&saga).await, Err(StoreError::LeaseLost)) {
                        debug!(saga = %saga.id, error = %e, "step refused after the lease was lost; stopping");
                    } else {
                        let e = AppError::from(e);
                        warn!(saga = %saga.id, order = %saga.order_id, error = %e, "saga step failed; it resumes after its lease");
                    }
                    return;
                }
                Err(StepError::Failed(e)) => {
                    warn!(saga = %saga.id, order = %saga.order_id, error = %e, "saga step failed; it resumes after its lease");
                    return;
                }
            }
        }
    }

    /// Extends this worker's lease of `saga` by a lease from now, while the saga is still at
    /// the version this worker committed and leased to it: the heartbeat of a long call, and
    /// how a refused step tells whether its worker still owns the saga.
    async fn renew_lease(&self, saga: &SagaInstance) -> Result<(), StoreError> {
        let until = self.clock.now().saturating_add(self.config.lease);
        self.ports
            .sagas
            .renew_lease(saga.id, &self.config.worker, saga.version, until)
            .await
    }

    async fn load_order(&self, saga: &SagaInstance) -> Result<Order, AppError> {
        self.ports.orders.get(saga.order_id).await?.ok_or_else(|| {
            AppError::Internal(format!("saga {} lost order {}", saga.id, saga.order_id))
        })
    }

    /// One step, forward or backward, committed with its effects (or kept for the next
    /// commit). Re-runs it when a concurrent edit of the order moved its version, or another
    /// step changed the plugin state its call decided from: the commit was rolled back, so
    /// the saga goes back to its committed state, and steps run since that commit run again.
    ///
    /// After [`ORDER_MOVED_ROUNDS`] refused commits in a row (counted over the run, as the
    /// steps run again one `step` at a time) the saga waits for its next claim.
    async fn step(&self, saga: &mut Run, mut held: Option<Order>) -> Result<Next, StepError> {
        let definition = flows::definition(saga.kind);
        loop {
            let order = match held.take() {
                Some(order) => order,
                None => self.load_order(saga).await?,
            };
            // What a step starts from, for reading a run (off unless the filter asks).
            debug!(
                saga.version = saga.version,
                saga.status = saga.status.as_str(),
                saga.step = saga.step,
                saga.unflushed = saga.unflushed.as_ref().map_or(0, |u| u.records().count()),
                order.version = order.version().0,
                order.status = %order.status(),
                order.reservation = order.reservation_status().as_str(),
                order.payment = %order.payment_status(),
                "saga step starts"
            );
            let result = match saga.status {
                SagaStatus::Running => self.forward(definition, saga, order).await,
                SagaStatus::Compensating => self.backward(definition, saga, order).await,
                _ => return Ok(Next::Stop),
            };
            match result {
                Err(refused @ (StepError::OrderMoved | StepError::PluginStateMoved)) => {
                    saga.revert();
                    if matches!(refused, StepError::PluginStateMoved) {
                        saga.absent_keys = AbsentKeys::Read;
                    }
                    saga.refused += 1;
                    if saga.refused >= ORDER_MOVED_ROUNDS {
                        return Err(refused);
                    }
                }
                other => return other,
            }
        }
    }
}
