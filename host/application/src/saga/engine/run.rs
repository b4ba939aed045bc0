//! A saga as the worker driving it sees it: its state, plus the steps that ran since its
//! last commit ([`StepCommit::WithNext`](crate::saga::definition::StepCommit)).
//!
//! Such steps are not lost work waiting to be saved: their calls stayed inside the host,
//! so everything they did is in their plugin writes, which only the commit applies. The
//! commit makes them durable together with the step that follows (or alone just before it,
//! when that step's plugin would reach the network); a commit refused or never
//! made (a crash, a lost lease) drops them as if they had never run, and the saga runs them
//! again from its committed state with the same idempotency keys.

use std::ops::{Deref, DerefMut};

use oms_domain::{DomainError, Order, OrderEvent, Timestamp, Version};

use crate::plugin_kv::AbsentKeys;
use crate::ports::StepRecord;
use crate::saga::executor::Change;
use crate::saga::instance::SagaInstance;

/// The saga being driven. Reads as the saga itself ([`Deref`]); the engine's commit takes
/// [`Run::unflushed`] along.
pub(super) struct Run {
    pub saga: SagaInstance,
    pub unflushed: Option<Unflushed>,
    /// How this run's calls check the plugin keys they create: at commit, until a commit
    /// is refused over a plugin key; then by reading them, so that the steps run again see
    /// what is there (a replayed call's record) instead of being refused the same way.
    pub absent_keys: AbsentKeys,
    /// Commits refused since the last one landed ([`super::ORDER_MOVED_ROUNDS`] bounds it).
    pub refused: usize,
}

/// Steps that ran since the last commit.
pub(super) struct Unflushed {
    /// The saga as last committed: what a refused commit goes back to.
    committed: SagaInstance,
    /// The version of the order the steps started from: the commit's fence.
    pub order_version: Version,
    /// Each step's audit row (with its call's pending plugin writes), the change it made
    /// to the order, and when.
    steps: Vec<(StepRecord, Change, Timestamp)>,
    /// The events those changes announced, in order (none for today's deferred steps;
    /// kept so that a table that defers an announcing step stays correct).
    pub events: Vec<OrderEvent>,
}

impl Unflushed {
    /// The audit rows to commit, in the order the steps ran.
    pub fn records(&self) -> impl Iterator<Item = &StepRecord> {
        self.steps.iter().map(|(record, _, _)| record)
    }
}

impl Deref for Run {
    type Target = SagaInstance;
    fn deref(&self) -> &SagaInstance {
        &self.saga
    }
}

impl DerefMut for Run {
    fn deref_mut(&mut self) -> &mut SagaInstance {
        &mut self.saga
    }
}

impl Run {
    pub fn new(saga: SagaInstance) -> Self {
        Self {
            saga,
            unflushed: None,
            absent_keys: AbsentKeys::CheckedAtCommit,
            refused: 0,
        }
    }

    /// Takes a step as done without committing it: the saga moves to `next` in memory (its
    /// version stays that of the last commit, which the next commit is fenced on), and the
    /// order as the step changed it is returned for the next step.
    pub fn defer(
        &mut self,
        next: SagaInstance,
        record: StepRecord,
        mut order: Order,
        change: &Change,
        now: Timestamp,
    ) -> Result<Order, DomainError> {
        let unflushed = self.unflushed.get_or_insert_with(|| Unflushed {
            committed: self.saga.clone(),
            order_version: order.version(),
            steps: Vec::new(),
            events: Vec::new(),
        });
        if let Some(event) = change.apply(&mut order, now)? {
            unflushed.events.push(event);
        }
        unflushed.steps.push((record, change.clone(), now));
        self.saga = next;
        Ok(order)
    }

    /// Back to the saga as last committed, dropping the steps run since: their calls'
    /// writes were never applied, so nothing of them remains to undo.
    pub fn revert(&mut self) {
        if let Some(unflushed) = self.unflushed.take() {
            self.saga = unflushed.committed;
        }
    }

    /// `fresh` (the order as stored now, after a concurrent change) with the changes of the
    /// steps run since the last commit made again, so that committing onto it keeps them.
    pub fn rebase(&mut self, mut fresh: Order) -> Result<Order, DomainError> {
        if let Some(unflushed) = &mut self.unflushed {
            unflushed.order_version = fresh.version();
            unflushed.events.clear();
            for (_, change, at) in &unflushed.steps {
                if let Some(event) = change.apply(&mut fresh, *at)? {
                    unflushed.events.push(event);
                }
            }
        }
        Ok(fresh)
    }
}
