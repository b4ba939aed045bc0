//! The Prometheus endpoint: `GET /metrics` on `metrics.listen` (default `127.0.0.1:9090`).
//!
//! Every layer records through the `metrics` facade (`oms_rpc_*` in the gRPC layer,
//! `oms_saga_*` and `oms_idempotency_*` in the application, `oms_plugin_*` in the plugin
//! runtime, `oms_outbox_*` in the relay); this module installs the Prometheus recorder that
//! keeps them and renders them on each scrape. What lives as state elsewhere (the plugins'
//! circuit breakers, the notification consumer's counters) is read at scrape time.
//! docs/operations.md lists every series.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

/// Histogram buckets in seconds, from a fast plugin call to a slow saga.
const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's recorder: the `metrics` facade has one per process, so every host started
/// in it (tests start many) shares it.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

fn recorder() -> anyhow::Result<PrometheusHandle> {
    let mut slot = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Reads state kept elsewhere into gauges and counters, just before a scrape renders them.
pub type Collect = Arc<dyn Fn() + Send + Sync>;

/// Binds `listen` and serves `/metrics` until shutdown; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    collect: Collect,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>>)> {
    let handle = recorder()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    let serve = crate::http::serve(listener, "metrics", shutdown, move |request| {
        let response = respond(&request, &handle, &collect);
        async move { response }
    });
    Ok((addr, serve))
}

fn respond(
    request: &Request<Incoming>,
    handle: &PrometheusHandle,
    collect: &Collect,
) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    collect();
    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
