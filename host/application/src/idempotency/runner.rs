//! Runs one request under its idempotency claim.

use std::sync::Arc;

use tracing::warn;

use super::IdempotencyClaim;
use crate::ports::IdempotencyStore;

/// Holds a claim while the request runs. If the request future is dropped before it finished
/// (deadline exceeded, client gone), the guard releases the key in the background so that a
/// retry is not told "in progress" until the lease expires. Release only deletes a record
/// that is still in progress under this lease, so it never undoes a completed request.
pub struct ClaimGuard {
    claim: Option<IdempotencyClaim>,
    store: Arc<dyn IdempotencyStore>,
}

impl ClaimGuard {
    pub fn new(claim: IdempotencyClaim, store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            claim: Some(claim),
            store,
        }
    }

    pub fn claim(&self) -> Option<&IdempotencyClaim> {
        self.claim.as_ref()
    }

    /// The request reached a stored outcome: nothing to release.
    pub fn disarm(mut self) {
        self.claim = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let store = Arc::clone(&self.store);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.release(&claim).await {
                    warn!(error = %e, key = %claim.scope.key, "could not release idempotency key; it frees when its lease expires");
                }
            });
        }
    }
}
