//! The outbox as an operator sees it: its lag, its dead letters, and redriving them.

use std::sync::Arc;
use std::time::Duration;

use oms_domain::OrderId;
use tracing::info;

use crate::clock::Clock;
use crate::error::AppError;
use crate::ports::{DeadLetter, OutboxStore, StoreError};

/// Dead letters one bulk redrive looks at: a bound on the call's work, not on what it can
/// redrive (an operator runs it again while it reports a full page).
const REDRIVE_PAGE: u32 = 1_000;

/// The outbox's lag and the dead letters waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStatus {
    pub unpublished: i64,
    /// Age of the oldest unpublished row; zero when there is none.
    pub oldest_unpublished_age: Duration,
    /// Dead letters not yet redriven.
    pub dead_letters: i64,
}

/// Which pending dead letters a bulk redrive takes; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub event_type: Option<String>,
    pub order_id: Option<OrderId>,
}

impl DeadLetterFilter {
    fn matches(&self, d: &DeadLetter) -> bool {
        self.event_type.as_ref().is_none_or(|t| *t == d.event_type)
            && self.order_id.is_none_or(|o| d.order_id() == Some(o))
    }
}

/// Operator operations on the outbox. Redriving wakes this process's relay (`wake`); the
/// relays of other processes find the rows at their next poll.
#[derive(Clone)]
pub struct OutboxOperations {
    outbox: Arc<dyn OutboxStore>,
    clock: Arc<dyn Clock>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl OutboxOperations {
    pub fn new(
        outbox: Arc<dyn OutboxStore>,
        clock: Arc<dyn Clock>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            outbox,
            clock,
            wake,
        }
    }

    pub async fn status(&self) -> Result<OutboxStatus, AppError> {
        let b = self.outbox.backlog().await?;
        let now = self.clock.now().unix_millis();
        let age = b
            .oldest_created_at
            .map_or(0, |t| now.saturating_sub(t.unix_millis()).max(0));
        Ok(OutboxStatus {
            unpublished: b.unpublished,
            oldest_unpublished_age: Duration::from_millis(u64::try_from(age).unwrap_or(0)),
            dead_letters: b.dead_letters,
        })
    }

    /// Dead letters, newest failure first; `include_redriven` adds the ones already redriven.
    pub async fn dead_letters(
        &self,
        include_redriven: bool,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, AppError> {
        Ok(self.outbox.dead_letters(!include_redriven, limit).await?)
    }

    /// Puts dead letter `outbox_id` back into the outbox (attempts reset, due now). `false`
    /// when it was already redriven and has not failed since; `NotFound` when there is no
    /// such dead letter.
    pub async fn redrive(&self, outbox_id: i64) -> Result<bool, AppError> {
        let done = match self.outbox.redrive(outbox_id, self.clock.now()).await {
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("dead letter {outbox_id}")));
            }
            other => other?,
        };
        if done {
            info!(outbox_id, "dead letter redriven");
            (self.wake)();
        }
        Ok(done)
    }

    /// Redrives up to `max` (at most [`REDRIVE_PAGE`]; `0` for that) of the pending dead
    /// letters matching `filter`, among the [`REDRIVE_PAGE`] newest pending ones, and says how
    /// many matching ones that page still holds: a caller repeats until none remain, which
    /// also reaches the older ones beyond the page.
    pub async fn redrive_matching(
        &self,
        filter: &DeadLetterFilter,
        max: u32,
    ) -> Result<BulkRedrive, AppError> {
        let max = if max == 0 {
            REDRIVE_PAGE
        } else {
            max.min(REDRIVE_PAGE)
        };
        let pending = self.outbox.dead_letters(true, REDRIVE_PAGE).await?;
        let matching: Vec<&DeadLetter> = pending.iter().filter(|d| filter.matches(d)).collect();
        let now = self.clock.now();
        let mut redriven = 0u32;
        let batch = usize::try_from(max).unwrap_or(usize::MAX);
        for d in matching.iter().take(batch) {
            match self.outbox.redrive(d.id, now).await {
                Ok(true) => redriven += 1,
                // Redriven meanwhile (another operator, another process): not this call's.
                Ok(false) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if redriven > 0 {
            info!(redriven, ?filter, "dead letters redriven");
            (self.wake)();
        }
        let remaining = u32::try_from(matching.len().saturating_sub(batch)).unwrap_or(u32::MAX);
        Ok(BulkRedrive {
            redriven,
            remaining,
        })
    }
}

/// What one bulk redrive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRedrive {
    pub redriven: u32,
    /// Matching pending dead letters this call left (within the page it looked at).
    pub remaining: u32,
}

#[cfg(test)]
mod tests {
    use oms_domain::{OrderId, Timestamp};
    use uuid::Uuid;

    use super::{DeadLetter, DeadLetterFilter};
    use crate::ports::AggregateType;

    fn dead(event_type: &str, order: OrderId) -> DeadLetter {
        DeadLetter {
            id: 1,
            event_id: Uuid::now_v7(),
            aggregate_type: AggregateType::Order,
            aggregate_id: order.as_uuid(),
            event_type: event_type.to_owned(),
            attempts: 10,
            last_error: "broker down".to_owned(),
            failed_at: Timestamp::from_unix_millis(1),
            redriven_at: None,
        }
    }

    #[test]
    fn a_filter_matches_on_every_field_it_names() {
        let (a, b) = (OrderId::generate(), OrderId::generate());
        let confirmed_a = dead("OrderConfirmed", a);
        let everything = DeadLetterFilter::default();
        assert!(everything.matches(&confirmed_a));
        let by_type = DeadLetterFilter {
            event_type: Some("OrderConfirmed".to_owned()),
            order_id: None,
        };
        assert!(by_type.matches(&confirmed_a));
        assert!(!by_type.matches(&dead("OrderCreated", a)));
        let both = DeadLetterFilter {
            order_id: Some(b),
            ..by_type
        };
        assert!(!both.matches(&confirmed_a));
        assert!(both.matches(&dead("OrderConfirmed", b)));
    }
}
