//! RPC metrics for both APIs, as a tower layer on the server: every call is counted by
//! method and final gRPC code (`oms_rpc_requests_total`) and timed until its response ends
//! (`oms_rpc_duration_seconds`: a `WatchOrder` stream counts until it closes).
//!
//! The code is read where gRPC puts it: the response headers of a trailers-only answer (most
//! errors), otherwise the trailers at the end of the body. A body dropped before its trailers
//! (the client went away) is counted as `CANCELLED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::Service;

/// Adds [`RpcMetrics`] to every service of a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for RpcMetrics<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = split_path(request.uri().path());
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let mut recorder = Recorder {
                service,
                method,
                started,
                done: false,
            };
            if let Some(code) = code_in(response.headers()) {
                recorder.finish(code);
            }
            let (parts, body) = response.into_parts();
            let measured = MeasuredBody {
                inner: body,
                recorder,
            };
            Ok(http::Response::from_parts(parts, Body::new(measured)))
        })
    }
}

/// `/oms.v1.OrderService/CreateOrder` -> (`oms.v1.OrderService`, `CreateOrder`). Paths of
/// other services are one label, so a scanner cannot grow the label set.
fn split_path(path: &str) -> (&'static str, String) {
    let known = [
        "oms.v1.OrderService",
        "oms.admin.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match known.iter().find(|k| **k == service) {
        Some(k) if !method.is_empty() && method.len() <= 64 => (k, method.to_owned()),
        _ => ("unknown", "unknown".to_owned()),
    }
}

fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

struct Recorder {
    service: &'static str,
    method: String,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        // A method the server does not have is one label too (UNIMPLEMENTED): callers
        // cannot grow the label set by inventing method names.
        let method = if code == Code::Unimplemented {
            "unknown".to_owned()
        } else {
            self.method.clone()
        };
        let code = format!("{code:?}");
        metrics::counter!(
            "oms_rpc_requests_total",
            "service" => self.service,
            "method" => method.clone(),
            "code" => code
        )
        .increment(1);
        metrics::histogram!(
            "oms_rpc_duration_seconds",
            "service" => self.service,
            "method" => method
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the client cancelled or went away.
        self.finish(Code::Cancelled);
    }
}

struct MeasuredBody {
    inner: Body,
    recorder: Recorder,
}

impl HttpBody for MeasuredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    self.recorder.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.recorder.finish(Code::Internal),
            Poll::Ready(None) => self.recorder.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn only_known_services_become_labels() {
        assert_eq!(
            split_path("/oms.v1.OrderService/CreateOrder"),
            ("oms.v1.OrderService", "CreateOrder".to_owned())
        );
        assert_eq!(
            split_path("/evil.Service/Anything"),
            ("unknown", "unknown".to_owned())
        );
        assert_eq!(split_path("/"), ("unknown", "unknown".to_owned()));
        let long = format!("/oms.v1.OrderService/{}", "x".repeat(65));
        assert_eq!(split_path(&long), ("unknown", "unknown".to_owned()));
    }
}
