//! Every store port in memory, with the SQL stores' fences: an order write and a saga commit
//! are all-or-nothing (each works on a copy of the whole state and swaps it in only when
//! every check passed), versions and leases are compared exactly as the SQL `WHERE` clauses
//! compare them, and at most one saga is active per order.
//!
//! The persistence contract tests run against this store too, so a fence it forgets fails
//! them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use oms_domain::{Order, OrderId, Timestamp, Version};
use uuid::Uuid;

use crate::idempotency::rules::{COMPLETED, IN_PROGRESS, KeyRecord, Verdict, judge};
use crate::idempotency::{
    Fingerprint, IdempotencyClaim, IdempotencyCompletion, IdempotencyRequest, IdempotencyScope,
    StoredOutcome,
};
use crate::outbox::OutboxMessage;
use crate::plugin_kv::{BatchOutcome, BoundedAdd, KvChanges, KvError, Swap, apply_batch_in};
use crate::ports::{
    BeginOutcome, Fence, IdempotencyStore, OrderQuery, OrderStore, OrderWrite, PluginCall,
    PluginKvStore, ProcessedEventStore, SagaCommit, SagaQuery, SagaStore, StepDirection,
    StepHistory, StepRecord, StepState, StoreError,
};
use crate::saga::{SagaId, SagaInstance, SagaStatus};

/// A `saga_steps` row: one per (saga, step, direction), updated by every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStep {
    pub step: &'static str,
    pub direction: StepDirection,
    /// The plugin build of the last attempt that reached a plugin.
    pub call: Option<PluginCall>,
    pub idempotency_key: String,
    pub state: StepState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct SagaRow {
    saga: SagaInstance,
    lease_owner: Option<String>,
    lease_until: Option<Timestamp>,
}

type ScopeKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct State {
    orders: BTreeMap<OrderId, Order>,
    /// Outbox rows in commit order.
    outbox: Vec<OutboxMessage>,
    sagas: BTreeMap<SagaId, SagaRow>,
    steps: BTreeMap<SagaId, Vec<StoredStep>>,
    keys: HashMap<ScopeKey, KeyRecord>,
    processed: HashSet<(String, Uuid)>,
    /// `plugin_kv`: namespace -> key -> value.
    plugin_kv: HashMap<String, HashMap<String, Vec<u8>>>,
}

/// The in-memory database of the test kit. Cheap to share behind an `Arc`; every port is
/// implemented on the same state, so an order write and a saga commit see each other.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// How many times an order was read ([`OrderStore::get`]): the round trips a database
    /// would have served.
    order_reads: std::sync::atomic::AtomicUsize,
}

fn scope_key(scope: &IdempotencyScope) -> ScopeKey {
    (
        scope.method.clone(),
        scope.caller.clone(),
        scope.key.as_str().to_owned(),
    )
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; the state is whole,
        // because writes swap in a finished copy.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to a copy of the state and keeps the copy only if it succeeded: a
    /// transaction that either commits entirely or leaves nothing behind.
    fn transaction<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.lock();
        let mut copy = state.clone();
        let value = change(&mut copy)?;
        *state = copy;
        Ok(value)
    }

    /// How many times [`OrderStore::get`] was called.
    pub fn order_reads(&self) -> usize {
        self.order_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The outbox messages of `order`, in commit order.
    pub fn outbox(&self, order: OrderId) -> Vec<OutboxMessage> {
        self.lock()
            .outbox
            .iter()
            .filter(|m| m.aggregate_id == order)
            .cloned()
            .collect()
    }

    /// The step records of `saga`, in the order each was first written.
    pub fn steps(&self, saga: SagaId) -> Vec<StoredStep> {
        self.lock().steps.get(&saga).cloned().unwrap_or_default()
    }

    /// Who holds `saga`'s lease, and until when, as the SQL stores keep them: both `None`
    /// once no worker holds it (or when there is no such saga).
    pub fn lease(&self, saga: SagaId) -> (Option<String>, Option<Timestamp>) {
        self.lock().sagas.get(&saga).map_or((None, None), |row| {
            (row.lease_owner.clone(), row.lease_until)
        })
    }
}

fn write_order(state: &mut State, write: &OrderWrite<'_>) -> Result<(), StoreError> {
    // Same order as the SQL store: the key's completion, the order, its outbox, the saga.
    match write.idempotency {
        None => {}
        Some(IdempotencyCompletion::Claimed { claim, outcome }) => {
            complete_key(state, claim, outcome)?;
        }
        Some(IdempotencyCompletion::Unclaimed {
            request,
            outcome,
            created_at: _,
            expires_at,
        }) => insert_completed_key(state, request, outcome, *expires_at)?,
    }
    let order = write.order;
    match write.expected_version {
        None => {
            if state.orders.contains_key(&order.id()) {
                return Err(StoreError::Corrupt(format!(
                    "order {} already exists",
                    order.id()
                )));
            }
        }
        Some(expected) => match state.orders.get(&order.id()) {
            None => return Err(StoreError::NotFound),
            Some(stored) if stored.version() != expected => {
                return Err(StoreError::VersionConflict {
                    current: stored.version(),
                });
            }
            Some(_) => {}
        },
    }
    state.orders.insert(order.id(), order.clone());
    state.outbox.extend(write.outbox.iter().cloned());
    if let Some(saga) = write.start_saga {
        ensure_one_active(state, saga)?;
        state.sagas.insert(
            saga.id,
            SagaRow {
                saga: saga.clone(),
                lease_owner: write.lease_saga_to.map(|l| l.owner.to_owned()),
                lease_until: write.lease_saga_to.map(|l| l.until),
            },
        );
    }
    Ok(())
}

/// The one-active-saga-per-order index.
fn ensure_one_active(state: &State, saga: &SagaInstance) -> Result<(), StoreError> {
    let clash = saga.status.is_active()
        && state.sagas.values().any(|row| {
            row.saga.id != saga.id
                && row.saga.order_id == saga.order_id
                && row.saga.status.is_active()
        });
    if clash {
        Err(StoreError::SagaActive)
    } else {
        Ok(())
    }
}

fn upsert_step(state: &mut State, saga: SagaId, record: &StepRecord) {
    let finished = matches!(record.state, StepState::Succeeded | StepState::Failed);
    let steps = state.steps.entry(saga).or_default();
    let existing = steps
        .iter_mut()
        .find(|s| s.step == record.step && s.direction == record.direction);
    match existing {
        Some(step) => {
            // An attempt that never reached a plugin keeps the build of the last one that did.
            if record.call.is_some() {
                step.call.clone_from(&record.call);
            }
            step.idempotency_key.clone_from(&record.idempotency_key);
            step.state = record.state;
            step.attempts = record.attempts;
            step.last_error.clone_from(&record.last_error);
            step.finished_at = finished.then_some(record.at);
        }
        None => steps.push(StoredStep {
            step: record.step,
            direction: record.direction,
            call: record.call.clone(),
            idempotency_key: record.idempotency_key.clone(),
            state: record.state,
            attempts: record.attempts,
            last_error: record.last_error.clone(),
            started_at: record.at,
            finished_at: finished.then_some(record.at),
        }),
    }
}

/// The unclaimed insert: a record in any state, even an expired one, is `KeyExists` (the SQL
/// store's `ON CONFLICT DO NOTHING` sees the row whatever its state).
fn insert_completed_key(
    state: &mut State,
    request: &IdempotencyRequest,
    outcome: &StoredOutcome,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    let key = scope_key(&request.scope);
    if state.keys.contains_key(&key) {
        return Err(StoreError::KeyExists);
    }
    let json = serde_json::to_value(outcome)
        .map_err(|e| StoreError::Corrupt(format!("idempotency outcome: {e}")))?;
    state.keys.insert(
        key,
        KeyRecord {
            fingerprint: request.fingerprint.to_hex(),
            state: COMPLETED.to_owned(),
            lease_token: None,
            locked_until: None,
            outcome: Some(json),
            expires_at: expires_at.unix_millis(),
        },
    );
    Ok(())
}

fn complete_key(
    state: &mut State,
    claim: &IdempotencyClaim,
    outcome: &StoredOutcome,
) -> Result<(), StoreError> {
    let record = state
        .keys
        .get_mut(&scope_key(&claim.scope))
        .filter(|r| r.state == IN_PROGRESS && r.lease_token == Some(claim.lease_token))
        .ok_or(StoreError::LeaseLost)?;
    let json = serde_json::to_value(outcome)
        .map_err(|e| StoreError::Corrupt(format!("idempotency outcome: {e}")))?;
    record.state = COMPLETED.to_owned();
    record.outcome = Some(json);
    record.lease_token = None;
    record.locked_until = None;
    Ok(())
}

#[async_trait]
impl OrderStore for MemoryStore {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.order_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.lock().orders.get(&id).cloned())
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StoreError> {
        let state = self.lock();
        Ok(state
            .orders
            .values()
            .rev()
            .filter(|o| query.status.is_none_or(|s| o.status() == s))
            .filter(|o| {
                query
                    .customer_id
                    .as_ref()
                    .is_none_or(|c| o.customer_id() == c)
            })
            .filter(|o| query.before.is_none_or(|before| o.id() < before))
            .take(usize::try_from(query.limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn save(&self, write: OrderWrite<'_>) -> Result<(), StoreError> {
        self.transaction(|state| write_order(state, &write))
    }
}

#[async_trait]
impl SagaStore for MemoryStore {
    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<SagaInstance>, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<&mut SagaRow> = state
            .sagas
            .values_mut()
            .filter(|row| {
                row.saga.status.is_active()
                    && row.saga.next_attempt_at <= now
                    && row.lease_until.is_none_or(|until| until < now)
            })
            .collect();
        due.sort_by_key(|row| (row.saga.next_attempt_at, row.saga.id));
        Ok(due
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|row| {
                // Claiming changes who may commit, not the saga: its version stays.
                row.lease_owner = Some(owner.to_owned());
                row.lease_until = Some(lease_until);
                row.saga.clone()
            })
            .collect())
    }

    async fn commit(&self, commit: SagaCommit<'_>) -> Result<(), StoreError> {
        self.transaction(|state| {
            let saga = commit.saga;
            let fenced_in = |state: &State| {
                state.sagas.get(&saga.id).is_some_and(|row| {
                    row.saga.version == commit.expected_version
                        && match commit.fence {
                            Fence::Lease(owner) => row.lease_owner.as_deref() == Some(owner),
                            Fence::Parked => row.saga.status == SagaStatus::CompensationFailed,
                        }
                })
            };
            if let Some(order) = &commit.order {
                match write_order(state, order) {
                    // As the SQL store: a worker whose saga is stale hears that first.
                    Err(StoreError::VersionConflict { .. })
                        if matches!(commit.fence, Fence::Lease(_)) && !fenced_in(state) =>
                    {
                        return Err(StoreError::LeaseLost);
                    }
                    other => other?,
                }
            }
            let row = state.sagas.get(&saga.id).ok_or(StoreError::NotFound)?;
            let fenced_in = fenced_in(state);
            if !fenced_in {
                return Err(match commit.fence {
                    // Moved on or leased to another worker since the claim: this worker no
                    // longer owns the saga and must stop.
                    Fence::Lease(_) => StoreError::LeaseLost,
                    Fence::Parked => StoreError::VersionConflict {
                        current: Version(row.saga.version),
                    },
                });
            }
            ensure_one_active(state, saga)?;
            // An ended saga lets go of its lease; an operator's commit leaves it unleased.
            let keep = match commit.fence {
                Fence::Lease(owner) if saga.status.is_active() => Some(owner.to_owned()),
                _ => None,
            };
            let lease_until = keep.as_ref().map(|_| commit.lease_until);
            state.sagas.insert(
                saga.id,
                SagaRow {
                    saga: saga.clone(),
                    lease_owner: keep,
                    lease_until,
                },
            );
            for record in commit.steps {
                upsert_step(state, saga.id, record);
            }
            for call in commit.steps.iter().filter_map(|r| r.call.as_ref()) {
                apply_kv(state, &call.kv)?;
            }
            Ok(())
        })
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        match state.sagas.get_mut(&id) {
            Some(row)
                if row.saga.version == version && row.lease_owner.as_deref() == Some(owner) =>
            {
                row.lease_until = Some(until);
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn wake(&self, id: SagaId, now: Timestamp) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.sagas.get_mut(&id) {
            Some(row) if row.saga.status.is_active() && row.saga.next_attempt_at > now => {
                row.saga.next_attempt_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>, StoreError> {
        Ok(self.lock().sagas.get(&id).map(|row| row.saga.clone()))
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError> {
        let state = self.lock();
        let mut sagas: Vec<SagaInstance> = state
            .sagas
            .values()
            .filter(|row| row.saga.order_id == order_id)
            .map(|row| row.saga.clone())
            .collect();
        sagas.sort_by_key(|s| (s.created_at, s.id));
        Ok(sagas)
    }

    async fn find(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>, StoreError> {
        let state = self.lock();
        let mut sagas: Vec<SagaInstance> = state
            .sagas
            .values()
            .map(|row| &row.saga)
            .filter(|s| query.statuses.contains(&s.status))
            .filter(|s| query.kind.is_none_or(|k| s.kind == k))
            .filter(|s| query.updated_before.is_none_or(|t| s.updated_at < t))
            .cloned()
            .collect();
        sagas.sort_by_key(|s| (s.created_at, s.id));
        sagas.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        Ok(sagas)
    }

    async fn steps(&self, id: SagaId) -> Result<Vec<StepHistory>, StoreError> {
        Ok(self
            .lock()
            .steps
            .get(&id)
            .into_iter()
            .flatten()
            .map(|s| StepHistory {
                step: s.step.to_owned(),
                direction: s.direction.as_str().to_owned(),
                status: s.state.as_str().to_owned(),
                attempts: s.attempts,
                last_error: s.last_error.clone(),
                plugin: s
                    .call
                    .as_ref()
                    .map(|c| (c.plugin.clone(), c.version.clone(), c.digest.clone())),
                idempotency_key: s.idempotency_key.clone(),
                started_at: Some(s.started_at),
                finished_at: s.finished_at,
            })
            .collect())
    }

    async fn plugin_builds_in_use(&self) -> Result<Vec<(String, String)>, StoreError> {
        let state = self.lock();
        let mut builds: Vec<(String, String)> = state
            .sagas
            .values()
            .filter(|row| {
                row.saga.status.is_active()
                    || row.saga.status == SagaStatus::CompensationFailed
                    || state
                        .orders
                        .get(&row.saga.order_id)
                        .is_some_and(|o| !o.status().is_terminal())
            })
            .flat_map(|row| state.steps.get(&row.saga.id).into_iter().flatten())
            .filter_map(|s| s.call.as_ref())
            .map(|c| (c.plugin.clone(), c.digest.clone()))
            .collect();
        builds.sort();
        builds.dedup();
        Ok(builds)
    }
}

fn claim(scope: &IdempotencyScope, fingerprint: &Fingerprint, token: Uuid) -> BeginOutcome {
    BeginOutcome::Proceed(IdempotencyClaim {
        scope: scope.clone(),
        fingerprint: *fingerprint,
        lease_token: token,
    })
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &Fingerprint,
        now: Timestamp,
        lease: Duration,
        ttl: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let mut state = self.lock();
        let key = scope_key(scope);
        if let Some(record) = state.keys.get(&key)
            && let Verdict::Answer(outcome) = judge(record, fingerprint, now.unix_millis())?
        {
            return Ok(outcome);
        }
        // Absent, or dead (expired, or its holder's lease ran out): a fresh claim. The lock
        // makes the read and the write one step, as the SQL store's compare-and-set does.
        let token = Uuid::now_v7();
        state.keys.insert(
            key,
            KeyRecord {
                fingerprint: fingerprint.to_hex(),
                state: IN_PROGRESS.to_owned(),
                lease_token: Some(token),
                locked_until: Some(now.saturating_add(lease).unix_millis()),
                outcome: None,
                expires_at: now.saturating_add(ttl).unix_millis(),
            },
        );
        Ok(claim(scope, fingerprint, token))
    }

    async fn complete(
        &self,
        claim: &IdempotencyClaim,
        outcome: &StoredOutcome,
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        self.transaction(|state| complete_key(state, claim, outcome))
    }

    async fn release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError> {
        let mut state = self.lock();
        let key = scope_key(&claim.scope);
        // Only an in-progress record under this very lease.
        if state
            .keys
            .get(&key)
            .is_some_and(|r| r.state == IN_PROGRESS && r.lease_token == Some(claim.lease_token))
        {
            state.keys.remove(&key);
        }
        Ok(())
    }

    async fn sweep_expired(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let expired: Vec<ScopeKey> = state
            .keys
            .iter()
            .filter(|(_, r)| r.expires_at <= now.unix_millis())
            .map(|(k, _)| k.clone())
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        for key in &expired {
            state.keys.remove(key);
        }
        Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl ProcessedEventStore for MemoryStore {
    async fn processed_among(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        let state = self.lock();
        Ok(event_ids
            .iter()
            .filter(|id| state.processed.contains(&(consumer.to_owned(), **id)))
            .copied()
            .collect())
    }

    async fn record_all(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        for id in event_ids {
            state.processed.insert((consumer.to_owned(), *id));
        }
        Ok(())
    }
}

/// A step's plugin writes, each key's condition checked as the SQL stores check it.
fn apply_kv(state: &mut State, changes: &KvChanges) -> Result<(), StoreError> {
    let namespace = state
        .plugin_kv
        .entry(changes.namespace.clone())
        .or_default();
    for (key, change) in &changes.keys {
        let conflict = || StoreError::KvConflict {
            namespace: changes.namespace.clone(),
            key: key.clone(),
        };
        // A stored counter that is not a number cannot take the add: refused like a bound.
        match change
            .next_value(key, namespace.get(key).map(Vec::as_slice))
            .map_err(|_| conflict())?
        {
            None => return Err(conflict()),
            Some(Some(value)) => {
                namespace.insert(key.clone(), value);
            }
            Some(None) => {
                namespace.remove(key);
            }
        }
    }
    Ok(())
}

/// The plugins' own writes outside a saga step, each one atomic like the SQL store's.
#[async_trait]
impl PluginKvStore for MemoryStore {
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, KvError> {
        let state = self.lock();
        Ok(state
            .plugin_kv
            .get(namespace)
            .map(|values| crate::plugin_kv::present(values, keys))
            .unwrap_or_default())
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.lock()
            .plugin_kv
            .entry(namespace.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        if let Some(ns) = self.lock().plugin_kv.get_mut(namespace) {
            ns.remove(key);
        }
        Ok(())
    }

    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        let mut state = self.lock();
        apply_batch_in(
            state.plugin_kv.entry(namespace.to_owned()).or_default(),
            swaps,
            adds,
        )
    }
}
