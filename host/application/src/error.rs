//! The errors a use case can return. The transport maps each variant to exactly one status
//! code (docs/api.md has the table).

use oms_domain::{DomainError, MoneyError, Version};

use crate::ports::StoreError;
use crate::saga::{SagaKind, SagaStatus};

/// One invalid field of a request, named by its path in the request (`items[0].sku`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// The unfinished saga that blocked a change: which operation, and whether it runs or waits
/// for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningOperation {
    pub kind: SagaKind,
    pub status: SagaStatus,
}

/// Why a use case did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; nothing was executed or stored.
    #[error("invalid request: {} field(s) violated", .0.len())]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    /// The client's `expected_version` is stale.
    #[error("version conflict: the order is at version {}", current.0)]
    VersionConflict { current: Version },
    /// The order's (or saga's) state does not allow the operation: an illegal transition.
    #[error("{0}")]
    IllegalTransition(String),
    /// A capture or refund asks for more than the payment allows (or for an amount that
    /// cannot be represented).
    #[error("{0}")]
    AmountExceeded(String),
    /// An amount in another currency than the order's. The request is wrong, not the order's
    /// state, so it names the field like [`Self::InvalidArgument`].
    #[error("{}: {}", .0.field, .0.description)]
    CurrencyMismatch(FieldViolation),
    /// The idempotency key was first used with a different request.
    #[error("idempotency key was already used for a different request to {method}; use a new key")]
    IdempotencyMismatch { method: String },
    /// A request with this idempotency key is still running.
    #[error("a request with this idempotency key is in progress; retry later")]
    IdempotencyInProgress,
    /// Another operation (saga) on the order has not finished: at most one runs per order,
    /// and one parked for an operator blocks the next until it is resolved. Not final: the
    /// same request succeeds (or fails for its own reasons) once that operation has ended.
    #[error(
        "another operation on this order has not finished{}; retry when it has",
        running.map(|r| format!(" ({} is {})", r.kind.as_str(), r.status.as_str())).unwrap_or_default()
    )]
    OperationInProgress { running: Option<RunningOperation> },
    /// Fulfillment has begun (a fulfillment saga running or parked, stock committed, money
    /// captured): a cancellation could no longer undo it. Final: the way back is a refund.
    #[error("{0}")]
    FulfillmentStarted(String),
    /// A dependency (database) is down or overloaded; safe to retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data: nothing the caller can fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// Final outcomes are stored under the idempotency key and replayed; transient ones free
    /// the key so a retry executes again.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_)
                | Self::VersionConflict { .. }
                | Self::IllegalTransition(_)
                | Self::AmountExceeded(_)
                | Self::FulfillmentStarted(_)
        )
    }
}

impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidArgument { field, reason } => {
                Self::InvalidArgument(vec![FieldViolation::new(field, reason)])
            }
            DomainError::FulfillmentStarted { .. } => Self::FulfillmentStarted(e.to_string()),
            DomainError::CurrencyMismatch {
                field,
                expected,
                actual,
            } => Self::CurrencyMismatch(FieldViolation::new(
                field,
                format!("must be in the order's currency {expected}, not {actual}"),
            )),
            DomainError::Money(MoneyError::CurrencyMismatch { left, right }) => {
                Self::CurrencyMismatch(FieldViolation::new(
                    "amount",
                    format!("currency mismatch: {left} vs {right}"),
                ))
            }
            DomainError::AmountExceeded(_)
            | DomainError::Money(MoneyError::Overflow | MoneyError::Negative) => {
                Self::AmountExceeded(e.to_string())
            }
            DomainError::IllegalOrderTransition { .. }
            | DomainError::IllegalPaymentTransition { .. } => {
                Self::IllegalTransition(e.to_string())
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("order".to_owned()),
            StoreError::VersionConflict { current } => Self::VersionConflict { current },
            // The service answers `KeyExists` by the key's record; should it ever surface,
            // "retry" is what the key's other request makes true.
            StoreError::LeaseLost | StoreError::KeyExists => Self::IdempotencyInProgress,
            StoreError::SagaActive => Self::OperationInProgress { running: None },
            StoreError::Unavailable(m) => Self::Unavailable(m),
            // Only saga steps write plugin state, and they run the call again instead; any
            // other caller may retry.
            e @ StoreError::KvConflict { .. } => Self::Unavailable(e.to_string()),
            StoreError::Corrupt(m) => Self::Internal(m),
        }
    }
}
