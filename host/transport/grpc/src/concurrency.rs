//! Calls running at once on one connection, bounded: a call beyond the bound is refused with
//! `RESOURCE_EXHAUSTED` (`CONCURRENCY_LIMITED`) before any work, so one client cannot take
//! every place of the server's in-flight bound (or every `WatchOrder` stream) from the others.
//!
//! HTTP/2's `max_concurrent_streams` is not enough for this: clients queue streams beyond it
//! on their side, so a greedy connection keeps its share, and it cannot be told apart from a
//! slow server. A call holds its place until its response body ends (a `WatchOrder` stream
//! until it closes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::status;

/// Wraps a service so that each connection has at most `limit` of its calls running.
#[derive(Clone)]
pub struct PerConnectionLimit<S> {
    inner: S,
    calls: Option<Arc<CallCounts>>,
}

/// Calls running per connection (keyed by the peer's address and port, which name one TCP
/// connection). An entry is removed when its count falls to zero, so the map holds only
/// connections with calls running.
struct CallCounts {
    limit: usize,
    running: Mutex<HashMap<SocketAddr, usize>>,
}

impl<S> PerConnectionLimit<S> {
    /// At most `limit` calls at once per connection; `0` leaves it unlimited.
    pub fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            calls: (limit > 0).then(|| {
                Arc::new(CallCounts {
                    limit,
                    running: Mutex::new(HashMap::new()),
                })
            }),
        }
    }
}

impl<S: NamedService> NamedService for PerConnectionLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl CallCounts {
    /// A place for one more call of `peer`, or `None` when it has `limit` running.
    fn enter(self: &Arc<Self>, peer: SocketAddr) -> Option<CallPlace> {
        // A poisoned lock only means a panic elsewhere while counting; the counts are plain
        // integers and stay usable.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let count = running.entry(peer).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(CallPlace {
            counts: Arc::clone(self),
            peer,
        })
    }
}

/// One running call's place; given back when dropped.
struct CallPlace {
    counts: Arc<CallCounts>,
    peer: SocketAddr,
}

impl Drop for CallPlace {
    fn drop(&mut self) {
        let mut running = self
            .counts
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.peer);
            }
        }
    }
}

/// The peer of the connection a request came on, plaintext or TLS.
fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

impl<S, B> Service<http::Request<Body>> for PerConnectionLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes, Error = Status> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let place = match (&self.calls, peer_of(&request)) {
            (Some(calls), Some(peer)) => match calls.enter(peer) {
                Some(place) => Some(place),
                None => {
                    let refused = status::concurrency_limited(
                        "this connection",
                        calls.limit,
                        "close some of its calls or streams, or wait for them to end",
                    );
                    return futures::future::ready(Ok(refused.into_http())).boxed();
                }
            },
            _ => None,
        };
        let call = self.inner.call(request);
        async move {
            let response = call.await?;
            Ok(response.map(|body| match place {
                None => Body::new(body),
                Some(place) => Body::new(Placed {
                    inner: Box::pin(body),
                    _place: place,
                }),
            }))
        }
        .boxed()
    }
}

/// A response body that holds its call's place until it is dropped.
struct Placed<B> {
    inner: Pin<Box<B>>,
    _place: CallPlace,
}

impl<B: HttpBody<Data = Bytes, Error = Status>> HttpBody for Placed<B> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.inner.as_mut().poll_frame(cx)
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
    use super::CallCounts;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_connection_gets_its_limit_and_its_places_back() {
        let counts = Arc::new(CallCounts {
            limit: 2,
            running: Mutex::new(HashMap::new()),
        });
        let a = "10.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!());
        let b = "10.0.0.1:4001".parse().unwrap_or_else(|_| unreachable!());
        let first = counts.enter(a);
        let second = counts.enter(a);
        assert!(first.is_some() && second.is_some());
        assert!(counts.enter(a).is_none(), "a third call on one connection");
        assert!(
            counts.enter(b).is_some(),
            "another connection is not affected"
        );
        drop(first);
        let third = counts.enter(a);
        assert!(third.is_some(), "a place given back is taken again");
        drop((second, third));
        assert!(
            counts.running.lock().map(|m| m.is_empty()).unwrap_or(false),
            "idle connections leave no entry"
        );
    }
}
