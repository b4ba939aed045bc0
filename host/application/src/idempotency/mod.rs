//! Stripe-style idempotency over gRPC metadata.
//!
//! A mutating request with an `idempotency-key` first *claims* the key (a lease in the
//! store), then executes; its success is recorded in the same transaction as its effect, a
//! final error right after. CreateOrder skips the claim: it inserts the completed record in
//! its own transaction, and only when the key already has a record does it fall back to the
//! claim's rules (see [`crate::service::OrderService::idempotent_insert`]). A second request with the same key either replays the stored
//! outcome, is refused because its fingerprint differs, or is told to retry because the first
//! still runs. Transient failures release the key so that a retry executes again.

pub mod rules;
mod runner;

use oms_domain::{IdempotencyKey, Order, Timestamp, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use runner::ClaimGuard;

use crate::error::AppError;
use crate::snapshot::OrderSnapshot;

/// The namespace of a key: the same key may be used once per method (and, once callers are
/// authenticated, per caller).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyScope {
    /// The full gRPC method path, e.g. `/oms.v1.OrderService/CreateOrder`.
    pub method: String,
    /// The authenticated caller; empty until the API has authentication.
    pub caller: String,
    pub key: IdempotencyKey,
}

/// SHA-256 over the method and the canonical encoding of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// `canonical_request` must be a deterministic encoding of the decoded request (re-encoding
    /// the decoded protobuf message is), so two equal requests always hash the same.
    pub fn of(method: &str, canonical_request: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update([0u8]);
        hasher.update(canonical_request);
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

/// What the transport hands to a mutating use case when the request carried a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRequest {
    pub scope: IdempotencyScope,
    pub fingerprint: Fingerprint,
}

/// Proof that this request holds the key's lease. The store checks `lease_token` on
/// completion, so a request whose lease was taken over cannot commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub scope: IdempotencyScope,
    pub fingerprint: Fingerprint,
    pub lease_token: Uuid,
}

/// A final error kept under a key, enough to rebuild the identical `AppError`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredError {
    NotFound {
        what: String,
    },
    VersionConflict {
        current: i64,
    },
    /// Kept under its first name so keys stored before the reasons were split still replay.
    #[serde(rename = "failed_precondition")]
    IllegalTransition {
        message: String,
    },
    AmountExceeded {
        message: String,
    },
    /// Stored as `fulfilment_started` before the spelling became "fulfill" (migration 0006).
    #[serde(alias = "fulfilment_started")]
    FulfillmentStarted {
        message: String,
    },
}

/// The outcome kept under a completed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StoredOutcome {
    /// Every mutating RPC answers with the order after the change.
    Order {
        order: Box<OrderSnapshot>,
    },
    Error {
        error: StoredError,
    },
}

impl StoredOutcome {
    pub fn success(order: &Order) -> Self {
        Self::Order {
            order: Box::new(OrderSnapshot::from(order)),
        }
    }

    /// `None` for errors that must not be stored (see [`AppError::is_final`]).
    pub fn failure(error: &AppError) -> Option<Self> {
        let error = match error {
            AppError::NotFound(what) => StoredError::NotFound { what: what.clone() },
            AppError::VersionConflict { current } => {
                StoredError::VersionConflict { current: current.0 }
            }
            AppError::IllegalTransition(message) => StoredError::IllegalTransition {
                message: message.clone(),
            },
            AppError::AmountExceeded(message) => StoredError::AmountExceeded {
                message: message.clone(),
            },
            AppError::FulfillmentStarted(message) => StoredError::FulfillmentStarted {
                message: message.clone(),
            },
            _ => return None,
        };
        Some(Self::Error { error })
    }

    /// The response the original request got.
    pub fn replay(&self) -> Result<Order, AppError> {
        match self {
            Self::Order { order } => order
                .to_order()
                .map_err(|e| AppError::Internal(format!("stored response unreadable: {e}"))),
            Self::Error { error } => Err(match error {
                StoredError::NotFound { what } => AppError::NotFound(what.clone()),
                StoredError::VersionConflict { current } => AppError::VersionConflict {
                    current: Version(*current),
                },
                StoredError::IllegalTransition { message } => {
                    AppError::IllegalTransition(message.clone())
                }
                StoredError::AmountExceeded { message } => {
                    AppError::AmountExceeded(message.clone())
                }
                StoredError::FulfillmentStarted { message } => {
                    AppError::FulfillmentStarted(message.clone())
                }
            }),
        }
    }

    pub fn to_json(&self) -> String {
        // Only strings and integers inside: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }
}

/// The key's record written by an [`crate::ports::OrderWrite`], in the write's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyCompletion {
    /// Marks the claim that `begin` handed out completed with `outcome`. Fails with
    /// `LeaseLost` when the claim no longer holds the key's lease.
    Claimed {
        claim: IdempotencyClaim,
        outcome: StoredOutcome,
    },
    /// Inserts the key's record already completed, with no claim before it: the write's own
    /// transaction is the claim (CreateOrder, whose effect is one insert). Fails with
    /// `KeyExists`, having written nothing, when the key has a record in any state; the
    /// caller then answers by the rules of `begin`. Two such writes under one key cannot
    /// both commit: the key's primary key admits one, and the other waits for it (PostgreSQL)
    /// or runs after it (SQLite's single writer) and conflicts.
    Unclaimed {
        request: IdempotencyRequest,
        outcome: StoredOutcome,
        created_at: Timestamp,
        /// When the record stops counting (now + TTL).
        expires_at: Timestamp,
    },
}

impl IdempotencyCompletion {
    pub fn outcome(&self) -> &StoredOutcome {
        match self {
            Self::Claimed { outcome, .. } | Self::Unclaimed { outcome, .. } => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_separates_method_and_body() {
        let a = Fingerprint::of("/m/A", b"xy");
        assert_eq!(a, Fingerprint::of("/m/A", b"xy"));
        assert_ne!(a, Fingerprint::of("/m/B", b"xy"));
        assert_ne!(a, Fingerprint::of("/m/A", b"xz"));
        assert_eq!(Fingerprint::from_hex(&a.to_hex()), Some(a));
    }

    #[test]
    fn only_final_errors_are_stored() {
        assert!(StoredOutcome::failure(&AppError::Unavailable("db".into())).is_none());
        // Retrying after the other operation ended must execute, so this is not kept.
        assert!(StoredOutcome::failure(&AppError::OperationInProgress { running: None }).is_none());
        let started = AppError::FulfillmentStarted("fulfillment has begun".into());
        let kept = StoredOutcome::failure(&started).unwrap();
        let round = StoredOutcome::from_json(&kept.to_json()).unwrap();
        assert_eq!(
            round.replay().unwrap_err(),
            started,
            "replayed with its reason"
        );
        let stored = StoredOutcome::failure(&AppError::VersionConflict {
            current: Version(7),
        })
        .unwrap();
        let round = StoredOutcome::from_json(&stored.to_json()).unwrap();
        assert_eq!(
            round.replay().unwrap_err(),
            AppError::VersionConflict {
                current: Version(7)
            }
        );
    }

    #[test]
    fn outcomes_stored_under_the_old_spelling_still_replay() {
        let json = r#"{"outcome":"error","error":{"kind":"fulfilment_started","message":"fulfilment has begun"}}"#;
        let stored = StoredOutcome::from_json(json).unwrap();
        assert_eq!(
            stored.replay().unwrap_err(),
            AppError::FulfillmentStarted("fulfilment has begun".into())
        );
    }
}
