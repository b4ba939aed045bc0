//! Typed handles, one per world, with async methods mirroring the WIT. A handle names a plugin,
//! not a version: every call runs on whatever version is current when it starts, and reports
//! that version in its [`CallInfo`].

pub mod inventory;
pub mod notification;
pub mod payment;

pub use inventory::InventoryPlugin;
pub use notification::NotificationFormatter;
pub use payment::PaymentPlugin;

use crate::call::{CallInfo, InstantiateFailed, Verdict};
use crate::error::PluginError;

/// A hash of `key` that is the same in every process and release (the first eight bytes of
/// its SHA-256): which share of keys a canary takes must not move between processes.
pub(crate) fn route_hash(key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A successful answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Called<T> {
    pub value: T,
    pub info: CallInfo,
}

/// Splits the plugin's own `result` into [`Called`] or [`PluginError::Rejected`].
pub(crate) fn split<T, E>(r: Result<T, E>, info: CallInfo) -> Result<Called<T>, PluginError<E>>
where
    E: std::fmt::Debug + std::fmt::Display,
{
    match r {
        Ok(value) => Ok(Called { value, info }),
        Err(error) => Err(PluginError::Rejected { error, info }),
    }
}

/// Tags instantiation failures that are not traps, so they are reported as `Instantiate`
/// (e.g. the instance pool is exhausted: retryable) rather than as a contract violation.
pub(crate) async fn instantiate<T>(
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    fut.await.map_err(|e| {
        if e.is::<wasmtime::Trap>() {
            e
        } else {
            wasmtime::Error::new(InstantiateFailed(format!("{e:#}")))
        }
    })
}

/// The loaded version does not hold the exports of its declared kind (cannot happen: the kind
/// is checked before the call; kept as an error rather than a panic).
pub(crate) fn kind_mismatch() -> wasmtime::Error {
    wasmtime::Error::msg("loaded plugin does not hold the exports of its kind")
}

/// Verdict on a typed error the breaker does not count (`declined`, `out-of-stock`...): the
/// plugin is healthy, it said no.
pub(crate) fn refused(label: &'static str) -> Verdict {
    Verdict {
        error: Some(label),
        failure: None,
    }
}

/// Verdict on a typed `transient` error: counts towards the breaker, with its message.
pub(crate) fn transient(message: &str) -> Verdict {
    Verdict {
        error: Some("transient"),
        failure: Some(message.to_owned()),
    }
}
