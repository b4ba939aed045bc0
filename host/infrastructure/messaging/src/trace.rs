//! Trace context across the broker: an event's message carries the W3C `traceparent` of the
//! work that wrote it (stored with its outbox row). The relay's publish span links to each
//! message's trace; the notification consumer handles an event in a span continuing it.
//! Both read the headers through the process's propagator (set up by the binary); without
//! one they find no context, and the spans start traces of their own.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;

use crate::broker::Message;

/// Reads propagation headers from a message's headers.
struct HeaderExtractor<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The trace context a message carries (an empty context when it carries none).
pub(crate) fn context_of(message: &Message) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(&message.headers))
    })
}

/// The span context a message carries, when it carries a valid one: what a link points to.
pub(crate) fn span_context_of(message: &Message) -> Option<opentelemetry::trace::SpanContext> {
    let context = context_of(message);
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}
