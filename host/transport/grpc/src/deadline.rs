//! Honours the caller's `grpc-timeout`.

use std::future::Future;
use std::time::Duration;

use tonic::Status;

/// The server stops work this much before the caller's deadline (5%, at most 50 ms), so the
/// caller receives DEADLINE_EXCEEDED from us instead of a bare local cancellation.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(50))
}

/// Parses a `grpc-timeout` value (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time this request may still run, if the caller set a deadline.
pub fn budget<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    Some(timeout.saturating_sub(margin(timeout)))
}

/// Runs `work` within `budget`; DEADLINE_EXCEEDED when it runs out. Dropping `work` rolls
/// back any open transaction; an idempotency key it held is released by its guard.
pub async fn within<T>(
    budget: Option<Duration>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match budget {
        None => work.await,
        Some(budget) => tokio::time::timeout(budget, work).await.unwrap_or_else(|_| {
            Err(crate::status::deadline_exceeded(
                "deadline exceeded before the request completed; retry with the same idempotency-key",
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
