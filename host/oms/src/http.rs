//! The host's small HTTP/1 endpoints (Prometheus metrics, payment provider webhooks): one
//! way to accept and serve their connections until shutdown.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// How long a client may take to send a request's headers: a silent or trickling client
/// cannot hold a connection (and its task) for good.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once per endpoint; more are closed at once. Scrapers and
/// providers open a handful; a flood cannot make the host hold unbounded tasks and buffers.
const MAX_CONNECTIONS: usize = 256;

/// Serves `handler` on `listener` until shutdown: one task per connection. `what` names the
/// endpoint in debug logs.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { debug!(endpoint = what, error = %e, "accept failed"); continue; }
            },
            r = shutdown.wait_for(|s| *s) => { let _ = r; return Ok(()); }
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            debug!(endpoint = what, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = handler(request);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(endpoint = what, error = %e, "connection failed");
            }
        });
    }
}
