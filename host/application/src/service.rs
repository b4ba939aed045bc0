//! The order service: the use cases share its dependencies and its idempotency runner.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oms_domain::{Order, OrderEvent, Timestamp, Version};

use crate::changes::OrderChanges;
use crate::clock::Clock;
use crate::error::AppError;
use crate::idempotency::{
    ClaimGuard, IdempotencyClaim, IdempotencyCompletion, IdempotencyRequest, StoredOutcome,
};
use crate::outbox::OutboxMessage;
use crate::ports::{
    BeginOutcome, IdempotencyStore, OrderStore, OrderWrite, PluginCatalog, SagaLease, SagaStore,
    StoreError,
};
use crate::saga::{SagaEngine, SagaInstance};

/// How a use case's order write records its idempotency key.
pub(crate) enum KeyWrite {
    /// Completes the claim `begin` handed out.
    Claimed(IdempotencyClaim),
    /// Inserts the record completed, in the write's transaction (see
    /// [`OrderService::idempotent_insert`]).
    Unclaimed {
        request: IdempotencyRequest,
        created_at: Timestamp,
        expires_at: Timestamp,
    },
}

/// Tunables of the service, with the defaults documented in the README.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How long a completed idempotency key is remembered (default 24 h).
    pub idempotency_ttl: Duration,
    /// How long a running request holds its key before another may take it over, in case the
    /// holder crashed (default 60 s; must exceed the longest request).
    pub idempotency_lease: Duration,
    /// How often a watcher re-reads an order without a local change notification, to see
    /// changes made by other host processes (default 1 s).
    pub watch_poll_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            idempotency_lease: Duration::from_secs(60),
            watch_poll_interval: Duration::from_secs(1),
        }
    }
}

/// The application's entry point for every order use case (one file each in `use_cases/`).
#[derive(Clone)]
pub struct OrderService {
    pub(crate) orders: Arc<dyn OrderStore>,
    /// Read by the use cases to decide whether a change may run beside the order's sagas.
    pub(crate) sagas: Arc<dyn SagaStore>,
    pub(crate) idempotency: Arc<dyn IdempotencyStore>,
    pub(crate) changes: OrderChanges,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: ServiceConfig,
    /// Wakes the saga workers when a write started a saga, so placement begins at once
    /// instead of at the next poll.
    pub(crate) saga_wakeup: Arc<tokio::sync::Notify>,
    /// Drives a new order's placement in this process at once, when configured.
    pub(crate) placement: Option<Arc<InlinePlacement>>,
    /// The installed plugins, when known: an order naming a payment provider that is not
    /// installed is refused at once instead of failing its payment step after the deadline.
    pub(crate) plugins: Option<Arc<dyn PluginCatalog>>,
}

/// Placement driven by the process that accepted the order: right after the create commit,
/// with the order in memory, under a lease taken in that same commit. No worker wake-up, no
/// claim, no read of the order. The saga row is durable like any other: if this process
/// dies, a worker (in any process) resumes it once the lease runs out.
///
/// At most `max_in_flight` placements run this way at once; an order created beyond that is
/// left to the workers, as before.
pub struct InlinePlacement {
    engine: Arc<SagaEngine>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl InlinePlacement {
    pub fn new(engine: Arc<SagaEngine>, max_in_flight: usize) -> Self {
        Self {
            engine,
            permits: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
        }
    }

    /// A slot for one more placement, if one is free.
    pub(crate) fn try_start(self: &Arc<Self>) -> Option<PlacementSlot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(PlacementSlot {
            placement: Arc::clone(self),
            permit,
        })
    }
}

/// A reserved slot: the lease to write with the saga, then the drive.
pub(crate) struct PlacementSlot {
    placement: Arc<InlinePlacement>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl PlacementSlot {
    pub fn lease(&self, now: oms_domain::Timestamp) -> SagaLease<'_> {
        let engine = &self.placement.engine;
        SagaLease {
            owner: engine.worker(),
            until: now.saturating_add(engine.lease()),
        }
    }

    /// Drives the committed `saga` from `order` on its own task; the slot frees when it
    /// stops (done, or waiting for a retry that the workers then pick up).
    pub fn drive(self, saga: SagaInstance, order: Order) {
        let engine = Arc::clone(&self.placement.engine);
        let permit = self.permit;
        // The request's span goes along: the saga's steps are part of its trace.
        let drive = async move {
            engine.drive_started(saga, order).await;
            drop(permit);
        };
        tokio::spawn(tracing::Instrument::in_current_span(drive));
    }
}

impl OrderService {
    pub fn new(
        orders: Arc<dyn OrderStore>,
        sagas: Arc<dyn SagaStore>,
        idempotency: Arc<dyn IdempotencyStore>,
        changes: OrderChanges,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
    ) -> Self {
        Self {
            orders,
            sagas,
            idempotency,
            changes,
            clock,
            config,
            saga_wakeup: Arc::new(tokio::sync::Notify::new()),
            placement: None,
            plugins: None,
        }
    }

    /// Drives the placement of each new order in this process at once (see
    /// [`InlinePlacement`]).
    #[must_use]
    pub fn with_inline_placement(mut self, placement: InlinePlacement) -> Self {
        self.placement = Some(Arc::new(placement));
        self
    }

    /// Refuses orders naming a payment provider `plugins` does not have installed.
    #[must_use]
    pub fn with_plugins(mut self, plugins: Arc<dyn PluginCatalog>) -> Self {
        self.plugins = Some(plugins);
        self
    }

    pub fn changes(&self) -> &OrderChanges {
        &self.changes
    }

    /// Notified whenever a committed write started a saga; the saga workers wait on it.
    pub fn saga_wakeup(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.saga_wakeup)
    }

    /// Runs a mutating use case under the request's idempotency key, if any.
    ///
    /// `op` receives the claim and must pass a completion built with [`Self::completion`]
    /// into its [`OrderWrite`], so that success and its record commit together.
    pub(crate) async fn idempotent<F, Fut>(
        &self,
        request: Option<IdempotencyRequest>,
        op: F,
    ) -> Result<Order, AppError>
    where
        F: FnOnce(Option<IdempotencyClaim>) -> Fut,
        Fut: Future<Output = Result<Order, AppError>>,
    {
        let Some(request) = request else {
            return op(None).await;
        };
        let begun = self
            .idempotency
            .begin(
                &request.scope,
                &request.fingerprint,
                self.clock.now(),
                self.config.idempotency_lease,
                self.config.idempotency_ttl,
            )
            .await?;
        // `oms_idempotency_hits_total{method, outcome}`: requests answered from the key.
        let hit = |outcome: &'static str| {
            let method = request.scope.method.clone();
            metrics::counter!("oms_idempotency_hits_total", "method" => method, "outcome" => outcome)
                .increment(1);
        };
        let claim = match begun {
            BeginOutcome::Proceed(claim) => claim,
            BeginOutcome::Replay(outcome) => {
                hit("replayed");
                return outcome.replay();
            }
            BeginOutcome::Mismatch => {
                hit("mismatch");
                return Err(AppError::IdempotencyMismatch {
                    method: request.scope.method,
                });
            }
            BeginOutcome::InProgress => {
                hit("in_progress");
                return Err(AppError::IdempotencyInProgress);
            }
        };
        let guard = ClaimGuard::new(claim.clone(), Arc::clone(&self.idempotency));
        let result = op(Some(claim.clone())).await;
        match &result {
            Ok(_) => guard.disarm(),
            Err(error) => {
                if let Some(outcome) = StoredOutcome::failure(error) {
                    self.idempotency
                        .complete(&claim, &outcome, self.clock.now())
                        .await?;
                    guard.disarm();
                }
                // Otherwise the guard releases the key on drop: a transient failure must let
                // the retry execute.
            }
        }
        result
    }

    /// CreateOrder's idempotency: one commit. `op`'s write inserts the key's record,
    /// completed with the new order, in the create's own transaction (no claim before it).
    /// Only when the key already has a record (a replay, a different request, a request
    /// still running under `begin`'s claim, a dead record) is the create rolled back and the
    /// request run by [`Self::idempotent`], whose `begin` applies the rules to that record,
    /// and which runs `op` again under a claim only if the record was dead.
    ///
    /// Nothing is left behind when `op` fails: its write either commits with the record or
    /// not at all (a dropped request rolls its transaction back). `op` has no final error to
    /// store: it inserts a new order, so it fails only transiently, and a retry executes.
    pub(crate) async fn idempotent_insert<F, Fut>(
        &self,
        request: Option<IdempotencyRequest>,
        op: F,
    ) -> Result<Order, AppError>
    where
        F: Fn(Option<KeyWrite>) -> Fut,
        Fut: Future<Output = Result<Order, StoreError>>,
    {
        let Some(request) = request else {
            return Ok(op(None).await?);
        };
        let now = self.clock.now();
        let unclaimed = KeyWrite::Unclaimed {
            request: request.clone(),
            created_at: now,
            expires_at: now.saturating_add(self.config.idempotency_ttl),
        };
        match op(Some(unclaimed)).await {
            Err(StoreError::KeyExists) => {}
            done => return Ok(done?),
        }
        self.idempotent(Some(request), |claim| async {
            Ok(op(claim.map(KeyWrite::Claimed)).await?)
        })
        .await
    }

    /// The completion that records `order` as the response under `key`.
    pub(crate) fn completion(
        key: Option<KeyWrite>,
        order: &Order,
    ) -> Option<IdempotencyCompletion> {
        let outcome = StoredOutcome::success(order);
        key.map(|key| match key {
            KeyWrite::Claimed(claim) => IdempotencyCompletion::Claimed { claim, outcome },
            KeyWrite::Unclaimed {
                request,
                created_at,
                expires_at,
            } => IdempotencyCompletion::Unclaimed {
                request,
                outcome,
                created_at,
                expires_at,
            },
        })
    }

    /// Saves a changed order with its events, idempotency completion and the saga it starts,
    /// then tells watchers (and the saga workers). `expected` is the version the change was
    /// based on (`None` for an insert).
    pub(crate) async fn commit(
        &self,
        order: &Order,
        expected: Option<Version>,
        events: &[OrderEvent],
        claim: Option<IdempotencyClaim>,
        start_saga: Option<&SagaInstance>,
    ) -> Result<(), AppError> {
        self.commit_leased(
            order,
            expected,
            events,
            claim.map(KeyWrite::Claimed),
            start_saga,
            None,
        )
        .await?;
        Ok(())
    }

    /// [`Self::commit`], with the saga it starts leased to `lease`'s owner, who drives it
    /// (the workers are not woken for it), and its idempotency key written as `key` says.
    /// Returns the store's error as it is: [`Self::idempotent_insert`] needs to tell
    /// `KeyExists` apart.
    pub(crate) async fn commit_leased(
        &self,
        order: &Order,
        expected: Option<Version>,
        events: &[OrderEvent],
        key: Option<KeyWrite>,
        start_saga: Option<&SagaInstance>,
        lease_saga_to: Option<SagaLease<'_>>,
    ) -> Result<(), StoreError> {
        let outbox: Vec<OutboxMessage> = events
            .iter()
            .map(|e| OutboxMessage::for_event(order, e))
            .collect();
        let completion = Self::completion(key, order);
        self.orders
            .save(OrderWrite {
                order,
                expected_version: expected,
                outbox: &outbox,
                idempotency: completion.as_ref(),
                start_saga,
                lease_saga_to,
            })
            .await?;
        self.changes.publish(order);
        if start_saga.is_some() && lease_saga_to.is_none() {
            self.saga_wakeup.notify_one();
        }
        Ok(())
    }

    /// Deletes expired idempotency records; the sweeper in `serve` calls this periodically.
    pub async fn sweep_idempotency_keys(&self, limit: u32) -> Result<u64, AppError> {
        Ok(self
            .idempotency
            .sweep_expired(self.clock.now(), limit)
            .await?)
    }
}
