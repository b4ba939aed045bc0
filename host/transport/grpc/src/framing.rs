//! Checks the gRPC framing of request bodies before tonic decodes them.
//!
//! tonic answers a broken frame (a compression flag other than 0/1, a compressed flag without
//! `grpc-encoding`, a body cut inside a message, a unary call without its message) with
//! INTERNAL, and a length prefix over the limit with OUT_OF_RANGE. These are the caller's
//! errors: this wrapper finds them first and fails the body with INVALID_ARGUMENT, or
//! RESOURCE_EXHAUSTED for a message over the size limit, which tonic passes on unchanged (a
//! body error that is a `Status` becomes the call's status). It looks only at the 5-byte
//! prefixes, so it buffers nothing, and refuses an oversized message from its prefix, before
//! tonic reserves room for it.
//!
//! It also bounds the bytes tonic buffers for messages still arriving, across all calls: each
//! message takes its announced length from one shared budget when its prefix arrives and gives
//! it back when the call has its message (the body is dropped). A message that finds the
//! budget spent is RESOURCE_EXHAUSTED, so slow or stalled uploads cannot pile up memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;

use crate::status;

/// Wraps a service whose every RPC takes exactly one request message (unary and
/// server-streaming calls, as all of `oms.v1.OrderService`'s are).
#[derive(Debug, Clone)]
pub struct UnaryFraming<S> {
    inner: S,
    max_message_bytes: usize,
    buffered: Arc<Semaphore>,
}

impl<S> UnaryFraming<S> {
    /// `max_message_bytes` must be the service's own decoding limit; `max_buffered_bytes`
    /// bounds the request bytes being received by all calls together.
    pub fn new(inner: S, max_message_bytes: usize, max_buffered_bytes: usize) -> Self {
        Self {
            inner,
            max_message_bytes,
            buffered: Arc::new(Semaphore::new(
                max_buffered_bytes.min(Semaphore::MAX_PERMITS),
            )),
        }
    }
}

impl<S: NamedService> NamedService for UnaryFraming<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for UnaryFraming<S>
where
    S: Service<http::Request<Body>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        // Whether a compressed message may follow is tonic's to judge (it refuses unknown
        // encodings with UNIMPLEMENTED); without the header the flag can only be 0.
        let compressed_allowed = parts
            .headers
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() != b"identity");
        let checked = CheckedBody {
            inner: body,
            frames: FrameCheck::new(
                self.max_message_bytes,
                compressed_allowed,
                Arc::clone(&self.buffered),
            ),
            failed: false,
        };
        self.inner
            .call(http::Request::from_parts(parts, Body::new(checked)))
    }
}

/// The framing state of one request body: `<flag:1><length:4 BE><message:length>`, once.
#[derive(Debug)]
struct FrameCheck {
    max_message_bytes: usize,
    compressed_allowed: bool,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    messages: usize,
    budget: Arc<Semaphore>,
    /// The current message's share of the budget, held until the body is dropped.
    reserved: Option<OwnedSemaphorePermit>,
}

impl FrameCheck {
    fn new(max_message_bytes: usize, compressed_allowed: bool, budget: Arc<Semaphore>) -> Self {
        Self {
            max_message_bytes,
            compressed_allowed,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            messages: 0,
            budget,
            reserved: None,
        }
    }

    fn data(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&chunk[..n]);
            self.prefix_len += n;
            chunk = &chunk[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                self.prefix_complete()?;
            }
        }
        Ok(())
    }

    fn prefix_complete(&mut self) -> Result<(), Status> {
        self.messages += 1;
        if self.messages > 1 {
            return Err(status::malformed_request(
                "a unary request carries exactly one message",
            ));
        }
        match self.prefix[0] {
            0 => {}
            1 if self.compressed_allowed => {}
            1 => {
                return Err(status::malformed_request(
                    "compressed-flag set but no grpc-encoding was given",
                ));
            }
            flag => {
                return Err(status::malformed_request(&format!(
                    "compression flag {flag} is neither 0 nor 1"
                )));
            }
        }
        let [_, a, b, c, d] = self.prefix;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.max_message_bytes {
            return Err(status::message_too_large(len, self.max_message_bytes));
        }
        // `len` is at most the message limit, which the server keeps far below u32::MAX.
        let share = u32::try_from(len).unwrap_or(u32::MAX);
        match Arc::clone(&self.budget).try_acquire_many_owned(share) {
            Ok(permit) => self.reserved = Some(permit),
            Err(_) => return Err(status::buffers_full()),
        }
        self.remaining = len;
        Ok(())
    }

    fn end(&self) -> Result<(), Status> {
        if self.prefix_len > 0 || self.remaining > 0 {
            return Err(status::malformed_request(
                "the body ends inside a message (truncated frame)",
            ));
        }
        if self.messages == 0 {
            return Err(status::malformed_request("the body carries no message"));
        }
        Ok(())
    }
}

struct CheckedBody {
    inner: Body,
    frames: FrameCheck,
    /// After an error the body reports its end: the call is over.
    failed: bool,
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => this.frames.end().err().map(Err),
            Poll::Ready(Some(Err(e))) => Some(Err(e)),
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => Some(this.frames.data(data).map(|()| frame)),
                // Trailers end the body: check it is whole before passing them on.
                None => Some(this.frames.end().map(|()| frame)),
            },
        };
        if matches!(frame, Some(Err(_))) {
            this.failed = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn one_whole_message_passes_in_any_chunking() {
        let bytes = framed(0, 3, b"abc");
        for split in 0..bytes.len() {
            let mut f = FrameCheck::new(10, false, Arc::new(Semaphore::new(10)));
            f.data(&bytes[..split]).unwrap();
            f.data(&bytes[split..]).unwrap();
            f.end().unwrap();
        }
    }

    #[test]
    fn broken_framing_is_the_callers_fault() {
        use tonic::Code;
        let code = |bytes: &[u8]| {
            let mut f = FrameCheck::new(10, false, Arc::new(Semaphore::new(10)));
            f.data(bytes).and_then(|()| f.end()).unwrap_err().code()
        };
        assert_eq!(code(&framed(2, 0, b"")), Code::InvalidArgument);
        assert_eq!(code(&framed(1, 0, b"")), Code::InvalidArgument);
        assert_eq!(code(&framed(0, 11, b"")), Code::ResourceExhausted);
        assert_eq!(code(&framed(0, 3, b"ab")), Code::InvalidArgument);
        assert_eq!(code(&[0, 0]), Code::InvalidArgument);
        assert_eq!(code(b""), Code::InvalidArgument);
        let mut two = framed(0, 1, b"a");
        two.extend(framed(0, 1, b"b"));
        assert_eq!(code(&two), Code::InvalidArgument);
    }

    #[test]
    fn buffered_messages_share_one_budget() {
        let budget = Arc::new(Semaphore::new(10));
        let mut first = FrameCheck::new(10, false, Arc::clone(&budget));
        first.data(&framed(0, 8, b"")).unwrap();
        let mut second = FrameCheck::new(10, false, Arc::clone(&budget));
        let refused = second.data(&framed(0, 3, b"")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(first);
        let mut third = FrameCheck::new(10, false, budget);
        third.data(&framed(0, 3, b"abc")).unwrap();
    }
}
