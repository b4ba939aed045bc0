//! The application's gateway ports implemented over the Wasm plugin runtime: the only place
//! that knows both the saga's vocabulary and the plugins' WIT types.
//!
//! It is also where a failure gets its public wording: a [`FailureCode`] and one sentence
//! naming the plugin (`PLUGIN_TRAPPED: the payment plugin "fakepay" crashed`), which the saga
//! shows in `Order.failure_reason`, plus the runtime's own error as the detail that only logs
//! and the step history keep. Codes are listed in docs/api.md.

mod inventory;
#[cfg(feature = "native-adapters")]
pub mod native;
mod payments;
mod plugin_catalog;

pub use inventory::PluginInventory;
pub use payments::PluginPayments;
pub use plugin_catalog::{CanaryGuard, RuntimeCatalog};

use oms_application::ports::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, PluginCall,
};
use oms_plugin_runtime::{BreakerCause, CallError, CallErrorKind, CallInfo, PluginError};

fn plugin_call(info: &CallInfo) -> PluginCall {
    PluginCall {
        plugin: info.plugin.to_string(),
        version: info.version.to_string(),
        digest: info.digest.to_string(),
        kv: info.kv.clone(),
        host_only: info.host_only,
    }
}

/// Classifies a failed plugin call for the saga. `kind` names the plugin's role in sentences
/// ("payment", "inventory"); `own` classifies and words the plugin's own typed errors
/// (declined, invalid, out of stock, transient).
fn failure<E>(
    error: PluginError<E>,
    kind: &str,
    own: impl Fn(&E, &str) -> GatewayError,
) -> GatewayFailure
where
    E: std::fmt::Debug + std::fmt::Display,
{
    let call = error.info().map(|info| Box::new(plugin_call(info)));
    let error = match error {
        PluginError::Rejected { error, info } => own(&error, &info.plugin),
        PluginError::Runtime(e) => runtime_failure(&e, kind),
    };
    GatewayFailure { error, call }
}

/// A call the sandbox stopped.
fn runtime_failure(e: &CallError, kind: &str) -> GatewayError {
    let reason = sandbox_reason(&e.kind, &e.plugin, kind).with_detail(e.to_string());
    match e.kind {
        // The plugin may have acted before it was stopped: the saga reconciles.
        CallErrorKind::DeadlineExceeded { .. } | CallErrorKind::Trapped { .. } => {
            GatewayError::Unknown { reason }
        }
        // A plugin that does not speak its contract will not start to on a retry.
        CallErrorKind::ContractViolation { .. } | CallErrorKind::WrongKind { .. } => {
            GatewayError::Permanent { reason }
        }
        // The breaker refused without calling: other calls failed, not this one.
        CallErrorKind::CircuitOpen { .. } => GatewayError::NotTried { reason },
        // Not called while the saga's earlier steps wait for the commit: it commits first.
        CallErrorKind::PendingSteps => GatewayError::CommitFirst { reason },
        // Pool exhausted, memory limit, not (yet) installed: the operator or time can fix
        // these within the step's deadline.
        _ => GatewayError::Transient { reason },
    }
}

/// The public code and sentence of a sandbox failure. An open circuit is worded by the
/// failure that opened it: "circuit open" alone would hide what is actually wrong.
fn sandbox_reason(kind: &CallErrorKind, plugin: &str, role: &str) -> FailureReason {
    let (code, sentence) = match kind {
        CallErrorKind::CircuitOpen { cause } => (
            FailureCode::PluginUnavailable,
            format!(
                "circuit open after {}",
                breaker_cause_sentence(cause, plugin, role)
            ),
        ),
        other => sandbox_sentence(other, plugin, role),
    };
    FailureReason::new(code, sentence)
}

fn breaker_cause_sentence(cause: &BreakerCause, plugin: &str, role: &str) -> String {
    match cause {
        BreakerCause::Call(kind) => sandbox_sentence(kind, plugin, role).1,
        BreakerCause::Transient(_) => {
            format!("the {role} plugin \"{plugin}\" kept asking to retry later")
        }
    }
}

/// Code and sentence of everything but an open circuit (whose cause is one of these).
fn sandbox_sentence(kind: &CallErrorKind, plugin: &str, role: &str) -> (FailureCode, String) {
    let subject = format!("the {role} plugin \"{plugin}\"");
    match kind {
        CallErrorKind::Trapped { .. } => (FailureCode::PluginTrapped, format!("{subject} crashed")),
        CallErrorKind::DeadlineExceeded { deadline_ms } => (
            FailureCode::PluginDeadlineExceeded,
            format!("{subject} did not answer within its {deadline_ms} ms deadline"),
        ),
        CallErrorKind::MemoryLimitExceeded { limit_bytes } => (
            FailureCode::PluginMemoryExceeded,
            format!(
                "{subject} exceeded its {} memory limit",
                human_bytes(*limit_bytes)
            ),
        ),
        CallErrorKind::Instantiate { .. } => (
            FailureCode::PluginUnavailable,
            format!("{subject} could not be started"),
        ),
        CallErrorKind::NotInstalled => (
            FailureCode::PluginNotInstalled,
            format!("no {role} plugin named \"{plugin}\" is installed"),
        ),
        CallErrorKind::WrongKind { actual, .. } => (
            FailureCode::PluginContractViolation,
            format!("the plugin \"{plugin}\" is a {actual} plugin, not a {role} plugin"),
        ),
        CallErrorKind::ContractViolation { .. } => (
            FailureCode::PluginContractViolation,
            format!("{subject} broke the plugin contract"),
        ),
        // Handled by the saga engine (it commits, then calls again); shown only if a
        // caller that could not commit first asked for it: a bug of the host.
        CallErrorKind::PendingSteps => (
            FailureCode::Internal,
            format!(
                "{subject} reaches the network and was called before earlier steps were committed"
            ),
        ),
        // Only reached for a breaker cause, which is never itself an open circuit.
        CallErrorKind::CircuitOpen { .. } => (
            FailureCode::PluginUnavailable,
            format!("{subject} is paused after repeated failures"),
        ),
    }
}

/// `67108864` -> `64 MiB`; limits are whole MiB, anything else is shown in bytes.
fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(kind: CallErrorKind) -> String {
        sandbox_reason(&kind, "fakepay", "payment").public()
    }

    #[test]
    fn sandbox_failures_read_as_codes_and_sentences() {
        assert_eq!(
            public(CallErrorKind::Trapped {
                message: "wasm trap: unreachable\nwasm backtrace: ...".into()
            }),
            "PLUGIN_TRAPPED: the payment plugin \"fakepay\" crashed"
        );
        assert_eq!(
            public(CallErrorKind::DeadlineExceeded { deadline_ms: 200 }),
            "PLUGIN_DEADLINE_EXCEEDED: the payment plugin \"fakepay\" did not answer within its 200 ms deadline"
        );
        assert_eq!(
            public(CallErrorKind::MemoryLimitExceeded {
                limit_bytes: 64 << 20
            }),
            "PLUGIN_MEMORY_EXCEEDED: the payment plugin \"fakepay\" exceeded its 64 MiB memory limit"
        );
        assert_eq!(
            public(CallErrorKind::CircuitOpen {
                cause: Box::new(BreakerCause::Call(CallErrorKind::DeadlineExceeded {
                    deadline_ms: 200
                }))
            }),
            "PLUGIN_UNAVAILABLE: circuit open after the payment plugin \"fakepay\" did not answer within its 200 ms deadline"
        );
        assert_eq!(
            public(CallErrorKind::CircuitOpen {
                cause: Box::new(BreakerCause::Transient("upstream 503".into()))
            }),
            "PLUGIN_UNAVAILABLE: circuit open after the payment plugin \"fakepay\" kept asking to retry later"
        );
    }

    /// The runtime's refusal of a networked plugin while steps wait is the engine's cue to
    /// commit them first: it must arrive as `CommitFirst`, never as a failure the saga would
    /// retry or give up on.
    #[test]
    fn a_call_refused_for_pending_steps_asks_for_a_commit_first() {
        let refused = CallError {
            plugin: "psp".into(),
            info: None,
            kind: CallErrorKind::PendingSteps,
        };
        let error = runtime_failure(&refused, "payment");
        assert!(
            matches!(error, GatewayError::CommitFirst { .. }),
            "{error:?}"
        );
        assert_eq!(error.kind(), "commit_first");
        assert!(error.public_reason().starts_with("INTERNAL: "));
    }
}
