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

/// Builds INVALID_ARGUMENT with a `google.rpc.BadRequest` listing every violation.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let fields: Vec<tonic_types::FieldViolation> = violations
        .iter()
        .map(|v| tonic_types::FieldViolation::new(v.field.clone(), v.description.clone()))
        .collect();
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {summary}"),
        ErrorDetails::with_bad_request(fields),
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
        AppError::NotFound(_) => Status::not_found(message),
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
            Status::with_error_details(Code::Aborted, message, details)
        }
        AppError::FailedPrecondition(_) => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            error_info("ILLEGAL_STATE", HashMap::new()),
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
            Status::with_error_details(
                Code::FailedPrecondition,
                message,
                error_info("OPERATION_IN_PROGRESS", metadata),
            )
        }
        AppError::FulfilmentStarted(_) => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            error_info("FULFILMENT_STARTED", HashMap::new()),
        ),
        AppError::IdempotencyMismatch { .. } => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            error_info("IDEMPOTENCY_KEY_REUSED", HashMap::new()),
        ),
        AppError::IdempotencyInProgress => {
            let mut details = error_info("IDEMPOTENCY_KEY_IN_PROGRESS", HashMap::new());
            details.set_retry_info(Some(RETRY_AFTER));
            Status::with_error_details(Code::Aborted, message, details)
        }
        AppError::Unavailable(_) => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        AppError::Internal(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error; it has been logged")
        }
    }
}
