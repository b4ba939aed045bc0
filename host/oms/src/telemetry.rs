//! Logs and traces through `tracing`, one subscriber for both.
//!
//! - Logs: text or JSON lines (`[log]`).
//! - Traces: every gRPC call is a span (continuing the caller's W3C `traceparent` when it
//!   sends one), with the saga and its steps and each plugin call inside it. The spans become
//!   OpenTelemetry spans (`tracing-opentelemetry`), exported over OTLP/HTTP when
//!   `tracing.otlp_endpoint` is set. Without an endpoint nothing is recorded (the sampler
//!   drops every trace the caller did not ask to sample), but trace ids are still made and
//!   propagated: each event written to the outbox carries the `traceparent` of the work that
//!   wrote it, and the relay publishes it as a Kafka header, so consumers continue the trace.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, TracingConfig};

/// Installs the global subscriber, writing to stdout, once; later calls (tests) are no-ops.
/// Returns what flushes exported spans at shutdown.
pub fn init(log: &LogConfig, tracing: &TracingConfig) -> Telemetry {
    init_with_writer(log, tracing, std::io::stdout)
}

/// Flushes the spans still buffered for export when dropped (the end of `main`).
#[must_use = "dropping it at once would stop exporting spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces at shutdown: {e}");
        }
    }
}

/// The process's tracer provider: built once, by the first [`init_with_writer`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// [`init`] with another destination for the log lines (a file, a pipe, a buffer).
pub fn init_with_writer<W>(log: &LogConfig, tracing: &TracingConfig, writer: W) -> Telemetry
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let mut first = false;
    let provider = PROVIDER.get_or_init(|| {
        first = true;
        tracer_provider(tracing)
    });
    // The trace spans are at DEBUG, and each layer has its own filter: the log lines see
    // them only when the log filter asks for debug (formatting every span's fields for the
    // log costs CPU on the order path), while OpenTelemetry sees this project's spans and
    // nothing else (no log events, no library spans).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("oms"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("oms")
        }));
    let logs = if log.format == LogFormat::Json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        oms_application::trace_context::install(current_trace_headers);
    }
    Telemetry {
        provider: (installed && first).then(|| provider.clone()),
    }
}

fn tracer_provider(config: &TracingConfig) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    if config.otlp_endpoint.is_empty() {
        // Nothing to export to: record only what a caller asked to sample (its spans end up
        // nowhere, but its trace id reaches the events), and otherwise only make ids.
        return builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!(
            "{}/v1/traces",
            config.otlp_endpoint.trim_end_matches('/')
        ))
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    match exporter {
        Ok(exporter) => builder
            .with_sampler(sampler)
            .with_batch_exporter(exporter)
            .build(),
        Err(e) => {
            // Traces are diagnostics: a bad endpoint must not keep orders from being served.
            eprintln!(
                "tracing.otlp_endpoint {}: {e}; exporting no spans",
                config.otlp_endpoint
            );
            builder
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
                .build()
        }
    }
}

/// The W3C headers (`traceparent`, `tracestate`) of the current span.
fn current_trace_headers() -> BTreeMap<String, String> {
    let context = tracing::Span::current().context();
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    headers.into_iter().collect()
}

/// Reads propagation headers from an HTTP request.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A span per gRPC call, the child of the caller's `traceparent` when it sends one.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> tower_layer::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for RpcTrace<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        // Named as OpenTelemetry's RPC conventions say: `package.Service/Method`.
        let span = tracing::debug_span!(
            "grpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        // Without a usable parent this span starts a trace of its own.
        let _ = span.set_parent(parent);
        let call = self.inner.call(request);
        Box::pin(call.instrument(span))
    }
}
