//! Sagas as data: step tables the generic engine runs.

use std::time::Duration;

use super::instance::SagaKind;
use crate::retry::RetryPolicy;

/// What a step does. Each maps to one gateway call or one local order transition in the
/// engine's executor; tables only name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ReserveInventory,
    ReleaseInventory,
    CommitInventory,
    AuthorizePayment,
    VoidPayment,
    CapturePayment,
    RefundPayment,
    /// Void a hold or refund a capture, whichever this order has; nothing if neither.
    UndoPayment,
    /// Release the reservation if one is held.
    UndoReservation,
    /// The pivot of placement: CONFIRMED + `OrderConfirmed`.
    ConfirmOrder,
    FinishCancellation,
    MarkFulfilled,
}

impl Operation {
    /// A stable name, part of the idempotency key sent to the provider: never rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReserveInventory => "reserve",
            Self::ReleaseInventory => "release",
            Self::CommitInventory => "commit",
            Self::AuthorizePayment => "authorize",
            Self::VoidPayment => "void",
            Self::CapturePayment => "capture",
            Self::RefundPayment => "refund",
            Self::UndoPayment => "undo-payment",
            Self::UndoReservation => "undo-reservation",
            Self::ConfirmOrder => "confirm",
            Self::FinishCancellation => "finish-cancellation",
            Self::MarkFulfilled => "mark-fulfilled",
        }
    }
}

/// What a step's permanent failure (or its exhausted retries) makes of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Compensate the completed steps in reverse, then reject the order (inventory refused).
    CompensateThenReject,
    /// Compensate, then mark the payment failed (provider declined).
    CompensateThenFailPayment,
    /// There is no going back (after the pivot, or a compensating flow such as cancel): park
    /// the saga and the order in COMPENSATION_FAILED for an operator.
    Park,
}

/// When a step's outcome becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepCommit {
    /// Committed before the next step runs.
    Own,
    /// When its call stayed inside the host (the plugin has no network grant, so everything
    /// the call did is in the plugin writes the commit applies) and the saga goes straight
    /// on, committed together with the next step instead. A crash, or a refused commit,
    /// before then loses the call and its writes together, as if it had never run, and the
    /// saga runs the step again with the same idempotency key. Only for steps whose plugin
    /// no later step calls before that commit (it would not see the pending writes). When
    /// the next step's plugin has a network grant, the pending steps commit alone before its
    /// call goes out (`GatewayError::CommitFirst`): nothing a provider does may depend on a
    /// step a refused commit would take back.
    WithNext,
}

/// One row of a saga's table.
#[derive(Debug, Clone, Copy)]
pub struct StepDef {
    /// Stable name, recorded per step and part of idempotency keys: never rename.
    pub name: &'static str,
    pub forward: Operation,
    /// Undoes `forward` when a later step fails; `None` for steps with nothing to undo.
    pub compensation: Option<Operation>,
    pub retry: RetryPolicy,
    /// How long transient failures of this step are retried before they count as failure.
    pub deadline: Duration,
    pub on_failure: OnFailure,
    pub commit: StepCommit,
}

/// A saga kind's whole table.
#[derive(Debug, Clone, Copy)]
pub struct SagaDefinition {
    pub kind: SagaKind,
    pub steps: &'static [StepDef],
    /// How long a compensation is retried before the saga parks for an operator.
    pub compensation_deadline: Duration,
}

impl SagaDefinition {
    pub fn step(&self, index: usize) -> Option<&StepDef> {
        self.steps.get(index)
    }
}
