//! Ports: what the application needs from infrastructure. One trait per table (or group of
//! tables written together), implemented once for both databases in `oms-persistence`.

mod gateways;
mod idempotency;
mod orders;
mod outbox;
mod plugin_kv;
mod plugin_releases;
mod plugins;
mod processed_events;
mod sagas;

pub use gateways::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, GatewayResult, InventoryGateway,
    MAX_PUBLIC_REASON_CHARS, PaymentGateway, PluginCall, ProviderPayment, ProviderPaymentState,
};
pub use idempotency::{BeginOutcome, IdempotencyStore};
pub use orders::{OrderQuery, OrderStore, OrderWrite, SagaLease};
pub use outbox::{AggregateType, Backlog, DeadLetter, OutboxRow, OutboxStore};
pub use plugin_kv::PluginKvStore;
pub use plugin_releases::{
    AuditEntry, CanaryEnd, CanaryRelease, NewCanary, NewRelease, PluginRelease, PluginReleaseStore,
    ReleaseAction, StoredBuild,
};
pub use plugins::{
    CanaryInfo, DisabledPlugin, PAYMENT_WORLD, PluginBuild, PluginCatalog, PluginInfo,
};
pub use processed_events::ProcessedEventStore;
pub use sagas::{
    Fence, SagaCommit, SagaQuery, SagaStore, StepDirection, StepHistory, StepRecord, StepState,
};

use oms_domain::Version;

/// Storage failures, classified by what the caller should do about them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The row is not at the expected version; `current` is what it is at.
    #[error("version conflict (current {})", current.0)]
    VersionConflict { current: Version },
    /// The lease this write relied on is no longer the writer's; the write was rolled back.
    /// For an order write: the idempotency key's lease was taken over by another request.
    /// For a saga commit under [`Fence::Lease`]: the saga moved on or another worker claimed
    /// it, and this worker must stop driving it.
    #[error("lease lost")]
    LeaseLost,
    /// An order write that inserts its idempotency record found the key already recorded
    /// (in any state); the write was rolled back.
    #[error("idempotency key already recorded")]
    KeyExists,
    /// Connection refused, pool exhausted, serialization failure: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The write would start a saga while another is active for the same order (at most one
    /// runs per order); nothing was written.
    #[error("another saga is active for this order")]
    SagaActive,
    /// A plugin call's key-value writes, committed with its saga step, found `key` no longer
    /// as the call saw it (another step changed it meanwhile, or a counter would leave its
    /// bounds): nothing was written, and the step runs its call again on the new state.
    #[error("plugin state changed under the call (namespace {namespace}, key {key})")]
    KvConflict { namespace: String, key: String },
    /// Stored data does not parse into domain values: a bug or manual tampering.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}
