//! The application's gateway ports implemented over the Wasm plugin runtime: the only place
//! that knows both the saga's vocabulary and the plugins' WIT types.

mod inventory;
mod payments;

pub use inventory::PluginInventory;
pub use payments::PluginPayments;

use oms_application::ports::{GatewayError, GatewayFailure, PluginCall};
use oms_plugin_runtime::{CallErrorKind, CallInfo, PluginError};

fn plugin_call(info: &CallInfo) -> PluginCall {
    PluginCall {
        plugin: info.plugin.to_string(),
        version: info.version.to_string(),
        digest: info.digest.to_string(),
    }
}

/// Classifies a failed plugin call for the saga. `permanent` says which of the plugin's own
/// typed errors are final (declined, invalid, out of stock).
fn failure<E>(error: PluginError<E>, permanent: impl Fn(&E) -> bool) -> GatewayFailure
where
    E: std::fmt::Debug + std::fmt::Display,
{
    let call = error.info().map(plugin_call);
    let error = match error {
        PluginError::Rejected { error, .. } => {
            if permanent(&error) {
                GatewayError::Permanent {
                    reason: error.to_string(),
                }
            } else {
                GatewayError::Transient {
                    reason: error.to_string(),
                }
            }
        }
        PluginError::Runtime(e) => match e.kind {
            // The plugin may have acted before it was stopped: the saga reconciles.
            CallErrorKind::DeadlineExceeded { .. } | CallErrorKind::Trapped { .. } => {
                GatewayError::Unknown {
                    reason: e.to_string(),
                }
            }
            // A plugin that does not speak its contract will not start to on a retry.
            CallErrorKind::ContractViolation { .. } | CallErrorKind::WrongKind { .. } => {
                GatewayError::Permanent {
                    reason: e.to_string(),
                }
            }
            // The breaker refused without calling: other calls failed, not this one.
            CallErrorKind::CircuitOpen => GatewayError::NotTried {
                reason: e.to_string(),
            },
            // Pool exhausted, memory limit, not (yet) installed: the operator or time can
            // fix these within the step's deadline.
            _ => GatewayError::Transient {
                reason: e.to_string(),
            },
        },
    };
    GatewayFailure { error, call }
}
