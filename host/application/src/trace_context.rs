//! The trace context an event carries: the W3C `traceparent` (and `tracestate`) of the work
//! that wrote it, stored in the outbox row's headers and published as Kafka message headers,
//! so that a consumer's trace continues the request's.
//!
//! The application knows spans only through `tracing`; reading a span's OpenTelemetry
//! context needs the process's OpenTelemetry set-up, which belongs to the binary. So the
//! binary installs the one function that does it, once, at start-up; until then (and in
//! processes that install none) events carry no trace context.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Returns the propagation headers of the current span (empty when there is none).
pub type Injector = fn() -> BTreeMap<String, String>;

static INJECTOR: OnceLock<Injector> = OnceLock::new();

/// Installs the process's injector; a second call changes nothing (the first one stays).
pub fn install(injector: Injector) {
    let _ = INJECTOR.set(injector);
}

/// The current span's propagation headers, for an event written now.
pub fn current() -> BTreeMap<String, String> {
    INJECTOR.get().map(|inject| inject()).unwrap_or_default()
}
