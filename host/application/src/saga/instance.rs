//! A saga instance: its identity, progress and the data its steps hand on.

use std::fmt;

use oms_domain::{OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A saga's id (UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SagaId(pub Uuid);

impl SagaId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Which table a saga runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaKind {
    PlaceOrder,
    CancelOrder,
    FulfillOrder,
    RefundOrder,
}

impl SagaKind {
    pub const ALL: [SagaKind; 4] = [
        Self::PlaceOrder,
        Self::CancelOrder,
        Self::FulfillOrder,
        Self::RefundOrder,
    ];

    /// Stable storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlaceOrder => "place_order",
            Self::CancelOrder => "cancel_order",
            Self::FulfillOrder => "fulfill_order",
            Self::RefundOrder => "refund_order",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// Undoing completed steps in reverse after a failure.
    Compensating,
    Succeeded,
    Compensated,
    /// Retries exhausted: waits for an operator; never dropped silently.
    CompensationFailed,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Succeeded,
        Self::Compensated,
        Self::CompensationFailed,
    ];

    /// Stable storage name (the `saga_instances.status` CHECK lists them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Succeeded => "SUCCEEDED",
            Self::Compensated => "COMPENSATED",
            Self::CompensationFailed => "COMPENSATION_FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether workers still have something to do.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }
}

/// Which way a saga runs its table: forward through the steps, or backward through their
/// compensations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Direction {
    Running,
    Compensating,
}

impl Direction {
    /// The active status that runs in this direction.
    pub fn status(self) -> SagaStatus {
        match self {
            Self::Running => SagaStatus::Running,
            Self::Compensating => SagaStatus::Compensating,
        }
    }
}

/// What steps learn and later steps (or compensations) need. Stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaData {
    /// The inventory adapter's reservation id, once reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// The provider's payment id, once authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The component digest of the inventory plugin build that made the reservation: its
    /// release and commit are pinned to that build (`InventoryGateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_build: Option<String>,
    /// The digest of the payment plugin build that authorized: capture, void and refund
    /// are pinned to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_build: Option<String>,
    /// Why the saga turned to compensation, for the order's failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The step whose failure started the compensation; its `on_failure` decides how the
    /// order ends once everything is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<usize>,
    /// For a parked saga: whether it was running forward or compensating when it parked, so
    /// an operator's retry resumes in that direction. Stored as `RUNNING` / `COMPENSATING`;
    /// anything else makes the row unreadable (corrupt), never a silent default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_while: Option<Direction>,
    /// A refund saga's amount, in the order's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_amount_minor: Option<i64>,
    /// Whether a call of the current step has really reached the plugin (and failed) since
    /// the step began or the saga was resumed from a dead worker. Until then a refusal that
    /// never called (an open circuit) cannot fail the step at its deadline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_tried: bool,
}

/// One saga as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaInstance {
    pub id: SagaId,
    pub kind: SagaKind,
    pub order_id: OrderId,
    pub status: SagaStatus,
    /// Running: the index of the next step to run. Compensating: how many completed steps
    /// remain to undo (the next to undo is `step - 1`).
    pub step: usize,
    /// Attempts of the current step so far.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    /// When the current step's retries run out (`None` until its first attempt).
    pub step_deadline: Option<Timestamp>,
    pub last_error: Option<String>,
    pub data: SagaData,
    /// Optimistic lock of the saga row, bumped by every commit.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl SagaInstance {
    /// A saga about to run its first step now.
    pub fn start(kind: SagaKind, order_id: OrderId, now: Timestamp) -> Self {
        Self {
            id: SagaId::generate(),
            kind,
            order_id,
            status: SagaStatus::Running,
            step: 0,
            attempts: 0,
            next_attempt_at: now,
            step_deadline: None,
            last_error: None,
            data: SagaData::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// The saga after its current forward step succeeded: on to the next step (or
    /// SUCCEEDED after the last of `steps`), with a fresh attempt budget.
    #[must_use]
    pub fn advance(&self, steps: usize, now: Timestamp) -> Self {
        let mut next = self.with_fresh_attempts(now);
        next.step += 1;
        next.last_error = None;
        if next.step >= steps {
            next.status = SagaStatus::Succeeded;
        }
        next
    }

    /// The saga after attempt number `attempt` of its current step failed with `error` and
    /// will be retried at `at`. `deadline` is when the step gives up; `tried` whether any
    /// call of it really reached the plugin.
    #[must_use]
    pub fn schedule_retry(
        &self,
        attempt: u32,
        deadline: Timestamp,
        tried: bool,
        error: String,
        at: Timestamp,
    ) -> Self {
        let mut next = self.clone();
        next.attempts = attempt;
        next.step_deadline = Some(deadline);
        next.data.step_tried = tried;
        next.last_error = Some(error);
        next.next_attempt_at = at;
        next
    }

    /// The saga after its current step failed for good (or the order was cancelled under
    /// it): it undoes its `step` completed steps in reverse, starting now. The failed step
    /// had no effect; `reason` becomes the order's failure reason.
    #[must_use]
    pub fn turn_back(&self, reason: String, now: Timestamp) -> Self {
        let mut next = self.with_fresh_attempts(now);
        next.status = SagaStatus::Compensating;
        next.data.failed_step = Some(self.step);
        next.last_error = Some(reason.clone());
        next.data.failure = Some(reason);
        next
    }

    /// The saga after the compensation of step `index` is done (or it had nothing to undo):
    /// `index` steps remain to undo.
    #[must_use]
    pub fn undo_step(&self, index: usize, now: Timestamp) -> Self {
        let mut next = self.with_fresh_attempts(now);
        next.step = index;
        next
    }

    /// The saga after it ended in `outcome` (SUCCEEDED, COMPENSATED, or COMPENSATION_FAILED,
    /// which parks it for an operator and remembers which way it was going).
    #[must_use]
    pub fn end(&self, outcome: SagaStatus, reason: Option<String>, now: Timestamp) -> Self {
        let mut next = self.clone();
        if outcome == SagaStatus::CompensationFailed {
            next.data.parked_while = self.direction();
        }
        next.status = outcome;
        next.last_error = reason.or(next.last_error);
        next.next_attempt_at = now;
        next
    }

    /// The saga after an operator resumed it from COMPENSATION_FAILED: in `direction` (the
    /// one it parked in unless the operator forces compensation), with fresh retries, due
    /// now. `None` when it is not parked.
    #[must_use]
    pub fn resume(&self, direction: Option<Direction>, now: Timestamp) -> Option<Self> {
        if self.status != SagaStatus::CompensationFailed {
            return None;
        }
        let parked_while = self.data.parked_while.unwrap_or(Direction::Running);
        let direction = direction.unwrap_or(parked_while);
        let mut next = self.with_fresh_attempts(now);
        next.status = direction.status();
        next.data.parked_while = None;
        if direction == Direction::Compensating && parked_while == Direction::Running {
            // Forward progress so far is `step` completed steps: undo them all.
            next.data.failed_step.get_or_insert(self.step);
            next.data
                .failure
                .get_or_insert_with(|| "compensation forced by an operator".to_owned());
        }
        Some(next)
    }

    /// Which way the saga is going now; `None` once it ended or parked.
    pub fn direction(&self) -> Option<Direction> {
        match self.status {
            SagaStatus::Running => Some(Direction::Running),
            SagaStatus::Compensating => Some(Direction::Compensating),
            _ => None,
        }
    }

    /// A copy with the current step's attempt state reset, due `now`.
    fn with_fresh_attempts(&self, now: Timestamp) -> Self {
        let mut next = self.clone();
        next.attempts = 0;
        next.step_deadline = None;
        next.data.step_tried = false;
        next.next_attempt_at = now;
        next
    }

    /// Adjusts a saga a worker has just claimed at `now`. The time it sat due but unclaimed
    /// (a crashed worker's lease running out, every worker busy) was not spent on its step,
    /// so the step's deadline moves by that much: a deadline counts working time only. A
    /// saga that sat unclaimed for a whole `lease` was abandoned by a dead worker: its step
    /// must make one real call again before the deadline can fail it.
    ///
    /// Derived only from stored fields, so it is the same whenever it is applied to the same
    /// stored saga, and a crash before the next commit loses nothing.
    pub fn reclaim(&mut self, now: Timestamp, lease: std::time::Duration) {
        let idle = now
            .unix_millis()
            .saturating_sub(self.next_attempt_at.unix_millis());
        if idle <= 0 {
            return;
        }
        if let Some(deadline) = self.step_deadline {
            self.step_deadline = Some(Timestamp::from_unix_millis(
                deadline.unix_millis().saturating_add(idle),
            ));
        }
        if u128::from(idle.unsigned_abs()) >= lease.as_millis() {
            self.data.step_tried = false;
        }
    }

    /// The name of the step the saga is at: the next to run forward, the next to undo while
    /// compensating, the one that failed while parked; `None` once it ended.
    pub fn current_step(&self) -> Option<&'static str> {
        let backward = match self.status {
            SagaStatus::Running => false,
            SagaStatus::Compensating => true,
            SagaStatus::CompensationFailed => {
                self.data.parked_while == Some(Direction::Compensating)
            }
            SagaStatus::Succeeded | SagaStatus::Compensated => return None,
        };
        let index = if backward {
            self.step.checked_sub(1)?
        } else {
            self.step
        };
        super::flows::definition(self.kind)
            .step(index)
            .map(|s| s.name)
    }

    /// The key sent with this saga's `operation` in `step`: the same on every retry and
    /// after a crash, so the provider sees one logical call.
    pub fn idempotency_key(&self, step: &str, operation: &str) -> String {
        format!("saga:{}:{step}:{operation}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SagaKind::ALL {
            assert_eq!(SagaKind::parse(k.as_str()), Some(k));
        }
        for s in SagaStatus::ALL {
            assert_eq!(SagaStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn resuming_discounts_the_time_a_saga_sat_unclaimed() {
        let lease = std::time::Duration::from_secs(30);
        let mut saga = SagaInstance::start(
            SagaKind::PlaceOrder,
            OrderId::generate(),
            Timestamp::from_unix_millis(1_000),
        );
        saga.step_deadline = Some(Timestamp::from_unix_millis(2_000));
        saga.data.step_tried = true;
        // Claimed on time by a live worker: nothing moves.
        saga.reclaim(Timestamp::from_unix_millis(1_000), lease);
        assert_eq!(saga.step_deadline, Some(Timestamp::from_unix_millis(2_000)));
        // Picked up 50 ms late: the deadline moves by 50 ms, the attempt history stays.
        let mut late = saga.clone();
        late.reclaim(Timestamp::from_unix_millis(1_050), lease);
        assert_eq!(late.step_deadline, Some(Timestamp::from_unix_millis(2_050)));
        assert!(late.data.step_tried);
        // Resumed 40 s later, after a dead worker's lease ran out.
        let mut resumed = saga.clone();
        resumed.reclaim(Timestamp::from_unix_millis(41_000), lease);
        assert_eq!(
            resumed.step_deadline,
            Some(Timestamp::from_unix_millis(42_000)),
            "the whole budget that was left is left again"
        );
        assert!(!resumed.data.step_tried, "one real call first");
        // Applying it again to the same stored saga gives the same result.
        let mut again = saga.clone();
        again.reclaim(Timestamp::from_unix_millis(41_000), lease);
        assert_eq!(again, resumed);
    }

    #[test]
    fn current_step_follows_the_direction() {
        let mut saga = SagaInstance::start(
            SagaKind::FulfillOrder,
            OrderId::generate(),
            Timestamp::from_unix_millis(0),
        );
        assert_eq!(saga.current_step(), Some("commit-inventory"));
        saga.step = 1;
        saga.status = SagaStatus::CompensationFailed;
        saga.data.parked_while = Some(Direction::Running);
        assert_eq!(saga.current_step(), Some("capture-payment"));
        saga.kind = SagaKind::PlaceOrder;
        saga.data.parked_while = Some(Direction::Compensating);
        assert_eq!(saga.current_step(), Some("reserve-inventory"));
        saga.status = SagaStatus::Succeeded;
        assert_eq!(saga.current_step(), None);
    }

    #[test]
    fn the_parked_direction_reads_back_or_not_at_all() {
        let data: SagaData = serde_json::from_str(r#"{"parked_while":"COMPENSATING"}"#).unwrap();
        assert_eq!(data.parked_while, Some(Direction::Compensating));
        assert!(
            serde_json::from_str::<SagaData>(r#"{"parked_while":"SIDEWAYS"}"#).is_err(),
            "no silent default for a value this version does not know"
        );
    }

    #[test]
    fn parking_remembers_the_direction_and_resuming_restores_it() {
        let now = Timestamp::from_unix_millis(5_000);
        let mut saga = SagaInstance::start(
            SagaKind::PlaceOrder,
            OrderId::generate(),
            Timestamp::from_unix_millis(0),
        );
        saga.step = 1;
        let back = saga
            .schedule_retry(3, now, true, "busy".into(), now)
            .turn_back("PAYMENT_DECLINED: no".into(), now);
        assert_eq!(back.status, SagaStatus::Compensating);
        assert_eq!((back.attempts, back.step_deadline), (0, None));
        assert_eq!(back.data.failed_step, Some(1));
        let parked = back.end(SagaStatus::CompensationFailed, Some("stuck".into()), now);
        assert_eq!(parked.data.parked_while, Some(Direction::Compensating));
        assert_eq!(parked.current_step(), Some("reserve-inventory"));

        let resumed = parked.resume(None, now).unwrap();
        assert_eq!(resumed.status, SagaStatus::Compensating);
        assert_eq!(resumed.data.parked_while, None);
        assert!(
            resumed.resume(None, now).is_none(),
            "only a parked saga resumes"
        );

        // Forced compensation of a saga parked going forward undoes what it did.
        let mut forward = saga.end(SagaStatus::CompensationFailed, None, now);
        forward.data.failed_step = None;
        let forced = forward.resume(Some(Direction::Compensating), now).unwrap();
        assert_eq!(forced.status, SagaStatus::Compensating);
        assert_eq!(forced.data.failed_step, Some(1));
    }

    #[test]
    fn keys_are_deterministic_per_saga_step_and_operation() {
        let saga = SagaInstance::start(
            SagaKind::PlaceOrder,
            OrderId::generate(),
            Timestamp::from_unix_millis(0),
        );
        let key = saga.idempotency_key("authorize-payment", "authorize");
        assert_eq!(key, saga.idempotency_key("authorize-payment", "authorize"));
        assert_ne!(key, saga.idempotency_key("authorize-payment", "void"));
        let other = SagaInstance::start(
            SagaKind::PlaceOrder,
            saga.order_id,
            Timestamp::from_unix_millis(0),
        );
        assert_ne!(key, other.idempotency_key("authorize-payment", "authorize"));
        assert!(key.len() <= 255, "fits the WIT idempotency-key bound");
    }
}
