//! The one mapping from application errors to gRPC statuses (docs/api.md has the table).

use std::collections::HashMap;
use std::time::Duration;

use oms_application::{AppError, FieldViolation};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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

/// A status whose message is bounded: every status of this API is built through here.
fn status(code: Code, message: &str, details: Option<ErrorDetails>) -> Status {
    let message = bounded(message, MAX_MESSAGE_BYTES);
    match details {
        Some(details) => Status::with_error_details(code, message, details),
        None => Status::new(code, message),
    }
}

/// Builds INVALID_ARGUMENT with a `google.rpc.BadRequest` listing the violations: all of
/// them when they fit [`MAX_VIOLATIONS`] and [`MAX_VIOLATION_BYTES`], otherwise the first
/// ones and a last entry (field `request`) saying how many more there are.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
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
    status(
        Code::InvalidArgument,
        &message,
        Some(ErrorDetails::with_bad_request(fields)),
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
    let mut details = error_info("SERVER_BUSY", HashMap::new());
    details.set_retry_info(Some(RETRY_AFTER));
    status(
        Code::ResourceExhausted,
        "the server is receiving too many requests at once; retry shortly",
        Some(details),
    )
}

/// A request message over the server's size limit.
pub fn message_too_large(len: usize, limit: usize) -> Status {
    status(
        Code::ResourceExhausted,
        &format!("request message of {len} bytes exceeds the limit of {limit} bytes"),
        Some(error_info("MESSAGE_TOO_LARGE", HashMap::new())),
    )
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

/// Maps every application error to its status. Never INTERNAL for something the caller can
/// fix.
pub fn to_status(error: &AppError) -> Status {
    let message = error.to_string();
    match error {
        AppError::InvalidArgument(violations) => invalid_argument(violations),
        AppError::NotFound(_) => status(Code::NotFound, &message, None),
        AppError::VersionConflict { current } => {
            let mut details = error_info(
                "VERSION_CONFLICT",
                HashMap::from([("current_version".to_owned(), current.0.to_string())]),
            );
            details.set_precondition_failure(vec![tonic_types::PreconditionViolation::new(
                "VERSION",
                "expected_version",
                format!("the order is at version {}", current.0),
            )]);
            status(Code::Aborted, &message, Some(details))
        }
        AppError::FailedPrecondition(_) => status(
            Code::FailedPrecondition,
            &message,
            Some(error_info("ILLEGAL_STATE", HashMap::new())),
        ),
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
            status(
                Code::FailedPrecondition,
                &message,
                Some(error_info("OPERATION_IN_PROGRESS", metadata)),
            )
        }
        AppError::FulfilmentStarted(_) => status(
            Code::FailedPrecondition,
            &message,
            Some(error_info("FULFILMENT_STARTED", HashMap::new())),
        ),
        AppError::IdempotencyMismatch { .. } => status(
            Code::FailedPrecondition,
            &message,
            Some(error_info("IDEMPOTENCY_KEY_REUSED", HashMap::new())),
        ),
        AppError::IdempotencyInProgress => {
            let mut details = error_info("IDEMPOTENCY_KEY_IN_PROGRESS", HashMap::new());
            details.set_retry_info(Some(RETRY_AFTER));
            status(Code::Aborted, &message, Some(details))
        }
        AppError::Unavailable(_) => status(
            Code::Unavailable,
            &message,
            Some(ErrorDetails::with_retry_info(Some(RETRY_AFTER))),
        ),
        AppError::Internal(_) => {
            tracing::error!(error = %message, "internal error");
            status(Code::Internal, "internal error; it has been logged", None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
