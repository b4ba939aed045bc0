//! The plugins' durable key-value state: what an atomic batch means, written once for every
//! store (the database ones in `oms-persistence`, the in-memory one of the plugin runtime), and
//! the errors of a store. The port is [`crate::ports::PluginKvStore`].
//!
//! A call made by a saga step does not write the store itself: its writes are buffered in a
//! [`KvTransaction`] and committed as [`KvChanges`] in the step's own transaction
//! ([`transaction`]).

mod transaction;

pub use transaction::{
    AbsentKeys, Buffering, Expect, KeyChange, KeyEffect, KvChanges, KvTransaction,
};

use std::collections::HashMap;

use crate::ports::StoreError;

/// Why a key-value operation failed in the store itself (not a failed condition).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The database failed (classified like every other store's errors).
    #[error("key-value store: {0}")]
    Store(#[from] StoreError),
    #[error("key-value value for {key} is not an integer")]
    NotAnInteger { key: String },
}

/// Every key a batch touches, sorted: stores lock keys in this order so that two batches
/// over overlapping keys cannot deadlock.
pub fn batch_keys(swaps: &[Swap], adds: &[BoundedAdd]) -> Vec<String> {
    let mut keys: Vec<String> = swaps
        .iter()
        .map(|s| s.key.clone())
        .chain(adds.iter().map(|a| a.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Those of `keys` that `values` holds, with their values: what an in-memory store answers
/// to [`crate::ports::PluginKvStore::get_many`].
pub fn present(values: &HashMap<String, Vec<u8>>, keys: &[String]) -> HashMap<String, Vec<u8>> {
    keys.iter()
        .filter_map(|key| Some((key.clone(), values.get(key)?.clone())))
        .collect()
}

/// Conditional write of one key: it must hold `expected` (`None` = absent), then holds `new`
/// (`None` = deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub key: String,
    pub expected: Option<Vec<u8>>,
    pub new: Option<Vec<u8>>,
}

/// Add `delta` to the ASCII-decimal counter at `key` (absent = 0) if the result stays in
/// `[min, max]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedAdd {
    pub key: String,
    pub delta: i64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// Result of a batch; nothing was written unless `Applied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// New counter values, in the order of the adds.
    Applied(Vec<i64>),
    /// Swap keys that did not hold their expected value.
    Conflict(Vec<String>),
    /// Counters that would have left their bounds.
    OutOfBounds(Vec<String>),
}

/// A write the backend must apply (`None` deletes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// What evaluating a batch against the current values decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// Apply `writes`, then answer `outcome` (always `Applied`).
    Apply {
        writes: Vec<Write>,
        outcome: BatchOutcome,
    },
    /// Write nothing; answer `outcome` (a conflict or out-of-bounds).
    Refuse(BatchOutcome),
}

/// Decides a batch from the current values of its keys (absent keys may be missing from
/// `current`). A conflict wins over an out-of-bounds, as the contract says.
pub fn evaluate(
    current: &HashMap<String, Vec<u8>>,
    swaps: &[Swap],
    adds: &[BoundedAdd],
) -> Result<Evaluation, KvError> {
    let conflicts: Vec<String> = swaps
        .iter()
        .filter(|s| current.get(&s.key) != s.expected.as_ref())
        .map(|s| s.key.clone())
        .collect();
    if !conflicts.is_empty() {
        return Ok(Evaluation::Refuse(BatchOutcome::Conflict(conflicts)));
    }
    let mut out_of_bounds = Vec::new();
    let mut counters = Vec::with_capacity(adds.len());
    for add in adds {
        let now = match current.get(&add.key) {
            Some(bytes) => parse_counter(&add.key, bytes)?,
            None => 0,
        };
        let next = now.checked_add(add.delta);
        match next {
            Some(v) if add.min.is_none_or(|m| v >= m) && add.max.is_none_or(|m| v <= m) => {
                counters.push(v);
            }
            _ => out_of_bounds.push(add.key.clone()),
        }
    }
    if !out_of_bounds.is_empty() {
        return Ok(Evaluation::Refuse(BatchOutcome::OutOfBounds(out_of_bounds)));
    }
    let writes = swaps
        .iter()
        .map(|s| Write {
            key: s.key.clone(),
            value: s.new.clone(),
        })
        .chain(adds.iter().zip(&counters).map(|(a, v)| Write {
            key: a.key.clone(),
            value: Some(v.to_string().into_bytes()),
        }))
        .collect();
    Ok(Evaluation::Apply {
        writes,
        outcome: BatchOutcome::Applied(counters),
    })
}

/// Evaluates a batch against one namespace held in memory and applies it there: atomic as
/// long as the caller holds the map exclusively. The in-memory stores (the runtime's
/// `MemoryKvStore`, the test kit's `MemoryStore`) both use it.
pub fn apply_batch_in(
    namespace: &mut HashMap<String, Vec<u8>>,
    swaps: &[Swap],
    adds: &[BoundedAdd],
) -> Result<BatchOutcome, KvError> {
    match evaluate(namespace, swaps, adds)? {
        Evaluation::Refuse(outcome) => Ok(outcome),
        Evaluation::Apply { writes, outcome } => {
            for w in writes {
                match w.value {
                    Some(v) => namespace.insert(w.key, v),
                    None => namespace.remove(&w.key),
                };
            }
            Ok(outcome)
        }
    }
}

fn parse_counter(key: &str, bytes: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KvError::NotAnInteger {
            key: key.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &str, delta: i64, min: Option<i64>) -> BoundedAdd {
        BoundedAdd {
            key: key.into(),
            delta,
            min,
            max: None,
        }
    }

    #[test]
    fn applies_when_every_condition_holds() {
        let current = HashMap::from([("stock/A".to_string(), b"5".to_vec())]);
        let swaps = [Swap {
            key: "res/1".into(),
            expected: None,
            new: Some(b"A:2".to_vec()),
        }];
        let got = evaluate(&current, &swaps, &[add("stock/A", -2, Some(0))]).unwrap();
        let Evaluation::Apply { writes, outcome } = got else {
            panic!("refused")
        };
        assert_eq!(outcome, BatchOutcome::Applied(vec![3]));
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[1].value.as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn names_every_short_counter_and_conflict_wins() {
        let current = HashMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"0".to_vec()),
        ]);
        let adds = [
            add("a", -2, Some(0)),
            add("b", -1, Some(0)),
            add("c", 1, None),
        ];
        assert_eq!(
            evaluate(&current, &[], &adds).unwrap(),
            Evaluation::Refuse(BatchOutcome::OutOfBounds(vec!["a".into(), "b".into()]))
        );
        let swaps = [Swap {
            key: "a".into(),
            expected: None,
            new: None,
        }];
        assert_eq!(
            evaluate(&current, &swaps, &adds).unwrap(),
            Evaluation::Refuse(BatchOutcome::Conflict(vec!["a".into()]))
        );
    }

    #[test]
    fn a_non_integer_counter_is_an_error() {
        let current = HashMap::from([("a".to_string(), b"x".to_vec())]);
        assert!(evaluate(&current, &[], &[add("a", 1, None)]).is_err());
    }
}
