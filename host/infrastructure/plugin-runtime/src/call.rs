//! The one place that builds a plugin store and runs a call: breaker check, fresh store with
//! the plugin's memory cap, per-store epoch deadline and fuel meter, instantiate from the
//! `InstancePre`, call, classify the failure, record metrics, drop the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::breaker::CircuitBreaker;
use crate::error::{BreakerCause, CallError, CallErrorKind};
use crate::kv::{AbsentKeys, Buffering, KvChanges};
use crate::metrics::PluginMetrics;
use crate::plugin::LoadedPlugin;
use crate::registry::{Picked, Route};
use crate::runtime::Inner;
use crate::state::HostState;

/// Fuel given to a store when metering is on. Effectively unlimited: fuel measures work, the
/// deadline bounds it.
const FUEL_BUDGET: u64 = u64::MAX / 4;

/// Who answered a call: recorded with every result so a saga step can store the exact
/// version it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    /// sha256 of the component.
    pub digest: Arc<str>,
    /// Wall-clock time of the call, instantiation included.
    pub elapsed: Duration,
    /// Fuel burnt by the call (0 when metering is off).
    pub fuel: u64,
    /// The key-value writes of a call made with [`KvMode::Buffered`], for the caller to
    /// commit; empty otherwise, and when the call was stopped before it answered (a trap or
    /// the deadline: what it wrote is dropped with it).
    pub kv: Arc<KvChanges>,
    /// The plugin has no network grant: whatever the call did is in `kv` (or only logged),
    /// so a caller that never commits `kv` leaves no trace of the call anywhere.
    pub host_only: bool,
}

/// Where a call's key-value writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvMode {
    /// Straight to the store, each batch its own transaction (tools, tests, formatters).
    #[default]
    Direct,
    /// Into a buffer returned in [`CallInfo::kv`]: the caller (a saga step) commits them
    /// with its own outcome, and the plugin reads its own pending writes meanwhile. Two
    /// things only a plugin with no network grant may be given, whatever the caller asked,
    /// because a plugin that can reach a provider must not act on what a refused commit may
    /// take back:
    /// - the keys its batches create checked by that commit rather than read first
    ///   (`absent_keys`; a networked plugin's are read);
    /// - earlier steps waiting for the same commit (`pending_steps`; a networked plugin is
    ///   not called: [`CallErrorKind::PendingSteps`]).
    Buffered(Buffering),
}

/// A guest call borrowing the store and the plugin for its duration.
pub(crate) type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Marks an error that happened while instantiating (pool exhausted, start function trap).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InstantiateFailed(pub String);

/// How a typed client judges the plugin's own answer.
pub(crate) struct Verdict {
    /// Metrics label of the plugin's typed error, if it returned one.
    pub error: Option<&'static str>,
    /// The plugin's message when the breaker should count the answer as a failure
    /// (`transient` errors); kept as the cause should this failure open the circuit.
    pub failure: Option<String>,
}

impl Verdict {
    pub(crate) const OK: Verdict = Verdict {
        error: None,
        failure: None,
    };
}

/// Runs `f` against a fresh store of the build of `name` that `route` picks ([`Slot::pick`]):
/// the current one unless the call is pinned or a canary takes it.
pub(crate) async fn run<R, F>(
    rt: &Inner,
    name: &str,
    route: &Route,
    expected: crate::manifest::PluginKind,
    judge: fn(&R) -> Verdict,
    kv: KvMode,
    f: F,
) -> Result<(R, CallInfo), CallError>
where
    R: Send,
    F: for<'a> FnOnce(&'a mut Store<HostState>, &'a LoadedPlugin) -> CallFuture<'a, R>,
{
    let fail = |info: Option<Box<CallInfo>>, kind| CallError {
        plugin: name.to_string(),
        info,
        kind,
    };
    let Some(slot) = rt.registry.slot(name) else {
        return Err(fail(None, CallErrorKind::NotInstalled));
    };
    let Picked { plugin, canary } = slot.pick(route);
    // A canary's calls count against its own breaker and figures.
    let (breaker, metrics) = match &canary {
        Some(c) => (&c.breaker, &c.metrics),
        None => (&slot.breaker, &slot.metrics),
    };
    if plugin.kind() != expected {
        return Err(fail(
            None,
            CallErrorKind::WrongKind {
                expected: expected.world(),
                actual: plugin.kind().world(),
            },
        ));
    }
    // Decided on the build this call would run on, so a hot swap that grants or drops the
    // network between the caller's steps cannot slip past it.
    if let KvMode::Buffered(buffering) = kv
        && buffering.pending_steps
        && plugin.ctx.http.is_some()
    {
        return Err(fail(None, CallErrorKind::PendingSteps));
    }
    // Held across the call: if this future is dropped mid-call, a half-open probe is handed
    // back instead of leaving the circuit waiting for its outcome.
    let admission = match breaker.try_acquire() {
        Ok(admission) => admission,
        Err(cause) => {
            metrics.record(Duration::ZERO, 0, Some("circuit_open"));
            return Err(fail(
                None,
                CallErrorKind::CircuitOpen {
                    cause: Box::new(cause),
                },
            ));
        }
    };

    let started = Instant::now();
    let mut store = new_store(rt, &plugin, started);
    if let KvMode::Buffered(buffering) = kv {
        let absent_keys = if plugin.ctx.http.is_none() {
            buffering.absent_keys
        } else {
            AbsentKeys::Read
        };
        store.data_mut().kv_txn = plugin
            .ctx
            .kv
            .transaction()
            .map(|txn| txn.with_absent_keys(absent_keys));
    }
    let deadline = plugin.limits.deadline;
    let span = tracing::debug_span!(
        "plugin.call",
        plugin = %plugin.ctx.name,
        version = %plugin.ctx.version,
        outcome = tracing::field::Empty,
    );
    let outcome = tracing::Instrument::instrument(
        tokio::time::timeout(deadline + crate::limits::HOST_GRACE, f(&mut store, &plugin)),
        span.clone(),
    )
    .await;
    span.record(
        "outcome",
        match &outcome {
            Ok(Ok(_)) => "returned",
            Ok(Err(_)) => "failed",
            Err(_) => "deadline",
        },
    );
    let writes = match (&outcome, store.data_mut().kv_txn.take()) {
        (Ok(Ok(_)), Some(txn)) => Arc::new(txn.into_changes()),
        _ => Arc::default(),
    };
    let fuel = if rt.engine.options().fuel_metering {
        FUEL_BUDGET.saturating_sub(store.get_fuel().unwrap_or(FUEL_BUDGET))
    } else {
        0
    };
    let memory_refused = store.data().limiter.refused;
    // The store is dropped here whatever happened: after a trap its instance may be in any
    // state, and nothing of it must be reused.
    drop(store);
    let info = CallInfo {
        plugin: plugin.ctx.name.clone(),
        version: plugin.ctx.version.clone(),
        digest: plugin.digest.clone(),
        elapsed: started.elapsed(),
        fuel,
        kv: writes,
        host_only: plugin.ctx.http.is_none(),
    };
    let result = match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(&e, memory_refused, &plugin)),
        Err(_elapsed) => Err(CallErrorKind::DeadlineExceeded {
            deadline_ms: millis(deadline),
        }),
    };
    let finished = finish((breaker, metrics), &plugin, result, info, judge);
    admission.settle();
    finished
}

fn finish<R>(
    (breaker, metrics): (&CircuitBreaker, &PluginMetrics),
    plugin: &LoadedPlugin,
    result: Result<R, CallErrorKind>,
    info: CallInfo,
    judge: fn(&R) -> Verdict,
) -> Result<(R, CallInfo), CallError> {
    match result {
        Ok(value) => {
            let verdict = judge(&value);
            metrics.record(info.elapsed, info.fuel, verdict.error);
            match verdict.failure {
                None => breaker.record_success(),
                Some(message) => breaker.record_failure(BreakerCause::Transient(message)),
            }
            Ok((value, info))
        }
        Err(kind) => {
            metrics.record(info.elapsed, info.fuel, Some(kind.label()));
            breaker.record_failure(BreakerCause::Call(kind.clone()));
            tracing::warn!(
                plugin = plugin.name(),
                version = plugin.version(),
                error = %kind,
                "plugin call failed"
            );
            Err(CallError {
                plugin: plugin.name().to_string(),
                info: Some(Box::new(info)),
                kind,
            })
        }
    }
}

fn new_store(rt: &Inner, plugin: &LoadedPlugin, started: Instant) -> Store<HostState> {
    let mut store = Store::new(
        rt.engine.engine(),
        HostState::new(plugin.ctx.clone(), &plugin.limits),
    );
    store.limiter(|s| &mut s.limiter);
    if rt.engine.options().fuel_metering {
        // Cannot fail: metering is on in the engine config whenever this branch runs.
        let _ = store.set_fuel(FUEL_BUDGET);
    }
    // Per-store deadline: the engine's ticker bumps the epoch every tick; at each tick this
    // store's callback either yields (so a busy guest does not starve its tokio worker) or,
    // once this call's own deadline has passed, interrupts it. Other stores are untouched.
    let deadline_at = started + plugin.limits.deadline;
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline_at {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    store
}

fn classify(e: &wasmtime::Error, memory_refused: bool, plugin: &LoadedPlugin) -> CallErrorKind {
    if memory_refused {
        return CallErrorKind::MemoryLimitExceeded {
            limit_bytes: plugin.limits.memory_bytes,
        };
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => CallErrorKind::DeadlineExceeded {
                deadline_ms: millis(plugin.limits.deadline),
            },
            other => CallErrorKind::Trapped {
                message: format!("{other}: {e:#}"),
            },
        };
    }
    if let Some(InstantiateFailed(message)) = e.downcast_ref::<InstantiateFailed>() {
        return CallErrorKind::Instantiate {
            message: message.clone(),
        };
    }
    // A host function refused to continue (e.g. a resource or a value out of contract).
    CallErrorKind::ContractViolation {
        message: format!("{e:#}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
