//! Reads the `idempotency-key` metadata entry and fingerprints the request.

use oms_application::FieldViolation;
use oms_application::idempotency::{Fingerprint, IdempotencyRequest, IdempotencyScope};
use oms_domain::IdempotencyKey;

use crate::auth::Caller;

/// The metadata entry clients set on mutating calls.
pub const METADATA_KEY: &str = "idempotency-key";

/// `None` when the caller sent no key. The fingerprint covers the method and the re-encoded
/// message, so field order or unknown fields on the wire do not change it.
pub fn from_request<T: prost::Message>(
    request: &tonic::Request<T>,
    method: &str,
) -> Result<Option<IdempotencyRequest>, FieldViolation> {
    let Some(raw) = request.metadata().get(METADATA_KEY) else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| FieldViolation::new(METADATA_KEY, "must be printable ASCII"))?;
    let key =
        IdempotencyKey::parse(raw).map_err(|e| FieldViolation::new(METADATA_KEY, e.to_string()))?;
    // Keys are the caller's own: two callers may use the same key for different requests.
    let caller = request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    Ok(Some(IdempotencyRequest {
        scope: IdempotencyScope {
            method: method.to_owned(),
            caller,
            key,
        },
        fingerprint: Fingerprint::of(method, &request.get_ref().encode_to_vec()),
    }))
}
