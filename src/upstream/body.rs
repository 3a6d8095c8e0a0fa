//! The request body on its way upstream: the client's body, streamed through untouched,
//! with two checks on the way. A chunked body (no length known in advance) that grows past
//! `limits.requestBodyBytes` is cut with `BodyError::TooLarge`; a Content-Length over the
//! limit never gets here (the proxy answers 413 before sending anything). An error reading
//! the client's body (a bad chunk size, a client gone mid-body) becomes
//! `BodyError::Malformed`.
//!
//! Either error aborts the exchange with the backend: the upstream connection is closed
//! (never pooled after a failed request body) and the error comes back as the cause of
//! the send's error (`H1Error::Body` over HTTP/1.1, inside the `hyper::Error` over
//! HTTP/2), where `UpstreamError::body_error` finds it, so the client gets 400 or 413 and
//! the endpoint is not blamed. No state is shared with the
//! request path: the error itself carries the news.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Why the client's body could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("malformed request body")]
    Malformed(#[source] hyper::Error),
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
}

/// A request body sent upstream: the client's, or none (a replayed request that had none).
pub struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes still allowed; `u64::MAX` when nothing is counted (no limit, or a length the
    /// proxy already checked).
    remaining: u64,
    limit: u64,
    /// Body bytes read from the client, for the access log.
    received: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    /// The client's body, cut past `limit` bytes when given (for a body of unknown length).
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        let counted = limit.filter(|_| inner.size_hint().exact().is_none());
        RequestBody {
            inner: Some(inner),
            remaining: counted.unwrap_or(u64::MAX),
            limit: counted.unwrap_or(u64::MAX),
            received: None,
        }
    }

    /// Also count the body bytes read into `received` (the access log's `bytes_received`).
    pub fn counting(mut self, received: Option<Arc<AtomicU64>>) -> Self {
        self.received = received;
        self
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            remaining: u64::MAX,
            limit: u64::MAX,
            received: None,
        }
    }
}

/// A request body as the client's connection delivers it: hyper's `Incoming`, or none (a
/// bodiless HTTP/1.1 request the proxy's own server parsed, `server::h1`).
pub trait ClientBody: Body {
    /// The body to send upstream, cut past `limit` (see `RequestBody::new`).
    fn into_request_body(self, limit: Option<u64>) -> RequestBody;
}

impl ClientBody for Incoming {
    #[inline]
    fn into_request_body(self, limit: Option<u64>) -> RequestBody {
        RequestBody::new(self, limit)
    }
}

/// The body of a request that has none.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBody;

impl Body for NoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

impl ClientBody for NoBody {
    #[inline]
    fn into_request_body(self, _: Option<u64>) -> RequestBody {
        RequestBody::empty()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(received), Some(data)) = (&self.received, frame.data_ref()) {
                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.remaining != u64::MAX {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if n > self.remaining {
                        // nothing more is read: the rest of the body stays with the client
                        self.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(self.limit))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Malformed(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
