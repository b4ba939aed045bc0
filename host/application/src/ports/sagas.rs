//! The saga store port.

use async_trait::async_trait;
use oms_domain::{OrderId, Timestamp};

use super::StoreError;
use super::gateways::PluginCall;
use super::orders::OrderWrite;
use crate::saga::{SagaId, SagaInstance, SagaKind, SagaStatus};

/// Which way a step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDirection {
    Forward,
    Compensate,
}

impl StepDirection {
    /// Stable storage name (`saga_steps.action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Compensate => "compensate",
        }
    }
}

/// How one attempt of a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Succeeded,
    /// Failed for now; the saga retries it.
    Retrying,
    Failed,
    /// The provider's answer is unknown; reconcile before going on.
    Unresolved,
}

impl StepState {
    /// Stable storage name (`saga_steps.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Retrying => "RUNNING",
            Self::Failed => "FAILED",
            Self::Unresolved => "UNRESOLVED",
        }
    }
}

/// The audit row of a step: what was called, with which plugin build and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub step: &'static str,
    pub direction: StepDirection,
    pub call: Option<PluginCall>,
    pub idempotency_key: String,
    pub state: StepState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub at: Timestamp,
}

/// Who may commit a saga change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence<'a> {
    /// The worker holding the saga's lease under this owner name.
    Lease(&'a str),
    /// An operator acting on a parked (COMPENSATION_FAILED) saga, which no worker holds.
    Parked,
}

/// One or more steps' outcome, committed atomically: the saga's progress, the steps' audit
/// rows (with the plugin writes of their calls), and the order change with its outbox rows.
#[derive(Debug)]
pub struct SagaCommit<'a> {
    /// The saga after the step (its `version` is `expected_version + 1`).
    pub saga: &'a SagaInstance,
    pub expected_version: i64,
    /// Who commits: the worker that must still hold the lease, whose lease then lasts until
    /// `lease_until` (dropped when the saga is no longer active); or an operator resuming a
    /// parked saga, which leaves it unleased for any worker to claim.
    pub fence: Fence<'a>,
    pub lease_until: Timestamp,
    /// The audit rows of the steps this commit makes durable, in the order they ran: one
    /// usually, more when steps ran before their commit (`StepCommit::WithNext`), none for
    /// a transition that called nothing. Each call's plugin writes are applied with them.
    pub steps: &'a [StepRecord],
    pub order: Option<OrderWrite<'a>>,
}

/// Saga instances and their steps.
#[async_trait]
pub trait SagaStore: Send + Sync {
    /// Leases up to `limit` active sagas that are due at `now` and not leased by a live
    /// worker, to `owner` until `lease_until`. Safe with several processes: a saga is
    /// leased to one worker at a time (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<SagaInstance>, StoreError>;

    /// Applies `commit` atomically. Under [`Fence::Lease`], `LeaseLost` when the saga is not
    /// at `expected_version` or another worker holds it; under [`Fence::Parked`],
    /// `VersionConflict` when the saga moved on or is no longer parked. The order write fails
    /// as in [`super::OrderStore::save`] (checked first, as the SQL stores do), except that a
    /// leased worker whose saga is stale hears `LeaseLost` whatever the order did. The step's
    /// plugin call's key-value writes (`step.call.kv`) are applied last, in the same
    /// transaction, each key's condition checked as it is written (`KvConflict` when one
    /// fails); last, so that a hot key (a flash sale's stock counter) stays locked for as
    /// short a time as the commit allows.
    async fn commit(&self, commit: SagaCommit<'_>) -> Result<(), StoreError>;

    /// Extends `owner`'s lease of saga `id` to `until`, while the saga is still at
    /// `version` and leased to `owner`: the heartbeat of a worker whose step's call runs
    /// long. `LeaseLost` otherwise.
    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: Timestamp,
    ) -> Result<(), StoreError>;

    /// Makes active saga `id` due at `now` when it waits for a later time (news arrived, such
    /// as a provider's webhook); `false` when it was not waiting. The version is unchanged:
    /// this is scheduling, not state, and a worker that commits meanwhile keeps its own
    /// schedule (the news then waits for that schedule, never for good).
    async fn wake(&self, id: SagaId, now: Timestamp) -> Result<bool, StoreError>;

    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>, StoreError>;

    /// The sagas of an order, oldest first.
    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError>;

    /// Sagas matching `query` (the operators' lists), oldest first.
    async fn find(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>, StoreError>;

    /// The step history of a saga (`saga_steps`): one entry per step and direction, as its
    /// last attempt left it, in the order the steps first ran.
    async fn steps(&self, id: SagaId) -> Result<Vec<StepHistory>, StoreError>;

    /// The plugin builds, as `(plugin name, component digest)`, that served a step of a saga
    /// of an order that is not terminal, or of a saga not finished: the builds later calls
    /// may be pinned to
    /// (`PaymentGateway`'s `pinned`), which the runtime keeps loaded.
    async fn plugin_builds_in_use(&self) -> Result<Vec<(String, String)>, StoreError>;
}

/// Which sagas an operator lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaQuery {
    /// Any of these statuses (at least one).
    pub statuses: Vec<SagaStatus>,
    pub kind: Option<SagaKind>,
    /// Only sagas last changed before this instant (stuck ones).
    pub updated_before: Option<Timestamp>,
    pub limit: u32,
}

/// One `saga_steps` row as read back: a step in one direction, as its last attempt left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepHistory {
    pub step: String,
    /// [`StepDirection::as_str`].
    pub direction: String,
    /// The stored status: `PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED` or `UNRESOLVED`.
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The plugin build (name, version, digest) of the last attempt that reached a plugin.
    pub plugin: Option<(String, String, String)>,
    pub idempotency_key: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}
