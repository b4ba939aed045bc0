//! JSON values in the host's KV, with KV failures mapped to payment errors.

use serde::{Serialize, de::DeserializeOwned};

use crate::bindings::exports::oms::plugins0_2_0::payment::PaymentError;
use crate::bindings::oms::plugins0_1_0::kv::{self, BatchOutcome, KvError, Swap};

impl From<KvError> for PaymentError {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Denied => {
                PaymentError::Invalid("redirectpay needs the kv capability in its manifest".into())
            }
            KvError::Invalid(message) => PaymentError::Invalid(format!("kv: {message}")),
            KvError::Unavailable(message) => PaymentError::Transient(format!("kv: {message}")),
        }
    }
}

/// A stored value and the exact bytes it was read from: the bytes are the `expected` of a
/// later compare-and-swap.
pub struct Versioned<T> {
    pub raw: Vec<u8>,
    pub value: T,
}

pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<Versioned<T>>, PaymentError> {
    let Some(raw) = kv::get(key)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&raw)
        .map_err(|e| PaymentError::Invalid(format!("corrupt record {key}: {e}")))?;
    Ok(Some(Versioned { raw, value }))
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PaymentError> {
    serde_json::to_vec(value).map_err(|e| PaymentError::Invalid(format!("encoding record: {e}")))
}

/// Applies `swaps` atomically; false when another writer got there first.
pub fn swap_all(swaps: &[Swap]) -> Result<bool, PaymentError> {
    match kv::compare_and_swap(swaps, &[])? {
        BatchOutcome::Applied(_) => Ok(true),
        BatchOutcome::Conflict(_) => Ok(false),
        BatchOutcome::OutOfBounds(keys) => Err(PaymentError::Transient(format!(
            "kv reported bounds on a batch without counters: {keys:?}"
        ))),
    }
}
