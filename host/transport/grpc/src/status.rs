//! The one mapping from application errors to gRPC statuses (docs/api.md has the table,
//! docs/errors/ a page per reason).

use std::collections::HashMap;
use std::time::Duration;

use oms_application::{AppError, FieldViolation};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::reason::ErrorReason;

/// The `google.rpc.ErrorInfo.domain` of every error this API raises.
pub const ERROR_DOMAIN: &str = "oms.v1";

/// How long a client should wait before retrying an UNAVAILABLE or in-flight request.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// At most this many violations are listed in a `BadRequest`; the rest are counted in one
/// final entry. Together with the byte budget below this keeps an error's details a few KiB
/// however broken the request (gRPC clients commonly refuse metadata over 8-16 KiB).
pub const MAX_VIOLATIONS: usize = 100;
/// Bytes of field paths and descriptions listed in one `BadRequest`.
pub const MAX_VIOLATION_BYTES: usize = 4096;
/// Longest field path and description kept in one violation.
const MAX_FIELD_BYTES: usize = 128;
const MAX_DESCRIPTION_BYTES: usize = 256;
/// Longest status message: it travels as a header, like the details.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

/// A status whose message is bounded and whose details carry the `ErrorInfo` of `reason`:
/// every status of this API is built through here, so none leaves without its reason.
fn status(
    reason: ErrorReason,
    message: &str,
    metadata: HashMap<String, String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason.code(), ERROR_DOMAIN, metadata);
    Status::with_error_details(
        reason.grpc_code(),
        bounded(message, MAX_MESSAGE_BYTES),
        details,
    )
}

/// The `BadRequest` listing `violations`: all of them when they fit [`MAX_VIOLATIONS`] and
/// [`MAX_VIOLATION_BYTES`], otherwise the first ones and a last entry (field `request`)
/// saying how many more there are. Returns it with a one-line summary for the message.
fn bad_request(violations: &[FieldViolation]) -> (ErrorDetails, String) {
    let mut fields: Vec<tonic_types::FieldViolation> = Vec::new();
    let mut bytes = 0;
    for v in violations {
        let field = bounded(&v.field, MAX_FIELD_BYTES);
        let description = bounded(&v.description, MAX_DESCRIPTION_BYTES);
        bytes += field.len() + description.len();
        if fields.len() == MAX_VIOLATIONS || bytes > MAX_VIOLATION_BYTES {
            break;
        }
        fields.push(tonic_types::FieldViolation::new(field, description));
    }
    let omitted = violations.len() - fields.len();
    let summary = fields
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let message = if omitted == 0 {
        format!("invalid request: {summary}")
    } else {
        fields.push(tonic_types::FieldViolation::new(
            "request",
            format!("{omitted} more violation(s) not listed: fix these and retry"),
        ));
        format!("invalid request ({omitted} more violation(s) not listed): {summary}")
    };
    (ErrorDetails::with_bad_request(fields), message)
}

/// INVALID_ARGUMENT (reason `INVALID_ARGUMENT`) with a `google.rpc.BadRequest` listing the
/// violations (see [`bad_request`]).
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let (details, message) = bad_request(violations);
    status(
        ErrorReason::InvalidArgument,
        &message,
        HashMap::new(),
        details,
    )
}

/// A request body that is not a valid `oms.v1` message (bad protobuf, or gRPC framing that
/// breaks the protocol): the caller's fault, so INVALID_ARGUMENT, never INTERNAL.
pub fn malformed_request(reason: &str) -> Status {
    invalid_argument(&[FieldViolation::new(
        "request",
        format!("is not a valid message: {reason}"),
    )])
}

/// The server's budget for request bytes in transit is spent: retry shortly.
pub fn buffers_full() -> Status {
    status(
        ErrorReason::ServerBusy,
        "the server is receiving too many requests at once; retry shortly",
        HashMap::new(),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

/// A request message over the server's size limit.
pub fn message_too_large(len: usize, limit: usize) -> Status {
    status(
        ErrorReason::MessageTooLarge,
        &format!("request message of {len} bytes exceeds the limit of {limit} bytes"),
        HashMap::from([("limit_bytes".to_owned(), limit.to_string())]),
        ErrorDetails::new(),
    )
}

/// The call's deadline (`grpc-timeout` or the server's request timeout) passed first.
pub fn deadline_exceeded(message: &str) -> Status {
    status(
        ErrorReason::DeadlineExceeded,
        message,
        HashMap::new(),
        ErrorDetails::new(),
    )
}

/// The server cannot take the call now (shutting down); another replica or a retry can.
pub fn unavailable(message: &str) -> Status {
    status(
        ErrorReason::Unavailable,
        message,
        HashMap::new(),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

/// The connection is over its call rate: retry after `wait`.
pub fn rate_limited(limit: u32, wait: Duration) -> Status {
    status(
        ErrorReason::RateLimited,
        &format!("this connection sends more than {limit} calls per second; slow down"),
        HashMap::from([("limit_per_sec".to_owned(), limit.to_string())]),
        ErrorDetails::with_retry_info(Some(wait)),
    )
}

/// `scope` (this connection, this host) has `limit` calls or streams running: nothing was
/// executed; the caller can retry once one of them ends.
pub fn concurrency_limited(scope: &str, limit: usize, advice: &str) -> Status {
    status(
        ErrorReason::ConcurrencyLimited,
        &format!("{scope} already has {limit} calls running, its limit; {advice}"),
        HashMap::from([("limit".to_owned(), limit.to_string())]),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

/// An admin API call without credentials.
pub fn unauthenticated(message: &str) -> Status {
    status(
        ErrorReason::Unauthenticated,
        message,
        HashMap::new(),
        ErrorDetails::new(),
    )
}

/// An admin API call whose credentials the server does not accept.
pub fn permission_denied(message: &str) -> Status {
    status(
        ErrorReason::PermissionDenied,
        message,
        HashMap::new(),
        ErrorDetails::new(),
    )
}

/// The reason an application error is reported with.
pub fn reason(error: &AppError) -> ErrorReason {
    match error {
        AppError::InvalidArgument(_) => ErrorReason::InvalidArgument,
        AppError::CurrencyMismatch(_) => ErrorReason::CurrencyMismatch,
        AppError::NotFound(_) => ErrorReason::NotFound,
        AppError::VersionConflict { .. } => ErrorReason::VersionConflict,
        AppError::IllegalTransition(_) => ErrorReason::IllegalState,
        AppError::AmountExceeded(_) => ErrorReason::AmountExceeded,
        AppError::OperationInProgress { .. } => ErrorReason::OperationInProgress,
        AppError::FulfillmentStarted(_) => ErrorReason::FulfillmentStarted,
        AppError::IdempotencyMismatch { .. } => ErrorReason::IdempotencyKeyReused,
        AppError::IdempotencyInProgress => ErrorReason::IdempotencyKeyInProgress,
        AppError::Unavailable(_) => ErrorReason::Unavailable,
        AppError::Internal(_) => ErrorReason::Internal,
    }
}

/// Maps every application error to its status. Never INTERNAL for something the caller can
/// fix.
pub fn to_status(error: &AppError) -> Status {
    let reason = reason(error);
    let message = error.to_string();
    match error {
        AppError::InvalidArgument(violations) => invalid_argument(violations),
        // INVALID_ARGUMENT like any bad field, but with its own reason: the client fixes the
        // currency, not the amount.
        AppError::CurrencyMismatch(violation) => {
            let (details, message) = bad_request(std::slice::from_ref(violation));
            status(reason, &message, HashMap::new(), details)
        }
        AppError::VersionConflict { current } => {
            let mut details = ErrorDetails::new();
            details.set_precondition_failure(vec![tonic_types::PreconditionViolation::new(
                "VERSION",
                "expected_version",
                format!("the order is at version {}", current.0),
            )]);
            let metadata = HashMap::from([("current_version".to_owned(), current.0.to_string())]);
            status(reason, &message, metadata, details)
        }
        // Not an illegal transition: the same request may succeed once the other operation
        // ends, so clients must be able to tell the two apart.
        AppError::OperationInProgress { running } => {
            let metadata = running
                .map(|r| {
                    HashMap::from([
                        ("operation".to_owned(), r.kind.as_str().to_owned()),
                        ("operation_status".to_owned(), r.status.as_str().to_owned()),
                    ])
                })
                .unwrap_or_default();
            status(reason, &message, metadata, ErrorDetails::new())
        }
        AppError::IdempotencyMismatch { method } => {
            let metadata = HashMap::from([("method".to_owned(), method.clone())]);
            status(reason, &message, metadata, ErrorDetails::new())
        }
        AppError::IdempotencyInProgress | AppError::Unavailable(_) => status(
            reason,
            &message,
            HashMap::new(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        AppError::Internal(_) => {
            tracing::error!(error = %message, "internal error");
            status(
                reason,
                "internal error; it has been logged",
                HashMap::new(),
                ErrorDetails::new(),
            )
        }
        AppError::NotFound(_)
        | AppError::IllegalTransition(_)
        | AppError::AmountExceeded(_)
        | AppError::FulfillmentStarted(_) => {
            status(reason, &message, HashMap::new(), ErrorDetails::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_info(s: &Status) -> (String, String) {
        let details = s.get_error_details();
        let info = details
            .error_info()
            .expect("every status carries an ErrorInfo");
        (info.reason.clone(), info.domain.clone())
    }

    #[test]
    fn every_status_carries_its_reason() {
        use oms_application::RunningOperation;
        use oms_application::saga::{SagaKind, SagaStatus};
        use oms_domain::Version;

        let errors = [
            AppError::InvalidArgument(vec![FieldViolation::new("id", "is empty")]),
            AppError::CurrencyMismatch(FieldViolation::new("amount", "must be in EUR")),
            AppError::NotFound("order".into()),
            AppError::VersionConflict {
                current: Version(3),
            },
            AppError::IllegalTransition("order in status CANCELLED cannot be fulfilled".into()),
            AppError::AmountExceeded("refund of 5 exceeds the refundable 4".into()),
            AppError::OperationInProgress {
                running: Some(RunningOperation {
                    kind: SagaKind::RefundOrder,
                    status: SagaStatus::Running,
                }),
            },
            AppError::FulfillmentStarted("fulfillment has begun".into()),
            AppError::IdempotencyMismatch {
                method: "CancelOrder".into(),
            },
            AppError::IdempotencyInProgress,
            AppError::Unavailable("db down".into()),
            AppError::Internal("bug".into()),
        ];
        for error in &errors {
            let s = to_status(error);
            let expected = reason(error);
            assert_eq!(s.code(), expected.grpc_code(), "{error:?}");
            assert_eq!(
                error_info(&s),
                (expected.code().to_owned(), ERROR_DOMAIN.to_owned())
            );
        }
        let edge = [
            (
                malformed_request("bad varint"),
                ErrorReason::InvalidArgument,
            ),
            (buffers_full(), ErrorReason::ServerBusy),
            (message_too_large(10, 5), ErrorReason::MessageTooLarge),
            (deadline_exceeded("late"), ErrorReason::DeadlineExceeded),
            (unavailable("shutting down"), ErrorReason::Unavailable),
        ];
        for (s, expected) in &edge {
            assert_eq!(s.code(), expected.grpc_code());
            assert_eq!(error_info(s).0, expected.code());
        }
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary() {
        assert_eq!(bounded("abc", 3), "abc");
        let cut = bounded(&"é".repeat(100), 11);
        assert!(cut.len() <= 11, "{cut}");
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn violations_are_capped_in_count_and_bytes() {
        let many: Vec<_> = (0..10_000)
            .map(|i| FieldViolation::new(format!("items[{i}].sku"), "x".repeat(1000)))
            .collect();
        let s = invalid_argument(&many);
        let listed = tonic_types::StatusExt::get_error_details(&s)
            .bad_request()
            .map(|b| b.field_violations.len())
            .unwrap_or_default();
        assert!(listed <= MAX_VIOLATIONS + 1, "{listed}");
        assert!(s.details().len() < 8 * 1024, "{}", s.details().len());
        assert!(s.message().len() <= MAX_MESSAGE_BYTES);
    }
}
