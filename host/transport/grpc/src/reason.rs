//! The stable reason codes of this API: every status it returns carries exactly one of them
//! in `google.rpc.ErrorInfo.reason` (domain [`crate::status::ERROR_DOMAIN`]). Clients branch
//! on the reason, never on the message; each has a page `docs/errors/<CODE>.md`.
//!
//! A code, once published, is never renamed or reused: add a variant instead.

use tonic::Code;

/// Why a call failed, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// The request is malformed (fields listed in a `BadRequest`).
    InvalidArgument,
    /// An amount is in another currency than the order's.
    CurrencyMismatch,
    /// The order (or saga) does not exist.
    NotFound,
    /// `expected_version` is stale.
    VersionConflict,
    /// The order's status does not allow the operation.
    IllegalState,
    /// A capture or refund exceeds what the payment allows.
    AmountExceeded,
    /// Another operation (saga) on the order has not finished.
    OperationInProgress,
    /// Fulfillment has begun: a cancellation can no longer undo it.
    FulfillmentStarted,
    /// The idempotency key was first used for a different request.
    IdempotencyKeyReused,
    /// A request with this idempotency key is still running.
    IdempotencyKeyInProgress,
    /// A request message over the size limit.
    MessageTooLarge,
    /// The server's budget for request bytes in transit is spent.
    ServerBusy,
    /// The call's deadline passed before it completed.
    DeadlineExceeded,
    /// A dependency (database) is down, or the server is shutting down.
    Unavailable,
    /// A bug or corrupt data.
    Internal,
    /// An admin API call without a bearer token.
    Unauthenticated,
    /// An admin API call with a token the server does not accept.
    PermissionDenied,
    /// The connection sent more calls than `grpc.max_calls_per_sec_per_connection` allows.
    RateLimited,
    /// Too many calls at once: on the connection (`grpc.max_calls_per_connection`), or
    /// `WatchOrder` streams on the host (`watch.max_streams`).
    ConcurrencyLimited,
}

impl ErrorReason {
    /// Every reason, for documentation checks and clients' exhaustive tables.
    pub const ALL: [Self; 19] = [
        Self::InvalidArgument,
        Self::CurrencyMismatch,
        Self::NotFound,
        Self::VersionConflict,
        Self::IllegalState,
        Self::AmountExceeded,
        Self::OperationInProgress,
        Self::FulfillmentStarted,
        Self::IdempotencyKeyReused,
        Self::IdempotencyKeyInProgress,
        Self::MessageTooLarge,
        Self::ServerBusy,
        Self::DeadlineExceeded,
        Self::Unavailable,
        Self::Internal,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::RateLimited,
        Self::ConcurrencyLimited,
    ];

    /// The `ErrorInfo.reason`: UPPER_SNAKE_CASE, stable forever.
    pub const fn code(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::NotFound => "NOT_FOUND",
            Self::VersionConflict => "VERSION_CONFLICT",
            Self::IllegalState => "ILLEGAL_STATE",
            Self::AmountExceeded => "AMOUNT_EXCEEDED",
            Self::OperationInProgress => "OPERATION_IN_PROGRESS",
            Self::FulfillmentStarted => "FULFILLMENT_STARTED",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::IdempotencyKeyInProgress => "IDEMPOTENCY_KEY_IN_PROGRESS",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::ServerBusy => "SERVER_BUSY",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::RateLimited => "RATE_LIMITED",
            Self::ConcurrencyLimited => "CONCURRENCY_LIMITED",
        }
    }

    /// The gRPC status code that travels with this reason: always the same one.
    pub const fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument | Self::CurrencyMismatch => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::VersionConflict | Self::IdempotencyKeyInProgress => Code::Aborted,
            Self::IllegalState
            | Self::AmountExceeded
            | Self::OperationInProgress
            | Self::FulfillmentStarted
            | Self::IdempotencyKeyReused => Code::FailedPrecondition,
            Self::MessageTooLarge
            | Self::ServerBusy
            | Self::RateLimited
            | Self::ConcurrencyLimited => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
        }
    }
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use super::*;

    fn docs() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../docs/errors")
    }

    #[test]
    fn every_reason_has_a_unique_code_and_a_page() {
        let mut seen = HashSet::new();
        let index = std::fs::read_to_string(docs().join("README.md")).unwrap_or_default();
        for reason in ErrorReason::ALL {
            let code = reason.code();
            assert!(seen.insert(code), "{code} is used twice");
            assert!(
                code.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{code} is not UPPER_SNAKE_CASE"
            );
            let page = docs().join(format!("{code}.md"));
            let text = std::fs::read_to_string(&page).unwrap_or_default();
            assert!(
                text.starts_with(&format!("# {code}")),
                "{} is missing or does not start with `# {code}`",
                page.display()
            );
            let grpc = format!("{:?}", reason.grpc_code());
            assert!(
                text.contains(&grpc_name(reason.grpc_code())),
                "{code}.md does not name its gRPC code {grpc}"
            );
            assert!(
                index.contains(&format!("({code}.md)")),
                "docs/errors/README.md does not link {code}.md"
            );
        }
    }

    #[test]
    fn pages_have_a_reason() {
        // A page without a variant documents a code the server never sends.
        let codes: HashSet<_> = ErrorReason::ALL.iter().map(|r| r.code()).collect();
        for entry in std::fs::read_dir(docs()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(code) = name.strip_suffix(".md")
                && code != "README"
            {
                assert!(
                    codes.contains(code),
                    "docs/errors/{name} has no ErrorReason"
                );
            }
        }
    }

    fn grpc_name(code: Code) -> String {
        match code {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::Aborted => "ABORTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            other => return format!("{other:?}"),
        }
        .to_owned()
    }
}
