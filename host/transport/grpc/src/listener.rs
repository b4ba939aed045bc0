//! The accept side of the gRPC server: a bounded number of connections, each closed when its
//! peer stops sending, and an accept loop that backs off instead of spinning when the process
//! is out of file descriptors.
//!
//! hyper has no limit on connections and no timeout for an HTTP/2 connection that never
//! completes its preface; keep-alive pings only start after it. So the limits live here, in
//! the stream handed to `serve_with_incoming`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits of the accept side.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A connection whose peer sends nothing for this long is closed. Live clients answer
    /// the server's HTTP/2 keep-alive pings, so this must exceed the ping interval.
    pub idle_timeout: Duration,
}

/// First and longest pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS...).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepted connections within `limits`, for `serve_with_incoming`. Never yields an error:
/// accept failures are logged and retried after a growing pause.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<LimitedConnection>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(
        (listener, permits, ACCEPT_BACKOFF_MIN),
        move |(listener, permits, mut backoff)| async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        stream
                    }
                    Err(e) => {
                        // Retrying at once would spin: the error lasts until a descriptor
                        // is freed, which takes a connection to close.
                        tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    // Dropping the stream closes it: the client sees the connection end at
                    // once instead of waiting in a queue nobody serves.
                    tracing::debug!(
                        max = limits.max_connections,
                        "connection limit reached; closing a new connection"
                    );
                    drop(stream);
                    continue;
                };
                // Small gRPC frames must not wait for Nagle's algorithm: with delayed ACKs
                // on the client that costs ~40 ms per round trip.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(error = %e, "could not disable Nagle on a gRPC connection");
                }
                let connection = LimitedConnection::new(stream, permit, limits.idle_timeout);
                return Some((Ok(connection), (listener, permits, backoff)));
            }
        },
    )
}

/// An accepted connection: holds one of the limited places until dropped, and fails its
/// reads once the peer has sent nothing for the idle timeout (hyper then closes it).
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    info: TcpConnectInfo,
}

impl LimitedConnection {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        Self {
            stream,
            _permit: permit,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            info,
        }
    }
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let at = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Polling the timer registers this task with it, so an idle connection is woken
            // (and failed) when it fires.
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing within the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
