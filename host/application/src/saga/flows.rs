//! The OMS's sagas, as step tables.

use std::time::Duration;

use super::definition::{OnFailure, Operation, SagaDefinition, StepCommit, StepDef};
use super::instance::SagaKind;
use crate::retry::RetryPolicy;

const STEP_DEADLINE: Duration = Duration::from_secs(30);
const COMPENSATION_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// How often a payment waiting for the customer (contract 0.2's `requires-action`) is polled
/// with `get-payment`; a webhook from the provider wakes the saga sooner.
pub(crate) const ACTION_POLL: Duration = Duration::from_secs(5);

/// The longest a placement waits for a customer action, from the saga's start, whatever
/// expiry the provider gives: an order cannot stay PENDING for good.
pub(crate) const MAX_ACTION_WAIT: Duration = Duration::from_secs(60 * 60);

/// Placement: reserve -> authorize (the last reversible step) -> confirm (the pivot).
/// Nothing is announced as confirmed before the pivot commits. With plugins that stay inside
/// the host (no network grant) the three steps commit once, with the pivot: until then
/// nothing of the reservation or the hold exists outside the step's pending writes.
pub const PLACE_ORDER: SagaDefinition = SagaDefinition {
    kind: SagaKind::PlaceOrder,
    steps: &[
        StepDef {
            name: "reserve-inventory",
            forward: Operation::ReserveInventory,
            compensation: Some(Operation::ReleaseInventory),
            retry: RetryPolicy::DEFAULT,
            deadline: STEP_DEADLINE,
            on_failure: OnFailure::CompensateThenReject,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "authorize-payment",
            forward: Operation::AuthorizePayment,
            compensation: Some(Operation::VoidPayment),
            retry: RetryPolicy::DEFAULT,
            deadline: STEP_DEADLINE,
            on_failure: OnFailure::CompensateThenFailPayment,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "confirm-order",
            forward: Operation::ConfirmOrder,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            // A local transaction: it only fails while the database is down, and after the
            // pivot only forward recovery exists, so it retries for as long as it takes.
            deadline: Duration::MAX,
            on_failure: OnFailure::Park,
            commit: StepCommit::Own,
        },
    ],
    compensation_deadline: COMPENSATION_DEADLINE,
};

/// Cancellation of an order in CANCELLING: undo the money first (a hold or a capture), then
/// the stock, then record the cancellation. Every step is itself a compensation, so failures
/// retry and finally park for an operator.
/// With plugins that stay inside the host the three steps commit once, with the last: a
/// crash before it leaves the hold and the reservation as they were, and the next worker
/// undoes them again with the same keys.
pub const CANCEL_ORDER: SagaDefinition = SagaDefinition {
    kind: SagaKind::CancelOrder,
    steps: &[
        StepDef {
            name: "undo-payment",
            forward: Operation::UndoPayment,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: COMPENSATION_DEADLINE,
            on_failure: OnFailure::Park,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "undo-reservation",
            forward: Operation::UndoReservation,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: COMPENSATION_DEADLINE,
            on_failure: OnFailure::Park,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "finish-cancellation",
            forward: Operation::FinishCancellation,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: Duration::MAX,
            on_failure: OnFailure::Park,
            commit: StepCommit::Own,
        },
    ],
    compensation_deadline: COMPENSATION_DEADLINE,
};

/// Fulfillment of a CONFIRMED order: allocate the stock, capture the money, record it.
/// With plugins that stay inside the host the three steps commit once, with the last (as for
/// placement and cancellation).
pub const FULFILL_ORDER: SagaDefinition = SagaDefinition {
    kind: SagaKind::FulfillOrder,
    steps: &[
        StepDef {
            name: "commit-inventory",
            forward: Operation::CommitInventory,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: STEP_DEADLINE,
            on_failure: OnFailure::Park,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "capture-payment",
            forward: Operation::CapturePayment,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: STEP_DEADLINE,
            on_failure: OnFailure::Park,
            commit: StepCommit::WithNext,
        },
        StepDef {
            name: "mark-fulfilled",
            forward: Operation::MarkFulfilled,
            compensation: None,
            retry: RetryPolicy::DEFAULT,
            deadline: Duration::MAX,
            on_failure: OnFailure::Park,
            commit: StepCommit::Own,
        },
    ],
    compensation_deadline: COMPENSATION_DEADLINE,
};

/// A refund of a captured payment, full or partial: the provider refunds, then the order
/// records it. Forward-only: a refund is not undone.
pub const REFUND_ORDER: SagaDefinition = SagaDefinition {
    kind: SagaKind::RefundOrder,
    steps: &[StepDef {
        name: "refund-payment",
        forward: Operation::RefundPayment,
        compensation: None,
        retry: RetryPolicy::DEFAULT,
        deadline: COMPENSATION_DEADLINE,
        on_failure: OnFailure::Park,
        commit: StepCommit::Own,
    }],
    compensation_deadline: COMPENSATION_DEADLINE,
};

/// Every table, for lookups by kind.
pub const ALL: [&SagaDefinition; 4] = [&PLACE_ORDER, &CANCEL_ORDER, &FULFILL_ORDER, &REFUND_ORDER];

/// The table of a kind.
pub fn definition(kind: SagaKind) -> &'static SagaDefinition {
    match kind {
        SagaKind::PlaceOrder => &PLACE_ORDER,
        SagaKind::CancelOrder => &CANCEL_ORDER,
        SagaKind::FulfillOrder => &FULFILL_ORDER,
        SagaKind::RefundOrder => &REFUND_ORDER,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tables_are_well_formed() {
        for def in ALL {
            assert_eq!(definition(def.kind).kind, def.kind);
            let names: HashSet<_> = def.steps.iter().map(|s| s.name).collect();
            assert_eq!(
                names.len(),
                def.steps.len(),
                "{:?}: step names are unique",
                def.kind
            );
        }
    }

    /// The pivot is last and cannot be compensated; every reversible step before it can.
    #[test]
    fn placement_pivots_last() {
        let steps = PLACE_ORDER.steps;
        let (pivot, reversible) = steps.split_last().expect("placement has steps");
        assert_eq!(pivot.forward, Operation::ConfirmOrder);
        assert!(pivot.compensation.is_none());
        assert_eq!(pivot.on_failure, OnFailure::Park);
        assert!(reversible.iter().all(|s| s.compensation.is_some()));
    }

    /// A step that commits with the next one needs a next one that commits, and no later
    /// step before that commit may call the same gateway: it would not see the pending
    /// plugin writes.
    #[test]
    fn deferred_steps_are_followed_by_a_commit_and_do_not_share_a_plugin() {
        fn gateway(op: Operation) -> &'static str {
            match op {
                Operation::ReserveInventory
                | Operation::ReleaseInventory
                | Operation::CommitInventory
                | Operation::UndoReservation => "inventory",
                Operation::AuthorizePayment
                | Operation::VoidPayment
                | Operation::CapturePayment
                | Operation::RefundPayment
                | Operation::UndoPayment => "payment",
                Operation::ConfirmOrder
                | Operation::FinishCancellation
                | Operation::MarkFulfilled => "local",
            }
        }
        for def in ALL {
            for (i, step) in def.steps.iter().enumerate() {
                if step.commit != StepCommit::WithNext {
                    continue;
                }
                let rest = &def.steps[i + 1..];
                let until = rest
                    .iter()
                    .position(|s| s.commit == StepCommit::Own)
                    .unwrap_or_else(|| panic!("{}: nothing commits after it", step.name));
                for later in &rest[..=until] {
                    assert!(
                        gateway(later.forward) == "local"
                            || gateway(later.forward) != gateway(step.forward),
                        "{} and {} call the same gateway before a commit",
                        step.name,
                        later.name
                    );
                }
            }
        }
    }
}
